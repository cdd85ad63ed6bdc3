"""MARS location of each detection: lobar, deep or infratentorial (Gregoire et al. 2009).

No registration tool is needed: the scan's brain mask is matched to the MNI152 brain by its top
(vertex) and its left-right / anterior-posterior centre and spread, measured on the upper 70 mm of
the brain (present in every SWI/GRE field of view, unlike the cerebellum). A detection's position is
mapped through that scaling into MNI space and looked up in `cmbdet.anatomy.mni_region_map`; a point
just outside the MNI brain takes the nearest region. Good to a few mm for brains in the usual
near-axial position; the anchor does not model rotation, so a tilted head shifts the small deep region
first (`tools/regions_under_tilt.py` measures it).

That anchor needs the top of the brain. When the scan does not show it — a slab of a few slices, or
a field of view that cuts the vertex, so that brain tissue reaches the top face of the scan — or
shows less than the upper ``UPPER_BRAIN_MM`` of the brain, no region is guessed: every detection
gets ``region = "unknown"`` (counted as ``n_unknown``) and `region_note` says why.
"""

from __future__ import annotations

import functools

import numpy as np
from nibabel.affines import apply_affine
from scipy import ndimage

from cmbdet.anatomy import mni_region_map, mni_template
from cmbdet.detections import Detections

REGION_NAMES = {1: "lobar", 2: "deep", 3: "infratentorial"}
UNKNOWN = "unknown"
#: Height (mm) of the top part of the brain whose extent fixes the in-plane scaling.
UPPER_BRAIN_MM = 70.0
#: Brain tissue this close (mm) to the top face of the scan means the vertex is cut off.
TOP_MARGIN_MM = 3.0


@functools.lru_cache(maxsize=1)
def _mni_reference() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(top z, in-plane centre (2,), in-plane spread (2,)) of the MNI152 brain, mm."""
    brain, affine = mni_template("brain", 2)
    return _brain_frame(apply_affine(affine, np.argwhere(brain > 0.5)))


@functools.lru_cache(maxsize=1)
def _nearest_region_map() -> tuple[np.ndarray, np.ndarray]:
    """The 2 mm MNI region map with every outside voxel given its nearest region (and the affine)."""
    labels, affine = mni_region_map(2)
    _, index = ndimage.distance_transform_edt(labels == 0, return_indices=True)
    return labels[tuple(index)], affine


def _brain_frame(points_mm: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    top = float(np.percentile(points_mm[:, 2], 99.5))
    upper = points_mm[points_mm[:, 2] >= top - UPPER_BRAIN_MM]
    return top, upper[:, :2].mean(axis=0), upper[:, :2].std(axis=0)


def subject_to_mni(mask: np.ndarray, mask_affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(scale (3,), offset (3,)) with ``mni_mm = scale * xyz_mm + offset``, from a brain mask
    (I, J, K) bool and its voxel -> scanner RAS mm affine."""
    step = max(1, int(round(2.0 / float(np.sqrt((mask_affine[:3, :3] ** 2).sum(axis=0)).min()))))
    points = np.argwhere(mask[::step, ::step, ::step]) * step
    if len(points) < 50:
        return np.ones(3), np.zeros(3)
    top, centre, spread = _brain_frame(apply_affine(mask_affine, points))
    mni_top, mni_centre, mni_spread = _mni_reference()
    scale_xy = np.clip(mni_spread / np.maximum(spread, 1e-3), 0.6, 1.6)
    scale = np.array([scale_xy[0], scale_xy[1], scale_xy.mean()])
    offset = np.array([mni_centre[0] - scale[0] * centre[0], mni_centre[1] - scale[1] * centre[1],
                       mni_top - scale[2] * top])
    return scale, offset


def region_note(mask: np.ndarray, mask_affine: np.ndarray) -> str:
    """Why regions cannot be anchored on this brain mask ((I, J, K) bool, RAS-canonical, k to
    superior; its voxel -> scanner RAS mm affine), or "" when they can."""
    spacing_k = float(np.sqrt((mask_affine[:3, 2] ** 2).sum()))
    slices = np.flatnonzero(mask.any(axis=(0, 1)))
    if len(slices) == 0:
        return "no brain found: regions not assigned (region=unknown)"
    if (mask.shape[2] - 1 - slices[-1]) * spacing_k < TOP_MARGIN_MM:
        return ("the top of the brain is outside the scan (partial coverage): MARS regions cannot be anchored, "
                "region=unknown")
    if (slices[-1] - slices[0] + 1) * spacing_k < UPPER_BRAIN_MM:
        return (f"the scan shows only {(slices[-1] - slices[0] + 1) * spacing_k:.0f} mm of brain (partial coverage): "
                "MARS regions cannot be anchored, region=unknown")
    return ""


def assign_regions(detections: Detections, mask: np.ndarray, mask_affine: np.ndarray) -> Detections:
    """The detections with ``region`` set to 'lobar', 'deep' or 'infratentorial', given the scan's
    brain mask (I, J, K) bool and its voxel -> scanner RAS mm affine; 'unknown' for every detection
    when `region_note` says the mask cannot anchor the atlas."""
    note = region_note(mask, mask_affine)
    if note:
        names = np.full(len(detections), UNKNOWN, dtype=object)
        return Detections(detections.xyz_mm, detections.score, detections.diameter_mm, names, detections.stage_scores,
                          notes=(*detections.notes, note))
    if len(detections) == 0:
        return detections
    scale, offset = subject_to_mni(mask, mask_affine)
    labels, affine = _nearest_region_map()
    mni = detections.xyz_mm * scale + offset
    ijk = np.rint(apply_affine(np.linalg.inv(affine), mni)).astype(int)
    ijk = np.clip(ijk, 0, np.array(labels.shape) - 1)
    names = np.array([REGION_NAMES.get(int(v), "lobar") for v in labels[tuple(ijk.T)]], dtype=object)
    return Detections(detections.xyz_mm, detections.score, detections.diameter_mm, names, detections.stage_scores,
                      notes=detections.notes)
