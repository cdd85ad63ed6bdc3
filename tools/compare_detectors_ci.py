#!/usr/bin/env python
"""How far apart two detectors' figures on one benchmark set really are: each detector's sensitivity,
precision, F1, FP/subject and FROC mean at its own threshold, with 95 % bootstrap intervals over
subjects, and the paired difference (the same resampled subjects for both).

    python tools/compare_detectors_ci.py --truth BENCH/phantoms-gamma-seed9001-n40/truth.csv \\
        --detections OLD/detections.csv NEW/detections.csv --thresholds 0.475 0.525 --names old new

The detections must hold every candidate (a run at ``--threshold 0``, as `tools/bench_detect.py` writes
them) so that the FROC can be computed; each detector's threshold is applied here. Nothing is chosen:
this only says how much of a difference between two figures the set's size can show.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from cmbdet.evaluate import DetectionTable, TruthTable, evaluate, read_detections, read_truth

FIGURES = ("sensitivity", "precision", "f1", "fp_per_subject", "froc_mean")


def resampled(truth: TruthTable, detections: DetectionTable, picks: np.ndarray) -> tuple[TruthTable, DetectionTable]:
    """The tables restricted to the subjects ``picks`` (indices into ``truth.subjects``, repeats allowed:
    each repeat becomes a subject of its own)."""
    names = [f"{truth.subjects[i]}#{n}" for n, i in enumerate(picks)]
    originals = [truth.subjects[i] for i in picks]
    new_truth = TruthTable(names, {k: truth.centres[o] for k, o in zip(names, originals, strict=True)},
                           {k: truth.diameters[o] for k, o in zip(names, originals, strict=True)})
    empty = np.empty((0, 3))
    new_dets = DetectionTable({k: detections.centres.get(o, empty) for k, o in zip(names, originals, strict=True)},
                              {k: detections.scores.get(o, np.empty(0)) for k, o in zip(names, originals, strict=True)},
                              None if detections.status is None else
                              {k: detections.status.get(o, "ok") for k, o in zip(names, originals, strict=True)})
    return new_truth, new_dets


def figures(truth: TruthTable, detections: DetectionTable, threshold: float) -> np.ndarray:
    pooled = evaluate(truth, detections, score_threshold=threshold).pooled
    return np.array([pooled[name] for name in FIGURES], float)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--truth", required=True)
    parser.add_argument("--detections", nargs=2, required=True, help="two detections.csv (all candidates)")
    parser.add_argument("--thresholds", nargs=2, type=float, required=True, help="each detector's own threshold")
    parser.add_argument("--names", nargs=2, default=["A", "B"])
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    truth = read_truth(args.truth)
    tables = [read_detections(path) for path in args.detections]
    observed = [figures(truth, table, t) for table, t in zip(tables, args.thresholds, strict=True)]
    rng = np.random.default_rng(args.seed)
    draws = np.empty((args.n_boot, 2, len(FIGURES)))
    for b in range(args.n_boot):
        picks = rng.integers(0, len(truth.subjects), len(truth.subjects))
        for d, (table, threshold) in enumerate(zip(tables, args.thresholds, strict=True)):
            draws[b, d] = figures(*resampled(truth, table, picks), threshold)

    print(f"{len(truth.subjects)} subjects, {truth.n_lesions} lesions; {args.n_boot} bootstrap resamples of the "
          f"subjects (seed {args.seed}); 95 % percentile intervals")
    print(f"| figure | {args.names[0]} (threshold {args.thresholds[0]:g}) | {args.names[1]} (threshold "
          f"{args.thresholds[1]:g}) | {args.names[1]} - {args.names[0]} (paired) |")
    print("|---|---|---|---|")
    for k, name in enumerate(FIGURES):
        difference = draws[:, 1, k] - draws[:, 0, k]
        lo, hi = np.nanpercentile(difference, [2.5, 97.5])
        cells = [f"{observed[d][k]:.3f} {'[{:.3f}, {:.3f}]'.format(*np.nanpercentile(draws[:, d, k], [2.5, 97.5]))}"
                 for d in range(2)]
        print(f"| {name} | {cells[0]} | {cells[1]} | {observed[1][k] - observed[0][k]:+.3f} [{lo:+.3f}, {hi:+.3f}] |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
