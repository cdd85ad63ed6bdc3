"""Cohort runs that survive real life: rerun/resume, kill -9, other settings, rescore, worker processes
and Ray give the same files."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from cmbdet.batch import collect_inputs, run_batch
from cmbdet.cli import main
from cmbdet.pipeline import DetectJob
from tests.conftest import ellipsoid_head

ROOT = Path(__file__).resolve().parents[1]


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _cohort(folder: Path, n: int) -> Path:
    """``n`` small scans on alternating grids, with distinct noise (distinct SHA-256)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        affine = np.diag([3.5, 3.5, 5.0, 1.0])
        affine[:3, 3] = (-84, -98, -60)
        if i % 2:
            affine = np.array([[-4.0, 0, 0, 96], [0, -3.5, 0, 98], [0, 0, 5.0, -60], [0, 0, 0, 1]])
        nib.save(nib.Nifti1Image(ellipsoid_head(affine, seed=i), affine), folder / f"sub-{i:02d}_swi.nii.gz")
    return folder


def _record_times(out: Path) -> dict[str, int]:
    return {p.parent.name: p.stat().st_mtime_ns for p in out.glob("*/*_cmb-record.json")}


def test_rerun_skips_finished_subjects_retries_failures_and_redoes_a_changed_input(tmp_path, random_weights):
    scans = _cohort(tmp_path / "scans", 3)
    (scans / "sub-09_swi.nii.gz").write_bytes(b"not a scan")
    job = DetectJob(random_weights, pictures=False)
    out = tmp_path / "out"
    first = run_batch(job, collect_inputs([scans]).subjects, out)
    assert [r.status for r in first.records] == ["ok", "ok", "ok", "error"]
    tables = {name: (out / name).read_text() for name in ("detections.csv", "counts.csv")}
    times = _record_times(out)

    again = run_batch(job, collect_inputs([scans]).subjects, out)
    assert again.skipped_done == 3
    after = _record_times(out)
    assert {s: after[s] == times[s] for s in times} == {"sub-00": True, "sub-01": True, "sub-02": True,
                                                        "sub-09": False}  # the failure was retried
    assert {name: (out / name).read_text() for name in tables} == tables

    affine = np.diag([3.0, 3.0, 5.0, 1.0])
    nib.save(nib.Nifti1Image(ellipsoid_head(affine, seed=42), affine), scans / "sub-01_swi.nii.gz")
    third = run_batch(job, collect_inputs([scans]).subjects, out)
    assert third.skipped_done == 2
    assert _record_times(out)["sub-01"] != times["sub-01"]
    counts = _rows(out / "counts.csv")
    assert [r["subject"] for r in counts] == ["sub-00", "sub-01", "sub-02", "sub-09"]
    record = json.loads((out / "sub-01" / "sub-01_cmb-record.json").read_text())
    detections = [r for r in _rows(out / "detections.csv") if r["subject"] == "sub-01"]
    assert len(detections) == int(counts[1]["n_cmb"]) == len(record["rows"])


def test_a_redone_subject_keeps_nothing_of_the_earlier_run(tmp_path, random_weights):
    scans = _cohort(tmp_path / "scans", 1)
    out = tmp_path / "out"
    run_batch(DetectJob(random_weights, threshold=0.0), collect_inputs([scans]).subjects, out)
    picture = out / "sub-00" / "sub-00_review.png"
    assert picture.is_file()
    affine = np.diag([3.0, 3.0, 5.0, 1.0])
    nib.save(nib.Nifti1Image(ellipsoid_head(affine, seed=7), affine), scans / "sub-00_swi.nii.gz")
    redone = run_batch(DetectJob(random_weights, threshold=0.0, pictures=False), collect_inputs([scans]).subjects,
                       out)
    assert [r.status for r in redone.records] == ["ok"]
    assert not picture.exists(), "the earlier run's picture of another input is gone"


def test_other_settings_are_refused_in_one_line_unless_overwrite(tmp_path, random_weights, capsys):
    scans = _cohort(tmp_path / "scans", 2)
    out = tmp_path / "out"
    base = ["detect", str(scans), "-o", str(out), "--weights", str(random_weights), "--no-pictures", "--quiet"]
    assert main(base) == 0
    capsys.readouterr()
    assert main([*base, "--threshold", "0.5"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "threshold 0.0 there, 0.5 now" in lines[0] and "--overwrite" in lines[0], lines
    assert main([*base, "--echo", "last"]) == 2
    assert "echo auto there, last now" in capsys.readouterr().err
    assert main([*base, "--threshold", "0.5", "--overwrite"]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["threshold"] == 0.5
    records = [json.loads(p.read_text()) for p in out.glob("*/*_cmb-record.json")]
    assert len({r["settings_id"] for r in records}) == 1 and records[0]["settings_id"] == run["settings_id"]
    assert all(float(r["score"]) >= 0.5 for r in _rows(out / "detections.csv"))


def test_a_subject_folder_made_with_other_settings_is_never_mixed_in(tmp_path, random_weights):
    scans = _cohort(tmp_path / "scans", 3)
    out = tmp_path / "out"
    subjects = collect_inputs([scans]).subjects
    run_batch(DetectJob(random_weights, threshold=0.3, pictures=False), subjects[:1], tmp_path / "elsewhere")
    run_batch(DetectJob(random_weights, pictures=False), subjects[1:], out)
    (tmp_path / "elsewhere" / "sub-00").rename(out / "sub-00")  # a folder from a run at another threshold
    with pytest.warns(UserWarning, match="other settings are left out"):
        result = run_batch(DetectJob(random_weights, pictures=False), subjects[1:], out)
    assert result.left_out == ["sub-00"]
    assert [r["subject"] for r in _rows(out / "counts.csv")] == ["sub-01", "sub-02"]
    result = run_batch(DetectJob(random_weights, pictures=False), subjects, out)
    assert result.skipped_done == 2  # sub-00 is in this run: redone with this run's settings
    assert [r["subject"] for r in _rows(out / "counts.csv")] == ["sub-00", "sub-01", "sub-02"]
    # --overwrite redoes this run's subjects and keeps the others made with the same settings.
    result = run_batch(DetectJob(random_weights, pictures=False), subjects[1:], out, overwrite=True)
    assert result.skipped_done == 0 and len(result.records) == 2
    assert [r["subject"] for r in _rows(out / "counts.csv")] == ["sub-00", "sub-01", "sub-02"]


def test_kill_9_mid_batch_then_rerun_finishes_the_rest_each_subject_once(tmp_path, random_weights):
    scans = _cohort(tmp_path / "scans", 8)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "cmbdet", "detect", str(scans), "-o", str(out), "--weights",
               str(random_weights), "--quiet"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while len(_record_times(out)) < 3 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done_before = _record_times(out)
    assert 3 <= len(done_before) < 8, f"killed too late to test resuming ({len(done_before)} done)"
    (out / "sub-07").mkdir(exist_ok=True)
    (out / "sub-07" / ".sub-07_review.png.cmbdet-tmp-k1ll3d.png").write_bytes(b"half a picture")

    assert main(command[3:]) == 0
    assert not list(out.glob("**/.*")), "temp files of the killed run are cleaned up"
    after = _record_times(out)
    assert all(after[s] == done_before[s] for s in done_before), "finished subjects are not redone"
    counts = _rows(out / "counts.csv")
    assert [r["subject"] for r in counts] == [f"sub-{i:02d}" for i in range(8)]
    detections = _rows(out / "detections.csv")
    for row in counts:
        assert sum(r["subject"] == row["subject"] for r in detections) == int(row["n_cmb"])
    keys = [(r["subject"], r["x_mm"], r["y_mm"], r["z_mm"]) for r in detections]
    assert len(keys) == len(set(keys))


def test_rescore_without_the_scans_equals_a_fresh_run_at_that_threshold(tmp_path, random_weights):
    scans = _cohort(tmp_path / "scans", 2)
    low, fresh = tmp_path / "low", tmp_path / "fresh"
    assert main(["detect", str(scans), "-o", str(low), "--weights", str(random_weights), "--quiet"]) == 0
    scores = sorted(float(r["score"]) for r in _rows(low / "detections.csv"))
    threshold = round(scores[len(scores) // 2], 4)
    assert main(["detect", str(scans), "-o", str(fresh), "--weights", str(random_weights), "--quiet",
                 "--threshold", str(threshold)]) == 0
    for scan in scans.iterdir():
        scan.unlink()
    for picture in low.glob("*/*_review.png"):
        picture.unlink()
    assert main(["rescore", str(low), "--threshold", str(threshold)]) == 0
    for name in ("detections.csv", "counts.csv"):
        assert (low / name).read_text() == (fresh / name).read_text(), name
    for subject in ("sub-00", "sub-01"):
        a = nib.load(low / subject / f"{subject}_desc-cmb_dseg.nii.gz")
        b = nib.load(fresh / subject / f"{subject}_desc-cmb_dseg.nii.gz")
        np.testing.assert_array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj))
        np.testing.assert_allclose(a.affine, b.affine)
        assert (low / subject / f"{subject}_cmb.mrk.json").read_text() == \
            (fresh / subject / f"{subject}_cmb.mrk.json").read_text()
        # The picture was deleted before rescoring: redrawn from the views kept with the candidates.
        assert (low / subject / f"{subject}_review.png").stat().st_size > 1000
    assert json.loads((low / "run.json").read_text())["threshold"] == threshold


def test_worker_processes_write_the_same_tables_as_one_process(tmp_path, random_weights):
    scans = _cohort(tmp_path / "scans", 3)
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["detect", str(scans), "-o", str(one), "--weights", str(random_weights), "--quiet"]) == 0
    assert main(["detect", str(scans), "-o", str(two), "--weights", str(random_weights), "--quiet",
                 "--workers", "2"]) == 0
    for name in ("detections.csv", "counts.csv"):
        assert (one / name).read_text() == (two / name).read_text(), name


def test_ray_on_a_local_instance_gives_the_same_detections(tmp_path, random_weights):
    pytest.importorskip("ray", reason="ray is not installed (optional extra: pip install 'cmbdet[ray]')")
    scans = _cohort(tmp_path / "scans", 3)
    local, distributed = tmp_path / "local", tmp_path / "ray"
    subjects = collect_inputs([scans]).subjects
    run_batch(DetectJob(random_weights, pictures=False), subjects, local)
    result = run_batch(DetectJob(random_weights, pictures=False), subjects, distributed, use_ray=True, workers=2)
    assert [r.status for r in result.records] == ["ok"] * 3
    for name in ("detections.csv", "counts.csv"):
        assert (local / name).read_text() == (distributed / name).read_text(), name


def test_progress_is_plain_lines_in_a_log_a_bar_on_a_terminal_and_nothing_when_quiet(tmp_path, random_weights,
                                                                                      capsys):
    import io

    from cmbdet.batch import SubjectRecord, progress_printer

    scans = _cohort(tmp_path / "scans", 2)
    base = ["detect", str(scans), "--weights", str(random_weights), "--no-pictures"]
    assert main([*base, "-o", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err
    assert "[1/2] sub-00: " in err and "[2/2] sub-01: " in err and "ETA 0:00:00" in err, err
    assert main([*base, "-o", str(tmp_path / "b"), "--quiet"]) == 0
    assert capsys.readouterr().err == ""

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    update, close = progress_printer(3, stream=terminal)
    for n, status in enumerate(("ok", "error", "ok"), start=1):
        update(SubjectRecord(f"s{n}", [], None, "", status, message="broken.nii: no such file"), n, 3)
    close()
    shown = terminal.getvalue()
    assert "3/3" in shown and "100%" in shown and "s2: ERROR: broken.nii: no such file" in shown
    assert "s1:" not in shown  # an ok subject is only counted on the bar by default
    terminal = Terminal()  # detect's choice: ok subjects with a note are printed above the bar too
    update, close = progress_printer(2, stream=terminal, noteworthy=lambda r: r.status != "ok" or bool(r.message))
    update(SubjectRecord("s1", [], None, "", "ok", message=""), 1, 2)
    update(SubjectRecord("s2", [], None, "", "ok", message="header has neither sform nor qform"), 2, 2)
    close()
    shown = terminal.getvalue()
    assert "s1:" not in shown and "s2: ok" in shown


def test_per_echo_files_of_one_subject_run_as_one_scan(tmp_path, random_weights):
    scans = tmp_path / "scans"
    scans.mkdir()
    affine = np.diag([3.5, 3.5, 5.0, 1.0])
    affine[:3, 3] = (-84, -98, -60)
    for echo, decay in ((1, 1.0), (2, 0.7), (3, 0.5)):
        image = nib.Nifti1Image(ellipsoid_head(affine, seed=3) * decay, affine)
        nib.save(image, scans / f"sub-05_ses-1_echo-{echo}_part-mag_GRE.nii.gz")
        nib.save(image, scans / f"series7_e{echo}.nii.gz")
    out = tmp_path / "out"
    assert main(["detect", str(scans), "-o", str(out), "--weights", str(random_weights), "--quiet"]) == 0
    counts = {r["subject"]: r for r in _rows(out / "counts.csv")}
    assert sorted(counts) == ["series7", "sub-05_ses-1"]
    for row in counts.values():
        assert row["status"] == "ok" and "3 echoes" in row["message"], row
        assert row["input"].count(";") == 2
    labels = nib.load(out / "sub-05_ses-1" / "sub-05_ses-1_desc-cmb_dseg.nii.gz")
    assert labels.shape == (48, 56, 24)


def test_ray_missing_is_one_line_and_leaves_no_outdir(tmp_path, random_weights, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    scans = _cohort(tmp_path / "scans", 1)
    out = tmp_path / "out"
    assert main(["detect", str(scans), "-o", str(out), "--weights", str(random_weights), "--ray", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "pip install 'cmbdet[ray]'" in err and len(err.splitlines()) == 1
    assert not out.exists()
