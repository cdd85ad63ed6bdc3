"""`cmbdet evaluate --counts`: predicted per-scan counts against rated counts, on a case worked by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cmbdet.agreement import count_agreement, icc_two_way
from cmbdet.cli import main

# Worked by hand. Rated 0, 2, 5, 1; predicted 1, 2, 3, 1 (one scan unrated, one failed).
# Differences (predicted - rated) 1, 0, -2, 0: bias -0.25, SD sqrt(4.75 / 3) = 1.258306,
# limits -0.25 -+ 1.96 SD = -2.716280 .. 2.216280, mean |difference| 0.75.
# Two-way ANOVA (n = 4, k = 2): grand mean 1.875; SS rows 14.375 (MSR 4.791667), SS columns 0.125
# (MSC 0.125), SS total 16.875, SS error 2.375 (MSE 0.791667).
# ICC(C,1) = 4 / 5.583333 = 0.716418; ICC(A,1) = 4 / (5.583333 + 0.5 * (0.125 - 0.791667)) = 4 / 5.25.
# Categories rated 0, 2-4, >=5, 1 vs predicted 1, 2-4, 2-4, 1: 2 of 4 agree; kappa: po 0.5,
# pe = (1*0 + 1*2 + 1*2 + 1*0) / 16 = 0.25 -> (0.5 - 0.25) / 0.75 = 1/3.
RATED = {"a": 0, "b": 2, "c": 5, "d": 1}
PREDICTED = {"a": 1, "b": 2, "c": 3, "d": 1}


def test_count_agreement_matches_the_hand_computed_case():
    result = count_agreement(RATED, PREDICTED)
    f = result.figures
    assert f["n_scans"] == 4
    assert f["bias"] == pytest.approx(-0.25)
    assert f["sd_difference"] == pytest.approx(1.258306, abs=1e-6)
    assert (f["loa_lower"], f["loa_upper"]) == (pytest.approx(-2.716280, abs=1e-6), pytest.approx(2.216280, abs=1e-6))
    assert f["mean_abs_difference"] == pytest.approx(0.75)
    assert f["icc_c1"] == pytest.approx(0.716418, abs=1e-6)
    assert f["icc_a1"] == pytest.approx(4 / 5.25)
    assert f["category_agreement"] == pytest.approx(0.5)
    assert f["kappa"] == pytest.approx(1 / 3)
    expected = np.zeros((4, 4), dtype=int)
    expected[0, 1] = expected[1, 1] = expected[2, 2] = expected[3, 2] = 1
    assert (result.confusion == expected).all()


def test_icc_is_one_for_perfect_agreement_and_penalises_an_offset_only_in_absolute_form():
    rated = np.array([0.0, 1, 3, 7, 2])
    a, c = icc_two_way(np.stack([rated, rated], axis=1))
    assert a == pytest.approx(1.0) and c == pytest.approx(1.0)
    a, c = icc_two_way(np.stack([rated, rated + 2], axis=1))
    assert c == pytest.approx(1.0) and a < 0.8


def test_evaluate_counts_cli_reads_a_manifest_and_counts_csv(tmp_path, capsys):
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("subject,path,n_cmb\n" + "".join(f"{s},{s}.nii.gz,{n}\n" for s, n in RATED.items())
                        + "e,e.nii.gz,\nf,f.nii.gz,4\n")  # e unrated; f's detection failed
    counts = tmp_path / "counts.csv"
    counts.write_text("subject,n_cmb,status,message\n" + "".join(f"{s},{n},ok,\n" for s, n in PREDICTED.items())
                      + "e,7,ok,\nf,,error,unreadable\n")
    assert main(["evaluate", "--counts", "--truth", str(manifest), "--detections", str(counts), "--json"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["figures"]["n_scans"] == 4
    assert report["figures"]["icc_a1"] == pytest.approx(4 / 5.25)
    assert report["figures"]["kappa"] == pytest.approx(1 / 3)
    assert report["categories"] == ["0", "1", "2-4", ">=5"]
    assert "f" in captured.err  # the failed scan is named, not silently scored
    assert main(["evaluate", "--counts", "--truth", str(manifest), "--detections", str(counts)]) == 0
    text = capsys.readouterr().out
    assert "ICC" in text and "0.762" in text and "-0.25" in text and "rated \\ predicted" in text


def test_evaluate_counts_from_detections_without_counts_csv(tmp_path, capsys):
    truth = tmp_path / "truth.csv"
    truth.write_text("subject,x_mm,y_mm,z_mm\na,,,\nb,1,1,1\nb,9,9,9\n")
    detections = tmp_path / "dets" / "detections.csv"
    detections.parent.mkdir()
    detections.write_text("subject,x_mm,y_mm,z_mm,score\nb,1,1,1,0.9\nb,5,5,5,0.2\n")
    assert main(["evaluate", "--counts", "--truth", str(truth), "--detections", str(detections), "--json",
                 "--score-threshold", "0.5"]) == 0
    per_scan = {r["subject"]: r for r in json.loads(capsys.readouterr().out)["per_scan"]}
    assert (per_scan["a"]["predicted"], per_scan["b"]["rated"], per_scan["b"]["predicted"]) == (0, 2, 1)
