"""Microbleed read tables (ADNI ``MAYOADIRL_MRI_MCH_<date>.csv`` and tables shaped like it).

One row per finding. Columns are found case-insensitively: ``RID``; ``SCANDATE`` (or
``EXAMDATE``); ``VISCODE2`` / ``VISCODE``; the LONI image id ``LONI_IMAGE`` / ``LONI_IMG_ID`` /
``IMAGEUID`` (``I123456`` or ``123456``); ``TYPE`` (``MCH`` = microbleed; other types such as
superficial siderosis or infarcts are not counted); ``STATUS`` (``Definite`` / ``Possible``; a
microbleed without a status counts as definite); ``NOFINDINGS`` (1 = read and clean); optionally
world coordinates ``X, Y, Z`` (or ``x_mm, y_mm, z_mm``; scanner RAS mm unless ``lps``),
``DIAMETER`` / ``diameter_mm`` and ``LOCATION`` / ``region``.

A read scan is keyed by its image id when the row has one, else by (RID, scan date).
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path

from cmbdet.datasets.manifest import Microbleed, status_of
from cmbdet.errors import InputError

_ALIASES = {
    "rid": ("rid",),
    "scandate": ("scandate", "scan_date", "examdate", "exam_date"),
    "viscode2": ("viscode2",),
    "viscode": ("viscode",),
    "image_id": ("loni_image", "loni_img_id", "imageuid", "image_id", "loni_imageid"),
    "type": ("type", "finding_type"),
    "status": ("status",),
    "nofindings": ("nofindings", "no_findings"),
    "x": ("x_mm", "x", "coord_x"),
    "y": ("y_mm", "y", "coord_y"),
    "z": ("z_mm", "z", "coord_z"),
    "diameter": ("diameter_mm", "diameter", "size_mm"),
    "region": ("region", "location"),
}


@dataclass
class ScanRating:
    """All rows of one read scan: its key, visit code, microbleeds and the other findings' types."""

    key: tuple
    rid: int | None
    scan_date: date | None
    image_id: str  # digits only, "" when the table has none
    visit_code: str
    lines: list[int] = field(default_factory=list)
    microbleeds: list[Microbleed] = field(default_factory=list)
    other_findings: list[str] = field(default_factory=list)
    no_findings: bool = False

    def describe(self) -> str:
        what = f"image I{self.image_id}" if self.image_id else f"RID {self.rid} scan date {self.scan_date}"
        return f"rating of {what} (line(s) {', '.join(map(str, self.lines[:5]))})"


@dataclass
class RatingTable:
    """Read scans keyed by ``("image", id)`` or ``("rid-date", rid, date)``; ``has_coordinates``: the
    table has coordinate columns at all."""

    scans: dict[tuple, ScanRating]
    has_coordinates: bool
    source: str


def normalise_image_id(value: str) -> str:
    """``I123456`` / ``123456`` / ``123456.0`` -> ``123456``; "" when empty or not an id."""
    text = str(value or "").strip()
    match = re.fullmatch(r"[Ii]?(\d+)(\.0+)?", text)
    return str(int(match.group(1))) if match else ""


def parse_date(value: str) -> date | None:
    """Dates as LONI and the ADNI tables write them (``2011-06-02``, ``6/2/2011``, ``20110602``, with or
    without a time); None when empty or unreadable."""
    text = str(value or "").strip()
    if not text:
        return None
    text = text.split(" ")[0].split("T")[0]
    for fmt in ("%Y-%m-%d", "%m/%d/%Y", "%Y%m%d", "%d.%m.%Y", "%Y/%m/%d", "%m/%d/%y"):
        try:
            return datetime.strptime(text, fmt).date()
        except ValueError:
            continue
    return None


def read_ratings(path: str | Path, *, lps: bool = False) -> RatingTable:
    """Read a microbleed table (see module docstring). ``lps``: coordinates are DICOM LPS, not RAS.

    Raises InputError naming the file for a missing file, missing columns or bad numbers.
    """
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = [h.strip() for h in reader.fieldnames or []]
            column = header_columns(header)
            rows = [(reader.line_num, row) for row in reader]
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except (UnicodeDecodeError, csv.Error) as err:
        raise InputError(path, f"not a readable CSV file ({err})") from None
    if "rid" not in column and "image_id" not in column:
        raise InputError(path, "a rating table needs RID (+ SCANDATE) or LONI_IMAGE columns "
                               f"(found: {', '.join(header)})")
    if "image_id" not in column and "scandate" not in column:
        raise InputError(path, "without LONI_IMAGE the rating table needs SCANDATE to match scans")
    coords = all(c in column for c in ("x", "y", "z"))
    scans: dict[tuple, ScanRating] = {}
    for line, raw in rows:
        row = {k.strip(): (v or "").strip() for k, v in raw.items() if k}
        if not any(row.values()):
            continue

        def get(name: str, row: dict = row) -> str:
            return row.get(column.get(name, ""), "")
        image_id = normalise_image_id(get("image_id"))
        rid = _int(get("rid"), "RID", path, line)
        scan_date = parse_date(get("scandate"))
        if image_id:
            key: tuple = ("image", image_id)
        elif rid is not None and scan_date is not None:
            key = ("rid-date", rid, scan_date)
        else:
            raise InputError(path, f"line {line}: neither an image id nor RID + scan date")
        scan = scans.setdefault(key, ScanRating(key=key, rid=rid, scan_date=scan_date, image_id=image_id,
                                                visit_code=get("viscode2") or get("viscode")))
        scan.lines.append(line)
        scan.visit_code = scan.visit_code or get("viscode2") or get("viscode")
        if get("nofindings") in ("1", "1.0", "yes", "Yes", "TRUE", "True", "true"):
            scan.no_findings = True
        finding = get("type").upper()
        if not finding:
            continue
        if finding != "MCH":
            scan.other_findings.append(finding)
            continue
        xyz = None
        if coords and all(get(c) for c in ("x", "y", "z")):
            x, y, z = (_float(get(c), c, path, line) for c in ("x", "y", "z"))
            xyz = (-x, -y, z) if lps else (x, y, z)
        diameter = _float(get("diameter"), "diameter", path, line) if get("diameter") else None
        scan.microbleeds.append(Microbleed(status=status_of(get("status")), xyz_mm=xyz, diameter_mm=diameter,
                                           region=get("region")))
    return RatingTable(scans=scans, has_coordinates=coords, source=str(path))


def header_columns(header: list[str], aliases_of: dict[str, tuple[str, ...]] | None = None) -> dict[str, str]:
    """Name -> the header column read as it: the first of its aliases found, in any case (default: the rating
    tables' `_ALIASES`)."""
    lower = {h.lower(): h for h in header}
    found = {}
    for name, aliases in (aliases_of or _ALIASES).items():
        for alias in aliases:
            if alias in lower:
                found[name] = lower[alias]
                break
    return found


def _int(text: str, name: str, path: Path, line: int) -> int | None:
    if not text:
        return None
    try:
        return int(float(text))
    except ValueError:
        raise InputError(path, f"line {line}: {name} is not a number ({text!r})") from None


def _float(text: str, name: str, path: Path, line: int) -> float:
    try:
        return float(text)
    except ValueError:
        raise InputError(path, f"line {line}: {name} is not a number ({text!r})") from None
