"""Synthetic microbleeds inserted into real backgrounds: the truth lands on dark foci that bloom with
echo time, and the shipped detector keeps obvious microbleeds on real texture and noise."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from cmbdet.cli import main
from cmbdet.evaluate import evaluate, read_detections, read_truth
from cmbdet.weights import read_metadata, shipped_weights
from tests.conftest import ellipsoid_head

REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata" / "clearswi-small"


def test_inserted_microbleeds_are_dark_bloom_with_echo_time_and_match_truth(tmp_path):
    affine = np.diag([1.5, 1.5, 2.0, 1.0])
    affine[:3, 3] = [-36, -42, -24]
    echoes = np.stack([ellipsoid_head(affine, dark_spots_mm=()) * np.exp(-te / 40.0) for te in (5, 15, 25)], 3)
    nib.save(nib.Nifti1Image(echoes, affine), tmp_path / "me.nii.gz")
    assert main(["phantom", "--insert-into", str(tmp_path / "me.nii.gz"), "-n", "2", "--cmb-per-copy", "2",
                 "-o", str(tmp_path / "set"), "--seed", "3"]) == 0
    rows = list(csv.DictReader(open(tmp_path / "set" / "truth.csv")))
    assert [r["subject"] for r in rows] == ["me-insert00"] * 2 + ["me-insert01"] * 2 + ["me-insert02"]
    assert rows[-1]["x_mm"] == ""  # the untouched copy is CMB-free
    np.testing.assert_allclose(nib.load(tmp_path / "set" / "me-insert02.nii.gz").get_fdata(), echoes, rtol=1e-5)
    copy = nib.load(tmp_path / "set" / "me-insert00.nii.gz")
    data = copy.get_fdata()
    for row in rows[:2]:
        ijk = np.rint(nib.affines.apply_affine(np.linalg.inv(copy.affine),
                                               [float(row["x_mm"]), float(row["y_mm"]), float(row["z_mm"])]))
        i, j, k = ijk.astype(int)
        ratio = data[i, j, k] / echoes[i, j, k]
        assert ratio[0] > ratio[1] > ratio[2] and ratio[2] < 0.3  # darker at every later echo


def test_insert_into_a_scan_with_nan_voxels_a_thin_slab_and_a_misplaced_option(tmp_path, capsys):
    affine = np.diag([1.5, 1.5, 2.0, 1.0])
    affine[:3, 3] = [-36, -42, -24]
    data = ellipsoid_head(affine, dark_spots_mm=())
    data[:4] = np.nan  # NaN background of a masking pipeline, and one infinite voxel
    data[30, 30, 10] = np.inf
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "nan.nii.gz")
    assert main(["phantom", "--insert-into", str(tmp_path / "nan.nii.gz"), "-n", "1", "--cmb-per-copy", "2",
                 "-o", str(tmp_path / "set"), "--seed", "3"]) == 0
    rows = list(csv.DictReader(open(tmp_path / "set" / "truth.csv")))
    assert sum(r["subject"] == "nan-insert00" for r in rows) == 2
    nib.save(nib.Nifti1Image(data[:, :, 10:12], affine), tmp_path / "slab.nii.gz")  # 2 slices: no room
    capsys.readouterr()
    assert main(["phantom", "--insert-into", str(tmp_path / "slab.nii.gz"), "-n", "1", "--cmb-per-copy", "2",
                 "-o", str(tmp_path / "slab"), "--seed", "3"]) == 0
    assert "0 of 2 microbleeds inserted" in capsys.readouterr().err
    assert main(["phantom", "-o", str(tmp_path / "x"), "-n", "1", "--cmb-per-copy", "2"]) == 2
    assert "--insert-into" in capsys.readouterr().err
    # what detect refuses, insert refuses: a phase image (it wrote copies and a truth table with no microbleed)
    phase = np.random.default_rng(0).uniform(-np.pi, np.pi, data.shape).astype(np.float32)
    nib.save(nib.Nifti1Image(phase, affine), tmp_path / "ph.nii.gz")
    assert main(["phantom", "--insert-into", str(tmp_path / "ph.nii.gz"), "-n", "1", "-o", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert "ph.nii.gz" in err and "phase" in err and not (tmp_path / "p").exists()
    # whole-phantom options are not silently ignored
    assert main(["phantom", "--insert-into", str(tmp_path / "nan.nii.gz"), "--family", "gamma", "-o",
                 str(tmp_path / "g")]) == 2
    assert "--family" in capsys.readouterr().err and not (tmp_path / "g").exists()


@pytest.mark.skipif(not REALDATA.exists(), reason="shared/realdata not beside the repo")
def test_shipped_detector_ranks_obvious_microbleeds_first_on_a_real_multi_echo_background(tmp_path):
    """The real 3-echo crop is 19 mm wide, narrower than a stage-2 patch; at the default threshold stage 2
    keeps only some of them (README), but every inserted microbleed must outrank anything on real anatomy."""
    main(["phantom", "--insert-into", str(REALDATA / "Mag.nii"), "-n", "3", "--cmb-per-copy", "2",
          "-o", str(tmp_path / "set"), "--seed", "1"])
    assert main(["detect", str(tmp_path / "set"), "-o", str(tmp_path / "out"), "--no-pictures",
                 "--threshold", "0"]) == 0
    truth = read_truth(tmp_path / "set" / "truth.csv")
    result = evaluate(truth, read_detections(tmp_path / "out" / "detections.csv"))
    assert result.pooled["sens_at_0.25fp"] >= 0.75
    # at the shipped threshold (session 16: all 4 kept, scores 0.63-0.82; the best false candidate 0.03)
    threshold = read_metadata(shipped_weights("reclassifier.safetensors"))["threshold"]
    kept = evaluate(truth, read_detections(tmp_path / "out" / "detections.csv"), score_threshold=threshold).pooled
    assert kept["tp"] >= 3 and kept["fp"] == 0, kept
