"""Validation CT phantom family ``ct-c``: written by the CLI, truth volumes, follow-up growth and
expansion labels, determinism, loading in HU with the right orientation, mimics outside the truth,
the growth signs painted, and independence from the other families' code."""

from __future__ import annotations

import ast
import copy
import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from cmbdet.anatomy import mni_maps
from cmbdet.cli import main
from cmbdet.lesions.ct import load_ct_volume
from cmbdet.phantom.ct import FAMILIES, family_c, make_ct_subject
from cmbdet.phantom.ct.head import head_hu, sample_pose, sample_tissue_hu
from cmbdet.phantom.ct.lesion import expansion_label

CT_DIR = Path(__file__).resolve().parents[1] / "cmbdet" / "phantom" / "ct"
SEED = 25  # 5 mm slices; three hematomas: infratentorial with satellites, lobar into the ventricles, deep


@pytest.fixture(scope="module")
def ct_c_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("ctc")
    assert main(["phantom", "--kind", "ct", "--family", "ct-c", "-n", "2", "--seed", str(SEED), "--tiny",
                 "--pairs", "-o", str(out)]) == 0
    with open(out / "truth.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    with open(out / "protocols.csv", newline="") as handle:
        protocols = {r["subject"]: r for r in csv.DictReader(handle)}
    return out, rows, protocols


def _labels(path: Path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj)


def test_registered_and_written_by_the_cli(ct_c_set):
    out, rows, protocols = ct_c_set
    assert FAMILIES["ct-c"] is family_c
    assert {r["family"] for r in rows} == {"ct-c"} and len(protocols) == 2
    assert all(p["family"] == "ct-c" for p in protocols.values())
    for subject in protocols:
        for name in ("ses-baseline_ct", "ses-baseline_desc-truth_dseg", "ses-followup_ct",
                     "ses-followup_desc-truth_dseg"):
            assert (out / f"{subject}_{name}.nii.gz").exists()
    assert sum(1 for r in rows if r["lesion_id"]) == 3


def test_truth_volumes_agree_with_the_label_maps(ct_c_set):
    out, rows, _ = ct_c_set
    for row in rows:
        for session, column in (("baseline", "volume_ml"), ("followup", "followup_ml")):
            image = nib.load(out / row["image"].replace("baseline", session))
            labels = _labels(out / row["image"].replace("baseline", session).replace("_ct.", "_desc-truth_dseg."))
            voxel_ml = float(np.prod(image.header.get_zooms()[:3])) / 1000.0
            count = int((labels == int(row["lesion_id"])).sum())
            assert float(row[column]) == pytest.approx(count * voxel_ml, rel=1e-3)
        assert float(row["volume_ml"]) == pytest.approx(float(row["true_ml"]), rel=0.2, abs=0.3)


def test_followup_holds_the_drawn_growth(ct_c_set):
    _, rows, _ = ct_c_set
    for row in rows:
        base, follow = float(row["true_ml"]), float(row["followup_true_ml"])
        assert int(row["expands"]) == int(expansion_label(base, follow))
        assert row["expands"] == row["drawn_expands"]  # the painted follow-up holds the drawn growth
        if row["expands"] == "1":
            assert follow > base and float(row["followup_ml"]) > float(row["volume_ml"])
    assert any(r["expands"] == "1" for r in rows)


def test_images_load_in_hu_with_the_right_orientation(ct_c_set):
    out, rows, protocols = ct_c_set
    for row in rows:
        path = out / row["image"]
        stored = nib.load(path)
        assert list(nib.aff2axcodes(stored.affine)) == json.loads(protocols[row["subject"]]["axcodes"])
        volume = load_ct_volume(path)
        assert nib.aff2axcodes(volume.affine) == ("R", "A", "S")
        assert volume.data.min() < -900 and volume.data.max() > 700  # air and bone, in HU
        labels = volume.from_source_array(_labels(str(path).replace("_ct.", "_desc-truth_dseg.")))
        lesion = labels == int(row["lesion_id"])
        centroid = volume.ijk_to_xyz_mm(np.argwhere(lesion)).mean(0)
        np.testing.assert_allclose(centroid, [float(row["x_mm"]), float(row["y_mm"]), float(row["z_mm"])], atol=0.1)
        assert 35.0 < float(np.median(volume.data[lesion])) < 100.0  # blood (signs, partial volume) at the truth


def test_same_seed_same_images(ct_c_set):
    out, _, protocols = ct_c_set
    subject = sorted(protocols)[1]
    again = make_ct_subject(np.random.default_rng([SEED, 1]), subject=subject, family="ct-c", fast=True, pairs=True)
    for ph, session in ((again, "baseline"), (again.followup, "followup")):
        written = nib.load(out / f"{subject}_ses-{session}_ct.nii.gz")
        assert np.array_equal(np.asanyarray(ph.image.dataobj), written.dataobj.get_unscaled())  # stored int16
        assert written.dataobj.inter == ph.protocol["intercept"]
        truth = _labels(out / f"{subject}_ses-{session}_desc-truth_dseg.nii.gz")
        assert np.array_equal(np.asanyarray(ph.truth.dataobj), truth)
        np.testing.assert_allclose(ph.image.affine, written.affine)


def test_mimics_are_painted_but_not_truth():
    mimic_seed = [77, 38]  # four mimic kinds
    ph = make_ct_subject(np.random.default_rng(mimic_seed), subject="sub-free", family="ct-c", fast=True, p_free=1.0)
    kinds = {m["kind"] for m in ph.mimics}
    assert {"convexity_crescent", "hyperdense_mca", "basal_ganglia_calcification"} <= kinds
    assert ph.lesions == [] and not np.asarray(ph.truth.dataobj).any()
    # on the head grid: what the mimics change includes voxels a density threshold would call blood
    maps = mni_maps(1)
    rng = np.random.default_rng(mimic_seed)  # the same draws up to the mimics
    family_c.sample_protocol(rng, fast=True)
    sample_pose(rng, max_pitch_deg=18.0)
    hu = head_hu(sample_tissue_hu(rng))
    before = hu.copy()
    family_c.paint_mimics(rng, hu, maps)
    changed = (np.abs(hu - before) > 5.0) & (maps.d_env < 4.0)
    assert np.count_nonzero(changed & (hu > 45.0) & (hu < 90.0)) > 50  # MCA, crescent: blood-like density
    assert np.count_nonzero(changed & (hu > 120.0)) > 10  # calcification


def test_growth_signs_are_painted():
    maps = mni_maps(1)
    rng = np.random.default_rng(5)
    h = next(h for h in iter(lambda: family_c.sample_hematomas(rng, maps, sample_pose(rng), p_free=0.0), None)
             if h and h[0].region == "deep" and h[0].n_islands >= 3)[0]
    h.target_ml, h.blend, h.black_hole, h.swirl, h.fluid_level, h.ivh = 20.0, False, False, False, False, False
    base = head_hu(sample_tissue_hu(np.random.default_rng(0)))

    def paint(**signs):
        g = copy.deepcopy(h)
        for name, value in signs.items():
            setattr(g, name, value)
        hu, frac, ids = base.copy(), np.zeros(base.shape, np.float32), np.zeros(base.shape, np.int16)
        family_c.paint_hematoma(g, 1, hu, frac, ids, maps, np.random.default_rng(1))
        return hu, frac, ids

    plain, frac, ids = paint()
    core = frac > 0.99
    for sign in ("blend", "black_hole", "swirl", "fluid_level"):
        hu = paint(**{sign: True})[0]
        darker = np.mean(hu[core] < plain[core] - 12.0)
        assert darker > 0.005, sign  # a hypodense part of its own
    _, _, ids_none = paint(n_islands=0)
    assert ndimage.label(ids == 1)[1] > ndimage.label(ids_none == 1)[1]  # satellites are separate blobs
    _, _, ids_ivh = paint(ivh=True)
    ventricles = (maps.d_vent < 0.5) & (maps.csf > 0.5)
    assert np.count_nonzero((ids_ivh == 1) & ventricles) > 100 + np.count_nonzero((ids == 1) & ventricles)
    # oedema: the brain just outside the blood is darker than before
    shell = ndimage.binary_dilation(frac > 0.5, iterations=2) & ~ndimage.binary_dilation(frac > 0.01) & maps.brain
    assert float(np.mean(plain[shell] - base[shell])) < -3.0


def test_sampler_expansion_rate():
    from cmbdet.phantom.ct.lesion import draw_growth

    maps = mni_maps(1)
    rng = np.random.default_rng(0)
    labels = []
    while len(labels) < 120:
        for h in family_c.sample_hematomas(rng, maps, sample_pose(rng), p_free=0.0):
            labels.append(draw_growth(rng, h.target_ml, h)[1])
    assert 0.25 < np.mean(labels) < 0.6


def test_does_not_use_the_other_families_code():
    tree = ast.parse((CT_DIR / "family_c.py").read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | \
        {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    assert not any("family_a" in m or "family_b" in m for m in imported if m)
    assert not names & {"family_a", "family_b"}
    assert {m for m in imported if m and m.startswith("cmbdet.phantom.ct")} <= {"cmbdet.phantom.ct.head",
                                                                                "cmbdet.phantom.ct.lesion"}

    def bodies(path: Path) -> set[str]:
        return {ast.dump(ast.Module(body=f.body, type_ignores=[])) for f in ast.walk(ast.parse(path.read_text()))
                if isinstance(f, ast.FunctionDef)}

    mine = bodies(CT_DIR / "family_c.py")
    assert not mine & (bodies(CT_DIR / "family_a.py") | bodies(CT_DIR / "family_b.py"))  # no function copied
