"""Converting a LONI download tree (ADNI, AIBL): walk it, pick the scans, match ratings, write BIDS.

A download is ``<SUBJECT>/<series description>/<YYYY-MM-DD_HH_MM_SS.0>/<I#### or S####>/files`` below
SRC (DICOM slices or one NIfTI; LONI's metadata XML anywhere in SRC). `convert_loni` does, in order:

1. walk SRC; every folder holding image files is one download (a folder that does not fit the layout
   is reported as ``unknown layout``); DICOM files are read with pydicom, corrupt ones reported and
   left out; each series is kept or skipped from its description (`cmbdet.datasets.series`);
2. match the ratings to the kept scans: by LONI image id when the table has it, else (or when that
   image is not in SRC) by (RID, scan date); ratings that match nothing are reported;
3. group the kept scans into visits: the session label is the visit code of the ratings (VISCODE2),
   else the scan date (``YYYYMMDD``); per visit one scan is converted by the rule ``several`` (default
   ``rated-latest``: the rated scan, else the latest acquisition; ``latest``; ``earliest``) and the
   others are reported;
4. write each chosen scan into the BIDS tree (`cmbdet.datasets.bids.write_image`), then manifest.csv,
   truth.csv and conversion_report.csv (`cmbdet.datasets.manifest`).

SRC is only read. A rerun with the same inputs gives the same manifest and rewrites no image.
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path

import numpy as np

from cmbdet.datasets import SEVERAL_SCANS_RULES
from cmbdet.datasets.bids import (
    bids_label,
    check_folders,
    fingerprint,
    image_relpath,
    points_outside,
    write_dataset_description,
    write_image,
)
from cmbdet.datasets.dicom import DicomSeries, looks_like_dicom, read_dicom_folder
from cmbdet.datasets.manifest import UNRATED_COUNTS, ConversionResult, Rated, truth_rows, write_outputs
from cmbdet.datasets.ratings import RatingTable, ScanRating, normalise_image_id, parse_date
from cmbdet.datasets.series import choose_series
from cmbdet.errors import InputError
from cmbdet.training_data import subject_from_filename

#: Note on a converted scan whose rating was matched by RID + scan date on a day with several scans.
SAME_DAY_NOTE = "rating matched by RID + scan date on a day with several kept scans"

_TIMESTAMP = re.compile(r"^(\d{4})-(\d{2})-(\d{2})_(\d{2})_(\d{2})_(\d{2})(\.\d+)?$")
_ID_FOLDER = re.compile(r"^([IS])(\d+)$")
_IMAGE_IN_NAME = re.compile(r"_I(\d+)\.(?:dcm|nii|nii\.gz|xml)$", re.IGNORECASE)
_SERIES_IN_NAME = re.compile(r"_S(\d+)_", re.IGNORECASE)


@dataclass(frozen=True)
class LoniLayout:
    """What differs between LONI archives: the subject folder's pattern, the BIDS label and the RID."""

    name: str  # "ADNI", "AIBL"
    subject_pattern: str  # full-match regex for the subject folder
    participant_label: Callable[[str], str]  # subject folder -> BIDS label (letters/digits)
    rid: Callable[[str], int]  # subject folder -> RID of the rating tables


@dataclass
class Scan:
    """One image series found in SRC (a NIfTI file or a DICOM series) and what is known about it."""

    source: Path
    source_rel: str
    format: str  # "dicom" or "nifti"
    subject_folder: str
    participant: str
    rid: int
    description: str
    acquired: datetime | None
    image_id: str  # digits, "" when unknown
    series_id: str
    modality: str = ""
    dicom: DicomSeries | None = None
    nifti: Path | None = None
    xml: dict = field(default_factory=dict)
    ratings: list[ScanRating] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    session: str = ""

    @property
    def scan_date(self) -> date | None:
        return self.acquired.date() if self.acquired else None

    @property
    def files(self) -> list[Path]:
        return self.dicom.files if self.dicom is not None else [self.nifti]

    def report_row(self, status: str, reason: str = "", output: str = "", subject: str = "") -> dict:
        return {"source": self.source_rel, "kind": self.format, "status": status, "reason": reason,
                "subject": subject or f"sub-{self.participant}", "image_id": _iid(self.image_id),
                "description": self.description, "scan_date": _date_text(self.scan_date), "output": output}


def convert_loni(layout: LoniLayout, src: str | Path, out: str | Path, *, ratings: RatingTable | None = None,
                 series_pattern: str | None = None, several: str = "rated-latest",
                 progress: Callable[[str], None] | None = None) -> ConversionResult:
    """Convert a LONI download tree ``src`` into a BIDS tree + manifest in ``out`` (module docstring)."""
    src, out = Path(src), Path(out)
    check_folders(src, out)
    if several not in SEVERAL_SCANS_RULES:
        raise InputError(None, f"unknown rule for several scans of a visit: {several!r} "
                               f"(choose from {', '.join(SEVERAL_SCANS_RULES)})")
    if series_pattern is not None:
        try:
            re.compile(series_pattern)
        except re.error as err:
            raise InputError(None, f"--series is not a valid regular expression ({err})") from None
    report: list[dict] = []
    scans = find_scans(layout, src, report)
    kept = []
    for scan in scans:
        choice = choose_series(scan.description, series_pattern)
        if choice.take:
            scan.modality = choice.modality
            kept.append(scan)
        else:
            report.append(scan.report_row("skipped", choice.reason))
    if ratings is not None:
        report.extend(match_ratings(scans, kept, ratings))
    chosen = choose_per_visit(kept, several, report)

    manifest: list[dict] = []
    truth: list[dict] = []
    for n, scan in enumerate(chosen, start=1):
        rel = image_relpath(scan.participant, scan.session, scan.modality)
        subject = subject_from_filename(rel)
        if progress:
            progress(f"[{n}/{len(chosen)}] {scan.source_rel} -> {rel}")
        try:
            written = write_image(out / rel, source_rel=scan.source_rel,
                                  source_sha256=fingerprint(scan.files, src),
                                  nifti=scan.nifti, dicom=scan.dicom, metadata=_sidecar_metadata(layout, scan))
        except InputError as err:
            report.append(scan.report_row("error", str(err), subject=subject))
            continue
        rated = _rated(scan) if ratings is not None else None
        notes = scan.notes + written.notes
        if rated is not None and rated.microbleeds and rated.has_coordinates:
            outside = points_outside(out / rel, np.array([m.xyz_mm for m in rated.microbleeds]))
            if outside:
                notes.append(f"{outside} rated point(s) outside the image (LPS coordinates? see --lps)")
        in_truth = rated is not None and ratings.has_coordinates and rated.has_coordinates
        if in_truth:
            truth.extend(truth_rows(subject, rated))
        manifest.append({
            "subject": f"sub-{scan.participant}", "session": f"ses-{scan.session}",
            "image_id": _iid(scan.image_id), "path": rel.as_posix(), "modality": scan.modality,
            **(rated.count_columns() if rated is not None else UNRATED_COUNTS), "in_truth": int(in_truth),
            "rid": scan.rid, "scan_date": _date_text(scan.scan_date), "visit_code": _visit_code(scan),
            "description": scan.description, "format": scan.format, "source": scan.source_rel,
        })
        report.append(scan.report_row("converted", "; ".join(notes), rel.as_posix(), subject))
    write_dataset_description(out, f"{layout.name} susceptibility-weighted scans (cmbdet convert)")
    truth.sort(key=lambda r: r["subject"])
    files = write_outputs(out, manifest, report, truth if ratings is not None and ratings.has_coordinates else None)
    return ConversionResult(manifest=manifest, report=report, files=files)


# ------------------------------------------------------------------------------------- walking


def find_scans(layout: LoniLayout, src: Path, report: list[dict]) -> list[Scan]:
    """Every NIfTI file and DICOM series under ``src`` that fits ``layout``; the rest goes to ``report``."""
    xml_by_image = _read_xml_metadata(src, report)
    scans: list[Scan] = []
    for folder, _dirs, names in sorted(os.walk(src)):
        paths = [Path(folder) / n for n in sorted(names) if not n.startswith(".")]
        niftis = [p for p in paths if p.name.lower().endswith((".nii", ".nii.gz"))]
        dicoms = [p for p in paths if p not in niftis and looks_like_dicom(p)]
        if not niftis and not dicoms:
            continue
        rel_folder = Path(folder).relative_to(src)
        where = _parse_location(layout, rel_folder)
        if where is None:
            report.append({"source": rel_folder.as_posix() or ".", "kind": "unknown", "status": "skipped",
                           "reason": f"unknown layout: expected {layout.name}/<subject>/<series description>/"
                                     f"<YYYY-MM-DD_HH_MM_SS.0>/<I or S id>/ ({len(niftis) + len(dicoms)} "
                                     "image file(s) not used)"})
            continue
        subject_folder, description, acquired, leaf_id = where
        base = dict(subject_folder=subject_folder, participant=layout.participant_label(subject_folder),
                    rid=layout.rid(subject_folder), acquired=acquired)
        for path in niftis:
            image_id = _id_from_name(path.name, leaf_id)
            scans.append(Scan(source=path, source_rel=path.relative_to(src).as_posix(), format="nifti",
                              description=description, nifti=path, image_id=image_id,
                              series_id=_series_from_name(path.name, leaf_id),
                              xml=xml_by_image.get(image_id, {}), **base))
        if dicoms:
            found = read_dicom_folder(dicoms)
            for path, why in found.corrupt:
                report.append({"source": path.relative_to(src).as_posix(), "kind": "dicom-file", "status": "skipped",
                               "reason": f"corrupt DICOM file left out: {why}",
                               "subject": f"sub-{base['participant']}", "description": description})
            for series in found.series:
                image_id = _id_from_name(series.files[0].name, leaf_id)
                if len(found.series) > 1:  # several series in one folder: the id no longer tells them apart
                    image_id = ""
                scan = Scan(source=Path(folder), source_rel=rel_folder.as_posix(), format="dicom",
                            description=series.description or description, dicom=series, image_id=image_id,
                            series_id=_series_from_name(series.files[0].name, leaf_id),
                            xml=xml_by_image.get(image_id, {}), **base)
                if scan.acquired is None:
                    scan.acquired = _dicom_datetime(series)
                if found.corrupt:
                    scan.notes.append(f"{len(found.corrupt)} corrupt DICOM file(s) left out")
                scans.append(scan)
    return scans


def _parse_location(layout: LoniLayout, rel: Path) -> tuple[str, str, datetime | None, tuple[str, str]] | None:
    """(subject folder, description folder, acquisition time, (I/S, id) of the leaf) or None."""
    parts = rel.parts
    stamps = [i for i, p in enumerate(parts) if _TIMESTAMP.match(p)]
    if not stamps:
        return None
    t = stamps[-1]
    if t < 2 or t < len(parts) - 2:
        return None
    leaf: tuple[str, str] = ("", "")
    if t == len(parts) - 2:
        match = _ID_FOLDER.match(parts[-1])
        if not match:
            return None
        leaf = (match.group(1), match.group(2))
    if not re.fullmatch(layout.subject_pattern, parts[t - 2]):
        return None
    y, mo, d, h, mi, s = (int(g) for g in _TIMESTAMP.match(parts[t]).groups()[:6])
    try:
        acquired = datetime(y, mo, d, h, mi, s)
    except ValueError:
        return None
    return parts[t - 2], parts[t - 1], acquired, leaf


def _id_from_name(name: str, leaf: tuple[str, str]) -> str:
    if leaf[0] == "I":
        return str(int(leaf[1]))
    match = _IMAGE_IN_NAME.search(name)
    return str(int(match.group(1))) if match else ""


def _series_from_name(name: str, leaf: tuple[str, str]) -> str:
    if leaf[0] == "S":
        return str(int(leaf[1]))
    match = _SERIES_IN_NAME.search(name)
    return str(int(match.group(1))) if match else ""


def _dicom_datetime(series: DicomSeries) -> datetime | None:
    day = parse_date(series.acquired)
    if day is None:
        return None
    digits = re.sub(r"\D", "", series.acquisition_time.split(".")[0]).ljust(6, "0")[:6]
    try:
        return datetime(day.year, day.month, day.day, int(digits[:2]), int(digits[2:4]), int(digits[4:6]))
    except ValueError:
        return datetime(day.year, day.month, day.day)


def _read_xml_metadata(src: Path, report: list[dict]) -> dict[str, dict]:
    """LONI metadata XML files under ``src``, keyed by image id: the first text of each element (by local
    name, e.g. subjectIdentifier, visitIdentifier, seriesIdentifier, imageUID) and ``protocol`` terms."""
    found: dict[str, dict] = {}
    for path in sorted(src.rglob("*.xml")):
        if path.name.startswith("."):
            continue
        try:
            root = ET.parse(path).getroot()
        except (ET.ParseError, OSError) as err:
            report.append({"source": path.relative_to(src).as_posix(), "kind": "xml", "status": "skipped",
                           "reason": f"unreadable metadata XML ({err})"})
            continue
        info: dict = {}
        for element in root.iter():
            tag = element.tag.rsplit("}", 1)[-1]
            text = (element.text or "").strip()
            if tag == "protocol" and element.get("term"):
                info.setdefault("protocol", {})[element.get("term")] = text
            elif text and tag not in info:
                info[tag] = text
        image_id = normalise_image_id(info.get("imageUID", "")) or _id_from_name(path.name, ("", ""))
        if image_id:
            found[image_id] = info
    return found


# ------------------------------------------------------------------------------------ ratings


def match_ratings(scans: list[Scan], kept: list[Scan], table: RatingTable) -> list[dict]:
    """Attach each read scan of ``table`` to the kept scans it rates; report rows for the rest.

    By image id when the rating has one and that image is in SRC; else by (RID, scan date) among the
    kept scans. A rating of an image that was skipped (e.g. not susceptibility-weighted) is reported.
    """
    report: list[dict] = []
    by_id = {s.image_id: s for s in scans if s.image_id}
    kept_ids = {id(s) for s in kept}
    by_visit: dict[tuple[int, date], list[Scan]] = {}
    for scan in kept:
        if scan.scan_date is not None:
            by_visit.setdefault((scan.rid, scan.scan_date), []).append(scan)
    for rating in table.scans.values():
        target = by_id.get(rating.image_id) if rating.image_id else None
        if target is not None:
            if id(target) in kept_ids:
                target.ratings.append(rating)
            else:
                report.append({"source": table.source, "kind": "rating", "status": "unmatched",
                               "reason": f"{rating.describe()} rates {target.source_rel}, which was skipped",
                               "image_id": _iid(rating.image_id)})
            continue
        matched = by_visit.get((rating.rid, rating.scan_date), []) if rating.rid is not None else []
        for scan in matched:
            scan.ratings.append(rating)
            if rating.image_id:
                scan.notes.append(f"rating of image I{rating.image_id} (not in SRC) matched by RID + scan date")
            if len(matched) > 1:
                scan.notes.append(f"{SAME_DAY_NOTE} ({len(matched)} scans): check that {rating.describe()} rates "
                                  "this one, or give the table's image ids")
        if not matched:
            report.append({"source": table.source, "kind": "rating", "status": "unmatched",
                           "reason": f"{rating.describe()}: no such scan in SRC",
                           "image_id": _iid(rating.image_id), "scan_date": _date_text(rating.scan_date)})
    return report


def _rated(scan: Scan) -> Rated | None:
    if not scan.ratings:
        return None
    return Rated(microbleeds=[m for r in scan.ratings for m in r.microbleeds])


def _visit_code(scan: Scan) -> str:
    return next((r.visit_code for r in scan.ratings if r.visit_code), "")


# ------------------------------------------------------------------------------------- visits


def choose_per_visit(kept: list[Scan], several: str, report: list[dict]) -> list[Scan]:
    """Set each scan's session label and keep one scan per (participant, session) by the rule ``several``."""
    by_day: dict[tuple[str, date | None], list[Scan]] = {}
    for scan in kept:
        by_day.setdefault((scan.participant, scan.scan_date), []).append(scan)
    visits: dict[tuple[str, str], list[Scan]] = {}
    for (participant, day), group in by_day.items():
        code = next((_visit_code(s) for s in group if _visit_code(s)), "")
        session = bids_label(code) or (day.strftime("%Y%m%d") if day else "unknown")
        for scan in group:
            scan.session = session
        visits.setdefault((participant, session), []).extend(group)
    chosen = []
    for _key, group in sorted(visits.items()):
        def order(s: Scan) -> tuple:
            return (s.acquired or datetime.min, int(s.image_id or 0), s.source_rel)
        ranked = sorted(group, key=order, reverse=several != "earliest")
        if several == "rated-latest":
            ranked = [s for s in ranked if s.ratings] + [s for s in ranked if not s.ratings]
        chosen.append(ranked[0])
        for other in ranked[1:]:
            unused = "; its rating is not used" if other.ratings else ""
            report.append(other.report_row(
                "skipped", f"another scan of this visit was chosen ({ranked[0].source_rel}; rule {several}){unused}"))
    return chosen


# ------------------------------------------------------------------------------------- helpers


def _sidecar_metadata(layout: LoniLayout, scan: Scan) -> dict:
    meta = {"CmbdetArchive": layout.name, "SeriesDescription": scan.description,
            "CmbdetSubjectFolder": scan.subject_folder}
    if scan.image_id:
        meta["LoniImageId"] = _iid(scan.image_id)
    if scan.series_id:
        meta["LoniSeriesId"] = f"S{scan.series_id}"
    for key in ("visitIdentifier", "subjectIdentifier"):
        if key in scan.xml:
            meta[f"Loni{key[0].upper()}{key[1:]}"] = scan.xml[key]
    return meta


def _iid(image_id: str) -> str:
    return f"I{image_id}" if image_id else ""


def _date_text(day: date | None) -> str:
    return day.isoformat() if day else ""
