"""Acquisition protocol of the "delta" family: field, echo time, voxel grid, SWI processing, storage.

Field strength and sequence are drawn independently (a mixed fleet: 1.5 T SWI and 3 T magnitude
GRE both occur); in-plane size is continuous (0.5–1.0 mm), slices 1–5 mm.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class DeltaProtocol:
    """One simulated acquisition (units in the field names; angles in degrees).

    ``sub_slices``: thin sub-slices simulated per acquired slice (slice-profile integration).
    ``axis_order``/``axis_flips``: how the stored array's axes map onto the acquisition axes
    (read, phase, slice). ``kspace_keep``: fraction of k-space kept in-plane (1 = no ringing).
    ``vertex_cut_mm``: how far below the top of the brain the slab stops (0 = whole brain).
    """

    sequence: str  # "swi" | "gre"
    field_t: float
    te_ms: float
    in_plane_mm: float
    slice_mm: float
    sub_slices: int
    slice_profile: str  # "box" | "soft": sub-slice weights
    oblique_deg: float
    phase_mask_power: int  # 0 for GRE
    highpass_mm: float  # SWI phase high-pass (Gaussian low-pass width), 0 for GRE
    snr: float  # white-matter signal / noise sigma (per channel)
    kspace_keep: float
    bias_strength: float  # std of the log bias over the field of view
    vertex_cut_mm: float
    axis_order: str  # e.g. "102": stored axis 0 is acquisition axis 1, ...
    axis_flips: str  # e.g. "010"
    storage: str  # "int16" | "float32"
    tiny: bool

    def as_row(self) -> dict[str, str | int | float]:
        """Flat dict of str/int/float values (one CSV row)."""
        row = asdict(self)
        row["tiny"] = int(self.tiny)
        row["site"] = "delta"
        return row


#: Slice thicknesses (mm) and how often the fleet uses them.
_SLICES_MM = np.array([1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0])
_SLICE_WEIGHTS = np.array([0.12, 0.12, 0.2, 0.16, 0.16, 0.14, 0.1])

#: Upper bound on simulated sub-slice voxels (keeps a full-size subject within seconds).
FINE_VOXEL_BUDGET = 8_000_000


def sub_slice_count(in_plane_mm: float, slice_mm: float, *, tiny: bool) -> int:
    """Sub-slices per slice: about 1 mm thick, fewer when the fine grid would exceed the budget."""
    if tiny:
        return 2
    want = int(np.clip(np.ceil(slice_mm / 1.0), 1, 5))
    plane = (175.0 / in_plane_mm) * (215.0 / in_plane_mm)
    n_slices = 160.0 / slice_mm
    afford = int(FINE_VOXEL_BUDGET // (plane * n_slices))
    return int(max(1, min(want, afford)))


def sample_protocol(rng: np.random.Generator, *, tiny: bool = False) -> DeltaProtocol:
    """Draw one acquisition; ``tiny`` gives 2.5–3 mm voxels for tests."""
    field_t = 3.0 if rng.random() < 0.5 else 1.5
    te_ms = float(rng.uniform(15.0, 30.0) if field_t == 3.0 else rng.uniform(20.0, 40.0))
    sequence = "swi" if rng.random() < 0.55 else "gre"
    if tiny:
        in_plane = float(rng.uniform(2.5, 3.0))
        slice_mm = float(rng.uniform(2.5, 3.5))
    else:
        in_plane = float(np.round(rng.uniform(0.5, 1.0), 3))
        slice_mm = float(rng.choice(_SLICES_MM, p=_SLICE_WEIGHTS / _SLICE_WEIGHTS.sum()))
    oblique = float(rng.uniform(6.0, 22.0)) if rng.random() < 0.2 else 0.0
    order = rng.permutation(3)
    flips = rng.integers(0, 2, 3)
    return DeltaProtocol(
        sequence=sequence,
        field_t=field_t,
        te_ms=round(te_ms, 2),
        in_plane_mm=in_plane,
        slice_mm=slice_mm,
        sub_slices=sub_slice_count(in_plane, slice_mm, tiny=tiny),
        slice_profile="soft" if rng.random() < 0.5 else "box",
        oblique_deg=round(oblique, 2),
        phase_mask_power=int(rng.integers(2, 6)) if sequence == "swi" else 0,
        highpass_mm=float(rng.uniform(6.0, 14.0)) if sequence == "swi" else 0.0,
        snr=float(rng.uniform(12.0, 45.0)),
        kspace_keep=float(rng.uniform(0.6, 0.85)) if rng.random() < 0.35 else 1.0,
        bias_strength=float(rng.uniform(0.05, 0.3)),
        vertex_cut_mm=float(rng.uniform(5.0, 20.0)) if rng.random() < 0.12 else 0.0,
        axis_order="".join(str(int(a)) for a in order),
        axis_flips="".join(str(int(f)) for f in flips),
        storage="int16" if rng.random() < 0.6 else "float32",
        tiny=bool(tiny),
    )
