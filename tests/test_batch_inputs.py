"""Cohort inputs: subject ids from BIDS entities, echoes grouped, duplicates refused, BIDS roots,
manifests read by column names."""

from __future__ import annotations

from pathlib import Path

import pytest

from cmbdet.batch import collect_inputs, parse_file_name
from cmbdet.cli import main
from cmbdet.errors import InputError


def _touch(root: Path, *names: str) -> list[Path]:
    paths = []
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
        paths.append(path)
    return paths


def test_subject_ids_keep_every_bids_entity_but_echo_and_part():
    assert parse_file_name("sub-01_ses-2_acq-fast_run-3_echo-2_part-mag_swi.nii.gz")[:2] == \
        ("sub-01_ses-2_acq-fast_run-3", 2)
    assert parse_file_name("sub-01_T2starw.nii")[0] == "sub-01"
    assert parse_file_name("/x/ADNI_002_S_0295_MR_Axial_T2-Star_e3.nii.gz")[:2] == \
        ("ADNI_002_S_0295_MR_Axial_T2-Star", 3)
    assert parse_file_name("scan.nii.gz")[:2] == ("scan", None)


def test_acquisitions_and_runs_stay_apart_and_echoes_of_one_scan_are_one_subject(tmp_path):
    _touch(tmp_path, "sub-01_ses-1_acq-a_swi.nii.gz", "sub-01_ses-1_acq-b_swi.nii.gz", "sub-01_ses-1_run-2_swi.nii.gz",
           "sub-02_echo-2_part-mag_swi.nii.gz", "sub-02_echo-1_part-mag_swi.nii.gz",
           "sub-02_echo-1_part-phase_swi.nii.gz", "dcm/scan_e2.nii.gz", "dcm/scan_e1.nii.gz", "dcm/scan_e1_ph.nii.gz")
    found = collect_inputs([tmp_path])
    by_id = {s.subject: [p.name for p in s.paths] for s in found.subjects}
    assert by_id == {
        "scan": ["scan_e1.nii.gz", "scan_e2.nii.gz"],
        "sub-01_ses-1_acq-a": ["sub-01_ses-1_acq-a_swi.nii.gz"],
        "sub-01_ses-1_acq-b": ["sub-01_ses-1_acq-b_swi.nii.gz"],
        "sub-01_ses-1_run-2": ["sub-01_ses-1_run-2_swi.nii.gz"],
        "sub-02": ["sub-02_echo-1_part-mag_swi.nii.gz", "sub-02_echo-2_part-mag_swi.nii.gz"],
    }
    assert sorted(p.name for p, _ in found.skipped) == ["scan_e1_ph.nii.gz", "sub-02_echo-1_part-phase_swi.nii.gz"]


def test_two_inputs_with_one_id_are_refused_before_any_work(tmp_path, random_weights, capsys):
    a, b = _touch(tmp_path, "site1/scan.nii.gz", "site2/scan.nii.gz")
    with pytest.raises(InputError, match="given twice"):
        collect_inputs([tmp_path])
    out = tmp_path / "out"
    assert main(["detect", str(a), str(b), "-o", str(out), "--weights", str(random_weights)]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and str(a) in lines[0] and str(b) in lines[0], lines
    assert not out.exists()


def test_bids_root_gives_swi_and_t2starw_magnitude_only_and_says_what_it_skipped(tmp_path, random_weights, capsys):
    root = tmp_path / "ds"
    root.mkdir()
    (root / "dataset_description.json").write_text('{"Name": "x", "BIDSVersion": "1.9.0"}')
    _touch(root, "sub-01/anat/sub-01_T1w.nii.gz", "sub-01/anat/sub-01_swi.nii.gz",
           "sub-01/anat/sub-01_part-phase_swi.nii.gz", "sub-02/ses-1/anat/sub-02_ses-1_T2starw.nii.gz",
           "sub-02/ses-1/anat/sub-02_ses-1_FLAIR.nii.gz", "derivatives/cmbdet/sub-01/sub-01_desc-cmb_dseg.nii.gz",
           "sub-03/anat/sub-03_echo-1_part-mag_GRE.nii.gz", "sub-03/anat/sub-03_echo-2_part-mag_GRE.nii.gz")
    found = collect_inputs([root])
    assert {s.subject: len(s.paths) for s in found.subjects} == {"sub-01": 1, "sub-02_ses-1": 1, "sub-03": 2}
    out = tmp_path / "out"
    assert main(["detect", str(root), "-o", str(out), "--weights", str(random_weights), "--no-pictures"]) == 1
    err = capsys.readouterr().err
    assert "skipped 4 file(s)" in err and "_T1w" in err and "_FLAIR" in err and "part-phase" in err \
        and "under derivatives/" in err, err
    counts = (out / "counts.csv").read_text()
    assert "sub-01," in counts and "sub-02_ses-1," in counts and "T1w" not in counts


def test_bids_root_ids_with_acq_separate_swi_and_gre(tmp_path):
    root = tmp_path / "ds"
    _touch(root, "sub-01/anat/sub-01_acq-swi_swi.nii.gz", "sub-01/anat/sub-01_acq-gre_part-mag_GRE.nii.gz",
           "sub-01/anat/sub-01_T1w.nii.gz", "sub-01/anat/sub-01_acq-gre_part-phase_GRE.nii.gz",
           "derivatives/x/sub-01/anat/sub-01_acq-swi_swi.nii.gz")
    found = collect_inputs([root])
    assert [s.subject for s in found.subjects] == ["sub-01_acq-gre", "sub-01_acq-swi"]
    summary = found.skipped_summary()
    assert "1 _T1w" in summary and "1 part-phase" in summary and "1 under derivatives/" in summary, summary


def test_a_session_with_swi_and_t2starw_runs_both_as_subjects_of_their_own(tmp_path):
    root = tmp_path / "ds"
    _touch(root, "sub-01/ses-1/anat/sub-01_ses-1_swi.nii.gz", "sub-01/ses-1/anat/sub-01_ses-1_T2starw.nii.gz",
           "sub-02/anat/sub-02_swi.nii.gz")
    with pytest.warns(UserWarning, match="each run as its own subject"):
        found = collect_inputs([root])
    assert sorted(s.subject for s in found.subjects) == ["sub-01_ses-1_T2starw", "sub-01_ses-1_swi", "sub-02"]


def test_bids_multi_echo_megre_is_one_subject(tmp_path):
    root = tmp_path / "ds"
    _touch(root, *(f"sub-02/anat/sub-02_echo-{n}_part-mag_MEGRE.nii.gz" for n in (1, 2, 3, 4)),
           *(f"sub-02/anat/sub-02_echo-{n}_part-phase_MEGRE.nii.gz" for n in (1, 2, 3, 4)))
    found = collect_inputs([root])
    assert [(s.subject, len(s.paths)) for s in found.subjects] == [("sub-02", 4)]
    assert found.skipped_summary() == "4 part-phase"


def test_an_earlier_output_folder_inside_the_inputs_is_not_read_as_scans(tmp_path):
    # `cmbdet detect t1 -o t1/run1`, then `cmbdet detect t1 -o t1/run2`: run1's label maps are no scans
    _touch(tmp_path, "t1/scan.nii.gz", "t1/run1/scan/scan_desc-cmb_dseg.nii.gz",
           "bids/sub-01/anat/sub-01_swi.nii.gz", "bids/derivatives_old/sub-01/sub-01_swi.nii.gz")
    (tmp_path / "t1/run1/run.json").write_text('{\n "cmbdet_version": "0.1.0"\n}')
    (tmp_path / "bids/derivatives_old/run.json").write_text('{"cmbdet_version": "0.1.0", "stage2": true}')
    (tmp_path / "t1/unrelated").mkdir()
    (tmp_path / "t1/unrelated/run.json").write_text('{"tool": "other"}')
    _touch(tmp_path, "t1/unrelated/other.nii.gz")
    found = collect_inputs([tmp_path / "t1", tmp_path / "bids"])
    assert sorted(s.subject for s in found.subjects) == ["other", "scan", "sub-01"]
    assert found.skipped_summary() == "2 in an earlier cmbdet output folder"


def test_manifest_is_read_by_column_names(tmp_path):
    images = _touch(tmp_path, "data/a.nii.gz", "data/b.nii.gz", "data/b2.nii.gz")
    manifest = tmp_path / "cohort.csv"
    manifest.write_text("session,path,subject,age\nM000,data/a.nii.gz,ADNI002S0295,71\n"
                        "M012,data/b.nii.gz,ADNI002S0295,72\n,data/b2.nii.gz,,73\n")
    found = collect_inputs([manifest])
    assert [(s.subject, s.paths) for s in found.subjects] == [
        ("ADNI002S0295_M000", (images[0],)), ("ADNI002S0295_M012", (images[1],)), ("b2", (images[2],))]
    other = tmp_path / "images.csv"
    other.write_text("subject,image\nx,data/a.nii.gz\n")
    assert [s.subject for s in collect_inputs([other]).subjects] == ["x"]
    bad = tmp_path / "bad.csv"
    bad.write_text("subject,file\nx,data/a.nii.gz\n")
    with pytest.raises(InputError, match="'image' \\(or 'path'\\) column"):
        collect_inputs([bad])


def test_a_bad_echo_choice_is_refused_before_any_work(tmp_path, capsys):
    scan = _touch(tmp_path, "a.nii.gz")[0]
    for bad in ("2x", "-1"):
        with pytest.raises(SystemExit) as exit_info:
            main(["detect", str(scan), "-o", str(tmp_path / "out"), "--echo", bad])
        assert exit_info.value.code == 2
        assert "0-based echo index" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_folder_of_files_without_a_bids_suffix_says_why_nothing_was_taken(tmp_path):
    """`sub-07.nii.gz` has a BIDS entity but no suffix: its contrast is unknown, so a folder scan leaves it out;
    the warning said the folder held no usable scan (contradicted by the skipped list), now it says why and how."""
    folder = tmp_path / "nosuffix"
    folder.mkdir()
    (folder / "sub-07.nii.gz").write_bytes(b"")
    with pytest.warns(UserWarning, match=r"none of its 1 NIfTI file\(s\) is taken .* give a file itself"):
        found = collect_inputs([folder])
    assert not found.subjects and found.skipped_summary() == "1 no BIDS suffix (contrast unknown)"
    assert [s.subject for s in collect_inputs([folder / "sub-07.nii.gz"]).subjects] == ["sub-07"]
