"""2.5-D patches around candidates: the one place patches are made, for training and inference alike.

A patch is three orthogonal planes through the candidate centre (axial, coronal, sagittal of the
RAS-canonical grid), each a fixed physical field of view (``fov_mm``, default 32 mm) resampled to
``size`` x ``size`` pixels (default 64: 0.5 mm per pixel), stacked as the three channels of an 8-bit
image. A microbleed is a round dark spot in all three planes; a vein is a dot in one plane and a
line in another, which is what stage 2 looks at. Intensities are divided by the median of the
patch's tissue (robust to scale and bias) and mapped so that tissue ~ 100, zero signal = 0.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from cmbdet.volume import Volume

FOV_MM = 32.0
PATCH_PIXELS = 64
#: 8-bit value of median tissue intensity in a patch.
TISSUE_LEVEL = 100.0


def plane_offsets_mm(fov_mm: float = FOV_MM, size: int = PATCH_PIXELS) -> np.ndarray:
    """(size,) pixel-centre offsets from the patch centre, mm."""
    step = fov_mm / size
    return (np.arange(size) - (size - 1) / 2.0) * step


def extract_patches(
    volume: Volume, xyz_mm: np.ndarray, *, fov_mm: float = FOV_MM, size: int = PATCH_PIXELS
) -> np.ndarray:
    """(N, size, size, 3) uint8 patches around N world points (scanner RAS mm).

    Channel 0: axial plane (rows: anterior->posterior, columns: right->left as in radiological
    display); channel 1: coronal (rows: superior->inferior); channel 2: sagittal (rows:
    superior->inferior, columns: anterior->posterior). Voxels outside the scan read as 0.
    """
    xyz_mm = np.asarray(xyz_mm, dtype=float).reshape(-1, 3)
    if len(xyz_mm) == 0:
        return np.zeros((0, size, size, 3), dtype=np.uint8)
    offsets = plane_offsets_mm(fov_mm, size)
    rows, cols = np.meshgrid(offsets, offsets, indexing="ij")
    zero = np.zeros_like(rows)
    # Directions in canonical voxel axes (i: R, j: A, k: S), in mm, for (row, column) of each plane.
    planes = (
        np.stack([-cols, -rows, zero], axis=-1),  # axial: rows A->P, columns R->L
        np.stack([-cols, zero, -rows], axis=-1),  # coronal: rows S->I, columns R->L
        np.stack([zero, -cols, -rows], axis=-1),  # sagittal: rows S->I, columns A->P
    )
    centres = volume.xyz_mm_to_ijk(xyz_mm)
    spacing = volume.spacing_mm
    stack = np.empty((len(xyz_mm), size, size, 3), dtype=np.float32)
    for c, plane in enumerate(planes):
        steps = (plane / spacing).reshape(-1, 3)  # mm -> canonical voxels
        coords = centres[:, None, :] + steps[None, :, :]  # (N, size*size, 3)
        values = ndimage.map_coordinates(volume.data, coords.reshape(-1, 3).T, order=1, mode="constant", cval=0.0)
        stack[..., c] = values.reshape(len(xyz_mm), size, size)
    return _to_uint8(stack)


def _to_uint8(stack: np.ndarray) -> np.ndarray:
    """Per patch: divide by the median of its non-zero voxels, tissue -> TISSUE_LEVEL, clip to 0..255."""
    flat = stack.reshape(len(stack), -1)
    scale = np.ones(len(stack), dtype=np.float32)
    for n, values in enumerate(flat):
        positive = values[values > 0]
        if positive.size:
            scale[n] = float(np.median(positive)) or 1.0
    scaled = stack / scale[:, None, None, None] * TISSUE_LEVEL
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
