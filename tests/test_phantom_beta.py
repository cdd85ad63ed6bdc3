"""Validation phantom family "beta": determinism, truth geometry, visibility, protocols."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from cmbdet import anatomy
from cmbdet.phantom.beta import make_subject
from cmbdet.phantom.beta.lesions import sample_cmb_count

SEEDS = range(6)


@pytest.fixture(scope="module")
def tiny_subjects():
    return {s: make_subject(np.random.default_rng(s), subject=f"beta-{s}", tiny=True) for s in SEEDS}


def _world(p: dict) -> np.ndarray:
    return np.array([p["x_mm"], p["y_mm"], p["z_mm"]], float)


def _ijk(img: nib.Nifti1Image, xyz: np.ndarray) -> np.ndarray:
    return nib.affines.apply_affine(np.linalg.inv(img.affine), xyz)


def test_same_seed_same_subject(tiny_subjects):
    a = tiny_subjects[3]
    b = make_subject(np.random.default_rng(3), subject="beta-3", tiny=True)
    np.testing.assert_array_equal(np.asanyarray(a.image.dataobj), np.asanyarray(b.image.dataobj))
    np.testing.assert_allclose(a.image.affine, b.image.affine)
    assert a.cmbs == b.cmbs and a.mimics == b.mimics
    assert a.protocol.as_row() == b.protocol.as_row()
    c = make_subject(np.random.default_rng(4), subject="beta-4", tiny=True)
    assert c.image.shape != a.image.shape or not np.array_equal(c.image.get_fdata(), a.image.get_fdata())


def test_tiny_scans_are_small_3d_magnitude(tiny_subjects):
    for s in tiny_subjects.values():
        assert s.image.ndim == 3 and max(s.image.shape) <= 80
        data = s.image.get_fdata()
        assert np.isfinite(data).all() and data.min() >= 0 and data.max() > 0
        assert s.geometry is None and s.timings["total_s"] > 0


def test_truth_inside_fov_and_brain_with_valid_regions(tiny_subjects):
    maps = anatomy.mni_maps(2)
    n = 0
    for s in tiny_subjects.values():
        shape = np.array(s.image.shape)
        for c in s.cmbs:
            ijk = _ijk(s.image, _world(c))
            assert np.all(ijk >= 0) and np.all(ijk <= shape - 1), c
            assert c["region"] in {"lobar", "deep", "infratentorial"}
            assert 2.0 <= c["diameter_mm"] <= 10.0
            vox = np.round(maps.mm_to_vox(np.array([[c["mni_x"], c["mni_y"], c["mni_z"]]]))[0]).astype(int)
            assert maps.brain[tuple(vox)]
            n += 1
        for m in s.mimics:
            assert m["kind"] in {"vein", "iron", "air_bone", "calcification", "other"}
            ijk = _ijk(s.image, _world(m))
            assert np.all(ijk >= -0.5) and np.all(ijk <= shape - 0.5), m
    assert n >= 5


def test_region_label_matches_mars_map(tiny_subjects):
    maps = anatomy.mni_maps(1)
    for s in tiny_subjects.values():
        for c in s.cmbs:
            vox = np.round(maps.mm_to_vox(np.array([[c["mni_x"], c["mni_y"], c["mni_z"]]]))[0]).astype(int)
            assert anatomy.REGION_NAMES[int(maps.regions[tuple(vox)])] == c["region"]


def _darkness(img: nib.Nifti1Image, xyz: np.ndarray) -> float:
    """Darkest voxel within 1 voxel of the point / median of the 4–12 mm shell around it."""
    data = img.get_fdata()
    ijk = _ijk(img, xyz)
    i, j, k = np.round(ijk).astype(int)
    core = data[max(i - 1, 0): i + 2, max(j - 1, 0): j + 2, max(k - 1, 0): k + 2].min()
    grid = np.indices(data.shape).reshape(3, -1).T
    dist = np.linalg.norm(nib.affines.apply_affine(img.affine, grid) - xyz, axis=1)
    shell = data.reshape(-1)[(dist >= 4.0) & (dist <= 12.0)]
    return float(core / np.median(shell))


def test_image_is_dark_at_cmb_centres(tiny_subjects):
    ratios = [_darkness(s.image, _world(c)) for s in tiny_subjects.values() for c in s.cmbs]
    assert len(ratios) >= 5
    assert max(ratios) < 0.85, ratios
    assert np.median(ratios) < 0.6, ratios


def test_several_axis_orders_and_flat_protocol_rows(tiny_subjects):
    codes = set()
    for s in tiny_subjects.values():
        ax = "".join(nib.aff2axcodes(s.image.affine))
        assert ax == s.protocol.axcodes
        codes.add(ax)
        row = s.protocol.as_row()
        assert all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in row.values()), row
        for key in ("voxel_read_mm", "slice_mm", "axcodes", "field_t", "te_ms", "sequence", "snr"):
            assert key in row
        zooms = np.array(s.image.header.get_zooms()[:3])
        assert np.allclose(sorted(zooms), sorted(s.protocol.voxel_mm), atol=1e-3)
    assert len(codes) >= 3


def test_cmb_free_subjects_occur(tiny_subjects):
    counts = [len(s.cmbs) for s in tiny_subjects.values()]
    assert 0 in counts and max(counts) > 0
    draws = np.array([sample_cmb_count(np.random.default_rng(i)) for i in range(3000)])
    assert abs(np.mean(draws == 0) - 1 / 3) < 0.04
    assert 4.5 < draws[draws > 0].mean() < 7.5 and draws.max() <= 15


def test_full_size_subject_protocol_and_mimics():
    s = make_subject(np.random.default_rng(2), subject="beta-full")
    p = s.protocol
    zooms = sorted(s.image.header.get_zooms()[:3])
    if p.sequence == "swi":
        assert p.field_t == 3.0 and 0.5 <= zooms[0] <= 0.8 and 1.0 <= zooms[2] <= 2.5
        assert 3 <= p.phase_mask_power <= 5
    else:
        assert p.field_t == 1.5 and 0.8 <= zooms[0] <= 1.0 and 3.0 <= zooms[2] <= 5.0
    kinds = [m["kind"] for m in s.mimics]
    assert kinds.count("vein") >= 4 and "iron" in kinds and "air_bone" in kinds
    assert s.image.get_data_dtype() in (np.int16, np.uint16, np.float32)
    # veins marked as mimics are dark dots too
    dark = [_darkness(s.image, _world(m)) for m in s.mimics if m["kind"] == "vein"]
    assert np.median(dark) < 0.9, dark


def test_storage_types_and_scaling(tiny_subjects):
    kinds = set()
    for s in tiny_subjects.values():
        p = s.protocol
        assert s.image.get_data_dtype() == np.dtype(p.storage)
        kinds.add(p.storage)
        if p.storage != "float32":
            assert float(s.image.dataobj.slope) == pytest.approx(p.scl_slope, rel=1e-6)
            raw = np.asarray(s.image.dataobj.get_unscaled(), float)
            np.testing.assert_allclose(s.image.get_fdata(), raw * float(s.image.dataobj.slope), rtol=1e-6)
    assert len(kinds) >= 2


def test_no_vein_stubs_the_size_of_a_microbleed():
    """A walker stopped after a step or two must not leave a 1-2 mm 'vein': it is a round dark blob,
    a microbleed by shape, and would make validation false positives no method can avoid."""
    from cmbdet.anatomy import mni_maps
    from cmbdet.phantom.beta.veins import MIN_MEDULLARY_MM, MIN_PERFORATOR_MM, grow_veins

    veins = grow_veins(np.random.default_rng(3), mni_maps(2), density=1.0)
    lengths = {"medullary": [], "perforator": []}
    for v in veins:
        if v.kind in lengths:
            lengths[v.kind].append(float(np.linalg.norm(np.diff(v.points, axis=0), axis=1).sum()))
    assert len(lengths["medullary"]) > 50 and len(lengths["perforator"]) > 20
    assert min(lengths["medullary"]) >= MIN_MEDULLARY_MM
    assert min(lengths["perforator"]) >= MIN_PERFORATOR_MM
