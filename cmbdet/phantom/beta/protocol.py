"""Acquisition protocols of the "beta" site: 3 T SWI and 1.5 T GRE, drawn per subject."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

#: Stored axis orders this site's scanners/converters write (nibabel axis codes).
AXCODES: tuple[tuple[str, str, str], ...] = (
    ("L", "A", "S"),
    ("R", "A", "S"),
    ("L", "P", "S"),
    ("P", "I", "R"),
    ("R", "P", "I"),
    ("L", "P", "I"),
    ("A", "S", "R"),
    ("R", "S", "A"),
)


@dataclass(frozen=True)
class BetaProtocol:
    """One simulated acquisition.

    voxel sizes in mm (read, phase, slice), field in tesla, TE in ms.  ``axcodes`` is the
    stored array orientation; ``oblique_deg`` the grid's rotation away from scanner axes.
    """

    sequence: str  # "swi" | "gre"
    field_t: float
    te_ms: float
    voxel_read_mm: float
    voxel_phase_mm: float
    slice_mm: float
    fov_read_mm: float
    fov_phase_mm: float
    coverage_mm: float
    partial_coverage: bool
    subslices: int
    axcodes: str
    oblique_deg: float
    phase_mask_power: int  # SWI phase-mask multiplications (0 for GRE)
    hp_filter_mm: float  # SWI phase high-pass low-pass width (0 for GRE)
    snr: float
    accel: int  # parallel-imaging factor (g-factor noise)
    ghosting: float  # motion ghost amplitude (0 = none)
    ringing: float  # k-space truncation fraction (0 = none)
    storage: str  # "int16" | "uint16" | "float32"
    scl_slope: float
    tiny: bool

    def as_row(self) -> dict[str, str | int | float]:
        """Flat dict of str/int/float values (one CSV row)."""
        row = asdict(self)
        row["tiny"] = int(self.tiny)
        row["partial_coverage"] = int(self.partial_coverage)
        row["site"] = "beta"
        return row

    @property
    def voxel_mm(self) -> tuple[float, float, float]:
        return (self.voxel_read_mm, self.voxel_phase_mm, self.slice_mm)


def sample_protocol(rng: np.random.Generator, *, tiny: bool = False) -> BetaProtocol:
    """Draw a protocol: ~60 % 3 T SWI (0.5–0.8 mm in-plane, 1–2.5 mm slices), else 1.5 T GRE
    (0.8–1.0 mm in-plane, 3–5 mm slices); ``tiny`` gives 2.5–3 mm voxels (<= 80 per axis)."""
    swi = bool(rng.random() < 0.6)
    if swi:
        field_t, te = 3.0, float(rng.uniform(12.0, 30.0))
        inplane = float(rng.choice([0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8]))
        # very thin slices only with coarser in-plane voxels (keeps the matrix realistic)
        thin_ok = inplane >= 0.7
        slice_mm = float(rng.choice([1.0, 1.2, 1.5, 2.0, 2.0, 2.5] if thin_ok else [1.5, 2.0, 2.0, 2.5]))
        power = int(rng.integers(3, 6))
        hp = float(rng.uniform(5.0, 9.0))
    else:
        field_t, te = 1.5, float(rng.uniform(15.0, 35.0))
        inplane = float(rng.uniform(0.8, 1.0))
        slice_mm = float(rng.choice([3.0, 3.5, 4.0, 4.0, 5.0]))
        power, hp = 0, 0.0
    aniso = float(rng.uniform(1.0, 1.15)) if rng.random() < 0.4 else 1.0
    vr, vp = inplane, round(inplane * aniso, 3)
    fov_r = float(rng.uniform(165.0, 190.0))
    fov_p = float(rng.uniform(195.0, 220.0))
    partial = bool(rng.random() < 0.2)
    coverage = float(rng.uniform(80.0, 110.0)) if partial else float(rng.uniform(125.0, 150.0))
    if tiny:
        vr = vp = float(rng.uniform(2.5, 3.0))
        slice_mm = float(rng.uniform(2.6, 3.0))
        fov_r, fov_p = min(fov_r, 78 * vr), min(fov_p + 10, 80 * vp)
        coverage = min(coverage, 62 * slice_mm) if partial else min(150.0, 75 * slice_mm)
    subslices = 1 if tiny else max(1, int(np.ceil(slice_mm / 2.0)))
    ax = AXCODES[int(rng.integers(len(AXCODES)))]
    oblique = float(rng.uniform(3.0, 15.0)) if rng.random() < 0.45 else 0.0
    snr = float(np.exp(rng.uniform(np.log(8.0), np.log(50.0))))
    accel = int(rng.choice([1, 2, 2, 3])) if swi else int(rng.choice([1, 1, 2]))
    ghost = float(rng.uniform(0.02, 0.08)) if rng.random() < 0.15 else 0.0
    ring = float(rng.uniform(0.15, 0.3)) if rng.random() < 0.15 else 0.0
    storage = str(rng.choice(["int16", "uint16", "float32"]))
    slope = 1.0 if storage == "float32" or rng.random() < 0.5 else float(rng.uniform(0.25, 4.0))
    return BetaProtocol(
        sequence="swi" if swi else "gre",
        field_t=field_t,
        te_ms=round(te, 2),
        voxel_read_mm=round(vr, 3),
        voxel_phase_mm=round(vp, 3),
        slice_mm=round(slice_mm, 3),
        fov_read_mm=round(fov_r, 1),
        fov_phase_mm=round(fov_p, 1),
        coverage_mm=round(coverage, 1),
        partial_coverage=partial,
        subslices=subslices,
        axcodes="".join(ax),
        oblique_deg=round(oblique, 2),
        phase_mask_power=power,
        hp_filter_mm=round(hp, 2),
        snr=round(snr, 2),
        accel=accel,
        ghosting=round(ghost, 3),
        ringing=round(ring, 3),
        storage=storage,
        scl_slope=round(slope, 4),
        tiny=tiny,
    )
