"""Labelled scans for training and benchmarking: a phantom/data folder or a manifest CSV.

* A folder: every ``*.nii`` / ``*.nii.gz`` in it is a scan whose subject id is the one ``cmbdet detect``
  gives it (`cmbdet.batch.subject_id`: BIDS entities but echo/part, else the file name without
  extension); ``truth.csv`` beside them holds the CMBs (format of ``cmbdet evaluate``: subject,
  x_mm, y_mm, z_mm, diameter_mm, region; a CMB-free subject has one row with empty coordinates);
  ``mimics.csv`` (optional: subject, x_mm, y_mm, z_mm, kind) lists known mimics used as hard negatives.
* A manifest ``.csv`` with columns ``subject`` and ``image`` or ``path`` (image paths absolute or
  relative to the manifest's folder; ``cmbdet convert`` writes ``path``) and optionally ``session``:
  the scan's id is then ``<subject>_<session>`` (`scan_id`), as ``detect`` names a manifest's scans;
  the truth is ``--truth`` or ``truth.csv`` beside the manifest.

Only subjects that appear in the truth are used: a scan without a truth row has unknown labels.
"""

from __future__ import annotations

import csv
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cmbdet.batch import scan_id, subject_id  # noqa: F401 (scan_id: part of this module's API)
from cmbdet.errors import InputError
from cmbdet.evaluate import read_truth

#: The subject id of a scan file, as ``cmbdet detect`` writes it (kept under its older name).
subject_from_filename = subject_id


@dataclass(frozen=True)
class LabelledScan:
    """One scan with its reference CMBs (scanner RAS mm) and optional known mimics."""

    subject: str
    image_path: Path
    cmb_xyz_mm: np.ndarray  # (N, 3)
    cmb_diameter_mm: np.ndarray  # (N,)
    mimic_xyz_mm: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))  # (M, 3)

    def truth_records(self) -> list[dict]:
        """truth.csv-style records for `cmbdet.evaluate` (one empty-coordinate row if CMB-free)."""
        if len(self.cmb_xyz_mm) == 0:
            return [{"subject": self.subject, "x_mm": "", "y_mm": "", "z_mm": ""}]
        return [{"subject": self.subject, "x_mm": p[0], "y_mm": p[1], "z_mm": p[2], "diameter_mm": d}
                for p, d in zip(self.cmb_xyz_mm, self.cmb_diameter_mm, strict=True)]


def hold_out(scans: list[LabelledScan], fraction: float, rng: np.random.Generator
             ) -> tuple[list[LabelledScan], list[LabelledScan]]:
    """(training, validation): ``fraction`` of the scans held out at random, by ``rng`` (at least one
    if ``fraction`` > 0 and there are two or more; none if ``fraction`` is 0)."""
    order = rng.permutation(len(scans))
    n_val = max(1, int(round(fraction * len(scans)))) if len(scans) > 1 and fraction > 0 else 0
    return [scans[i] for i in order[n_val:]], [scans[i] for i in order[:n_val]]


def read_labelled_set(source: str | Path, truth: str | Path | None = None) -> list[LabelledScan]:
    """Read a labelled folder or manifest (see module docstring) into `LabelledScan`s."""
    source = Path(source)
    if not source.exists():
        raise InputError(source, "no such file or folder")
    if source.is_dir():
        images = {subject_id(p): p for p in sorted(source.iterdir())
                  if p.name.lower().endswith((".nii", ".nii.gz")) and not p.name.startswith(".")}
        folder = source
    else:
        images = _read_manifest(source)
        folder = source.parent
    truth_path = Path(truth) if truth is not None else folder / "truth.csv"
    table = read_truth(truth_path)
    mimics = _read_mimics(folder / "mimics.csv")
    scans = []
    unmatched = [subject for subject in table.subjects if subject not in images]
    if unmatched:
        warnings.warn(f"{truth_path}: {len(unmatched)} subject(s) without a scan in {source.name}, not used: "
                      f"{', '.join(unmatched[:5])}{' ...' if len(unmatched) > 5 else ''}", stacklevel=2)
    unrated = [subject for subject in images if subject not in table.subjects]
    if unrated:
        warnings.warn(f"{source}: {len(unrated)} scan(s) without a row in {truth_path.name} (not even an "
                      f"empty one for a clean scan), not used: {', '.join(unrated[:5])}"
                      f"{' ...' if len(unrated) > 5 else ''}", stacklevel=2)
    for subject in table.subjects:
        if subject not in images:
            continue
        scans.append(LabelledScan(
            subject=subject,
            image_path=images[subject],
            cmb_xyz_mm=table.centres[subject],
            cmb_diameter_mm=np.nan_to_num(table.diameters[subject], nan=4.0),
            mimic_xyz_mm=mimics.get(subject, np.zeros((0, 3))),
        ))
    if not scans:
        raise InputError(source, f"no scan matches a subject of {truth_path.name}")
    _check_points_inside(scans, truth_path)
    return scans


def _check_points_inside(scans: list[LabelledScan], truth_path: Path) -> None:
    """Warn of microbleeds outside their scan's field of view; refuse a table none of whose microbleeds
    is inside (coordinates in another space: LPS, voxels, another scan's grid)."""
    import nibabel as nib

    from cmbdet.volume import read_nifti

    outside, total = 0, 0
    for scan in scans:
        if not len(scan.cmb_xyz_mm):
            continue
        image = read_nifti(Path(scan.image_path))
        ijk = nib.affines.apply_affine(np.linalg.inv(image.affine), scan.cmb_xyz_mm)
        away = int((np.any(ijk < -0.5, axis=1) | np.any(ijk > np.array(image.shape[:3]) - 0.5, axis=1)).sum())
        if away:
            warnings.warn(f"{truth_path}: {away} of {len(ijk)} microbleed(s) of {scan.subject} lie outside its "
                          "image", stacklevel=3)
        outside, total = outside + away, total + len(ijk)
    if total and outside == total:
        raise InputError(truth_path, f"none of its {total} microbleeds lies inside its scan: coordinates must be "
                                     "scanner RAS mm as nibabel reports them (not LPS, not voxels)")


def describe_sources(sources: Sequence[str | Path], scans: Sequence[LabelledScan], *, role: str | None = None) -> dict:
    """What a model was trained or validated on, for its weights' metadata — never a path on the
    training machine: each source's name and, for a phantom set, its ``dataset.json`` (family, role,
    seed, counts); and how many scans and CMBs were used from them all. ``role`` (``training`` or
    ``validation``): the role the sources serve for this model; a set written while its family had
    another role keeps that one as ``role_when_written``."""
    described = []
    for source in sources:
        source = Path(source)
        description = (source if source.is_dir() else source.parent) / "dataset.json"
        entry = {"name": source.name}
        if description.is_file():
            entry.update(json.loads(description.read_text()))
        if role is not None:
            entry.setdefault("role", role)  # a folder of real scans has no dataset.json
            if entry["role"] != role:
                entry["role_when_written"], entry["role"] = entry["role"], role
        described.append(entry)
    return {"sources": described, "n_scans": len(scans), "n_cmb": int(sum(len(s.cmb_xyz_mm) for s in scans))}


def _read_manifest(path: Path) -> dict[str, Path]:
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        columns = set(reader.fieldnames or [])
        column = "image" if "image" in columns else "path"
        if "subject" not in columns or column not in columns:
            raise InputError(path, "a manifest needs the columns subject and image (or path)")
        out = {}
        for row in reader:
            if not row[column]:
                continue
            image = Path(row[column])
            out[scan_id(row["subject"], row.get("session") or "")] = image if image.is_absolute() else \
                path.parent / image
    return out


def _read_mimics(path: Path) -> dict[str, np.ndarray]:
    if not path.exists():
        return {}
    points: dict[str, list[list[float]]] = {}
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            try:
                points.setdefault(row["subject"], []).append([float(row[c]) for c in ("x_mm", "y_mm", "z_mm")])
            except (KeyError, ValueError):
                continue
    return {s: np.asarray(p, dtype=float).reshape(-1, 3) for s, p in points.items()}
