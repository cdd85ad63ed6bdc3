"""Planes and minimum-intensity-projection (mIP) slabs through points of a scan.

The one way cmbdet looks at the neighbourhood of a point: stage 2 reads these views as its patches
and the review pictures show them to a reader. A view is a square of ``fov_mm`` resampled to
``size`` x ``size`` pixels through the point:

* ``axial`` (rows anterior -> posterior, columns right -> left: radiological display),
  ``coronal`` (rows superior -> inferior, columns right -> left), ``sagittal`` (rows superior ->
  inferior, columns anterior -> posterior) planes of the RAS-canonical grid;
* ``axial_mip``, ``coronal_mip``, ``sagittal_mip``: the minimum over a slab of ``slab_mm`` centred
  on the point, perpendicular to the plane — how SWI is read: over a slab a vein becomes a line
  (it runs on through the slab) while a microbleed stays a dot.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from cmbdet.volume import Volume

PLANES = ("axial", "coronal", "sagittal")
VIEW_NAMES = (*PLANES, *(f"{p}_mip" for p in PLANES))
#: Sampling step through a mIP slab, mm.
SLAB_STEP_MM = 0.7


def pixel_offsets_mm(fov_mm: float, size: int) -> np.ndarray:
    """(size,) pixel-centre offsets from the view centre, mm."""
    return (np.arange(size) - (size - 1) / 2.0) * (fov_mm / size)


def _plane_frame(plane: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row direction, column direction, normal) of a plane, unit vectors in canonical (R, A, S) axes."""
    r, a, s = np.eye(3)
    if plane == "axial":
        return -a, -r, s
    if plane == "coronal":
        return -s, -r, a
    if plane == "sagittal":
        return -s, -a, r
    raise ValueError(f"unknown plane {plane!r}; one of {PLANES}")


def sample_views(
    volume: Volume, xyz_mm: np.ndarray, views: Sequence[str], *, fov_mm: float, size: int, slab_mm: float = 10.0
) -> np.ndarray:
    """(N, size, size, len(views)) float32 views around N world points (scanner RAS mm); voxels outside
    the scan read as 0. See the module docstring for the view names."""
    xyz_mm = np.asarray(xyz_mm, dtype=float).reshape(-1, 3)
    out = np.zeros((len(xyz_mm), size, size, len(views)), dtype=np.float32)
    if len(xyz_mm) == 0:
        return out
    offsets = pixel_offsets_mm(fov_mm, size)
    rows, cols = np.meshgrid(offsets, offsets, indexing="ij")
    centres = volume.xyz_mm_to_ijk(xyz_mm)
    spacing = volume.spacing_mm
    for v, name in enumerate(views):
        plane, _, kind = name.partition("_")
        if name not in VIEW_NAMES:
            raise ValueError(f"unknown view {name!r}; one of {VIEW_NAMES}")
        row_dir, col_dir, normal = _plane_frame(plane)
        n_steps = max(1, int(round(slab_mm / SLAB_STEP_MM)) + 1) if kind == "mip" else 1
        depths = np.linspace(-slab_mm / 2, slab_mm / 2, n_steps) if n_steps > 1 else np.zeros(1)
        grid_mm = rows[..., None] * row_dir + cols[..., None] * col_dir  # (size, size, 3)
        # A slab reaching beyond the scan (a thin slab of slices, the edge of the field of view) takes
        # its minimum over the voxels that exist: outside reads as NaN, which np.fmin passes over.
        outside = np.nan if kind == "mip" else 0.0
        result = np.full((len(xyz_mm), size * size), np.nan, dtype=np.float32)
        for depth in depths:
            steps = ((grid_mm + depth * normal) / spacing).reshape(-1, 3)  # mm -> canonical voxels
            coords = (centres[:, None, :] + steps[None]).reshape(-1, 3).T
            values = ndimage.map_coordinates(volume.data, coords, order=1, mode="constant", cval=outside)
            np.fmin(result, values.reshape(len(xyz_mm), -1), out=result)
        out[..., v] = np.nan_to_num(result, nan=0.0).reshape(len(xyz_mm), size, size)
    return out
