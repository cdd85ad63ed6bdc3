"""Phantom generator: determinism, file formats, coordinates, regions, protocols."""

from __future__ import annotations

import csv
import dataclasses

import nibabel as nib
import numpy as np
import pytest

from cmbdet import anatomy
from cmbdet.phantom import Protocol, make_subject, sample_protocol, write_phantom_set
from cmbdet.phantom import generate as gen


def _tiny_protocol(seed: int, **changes) -> Protocol:
    p = sample_protocol(np.random.default_rng(seed), tiny=True)
    axc = changes.pop("axcodes", None)
    p = dataclasses.replace(p, **changes)
    return p.with_axcodes(axc) if axc else p


def _local_ratio(img: nib.Nifti1Image, xyz: np.ndarray) -> float:
    """Value at the world point (nearest voxel) / median of a ~12 mm neighbourhood."""
    data = img.get_fdata()
    ijk = nib.affines.apply_affine(np.linalg.inv(img.affine), xyz)
    i, j, k = np.round(ijk).astype(int)
    zooms = np.array(img.header.get_zooms()[:3])
    r = np.maximum(np.ceil(6.0 / zooms).astype(int), 2)
    nb = data[
        max(i - r[0], 0) : i + r[0] + 1,
        max(j - r[1], 0) : j + r[1] + 1,
        max(k - r[2], 0) : k + r[2] + 1,
    ]
    return float(data[i, j, k] / max(np.median(nb), 1e-12))


def test_deterministic_for_seed():
    a = make_subject(np.random.default_rng([7, 1]), tiny=True)
    b = make_subject(np.random.default_rng([7, 1]), tiny=True)
    assert a.protocol == b.protocol
    np.testing.assert_array_equal(np.asanyarray(a.image.dataobj), np.asanyarray(b.image.dataobj))
    np.testing.assert_array_equal(a.image.affine, b.image.affine)
    assert a.cmbs == b.cmbs
    assert a.mimics == b.mimics
    c = make_subject(np.random.default_rng([7, 2]), tiny=True)
    same = np.array_equal(np.asanyarray(a.image.dataobj), np.asanyarray(c.image.dataobj))
    assert not same or a.protocol != c.protocol


def test_tiny_is_fast_and_whole_head():
    import time

    make_subject(np.random.default_rng(0), tiny=True)  # warm caches
    t = time.perf_counter()
    ph = make_subject(np.random.default_rng(1), tiny=True)
    assert time.perf_counter() - t < 3.0  # ~0.3 s on an idle 2-core machine
    zooms = ph.image.header.get_zooms()[:3]
    assert 1.9 <= min(zooms) and max(zooms) <= 3.1
    fov = np.array(ph.image.shape) * np.array(zooms)
    assert fov.min() > 180  # whole head


@pytest.mark.parametrize(
    "axcodes,oblique",
    [(("L", "P", "S"), 0.0), (("R", "A", "S"), 12.0), (("P", "I", "R"), 18.0), (("L", "A", "I"), 7.0)],
)
def test_truth_cmbs_are_dark_at_world_position(axcodes, oblique, monkeypatch):
    monkeypatch.setattr(gen, "_cmb_diameter", lambda rng, bloom: float(rng.uniform(4.5, 7.0)))
    p = _tiny_protocol(
        3,
        axcodes=axcodes,
        oblique_deg=oblique,
        oblique_axis=(0.8, 0.5, 0.33),
        snr=40.0,
        ringing=0.0,
        dtype="float32",
        max_value=1.0,
    )
    ph = make_subject(np.random.default_rng([11, len(axcodes[0]) + int(oblique)]), protocol=p, n_cmb=5, tiny=True)
    assert tuple(nib.aff2axcodes(ph.image.affine)) == axcodes
    assert len(ph.cmbs) >= 3
    for c in ph.cmbs:
        ratio = _local_ratio(ph.image, np.array([c["x_mm"], c["y_mm"], c["z_mm"]]))
        assert ratio < 0.75, (c, ratio)
    # control: random brain points are mostly not dark
    ratios = []
    for c in ph.cmbs:
        shifted = np.array([c["x_mm"] + 25.0, c["y_mm"], c["z_mm"]])
        ratios.append(_local_ratio(ph.image, shifted))
    assert np.median(ratios) > 0.8


def test_slice_axis_and_affine_match_protocol():
    for seed in range(20):
        p = sample_protocol(np.random.default_rng(seed))
        vc, nc = p.canonical()
        assert vc[2] == pytest.approx(p.slice_mm)
    p = _tiny_protocol(5, axcodes=("P", "I", "R"), oblique_deg=10.0)
    ph = make_subject(np.random.default_rng(5), protocol=p, n_cmb=0, tiny=True)
    aff = ph.image.affine
    zooms = np.sqrt((aff[:3, :3] ** 2).sum(axis=0))
    np.testing.assert_allclose(zooms, p.voxel_mm, rtol=1e-5)
    assert ph.image.shape == p.shape
    sl = p.slice_axis
    assert sl == 1
    assert abs(aff[2, sl]) / zooms[sl] > 0.9  # slice direction is S-I
    np.testing.assert_allclose(ph.image.header.get_zooms()[:3], p.voxel_mm, rtol=1e-5)


def test_regions_of_truth_match_region_map():
    names = {v: k for k, v in anatomy.REGION_NAMES.items()}
    agree = total = 0
    counts = {"lobar": 0, "deep": 0, "infratentorial": 0}
    for seed in range(4):
        ph = make_subject(np.random.default_rng([21, seed]), tiny=True, n_cmb=12)
        for c in ph.cmbs:
            counts[c["region"]] += 1
            lab = anatomy.region_at_mni(np.array([c["mni_x"], c["mni_y"], c["mni_z"]]), resolution=2)[0]
            agree += int(lab == names[c["region"]])
            total += 1
    assert total >= 30
    assert agree / total >= 0.85
    assert counts["lobar"] > counts["infratentorial"]
    assert counts["deep"] > 0


def test_protocols_cover_required_ranges():
    rng = np.random.default_rng(0)
    ps = [sample_protocol(rng) for _ in range(600)]
    inpl = np.array([p.inplane_mm for p in ps])
    thk = np.array([p.slice_mm for p in ps])
    assert inpl.min() <= 0.47 and inpl.max() >= 0.95 and inpl.max() <= 1.1
    assert thk.min() <= 0.85 and thk.max() >= 3.9 and thk.max() <= 4.0
    # DOMAIN.md typical voxel sizes
    assert np.any((np.abs(inpl - 0.45) < 0.02) & (np.abs(thk - 4.0) < 0.3))
    assert np.any((np.abs(inpl - 0.5) < 0.03) & (thk >= 2.0) & (thk <= 3.0))
    assert np.any((np.abs(inpl - 0.49) < 0.02) & (np.abs(thk - 0.8) < 0.06))
    assert np.any((inpl >= 0.86) & (inpl <= 0.94) & (thk >= 2.0) & (thk <= 4.0))
    assert np.any((np.abs(inpl - 1.0) < 0.06) & (np.abs(thk - inpl) < 1e-6))
    assert {p.contrast for p in ps} == {"swi", "gre"}
    axc = {p.axcodes for p in ps}
    assert {("L", "P", "S"), ("R", "A", "S"), ("L", "A", "S")} <= axc and len(axc) >= 10
    assert any(p.slice_axis != 2 for p in ps)
    obl = np.array([p.oblique_deg for p in ps])
    assert (obl == 0).any() and obl.max() > 15 and obl.max() <= 20
    assert {p.dtype for p in ps} == {"int16", "uint16", "float32", "float32_signed"}
    snr = np.array([p.snr for p in ps])
    assert snr.min() >= 8 and snr.max() <= 40 and snr.min() < 10 and snr.max() > 35
    fov = np.array([np.array(p.shape) * np.array(p.voxel_mm) for p in ps])
    inplane_fov = np.array([np.delete(f, p.slice_axis) for f, p in zip(fov, ps)])
    assert inplane_fov.min() > 140 and inplane_fov.max() < 270
    for p in ps[:50]:
        assert all(float(n).is_integer() and n > 0 for n in p.shape)


def test_zero_cmb_subjects_occur():
    rng = np.random.default_rng(1)
    n = np.array([gen.sample_cmb_count(rng) for _ in range(3000)])
    assert 0.3 < (n == 0).mean() < 0.4
    pos = n[n > 0]
    assert np.median(pos) <= 4 and pos.max() >= 20 and pos.max() <= 30


def test_write_phantom_set_files(tmp_path, monkeypatch):
    counts = iter([0, 3, 2])
    monkeypatch.setattr(gen, "sample_cmb_count", lambda rng: next(counts))
    out = write_phantom_set(tmp_path / "set", 3, 5, tiny=True, montage=True)
    names = [f"ph5_{i:04d}" for i in range(3)]
    for nm in names:
        img = nib.load(out / f"{nm}.nii.gz")
        assert img.ndim == 3
        assert (out / "montage" / f"{nm}.png").stat().st_size > 10_000
    with open(out / "truth.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0].keys()) == ["subject", "x_mm", "y_mm", "z_mm", "diameter_mm", "region"]
    by = {nm: [r for r in rows if r["subject"] == nm] for nm in names}
    assert len(by[names[0]]) == 1 and by[names[0]][0]["x_mm"] == "" and by[names[0]][0]["region"] == ""
    assert len(by[names[1]]) == 3 and all(r["x_mm"] != "" for r in by[names[1]])
    for r in by[names[1]]:
        assert 2.0 <= float(r["diameter_mm"]) <= 10.0
        assert r["region"] in ("lobar", "deep", "infratentorial")
    with open(out / "mimics.csv", newline="") as f:
        mim = list(csv.DictReader(f))
    assert {"vein", "iron"} <= {m["kind"] for m in mim}
    with open(out / "protocols.csv", newline="") as f:
        prot = list(csv.DictReader(f))
    assert [p["subject"] for p in prot] == names
    assert {"voxel_mm", "axcodes", "contrast", "oblique_deg", "dtype"} <= set(prot[0])
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left


def test_subject_independent_of_n(tmp_path):
    a = write_phantom_set(tmp_path / "a", 1, 9, tiny=True, montage=False)
    b = write_phantom_set(tmp_path / "b", 2, 9, tiny=True, montage=False)
    ia = nib.load(a / "ph9_0000.nii.gz")
    ib = nib.load(b / "ph9_0000.nii.gz")
    np.testing.assert_array_equal(ia.get_fdata(), ib.get_fdata())
    np.testing.assert_array_equal(ia.affine, ib.affine)
    ta = (a / "truth.csv").read_text().splitlines()
    tb = [ln for ln in (b / "truth.csv").read_text().splitlines() if not ln.startswith("ph9_0001")]
    assert ta == tb


def test_contrast_basics():
    """CSF brighter than GM brighter than WM; outside air dark; veins present."""
    p = _tiny_protocol(8, snr=40.0, bias=0.0, ringing=0.0, dtype="float32", max_value=1.0)
    ph = make_subject(np.random.default_rng(8), protocol=p, n_cmb=0, tiny=True)
    geom = ph.geometry
    data = ph.image.get_fdata()
    inv = np.linalg.inv(ph.image.affine)

    def val(mni):
        w = geom.mni_to_world(np.array(mni, float))
        i, j, k = np.round(nib.affines.apply_affine(inv, w[0])).astype(int)
        return data[i, j, k]

    csf = val((5, 10, 15))  # lateral ventricle (frontal horn)
    wm = val((-28, -20, 30))  # centrum semiovale
    assert csf > 1.1 * wm
    corner = data[:3, :3, :3].mean()
    assert corner < 0.2 * wm
    assert any(m["kind"] == "vein" for m in ph.mimics)
