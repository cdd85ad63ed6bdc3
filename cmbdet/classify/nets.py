"""Networks of the crop classifiers (all trained here, from scratch or from our own SimSiam
pretraining; no hub weights).

* `CropEncoder`: a small 2-D CNN over (C, 64, 64) crops -> an embedding (``width * 4`` features).
* `CropCNN`: encoder + linear head -> a logit; `CropEnsemble`: the mean logit of the expansion
  model's cross-fitted CNNs (the deep feature of the LASSO + SVM of `cmbdet.classify.linear`).
* `HBMNet`: multi-representation fusion for metastasis vs hematoma (in the spirit of MRDTL):
  an intensity branch (the sequences' crops + mask), a gradient/texture branch (per-sequence
  gradient magnitude and local standard deviation computed from the same crops) and a radiomics
  branch (standardized mirp features + which sequences exist + log volume + lesion count), fused
  by learned attention weights into one embedding that the head classifies and the cross-site
  metric term of `cmbdet.classify.train` pulls together by class.
* `SimSiam`: self-supervised pretraining of a `CropEncoder` on unlabelled crops.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU(inplace=True), nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class CropEncoder(nn.Module):
    """(B, C, 64, 64) -> (B, 4 * width): four conv blocks (widths w, 2w, 3w, 4w), max-pooling
    between them, global average pooling. ``features(x)`` keeps the last block's maps (for CAMs)."""

    def __init__(self, in_channels: int, width: int = 16):
        super().__init__()
        self.in_channels, self.width = in_channels, width
        widths = (width, 2 * width, 3 * width, 4 * width)
        self.blocks = nn.ModuleList([_block(c_in, c_out) for c_in, c_out in zip((in_channels, *widths[:-1]), widths,
                                                                                strict=True)])
        self.out_features = widths[-1]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        for index, block in enumerate(self.blocks):
            if index:
                x = F.max_pool2d(x, 2)
            x = block(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).mean(dim=(2, 3))


class CropCNN(nn.Module):
    """`CropEncoder` + dropout + linear head -> one logit per crop."""

    def __init__(self, in_channels: int = 6, width: int = 16):
        super().__init__()
        self.encoder = CropEncoder(in_channels, width)
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(self.encoder.out_features, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))[:, 0]


class CropEnsemble(nn.Module):
    """The mean logit of several `CropCNN`s (the cross-fitted networks of the expansion model: each
    was trained without one fold of the training subjects, on which its logits became the deep
    feature the LASSO + SVM was fitted with; at use all of them vote)."""

    def __init__(self, n_members: int, in_channels: int = 6, width: int = 16):
        super().__init__()
        self.members = nn.ModuleList([CropCNN(in_channels, width) for _ in range(n_members)])
        self.width = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([member(x) for member in self.members]).mean(dim=0)


def texture_maps(crops: torch.Tensor, n_images: int = 5) -> torch.Tensor:
    """(B, 2 * n_images, P, P): gradient magnitude (Sobel) and 5x5 local standard deviation of the
    first ``n_images`` channels of (B, C, P, P) crops."""
    images = crops[:, :n_images]
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=crops.device) / 8.0
    weight = torch.stack([kx, kx.T])[:, None].repeat(n_images, 1, 1, 1)
    grads = F.conv2d(images, weight, padding=1, groups=n_images)
    magnitude = torch.sqrt(grads[:, 0::2] ** 2 + grads[:, 1::2] ** 2 + 1e-8)
    mean = F.avg_pool2d(images, 5, stride=1, padding=2, count_include_pad=False)
    mean_sq = F.avg_pool2d(images**2, 5, stride=1, padding=2, count_include_pad=False)
    local_std = torch.sqrt(torch.clamp(mean_sq - mean**2, min=0.0) + 1e-8)
    return torch.cat([magnitude, local_std], dim=1)


class HBMNet(nn.Module):
    """Fusion of three representations of an MRI lesion (see module docstring).

    Inputs: ``crops`` (B, 6, P, P) (five sequences + mask), ``tabular`` (B, T) standardized
    radiomics + presence flags + context. Returns (logits (B,), fused embeddings (B, E),
    attention weights (B, 3)).
    """

    def __init__(self, n_tabular: int, width: int = 12, embed: int = 64):
        super().__init__()
        self.n_tabular, self.width, self.embed = n_tabular, width, embed
        self.intensity = CropEncoder(6, width)
        self.texture = CropEncoder(10, width)
        self.project = nn.ModuleList([nn.Linear(self.intensity.out_features, embed),
                                      nn.Linear(self.texture.out_features, embed),
                                      nn.Sequential(nn.Dropout(0.2), nn.Linear(n_tabular, 128), nn.ReLU(inplace=True),
                                                    nn.Linear(128, embed))])
        self.attention = nn.Linear(3 * embed, 3)
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(embed, 1))

    def branches(self, crops: torch.Tensor, tabular: torch.Tensor) -> torch.Tensor:
        """(B, 3, E): the three representations' embeddings."""
        return torch.stack([self.project[0](self.intensity(crops)),
                            self.project[1](self.texture(texture_maps(crops))),
                            self.project[2](tabular)], dim=1)

    def forward(self, crops: torch.Tensor, tabular: torch.Tensor):
        parts = F.relu(self.branches(crops, tabular))
        weights = torch.softmax(self.attention(parts.flatten(1)), dim=1)
        fused = (weights[:, :, None] * parts).sum(dim=1)
        return self.head(fused)[:, 0], fused, weights


class SimSiam(nn.Module):
    """SimSiam (Chen & He 2021): encoder + projector, a predictor, and the symmetric negative cosine
    loss with a stop-gradient on the target branch."""

    def __init__(self, encoder: CropEncoder, dim: int = 128, hidden: int = 64):
        super().__init__()
        self.encoder = encoder
        d = encoder.out_features
        self.projector = nn.Sequential(nn.Linear(d, dim, bias=False), nn.BatchNorm1d(dim), nn.ReLU(inplace=True),
                                       nn.Linear(dim, dim, bias=False), nn.BatchNorm1d(dim, affine=False))
        self.predictor = nn.Sequential(nn.Linear(dim, hidden, bias=False), nn.BatchNorm1d(hidden),
                                       nn.ReLU(inplace=True), nn.Linear(hidden, dim))

    def loss(self, view_a: torch.Tensor, view_b: torch.Tensor) -> torch.Tensor:
        z_a, z_b = self.projector(self.encoder(view_a)), self.projector(self.encoder(view_b))
        p_a, p_b = self.predictor(z_a), self.predictor(z_b)
        return -0.5 * (F.cosine_similarity(p_a, z_b.detach()).mean() + F.cosine_similarity(p_b, z_a.detach()).mean())
