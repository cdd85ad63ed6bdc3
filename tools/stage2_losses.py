#!/usr/bin/env python
"""Which microbleeds does each stage lose? Per labelled microbleed: is it among stage 1's candidates, and
does stage 2 keep it at a threshold — by diameter, MARS region and (where the set's protocols.csv has it)
slice thickness. For a validation family: the test family is for headline figures only.

    cmbdet detect DATA/val-delta-s8101/*.nii.gz --threshold 0 --no-pictures -o OUT   (every candidate)
    python tools/stage2_losses.py --data DATA/val-delta-s8101 --detections OUT/detections.csv --threshold 0.475

Matching is `cmbdet evaluate`'s (one-to-one, closest first, within max(5 mm, radius + 2 mm)), once among
all the candidates and once among those scoring at least ``--threshold``.
"""

from __future__ import annotations

import argparse
import csv
from collections import defaultdict
from pathlib import Path

import numpy as np

from cmbdet.evaluate import match_detections


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _bin(value: float, edges: list[float], unit: str) -> str:
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        if lo < value <= hi:
            return f"{lo:g}-{hi:g} {unit}"
    return f"> {edges[-1]:g} {unit}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="labelled folder (truth.csv, protocols.csv beside the scans)")
    parser.add_argument("--detections", required=True, help="detections.csv of a run with --threshold 0")
    parser.add_argument("--threshold", type=float, required=True, help="the operating point to judge stage 2 at")
    args = parser.parse_args(argv)
    data = Path(args.data)
    truth = [r for r in _rows(data / "truth.csv") if r.get("x_mm") not in ("", None)]
    protocols = {r["subject"]: r for r in _rows(data / "protocols.csv")} if (data / "protocols.csv").exists() else {}
    detections = defaultdict(list)
    for row in _rows(Path(args.detections)):
        detections[row["subject"]].append(row)
    by_subject = defaultdict(list)
    for row in truth:
        by_subject[row["subject"]].append(row)

    groups: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0, 0]))
    for subject, cmbs in by_subject.items():
        xyz = np.array([[float(c[k]) for k in ("x_mm", "y_mm", "z_mm")] for c in cmbs])
        diameter = np.array([float(c.get("diameter_mm") or 0.0) for c in cmbs])
        dets = detections.get(subject, [])
        det_xyz = np.array([[float(d[k]) for k in ("x_mm", "y_mm", "z_mm")] for d in dets]).reshape(-1, 3)
        score = np.array([float(d["score"]) for d in dets])
        found = set(match_detections(xyz, diameter, det_xyz, score).tolist())
        keep = score >= args.threshold
        kept = set(match_detections(xyz, diameter, det_xyz[keep], score[keep]).tolist())
        slice_mm = protocols.get(subject, {}).get("slice_mm")
        for n, cmb in enumerate(cmbs):
            keys = {"diameter": _bin(diameter[n], [0, 3, 4, 6, 10], "mm"), "region": cmb.get("region") or "?"}
            if slice_mm not in (None, ""):
                keys["slice thickness"] = _bin(float(slice_mm), [0, 1.5, 2.5, 4, 7], "mm")
            for what, key in [("all", "all"), *keys.items()]:
                counts = groups[what][key]
                counts[0] += 1
                counts[1] += n in found
                counts[2] += n in kept
    print(f"{data.name}: {sum(len(c) for c in by_subject.values())} microbleeds in {len(by_subject)} scans with any; "
          f"stage 2 at threshold {args.threshold:g}")
    print("| by | group | CMBs | among stage-1 candidates | kept by stage 2 | kept of those found |")
    print("|---|---|---|---|---|---|")
    for what, table in groups.items():
        for key in sorted(table):
            total, found, kept = table[key]
            print(f"| {what} | {key} | {total} | {found} ({found / total:.0%}) | {kept} ({kept / total:.0%}) | "
                  f"{kept}/{found} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
