"""The delta head: pose and cubic-polynomial warp of the MNI152 anatomy, relaxometric tissue signal,
and the smooth susceptibility field (air cavities, iron) — all drawn per subject.

Frames: MNI mm (the anatomy maps), head mm ``u`` (the subject's own brain, before pose), and scanner
RAS mm ``w`` (the written image's world).  ``MNI = u + P(u)`` with ``P`` a cubic polynomial
displacement (mm); ``w = R @ (s * u) + t``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from cmbdet.anatomy import AIR_CAVITIES_MNI, IRON_NUCLEI_MNI, MniMaps

#: gyromagnetic ratio / 2 pi (MHz per T); phase (rad) = -2 pi * GAMMA_MHZ * B0 * TE * field_ppm
GAMMA_MHZ_PER_T = 42.577

_WARP_NORM_MM = 75.0
_WARP_CLIP = 1.3
#: bound on |d monomial / d q| over the clipped cube, per monomial (for the contraction check)
_MONOMIAL_SLOPE = np.array([2.6, 2.6, 2.6, 2.6, 2.6, 2.6, 5.07, 5.07, 5.07, 5.07])


def _monomials(q: np.ndarray) -> np.ndarray:
    """(N, 3) normalized coordinates -> (N, 10) quadratic and cubic monomials (clipped to the
    head's reach, so the displacement stays bounded and the inverse converges)."""
    q = np.clip(q, -_WARP_CLIP, _WARP_CLIP)
    x, y, z = q[:, 0], q[:, 1], q[:, 2]
    return np.stack([x * x, y * y, z * z, x * y, x * z, y * z, x * x * x, y * y * y, z * z * z, x * y * z], axis=1)


def rotation_about(axis: np.ndarray, angle_deg: float) -> np.ndarray:
    """(3, 3) rotation by ``angle_deg`` about unit ``axis`` (Rodrigues)."""
    a = np.asarray(axis, float) / np.linalg.norm(axis)
    th = np.deg2rad(angle_deg)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + np.sin(th) * k + (1 - np.cos(th)) * (k @ k)


@dataclass(frozen=True)
class HeadPose:
    """Subject anatomy and placement: scanner RAS ``w = rotation @ (scale * u) + shift_mm``,
    MNI ``m = u + P(u)`` with ``P(u) = _monomials(u / 75 mm) @ warp_coef_mm``."""

    rotation: np.ndarray  # (3, 3)
    scale: np.ndarray  # (3,)
    shift_mm: np.ndarray  # (3,)
    warp_coef_mm: np.ndarray  # (10, 3)

    def head_to_mni(self, u: np.ndarray) -> np.ndarray:
        u = np.asarray(u, float)
        return u + _monomials(u / _WARP_NORM_MM) @ self.warp_coef_mm

    def world_to_mni(self, w: np.ndarray) -> np.ndarray:
        """(N, 3) scanner RAS mm -> (N, 3) MNI mm."""
        u = ((np.asarray(w, float) - self.shift_mm) @ self.rotation) / self.scale
        return self.head_to_mni(u)

    def mni_to_world(self, m: np.ndarray) -> np.ndarray:
        """(N, 3) MNI mm -> (N, 3) scanner RAS mm (the warp inverted by fixed-point iteration)."""
        m = np.atleast_2d(np.asarray(m, float))
        u = m.copy()
        for _ in range(10):
            u = m - _monomials(u / _WARP_NORM_MM) @ self.warp_coef_mm
        return (u * self.scale) @ self.rotation.T + self.shift_mm

    def b0_in_mni(self) -> np.ndarray:
        """Unit vector of the main field (scanner z) in the MNI frame (pose rotation only)."""
        v = self.rotation.T @ np.array([0.0, 0.0, 1.0])
        return v / np.linalg.norm(v)


def sample_pose(rng: np.random.Generator) -> HeadPose:
    """Brain size 0.85–1.15 (slightly anisotropic), rotation up to 15 degrees about a random axis,
    a few mm of shift and a smooth cubic warp (a few mm)."""
    size = rng.uniform(0.85, 1.15)
    scale = size * rng.uniform(0.96, 1.04, 3)
    axis = rng.normal(size=3)
    rot = rotation_about(axis, float(rng.uniform(0.0, 15.0)))
    shift = rng.normal(0.0, 4.0, 3)
    coef = rng.normal(0.0, 1.0, (10, 3)) * rng.uniform(1.0, 3.0)
    # keep the warp a contraction-friendly perturbation: |dP/du| <= 0.4 per output axis
    slope = (np.abs(coef) * _MONOMIAL_SLOPE[:, None]).sum(0) / _WARP_NORM_MM
    coef *= np.minimum(1.0, 0.4 / np.maximum(slope, 1e-9))[None, :]
    return HeadPose(rotation=rot, scale=scale, shift_mm=shift, warp_coef_mm=coef)


@dataclass(frozen=True)
class TissueContrast:
    """Proton density (relative) and R2* (1/s, at this field) per tissue; outside-brain shells (mm)."""

    pd: dict[str, float]
    r2s: dict[str, float]
    iron_r2s: dict[str, float]  # extra R2* of the iron-rich nuclei (1/s)
    rim_csf_mm: float
    skull_mm: float
    scalp_mm: float
    ventricle_grow_mm: float  # ventricular enlargement (periventricular tissue turned to CSF)
    sulcal_widen_mm: float
    air_field_gain: float  # residual (after shim) air-tissue field, fraction of the ideal one
    iron_chi_ppm: float
    texture: float  # relative std of the tissue grain


def sample_contrast(rng: np.random.Generator, field_t: float) -> TissueContrast:
    """Relaxometric contrast: R2* grows with field; iron nuclei add R2*; CSF long T2*."""
    f = field_t / 3.0
    pd = {
        "gm": rng.uniform(0.78, 0.9), "wm": rng.uniform(0.62, 0.76), "csf": rng.uniform(0.9, 1.0),
        "skull": rng.uniform(0.02, 0.08), "scalp": rng.uniform(0.55, 1.1), "soft": rng.uniform(0.35, 0.6),
        "vitreous": rng.uniform(0.8, 1.0), "blood": rng.uniform(0.75, 0.9),
    }
    r2s = {
        "gm": rng.uniform(13.0, 20.0) * f, "wm": rng.uniform(17.0, 27.0) * f, "csf": rng.uniform(1.0, 5.0),
        "skull": 60.0, "scalp": rng.uniform(15.0, 35.0) * f, "soft": 30.0 * f, "vitreous": 3.0,
        "blood": rng.uniform(25.0, 60.0) * f,
    }
    iron = {
        "globus_pallidus": rng.uniform(20.0, 45.0) * f, "putamen": rng.uniform(5.0, 15.0) * f,
        "caudate": rng.uniform(3.0, 10.0) * f, "substantia_nigra": rng.uniform(18.0, 40.0) * f,
        "red_nucleus": rng.uniform(12.0, 30.0) * f, "dentate": rng.uniform(12.0, 35.0) * f,
    }
    return TissueContrast(
        pd={k: float(v) for k, v in pd.items()}, r2s={k: float(v) for k, v in r2s.items()},
        iron_r2s={k: float(v) for k, v in iron.items()},
        rim_csf_mm=float(rng.uniform(1.0, 3.5)), skull_mm=float(rng.uniform(4.0, 8.0)),
        scalp_mm=float(rng.uniform(3.0, 7.0)),
        ventricle_grow_mm=float(rng.uniform(0.0, 4.0) if rng.random() < 0.6 else 0.0),
        sulcal_widen_mm=float(rng.uniform(0.0, 1.5)),
        air_field_gain=float(rng.uniform(0.05, 0.2)), iron_chi_ppm=float(rng.uniform(0.03, 0.12)),
        texture=float(rng.uniform(0.01, 0.05)),
    )


def _ellipsoid_fraction(shape, affine: np.ndarray, centre, radii,
                        edge_mm: float) -> tuple[tuple[slice, ...], np.ndarray]:
    """Soft ellipsoid occupancy inside its bounding box: (box slices, fraction array)."""
    res = float(affine[0, 0])
    c = np.asarray(centre, float)
    r = np.asarray(radii, float)
    lo = np.maximum(np.floor((c - r - 2 * edge_mm - affine[:3, 3]) / res).astype(int), 0)
    hi = np.minimum(np.ceil((c + r + 2 * edge_mm - affine[:3, 3]) / res).astype(int) + 1, np.array(shape))
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    axes = [affine[d, 3] + res * np.arange(lo[d], hi[d]) for d in range(3)]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    rr = np.sqrt(((x - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((z - c[2]) / r[2]) ** 2)
    frac = np.clip((1.0 - rr) * float(np.mean(r)) / edge_mm + 0.5, 0.0, 1.0).astype(np.float32)
    return box, frac


def _ramp(d: np.ndarray, start: float, stop: float) -> np.ndarray:
    """1 inside [start, stop] (mm) with 1 mm soft edges, else 0."""
    return np.clip(np.minimum(d - start, stop - d) + 0.5, 0.0, 1.0)


def signal_map(maps: MniMaps, tc: TissueContrast, te_ms: float, rng: np.random.Generator) -> np.ndarray:
    """GRE magnitude (arbitrary units, WM about 0.3–0.6) on the MNI head grid, (X, Y, Z) float32,
    with a fine multiplicative tissue texture (a few per cent, ~1–2 mm grain)."""
    te = te_ms / 1000.0
    gm, wm, csf = maps.gm.copy(), maps.wm.copy(), maps.csf.copy()
    if tc.ventricle_grow_mm > 0:  # atrophy: periventricular tissue becomes CSF
        keep = np.clip(maps.d_vent / tc.ventricle_grow_mm, 0.0, 1.0).astype(np.float32)
        lost = (gm + wm) * (1.0 - keep) * maps.brain
        gm *= keep
        wm *= keep
        csf += lost
    if tc.sulcal_widen_mm > 0:
        keep = np.clip(0.4 + 0.6 * maps.d_sulc / (tc.sulcal_widen_mm + 1e-3), 0.0, 1.0).astype(np.float32)
        lost = gm * (1.0 - keep)
        gm *= keep
        csf += lost
    r2_gm = np.full(maps.shape, tc.r2s["gm"], np.float32)
    r2_wm = np.full(maps.shape, tc.r2s["wm"], np.float32)
    for name, items in IRON_NUCLEI_MNI.items():
        for centre, radii in items:
            box, frac = _ellipsoid_fraction(maps.shape, maps.affine, centre, radii, 1.5)
            r2_gm[box] += tc.iron_r2s[name] * frac
            r2_wm[box] += tc.iron_r2s[name] * frac
    pd, r2 = tc.pd, tc.r2s
    out = gm * pd["gm"] * np.exp(-te * r2_gm)
    out += wm * pd["wm"] * np.exp(-te * r2_wm)
    del r2_gm, r2_wm
    out += csf * np.float32(pd["csf"] * np.exp(-te * r2["csf"]))
    grain = ndi.gaussian_filter(rng.standard_normal(maps.shape, dtype=np.float32), 0.8 / maps.resolution,
                                truncate=2.0)
    grain *= np.float32(tc.texture / max(float(grain.std()), 1e-6))
    out *= 1.0 + grain
    del grain

    def s(name: str) -> np.float32:
        return np.float32(pd[name] * np.exp(-te * r2[name]))

    # the envelope distance is an EDT of a voxel mask: smooth it so the skull's iso-surfaces are smooth
    d = ndi.gaussian_filter(maps.d_env, 1.5 / maps.resolution, truncate=2.0)
    # the template's brain mask is binary: blend brain and head over about a voxel (no staircase)
    brain_frac = ndi.gaussian_filter(maps.brain.astype(np.float32), 0.8, truncate=2.0)
    out *= brain_frac
    outside = 1.0 - brain_frac
    rim = _ramp(d, -10.0, tc.rim_csf_mm)
    skull = _ramp(d, tc.rim_csf_mm, tc.rim_csf_mm + tc.skull_mm)
    top = tc.rim_csf_mm + tc.skull_mm
    scalp = _ramp(d, top, top + tc.scalp_mm)
    head = rim * s("csf") + skull * s("skull") + scalp * s("scalp")
    head = np.maximum(head, maps.lower_head * s("soft") * np.clip(d + 0.5, 0.0, 1.0))
    head = np.maximum(head, maps.cistern * s("csf"))
    head = head * (1.0 - maps.air) + maps.eyes * s("vitreous")
    out += (head * outside).astype(np.float32)
    return out.astype(np.float32)


def field_map_ppm(maps2: MniMaps, pose: HeadPose, tc: TissueContrast, rng: np.random.Generator) -> np.ndarray:
    """Smooth field offset (ppm of B0) on the 2 mm MNI grid: dipole fields of the air cavities
    (rotated with the head), paramagnetic iron nuclei and a residual linear shim term."""
    b0 = pose.b0_in_mni()
    shape = maps2.shape
    axes = [maps2.affine[d, 3] + maps2.resolution * np.arange(shape[d]) for d in range(3)]
    x, y, z = np.meshgrid(*axes, indexing="ij", sparse=True)
    field = np.zeros(shape, np.float32)
    chi_air = 9.4  # ppm, air minus tissue
    for name, items in AIR_CAVITIES_MNI.items():
        weight = 0.6 if name == "mastoid_ear" else 1.0
        for centre, radii in items:
            a = float(np.prod(radii) ** (1.0 / 3.0))
            dx, dy, dz = x - centre[0], y - centre[1], z - centre[2]
            d2 = dx * dx + dy * dy + dz * dz
            d = np.sqrt(np.maximum(d2, a * a))
            cos = (dx * b0[0] + dy * b0[1] + dz * b0[2]) / d
            gain = weight * tc.air_field_gain * chi_air / 3.0
            field += (gain * (a / d) ** 3 * (3 * cos * cos - 1)).astype(np.float32)
    iron = np.zeros(shape, np.float32)
    for items in IRON_NUCLEI_MNI.values():
        for centre, radii in items:
            box, frac = _ellipsoid_fraction(shape, maps2.affine, centre, radii, 2.0)
            iron[box] = np.maximum(iron[box], frac)
    field += tc.iron_chi_ppm * ndi.gaussian_filter(iron, 1.0)
    g = rng.normal(0.0, 0.01, 3) / 100.0  # ppm per mm
    field += (g[0] * x + g[1] * y + g[2] * z).astype(np.float32)
    # the field inside the air itself is irrelevant: damp it so it does not alias
    return np.where(maps2.air > 0.5, 0.0, field).astype(np.float32)
