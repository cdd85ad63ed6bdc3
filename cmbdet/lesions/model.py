"""The lesion network: a small 3-D U-Net (nnU-Net spirit: encoder-decoder with skip connections,
BatchNorm, LeakyReLU, deep enough to see a whole hematoma) giving a blood probability per voxel.

Input (N, C, I, J, K) on the working grid (CT: 3 channels, see `cmbdet.lesions.ct.network_input`;
MRI: one per sequence plus the brain mask); output (N, 1, I, J, K) logits. Four levels (1x .. 1/8);
skips are concatenated; the full-resolution level is one convolution deep on each side (most of
the cost of a 3-D U-Net on CPU is there). I, J, K must be multiples of 8.
"""

from __future__ import annotations

import torch
from torch import nn


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm3d(c_out),
                         nn.LeakyReLU(0.1, inplace=True))


class LesionNet(nn.Module):
    """3-D U-Net with widths ``width * (1, 2, 4, 8)``."""

    def __init__(self, in_channels: int = 3, width: int = 8):
        super().__init__()
        w = [width, 2 * width, 4 * width, 8 * width]
        self.in_channels = in_channels
        self.width = width
        self.enc1 = _block(in_channels, w[0])
        self.enc2 = nn.Sequential(nn.MaxPool3d(2), _block(w[0], w[1]), _block(w[1], w[1]))
        self.enc3 = nn.Sequential(nn.MaxPool3d(2), _block(w[1], w[2]), _block(w[2], w[2]))
        self.enc4 = nn.Sequential(nn.MaxPool3d(2), _block(w[2], w[3]), _block(w[3], w[3]))
        self.up = nn.Upsample(scale_factor=2, mode="trilinear", align_corners=False)
        self.dec3 = nn.Sequential(_block(w[3] + w[2], w[2]), _block(w[2], w[2]))
        self.dec2 = nn.Sequential(_block(w[2] + w[1], w[1]))
        self.dec1 = nn.Sequential(_block(w[1] + w[0], w[0]))
        self.head = nn.Conv3d(w[0], 1, 1)
        nn.init.constant_(self.head.bias, -3.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        e3 = self.enc3(e2)
        e4 = self.enc4(e3)
        d3 = self.dec3(torch.cat([self.up(e4), e3], 1))
        d2 = self.dec2(torch.cat([self.up(d3), e2], 1))
        d1 = self.dec1(torch.cat([self.up(d2), e1], 1))
        return self.head(d1)
