#!/usr/bin/env python
"""Stage-1 candidate recall per labelled set: the share of microbleeds among a scan's first N candidates,
for several N, on each set given — on the training sets (does stage 1 fit what it was trained on?)
as well as on validation sets (does it carry over to a family it never saw?).

    python tools/stage1_recall.py --data DATA/train-classic-s103 DATA/train-rand2-s101 DATA/val-beta-s7101 \\
        [--proposer W.safetensors] [--max-candidates 30 60 150]

Matching is `cmbdet evaluate`'s (one-to-one, within max(5 mm, radius + 2 mm)). Each scan runs through
stage 1 once, with the most candidates asked for; the smaller counts are its first candidates.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cmbdet.evaluate import evaluate
from cmbdet.proposer.infer import load_proposer, propose_candidates
from cmbdet.training_data import read_labelled_set
from cmbdet.volume import load_volume


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", required=True, help="labelled folders (truth.csv beside the scans)")
    parser.add_argument("--proposer", help="stage-1 weights (default: the shipped ones)")
    parser.add_argument("--max-candidates", nargs="+", type=int, default=[30, 60, 150])
    args = parser.parse_args(argv)
    proposer = load_proposer(args.proposer)
    counts = sorted(args.max_candidates)
    print(f"stage 1: {args.proposer or 'shipped weights'}")
    print("| set | scans | CMBs | " + " | ".join(f"recall, {n} candidates" for n in counts) + " |")
    print("|---|---|---|" + "---|" * len(counts))
    for folder in args.data:
        scans = read_labelled_set(folder)
        truth, rows = [], {n: [] for n in counts}
        for scan in scans:
            candidates = propose_candidates(load_volume(scan.image_path), proposer, max_candidates=counts[-1])
            records = candidates.to_records(scan.subject)
            truth += scan.truth_records()
            for n in counts:
                rows[n] += records[:n]
        n_cmb = sum(len(s.cmb_xyz_mm) for s in scans)
        recalls = [evaluate(truth, rows[n]).pooled["sensitivity"] for n in counts]
        print(f"| {Path(folder).name} | {len(scans)} | {n_cmb} | " + " | ".join(f"{r:.3f}" for r in recalls) + " |",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
