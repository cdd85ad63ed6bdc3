"""A trained crop classifier: load, save, apply to `LesionFeatures`.

One safetensors file per task (no pickle; nothing runs on load). Metadata: ``kind`` =
"classifier", ``task``, ``threshold`` (chosen on validation data), the radiomics feature names, the
crop geometry, the network's shape and what it was trained on.

* expansion: a `CropEnsemble` (its mean logit is the deep feature) and three `LinearChain`s
  (LASSO + SVM + Platt) over deep, radiomics and fused (deep + radiomics) features; ``fused`` is
  the shipped score, the others stay for comparison (``cmbdet classify --compare``).
* hbm: an `HBMNet` and the standardization of its tabular input.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cmbdet.classify.features import CROP_PIXELS, PIXEL_MM, LesionFeatures
from cmbdet.classify.linear import LinearChain
from cmbdet.classify.nets import CropEnsemble, HBMNet
from cmbdet.errors import InputError
from cmbdet.weights import load_state, pick_device, save_state, shipped_weights

SHIPPED = {"hbm": "classifier_hbm.safetensors", "expansion": "classifier_expansion.safetensors"}
EXPANSION_MODELS = ("fused", "deep", "radiomics")
LABELS = {"hbm": ("ich", "hbm"), "expansion": ("stable", "expands")}


def tabular_input(features: list[LesionFeatures] | None = None, *, radiomics: np.ndarray | None = None,
                  present: np.ndarray | None = None, volume_ml: np.ndarray | None = None,
                  n_lesions: np.ndarray | None = None) -> np.ndarray:
    """(N, F + 5 + 2) raw tabular input of the hbm model: radiomics, sequence presence flags, log
    volume (mL) and the subject's lesion count (from ``features`` or the arrays)."""
    if features is not None:
        radiomics = np.stack([f.radiomics for f in features])
        present = np.stack([f.present for f in features])
        volume_ml = np.array([f.volume_ml for f in features])
        n_lesions = np.array([f.n_lesions for f in features])
    context = np.stack([np.log(np.maximum(volume_ml, 0.01)), np.minimum(n_lesions, 6)], axis=1)
    return np.concatenate([radiomics, present, context], axis=1).astype(np.float64)


@dataclass
class ClassifierModel:
    task: str
    net: torch.nn.Module
    threshold: float
    names: tuple[str, ...]
    chains: dict[str, LinearChain] = field(default_factory=dict)
    tab_mean: np.ndarray | None = None
    tab_scale: np.ndarray | None = None
    metadata: dict = field(default_factory=dict)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def name(self) -> str:
        """The model column of classification.csv: the weights file's name (``classifier_hbm`` for the shipped
        ones), unless the weights name themselves."""
        return str(self.metadata.get("model_name", f"classifier_{self.task}"))

    def cnn_logits(self, crops: np.ndarray, batch: int = 64) -> np.ndarray:
        """Expansion: (N,) logits of the CNN for (N, 6, P, P) crops (the deep feature)."""
        self.net.eval()
        out = []
        with torch.inference_mode():
            for start in range(0, len(crops), batch):
                x = torch.from_numpy(np.ascontiguousarray(crops[start:start + batch])).to(self.device)
                out.append(self.net(x).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0)

    def scores(self, features: list[LesionFeatures]) -> dict[str, np.ndarray]:
        """Probabilities per model variant for each lesion: expansion ``fused``/``deep``/``radiomics``
        (and ``cnn``, the network's own output); hbm ``fused``."""
        if not features:
            return {name: np.zeros(0) for name in (EXPANSION_MODELS if self.task == "expansion" else ("fused",))}
        crops = np.stack([f.crop for f in features]).astype(np.float32)
        radiomics = np.stack([self._aligned(f) for f in features])
        if self.task == "expansion":
            logits = self.cnn_logits(crops)
            deep = logits[:, None]
            inputs = {"deep": deep, "radiomics": radiomics, "fused": np.concatenate([deep, radiomics], axis=1)}
            out = {name: self.chains[name].probability(inputs[name]) for name in EXPANSION_MODELS}
            out["cnn"] = 1.0 / (1.0 + np.exp(-logits))
            return out
        tab = tabular_input(radiomics=radiomics, present=np.stack([f.present for f in features]),
                            volume_ml=np.array([f.volume_ml for f in features]),
                            n_lesions=np.array([f.n_lesions for f in features]))
        tab = (tab - self.tab_mean) / self.tab_scale
        self.net.eval()
        with torch.inference_mode():
            logits, _, _ = self.net(torch.from_numpy(crops).to(self.device),
                                    torch.from_numpy(tab).float().to(self.device))
        return {"fused": torch.sigmoid(logits).cpu().numpy().astype(float)}

    def _aligned(self, feature: LesionFeatures) -> np.ndarray:
        """The lesion's radiomics in the order the model was trained with (absent names -> 0)."""
        if tuple(feature.names) == self.names:
            return feature.radiomics
        index = {name: i for i, name in enumerate(feature.names)}
        return np.array([feature.radiomics[index[n]] if n in index else 0.0 for n in self.names])

    def save(self, path: str | Path) -> Path:
        state = {f"net.{k}": v for k, v in self.net.state_dict().items()}
        for name, chain in self.chains.items():
            state.update({k: torch.from_numpy(np.asarray(v, np.float64)) for k, v in chain.to_arrays(name).items()})
        if self.tab_mean is not None:
            state["tab.mean"] = torch.from_numpy(np.asarray(self.tab_mean, np.float64))
            state["tab.scale"] = torch.from_numpy(np.asarray(self.tab_scale, np.float64))
        net_shape = {"width": self.net.width, "members": len(self.net.members)} if self.task == "expansion" else \
            {"width": self.net.width, "embed": self.net.embed, "n_tabular": self.net.n_tabular}
        meta = dict(self.metadata, kind="classifier", task=self.task, threshold=self.threshold,
                    radiomics_names=list(self.names), crop_pixels=CROP_PIXELS, pixel_mm=PIXEL_MM[self.task],
                    net=net_shape, chains=sorted(self.chains))
        return save_state(path, state, meta)


def load_classifier(task: str, path: str | Path | None = None, *, device: str | None = None) -> ClassifierModel:
    """Load classifier weights for ``task`` (default: the shipped ``weights/classifier_<task>.safetensors``)."""
    if task not in SHIPPED:
        raise InputError(None, f"unknown task {task!r} (choose hbm or expansion)")
    path = Path(path) if path is not None else shipped_weights(SHIPPED[task])
    state, meta = load_state(path)
    if meta.get("kind") != "classifier" or meta.get("task") != task:
        raise InputError(path, f"not {task} classifier weights (kind {meta.get('kind')!r}, task {meta.get('task')!r})")
    shape = meta["net"]
    net = CropEnsemble(int(shape["members"]), 6, int(shape["width"])) if task == "expansion" else \
        HBMNet(int(shape["n_tabular"]), int(shape["width"]), int(shape["embed"]))
    net.load_state_dict({k[4:]: v for k, v in state.items() if k.startswith("net.")})
    dev = pick_device(device)
    net.to(dev).eval()
    arrays = {k: v.numpy() for k, v in state.items() if not k.startswith("net.")}
    chains = {name: LinearChain.from_arrays(arrays, name) for name in meta.get("chains", [])}
    return ClassifierModel(task=task, net=net, threshold=float(meta["threshold"]),
                           names=tuple(meta.get("radiomics_names", [])), chains=chains,
                           tab_mean=arrays.get("tab.mean"), tab_scale=arrays.get("tab.scale"),
                           metadata={"model_name": path.name.removesuffix(".safetensors"), **meta}, device=dev)
