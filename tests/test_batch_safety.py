"""The batch runner never does harm behind the user's back: worker processes die with the run that
started them (kill -9, SIGTERM), --overwrite never deletes subjects that are not in the run, and
same-named echo files in two folders are two patients, not one scan."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from cmbdet.batch import collect_inputs
from cmbdet.cli import main
from cmbdet.errors import InputError
from tests.conftest import ellipsoid_head

ROOT = Path(__file__).resolve().parents[1]


def _cohort(folder: Path, n: int) -> Path:
    """``n`` small scans with distinct noise."""
    folder.mkdir(parents=True, exist_ok=True)
    affine = np.diag([3.5, 3.5, 5.0, 1.0])
    affine[:3, 3] = (-84, -98, -60)
    for i in range(n):
        nib.save(nib.Nifti1Image(ellipsoid_head(affine, seed=i), affine), folder / f"sub-{i:02d}_swi.nii.gz")
    return folder


def _records(out: Path) -> list[Path]:
    return sorted(out.glob("*/*_cmb-record.json"))


def _workers_of(pid: int) -> list[int]:
    """The multiprocessing spawn workers among the children of process ``pid`` (Linux /proc)."""
    children = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with open(task / "children") as handle:
            children.extend(int(c) for c in handle.read().split())
    return [c for c in children if b"spawn_main" in _cmdline(c)]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _alive(pid: int) -> bool:
    """Running (a zombie, dead but not yet reaped, does not count)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _start_and_signal(tmp_path: Path, random_weights: Path, signum: int) -> tuple[subprocess.Popen, list[int], Path]:
    """Start ``detect --workers 2`` on 8 tiny scans, send ``signum`` to it once the first subject's record
    exists; (the process, its worker pids read before the signal, OUTDIR)."""
    scans = _cohort(tmp_path / "scans", 8)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "cmbdet", "detect", str(scans), "-o", str(out), "--weights", str(random_weights),
               "--no-pictures", "--device", "cpu", "--workers", "2", "--quiet"]
    process = subprocess.Popen(command, env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not _records(out) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    workers = _workers_of(process.pid)
    process.send_signal(signum)
    process.wait(30)
    assert len(workers) == 2, f"expected 2 worker processes, found {workers}"
    assert len(_records(out)) < 8, "the run finished before the signal: nothing tested"
    return process, workers, out


def _gone_within(pids: list[int], seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return [p for p in pids if _alive(p)]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads worker pids from /proc")
def test_kill_9_of_a_run_with_workers_leaves_no_worker_behind(tmp_path, random_weights):
    process, workers, out = _start_and_signal(tmp_path, random_weights, signal.SIGKILL)
    records_at_kill = _records(out)
    try:
        survivors = _gone_within(workers, 5.0)
        assert not survivors, f"worker processes {survivors} outlived the killed run"
        time.sleep(1.0)
        assert _records(out) == records_at_kill, "a worker wrote a subject after the run was killed"
    finally:
        for pid in workers:  # the old code's orphans: do not leave them hanging on the machine
            if _alive(pid) and b"spawn_main" in _cmdline(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads worker pids from /proc")
def test_sigterm_stops_the_workers_with_one_line_and_a_non_zero_exit(tmp_path, random_weights):
    process, workers, out = _start_and_signal(tmp_path, random_weights, signal.SIGTERM)
    try:
        assert process.returncode == 128 + signal.SIGTERM, process.returncode  # an exit, not a death by signal
        lines = [line for line in process.stderr.read().splitlines() if line.strip()]
        assert len(lines) == 1 and "SIGTERM" in lines[0] and "worker" in lines[0], lines
        assert not _gone_within(workers, 5.0), "worker processes outlived the terminated run"
    finally:
        for pid in workers:
            if _alive(pid) and b"spawn_main" in _cmdline(pid):
                os.kill(pid, signal.SIGKILL)


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_overwrite_on_some_subjects_never_deletes_the_others(tmp_path, random_weights, capsys):
    scans = _cohort(tmp_path / "scans", 3)
    out = tmp_path / "out"
    options = ["-o", str(out), "--weights", str(random_weights), "--no-pictures", "--device", "cpu", "--quiet"]
    assert main(["detect", str(scans), *options]) == 0
    before = {p.parent.name: p.read_text() for p in _records(out)}
    assert sorted(before) == ["sub-00", "sub-01", "sub-02"]
    capsys.readouterr()

    one = scans / "sub-00_swi.nii.gz"
    assert main(["detect", str(one), *options, "--threshold", "0.3", "--overwrite"]) == 0
    after = {p.parent.name: p.read_text() for p in _records(out)}
    assert sorted(after) == ["sub-00", "sub-01", "sub-02"], "subjects not in the run were deleted"
    assert after["sub-01"] == before["sub-01"] and after["sub-02"] == before["sub-02"]
    assert after["sub-00"] != before["sub-00"], "the subject of this run is redone"
    assert [r["subject"] for r in _rows(out / "counts.csv")] == ["sub-00"], "other settings are never mixed in"
    warned = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warned) == 1 and "2 subject folder(s) made with other settings are left out" in warned[0], warned


def test_same_named_echo_files_in_two_folders_are_two_scans_refused_as_one_id(tmp_path, random_weights, capsys):
    root = tmp_path / "x"
    e1, e2 = root / "x1" / "scanZ_e1.nii.gz", root / "x2" / "scanZ_e2.nii.gz"
    for path in (e1, e2):
        path.parent.mkdir(parents=True)
        path.write_bytes(b"x")
    with pytest.raises(InputError, match="given twice"):
        collect_inputs([root])
    with pytest.raises(InputError, match="given twice"):  # BIDS echo names the same way
        collect_inputs([_moved(e1, root / "x1" / "sub-01_echo-1_MEGRE.nii.gz"),
                        _moved(e2, root / "x2" / "sub-01_echo-2_MEGRE.nii.gz")])
    _moved(root / "x1" / "sub-01_echo-1_MEGRE.nii.gz", e1)
    _moved(root / "x2" / "sub-01_echo-2_MEGRE.nii.gz", e2)
    out = tmp_path / "out"
    assert main(["detect", str(root), "-o", str(out), "--weights", str(random_weights), "--no-pictures"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and str(e1) in lines[0] and str(e2) in lines[0], lines
    assert not out.exists()
    # In one folder they are still the echoes of one scan.
    (root / "x2" / e2.name).rename(root / "x1" / e2.name)
    assert [(s.subject, [p.name for p in s.paths]) for s in collect_inputs([root]).subjects] == \
        [("scanZ", ["scanZ_e1.nii.gz", "scanZ_e2.nii.gz"])]


def _moved(source: Path, target: Path) -> Path:
    source.rename(target)
    return target
