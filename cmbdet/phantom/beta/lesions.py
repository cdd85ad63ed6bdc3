"""Microbleeds and non-vessel mimics of the "beta" family (placement and appearance)."""

from __future__ import annotations

import functools
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
    REGION_NAMES,
    mni_maps,
)

from .protocol import BetaProtocol


@dataclass
class Blob:
    """A dark focus in world mm: centre (3,), axes (3, 3) visible semi-axis vectors, appearance."""

    centre_world: np.ndarray
    centre_mni: np.ndarray
    axes: np.ndarray
    depth: float
    sharp: bool
    halo: float
    chi_ppm: float
    core_mm: float
    diameter_mm: float
    region: str = ""
    kind: str = "cmb"
    detail: str = ""


@functools.lru_cache(maxsize=1)
def _pools() -> dict[int, np.ndarray]:
    """Candidate MNI voxel centres (mm) per MARS region, from the 2 mm maps."""
    m = mni_maps(2)
    tissue = m.gm + m.wm
    masks = {
        LOBAR: (m.regions == LOBAR) & (tissue >= 0.8) & (m.d_cortex <= 5.0) & (m.d_env <= -2.5),
        DEEP: (m.regions == DEEP) & (tissue >= 0.8) & (m.d_vent >= 3.0),
        INFRATENTORIAL: (m.regions == INFRATENTORIAL) & (tissue >= 0.8) & (m.d_env <= -3.0),
    }
    return {k: m.affine[:3, 3] + 2.0 * np.argwhere(v) for k, v in masks.items()}


def sample_cmb_count(rng: np.random.Generator, *, tiny: bool = False) -> int:
    """About 1/3 of subjects have none; otherwise 1–15 (mean ~6), or 2–3 when ``tiny``."""
    if rng.random() < 1.0 / 3.0:
        return 0
    if tiny:
        return int(rng.integers(2, 4))
    return int(np.clip(1 + rng.negative_binomial(2, 2.0 / 7.0), 1, 15))


def _random_axes(rng: np.random.Generator, semi: float, elong: float) -> np.ndarray:
    q, _ = np.linalg.qr(rng.normal(0.0, 1.0, (3, 3)))
    lens = semi * np.array([elong, 1.0, 1.0]) / elong ** (1.0 / 3.0)
    return q.T * lens[:, None]


def sample_cmbs(
    rng: np.random.Generator,
    n: int,
    proto: BetaProtocol,
    to_world,
    inside_fov,
    vein_tree: cKDTree | None,
    vein_radius: np.ndarray,
) -> list[Blob]:
    """Place ``n`` microbleeds (fewer if no room) in lobar/deep/infratentorial tissue.

    ``to_world``: (N, 3) MNI -> world mm; ``inside_fov``: (3,) world mm, margin mm -> bool.
    Microbleeds keep clear of each other and of vein centrelines (KD-tree of world points).
    """
    maps1 = mni_maps(1)
    pools = _pools()
    mix = rng.dirichlet(np.array([5.5, 3.0, 1.5]) * rng.uniform(1.0, 4.0))
    regions = [LOBAR, DEEP, INFRATENTORIAL]
    bloom = (proto.te_ms / 20.0) ** 0.3 * (proto.field_t / 3.0) ** 0.25 * (1.0 + 0.03 * (proto.slice_mm - 2.0))
    bloom *= 1.1 if proto.sequence == "swi" else 1.0
    out: list[Blob] = []
    tries = 0
    while len(out) < n and tries < 60 * max(n, 1):
        tries += 1
        reg = regions[int(rng.choice(3, p=mix))]
        pool = pools[reg]
        mni = pool[int(rng.integers(len(pool)))] + rng.uniform(-1.0, 1.0, 3)
        ijk = np.round(maps1.mm_to_vox(mni[None])[0]).astype(int)
        if np.any(ijk < 0) or np.any(ijk >= maps1.shape):
            continue
        label = int(maps1.regions[tuple(ijk)])
        if label not in REGION_NAMES or maps1.gm[tuple(ijk)] + maps1.wm[tuple(ijk)] < 0.6:
            continue
        if proto.tiny:
            diam = float(rng.uniform(5.0, 8.0))
        else:
            diam = float(np.clip(np.exp(rng.normal(np.log(3.0), 0.35)), 1.6, 9.0) * bloom)
            diam = float(np.clip(diam, 2.0, 10.0))
        world = to_world(mni[None])[0]
        if not inside_fov(world, 0.5 * diam):
            continue
        if any(np.linalg.norm(world - b.centre_world) < 0.5 * (diam + b.diameter_mm) + 1.0 for b in out):
            continue
        if vein_tree is not None:
            near = vein_tree.query_ball_point(world, 0.5 * diam + 2.0)
            if any(np.linalg.norm(vein_tree.data[i] - world) < 0.5 * diam + vein_radius[i] + 0.3 for i in near):
                continue
        elong = 1.0 + (abs(rng.normal(0.0, 0.12)) if rng.random() < 0.7 else rng.uniform(0.15, 0.6))
        depth = 0.3 + 0.67 * rng.beta(2.2, 1.2)
        if proto.tiny:
            depth = max(depth, 0.7)
        out.append(
            Blob(
                centre_world=world,
                centre_mni=mni,
                axes=_random_axes(rng, 0.5 * diam, elong),
                depth=float(depth),
                sharp=bool(rng.random() < 0.5),
                halo=float(rng.uniform(0.06, 0.2)) if proto.sequence == "swi" and rng.random() < 0.3 else 0.0,
                chi_ppm=float(rng.uniform(0.4, 1.5)),
                core_mm=0.5 * diam / float(rng.uniform(1.6, 2.6)),
                diameter_mm=diam,
                region=REGION_NAMES[label],
            )
        )
    return out


def sample_calcifications(rng: np.random.Generator, to_world) -> list[Blob]:
    """Physiological calcifications (pineal, choroid plexus, sometimes pallidum): dark, diamagnetic."""
    sites: list[tuple[str, tuple[float, float, float]]] = []
    for name, pts in CALCIFICATION_SITES_MNI.items():
        for p in pts:
            if rng.random() < (0.6 if name == "pineal" else 0.45):
                sites.append((name, p))
    if rng.random() < 0.15:
        for centre, _ in IRON_NUCLEI_MNI["globus_pallidus"]:
            sites.append(("basal_ganglia", centre))
    out = []
    for name, p in sites:
        mni = np.array(p, float) + rng.normal(0.0, 1.0, 3)
        semi = float(rng.uniform(1.0, 3.0))
        out.append(
            Blob(
                centre_world=to_world(mni[None])[0],
                centre_mni=mni,
                axes=_random_axes(rng, semi, float(rng.uniform(1.0, 1.5))),
                depth=float(rng.uniform(0.4, 0.85)),
                sharp=True,
                halo=0.0,
                chi_ppm=-float(rng.uniform(0.3, 0.8)),
                core_mm=0.7 * semi,
                diameter_mm=2 * semi,
                kind="calcification",
                detail=name,
            )
        )
    return out


def anatomical_mimics(to_world) -> list[dict]:
    """Iron-nucleus centres and air–bone dropout zones as world-mm mimic points (unfiltered)."""
    out = []
    for name in ("globus_pallidus", "substantia_nigra", "red_nucleus", "dentate", "putamen"):
        for centre, _ in IRON_NUCLEI_MNI[name]:
            w = to_world(np.array([centre], float))[0]
            out.append({"x_mm": float(w[0]), "y_mm": float(w[1]), "z_mm": float(w[2]), "kind": "iron",
                        "detail": name})
    for name, pts in AIR_BONE_ZONES_MNI.items():
        for p in pts:
            w = to_world(np.array([p], float))[0]
            out.append({"x_mm": float(w[0]), "y_mm": float(w[1]), "z_mm": float(w[2]), "kind": "air_bone",
                        "detail": name})
    return out
