"""MARS regions: anchored on the top of the brain, and 'unknown' (never a guess) when the scan
cannot show it."""

from __future__ import annotations

import numpy as np

from cmbdet.detections import Detections
from cmbdet.regions import assign_regions, region_note


def _brain_mask(top_cut_mm: float | None = None, slab=None) -> tuple[np.ndarray, np.ndarray]:
    """An ellipsoidal 'brain' (140 x 170 x 120 mm) on a 2 mm grid with 10 mm of room above it,
    optionally with the top cut off or only a slab of slices kept; RAS-canonical."""
    shape = (90, 100, 80)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-90, -100, -70]
    ijk = np.indices(shape).reshape(3, -1).T
    xyz = ijk * 2.0 + affine[:3, 3]
    inside = ((xyz[:, 0] / 70) ** 2 + (xyz[:, 1] / 85) ** 2 + ((xyz[:, 2] - 20) / 60) ** 2) <= 1
    mask = inside.reshape(shape)
    if top_cut_mm is not None:
        keep = int((80 - top_cut_mm + 70) / 2)  # last slice kept: z = 80 - top_cut_mm
        mask, shape = mask[:, :, :keep], (90, 100, keep)
    if slab is not None:
        mask = mask[:, :, slab]
        affine[2, 3] += 2.0 * slab.start
    return mask, affine


def _detections() -> Detections:
    return Detections(np.array([[30.0, 20.0, 50.0], [0.0, 0.0, 10.0]]), np.array([0.9, 0.8]), np.array([3.0, 4.0]))


def test_whole_brain_gets_regions():
    mask, affine = _brain_mask()
    assert region_note(mask, affine) == ""
    found = assign_regions(_detections(), mask, affine)
    assert set(found.region) <= {"lobar", "deep", "infratentorial"}
    assert found.notes == ()


def test_cut_vertex_and_slab_give_unknown_with_a_reason():
    for mask, affine in (_brain_mask(top_cut_mm=15.0), _brain_mask(slab=slice(40, 47))):
        note = region_note(mask, affine)
        assert "partial coverage" in note and "region=unknown" in note
        found = assign_regions(_detections(), mask, affine)
        assert list(found.region) == ["unknown", "unknown"]
        assert found.notes == (note,)
