"""Delta microbleeds and focal mimics: magnetised spheres placed in MNI space.

A focus is a sphere of radius ``core_mm`` and susceptibility ``chi_ppm`` (positive: hemosiderin or
iron; negative: calcium).  Its dipole field dephases the voxels around it; how far the dark spot
reaches ("blooming") depends on field, echo time and voxel size.  For a microbleed the *visible*
diameter is drawn first (what a rater measures, mostly 2–5 mm) and the deposit's size is solved
for this protocol so that the signal is halved at the visible radius.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from cmbdet.anatomy import (
    AIR_BONE_ZONES_MNI,
    CALCIFICATION_SITES_MNI,
    DEEP,
    INFRATENTORIAL,
    IRON_NUCLEI_MNI,
    LOBAR,
    MniMaps,
)

from .head import GAMMA_MHZ_PER_T, HeadPose
from .veins import VeinSamples

#: my own deep-grey ellipsoids (MNI centre, semi-axes mm; x mirrored): where deep microbleeds go
DEEP_TARGETS_MNI = (
    ((11.0, -18.0, 6.0), (7.0, 11.0, 7.0)),  # thalamus
    ((23.0, 1.0, 0.0), (6.0, 13.0, 7.0)),  # lentiform nucleus
    ((13.0, 12.0, 10.0), (4.0, 7.0, 6.0)),  # caudate head
    ((18.0, -4.0, 8.0), (3.5, 12.0, 8.0)),  # internal capsule
)

#: microbleed distribution over regions, one pattern per subject (lobar, deep, infratentorial)
PATTERNS = {"lobar": (0.75, 0.15, 0.10), "deep": (0.25, 0.55, 0.20), "mixed": (0.45, 0.35, 0.20)}


@dataclass(frozen=True)
class Focus:
    """One magnetised sphere in scanner RAS mm.

    ``strength`` (0–1] scales the signal loss it causes (faint foci below 1); ``core_signal`` is
    the fraction of signal left inside the deposit; ``diameter_mm`` the visible diameter.
    """

    centre_world: np.ndarray
    core_mm: float
    chi_ppm: float
    core_signal: float
    strength: float
    diameter_mm: float
    kind: str  # "cmb" | "iron" | "calcification"
    region: str
    detail: str
    centre_mni: np.ndarray  # (3,) MNI mm


def omega_te(field_t: float, te_ms: float) -> float:
    """Phase (rad) accumulated per ppm of field offset at the echo time."""
    return 2.0 * np.pi * GAMMA_MHZ_PER_T * field_t * te_ms * 1e-3


def deposit_radius(visible_mm: float, chi_ppm: float, w_te: float, voxel_mm: float) -> float:
    """Sphere radius whose dipole halves the signal at ``visible_mm / 2`` from its centre
    (mean angular gradient ~ 4 chi/3 a^3 / d^4; a box voxel's sinc is 1/2 near 3.8 rad across it)."""
    r_vis = visible_mm / 2.0
    k = w_te * abs(chi_ppm) / 3.0
    a3 = 3.8 * r_vis ** 4 / (4.0 * k * voxel_mm)
    return float(np.clip(a3 ** (1.0 / 3.0), 0.2, 0.85 * r_vis))


def sample_cmb_count(rng: np.random.Generator, *, tiny: bool = False) -> int:
    """0 on ~30 % of subjects, else 1–12 (skewed low), occasionally 13–20."""
    if rng.random() < 0.3:
        return 0
    n = 13 + int(rng.integers(0, 8)) if rng.random() < 0.07 else min(int(rng.geometric(0.28)), 12)
    return min(n, 6) if tiny else n


def _pools(maps2: MniMaps) -> dict[str, np.ndarray]:
    tissue = maps2.gm + maps2.wm
    lobar = ((maps2.regions == LOBAR) & (maps2.gm >= 0.3) & (tissue >= 0.8) & (maps2.d_env <= -2.5)
             & (maps2.d_cortex <= 3.0))
    deep_shape = np.zeros(maps2.shape, bool)
    axes = [maps2.affine[d, 3] + maps2.resolution * np.arange(maps2.shape[d]) for d in range(3)]
    x, y, z = np.meshgrid(*axes, indexing="ij", sparse=True)
    for (cx, cy, cz), (rx, ry, rz) in DEEP_TARGETS_MNI:
        for sx in (-1.0, 1.0):
            deep_shape |= ((x - sx * cx) / rx) ** 2 + ((y - cy) / ry) ** 2 + ((z - cz) / rz) ** 2 <= 1.0
    deep = deep_shape & (maps2.regions == DEEP) & (tissue >= 0.85) & (maps2.d_vent >= 3.0)
    infra = (maps2.regions == INFRATENTORIAL) & (tissue >= 0.85) & (maps2.d_env <= -3.0)
    return {"lobar": np.argwhere(lobar), "deep": np.argwhere(deep), "infratentorial": np.argwhere(infra)}


def _clear_of_veins(tree: cKDTree | None, veins: VeinSamples, w: np.ndarray, radius_mm: float) -> bool:
    if tree is None:
        return True
    near = tree.query_ball_point(w, radius_mm + 6.0)
    if not near:
        return True
    d = np.linalg.norm(veins.points[near] - w, axis=1) - 2.5 * veins.radius_mm[near]
    return bool(np.all(d > radius_mm + 1.5))


def place_cmbs(rng: np.random.Generator, n: int, maps2: MniMaps, pose: HeadPose, veins: VeinSamples,
               inside: Callable[[np.ndarray, float], bool], w_te: float, voxel_mm: float,
               *, tiny: bool = False) -> list[Focus]:
    """Up to ``n`` microbleeds away from veins and each other, inside the field of view."""
    if n == 0:
        return []
    pools = _pools(maps2)
    pattern = str(rng.choice(list(PATTERNS)))
    weights = np.array(PATTERNS[pattern])
    tree = cKDTree(veins.points) if len(veins) else None
    out: list[Focus] = []
    for _ in range(n * 30):
        if len(out) >= n:
            break
        region = str(rng.choice(list(pools), p=weights))
        pool = pools[region]
        if len(pool) == 0:
            continue
        ijk = pool[rng.integers(len(pool))]
        mni = maps2.affine[:3, 3] + maps2.resolution * (ijk + rng.uniform(-0.5, 0.5, 3))
        w = pose.mni_to_world(mni[None])[0]
        if tiny:
            diameter = float(rng.uniform(5.0, 9.0))
        elif rng.random() < 0.8:
            diameter = float(rng.uniform(2.0, 5.0))
        else:
            diameter = float(min(2.0 + rng.exponential(2.5) + 3.0, 10.0))
        r = diameter / 2.0
        if not inside(w, r + 2.0) or not _clear_of_veins(tree, veins, w, r):
            continue
        if any(np.linalg.norm(w - f.centre_world) < r + f.diameter_mm / 2 + 4.0 for f in out):
            continue
        chi = float(rng.uniform(0.6, 2.5))
        faint = rng.random() < 0.25
        strength = float(rng.uniform(0.35, 0.6) if faint else rng.uniform(0.75, 1.0))
        out.append(Focus(centre_world=w, core_mm=deposit_radius(diameter, chi, w_te, voxel_mm), chi_ppm=chi,
                         core_signal=float(rng.uniform(0.02, 0.25)), strength=strength, diameter_mm=diameter,
                         kind="cmb", region=region, detail=f"{pattern} pattern", centre_mni=mni))
    return out


def place_focal_mimics(rng: np.random.Generator, pose: HeadPose, inside: Callable[[np.ndarray, float], bool],
                       w_te: float, voxel_mm: float, avoid: list[Focus]) -> list[Focus]:
    """Small iron deposits in the basal ganglia and physiological calcifications."""
    out: list[Focus] = []

    def add(mni, diameter, chi, core, strength, kind, detail):
        w = pose.mni_to_world(np.asarray(mni, float)[None])[0]
        if not inside(w, diameter / 2 + 1.0):
            return
        if any(np.linalg.norm(w - f.centre_world) < (diameter + f.diameter_mm) / 2 + 3.0 for f in avoid + out):
            return
        out.append(Focus(centre_world=w, core_mm=deposit_radius(diameter, chi, w_te, voxel_mm), chi_ppm=chi,
                         core_signal=core, strength=strength, diameter_mm=diameter, kind=kind, region="",
                         detail=detail, centre_mni=np.asarray(mni, float)))

    for _ in range(int(rng.integers(0, 5))):
        name = str(rng.choice(["globus_pallidus", "putamen"]))
        centre, radii = IRON_NUCLEI_MNI[name][int(rng.integers(2))]
        mni = np.asarray(centre) + rng.uniform(-0.6, 0.6, 3) * np.asarray(radii)
        add(mni, float(rng.uniform(1.5, 3.5)), float(rng.uniform(0.3, 0.8)), float(rng.uniform(0.3, 0.6)),
            float(rng.uniform(0.4, 0.8)), "iron", f"iron focus in {name}")
    for name, sites in CALCIFICATION_SITES_MNI.items():
        if rng.random() < (0.5 if name == "pineal" else 0.35):
            for site in sites:
                mni = np.asarray(site) + rng.normal(0.0, 1.0, 3)
                add(mni, float(rng.uniform(3.0, 6.5)), -float(rng.uniform(0.8, 2.5)), float(rng.uniform(0.05, 0.3)),
                    float(rng.uniform(0.6, 1.0)), "calcification", name)
    if rng.random() < 0.08:  # symmetric basal ganglia calcification
        c, _r = IRON_NUCLEI_MNI["globus_pallidus"][0]
        for sx in (-1.0, 1.0):
            add((sx * abs(c[0]), c[1], c[2]), float(rng.uniform(2.0, 4.0)), -float(rng.uniform(0.8, 2.0)), 0.2,
                0.8, "calcification", "basal ganglia calcification")
    return out


def landmark_mimics(pose: HeadPose, inside: Callable[[np.ndarray, float], bool]) -> list[dict]:
    """Iron-rich nuclei and air–bone dropout zones (scanner RAS points)."""
    rows = []
    for name in ("globus_pallidus", "substantia_nigra", "red_nucleus", "dentate"):
        for centre, _radii in IRON_NUCLEI_MNI[name]:
            rows.append((np.asarray(centre, float), "iron", name))
    for name, sites in AIR_BONE_ZONES_MNI.items():
        for site in sites:
            rows.append((np.asarray(site, float), "air_bone", name))
    out = []
    for mni, kind, detail in rows:
        w = pose.mni_to_world(mni[None])[0]
        if inside(w, 0.0):
            out.append({"x_mm": float(w[0]), "y_mm": float(w[1]), "z_mm": float(w[2]), "kind": kind,
                        "detail": detail})
    return out
