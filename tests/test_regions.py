"""MARS regions: the MNI152 brain fitted into the scan's brain mask (tilt, cut vertex or cerebellum,
brain size and voxel grid taken as they are), and 'unknown' (never a guess) when the scan shows too
little brain, no brain shape, or a brain turned against its orientation header."""

from __future__ import annotations

import numpy as np
from nibabel.affines import apply_affine
from scipy import ndimage
from scipy.spatial.transform import Rotation

from cmbdet.anatomy import mni_region_map, mni_template
from cmbdet.detections import Detections
from cmbdet.regions import REGION_NAMES, anchor_to_mni, assign_regions


def _brain_points(n: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random MNI mm points inside the brain's MARS regions, and their region names."""
    labels, affine = mni_region_map(2)
    inside = np.argwhere(labels > 0)
    picked = inside[np.random.default_rng(0).choice(len(inside), n, replace=False)]
    return apply_affine(affine, picked), np.array([REGION_NAMES[int(v)] for v in labels[tuple(picked.T)]])


def _subject(pitch_deg: float = 0.0, yaw_deg: float = 0.0, scale: float = 1.0, voxel_mm=(2.0, 2.0, 2.0),
             grid_tilt_deg: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 'subject' brain mask: MNI152's, scaled, tilted in the scanner (pitch about left-right, yaw
    about superior-inferior) and shifted, on a RAS grid of ``voxel_mm`` (tilted ``grid_tilt_deg`` about
    left-right: an oblique acquisition) with room around it. Returns (mask, affine, the world
    transform MNI mm -> scanner mm)."""
    brain, mni_affine = mni_template("brain", 2)
    world = np.eye(4)
    world[:3, :3] = Rotation.from_euler("xz", [pitch_deg, yaw_deg], degrees=True).as_matrix() * scale
    world[:3, 3] = [7.0, -12.0, 20.0]
    voxel_mm = np.asarray(voxel_mm, float)
    grid = np.eye(4)
    grid[:3, :3] = Rotation.from_euler("x", grid_tilt_deg, degrees=True).as_matrix() @ np.diag(voxel_mm)
    shape = tuple(int(n) for n in np.ceil(np.array([200.0, 240.0, 200.0]) / voxel_mm))
    grid[:3, 3] = np.array([7.0, -12.0, 20.0]) - grid[:3, :3] @ ((np.array(shape) - 1) / 2.0)
    back = np.linalg.inv(mni_affine) @ np.linalg.inv(world) @ grid  # scan voxel -> MNI voxel
    mask = ndimage.affine_transform((brain > 0.5).astype(np.float32), back[:3, :3], back[:3, 3], output_shape=shape,
                                    order=1) > 0.5
    return mask, grid, world


def _agreement(mask: np.ndarray, affine: np.ndarray, world: np.ndarray) -> tuple[float, float]:
    """(share right, share of deep points right) of `_brain_points` that lie inside the scan."""
    mni, truth = _brain_points()
    xyz = apply_affine(world, mni)
    ijk = apply_affine(np.linalg.inv(affine), xyz)
    seen = np.all((ijk >= 0) & (ijk <= np.array(mask.shape) - 1), axis=1)
    found = assign_regions(Detections(xyz[seen], np.ones(seen.sum()), np.full(seen.sum(), 3.0)),
                           anchor_to_mni(mask, affine))
    assert found.notes == ()
    right = found.region == truth[seen]
    return float(right.mean()), float(right[truth[seen] == "deep"].mean())


def test_a_tilted_larger_or_smaller_head_gets_its_regions():
    for pitch, yaw, scale in ((0.0, 0.0, 1.0), (18.0, 0.0, 1.1), (-15.0, 10.0, 0.9)):
        mask, affine, world = _subject(pitch, yaw, scale)
        overall, deep = _agreement(mask, affine, world)
        assert overall >= 0.95 and deep >= 0.85, (pitch, yaw, scale, overall, deep)


def test_an_oblique_anisotropic_grid_gets_its_regions():
    mask, affine, world = _subject(pitch_deg=10.0, voxel_mm=(1.5, 1.2, 4.0), grid_tilt_deg=12.0)
    overall, deep = _agreement(mask, affine, world)
    assert overall >= 0.95 and deep >= 0.85, (overall, deep)


def test_a_cut_vertex_or_cerebellum_is_anchored_on_what_the_scan_shows():
    mask, affine, world = _subject(pitch_deg=10.0)
    slices = np.flatnonzero(mask.any(axis=(0, 1)))
    for keep in (slice(0, slices[-1] + 1 - 10), slice(slices[0] + 25, None)):  # 20 mm of vertex, 50 mm at the bottom
        cut_affine = affine.copy()
        cut_affine[:3, 3] = apply_affine(affine, [0, 0, keep.start or 0])
        cut = mask[:, :, keep]
        assert cut[:, :, 0].sum() + cut[:, :, -1].sum() > 100  # brain reaches the cut face
        overall, deep = _agreement(cut, cut_affine, world)
        assert overall >= 0.95 and deep >= 0.85, (keep, overall, deep)


def test_too_little_brain_gives_unknown_with_a_reason():
    mask, affine, world = _subject()
    slices = np.flatnonzero(mask.any(axis=(0, 1)))
    axial_slab = mask[:, :, slices[40]:slices[47]]
    sagittal_slab = mask.copy()
    sagittal_slab[:45] = sagittal_slab[60:] = False  # 30 mm left-right
    for cut, axis in ((axial_slab, "superior-inferior"), (sagittal_slab, "left-right")):
        anchor = anchor_to_mni(cut, affine)
        assert anchor.to_mni is None
        assert "partial coverage" in anchor.note and axis in anchor.note and "region=unknown" in anchor.note
        found = assign_regions(Detections(np.zeros((2, 3)), np.ones(2), np.full(2, 3.0)), anchor)
        assert list(found.region) == ["unknown", "unknown"] and found.notes == (anchor.note,)


def test_a_head_turned_against_its_header_or_no_brain_shape_gives_unknown():
    mask, affine, _ = _subject(pitch_deg=8.0)
    for turned in (mask[::-1, ::-1, :], mask[:, ::-1, ::-1], mask[::-1, :, ::-1]):  # 180 degrees about z, x, y
        anchor = anchor_to_mni(np.ascontiguousarray(turned), affine)
        assert anchor.to_mni is None and "region=unknown" in anchor.note
    box = np.zeros((100, 120, 100), bool)
    box[10:90, 40:75, 10:90] = True  # 160 x 70 x 160 mm
    assert anchor_to_mni(box, np.diag([2.0, 2.0, 2.0, 1.0])).to_mni is None
    assert anchor_to_mni(np.zeros((20, 20, 20), bool), np.eye(4)).note.startswith("no brain found")


def test_the_fit_is_deterministic():
    mask, affine, _ = _subject(pitch_deg=12.0)
    assert np.array_equal(anchor_to_mni(mask, affine).to_mni, anchor_to_mni(mask, affine).to_mni)


def test_the_fit_recovers_the_head_to_within_a_millimetre_on_thick_slices():
    # catches a misplaced coarse grid (half a block is 2.75 mm here), not only wrong regions
    mni, _ = _brain_points()
    mask, affine, world = _subject(voxel_mm=(0.5, 0.5, 5.0))
    error_mm = np.linalg.norm(anchor_to_mni(mask, affine).mni_mm(apply_affine(world, mni)) - mni, axis=1)
    assert np.sqrt(np.mean(error_mm**2)) < 1.0 and error_mm.max() < 2.0
