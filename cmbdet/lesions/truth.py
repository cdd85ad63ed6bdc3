"""Truth of phantom (or hand-labelled) lesion scans, and matching reported lesions to it.

A truth label map paints lesion n with value n on the image's grid (MRI: the reference sequence's
grid). A truth lesion is found when a reported centroid lies inside it or within ``MATCH_MM`` of its
centroid; each report matches at most one truth lesion and each truth lesion at most one report,
inside-hits first, then by distance (the rule of issue 11's benchmark).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from cmbdet.volume import read_label_map

MATCH_MM = 10.0


@dataclass(frozen=True)
class TruthLesion:
    """One truth lesion: its value in the label map, centroid (scanner RAS mm), volume (mL)."""

    lesion_id: int
    xyz_mm: np.ndarray
    volume_ml: float


def read_truth_map(path: str | Path) -> tuple[np.ndarray, np.ndarray, list[TruthLesion]]:
    """(labels as stored (I, J, K) int32, affine, lesions) of a truth label map."""
    labels, affine = read_label_map(path)
    voxel_ml = float(abs(np.linalg.det(affine[:3, :3]))) / 1000.0
    lesions = []
    for n, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        ijk = np.argwhere(labels[box] == n) + [s.start for s in box]
        lesions.append(TruthLesion(n, nib.affines.apply_affine(affine, ijk).mean(0), len(ijk) * voxel_ml))
    return labels, affine, lesions


def match_reports(report_xyz_mm: np.ndarray, truth_labels: np.ndarray, truth_affine: np.ndarray,
                  truth: list[TruthLesion], match_mm: float = MATCH_MM) -> dict[int, int]:
    """Report index -> index into ``truth`` of the lesion it finds (see module docstring).
    ``report_xyz_mm`` (N, 3) scanner RAS; ``truth_labels`` stored on ``truth_affine``'s grid."""
    inverse = np.linalg.inv(truth_affine)
    candidates = []
    for p, xyz in enumerate(np.asarray(report_xyz_mm, float).reshape(-1, 3)):
        vox = np.rint(nib.affines.apply_affine(inverse, xyz)).astype(int)
        inside = int(truth_labels[tuple(vox)]) if np.all((vox >= 0) & (vox < truth_labels.shape)) else 0
        for t, lesion in enumerate(truth):
            distance = float(np.linalg.norm(xyz - lesion.xyz_mm))
            if inside == lesion.lesion_id or distance <= match_mm:
                candidates.append((0.0 if inside == lesion.lesion_id else distance, p, t))
    matched: dict[int, int] = {}
    for _, p, t in sorted(candidates):
        if p not in matched and t not in matched.values():
            matched[p] = t
    return matched
