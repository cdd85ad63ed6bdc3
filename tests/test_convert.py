"""`cmbdet convert adni|aibl|points`: LONI-shaped download trees built here (DICOM written with pydicom,
LONI-named NIfTI, metadata XML, a rating table) go in; the BIDS tree, manifest, truth and report are
checked, and rated points must land on the dark spots of the converted images."""

from __future__ import annotations

import csv
import hashlib
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from cmbdet.cli import main
from cmbdet.datasets.series import choose_series
from cmbdet.training_data import read_labelled_set, scan_id, subject_from_filename
from tests.loni_trees import (
    geometry,
    oblique_lps_affine,
    spot_pixels,
    voxel_centre_ras,
    write_dicom_series,
    write_nifti,
    write_xml,
)

RATING_COLUMNS = ["RID", "VISCODE", "VISCODE2", "SCANDATE", "LONI_IMAGE", "TYPE", "STATUS", "NOFINDINGS",
                  "X", "Y", "Z", "LOCATION"]


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _write_csv(path: Path, columns: list[str], rows: list[dict]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)
    return path


def _by_scan(manifest: list[dict]) -> dict[str, dict]:
    """Manifest rows by scan id (subject + session, as detect and training name them)."""
    return {scan_id(r["subject"], r["session"]): r for r in manifest}


def _tree_hash(root: Path) -> dict[str, str]:
    out = {}
    for folder, _dirs, names in os.walk(root):
        for name in names:
            path = Path(folder) / name
            out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _mch(rid, viscode2, scandate, image, status, xyz, location="lobar"):
    return {"RID": rid, "VISCODE": viscode2, "VISCODE2": viscode2, "SCANDATE": scandate, "LONI_IMAGE": image,
            "TYPE": "MCH", "STATUS": status, "NOFINDINGS": 0, "X": f"{xyz[0]:.4f}", "Y": f"{xyz[1]:.4f}",
            "Z": f"{xyz[2]:.4f}", "LOCATION": location}


def _adni_name(ptid, desc, stamp, series, image):
    """LONI's DICOM file name, with ``{n}`` left for the slice number."""
    return f"ADNI_{ptid}_MR_{desc}__br_raw_{stamp}_" + "{n}" + f"_S{series}_I{image}.dcm"


@pytest.fixture(scope="module")
def adni(tmp_path_factory) -> dict:
    """An ADNI download: three subjects, DICOM and NIfTI, skipped series, a repeat scan, a corrupt file,
    an unknown folder, metadata XML and a rating table (several findings, clean and unrated scans,
    other finding types, a rating of an image that is not there)."""
    root = tmp_path_factory.mktemp("adni")
    src = root / "download"
    adni = src / "ADNI"
    expected_points: dict[str, list[np.ndarray]] = {}
    ratings: list[dict] = []

    # 002_S_0295: oblique DICOM, slices written in reverse, 3 rated CMBs + siderosis; one corrupt file
    g = geometry("oblique")
    spots = [g.ras_of_pixel(*p) for p in spot_pixels(g, 3, seed=1)]
    folder = adni / "002_S_0295" / "Axial_T2-Star" / "2011-06-02_12_52_24.0" / "I238627"
    files = write_dicom_series(folder, g, description="Axial T2-Star", spots_ras=spots, order="reverse",
                               name=_adni_name("002_S_0295", "Axial_T2-Star", "20110602125224196", 110476, 238627))
    (folder / "ADNI_002_S_0295_MR_Axial_T2-Star__br_raw_20110602125224196_99_S110476_I238627.dcm").write_bytes(
        files[0].read_bytes()[:900])  # cut short: pixel data incomplete
    (folder / "ADNI_002_S_0295_MR_Axial_T2-Star__br_raw_20110602125224196_98_S110476_I238627.dcm").write_text(
        "not an image")
    expected_points["I238627"] = spots
    ratings += [_mch(295, "m60", "2011-06-02", "I238627", s, p) for s, p in zip(("Definite", "Definite", "Possible"),
                                                                               spots)]
    ratings.append({"RID": 295, "VISCODE2": "m60", "SCANDATE": "2011-06-02", "LONI_IMAGE": "I238627",
                    "TYPE": "SS", "STATUS": "Definite", "NOFINDINGS": 0, "LOCATION": "superficial siderosis"})
    write_xml(src / "ADNI_002_S_0295_Axial_T2-Star_S110476_I238627.xml", ptid="002_S_0295",
              visit="ADNI2 Year 5 Visit", series_id="110476", image_id="238627", description="Axial T2-Star")
    # same visit, a repeat (later, unrated): not converted by the default rule
    write_dicom_series(adni / "002_S_0295" / "Axial_T2-Star" / "2011-06-02_13_10_02.0" / "I238630", geometry("axial"),
                       description="Axial T2-Star", spots_ras=[], time="131002", series_number=9)
    # series that must not be taken
    small = geometry("axial")
    small = type(small)(small.first_position_lps, small.row_dir, small.col_dir, shape_crk=(16, 16, 3))
    write_dicom_series(adni / "002_S_0295" / "gre_field_mapping" / "2011-06-02_12_40_00.0" / "I238601", small,
                       description="gre_field_mapping", spots_ras=[], series_number=3)
    write_dicom_series(adni / "002_S_0295" / "Localizer" / "2011-06-02_12_20_00.0" / "I238599", small,
                       description="Localizer", spots_ras=[], series_number=1)
    aff = oblique_lps_affine()
    write_nifti(adni / "002_S_0295" / "MPRAGE" / "2011-06-02_12_30_00.0" / "I238600"
                / "ADNI_002_S_0295_MR_MPRAGE_Br_20110602123000000_S110470_I238600.nii", aff, (48, 56, 26), [])
    ratings.append({"RID": 295, "VISCODE2": "m60", "SCANDATE": "2011-06-02", "LONI_IMAGE": "I238600",
                    "NOFINDINGS": 1})  # a read of the MPRAGE: reported, not used
    ratings.append({"RID": 295, "VISCODE2": "m72", "SCANDATE": "2012-06-10", "LONI_IMAGE": "I999999",
                    "TYPE": "MCH", "STATUS": "Definite"})  # not in the download

    # 005_S_0610: a clean NIfTI read (matched by RID + date, no image id), an unrated later visit
    write_nifti(adni / "005_S_0610" / "AXIAL_T2_STAR" / "2012-01-10_09_00_00.0" / "I300001"
                / "ADNI_005_S_0610_MR_AXIAL_T2_STAR_Br_20120110090000000_S120001_I300001.nii", aff, (48, 56, 26), [])
    ratings.append({"RID": 610, "VISCODE": "bl", "VISCODE2": "bl", "SCANDATE": "1/10/2012", "NOFINDINGS": 1})
    g = geometry("coronal")
    write_dicom_series(adni / "005_S_0610" / "Axial_T2__GRE__repeat" / "2013-01-15_10_00_00.0" / "I310000", g,
                       description="Axial T2* GRE, repeat (2)", spots_ras=[], order="shuffled", date="20130115",
                       patient_id="005_S_0610")
    for desc, image in (("Pha_Images", 310001), ("mIP_Images", 310002), ("Axial_T2_FLAIR", 310003)):
        write_nifti(adni / "005_S_0610" / desc / "2013-01-15_10_05_00.0" / f"I{image}"
                    / f"ADNI_005_S_0610_MR_{desc}_Br_20130115100500000_S1300{image % 10}_I{image}.nii.gz", aff,
                    (48, 56, 26), [])

    # 010_S_0100: sagittal SWI DICOM, 2 rated CMBs + an infarct
    g = geometry("sagittal")
    spots = [g.ras_of_pixel(*p) for p in spot_pixels(g, 2, seed=2)]
    write_dicom_series(adni / "010_S_0100" / "SWI_Images" / "2014-05-05_08_00_00.0" / "I400000", g,
                       description="SWI_Images", spots_ras=spots, date="20140505", patient_id="010_S_0100")
    expected_points["I400000"] = spots
    ratings += [_mch(100, "m36", "2014-05-05", "400000", s, p, "deep") for s, p in zip(("Possible", "Definite"),
                                                                                       spots)]
    ratings.append({"RID": 100, "VISCODE2": "m36", "SCANDATE": "2014-05-05", "LONI_IMAGE": "400000", "TYPE": "INF",
                    "STATUS": "Definite"})

    # a folder that is not LONI-shaped
    write_nifti(adni / "002_S_0295" / "loose" / "scan.nii.gz", aff, (8, 8, 8), [])
    table = _write_csv(root / "MAYOADIRL_MRI_MCH_2024-01-01.csv", RATING_COLUMNS, ratings)
    return {"src": src, "ratings": table, "points": expected_points}


def _assert_points_on_spots(out: Path, manifest: list[dict], points: dict[str, list[np.ndarray]]) -> None:
    for row in manifest:
        if row["image_id"] not in points:
            continue
        image = nib.load(out / row["path"])
        data = np.asarray(image.dataobj, dtype=float)
        for point in points[row["image_id"]]:
            ijk = nib.affines.apply_affine(np.linalg.inv(image.affine), point)
            assert np.allclose(ijk, np.round(ijk), atol=0.02), f"{row['path']}: {point} -> {ijk} off the voxel grid"
            i, j, k = np.round(ijk).astype(int)
            assert data[i, j, k] < 40 < np.median(data[data > 50]), f"{row['path']}: no dark spot at {point}"


def test_adni_tree_becomes_bids_with_manifest_truth_and_report(adni, tmp_path, capsys):
    src, out = adni["src"], tmp_path / "bids"
    before = _tree_hash(src)
    code = main(["convert", "adni", str(src), "-o", str(out), "--ratings", str(adni["ratings"])])
    assert code == 0

    manifest = _rows(out / "manifest.csv")
    assert list(manifest[0])[:8] == ["subject", "session", "image_id", "path", "modality", "n_cmb",
                                     "n_cmb_definite", "n_cmb_possible"]
    by_subject = _by_scan(manifest)
    assert sorted(by_subject) == ["sub-ADNI002S0295_ses-m60", "sub-ADNI005S0610_ses-20130115",
                                  "sub-ADNI005S0610_ses-bl", "sub-ADNI010S0100_ses-m36"]
    first = by_subject["sub-ADNI002S0295_ses-m60"]
    assert first["path"] == "sub-ADNI002S0295/ses-m60/anat/sub-ADNI002S0295_ses-m60_T2starw.nii.gz"
    assert (first["image_id"], first["n_cmb"], first["n_cmb_definite"], first["n_cmb_possible"]) == \
        ("I238627", "3", "2", "1")  # the siderosis row is not a microbleed
    assert (first["subject"], first["session"], first["rid"]) == ("sub-ADNI002S0295", "ses-m60", "295")
    swi = by_subject["sub-ADNI010S0100_ses-m36"]
    assert (swi["modality"], swi["n_cmb"], swi["n_cmb_definite"], swi["n_cmb_possible"]) == ("swi", "2", "1", "1")
    assert swi["path"].endswith("_swi.nii.gz")
    clean = by_subject["sub-ADNI005S0610_ses-bl"]
    assert (clean["n_cmb"], clean["n_cmb_definite"], clean["in_truth"], clean["format"]) == ("0", "0", "1", "nifti")
    unrated = by_subject["sub-ADNI005S0610_ses-20130115"]
    assert (unrated["n_cmb"], unrated["in_truth"], unrated["description"]) == ("", "0", "Axial T2* GRE, repeat (2)")
    for row in manifest:  # the id detect derives from the file name is the manifest's subject + session
        assert subject_from_filename(row["path"]) == "_".join((row["subject"], row["session"]))
        assert (out / row["path"]).is_file() and (out / row["path"]).with_name(
            Path(row["path"]).name.replace(".nii.gz", ".json")).is_file()

    # a .nii download is gzipped, its bytes unchanged
    nii = next(src.rglob("*_I300001.nii"))
    assert nib.load(out / clean["path"]).get_fdata().tobytes() == nib.load(nii).get_fdata().tobytes()
    import gzip
    assert gzip.decompress((out / clean["path"]).read_bytes()) == nii.read_bytes()

    truth = _rows(out / "truth.csv")
    assert sorted({r["subject"] for r in truth}) == ["sub-ADNI002S0295_ses-m60", "sub-ADNI005S0610_ses-bl",
                                                     "sub-ADNI010S0100_ses-m36"]
    assert [r["x_mm"] for r in truth if r["subject"] == "sub-ADNI005S0610_ses-bl"] == [""]
    assert sum(r["subject"] == "sub-ADNI002S0295_ses-m60" for r in truth) == 3
    _assert_points_on_spots(out, manifest, adni["points"])

    report = _rows(out / "conversion_report.csv")
    status = {}
    for r in report:
        status.setdefault(r["status"], []).append(r)
    assert len(status["converted"]) == 4
    skipped = {r["source"].split("/")[2] if r["kind"] in ("dicom", "nifti") else r["kind"]: r["reason"]
               for r in status["skipped"]}
    assert "field map" in skipped["gre_field_mapping"] and "localizer" in skipped["Localizer"]
    assert "T1" in skipped["MPRAGE"] and "FLAIR" in skipped["Axial_T2_FLAIR"]
    assert "phase" in skipped["Pha_Images"] and "minimum-intensity" in skipped["mIP_Images"]
    assert "another scan of this visit" in skipped["Axial_T2-Star"]
    assert "corrupt DICOM" in skipped["dicom-file"] and "unknown layout" in skipped["unknown"]
    assert sum(r["kind"] == "dicom-file" for r in status["skipped"]) == 2
    assert "2 corrupt DICOM file(s) left out" in status["converted"][0]["reason"] + status["converted"][1]["reason"]
    unmatched = " ".join(r["reason"] for r in status["unmatched"])
    assert "I999999" in unmatched and "I238600" in unmatched and "skipped" in unmatched
    assert _tree_hash(src) == before  # SRC never modified

    # rerun: same manifest, nothing rewritten or duplicated
    images = sorted(out.rglob("*.nii.gz"))
    stamps = [p.stat().st_mtime_ns for p in images]
    manifest_bytes = (out / "manifest.csv").read_bytes()
    assert main(["convert", "adni", str(src), "-o", str(out), "--ratings", str(adni["ratings"])]) == 0
    assert (out / "manifest.csv").read_bytes() == manifest_bytes
    assert sorted(out.rglob("*.nii.gz")) == images and [p.stat().st_mtime_ns for p in images] == stamps
    assert _tree_hash(src) == before

    # the manifest is a training set: subjects and images line up with truth.csv
    scans = read_labelled_set(out / "manifest.csv")
    assert sorted(s.subject for s in scans) == sorted({r["subject"] for r in truth})
    assert {s.subject: len(s.cmb_xyz_mm) for s in scans}["sub-ADNI002S0295_ses-m60"] == 3


def test_several_scans_rule_and_series_override(adni, tmp_path):
    out = tmp_path / "latest"
    assert main(["convert", "adni", str(adni["src"]), "-o", str(out), "--ratings", str(adni["ratings"]),
                 "--several-scans", "latest"]) == 0
    row = next(r for r in _rows(out / "manifest.csv") if r["subject"] == "sub-ADNI002S0295")
    assert (row["image_id"], row["session"], row["n_cmb"]) == ("I238630", "ses-m60", "")  # the later, unrated one
    report = _rows(out / "conversion_report.csv")
    assert any(r["image_id"] == "I238627" and "another scan" in r["reason"] and "rating is not used" in r["reason"]
               for r in report)

    out = tmp_path / "phase"
    assert main(["convert", "adni", str(adni["src"]), "-o", str(out), "--series", "^Pha_Images$"]) == 0
    manifest = _rows(out / "manifest.csv")
    assert [r["image_id"] for r in manifest] == ["I310001"] and manifest[0]["n_cmb"] == ""
    assert not (out / "truth.csv").exists()  # no ratings, no truth

    # converted again into a folder that holds an earlier conversion's truth.csv: without coordinates
    # this time, the stale truth (other ratings, perhaps other scans) goes
    assert main(["convert", "adni", str(adni["src"]), "-o", str(tmp_path / "again"), "--ratings",
                 str(adni["ratings"])]) == 0
    assert (tmp_path / "again" / "truth.csv").exists()
    assert main(["convert", "adni", str(adni["src"]), "-o", str(tmp_path / "again")]) == 0
    assert not (tmp_path / "again" / "truth.csv").exists()


@pytest.mark.parametrize("kind,order", [("axial", "forward"), ("axial-reversed", "shuffled"),
                                        ("coronal", "reverse"), ("sagittal", "shuffled"), ("oblique", "forward")])
def test_dicom_world_coordinates_survive_conversion(kind, order, tmp_path):
    """A point placed by the DICOM tags (position, orientation, pixel spacing) is on the same voxel of
    the converted NIfTI, whatever the orientation and the order of the files."""
    g = geometry(kind)
    pixels = spot_pixels(g, 2, seed=5)
    spots = [g.ras_of_pixel(*p) for p in pixels]
    src = tmp_path / "src"
    write_dicom_series(src / "ADNI" / "002_S_0295" / "Axial_T2_Star" / "2011-06-02_12_52_24.0" / "I1", g,
                       description="Axial_T2_Star", spots_ras=spots, order=order)
    ratings = _write_csv(tmp_path / "r.csv", RATING_COLUMNS,
                         [_mch(295, "m60", "2011-06-02", "I1", "Definite", p) for p in spots])
    out = tmp_path / "out"
    assert main(["convert", "adni", str(src), "-o", str(out), "--ratings", str(ratings)]) == 0
    manifest = _rows(out / "manifest.csv")
    assert manifest[0]["n_cmb"] == "2"
    _assert_points_on_spots(out, manifest, {"I1": spots})
    report = _rows(out / "conversion_report.csv")
    assert "outside" not in report[0]["reason"]


def test_rating_matched_by_date_on_a_day_with_two_scans_is_flagged(tmp_path, capsys):
    """A rating without an image id matched by RID + scan date to a day with two susceptibility scans
    is used, and the user is told on the console and in the report that it may rate the other one."""
    g = geometry("axial")
    spots = [g.ras_of_pixel(*p) for p in spot_pixels(g, 2, seed=5)]
    src = tmp_path / "src"
    for stamp, image in (("2011-06-02_12_52_24.0", "I1"), ("2011-06-02_13_10_02.0", "I2")):
        write_dicom_series(src / "ADNI" / "002_S_0295" / "Axial_T2_Star" / stamp / image, g,
                           description="Axial_T2_Star", spots_ras=spots)
    ratings = _write_csv(tmp_path / "r.csv", RATING_COLUMNS,
                         [_mch(295, "m60", "2011-06-02", "", "Definite", p) for p in spots])
    out = tmp_path / "out"
    assert main(["convert", "adni", str(src), "-o", str(out), "--ratings", str(ratings)]) == 0
    err = capsys.readouterr().err
    assert "warning: 1 converted scan(s)" in err and "several kept scans" in err
    converted = [r for r in _rows(out / "conversion_report.csv") if r["status"] == "converted"]
    assert len(converted) == 1 and "several kept scans (2 scans)" in converted[0]["reason"]
    assert _rows(out / "manifest.csv")[0]["n_cmb"] == "2"


def test_aibl_tree_with_lps_ratings(tmp_path):
    src = tmp_path / "AIBL_download"
    aff = oblique_lps_affine(degrees=-9)
    spot_ijk = [(20, 30, 12), (30, 22, 15)]
    spots = [voxel_centre_ras(aff, p) for p in spot_ijk]
    write_nifti(src / "AIBL" / "1234" / "Axial_T2_Star" / "2010-03-04_10_00_00.0" / "S5678"
                / "AIBL_1234_MR_Axial_T2_Star__br_raw_20100304100000123_1_S5678_I9012.nii", aff, (48, 56, 26), spots)
    write_nifti(src / "AIBL" / "1234" / "MPRAGE_ADNI_confirmed" / "2010-03-04_09_40_00.0" / "S5670"
                / "AIBL_1234_MR_MPRAGE_ADNI_confirmed__br_raw_20100304094000_1_S5670_I9010.nii", aff, (48, 56, 26), [])
    g = geometry("axial-reversed")
    write_dicom_series(src / "AIBL" / "1300" / "T2_star_axial" / "2011-07-07_11_11_11.0" / "S6000", g,
                       description="T2 star axial", spots_ras=[], patient_id="1300",
                       name="AIBL_1300_MR_T2_star_axial__br_raw_20110707111111_{n}_S6000_I6001.dcm")
    (src / "aibl_mrimeta_01-Jun-2018.csv").write_text("RID,EXAMDATE\n1234,2010-03-04\n")
    lps = [np.array([-p[0], -p[1], p[2]]) for p in spots]
    table = _write_csv(tmp_path / "aibl_reads.csv", ["RID", "SCANDATE", "TYPE", "STATUS", "NOFINDINGS", "X", "Y", "Z"],
                       [{"RID": 1234, "SCANDATE": "2010-03-04", "TYPE": "MCH", "STATUS": s, "X": p[0], "Y": p[1],
                         "Z": p[2]} for s, p in zip(("Definite", "Possible"), lps)])
    out = tmp_path / "out"
    assert main(["convert", "aibl", str(src), "-o", str(out), "--ratings", str(table), "--lps"]) == 0
    manifest = _by_scan(_rows(out / "manifest.csv"))
    assert sorted(manifest) == ["sub-AIBL1234_ses-20100304", "sub-AIBL1300_ses-20110707"]
    rated = manifest["sub-AIBL1234_ses-20100304"]
    assert (rated["image_id"], rated["n_cmb"], rated["n_cmb_possible"]) == ("I9012", "2", "1")
    assert manifest["sub-AIBL1300_ses-20110707"]["image_id"] == "I6001"
    assert manifest["sub-AIBL1300_ses-20110707"]["n_cmb"] == ""
    truth = _rows(out / "truth.csv")
    got = np.array([[float(r[c]) for c in ("x_mm", "y_mm", "z_mm")] for r in truth])
    assert np.allclose(got, np.array(spots), atol=1e-3)  # LPS in, RAS out
    _assert_points_on_spots(out, list(manifest.values()), {"I9012": spots})
    report = _rows(out / "conversion_report.csv")
    assert any("MPRAGE" in r["source"] and r["status"] == "skipped" for r in report)


def test_points_folder_with_a_rater_csv(tmp_path, capsys):
    src = tmp_path / "study"
    ras = np.diag([3.5, 3.5, 5.0, 1.0])
    ras[:3, 3] = [-84, -98, -62]
    spots = [voxel_centre_ras(ras, (20, 30, 12)), voxel_centre_ras(ras, (28, 24, 14))]
    write_nifti(src / "site A" / "patient 01.nii.gz", ras, (48, 56, 26), spots)
    write_nifti(src / "site A" / "patient-02_swi.nii", ras, (48, 56, 26), [])
    write_nifti(src / "sub-07_ses-2_T2starw.nii.gz", ras, (48, 56, 26), [])
    write_nifti(src / "sub-07_ses-2_T1w.nii.gz", ras, (48, 56, 26), [])  # by its BIDS suffix: not a scan to convert
    points = _write_csv(tmp_path / "points.csv", ["image", "x_mm", "y_mm", "z_mm", "diameter_mm", "status"], [
        {"image": "site A/patient 01.nii.gz", "x_mm": spots[0][0], "y_mm": spots[0][1], "z_mm": spots[0][2],
         "diameter_mm": 4, "status": "definite"},
        {"image": "site A/patient 01.nii.gz", "x_mm": spots[1][0], "y_mm": spots[1][1], "z_mm": spots[1][2],
         "status": "possible"},
        {"image": "site A/patient-02_swi.nii"},  # rated clean
        {"image": "missing.nii.gz", "x_mm": 1, "y_mm": 2, "z_mm": 3},
    ])
    out = tmp_path / "out"
    assert main(["convert", "points", str(src), "-o", str(out), "--points", str(points)]) == 0
    manifest = _by_scan(_rows(out / "manifest.csv"))
    assert sorted(manifest) == ["sub-07_ses-2", "sub-siteApatient01", "sub-siteApatient02swi"]
    assert [manifest[s]["n_cmb"] for s in sorted(manifest)] == ["", "2", "0"]
    assert manifest["sub-siteApatient02swi"]["modality"] == "swi"
    assert manifest["sub-07_ses-2"]["path"] == "sub-07/ses-2/anat/sub-07_ses-2_T2starw.nii.gz"
    truth = _rows(out / "truth.csv")
    assert sorted({r["subject"] for r in truth}) == ["sub-siteApatient01", "sub-siteApatient02swi"]
    report = _rows(out / "conversion_report.csv")
    assert any(r["status"] == "unmatched" and "missing.nii.gz" in r["reason"] for r in report)
    assert any(r["source"] == "sub-07_ses-2_T1w.nii.gz" and r["status"] == "skipped" and "_T1w" in r["reason"]
               for r in report)
    scans = {s.subject: s for s in read_labelled_set(out / "manifest.csv")}
    assert len(scans["sub-siteApatient01"].cmb_xyz_mm) == 2
    volume = nib.load(out / manifest["sub-siteApatient01"]["path"])
    ijk = np.round(nib.affines.apply_affine(np.linalg.inv(volume.affine), spots)).astype(int)
    assert (volume.get_fdata()[tuple(ijk.T)] < 40).all()

    out2 = tmp_path / "out2"
    assert main(["convert", "points", str(src), "-o", str(out2), "--points", str(points), "--unlisted-clean"]) == 0
    assert _by_scan(_rows(out2 / "manifest.csv"))["sub-07_ses-2"]["n_cmb"] == "0"

    # two paths with one BIDS name: the rated one is converted, the other is an error (exit 1)
    write_nifti(src / "siteA" / "patient01.nii.gz", ras, (48, 56, 26), [])
    out3 = tmp_path / "out3"
    assert main(["convert", "points", str(src), "-o", str(out3), "--points", str(points)]) == 1
    assert _by_scan(_rows(out3 / "manifest.csv"))["sub-siteApatient01"]["source"] == "site A/patient 01.nii.gz"
    assert any(r["source"] == "siteA/patient01.nii.gz" and r["status"] == "error"
               for r in _rows(out3 / "conversion_report.csv"))


def test_bad_input_is_one_line(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    assert main(["convert", "adni", str(src), "-o", str(src / "out")]) == 2
    err = capsys.readouterr().err
    assert "inside the source tree" in err and "Traceback" not in err
    bad = tmp_path / "bad.csv"
    bad.write_text("foo,bar\n1,2\n")
    assert main(["convert", "adni", str(src), "-o", str(tmp_path / "o"), "--ratings", str(bad)]) == 2
    assert "RID" in capsys.readouterr().err
    archive = tmp_path / "ADNI_download.zip"
    archive.write_bytes(b"PK\x03\x04")
    assert main(["convert", "adni", str(archive), "-o", str(tmp_path / "o")]) == 2
    assert "unpack it first" in capsys.readouterr().err


@pytest.mark.parametrize("name,taken", [
    ("Axial_T2-Star", True), ("Axial_T2_Star", True), ("AXIAL_T2_STAR", True), ("SWI", True), ("GRE", True),
    ("T2*", True), ("Axial T2* GRE, repeat (2)", True), ("SWI_Images", True),
    ("gre_field_mapping", False), ("Pha_Images", False), ("mIP_Images", False), ("Localizer", False),
    ("3 Plane Localizer", False), ("MPRAGE", False), ("Accelerated_Sagittal_MPRAGE", False),
    ("Axial_T2_FLAIR", False), ("Axial_DTI", False)])
def test_series_choice_by_description(name, taken):
    assert choose_series(name).take is taken


def test_train_proposer_from_a_converted_manifest(adni, tmp_path):
    out = tmp_path / "bids"
    assert main(["convert", "adni", str(adni["src"]), "-o", str(out), "--ratings", str(adni["ratings"])]) == 0
    weights = tmp_path / "proposer.safetensors"
    assert main(["train", "proposer", "--data", str(out / "manifest.csv"), "-o", str(weights), "--steps", "2",
                 "--batch-size", "2", "--spacing-mm", "2", "--val-fraction", "0"]) == 0
    from cmbdet.weights import load_state

    _, meta = load_state(weights)
    assert meta["train_subjects"] == 3  # the three scans with rated coordinates


def test_training_manifests_old_and_new_columns(scan_dir):
    """The training reader keeps reading ``subject, image`` manifests and also reads the converter's
    ``subject, session, path`` (scan id ``subject_session``)."""
    (scan_dir / "truth.csv").write_text("subject,x_mm,y_mm,z_mm\nsub-01_ses-1,10,5,2\nsub-02,,,\n")
    (scan_dir / "old.csv").write_text("subject,image\nsub-01_ses-1,sub-01_ses-1_swi.nii.gz\n"
                                      f"sub-02,{scan_dir / 'sub-02_T2starw.nii.gz'}\n")
    (scan_dir / "new.csv").write_text("subject,session,path,n_cmb\nsub-01,ses-1,sub-01_ses-1_swi.nii.gz,1\n"
                                      "sub-02,,sub-02_T2starw.nii.gz,0\n")
    for manifest in ("old.csv", "new.csv"):
        scans = {s.subject: s for s in read_labelled_set(scan_dir / manifest)}
        assert sorted(scans) == ["sub-01_ses-1", "sub-02"]
        assert scans["sub-01_ses-1"].image_path == scan_dir / "sub-01_ses-1_swi.nii.gz"
        assert len(scans["sub-01_ses-1"].cmb_xyz_mm) == 1 and len(scans["sub-02"].cmb_xyz_mm) == 0


def test_multi_echo_dicom_becomes_one_4d_image_detect_can_read(tmp_path):
    import pydicom

    from cmbdet.volume import load_volume

    folder = tmp_path / "src" / "ADNI" / "002_S_0295" / "Axial_T2_Star" / "2011-06-02_12_52_24.0" / "I5"
    first = write_dicom_series(folder, geometry("axial"), description="Axial_T2_Star", spots_ras=[],
                               name="e1_{n:03d}.dcm", echo_time_ms=10)
    second = write_dicom_series(folder, geometry("axial"), description="Axial_T2_Star", spots_ras=[],
                                name="e2_{n:03d}.dcm", echo_time_ms=25)
    uid = pydicom.dcmread(first[0]).SeriesInstanceUID
    for echo, files in ((1, first), (2, second)):
        for n, path in enumerate(files):
            ds = pydicom.dcmread(path)
            ds.SeriesInstanceUID, ds.EchoNumbers, ds.InstanceNumber = uid, echo, 100 * echo + n
            ds.save_as(path)
    out = tmp_path / "out"
    assert main(["convert", "adni", str(tmp_path / "src"), "-o", str(out)]) == 0
    row = _rows(out / "manifest.csv")[0]
    assert nib.load(out / row["path"]).shape == (48, 56, 26, 2)
    assert "2 echoes stacked" in _rows(out / "conversion_report.csv")[0]["reason"]
    assert any("multi-echo input (2 echoes)" in note for note in load_volume(out / row["path"]).notes)


def test_detect_and_evaluate_counts_on_a_converted_tree(adni, random_weights, tmp_path, capsys):
    """The converted tree plugs into detect (subject ids = manifest scan ids) and evaluate --counts."""
    out = tmp_path / "bids"
    assert main(["convert", "adni", str(adni["src"]), "-o", str(out), "--ratings", str(adni["ratings"])]) == 0
    found = tmp_path / "found"
    assert main(["detect", str(out / "manifest.csv"), "-o", str(found), "--weights", str(random_weights),
                 "--no-pictures"]) == 0
    detected = {r["subject"] for r in _rows(found / "counts.csv")}
    assert detected == set(_by_scan(_rows(out / "manifest.csv")))
    from_folder = tmp_path / "found-folder"  # the BIDS folder itself gives the same subjects
    assert main(["detect", str(out), "-o", str(from_folder), "--weights", str(random_weights), "--no-pictures"]) == 0
    assert {r["subject"] for r in _rows(from_folder / "counts.csv")} == detected
    capsys.readouterr()
    assert main(["evaluate", "--counts", "--truth", str(out / "manifest.csv"), "--detections",
                 str(found / "counts.csv"), "--json"]) == 0
    import json

    report = json.loads(capsys.readouterr().out)
    assert report["figures"]["n_scans"] == 3  # the unrated scan is left out
    assert {r["subject"] for r in report["per_scan"]} == {"sub-ADNI002S0295_ses-m60", "sub-ADNI005S0610_ses-bl",
                                                          "sub-ADNI010S0100_ses-m36"}
    assert main(["evaluate", "--truth", str(out / "truth.csv"), "--detections", str(found / "detections.csv"),
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["pooled"]["n_truth"] == 5


def test_unrated_dicom_folder_detect_says_convert_and_convert_points_needs_no_ratings(random_weights, tmp_path,
                                                                                      capsys):
    """A DICOM folder given to detect: a hint to convert it; `convert points` without --points converts
    the susceptibility-weighted series unrated (a T1 series is skipped), and detect runs on the result."""
    src = tmp_path / "dicom"
    write_dicom_series(src / "patient 7" / "series5", geometry("axial"), description="SWI_Images", spots_ras=[])
    write_dicom_series(src / "patient 7" / "t1", geometry("axial"), description="T1_MPRAGE_SAG", spots_ras=[])
    assert main(["detect", str(src), "-o", str(tmp_path / "nothing"), "--weights", str(random_weights)]) == 2
    err = capsys.readouterr().err
    assert "holds DICOM files and no scan cmbdet can use" in err and f"cmbdet convert points {src}" in err
    out = tmp_path / "bids"
    assert main(["convert", "points", str(src), "-o", str(out)]) == 0
    (row,) = _rows(out / "manifest.csv")  # the T1 series is not taken: not susceptibility-weighted
    assert row["in_truth"] == "0" and row["n_cmb"] == "" and row["format"] == "dicom"
    assert row["source"] == "patient 7/series5" and row["path"].endswith("_swi.nii.gz")  # suffix from the description
    assert row["scan_date"] == "2011-06-02" and row["description"] == "SWI_Images"  # from the headers (were empty)
    # the series folder itself as SRC (the command detect suggests for it): named after the folder (was refused:
    # "no letters or digits in the name")
    assert main(["convert", "points", str(src / "patient 7" / "series5"), "-o", str(tmp_path / "one")]) == 0
    (row,) = _rows(tmp_path / "one" / "manifest.csv")
    assert row["subject"] == "sub-series5" and row["source"] == "."
    report = {r["source"]: r for r in _rows(out / "conversion_report.csv")}
    assert report["patient 7/t1"]["status"] == "skipped" and "T1-weighted" in report["patient 7/t1"]["reason"]
    only_t1 = tmp_path / "t1only"  # nothing susceptibility-weighted: an error that says why, exit 1
    write_dicom_series(only_t1 / "t1", geometry("axial"), description="T1_MPRAGE_SAG", spots_ras=[])
    assert main(["convert", "points", str(only_t1), "-o", str(tmp_path / "none")]) == 1
    err = capsys.readouterr().err
    assert "nothing converted" in err and "T1-weighted" in err and "--all-series" in err
    everything = tmp_path / "all"  # --all-series: as before this rule, every series
    assert main(["convert", "points", str(src), "-o", str(everything), "--all-series"]) == 0
    assert len(_rows(everything / "manifest.csv")) == 2
    points = tmp_path / "points.csv"  # with ratings, an unlisted series follows the same rule; --series widens it
    points.write_text("image,x_mm,y_mm,z_mm\npatient 7/series5,,,\n")
    assert main(["convert", "points", str(src), "-o", str(tmp_path / "rated"), "--points", str(points),
                 "--unlisted-clean"]) == 0
    assert [r["source"] for r in _rows(tmp_path / "rated" / "manifest.csv")] == ["patient 7/series5"]
    assert main(["convert", "points", str(src), "-o", str(tmp_path / "rated2"), "--points", str(points),
                 "--series", "mprage"]) == 0
    assert len(_rows(tmp_path / "rated2" / "manifest.csv")) == 2
    found = tmp_path / "found"
    assert main(["detect", str(out), "-o", str(found), "--weights", str(random_weights), "--no-pictures"]) == 0
    assert [r["status"] for r in _rows(found / "counts.csv")] == ["ok"]


def test_points_csv_columns_are_read_in_any_case_and_unknown_coordinates_are_refused(tmp_path):
    """`X, Y, Z` or upper-case names are the coordinates (they were ignored: every row read as clean)."""
    from cmbdet.datasets.points import read_points
    from cmbdet.errors import InputError

    for header in ("image,x,y,z", "Image,X_MM,Y_MM,Z_MM", "path,X,Y,Z,Diameter,Status"):
        table = tmp_path / "points.csv"
        extra = ",3.5,possible" if "Status" in header else ""
        table.write_text(f"{header}\na.nii.gz,28.5,-18.5,-22.0{extra}\nclean.nii.gz,,,{',,' if extra else ''}\n")
        rated = read_points(table)
        assert [m.xyz_mm for m in rated["a.nii.gz"].microbleeds] == [(28.5, -18.5, -22.0)], header
        assert rated["clean.nii.gz"].microbleeds == []
    table.write_text("image,xw,yw,zw\na.nii.gz,28.5,-18.5,-22.0\n")
    with pytest.raises(InputError, match="coordinate columns"):
        read_points(table)
    table.write_text("image,status\nclean.nii.gz,\n")  # images listed as read clean: no coordinates needed
    assert read_points(table)["clean.nii.gz"].microbleeds == []
    table.write_text("image,x,y,z,status\na.nii.gz,1,2,3,Definite\na.nii.gz,4,5,6,POSSIBLE\na.nii.gz,7,8,9,\n")
    assert [m.status for m in read_points(table)["a.nii.gz"].microbleeds] == ["definite", "possible", "definite"]
    table.write_text("image,x,y,z,status\na.nii.gz,1,2,3,definite\na.nii.gz,4,5,6,mimic\n")  # was read as definite
    with pytest.raises(InputError, match="line 3: status 'mimic' is neither definite nor possible"):
        read_points(table)


def test_a_second_conversion_into_the_same_folder_removes_the_scans_it_no_longer_chooses(tmp_path):
    """The tree holds exactly what the new manifest lists (a stale scan was left behind, and `cmbdet detect OUT`
    would have run it); a file no manifest listed is never touched."""
    import csv

    from cmbdet.datasets.points import convert_points

    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        nib.save(nib.Nifti1Image(rng.uniform(50, 100, (12, 12, 8)).astype(np.float32), np.eye(4)),
                 src / f"{name}.nii.gz")
    convert_points(src, out)
    stale = next(out.rglob("sub-b_*.nii.gz"))
    (out / "notes.txt").write_text("mine")
    (src / "b.nii.gz").unlink()
    convert_points(src, out)
    assert not stale.exists() and not stale.parent.exists()
    assert [p.name for p in out.rglob("*.nii.gz")] == ["sub-a_T2starw.nii.gz"]
    assert (out / "notes.txt").read_text() == "mine"
    with open(out / "conversion_report.csv", newline="") as handle:
        removed = [r for r in csv.DictReader(handle) if r["status"] == "removed"]
    assert [r["source"] for r in removed] == [stale.relative_to(out).as_posix()]
