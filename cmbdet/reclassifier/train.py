"""Stage 2 training: mine stage-1 candidates, write 2.5-D patch images, train the YOLO classifier.

Positives: every reference CMB (with small position jitter, as stage 1 localizes to ~1 mm) and every
stage-1 candidate that matches one. Negatives: every stage-1 candidate that matches none (the hard
negatives stage 2 exists for: veins, iron, air-bone artefacts, noise) and points on known mimics.
Microbleeds are rarer than mimics, so each positive is written in more augmented copies than each
negative (class balance). Scanner variation is added to the patch copies with albumentations (gamma,
contrast, blur, lower resolution, noise, small rotations and zoom), seeded; ultralytics adds flips,
mild zoom and brightness jitter during training. Subjects are split into train / validation; the
operating point (the stage-1 weight of the final score and the threshold) is the one with the best
lesion-level F1 on the validation subjects, end to end (stage 1 then stage 2).

The shape model of stage 2 (`cmbdet.reclassifier.shape_train`) learns from the same mined candidates;
its share of the stage-2 probability and the number of candidates stage 2 reads are chosen on the
validation subjects with the operating point.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from cmbdet.detections import Detections
from cmbdet.evaluate import best_f1_threshold, evaluate, match_detections
from cmbdet.proposer.infer import Proposer, propose_candidates
from cmbdet.reclassifier.infer import CLASS_NAMES, Reclassifier, cmb_probability, final_score
from cmbdet.reclassifier.patches import FOV_MM, PATCH_PIXELS, SLAB_MM, extract_patches
from cmbdet.reclassifier.shape_train import (
    CANDIDATE_COUNTS,
    ShapeSamples,
    choose_stage2_point,
    shape_samples,
    train_shape_model,
)
from cmbdet.reclassifier.yolo import train_classifier
from cmbdet.training_data import LabelledScan, hold_out
from cmbdet.volume import Volume, load_volume


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
    #: The same candidates measured for the shape model (when mined with ``shape=True``).
    shape: ShapeSamples | None = None


@dataclass
class MinedPoints:
    """Where to cut training patches in one scan and what they are: ``xyz_mm`` (N, 3) scanner RAS,
    ``is_cmb`` (N,); plus the stage-1 candidates (for the operating point) and the truth rows."""

    subject: str
    volume: Volume
    xyz_mm: np.ndarray
    is_cmb: np.ndarray
    candidates: Detections
    truth_rows: list[dict]

    def patches(self, *, fov_mm: float = FOV_MM, layout: str = "planes", slab_mm: float = SLAB_MM) -> MinedScan:
        """The patches of one layout (see `cmbdet.reclassifier.patches.LAYOUTS`)."""
        def cut(xyz: np.ndarray) -> np.ndarray:
            return extract_patches(self.volume, xyz, fov_mm=fov_mm, layout=layout, slab_mm=slab_mm)

        return MinedScan(self.subject, cut(self.xyz_mm), self.is_cmb, cut(self.candidates.xyz_mm),
                         self.candidates.to_records(self.subject), self.truth_rows)


def mine_points(scan: LabelledScan, proposer: Proposer, rng: np.random.Generator, *, max_candidates: int = 40,
                max_mimics: int = 12, jitter_copies: int = 2) -> MinedPoints:
    """Run stage 1 on a labelled scan and label the points to learn from (see the module docstring)."""
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
    return MinedPoints(scan.subject, volume, xyz, np.concatenate(labels), candidates, scan.truth_records())


def mine_scan(scan: LabelledScan, proposer: Proposer, rng: np.random.Generator, *, max_candidates: int = 40,
              max_mimics: int = 12, jitter_copies: int = 2, fov_mm: float = FOV_MM, layout: str = "planes",
              slab_mm: float = SLAB_MM, shape: bool = False) -> MinedScan:
    """`mine_points` then the patches of one layout (and, with ``shape``, the shape measurements)."""
    mined = mine_points(scan, proposer, rng, max_candidates=max_candidates, max_mimics=max_mimics,
                        jitter_copies=jitter_copies)
    out = mined.patches(fov_mm=fov_mm, layout=layout, slab_mm=slab_mm)
    if shape:
        out.shape = shape_samples(scan, mined.volume, mined.candidates.xyz_mm, mined.candidates.score)
    return out


def patch_augmenter(seed: int):
    """A seeded albumentations pipeline of scanner-like variation for 8-bit 2.5-D patches (all three
    planes alike): gamma, brightness/contrast, blur or lower resolution, noise, small rotation/zoom."""
    # albumentations asks PyPI for a newer version when imported unless this is set: no network.
    os.environ["NO_ALBUMENTATIONS_UPDATE"] = "1"
    import albumentations as A

    return A.Compose([
        A.RandomGamma(gamma_limit=(70, 140), p=0.7),
        A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.3, p=0.7),
        A.OneOf([
            A.GaussianBlur(blur_limit=(3, 5), sigma_limit=(0.3, 1.2)),
            A.Downscale(scale_range=(0.4, 0.8)),  # a coarser acquisition grid
        ], p=0.4),
        A.GaussNoise(std_range=(0.0, 0.08), p=0.6),
        A.Affine(rotate=(-15, 15), scale=(0.9, 1.1), translate_percent=(-0.03, 0.03), border_mode=cv2.BORDER_REFLECT,
                 p=0.5),
    ], seed=seed)


def write_patch_dataset(mined: list[MinedScan], folder: Path, split: str, rng: np.random.Generator,
                        *, cmb_copies: int = 4, mimic_copies: int = 2) -> dict[str, int]:
    """PNG image folder ``folder/split/<class>/`` for ultralytics. In ``train``, each patch is written
    as itself plus augmented versions, ``cmb_copies`` / ``mimic_copies`` images in all per patch."""
    counts = dict.fromkeys(CLASS_NAMES, 0)
    augmenter = patch_augmenter(int(rng.integers(2**31)))
    for scan in mined:
        for n, (patch, positive) in enumerate(zip(scan.patches, scan.is_cmb, strict=True)):
            name = CLASS_NAMES[0] if positive else CLASS_NAMES[1]
            target = folder / split / name
            target.mkdir(parents=True, exist_ok=True)
            copies = (cmb_copies if positive else mimic_copies) if split == "train" else 1
            versions = [patch] + [augmenter(image=patch)["image"] for _ in range(copies - 1)]
            for v, version in enumerate(versions):
                cv2.imwrite(str(target / f"{scan.subject}_{n:04d}_{v}.png"), version)
                counts[name] += 1
    return counts


#: Stage-1 weights of the final score tried when choosing the operating point.
STAGE1_WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)


#: Score thresholds tried when choosing the operating point.
THRESHOLDS = tuple(np.round(np.arange(0.025, 0.976, 0.025), 3))


def choose_operating_point(reclassifier: Reclassifier | None, mined: list[MinedScan], *,
                           max_sensitivity_loss: float | None = 0.02, f1_tolerance: float = 0.02,
                           stage2: list[np.ndarray] | None = None) -> tuple[float, float, dict]:
    """(stage-1 weight, threshold, pooled figures) end to end on these scans.

    ``stage2``: each scan's stage-2 probabilities of its candidates, if already computed (otherwise
    the reclassifier's YOLO scores the candidate patches).

    The best lesion-level F1 — unless a point where stage 2 loses at most ``max_sensitivity_loss`` of
    the sensitivity of all the stage-1 candidates it receives (its job is to drop mimics, not
    microbleeds) comes within ``f1_tolerance`` of it: then the best such point. Ties go to the smaller
    stage-1 weight. ``pooled["rule"]`` says which rule chose the point.
    """
    truth = [row for m in mined for row in m.truth_rows]
    if stage2 is None:
        stage2 = [cmb_probability(reclassifier, m.candidate_patches) for m in mined]
    every = [dict(row) for m in mined for row in m.candidate_rows]
    recall = evaluate(truth, every).pooled["sensitivity"] if every else float("nan")

    def best_point(floor: float | None) -> tuple[float, float, float, dict]:
        best = (-1.0, 0.0, 0.5, {})
        for weight in STAGE1_WEIGHTS:
            detections = []
            for m, scores in zip(mined, stage2, strict=True):
                stage1 = np.array([row["score"] for row in m.candidate_rows], dtype=float)
                fused = final_score(stage1, scores, weight)
                detections += [dict(row, score=float(f)) for row, f in zip(m.candidate_rows, fused, strict=True)]
            threshold, pooled = best_f1_threshold(truth, detections, THRESHOLDS, min_sensitivity=floor)
            f1 = pooled.get("f1", float("nan"))
            if not math.isnan(f1) and f1 > best[0]:
                best = (f1, weight, threshold, pooled)
        return best

    unconstrained = best_point(None)
    if unconstrained[0] < 0:
        return 0.0, 0.5, {}
    chosen, rule = unconstrained, "best F1"
    if max_sensitivity_loss is not None and not math.isnan(recall):
        kept = best_point(recall - max_sensitivity_loss)
        if kept[0] >= 0 and kept[0] >= unconstrained[0] - f1_tolerance:
            chosen, rule = kept, f"best F1 losing <= {max_sensitivity_loss:g} of candidate recall"
    return chosen[1], chosen[2], dict(chosen[3], rule=rule, candidate_recall=recall)


def train_reclassifier(
    scans: list[LabelledScan], proposer: Proposer, rng: np.random.Generator, *,
    val_scans: list[LabelledScan] | None = None, epochs: int = 30, batch: int = 64, val_fraction: float = 0.15,
    fov_mm: float = FOV_MM, layout: str = "planes", slab_mm: float = SLAB_MM, workdir: Path | None = None,
    device: str = "cpu", log: Callable[[str], None] = print, progress: bool = False, shape: bool = True,
    max_candidates: int = 60,
) -> Reclassifier:
    """Mine, write the patch dataset, train with ultralytics, choose the operating point; seeded by
    ``rng``. Validation (best epoch, operating point) is on ``val_scans`` if given, else on
    ``val_fraction`` of the subjects of ``scans``, held out. ``progress``: a tqdm bar with ETA on stderr
    while candidates are mined (ultralytics reports its epochs itself). ``shape``: also train the shape
    model on the ``max_candidates`` stage-1 candidates mined per scan."""
    import sys

    from tqdm import tqdm

    if val_scans is None:
        scans, val_scans = hold_out(scans, val_fraction, rng)
    mined_train, mined_val = [], []
    everything = [(s, mined_train) for s in scans] + [(s, mined_val) for s in val_scans]
    for n, (scan, into) in enumerate(tqdm(everything, desc="mining candidates", unit="scan", file=sys.stderr,
                                          dynamic_ncols=True, disable=not progress, leave=False)):
        into.append(mine_scan(scan, proposer, rng, max_candidates=max_candidates, fov_mm=fov_mm, layout=layout,
                              slab_mm=slab_mm, shape=shape))
        if (n + 1) % 10 == 0 or n + 1 == len(everything):
            log(f"mined {n + 1}/{len(everything)} scans")
    return fit_reclassifier(mined_train, mined_val, rng, epochs=epochs, batch=batch, fov_mm=fov_mm, layout=layout,
                            slab_mm=slab_mm, workdir=workdir, device=device, log=log, max_candidates=max_candidates)


def fit_reclassifier(
    mined_train: list[MinedScan], mined_val: list[MinedScan], rng: np.random.Generator, *, epochs: int = 30,
    batch: int = 64, fov_mm: float = FOV_MM, layout: str = "planes", slab_mm: float = SLAB_MM,
    workdir: Path | None = None, device: str = "cpu", log: Callable[[str], None] = print, max_candidates: int = 60,
) -> Reclassifier:
    """Train on mined patches (of ``layout``) and choose the operating point on ``mined_val``.
    ``max_candidates``: how many stage-1 candidates per scan were mined (detect reads as many)."""
    with tempfile.TemporaryDirectory(prefix="cmbdet-stage2-") as tmp:
        # absolute: ultralytics puts a relative project folder under its own runs directory, not here
        root = Path(workdir).resolve() if workdir is not None else Path(tmp)
        dataset = root / "patches"
        train_counts = write_patch_dataset(mined_train, dataset, "train", rng)
        val_counts = write_patch_dataset(mined_val or mined_train[:1], dataset, "val", rng)
        log(f"patches: train {train_counts}, val {val_counts}")
        net, yaml = train_classifier(dataset, root / "runs", epochs=epochs, imgsz=PATCH_PIXELS, batch=batch,
                                     seed=int(rng.integers(2**31)), device=device)
    reclassifier = Reclassifier(net=net, yaml=yaml, fov_mm=fov_mm, layout=layout, slab_mm=slab_mm)
    weight, threshold, pooled = choose_operating_point(reclassifier, mined_val or mined_train)
    reclassifier.threshold, reclassifier.stage1_weight = threshold, weight
    reclassifier.metadata["max_candidates"] = max_candidates
    if all(m.shape is not None for m in mined_train + mined_val):
        chosen = _add_shape_model(reclassifier, mined_train, mined_val or mined_train, rng, log, max_candidates)
        if chosen is not None:
            weight, threshold, pooled = chosen
            reclassifier.threshold, reclassifier.stage1_weight = threshold, weight
    reclassifier.metadata.update(
        epochs=epochs, train_scans=len(mined_train), val_scans=len(mined_val), train_patches=train_counts,
        val_threshold=threshold, val_stage1_weight=weight, val_sensitivity=pooled.get("sensitivity"),
        val_precision=pooled.get("precision"), val_f1=pooled.get("f1"),
        val_fp_per_subject=pooled.get("fp_per_subject"), operating_point_rule=pooled.get("rule"),
        val_candidate_recall=pooled.get("candidate_recall"),
    )
    log(f"stage-1 weight {weight:.1f}, shape share {reclassifier.shape_weight:.2f}, threshold {threshold:.2f}: "
        f"validation sensitivity "
        f"{pooled.get('sensitivity', float('nan')):.3f} precision {pooled.get('precision', float('nan')):.3f} "
        f"F1 {pooled.get('f1', float('nan')):.3f}")
    return reclassifier


def _add_shape_model(reclassifier: Reclassifier, mined_train: list[MinedScan], mined_val: list[MinedScan],
                     rng: np.random.Generator, log: Callable[[str], None],
                     max_candidates: int) -> tuple[float, float, dict] | None:
    """Train the shape model and choose, on ``mined_val``, its share, the candidate count and the
    operating point (`choose_stage2_point`); returns (stage-1 weight, threshold, pooled figures), or
    None when there is nothing to learn it from."""
    samples = [m.shape for m in mined_train]
    try:
        shape = train_shape_model(samples, seed=int(rng.integers(2**31)))
    except ValueError as err:  # e.g. no microbleed among the training scans
        log(f"no shape model: {err}")
        return None
    yolo = [cmb_probability(reclassifier, m.candidate_patches) for m in mined_val]
    counts = sorted({c for c in CANDIDATE_COUNTS if c < max_candidates} | {max_candidates})
    best, _ = choose_stage2_point([m.shape for m in mined_val], yolo, shape, counts=counts)
    reclassifier.shape, reclassifier.shape_weight = shape, best["shape_weight"]
    reclassifier.metadata.update(max_candidates=best["max_candidates"], val_shape_weight=best["shape_weight"])
    return best["stage1_weight"], best["threshold"], best
