#!/usr/bin/env python
"""MARS regions (cmbdet/regions.py) at the true microbleeds of phantom sets, against their truth.

For each scan of each ``--data`` folder (a `cmbdet phantom` output: images + truth.csv with a
``region`` column), the brain mask is made exactly as `cmbdet detect` makes it and every true
microbleed centre is given a region by `cmbdet.regions.assign_regions`. ``--tilt`` adds head
rotations on top of the phantom's own pose (the image's affine is rotated about the scan centre, so
the head is tilted in the scanner), e.g. ``--tilt pitch:10 roll:-8 yaw:15``. Prints, per set and
rotation: microbleeds, the share given a region (not ``unknown``), the share of those given their
true region (overall, lobar, deep, infratentorial), and the median seconds per scan spent anchoring.

    python tools/region_accuracy.py --data SET [SET...] [--n 30] [--tilt none pitch:10 ...]
"""

from __future__ import annotations

import argparse
import csv
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from nibabel.affines import apply_affine
from scipy.spatial.transform import Rotation

from cmbdet.detections import Detections
from cmbdet.preprocess import prepare_working_image
from cmbdet.proposer.infer import DEFAULT_SPACING_MM
from cmbdet.regions import UNKNOWN, assign_regions
from cmbdet.training_data import read_labelled_set
from cmbdet.volume import load_volume

AXES = {"pitch": "x", "roll": "y", "yaw": "z"}


def truth_regions(folder: Path) -> dict[str, list[tuple[np.ndarray, str]]]:
    out: dict[str, list[tuple[np.ndarray, str]]] = {}
    with open(folder / "truth.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            if row["x_mm"]:
                xyz = np.array([float(row["x_mm"]), float(row["y_mm"]), float(row["z_mm"])])
                out.setdefault(row["subject"], []).append((xyz, row["region"]))
    return out


def tilt_matrix(spec: str, centre_mm: np.ndarray) -> np.ndarray:
    """(4, 4) scanner-mm rotation about ``centre_mm`` for 'none' or 'pitch|roll|yaw:DEGREES'."""
    world = np.eye(4)
    if spec == "none":
        return world
    name, degrees = spec.split(":")
    rotation = Rotation.from_euler(AXES[name], float(degrees), degrees=True).as_matrix()
    world[:3, :3], world[:3, 3] = rotation, centre_mm - rotation @ centre_mm
    return world


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", type=Path, required=True)
    parser.add_argument("--n", type=int, default=30, help="at most this many scans with CMBs per set")
    parser.add_argument("--tilt", nargs="+", default=["none"])
    args = parser.parse_args(argv)
    print("| set | rotation | CMBs | given a region | right (of those) | lobar | deep | infratentorial | s/scan |")
    print("|---|---|---|---|---|---|---|---|---|")
    for folder in args.data:
        truth = truth_regions(folder)
        scans = [s for s in read_labelled_set(folder) if s.subject in truth][: args.n]
        results: dict[str, list[tuple[str, str]]] = {spec: [] for spec in args.tilt}
        seconds: dict[str, list[float]] = {spec: [] for spec in args.tilt}
        for scan in scans:
            volume = load_volume(scan.image_path)
            centre = apply_affine(volume.affine, (np.array(volume.shape) - 1) / 2.0)
            xyz = np.array([p for p, _ in truth[scan.subject]])
            want = [r for _, r in truth[scan.subject]]
            for spec in args.tilt:
                world = tilt_matrix(spec, centre)
                working = prepare_working_image(replace(volume, affine=world @ volume.affine), DEFAULT_SPACING_MM)
                points = apply_affine(world, xyz)
                start = time.perf_counter()
                found = assign_regions(Detections(points, np.ones(len(points)), np.full(len(points), 3.0)),
                                       working.mask, working.affine)
                seconds[spec].append(time.perf_counter() - start)
                results[spec].extend(zip(found.region, want, strict=True))
        for spec in args.tilt:
            pairs = results[spec]
            known = [(got, want) for got, want in pairs if got != UNKNOWN]

            def share(rows, region=None):
                rows = [(g, w) for g, w in rows if region is None or w == region]
                return f"{np.mean([g == w for g, w in rows]):.3f} ({len(rows)})" if rows else "-"

            print(f"| {folder.name} | {spec} | {len(pairs)} | {len(known) / max(len(pairs), 1):.2f} | {share(known)} | "
                  f"{share(known, 'lobar')} | {share(known, 'deep')} | {share(known, 'infratentorial')} | "
                  f"{np.median(seconds[spec]):.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
