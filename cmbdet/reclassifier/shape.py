"""Is a dark spot a ball or a piece of tube? Three-dimensional shape measurements around a candidate.

A microbleed is a round dark focus; a vein cut across by a slice looks the same in that slice but runs
on, as a tube, in 3-D. These measurements describe the dark structure around each candidate in ways a
site cannot change much: ratios of Hessian eigenvalues at several scales (a ball has three large ones,
a tube two and a sheet one), and the extent and elongation of the dark region, all on a world-aligned
cube resampled at ``STEP_MM`` around the point, with intensities taken relative to the surrounding
tissue (so the scanner's scale, the bias field and the tissue contrast drop out) and the acquisition's
own voxel size beside them (a thick slice smears a ball along its normal).

A large dark focus (a 6-10 mm microbleed) fills the usual cube, reaches the tissue shell and the
straight paths that mark a vein, and is flat at the finest scales; a round, compact, dark one is
therefore measured again in a cube scaled to its size (``zoom``).

`shape_features(volume, xyz_mm)` returns an (N, len(FEATURE_NAMES)) float32 array: these measurements
followed by the context ones of `cmbdet.reclassifier.context` (what surrounds the point: tissue, CSF or
signal loss). The stage-2 shape model (`cmbdet.reclassifier.shape_model`) learns from these.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from nibabel.affines import voxel_sizes
from scipy import ndimage

from cmbdet.preprocess import WorkingImage, prepare_working_image
from cmbdet.reclassifier.context import CONTEXT_NAMES, context_features
from cmbdet.volume import Volume

#: Sampling step of the local cube, mm, and its half-width.
STEP_MM = 0.5
HALF_MM = 10.0
#: Gaussian scales (mm) of the Hessian measurements.
SCALES_MM = (0.75, 1.0, 1.5, 2.0, 3.0)
#: The candidate is moved to the darkest point (after 0.75 mm smoothing) within this radius, mm.
REFINE_MM = 2.0
#: Shell (mm from the centre) whose median is the surrounding tissue level.
SHELL_MM = (5.0, 9.5)
#: A dark focus thicker than this radius (mm, across its thinnest axis) is measured again in a cube
#: enlarged by radius / ZOOM_RADIUS_MM (at most MAX_ZOOM), so that it fills the cube as a small one does:
#: at the usual size a large microbleed reaches the tissue shell and the straight paths, and reads as a vein.
ZOOM_RADIUS_MM = 2.0
MAX_ZOOM = 3.0
#: Only a focus that looks like a large microbleed at the usual size is zoomed: at least this deep (half as
#: dark as black), its half-depth region at most ZOOM_MAX_ELONGATION:1 and not reaching the cube's edge
#: (a shallow or elongated one joins larger dark structures: veins, sulci, signal loss).
ZOOM_MIN_DEPTH = 0.5
ZOOM_MAX_ELONGATION = 2.0
#: Spacing (mm) of the working image the context measurements are taken on (stage 1's).
CONTEXT_SPACING_MM = 1.0

_PER_SCALE = ("blobness", "tubeness", "plateness", "strength", "l1", "l2", "l3")
_REGION = ("volume_mm3", "axis1_mm", "axis2_mm", "axis3_mm", "elongation", "flatness", "reaches_edge",
           "normal_alignment")
FEATURE_NAMES: tuple[str, ...] = (
    "depth", "cnr", "offset_mm",
    *(f"s{s:g}_{n}" for s in SCALES_MM for n in _PER_SCALE),
    *(f"half_{n}" for n in _REGION), *(f"quarter_{n}" for n in _REGION),
    "n_dark_spots", "through_darkness", "through_normal_alignment", "one_side_darkness", "slice_mm", "inplane_mm",
    *CONTEXT_NAMES,
)
#: Distances (mm) from the centre at which straight paths through it are sampled.
PATH_RADII_MM = (3.0, 4.0, 5.0, 6.0, 7.0, 8.0)


def shape_features(volume: Volume, xyz_mm: np.ndarray, working: WorkingImage | None = None) -> np.ndarray:
    """(N, len(FEATURE_NAMES)) float32 shape and context measurements around N world points (scanner RAS
    mm). ``working``: the scan's working image at `CONTEXT_SPACING_MM` if already made (stage 1's)."""
    xyz_mm = np.asarray(xyz_mm, dtype=float).reshape(-1, 3)
    out = np.zeros((len(xyz_mm), len(FEATURE_NAMES)), dtype=np.float32)
    if len(xyz_mm) == 0:
        return out
    source_sizes = voxel_sizes(volume.source.affine)
    slice_axis = int(np.argmax(source_sizes))
    normal = volume.source.affine[:3, slice_axis] / source_sizes[slice_axis]  # world direction
    n_shape = len(FEATURE_NAMES) - len(CONTEXT_NAMES)
    for n, point in enumerate(xyz_mm):
        out[n, :n_shape] = _features_at(volume, point, normal, float(source_sizes.max()),
                                        float(np.sort(source_sizes)[:2].mean()))
    if working is None or working.prepared_at_mm != CONTEXT_SPACING_MM:
        working = prepare_working_image(volume, CONTEXT_SPACING_MM)
    out[:, n_shape:] = context_features(working, xyz_mm)
    return out


def _features_at(volume: Volume, point_mm: np.ndarray, normal: np.ndarray, slice_mm: float,
                 inplane_mm: float) -> np.ndarray:
    first = _measure(volume, point_mm, normal, zoom=1.0, refine=True)
    if first is None:  # the point lies outside the scan, or in no tissue
        return np.zeros(len(FEATURE_NAMES) - len(CONTEXT_NAMES), dtype=np.float32)
    values, centre_mm, minor_radius_mm = first
    zoom = float(np.clip(minor_radius_mm / ZOOM_RADIUS_MM, 1.0, MAX_ZOOM))
    if zoom > 1.0 and _looks_like_a_large_focus(values):  # measure it again in a cube scaled to its size
        second = _measure(volume, centre_mm, normal, zoom=zoom, refine=False)
        if second is not None:
            values = [*second[0][:2], values[2], *second[0][3:]]  # the offset is the first pass's
    # The zoom factor is not among the measurements: it would tell the model the focus's size, which a
    # large microbleed shares with the mimics (veins, calcifications, iron) it is zoomed to be told from.
    values = [*values, slice_mm, inplane_mm]
    return np.nan_to_num(np.asarray(values, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)


def _looks_like_a_large_focus(values: list[float]) -> bool:
    """At the usual size: deep, compact and inside the cube (see `ZOOM_MIN_DEPTH`)."""
    named = dict(zip(FEATURE_NAMES, values))
    return (named["depth"] >= ZOOM_MIN_DEPTH and named["half_elongation"] <= ZOOM_MAX_ELONGATION
            and named["half_reaches_edge"] == 0)


def _measure(volume: Volume, point_mm: np.ndarray, normal: np.ndarray, *, zoom: float,
             refine: bool) -> tuple[list[float], np.ndarray, float] | None:
    """(measurements up to the acquisition's voxel size, the centre used (mm), radius (mm) of the dark
    region across its thinnest axis) in a cube of ``zoom`` times the usual size (lengths in the cube's
    units: mm / zoom); None outside the scan."""
    cube = _world_cube(volume, point_mm, zoom)
    if not np.isfinite(cube).any():
        return None
    centre_mm = np.asarray(point_mm, dtype=float)
    radius = _radius_mm()
    if refine:
        smooth = ndimage.gaussian_filter(np.nan_to_num(cube, nan=np.nanmedian(cube)), 0.75 / STEP_MM)
        idx = np.unravel_index(np.argmin(np.where(radius <= REFINE_MM, smooth, np.inf)), cube.shape)
        centre_mm = centre_mm + (np.array(idx) - cube.shape[0] // 2) * STEP_MM * zoom
        cube = _world_cube(volume, centre_mm, zoom)
    shell = (radius >= SHELL_MM[0]) & (radius <= SHELL_MM[1]) & np.isfinite(cube) & (cube > 0)
    level = float(np.median(cube[shell])) if shell.sum() > 20 else float(np.nanmedian(cube))
    if not np.isfinite(level) or level <= 0:
        return None
    relative = np.nan_to_num(cube / level - 1.0, nan=0.0)  # 0 = surrounding tissue, -1 = black
    fine = ndimage.gaussian_filter(relative, 0.5 / STEP_MM)
    centre = tuple(s // 2 for s in relative.shape)
    depth = float(-fine[centre])
    highpass = relative - ndimage.gaussian_filter(relative, 1.0 / STEP_MM)
    noise = float(1.4826 * np.median(np.abs(highpass[shell] - np.median(highpass[shell])))) if shell.any() else 0.0
    cnr = depth / max(noise, 1e-3)

    per_scale = []
    for sigma in SCALES_MM:
        l1, l2, l3 = np.linalg.eigvalsh(_hessian_at_centre(relative, sigma))  # ascending
        top = max(abs(l3), 1e-6)
        # A dark ball: three positive curvatures; a dark tube: two; a dark sheet: one.
        per_scale += [max(l1, 0) / top, max(l2, 0) / top * (1 - max(l1, 0) / top), (1 - max(l2, 0) / top),
                      max(l1, 0), l1, l2, l3]

    regions = []
    for fraction in (0.5, 0.25):
        regions += _region_measurements(fine, depth * fraction, normal)
    spots = _dark_spots(fine, depth * 0.5)
    paths = _straight_paths(fine, depth, normal)
    offset_mm = float(np.linalg.norm(centre_mm - point_mm))
    # a uniform ball of radius R has a standard deviation of R / sqrt(5) along every axis
    minor_radius_mm = float(np.sqrt(5.0) * regions[_REGION.index("axis3_mm")] * zoom)
    return [depth, cnr, offset_mm, *per_scale, *regions, spots, *paths], centre_mm, minor_radius_mm


def _world_cube(volume: Volume, centre_mm: np.ndarray, zoom: float = 1.0) -> np.ndarray:
    """(M, M, M) float32 of the scan on a world-aligned (RAS) grid of ``STEP_MM * zoom`` around a point;
    NaN outside the scan."""
    to_voxel = np.linalg.inv(volume.affine)
    centre_ijk = to_voxel[:3, :3] @ centre_mm + to_voxel[:3, 3]
    ijk = centre_ijk[:, None] + to_voxel[:3, :3] @ (_grid_mm() * zoom)  # (3, M^3) canonical voxel coordinates
    values = ndimage.map_coordinates(volume.data, ijk, order=1, mode="constant", cval=np.nan)
    return values.reshape((len(_offsets()),) * 3).astype(np.float32)


@lru_cache(maxsize=1)
def _grid_mm() -> np.ndarray:
    """(3, M^3) world offsets (mm) of the cube's sample points from its centre."""
    offsets = _offsets()
    return np.stack(np.meshgrid(offsets, offsets, offsets, indexing="ij")).reshape(3, -1)


@lru_cache(maxsize=1)
def _offsets() -> np.ndarray:
    n = int(round(HALF_MM / STEP_MM))
    return np.arange(-n, n + 1) * STEP_MM


@lru_cache(maxsize=1)
def _radius_mm() -> np.ndarray:
    """(M, M, M) distance (mm) of each cube sample from the centre."""
    return np.linalg.norm(_grid_mm(), axis=0).reshape((len(_offsets()),) * 3)


@lru_cache(maxsize=len(SCALES_MM))
def _hessian_kernels(sigma_mm: float) -> np.ndarray:
    """(6, M, M, M) scale-normalized second-derivative-of-Gaussian kernels (xx, yy, zz, xy, xz, yz)."""
    x, y, z = _grid_mm().reshape(3, *(len(_offsets()),) * 3)
    g = np.exp(-(x**2 + y**2 + z**2) / (2 * sigma_mm**2))
    g /= g.sum()
    s2 = sigma_mm**2
    kernels = [(x**2 / s2 - 1) * g, (y**2 / s2 - 1) * g, (z**2 / s2 - 1) * g, x * y / s2 * g, x * z / s2 * g,
               y * z / s2 * g]
    return np.stack(kernels).astype(np.float32)  # sigma^2 * d2G/dxdy, so values are scale-normalized


def _hessian_at_centre(relative: np.ndarray, sigma_mm: float) -> np.ndarray:
    k = _hessian_kernels(sigma_mm)
    xx, yy, zz, xy, xz, yz = (float((kernel * relative).sum()) for kernel in k)
    return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])


def _region_measurements(fine: np.ndarray, level: float, normal: np.ndarray) -> list[float]:
    """Extent of the dark region containing the centre, darker than ``-level`` (relative intensity)."""
    if level <= 0:
        return [0.0] * len(_REGION)
    labels, _ = ndimage.label(fine < -level)
    centre = tuple(s // 2 for s in fine.shape)
    if labels[centre] == 0:
        return [0.0] * len(_REGION)
    coords = np.argwhere(labels == labels[centre]) * STEP_MM
    volume_mm3 = len(coords) * STEP_MM**3
    edge = labels.shape[0] - 1
    reaches_edge = float(np.any(np.argwhere(labels == labels[centre]) % edge == 0))
    if len(coords) < 4:
        return [volume_mm3, 0.0, 0.0, 0.0, 1.0, 1.0, reaches_edge, 0.0]
    evals, evecs = np.linalg.eigh(np.cov(coords.T) + np.eye(3) * STEP_MM**2 / 12)
    a3, a2, a1 = np.sqrt(np.maximum(evals, 1e-9))  # ascending -> a1 longest
    alignment = float(abs(evecs[:, 2] @ normal))  # 1: longest axis along the slice normal
    return [volume_mm3, a1, a2, a3, a1 / a3, a2 / a3, reaches_edge, alignment]


@lru_cache(maxsize=1)
def _directions() -> np.ndarray:
    """(D, 3) unit vectors spread over a half sphere (a Fibonacci lattice): one per axis through the centre."""
    n = 400  # ~7 degrees apart: at 8 mm a path passes within ~0.5 mm of any straight vein through the centre
    k = np.arange(n) + 0.5
    z = k / n  # half sphere: z in (0, 1)
    phi = np.pi * (1 + 5**0.5) * k
    r = np.sqrt(1 - z**2)
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


def _straight_paths(fine: np.ndarray, depth: float, normal: np.ndarray) -> list[float]:
    """How dark the darkest straight path through the centre stays 3-8 mm out on both sides (a vein runs
    on through a microbleed-sized dot; a microbleed does not), relative to the centre's depth; the
    alignment of that path with the slice normal (a thick slice smears a ball along it); and the
    darkest path on one side only (a vein that ends at, or passes beside, the dot)."""
    if depth <= 0:
        return [0.0, 0.0, 0.0]
    directions = _directions()
    radii = np.asarray(PATH_RADII_MM)
    centre = (np.array(fine.shape) - 1) / 2.0
    points = directions[:, None, None, :] * radii[None, None, :, None] * np.array([1.0, -1.0])[None, :, None, None]
    coords = (centre + points.reshape(-1, 3) / STEP_MM).T
    blurred = ndimage.gaussian_filter(fine, 0.5 / STEP_MM)  # a path need not hit a thin vein's axis exactly
    sampled = ndimage.map_coordinates(blurred, coords, order=1, mode="nearest")
    darkness = -sampled.reshape(len(directions), 2, len(radii))
    both = np.minimum(darkness[:, 0], darkness[:, 1]).mean(axis=1)
    one = darkness.max(axis=1).mean(axis=1)
    best = int(np.argmax(both))
    return [float(both[best] / depth), float(abs(directions[best] @ normal)), float(one.max() / depth)]


def _dark_spots(fine: np.ndarray, level: float) -> float:
    """Dark regions (deeper than half the centre's depth) in the cube other than the centre's own."""
    if level <= 0:
        return 0.0
    _, count = ndimage.label(fine < -level)
    return float(max(count - 1, 0))
