"""Subject anatomy for "beta": a smooth random warp of the MNI152 maps and per-subject contrast.

The subject lives in scanner RAS (world, mm).  ``SubjectWarp.to_world`` maps MNI mm to world:
``world = R @ (S @ (m + u(m))) + t`` with a smooth random displacement ``u`` (random lattice
plus a ventricle-enlarging term), anisotropic brain scaling ``S`` and a head tilt ``R``.
``to_mni`` inverts it by fixed-point iteration.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from cmbdet.anatomy import IRON_NUCLEI_MNI, MniMaps, mni_maps

_LAT_MM = 4.0  # displacement lattice spacing
_LAT_ORIGIN = np.array([-100.0, -136.0, -102.0])
_LAT_SHAPE = (51, 60, 56)


def rotation(angles_deg: np.ndarray) -> np.ndarray:
    """3x3 rotation from (pitch about x, roll about y, yaw about z) in degrees."""
    a, b, c = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


@dataclass(frozen=True)
class SubjectWarp:
    """MNI mm <-> scanner RAS mm for one subject. ``disp``: (3, *_LAT_SHAPE) mm on the lattice."""

    rot: np.ndarray
    scale: np.ndarray
    shift: np.ndarray
    disp: np.ndarray

    def displacement(self, mni: np.ndarray) -> np.ndarray:
        """(N, 3) MNI mm -> (N, 3) displacement mm (trilinear)."""
        idx = ((np.asarray(mni, float) - _LAT_ORIGIN) / _LAT_MM).T
        return np.stack([ndi.map_coordinates(d, idx, order=1, mode="nearest") for d in self.disp], axis=1)

    def to_world(self, mni: np.ndarray) -> np.ndarray:
        """(N, 3) MNI mm -> (N, 3) scanner RAS mm."""
        m = np.atleast_2d(np.asarray(mni, float))
        return ((m + self.displacement(m)) * self.scale) @ self.rot.T + self.shift

    def to_mni(self, world: np.ndarray, iterations: int = 14) -> np.ndarray:
        """(N, 3) scanner RAS mm -> (N, 3) MNI mm (inverse by damped fixed-point iteration)."""
        w = np.atleast_2d(np.asarray(world, float))
        v = ((w - self.shift) @ self.rot) / self.scale
        m = v - self.displacement(v)
        for _ in range(iterations):
            m += 0.6 * (v - self.displacement(m) - m)
        return m


def sample_warp(rng: np.random.Generator, maps2: MniMaps) -> tuple[SubjectWarp, dict]:
    """Random subject warp; ``maps2`` is the 2 mm MNI map set (ventricle distances)."""
    coarse = rng.normal(0.0, 1.0, (3, 7, 8, 7))
    amp = rng.uniform(1.5, 4.5)
    disp = np.stack([ndi.zoom(c, np.array(_LAT_SHAPE) / np.array(c.shape), order=3) for c in coarse])
    disp *= amp / max(float(disp.std()), 1e-6)
    # ventricle enlargement: tissue near the ventricles pushed away from a midline centre
    enlarge = float(rng.choice([0.0, rng.uniform(0.05, 0.18), rng.uniform(0.18, 0.32)], p=[0.3, 0.45, 0.25]))
    gx, gy, gz = (_LAT_ORIGIN[i] + _LAT_MM * np.arange(_LAT_SHAPE[i]) for i in range(3))
    X, Y, Z = np.meshgrid(gx, gy, gz, indexing="ij")
    idx = ((np.stack([X, Y, Z]) - maps2.affine[:3, 3][:, None, None, None]) / 2.0).reshape(3, -1)
    dv = ndi.map_coordinates(maps2.d_vent, idx, order=1, mode="nearest").reshape(X.shape)
    w = enlarge * np.exp(-dv / 11.0)
    disp[0] += w * X  # forward map m -> m + u pushes periventricular tissue outwards
    disp[1] += w * (Y + 12.0) * 0.45
    disp[2] += w * (Z - 12.0) * 0.6
    scale = rng.uniform(0.88, 1.1) * rng.uniform(0.95, 1.05, 3)
    angles = np.array([rng.uniform(-20.0, 20.0), rng.uniform(-7.0, 7.0), rng.uniform(-8.0, 8.0)])
    shift = rng.uniform(-6.0, 6.0, 3) + np.array([0.0, 15.0, -8.0])
    info = {"warp_amp_mm": float(amp), "ventricle_enlarge": enlarge, "tilt_pitch_deg": float(angles[0]),
            "tilt_roll_deg": float(angles[1]), "tilt_yaw_deg": float(angles[2]), "brain_scale": float(np.mean(scale))}
    return SubjectWarp(rot=rotation(angles), scale=scale, shift=shift, disp=disp.astype(np.float32)), info


@dataclass(frozen=True)
class Contrast:
    """Per-subject tissue intensities (relative to white matter = 1) and iron/air strengths."""

    gm: float
    wm: float
    csf: float
    blood_frac: float  # intravascular venous signal fraction
    iron: float  # deep-nuclei darkening 0..1
    scalp: float
    marrow: float
    muscle: float
    eyes: float
    air_ppm: float  # air-bone field strength (ppm at a cavity wall)
    texture: float


def sample_contrast(rng: np.random.Generator, field_t: float, te_ms: float) -> Contrast:
    """Tissue contrast drawn per subject; T2* decay makes GM/WM closer and iron darker at long TE."""
    te = te_ms / 20.0
    return Contrast(
        gm=float(rng.uniform(1.05, 1.35) * (1.0 + 0.05 * (te - 1.0))),
        wm=1.0,
        csf=float(rng.uniform(1.15, 1.9)),
        blood_frac=float(np.clip(rng.uniform(0.05, 0.35) / (te * field_t / 3.0) ** 0.5, 0.02, 0.6)),
        iron=float(np.clip(rng.uniform(0.15, 0.55) * (te * field_t / 3.0) ** 0.5, 0.05, 0.8)),
        scalp=float(rng.uniform(0.6, 1.4)),
        marrow=float(rng.uniform(0.2, 0.6)),
        muscle=float(rng.uniform(0.35, 0.7)),
        eyes=float(rng.uniform(1.0, 1.8)),
        air_ppm=float(rng.uniform(4.0, 9.0)),
        texture=float(rng.uniform(0.0, 0.06)),
    )


@functools.lru_cache(maxsize=2)
def iron_fraction(resolution: int) -> np.ndarray:
    """(X, Y, Z) float32 iron load 0..1 of the deep nuclei on the head grid (soft ellipsoids)."""
    maps = mni_maps(resolution)
    weight = {"globus_pallidus": 1.0, "substantia_nigra": 0.9, "red_nucleus": 0.8, "dentate": 0.75,
              "putamen": 0.35, "caudate": 0.25}
    aff = maps.affine
    out = np.zeros(maps.shape, np.float32)
    for name, items in IRON_NUCLEI_MNI.items():
        for centre, radii in items:
            lo = np.floor((np.array(centre) - np.array(radii) - 3 - aff[:3, 3]) / maps.resolution).astype(int)
            hi = np.ceil((np.array(centre) + np.array(radii) + 3 - aff[:3, 3]) / maps.resolution).astype(int) + 1
            lo = np.maximum(lo, 0)
            sl = tuple(slice(a, b) for a, b in zip(lo, hi))
            ax = [aff[i, 3] + maps.resolution * np.arange(lo[i], hi[i]) for i in range(3)]
            X, Y, Z = np.meshgrid(*ax, indexing="ij")
            rr = np.sqrt(((X - centre[0]) / radii[0]) ** 2 + ((Y - centre[1]) / radii[1]) ** 2
                         + ((Z - centre[2]) / radii[2]) ** 2)
            val = weight[name] / (1.0 + np.exp((rr - 0.9) / 0.08))
            out[sl] = np.maximum(out[sl], val.astype(np.float32))
    return out


@functools.lru_cache(maxsize=2)
def _outside_bases(resolution: int) -> dict[str, np.ndarray]:
    """Static shapes outside the brain on the head grid (float32): CSF rim, skull marrow, scalp."""
    maps = mni_maps(resolution)
    d = maps.d_env
    outside = (d > 0) & ~maps.brain
    rim = np.clip(1.0 - d / 2.5, 0.0, 1.0) * outside
    marrow = np.exp(-(((d - 5.5) / 1.2) ** 2)) * ((d > 2.0) & (d < 9.0)) * 0.6 * outside
    scalp = np.clip((d - 8.5) / 1.0, 0.0, 1.0) * np.clip((14.5 - d) / 1.0, 0.0, 1.0) * outside
    face = maps.lower_head * np.clip(d - 8.5, 0.0, 1.0) * outside  # face/neck outside the skull shell
    return {"rim": rim.astype(np.float32), "marrow": marrow.astype(np.float32), "scalp": scalp.astype(np.float32),
            "face": face.astype(np.float32)}


def intensity_map(maps: MniMaps, c: Contrast) -> np.ndarray:
    """(X, Y, Z) float32 T2*-weighted proton signal on the maps' head grid (no bias, no noise)."""
    b = _outside_bases(maps.resolution)
    out = maps.gm * np.float32(c.gm)
    out += maps.wm
    out += maps.csf * np.float32(c.csf)
    out *= 1.0 - np.float32(c.iron) * iron_fraction(maps.resolution)
    out += b["rim"] * np.float32(c.csf)
    out += b["marrow"] * np.float32(c.marrow)
    out += b["scalp"] * np.float32(c.scalp)
    np.maximum(out, b["face"] * np.float32(c.muscle), out=out)
    np.maximum(out, maps.cistern * np.float32(c.csf * 0.9), out=out)
    np.maximum(out, maps.eyes * np.float32(c.eyes), out=out)
    out *= 1.0 - maps.air
    return out


def background_field_ppm(maps: MniMaps, c: Contrast) -> np.ndarray:
    """(X, Y, Z) float32 smooth off-resonance (ppm): air–bone fields and deep-nuclei iron."""
    out = maps.suscept * np.float32(c.air_ppm)
    out += iron_fraction(maps.resolution) * np.float32(0.12 * c.iron / 0.4)
    return out
