"""Head of the "epsilon" family: pose and warp, tissue relaxometry, the layered head, iron, and the
smooth susceptibility field of air, bone and the iron-rich nuclei.

Coordinates: *MNI* mm (the anatomy maps of :mod:`cmbdet.anatomy`) and *world* mm (scanner RAS+).
A subject's head is the MNI anatomy under ``world = A (q) + t`` with ``mni = q + u(q)``, ``A`` a
rotation times an anisotropic scale and ``u`` a smooth sum-of-sines displacement (a few mm): cheap
in the direction the big grids need (world -> MNI), solved by fixed-point iteration for points.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from cmbdet.anatomy import IRON_NUCLEI_MNI, MniMaps

#: susceptibility of air relative to brain tissue (ppm, SI) and of cortical bone
CHI_AIR_PPM = 9.4
CHI_BONE_PPM = -2.0


def rot(axis: int, deg: float) -> np.ndarray:
    """3x3 rotation about a coordinate axis (0 x, 1 y, 2 z) by ``deg`` degrees."""
    a = np.deg2rad(deg)
    c, s = np.cos(a), np.sin(a)
    i, j = [k for k in range(3) if k != axis]
    m = np.eye(3)
    m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
    return m


@dataclass(frozen=True)
class Pose:
    """Head placement: ``world = matrix @ q + shift``, ``mni = q + warp(q)`` (mm)."""

    rotation: np.ndarray  # (3, 3) proper rotation part of ``matrix``
    matrix: np.ndarray  # (3, 3) rotation @ diag(scale)
    shift: np.ndarray  # (3,) mm
    wave_k: np.ndarray  # (W, 3) rad/mm
    wave_phase: np.ndarray  # (W,)
    wave_amp: np.ndarray  # (W, 3) mm

    def warp(self, q: np.ndarray) -> np.ndarray:
        """(N, 3) -> (N, 3) displacement (mm), same dtype as ``q``."""
        arg = q @ self.wave_k.T.astype(q.dtype) + self.wave_phase.astype(q.dtype)
        return np.sin(arg) @ self.wave_amp.astype(q.dtype)

    def world_to_mni(self, w: np.ndarray) -> np.ndarray:
        """(N, 3) world mm -> (N, 3) MNI mm."""
        inv = np.linalg.inv(self.matrix).astype(w.dtype)
        q = (w - self.shift.astype(w.dtype)) @ inv.T
        return q + self.warp(q)

    def mni_to_world(self, p: np.ndarray) -> np.ndarray:
        """(N, 3) MNI mm -> (N, 3) world mm (fixed-point inverse of the warp, < 0.01 mm error)."""
        p = np.atleast_2d(np.asarray(p, float))
        q = p.copy()
        for _ in range(12):
            q = p - self.warp(q)
        return q @ self.matrix.T + self.shift

    def b0_in_mni(self) -> np.ndarray:
        """Unit vector of B0 (scanner +z) in the MNI frame (ignoring the small warp)."""
        b = np.linalg.inv(self.matrix) @ np.array([0.0, 0.0, 1.0])
        return b / np.linalg.norm(b)


def sample_pose(rng: np.random.Generator) -> Pose:
    """Pitch up to ~15 degrees, yaw/roll up to ~7, brain size 0.9–1.1, a smooth 1–3 mm warp."""
    r = rot(2, rng.normal(0, 4.0)) @ rot(1, rng.normal(0, 3.5)) @ rot(0, rng.normal(0, 8.0))
    scale = rng.uniform(0.9, 1.1) * rng.uniform(0.96, 1.04, 3)
    n = 6
    direction = rng.normal(size=(n, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    k = direction * (2 * np.pi / rng.uniform(70.0, 160.0, (n, 1)))
    amp = rng.normal(0.0, 0.7, (n, 3))
    return Pose(rotation=r, matrix=r @ np.diag(scale), shift=rng.normal(0, 6.0, 3) + np.array([0.0, 8.0, -12.0]),
                wave_k=k, wave_phase=rng.uniform(0, 2 * np.pi, n), wave_amp=amp)


@dataclass(frozen=True)
class Tissue:
    """Per-subject relaxometry: effective proton density (incl. the short-TR T1 weighting) and R2*
    (1/s) per compartment at this field; head layer thicknesses (mm); atrophy 0–1; iron level 0–1.5."""

    pd: dict[str, float]
    r2s: dict[str, float]
    rim_mm: float
    table_mm: float
    diploe_mm: float
    scalp_mm: float
    atrophy: float
    iron: float

    def signal(self, name: str, te_ms: float) -> float:
        return float(self.pd[name] * np.exp(-te_ms / 1000.0 * self.r2s[name]))


def sample_tissue(rng: np.random.Generator, field_t: float) -> Tissue:
    f = field_t / 3.0
    j = lambda lo, hi: float(rng.uniform(lo, hi))  # noqa: E731
    pd = {"gm": j(0.8, 0.9), "wm": j(0.67, 0.77), "csf": j(0.8, 1.2), "blood": j(0.75, 0.95), "fat": j(0.8, 1.0),
          "muscle": j(0.45, 0.6), "marrow": j(0.5, 0.7), "bone": 0.04, "vitreous": j(0.9, 1.1)}
    r2s = {"gm": (11 + 8 * f) * j(0.9, 1.1), "wm": (13 + 9 * f) * j(0.9, 1.1), "csf": 1.5, "blood": (12 + 40 * f) *
           j(0.8, 1.3), "fat": 40 + 25 * f, "muscle": 25 + 12 * f, "marrow": 60 + 40 * f, "bone": 300.0,
           "vitreous": 2.0}
    return Tissue(pd=pd, r2s=r2s, rim_mm=j(1.0, 2.5), table_mm=j(1.2, 2.2), diploe_mm=j(1.5, 4.0),
                  scalp_mm=j(4.0, 8.0), atrophy=float(rng.beta(1.5, 3.0)), iron=j(0.6, 1.4))


def _ellipsoid_fraction(x, y, z, centre, semi) -> np.ndarray:
    rr = np.sqrt(((x - centre[0]) / semi[0]) ** 2 + ((y - centre[1]) / semi[1]) ** 2 + ((z - centre[2]) / semi[2]) ** 2)
    return np.clip((1.0 - rr) * min(semi) / 1.5 + 0.5, 0.0, 1.0)


#: relative iron load of the nuclei (globus pallidus strongest); putamen/caudate grow with age (atrophy)
_IRON_LOAD = {"globus_pallidus": 1.0, "substantia_nigra": 0.8, "red_nucleus": 0.65, "dentate": 0.7,
              "putamen": 0.3, "caudate": 0.2}


def iron_map(maps: MniMaps, tissue: Tissue, rng: np.random.Generator) -> np.ndarray:
    """(X, Y, Z) float32 iron load on ``maps``' grid: bilateral soft nuclei, lumpy, slightly asymmetric."""
    x, y, z = _grid_mm(maps)
    out = np.zeros(maps.shape, np.float32)
    for name, items in IRON_NUCLEI_MNI.items():
        load = _IRON_LOAD[name] * tissue.iron * (1.0 + (tissue.atrophy if name in ("putamen", "caudate") else 0.0))
        for centre, semi in items:
            c = np.asarray(centre) + rng.normal(0, 0.7, 3)
            s = np.asarray(semi) * rng.uniform(0.85, 1.1, 3)
            frac = _ellipsoid_fraction(x, y, z, c, s)
            np.maximum(out, (load * rng.uniform(0.85, 1.15) * frac).astype(np.float32), out=out)
    lumps = ndi.gaussian_filter(rng.normal(size=maps.shape).astype(np.float32), 2.0 / maps.resolution)
    out *= np.clip(1.0 + 1.5 * lumps, 0.4, 1.6)
    return out


def _grid_mm(maps: MniMaps) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    axes = [maps.affine[a, 3] + maps.resolution * np.arange(n, dtype=np.float32) for a, n in enumerate(maps.shape)]
    return np.meshgrid(*axes, indexing="ij", sparse=True)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma_vox: float) -> np.ndarray:
    g = ndi.gaussian_filter(rng.normal(size=shape).astype(np.float32), sigma_vox)
    return g / max(float(g.std()), 1e-6)


def head_layers(maps: MniMaps, tissue: Tissue) -> dict[str, np.ndarray]:
    """Soft compartment fractions (float32) on ``maps``' grid: gm, wm, csf (atrophy applied), bone,
    marrow, scalp, soft (face/neck), vitreous, air (cavities and outside the head)."""
    def ramp(v, lo, hi):  # 1 inside [lo, hi], soft 1 mm edges
        return np.clip(np.minimum(v - lo, hi - v) + 0.5, 0.0, 1.0)

    a = tissue.atrophy
    sulcal = (np.clip(1.0 - maps.d_sulc / (1.0 + 3.0 * a), 0.0, 1.0) * 0.7 * a).astype(np.float32)
    vent = np.clip((1.0 + 5.0 * a - maps.d_vent) / 1.5, 0.0, 1.0).astype(np.float32) * maps.brain
    gm = maps.gm * (1.0 - sulcal) * (1.0 - vent)
    wm = maps.wm * (1.0 - 0.3 * sulcal) * (1.0 - vent)
    d = maps.d_env
    env_in = np.clip(0.5 - d, 0.0, 1.0)
    csf = np.clip(env_in - gm - wm, 0.0, 1.0) + ramp(d, 0.0, tissue.rim_mm)
    t0 = tissue.rim_mm
    bone = ramp(d, t0, t0 + tissue.table_mm) + ramp(d, t0 + tissue.table_mm + tissue.diploe_mm,
                                                     t0 + 2 * tissue.table_mm + tissue.diploe_mm)
    marrow = ramp(d, t0 + tissue.table_mm, t0 + tissue.table_mm + tissue.diploe_mm)
    outer = t0 + 2 * tissue.table_mm + tissue.diploe_mm
    scalp = ramp(d, outer, outer + tissue.scalp_mm)
    cranium = np.clip(gm + wm + csf + bone + marrow + scalp, 0.0, 1.0)
    soft = np.clip(maps.lower_head - cranium, 0.0, 1.0) * (1.0 - maps.air) * (1.0 - maps.eyes)
    vitreous = maps.eyes * (1.0 - cranium)
    head = np.clip(cranium + soft + vitreous + maps.air, 0.0, 1.0)
    air = np.clip(1.0 - head + maps.air, 0.0, 1.0)
    return {k: np.asarray(v, np.float32) for k, v in dict(gm=gm, wm=wm, csf=csf, bone=bone, marrow=marrow, scalp=scalp,
                                                            soft=soft, vitreous=vitreous, air=air).items()}


def signal_map(maps: MniMaps, tissue: Tissue, te_ms: float, field_t: float, iron: np.ndarray,
               rng: np.random.Generator) -> np.ndarray:
    """(X, Y, Z) float32 magnitude at TE on ``maps``' grid (before susceptibility effects): tissue
    mixture, extra R2* from iron, a smooth tissue texture."""
    layers = head_layers(maps, tissue)
    te = te_ms / 1000.0
    s = np.zeros(maps.shape, np.float32)
    for name, key in (("gm", "gm"), ("wm", "wm"), ("csf", "csf"), ("bone", "bone"), ("marrow", "marrow"),
                      ("vitreous", "vitreous")):
        s += layers[key] * tissue.signal(name, te_ms)
    fat_share = float(rng.uniform(0.5, 0.8))
    s += layers["scalp"] * (fat_share * tissue.signal("fat", te_ms) + (1 - fat_share) * tissue.signal("muscle", te_ms))
    s += layers["soft"] * (0.35 * tissue.signal("fat", te_ms) + 0.65 * tissue.signal("muscle", te_ms))
    s *= np.exp(-te * 28.0 * (field_t / 3.0) * iron).astype(np.float32)
    texture = 1.0 + 0.03 * _smooth_noise(rng, maps.shape, 3.0 / maps.resolution)
    fine = 1.0 + 0.015 * _smooth_noise(rng, maps.shape, 0.8)
    s *= texture * fine
    return s


def dipole_field(chi: np.ndarray, spacing: np.ndarray, b0: np.ndarray, pad: int = 0) -> np.ndarray:
    """Field shift (units of ``chi``, e.g. ppm of B0) of a susceptibility map on a regular grid:
    ``ifft(D(k) fft(chi))`` with ``D = 1/3 - (k.b)^2 / |k|^2`` (Lorentz-corrected). ``spacing``: (3,) mm
    per axis; ``b0``: (3,) unit B0 direction in the grid's axis frame; ``pad``: voxels of edge
    padding against wrap-around."""
    from scipy import fft

    arr = np.pad(chi, pad, mode="edge") if pad else chi
    shape = arr.shape
    ks = [fft.fftfreq(n, d) for n, d in zip(shape[:2], spacing[:2])] + [fft.rfftfreq(shape[2], spacing[2])]
    kx, ky, kz = np.meshgrid(*[k.astype(np.float32) for k in ks], indexing="ij", sparse=True)
    k2 = kx * kx + ky * ky + kz * kz
    kb = kx * b0[0] + ky * b0[1] + kz * b0[2]
    with np.errstate(invalid="ignore", divide="ignore"):
        kernel = np.float32(1.0 / 3.0) - kb * kb / k2
    kernel[0, 0, 0] = 0.0
    spec = fft.rfftn(arr.astype(np.float32), workers=1)
    spec *= kernel
    out = fft.irfftn(spec, s=shape, workers=1).astype(np.float32)
    if pad:
        out = out[pad:-pad, pad:-pad, pad:-pad]
    return out


def background_field(maps2: MniMaps, tissue: Tissue, pose: Pose, iron2: np.ndarray) -> np.ndarray:
    """(X, Y, Z) float32 field shift (ppm) on the 2 mm MNI grid from air (cavities and outside the
    head), cortical bone and the iron nuclei, for B0 along the scanner z axis of this pose."""
    layers = head_layers(maps2, tissue)
    chi = CHI_AIR_PPM * layers["air"] + CHI_BONE_PPM * layers["bone"] + 0.2 * iron2
    return dipole_field(chi, np.full(3, float(maps2.resolution)), pose.b0_in_mni(), pad=16)


def upsample2(arr2: np.ndarray, shape1: tuple[int, int, int]) -> np.ndarray:
    """Linear interpolation of a 2 mm MNI-grid map onto the 1 mm grid (same origin: 1 mm voxel j
    is 2 mm voxel j/2), float32."""
    out = np.asarray(arr2, np.float32)
    for axis, n in enumerate(shape1):
        pos = np.arange(n, dtype=np.float32) / 2.0
        lo = np.clip(np.floor(pos).astype(int), 0, out.shape[axis] - 1)
        hi = np.clip(lo + 1, 0, out.shape[axis] - 1)
        w = (pos - lo).astype(np.float32)
        shape = [1, 1, 1]
        shape[axis] = n
        w = w.reshape(shape)
        out = np.take(out, lo, axis=axis) * (1.0 - w) + np.take(out, hi, axis=axis) * w
    return out
