"""Stage 1 training: patches from labelled scans, heat-map targets, augmentations, seeded.

Targets are Gaussian blobs at the CMB centres (sigma = radius / TARGET_SIGMA_RATIO, at least
``min_target_sigma_mm``), so the network's peaks mark centres and their width tells the size. A batch
mixes patches around CMBs, around known mimics (veins, iron, air-bone dropout: hard negatives) and anywhere in the
brain, and, when mined (`mine_hard_negatives`), around the places where a trained stage 1 itself fires
wrongly. Augmentations model what changes between scanners and head positions: contrast, gamma, noise,
bias, slice thickness (blur, and partial-volume averaging of 2-6 mm slices in any of the three planes),
in-plane blur, flips, in-plane axis swaps and small rotations.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F
from nibabel.affines import apply_affine
from scipy import ndimage

from cmbdet.evaluate import best_f1_threshold, evaluate
from cmbdet.preprocess import WorkingImage, prepare_working_image
from cmbdet.proposer.infer import (
    DEFAULT_SPACING_MM,
    TARGET_SIGMA_RATIO,
    Proposer,
    likelihood_map,
    new_proposer,
    peaks_to_candidates,
    propose_candidates,
)
from cmbdet.training_data import LabelledScan
from cmbdet.volume import load_volume

#: Narrowest heat-map target (mm): the blob width small CMBs get (``--min-target-sigma-mm``).
MIN_TARGET_SIGMA_MM = 0.7
#: Thickest acquisition slice the augmentation simulates, in working-grid voxels (1 mm: 6 mm slices,
#: the thickest clinical GRE). Until session 9 it was 3, applied to 20 % of patches, axial only.
THICKEST_SLICE_VOXELS = 6
#: A mined candidate is a hard negative only farther than this (mm) from every CMB centre, and than the
#: CMB's radius + 2 mm (the evaluator's match distance): nearer ones may be a second peak on the
#: microbleed itself.
HARD_NEGATIVE_CLEARANCE_MM = 6.0


@dataclass
class PreparedScan:
    """A labelled scan on the working grid: image (I, J, K) float16, mask bool, points in voxels."""

    subject: str
    image: np.ndarray
    mask: np.ndarray
    cmb_ijk: np.ndarray  # (N, 3) working-grid voxel coordinates
    cmb_radius_vox: np.ndarray  # (N,)
    mimic_ijk: np.ndarray  # (M, 3)
    hard_negative_ijk: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))  # (H, 3), mined
    spacing_mm: float = DEFAULT_SPACING_MM


def prepare_scan(scan: LabelledScan, spacing_mm: float = DEFAULT_SPACING_MM) -> PreparedScan:
    """Load, resample, mask and normalize one labelled scan; map its points to working voxels."""
    working = prepare_working_image(load_volume(scan.image_path), spacing_mm)
    to_vox = np.linalg.inv(working.affine)
    return PreparedScan(
        subject=scan.subject,
        image=working.image.astype(np.float16),
        mask=working.mask,
        cmb_ijk=apply_affine(to_vox, scan.cmb_xyz_mm).reshape(-1, 3),
        cmb_radius_vox=np.asarray(scan.cmb_diameter_mm, dtype=float) / 2.0 / spacing_mm,
        mimic_ijk=apply_affine(to_vox, scan.mimic_xyz_mm).reshape(-1, 3),
        spacing_mm=spacing_mm,
    )


def mine_hard_negatives(scans: list[PreparedScan], proposer: Proposer, *, per_scan: int = 60,
                        log: Callable[[str], None] = print) -> list[PreparedScan]:
    """Where ``proposer`` fires wrongly on its training scans (bootstrapping, as in classic detector
    training): of its ``per_scan`` highest candidates (likelihood >= 0.01), those farther than
    max(`HARD_NEGATIVE_CLEARANCE_MM`, radius + 2 mm) from every CMB become ``hard_negative_ijk`` (so at
    most ``per_scan`` per scan). Returns new `PreparedScan` objects; the inputs are unchanged.
    ``proposer`` is switched to eval mode (and channels-last memory): mine with a copy of weights you
    go on training."""
    mined = []
    started = time.time()
    for n, scan in enumerate(scans, 1):
        spacing = float(scan.spacing_mm)
        if abs(spacing - proposer.spacing_mm) > 1e-6:
            raise ValueError(f"{scan.subject}: prepared at {spacing} mm, "
                             f"the proposer works at {proposer.spacing_mm} mm")
        working = WorkingImage(image=scan.image.astype(np.float32), mask=scan.mask,
                               affine=np.diag([spacing, spacing, spacing, 1.0]))
        candidates = peaks_to_candidates(likelihood_map(working, proposer), working.affine,
                                         max_candidates=per_scan, min_score=0.01)
        ijk = candidates.xyz_mm / spacing
        if len(scan.cmb_ijk) and len(ijk):
            distance_mm = np.linalg.norm(ijk[:, None] - scan.cmb_ijk[None], axis=-1) * spacing
            clearance_mm = np.maximum(HARD_NEGATIVE_CLEARANCE_MM, scan.cmb_radius_vox * spacing + 2.0)
            ijk = ijk[np.all(distance_mm > clearance_mm[None], axis=1)]
        mined.append(replace(scan, hard_negative_ijk=ijk.reshape(-1, 3)))
        if n % 10 == 0 or n == len(scans):
            log(f"mined hard negatives on {n}/{len(scans)} scans ({time.time() - started:.0f} s)")
    return mined


def prepare_scans(
    scans: list[LabelledScan], spacing_mm: float = DEFAULT_SPACING_MM, *, workers: int = 2
) -> list[PreparedScan]:
    """`prepare_scan` over many scans, in ``workers`` processes."""
    if workers <= 1:
        return [prepare_scan(s, spacing_mm) for s in scans]
    # "spawn": forking a process whose torch/OpenMP threads already ran can deadlock the children.
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(prepare_scan, scans, [spacing_mm] * len(scans)))


def heatmap_target(shape: tuple[int, int, int], centres: np.ndarray, radii: np.ndarray,
                   min_sigma_vox: float = MIN_TARGET_SIGMA_MM) -> np.ndarray:
    """(I, J, K) float32 in [0, 1]: max over Gaussian blobs at ``centres`` (voxels), sigma = r / ratio,
    at least ``min_sigma_vox``."""
    target = np.zeros(shape, dtype=np.float32)
    grid = np.indices(shape, dtype=np.float32)
    for centre, radius in zip(centres, radii, strict=True):
        sigma = max(radius / TARGET_SIGMA_RATIO, min_sigma_vox)
        reach = int(np.ceil(3 * sigma))
        lo = np.maximum(np.floor(centre).astype(int) - reach, 0)
        hi = np.minimum(np.floor(centre).astype(int) + reach + 2, shape)
        if np.any(hi <= lo):
            continue
        sl = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        d2 = sum((grid[a][sl] - centre[a]) ** 2 for a in range(3))
        target[sl] = np.maximum(target[sl], np.exp(-d2 / (2 * sigma**2)))
    return target


def sample_patch(
    scan: PreparedScan, rng: np.random.Generator, patch: int, kind: str, min_sigma_vox: float = MIN_TARGET_SIGMA_MM
) -> tuple[np.ndarray, np.ndarray]:
    """One (patch, patch, patch) image and target, centred on a CMB, a mimic, a mined hard negative
    (``kind`` "cmb", "mimic", "hard") or any brain voxel."""
    shape = np.array(scan.image.shape)
    if kind == "cmb" and len(scan.cmb_ijk):
        centre = scan.cmb_ijk[rng.integers(len(scan.cmb_ijk))] + rng.uniform(-patch / 3, patch / 3, 3)
    elif kind in ("mimic", "hard") and len(points := scan.mimic_ijk if kind == "mimic" else scan.hard_negative_ijk):
        centre = points[rng.integers(len(points))] + rng.uniform(-patch / 6, patch / 6, 3)
    else:
        inside = np.flatnonzero(scan.mask[::2, ::2, ::2])
        if inside.size:
            centre = np.array(np.unravel_index(rng.choice(inside), scan.mask[::2, ::2, ::2].shape)) * 2.0
        else:
            centre = shape / 2
    start = np.round(centre - patch / 2).astype(int)
    image = _crop(scan.image, start, patch).astype(np.float32)
    near = np.all(np.abs(scan.cmb_ijk - (start + patch / 2)) < patch / 2 + 8, axis=1)
    target = heatmap_target((patch,) * 3, scan.cmb_ijk[near] - start, scan.cmb_radius_vox[near],
                            min_sigma_vox)
    return image, target


def augment(image: np.ndarray, target: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Scanner-like variation on a normalized patch (brain ~1) and the matching geometric changes."""
    for axis in range(3):
        if rng.random() < 0.5:
            image, target = np.flip(image, axis), np.flip(target, axis)
    if rng.random() < 0.5:
        image, target = image.transpose(1, 0, 2), target.transpose(1, 0, 2)
    image = np.ascontiguousarray(image)
    if rng.random() < 0.3:  # head tilt: up to 15 degrees in a random plane
        axes = [(0, 1), (0, 2), (1, 2)][rng.integers(3)]
        angle = rng.uniform(-15, 15)
        image = ndimage.rotate(image, angle, axes=axes, reshape=False, order=1, mode="nearest")
        target = ndimage.rotate(target, angle, axes=axes, reshape=False, order=1, mode="constant")
    if rng.random() < 0.35:  # thick slices: 2-6 mm acquisition slices (partial volume), back to the grid
        axis = 2 if rng.random() < 0.7 else int(rng.integers(2))  # mostly axial; coronal or sagittal too
        image = _thick_slices(image, int(rng.integers(2, THICKEST_SLICE_VOXELS + 1)), axis=axis)
    if rng.random() < 0.35:  # thicker slices: blur through-plane
        image = ndimage.gaussian_filter1d(image, rng.uniform(0.4, 1.3), axis=2)
    if rng.random() < 0.2:  # softer in-plane resolution
        image = ndimage.gaussian_filter(image, (rng.uniform(0.3, 0.7),) * 2 + (0,))
    image = np.clip(image, 0, None) ** rng.uniform(0.7, 1.5)
    image = 1.0 + (image - 1.0) * rng.uniform(0.6, 1.3)
    grad = rng.uniform(-0.15, 0.15, 3)
    coords = np.linspace(-0.5, 0.5, image.shape[0], dtype=np.float32)
    image = image * (1.0 + grad[0] * coords[:, None, None] + grad[1] * coords[None, :, None]
                     + grad[2] * coords[None, None, :])
    image = image + rng.normal(0, rng.uniform(0.0, 0.1), image.shape).astype(np.float32)
    return np.clip(image, 0, 4).astype(np.float32), np.ascontiguousarray(target)


def train_proposer(
    scans: list[PreparedScan],
    rng: np.random.Generator,
    *,
    steps: int = 1500,
    batch_size: int = 8,
    patch: int = 48,
    lr: float = 2e-3,
    width: int = 8,
    spacing_mm: float = DEFAULT_SPACING_MM,
    device: str | None = None,
    init: Proposer | None = None,
    min_target_sigma_mm: float = MIN_TARGET_SIGMA_MM,
    hard_negative_fraction: float = 0.0,
    log: Callable[[str], None] = print,
    progress: bool = False,
) -> Proposer:
    """Train a proposer on prepared scans, from scratch or from ``init`` (fine-tuning: its width and
    working grid are kept); deterministic for a given ``rng`` state. ``progress``: a tqdm bar with the
    loss and ETA on stderr (``log`` lines every 50 steps either way, with the ETA).
    ``min_target_sigma_mm``: the narrowest heat-map blob; small CMBs get this width, which sets how much
    of the loss they carry (the blob of a 2 mm CMB at 0.7 mm covers ~3 voxels of a 1 mm grid).
    A batch is half CMB patches; ``hard_negative_fraction`` of it is centred on mined hard negatives
    (`mine_hard_negatives`; 0: none, the sampling of the shipped rounds 1-5), and the rest is split
    evenly between listed mimics and anywhere in the brain."""
    import sys

    from tqdm import tqdm

    if patch % 4:
        raise ValueError("patch must be a multiple of 4")
    torch.manual_seed(int(rng.integers(2**31)))
    proposer = new_proposer(width, spacing_mm, device) if init is None else init
    net = proposer.net.train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    with_cmb = [s for s in scans if len(s.cmb_ijk)]
    with_mimic = [s for s in scans if len(s.mimic_ijk)]
    with_hard = [s for s in scans if len(s.hard_negative_ijk)]
    if not 0.0 <= hard_negative_fraction <= 0.5:
        raise ValueError(f"hard_negative_fraction must be in [0, 0.5], got {hard_negative_fraction}")
    if hard_negative_fraction and not with_hard:
        raise ValueError("hard_negative_fraction > 0 but no scan has mined hard negatives (mine_hard_negatives)")
    mimic_below = 0.5 + hard_negative_fraction + (0.5 - hard_negative_fraction) / 2
    started, running = time.time(), 0.0
    bar = tqdm(range(1, steps + 1), desc="training stage 1", unit="step", file=sys.stderr, dynamic_ncols=True,
               disable=not progress, leave=False)
    for step in bar:
        images, targets = [], []
        for _ in range(batch_size):
            draw = rng.random()
            if draw < 0.5 and with_cmb:
                kind, pool = "cmb", with_cmb
            elif 0.5 <= draw < 0.5 + hard_negative_fraction:  # never with 0: the old sampling, draw for draw
                kind, pool = "hard", with_hard
            elif draw < mimic_below and with_mimic:
                kind, pool = "mimic", with_mimic
            else:
                kind, pool = "brain", scans
            image, target = augment(*sample_patch(pool[rng.integers(len(pool))], rng, patch, kind,
                                                 min_target_sigma_mm / proposer.spacing_mm), rng)
            images.append(image)
            targets.append(target)
        x = torch.from_numpy(np.stack(images))[:, None].to(proposer.device)
        y = torch.from_numpy(np.stack(targets))[:, None].to(proposer.device)
        logits = net(x)
        weight = 1.0 + 40.0 * y
        loss = F.binary_cross_entropy_with_logits(logits, y, weight=weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        value = float(loss.detach())
        running = 0.95 * running + 0.05 * value if step > 1 else value
        if step % 10 == 0:
            bar.set_postfix(loss=f"{running:.4f}", refresh=False)
        if step % 50 == 0 or step == steps:
            elapsed = time.time() - started
            eta = elapsed / step * (steps - step)
            log(f"step {step}/{steps}  loss {running:.4f}  {elapsed:.0f} s  ETA {eta:.0f} s")
    bar.close()
    net.eval()
    # Fine-tuning keeps a record of the earlier training rounds.
    history = [] if init is None else [*init.metadata.get("history", []), {
        k: init.metadata.get(k) for k in ("steps", "lr", "train_subjects", "train_seconds", "seed", "training_data",
                                          "hard_negative_fraction")
        if k in init.metadata}]
    proposer.metadata.update(steps=steps, batch_size=batch_size, patch=patch, lr=lr, train_subjects=len(scans),
                             min_target_sigma_mm=min_target_sigma_mm,
                             hard_negative_fraction=hard_negative_fraction,
                             hard_negatives_mined=int(sum(len(s.hard_negative_ijk) for s in scans)),
                             train_seconds=round(time.time() - started), history=history)
    return proposer


def _thick_slices(image: np.ndarray, factor: int, axis: int) -> np.ndarray:
    """Average ``factor`` neighbouring slices along ``axis`` and interpolate back to the input grid:
    what a ``factor`` times thicker acquisition slice does to small lesions (partial volume)."""
    length = image.shape[axis]
    usable = length - length % factor
    moved = np.moveaxis(image, axis, 0)
    thick = moved[:usable].reshape(usable // factor, factor, *moved.shape[1:]).mean(axis=1)
    centres = np.arange(usable // factor) * factor + (factor - 1) / 2.0
    position = np.clip(np.arange(length, dtype=float), centres[0], centres[-1])
    upper = np.clip(np.searchsorted(centres, position, side="right"), 1, len(centres) - 1)
    weight = ((position - centres[upper - 1]) / factor)[:, None, None]
    back = thick[upper - 1] * (1 - weight) + thick[upper] * weight
    return np.ascontiguousarray(np.moveaxis(back.astype(np.float32), 0, axis))


def _crop(array: np.ndarray, start: np.ndarray, size: int) -> np.ndarray:
    """A (size,)*3 crop starting at ``start`` (may reach outside: zero padded)."""
    out = np.zeros((size,) * 3, dtype=array.dtype)
    src_lo = np.maximum(start, 0)
    src_hi = np.minimum(start + size, array.shape)
    if np.any(src_hi <= src_lo):
        return out
    dst_lo = src_lo - start
    dst_hi = dst_lo + (src_hi - src_lo)
    out[dst_lo[0]:dst_hi[0], dst_lo[1]:dst_hi[1], dst_lo[2]:dst_hi[2]] = \
        array[src_lo[0]:src_hi[0], src_lo[1]:src_hi[1], src_lo[2]:src_hi[2]]
    return out


def validate_proposer(proposer: Proposer, scans: list[LabelledScan], *, max_candidates: int = 30) -> dict:
    """Stage 1 on held-out scans: recall with ``max_candidates`` per scan, candidates per scan, and the
    stage-1-alone operating threshold (best lesion-level F1). Stored in the weights' metadata."""
    truth_rows, candidate_rows, n_candidates = [], [], []
    for scan in scans:
        candidates = propose_candidates(load_volume(scan.image_path), proposer, max_candidates=max_candidates)
        n_candidates.append(len(candidates))
        candidate_rows += candidates.to_records(scan.subject)
        truth_rows += scan.truth_records()
    recall = evaluate(truth_rows, candidate_rows).pooled["sensitivity"]
    threshold, pooled = best_f1_threshold(truth_rows, candidate_rows)
    return {"val_scans": len(scans), "val_recall_at_max_candidates": recall, "max_candidates": max_candidates,
            "val_candidates_per_scan": float(np.mean(n_candidates)) if n_candidates else 0.0,
            "threshold": threshold, "val_sensitivity": pooled.get("sensitivity"),
            "val_fp_per_subject": pooled.get("fp_per_subject"), "val_f1": pooled.get("f1")}
