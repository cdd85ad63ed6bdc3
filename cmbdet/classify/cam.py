"""Class-activation maps (Grad-CAM, Selvaraju et al. 2017) of the crop classifiers' network part,
drawn over the crop the model read: ``<subject>/cam/<subject>_lesion-<n>_cam.png``.

expansion: the CNN's logit w.r.t. its last convolutional block, over the largest axial section;
hbm: the fused logit w.r.t. the intensity branch's last block, over the susceptibility section (or
the first sequence present). The map shows the evidence for the label the model gave (for ``ich`` /
``stable`` that of the negated logit). The lesion's outline (the localizer's mask) is drawn in cyan.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cmbdet.classify.features import MRI_SEQUENCES, LesionFeatures
from cmbdet.classify.model import LABELS, ClassifierModel, tabular_input


def grad_cam(model: ClassifierModel, feature: LesionFeatures, *, positive: bool = True) -> np.ndarray:
    """(P, P) Grad-CAM in [0, 1] of one lesion's crop: where the evidence for the positive label (``hbm`` /
    ``expands``) lies, or with ``positive=False`` for the negative one (``ich`` / ``stable``: the map of
    the negated logit; the positive one is blank for a lesion the model calls negative)."""
    sign = 1.0 if positive else -1.0
    if model.task == "expansion":  # the mean over the cross-fitted CNNs
        cams = [_grad_cam(member, member.encoder, feature, model, lambda net, crop: sign * net(crop))
                for member in model.net.members]
        cam = np.mean(cams, axis=0)
        return cam / cam.max() if cam.max() > 0 else cam
    radiomics = model._aligned(feature)[None]
    tab = tabular_input(radiomics=radiomics, present=feature.present[None], volume_ml=np.array([feature.volume_ml]),
                        n_lesions=np.array([feature.n_lesions]))
    tab = torch.from_numpy((tab - model.tab_mean) / model.tab_scale).float().to(model.device)
    cam = _grad_cam(model.net, model.net.intensity, feature, model, lambda net, crop: sign * net(crop, tab)[0])
    return cam / cam.max() if cam.max() > 0 else cam


def _grad_cam(net, encoder, feature: LesionFeatures, model: ClassifierModel, logit_of) -> np.ndarray:
    """Unnormalized (P, P) Grad-CAM of ``logit_of(net, crop)`` w.r.t. ``encoder``'s last block."""
    net = net.eval()
    crop = torch.from_numpy(feature.crop[None].astype(np.float32)).to(model.device)
    kept: dict[str, torch.Tensor] = {}

    def keep(_module, _inputs, output):
        output.retain_grad()
        kept["maps"] = output

    handle = encoder.blocks[-1].register_forward_hook(keep)
    try:
        with torch.enable_grad():
            logit = logit_of(net, crop)
            net.zero_grad()
            logit.sum().backward()
    finally:
        handle.remove()
    maps, grads = kept["maps"], kept["maps"].grad
    weights = grads.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * maps).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=feature.crop.shape[1:], mode="bilinear", align_corners=False)[0, 0]
    return cam.detach().cpu().numpy()


def write_cams(model: ClassifierModel, features: list[LesionFeatures], subject: str, outdir: Path) -> dict[str, str]:
    """One CAM picture per lesion; returns the files written, relative to OUTDIR."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cmbdet.atomic import atomic_path

    probabilities = model.scores(features)["fused"]
    written = {}
    for feature, probability in zip(features, probabilities, strict=True):
        positive = bool(probability >= model.threshold)
        cam = grad_cam(model, feature, positive=positive)
        label = LABELS[model.task][int(positive)]
        if model.task == "expansion":
            background, title = feature.crop[2], "largest axial section (HU 0-100)"
        else:
            index = next((i for i, on in enumerate(feature.present) if on), 0)
            background, title = feature.crop[index], MRI_SEQUENCES[index]
        relative = f"{subject}/cam/{subject}_lesion-{feature.lesion_id}_cam.png"
        path = Path(outdir) / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        fig, axes = plt.subplots(1, 2, figsize=(6, 3.3))
        for ax in axes:
            ax.imshow(background.T, cmap="gray", origin="lower", vmin=0, vmax=max(float(background.max()), 1e-6))
            ax.contour(feature.crop[5].T, levels=[0.5], colors="cyan", linewidths=0.8, origin="lower")
            ax.set_axis_off()
        axes[1].imshow(cam.T, cmap="jet", alpha=0.45, origin="lower", vmin=0, vmax=1)
        axes[0].set_title(title, fontsize=8)
        axes[1].set_title(f"Grad-CAM for '{label}', p={probability:.2f} (threshold {model.threshold:.2f})"
                          + ("" if cam.max() > 0 else ": no region stands out"), fontsize=8)
        fig.suptitle(f"{subject} lesion {feature.lesion_id} ({model.task})", fontsize=9)
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
        plt.close(fig)
        written[f"cam:{feature.lesion_id}"] = relative
    return written
