"""Phantom families and domain randomization: roles, determinism, ablation switches, what a set says
about itself; and the stage-2 patch layouts that let a vein show as a line."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from cmbdet.cli import main
from cmbdet.phantom.families import FAMILIES, subject_maker
from cmbdet.phantom.generate import make_subject
from cmbdet.phantom.randomize import INGREDIENTS, Randomization
from cmbdet.reclassifier.patches import extract_patches
from cmbdet.training_data import describe_sources, read_labelled_set
from cmbdet.volume import volume_from_image
from cmbdet.weights import read_metadata, shipped_weights


def test_roles_cover_training_validation_and_test():
    roles = {f.role for f in FAMILIES.values()}
    assert roles == {"training", "validation", "test"}
    assert [f.name for f in FAMILIES.values() if f.role == "test"] == ["gamma"]


def test_randomized_family_is_deterministic_and_differs_from_classic():
    make = subject_maker("randomized")
    a = make(np.random.default_rng([3, 0]), subject="a", tiny=True)
    b = make(np.random.default_rng([3, 0]), subject="a", tiny=True)
    np.testing.assert_array_equal(np.asarray(a.image.dataobj), np.asarray(b.image.dataobj))
    classic = make_subject(np.random.default_rng([3, 0]), subject="a", tiny=True)
    assert classic.image.shape != a.image.shape or not np.allclose(np.asarray(classic.image.dataobj),
                                                                   np.asarray(a.image.dataobj))


def test_without_switches_ingredients_off_and_rejects_unknown_names():
    assert Randomization.without(["vessels", "noise"]) == Randomization(vessels=False, noise=False)
    assert not any(vars(Randomization.without(list(INGREDIENTS))).values())
    with pytest.raises(ValueError, match="unknown randomization ingredient"):
        Randomization.without(["colour"])


def test_phantom_cli_writes_family_description(tmp_path):
    assert main(["phantom", "-o", str(tmp_path / "set"), "-n", "2", "--seed", "4", "--tiny", "--no-montage",
                 "--family", "randomized", "--without", "swi_mask"]) == 0
    description = json.loads((tmp_path / "set" / "dataset.json").read_text())
    assert description["family"] == "randomized" and description["role"] == "training"
    assert description["seed"] == 4 and description["n_scans"] == 2 and description["without"] == ["swi_mask"]
    assert sorted(p.name for p in (tmp_path / "set").glob("*.nii.gz")) == ["randomized4_0000.nii.gz",
                                                                         "randomized4_0001.nii.gz"]
    assert main(["phantom", "-o", str(tmp_path / "bad"), "--family", "nope"]) == 2
    assert main(["phantom", "-o", str(tmp_path / "bad"), "--family", "gamma", "--without", "noise"]) == 2
    # a model's metadata says the role a set served for it; one written under another role keeps that too
    scans = read_labelled_set(tmp_path / "set")
    (entry,) = describe_sources([tmp_path / "set"], scans, role="validation")["sources"]
    assert entry["role"] == "validation" and entry["role_when_written"] == "training"
    (entry,) = describe_sources([tmp_path / "set"], scans, role="training")["sources"]
    assert entry["role"] == "training" and "role_when_written" not in entry


def test_shipped_detector_metadata_names_its_training_and_validation_families():
    meta = read_metadata(shipped_weights("reclassifier.safetensors"))
    training = meta["shape_training_data"]["sources"]
    assert {s["family"] for s in training} == {"classic", "randomized", "beta"}
    assert all(s["role"] == "training" for s in training)
    assert {s["family"] for s in meta["shape_validation_data"]["sources"]} == {"delta"}
    assert "/" not in json.dumps(training)  # names of sets, never paths on the training machine
    assert {s["family"] for s in meta["operating_point_validation_data"]["sources"]} == {"delta"}
    proposer = read_metadata(shipped_weights("proposer.safetensors"))
    assert {s["family"] for s in proposer["training_data"]["sources"]} == {"classic", "randomized", "beta"}
    # the stage-1-alone threshold (--no-reclassify) was chosen on the validation family too
    assert [s["family"] for s in proposer["validation_data"]["sources"]] == ["delta"]


def _vein_volume() -> nib.Nifti1Image:
    """Uniform tissue with one thin vein crossing the axial plane obliquely (45 degrees), 0.5 mm grid."""
    shape = (80, 80, 80)
    affine = np.diag([0.5, 0.5, 0.5, 1.0])
    affine[:3, 3] = -20.0
    xyz = nib.affines.apply_affine(affine, np.indices(shape).reshape(3, -1).T)
    direction = np.array([1.0, 0.0, 1.0]) / np.sqrt(2)
    along = xyz @ direction
    distance = np.linalg.norm(xyz - along[:, None] * direction, axis=1)
    data = np.where(distance < 0.6, 20.0, 100.0).reshape(shape).astype(np.float32)
    return nib.Nifti1Image(data, affine)


def test_axial_mip_turns_an_oblique_vein_dot_into_a_line():
    volume = volume_from_image(_vein_volume())
    planes = extract_patches(volume, [[0.0, 0.0, 0.0]], layout="planes")[0]
    mips = extract_patches(volume, [[0.0, 0.0, 0.0]], layout="mips", slab_mm=10.0)[0]
    dark_plane = planes[..., 0] < 60  # axial plane: the vein's cross-section, a short dot
    dark_mip = mips[..., 0] < 60  # axial mIP over 10 mm: the vein's course, a line
    assert dark_plane.sum() > 0
    assert dark_mip.sum() >= 4 * dark_plane.sum()
    cols = np.flatnonzero(dark_mip.any(axis=0))
    assert cols.max() - cols.min() >= 0.7 * 64 * 10 / 32  # ~10 mm across the slab, in 0.5 mm pixels


def test_resolution_ingredient_draws_thick_slices_on_its_own_stream():
    """Some randomized scans get 4-6 mm slices (the protocol table stops at 4 mm); a scan whose slices
    were not redrawn is exactly what `--without resolution` (revision 1 of the family) draws."""
    from cmbdet.phantom.randomize import THICK_SLICE_MM

    def pair(seed: int):
        rng = [5, seed]
        with_it = subject_maker("randomized")(np.random.default_rng(rng), subject="a", tiny=True)
        without = subject_maker("randomized", without=("resolution",))(np.random.default_rng(rng), subject="a",
                                                                       tiny=True)
        return with_it.image, without.image

    thick, table = pair(1)
    assert THICK_SLICE_MM[0] <= max(thick.header.get_zooms()) <= THICK_SLICE_MM[1]
    assert max(table.header.get_zooms()) <= 3.0  # the tiny protocol table's 2-3 mm
    extent = [np.ptp(nib.affines.apply_affine(img.affine, np.argwhere(np.ones(img.shape, bool))[[0, -1]]), axis=0)
              for img in (thick, table)]
    assert np.allclose(np.sort(extent[0]), np.sort(extent[1]), atol=6.0)  # the same slab, fewer slices
    same, unchanged = pair(0)
    assert same.shape == unchanged.shape
    np.testing.assert_array_equal(np.asarray(same.dataobj), np.asarray(unchanged.dataobj))


def test_thicker_slices_change_the_slice_axis_only_in_any_axis_order():
    from cmbdet.phantom.families import family_revision
    from cmbdet.phantom.protocol import Protocol

    base = Protocol(voxel_mm=(0.5, 0.5, 2.0), axcodes=("R", "A", "S"), oblique_deg=0.0, contrast="gre",
                    shape=(400, 440, 70))
    for codes in (("R", "A", "S"), ("P", "I", "R"), ("S", "L", "P")):
        proto = base.with_axcodes(codes)
        thick = proto.with_slice_mm(5.0)
        axis = proto.slice_axis
        assert thick.axcodes == proto.axcodes and thick.voxel_mm[axis] == 5.0 and thick.shape[axis] == 28
        others = [a for a in range(3) if a != axis]
        assert [thick.voxel_mm[a] for a in others] == [proto.voxel_mm[a] for a in others]
        assert [thick.shape[a] for a in others] == [proto.shape[a] for a in others]
    assert family_revision("randomized") == 3 and family_revision("randomized", ("cmb_size",)) == 2
    assert family_revision("randomized", ("resolution", "cmb_size")) == 1
    assert family_revision("randomized", ("noise",)) == 3 and family_revision("beta") == 2


def test_cmb_size_ingredient_widens_sizes_on_its_own_stream():
    """Half the microbleeds of the randomized family are sized over the whole 2-10 mm range; without the
    ingredient the scan is exactly revision 2's (the same subject drawn by the code before it existed)."""
    from cmbdet.phantom.randomize import WIDE_CMB_DIAMETER_MM, randomize_cmb_diameter

    draws = [randomize_cmb_diameter(3.0, np.random.default_rng(i)) for i in range(400)]
    wide = [d for d in draws if d != 3.0]
    assert 150 <= len(wide) <= 250 and min(wide) >= WIDE_CMB_DIAMETER_MM[0] and max(wide) <= WIDE_CMB_DIAMETER_MM[1]
    assert np.mean(np.array(wide) > 6.0) > 0.2  # the base law: ~4 %
    rng = [7, 3]
    with_it, without = (make_subject(np.random.default_rng(rng), subject="a", tiny=True, n_cmb=8, randomization=r)
                        for r in (Randomization(), Randomization.without(["cmb_size"])))
    sizes = [[c["diameter_mm"] for c in s.cmbs] for s in (with_it, without)]
    assert sizes[0] != sizes[1] and len(sizes[0]) == len(sizes[1]) == 8
    assert with_it.image.shape == without.image.shape
