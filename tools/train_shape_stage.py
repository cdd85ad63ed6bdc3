#!/usr/bin/env python
"""Train the stage-2 shape model (3-D ball-or-tube measurements, cmbdet/reclassifier/shape.py), choose
on the VALIDATION family how stage 2 combines it with the YOLO classifier, and compare the
alternatives side by side there.

    python tools/train_shape_stage.py --train DATA/train-rand-s101 DATA/train-rand-s102 DATA/train-classic-s103 \
        --val DATA/val-beta-s7101 DATA/val-beta-s7102 --cache WORK/shape -o weights/reclassifier.safetensors

Stage 1 (``--proposer``, default the shipped one) proposes up to ``--max-candidates`` candidates per
scan; the shape model learns from the training scans' candidates and microbleed centres. On the
validation scans, for each number of candidates stage 2 reads and each share of the shape model in
the stage-2 probability (0 = the YOLO classifier alone, 1 = the shape model alone), the stage-1
weight and threshold are chosen by the same rule as for the YOLO classifier alone
(`choose_operating_point`); the best validation F1 is shipped. Every row is printed: these are
validation figures (each row's operating point is chosen on these scans, so all are optimistic
alike); the test family is not touched here. ``--seed`` seeds the trees. Per-scan measurements are
cached in ``--cache``.

``--keep-shape`` refits nothing: the shape model of ``--reclassifier`` is kept and only the operating
point (candidates, shape share, stage-1 weight, threshold) is chosen again on ``--val`` — for a
corrected or new validation family:

    python tools/train_shape_stage.py --keep-shape --val DATA/val-beta-s7101 DATA/val-beta-s7102 \
        --cache WORK/shape -o weights/reclassifier.safetensors
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np


def _samples(scan, proposer, reclassifier, count: int, cache: Path, want_yolo: bool):
    """A scan's `ShapeSamples` (and the YOLO probabilities of its candidates if ``want_yolo``), cached."""
    from cmbdet.preprocess import prepare_working_image
    from cmbdet.proposer.infer import propose_candidates
    from cmbdet.reclassifier.infer import candidate_patches, cmb_probability
    from cmbdet.reclassifier.shape import CONTEXT_SPACING_MM, FEATURE_NAMES, shape_features
    from cmbdet.reclassifier.shape_train import ShapeSamples, known_mimics, shape_samples
    from cmbdet.volume import load_volume

    path = cache / f"{scan.subject}.npz"
    stored = dict(np.load(path)) if path.exists() else None
    if stored is not None and tuple(stored.get("feature_names", ())) != FEATURE_NAMES:
        # measured with other shape features: measure the same candidates again
        volume = load_volume(scan.image_path)
        working = prepare_working_image(volume, CONTEXT_SPACING_MM)
        stored.update(cand=shape_features(volume, stored["xyz"], working),
                      truth=shape_features(volume, scan.cmb_xyz_mm, working),
                      mimic=shape_features(volume, known_mimics(scan), working), feature_names=np.array(FEATURE_NAMES))
        _save(path, stored)
    if stored is not None and (not want_yolo or "yolo" in stored):
        xyz, stage1 = stored["xyz"].reshape(-1, 3), stored["stage1"]
        rows = [{"subject": scan.subject, "x_mm": float(p[0]), "y_mm": float(p[1]), "z_mm": float(p[2]),
                 "score": float(s)} for p, s in zip(xyz, stage1, strict=True)]
        samples = ShapeSamples(scan.subject, rows, stored["cand"], stored["hit"] >= 0, stored["clear"].astype(bool),
                               stored["truth"], scan.truth_records(), stored["mimic"])
        return samples, stored.get("yolo")
    volume = load_volume(scan.image_path)
    working = prepare_working_image(volume, proposer.spacing_mm)  # stage 1's, and the context measurements'
    found = propose_candidates(working, proposer, max_candidates=count)
    samples = shape_samples(scan, volume, found.xyz_mm, found.score, working)
    arrays = {"cand": samples.candidate_features, "truth": samples.truth_features, "stage1": found.score,
              "hit": np.where(samples.is_cmb, 0, -1), "clear": samples.clear_mimic, "xyz": found.xyz_mm,
              "mimic": samples.mimic_features, "feature_names": np.array(FEATURE_NAMES)}
    yolo = None
    if want_yolo:
        yolo = cmb_probability(reclassifier, candidate_patches(volume, found.xyz_mm, reclassifier))
        arrays["yolo"] = yolo
    _save(path, arrays)
    return samples, yolo


def _save(path: Path, arrays: dict) -> None:
    from cmbdet.atomic import atomic_path

    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays)


def _figures_at(point: dict, shape, samples: list, yolo: list) -> dict:
    """Pooled figures of these scans at a chosen stage-2 point (candidates, shape share, stage-1 weight,
    threshold), scored as `cmbdet evaluate` scores detections."""
    from cmbdet.evaluate import evaluate
    from cmbdet.reclassifier.infer import final_score, stage2_probability

    count, truth, detections = point["max_candidates"], [], []
    for s, y in zip(samples, yolo, strict=True):
        rows = s.candidate_rows[:count]
        stage2 = stage2_probability(y[:count], shape.probability(s.candidate_features[:count]), point["shape_weight"])
        fused = final_score(np.array([r["score"] for r in rows]), stage2, point["stage1_weight"])
        truth += s.truth_rows
        detections += [dict(r, score=float(f)) for r, f in zip(rows, fused, strict=True) if f >= point["threshold"]]
    return evaluate(truth, detections).pooled


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", nargs="+", default=[], help="training family folders (truth.csv beside)")
    parser.add_argument("--val", nargs="+", required=True, help="validation family folders")
    parser.add_argument("--proposer", help="stage-1 weights (default: shipped)")
    parser.add_argument("--reclassifier", help="stage-2 YOLO weights to combine with (default: shipped)")
    parser.add_argument("--max-candidates", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-trees", type=int, help="boosting rounds of the shape model (default: the library's)")
    parser.add_argument("--keep-shape", action="store_true",
                        help="keep the shape model of --reclassifier; choose only the operating point on --val")
    parser.add_argument("--cache", required=True, help="folder for per-scan measurements")
    parser.add_argument("-o", "--output", required=True, help="stage-2 weights to write (YOLO + shape model)")
    args = parser.parse_args(argv)
    if not args.keep_shape and not args.train:
        parser.error("--train is required unless --keep-shape")

    from cmbdet.proposer.infer import load_proposer
    from cmbdet.reclassifier.infer import load_reclassifier
    from cmbdet.reclassifier.shape_train import choose_stage2_point, train_shape_model
    from cmbdet.training_data import describe_sources, read_labelled_set
    from cmbdet.weights import shipped_weights

    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    proposer = load_proposer(args.proposer)
    reclassifier = load_reclassifier(args.reclassifier or shipped_weights("reclassifier.safetensors"))
    train = [s for d in args.train for s in read_labelled_set(d)]
    val_sets = [read_labelled_set(d) for d in args.val]
    val = [s for scans in val_sets for s in scans]
    started = time.perf_counter()
    train_samples, val_samples, val_yolo = [], [], []
    for n, scan in enumerate(train + val, start=1):
        is_val = n > len(train)
        samples, yolo = _samples(scan, proposer, reclassifier, args.max_candidates, cache, is_val)
        (val_samples if is_val else train_samples).append(samples)
        if is_val:
            val_yolo.append(yolo)
        if n % 20 == 0:
            seconds = time.perf_counter() - started
            print(f"measured {n}/{len(train) + len(val)} scans ({seconds:.0f} s)", file=sys.stderr)

    t0 = time.perf_counter()
    if args.keep_shape:
        if reclassifier.shape is None:
            parser.error("--keep-shape: the --reclassifier weights carry no shape model")
        shape = reclassifier.shape
    else:
        trees = {} if args.max_trees is None else {"max_trees": args.max_trees}
        shape = train_shape_model(train_samples, seed=args.seed, **trees)
    fit_seconds = time.perf_counter() - t0
    best, rows = choose_stage2_point(val_samples, val_yolo,
                                     shape, counts=[c for c in (30, 60, 100, 150) if c <= args.max_candidates])
    n_cmb = sum(len(s.cmb_xyz_mm) for s in val)
    print(f"validation: {len(val)} scans, {n_cmb} CMB; " + (
        "shape model kept from the --reclassifier weights" if args.keep_shape else
        f"training: {len(train)} scans, {sum(int(s.is_cmb.sum()) for s in train_samples)} matched candidates, "
        f"{sum(len(s.truth_features) for s in train_samples)} CMB centres; shape model fit in {fit_seconds:.0f} s"))
    print("| candidates | shape share | stage-1 weight | threshold | sensitivity | precision | F1 | FP/subject | "
          "candidate recall | rule |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        mark = " **(shipped)**" if r is best else ""
        print(f"| {r['max_candidates']} | {r['shape_weight']:.2f} | {r['stage1_weight']:.1f} | {r['threshold']:.3f} | "
              f"{r['sensitivity']:.3f} | {r['precision']:.3f} | {r['f1']:.3f}{mark} | {r['fp_per_subject']:.2f} | "
              f"{r['candidate_recall']:.3f} | {r['rule']} |")

    if len(args.val) > 1:
        print("at the chosen point, per validation folder:")
        start = 0
        for folder, scans in zip(args.val, val_sets, strict=True):
            count = len(scans)
            figures = _figures_at(best, shape, val_samples[start:start + count], val_yolo[start:start + count])
            print(f"  {Path(folder).name}: {count} scans, sensitivity {figures['sensitivity']:.3f}, precision "
                  f"{figures['precision']:.3f}, F1 {figures['f1']:.3f}, FP/subject {figures['fp_per_subject']:.2f}")
            start += count

    reclassifier.shape = shape
    reclassifier.shape_weight = best["shape_weight"]
    reclassifier.stage1_weight = best["stage1_weight"]
    reclassifier.threshold = best["threshold"]
    if not args.keep_shape:
        reclassifier.metadata.update(shape_training_data=describe_sources(args.train, train, role="training"),
                                     shape_seed=args.seed, shape_trees=len(shape.tree_start))
    reclassifier.metadata.update(
        max_candidates=best["max_candidates"], shape_validation_data=describe_sources(args.val, val, role="validation"),
        # what the operating point and the val_* figures below were chosen and measured on (``validation_data``
        # describes the YOLO classifier's own validation, which may be another set)
        operating_point_validation_data=describe_sources(args.val, val, role="validation"),
        operating_point_only=bool(args.keep_shape),
        shape_rule="best validation F1 over candidates x shape share, each at the operating-point rule of the YOLO "
                   "classifier",
        val_threshold=best["threshold"], val_stage1_weight=best["stage1_weight"], val_shape_weight=best["shape_weight"],
        val_sensitivity=best["sensitivity"], val_precision=best["precision"], val_f1=best["f1"],
        val_fp_per_subject=best["fp_per_subject"], val_candidate_recall=best["candidate_recall"],
        operating_point_rule=best["rule"],
    )
    reclassifier.save(args.output)
    print(f"wrote {args.output}: {best['max_candidates']} candidates, shape share {best['shape_weight']:.2f}, "
          f"stage-1 weight {best['stage1_weight']:.1f}, threshold {best['threshold']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
