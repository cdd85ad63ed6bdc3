#!/usr/bin/env python
"""How far MARS regions (cmbdet/regions.py) hold when the head is tilted in the scanner.

The MNI152 brain mask stands in for a subject's brain mask; it is rotated about its centre (pitch:
nose down/up about left-right, roll: about anterior-posterior, yaw: about superior-inferior) and
``--points`` random brain points, whose true region is read from the untilted MNI region map, are
assigned a region from the rotated mask exactly as `cmbdet detect` does. Prints, per rotation, the
share of points given their true region, overall and per true region.

    python tools/regions_under_tilt.py [--points 3000] [--seed 0]
"""

from __future__ import annotations

import argparse

import numpy as np
from nibabel.affines import apply_affine
from scipy import ndimage
from scipy.spatial.transform import Rotation

from cmbdet.anatomy import mni_region_map, mni_template
from cmbdet.detections import Detections
from cmbdet.regions import REGION_NAMES, anchor_to_mni, assign_regions

ROTATIONS = (("none", "x", 0), ("pitch", "x", 10), ("pitch", "x", -10), ("pitch", "x", 20), ("pitch", "x", -20),
             ("roll", "y", 10), ("yaw", "z", 10), ("yaw", "z", 20))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    brain, affine = mni_template("brain", 2)
    labels, label_affine = mni_region_map(2)
    assert np.allclose(affine, label_affine)
    rng = np.random.default_rng(args.seed)
    inside = np.argwhere((brain > 0.5) & (labels > 0))
    picked = inside[rng.choice(len(inside), args.points, replace=False)]
    truth = np.array([REGION_NAMES[int(v)] for v in labels[tuple(picked.T)]])
    xyz = apply_affine(affine, picked)
    centre = xyz.mean(axis=0)
    # a taller grid, so that the tilted vertex stays inside the scan (the anchor needs it)
    pad = 12
    padded = np.pad(brain > 0.5, ((0, 0), (0, 0), (0, pad)))
    print("| rotation | degrees | all | lobar | deep | infratentorial |")
    print("|---|---|---|---|---|---|")
    for name, axis, degrees in ROTATIONS:
        rotation = Rotation.from_euler(axis, degrees, degrees=True).as_matrix()
        world = np.eye(4)
        world[:3, :3], world[:3, 3] = rotation, centre - rotation @ centre  # tilted head, scanner mm
        # voxel of the tilted mask -> world -> untilted world -> untilted voxel
        back = np.linalg.inv(affine) @ np.linalg.inv(world) @ affine
        tilted = ndimage.affine_transform(padded.astype(np.float32), back[:3, :3], back[:3, 3], order=1) > 0.5
        found = assign_regions(Detections(apply_affine(world, xyz), np.ones(len(xyz)), np.full(len(xyz), 3.0)),
                               anchor_to_mni(tilted, affine))
        right = found.region == truth
        shares = [right.mean()] + [right[truth == r].mean() for r in ("lobar", "deep", "infratentorial")]
        print(f"| {name} | {degrees:+d} | " + " | ".join(f"{s:.3f}" for s in shares) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
