"""`cmbdet lesions` on the shared batch runner: resume (done subjects skipped, killed ones redone,
fixed inputs picked up), other settings refused unless --overwrite, worker processes, MRI groups as
one subject with every file hashed, duplicate subject ids refused."""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest
import torch

from cmbdet.cli import main
from cmbdet.lesions.infer import LesionModel
from cmbdet.lesions.model import LesionNet
from tests.conftest import ellipsoid_head
from tests.test_lesions import LPS_TILTED, save_ct, tiny_ct_head

RAS = np.array([[2.5, 0, 0, -75], [0, 2.5, 0, -88], [0, 0, 5.0, -60], [0, 0, 0, 1]])


def _rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _weights(path, seed: int, modality: str = "ct", channels: int = 3):
    """Untrained lesion weights (contracts, not accuracy)."""
    torch.manual_seed(seed)
    LesionModel(net=LesionNet(channels, 4), modality=modality, threshold=0.5).save(path)
    return path


def _mtimes(out, subjects, name="desc-hemorrhage_dseg.nii.gz"):
    return {s: ((out / s / f"{s}_{name}").stat().st_mtime_ns, (out / s / f"{s}_lesions-record.json").stat().st_mtime_ns)
            for s in subjects}


@pytest.fixture()
def ct_folder(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    save_ct(folder / "sub-01_ct.nii.gz", tiny_ct_head(LPS_TILTED, blob_radius_mm=10.0), LPS_TILTED)
    save_ct(folder / "sub-02_ct.nii.gz", tiny_ct_head(RAS, shape=(60, 70, 24), blob_radius_mm=0.0), RAS,
            intercept=0.0)
    (folder / "sub-03_ct.nii.gz").write_bytes(b"not a nifti")
    return folder


def test_rerun_skips_done_subjects_redoes_killed_and_fixed_ones(ct_folder, tmp_path, capsys):
    weights = _weights(tmp_path / "w.safetensors", 0)
    out = ct_folder / "out"  # inside the input folder: its label maps must never become inputs
    args = ["lesions", str(ct_folder), "-o", str(out), "--weights", str(weights)]
    assert main(args) == 1  # sub-03 is broken; the others are written
    counts = {r["subject"]: r for r in _rows(out / "counts.csv")}
    assert {s: r["status"] for s, r in counts.items()} == {"sub-01": "ok", "sub-02": "ok", "sub-03": "error"}
    assert "sub-03_ct.nii.gz" in counts["sub-03"]["message"]
    run = json.loads((out / "run.json").read_text())
    assert run["settings"]["weights"]["ct"] and run["settings"]["modality"] == "auto"
    assert {s["subject"]: s["status"] for s in run["subjects"]}["sub-01"] == "ok"
    assert "n_lesions" in run["subjects"][0]
    before = _mtimes(out, ["sub-01", "sub-02"])
    tables = {n: (out / n).read_text() for n in ("lesions.csv", "counts.csv")}
    capsys.readouterr()

    # the same run again: nothing recomputed for the done subjects, the broken one retried
    assert main(args) == 1
    assert "2 already done" in capsys.readouterr().err
    assert _mtimes(out, ["sub-01", "sub-02"]) == before
    assert {n: (out / n).read_text() for n in tables} == tables

    # sub-02 killed before its record was written, sub-03 fixed: both (and only they) are done now
    (out / "sub-02" / "sub-02_lesions-record.json").unlink()
    (out / "sub-02" / ".sub-02_lesions.png.cmbdet-tmp-x1y2.png").write_bytes(b"half")
    save_ct(ct_folder / "sub-03_ct.nii.gz", tiny_ct_head(RAS, shape=(60, 70, 24)), RAS)
    assert main(args) == 0
    assert "1 already done" in capsys.readouterr().err
    after = _mtimes(out, ["sub-01", "sub-02", "sub-03"])
    assert after["sub-01"] == before["sub-01"] and after["sub-02"][0] != before["sub-02"][0]
    assert not list((out / "sub-02").glob(".*cmbdet-tmp*"))
    counts = _rows(out / "counts.csv")
    assert [(r["subject"], r["status"]) for r in counts] == [("sub-01", "ok"), ("sub-02", "ok"), ("sub-03", "ok")]
    assert len(_rows(out / "lesions.csv")) == sum(int(r["n_lesions"]) for r in counts)


def test_other_settings_are_refused_unless_overwrite(ct_folder, tmp_path, capsys):
    (ct_folder / "sub-03_ct.nii.gz").unlink()
    weights = _weights(tmp_path / "w.safetensors", 0)
    out = tmp_path / "out"
    base = ["lesions", str(ct_folder), "-o", str(out)]
    assert main([*base, "--weights", str(weights)]) == 0
    before = _mtimes(out, ["sub-01", "sub-02"])
    capsys.readouterr()
    other = _weights(tmp_path / "other.safetensors", 1)
    for changed in (["--weights", str(other)], ["--weights", str(weights), "--classical"],
                    ["--weights", str(weights), "--crops"], ["--weights", str(weights), "--modality", "ct"]):
        assert main([*base, *changed]) == 2, changed
        err = capsys.readouterr().err
        assert "other settings" in err and "--overwrite" in err and "Traceback" not in err
    assert _mtimes(out, ["sub-01", "sub-02"]) == before
    # --overwrite redoes every subject with the new settings (here: classical peer + crops)
    assert main([*base, "--classical", "--crops", "--overwrite"]) == 0
    sidecar = json.loads((out / "sub-01" / "sub-01_desc-hemorrhage_dseg.json").read_text())
    assert sidecar["method"] == "classical"
    assert json.loads((out / "run.json").read_text())["settings"]["crops"] is True
    crops = _rows(out / "crops.csv")
    n_lesions = len(_rows(out / "lesions.csv"))
    assert n_lesions >= 1 and len(crops) == 4 * n_lesions  # image + mask, box + 5 axial slices each
    assert all((out / "sub-01" / "crops").joinpath(r["path"].rsplit("/", 1)[-1]).is_file()
               for r in crops if r["subject"] == "sub-01")
    # a crop file lost since is part of the subject: the rerun redoes that subject alone
    lost = next(r["path"] for r in crops if r["subject"] == "sub-01")
    nib.load(out / lost)
    (out / "sub-01" / "crops" / lost.rsplit("/", 1)[-1]).unlink()
    assert main([*base, "--classical", "--crops", "--quiet"]) == 0
    assert (out / "sub-01" / "crops" / lost.rsplit("/", 1)[-1]).is_file()
    assert _rows(out / "crops.csv") == crops


def test_workers_write_the_same_tables_as_one_process(ct_folder, tmp_path):
    (ct_folder / "sub-03_ct.nii.gz").unlink()
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["lesions", str(ct_folder), "-o", str(one), "--classical", "--crops", "--no-pictures",
                 "--quiet"]) == 0
    assert main(["lesions", str(ct_folder), "-o", str(two), "--classical", "--crops", "--no-pictures",
                 "--quiet", "--workers", "2"]) == 0
    assert (one / "lesions.csv").read_text() == (two / "lesions.csv").read_text()
    for name in ("counts.csv", "crops.csv"):
        assert (one / name).read_text().replace(str(one), "OUT") == (two / name).read_text().replace(str(two), "OUT")


def test_mri_group_is_one_subject_hashed_over_all_its_files(tmp_path, capsys):
    folder = tmp_path / "bids"
    folder.mkdir()
    swi = np.array([[3.5, 0, 0, -84], [0, 3.5, 0, -98], [0, 0, 5.0, -60], [0, 0, 0, 1]])
    t1 = np.array([[-4.0, 0, 0, 96], [0, -4.0, 0, 110], [0, 0, 4.0, -60], [0, 0, 0, 1]])
    for subject in ("sub-01_ses-1", "sub-02"):
        nib.save(nib.Nifti1Image(ellipsoid_head(swi), swi), str(folder / f"{subject}_swi.nii.gz"))
        nib.save(nib.Nifti1Image(ellipsoid_head(t1, shape=(48, 56, 30)), t1), str(folder / f"{subject}_T1w.nii.gz"))
    mri_weights = _weights(tmp_path / "mri.safetensors", 0, modality="mri", channels=6)
    out = tmp_path / "out"
    args = ["lesions", str(folder), "-o", str(out), "--modality", "mri", "--mri-weights", str(mri_weights)]
    assert main(args) == 0
    assert [r["subject"] for r in _rows(out / "counts.csv")] == ["sub-01_ses-1", "sub-02"]
    record = json.loads((out / "sub-02" / "sub-02_lesions-record.json").read_text())
    assert sorted(p.rsplit("/", 1)[-1] for p in record["inputs"]) == ["sub-02_T1w.nii.gz", "sub-02_swi.nii.gz"]
    assert len(record["input_sha256"]) == 2
    before = _mtimes(out, ["sub-01_ses-1", "sub-02"])
    # the T1w of sub-02 changes (not its reference SWI): sub-02 alone is redone
    image = nib.load(str(folder / "sub-02_T1w.nii.gz"))
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj) * 1.5, t1), str(folder / "sub-02_T1w.nii.gz"))
    capsys.readouterr()
    assert main(args) == 0
    assert "1 already done" in capsys.readouterr().err
    after = _mtimes(out, ["sub-01_ses-1", "sub-02"])
    assert after["sub-01_ses-1"] == before["sub-01_ses-1"] and after["sub-02"][1] != before["sub-02"][1]
    # weights of the wrong modality are refused up front, in one line
    _weights(tmp_path / "ct.safetensors", 0)
    assert main([*args[:-1], str(tmp_path / "ct.safetensors")]) == 2
    assert "not MRI lesion-model weights" in capsys.readouterr().err


def test_two_inputs_with_one_subject_id_are_refused_before_any_work(tmp_path, capsys):
    for site in ("a", "b"):
        (tmp_path / site).mkdir()
        save_ct(tmp_path / site / "head.nii.gz", tiny_ct_head(RAS, shape=(60, 70, 24)), RAS)
    out = tmp_path / "out"
    assert main(["lesions", str(tmp_path / "a"), str(tmp_path / "b"), "-o", str(out), "--classical"]) == 2
    err = capsys.readouterr().err
    assert "'head' is given twice" in err and "a/head.nii.gz" in err and "b/head.nii.gz" in err
    assert not (out / "counts.csv").exists()
    # one subject's MRI sequences given --modality ct: said as such, not as a name clash
    (tmp_path / "mri").mkdir()
    for sequence in ("T1w", "FLAIR"):
        save_ct(tmp_path / "mri" / f"sub-01_{sequence}.nii.gz", tiny_ct_head(RAS, shape=(60, 70, 24)), RAS)
    assert main(["lesions", str(tmp_path / "mri"), "-o", str(out), "--classical", "--modality", "ct"]) == 2
    err = capsys.readouterr().err
    assert "named as MRI sequences of one subject (FLAIR and T1w)" in err and "--modality mri" in err
    assert not (out / "counts.csv").exists()


def test_inputs_skip_label_maps_beside_the_scans_and_read_manifests_by_column(tmp_path):
    """A phantom set (scans with their truth _dseg beside them) runs as it is written, and a manifest CSV
    is read by its columns (it was read as a list of paths, header included)."""
    from cmbdet.lesions.run import plan_inputs

    folder = tmp_path / "set"
    folder.mkdir()
    for name in ("sub-01", "sub-02"):
        save_ct(folder / f"{name}_ses-baseline_ct.nii.gz", tiny_ct_head(RAS, shape=(60, 70, 24)), RAS)
        nib.save(nib.Nifti1Image(np.zeros((60, 70, 24), np.int16), RAS),
                 folder / f"{name}_ses-baseline_desc-truth_dseg.nii.gz")
    units = plan_inputs([folder])
    assert sorted(u.subject for u in units) == ["sub-01_ses-baseline", "sub-02_ses-baseline"]
    assert all(u.modality == "ct" and not u.error for u in units)
    manifest = tmp_path / "cohort.csv"
    second = folder / "sub-02_ses-baseline_ct.nii.gz"
    manifest.write_text(f"subject,image,site\npatientA,set/sub-01_ses-baseline_ct.nii.gz,x\npatientB,{second},y\n")
    units = plan_inputs([manifest])
    assert [(u.subject, u.files["ct"].name) for u in units] == [("patientA", "sub-01_ses-baseline_ct.nii.gz"),
                                                                ("patientB", "sub-02_ses-baseline_ct.nii.gz")]
