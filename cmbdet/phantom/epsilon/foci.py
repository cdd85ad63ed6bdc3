"""Microbleeds and focal mimics of the "epsilon" family.

A microbleed is a small haemosiderin deposit: a sphere (slightly ovoid) of radius ``core_mm`` with
a strong paramagnetic susceptibility and almost no signal. What a reader sees is larger: the dipole
field dephases the tissue around it ("blooming"), more at 3 T and longer TE. Here the *visible*
diameter is drawn first (mostly 2–4 mm, many near the detection limit; a few 5–10 mm) and the
deposit is sized so that the field dephases by about one radian at the visible radius:
``r_vis = core * (gamma B0 TE chi / 3)^(1/3)`` on the dipole's equator.

Counts: about a quarter of subjects have none; otherwise few, several, or many (CAA-like lobar or
hypertensive-like deep/infratentorial patterns). Locations come from the MARS region map (lobar at
the cortico-subcortical junction and in subcortical white matter; deep in the basal ganglia,
thalamus and deep white matter; infratentorial in brainstem and cerebellum); some microbleeds are
put right beside a small vein.

Calcifications (pineal, choroid plexus glomus, basal ganglia, dentate) are diamagnetic deposits,
equally dark on magnitude, with the opposite phase.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from cmbdet.anatomy import CALCIFICATION_SITES_MNI, DEEP, INFRATENTORIAL, LOBAR, REGION_NAMES, MniMaps, mni_maps

from .protocol import GAMMA
from .veins import KINDS, THIN, Vessels


@dataclass(frozen=True)
class Focus:
    """A spherical deposit. ``centre_mni`` (mm), ``core_mm`` radius, ``axes`` (3,) relative semi-axes,
    ``chi`` (ppm vs tissue), ``void`` (fraction of signal lost inside), ``diameter_mm`` (visible)."""

    kind: str  # "cmb" | "calcification"
    centre_mni: np.ndarray
    core_mm: float
    axes: np.ndarray
    chi: float
    void: float
    diameter_mm: float
    region: str = ""
    detail: str = ""


def bloom(field_t: float, te_ms: float, chi_ppm: float) -> float:
    """Visible radius / deposit radius: where the equatorial dipole phase falls to ~1 rad."""
    phase = GAMMA * field_t * te_ms * 1e-3 * abs(chi_ppm) * 1e-6 / 3.0
    return float(max(1.0, phase ** (1.0 / 3.0)))


def sample_cmb_count(rng: np.random.Generator) -> int:
    """~25 % none; else few (1–3), several (4–10) or many (11–35)."""
    if rng.random() < 0.25:
        return 0
    u = rng.random()
    if u < 0.55:
        return int(rng.integers(1, 4))
    if u < 0.85:
        return int(rng.integers(4, 11))
    return int(rng.integers(11, 36))


def sample_visible_diameter(rng: np.random.Generator) -> float:
    u = rng.random()
    if u < 0.7:
        return float(2.0 + 2.0 * rng.beta(1.2, 1.8))
    if u < 0.92:
        return float(rng.uniform(4.0, 5.5))
    return float(rng.uniform(5.5, 10.0))


@functools.lru_cache(maxsize=1)
def _pools() -> dict[str, np.ndarray]:
    """Candidate MNI points (2 mm voxel centres) for each location kind."""
    m = mni_maps(2)
    tissue = m.gm + m.wm
    x = m.affine[0, 3] + 2.0 * np.arange(m.shape[0])[:, None, None]
    y = m.affine[1, 3] + 2.0 * np.arange(m.shape[1])[None, :, None]
    stem = (np.abs(x) <= 10) & (y >= -42)
    good = (tissue >= 0.85) & m.brain
    masks = {
        "lobar_junction": good & (m.regions == LOBAR) & (m.gm >= 0.3) & (m.gm <= 0.75) & (m.d_env <= -2.0),
        "lobar_white": good & (m.regions == LOBAR) & (m.wm >= 0.7) & (m.d_env <= -3.0),
        "deep_grey": good & (m.regions == DEEP) & (m.gm >= 0.5) & (m.d_vent >= 2.0),
        "deep_white": good & (m.regions == DEEP) & (m.wm >= 0.7) & (m.d_vent >= 3.0),
        "brainstem": good & (m.regions == INFRATENTORIAL) & stem & (m.d_env <= -2.0),
        "cerebellum": good & (m.regions == INFRATENTORIAL) & ~stem & (m.d_env <= -2.0),
    }
    return {k: np.argwhere(v) * 2.0 + m.affine[:3, 3] for k, v in masks.items()}


_PATTERNS = {  # region weights (lobar, deep, infratentorial)
    "lobar": (0.85, 0.1, 0.05),
    "deep": (0.3, 0.5, 0.2),
    "mixed": (0.5, 0.3, 0.2),
}


def region_at(maps: MniMaps, p: np.ndarray) -> tuple[int, float]:
    """MARS label and tissue fraction at an MNI point (nearest voxel)."""
    ijk = np.rint(maps.mm_to_vox(p[None])[0]).astype(int)
    if np.any(ijk < 0) or np.any(ijk >= maps.shape):
        return 0, 0.0
    t = tuple(ijk)
    return int(maps.regions[t]), float(maps.gm[t] + maps.wm[t])


def place_cmbs(rng: np.random.Generator, n: int, maps: MniMaps, vessels: Vessels, inside_scan, *, field_t: float,
               te_ms: float, tiny: bool) -> list[Focus]:
    """``n`` microbleeds (fewer if no room) inside brain tissue and inside the scanned slab.
    ``inside_scan(mni_point, margin_mm) -> bool``."""
    if n == 0:
        return []
    pools = _pools()
    pattern = str(rng.choice(list(_PATTERNS), p=[0.4, 0.3, 0.3]))
    weights = np.asarray(_PATTERNS[pattern])
    thin = np.isin(vessels.kind, [KINDS.index(k) for k in THIN])
    thin_idx = np.flatnonzero(thin)
    out: list[Focus] = []
    tries = 0
    while len(out) < n and tries < 60 * n:
        tries += 1
        d_vis = float(rng.uniform(5.0, 8.0)) if tiny else sample_visible_diameter(rng)
        chi = float(rng.uniform(2.0, 4.0) if tiny else rng.uniform(0.8, 3.5))
        b = bloom(field_t, te_ms, chi)
        core = max(d_vis / (2.0 * b), 0.25)
        if tiny:
            core = max(core, 1.2)
        if rng.random() < 0.2 and thin_idx.size:  # beside a small vein, nearly touching it
            i = int(thin_idx[rng.integers(0, thin_idx.size)])
            t = vessels.points[min(i + 1, len(vessels.points) - 1)] - vessels.points[max(i - 1, 0)]
            perp = np.cross(t, rng.normal(size=3))
            perp /= max(np.linalg.norm(perp), 1e-9)
            p = vessels.points[i] + perp * (vessels.radius[i] + 0.55 * d_vis / 2.0 + rng.uniform(0.0, 0.8))
            detail = f"beside {KINDS[vessels.kind[i]]} vein"
        else:
            where = int(rng.choice(3, p=weights))
            key = {0: ("lobar_junction", "lobar_white", 0.7), 1: ("deep_grey", "deep_white", 0.65),
                   2: ("cerebellum", "brainstem", 0.6)}[where]
            pool = pools[key[0] if rng.random() < key[2] else key[1]]
            if len(pool) == 0:
                continue
            p = pool[rng.integers(0, len(pool))] + rng.uniform(-1.0, 1.0, 3)
            detail = ""
        label, tissue = region_at(maps, p)
        if label not in REGION_NAMES or tissue < 0.8 or not inside_scan(p, d_vis / 2.0 + 1.5):
            continue
        if any(np.linalg.norm(p - c.centre_mni) < max(4.0, 0.5 * (d_vis + c.diameter_mm) + 1.5) for c in out):
            continue
        axes = rng.uniform(0.85, 1.15, 3)
        out.append(Focus(kind="cmb", centre_mni=p, core_mm=float(core), axes=axes / np.cbrt(np.prod(axes)), chi=chi,
                         void=float(rng.uniform(0.85, 0.97)), diameter_mm=float(np.clip(d_vis, 2.0, 10.0)),
                         region=REGION_NAMES[label], detail=detail))
    return out


def place_calcifications(rng: np.random.Generator, field_t: float, te_ms: float, inside_scan) -> list[Focus]:
    """Physiological calcifications: pineal (~half of subjects), choroid plexus glomus (often both
    sides, lumpy), basal ganglia (bilateral, few), dentate (rare)."""
    sites: list[tuple[str, np.ndarray, float]] = []
    if rng.random() < 0.5:
        sites.append(("pineal", np.asarray(CALCIFICATION_SITES_MNI["pineal"][0]), rng.uniform(2.0, 6.0)))
    if rng.random() < 0.45:
        for c in CALCIFICATION_SITES_MNI["choroid_plexus"]:
            for _ in range(int(rng.integers(1, 4))):
                sites.append(("choroid plexus", np.asarray(c) + rng.normal(0, 2.0, 3), rng.uniform(2.0, 5.0)))
    if rng.random() < 0.12:
        for s in (-1, 1):
            sites.append(("basal ganglia", np.array([s * 19.0, -3.0, -1.0]) + rng.normal(0, 2.0, 3),
                          rng.uniform(1.5, 3.5)))
    if rng.random() < 0.05:
        for s in (-1, 1):
            sites.append(("dentate", np.array([s * 15.0, -57.0, -34.0]) + rng.normal(0, 2.0, 3), rng.uniform(2.0, 4.0)))
    out = []
    for name, c, d_vis in sites:
        chi = -float(rng.uniform(0.8, 2.5))
        core = max(d_vis / (2.0 * bloom(field_t, te_ms, chi)), 0.4)
        if inside_scan(c, d_vis / 2.0):
            out.append(Focus(kind="calcification", centre_mni=c, core_mm=float(core), axes=rng.uniform(0.8, 1.25, 3),
                             chi=chi, void=float(rng.uniform(0.7, 0.95)), diameter_mm=float(d_vis), detail=name))
    return out
