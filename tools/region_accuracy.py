#!/usr/bin/env python
"""MARS regions (cmbdet/regions.py) at the true microbleeds of phantom sets, against their truth.

For each scan of each ``--data`` folder (a `cmbdet phantom` output: images + truth.csv with a
``region`` column), the brain mask is made exactly as `cmbdet detect` makes it and every true
microbleed centre is given a region by `cmbdet.regions.assign_regions`. ``--tilt`` adds head
rotations on top of the phantom's own pose (the image's affine is rotated about the scan centre, so
the head is tilted in the scanner), e.g. ``--tilt pitch:10 roll:-8 yaw:15``. Prints, per set and
rotation: microbleeds, the share given a region (not ``unknown``), the share of those given their
true region (overall, lobar, deep, infratentorial), and the median seconds per scan spent anchoring.
``--slab-mm 66 80`` instead keeps, of each untilted scan's brain mask, only slabs of that many mm of
brain (at the top, middle and bottom of the brain; partial coverage) and scores the microbleeds
inside each slab.

    python tools/region_accuracy.py --data SET [SET...] [--n 30] [--tilt none pitch:10 ...] [--slab-mm MM ...]
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
from cmbdet.regions import UNKNOWN, anchor_to_mni, assign_regions
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


SLAB_PLACES = ("top", "middle", "bottom")


def slab(mask: np.ndarray, affine: np.ndarray, mm: float, where: str, xyz: np.ndarray):
    """(the mask cut to ``mm`` of brain along k at ``where``, its affine, which of ``xyz`` lie in it),
    or (None, None, None) when the brain is not taller than ``mm``."""
    slices = np.flatnonzero(mask.any(axis=(0, 1)))
    n = int(round(mm / float(np.sqrt((affine[:3, 2] ** 2).sum()))))
    if len(slices) == 0 or n >= slices[-1] - slices[0] + 1:
        return None, None, None
    low = {"top": slices[-1] - n + 1, "middle": (slices[0] + slices[-1] - n) // 2, "bottom": slices[0]}[where]
    cut = affine.copy()
    cut[:3, 3] = apply_affine(affine, [0, 0, low])
    k = apply_affine(np.linalg.inv(affine), xyz)[:, 2]
    return mask[:, :, low:low + n], cut, (k >= low - 0.5) & (k < low + n - 0.5)


def score(pairs: list, seconds: list, xyz: np.ndarray, want: list[str], mask: np.ndarray, affine: np.ndarray) -> None:
    start = time.perf_counter()
    found = assign_regions(Detections(xyz, np.ones(len(xyz)), np.full(len(xyz), 3.0)), anchor_to_mni(mask, affine))
    seconds.append(time.perf_counter() - start)
    pairs.extend(zip(found.region, want, strict=True))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", type=Path, required=True)
    parser.add_argument("--n", type=int, default=30, help="at most this many scans with CMBs per set")
    parser.add_argument("--tilt", nargs="+", default=["none"])
    parser.add_argument("--slab-mm", nargs="+", type=float, default=[])
    args = parser.parse_args(argv)
    cases = [f"slab {mm:g} mm {where}" for mm in args.slab_mm for where in SLAB_PLACES] or args.tilt
    print("| set | case | CMBs | given a region | right (of those) | lobar | deep | infratentorial | s/scan |")
    print("|---|---|---|---|---|---|---|---|---|")
    for folder in args.data:
        truth = truth_regions(folder)
        scans = [s for s in read_labelled_set(folder) if s.subject in truth][: args.n]
        results: dict[str, list[tuple[str, str]]] = {case: [] for case in cases}
        seconds: dict[str, list[float]] = {case: [] for case in cases}
        for scan in scans:
            volume = load_volume(scan.image_path)
            centre = apply_affine(volume.affine, (np.array(volume.shape) - 1) / 2.0)
            xyz = np.array([p for p, _ in truth[scan.subject]])
            want = [r for _, r in truth[scan.subject]]
            if args.slab_mm:
                working = prepare_working_image(volume, DEFAULT_SPACING_MM)
                for mm in args.slab_mm:
                    for where in SLAB_PLACES:
                        case = f"slab {mm:g} mm {where}"
                        mask, affine, keep = slab(working.mask, working.affine, mm, where, xyz)
                        if mask is None or not keep.any():
                            continue
                        score(results[case], seconds[case], xyz[keep], [w for w, k in zip(want, keep) if k], mask,
                              affine)
                continue
            for spec in args.tilt:
                world = tilt_matrix(spec, centre)
                working = prepare_working_image(replace(volume, affine=world @ volume.affine), DEFAULT_SPACING_MM)
                score(results[spec], seconds[spec], apply_affine(world, xyz), want, working.mask, working.affine)
        for spec in cases:
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
