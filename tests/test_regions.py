"""MARS regions: the MNI152 brain fitted into the scan's brain mask (tilt, cut vertex and brain size
taken as they are), and 'unknown' (never a guess) when the scan shows too little brain or no brain
shape."""

from __future__ import annotations

import numpy as np
from nibabel.affines import apply_affine
from scipy import ndimage
from scipy.spatial.transform import Rotation

from cmbdet.anatomy import mni_region_map, mni_template
from cmbdet.detections import Detections
from cmbdet.regions import REGION_NAMES, anchor_to_mni, assign_regions

#: MNI mm points well inside one region each: thalamus, precentral cortex, cerebellar hemisphere,
#: occipital cortex, putamen.
POINTS_MNI = np.array([[-12.0, -18.0, 8.0], [-40.0, -20.0, 55.0], [20.0, -65.0, -35.0], [25.0, -90.0, 10.0],
                       [26.0, 2.0, 1.0]])


def _truth() -> list[str]:
    labels, affine = mni_region_map(2)
    ijk = np.rint(apply_affine(np.linalg.inv(affine), POINTS_MNI)).astype(int)
    return [REGION_NAMES[int(v)] for v in labels[tuple(ijk.T)]]


def _subject(pitch_deg: float = 0.0, yaw_deg: float = 0.0, scale: float = 1.0, cut_top_mm: float = 0.0,
             keep_slices: slice | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 'subject' brain mask: MNI152's, scaled, tilted (pitch about left-right, yaw about
    superior-inferior) and shifted in the scanner, on a 2 mm RAS grid with room above; optionally
    the top ``cut_top_mm`` of the brain cut off or only some slices kept. Returns (mask, affine, the
    scanner mm of `POINTS_MNI`)."""
    brain, mni_affine = mni_template("brain", 2)
    rotation = Rotation.from_euler("xz", [pitch_deg, yaw_deg], degrees=True).as_matrix()
    world = np.eye(4)
    world[:3, :3] = rotation * scale
    world[:3, 3] = [7.0, -12.0, 20.0]  # MNI mm -> scanner mm
    grid = np.diag([2.0, 2.0, 2.0, 1.0])
    grid[:3, 3] = [-100.0, -130.0, -70.0]
    shape = (100, 120, 100)
    back = np.linalg.inv(mni_affine) @ np.linalg.inv(world) @ grid  # scan voxel -> MNI voxel
    mask = ndimage.affine_transform((brain > 0.5).astype(np.float32), back[:3, :3], back[:3, 3], output_shape=shape,
                                    order=1) > 0.5
    if cut_top_mm:
        top = int(np.flatnonzero(mask.any(axis=(0, 1)))[-1])
        mask = mask[:, :, : top + 1 - int(cut_top_mm / 2.0)]
    if keep_slices is not None:
        mask = mask[:, :, keep_slices]
        grid[2, 3] += 2.0 * keep_slices.start
    return mask, grid, apply_affine(world, POINTS_MNI)


def _regions(mask: np.ndarray, affine: np.ndarray, xyz_mm: np.ndarray) -> Detections:
    found = Detections(xyz_mm, np.ones(len(xyz_mm)), np.full(len(xyz_mm), 3.0))
    return assign_regions(found, anchor_to_mni(mask, affine))


def test_points_get_their_region_in_a_tilted_and_larger_head():
    truth = _truth()
    assert truth == ["deep", "lobar", "infratentorial", "lobar", "deep"]
    for pitch, yaw, scale in ((0.0, 0.0, 1.0), (18.0, 0.0, 1.1), (-15.0, 10.0, 0.9)):
        mask, affine, xyz = _subject(pitch, yaw, scale)
        found = _regions(mask, affine, xyz)
        assert list(found.region) == truth, (pitch, yaw, scale)
        assert found.notes == ()


def test_a_cut_vertex_is_anchored_on_what_the_scan_shows():
    mask, affine, xyz = _subject(pitch_deg=10.0, cut_top_mm=20.0)
    assert mask[:, :, -1].sum() > 100  # brain reaches the top slice
    keep = xyz[:, 2] < affine[2, 3] + 2.0 * (mask.shape[2] - 1)  # the points still inside the scan
    found = _regions(mask, affine, xyz[keep])
    assert list(found.region) == [r for r, k in zip(_truth(), keep, strict=True) if k]


def test_a_slab_gives_unknown_with_a_reason():
    mask, affine, xyz = _subject(keep_slices=slice(40, 47))
    anchor = anchor_to_mni(mask, affine)
    assert anchor.to_mni is None
    assert "partial coverage" in anchor.note and "region=unknown" in anchor.note
    found = _regions(mask, affine, xyz)
    assert list(found.region) == ["unknown"] * len(xyz)
    assert found.notes == (anchor.note,)


def test_a_mask_of_no_brain_shape_gives_unknown():
    mask = np.zeros((100, 120, 100), bool)
    mask[10:90, 55:65, 10:90] = True  # a thin plate, 160 x 20 x 160 mm
    anchor = anchor_to_mni(mask, np.diag([2.0, 2.0, 2.0, 1.0]))
    assert anchor.to_mni is None and "does not match a brain" in anchor.note
    assert anchor_to_mni(np.zeros((20, 20, 20), bool), np.eye(4)).note.startswith("no brain found")


def test_the_fit_is_deterministic():
    mask, affine, _ = _subject(pitch_deg=12.0)
    assert np.array_equal(anchor_to_mni(mask, affine).to_mni, anchor_to_mni(mask, affine).to_mni)
