"""Acquisition protocol of the "epsilon" family: field, echo time, sequence, grids, artefacts, storage.

A protocol is drawn per subject from site-like presets mixed with jitter: 1.5 T or 3 T, TE 12–40 ms,
SWI (phase-masked) or plain magnitude GRE, an acquired in-plane resolution that may be reconstructed
on a finer grid (zero-filled interpolation, as scanners do), slices 1–4 mm, and the artefact settings
that the scanner model (:mod:`.scanner`) applies.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

#: gyromagnetic ratio of 1H, rad / s / T
GAMMA = 2.675e8


@dataclass(frozen=True)
class EpsilonProtocol:
    """One scan's acquisition. Lengths in mm, times in ms, field in tesla."""

    field_t: float
    te_ms: float
    contrast: str  # "swi" | "gre"
    sim_inplane_mm: float  # in-plane step of the simulation grid
    acq_inplane_mm: float  # acquired (k-space) in-plane resolution
    recon_inplane_mm: float  # stored in-plane voxel (zero-filled when < acquired)
    slice_mm: float  # slice thickness = slice spacing
    sub_slices: int  # sub-slices integrated (complex sum) per slice
    fov_mm: float  # in-plane field of view (square; at least the head)
    tilt_deg: float  # slab tilt about the scanner x axis (AC-PC-like alignment)
    oblique_deg: float  # extra tilt about a random in-plane axis
    follow_head: bool  # slab aligned with the head (the operator aligned it) or plain scanner axial
    partial_fourier: float  # fraction of phase-encode lines not acquired (0 = full)
    apodization: str  # "none" | "hamming" | "fermi"
    ghost: float  # motion ghost strength (0 = none)
    snr: float  # white-matter signal / noise sigma (before coil shading)
    coil_shading: float  # strength of the receive-coil intensity pattern
    swi_power: int  # phase-mask multiplications (SWI only)
    swi_filter_mm: float  # SWI phase high-pass scale (mm)
    arteries_dark: bool  # flow voids in arteries (no flow compensation)
    cover: str  # "full" | "vertex_cut" | "base_cut"
    dtype: str  # "int16" | "uint16" | "float32"
    max_value: float  # stored intensity of the brightest tissue (before noise)
    storage: str  # axis order and signs of the stored array, e.g. "LPS" or "SAR" (nibabel codes)

    def as_row(self) -> dict[str, str | int | float]:
        row: dict[str, str | int | float] = {"family": "epsilon"}
        for k, v in asdict(self).items():
            row[k] = round(v, 4) if isinstance(v, float) else (int(v) if isinstance(v, bool) else v)
        return row


_AXES = ("RL", "AP", "SI")


def _storage_code(rng: np.random.Generator, slice_axis_last: bool) -> str:
    """Axis codes of the stored array (nibabel style, e.g. 'LPS'); slices usually the last axis."""
    order = [0, 1] if rng.random() < 0.5 else [1, 0]
    order = order + [2] if slice_axis_last else list(rng.permutation(3))
    return "".join(_AXES[a][int(rng.integers(0, 2))] for a in order)


def sample_protocol(rng: np.random.Generator, *, tiny: bool = False) -> EpsilonProtocol:
    """Draw a protocol. ``tiny``: 2.5–3 mm voxels, no sub-slices (fast test volumes)."""
    field = 3.0 if rng.random() < 0.55 else 1.5
    te = float(rng.uniform(15.0, 30.0) if field > 2 else rng.uniform(20.0, 40.0))
    if rng.random() < 0.15:
        te = float(rng.uniform(12.0, 16.0))  # short-TE GRE (older protocols)
    contrast = "swi" if rng.random() < 0.55 else "gre"
    if tiny:
        sim = float(rng.uniform(2.5, 3.0))
        acq, recon, slice_mm, sub = sim, sim, float(rng.uniform(2.5, 3.0)), 1
    else:
        sim = float(rng.uniform(0.7, 1.0))
        # stored in-plane: fine interpolated grids (0.45–0.6), native sub-millimetre, or ~1 mm
        u = rng.random()
        recon = float(rng.uniform(0.45, 0.6) if u < 0.35 else rng.uniform(0.65, 0.85) if u < 0.65
                      else rng.uniform(0.85, 1.0))
        acq = max(sim * (1.0 if rng.random() < 0.5 else float(rng.uniform(1.1, 1.35))), recon)
        v = rng.random()
        slice_mm = float(rng.uniform(1.0, 1.5) if v < 0.25 else rng.uniform(1.6, 2.5) if v < 0.6
                         else rng.uniform(2.6, 4.0))
        sub = max(1, int(round(slice_mm / 0.85)))
    swi = contrast == "swi"
    return EpsilonProtocol(
        field_t=field,
        te_ms=te,
        contrast=contrast,
        sim_inplane_mm=sim,
        acq_inplane_mm=float(acq),
        recon_inplane_mm=recon,
        slice_mm=slice_mm,
        sub_slices=sub,
        fov_mm=0.0 if tiny else float(rng.uniform(200.0, 240.0)),  # 0: just the head
        tilt_deg=float(rng.normal(0.0, 9.0)),
        oblique_deg=float(rng.uniform(0.0, 12.0) if rng.random() < 0.3 else 0.0),
        follow_head=bool(rng.random() < 0.6),
        partial_fourier=float(rng.choice([0.0, 0.0, 0.125, 0.2])),
        apodization=str(rng.choice(["none", "hamming", "fermi"], p=[0.4, 0.25, 0.35])),
        ghost=float(rng.uniform(0.03, 0.12) if rng.random() < 0.3 else 0.0),
        snr=float(np.exp(rng.uniform(np.log(7.0), np.log(28.0)))),
        coil_shading=float(rng.uniform(0.1, 0.6)),
        swi_power=int(rng.integers(2, 6)) if swi else 0,
        swi_filter_mm=float(rng.uniform(6.0, 14.0)),
        arteries_dark=bool(rng.random() < 0.6),
        cover=str(rng.choice(["full", "vertex_cut", "base_cut"], p=[0.7, 0.2, 0.1])),
        dtype=str(rng.choice(["int16", "uint16", "float32"], p=[0.6, 0.15, 0.25])),
        max_value=float(rng.uniform(300.0, 4000.0)),
        storage=_storage_code(rng, slice_axis_last=rng.random() < 0.8),
    )
