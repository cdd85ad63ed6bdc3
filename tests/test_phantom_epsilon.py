"""Validation phantom family "epsilon": determinism, truth geometry, label map and visibility, the
stored orientation's round trip, the CLI, and its independence from the other families' code."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from cmbdet import anatomy
from cmbdet.cli import main
from cmbdet.phantom.epsilon import make_subject
from cmbdet.phantom.epsilon.foci import sample_cmb_count
from cmbdet.phantom.epsilon.protocol import sample_protocol
from cmbdet.phantom.epsilon.scanner import Grid, label_map, store
from cmbdet.phantom.families import FAMILIES, subject_maker

SEEDS = range(5)
EPSILON_DIR = Path(__file__).resolve().parents[1] / "cmbdet" / "phantom" / "epsilon"


@pytest.fixture(scope="module")
def tiny_subjects():
    return {s: make_subject(np.random.default_rng([77, s]), subject=f"eps-{s}", tiny=True) for s in SEEDS}


def _world(p: dict) -> np.ndarray:
    return np.array([p["x_mm"], p["y_mm"], p["z_mm"]], float)


def _ijk(img: nib.Nifti1Image, xyz: np.ndarray) -> np.ndarray:
    return nib.affines.apply_affine(np.linalg.inv(img.affine), xyz)


def test_registered_as_a_validation_family():
    assert FAMILIES["epsilon"].role == "validation"
    assert subject_maker("epsilon") is make_subject


def test_same_seed_same_subject(tiny_subjects):
    a = tiny_subjects[1]
    b = make_subject(np.random.default_rng([77, 1]), subject="eps-1", tiny=True)
    np.testing.assert_array_equal(np.asanyarray(a.image.dataobj), np.asanyarray(b.image.dataobj))
    np.testing.assert_array_equal(np.asanyarray(a.labels.dataobj), np.asanyarray(b.labels.dataobj))
    np.testing.assert_allclose(a.image.affine, b.image.affine)
    assert a.cmbs == b.cmbs and a.mimics == b.mimics
    assert a.protocol.as_row() == b.protocol.as_row()
    c = tiny_subjects[2]
    assert c.image.shape != a.image.shape or not np.array_equal(c.image.get_fdata(), a.image.get_fdata())


def test_tiny_scans_are_small_3d_magnitude(tiny_subjects):
    for s in tiny_subjects.values():
        assert s.image.ndim == 3 and max(s.image.shape) <= 100
        data = s.image.get_fdata()
        assert np.isfinite(data).all() and data.min() >= 0 and data.max() > 0
        assert s.labels.shape == s.image.shape
        np.testing.assert_allclose(s.labels.affine, s.image.affine)


def test_truth_cmbs_inside_brain_in_label_map_and_darker_than_surroundings(tiny_subjects):
    maps = anatomy.mni_maps(2)
    n = 0
    for s in tiny_subjects.values():
        img = s.image
        data = img.get_fdata()
        labels = np.asarray(s.labels.dataobj)
        assert labels.max() == len(s.cmbs)
        world = nib.affines.apply_affine(img.affine, np.indices(img.shape).reshape(3, -1).T)
        for label, c in enumerate(s.cmbs, start=1):
            assert c["region"] in {"lobar", "deep", "infratentorial"}
            assert 2.0 <= c["diameter_mm"] <= 10.0
            vox = np.round(maps.mm_to_vox(np.array([[c["mni_x"], c["mni_y"], c["mni_z"]]]))[0]).astype(int)
            assert maps.brain[tuple(vox)]
            ijk = np.rint(_ijk(img, _world(c))).astype(int)
            assert np.all(ijk >= 0) and np.all(ijk < np.array(img.shape)), c
            assert labels[tuple(ijk)] == label
            d = np.linalg.norm(world - _world(c), axis=1)
            r = c["diameter_mm"] / 2.0
            shell = data.reshape(-1)[(d > r + 3.0) & (d < r + 8.0)]
            assert data[tuple(ijk)] < 0.85 * np.median(shell), (s.subject, c)
            n += 1
    assert n >= 5


def test_mimics_are_known_kinds_inside_the_image(tiny_subjects):
    for s in tiny_subjects.values():
        kinds = [m["kind"] for m in s.mimics]
        assert set(kinds) <= {"vein", "iron", "air_bone", "calcification"}
        assert kinds.count("vein") >= 3
        for m in s.mimics:
            ijk = _ijk(s.image, _world(m))
            assert np.all(ijk >= -0.5) and np.all(ijk <= np.array(s.image.shape) - 0.5), m


@pytest.mark.parametrize("code", ["RAS", "LPS", "SAR", "PIL"])
def test_stored_orientation_round_trip(code):
    """A tilted grid stored in any axis order/signs: a truth RAS point lands on its labelled voxel and
    on the same intensity as in the unpermuted array."""
    rng = np.random.default_rng(3)
    c, s = np.cos(0.2), np.sin(0.2)
    axes = np.array([[1, 0, 0], [0, c, -s], [0, s, c]], float)
    grid = Grid(axes=axes, spacing=np.array([0.9, 0.9, 2.5]), shape=(40, 44, 20),
                origin=np.array([-18.0, -20.0, -25.0]))
    data = rng.uniform(10, 100, grid.shape).astype(np.float32)
    proto = replace(sample_protocol(np.random.default_rng(0)), storage=code, dtype="float32", max_value=1.0)
    img = store(rng, proto, data, grid, ref_value=1.0)
    assert "".join(nib.aff2axcodes(img.affine)) == code
    point_ijk = np.array([[12, 30, 7]])
    point = grid.world(point_ijk)[0]
    lab = label_map(img, point[None], np.array([2.0]))
    ijk = np.rint(_ijk(img, point)).astype(int)
    assert np.asarray(lab.dataobj)[tuple(ijk)] == 1
    assert img.get_fdata()[tuple(ijk)] == pytest.approx(float(data[12, 30, 7]), rel=1e-5)


def test_storage_orientations_vary():
    codes = {sample_protocol(np.random.default_rng(i)).storage for i in range(40)}
    assert len(codes) >= 8 and any(c[2] not in "SI" for c in codes)


def test_about_a_quarter_of_subjects_are_cmb_free():
    rng = np.random.default_rng(0)
    counts = np.array([sample_cmb_count(rng) for _ in range(800)])
    assert 0.18 <= np.mean(counts == 0) <= 0.32
    assert counts.max() > 15 and np.median(counts[counts > 0]) <= 6


def test_phantom_cli_writes_an_epsilon_set_with_label_maps(tmp_path):
    out = tmp_path / "set"
    assert main(["phantom", "-o", str(out), "-n", "2", "--seed", "6", "--tiny", "--no-montage",
                 "--family", "epsilon"]) == 0
    description = json.loads((out / "dataset.json").read_text())
    assert description["family"] == "epsilon" and description["role"] == "validation"
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["epsilon6_0000.nii.gz", "epsilon6_0001.nii.gz"]
    assert sorted(p.name for p in (out / "labels").glob("*.nii.gz")) == [
        "epsilon6_0000_cmb-labels.nii.gz", "epsilon6_0001_cmb-labels.nii.gz"]
    truth = (out / "truth.csv").read_text().splitlines()
    assert truth[0] == "subject,x_mm,y_mm,z_mm,diameter_mm,region" and len(truth) >= 2
    assert "epsilon" in (out / "protocols.csv").read_text()


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            names += [f"{base}:{a.name}" for a in node.names]
    return names


def test_epsilon_shares_no_code_with_the_other_families():
    forbidden = ("cmbdet.phantom.beta", "cmbdet.phantom.gamma", "cmbdet.phantom.delta", "cmbdet.phantom.vessels",
                 "cmbdet.phantom.render", "cmbdet.phantom.randomize", "cmbdet.phantom.protocol",
                 "cmbdet.phantom.geometry", "cmbdet.phantom.insert", "cmbdet.regions")
    files = sorted(EPSILON_DIR.glob("*.py"))
    assert len(files) >= 5
    for path in files:
        for name in _imports(path):
            module = name.split(":")[0]
            assert not module.startswith(forbidden), (path.name, name)
            assert not module.startswith(".."), (path.name, name)  # nothing from sibling phantom modules
            if module == "cmbdet.phantom.generate":
                assert name.endswith(":PhantomSubject"), (path.name, name)
            if module.startswith("cmbdet") and module != "cmbdet.phantom.generate":
                assert module == "cmbdet.anatomy", (path.name, name)
        text = path.read_text()
        for word in ("phantom.beta", "phantom.gamma", "phantom.delta", "from ..", "import_module"):
            assert word not in text, (path.name, word)


def test_importing_epsilon_builds_nothing():
    code = "import cmbdet.anatomy as a, cmbdet.phantom.epsilon; print(a.mni_maps.cache_info().currsize)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0"
