"""Training the stage-2 shape model and choosing how stage 2 weighs it against the YOLO classifier.

The shape model learns from the stage-1 candidates of labelled training scans (a candidate that
matches a microbleed is one, a candidate farther than 6 mm from every microbleed is a mimic; ones in
between are left out), the microbleeds' own centres, and up to `MAX_MIMICS` known mimic points per
scan (veins, iron, calcifications, air-bone artefacts from the phantom's ``mimics.csv``). How much
it counts — its share of the stage-2 probability, the stage-1 weight, the threshold and how many
stage-1 candidates stage 2 reads — is chosen on validation scans of another family, never on the training scans.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cmbdet.evaluate import match_detections
from cmbdet.preprocess import WorkingImage, prepare_working_image
from cmbdet.reclassifier.shape import CONTEXT_SPACING_MM, shape_features
from cmbdet.reclassifier.shape_model import MAX_TREES, ShapeModel, fit_shape_model
from cmbdet.training_data import LabelledScan
from cmbdet.volume import Volume

#: Shares of the shape model in the stage-2 probability tried on the validation scans.
SHAPE_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
#: Known mimic points measured per training scan.
MAX_MIMICS = 12
#: Numbers of stage-1 candidates per scan tried on the validation scans.
CANDIDATE_COUNTS = (30, 60, 100, 150)


@dataclass
class ShapeSamples:
    """One labelled scan's stage-1 candidates (highest stage-1 score first) and what they are."""

    subject: str
    candidate_rows: list[dict]  # subject, x_mm, y_mm, z_mm, score (stage 1)
    candidate_features: np.ndarray  # (N, n_features)
    is_cmb: np.ndarray  # (N,) bool: matches a microbleed
    clear_mimic: np.ndarray  # (N,) bool: farther than 6 mm from every microbleed
    truth_features: np.ndarray  # (M, n_features) at the microbleeds' centres
    truth_rows: list[dict]
    mimic_features: np.ndarray  # (K, n_features) at known mimics farther than 6 mm from every microbleed


def shape_samples(scan: LabelledScan, volume: Volume, candidate_xyz_mm: np.ndarray,
                  stage1: np.ndarray, working: WorkingImage | None = None) -> ShapeSamples:
    """Label a scan's stage-1 candidates (scanner RAS mm, ordered by ``stage1``) and measure them.
    ``working``: the scan's working image at `CONTEXT_SPACING_MM` if already made (stage 1's)."""
    matched = match_detections(scan.cmb_xyz_mm, scan.cmb_diameter_mm, candidate_xyz_mm, stage1)
    clear = matched < 0
    if len(scan.cmb_xyz_mm) and len(candidate_xyz_mm):
        clear &= np.linalg.norm(candidate_xyz_mm[:, None] - scan.cmb_xyz_mm[None], axis=-1).min(1) > 6.0
    rows = [{"subject": scan.subject, "x_mm": float(p[0]), "y_mm": float(p[1]), "z_mm": float(p[2]),
             "score": float(s)} for p, s in zip(candidate_xyz_mm, stage1, strict=True)]
    if working is None:
        working = prepare_working_image(volume, CONTEXT_SPACING_MM)
    return ShapeSamples(scan.subject, rows, shape_features(volume, candidate_xyz_mm, working), matched >= 0, clear,
                        shape_features(volume, scan.cmb_xyz_mm, working), scan.truth_records(),
                        shape_features(volume, known_mimics(scan), working))


def known_mimics(scan: LabelledScan, limit: int = MAX_MIMICS) -> np.ndarray:
    """(K, 3) the first ``limit`` known mimic points of a scan farther than 6 mm from every microbleed."""
    mimics = scan.mimic_xyz_mm.reshape(-1, 3)
    if len(scan.cmb_xyz_mm) and len(mimics):
        mimics = mimics[np.linalg.norm(mimics[:, None] - scan.cmb_xyz_mm[None], axis=-1).min(1) > 6.0]
    return mimics[:limit]


def train_shape_model(samples: Sequence[ShapeSamples], *, seed: int = 0, max_trees: int = MAX_TREES) -> ShapeModel:
    """Fit the shape model on training scans' candidates (microbleed vs clear mimic) and microbleed centres."""
    features, labels = [], []
    for s in samples:
        keep = s.is_cmb | s.clear_mimic
        features += [s.candidate_features[keep], s.truth_features, s.mimic_features]
        labels += [s.is_cmb[keep], np.ones(len(s.truth_features), bool), np.zeros(len(s.mimic_features), bool)]
    return fit_shape_model(np.concatenate(features), np.concatenate(labels), seed=seed, max_iter=max_trees)


def choose_stage2_point(val: Sequence[ShapeSamples], yolo: Sequence[np.ndarray], shape: ShapeModel, *,
                        counts: Sequence[int] = CANDIDATE_COUNTS,
                        shape_weights: Sequence[float] = SHAPE_WEIGHTS) -> tuple[dict, list[dict]]:
    """Choose, on validation scans, how many candidates stage 2 reads, the shape model's share of the
    stage-2 probability, the stage-1 weight and the threshold (`choose_operating_point`'s rule at each
    count and share; then the best F1, ties to fewer candidates and a smaller share).

    ``yolo``: per validation scan, the YOLO probability of each of its candidates. Returns (the chosen
    row, every row tried); a row holds ``max_candidates, shape_weight, stage1_weight, threshold`` and
    the pooled validation figures.
    """
    from cmbdet.reclassifier.infer import stage2_probability
    from cmbdet.reclassifier.train import MinedScan, choose_operating_point

    shape_prob = [shape.probability(s.candidate_features) for s in val]
    rows = []
    for count in counts:
        mined = [MinedScan(s.subject, np.zeros((0, 1, 1, 3), np.uint8), np.zeros(0, bool),
                           np.zeros((0, 1, 1, 3), np.uint8), s.candidate_rows[:count], s.truth_rows) for s in val]
        for share in shape_weights:
            stage2 = [stage2_probability(y[:count], p[:count], share) for y, p in zip(yolo, shape_prob, strict=True)]
            weight, threshold, pooled = choose_operating_point(None, mined, stage2=stage2)
            rows.append({"max_candidates": int(count), "shape_weight": float(share), "stage1_weight": weight,
                         "threshold": threshold, **{k: pooled.get(k) for k in (
                             "sensitivity", "precision", "f1", "fp_per_subject", "candidate_recall", "rule")}})
    best = max(rows, key=lambda r: (r["f1"] if r["f1"] is not None else -1.0))
    return best, rows
