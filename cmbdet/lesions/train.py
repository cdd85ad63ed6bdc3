"""Training the lesion network on labelled scans (phantoms with truth label maps).

A training scan is an image and its truth label map on the same grid (``<stem>_ct.nii.gz`` and
``<stem>_desc-truth_dseg.nii.gz``, as `cmbdet.phantom.ct.write_ct_set` writes them). Each is read
through the same path as at inference (`load_ct_volume`, `ct_working_image`), the truth carried to
the working grid as a blood fraction, and cached. Training draws patches (most centred on blood),
with domain randomization of what a scanner changes: HU offset and gain, kernel sharpness (blur or
unsharp masking), extra noise, left-right flips. Loss: binary cross-entropy + soft Dice.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from nibabel.orientations import apply_orientation
from scipy import ndimage

from cmbdet.lesions.ct import DEFAULT_SPACING_MM, ct_working_image, load_ct_volume, network_input
from cmbdet.lesions.infer import LesionModel
from cmbdet.lesions.model import LesionNet
from cmbdet.preprocess import resample_to_spacing
from cmbdet.volume import read_label_map
from cmbdet.weights import pick_device


@dataclass
class PreparedScan:
    """One scan on the working grid, cropped to the brain box: ``hu`` (I, J, K) float32 for CT or
    ``channels`` (C, I, J, K) float32 for MRI (`cmbdet.lesions.mri.CHANNELS`), ``mask`` bool brain,
    ``blood`` float32 truth fraction in [0, 1]."""

    name: str
    hu: np.ndarray | None
    mask: np.ndarray
    blood: np.ndarray
    channels: np.ndarray | None = None

    def network_input(self) -> np.ndarray:
        return network_input(self.hu, self.mask) if self.channels is None else self.channels


def ct_training_pairs(folder: str | Path) -> list[tuple[Path, Path]]:
    """(image, truth label map) pairs in a phantom folder."""
    folder = Path(folder)
    pairs = []
    for image in sorted(folder.glob("*_ct.nii.gz")):
        truth = image.with_name(image.name.replace("_ct.nii.gz", "_desc-truth_dseg.nii.gz"))
        if truth.exists():
            pairs.append((image, truth))
    return pairs


def prepare_ct_scan(image: Path, truth: Path, spacing_mm: float = DEFAULT_SPACING_MM,
                    cache: Path | None = None) -> PreparedScan:
    """Read, resample and crop one labelled CT (cached as .npz in ``cache`` when given)."""
    if cache is not None:
        cached = cache / f"{image.name.replace('.nii.gz', '')}_{spacing_mm:g}.npz"
        if cached.exists():
            z = np.load(cached)
            return PreparedScan(image.name, z["hu"].astype(np.float32), z["mask"], z["blood"].astype(np.float32))
    volume = load_ct_volume(image)
    work = ct_working_image(volume, spacing_mm)
    labels, _ = read_label_map(truth)
    canonical = apply_orientation(labels > 0, volume.source.ornt).astype(np.float32)
    blood, _ = resample_to_spacing(canonical, volume.affine, spacing_mm)
    blood = np.clip(blood, 0.0, 1.0)
    nz = np.nonzero(work.mask | (blood > 0.5))
    margin = 6
    box = tuple(slice(max(int(a.min()) - margin, 0), int(a.max()) + margin + 1) for a in nz) if len(nz[0]) else \
        tuple(slice(0, s) for s in work.hu.shape)
    scan = PreparedScan(image.name, work.hu[box], work.mask[box], blood[box])
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(cached, hu=scan.hu.astype(np.float16), mask=scan.mask,
                            blood=scan.blood.astype(np.float16))
    return scan


def mri_training_groups(folder: str | Path) -> list[tuple[dict[str, Path], Path]]:
    """(sequence files, truth label map) per subject in an MRI phantom folder."""
    from cmbdet.lesions.mri import group_mri_files

    folder = Path(folder)
    files = [p for p in sorted(folder.glob("*.nii.gz")) if "desc-truth" not in p.name]
    out = []
    for group in group_mri_files(files):
        truth = folder / f"{group.subject}_desc-truth_dseg.nii.gz"
        if truth.exists() and not group.error:
            out.append((group.files, truth))
    return out


def prepare_mri_scan(files: dict[str, Path], truth: Path, spacing_mm: float = DEFAULT_SPACING_MM,
                     cache: Path | None = None) -> PreparedScan:
    """Read one subject's sequences onto the reference and working grids, with its truth (cached)."""
    from cmbdet.lesions.mri import load_sequence_set, mri_working

    name = truth.name.replace("_desc-truth_dseg.nii.gz", "")
    if cache is not None:
        cached = cache / f"{name}_mri_{spacing_mm:g}.npz"
        if cached.exists():
            z = np.load(cached)
            return PreparedScan(name, None, z["mask"], z["blood"].astype(np.float32),
                                z["channels"].astype(np.float32))
    seqs = load_sequence_set(files)
    channels, mask, _ = mri_working(seqs, spacing_mm)
    labels, _ = read_label_map(truth)
    canonical = apply_orientation(labels > 0, seqs.reference.source.ornt).astype(np.float32)
    blood, _ = resample_to_spacing(canonical, seqs.reference.affine, spacing_mm)
    blood = np.clip(blood, 0.0, 1.0)
    nz = np.nonzero(mask | (blood > 0.5))
    box = tuple(slice(max(int(a.min()) - 6, 0), int(a.max()) + 7) for a in nz) if len(nz[0]) else \
        tuple(slice(0, s) for s in mask.shape)
    scan = PreparedScan(name, None, mask[box], blood[box], channels[(slice(None), *box)])
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(cached, channels=scan.channels.astype(np.float16), mask=scan.mask,
                            blood=scan.blood.astype(np.float16))
    return scan


def _augment_mri(rng: np.random.Generator, channels: np.ndarray) -> np.ndarray:
    """What a site changes on MRI: per-sequence contrast (gain, gamma), noise, missing sequences."""
    out = channels.copy()
    present = [c for c in range(out.shape[0] - 1) if out[c].any()]
    for c in present:
        out[c] = np.clip(out[c], 0.0, None) ** rng.uniform(0.8, 1.25) * rng.uniform(0.85, 1.15)
        if rng.random() < 0.5:
            out[c] += rng.normal(0.0, rng.uniform(0.01, 0.06), out[c].shape).astype(np.float32)
    droppable = [c for c in present if c != 0]
    for c in droppable:
        if rng.random() < 0.25 and len([p for p in present if out[p].any()]) > 1:
            out[c] = 0.0
    return out.astype(np.float32)


def _augment(rng: np.random.Generator, hu: np.ndarray) -> np.ndarray:
    """What a site changes: HU gain/offset, kernel (blur or sharpen), noise."""
    hu = hu * rng.uniform(0.96, 1.04) + rng.uniform(-7.0, 7.0)
    kernel = rng.random()
    if kernel < 0.3:
        hu = ndimage.gaussian_filter(hu, rng.uniform(0.3, 0.9))
    elif kernel < 0.6:
        hu = hu + rng.uniform(0.2, 0.9) * (hu - ndimage.gaussian_filter(hu, 1.0))
    if rng.random() < 0.6:
        hu = hu + rng.normal(0.0, rng.uniform(1.0, 7.0), hu.shape).astype(np.float32)
    return hu.astype(np.float32)


def _patch(rng: np.random.Generator, scan: PreparedScan, size: int, p_lesion: float) -> tuple[np.ndarray, np.ndarray]:
    if scan.channels is not None:
        return _patch_mri(rng, scan, size, p_lesion)
    pad = np.maximum(size - np.array(scan.hu.shape), 0)
    hu, mask, blood = scan.hu, scan.mask, scan.blood
    if pad.any():
        widths = [(0, int(p)) for p in pad]
        hu = np.pad(hu, widths, constant_values=-1000.0)
        mask = np.pad(mask, widths)
        blood = np.pad(blood, widths)
    box = _patch_box(rng, mask, blood, size, p_lesion)
    x_hu, x_mask, y = hu[box], mask[box], blood[box]
    x_hu = _augment(rng, x_hu)
    if rng.random() < 0.5:
        x_hu, x_mask, y = x_hu[::-1], x_mask[::-1], y[::-1]
    return network_input(np.ascontiguousarray(x_hu), np.ascontiguousarray(x_mask)), np.ascontiguousarray(y)


def _patch_box(rng: np.random.Generator, mask: np.ndarray, blood: np.ndarray, size: int,
               p_lesion: float) -> tuple[slice, slice, slice]:
    """A ``size``^3 box: around a blood voxel with probability ``p_lesion`` (when there is blood),
    else around a brain voxel; inside the (already padded) array."""
    shape = np.array(mask.shape)
    positive = np.argwhere(blood[::2, ::2, ::2] > 0.5) * 2
    if len(positive) and rng.random() < p_lesion:
        centre = positive[int(rng.integers(len(positive)))] + rng.integers(-size // 4, size // 4 + 1, 3)
    else:
        inside = np.argwhere(mask[::4, ::4, ::4]) * 4
        centre = inside[int(rng.integers(len(inside)))] if len(inside) else shape // 2
    lo = np.clip(centre - size // 2, 0, shape - size)
    return tuple(slice(int(a), int(a) + size) for a in lo)  # type: ignore[return-value]


def _patch_mri(rng: np.random.Generator, scan: PreparedScan, size: int, p_lesion: float):
    channels, mask, blood = scan.channels, scan.mask, scan.blood
    pad = np.maximum(size - np.array(mask.shape), 0)
    if pad.any():
        widths = [(0, int(p)) for p in pad]
        channels = np.pad(channels, [(0, 0), *widths])
        mask, blood = np.pad(mask, widths), np.pad(blood, widths)
    box = _patch_box(rng, mask, blood, size, p_lesion)
    x = _augment_mri(rng, channels[(slice(None), *box)])
    y = blood[box]
    if rng.random() < 0.5:
        x, y = x[:, ::-1], y[::-1]
    return np.ascontiguousarray(x), np.ascontiguousarray(y)


def train_lesion_model(scans: list[PreparedScan], rng: np.random.Generator, *, steps: int = 1500,
                       batch_size: int = 4, patch: int = 48, width: int = 8, lr: float = 3e-3,
                       spacing_mm: float = DEFAULT_SPACING_MM, device: str | None = None,
                       init: LesionModel | None = None, log: Callable[[str], None] = print) -> LesionModel:
    """Train a lesion network (CT or MRI, from the scans) from prepared scans (AdamW, one-cycle);
    ``init`` continues from earlier weights."""
    dev = pick_device(device)
    torch.manual_seed(int(rng.integers(2**31)))
    modality = "ct" if scans[0].channels is None else "mri"
    net = LesionNet(3 if modality == "ct" else scans[0].channels.shape[0], width).to(dev)
    if init is not None:  # continue from earlier weights (same width and channels)
        net = init.net.to(dev)
        spacing_mm = init.spacing_mm
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    started = time.perf_counter()
    running = 0.0
    for step in range(1, steps + 1):
        items = [_patch(rng, scans[int(rng.integers(len(scans)))], patch, 0.6) for _ in range(batch_size)]
        x = torch.from_numpy(np.stack([i[0] for i in items])).to(dev)
        y = torch.from_numpy(np.stack([i[1] for i in items]))[:, None].to(dev)
        net.train()
        logits = net(x)
        prob = torch.sigmoid(logits)
        bce = F.binary_cross_entropy_with_logits(logits, y)
        inter = (prob * y).sum()
        dice = 1.0 - (2.0 * inter + 1.0) / (prob.sum() + y.sum() + 1.0)
        loss = bce + dice
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        running = 0.95 * running + 0.05 * loss.item() if step > 1 else loss.item()
        if step % 50 == 0 or step == steps:
            log(f"step {step}/{steps} loss {running:.4f} ({time.perf_counter() - started:.0f} s)")
    net.eval()
    return LesionModel(net=net, modality=modality, spacing_mm=spacing_mm, device=dev,
                       metadata={"steps": steps + (int(init.metadata.get("steps", 0)) if init is not None else 0),
                                 "batch_size": batch_size, "patch": patch, "n_scans": len(scans)})


def working_dice(model: LesionModel, scans: list[PreparedScan], thresholds=(0.3, 0.4, 0.5, 0.6, 0.7)) -> dict:
    """Dice on the working grid summed over scans, per threshold (for choosing the operating point)."""
    from cmbdet.lesions.infer import probability_map

    inter = {t: 0.0 for t in thresholds}
    total = {t: 0.0 for t in thresholds}
    for scan in scans:
        prob = probability_map(scan.network_input(), scan.mask, model)
        truth = scan.blood >= 0.5
        for t in thresholds:
            pred = prob >= t
            inter[t] += float((pred & truth).sum())
            total[t] += float(pred.sum() + truth.sum())
    return {t: 2.0 * inter[t] / max(total[t], 1.0) for t in thresholds}
