#!/usr/bin/env python
"""Which working grid for stage 1? Trains one proposer per grid spacing with the same budget and data,
then measures held-out candidate recall, stage-1-alone F1 and seconds per scan for each.

    python tools/compare_working_grid.py --train DATA/train-s1 --val DATA/val-s7001 \
        --spacings 0.8 1.0 1.5 --steps 400

Every grid sees the same physical patch (``--patch-mm``, default 48 mm, rounded to a multiple of 4
voxels), the same number of steps, batch size, learning rate and seed; only the grid differs. Training
from scratch with a short budget ranks the grids; it does not reproduce the shipped model's figures.
Prints one row per grid and writes the figures to ``--json`` if given.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", nargs="+", required=True, help="labelled folders or manifests to train on")
    parser.add_argument("--val", nargs="+", required=True, help="held-out labelled folders or manifests")
    parser.add_argument("--spacings", nargs="+", type=float, default=[0.8, 1.0, 1.5])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--patch-mm", type=float, default=48.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)

    from cmbdet.proposer.infer import propose_candidates
    from cmbdet.proposer.train import prepare_scans, train_proposer, validate_proposer
    from cmbdet.training_data import read_labelled_set
    from cmbdet.volume import load_volume

    torch.set_num_threads(2)
    train = [s for source in args.train for s in read_labelled_set(source)]
    val = [s for source in args.val for s in read_labelled_set(source)]
    print(f"{len(train)} training scans, {len(val)} held-out scans, {args.steps} steps per grid", file=sys.stderr)
    results = []
    for spacing in args.spacings:
        patch = max(16, int(round(args.patch_mm / spacing / 4)) * 4)
        started = time.perf_counter()
        prepared = prepare_scans(train, spacing)
        proposer = train_proposer(prepared, np.random.default_rng(args.seed), steps=args.steps,
                                  batch_size=args.batch_size, patch=patch, spacing_mm=spacing,
                                  log=lambda line, grid=spacing: print(f"[{grid} mm] {line}", file=sys.stderr))
        del prepared
        train_seconds = time.perf_counter() - started
        report = validate_proposer(proposer, val)
        seconds = []
        for scan in val[:10]:
            volume = load_volume(scan.image_path)
            tick = time.perf_counter()
            propose_candidates(volume, proposer)
            seconds.append(time.perf_counter() - tick)
        row = {"spacing_mm": spacing, "patch_voxels": patch, "train_seconds": round(train_seconds),
               "recall_at_30": report["val_recall_at_max_candidates"],
               "candidates_per_scan": report["val_candidates_per_scan"], "stage1_f1": report["val_f1"],
               "stage1_threshold": report["threshold"], "median_stage1_s_per_scan": statistics.median(seconds)}
        results.append(row)
        print(json.dumps(row), file=sys.stderr)
    print(f"{'grid mm':>8} {'patch':>6} {'recall@30':>10} {'cand/scan':>10} {'stage-1 F1':>11} {'s/scan':>7} "
          f"{'train s':>8}")
    for r in results:
        print(f"{r['spacing_mm']:>8.2f} {r['patch_voxels']:>6d} {r['recall_at_30']:>10.3f} "
              f"{r['candidates_per_scan']:>10.1f} {r['stage1_f1']:>11.3f} {r['median_stage1_s_per_scan']:>7.2f} "
              f"{r['train_seconds']:>8d}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
