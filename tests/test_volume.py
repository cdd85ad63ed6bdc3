"""Orientation, coordinates and bad input for `cmbdet.volume`."""

from __future__ import annotations

import gzip
import json
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nibabel.orientations import axcodes2ornt

from cmbdet.errors import InputError
from cmbdet.volume import load_volume, read_label_map, write_like_source

REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata" / "clearswi-small"
AXCODES = ["LPS", "RAS", "LAS", "RPI", "LPI", "PIR", "ASR", "SLP", "IRA", "RSA"]


def _affine_for(axcodes: str, spacing=(0.5, 0.6, 2.0), origin=(-40.0, 30.0, -20.0), rotation_deg=0.0) -> np.ndarray:
    """A voxel->RAS affine whose array axes point along ``axcodes``, optionally rotated about z and x."""
    ornt = axcodes2ornt(tuple(axcodes))
    perm = np.zeros((3, 3))
    for axis, (world, flip) in enumerate(ornt):
        perm[int(world), axis] = flip
    a, b = np.deg2rad(rotation_deg), np.deg2rad(rotation_deg / 2)
    rot_z = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rot_x = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    affine = np.eye(4)
    affine[:3, :3] = rot_z @ rot_x @ perm @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine


def _image(shape=(20, 16, 12), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(10, 1000, shape).astype(np.float32)


def _save(tmp_path: Path, data: np.ndarray, affine: np.ndarray, name="scan.nii.gz") -> Path:
    path = tmp_path / name
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


@pytest.mark.parametrize("axcodes", AXCODES)
@pytest.mark.parametrize("rotation", [0.0, 17.0])
def test_reorientation_keeps_every_voxel_at_its_world_position(tmp_path, axcodes, rotation):
    affine = _affine_for(axcodes, rotation_deg=rotation)
    data = _image()
    volume = load_volume(_save(tmp_path, data, affine))
    assert nib.aff2axcodes(volume.affine) == ("R", "A", "S")
    src_ijk = np.argwhere(np.ones(data.shape, bool))
    world = nib.affines.apply_affine(affine, src_ijk)
    can_ijk = np.rint(volume.xyz_mm_to_ijk(world)).astype(int)
    np.testing.assert_allclose(volume.xyz_mm_to_ijk(world), can_ijk, atol=1e-6)
    np.testing.assert_array_equal(volume.data[tuple(can_ijk.T)], data[tuple(src_ijk.T)])
    np.testing.assert_allclose(volume.to_source_ijk(can_ijk), src_ijk, atol=1e-6)
    # voxel sizes follow the axes: the 2 mm axis is the one pointing S/I
    slice_axis = [c in "SI" for c in axcodes].index(True)
    assert volume.spacing_mm[2] == pytest.approx([0.5, 0.6, 2.0][slice_axis])


@pytest.mark.parametrize("axcodes", AXCODES)
def test_label_map_written_back_in_the_exact_input_grid(tmp_path, axcodes):
    affine = _affine_for(axcodes, rotation_deg=11.0)
    data = _image()
    path = _save(tmp_path, data, affine)
    volume = load_volume(path)
    out = write_like_source(volume, volume.data, tmp_path / "back.nii.gz", dtype=np.float32)
    back = nib.load(out)
    assert back.shape == data.shape
    np.testing.assert_allclose(back.affine, affine, atol=1e-5)
    np.testing.assert_allclose(back.get_sform(), affine, atol=1e-5)
    np.testing.assert_allclose(back.get_qform(), affine, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(back.dataobj), data)


def test_voxel_to_world_matches_hand_computed_points(tmp_path):
    # LPS, 0.5 x 0.5 x 2 mm: voxel (i, j, k) -> x = 10 - 0.5 i, y = 20 - 0.5 j, z = -30 + 2 k
    affine = np.array([[-0.5, 0, 0, 10], [0, -0.5, 0, 20], [0, 0, 2.0, -30], [0, 0, 0, 1]])
    volume = load_volume(_save(tmp_path, _image((8, 6, 4)), affine))
    src = np.array([[0, 0, 0], [7, 5, 3], [2, 1, 1]])
    expected = np.array([[10, 20, -30], [6.5, 17.5, -24], [9, 19.5, -28]])
    can = volume.xyz_mm_to_ijk(expected)
    np.testing.assert_allclose(volume.ijk_to_xyz_mm(can), expected)
    np.testing.assert_allclose(volume.to_source_ijk(can), src, atol=1e-9)
    # canonical i runs the other way (L->R): source i=7 is canonical i=0
    np.testing.assert_allclose(can[1], [0, 0, 3])


def test_identity_qform_with_real_sform_warns_and_uses_sform(tmp_path):
    affine = _affine_for("LPS")
    image = nib.Nifti1Image(_image(), affine)
    image.set_qform(np.eye(4), code=1)
    image.set_sform(affine, code=2)
    path = tmp_path / "trap.nii.gz"
    nib.save(image, path)
    with pytest.warns(UserWarning, match="qform"):
        volume = load_volume(path)
    np.testing.assert_allclose(volume.source.affine, affine)


def test_multi_echo_is_combined_and_said(tmp_path):
    echoes = np.stack([_image(seed=s) for s in range(3)], axis=3)
    path = _save(tmp_path, echoes, _affine_for("RAS"))
    rss = load_volume(path, echo="rss")
    assert "root-sum-of-squares" in rss.notes[0]
    last = load_volume(path, echo="last")
    assert "echo 3 of 3" in last.notes[0]
    np.testing.assert_allclose(last.data, echoes[..., 2])  # RAS input: canonical == source order
    np.testing.assert_allclose(rss.data, np.sqrt((echoes.astype(float) ** 2).sum(3)), rtol=1e-5)


def _decaying_echoes(times_ms, t2star_tissue=40.0, t2star_bleed=8.0):
    """Tissue decaying with T2* 40 ms and one 'microbleed' voxel block decaying much faster."""
    base = np.full((12, 12, 8), 100.0, np.float32)
    echoes = []
    for te in times_ms:
        e = base * np.exp(-te / t2star_tissue)
        e[5:7, 5:7, 3:5] = 100.0 * np.exp(-te / t2star_bleed)
        echoes.append(e)
    return np.stack(echoes, axis=3).astype(np.float32)


def _contrast(volume):
    return 1.0 - volume.data[5, 5, 3] / volume.data[1, 1, 1]


def test_auto_echo_weights_late_echoes_and_reads_sidecar_times(tmp_path):
    times = [4.0, 10.0, 16.0, 22.0, 28.0, 34.0]
    path = _save(tmp_path, _decaying_echoes(times), _affine_for("RAS"), "me.nii.gz")
    (tmp_path / "me.json").write_text(json.dumps({"EchoTime": [t / 1000 for t in times]}))
    auto = load_volume(path)  # auto is the default
    rss = load_volume(path, echo="rss")
    assert "susceptibility contrast" in auto.notes[0] and "TE 4, 10" in auto.notes[0]
    assert "T2* 40" in auto.notes[0]  # fitted from the tissue decay
    # a short-T2* focus (a microbleed) keeps more contrast than in a plain RSS dominated by echo 1
    assert _contrast(auto) > _contrast(rss) + 0.15
    assert _contrast(auto) > 0.6


def test_auto_echo_without_sidecar_says_what_it_assumed(tmp_path):
    path = _save(tmp_path, _decaying_echoes([5.0, 10.0, 15.0, 20.0]), _affine_for("LPS"), "me.nii.gz")
    volume = load_volume(path)
    assert "echo times unknown" in volume.notes[0] and "assumed equally spaced" in volume.notes[0]
    assert "no JSON sidecar" in volume.notes[0]
    assert _contrast(volume) > _contrast(load_volume(path, echo="rss"))
    (tmp_path / "me.json").write_text('{"EchoTime": 0.005}')  # a sidecar with one time for four echoes
    assert "me.json: EchoTime gives 1 echo time(s) for 4 echoes" in load_volume(path).notes[0]


@pytest.mark.parametrize("naming", ["bids", "dcm2niix"])
def test_one_file_per_echo_is_one_scan(tmp_path, naming):
    times = [6.0, 14.0, 22.0, 30.0]
    echoes = _decaying_echoes(times)
    affine = _affine_for("LAS")
    paths = []
    for n in (3, 1, 4, 2):  # listed out of order on purpose
        name = f"sub-01_echo-{n}_T2starw" if naming == "bids" else f"gre_e{n}"
        p = _save(tmp_path, echoes[..., n - 1], affine, f"{name}.nii.gz")
        if naming == "bids":
            (tmp_path / f"{name}.json").write_text(json.dumps({"EchoTime": times[n - 1] / 1000}))
        paths.append(p)
    together = load_volume(paths)
    single = _save(tmp_path, echoes, affine, "all.nii.gz")
    assert together.notes[0].startswith("4 echo files read as one scan")
    np.testing.assert_allclose(load_volume(paths, echo="rss").data, load_volume(single, echo="rss").data, rtol=1e-5)
    assert _contrast(together) > _contrast(load_volume(single, echo="rss")) + 0.15
    assert ("TE 6, 14, 22, 30 ms" in together.notes[1]) == (naming == "bids")
    last = load_volume(paths, echo="last")
    np.testing.assert_allclose(last.data, load_volume(paths[2]).data)  # echo 4 = paths[2]


def test_echo_files_on_different_grids_are_refused(tmp_path):
    a = _save(tmp_path, _image(), _affine_for("RAS"), "x_e1.nii.gz")
    b = _save(tmp_path, _image(), _affine_for("LPS"), "x_e2.nii.gz")
    with pytest.raises(InputError, match="x_e2.nii.gz.*not on the grid"):
        load_volume([a, b])


def test_echo_files_with_a_missing_echo_are_taken_by_echo_number(tmp_path):
    """BIDS echo-1 and echo-3 (echo-2 absent): --echo N is the echo numbered N + 1, never a list position."""
    times = [4.0, 8.0, 12.0]
    echoes = _decaying_echoes(times)
    paths = []
    for n in (1, 3):
        paths.append(_save(tmp_path, echoes[..., n - 1], np.eye(4), f"sub-05_echo-{n}_T2starw.nii.gz"))
        (tmp_path / f"sub-05_echo-{n}_T2starw.json").write_text(json.dumps({"EchoTime": times[n - 1] / 1000}))
    with pytest.raises(InputError) as info:
        load_volume(paths, echo="1")  # echo-2: not there
    message = str(info.value)
    assert "echo number 2" in message and "\n" not in message
    assert "sub-05_echo-1_T2starw.nii.gz" in message and "sub-05_echo-3_T2starw.nii.gz" in message
    third = load_volume(paths, echo="2")  # echo-3: there
    np.testing.assert_allclose(third.data, echoes[..., 2])
    assert "echo 3 (TE 12 ms) used" in third.notes[1] and "echo 2 missing" in third.notes[1]
    assert "TE 4, 12 ms" in load_volume(paths).notes[1]  # sidecar times rule


def test_missing_echo_without_sidecars_keeps_its_gap_in_the_assumed_times(tmp_path):
    """dcm2niix _e1, _e2, _e4 without sidecars: equal spacing by echo number (1, 2, 4), not by position."""
    times = [5.0, 10.0, 15.0, 20.0]  # T2* 40 ms = 8 echo spacings
    echoes = _decaying_echoes(times)
    paths = [_save(tmp_path, echoes[..., n - 1], np.eye(4), f"scanG_e{n}.nii.gz") for n in (1, 2, 4)]
    with pytest.raises(InputError, match="echo number 3.*scanG_e4.nii.gz.*echo 3 missing"):
        load_volume(paths, echo="2")
    fourth = load_volume(paths, echo="3")
    np.testing.assert_allclose(fourth.data, echoes[..., 3])
    assert "echo 4 used" in fourth.notes[1]
    note = load_volume(paths).notes[1]
    assert "echo 3 missing" in note and "TE proportional to 1, 2, 4" in note
    assert "T2* 8 echo spacings" in note  # position-based spacing fitted 5.33


def test_two_echo_files_with_one_echo_number_are_refused(tmp_path):
    names = ["x_e1.nii", "x_e2.nii", "x_e2.nii.gz"]  # e2 twice: which one --echo 1 means is not known
    paths = [_save(tmp_path, _image(seed=n), np.eye(4), name) for n, name in enumerate(names)]
    with pytest.raises(InputError, match="same echo number 2"):
        load_volume(paths, echo="1")


_GOOD_SIDECARS = {1: '{"EchoTime": 0.008}', 2: '{"EchoTime": 0.016}', 3: '{"EchoTime": 0.024}'}
_BROKEN = '{"EchoTime": [0.005, 0.015,'


@pytest.mark.parametrize(("sidecars", "said"), [
    ({n: _BROKEN for n in (1, 2, 3)}, "scanH_e1.json: unreadable JSON (Expecting value at line 1 column 28)"),
    ({**_GOOD_SIDECARS, 3: _BROKEN}, "scanH_e3.json: unreadable JSON"),
    ({1: _GOOD_SIDECARS[1]}, "no sidecar scanH_e2.json, scanH_e3.json"),
    ({**_GOOD_SIDECARS, 2: '{"EchoTime": 0}'}, "scanH_e2.json: EchoTime 0 is not positive"),
    ({**_GOOD_SIDECARS, 2: '{"EchoTime": -0.004}'}, "scanH_e2.json: EchoTime -0.004 is not positive"),
    ({**_GOOD_SIDECARS, 2: '{"EchoTime": NaN}'}, "scanH_e2.json: EchoTime nan is not finite"),
    ({**_GOOD_SIDECARS, 2: '{"RepetitionTime": 0.03}'}, "scanH_e2.json: EchoTime missing"),
    ({n: '{"EchoTime": 0.008}' for n in (1, 2, 3)},
     "scanH_e1.json, scanH_e2.json, scanH_e3.json: echo times 8, 8, 8 ms are not distinct"),
], ids=["malformed", "one-malformed", "only-e1", "zero", "negative", "nan", "no-echotime", "identical"])
def test_a_bad_sidecar_is_named_with_its_problem_and_not_fatal(tmp_path, sidecars, said):
    echoes = _decaying_echoes([8.0, 16.0, 24.0])
    paths = [_save(tmp_path, echoes[..., n - 1], np.eye(4), f"scanH_e{n}.nii.gz") for n in (1, 2, 3)]
    for n, text in sidecars.items():
        (tmp_path / f"scanH_e{n}.json").write_text(text)
    note = load_volume(paths).notes[1]
    assert f"echo times unknown ({said}" in note and "assumed equally spaced" in note
    assert "T2* 5 echo spacings" in note  # 40 ms / 8 ms: the echo-number assumption, as without sidecars


def test_a_bad_sidecar_of_a_4d_file_is_named(tmp_path):
    path = _save(tmp_path, _decaying_echoes([5.0, 10.0, 15.0]), np.eye(4), "me.nii.gz")
    (tmp_path / "me.json").write_text(_BROKEN)
    assert "echo times unknown (me.json: unreadable JSON (Expecting value at line 1 column 28))" in \
        load_volume(path).notes[0]
    (tmp_path / "me.json").write_text('{"EchoTime": [0.005, 0.005, 0.005]}')
    assert "me.json: echo times 5, 5, 5 ms are not distinct" in load_volume(path).notes[0]


def test_echo_files_with_one_shifted_affine_say_the_affine_differs(tmp_path):
    shifted = np.eye(4)
    shifted[0, 3] = 10.0
    paths = [_save(tmp_path, _image(seed=n), shifted if n == 3 else np.eye(4), f"scanD_e{n}.nii.gz") for n in (1, 2, 3)]
    with pytest.raises(InputError) as info:
        load_volume(paths)
    message = str(info.value)
    assert "scanD_e3.nii.gz" in message and "affine differs from scanD_e1.nii.gz's (by up to 10 mm" in message
    assert "shape" not in message


def test_nan_voxels_are_repaired_with_a_warning(tmp_path):
    data = _image()
    data[0, 0, :] = np.nan  # at the edge of the field of view: background, 0
    data[5, 5, 5] = np.inf  # inside: a hole, filled from its neighbours (0 would read as a dark focus)
    data[9:11, 7:9, 4:6] = np.nan
    with pytest.warns(UserWarning, match="NaN"):
        volume = load_volume(_save(tmp_path, data, np.eye(4)))
    assert np.all(np.isfinite(volume.data))
    assert np.all(volume.data[0, 0, :] == 0)
    assert volume.data[5, 5, 5] in data[4:7, 4:7, 4:7] and volume.data[5, 5, 5] >= 10
    assert np.all(volume.data[9:11, 7:9, 4:6] >= 10)
    assert any("NaN" in note and "filled" in note for note in volume.notes)


def test_a_complex_image_gives_its_magnitude_and_says_so(tmp_path):
    """Magnitude and phase in one complex file: the magnitude is the scan (its real part alone would look
    like a phase image, and a phase wrap would carve dark spots)."""
    magnitude = _image()
    phase = np.linspace(-3.0, 3.0, magnitude.size).reshape(magnitude.shape)
    path = _save(tmp_path, (magnitude * np.exp(1j * phase)).astype(np.complex64), np.eye(4))
    volume = load_volume(path)
    np.testing.assert_allclose(volume.data, magnitude, rtol=1e-5)
    assert any("complex-valued" in note for note in volume.notes)


def test_nan_background_of_a_masked_brain_is_background(tmp_path):
    # masking pipelines write NaN outside the brain: most of the field of view, all connected to its edge
    data = np.full((30, 30, 30), np.nan, np.float32)
    data[8:22, 8:22, 8:22] = _image((14, 14, 14))
    data[14, 14, 14] = np.nan  # and one hole inside
    with pytest.warns(UserWarning, match="NaN"):
        volume = load_volume(_save(tmp_path, data, np.eye(4)))
    assert np.isnan(data).mean() > 0.85
    assert np.all(volume.data[:8] == 0) and volume.data[14, 14, 14] >= 10


def _bad_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    good = _save(tmp_path, _image(), np.eye(4), "good.nii.gz")
    cases = {}
    cases["missing"] = (tmp_path / "nope.nii.gz", "no such file")
    folder = tmp_path / "folder.nii.gz"
    folder.mkdir()
    cases["directory"] = (folder, "directory")
    text = tmp_path / "notes.nii"
    text.write_text("this is not an image\n" * 40)
    cases["not nifti"] = (text, "not a readable NIfTI")
    txt = tmp_path / "scan.txt"
    txt.write_text("x")
    cases["wrong extension"] = (txt, "not a NIfTI file")
    empty = tmp_path / "empty.nii.gz"
    empty.write_bytes(b"")
    cases["zero bytes"] = (empty, "empty")
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    cases["truncated"] = (truncated, "truncated or corrupt")
    corrupt = bytearray(good.read_bytes())
    corrupt[len(corrupt) // 2] ^= 0xFF  # fails the gzip CRC check, which nibabel alone never reaches
    (tmp_path / "crc.nii.gz").write_bytes(bytes(corrupt))
    cases["bad CRC"] = (tmp_path / "crc.nii.gz", "truncated or corrupt")
    cases["2-D"] = (_save(tmp_path, _image((20, 16)), np.eye(4), "flat.nii.gz"), "2-D image")
    cases["5-D"] = (_save(tmp_path, _image((6, 6, 6, 2, 3)), np.eye(4), "five.nii.gz"), "5-D image")
    cases["time series"] = (_save(tmp_path, _image((6, 6, 6, 40)), np.eye(4), "fmri.nii.gz"), "time series")
    negative = -_image()
    cases["all negative"] = (_save(tmp_path, negative, np.eye(4), "negative.nii.gz"), "zero or negative")
    nan = np.full((8, 8, 8), np.nan, dtype=np.float32)
    cases["all NaN"] = (_save(tmp_path, nan, np.eye(4), "nan.nii.gz"), "NaN")
    singular = np.eye(4)
    singular[2, 2] = 0
    image = nib.Nifti1Image(_image(), None)
    image.set_sform(singular, code=1)
    nib.save(image, tmp_path / "singular.nii.gz")
    cases["singular"] = (tmp_path / "singular.nii.gz", "singular affine")
    rng = np.random.default_rng(1)
    phase = rng.uniform(-np.pi, np.pi, (12, 12, 8)).astype(np.float32)
    cases["phase"] = (_save(tmp_path, phase, np.eye(4), "phase.nii.gz"), "phase")
    cases["constant"] = (_save(tmp_path, np.ones((8, 8, 8), np.float32), np.eye(4), "flat3d.nii.gz"), "constant")
    cases["single slice"] = (_save(tmp_path, _image((20, 16, 1)), np.eye(4), "one.nii.gz"), "single slice")
    return cases


def test_bad_inputs_give_one_line_errors_naming_the_file(tmp_path):
    for label, (path, problem) in _bad_files(tmp_path).items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with pytest.raises(InputError) as info:
                load_volume(path)
        message = str(info.value)
        assert str(path) in message, label
        assert problem in message, (label, message)
        assert "\n" not in message, label


def test_gzip_of_garbage_is_reported(tmp_path):
    path = tmp_path / "garbage.nii.gz"
    path.write_bytes(gzip.compress(b"\x00" * 1000))
    with pytest.raises(InputError, match="garbage.nii.gz"):
        load_volume(path)


def test_label_maps_are_read_as_stored_and_bad_ones_refused_in_one_line(tmp_path):
    affine = np.diag([0.9, 0.9, 3.0, 1.0])
    labels = np.zeros((6, 5, 4), np.int16)
    labels[2:4, 1:3, 1] = 2
    good = tmp_path / "sub-01_dseg.nii.gz"
    nib.save(nib.Nifti1Image(labels, affine), good)
    read, read_affine = read_label_map(good)
    np.testing.assert_array_equal(read, labels)
    np.testing.assert_allclose(read_affine, affine)
    nib.save(nib.Nifti1Image(labels[..., None], affine), tmp_path / "single.nii.gz")  # 4-D with one volume
    np.testing.assert_array_equal(read_label_map(tmp_path / "single.nii.gz")[0], labels)

    cut = tmp_path / "cut.nii"
    nib.save(nib.Nifti1Image(labels, affine), cut)
    cut.write_bytes(cut.read_bytes()[:400])
    gz_cut = tmp_path / "cut.nii.gz"
    gz_cut.write_bytes(good.read_bytes()[:60])
    nib.save(nib.Nifti1Image(np.full((6, 5, 4), 0.5, np.float32), affine), tmp_path / "prob.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((6, 5, 4, 2), np.int16), affine), tmp_path / "series.nii.gz")
    for name, problem in [("cut.nii", "corrupt"), ("cut.nii.gz", "corrupt"), ("prob.nii.gz", "non-integer"),
                          ("series.nii.gz", "3-D"), ("absent.nii.gz", "no such file")]:
        with pytest.raises(InputError) as info:
            read_label_map(tmp_path / name)
        assert name in str(info.value) and problem in str(info.value) and "\n" not in str(info.value), name


@pytest.mark.skipif(not REALDATA.exists(), reason="shared/realdata not beside the repo")
def test_real_multi_echo_gre_and_phase_files():
    mag = load_volume(REALDATA / "Mag.nii")
    assert mag.shape == (40, 40, 20)
    assert np.allclose(mag.spacing_mm, [0.46875, 0.46875, 1.0])
    assert "3 echoes" in mag.notes[0]
    for name in ("Phase.nii", "phase_with_nan.nii"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with pytest.raises(InputError, match="phase image"):
                load_volume(REALDATA / name)


def test_a_warning_repeating_a_note_is_dropped_only_for_the_file_the_note_came_from():
    from cmbdet.errors import notes_with_warnings

    def caught(*messages):
        return [warnings.WarningMessage(UserWarning(m), UserWarning, "x.py", 1) for m in messages]

    note = "header has neither sform nor qform: orientation unknown"
    merged = notes_with_warnings([note], caught(f"/d/swi.nii.gz: {note}", f"/d/T1w.nii.gz: {note}", note, "other"),
                                 sources=["/d/swi.nii.gz"])
    assert merged == [note, f"/d/T1w.nii.gz: {note}", "other"]


def test_a_head_ct_given_to_detect_is_named_as_ct_and_a_phase_image_as_phase(tmp_path):
    """A CT in HU (air -1000, brain 0-100, bone +1500) is refused with a pointer to `cmbdet lesions`,
    not called a phase image; an image spread evenly around zero still is one."""
    r = np.linalg.norm(np.indices((48, 48, 48)) - 23.5, axis=0)
    hu = np.where(r < 16, 35.0, np.where(r < 19, 1500.0, -1000.0)).astype(np.float32)
    nib.save(nib.Nifti1Image(hu, np.eye(4)), tmp_path / "head_ct.nii.gz")
    with pytest.raises(InputError, match="CT in Hounsfield units.*cmbdet lesions --modality ct"):
        load_volume(tmp_path / "head_ct.nii.gz")
    phase = np.random.default_rng(0).uniform(-np.pi, np.pi, (48, 48, 48)).astype(np.float32)
    nib.save(nib.Nifti1Image(phase, np.eye(4)), tmp_path / "phase.nii.gz")
    with pytest.raises(InputError, match="phase image"):
        load_volume(tmp_path / "phase.nii.gz")
