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


def _xyz(rows: list[dict]) -> np.ndarray:
    """(N, 3) scanner RAS mm of CSV rows with x_mm, y_mm, z_mm."""
    return np.array([[float(r[k]) for k in ("x_mm", "y_mm", "z_mm")] for r in rows]).reshape(-1, 3)


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
        xyz = _xyz(cmbs)
        diameter = np.array([float(c.get("diameter_mm") or 0.0) for c in cmbs])
        dets = detections.get(subject, [])
        det_xyz = _xyz(dets)
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
    _false_positives_by_mimic(data, detections, by_subject, args.threshold)
    return 0


def _false_positives_by_mimic(data: Path, detections: dict, by_subject: dict, threshold: float) -> None:
    """Detections at the threshold that match no microbleed, by the kind of the nearest known mimic
    (the phantom's mimics.csv) within `MIMIC_RADIUS_MM`."""
    if not (data / "mimics.csv").exists():
        return
    mimics = defaultdict(list)
    for row in _rows(data / "mimics.csv"):
        mimics[row["subject"]].append(row)
    kinds: dict[str, int] = defaultdict(int)
    for subject, dets in detections.items():
        dets = [d for d in dets if float(d["score"]) >= threshold]
        if not dets:
            continue
        det_xyz = _xyz(dets)
        cmbs = by_subject.get(subject, [])
        matched = match_detections(
            _xyz(cmbs),
            np.array([float(c.get("diameter_mm") or 0.0) for c in cmbs]), det_xyz,
            np.array([float(d["score"]) for d in dets]))
        known = mimics.get(subject, [])
        known_xyz = _xyz(known)
        for point in det_xyz[matched < 0]:
            distance = np.linalg.norm(known_xyz - point, axis=1) if len(known) else np.array([np.inf])
            nearest = int(np.argmin(distance))
            kinds[known[nearest]["kind"] if distance[nearest] <= MIMIC_RADIUS_MM else "no known mimic near"] += 1
    print(f"false positives at threshold {threshold:g}, by the nearest known mimic within {MIMIC_RADIUS_MM:g} mm: "
          + (", ".join(f"{kind} {n}" for kind, n in sorted(kinds.items(), key=lambda kv: -kv[1])) or "none"))


#: A false positive this close to a known mimic point (mm) is counted as that mimic.
MIMIC_RADIUS_MM = 4.0


if __name__ == "__main__":
    raise SystemExit(main())
