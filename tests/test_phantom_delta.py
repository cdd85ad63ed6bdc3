"""Validation phantom family "delta": determinism, truth geometry and visibility, mimics, the CLI,
and its independence from the other families' code."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from cmbdet import anatomy
from cmbdet.cli import main
from cmbdet.phantom.delta import make_subject
from cmbdet.phantom.delta.foci import sample_cmb_count
from cmbdet.phantom.families import FAMILIES, subject_maker

SEEDS = range(6)
DELTA_DIR = Path(__file__).resolve().parents[1] / "cmbdet" / "phantom" / "delta"


@pytest.fixture(scope="module")
def tiny_subjects():
    return {s: make_subject(np.random.default_rng(s), subject=f"delta-{s}", tiny=True) for s in SEEDS}


def _world(p: dict) -> np.ndarray:
    return np.array([p["x_mm"], p["y_mm"], p["z_mm"]], float)


def _ijk(img: nib.Nifti1Image, xyz: np.ndarray) -> np.ndarray:
    return nib.affines.apply_affine(np.linalg.inv(img.affine), xyz)


def test_registered_as_a_validation_family():
    assert FAMILIES["delta"].role == "validation"
    assert subject_maker("delta") is make_subject


def test_same_seed_same_subject(tiny_subjects):
    a = tiny_subjects[1]
    b = make_subject(np.random.default_rng(1), subject="delta-1", tiny=True)
    np.testing.assert_array_equal(np.asanyarray(a.image.dataobj), np.asanyarray(b.image.dataobj))
    np.testing.assert_allclose(a.image.affine, b.image.affine)
    assert a.cmbs == b.cmbs and a.mimics == b.mimics
    assert a.protocol.as_row() == b.protocol.as_row()
    c = tiny_subjects[2]
    assert c.image.shape != a.image.shape or not np.array_equal(c.image.get_fdata(), a.image.get_fdata())


def test_tiny_scans_are_small_3d_magnitude(tiny_subjects):
    for s in tiny_subjects.values():
        assert s.image.ndim == 3 and max(s.image.shape) <= 80
        data = s.image.get_fdata()
        assert np.isfinite(data).all() and data.min() >= 0 and data.max() > 0
        assert s.timings["total_s"] > 0


def test_truth_cmbs_inside_brain_and_darker_than_a_shell_around_them(tiny_subjects):
    maps = anatomy.mni_maps(2)
    n = 0
    for s in tiny_subjects.values():
        img = s.image
        data = img.get_fdata()
        shape = np.array(img.shape)
        world = nib.affines.apply_affine(img.affine, np.indices(img.shape).reshape(3, -1).T)
        for c in s.cmbs:
            assert c["region"] in {"lobar", "deep", "infratentorial"}
            assert 2.0 <= c["diameter_mm"] <= 10.0
            vox = np.round(maps.mm_to_vox(np.array([[c["mni_x"], c["mni_y"], c["mni_z"]]]))[0]).astype(int)
            assert maps.brain[tuple(vox)]
            ijk = _ijk(img, _world(c))
            assert np.all(ijk >= 0) and np.all(ijk <= shape - 1), c
            centre = data[tuple(np.rint(ijk).astype(int))]
            d = np.linalg.norm(world - _world(c), axis=1)
            r = c["diameter_mm"] / 2.0
            shell = data.reshape(-1)[(d > r + 3.0) & (d < r + 8.0)]
            assert centre < 0.85 * np.median(shell), (s.subject, c)
            n += 1
    assert n >= 5


def test_mimics_include_veins_and_stay_in_the_field_of_view(tiny_subjects):
    allowed = {"vein", "iron", "air_bone", "calcification"}
    for s in tiny_subjects.values():
        kinds = [m["kind"] for m in s.mimics]
        assert set(kinds) <= allowed
        assert kinds.count("vein") >= 3
        shape = np.array(s.image.shape)
        for m in s.mimics:
            ijk = _ijk(s.image, _world(m))
            assert np.all(ijk >= -0.5) and np.all(ijk <= shape - 0.5), m


def test_some_subjects_are_cmb_free():
    rng = np.random.default_rng(0)
    counts = np.array([sample_cmb_count(rng) for _ in range(600)])
    assert 0.22 <= np.mean(counts == 0) <= 0.38
    assert counts.max() <= 20 and counts.max() > 12
    assert np.median(counts[counts > 0]) <= 5


def test_phantom_cli_writes_a_delta_set(tmp_path):
    out = tmp_path / "set"
    assert main(["phantom", "-o", str(out), "-n", "3", "--seed", "6", "--tiny", "--no-montage",
                 "--family", "delta"]) == 0
    description = json.loads((out / "dataset.json").read_text())
    assert description["family"] == "delta" and description["role"] == "validation"
    assert sorted(p.name for p in out.glob("*.nii.gz")) == [f"delta6_000{i}.nii.gz" for i in range(3)]
    truth = (out / "truth.csv").read_text().splitlines()
    assert truth[0] == "subject,x_mm,y_mm,z_mm,diameter_mm,region" and len(truth) >= 4
    assert "vein" in (out / "mimics.csv").read_text()
    assert "delta" in (out / "protocols.csv").read_text()


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            names += [f"{base}:{a.name}" for a in node.names]
    return names


def test_delta_shares_no_code_with_the_other_families():
    forbidden = ("cmbdet.phantom.beta", "cmbdet.phantom.gamma", "cmbdet.phantom.vessels", "cmbdet.phantom.render",
                 "cmbdet.phantom.randomize", "cmbdet.phantom.protocol", "cmbdet.phantom.geometry",
                 "cmbdet.phantom.insert", "cmbdet.regions")
    files = sorted(DELTA_DIR.glob("*.py"))
    assert len(files) >= 3
    for path in files:
        for name in _imports(path):
            module = name.split(":")[0]
            assert not module.startswith(forbidden), (path.name, name)
            assert not module.startswith(".."), (path.name, name)  # nothing from sibling phantom modules
            if module == "cmbdet.phantom.generate":
                assert name.endswith(":PhantomSubject"), (path.name, name)
            if module.startswith("cmbdet") and not module.startswith("cmbdet.phantom.generate"):
                assert module == "cmbdet.anatomy", (path.name, name)
        text = path.read_text()
        for word in ("phantom.beta", "phantom.gamma", "from ..", "import_module"):
            assert word not in text, (path.name, word)


def test_importing_delta_builds_nothing():
    code = ("import cmbdet.anatomy as a, cmbdet.phantom.delta; "
            "print(a.mni_maps.cache_info().currsize)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0"
