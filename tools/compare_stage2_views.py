#!/usr/bin/env python
"""Which views should stage 2 read to tell a vein from a microbleed? Trains one stage-2 classifier per
patch layout on the same mined candidates and scores each end to end on the validation family.

    cmbdet phantom -o DATA/train-a -n 50 --seed 101 --family randomized --no-montage   (and more seeds)
    cmbdet phantom -o DATA/val-beta -n 30 --seed 7101 --family beta --no-montage
    python tools/compare_stage2_views.py --train DATA/train-a DATA/train-b --val DATA/val-beta \
        --layouts planes mips mixed --epochs 8 --workdir WORK

Stage 1 (``--proposer``, default the shipped one) runs once per scan; the patches of every layout are
cut from the same points (CMBs, stage-1 candidates, known mimics). Each layout is trained with the same
seed, epochs and augmentation, its operating point (stage-1 weight, threshold) chosen on the
validation scans, and the figures printed are those of the validation scans at that point:
lesion-level sensitivity, precision, F1, FP/subject, and how many of the false positives among all
stage-1 candidates stage 2 removes at what loss of their sensitivity. Each model is saved as
``WORK/<layout>.safetensors`` (ready to ship: its operating point is stored in it). Validation figures
are optimistic for every layout alike (the operating point is chosen there); the test family is not
touched here.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def _stage2_filter_figures(reclassifier, mined) -> dict:
    """Among all stage-1 candidates: share of false positives removed and of true positives lost at the
    reclassifier's operating point."""
    from cmbdet.evaluate import match_detections
    from cmbdet.reclassifier.infer import cmb_probability, final_score

    tp_total = tp_kept = fp_total = fp_kept = 0
    for m in mined:
        if not m.candidate_rows:
            continue
        xyz = np.array([[r["x_mm"], r["y_mm"], r["z_mm"]] for r in m.candidate_rows], float)
        stage1 = np.array([r["score"] for r in m.candidate_rows], float)
        truth = np.array([[float(r["x_mm"]), float(r["y_mm"]), float(r["z_mm"])] for r in m.truth_rows
                          if r.get("x_mm") not in ("", None)], float).reshape(-1, 3)
        diam = np.array([float(r.get("diameter_mm") or 4.0) for r in m.truth_rows
                         if r.get("x_mm") not in ("", None)], float)
        hit = match_detections(truth, diam, xyz, stage1) >= 0
        keep = final_score(stage1, cmb_probability(reclassifier, m.candidate_patches),
                           reclassifier.stage1_weight) >= reclassifier.threshold
        tp_total += int(hit.sum())
        tp_kept += int((hit & keep).sum())
        fp_total += int((~hit).sum())
        fp_kept += int((~hit & keep).sum())
    return {"fp_removed": 1 - fp_kept / max(fp_total, 1), "sensitivity_lost": 1 - tp_kept / max(tp_total, 1),
            "candidate_tp": tp_total, "candidate_fp": fp_total}


def _mined_layouts(scan, proposer, rng, layouts, slab_mm, cache: Path, max_candidates: int) -> dict:
    """Stage-1 mining of one scan, patches of every layout; cached in ``cache`` (one .npz per scan)."""
    from cmbdet.reclassifier.train import MinedScan, mine_points

    path = cache / f"{scan.subject}.npz"
    if path.exists():
        stored = np.load(path, allow_pickle=False)
        if all(f"{layout}_patches" in stored for layout in layouts):
            rows = json.loads(str(stored["rows"]))
            return {layout: MinedScan(scan.subject, stored[f"{layout}_patches"], stored["is_cmb"],
                                      stored[f"{layout}_candidates"], rows["candidates"], rows["truth"])
                    for layout in layouts}
    points = mine_points(scan, proposer, rng, max_candidates=max_candidates)
    out = {layout: points.patches(layout=layout, slab_mm=slab_mm) for layout in layouts}
    first = next(iter(out.values()))
    arrays = {f"{layout}_patches": m.patches for layout, m in out.items()}
    arrays |= {f"{layout}_candidates": m.candidate_patches for layout, m in out.items()}
    rows = json.dumps({"candidates": first.candidate_rows, "truth": first.truth_rows})
    np.savez_compressed(path, is_cmb=first.is_cmb, rows=np.array(rows), **arrays)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", nargs="+", required=True)
    parser.add_argument("--val", nargs="*", default=[], help="validation family folder(s) (needed unless --mine-only)")
    parser.add_argument("--proposer", help="stage-1 weights (default: shipped)")
    parser.add_argument("--layouts", nargs="+", default=["planes", "mips", "mixed"])
    parser.add_argument("--slab-mm", type=float, default=10.0)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--max-candidates", type=int, default=40, help="stage-1 candidates mined per scan")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--mine-only", action="store_true", help="mine and cache the scans, train nothing")
    parser.add_argument("--reuse-models", action="store_true",
                        help="layouts already trained in WORKDIR are not retrained: only their operating point is "
                             "chosen again (with today's rule)")
    parser.add_argument("--cache", help="folder of mined scans to reuse (default WORKDIR/mined); the proposer "
                                        "must be the same as when they were mined")
    args = parser.parse_args(argv)

    from cmbdet.proposer.infer import load_proposer
    from cmbdet.reclassifier.infer import load_reclassifier
    from cmbdet.reclassifier.train import choose_operating_point, fit_reclassifier
    from cmbdet.training_data import describe_sources, read_labelled_set

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    proposer = load_proposer(args.proposer)
    train = [s for d in args.train for s in read_labelled_set(d)]
    val = [s for d in args.val for s in read_labelled_set(d)]
    mined: dict[str, dict[str, list]] = {layout: {"train": [], "val": []} for layout in args.layouts}
    started = time.perf_counter()
    cache = Path(args.cache) if args.cache else work / "mined"
    cache.mkdir(parents=True, exist_ok=True)
    for n, (split, scan) in enumerate([("train", s) for s in train] + [("val", s) for s in val], start=1):
        for layout, one in _mined_layouts(scan, proposer, np.random.default_rng([args.seed, n]), args.layouts,
                                          args.slab_mm, cache, args.max_candidates).items():
            mined[layout][split].append(one)
        if n % 10 == 0:
            print(f"mined {n}/{len(train) + len(val)} scans ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    if args.mine_only:
        return 0
    if not val:
        parser.error("--val is needed to compare layouts")
    rows = []
    for layout in args.layouts:
        t0 = time.perf_counter()
        saved = work / f"{layout}.safetensors"
        if args.reuse_models and saved.exists():  # trained before: choose its operating point again
            model = load_reclassifier(saved)
            weight, threshold, pooled = choose_operating_point(model, mined[layout]["val"])
            model.threshold, model.stage1_weight = threshold, weight
            model.metadata.update(val_threshold=threshold, val_stage1_weight=weight,
                                  val_sensitivity=pooled.get("sensitivity"), val_precision=pooled.get("precision"),
                                  val_f1=pooled.get("f1"), val_fp_per_subject=pooled.get("fp_per_subject"),
                                  operating_point_rule=pooled.get("rule"),
                                  val_candidate_recall=pooled.get("candidate_recall"))
        else:
            model = fit_reclassifier(mined[layout]["train"], mined[layout]["val"], np.random.default_rng(args.seed),
                                     epochs=args.epochs, batch=args.batch, layout=layout, slab_mm=args.slab_mm,
                                     workdir=work / layout, log=lambda line: print(line, file=sys.stderr))
        seconds = model.metadata.get("train_seconds") or time.perf_counter() - t0
        model.metadata["train_seconds"] = round(seconds)
        model.metadata.update(seed=args.seed, training_data=describe_sources(args.train, train, role="training"),
                              validation_data=describe_sources(args.val, val, role="validation"))
        model.save(work / f"{layout}.safetensors")
        meta = model.metadata
        row = {"layout": layout, "threshold": model.threshold, "stage1_weight": model.stage1_weight,
               "sensitivity": meta.get("val_sensitivity"), "precision": meta.get("val_precision"),
               "f1": meta.get("val_f1"), "fp_per_subject": meta.get("val_fp_per_subject"),
               "rule": meta.get("operating_point_rule"),
               **_stage2_filter_figures(model, mined[layout]["val"]), "train_seconds": round(seconds)}
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    print(f"validation scans: {len(val)} ({sum(len(s.cmb_xyz_mm) for s in val)} CMB); training scans: {len(train)}")
    print("| layout | threshold | w | sensitivity | precision | F1 | FP/subject | stage-2 FP removed | "
          "sensitivity lost | rule | training s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['layout']} | {r['threshold']:.3f} | {r['stage1_weight']:.1f} | {r['sensitivity']:.3f} | "
              f"{r['precision']:.3f} | {r['f1']:.3f} | {r['fp_per_subject']:.2f} | {r['fp_removed']:.1%} | "
              f"{r['sensitivity_lost']:.1%} | {r['rule']} | {r['train_seconds']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
