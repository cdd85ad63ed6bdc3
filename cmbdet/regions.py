"""MARS location of each detection: lobar, deep or infratentorial (Gregoire et al. 2009).

No registration tool is needed: the MNI152 brain mask is fitted into the scan's brain mask by a
rotation (each rotation-vector component up to `MAX_TILT_RAD`), a translation and three scales
(`SCALE_RANGE`) — smoothed masks compared on a `FIT_GRID_MM` grid at the scan's brain outline and
across the rest of its field of view, MNI brain outside the field of view not counted. So a tilted
head, a field of view that cuts the vertex or the cerebellum, and a brain larger or smaller than
MNI's are taken as they are. Brain masks of SWI/GRE often reach into the face and neck; scan brain
where MNI has none costs `LEAK_WEIGHT` of the reverse, so such a leak does not pull the fit. Small
priors toward an upright head of MNI's size settle fields of view that cut both ends of the brain
(they also pull a head pitched 25° back by a few degrees). Four fits (as the header says and turned
180° about each axis), about 1.3 s per scan.

A detection's position is mapped through the inverse of that fit into MNI space and looked up in
`cmbdet.anatomy.mni_region_map`; a point just outside the MNI brain takes the nearest region. An
affine fit does not follow every individual difference (large ventricles, atrophy), so points within
a few mm of a region's border can fall on the wrong side (`tools/region_accuracy.py` measures
agreement with phantom truth, `tools/regions_under_tilt.py` with a rotated MNI brain).

No region is guessed — every detection gets ``region = "unknown"`` (counted as ``n_unknown``) and the
anchor's note says why — when the scan shows less than `MIN_BRAIN_MM` of brain along any axis (a
slab), when the fit ends at a limit of tilt or size, when the brain fits clearly better turned 180°
than as the orientation header says (a wrong header), or when the fitted MNI brain overlaps the
scan's brain mask poorly (a failed mask, Dice below `MIN_OVERLAP`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from nibabel.affines import apply_affine, voxel_sizes
from scipy import ndimage, optimize
from scipy.spatial.transform import Rotation

from cmbdet.anatomy import mni_region_map, mni_template
from cmbdet.detections import Detections

REGION_NAMES = {1: "lobar", 2: "deep", 3: "infratentorial"}
UNKNOWN = "unknown"
#: Brain extent (mm, along any axis of the mask) below which the fit is not tried.
MIN_BRAIN_MM = 60.0
#: Dice of the fitted MNI brain and the scan's brain mask (inside the field of view) below which
#: the fit is not trusted.
MIN_OVERLAP = 0.70
#: Grid (mm) on which the masks are compared; at most this many voxels at the scan's brain outline,
#: and as many elsewhere in its field of view, are compared.
FIT_GRID_MM = 6.0
FIT_POINTS = 3000
#: Brain size relative to MNI152 that the fit may take, per axis, and the largest head rotation
#: (radians, per rotation-vector component) away from the scanner's axes.
SCALE_RANGE = (0.75, 1.35)
MAX_TILT_RAD = float(np.deg2rad(30.0))
#: Weight of a mismatch where the scan's mask has brain and MNI has none (1 for the reverse).
LEAK_WEIGHT = 0.2
#: Priors (added to the weighted mean squared mismatch, per rad^2 of rotation and per squared log
#: scale) toward an upright head of MNI152's size.
ROTATION_PRIOR = 0.01
SCALE_PRIOR = 0.05


@dataclass(frozen=True, eq=False)
class MniAnchor:
    """How a scan's brain lies relative to MNI152: ``to_mni`` (4, 4) scanner RAS mm -> MNI mm, or
    None with ``note`` saying why regions cannot be anchored. ``overlap``: Dice of the fitted MNI
    brain and the scan's brain mask inside the field of view (0 when not fitted)."""

    to_mni: np.ndarray | None
    note: str = ""
    overlap: float = 0.0

    def mni_mm(self, xyz_mm: np.ndarray) -> np.ndarray:
        """(N, 3) MNI mm of scanner RAS mm points (N, 3); only for a fitted anchor."""
        if self.to_mni is None:
            raise ValueError(f"no MNI anchor: {self.note}")
        return apply_affine(self.to_mni, np.asarray(xyz_mm, float).reshape(-1, 3))


@dataclass(frozen=True)
class _CoarseMask:
    """A brain mask on a `FIT_GRID_MM` grid: the brain share of each coarse voxel, that share
    smoothed by one coarse voxel, and the coarse grid's voxel -> mm affine."""

    fraction: np.ndarray
    smooth: np.ndarray
    affine: np.ndarray

    def centre_mm(self) -> np.ndarray:
        return apply_affine(self.affine, np.argwhere(self.fraction > 0.5)).mean(axis=0)


def _coarse_mask(mask: np.ndarray, affine: np.ndarray) -> _CoarseMask:
    factor = np.maximum(np.round(FIT_GRID_MM / voxel_sizes(affine)).astype(int), 1)
    factor = np.minimum(factor, np.maximum(np.array(mask.shape) // 2, 1))  # at least 2 coarse voxels a side
    # the last partial block of each axis is dropped: zero padding (as preprocess._block_mean does for the
    # bias field) would draw a brain edge at a face where the field of view cuts the brain
    shape = np.array(mask.shape) // factor
    cut = mask[: shape[0] * factor[0], : shape[1] * factor[1], : shape[2] * factor[2]]
    fraction = cut.reshape(shape[0], factor[0], shape[1], factor[1], shape[2], factor[2]).mean(
        axis=(1, 3, 5), dtype=np.float32)
    coarse_affine = affine.copy()
    coarse_affine[:3, :3] = affine[:3, :3] * factor
    coarse_affine[:3, 3] = apply_affine(affine, (factor - 1) / 2.0)
    return _CoarseMask(fraction, ndimage.gaussian_filter(fraction, 1.0, mode="nearest"), coarse_affine)


def _at_most(points: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    return points[rng.choice(len(points), n, replace=False)] if len(points) > n else points


def _bounded(x: np.ndarray, low: float, high: float) -> np.ndarray:
    """``x`` (any real) mapped smoothly into (low, high); 0 to the middle."""
    return (low + high) / 2 + (high - low) / 2 * np.tanh(x)


def _bounded_scale(x: np.ndarray) -> np.ndarray:
    return np.exp(_bounded(x, *np.log(SCALE_RANGE)))


@functools.lru_cache(maxsize=1)
def _mni_brain() -> _CoarseMask:
    brain, affine = mni_template("brain", 2)
    return _coarse_mask(brain > 0.5, affine)


@functools.lru_cache(maxsize=1)
def _nearest_region_map() -> tuple[np.ndarray, np.ndarray]:
    """The 2 mm MNI region map with every outside voxel given its nearest region (and the affine)."""
    labels, affine = mni_region_map(2)
    _, index = ndimage.distance_transform_edt(labels == 0, return_indices=True)
    return labels[tuple(index)], affine


def _brain_extent_mm(mask: np.ndarray, mask_affine: np.ndarray) -> np.ndarray:
    """(3,) mm of brain along the mask's i, j and k axes."""
    extent = np.zeros(3)
    for axis in range(3):
        present = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        if len(present):
            extent[axis] = (present[-1] - present[0] + 1) * voxel_sizes(mask_affine)[axis]
    return extent


@dataclass(frozen=True)
class _Fit:
    linear: np.ndarray  # (3, 3) MNI mm -> scan mm, without the shift
    shift_mm: np.ndarray
    cost: float
    at_limit: bool  # a rotation or scale ended at (within 2 % of) its bound


def _fit_mni(mni: _CoarseMask, points_mm: np.ndarray, values: np.ndarray, centre_mm: np.ndarray) -> _Fit:
    """MNI152 fitted to the scan's smoothed mask ``values`` at ``points_mm`` (see the module docstring)."""
    mni_centre, mni_to_voxel = mni.centre_mm(), np.linalg.inv(mni.affine)

    def mni_to_scan(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        # x: rotation vector, translation (cm), scales; rotation and scales bounded (`_bounded`)
        rotvec, scales = _bounded(x[:3], -MAX_TILT_RAD, MAX_TILT_RAD), _bounded_scale(x[6:9])
        linear = Rotation.from_rotvec(rotvec).as_matrix() @ np.diag(scales)
        prior = ROTATION_PRIOR * float(rotvec @ rotvec) + SCALE_PRIOR * float(np.sum(np.log(scales) ** 2))
        return linear, centre_mm + 10.0 * x[3:6] - linear @ mni_centre, prior

    def mismatch(x: np.ndarray) -> float:
        linear, shift, prior = mni_to_scan(x)
        back = apply_affine(mni_to_voxel, (points_mm - shift) @ np.linalg.inv(linear).T)
        mni_values = ndimage.map_coordinates(mni.smooth, back.T, order=1, cval=0.0)
        excess = values - mni_values  # > 0: scan mask where MNI has no brain (masks leak into the face and neck)
        return float(np.mean(np.where(excess > 0, LEAK_WEIGHT, 1.0) * excess**2)) + prior

    starts = [np.r_[np.zeros(5), dz_cm, np.zeros(3)] for dz_cm in np.arange(-4.0, 4.01, 0.8)]
    fitted = optimize.minimize(mismatch, min(starts, key=mismatch), method="Powell",
                               options={"xtol": 1e-2, "ftol": 1e-4, "maxfev": 3000})
    linear, shift, _ = mni_to_scan(fitted.x)
    at_limit = bool(np.any(np.abs(np.tanh(fitted.x[[0, 1, 2, 6, 7, 8]])) > 0.98))
    return _Fit(linear, shift, float(fitted.fun), at_limit)


#: Half turns (about left-right, anterior-posterior, superior-inferior) that a wrong orientation
#: header can hide: a brain that fits MNI152 clearly better turned (mismatch below `TURNED_MARGIN`
#: times the upright fit's) is not anchored. Masks that leak into the face and neck leave the upright
#: fit only 3-25 % ahead of the turned ones on the `classic` phantoms, so a smaller lead is not
#: taken as a wrong header.
HALF_TURNS = (np.diag([1.0, -1.0, -1.0]), np.diag([-1.0, 1.0, -1.0]), np.diag([-1.0, -1.0, 1.0]))
TURNED_MARGIN = 0.85


def anchor_to_mni(mask: np.ndarray, mask_affine: np.ndarray) -> MniAnchor:
    """Fit MNI152 to a brain mask ((I, J, K) bool, RAS-canonical, k to superior; its voxel -> scanner
    RAS mm affine); see the module docstring. Deterministic."""
    if not mask.any():
        return MniAnchor(None, "no brain found: regions not assigned (region=unknown)")
    extent = _brain_extent_mm(mask, mask_affine)
    if extent.min() < MIN_BRAIN_MM:
        axis = ("left-right", "anterior-posterior", "superior-inferior")[int(np.argmin(extent))]
        return MniAnchor(None, f"the scan shows only {extent.min():.0f} mm of brain {axis} (partial coverage): "
                               "MARS regions cannot be anchored, region=unknown")
    mni, scan = _mni_brain(), _coarse_mask(mask, mask_affine)
    brain = scan.fraction > 0.5
    if not brain.any():
        return MniAnchor(None, "too little brain on the 6 mm fitting grid: MARS regions cannot be anchored, "
                               "region=unknown")
    centre = scan.centre_mm()
    # where the masks are compared: the scan's brain outline and as many other voxels of the field of
    # view (they catch MNI brain where the scan shows none); MNI brain outside the field of view is not
    # compared, so a cut vertex or cerebellum costs nothing
    near_outline = (scan.smooth > 0.02) & (scan.smooth < 0.98)
    voxels = np.concatenate([_at_most(np.argwhere(near_outline), FIT_POINTS, np.random.default_rng(0)),
                             _at_most(np.argwhere(~near_outline), FIT_POINTS, np.random.default_rng(1))])
    points_mm, values = apply_affine(scan.affine, voxels), scan.smooth[tuple(voxels.T)]
    fit = _fit_mni(mni, points_mm, values, centre)
    if fit.at_limit:
        return MniAnchor(None, "the brain mask fits MNI152 only at the limits of head tilt or brain size: MARS "
                               "regions not assigned, region=unknown")
    for turn in HALF_TURNS:
        if _fit_mni(mni, centre + (points_mm - centre) @ turn, values, centre).cost < TURNED_MARGIN * fit.cost:
            return MniAnchor(None, "the brain fits MNI152 better turned 180 degrees than as the image's orientation "
                                   "header says: check the header; MARS regions not assigned, region=unknown")
    forward = np.eye(4)
    forward[:3, :3], forward[:3, 3] = fit.linear, fit.shift_mm
    to_mni = np.linalg.inv(forward)
    # Dice of the fitted MNI brain and the scan's brain inside the field of view, on the coarse grid
    grid = np.indices(scan.smooth.shape).reshape(3, -1)
    mni_there = ndimage.map_coordinates(
        mni.smooth, apply_affine(np.linalg.inv(mni.affine) @ to_mni @ scan.affine, grid.T).T, order=1,
        cval=0.0).reshape(scan.smooth.shape) > 0.5
    overlap = float(2.0 * (mni_there & brain).sum() / max(int(mni_there.sum() + brain.sum()), 1))
    if overlap < MIN_OVERLAP:
        return MniAnchor(None, f"the brain mask does not match a brain's shape (overlap {overlap:.2f} with the "
                               "fitted MNI152 brain): MARS regions not assigned, region=unknown", overlap)
    return MniAnchor(to_mni, "", overlap)


def assign_regions(detections: Detections, anchor: MniAnchor) -> Detections:
    """The detections with ``region`` set to 'lobar', 'deep' or 'infratentorial' through ``anchor``
    (`anchor_to_mni` of the scan's brain mask); 'unknown' for every detection, and the anchor's note
    added, when it could not be fitted."""
    if anchor.to_mni is None:
        names = np.full(len(detections), UNKNOWN, dtype=object)
        return Detections(detections.xyz_mm, detections.score, detections.diameter_mm, names, detections.stage_scores,
                          notes=(*detections.notes, anchor.note))
    if len(detections) == 0:
        return detections
    labels, affine = _nearest_region_map()
    ijk = np.rint(apply_affine(np.linalg.inv(affine), anchor.mni_mm(detections.xyz_mm))).astype(int)
    ijk = np.clip(ijk, 0, np.array(labels.shape) - 1)
    names = np.array([REGION_NAMES.get(int(v), "lobar") for v in labels[tuple(ijk.T)]], dtype=object)
    return Detections(detections.xyz_mm, detections.score, detections.diameter_mm, names, detections.stage_scores,
                      notes=detections.notes)
