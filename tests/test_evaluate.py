"""Behaviour tests of cmbdet.evaluate: hand-computed matches, FROC, AUC, files in and out."""

from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path

import numpy as np
import pytest

from cmbdet.errors import InputError
from cmbdet.evaluate import (
    FROC_LEVELS,
    PER_SUBJECT_COLUMNS,
    evaluate,
    read_detections,
    read_truth,
    write_per_subject_csv,
)


def lesion(subject: str, x: float, y: float = 0.0, z: float = 0.0, d: float = 2.0) -> dict:
    return {"subject": subject, "x_mm": x, "y_mm": y, "z_mm": z, "diameter_mm": d, "region": "lobar"}


def free(subject: str) -> dict:
    """A NOFINDINGS-style truth row: subject without CMB."""
    return {"subject": subject, "x_mm": "", "y_mm": "", "z_mm": "", "diameter_mm": "", "region": ""}


def det(subject: str, x: float, score: float = 0.9, y: float = 0.0, z: float = 0.0) -> dict:
    return {"subject": subject, "x_mm": x, "y_mm": y, "z_mm": z, "score": score}


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def subject_row(ev, subject):
    return next(r for r in ev.per_subject if r["subject"] == subject)


# ----------------------------------------------------------------------------------- matching


def test_exact_match_is_one_true_positive():
    ev = evaluate([lesion("s1", 10, 20, 30)], [det("s1", 10, y=20, z=30)])
    p = ev.pooled
    assert (p["tp"], p["fp"], p["fn"]) == (1, 0, 0)
    assert p["sensitivity"] == 1.0 and p["precision"] == 1.0 and p["f1"] == 1.0
    assert p["fp_per_subject"] == 0.0 and p["mean_abs_count_error"] == 0.0
    row = ev.per_subject[0]
    assert (row["n_truth"], row["n_detected"], row["count_error"]) == (1, 1, 0)


@pytest.mark.parametrize("diameter, distance, is_tp", [
    (4.0, 4.99, True),    # small lesion: radius 2 + 2 = 4 < 5, so the 5 mm rule applies
    (4.0, 5.0, True),     # "within" is inclusive
    (4.0, 5.01, False),
    (10.0, 6.99, True),   # large lesion: 10/2 + 2 = 7 mm
    (10.0, 7.01, False),
])
def test_match_distance_rule(diameter, distance, is_tp):
    # along a diagonal so all three axes matter
    off = distance / math.sqrt(3)
    ev = evaluate([lesion("s1", 0, 0, 0, d=diameter)], [det("s1", off, y=off, z=-off)])
    assert (ev.pooled["tp"], ev.pooled["fp"], ev.pooled["fn"]) == ((1, 0, 0) if is_tp else (0, 1, 1))


def test_match_distance_parameters_and_missing_diameter():
    truth = [lesion("s1", 0, d=10.0)]
    assert evaluate(truth, [det("s1", 7.5)]).pooled["tp"] == 0
    assert evaluate(truth, [det("s1", 7.5)], margin_mm=3.0).pooled["tp"] == 1      # 5 + 3 = 8 mm
    assert evaluate(truth, [det("s1", 7.5)], min_distance_mm=8.0).pooled["tp"] == 1
    unknown = [{"subject": "s1", "x_mm": 0, "y_mm": 0, "z_mm": 0}]  # no diameter: 5 mm
    assert evaluate(unknown, [det("s1", 5.0)]).pooled["tp"] == 1
    assert evaluate(unknown, [det("s1", 5.5)]).pooled["tp"] == 0


def test_two_detections_on_one_lesion_give_one_tp_one_fp():
    ev = evaluate([lesion("s1", 0)], [det("s1", 3.0, 0.9), det("s1", -1.0, 0.5)])
    row = ev.per_subject[0]
    assert (row["tp"], row["fp"], row["fn"]) == (1, 1, 0)
    assert row["precision"] == 0.5 and row["sensitivity"] == 1.0
    assert row["f1"] == pytest.approx(2 / 3)
    assert row["count_error"] == 1


def test_greedy_closest_first_beats_first_come():
    # A at x=0, B at x=8 (both 5 mm). d1 (first in file) at 3.5: 3.5 from A, 4.5 from B.
    # d2 at -1: 1 from A, 9 from B. First-come would give d1-A and leave d2 unmatched (1 TP);
    # closest first takes d2-A (1 mm) then d1-B (4.5 mm): 2 TP.
    ev = evaluate([lesion("s1", 0), lesion("s1", 8)], [det("s1", 3.5), det("s1", -1.0)])
    assert (ev.pooled["tp"], ev.pooled["fp"], ev.pooled["fn"]) == (2, 0, 0)


def test_distance_ties_go_to_the_higher_score():
    # A at 0, B at 6. a at +2 (2 from A, 4 from B, score .3), b at -2 (2 from A, 8 from B, score .8).
    # Tie at 2 mm goes to b, then a-B: 2 TP. Giving A to a would leave b unmatched (1 TP).
    ev = evaluate([lesion("s1", 0), lesion("s1", 6)], [det("s1", 2.0, 0.3), det("s1", -2.0, 0.8)])
    assert ev.pooled["tp"] == 2


def test_score_threshold_drops_low_scoring_detections():
    truth = [lesion("s1", 0), lesion("s1", 20)]
    dets = [det("s1", 0, 0.9), det("s1", 20, 0.4), det("s1", 50, 0.6)]
    ev = evaluate(truth, dets, score_threshold=0.5)
    assert (ev.pooled["tp"], ev.pooled["fp"], ev.pooled["fn"]) == (1, 1, 1)
    assert ev.per_subject[0]["n_detected"] == 2
    assert ev.settings["score_threshold"] == 0.5


# ------------------------------------------------------------------------ subjects without CMB


def test_cmb_free_subjects_quiet_or_not():
    truth = [lesion("s1", 0), free("quiet"), free("noisy")]
    dets = [det("s1", 0), det("noisy", 5, 0.7), det("noisy", 40, 0.2)]
    ev = evaluate(truth, dets)
    p = ev.pooled
    assert p["n_subjects"] == 3 and p["n_subjects_without_cmb"] == 2 and p["n_subjects_with_cmb"] == 1
    assert p["quiet_rate"] == 0.5
    assert (p["tp"], p["fp"], p["fn"]) == (1, 2, 0)
    assert p["fp_per_subject"] == pytest.approx(2 / 3)
    assert p["mean_abs_count_error"] == pytest.approx((0 + 0 + 2) / 3)
    quiet, noisy = subject_row(ev, "quiet"), subject_row(ev, "noisy")
    assert math.isnan(quiet["sensitivity"]) and math.isnan(quiet["precision"]) and math.isnan(quiet["f1"])
    assert math.isnan(noisy["sensitivity"]) and noisy["precision"] == 0.0 and noisy["f1"] == 0.0
    assert (noisy["fp"], noisy["count_error"]) == (2, 2)


def test_quiet_rate_nan_without_cmb_free_subjects():
    ev = evaluate([lesion("s1", 0)], [det("s1", 0)])
    assert math.isnan(ev.pooled["quiet_rate"])
    assert math.isnan(ev.pooled["subject_auc"])
    assert math.isnan(ev.pooled["subject_balanced_accuracy"])


# -------------------------------------------------------------------------------------- FROC


def test_froc_hand_computed():
    # s1: lesions A (x=0) and B (x=20); detections A .9, FP .8, B .4. s2 (CMB-free): FP .6, FP .3.
    # threshold: .9 -> TP1 FP0 | .8 -> TP1 FP1 | .6 -> TP1 FP2 | .4 -> TP2 FP2 | .3 -> TP2 FP3
    # sens (of 2):   .5          .5             .5              1.0             1.0
    # FP/subject:    0           .5             1               1               1.5
    truth = [lesion("s1", 0), lesion("s1", 20), free("s2")]
    dets = [det("s1", 0, 0.9), det("s1", 50, 0.8), det("s1", 20, 0.4),
            det("s2", 0, 0.6), det("s2", 30, 0.3)]
    ev = evaluate(truth, dets, score_threshold=0.85)  # FROC ignores the operating threshold
    f = ev.froc
    np.testing.assert_allclose(f["thresholds"], [0.9, 0.8, 0.6, 0.4, 0.3])
    np.testing.assert_allclose(f["sensitivity"], [0.5, 0.5, 0.5, 1.0, 1.0])
    np.testing.assert_allclose(f["fp_per_subject"], [0.0, 0.5, 1.0, 1.0, 1.5])
    expected = [0.5, 0.5, 0.5, 1.0, 1.0, 1.0, 1.0]  # at 1/8, 1/4, 1/2, 1, 2, 4, 8 FP/subject
    assert list(f["levels"]) == list(FROC_LEVELS)
    assert f["sensitivities"] == pytest.approx(expected)
    for level, value in zip(FROC_LEVELS, expected, strict=True):
        assert ev.pooled[f"sens_at_{level:g}fp"] == pytest.approx(value)
    assert ev.pooled["froc_mean"] == pytest.approx(5.5 / 7)
    assert {"sens_at_0.125fp", "sens_at_1fp", "sens_at_8fp"} <= set(ev.pooled)
    # the operating point itself did use the threshold
    assert (ev.pooled["tp"], ev.pooled["fp"]) == (1, 0)


def test_froc_unreachable_level_is_zero():
    # The best-scoring detection is a FP: 1 FP/subject before any TP, with 1 subject.
    ev = evaluate([lesion("s1", 0)], [det("s1", 40, 0.9), det("s1", 0, 0.5)])
    assert ev.froc["sensitivities"] == pytest.approx([0, 0, 0, 1, 1, 1, 1])
    assert ev.pooled["froc_mean"] == pytest.approx(4 / 7)


def test_froc_redoes_matching_per_threshold():
    # Same geometry as the greedy test. At threshold .9 only d1 (3.5 mm) exists and matches A;
    # at .5 d2 takes A and d1 moves to B. TP goes 1 -> 2 with no FP.
    ev = evaluate([lesion("s1", 0), lesion("s1", 8)], [det("s1", 3.5, 0.9), det("s1", -1.0, 0.5)])
    np.testing.assert_allclose(ev.froc["sensitivity"], [0.5, 1.0])
    np.testing.assert_allclose(ev.froc["fp_per_subject"], [0.0, 0.0])


def test_froc_nan_without_truth_lesions():
    ev = evaluate([free("s1")], [det("s1", 0, 0.5)])
    assert math.isnan(ev.pooled["froc_mean"]) and math.isnan(ev.pooled["sensitivity"])
    assert ev.pooled["quiet_rate"] == 0.0


# ----------------------------------------------------------------------------- subject level


def test_subject_auc_and_balanced_accuracy_hand_computed():
    # positives (have CMB): scores .9, .5, none (0); negatives: .5, .2.
    # pairs pos > neg: .9>.5 1, .9>.2 1, .5=.5 0.5, .5>.2 1, 0<.5 0, 0<.2 0 -> 3.5 / 6
    truth = [lesion("p1", 0), lesion("p2", 0), lesion("p3", 0), free("n1"), free("n2")]
    dets = [det("p1", 100, 0.9), det("p1", 0, 0.1), det("p2", 0, 0.5), det("n1", 0, 0.5),
            det("n2", 0, 0.2)]
    ev = evaluate(truth, dets, score_threshold=0.3)
    assert ev.pooled["subject_auc"] == pytest.approx(3.5 / 6)
    # at .3: flagged p1, p2 (2/3 sensitivity); n1 flagged, n2 quiet (1/2 specificity)
    assert ev.pooled["subject_sensitivity"] == pytest.approx(2 / 3)
    assert ev.pooled["subject_specificity"] == pytest.approx(0.5)
    assert ev.pooled["subject_balanced_accuracy"] == pytest.approx(7 / 12)
    assert subject_row(ev, "p1")["max_score"] == 0.9
    assert subject_row(ev, "p3")["max_score"] == 0.0


def test_subject_auc_brute_force_on_random_cohort():
    rng = np.random.default_rng(0)
    truth, dets, pos, score = [], [], [], []
    for i in range(40):
        s = f"s{i}"
        has = bool(rng.random() < 0.5)
        truth.append(lesion(s, 0) if has else free(s))
        n = int(rng.integers(0, 3))
        sc = np.round(rng.random(n), 1)  # coarse scores -> ties
        dets += [det(s, 50, float(v)) for v in sc]
        pos.append(has)
        score.append(float(sc.max()) if n else 0.0)
    pos, score = np.array(pos), np.array(score)
    diff = score[pos][:, None] - score[~pos][None, :]
    expected = ((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size
    assert evaluate(truth, dets).pooled["subject_auc"] == pytest.approx(expected)


# ------------------------------------------------------------------------------------- files

TRUTH_HEADER = ["subject", "x_mm", "y_mm", "z_mm", "diameter_mm", "region", "rater"]
DET_HEADER = ["subject", "x_mm", "y_mm", "z_mm", "i", "j", "k", "score", "diameter_mm", "region",
              "stage1_score"]


def write_truth(tmp_path: Path) -> Path:
    return write_csv(tmp_path / "truth.csv", TRUTH_HEADER, [
        ["sub-01", 10.0, -20.0, 5.0, 3.0, "lobar", "A"],
        ["sub-01", 30.0, -20.0, 5.0, 12.0, "deep", "A"],
        ["sub-02", "", "", "", "", "", "A"],      # NOFINDINGS
        ["sub-03", -5.0, 0.0, 0.0, 2.0, "infratentorial", "B"],
    ])


def test_csv_round_trip(tmp_path):
    truth_path = write_truth(tmp_path)
    out = tmp_path / "run"
    out.mkdir()
    det_path = write_csv(out / "detections.csv", DET_HEADER, [
        ["sub-01", 11.0, -20.0, 5.0, 1, 2, 3, 0.95, 3.0, "lobar", 0.5],   # 1 mm from lesion 1: TP
        ["sub-01", 36.5, -20.0, 5.0, 1, 2, 3, 0.70, 3.0, "deep", 0.5],    # 6.5 <= 6+2 from lesion 2: TP
        ["sub-01", 80.0, -20.0, 5.0, 1, 2, 3, 0.40, 3.0, "deep", 0.5],    # FP
        ["sub-03", 0.0, 0.0, 0.0, 1, 2, 3, 0.99, 3.0, "deep", 0.5],       # failed subject: ignored
        ["sub-99", 0.0, 0.0, 0.0, 1, 2, 3, 0.80, 3.0, "deep", 0.5],       # not in truth: ignored
    ])
    write_csv(out / "counts.csv", ["subject", "n_cmb", "n_lobar", "status", "message"], [
        ["sub-01", 3, 1, "ok", ""], ["sub-02", 0, 0, "ok", ""], ["sub-03", 0, 0, "error", "bad affine"],
        ["sub-99", 1, 0, "ok", ""],
    ])
    truth, dets = read_truth(truth_path), read_detections(det_path)
    assert truth.subjects == ["sub-01", "sub-02", "sub-03"] and truth.n_lesions == 3
    ev = evaluate(truth, dets)
    p = ev.pooled
    assert (p["tp"], p["fp"], p["fn"]) == (2, 1, 1)
    assert p["n_subjects"] == 3 and p["n_subjects_error"] == 1 and p["quiet_rate"] == 1.0
    assert p["sensitivity"] == pytest.approx(2 / 3) and p["precision"] == pytest.approx(2 / 3)
    assert p["fp_per_subject"] == pytest.approx(1 / 3)
    assert subject_row(ev, "sub-03")["status"] == "error"
    assert subject_row(ev, "sub-03")["message"] == "bad affine"
    assert (subject_row(ev, "sub-03")["n_detected"], subject_row(ev, "sub-03")["fn"]) == (0, 1)
    assert any("sub-99" in w for w in ev.warnings)
    assert any("sub-03" in w and "bad affine" in w for w in ev.warnings)

    # per-subject CSV, atomically written
    csv_out = tmp_path / "per_subject.csv"
    write_per_subject_csv(ev, csv_out)
    with csv_out.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == PER_SUBJECT_COLUMNS
    assert [r["subject"] for r in rows] == ["sub-01", "sub-02", "sub-03"]
    assert rows[0]["tp"] == "2" and rows[0]["fp"] == "1"
    assert float(rows[0]["precision"]) == pytest.approx(2 / 3)
    assert rows[1]["sensitivity"] == "" and rows[1]["n_detected"] == "0"   # NaN -> empty cell
    assert [f.name for f in tmp_path.iterdir() if f.name.endswith(".tmp")] == []

    # JSON: one object, NaN as null. AUC: positives sub-01 (.95) and failed sub-03 (0) vs sub-02 (0)
    # -> (1 + 0.5) / 2
    data = json.loads(ev.to_json())
    assert data["pooled"]["tp"] == 2 and data["pooled"]["subject_auc"] == pytest.approx(0.75)
    assert data["per_subject"][1]["sensitivity"] is None
    assert data["froc"]["thresholds"] == pytest.approx([0.95, 0.70, 0.40])
    assert data["settings"]["min_distance_mm"] == 5.0

    # records in memory give the same answer as the files
    lines = truth_path.read_text().splitlines()
    ev2 = evaluate(
        [dict(zip(TRUTH_HEADER, r, strict=True)) for r in csv.reader(lines[1:])],
        read_detections(det_path, counts=False),
    )
    assert (ev2.pooled["tp"], ev2.pooled["n_subjects_error"]) == (3, 0)  # without counts sub-03 counts
    text = ev.summary_text()
    assert "sensitivity 0.667" in text and "FROC" in text


def test_empty_detections_file(tmp_path):
    truth = read_truth(write_truth(tmp_path))
    det_path = write_csv(tmp_path / "detections.csv", DET_HEADER, [])
    dets = read_detections(det_path)
    ev = evaluate(truth, dets)
    p = ev.pooled
    assert (p["tp"], p["fp"], p["fn"], p["n_detected"]) == (0, 0, 3, 0)
    assert p["sensitivity"] == 0.0 and math.isnan(p["precision"]) and p["f1"] == 0.0
    assert p["quiet_rate"] == 1.0 and p["froc_mean"] == 0.0
    assert p["subject_auc"] == 0.5           # all subjects scored 0: one big tie
    assert p["mean_abs_count_error"] == pytest.approx(3 / 3)
    assert len(ev.froc["thresholds"]) == 0
    json.loads(ev.to_json())


def test_truth_subject_missing_from_counts_is_not_processed(tmp_path):
    truth = read_truth(write_truth(tmp_path))
    det_path = write_csv(tmp_path / "detections.csv", DET_HEADER, [])
    write_csv(tmp_path / "counts.csv", ["subject", "n_cmb", "status", "message"],
              [["sub-01", 0, "ok", ""], ["sub-02", 0, "ok", ""]])
    ev = evaluate(truth, read_detections(det_path))
    assert subject_row(ev, "sub-03")["status"] == "not_processed"
    assert any("sub-03" in w for w in ev.warnings)
    assert ev.pooled["n_subjects_error"] == 0 and ev.pooled["n_subjects_not_processed"] == 1  # was "1 failed"
    assert "0 failed, 1 not processed" in ev.summary_text()


def test_evaluate_into_a_closed_pipe_and_a_missing_output_folder(tmp_path):
    import subprocess
    import sys

    truth = write_truth(tmp_path)
    det_path = write_csv(tmp_path / "detections.csv", DET_HEADER, [])
    command = [sys.executable, "-m", "cmbdet.cli", "evaluate", "--truth", str(truth), "--detections", str(det_path)]
    run = subprocess.run(f"{' '.join(command)} | head -1", shell=True, capture_output=True, text=True, timeout=300)
    assert "BrokenPipe" not in run.stderr and "error" not in run.stderr  # was "cmbdet: error: BrokenPipeError"
    run = subprocess.run([*command, "--per-subject", str(tmp_path / "nodir" / "ps.csv")], capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 2 and "output folder does not exist" in run.stderr
    assert run.stdout == ""  # refused before the table was printed


def _bad(tmp_path: Path, name: str, text: str | bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return p


@pytest.mark.parametrize("reader", [read_truth, read_detections])
def test_missing_file_and_folder(tmp_path, reader):
    with pytest.raises(InputError, match="nope.csv: file not found"):
        reader(tmp_path / "nope.csv")
    with pytest.raises(InputError, match="folder"):
        reader(tmp_path)


def test_bad_truth_files(tmp_path):
    p = _bad(tmp_path, "t1.csv", "subject,x_mm,diameter_mm\ns1,1,2\n")
    with pytest.raises(InputError, match=r"t1\.csv: missing required column\(s\) y_mm, z_mm"):
        read_truth(p)
    p = _bad(tmp_path, "t2.csv", "subject,x_mm,y_mm,z_mm\ns1,1,2,3\ns1,1,abc,3\n")
    with pytest.raises(InputError, match=r"t2\.csv: line 3: y_mm is not a number \('abc'\)"):
        read_truth(p)
    p = _bad(tmp_path, "t3.csv", "subject,x_mm,y_mm,z_mm\ns1,1,,3\n")
    with pytest.raises(InputError, match=r"t3\.csv: line 2: y_mm empty"):
        read_truth(p)
    p = _bad(tmp_path, "t4.nii.gz", b"\x1f\x8b\x08\x00\xff\xfe\x00\x00binary")
    with pytest.raises(InputError, match=r"t4\.nii\.gz: "):
        read_truth(p)
    p = _bad(tmp_path, "t5.csv", "")
    with pytest.raises(InputError, match=r"t5\.csv: empty file"):
        read_truth(p)
    p = _bad(tmp_path, "t6.csv", "subject,x_mm,y_mm,z_mm\n")
    with pytest.raises(InputError, match=r"t6\.csv: no subjects"):
        read_truth(p)


def test_bad_detection_files(tmp_path):
    p = _bad(tmp_path, "d1.csv", "subject,x_mm,y_mm,z_mm\ns1,1,2,3\n")
    with pytest.raises(InputError, match=r"d1\.csv: missing required column\(s\) score"):
        read_detections(p)
    p = _bad(tmp_path, "d2.csv", "subject,x_mm,y_mm,z_mm,score\ns1,1,2,3,high\n")
    with pytest.raises(InputError, match=r"d2\.csv: line 2: score is not a number"):
        read_detections(p)
    p = _bad(tmp_path, "d3.csv", "subject,x_mm,y_mm,z_mm,score\ns1,1,2,3,\n")
    with pytest.raises(InputError, match=r"d3\.csv: line 2: score is empty"):
        read_detections(p)
    sub = tmp_path / "sub"
    sub.mkdir()
    p = _bad(sub, "detections.csv", "subject,x_mm,y_mm,z_mm,score\n")
    _bad(sub, "counts.csv", "n_cmb,status\n1,ok\n")
    with pytest.raises(InputError, match=r"counts\.csv: missing required column\(s\) subject"):
        read_detections(p)


def test_many_subjects_is_fast():
    rng = np.random.default_rng(1)
    truth, dets = [], []
    for i in range(500):
        s = f"s{i}"
        centres = rng.uniform(-60, 60, size=(int(rng.integers(0, 6)), 3))
        truth += [lesion(s, *c, d=float(rng.uniform(2, 10))) for c in centres] or [free(s)]
        near = np.empty((0, 3))
        if len(centres):  # 10 detections near lesions, the rest anywhere
            near = centres[rng.integers(0, len(centres), 10)] + rng.normal(0, 3, (10, 3))
        pts = np.vstack([near, rng.uniform(-60, 60, size=(30 - len(near), 3))])
        dets += [det(s, x, score=float(rng.random()), y=y, z=z) for x, y, z in pts]
    t0 = time.perf_counter()
    ev = evaluate(truth, dets)
    assert time.perf_counter() - t0 < 2.0
    assert ev.pooled["n_detected"] == 15000 and len(ev.froc["thresholds"]) > 10000
    # the last FROC point (all detections) is the threshold-0 operating point
    assert ev.froc["sensitivity"][-1] == pytest.approx(ev.pooled["sensitivity"])
    assert ev.froc["fp_per_subject"][-1] == pytest.approx(ev.pooled["fp_per_subject"])


def test_truth_session_column_joins_the_subject_id_and_no_shared_subject_is_an_error(tmp_path, capsys):
    from cmbdet.cli import main

    # the CT/MRI lesion phantoms' truth: subject and session in two columns; lesions ids join them
    truth = write_csv(tmp_path / "truth.csv", ["subject", "session", "x_mm", "y_mm", "z_mm"],
                      [["sub-01", "baseline", 10.0, -20.0, 5.0], ["sub-02", "ses-baseline", "", "", ""]])
    assert read_truth(truth).subjects == ["sub-01_ses-baseline", "sub-02_ses-baseline"]
    (tmp_path / "run").mkdir()
    (tmp_path / "other").mkdir()
    found = write_csv(tmp_path / "run" / "detections.csv", ["subject", "x_mm", "y_mm", "z_mm", "score"],
                      [["sub-01_ses-baseline", 10.5, -20.0, 5.0, 0.9]])
    assert main(["evaluate", "--truth", str(truth), "--detections", str(found), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["pooled"]["tp"] == 1
    other = write_csv(tmp_path / "other" / "detections.csv", ["subject", "x_mm", "y_mm", "z_mm", "score"],
                      [["patient7", 10.5, -20.0, 5.0, 0.9]])
    assert main(["evaluate", "--truth", str(truth), "--detections", str(other)]) == 2
    err = capsys.readouterr().err
    assert "none of its 1 subject(s)" in err and "'patient7'" in err and len(err.strip().splitlines()) == 1
