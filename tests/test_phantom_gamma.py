"""The held-out test phantom family "gamma": truth, geometry and conventions."""

from __future__ import annotations

import functools

import nibabel as nib
import numpy as np
from nibabel.affines import apply_affine

from cmbdet.phantom.gamma import make_subject
from cmbdet.phantom.gamma.head import head_maps

SEEDS = range(12)


@functools.lru_cache(maxsize=1)
def _tiny_set():
    return [make_subject(np.random.default_rng([314, s]), subject=f"g{s:02d}", tiny=True) for s in SEEDS]


def _xyz(rows: list[dict]) -> np.ndarray:
    return np.array([[r["x_mm"], r["y_mm"], r["z_mm"]] for r in rows], float).reshape(-1, 3)


def _ijk(img: nib.Nifti1Image, rows: list[dict]) -> np.ndarray:
    return apply_affine(np.linalg.inv(img.affine), _xyz(rows))


def test_deterministic_for_seed():
    a = make_subject(np.random.default_rng([7, 3]), subject="a", tiny=True)
    b = make_subject(np.random.default_rng([7, 3]), subject="a", tiny=True)
    assert np.array_equal(np.asanyarray(a.image.dataobj), np.asanyarray(b.image.dataobj))
    assert np.allclose(a.image.affine, b.image.affine)
    assert a.cmbs == b.cmbs and a.mimics == b.mimics
    assert a.protocol.as_row() == b.protocol.as_row()
    c = make_subject(np.random.default_rng([7, 4]), subject="a", tiny=True)
    assert c.protocol.as_row() != a.protocol.as_row()


def test_tiny_scans_are_small_3d_magnitude():
    for ph in _tiny_set():
        img = ph.image
        assert isinstance(img, nib.Nifti1Image) and img.ndim == 3
        assert max(img.shape) <= 80 and np.prod(img.shape) <= 80**3
        data = img.get_fdata()
        assert np.all(np.isfinite(data)) and data.min() >= 0 and data.max() > 0
        zooms = sorted(img.header.get_zooms())
        assert 2.4 <= zooms[0] and zooms[-1] <= 3.1


def test_truth_inside_brain_and_fov():
    maps = head_maps(2)
    n = 0
    for ph in _tiny_set():
        for rows in (ph.cmbs, ph.mimics):
            ijk = _ijk(ph.image, rows)
            assert np.all(ijk >= -0.5) and np.all(ijk <= np.array(ph.image.shape) - 0.5)
        if ph.cmbs:
            mni = np.array([[c["mni_x"], c["mni_y"], c["mni_z"]] for c in ph.cmbs])
            inside = maps.sample(maps.brain.astype(np.float32), mni) > 0.5
            tissue = maps.sample(maps.gm, mni) + maps.sample(maps.wm, mni)
            assert inside.all() and np.all(tissue > 0.7)
            n += len(ph.cmbs)
    assert n >= 5


def test_cmb_centres_are_dark():
    ratios = []
    for ph in _tiny_set():
        data = ph.image.get_fdata()
        xyz = apply_affine(ph.image.affine, np.indices(data.shape).reshape(3, -1).T)
        for c in ph.cmbs:
            p = np.array([c["x_mm"], c["y_mm"], c["z_mm"]])
            r = c["diameter_mm"] / 2
            dist = np.linalg.norm(xyz - p, axis=1)
            core = data.ravel()[dist <= max(0.35 * r, dist.min() + 1e-6)].mean()
            ring = np.median(data.ravel()[(dist > r + 3) & (dist < r + 8)])
            ratios.append(core / ring)
    assert len(ratios) >= 5
    assert max(ratios) < 0.85, ratios
    assert np.median(ratios) < 0.5


def test_cmb_fields_regions_and_sizes():
    for ph in _tiny_set():
        centres = _xyz(ph.cmbs)
        for i, c in enumerate(ph.cmbs):
            assert c["region"] in {"lobar", "deep", "infratentorial"}
            assert 5.0 <= c["diameter_mm"] <= 10.0  # tiny: large CMBs only
            others = np.delete(centres, i, axis=0)
            if len(others):
                gap = np.linalg.norm(others - centres[i], axis=1).min()
                assert gap > c["diameter_mm"] / 2  # no overlap
        assert len(ph.cmbs) <= 3


def test_cmb_free_subjects_and_axis_orders_occur():
    subjects = _tiny_set()
    assert any(len(ph.cmbs) == 0 for ph in subjects)
    assert sum(len(ph.cmbs) > 0 for ph in subjects) >= 4
    codes = {"".join(nib.aff2axcodes(ph.image.affine)) for ph in subjects}
    assert len(codes) >= 5, codes
    assert {ph.protocol.as_row()["axcodes"] for ph in subjects} == codes
    assert len({str(ph.image.get_data_dtype()) for ph in subjects}) >= 2


def test_protocol_row_is_flat():
    for ph in _tiny_set():
        row = ph.protocol.as_row()
        assert all(isinstance(v, (str, int, float)) for v in row.values())
        assert row["contrast"] in {"swi", "gre"} and row["field_t"] in {1.5, 3.0}
        assert 15.0 <= row["te_ms"] <= 40.0
        zooms = ph.image.header.get_zooms()
        assert np.allclose(zooms, [row["voxel_x_mm"], row["voxel_y_mm"], row["voxel_z_mm"]], atol=1e-3)
        assert np.isclose(max(zooms), row["slice_mm"], atol=1e-3)


def test_full_size_subject():
    ph = make_subject(np.random.default_rng([2026, 1]), subject="full")
    img = ph.image
    zooms = np.array(img.header.get_zooms())
    row = ph.protocol.as_row()
    assert 0.44 <= min(zooms) <= 1.0 and max(zooms) <= 4.0
    assert np.prod(img.shape) <= 13e6
    kinds = {m["kind"] for m in ph.mimics}
    assert {"vein", "iron"} <= kinds
    assert set(kinds) <= {"vein", "iron", "air_bone", "calcification", "cavernoma", "other"}
    veins = [m for m in ph.mimics if m["kind"] == "vein" and "through-slice" in m["detail"]]
    assert len(veins) >= 5
    for rows in (ph.cmbs, ph.mimics):
        ijk = _ijk(img, rows)
        assert np.all(ijk >= -0.5) and np.all(ijk <= np.array(img.shape) - 0.5)
    for c in ph.cmbs:
        assert 2.0 <= c["diameter_mm"] <= 10.0
    assert row["nx"] * row["ny"] * row["nz"] == np.prod(img.shape)
    assert ph.timings["total_s"] > 0
