"""Any folder of scans plus a rater's CSV of world coordinates, into the same BIDS tree + manifest.

The CSV has ``image`` (a NIfTI file or a DICOM series folder, relative to SRC), ``x_mm, y_mm, z_mm``
(scanner RAS as nibabel reports it, or DICOM LPS with ``lps``), optionally ``diameter_mm`` and
``status`` (definite/possible; none = definite; any other word is refused). A row with empty coordinates
marks an image read as clean. Every image under SRC is converted (a DICOM series without a row only when
its description says SWI/T2*/GRE, as for ADNI, or matches ``series_pattern``; every one with
``all_series``); one without a row is unrated, or clean with ``unlisted_clean``; without a CSV every
image is unrated (DICOM to NIfTI for `cmbdet detect`). BIDS names come from the file's own
``sub-``/``ses-`` entities when it has them, else from its path (letters and digits: ``site A/patient
01.nii.gz`` -> ``sub-siteApatient01``).
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import numpy as np

from cmbdet.batch import scan_filter
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
from cmbdet.datasets.manifest import (
    UNRATED_COUNTS,
    ConversionResult,
    Microbleed,
    Rated,
    status_of,
    truth_rows,
    write_outputs,
)
from cmbdet.datasets.ratings import header_columns
from cmbdet.datasets.series import choose_series, modality_of
from cmbdet.errors import InputError
from cmbdet.training_data import subject_from_filename


def read_points(path: str | Path, *, lps: bool = False) -> dict[str, Rated]:
    """Rated images (key: ``image`` as written, ``/``-separated) from a points CSV (module docstring)."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = [h.strip() for h in reader.fieldnames or []]
            columns = _point_columns(header, path)
            rows = [(reader.line_num, {name: (row.get(column) or "").strip() for name, column in columns.items()})
                    for row in ({(k or "").strip(): v for k, v in raw.items()} for raw in reader)]
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except (UnicodeDecodeError, csv.Error) as err:
        raise InputError(path, f"not a readable CSV file ({err})") from None
    rated: dict[str, Rated] = {}
    for line, row in rows:
        if not row.get("image"):
            continue
        entry = rated.setdefault(Path(row["image"]).as_posix(), Rated())
        values = [row.get(c, "") for c in ("x_mm", "y_mm", "z_mm")]
        if not any(values):
            continue
        try:
            x, y, z = (float(v) for v in values)
            diameter = float(row["diameter_mm"]) if row.get("diameter_mm") else None
        except ValueError:
            raise InputError(path, f"line {line}: coordinates must be three numbers (got {values})") from None
        if not all(math.isfinite(v) for v in (x, y, z)):
            raise InputError(path, f"line {line}: coordinates must be finite")
        status = (row.get("status") or "").strip()
        if status and not any(word in status.lower() for word in ("defin", "possib")):
            raise InputError(path, f"line {line}: status {status!r} is neither definite nor possible "
                                   "(leave it empty for definite)")
        entry.microbleeds.append(Microbleed(status=status_of(status),
                                            xyz_mm=(-x, -y, z) if lps else (x, y, z), diameter_mm=diameter))
    return rated


#: Column names of a points CSV (any case) -> the name read.
POINT_COLUMNS = {"image": ("image", "path", "file"), "x_mm": ("x_mm", "x"), "y_mm": ("y_mm", "y"),
                 "z_mm": ("z_mm", "z"), "diameter_mm": ("diameter_mm", "diameter"), "status": ("status",)}


def _point_columns(header: list[str], path: Path) -> dict[str, str]:
    """Name read -> header column (`POINT_COLUMNS`, any case). Refuses a CSV without an image column, and one
    whose coordinates cannot be found while it has columns nothing reads (its rows would all read as clean)."""
    columns = header_columns(header, POINT_COLUMNS)
    if "image" not in columns:
        raise InputError(path, f"a points CSV needs an image column (found: {', '.join(header) or 'none'})")
    coordinates = {"x_mm", "y_mm", "z_mm"}
    unread = [h for h in header if h and h not in columns.values()]
    if not coordinates <= columns.keys() and (coordinates & columns.keys() or unread):
        raise InputError(path, f"coordinate columns x_mm, y_mm, z_mm (or x, y, z) not all found (found: "
                               f"{', '.join(header)}); without them every row would read as a clean image")
    return columns


def find_images(src: Path, report: list[dict]) -> dict[str, Path | DicomSeries]:
    """NIfTI files and DICOM series folders under ``src``, keyed by their path relative to it."""
    found: dict[str, Path | DicomSeries] = {}
    for folder, _dirs, names in sorted(os.walk(src)):
        paths = [Path(folder) / n for n in sorted(names) if not n.startswith(".")]
        for path in paths:
            if path.name.lower().endswith((".nii", ".nii.gz")):
                found[path.relative_to(src).as_posix()] = path
        dicoms = [p for p in paths if looks_like_dicom(p)]
        if not dicoms:
            continue
        rel = Path(folder).relative_to(src).as_posix()
        scan = read_dicom_folder(dicoms)
        for path, why in scan.corrupt:
            report.append({"source": path.relative_to(src).as_posix(), "kind": "dicom-file", "status": "skipped",
                           "reason": f"corrupt DICOM file left out: {why}"})
        if len(scan.series) > 1:
            report.append({"source": rel, "kind": "dicom", "status": "skipped",
                           "reason": f"{len(scan.series)} DICOM series in one folder; put each in its own folder"})
        elif scan.series:
            found[rel] = scan.series[0]
    return found


def _names(rel: str) -> tuple[str, str, str]:
    """(participant label, session label, modality) for an image path relative to SRC."""
    name = Path(rel).name
    modality = modality_of(name)
    bids = subject_from_filename(name)
    if bids.startswith("sub-"):
        entities = dict(part.split("-", 1) for part in bids.split("_"))
        return bids_label(entities["sub"]), bids_label(entities.get("ses", "")), modality
    stem = rel[: -len(".nii.gz")] if rel.lower().endswith(".nii.gz") else rel.rsplit(".", 1)[0] if \
        rel.lower().endswith(".nii") else rel
    return bids_label(stem), "", modality


def convert_points(src: str | Path, out: str | Path, points: str | Path | None = None, *, lps: bool = False,
                   unlisted_clean: bool = False, series_pattern: str | None = None, all_series: bool = False,
                   progress=None) -> ConversionResult:
    """Convert every image under ``src`` and its rated points (module docstring; ``points=None``: no
    ratings) into ``out``. A DICOM series without a row is taken by its description (`choose_series`,
    ``series_pattern`` replacing the default rules), or always with ``all_series``."""
    src, out = Path(src), Path(out)
    check_folders(src, out)
    rated_by_image = {} if points is None else read_points(points, lps=lps)
    report: list[dict] = []
    images = find_images(src, report)
    for name in sorted(set(rated_by_image) - set(images)):
        report.append({"source": str(points), "kind": "rating", "status": "unmatched",
                       "reason": f"points for {name}: no such image under SRC"})
    manifest: list[dict] = []
    truth: list[dict] = []
    taken: dict[str, str] = {}
    # rated images first: when two paths give one BIDS name, the rated one is kept
    for n, (rel, image) in enumerate(sorted(images.items(), key=lambda kv: (kv[0] not in rated_by_image, kv[0])),
                                     start=1):
        # SRC itself a DICOM series folder (as `cmbdet detect` suggests for one): named after that folder
        participant, session, modality = _names(src.resolve().name if rel == "." else rel)
        kind = "dicom" if isinstance(image, DicomSeries) else "nifti"
        not_a_scan = scan_filter(image) if kind == "nifti" else None
        if not_a_scan and rel not in rated_by_image and not all_series:  # e.g. sub-01_T1w.nii.gz, *_ph.nii
            report.append({"source": rel, "kind": kind, "status": "skipped",
                           "reason": f"not susceptibility-weighted magnitude by its name ({not_a_scan}); "
                                     "--all-series takes every image"})
            continue
        if kind == "dicom" and modality_of(image.description) == "swi":  # the description over the folder name
            modality = "swi"
        out_rel = image_relpath(participant, session, modality)
        subject = subject_from_filename(out_rel)
        row = {"source": rel, "kind": kind, "subject": subject}
        if kind == "dicom":
            row["description"] = image.description
            row["scan_date"] = image.scan_date
            if rel not in rated_by_image and not all_series:  # an unlisted series is taken by its description
                choice = choose_series(image.description, series_pattern)
                if not choice.take:
                    report.append({**row, "status": "skipped",
                                   "reason": f"{choice.reason}; --all-series takes every series"})
                    continue
        if not participant or subject in taken:
            why = "no letters or digits in the name" if not participant else f"same BIDS name as {taken[subject]}"
            report.append({**row, "status": "error", "reason": why})
            continue
        taken[subject] = rel
        if progress:
            progress(f"[{n}/{len(images)}] {rel} -> {out_rel}")
        files = image.files if isinstance(image, DicomSeries) else [image]
        try:
            written = write_image(out / out_rel, source_rel=rel, source_sha256=fingerprint(files, src),
                                  nifti=None if kind == "dicom" else image, dicom=image if kind == "dicom" else None)
        except InputError as err:
            report.append({**row, "status": "error", "reason": str(err)})
            continue
        rated = rated_by_image.get(rel, Rated() if unlisted_clean else None)
        notes = list(written.notes)
        if rated is not None:
            truth.extend(truth_rows(subject, rated))
            outside = points_outside(out / out_rel, np.array([m.xyz_mm for m in rated.microbleeds]).reshape(-1, 3))
            if outside:
                notes.append(f"{outside} rated point(s) outside the image (LPS coordinates? see --lps)")
        manifest.append({
            "subject": f"sub-{participant}",
            "session": f"ses-{session}" if session else "", "image_id": "", "path": out_rel.as_posix(),
            "modality": modality, **(rated.count_columns() if rated is not None else UNRATED_COUNTS),
            "in_truth": int(rated is not None), "format": kind, "source": rel, "scan_date": row.get("scan_date", ""),
            "description": row.get("description", ""),
        })
        report.append({**row, "status": "converted", "reason": "; ".join(notes), "output": out_rel.as_posix()})
    write_dataset_description(out, "scans with rated points (cmbdet convert points)")
    truth.sort(key=lambda r: r["subject"])
    files = write_outputs(out, manifest, report, truth)
    return ConversionResult(manifest=manifest, report=report, files=files)
