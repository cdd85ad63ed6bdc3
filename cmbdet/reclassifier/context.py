"""What surrounds a candidate: brain tissue, CSF, or signal loss? Context measurements for stage 2.

A microbleed sits in brain tissue. Many of its mimics do not: a choroid-plexus or pineal calcification
lies in or beside a ventricle (cerebrospinal fluid, brighter than tissue on T2*-weighted and SWI
magnitude alike), and an air-bone artefact lies in a band of signal loss at the edge of the brain. The
shape measurements (`cmbdet.reclassifier.shape`) are taken relative to the candidate's own surroundings
and so cannot see this. These are taken on the bias-divided working image of stage 1 (brain tissue ~1,
whatever the scanner's scale or coil profile): for a near shell and a wide shell around the point, the
median level of the brain voxels in it, the share of them brighter than `CSF_LEVEL` and darker than
`DARK_LEVEL`, and the share of the shell inside the brain mask.

`context_features(working, xyz_mm)` returns an (N, len(CONTEXT_NAMES)) float32 array.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import ndimage

from cmbdet.preprocess import WorkingImage

#: Shells (mm from the point) measured: near (the shape measurements' tissue shell) and wide.
SHELLS_MM = {"near": (5.0, 9.5), "wide": (10.0, 20.0)}
#: Sampling step (mm) of the shells.
STEP_MM = 1.0
#: Working-image levels (brain tissue ~1) above which a voxel counts as CSF-bright, below which as dark.
CSF_LEVEL = 1.3
DARK_LEVEL = 0.5
#: Fewer brain voxels than this in a shell: its levels are reported as 0.
MIN_VOXELS = 20

_PER_SHELL = ("level", "csf_share", "dark_share", "brain_share")
CONTEXT_NAMES: tuple[str, ...] = tuple(f"{shell}_{n}" for shell in SHELLS_MM for n in _PER_SHELL)


def context_features(working: WorkingImage, xyz_mm: np.ndarray) -> np.ndarray:
    """(N, len(CONTEXT_NAMES)) float32 context measurements around N world points (scanner RAS mm) on
    a working image (`cmbdet.preprocess.prepare_working_image`)."""
    xyz_mm = np.asarray(xyz_mm, dtype=float).reshape(-1, 3)
    out = np.zeros((len(xyz_mm), len(CONTEXT_NAMES)), dtype=np.float32)
    to_voxel = np.linalg.inv(working.affine)
    mask = working.mask.astype(np.float32)
    offsets, shells = _offsets_mm(), _shell_masks()
    for n, point in enumerate(xyz_mm):
        ijk = to_voxel[:3, :3] @ (point[:, None] + offsets) + to_voxel[:3, 3:4]
        values = ndimage.map_coordinates(working.image, ijk, order=1, mode="constant", cval=0.0)
        in_brain = ndimage.map_coordinates(mask, ijk, order=0, mode="constant", cval=0.0) > 0.5
        row = []
        for shell in shells:
            brain = values[shell & in_brain]
            brain_share = float((shell & in_brain).sum() / shell.sum())
            if len(brain) < MIN_VOXELS:
                row += [0.0, 0.0, 0.0, brain_share]
            else:
                row += [float(np.median(brain)), float((brain > CSF_LEVEL).mean()), float((brain < DARK_LEVEL).mean()),
                        brain_share]
        out[n] = row
    return out


@lru_cache(maxsize=1)
def _offsets_mm() -> np.ndarray:
    """(3, M^3) world offsets (mm) of a cube's sample points reaching the widest shell."""
    reach = max(outer for _, outer in SHELLS_MM.values())
    steps = np.arange(-reach, reach + STEP_MM / 2, STEP_MM)
    return np.stack(np.meshgrid(steps, steps, steps, indexing="ij")).reshape(3, -1)


@lru_cache(maxsize=1)
def _shell_masks() -> tuple[np.ndarray, ...]:
    radius = np.linalg.norm(_offsets_mm(), axis=0)
    return tuple((radius >= inner) & (radius <= outer) for inner, outer in SHELLS_MM.values())
