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
    # since session 22 stage 2's settings and operating point are chosen on two validation families
    assert {s["family"] for s in meta["shape_validation_data"]["sources"]} == {"delta", "epsilon"}
    assert "/" not in json.dumps(training)  # names of sets, never paths on the training machine
    assert {s["family"] for s in meta["operating_point_validation_data"]["sources"]} == {"delta", "epsilon"}
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
    assert family_revision("randomized") == 4 and family_revision("randomized", ("dipole_bloom",)) == 3
    assert family_revision("randomized", ("dipole_bloom", "cmb_size")) == 2
    assert family_revision("randomized", ("resolution", "cmb_size", "dipole_bloom")) == 1
    assert family_revision("randomized", ("noise",)) == 4 and family_revision("randomized", ("cmb_size",)) == 4
    assert family_revision("beta") == 2


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


def test_dipole_bloom_is_longer_along_b0_and_grows_with_the_voxel():
    """A deposit bloomed by dipole dephasing: its dark spot is longer along B0 than across it, whatever
    grid axis B0 lies on, about the nominal diameter across B0, and larger on thicker slices."""
    from cmbdet.phantom.render import render_dipole_bloom

    def dark_extent_mm(spacing, b0_axis):
        spacing = np.asarray(spacing, float)
        shape = np.ceil(40.0 / spacing).astype(int) | 1
        att = np.zeros(shape, np.float32)
        centre = (shape // 2) * spacing
        b0 = np.eye(3)[b0_axis]
        render_dipole_bloom(att, centre, 6.0, spacing, b0, core_fraction=0.4, core_depth=0.9,
                            reference_voxel_mm=1.0)
        dark = np.argwhere(att > 0.5) * spacing
        return np.ptp(dark, axis=0) + spacing

    for axis in range(3):
        extent = dark_extent_mm([0.5, 0.5, 0.5], axis)
        across = np.delete(extent, axis)
        assert extent[axis] >= 1.1 * across.max()
        assert np.all((across > 4.5) & (across < 7.5))
    thin, thick = dark_extent_mm([1.0, 1.0, 1.0], 2), dark_extent_mm([1.0, 1.0, 5.0], 2)
    assert thick[2] > thin[2] and thick[0] >= thin[0]


def test_dipole_bloom_ingredient_changes_only_how_deposits_bloom():
    """Revision 4 draws the same scan as `--without dipole_bloom` (revision 3) but for the dark spots of
    some microbleeds and calcifications: same grid, same microbleeds, the image differs near them only."""
    rng = [11, 2]
    with_it, without = (make_subject(np.random.default_rng(rng), subject="a", tiny=True, n_cmb=10, randomization=r)
                        for r in (Randomization(), Randomization.without(["dipole_bloom"])))
    assert [c["diameter_mm"] for c in with_it.cmbs] == [c["diameter_mm"] for c in without.cmbs]
    assert with_it.image.shape == without.image.shape
    a, b = (np.asarray(s.image.dataobj, dtype=np.float32) for s in (with_it, without))
    changed = np.argwhere(np.abs(a - b) > 1e-3 * float(np.abs(b).max()))
    assert len(changed) > 0
    # every changed voxel lies within 12 mm of a microbleed or a calcification, in world mm
    world = nib.affines.apply_affine(with_it.image.affine, changed)
    deposits = [[c["x_mm"], c["y_mm"], c["z_mm"]] for c in with_it.cmbs]
    deposits += [[m["x_mm"], m["y_mm"], m["z_mm"]] for m in with_it.mimics if m["kind"] == "calcification"]
    nearest = np.linalg.norm(world[:, None] - np.asarray(deposits)[None], axis=-1).min(axis=1)
    assert np.quantile(nearest, 0.99) < 12.0
