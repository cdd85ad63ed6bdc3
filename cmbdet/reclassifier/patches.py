"""2.5-D patches around candidates: the one place stage-2 patches are made, for training and inference.

A patch is three views through the candidate centre (see `cmbdet.views`), each a fixed physical
field of view (``fov_mm``, default 32 mm) resampled to ``size`` x ``size`` pixels (default 64: 0.5 mm
per pixel), stacked as the three channels of an 8-bit image. Which views is the patch *layout*:

* ``planes``: axial, coronal and sagittal planes — a microbleed is a round dark spot in all three, a
  vein a dot in one and a line in another (when it runs straight through the centre);
* ``mips``: axial, coronal and sagittal minimum-intensity projections over a ``slab_mm`` slab — a
  tortuous vein that leaves the central planes within a few mm still draws a line across the slab;
* ``mixed``: the axial plane, and the coronal and sagittal mIPs.

Intensities are divided by the median of the patch's tissue (robust to scale and bias) and mapped so
that tissue ~ 100, zero signal = 0.
"""

from __future__ import annotations

import numpy as np

from cmbdet.views import sample_views
from cmbdet.volume import Volume

FOV_MM = 32.0
PATCH_PIXELS = 64
SLAB_MM = 10.0
#: 8-bit value of median tissue intensity in a patch.
TISSUE_LEVEL = 100.0
#: Views stacked as the three channels of a patch, per layout name.
LAYOUTS = {
    "planes": ("axial", "coronal", "sagittal"),
    "mips": ("axial_mip", "coronal_mip", "sagittal_mip"),
    "mixed": ("axial", "coronal_mip", "sagittal_mip"),
}


def extract_patches(
    volume: Volume, xyz_mm: np.ndarray, *, fov_mm: float = FOV_MM, size: int = PATCH_PIXELS,
    layout: str = "planes", slab_mm: float = SLAB_MM,
) -> np.ndarray:
    """(N, size, size, 3) uint8 patches around N world points (scanner RAS mm), channels as
    ``LAYOUTS[layout]``. Voxels outside the scan read as 0."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown patch layout {layout!r}; one of {sorted(LAYOUTS)}")
    views = sample_views(volume, xyz_mm, LAYOUTS[layout], fov_mm=fov_mm, size=size, slab_mm=slab_mm)
    return _to_uint8(views) if len(views) else views.astype(np.uint8)


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
