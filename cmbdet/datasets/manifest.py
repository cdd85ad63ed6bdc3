"""What a conversion writes beside the BIDS tree: ``manifest.csv``, ``truth.csv``, ``conversion_report.csv``.

``manifest.csv``: one row per converted scan, columns `MANIFEST_COLUMNS`. ``subject`` (``sub-X``) and
``session`` (``ses-Y``, empty when there is none) together give the scan's id ``sub-X_ses-Y``: the id
``cmbdet detect`` derives from the file name and reads from a manifest, and the one truth.csv uses.
``path`` is relative to the manifest's folder. ``n_cmb`` = ``n_cmb_definite`` + ``n_cmb_possible``
for a rated scan, empty for an unrated one.

``truth.csv`` (only when the ratings give coordinates): the format ``cmbdet evaluate`` and ``train``
read — one row per microbleed (``subject, x_mm, y_mm, z_mm`` scanner RAS, ``diameter_mm``, ``region``,
``status``), one row with empty coordinates for a scan read as clean. A rated scan whose microbleeds
lack coordinates is left out of it (its count is in the manifest).

``conversion_report.csv``: every series, file and rating seen, and what happened to it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cmbdet.outputs import write_csv_atomic

MANIFEST_COLUMNS = (
    "subject", "session", "image_id", "path", "modality",
    "n_cmb", "n_cmb_definite", "n_cmb_possible", "in_truth",
    "rid", "scan_date", "visit_code", "description", "format", "source",
)
TRUTH_COLUMNS = ("subject", "x_mm", "y_mm", "z_mm", "diameter_mm", "region", "status")
REPORT_COLUMNS = ("source", "kind", "status", "reason", "subject", "image_id", "description", "scan_date",
                  "output")


@dataclass
class Microbleed:
    """One rated microbleed; ``xyz_mm`` scanner RAS mm or None; ``status`` ``definite``/``possible``."""

    status: str
    xyz_mm: tuple[float, float, float] | None = None
    diameter_mm: float | None = None
    region: str = ""


def status_of(text: str) -> str:
    """A rater's status word -> ``possible`` (anything saying possible) or ``definite`` (the rest)."""
    return "possible" if "possib" in (text or "").lower() else "definite"


@dataclass
class Rated:
    """The rating of one converted scan: its microbleeds (empty list = read as clean)."""

    microbleeds: list[Microbleed] = field(default_factory=list)

    @property
    def has_coordinates(self) -> bool:
        return all(m.xyz_mm is not None for m in self.microbleeds)

    def count_columns(self) -> dict:
        definite = sum(m.status == "definite" for m in self.microbleeds)
        return {"n_cmb": len(self.microbleeds), "n_cmb_definite": definite,
                "n_cmb_possible": len(self.microbleeds) - definite}


UNRATED_COUNTS = {"n_cmb": "", "n_cmb_definite": "", "n_cmb_possible": ""}


def truth_rows(subject: str, rated: Rated) -> list[dict]:
    """truth.csv rows of one scan (one empty-coordinate row when clean)."""
    if not rated.microbleeds:
        return [{"subject": subject}]
    return [{"subject": subject, "x_mm": f"{m.xyz_mm[0]:.3f}", "y_mm": f"{m.xyz_mm[1]:.3f}",
             "z_mm": f"{m.xyz_mm[2]:.3f}", "diameter_mm": "" if m.diameter_mm is None else f"{m.diameter_mm:g}",
             "region": m.region, "status": m.status} for m in rated.microbleeds if m.xyz_mm is not None]


@dataclass
class ConversionResult:
    """What `convert_loni` / `convert_points` did: the rows it wrote and the files."""

    manifest: list[dict]
    report: list[dict]
    files: dict[str, Path]

    def count(self, status: str) -> int:
        return sum(r["status"] == status for r in self.report)


def remove_unchosen_scans(out: Path, kept: set[str]) -> list[dict]:
    """Remove the scans (image + JSON sidecar) that an earlier conversion into ``out`` wrote — those its
    ``manifest.csv`` lists — and this one did not (e.g. a new ratings table chose other scans), so that the
    tree holds exactly what the new manifest lists; one ``removed`` report row each. Files no manifest
    listed are never touched."""
    import csv

    from cmbdet.datasets.dicom import sidecar_path_of

    previous = out / "manifest.csv"
    if not previous.is_file():
        return []
    with open(previous, newline="") as handle:
        listed = [row.get("path", "") for row in csv.DictReader(handle)]
    rows = []
    for relative in sorted({r for r in listed if r and r not in kept}):
        image = out / relative
        if not image.resolve().is_relative_to(out.resolve()):
            continue
        for path in (image, sidecar_path_of(image)):
            path.unlink(missing_ok=True)
        for folder in image.parents:
            if folder == out or not folder.is_relative_to(out) or any(folder.iterdir()):
                break
            folder.rmdir()
        rows.append({"source": relative, "kind": "output", "status": "removed",
                     "reason": "written by an earlier conversion into this folder; not chosen by this one"})
    return rows


def write_outputs(out: Path, manifest: list[dict], report: list[dict], truth: list[dict] | None) -> dict[str, Path]:
    """Write manifest.csv (rows sorted in place by subject, session), conversion_report.csv and, when
    given, truth.csv (scans an earlier conversion into ``out`` wrote and this one did not choose are removed
    first: `remove_unchosen_scans`); without truth, a truth.csv of an earlier conversion into ``out`` is removed (it
    would describe other ratings, perhaps other scans)."""
    manifest.sort(key=lambda r: (r["subject"], r["session"]))
    report.extend(remove_unchosen_scans(out, {row["path"] for row in manifest}))
    written = {
        "manifest": write_csv_atomic(out / "manifest.csv", manifest, MANIFEST_COLUMNS),
        "report": write_csv_atomic(out / "conversion_report.csv", report, REPORT_COLUMNS),
    }
    if truth is not None:
        written["truth"] = write_csv_atomic(out / "truth.csv", truth, TRUTH_COLUMNS)
    else:
        (out / "truth.csv").unlink(missing_ok=True)
    return written
