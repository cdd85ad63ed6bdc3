"""Stage 2 at inference: score each stage-1 candidate with the YOLO classifier (its 2.5-D patch) and,
when the weights carry one, the shape model (3-D ball-or-tube measurements, `cmbdet.reclassifier.shape`).

The stage-2 probability is their weighted geometric mean, ``yolo ** (1 - shape_weight) *
shape ** shape_weight``; the final score combines it with stage 1 (`final_score`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cmbdet.detections import Detections
from cmbdet.preprocess import WorkingImage
from cmbdet.reclassifier.patches import FOV_MM, PATCH_PIXELS, SLAB_MM, extract_patches
from cmbdet.reclassifier.shape import shape_features
from cmbdet.reclassifier.shape_model import ShapeModel
from cmbdet.reclassifier.yolo import classifier_from_state
from cmbdet.volume import Volume
from cmbdet.weights import load_state, pick_device, save_state

#: Class folder names used in training; ultralytics orders classes alphabetically.
CLASS_NAMES = ("cmb", "mimic")


@dataclass
class Reclassifier:
    """A loaded stage-2 model: the YOLO classifier, its patch geometry and operating threshold."""

    net: nn.Module
    yaml: dict
    threshold: float = 0.5
    #: Final score = stage1 ** stage1_weight * stage2 ** (1 - stage1_weight) (0: stage 2 alone).
    stage1_weight: float = 0.0
    fov_mm: float = FOV_MM
    size: int = PATCH_PIXELS
    #: The shape model and its share of the stage-2 probability (0: YOLO alone; 1: shape alone).
    shape: ShapeModel | None = None
    shape_weight: float = 0.0
    #: Which views make the patch channels (see `cmbdet.reclassifier.patches.LAYOUTS`) and their slab.
    layout: str = "planes"
    slab_mm: float = SLAB_MM
    class_names: tuple[str, ...] = CLASS_NAMES
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    metadata: dict = field(default_factory=dict)

    def save(self, path: str | Path) -> Path:
        meta = dict(self.metadata, kind="reclassifier", yaml=self.yaml, threshold=self.threshold,
                    stage1_weight=self.stage1_weight, shape_weight=self.shape_weight if self.shape else 0.0,
                    shape_features=list(self.shape.feature_names) if self.shape else None,
                    fov_mm=self.fov_mm, size=self.size, layout=self.layout, slab_mm=self.slab_mm,
                    class_names=list(self.class_names))
        state = dict(self.net.state_dict())
        if self.shape is not None:
            state |= {k: torch.from_numpy(v) for k, v in self.shape.arrays().items()}
        return save_state(path, state, meta)


def load_reclassifier(path: str | Path, *, device: str | None = None) -> Reclassifier:
    state, meta = load_state(path)
    names = tuple(meta.get("class_names", CLASS_NAMES))
    shape_arrays = {k: state.pop(k).numpy() for k in list(state) if k.startswith("shape.")}
    shape = ShapeModel.from_arrays(shape_arrays, meta["shape_features"]) if shape_arrays else None
    net = classifier_from_state(state, meta["yaml"], nc=len(names))
    dev = pick_device(device)
    return Reclassifier(net=net.to(dev), yaml=meta["yaml"], threshold=float(meta.get("threshold", 0.5)),
                        stage1_weight=float(meta.get("stage1_weight", 0.0)), shape=shape,
                        shape_weight=float(meta.get("shape_weight", 0.0)) if shape else 0.0,
                        fov_mm=float(meta.get("fov_mm", FOV_MM)), size=int(meta.get("size", PATCH_PIXELS)),
                        layout=str(meta.get("layout", "planes")), slab_mm=float(meta.get("slab_mm", SLAB_MM)),
                        class_names=names, device=dev, metadata=meta)


def patch_tensor(patches: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 patches -> (N, 3, H, W) float in [0, 1], as ultralytics' trainer sees them.

    The trainer reads the PNG written from the patch array with OpenCV (BGR order) and converts it to
    RGB, so channel order is reversed relative to the array; this reproduces exactly that.
    """
    array = np.ascontiguousarray(patches[..., ::-1].transpose(0, 3, 1, 2))
    return torch.from_numpy(array).float() / 255.0


def candidate_patches(volume: Volume, xyz_mm: np.ndarray, reclassifier: Reclassifier) -> np.ndarray:
    """The patches this reclassifier reads, around world points (scanner RAS mm)."""
    return extract_patches(volume, xyz_mm, fov_mm=reclassifier.fov_mm, size=reclassifier.size,
                           layout=reclassifier.layout, slab_mm=reclassifier.slab_mm)


def cmb_probability(reclassifier: Reclassifier, patches: np.ndarray, *, flips: bool = True) -> np.ndarray:
    """(N,) probability that each patch shows a microbleed (mean over flipped views if ``flips``)."""
    if len(patches) == 0:
        return np.zeros(0)
    x = patch_tensor(patches).to(reclassifier.device)
    views = [x, x.flip(-1), x.flip(-2), x.flip(-1, -2)] if flips else [x]
    index = reclassifier.class_names.index("cmb")
    reclassifier.net.eval()
    with torch.inference_mode():
        probs = [_softmax_out(reclassifier.net(v))[:, index] for v in views]
    return torch.stack(probs).mean(0).cpu().numpy().astype(float)


def stage2_probability(yolo: np.ndarray, shape: np.ndarray | None, shape_weight: float) -> np.ndarray:
    """The stage-2 probability: weighted geometric mean of the YOLO and shape-model probabilities."""
    yolo = np.clip(np.asarray(yolo, dtype=float), 1e-6, 1.0)
    if shape is None or shape_weight <= 0:
        return yolo
    shape = np.clip(np.asarray(shape, dtype=float), 1e-6, 1.0)
    return yolo ** (1.0 - shape_weight) * shape**shape_weight


def final_score(stage1: np.ndarray, stage2: np.ndarray, stage1_weight: float) -> np.ndarray:
    """Weighted geometric mean of the stage-1 likelihood and the stage-2 probability: a candidate both
    stages find convincing scores high; with weight 0 this is the stage-2 probability alone."""
    stage1 = np.clip(np.asarray(stage1, dtype=float), 1e-6, 1.0)
    stage2 = np.clip(np.asarray(stage2, dtype=float), 1e-6, 1.0)
    return stage1**stage1_weight * stage2 ** (1.0 - stage1_weight)


def reclassify(volume: Volume, candidates: Detections, reclassifier: Reclassifier,
               working: WorkingImage | None = None) -> Detections:
    """Stage 2: candidates with ``stage2`` scores; the final ``score`` is `final_score` of both stages.
    ``working``: stage 1's working image of the scan, reused by the shape measurements if given."""
    if len(candidates) == 0:
        return candidates
    patches = candidate_patches(volume, candidates.xyz_mm, reclassifier)
    yolo = cmb_probability(reclassifier, patches)
    scores = {"yolo": yolo}
    shape = None
    if reclassifier.shape is not None:
        shape = reclassifier.shape.probability(shape_features(volume, candidates.xyz_mm, working))
        scores["shape"] = shape
    stage2 = stage2_probability(yolo, shape, reclassifier.shape_weight)
    stage1 = candidates.stage_scores.get("stage1", candidates.score)
    return Detections(
        xyz_mm=candidates.xyz_mm,
        score=final_score(stage1, stage2, reclassifier.stage1_weight),
        diameter_mm=candidates.diameter_mm,
        region=candidates.region,
        stage_scores={**candidates.stage_scores, "stage2": stage2, **scores},
    )


def _softmax_out(output) -> torch.Tensor:
    # ultralytics' Classify head returns softmax probabilities in eval mode (a tuple in some versions).
    if isinstance(output, tuple | list):
        output = output[0]
    if output.min() < 0 or not torch.allclose(output.sum(1), torch.ones(len(output)), atol=1e-3):
        output = output.softmax(1)
    return output
