"""Intensity normalization, brain mask and the working grid: no external tools.

Everything here works on a RAS-canonical `Volume` (see `cmbdet.volume`) and returns arrays on a
*working grid*: the canonical grid resampled to a fixed spacing in mm, so that the detector sees the
same physical scale whatever the acquisition (0.45 mm in-plane to 1 mm, 0.8 mm to 4 mm slices).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from cmbdet.volume import Volume

#: Brain masks are computed on this coarser grid (mm) and carried to the working grid.
MASK_SPACING_MM = 2.0
#: Scale (mm) of the smooth intensity field divided out by `normalize_intensity` (bias field, coil profile).
BIAS_SIGMA_MM = 12.0


@dataclass(frozen=True)
class WorkingImage:
    """A scan on the working grid, ready for the detector.

    ``image``: (I, J, K) float32, RAS-canonical, brain tissue ~1.0 (bias-corrected), 0 outside the head.
    ``mask``: (I, J, K) bool brain mask. ``affine``: (4, 4) working voxel -> scanner RAS mm.
    ``prepared_at_mm``: the spacing `prepare_working_image` was asked for (None if made otherwise); the
    grid's own spacing is only about that (`resample_to_spacing` keeps the corner voxel centres).
    """

    image: np.ndarray
    mask: np.ndarray
    affine: np.ndarray
    prepared_at_mm: float | None = None

    @property
    def spacing_mm(self) -> np.ndarray:
        return np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0))


def resample_to_spacing(
    data: np.ndarray, affine: np.ndarray, spacing_mm: float | tuple[float, float, float], *, order: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Resample an axis-aligned (I, J, K) array to about ``spacing_mm`` per axis.

    Voxel centres of the first and last voxel along each axis are kept (align-corners), so the new
    affine is exact: ``affine @ diag(step)``. Downsampling is anti-aliased with a Gaussian prefilter.
    ``order`` 1 = trilinear, 0 = nearest. Returns (array float32, new affine).
    """
    target = np.broadcast_to(np.asarray(spacing_mm, dtype=float), (3,))
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    shape_in = np.array(data.shape)
    shape_out = np.maximum(np.round((shape_in - 1) * spacing / target).astype(int) + 1, 2)
    step = (shape_in - 1) / (shape_out - 1)  # input voxels per output voxel
    array = np.asarray(data, dtype=np.float32)
    if order == 1:
        for axis in range(3):
            if step[axis] > 1.3:
                array = ndimage.gaussian_filter1d(array, sigma=0.4 * step[axis], axis=axis, mode="nearest")
    tensor = torch.from_numpy(np.ascontiguousarray(array))[None, None]
    mode = "trilinear" if order == 1 else "nearest-exact"
    if order == 1:
        out = F.interpolate(tensor, size=tuple(int(s) for s in shape_out), mode=mode, align_corners=True)
    else:
        index = [torch.round(torch.arange(n) * s).long().clamp(max=m - 1)
                 for n, s, m in zip(shape_out, step, shape_in, strict=True)]
        out = tensor[:, :, index[0]][:, :, :, index[1]][:, :, :, :, index[2]]
    new_affine = affine.copy()
    new_affine[:3, :3] = affine[:3, :3] * step[None, :]
    return out[0, 0].numpy(), new_affine


def brain_mask(image: np.ndarray, spacing_mm: np.ndarray, *, erosion_mm: float = 5.0) -> np.ndarray:
    """A brain mask for SWI / T2*-GRE magnitude, (I, J, K) bool, same grid as ``image``.

    Tissue = smoothed intensity above 0.6 x an Otsu threshold. The skull is dark on SWI/GRE, so scalp,
    orbits and brain meet only through thin bridges: an erosion by ``erosion_mm`` cuts them, the
    largest remaining component is the brain core, which is grown back *through tissue only*
    (geodesic dilation: it never jumps a dark gap into scalp or eyes), and holes are filled (dark
    CMBs, veins and susceptibility voids inside the brain stay in the mask).
    """
    spacing_mm = np.asarray(spacing_mm, dtype=float)
    smooth = ndimage.gaussian_filter(image.astype(np.float32), sigma=1.0 / spacing_mm)
    values = smooth[smooth > 0]
    if values.size < 10:
        return np.zeros(image.shape, dtype=bool)
    tissue = smooth > 0.6 * _otsu(values)
    if not tissue.any():
        return tissue
    erosion_mm = min(erosion_mm, 0.15 * float(np.min(np.array(image.shape) * spacing_mm)))
    inside = ndimage.distance_transform_edt(tissue, sampling=spacing_mm) > erosion_mm
    core = _largest_component(inside) if inside.any() else _largest_component(tissue)
    steps = int(np.ceil(erosion_mm / spacing_mm.min())) + 1
    mask = ndimage.binary_dilation(core, iterations=steps, mask=tissue)
    mask = ndimage.binary_fill_holes(mask)
    for k in range(mask.shape[2]):  # axial hole filling catches voids open at the top or bottom
        mask[:, :, k] = ndimage.binary_fill_holes(mask[:, :, k])
    return mask


def normalize_intensity(image: np.ndarray, mask: np.ndarray, spacing_mm: np.ndarray) -> np.ndarray:
    """Divide out the smooth intensity field (bias, coil profile, any global scale).

    Returns (I, J, K) float32 with brain tissue ~1.0: the image divided by its local brain mean
    (normalized convolution with a Gaussian of `BIAS_SIGMA_MM`), clipped to [0, 4]. Works for any
    scale (1e-4 floats, int16 up to 4095, floats with negative background noise).
    """
    spacing_mm = np.asarray(spacing_mm, dtype=float)
    image = np.clip(image.astype(np.float32), 0, None)
    if not mask.any():
        scale = float(np.percentile(image, 99)) or 1.0
        return np.clip(image / scale, 0, 4).astype(np.float32)
    median = float(np.median(image[mask])) or float(image[mask].mean()) or 1.0
    image = image / median
    # The smooth field is estimated on a coarse grid (fast), from brain voxels only.
    factor = np.maximum(np.round(4.0 / spacing_mm).astype(int), 1)
    coarse = _block_mean(np.where(mask, image, 0), factor)
    weight = _block_mean(mask.astype(np.float32), factor)
    sigma = BIAS_SIGMA_MM / (spacing_mm * factor)
    field = ndimage.gaussian_filter(coarse, sigma) / np.maximum(ndimage.gaussian_filter(weight, sigma), 1e-3)
    field = np.clip(field, 0.2, 5.0)
    zoom = np.array(image.shape) / np.array(field.shape)
    field_full = ndimage.zoom(field, zoom, order=1, mode="nearest", grid_mode=True)
    field_full = _fit_shape(field_full, image.shape)
    return np.clip(image / field_full, 0, 4).astype(np.float32)


def prepare_working_image(volume: Volume, spacing_mm: float) -> WorkingImage:
    """Resample a volume to the working grid, mask the brain, and normalize intensities."""
    image, affine = resample_to_spacing(volume.data, volume.affine, spacing_mm)
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    coarse, coarse_affine = resample_to_spacing(image, affine, max(MASK_SPACING_MM, float(spacing.max())))
    coarse_spacing = np.sqrt((coarse_affine[:3, :3] ** 2).sum(axis=0))
    coarse_mask = brain_mask(coarse, coarse_spacing)
    mask = _carry_mask(coarse_mask, image.shape)  # both grids keep the corner voxel centres
    return WorkingImage(image=normalize_intensity(image, mask, spacing), mask=mask, affine=affine,
                        prepared_at_mm=float(spacing_mm))


# --- helpers ------------------------------------------------------------------------------------


def _otsu(values: np.ndarray, bins: int = 256) -> float:
    if values.size > 200_000:
        values = values[:: values.size // 200_000]
    hist, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mu0 = m0 / np.maximum(w0, 1)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(centres[int(np.argmax(between))])


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(mask)
    if n <= 1:
        return mask.copy()
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def _block_mean(array: np.ndarray, factor: np.ndarray) -> np.ndarray:
    shape = np.array(array.shape)
    padded_shape = -(-shape // factor) * factor
    padded = np.zeros(padded_shape, dtype=np.float32)
    padded[: shape[0], : shape[1], : shape[2]] = array
    f0, f1, f2 = (int(f) for f in factor)
    blocks = padded.reshape(padded_shape[0] // f0, f0, padded_shape[1] // f1, f1, padded_shape[2] // f2, f2)
    return blocks.mean(axis=(1, 3, 5))


def _fit_shape(array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    out = np.empty(shape, dtype=array.dtype)
    sl = tuple(slice(0, min(a, b)) for a, b in zip(array.shape, shape, strict=True))
    out[...] = np.pad(array[sl], [(0, s - (x.stop - x.start)) for s, x in zip(shape, sl, strict=True)], mode="edge")
    return out


def _carry_mask(mask: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Carry a coarse mask onto a finer grid spanning the same corner voxels (trilinear > 0.5)."""
    tensor = torch.from_numpy(mask.astype(np.float32))[None, None]
    out = F.interpolate(tensor, size=tuple(int(s) for s in shape), mode="trilinear", align_corners=True)
    return out[0, 0].numpy() > 0.5
