"""Benchmark the lesion localizer (network and classical peer, same run) on a labelled phantom set.

    python tools/bench_lesions.py --data DIR [--weights W] [--modality ct|mri] [--json OUT.json]

DIR: a phantom folder (`cmbdet phantom --kind ct` / ``--kind mri-hemorrhage``): images with their
truth label maps ``*_desc-truth_dseg.nii.gz`` (same grid as the image, MRI: the reference grid).
Scoring (issue 11): a truth lesion is found when a reported centroid lies inside it or within 10 mm
of its centroid, one report per lesion (closest first); every other report is a false positive.
Dice per subject on the label map in the input grid (subjects with hemorrhage); volume error on
matched lesions; seconds per volume = reading the file + localization (no output writing), wall
clock and CPU time of this process (torch threads as set by OMP_NUM_THREADS).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from cmbdet.lesions.ct import load_ct_volume
from cmbdet.lesions.infer import classical_ct_lesions, load_lesion_model, localize_lesions, set_operating_point
from cmbdet.lesions.mri import classical_mri_lesions, group_mri_files, load_sequence_set
from cmbdet.lesions.truth import TruthLesion, match_reports, read_truth_map


def truth_lesions(path: Path) -> tuple[np.ndarray, nib.Nifti1Image, list[TruthLesion]]:
    labels, _, lesions = read_truth_map(path)
    return labels, nib.load(str(path)), lesions


def score_subject(pred_labels: np.ndarray, pred_xyz: np.ndarray, pred_ml: np.ndarray, truth_labels: np.ndarray,
                  truth_image: nib.Nifti1Image, truth: list[TruthLesion]) -> dict:
    """Matching, Dice and volume errors of one subject (prediction already in the truth's grid)."""
    matched = match_reports(pred_xyz, truth_labels, truth_image.affine, truth)
    errors = [abs(float(pred_ml[p]) - truth[t].volume_ml) for p, t in matched.items()]
    used_p = set(matched)
    used_t = set(matched.values())
    pred, ref = pred_labels > 0, truth_labels > 0
    dice = 2.0 * float((pred & ref).sum()) / max(float(pred.sum() + ref.sum()), 1.0) if ref.any() else None
    return {"n_truth": len(truth), "tp": len(used_t), "fp": len(pred_xyz) - len(used_p), "dice": dice,
            "volume_errors": errors}


def summarize(rows: list[dict]) -> dict:
    n_truth = sum(r["n_truth"] for r in rows)
    tp = sum(r["tp"] for r in rows)
    fp = sum(r["fp"] for r in rows)
    dice = [r["dice"] for r in rows if r["dice"] is not None]
    errors = [e for r in rows for e in r["volume_errors"]]
    free = [r for r in rows if r["n_truth"] == 0]
    return {"subjects": len(rows), "lesions": n_truth, "sensitivity": tp / max(n_truth, 1),
            "fp_per_subject": fp / max(len(rows), 1), "dice_mean": float(np.mean(dice)) if dice else None,
            "dice_median": float(np.median(dice)) if dice else None,
            "median_abs_volume_error_ml": float(np.median(errors)) if errors else None,
            "hemorrhage_free": len(free), "hemorrhage_free_clean": sum(r["fp"] == 0 for r in free),
            "seconds_median": float(np.median([r["seconds"] for r in rows])),
            "seconds_max": float(np.max([r["seconds"] for r in rows])),
            "cpu_seconds_median": float(np.median([r["cpu_seconds"] for r in rows]))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--weights", help="lesion weights (default: the shipped CT weights; MRI: none)")
    parser.add_argument("--modality", choices=("ct", "mri"), default="ct")
    parser.add_argument("--limit", type=int, default=0, help="first N subjects only")
    parser.add_argument("--subjects", nargs="+", help="only these subjects (e.g. a model's validation scans)")
    parser.add_argument("--threshold", type=float, help="override the stored probability threshold")
    parser.add_argument("--min-ml", type=float, help="override the stored minimum lesion volume")
    parser.add_argument("--refine", choices=("on", "off"), help="override the stored density refinement (CT)")
    parser.add_argument("--refine-mm", type=float,
                        help="override how far (mm) the density refinement may move a margin out (CT; 0: one voxel)")
    parser.add_argument("--max-dense", type=float,
                        help="override the stored calcification filter (CT; 1 = off)")
    parser.add_argument("--group-mm", type=float, help="override the stored grouping distance (pieces of blood "
                                                       "closer than this are one lesion)")
    parser.add_argument("--no-classical", action="store_true", help="skip the classical peer")
    parser.add_argument("--json", help="also write the figures and per-subject rows here")
    args = parser.parse_args(argv)
    folder = Path(args.data)
    if args.modality == "ct":
        items = [(p.name.replace("_ct.nii.gz", ""), {"ct": p}) for p in sorted(folder.glob("*_ct.nii.gz"))]
    else:
        files = [p for p in sorted(folder.glob("*.nii.gz")) if "desc-truth" not in p.name]
        items = [(g.subject, g.files) for g in group_mri_files(files)]
    if args.subjects:
        wanted = {name.replace("_ct.nii.gz", "").replace("_desc-truth_dseg.nii.gz", "") for name in args.subjects}
        items = [(subject, files) for subject, files in items if subject in wanted]
    if args.limit:
        items = items[: args.limit]
    model = load_lesion_model(args.weights) if (args.weights or args.modality == "ct") else None
    if model is not None:
        set_operating_point(model, threshold=args.threshold, min_ml=args.min_ml, refine=args.refine,
                            refine_mm=args.refine_mm, max_dense=args.max_dense, group_mm=args.group_mm)
    methods = (["network"] if model is not None else []) + ([] if args.no_classical else ["classical"])
    per_method: dict[str, list[dict]] = {m: [] for m in methods}
    for subject, files in items:
        first = next(iter(files.values()))
        stem = first.name.split("_ct.nii.gz")[0] if args.modality == "ct" else subject
        truth_labels, truth_image, truth = truth_lesions(first.with_name(f"{stem}_desc-truth_dseg.nii.gz"))
        for method in methods:
            started, cpu_started = time.perf_counter(), time.process_time()
            if args.modality == "ct":
                volume = load_ct_volume(files["ct"])
                found = localize_lesions(volume, model) if method == "network" else classical_ct_lesions(volume)
                reference = volume
            else:
                seqs = load_sequence_set(files)
                found = localize_lesions(seqs, model) if method == "network" else classical_mri_lesions(seqs)
                reference = seqs.reference
            seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
            pred = reference.to_source_array(found.labels)
            row = score_subject(pred, found.xyz_mm, found.volume_ml, truth_labels, truth_image, truth)
            row.update(subject=subject, method=method, seconds=seconds, cpu_seconds=cpu, n_found=len(found))
            per_method[method].append(row)
            print(f"{subject} {method}: truth {row['n_truth']} found {len(found)} tp {row['tp']} fp {row['fp']} "
                  f"dice {row['dice'] if row['dice'] is None else round(row['dice'], 3)} ({seconds:.1f} s)",
                  file=sys.stderr, flush=True)
    summary = {m: summarize(rows) for m, rows in per_method.items()}
    settings = "" if model is None else (f" threshold {model.threshold:g} min_ml {model.min_ml:g} "
                                         f"refine {'on' if model.refine_hu else 'off'} ({model.refine_mm:g} mm) "
                                         f"max_dense {model.max_dense_fraction:g} group_mm {model.group_mm:g}")
    print(f"data: {folder} ({len(items)} subjects)  weights: {args.weights or 'shipped'}{settings}  "
          f"modality: {args.modality}")
    header = ("method", "sens", "FP/subj", "Dice mean", "Dice median", "med |dV| mL", "free clean", "s/vol med", "max",
              "cpu s")
    print("{:<10} {:>6} {:>8} {:>10} {:>11} {:>12} {:>10} {:>9} {:>6} {:>6}".format(*header))
    for method, s in summary.items():
        def fmt(v, f="{:.3f}"):
            return "-" if v is None else f.format(v)
        print(f"{method:<10} {fmt(s['sensitivity']):>6} {fmt(s['fp_per_subject'], '{:.2f}'):>8} "
              f"{fmt(s['dice_mean']):>10} {fmt(s['dice_median']):>11} "
              f"{fmt(s['median_abs_volume_error_ml'], '{:.2f}'):>12} "
              f"{s['hemorrhage_free_clean']:>4}/{s['hemorrhage_free']:<5} {s['seconds_median']:>9.1f} "
              f"{s['seconds_max']:>6.1f} {s['cpu_seconds_median']:>6.1f}")
    print(f"lesions: {summary[methods[0]]['lesions']}, subjects: {summary[methods[0]]['subjects']}, "
          f"hemorrhage-free: {summary[methods[0]]['hemorrhage_free']}")
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": summary, "rows": per_method}, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
