"""Shared fixtures: small synthetic scans and throw-away weights (tests never need the network)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from cmbdet.proposer.infer import Proposer
from cmbdet.proposer.model import ProposerNet


def ellipsoid_head(affine: np.ndarray, shape=(48, 56, 24), dark_spots_mm=((10, 5, 2), (-12, -8, 6)), seed=0):
    """A head-like volume: an ellipsoidal 'brain' (~100) in a dark skull ring in a brighter scalp,
    with dark 4 mm spots at world points (mm). Written on any grid given by ``affine``."""
    rng = np.random.default_rng(seed)
    ijk = np.indices(shape).reshape(3, -1).T
    world = nib.affines.apply_affine(affine, ijk)
    r = np.sqrt((world[:, 0] / 60) ** 2 + (world[:, 1] / 75) ** 2 + (world[:, 2] / 55) ** 2)
    data = np.where(r < 0.85, 100.0, 0.0) + np.where((r >= 0.95) & (r < 1.05), 70.0, 0.0)
    for spot in dark_spots_mm:
        data[np.linalg.norm(world - np.asarray(spot), axis=1) <= 2.0] = 15.0
    data = data + rng.normal(0, 3, data.shape)
    return np.abs(data).reshape(shape).astype(np.float32)


@pytest.fixture(scope="session")
def random_weights(tmp_path_factory) -> Path:
    """A weights folder with an untrained, tiny proposer that proposes candidates everywhere
    (output bias 0) and threshold 0: for testing contracts, not accuracy."""
    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    net = ProposerNet(width=4)
    torch.nn.init.constant_(net.head.bias, 0.0)
    Proposer(net=net, spacing_mm=2.0, device=torch.device("cpu"), metadata={"threshold": 0.0}).save(
        folder / "proposer.safetensors")
    return folder


@pytest.fixture()
def scan_dir(tmp_path) -> Path:
    """Two small synthetic scans on different grids (LPS oblique, RAS), one good subject each."""
    folder = tmp_path / "scans"
    folder.mkdir()
    lps = np.array([[-4.0, 0, 0, 96], [0, -3.5, 0, 98], [0, 0, 5.0, -60], [0, 0, 0, 1]])
    rot = np.deg2rad(12)
    rz = np.array([[np.cos(rot), -np.sin(rot), 0, 0], [np.sin(rot), np.cos(rot), 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(ellipsoid_head(rz @ lps), rz @ lps), folder / "sub-01_ses-1_swi.nii.gz")
    ras = np.array([[3.5, 0, 0, -84], [0, 3.5, 0, -98], [0, 0, 5.0, -60], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(ellipsoid_head(ras, seed=1), ras), folder / "sub-02_T2starw.nii.gz")
    return folder
