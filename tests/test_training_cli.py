"""`cmbdet phantom` -> `train proposer` -> `train reclassifier` -> `detect` -> `evaluate`, as a user
would chain them (tiny phantoms, a few steps: this checks the path, not the accuracy)."""

from __future__ import annotations

import csv
import json

import pytest

from cmbdet.cli import main
from cmbdet.weights import load_state


@pytest.fixture(scope="module")
def tiny_phantoms(tmp_path_factory):
    folder = tmp_path_factory.mktemp("phantoms")
    assert main(["phantom", "-o", str(folder), "-n", "5", "--seed", "11", "--tiny", "--no-montage"]) == 0
    return folder


@pytest.fixture(scope="module")
def tiny_validation(tmp_path_factory):
    folder = tmp_path_factory.mktemp("validation")
    assert main(["phantom", "-o", str(folder), "-n", "2", "--seed", "12", "--tiny", "--no-montage"]) == 0
    return folder


def test_train_both_stages_then_detect_and_evaluate(tiny_phantoms, tiny_validation, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # --workdir below is relative
    weights = tmp_path / "weights"
    assert main(["train", "proposer", "--data", str(tiny_phantoms), "-o", str(weights / "proposer.safetensors"),
                 "--steps", "4", "--batch-size", "2", "--seed", "3", "--spacing-mm", "2", "--width", "4"]) == 0
    _, meta = load_state(weights / "proposer.safetensors")
    assert meta["kind"] == "proposer" and meta["steps"] == 4 and meta["seed"] == 3 and meta["spacing_mm"] == 2
    assert meta["width"] == 4  # --width builds a network of that width (detect reads it from the metadata)
    assert 0.0 <= meta["val_recall_at_max_candidates"] <= 1.0  # held-out scans were scored
    # fine-tuning from those weights keeps their working grid and records the earlier round; with
    # --hard-negatives the first weights' own false candidates are mined on the training scans first
    capsys.readouterr()
    assert main(["train", "proposer", "--data", str(tiny_phantoms), "-o", str(tmp_path / "tuned.safetensors"),
                 "--init", str(weights / "proposer.safetensors"), "--steps", "2", "--batch-size", "2",
                 "--val", str(tiny_validation), "--hard-negatives", "0.25"]) == 0
    assert "mined hard negatives on 5/5 scans" in capsys.readouterr().err
    _, tuned = load_state(tmp_path / "tuned.safetensors")
    assert tuned["spacing_mm"] == 2 and tuned["history"][0]["steps"] == 4 and tuned["width"] == 4
    assert tuned["hard_negative_fraction"] == 0.25 and tuned["hard_negatives_mined"] > 0
    assert tuned["train_subjects"] == 5 and tuned["val_scans"] == 2  # a separate validation set: no split
    assert main(["train", "reclassifier", "--data", str(tiny_phantoms), "--proposer",
                 str(weights / "proposer.safetensors"), "-o", str(weights / "reclassifier.safetensors"),
                 "--epochs", "1", "--batch-size", "8", "--seed", "3", "--val", str(tiny_validation),
                 "--workdir", "stage2_work"]) == 0
    # the ultralytics run is kept in the relative --workdir (it went under ultralytics' own runs folder, in $HOME)
    assert list((tmp_path / "stage2_work").rglob("results.csv")) and (tmp_path / "stage2_work" / "patches").is_dir()
    _, meta = load_state(weights / "reclassifier.safetensors")
    assert meta["kind"] == "reclassifier" and meta["yaml"]["nc"] == 2
    assert 0.0 < meta["threshold"] < 1.0 and 0.0 <= meta["stage1_weight"] < 1.0
    assert meta["train_scans"] == 5 and meta["val_scans"] == 2
    assert meta["shape_features"] and 0.0 <= meta["shape_weight"] <= 1.0, "the shape model is trained beside YOLO"
    assert 0 < meta["max_candidates"] <= 60

    out = tmp_path / "out"
    code = main(["detect", str(tiny_phantoms), "-o", str(out), "--weights", str(weights), "--threshold", "0",
                 "--no-pictures"])
    assert code == 0
    with open(out / "detections.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows, "threshold 0 keeps every candidate"
    assert {"stage1_score", "stage2_score", "yolo_score", "shape_score"} <= set(rows[0])
    from cmbdet.reclassifier.infer import final_score

    for r in rows:  # the final score combines both stages as the weights say
        expected = final_score(float(r["stage1_score"]), float(r["stage2_score"]), meta["stage1_weight"])
        assert float(r["score"]) == pytest.approx(float(expected), abs=2e-4)
    capsys.readouterr()
    assert main(["evaluate", "--truth", str(tiny_phantoms / "truth.csv"), "--detections",
                 str(out / "detections.csv"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["pooled"]["n_subjects"] == 5
    assert result["pooled"]["n_subjects_error"] == 0


def test_hard_negatives_need_the_weights_that_mine_them(tiny_phantoms, tmp_path, capsys):
    out = tmp_path / "p.safetensors"
    assert main(["train", "proposer", "--data", str(tiny_phantoms), "-o", str(out), "--hard-negatives", "0.25"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--init" in err and "Traceback" not in err and len(err.splitlines()) == 1
    assert not out.exists()
    assert main(["train", "proposer", "--data", str(tiny_phantoms), "-o", str(out), "--hard-negatives", "-0.1"]) == 2
    assert "[0, 0.5]" in capsys.readouterr().err
    # a width only for a new network: fine-tuned weights keep theirs
    assert main(["train", "proposer", "--data", str(tiny_phantoms), "-o", str(out), "--width", "16",
                 "--init", str(out)]) == 2
    assert "--width" in capsys.readouterr().err and not out.exists()
    with pytest.raises(SystemExit) as info:  # refused by the argument parser, with the usage message
        main(["train", "proposer", "--data", str(tiny_phantoms), "-o", str(out), "--width", "0"])
    assert info.value.code == 2 and "--width: 0 is outside [2, 64]" in capsys.readouterr().err


def test_hold_out_splits_by_subject_and_honours_zero():
    import numpy as np

    from cmbdet.training_data import hold_out

    scans = list(range(20))
    train, val = hold_out(scans, 0.15, np.random.default_rng(0))
    assert len(val) == 3 and sorted(train + val) == scans
    train, val = hold_out(scans, 0.0, np.random.default_rng(0))
    assert sorted(train) == scans and val == []
    assert len(hold_out(scans[:2], 0.15, np.random.default_rng(0))[1]) == 1


@pytest.mark.parametrize("argv, option", [
    (["train", "proposer", "--steps", "0"], "--steps"),
    (["train", "proposer", "--val-fraction", "1.5"], "--val-fraction"),
    (["train", "proposer", "--lr", "nan"], "--lr"),
    (["train", "reclassifier", "--epochs", "0"], "--epochs"),
    (["train", "reclassifier", "--max-candidates", "0"], "--max-candidates"),
    (["evaluate", "--truth", "t.csv", "--detections", "d.csv", "--score-threshold", "2"], "--score-threshold"),
    (["evaluate", "--truth", "t.csv", "--detections", "d.csv", "--min-distance-mm", "-5"], "--min-distance-mm"),
    (["phantom", "-o", "x", "--insert-into", "s.nii", "--cmb-per-copy", "0"], "--cmb-per-copy"),
    (["detect", "s.nii", "--workers", "0"], "--workers"),
])
def test_impossible_settings_are_refused_before_any_work(argv, option, tmp_path, capsys, monkeypatch):
    """Each was accepted and failed late with an internal error (--steps 0 after preparing every scan), or ran
    and gave nonsense (--max-candidates 0 weights that never detect; a match distance of -5 mm)."""
    monkeypatch.chdir(tmp_path)
    if argv[0] == "train":
        argv = [*argv, "--data", str(tmp_path), "-o", str(tmp_path / "w.safetensors")]
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert option in err and "outside" in err
    assert not list(tmp_path.iterdir())  # nothing written


def test_training_refuses_data_it_cannot_learn_from_and_an_output_it_cannot_write(tiny_phantoms, tmp_path, capsys):
    import shutil

    # an output path under a file: refused before training (it failed with FileExistsError after it)
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert main(["train", "proposer", "--data", str(tiny_phantoms), "-o", str(blocker / "p.safetensors"),
                 "--steps", "1"]) == 2
    assert "is a file" in capsys.readouterr().err
    # a truth table with only empty rows (clean scans): nothing to learn (weights with NaN figures were written)
    clean = tmp_path / "clean"
    shutil.copytree(tiny_phantoms, clean)
    subjects = sorted({r["subject"] for r in csv.DictReader(open(clean / "truth.csv"))})
    (clean / "truth.csv").write_text("subject,x_mm,y_mm,z_mm,diameter_mm\n" + "".join(f"{s},,,,\n" for s in subjects))
    for stage in ("proposer", "reclassifier"):
        assert main(["train", stage, "--data", str(clean), "-o", str(tmp_path / f"{stage}.safetensors")]) == 2
        assert "hold no microbleed" in capsys.readouterr().err
        assert not (tmp_path / f"{stage}.safetensors").exists()
    # every point outside its scan (coordinates in another space): refused; rows and scans that do not pair up
    # are named in a warning (they were dropped without a word)
    shifted = tmp_path / "shifted"
    shutil.copytree(tiny_phantoms, shifted)
    rows = list(csv.DictReader(open(shifted / "truth.csv")))
    for r in rows:
        if r["x_mm"]:
            r["x_mm"] = str(float(r["x_mm"]) + 500)
    with open(shifted / "truth.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    assert main(["train", "proposer", "--data", str(shifted), "-o", str(tmp_path / "p.safetensors")]) == 2
    assert "none of its" in capsys.readouterr().err
    from cmbdet.training_data import read_labelled_set

    unpaired = tmp_path / "unpaired"
    shutil.copytree(tiny_phantoms, unpaired)
    first = sorted(unpaired.glob("*.nii.gz"))[0]
    rows = [r for r in csv.DictReader(open(unpaired / "truth.csv")) if r["subject"] != first.name[:-7]]
    rows.append({**rows[0], "subject": "ghost_9999"})
    with open(unpaired / "truth.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with pytest.warns(UserWarning) as caught:
        scans = read_labelled_set(unpaired)
    said = " ".join(str(w.message) for w in caught)
    assert "ghost_9999" in said and first.name[:-7] in said
    assert len(scans) == len(subjects) - 1


def test_weights_metadata_is_strict_json(tmp_path):
    import torch

    from cmbdet.weights import save_state

    metadata = {"val_recall": float("nan"), "n": [1.0, float("inf")]}
    save_state(tmp_path / "w.safetensors", {"x": torch.zeros(1)}, metadata)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "w.safetensors"), framework="pt") as handle:
        text = handle.metadata()["cmbdet"]
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in the metadata")) == \
        {"val_recall": None, "n": [1.0, None]}
