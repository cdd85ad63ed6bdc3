#!/usr/bin/env python
"""Benchmark: held-out phantoms -> stage 1 alone, stage 1 + stage 2, and a LoG baseline, in one run.

    python tools/bench_detect.py --n 30 --seed 9001 --workdir /tmp/cmbdet-bench

Makes a held-out phantom set (seed and protocol draws not used in training; reused if present),
runs each method in its own process (so that peak memory is its own), scores every method with the
same rules (cmbdet.evaluate) and prints sensitivity, FP/subject, precision, F1, FROC, candidates per
subject, seconds per volume (median) and peak memory. Writes the figures to WORKDIR/bench.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np

METHODS = ("candidates", "stage1", "stage1+2", "log")


def run_method(method: str, data_dir: str, weights: str | None, queue) -> None:
    """In a child process: detections of ``method`` on every scan, timings, and peak memory."""
    import torch

    from cmbdet.pipeline import load_detector
    from cmbdet.training_data import read_labelled_set
    from cmbdet.volume import load_volume

    torch.set_num_threads(2)
    scans = read_labelled_set(data_dir)
    rows, seconds, n_candidates = [], [], []
    if method == "log":
        detect = _log_detector()
    else:
        started = time.perf_counter()
        detector = load_detector(weights, reclassify=(method == "stage1+2"),
                                 threshold=0.0 if method == "candidates" else None)
        load_seconds = time.perf_counter() - started
        detect = detector.detect
    for scan in scans:
        started = time.perf_counter()
        volume = load_volume(scan.image_path)
        found = detect(volume)
        seconds.append(time.perf_counter() - started)
        n_candidates.append(len(found))
        rows += [{"subject": scan.subject, "x_mm": p[0], "y_mm": p[1], "z_mm": p[2], "score": s}
                 for p, s in zip(found.xyz_mm, found.score, strict=True)]
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put({"method": method, "rows": rows, "seconds": seconds, "n": n_candidates, "peak_mib": peak_mib,
               "load_seconds": 0.0 if method == "log" else load_seconds})


def _log_detector():
    """Classical baseline: Laplacian-of-Gaussian dark-blob detection (scikit-image) inside the brain."""
    from nibabel.affines import apply_affine
    from skimage.feature import blob_log

    from cmbdet.detections import Detections
    from cmbdet.preprocess import prepare_working_image

    def detect(volume):
        working = prepare_working_image(volume, 1.0)
        dark = np.clip(1.0 - working.image, 0, 1) * working.mask
        blobs = blob_log(dark, min_sigma=0.7, max_sigma=3.0, num_sigma=6, threshold=0.05, overlap=0.3)
        if len(blobs) == 0:
            return Detections.empty()
        ijk, sigma = blobs[:, :3], blobs[:, 3]
        strength = dark[tuple(np.rint(ijk).astype(int).T)]
        order = np.argsort(-strength)[:200]
        xyz = apply_affine(working.affine, ijk[order])
        return Detections(xyz, np.clip(strength[order], 0, 1), 2 * np.sqrt(3) * sigma[order])

    return detect


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=30)
    parser.add_argument("--seed", type=int, default=9001, help="phantom seed (training uses other seeds)")
    parser.add_argument("--workdir", default="/tmp/cmbdet-bench")
    parser.add_argument("--weights", help="weights folder (default: shipped)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    args = parser.parse_args(argv)

    from cmbdet.evaluate import best_f1_threshold, evaluate, read_truth
    from cmbdet.phantom import write_phantom_set

    workdir = Path(args.workdir)
    data = workdir / f"phantoms-seed{args.seed}-n{args.n}"
    if not (data / "truth.csv").exists():
        started = time.perf_counter()
        write_phantom_set(data, args.n, args.seed, montage=False)
        print(f"made {args.n} held-out phantoms in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    truth = read_truth(data / "truth.csv")
    ctx = mp.get_context("spawn")
    results = {}
    for method in args.methods:
        queue = ctx.Queue()
        child = ctx.Process(target=run_method, args=(method, str(data), args.weights, queue))
        child.start()
        out = queue.get()
        child.join()
        scored = evaluate(truth, out["rows"])
        if method == "log":  # the baseline's threshold is chosen on the test set itself (optimistic)
            threshold, _ = best_f1_threshold(truth, out["rows"], thresholds=np.round(np.arange(0.05, 1.0, 0.05), 2))
            scored = evaluate(truth, out["rows"], score_threshold=threshold)
        pooled = scored.pooled
        results[method] = {
            "sensitivity": pooled["sensitivity"], "precision": pooled["precision"], "f1": pooled["f1"],
            "fp_per_subject": pooled["fp_per_subject"], "froc_mean": pooled["froc_mean"],
            "sens_at_0.5fp": pooled["sens_at_0.5fp"], "sens_at_2fp": pooled["sens_at_2fp"],
            "quiet_rate": pooled["quiet_rate"], "detections_per_subject": float(np.mean(out["n"])),
            "seconds_median": statistics.median(out["seconds"]), "seconds_max": max(out["seconds"]),
            "model_load_seconds": out["load_seconds"], "peak_mib": out["peak_mib"], "tp": pooled["tp"],
            "fp": pooled["fp"], "fn": pooled["fn"],
        }
        print(f"{method}: done", file=sys.stderr)
    if "candidates" in results and "stage1+2" in results:
        c, s = results["candidates"], results["stage1+2"]
        results["stage2_effect"] = {
            "fp_removed_fraction": 1 - s["fp"] / c["fp"] if c["fp"] else float("nan"),
            "sensitivity_lost": c["sensitivity"] - s["sensitivity"],
        }
    n_cmb = sum(len(truth.centres[s]) for s in truth.subjects)
    n_free = sum(len(truth.centres[s]) == 0 for s in truth.subjects)
    print(f"\nheld-out phantoms: {len(truth.subjects)} subjects ({n_free} without CMB), {n_cmb} CMBs; "
          f"seed {args.seed}")
    header = ("method", "sens", "prec", "F1", "FP/subj", "FROC", "quiet", "det/subj", "s/vol", "peak MiB")
    print("  ".join(f"{h:>9}" for h in header))
    for method in args.methods:
        r = results[method]
        values = (method, r["sensitivity"], r["precision"], r["f1"], r["fp_per_subject"], r["froc_mean"],
                  r["quiet_rate"], r["detections_per_subject"], r["seconds_median"], r["peak_mib"])
        print("  ".join(f"{v:>9.3f}" if isinstance(v, float) else f"{v!s:>9}" for v in values))
    if "stage2_effect" in results:
        e = results["stage2_effect"]
        print(f"stage 2 removes {e['fp_removed_fraction']:.1%} of stage-1 candidate false positives, "
              f"losing {e['sensitivity_lost']:.3f} sensitivity")
    print("candidates = stage 1 with every candidate kept (max 30/subject): its sensitivity is stage-1 recall.")
    print("log = LoG baseline with its threshold chosen on this same set (optimistic for the baseline).")
    (workdir / "bench.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
