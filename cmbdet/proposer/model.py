"""The stage-1 network: a small fully convolutional 3-D U-Net giving a CMB likelihood map.

Input (N, 1, I, J, K) normalized intensity on the working grid (brain tissue ~1); output (N, 1, I, J, K)
logits. Three resolution levels (1x, 1/2, 1/4); skip connections are added (not concatenated) and the
full-resolution level is one convolution deep on each side, which keeps it at ~5k multiply-adds per
voxel: a whole brain at 1 mm runs in about a second or two on 2 CPU cores. BatchNorm (not
InstanceNorm) so that whole-volume inference sees the same statistics as patch training.
"""

from __future__ import annotations

import torch
from torch import nn


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm3d(c_out),
        nn.LeakyReLU(0.1, inplace=True),
    )


class ProposerNet(nn.Module):
    """Small 3-D U-Net. ``width`` sets the channels of the first level (doubling per level)."""

    def __init__(self, width: int = 8):
        super().__init__()
        w1, w2, w3 = width, 2 * width, 4 * width
        self.width = width
        self.enc1 = _block(1, w1)
        self.enc2 = nn.Sequential(nn.MaxPool3d(2), _block(w1, w2), _block(w2, w2))
        self.enc3 = nn.Sequential(nn.MaxPool3d(2), _block(w2, w3), _block(w3, w3), _block(w3, w3))
        self.proj3 = nn.Conv3d(w3, w2, 1)
        self.dec2 = _block(w2, w2)
        self.proj2 = nn.Conv3d(w2, w1, 1)
        self.dec1 = _block(w1, w1)
        self.head = nn.Conv3d(w1, 1, 1)
        self.up = nn.Upsample(scale_factor=2, mode="trilinear", align_corners=False)
        nn.init.constant_(self.head.bias, -4.0)  # start from "no CMB anywhere"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, I, J, K) with I, J, K multiples of 4 -> (N, 1, I, J, K) logits."""
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        e3 = self.enc3(e2)
        d2 = self.dec2(self.up(self.proj3(e3)) + e2)
        d1 = self.dec1(self.up(self.proj2(d2)) + e1)
        return self.head(d1)
