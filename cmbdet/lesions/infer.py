"""Lesion localization at inference: network (or classical peer) -> blood probability on the
working grid -> lesions grouped, carried onto the input's grid, measured.

    from cmbdet.lesions.infer import load_lesion_model, localize_lesions
    from cmbdet.lesions.ct import load_ct_volume
    lesions = localize_lesions(load_ct_volume("head_ct.nii.gz"), load_lesion_model())
    lesions.volume_ml, lesions.xyz_mm, lesions.region
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from cmbdet.errors import InputError
from cmbdet.lesions.ct import DEFAULT_SPACING_MM, CTWorkingImage, ct_working_image, network_input
from cmbdet.lesions.model import LesionNet
from cmbdet.lesions.result import BLOOD_HU, Lesions, empty_lesions, measure_lesions
from cmbdet.volume import Volume
from cmbdet.weights import load_state, pick_device, save_state, shipped_weights

#: Blood probability above which a voxel belongs to a lesion (when the weights store none).
DEFAULT_THRESHOLD = 0.5
#: Pieces of blood closer than this (mm) are one lesion (satellite islands, a clot split by a vessel).
GROUP_MM = 5.0
#: Lesions smaller than this (mL) are dropped (when the weights store none).
DEFAULT_MIN_ML = 0.1
SHIPPED_CT = "lesions_ct.safetensors"


@dataclass
class LesionModel:
    """A loaded lesion network and how it reads its input."""

    net: LesionNet
    modality: str  # "ct" or "mri"
    spacing_mm: float = DEFAULT_SPACING_MM
    threshold: float = DEFAULT_THRESHOLD
    min_ml: float = DEFAULT_MIN_ML
    refine_hu: bool = False  # CT: redraw margins from the density (`refine_with_density`)
    refine_mm: float = 0.0  # CT: how far (mm) a redrawn margin may move out; 0 = one voxel of the input grid
    max_dense_fraction: float = 1.0  # CT: drop lesions denser than blood (`drop_calcified`); 1 = off
    group_mm: float = GROUP_MM  # pieces of blood closer than this are one lesion
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    metadata: dict = field(default_factory=dict)

    def save(self, path: str | Path) -> Path:
        meta = dict(self.metadata, kind="lesions", modality=self.modality, width=self.net.width,
                    in_channels=self.net.in_channels, spacing_mm=self.spacing_mm, threshold=self.threshold,
                    min_ml=self.min_ml, refine_hu=self.refine_hu, refine_mm=self.refine_mm,
                    max_dense_fraction=self.max_dense_fraction, group_mm=self.group_mm)
        return save_state(path, self.net.state_dict(), meta)


def load_lesion_model(path: str | Path | None = None, *, device: str | None = None) -> LesionModel:
    """Load lesion weights (default: the shipped ``weights/lesions_ct.safetensors``)."""
    path = Path(path) if path is not None else shipped_weights(SHIPPED_CT)
    state, meta = load_state(path)
    if meta.get("kind") != "lesions":
        raise InputError(path, "not lesion-model weights (kind is not 'lesions')")
    net = LesionNet(int(meta.get("in_channels", 3)), int(meta.get("width", 8)))
    net.load_state_dict(state)
    dev = pick_device(device)
    net.to(dev).eval()
    return LesionModel(net=net, modality=str(meta.get("modality", "ct")), spacing_mm=float(meta["spacing_mm"]),
                       threshold=float(meta.get("threshold", DEFAULT_THRESHOLD)),
                       min_ml=float(meta.get("min_ml", DEFAULT_MIN_ML)), refine_hu=bool(meta.get("refine_hu", False)),
                       refine_mm=float(meta.get("refine_mm", 0.0)),
                       max_dense_fraction=float(meta.get("max_dense_fraction", 1.0)),
                       group_mm=float(meta.get("group_mm", GROUP_MM)), device=dev, metadata=meta)


def set_operating_point(model: LesionModel, *, threshold: float | None = None, min_ml: float | None = None,
                        refine: str | None = None, refine_mm: float | None = None, max_dense: float | None = None,
                        group_mm: float | None = None) -> LesionModel:
    """Override the stored operating point of ``model`` in place where a value is given (``refine``
    "on"/"off"); returns it. Used by the bench and by the tool that stores a chosen point."""
    if threshold is not None:
        model.threshold = threshold
    if min_ml is not None:
        model.min_ml = min_ml
    if refine is not None:
        model.refine_hu = refine == "on"
    if refine_mm is not None:
        model.refine_mm = refine_mm
    if max_dense is not None:
        model.max_dense_fraction = max_dense
    if group_mm is not None:
        model.group_mm = group_mm
    return model


def probability_map(channels: np.ndarray, mask: np.ndarray, model: LesionModel) -> np.ndarray:
    """(I, J, K) float32 blood probability on the working grid from (C, I, J, K) input channels;
    only the box around the brain mask (plus 6 mm) goes through the network, 0 elsewhere."""
    prob = np.zeros(mask.shape, np.float32)
    if not mask.any():
        return prob
    margin = int(np.ceil(6.0 / model.spacing_mm))
    nz = np.nonzero(mask)
    lo = [max(int(a.min()) - margin, 0) for a in nz]
    hi = [min(int(a.max()) + margin + 1, s) for a, s in zip(nz, mask.shape, strict=True)]
    crop = channels[:, lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    pad = [(0, 0)] + [(0, (-s) % 8) for s in crop.shape[1:]]
    x = torch.from_numpy(np.ascontiguousarray(np.pad(crop, pad)))[None].to(model.device)
    net = model.net.eval().to(memory_format=torch.channels_last_3d)
    with torch.inference_mode():
        out = torch.sigmoid(net(x.to(memory_format=torch.channels_last_3d)))[0, 0].float().cpu().numpy()
    prob[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = out[: hi[0] - lo[0], : hi[1] - lo[1], : hi[2] - lo[2]]
    return prob


def localize_lesions(volume: Volume, model: LesionModel) -> Lesions:
    """Hemorrhagic lesions in a CT `Volume` (HU; see `cmbdet.lesions.ct.load_ct_volume`), or in an
    MRI `cmbdet.lesions.mri.SequenceSet`, largest first; label map on the input's grid."""
    if not isinstance(volume, Volume):  # an MRI SequenceSet
        from cmbdet.lesions.mri import mri_probability

        if model.modality != "mri":
            raise InputError(volume.reference.path, "the lesion model given is for CT, the input is MRI")
        prob, mask, affine = mri_probability(volume, model)
        return lesions_from_probability(volume.reference, prob, affine, mask, threshold=model.threshold,
                                        min_ml=model.min_ml, group_mm=model.group_mm)
    if model.modality != "ct":
        raise InputError(volume.path, "the lesion model given is for MRI, the input is CT")
    work = ct_working_image(volume, model.spacing_mm)
    prob = probability_map(network_input(work.hu, work.mask), work.mask, model)
    return ct_lesions_from_probability(volume, work, prob, model)


def ct_lesions_from_probability(volume: Volume, work: CTWorkingImage, prob: np.ndarray, model: LesionModel
                                ) -> Lesions:
    """The CT steps after the blood probability (``prob`` on ``work``'s grid): kept near the brain,
    grouped, calcifications dropped and margins redrawn from the density, as ``model``'s operating
    point says. Any source of blood probability goes through here (the network, or a compared model)."""
    prob = prob * ndimage.binary_dilation(work.mask, iterations=2)
    lesions = lesions_from_probability(volume, prob, work.affine, work.mask, threshold=model.threshold,
                                       min_ml=model.min_ml, group_mm=model.group_mm, blood_hu=BLOOD_HU)
    labels, scores = lesions.labels, lesions.score
    # calcifications are judged on the network's own mask: the refinement keeps only blood densities,
    # which would hide the dense voxels the filter looks for
    if model.max_dense_fraction < 1.0 and len(lesions):
        labels, scores = drop_calcified(volume.data, labels, scores, model.max_dense_fraction)
    if model.refine_hu and len(scores):
        labels = refine_with_density(volume.data, labels, volume.spacing_mm, grow_mm=model.refine_mm)
    if labels is not lesions.labels:
        lesions = measure_lesions(volume, labels, scores, work.mask, work.affine, blood_hu=BLOOD_HU)
    return lesions


def drop_calcified(hu: np.ndarray, labels: np.ndarray, scores: np.ndarray, max_fraction: float,
                   dense_hu: float = 110.0) -> tuple[np.ndarray, np.ndarray]:
    """Drop lesions of which more than ``max_fraction`` of the voxels are denser than blood
    (> ``dense_hu``: calcified choroid plexus, pineal, basal ganglia; partial volume makes them look
    like blood on thick slices); renumber the rest in order. Returns (labels, scores)."""
    out = np.zeros_like(labels)
    kept = []
    for n, box in enumerate(ndimage.find_objects(labels.astype(np.int32)), start=1):
        if box is None:
            continue
        mask = labels[box] == n
        if float((hu[box][mask] > dense_hu).mean()) > max_fraction:
            continue
        kept.append(scores[n - 1])
        out[box][mask] = len(kept)
    return out, np.asarray(kept, float)


def refine_with_density(hu: np.ndarray, labels: np.ndarray, spacing_mm: np.ndarray, *, grow_mm: float = 0.0,
                        low_hu: float = 45.0, high_hu: float = 100.0) -> np.ndarray:
    """Redraw each lesion's margin on the input grid from the density: the network's mask eroded by
    one voxel (its core, hypodense swirls and holes included) plus the voxels near it whose
    in-plane-smoothed HU is blood (``low_hu``..``high_hu``). Near: ``grow_mm`` 0 = one voxel along
    each axis (face-connected; through a thick slice that is a whole slice), else within ``grow_mm``
    of the mask in mm (so not through slices thicker than ``grow_mm``). A lesion with nothing left
    (a thin mask with no blood density) keeps the network's mask: every label stays.
    ``hu`` (I, J, K) HU and ``labels`` (I, J, K) int on one grid of ``spacing_mm`` (3,). (I, J, K) labels."""
    spacing_mm = np.asarray(spacing_mm, float)
    reach = np.maximum(np.ceil(grow_mm / spacing_mm).astype(int), 1) + 1
    out = np.zeros_like(labels)
    for n, box in enumerate(ndimage.find_objects(labels.astype(np.int32)), start=1):
        if box is None:
            continue
        box = tuple(slice(max(s.start - r, 0), s.stop + r) for s, r in zip(box, reach, strict=True))
        mask = labels[box] == n
        smooth = ndimage.gaussian_filter(hu[box], (0.7, 0.7, 0.0))
        blood = (smooth >= low_hu) & (smooth <= high_hu)
        if grow_mm > 0:
            near = ndimage.distance_transform_edt(~mask, sampling=spacing_mm) <= grow_mm
        else:
            near = ndimage.binary_dilation(mask)
        grown = (near & blood) | ndimage.binary_erosion(mask)
        grown = ndimage.binary_fill_holes(grown) if grown.any() else mask  # nothing blood-dense: keep it
        region = out[box]
        region[grown & (region == 0)] = n
    return out


def classical_ct_lesions(volume: Volume, *, work: CTWorkingImage | None = None, low_hu: float = 50.0,
                         high_hu: float = 95.0, min_ml: float = 0.3) -> Lesions:
    """The classical peer: blood density (``low_hu``..``high_hu`` after a 3x3x3 median) inside the
    brain mask eroded by 3 mm (bone partial volume), an opening, connected components, size filter."""
    work = work if work is not None else ct_working_image(volume)
    blood = np.zeros(work.hu.shape, bool)
    if work.mask.any():
        box = ndimage.find_objects(work.mask.astype(np.int8))[0]
        inner = ndimage.distance_transform_edt(work.mask[box], sampling=work.spacing_mm) > 3.0
        smooth = ndimage.median_filter(work.hu[box], size=3)
        blood[box] = ndimage.binary_opening((smooth >= low_hu) & (smooth <= high_hu) & inner)
    return lesions_from_probability(volume, blood.astype(np.float32), work.affine, work.mask, threshold=0.5,
                                    min_ml=min_ml, blood_hu=BLOOD_HU)


def lesions_from_probability(volume: Volume, prob: np.ndarray, work_affine: np.ndarray, mask: np.ndarray, *,
                             threshold: float, min_ml: float, group_mm: float = GROUP_MM,
                             blood_hu: tuple[float, float] | None = None) -> Lesions:
    """Group blood on the working grid (pieces within ``group_mm`` are one lesion), carry each group
    onto the volume's canonical grid (trilinear probability > ``threshold``), drop lesions under
    ``min_ml``, number them largest first, and measure them (``blood_hu``: CT, see `measure_lesions`)."""
    core = prob >= threshold
    if not core.any():
        return empty_lesions(volume)
    spacing = np.sqrt((work_affine[:3, :3] ** 2).sum(axis=0))
    near = ndimage.distance_transform_edt(~core, sampling=spacing) <= group_mm / 2.0
    groups, n_groups = ndimage.label(near, structure=np.ones((3, 3, 3), bool))
    to_work = np.linalg.inv(work_affine) @ volume.affine  # canonical -> working voxel (axis-aligned)
    scale, offset = np.diag(to_work)[:3], to_work[:3, 3]
    labels = np.zeros(volume.shape, np.int16)
    found: list[tuple[float, float, np.ndarray, tuple[slice, ...]]] = []
    voxel_ml = float(abs(np.linalg.det(volume.affine[:3, :3]))) / 1000.0
    for g, box in enumerate(ndimage.find_objects(groups), start=1):
        if box is None:
            continue
        w_lo = np.array([s.start for s in box]) - 1.0
        w_hi = np.array([s.stop for s in box]) + 0.0
        c_lo = np.clip(np.floor((np.minimum(w_lo, w_hi) - offset) / np.where(scale > 0, scale, 1)).astype(int), 0,
                       np.array(volume.shape))
        c_hi = np.clip(np.ceil((w_hi - offset) / scale).astype(int) + 1, 0, np.array(volume.shape))
        if np.any(c_hi <= c_lo):
            continue
        axes = [np.arange(c_lo[d], c_hi[d]) * scale[d] + offset[d] for d in range(3)]
        coords = np.stack(np.meshgrid(*axes, indexing="ij")).reshape(3, -1)
        p_up = ndimage.map_coordinates(prob, coords, order=1, mode="nearest").reshape(c_hi - c_lo)
        g_up = ndimage.map_coordinates(groups, coords, order=0, mode="nearest").reshape(c_hi - c_lo)
        piece = (p_up >= threshold) & (g_up == g)
        if piece.sum() * voxel_ml < min_ml:
            continue
        in_group = core & (groups == g)
        score = float(prob[in_group].mean()) if in_group.any() else 0.0
        c_box = tuple(slice(a, b) for a, b in zip(c_lo, c_hi, strict=True))
        found.append((float(piece.sum()), score, piece, c_box))
    found.sort(key=lambda item: -item[0])
    scores = []
    for n, (_, score, piece, c_box) in enumerate(found, start=1):
        region = labels[c_box]
        region[piece & (region == 0)] = n
        scores.append(score)
    if not scores:
        return empty_lesions(volume)
    return measure_lesions(volume, labels, np.array(scores), mask, work_affine, blood_hu=blood_hu)
