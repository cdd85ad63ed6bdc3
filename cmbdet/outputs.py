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
from cmbdet.views import sample_views
from cmbdet.volume import Volume, write_like_source

REGIONS = ("lobar", "deep", "infratentorial", "unknown")
#: ``detections.csv`` (and ``_candidates.csv``): the same columns with or without detections and stage 2;
#: a stage score a run did not compute (``--no-reclassify``, weights without a shape model) is left empty.
DETECTION_COLUMNS = ("subject", "x_mm", "y_mm", "z_mm", "i", "j", "k", "score", "diameter_mm", "region",
                     "stage1_score", "stage2_score", "yolo_score", "shape_score")
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


#: What each review row shows, left to right (see `review_views`).
REVIEW_PANELS = ("axial", "coronal", "sagittal", "axial mIP", "axial context")


def review_views(volume: Volume, detections: Detections, *, fov_mm: float = 40.0, size: int = 80,
                 slab_mm: float = 10.0, context_mm: float = 120.0) -> np.ndarray:
    """(N, size, size, 5) float32 views per detection for a reader: axial, coronal and sagittal planes
    and an axial minimum-intensity projection over ``slab_mm`` (a vein becomes a line there, a
    microbleed stays a dot), each ``fov_mm`` wide, plus a ``context_mm`` axial view to see where it is.
    Radiological display (see `cmbdet.views`). Enough to redraw the picture without the scan."""
    close = sample_views(volume, detections.xyz_mm, ("axial", "coronal", "sagittal", "axial_mip"),
                         fov_mm=fov_mm, size=size, slab_mm=slab_mm)
    context = sample_views(volume, detections.xyz_mm, ("axial",), fov_mm=context_mm, size=size)
    return np.concatenate([close, context], axis=3)


def draw_review(views: np.ndarray, detections: Detections, subject: str, path: str | Path, *,
                fov_mm: float = 40.0, context_mm: float = 120.0, max_rows: int = 12) -> Path:
    """The review PNG: one row per detection (best score first, at most ``max_rows``) with the views of
    `review_views`, its number, score, region and RAS position; the detection is circled in every
    panel. Radiological display: the patient's right on the image left."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state, no display needed
    from matplotlib.patches import Circle

    order = np.argsort(-detections.score, kind="stable")[:max_rows]
    rows = max(len(order), 1)
    fig = Figure(figsize=(2.2 * len(REVIEW_PANELS), 2.35 * rows + 0.4))
    axes = fig.subplots(rows, len(REVIEW_PANELS), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    fig.suptitle(f"{subject}: {len(detections)} CMB" + ("" if len(detections) else " — nothing detected") +
                 (f" (best {max_rows} shown)" if len(detections) > max_rows else "") +
                 "; radiological display (patient's right on the left)", fontsize=9)
    size = views.shape[1] if views.ndim == 4 else 1
    for row, n in enumerate(order):
        tissue = views[n][views[n] > 0]
        lo, hi = np.percentile(tissue, [1, 99.5]) if tissue.size else (0.0, 1.0)
        for col, name in enumerate(REVIEW_PANELS):
            ax = axes[row, col]
            ax.imshow(views[n, :, :, col], cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
            field = context_mm if name == "axial context" else fov_mm
            radius_px = max(detections.diameter_mm[n] / 2.0 + 2.0, 3.0) * size / field
            ax.add_patch(Circle(((size - 1) / 2, (size - 1) / 2), radius_px, fill=False, color="red", lw=0.8))
            label = f"{name} ({field:g} mm" + (", 10 mm slab)" if name == "axial mIP" else ")")
            ax.set_title(label, fontsize=7)
        x, y, z = detections.xyz_mm[n]
        axes[row, 0].text(-0.08, 0.5, f"#{row + 1}  score {detections.score[n]:.2f}\n{detections.region[n]}\n"
                                      f"RAS ({x:.0f}, {y:.0f}, {z:.0f}) mm",
                          transform=axes[row, 0].transAxes, ha="right", va="center", fontsize=7)
    # fixed margins in inches (the figure grows with the rows): matplotlib's tight_layout found the same
    # ones at ~0.6 s per picture
    height = fig.get_figheight()
    fig.subplots_adjust(left=0.19, right=0.99, bottom=0.1 / height, top=1.0 - 0.85 / height, wspace=0.1,
                        hspace=0.4)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80)
    return Path(path)


def write_review_picture(volume: Volume, detections: Detections, subject: str, path: str | Path) -> Path:
    """`draw_review` of `review_views`: the review PNG straight from a scan and its detections."""
    return draw_review(review_views(volume, detections), detections, subject, path)
