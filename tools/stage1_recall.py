#!/usr/bin/env python
"""Stage-1 candidate recall per labelled set: the share of microbleeds among a scan's first N candidates,
for several N, on each set given — on the training sets (does stage 1 fit what it was trained on?)
as well as on validation sets (does it carry over to a family it never saw?).

    python tools/stage1_recall.py --data DATA/train-classic-s103 DATA/train-rand2-s101 DATA/val-beta-s7101 \\
        [--proposer W.safetensors] [--max-candidates 30 60 150]

Matching is `cmbdet evaluate`'s (one-to-one, within max(5 mm, radius + 2 mm)). Each scan's likelihood map
is computed once; the candidates for each count are then what `cmbdet detect` reads with that count.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cmbdet.evaluate import evaluate
from cmbdet.preprocess import prepare_working_image
from cmbdet.proposer.infer import likelihood_map, load_proposer, peaks_to_candidates
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
            working = prepare_working_image(load_volume(scan.image_path), proposer.spacing_mm)
            likelihood = likelihood_map(working, proposer)
            truth += scan.truth_records()
            for n in counts:  # as propose_candidates(max_candidates=n) gives them
                rows[n] += peaks_to_candidates(likelihood, working.affine, max_candidates=n,
                                               min_score=0.05).to_records(scan.subject)
        n_cmb = sum(len(s.cmb_xyz_mm) for s in scans)
        recalls = [evaluate(truth, rows[n]).pooled["sensitivity"] for n in counts]
        print(f"| {Path(folder).name} | {len(scans)} | {n_cmb} | " + " | ".join(f"{r:.3f}" for r in recalls) + " |",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
