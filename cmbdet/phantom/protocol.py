"""Acquisition protocols: voxel grid, orientation, contrast, storage, noise."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from nibabel.orientations import axcodes2ornt

_AXIS_OF = {"R": 0, "L": 0, "A": 1, "P": 1, "S": 2, "I": 2}

#: Typical in-plane matrix sizes (read direction) of clinical/research scanners.
_MATRICES = np.array([64, 80, 96, 112, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448, 480, 512])


@dataclass(frozen=True)
class Protocol:
    """One acquisition.

    voxel_mm and shape are in *array axis order* of the written file, whose
    orientation is ``axcodes`` (nibabel ``aff2axcodes`` of the written affine).
    The slice (through-plane) axis is the one coded S or I; slices are axial.
    """

    voxel_mm: tuple[float, float, float]
    axcodes: tuple[str, str, str]
    oblique_deg: float
    contrast: str  # 'swi' | 'gre'
    shape: tuple[int, int, int] = (96, 96, 72)
    field_t: float = 3.0
    te_ms: float = 20.0
    snr: float = 20.0  # mean brain signal / noise sigma
    dtype: str = "int16"  # 'int16' | 'uint16' | 'float32' | 'float32_signed'
    max_value: float = 4095.0  # stored value of bright CSF (before noise)
    slope: float = 1.0  # NIfTI scl_slope written for integer storage
    oblique_axis: tuple[float, float, float] = (1.0, 0.0, 0.0)  # rotation axis (scanner RAS)
    bias: float = 0.2  # max relative amplitude of the multiplicative bias field
    ringing: float = 0.0  # 0: none; >0: motion ghost / Gibbs ringing strength
    coverage_top_mm: float = 85.0  # MNI-like z of the slab top (head frame)
    name: str = "custom"

    # -- derived geometry -------------------------------------------------
    @property
    def slice_axis(self) -> int:
        """Array axis whose direction is S or I."""
        return [c.upper() in "SI" for c in self.axcodes].index(True)

    @property
    def slice_mm(self) -> float:
        return float(self.voxel_mm[self.slice_axis])

    @property
    def inplane_mm(self) -> float:
        return float(min(v for i, v in enumerate(self.voxel_mm) if i != self.slice_axis))

    def canonical(self) -> tuple[np.ndarray, np.ndarray]:
        """(spacing (3,), shape (3,)) on the R, A, S axes of the (oblique) grid."""
        ornt = axcodes2ornt(tuple(c.upper() for c in self.axcodes))
        vc = np.zeros(3)
        nc = np.zeros(3, int)
        for i in range(3):
            vc[int(ornt[i, 0])] = self.voxel_mm[i]
            nc[int(ornt[i, 0])] = self.shape[i]
        return vc, nc

    def with_axcodes(self, axcodes: tuple[str, str, str] | str) -> Protocol:
        """Same acquisition written in another axis order / sign convention."""
        codes = tuple(c.upper() for c in axcodes)
        vc, nc = self.canonical()
        axes = [_AXIS_OF[c] for c in codes]
        if sorted(axes) != [0, 1, 2]:
            raise ValueError(f"invalid axcodes {axcodes!r}")
        return dataclasses.replace(
            self,
            axcodes=codes,  # type: ignore[arg-type]
            voxel_mm=tuple(float(vc[a]) for a in axes),  # type: ignore[arg-type]
            shape=tuple(int(nc[a]) for a in axes),  # type: ignore[arg-type]
        )

    def with_slice_mm(self, slice_mm: float) -> Protocol:
        """Same acquisition with slices of ``slice_mm`` (mm), the slab's coverage kept (fewer or more
        slices); the name says so."""
        axis = self.slice_axis
        coverage_mm = self.voxel_mm[axis] * self.shape[axis]
        voxel = list(self.voxel_mm)
        shape = list(self.shape)
        voxel[axis] = float(slice_mm)
        shape[axis] = max(4, int(round(coverage_mm / slice_mm)))
        return dataclasses.replace(self, voxel_mm=tuple(voxel), shape=tuple(shape),  # type: ignore[arg-type]
                                   name=f"{self.name}_slices{slice_mm:g}mm")

    def as_row(self) -> dict[str, object]:
        """Flat dict for protocols.csv."""
        return {
            "name": self.name,
            "voxel_mm": "x".join(f"{v:.4f}" for v in self.voxel_mm),
            "axcodes": "".join(self.axcodes),
            "shape": "x".join(str(n) for n in self.shape),
            "oblique_deg": round(self.oblique_deg, 3),
            "contrast": self.contrast,
            "field_t": self.field_t,
            "te_ms": round(self.te_ms, 2),
            "snr": round(self.snr, 2),
            "dtype": self.dtype,
            "max_value": self.max_value,
            "slope": self.slope,
            "bias": round(self.bias, 3),
            "ringing": round(self.ringing, 3),
            "slice_mm": round(self.slice_mm, 4),
            "inplane_mm": round(self.inplane_mm, 4),
        }


_COMMON_AXCODES = [
    (("L", "P", "S"), 0.22),
    (("R", "A", "S"), 0.16),
    (("L", "A", "S"), 0.16),
    (("R", "P", "S"), 0.06),
    (("R", "P", "I"), 0.06),
    (("L", "P", "I"), 0.06),
    (("L", "A", "I"), 0.03),
    (("P", "I", "R"), 0.05),
    (("A", "S", "R"), 0.03),
    (("P", "R", "S"), 0.03),
]

# name, weight, in-plane range, slice range, P(swi)
_FAMILIES = [
    ("0.45x4", 0.14, (0.43, 0.47), (3.5, 4.0), 0.55),
    ("0.5x2-3", 0.22, (0.48, 0.52), (2.0, 3.0), 0.85),
    ("0.49x0.8", 0.12, (0.47, 0.50), (0.75, 0.85), 0.9),
    ("0.9x2-4", 0.22, (0.86, 0.94), (2.0, 4.0), 0.2),
    ("1iso", 0.14, (0.94, 1.0), None, 0.5),
    ("mixed", 0.16, (0.45, 1.0), (0.8, 4.0), 0.6),
]


def _axcodes(rng: np.random.Generator) -> tuple[str, str, str]:
    if rng.random() < 0.12:  # any permutation and signs
        perm = rng.permutation(3)
        pairs = (("L", "R"), ("P", "A"), ("I", "S"))
        return tuple(pairs[a][int(rng.integers(2))] for a in perm)  # type: ignore[return-value]
    codes = [c for c, _ in _COMMON_AXCODES]
    w = np.array([w for _, w in _COMMON_AXCODES])
    return codes[int(rng.choice(len(codes), p=w / w.sum()))]


def _oblique(rng: np.random.Generator) -> tuple[float, tuple[float, float, float]]:
    if rng.random() < 0.45:
        return 0.0, (1.0, 0.0, 0.0)
    ang = float(rng.uniform(1.0, 20.0))
    if rng.random() < 0.7:  # AC-PC angulation: about the left-right axis
        axis = np.array([1.0, rng.normal(0, 0.15), rng.normal(0, 0.15)])
    else:
        axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    return ang, tuple(float(a) for a in axis)  # type: ignore[return-value]


def sample_protocol(rng: np.random.Generator, *, tiny: bool = False) -> Protocol:
    """Draw a realistic SWI / T2*-GRE acquisition.

    Covers the voxel sizes of DOMAIN.md (0.45x0.45x4, 0.5x0.5x2-3,
    0.49x0.49x0.8, 0.86-0.94 x 2-4 mm, 1 mm iso, and a uniform mix of
    in-plane 0.45-1.0 x slices 0.8-4 mm), 1.5 T / 3 T, any axis order and
    signs, oblique up to 20 deg, rectangular FOV, several storage types.
    ``tiny`` gives a coarse (2-3 mm) whole-head grid for unit tests.
    """
    ang, axis = _oblique(rng)
    axc = _axcodes(rng)
    if tiny:
        fam = "tiny"
        inpl = float(rng.uniform(2.0, 3.0))
        thk = float(rng.uniform(2.0, 3.0))
        fov_ap = float(rng.uniform(236.0, 250.0))
        n_ap = int(round(fov_ap / inpl))
        n_lr = int(round(fov_ap * rng.uniform(0.82, 0.95) / inpl))
        coverage = float(rng.uniform(196.0, 206.0))
        top = float(rng.uniform(102.0, 106.0))
        swi_p = 0.6
    else:
        w = np.array([f[1] for f in _FAMILIES])
        fam, _, inr, thr, swi_p = _FAMILIES[int(rng.choice(len(_FAMILIES), p=w / w.sum()))]
        target = float(rng.uniform(*inr))
        fov_ap = float(rng.uniform(205.0, 250.0))
        n_ap = int(_MATRICES[np.argmin(np.abs(_MATRICES - fov_ap / target))])
        inpl = target  # FOV = matrix x voxel
        if thr is None:
            thk = inpl
        else:
            thk = float(rng.uniform(*thr))
            thk = round(thk * 10) / 10 if thk > 1.0 else round(thk * 20) / 20
        frac = float(rng.uniform(0.75, 1.0))
        n_lr = max(2, int(round(n_ap * frac / 2.0)) * 2)
        if thk <= 1.2:
            coverage = float(rng.uniform(100.0, 176.0))
        else:
            coverage = float(rng.uniform(120.0, 170.0))
        top = float(85.0 + rng.uniform(-14.0, 8.0))
    n_sl = max(4, int(round(coverage / thk)))
    contrast = "swi" if rng.random() < swi_p else "gre"
    field = 3.0 if rng.random() < 0.72 else 1.5
    if contrast == "swi":
        te = float(rng.uniform(15, 25) if field == 3.0 else rng.uniform(28, 45))
    else:
        te = float(rng.uniform(12, 25) if field == 3.0 else rng.uniform(20, 30))
    snr = float(np.exp(rng.uniform(np.log(8.0), np.log(40.0))))
    kind = rng.choice(["int16", "uint16", "float32", "float32_signed"], p=[0.4, 0.2, 0.2, 0.2])
    slope = 1.0
    if kind == "int16":
        maxv = float(rng.choice([4095.0, 4095.0, 2000.0, 32000.0]))
        if rng.random() < 0.2:
            slope = float(rng.uniform(0.5, 3.0))
    elif kind == "uint16":
        maxv = float(rng.choice([1000.0, 4095.0, 60000.0]))
    elif kind == "float32":
        maxv = float(rng.choice([1e-4, 3e-4, 1.0, 1000.0]))
    else:
        maxv = float(rng.choice([1.0, 500.0]))
    ringing = 0.0 if rng.random() < 0.7 else float(rng.uniform(0.02, 0.06))
    canon_vox = (inpl, inpl, thk)
    canon_shape = (n_lr, n_ap, n_sl)
    base = Protocol(
        voxel_mm=canon_vox,
        axcodes=("R", "A", "S"),
        oblique_deg=ang,
        contrast=contrast,
        shape=canon_shape,
        field_t=field,
        te_ms=te,
        snr=snr,
        dtype=str(kind),
        max_value=maxv,
        slope=slope,
        oblique_axis=axis,
        bias=float(rng.uniform(0.05, 0.3)),
        ringing=ringing,
        coverage_top_mm=top,
        name=f"{contrast}_{fam}",
    )
    return base.with_axcodes(axc)
