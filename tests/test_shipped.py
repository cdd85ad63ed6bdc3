"""The shipped weights on the shipped sample, through the README's command: finds its microbleeds."""

from __future__ import annotations

import json
from pathlib import Path

from cmbdet.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_detector_finds_the_sample_microbleeds(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["detect", str(ROOT / "data" / "sample_swi.nii.gz"), "-o", str(out)]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--truth", str(ROOT / "data" / "sample_truth.csv"), "--detections",
                 str(out / "detections.csv"), "--json"]) == 0
    pooled = json.loads(capsys.readouterr().out)["pooled"]
    assert pooled["tp"] >= 5 and pooled["fp"] <= 1, pooled  # 6 CMBs in the sample; 6 found, 0 FP when shipped
    run = json.loads((out / "run.json").read_text())
    assert run["stage2"] is True and run["threshold"] > 0
