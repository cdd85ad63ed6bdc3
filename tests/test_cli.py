"""`cmbdet detect` / `evaluate` as a user runs them: contracts of the files, batches, bad input."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from cmbdet.cli import main


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_detect_writes_the_output_contract_in_the_input_grid(scan_dir, random_weights, tmp_path):
    out = tmp_path / "out"
    code = main(["detect", str(scan_dir), "-o", str(out), "--weights", str(random_weights)])
    assert code == 0
    counts = _rows(out / "counts.csv")
    assert [r["subject"] for r in counts] == ["sub-01_ses-1", "sub-02"]
    assert all(r["status"] == "ok" for r in counts)
    detections = _rows(out / "detections.csv")
    assert list(detections[0])[:10] == ["subject", "x_mm", "y_mm", "z_mm", "i", "j", "k", "score", "diameter_mm",
                                        "region"]
    for subject, name in (("sub-01_ses-1", "sub-01_ses-1_swi.nii.gz"), ("sub-02", "sub-02_T2starw.nii.gz")):
        source = nib.load(scan_dir / name)
        rows = [r for r in detections if r["subject"] == subject]
        count = next(r for r in counts if r["subject"] == subject)
        assert int(count["n_cmb"]) == len(rows) > 0
        regions = ("lobar", "deep", "infratentorial", "unknown")
        assert all(r["region"] in regions for r in rows)
        assert [int(count[f"n_{g}"]) for g in regions] == [sum(r["region"] == g for r in rows) for g in regions]
        ijk = np.array([[int(r["i"]), int(r["j"]), int(r["k"])] for r in rows])
        xyz = np.array([[float(r["x_mm"]), float(r["y_mm"]), float(r["z_mm"])] for r in rows])
        assert np.all((ijk >= 0) & (ijk < source.shape))
        # i, j, k index the input file's own array; x, y, z are scanner RAS of that file.
        half_voxel = 0.5 * np.linalg.norm(source.header.get_zooms()[:3]) + 0.01
        world = nib.affines.apply_affine(source.affine, ijk)
        assert np.all(np.linalg.norm(world - xyz, axis=1) <= half_voxel)
        labels = nib.load(out / subject / f"{subject}_desc-cmb_dseg.nii.gz")
        assert labels.shape == source.shape
        np.testing.assert_allclose(labels.affine, source.affine, atol=1e-5)
        label_data = np.asarray(labels.dataobj)
        assert np.all(label_data[tuple(ijk.T)] > 0)
        assert (out / subject / f"{subject}_review.png").stat().st_size > 1000
        markups = json.loads((out / subject / f"{subject}_cmb.mrk.json").read_text())
        assert len(markups["markups"][0]["controlPoints"]) == len(rows)
    run = json.loads((out / "run.json").read_text())
    assert [s["status"] for s in run["subjects"]] == ["ok", "ok"]


def test_what_was_assumed_is_said_once_in_counts_and_on_the_console(scan_dir, random_weights, tmp_path, capsys):
    good = nib.load(scan_dir / "sub-02_T2starw.nii.gz")
    bare = nib.Nifti1Image(np.asarray(good.dataobj), good.affine)
    bare.set_sform(None, code=0)
    bare.set_qform(None, code=0)
    nib.save(bare, tmp_path / "bare.nii.gz")
    out = tmp_path / "out"
    assert main(["detect", str(tmp_path / "bare.nii.gz"), "-o", str(out), "--weights", str(random_weights)]) == 0
    (count,) = _rows(out / "counts.csv")
    assert count["message"].count("neither sform nor qform") == 1  # the load note, not again as a warning
    captured = capsys.readouterr()
    assert "bare: " in captured.err and "note: header has neither sform nor qform" in captured.err
    header, row = (next(line for line in captured.out.splitlines() if line.startswith(name))
                   for name in ("subject", "bare"))
    assert header.split()[-1] == "unknown" and row.split()[-1] == count["n_unknown"]


def test_one_bad_subject_never_stops_the_batch(scan_dir, random_weights, tmp_path, capsys):
    bad = tmp_path / "broken.nii.gz"
    good = scan_dir / "sub-02_T2starw.nii.gz"
    bad.write_bytes(good.read_bytes()[:500])
    listing = tmp_path / "scans.txt"
    listing.write_text(f"# cohort\n{bad}\n{good}\n{tmp_path / 'missing.nii.gz'}\n")
    out = tmp_path / "out"
    code = main(["detect", str(listing), "-o", str(out), "--weights", str(random_weights), "--no-pictures"])
    assert code == 1
    counts = {r["subject"]: r for r in _rows(out / "counts.csv")}
    assert counts["sub-02"]["status"] == "ok"
    assert counts["broken"]["status"] == "error" and "broken.nii.gz" in counts["broken"]["message"]
    assert counts["missing"]["status"] == "error" and "no such file" in counts["missing"]["message"]
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert not list(out.glob("**/.*")), "no temp files left behind"


def test_a_broken_link_in_a_folder_is_reported_and_the_tables_keep_their_columns(scan_dir, random_weights, tmp_path):
    """A scan found in a folder that cannot be read (a link to nothing) is that subject's error, not left out
    unseen; with no detection at all, detections.csv and the candidates table have their usual columns."""
    from cmbdet.outputs import DETECTION_COLUMNS

    folder = tmp_path / "cohort"
    folder.mkdir()
    (folder / "good.nii.gz").write_bytes((scan_dir / "sub-02_T2starw.nii.gz").read_bytes())
    (folder / "gone.nii.gz").symlink_to(tmp_path / "nowhere.nii.gz")
    out = tmp_path / "out"
    code = main(["detect", str(folder), "-o", str(out), "--weights", str(random_weights), "--no-pictures",
                 "--threshold", "1"])
    assert code == 1
    counts = {r["subject"]: r for r in _rows(out / "counts.csv")}
    assert counts["good"]["status"] == "ok" and counts["good"]["n_cmb"] == "0"
    assert counts["gone"]["status"] == "error" and "gone.nii.gz" in counts["gone"]["message"]
    for table in (out / "detections.csv", out / "good" / "good_candidates.csv"):
        with open(table, newline="") as handle:
            assert tuple(next(csv.reader(handle))) == DETECTION_COLUMNS, table


def test_an_unusable_output_folder_or_device_is_refused_before_any_work(scan_dir, random_weights, tmp_path, capsys):
    import torch

    scan = str(scan_dir / "sub-02_T2starw.nii.gz")
    (tmp_path / "afile").write_text("")
    assert main(["detect", scan, "-o", str(tmp_path / "afile"), "--weights", str(random_weights)]) == 2
    assert "afile: is a file, not a folder" in capsys.readouterr().err
    assert main(["detect", scan, "-o", str(tmp_path / "o"), "--device", "banana"]) == 2
    assert "--device banana" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["detect", scan, "-o", str(tmp_path / "o"), "--device", "cuda"]) == 2
        assert "no such CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_bad_input_is_one_line_without_traceback_unless_debug(tmp_path, random_weights):
    text = tmp_path / "notes.nii"
    text.write_text("not an image")
    cmd = [sys.executable, "-m", "cmbdet.cli", "detect", str(text), "-o", str(tmp_path / "o"),
           "--weights", str(random_weights)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert run.returncode != 0
    assert "Traceback" not in run.stderr
    assert "notes.nii" in run.stderr
    run = subprocess.run([sys.executable, "-m", "cmbdet.cli", "evaluate", "--truth", str(tmp_path / "nope.csv"),
                          "--detections", str(text)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 2
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "nope.csv" in lines[0], run.stderr
    run = subprocess.run([sys.executable, "-m", "cmbdet.cli", "--debug", "evaluate", "--truth",
                          str(tmp_path / "nope.csv"), "--detections", str(text)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode != 0 and "Traceback" in run.stderr


def test_missing_weights_folder_is_a_clear_error(scan_dir, tmp_path, capsys):
    code = main(["detect", str(scan_dir), "-o", str(tmp_path / "o"), "--weights", str(tmp_path / "none")])
    assert code == 2
    assert "weights folder not found" in capsys.readouterr().err
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "proposer.safetensors").write_bytes(b"x")  # a file given for the folder
    assert main(["detect", str(scan_dir), "-o", str(tmp_path / "o"), "--weights",
                 str(tmp_path / "mine" / "proposer.safetensors")]) == 2
    assert "not a file" in capsys.readouterr().err


def test_evaluate_cli_prints_json_with_the_headline_figures(tmp_path, capsys):
    truth = tmp_path / "truth.csv"
    truth.write_text("subject,x_mm,y_mm,z_mm,diameter_mm,region\na,0,0,0,4,lobar\na,20,0,0,4,deep\nb,,,,,\n")
    dets = tmp_path / "detections.csv"
    dets.write_text("subject,x_mm,y_mm,z_mm,score\na,1,0,0,0.9\na,50,0,0,0.8\n")
    assert main(["evaluate", "--truth", str(truth), "--detections", str(dets), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    pooled = result["pooled"]
    assert pooled["sensitivity"] == pytest.approx(0.5)
    assert pooled["precision"] == pytest.approx(0.5)
    assert pooled["f1"] == pytest.approx(0.5)
    assert pooled["fp_per_subject"] == pytest.approx(0.5)
    assert pooled["quiet_rate"] == pytest.approx(1.0)


REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata" / "clearswi-small"


@pytest.mark.skipif(not REALDATA.exists(), reason="shared/realdata not beside the repo")
def test_real_small_scans_give_a_result_or_a_one_line_reason(random_weights, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["detect", str(REALDATA), "-o", str(out), "--weights", str(random_weights), "--no-pictures"])
    assert code == 1  # the two phase images are refused, the magnitude runs
    counts = {r["subject"]: r for r in _rows(out / "counts.csv")}
    assert counts["Mag"]["status"] == "ok"
    assert "3 echoes" in counts["Mag"]["message"]
    for name in ("Phase", "phase_with_nan"):
        assert counts[name]["status"] == "error"
        assert "phase image" in counts[name]["message"] and name in counts[name]["message"]
    labels = nib.load(out / "Mag" / "Mag_desc-cmb_dseg.nii.gz")
    assert labels.shape == (40, 40, 20)  # the 3-D grid of the 4-D input
    assert "Traceback" not in capsys.readouterr().err
