"""`cmbdet lesions` end to end on tiny volumes: files written, label map in the input's grid, table
columns, a status row for every input (bad ones included), crops, MRI groups."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from cmbdet.cli import main
from cmbdet.lesions.infer import LesionModel
from cmbdet.lesions.model import LesionNet
from cmbdet.lesions.result import LESION_COLUMNS
from cmbdet.lesions.run import COUNT_COLUMNS
from tests.conftest import ellipsoid_head
from tests.test_lesions import LPS_TILTED, save_ct, tiny_ct_head
from tests.test_report import report_links, total_row


def _rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def lesion_weights(tmp_path_factory):
    """An untrained CT lesion network (throw-away weights: contracts, not accuracy)."""
    torch.manual_seed(0)
    net = LesionNet(3, 4)
    torch.nn.init.constant_(net.head.bias, 0.0)
    path = tmp_path_factory.mktemp("lw") / "lesions_ct.safetensors"
    LesionModel(net=net, modality="ct", threshold=0.5).save(path)
    return path


@pytest.fixture()
def ct_inputs(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    save_ct(folder / "sub-01_ct.nii.gz", tiny_ct_head(LPS_TILTED, blob_radius_mm=10.0), LPS_TILTED)
    ras = np.array([[2.5, 0, 0, -75], [0, 2.5, 0, -88], [0, 0, 5.0, -60], [0, 0, 0, 1]])
    save_ct(folder / "sub-02_ct.nii.gz", tiny_ct_head(ras, shape=(60, 70, 24), blob_radius_mm=0.0), ras,
            intercept=0.0)
    (folder / "broken.nii.gz").write_bytes(b"not a nifti")
    mri_like = nib.Nifti1Image(np.abs(tiny_ct_head(ras, shape=(60, 70, 24))).astype(np.float32), ras)
    nib.save(mri_like, str(folder / "notct.nii.gz"))
    return folder


def test_cli_network_on_ct_writes_everything(ct_inputs, lesion_weights, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["lesions", str(ct_inputs / "sub-01_ct.nii.gz"), str(ct_inputs / "sub-02_ct.nii.gz"),
                 str(ct_inputs / "broken.nii.gz"), "-o", str(out), "--weights", str(lesion_weights)])
    assert code == 1  # one input failed, the others were written
    counts = _rows(out / "counts.csv")
    assert list(counts[0].keys()) == list(COUNT_COLUMNS)
    status = {r["subject"]: r["status"] for r in counts}
    assert status == {"sub-01": "ok", "sub-02": "ok", "broken": "error"}
    assert "not a readable NIfTI" in next(r["message"] for r in counts if r["subject"] == "broken")
    assert "modality auto: CT" in next(r["message"] for r in counts if r["subject"] == "sub-01")
    with open(out / "lesions.csv") as handle:
        assert handle.readline().strip().split(",")[: len(LESION_COLUMNS)] == list(LESION_COLUMNS)
    for subject in ("sub-01", "sub-02"):
        source = nib.load(str(ct_inputs / f"{subject}_ct.nii.gz"))
        labels = nib.load(str(out / subject / f"{subject}_desc-hemorrhage_dseg.nii.gz"))
        assert labels.shape == source.shape and np.allclose(labels.affine, source.affine)
        assert (out / subject / f"{subject}_lesions.png").stat().st_size > 1000
        sidecar = json.loads((out / subject / f"{subject}_desc-hemorrhage_dseg.json").read_text())
        assert sidecar["modality"] == "ct" and any("HU" in note for note in sidecar["read"])
        # the operating point the lesions were made with, so a reader can redo them
        assert {"threshold", "min_ml", "group_mm", "max_dense_fraction", "refine_hu", "refine_mm"} <= set(
            sidecar["model"]) and sidecar["model"]["threshold"] == 0.5
    n_sub01 = int(next(r["n_lesions"] for r in counts if r["subject"] == "sub-01"))
    labels = np.asarray(nib.load(str(out / "sub-01" / "sub-01_desc-hemorrhage_dseg.nii.gz")).dataobj)
    assert labels.max() == n_sub01
    # the cohort page: every link inside OUTDIR, each subject's picture, label map and sidecar, the failure
    page, urls = report_links(out)
    for expected in ("lesions.csv", "counts.csv", "run.json", "sub-01/sub-01_lesions.png",
                     "sub-02/sub-02_desc-hemorrhage_dseg.nii.gz", "sub-02/sub-02_desc-hemorrhage_dseg.json"):
        assert expected in urls, expected
    assert '<tr class="error"><td>broken</td>' in page
    total = total_row(page)  # counts and volumes add up over the subjects that ran
    assert int(total["n_lesions"]) == sum(int(r["n_lesions"]) for r in counts if r["status"] == "ok")
    assert float(total["total_volume_ml"]) == pytest.approx(
        sum(float(r["total_volume_ml"]) for r in counts if r["status"] == "ok"), abs=0.01)


def test_cli_classical_with_crops_and_hu_refusal(ct_inputs, tmp_path):
    out = tmp_path / "out"
    code = main(["lesions", str(ct_inputs / "sub-01_ct.nii.gz"), str(ct_inputs / "notct.nii.gz"), "-o", str(out),
                 "--modality", "ct", "--classical", "--crops"])
    assert code == 1
    counts = {r["subject"]: r for r in _rows(out / "counts.csv")}
    assert counts["notct"]["status"] == "error" and "not a CT in Hounsfield units" in counts["notct"]["message"]
    lesions = _rows(out / "lesions.csv")
    assert len(lesions) == 1 and lesions[0]["lesion_id"] == "1"
    assert float(lesions[0]["volume_ml"]) == pytest.approx(4.19, rel=0.3)
    crops = _rows(out / "crops.csv")
    kinds = {(r["sequence"], r["kind"]) for r in crops}
    assert kinds == {("ct", "image_box"), ("ct", "image_axial5"), ("mask", "mask_box"), ("mask", "mask_axial5")}
    assert all(not Path(r["path"]).is_absolute() and (out / r["path"]).is_file() for r in crops)  # OUTDIR-relative
    slab = nib.load(out / next(r["path"] for r in crops if r["kind"] == "mask_axial5"))
    assert slab.shape[2] == 5 and np.allclose(slab.header.get_zooms()[:3], 1.0, atol=1e-3)
    assert np.asarray(slab.dataobj)[:, :, 2].sum() > 0  # the largest cross-section is the middle slice
    box = nib.load(out / next(r["path"] for r in crops if r["kind"] == "image_box"))
    centre = nib.affines.apply_affine(box.affine, (np.array(box.shape) - 1) / 2.0)
    assert np.allclose(centre, [12.0, 6.0, 4.0], atol=6.0)


def test_auto_takes_a_ct_named_file_as_ct_and_says_why_its_values_are_not_hu(ct_inputs, tmp_path):
    """A CT stored without its rescale intercept (air at 0, not -1000), named ``_ct``: the CT reader's
    reason, not an MRI grouping error."""
    source = nib.load(ct_inputs / "sub-01_ct.nii.gz")
    raw = (np.asarray(source.get_fdata()) + 1024).astype(np.uint16)
    nib.save(nib.Nifti1Image(raw, source.affine), tmp_path / "sub-03_ct.nii.gz")
    out = tmp_path / "out"
    assert main(["lesions", str(tmp_path / "sub-03_ct.nii.gz"), "-o", str(out), "--classical"]) == 1
    (row,) = _rows(out / "counts.csv")
    assert "not a CT in Hounsfield units" in row["message"] and "scl_slope/scl_inter" in row["message"]


def test_cli_mri_groups_and_refuses_mixed_subjects(tmp_path):
    folder = tmp_path / "bids"
    folder.mkdir()
    swi = np.array([[3.5, 0, 0, -84], [0, 3.5, 0, -98], [0, 0, 5.0, -60], [0, 0, 0, 1]])
    t1 = np.array([[-4.0, 0, 0, 96], [0, -4.0, 0, 110], [0, 0, 4.0, -60], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(ellipsoid_head(swi), swi), str(folder / "sub-01_ses-1_swi.nii.gz"))
    nib.save(nib.Nifti1Image(ellipsoid_head(t1, shape=(48, 56, 30)), t1), str(folder / "sub-01_ses-1_T1w.nii.gz"))
    far = t1.copy()
    far[0, 3] += 600.0  # a FLAIR whose header puts it 600 mm away: left out, with a note
    nib.save(nib.Nifti1Image(ellipsoid_head(t1, shape=(48, 56, 30)), far), str(folder / "sub-01_ses-1_FLAIR.nii.gz"))
    no_swi = tmp_path / "sub-05"  # T1w and FLAIR only: the network needs SWI or T2*
    no_swi.mkdir()
    nib.save(nib.Nifti1Image(ellipsoid_head(t1, shape=(48, 56, 30)), t1), str(no_swi / "sub-05_T1w.nii.gz"))
    nib.save(nib.Nifti1Image(ellipsoid_head(t1, shape=(48, 56, 30)), t1), str(no_swi / "sub-05_FLAIR.nii.gz"))
    mixed = tmp_path / "sub-03"
    mixed.mkdir()
    nib.save(nib.Nifti1Image(ellipsoid_head(swi), swi), str(mixed / "sub-03_swi.nii.gz"))
    nib.save(nib.Nifti1Image(ellipsoid_head(swi), swi), str(mixed / "sub-04_T1w.nii.gz"))
    torch.manual_seed(0)
    mri_weights = tmp_path / "lesions_mri.safetensors"
    LesionModel(net=LesionNet(6, 4), modality="mri", threshold=0.5).save(mri_weights)
    out = tmp_path / "out"
    code = main(["lesions", str(folder / "sub-01_ses-1_swi.nii.gz"), str(folder / "sub-01_ses-1_T1w.nii.gz"),
                 str(folder / "sub-01_ses-1_FLAIR.nii.gz"), str(mixed), str(no_swi), "-o", str(out), "--modality",
                 "mri", "--mri-weights", str(mri_weights)])
    assert code == 1
    counts = {r["subject"]: r for r in _rows(out / "counts.csv")}
    assert counts["sub-01_ses-1"]["status"] == "ok"
    assert "T1w" in counts["sub-01_ses-1"]["message"] and "resampled" in counts["sub-01_ses-1"]["message"]
    assert "FLAIR" in counts["sub-01_ses-1"]["message"] and "left out" in counts["sub-01_ses-1"]["message"]
    assert counts["sub-05"]["status"] == "error" and "no SWI or T2*" in counts["sub-05"]["message"]
    assert counts["sub-03"]["status"] == "error" and "different subjects" in counts["sub-03"]["message"]
    labels = nib.load(str(out / "sub-01_ses-1" / "sub-01_ses-1_desc-hemorrhage_dseg.nii.gz"))
    assert labels.shape == (48, 56, 24) and np.allclose(labels.affine, swi)  # the SWI (reference) grid
    sidecar = json.loads((out / "sub-01_ses-1" / "sub-01_ses-1_desc-hemorrhage_dseg.json").read_text())
    assert sidecar["reference"]["sequence"] == "swi" and sidecar["method"] == "network"
    # a folder of loose BIDS files groups by entities; --classical runs the peer
    out2 = tmp_path / "out2"
    assert main(["lesions", str(folder), str(no_swi), "-o", str(out2), "--modality", "mri", "--classical"]) == 0
    assert [r["subject"] for r in _rows(out2 / "counts.csv")] == ["sub-01_ses-1", "sub-05"]  # the peer reads T1
    sidecar = json.loads((out2 / "sub-01_ses-1" / "sub-01_ses-1_desc-hemorrhage_dseg.json").read_text())
    assert sidecar["method"] == "classical"


def test_mri_bids_root_filtered_as_detect_does_and_a_truncated_sequence_fails_only_its_subject(tmp_path, capsys):
    root = tmp_path / "bids"
    swi = np.array([[3.5, 0, 0, -84], [0, 3.5, 0, -98], [0, 0, 5.0, -60], [0, 0, 0, 1]])
    head = nib.Nifti1Image(ellipsoid_head(swi), swi)
    for rel in ("sub-01/anat/sub-01_swi.nii.gz", "sub-01/anat/sub-01_FLAIR.nii.gz",
                "sub-01/anat/sub-01_part-phase_swi.nii.gz",  # not magnitude
                "sourcedata/sub-01/sub-01_swi.nii.gz", "derivatives/x/sub-01/anat/sub-01_desc-preproc_swi.nii.gz",
                "sub-03/anat/sub-03_swi.nii.gz", "sub-03/anat/sub-03_FLAIR.nii.gz"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        nib.save(head, str(root / rel))
    (root / "dataset_description.json").write_text('{"Name": "x", "BIDSVersion": "1.9.0"}')
    flair = root / "sub-03/anat/sub-03_FLAIR.nii.gz"
    flair.write_bytes(flair.read_bytes()[:2000])  # truncated
    patient = tmp_path / "patient C"  # a subject folder of bare names, in capitals
    patient.mkdir()
    nib.save(head, str(patient / "SWI.nii.gz"))
    nib.save(head, str(patient / "Flair.nii.gz"))
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(["lesions", str(root), str(patient), "-o", str(out), "--classical"]) == 1
    err = capsys.readouterr().err
    assert "skipped 3 file(s)" in err and "under sourcedata/" in err and "part-phase" in err, err
    counts = {r["subject"]: r for r in _rows(out / "counts.csv")}
    assert sorted(counts) == ["patient C", "sub-01", "sub-03"], counts
    assert counts["sub-01"]["status"] == "ok" and counts["patient C"]["status"] == "ok"
    assert counts["sub-03"]["status"] == "error" and "sub-03_FLAIR.nii.gz" in counts["sub-03"]["message"]
