#!/usr/bin/env python
"""Obvious synthetic microbleeds inserted into a real scan: what each stage scores them, and what the
shipped threshold keeps.

    python tools/insert_check.py --scan YOUR_SCAN.nii.gz [--copies 3 --per-copy 2 --seed 1]

Runs `cmbdet phantom --insert-into` (copies with inserted microbleeds plus one untouched copy) and
`cmbdet detect --threshold 0` on them, then prints, for every inserted microbleed, the scores of the
detection matched to it (final, stage 1, stage-2 YOLO and shape model), the best score of any other
detection (real anatomy), and how many of each the shipped threshold keeps.
"""

from __future__ import annotations

import argparse
import csv
import tempfile
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scan", required=True, help="a real scan (3-D, or 4-D multi-echo with its JSON sidecar)")
    parser.add_argument("--copies", type=int, default=3)
    parser.add_argument("--per-copy", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--weights", help="weights folder (default: shipped)")
    args = parser.parse_args(argv)

    import numpy as np

    from cmbdet.cli import main as cmbdet
    from cmbdet.evaluate import read_truth
    from cmbdet.weights import read_metadata, shipped_weights

    with tempfile.TemporaryDirectory() as tmp:
        data, out = Path(tmp) / "set", Path(tmp) / "out"
        cmbdet(["phantom", "--insert-into", args.scan, "-n", str(args.copies), "--cmb-per-copy", str(args.per_copy),
                "-o", str(data), "--seed", str(args.seed)])
        weights = ["--weights", args.weights] if args.weights else []
        cmbdet(["detect", str(data), "-o", str(out), "--no-pictures", "--threshold", "0", "--quiet", *weights])
        truth = read_truth(data / "truth.csv")
        with open(out / "detections.csv", newline="") as handle:
            rows = list(csv.DictReader(handle))
    reclassifier = Path(args.weights) / "reclassifier.safetensors" if args.weights else \
        shipped_weights("reclassifier.safetensors")
    threshold = float(read_metadata(reclassifier)["threshold"])
    xyz = np.array([[float(r[a]) for a in ("x_mm", "y_mm", "z_mm")] for r in rows]).reshape(-1, 3)
    matched: set[int] = set()
    print(f"threshold {threshold:g} (shipped with {reclassifier.name})")
    print("| subject | inserted CMB (x, y, z mm) | diameter mm | final | stage 1 | YOLO | shape |")
    print("|---|---|---|---|---|---|---|")
    kept = 0
    for subject, centres in sorted(truth.centres.items()):
        for centre, diameter in zip(centres, truth.diameters[subject], strict=True):
            mine = [n for n, r in enumerate(rows) if r["subject"] == subject and n not in matched]
            near = [n for n in mine if np.linalg.norm(xyz[n] - centre) <= max(5.0, diameter / 2 + 2.0)]
            if not near:
                print(f"| {subject} | {np.round(centre, 1).tolist()} | {diameter:.1f} | not found | | | |")
                continue
            best = max(near, key=lambda n: float(rows[n]["score"]))
            matched.add(best)
            r = rows[best]
            kept += float(r["score"]) >= threshold
            print(f"| {subject} | {np.round(centre, 1).tolist()} | {diameter:.1f} | {float(r['score']):.3f} | "
                  f"{float(r['stage1_score']):.3f} | {float(r['yolo_score']):.3f} | {float(r['shape_score']):.3f} |")
    others = [float(r["score"]) for n, r in enumerate(rows) if n not in matched]
    n_truth = sum(len(c) for c in truth.centres.values())
    print(f"kept at the threshold: {kept} of {n_truth} inserted; other detections kept: "
          f"{sum(s >= threshold for s in others)} (best other score {max(others, default=0.0):.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
