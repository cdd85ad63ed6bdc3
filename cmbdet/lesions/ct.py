"""CT input: Hounsfield-unit checks, modality decision, a brain mask for a bright skull, and the
working grid the lesion model reads.

The MRI checks in `cmbdet.volume` would call a head CT a phase image (air at -1000 and bone at
+1500 look "symmetric around zero"), and the SWI brain mask assumes a dark skull. CT gets its own:
`load_ct_volume` applies ``scl_slope``/``scl_inter`` as nibabel does and refuses an image that is
not in HU (nothing below about -100: no air around the head), and `ct_brain_mask` finds the
cranial cavity inside the bone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation
from scipy import ndimage

from cmbdet.errors import InputError
from cmbdet.preprocess import _largest_component, resample_to_spacing
from cmbdet.volume import (
    SourceGrid,
    Volume,
    _checked_affine,
    _checked_dimensions,
    _repair_non_finite,
    _short,
    read_nifti,
)

#: A CT in HU has air around the head: some voxels must lie below this (HU).
AIR_BELOW_HU = -100.0
#: Fraction of voxels below `AIR_BELOW_HU` for ``--modality auto`` to call an image CT.
AUTO_CT_AIR_FRACTION = 0.02
#: Working grid of the lesion model (mm, isotropic).
DEFAULT_SPACING_MM = 2.0
BONE_HU = 300.0


def load_ct_volume(path: str | Path) -> Volume:
    """A CT NIfTI (HU after the header's slope/intercept) as a RAS-canonical `Volume` of HU.

    Raises `InputError` (one line naming the file) for unreadable files, 4-D series, and images with
    no values below `AIR_BELOW_HU` (not Hounsfield units).
    """
    image = read_nifti(Path(path))
    name = str(path)
    notes: list[str] = []
    affine = _checked_affine(image, name, notes)
    try:
        data = np.asarray(image.dataobj, dtype=np.float32)  # applies scl_slope / scl_inter
    except Exception as err:
        raise InputError(name, f"could not read the image data ({_short(err)}); the file may be truncated") from None
    data = _checked_dimensions(data, name)
    if data.ndim == 4:
        raise InputError(name, f"4-D image (shape {data.shape}); a CT must be one 3-D volume")
    data = _repair_non_finite(data, name, notes)
    check_hounsfield(data, name)
    slope, inter = float(getattr(image.dataobj, "slope", 1.0)), float(getattr(image.dataobj, "inter", 0.0))
    notes.append(f"read as CT in HU (stored {image.get_data_dtype()} x {float(slope):g} {float(inter):+g}; "
                 f"range {float(data.min()):.0f}..{float(data.max()):.0f} HU)")
    ornt = io_orientation(affine)
    canonical = np.ascontiguousarray(apply_orientation(data, ornt), dtype=np.float32)
    source = SourceGrid(shape=tuple(int(s) for s in data.shape), affine=affine, ornt=ornt,
                        header=image.header.copy())
    return Volume(data=canonical, affine=affine @ inv_ornt_aff(ornt, data.shape), source=source,
                  path=Path(path), notes=tuple(notes))


def check_hounsfield(data: np.ndarray, name: str) -> None:
    """Refuse an image that cannot be a head CT in HU (no air below -100 HU, or constant)."""
    if not data.max() > data.min():
        raise InputError(name, "image is constant (all voxels have one value); nothing to find")
    low = float(data.min())
    if low >= AIR_BELOW_HU:
        raise InputError(name, f"not a CT in Hounsfield units: no value below {AIR_BELOW_HU:.0f} HU "
                               f"(minimum {low:.4g}); air around the head should read about -1000 "
                               "(check scl_slope/scl_inter, or use --modality mri)")


def guess_modality(path: str | Path) -> tuple[str, str]:
    """('ct' or 'mri', reason): a BIDS-named file with the suffix ``_ct`` (``sub-01[_ses-1...]_ct.nii.gz``)
    is CT by its name (so that a CT whose values are not HU gets the CT reader's one-line reason);
    otherwise from the data: a CT in HU has air near -1000 and bone above +300, an MRI magnitude image
    has no values far below zero."""
    if re.fullmatch(r"sub-[^_]+(_[a-z]+-[^_]+)*_ct\.nii(\.gz)?", Path(path).name, re.IGNORECASE):
        return "ct", "CT (BIDS suffix _ct)"
    image = read_nifti(Path(path))
    try:
        data = np.asarray(image.dataobj, dtype=np.float32)
    except Exception as err:
        raise InputError(path, f"could not read the image data ({_short(err)})") from None
    sample = data[(slice(None, None, 2),) * min(data.ndim, 3)]
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        raise InputError(path, "no finite voxel values")
    air = float(np.mean(sample < -500.0))
    bone = float(np.mean(sample > BONE_HU))
    if air >= AUTO_CT_AIR_FRACTION and bone > 0.001:
        return "ct", f"CT (HU range: {air:.0%} of voxels below -500 HU, {bone:.1%} above {BONE_HU:.0f} HU)"
    return "mri", f"MRI (value range {float(sample.min()):.4g}..{float(sample.max()):.4g} is not a CT's HU range)"


@dataclass(frozen=True)
class CTWorkingImage:
    """A CT on the working grid. ``hu`` (I, J, K) float32 HU, ``mask`` (I, J, K) bool cranial cavity
    (brain + CSF + blood), ``affine`` (4, 4) working voxel -> scanner RAS mm."""

    hu: np.ndarray
    mask: np.ndarray
    affine: np.ndarray

    @property
    def spacing_mm(self) -> np.ndarray:
        return np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0))


def ct_working_image(volume: Volume, spacing_mm: float = DEFAULT_SPACING_MM) -> CTWorkingImage:
    """Resample a CT `Volume` (HU) to the working grid and find its brain."""
    hu, affine = resample_to_spacing(volume.data, volume.affine, spacing_mm)
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    return CTWorkingImage(hu=hu, mask=ct_brain_mask(hu, spacing), affine=affine)


def ct_brain_mask(hu: np.ndarray, spacing_mm: np.ndarray) -> np.ndarray:
    """(I, J, K) bool: the cranial cavity's contents (brain, CSF, blood) of a head CT in HU.

    The skull is the bright shell (> 300 HU), closed over small gaps; inside it, soft tissue
    (-15..110 HU) enclosed by bone in its axial slice is cranial content. An erosion cuts the thin
    bridges to orbits and sinuses, the largest component is kept and grown back through soft
    tissue, and holes (calcifications, dense clot) are filled.
    """
    spacing_mm = np.asarray(spacing_mm, dtype=float)
    bone = hu > BONE_HU
    if not bone.any():
        return np.zeros(hu.shape, dtype=bool)
    reach = np.maximum(np.round(2.0 / spacing_mm).astype(int), 1)
    closed = ndimage.binary_closing(bone, structure=np.ones(tuple(2 * reach + 1), bool)) | bone
    # enclosed by bone in 3-D (the field of view's top and bottom count as closed), or in the axial
    # slice after closing gaps of up to ~12 mm in-plane, or between such slices (sinus, foramina)
    capped = np.pad(closed, [(0, 0), (0, 0), (1, 1)], constant_values=True)
    enclosed = (ndimage.binary_fill_holes(capped) & ~capped)[:, :, 1:-1]
    wide = np.maximum(np.round(6.0 / spacing_mm[:2]).astype(int), 1)
    ring = ndimage.binary_closing(np.pad(closed, [(w, w) for w in wide] + [(0, 0)]),
                                  structure=np.ones((2 * wide[0] + 1, 2 * wide[1] + 1, 1), bool))
    ring = ring[wide[0]:-wide[0], wide[1]:-wide[1]] | closed
    for k in range(hu.shape[2]):
        enclosed[:, :, k] |= ndimage.binary_fill_holes(ring[:, :, k]) & ~closed[:, :, k]
    gap = max(int(round(10.0 / spacing_mm[2])), 1)
    bridged = ndimage.binary_closing(np.pad(enclosed, [(0, 0), (0, 0), (gap, gap)]),
                                     structure=np.ones((1, 1, 2 * gap + 1), bool))[:, :, gap:-gap]
    enclosed |= bridged & ~closed
    soft = (hu > -15.0) & (hu < 110.0)
    candidate = enclosed & soft
    if not candidate.any():
        return candidate
    depth = ndimage.distance_transform_edt(candidate, sampling=spacing_mm)
    erosion_mm = 4.0
    core = depth > erosion_mm
    core = _largest_component(core) if core.any() else _largest_component(candidate)
    steps = int(np.ceil(erosion_mm / spacing_mm.min())) + 1
    mask = ndimage.binary_dilation(core, iterations=steps, mask=enclosed & (hu < BONE_HU))
    mask = ndimage.binary_fill_holes(mask)
    for k in range(mask.shape[2]):
        mask[:, :, k] = ndimage.binary_fill_holes(mask[:, :, k])
    return mask & ~bone


def network_input(hu: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(3, I, J, K) float32 channels: a blood/brain window ((HU - 40) / 30 over 0..100 HU), a dense
    window (calcification and bone, 100..1000 HU), and the brain mask."""
    soft = (np.clip(hu, 0.0, 100.0) - 40.0) / 30.0
    dense = np.clip(hu - 100.0, 0.0, 900.0) / 300.0
    return np.stack([soft, dense, mask.astype(np.float32)]).astype(np.float32)
