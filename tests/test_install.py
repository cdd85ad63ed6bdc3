"""Installable anywhere: the wheel carries the shipped weights and runs from another folder;
``python -m cmbdet`` is the CLI; a run writes nothing under HOME."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample_swi.nii.gz"


def _clean_env(home: Path) -> dict[str, str]:
    """The environment of a user with an empty home (no PYTHONPATH, no cache/config folders set)."""
    drop = ("PYTHONPATH", "MPLCONFIGDIR", "XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME", "YOLO_CONFIG_DIR")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(HOME=str(home), OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"))
    return env


def _n_cmb(counts: Path) -> int:
    with open(counts, newline="") as handle:
        return int(next(csv.DictReader(handle))["n_cmb"])


def test_python_m_cmbdet_runs_detect_and_leaves_an_empty_home_empty(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = _clean_env(home)
    env["PYTHONPATH"] = str(ROOT)
    run = subprocess.run([sys.executable, "-m", "cmbdet", "--version"], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.startswith("cmbdet "), run.stderr
    run = subprocess.run([sys.executable, "-m", "cmbdet", "detect", str(SAMPLE), "-o", "out", "--quiet"],
                         env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert _n_cmb(tmp_path / "out" / "counts.csv") >= 4
    assert sorted(str(p.relative_to(home)) for p in home.rglob("*")) == []


@pytest.mark.slow
def test_wheel_carries_the_weights_and_detects_from_another_folder(tmp_path):
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".ruff_cache", ".venv", "venv", "data"))
    dist = tmp_path / "dist"
    # --no-build-isolation: build with this environment's setuptools (nothing is downloaded).
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
                    "--no-index", "-w", str(dist), "-q"], check=True, capture_output=True, timeout=300)
    wheel = next(dist.glob("cmbdet-*.whl"))
    venv = tmp_path / "venv"
    # --system-site-packages: torch and the other dependencies come from this environment.
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    # --ignore-installed: an editable cmbdet in the system site-packages must not satisfy the install.
    subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed", "-q",
                    str(wheel)], check=True, capture_output=True, timeout=300)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    home = tmp_path / "home"
    home.mkdir()
    env = _clean_env(home)
    where = subprocess.run([str(python), "-c", "import cmbdet.weights as w; print(w.SHIPPED_WEIGHTS_DIR)"],
                           env=env, cwd=elsewhere, capture_output=True, text=True, check=True, timeout=120)
    weights = Path(where.stdout.strip())
    assert weights.is_relative_to(venv) and (weights / "proposer.safetensors").is_file(), weights
    assert (weights / "reclassifier.safetensors").is_file()
    shutil.copyfile(SAMPLE, elsewhere / "scan.nii.gz")
    run = subprocess.run([str(venv / "bin" / "cmbdet"), "detect", "scan.nii.gz", "-o", "out", "--quiet"],
                         env=env, cwd=elsewhere, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert _n_cmb(elsewhere / "out" / "counts.csv") >= 4
    assert not list(home.rglob("*"))
