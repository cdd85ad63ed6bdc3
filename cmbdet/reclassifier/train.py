"""Stage 2 training: mine stage-1 candidates, write 2.5-D patch images, train the YOLO classifier.

Positives: every reference CMB (with small position jitter, as stage 1 localizes to ~1 mm) and every
stage-1 candidate that matches one. Negatives: every stage-1 candidate that matches none (the hard
negatives stage 2 exists for: veins, iron, air-bone artefacts, noise) and points on known mimics.
Scanner variation is added to the patches here (gamma, contrast, noise, blur), with the seeded rng;
ultralytics adds flips, mild zoom and brightness/contrast jitter during training. Subjects are split
into train / validation; the operating threshold is the one that maximizes lesion-level F1 on the
validation subjects (end to end: stage 1 then stage 2).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from scipy import ndimage

from cmbdet.evaluate import best_f1_threshold, match_detections
from cmbdet.proposer.infer import Proposer, propose_candidates
from cmbdet.reclassifier.infer import CLASS_NAMES, Reclassifier, cmb_probability
from cmbdet.reclassifier.patches import PATCH_PIXELS, extract_patches
from cmbdet.reclassifier.yolo import train_classifier
from cmbdet.training_data import LabelledScan
from cmbdet.volume import load_volume


@dataclass
class MinedScan:
    """Patches of one scan: ``patches`` (N, H, W, 3) uint8, ``is_cmb`` (N,) bool, and the stage-1
    candidates (for threshold choice) with their patches and scores."""

    subject: str
    patches: np.ndarray
    is_cmb: np.ndarray
    candidate_patches: np.ndarray
    candidate_rows: list[dict]
    truth_rows: list[dict]


def mine_scan(scan: LabelledScan, proposer: Proposer, rng: np.random.Generator, *, max_candidates: int = 40,
              max_mimics: int = 25, jitter_copies: int = 2) -> MinedScan:
    volume = load_volume(scan.image_path)
    candidates = propose_candidates(volume, proposer, max_candidates=max_candidates)
    matched = match_detections(scan.cmb_xyz_mm, scan.cmb_diameter_mm, candidates.xyz_mm, candidates.score)
    points = [scan.cmb_xyz_mm]
    labels = [np.ones(len(scan.cmb_xyz_mm), bool)]
    for _ in range(jitter_copies):
        points.append(scan.cmb_xyz_mm + rng.normal(0, 0.8, scan.cmb_xyz_mm.shape))
        labels.append(np.ones(len(scan.cmb_xyz_mm), bool))
    # Candidates near a lesion but not matched (second hit on one CMB) are ambiguous: left out.
    clear_negative = matched < 0
    if len(scan.cmb_xyz_mm) and len(candidates):
        dist = np.linalg.norm(candidates.xyz_mm[:, None] - scan.cmb_xyz_mm[None], axis=-1).min(1)
        clear_negative &= dist > 6.0
    points += [candidates.xyz_mm[matched >= 0], candidates.xyz_mm[clear_negative]]
    labels += [np.ones(int((matched >= 0).sum()), bool), np.zeros(int(clear_negative.sum()), bool)]
    if len(scan.mimic_xyz_mm):
        pick = rng.permutation(len(scan.mimic_xyz_mm))[:max_mimics]
        mimic = scan.mimic_xyz_mm[pick]
        if len(scan.cmb_xyz_mm):
            far = np.linalg.norm(mimic[:, None] - scan.cmb_xyz_mm[None], axis=-1).min(1) > 6.0
            mimic = mimic[far]
        points.append(mimic)
        labels.append(np.zeros(len(mimic), bool))
    xyz = np.concatenate([p.reshape(-1, 3) for p in points])
    patches = extract_patches(volume, xyz)
    return MinedScan(scan.subject, patches, np.concatenate(labels), extract_patches(volume, candidates.xyz_mm),
                     candidates.to_records(scan.subject), scan.truth_records())


def augment_patch(patch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Scanner-like variation of one uint8 patch: gamma around tissue level, contrast, blur, noise."""
    x = patch.astype(np.float32) / 100.0
    x = np.clip(x, 0, None) ** rng.uniform(0.7, 1.4)
    x = 1.0 + (x - 1.0) * rng.uniform(0.7, 1.3)
    if rng.random() < 0.3:
        x = ndimage.gaussian_filter(x, (rng.uniform(0.3, 1.2),) * 2 + (0,))
    x = x + rng.normal(0, rng.uniform(0, 0.08), x.shape)
    return np.clip(np.rint(x * 100.0), 0, 255).astype(np.uint8)


def write_patch_dataset(mined: list[MinedScan], folder: Path, split: str, rng: np.random.Generator,
                        *, copies: int = 2) -> dict[str, int]:
    """PNG image folder ``folder/split/<class>/`` for ultralytics; ``copies`` augmented versions each."""
    counts = dict.fromkeys(CLASS_NAMES, 0)
    for scan in mined:
        for n, (patch, positive) in enumerate(zip(scan.patches, scan.is_cmb, strict=True)):
            name = CLASS_NAMES[0] if positive else CLASS_NAMES[1]
            target = folder / split / name
            target.mkdir(parents=True, exist_ok=True)
            versions = [patch] + [augment_patch(patch, rng) for _ in range(copies - 1)] if split == "train" else [patch]
            for v, version in enumerate(versions):
                cv2.imwrite(str(target / f"{scan.subject}_{n:04d}_{v}.png"), version)
                counts[name] += 1
    return counts


def choose_threshold(reclassifier: Reclassifier, mined: list[MinedScan]) -> tuple[float, dict]:
    """The stage-2 score threshold with the best lesion-level F1 on these scans (end to end)."""
    truth = [row for m in mined for row in m.truth_rows]
    detections = []
    for m in mined:
        scores = cmb_probability(reclassifier, m.candidate_patches)
        detections += [dict(row, score=float(s)) for row, s in zip(m.candidate_rows, scores, strict=True)]
    return best_f1_threshold(truth, detections)


def train_reclassifier(
    scans: list[LabelledScan], proposer: Proposer, rng: np.random.Generator, *, epochs: int = 30,
    batch: int = 64, val_fraction: float = 0.15, workdir: Path | None = None, device: str = "cpu",
    log: Callable[[str], None] = print,
) -> Reclassifier:
    """Mine, write the patch dataset, train with ultralytics, choose the threshold; seeded by ``rng``."""
    order = rng.permutation(len(scans))
    n_val = max(1, int(round(val_fraction * len(scans)))) if len(scans) > 1 else 0
    val_ids = set(order[:n_val].tolist())
    mined_train, mined_val = [], []
    for n, scan in enumerate(scans):
        mined = mine_scan(scan, proposer, rng)
        (mined_val if n in val_ids else mined_train).append(mined)
        if (n + 1) % 10 == 0 or n + 1 == len(scans):
            log(f"mined {n + 1}/{len(scans)} scans")
    with tempfile.TemporaryDirectory(prefix="cmbdet-stage2-") as tmp:
        root = Path(workdir) if workdir is not None else Path(tmp)
        dataset = root / "patches"
        train_counts = write_patch_dataset(mined_train, dataset, "train", rng)
        val_counts = write_patch_dataset(mined_val or mined_train[:1], dataset, "val", rng)
        log(f"patches: train {train_counts}, val {val_counts}")
        net, yaml = train_classifier(dataset, root / "runs", epochs=epochs, imgsz=PATCH_PIXELS, batch=batch,
                                     seed=int(rng.integers(2**31)), device=device)
    reclassifier = Reclassifier(net=net, yaml=yaml)
    threshold, pooled = choose_threshold(reclassifier, mined_val or mined_train)
    reclassifier.threshold = threshold
    reclassifier.metadata.update(
        epochs=epochs, train_scans=len(mined_train), val_scans=len(mined_val), train_patches=train_counts,
        val_threshold=threshold, val_sensitivity=pooled.get("sensitivity"), val_precision=pooled.get("precision"),
        val_f1=pooled.get("f1"), val_fp_per_subject=pooled.get("fp_per_subject"),
    )
    log(f"threshold {threshold:.2f}: validation sensitivity {pooled.get('sensitivity', float('nan')):.3f} "
        f"precision {pooled.get('precision', float('nan')):.3f} F1 {pooled.get('f1', float('nan')):.3f}")
    return reclassifier
