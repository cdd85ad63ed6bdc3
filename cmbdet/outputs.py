"""What a run writes: CSV tables, label maps in the input's grid, markups, review pictures.

Every file is written to a temp file in its folder and renamed into place, so a killed run never
leaves a half-written file behind.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cmbdet.atomic import atomic_path, write_text_atomic
from cmbdet.detections import Detections
from cmbdet.volume import Volume, write_like_source

REGIONS = ("lobar", "deep", "infratentorial")
DETECTION_COLUMNS = ("subject", "x_mm", "y_mm", "z_mm", "i", "j", "k", "score", "diameter_mm", "region")
COUNT_COLUMNS = ("subject", "n_cmb", *(f"n_{r}" for r in REGIONS), "status", "message", "input")


def write_csv_atomic(path: str | Path, rows: Sequence[dict], columns: Sequence[str]) -> Path:
    """A CSV with ``columns`` first, then any extra keys found in the rows (in first-seen order)."""
    extra: list[str] = []
    for row in rows:
        extra.extend(k for k in row if k not in columns and k not in extra)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[*columns, *extra], restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return write_text_atomic(path, buffer.getvalue())


def count_row(subject: str, detections: Detections, *, message: str = "", input_path: str = "") -> dict:
    """The ``counts.csv`` row of a subject that ran."""
    row = {"subject": subject, "n_cmb": len(detections)}
    for region in REGIONS:
        row[f"n_{region}"] = int(np.sum(detections.region == region))
    row.update(status="ok", message=message, input=input_path)
    return row


def error_row(subject: str, message: str, input_path: str = "") -> dict:
    """The ``counts.csv`` row of a subject that failed."""
    row: dict = {"subject": subject, "n_cmb": "", **{f"n_{r}": "" for r in REGIONS}}
    row.update(status="error", message=message, input=input_path)
    return row


def label_map(volume: Volume, detections: Detections) -> np.ndarray:
    """(I, J, K) int16 on the volume's canonical grid: detection n (1-based, score order) painted as a
    sphere of its estimated diameter (at least one voxel), 0 elsewhere."""
    labels = np.zeros(volume.shape, dtype=np.int16)
    spacing = volume.spacing_mm
    centres = volume.xyz_mm_to_ijk(detections.xyz_mm)
    for n, (centre, diameter) in enumerate(zip(centres, detections.diameter_mm, strict=True), start=1):
        radius_mm = max(float(diameter) / 2.0, 0.5)
        reach = np.ceil(radius_mm / spacing).astype(int) + 1
        nearest = np.rint(centre).astype(int)
        lo = np.maximum(nearest - reach, 0)
        hi = np.minimum(nearest + reach + 1, volume.shape)
        if np.any(hi <= lo):
            continue
        grid = np.indices(hi - lo).reshape(3, -1).T + lo
        dist = np.linalg.norm((grid - centre) * spacing, axis=1)
        inside = grid[dist <= radius_mm]
        if len(inside) == 0 and np.all((nearest >= 0) & (nearest < volume.shape)):
            inside = nearest[None]
        free = labels[tuple(inside.T)] == 0
        labels[tuple(inside[free].T)] = n
    return labels


def write_label_map(volume: Volume, detections: Detections, path: str | Path) -> Path:
    """The detections as a label map NIfTI in the input file's exact grid."""
    return write_like_source(volume, label_map(volume, detections), path, dtype=np.int16)


def write_markups(detections: Detections, subject: str, path: str | Path) -> Path:
    """3D Slicer markups (``.mrk.json``) with one control point per detection, RAS mm."""
    points = [
        {
            "id": str(n + 1),
            "label": f"CMB-{n + 1} ({detections.region[n] or 'unassigned'}, score {detections.score[n]:.2f})",
            "position": [round(float(v), 3) for v in detections.xyz_mm[n]],
            "selected": True,
            "locked": True,
            "visibility": True,
            "positionStatus": "defined",
        }
        for n in range(len(detections))
    ]
    document = {
        "@schema": "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/"
        "Schema/markups-schema-v1.0.3.json#",
        "markups": [{"type": "Fiducial", "coordinateSystem": "RAS", "coordinateUnits": "mm",
                     "name": f"{subject} CMB", "controlPoints": points}],
    }
    return write_text_atomic(path, json.dumps(document, indent=1))


def write_review_picture(volume: Volume, detections: Detections, subject: str, path: str | Path,
                         *, max_panels: int = 12) -> Path:
    """A PNG for review: per detection, a 40 mm axial view centred on it (radiological display:
    the patient's right on the image left), circled, with its score and region; plus a whole
    axial slice through the best detection (or the middle of the volume when there is none)."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state, no display needed
    from matplotlib.patches import Circle

    shown = detections.sorted_by_score().subset(np.arange(min(len(detections), max_panels)))
    n_panels = 1 + len(shown)
    cols = min(n_panels, 4)
    rows = int(np.ceil(n_panels / cols))
    fig = Figure(figsize=(3.2 * cols, 3.4 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    data = volume.data
    sample = data[:: 2, :: 2, :: 2]
    sample = sample[sample > 0]
    lo, hi = np.percentile(sample, [1, 99.5]) if sample.size else (0.0, 1.0)
    centres = volume.xyz_mm_to_ijk(shown.xyz_mm)
    spacing = volume.spacing_mm
    aspect = float(spacing[1] / spacing[0])

    def show(ax, plane: np.ndarray, i0: int = 0, j0: int = 0) -> None:
        # Canonical (i, j) plane: x = i (towards patient right), y = j (anterior up); the x axis is
        # inverted so that the patient's right is on the image left (radiological convention).
        extent = (i0 - 0.5, i0 + plane.shape[0] - 0.5, j0 - 0.5, j0 + plane.shape[1] - 0.5)
        ax.imshow(plane.T, cmap="gray", vmin=lo, vmax=hi, origin="lower", extent=extent, aspect=aspect)
        ax.invert_xaxis()

    k_overview = int(np.clip(round(centres[0, 2]), 0, volume.shape[2] - 1)) if len(shown) else volume.shape[2] // 2
    overview = axes.ravel()[0]
    show(overview, data[:, :, k_overview])
    for n, c in enumerate(centres):
        if abs(c[2] - k_overview) < 1.5:
            overview.add_patch(Circle((c[0], c[1]), 6 / spacing[0], fill=False, color="red", lw=0.8))
            overview.text(c[0] - 6 / spacing[0], c[1] + 6 / spacing[1], str(n + 1), color="yellow", fontsize=7)
    overview.set_title(f"{subject}: {len(detections)} CMB\naxial slice k={k_overview} (R on left)", fontsize=8)
    half = np.ceil(20.0 / spacing[:2]).astype(int)
    for n, (c, ax) in enumerate(zip(centres, axes.ravel()[1:], strict=False)):
        i, j, k = (int(round(v)) for v in c)
        k = int(np.clip(k, 0, volume.shape[2] - 1))
        i0, i1 = max(i - half[0], 0), min(i + half[0] + 1, volume.shape[0])
        j0, j1 = max(j - half[1], 0), min(j + half[1] + 1, volume.shape[1])
        show(ax, data[i0:i1, j0:j1, k], i0, j0)
        radius = max(shown.diameter_mm[n] / 2.0 + 2.0, 3.0) / spacing[0]
        ax.add_patch(Circle((c[0], c[1]), radius, fill=False, color="red", lw=0.8))
        ax.set_title(f"#{n + 1} score {shown.score[n]:.2f} {shown.region[n]}\n"
                     f"({shown.xyz_mm[n, 0]:.0f}, {shown.xyz_mm[n, 1]:.0f}, {shown.xyz_mm[n, 2]:.0f}) mm RAS",
                     fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90)
    return Path(path)
