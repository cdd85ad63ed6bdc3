"""Microbleeds and non-CMB focal mimics of the gamma family.

A microbleed is a hemosiderin deposit of radius ``a``; its visible (bloomed)
radius grows as ``a * (1 + k B0 TE)^(1/3)`` (dephasing volume ~ chi B0 TE),
larger on SWI. Profiles: sharp-edged or blooming (Gaussian), optional faint
halo, ovoid with random axes, sometimes lobulated.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from cmbdet.anatomy import REGION_NAMES, region_at_mni
from cmbdet.phantom.gamma.acquisition import SliceGrid
from cmbdet.phantom.gamma.head import AIR_CAVITIES, HeadMaps, SubjectWarp, nucleus_list
from cmbdet.phantom.gamma.objects import Blob

_CODES = {v: k for k, v in REGION_NAMES.items()}


def sample_cmb_count(rng: np.random.Generator, tiny: bool) -> int:
    """About a third of subjects have none; otherwise 1–15 (mean ~6); tiny: 2–3."""
    if rng.random() < 1 / 3:
        return 0
    if tiny:
        return int(rng.integers(2, 4))
    return int(np.clip(1 + rng.poisson(rng.gamma(2.0, 2.5)), 1, 15))


def _random_axes(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    return q * np.sign(np.diag(r))


def _candidates(maps: HeadMaps, rng: np.random.Generator, n: int = 9000) -> dict[str, np.ndarray]:
    lo, hi = np.array([-70.0, -105.0, -62.0]), np.array([70.0, 72.0, 78.0])
    pts = rng.uniform(lo, hi, (n, 3))
    tissue = maps.sample(maps.gm, pts) + maps.sample(maps.wm, pts)
    depth = maps.sample(maps.d_in, pts)
    gm = maps.sample(maps.gm, pts)
    reg = region_at_mni(pts)
    ok = tissue > 0.85
    pools = {
        "lobar": ok & (reg == _CODES["lobar"]) & (depth > 1.5) & (depth < 14.0) & (gm > 0.15),
        "deep": ok & (reg == _CODES["deep"]) & (tissue > 0.9),
        "infratentorial": ok & (reg == _CODES["infratentorial"]),
    }
    return {k: pts[v] for k, v in pools.items()}


def place_cmbs(
    rng: np.random.Generator,
    n: int,
    maps2: HeadMaps,
    warp: SubjectWarp,
    grid: SliceGrid,
    vein_tree: cKDTree | None,
    vein_reach: np.ndarray,
    blocked: list[tuple[np.ndarray, float]],
    pp: dict,
    tiny: bool,
) -> tuple[list[Blob], list[dict]]:
    """Draw ``n`` microbleeds inside the FOV, clear of veins, each other and ``blocked``."""
    if n == 0:
        return [], []
    pools = _candidates(maps2, rng)
    pattern = rng.choice(3, p=[0.45, 0.35, 0.2])
    weights = np.array([[0.8, 0.15, 0.05], [0.25, 0.55, 0.2], [0.5, 0.32, 0.18]][pattern])
    names = ["lobar", "deep", "infratentorial"]
    world_pools = {k: warp.to_world(v) if len(v) else np.zeros((0, 3)) for k, v in pools.items()}
    in_fov = {k: grid.in_fov(v, margin_vox=2.0) if len(v) else np.zeros(0, bool) for k, v in world_pools.items()}
    b0, te, swi = pp["field_t"], pp["te_ms"], pp["contrast"] == "swi"
    blobs: list[Blob] = []
    truth: list[dict] = []
    taken = list(blocked)
    tries = 0
    while len(blobs) < n and tries < 400:
        tries += 1
        avail = np.array([in_fov[k].sum() > 0 for k in names], float) * weights
        if avail.sum() == 0:
            break
        region = names[int(rng.choice(3, p=avail / avail.sum()))]
        idx = np.flatnonzero(in_fov[region])
        i = int(idx[rng.integers(len(idx))])
        cw = world_pools[region][i]
        profile = "bloom" if rng.random() < 0.6 else "sharp"
        k = rng.uniform(3.0, 10.0) if profile == "bloom" else rng.uniform(0.3, 2.0)
        gain = (1.0 + k * (b0 / 3.0) * (te / 20.0)) ** (1 / 3) * (rng.uniform(1.1, 1.25) if swi else 1.0)
        if tiny:
            r_vis = rng.uniform(2.6, 4.0)
        else:
            for _ in range(100):
                r_vis = float(np.exp(rng.normal(np.log(0.55), 0.45))) * gain
                if 1.0 <= r_vis <= 5.0:
                    break
            r_vis = float(np.clip(r_vis, 1.0, 5.0))
        if vein_tree is not None:
            dv, iv = vein_tree.query(cw)
            if dv < r_vis + vein_reach[iv] + 1.0:
                continue
        if any(np.linalg.norm(cw - c) < r_vis + r + 1.5 for c, r in taken):
            continue
        ratio = np.exp(rng.uniform(-0.25, 0.25, 3))
        ratio /= np.prod(ratio) ** (1 / 3)
        lobes = []
        if rng.random() < 0.25 and not tiny:
            for _ in range(int(rng.integers(1, 4))):
                v = rng.standard_normal(3)
                lobes.append((v / np.linalg.norm(v) * r_vis * rng.uniform(0.4, 0.7), float(rng.uniform(0.4, 0.65))))
        dark = float(rng.uniform(0.7, 0.95)) if tiny else float(0.25 + 0.72 * rng.beta(2.2, 1.2))
        blob = Blob(
            "cmb",
            cw,
            r_vis * ratio,
            _random_axes(rng),
            dark,
            profile,
            halo=float(rng.uniform(0.15, 0.35)) if rng.random() < 0.3 else 0.0,
            phase_rad=float(np.clip(rng.uniform(1.0, 3.0) * (b0 / 3.0) * (te / 20.0), 0.3, np.pi)),
            lobes=lobes,
        )
        blobs.append(blob)
        taken.append((cw, r_vis))
        mni = pools[region][i]
        truth.append(
            {
                "x_mm": float(cw[0]),
                "y_mm": float(cw[1]),
                "z_mm": float(cw[2]),
                "diameter_mm": float(2 * r_vis),
                "region": region,
                "mni_x": float(mni[0]),
                "mni_y": float(mni[1]),
                "mni_z": float(mni[2]),
                "profile": profile,
                "darkness": round(dark, 3),
            }
        )
    return blobs, truth


def place_mimics(
    rng: np.random.Generator, maps2: HeadMaps, warp: SubjectWarp, grid: SliceGrid, tiny: bool
) -> tuple[list[Blob], list[dict], list[tuple[np.ndarray, float]]]:
    """Calcifications, an optional cavernoma, plus iron and air–bone truth points."""
    blobs: list[Blob] = []
    rows: list[dict] = []
    blocked: list[tuple[np.ndarray, float]] = []

    def row(w: np.ndarray, kind: str, detail: str) -> None:
        if grid.in_fov(w[None])[0]:
            rows.append({"x_mm": float(w[0]), "y_mm": float(w[1]), "z_mm": float(w[2]), "kind": kind, "detail": detail})

    calcs = [("pineal", np.array([0.0, -31.0, 1.0]), 0.65)]
    calcs += [
        (f"choroid_plexus_{s}", np.array([sx * 26.0, -41.0, 15.0]), 0.35) for s, sx in (("left", -1), ("right", 1))
    ]
    for name, c, p in calcs:
        if rng.random() < p:
            w = warp.to_world(c + rng.normal(0, 1.5, 3))[0]
            r = rng.uniform(1.0, 3.0) if not tiny else rng.uniform(2.5, 3.5)
            blobs.append(
                Blob(
                    "calcification",
                    w,
                    r * np.exp(rng.uniform(-0.2, 0.2, 3)),
                    _random_axes(rng),
                    float(rng.uniform(0.4, 0.85)),
                    "sharp",
                )
            )
            blocked.append((w, r))
            row(w, "calcification", f"{name} calcification d={2 * r:.1f}mm (diamagnetic)")
    if rng.random() < 0.12 and not tiny:
        pool = _candidates(maps2, rng, 3000)
        cand = np.vstack([pool["lobar"], pool["deep"]])
        if len(cand):
            w = warp.to_world(cand[rng.integers(len(cand))])[0]
            r = rng.uniform(3.0, 7.0)
            blobs.append(
                Blob(
                    "cavernoma",
                    w,
                    r * np.exp(rng.uniform(-0.2, 0.2, 3)),
                    _random_axes(rng),
                    float(rng.uniform(0.6, 0.9)),
                    phase_rad=1.5,
                )
            )
            blocked.append((w, r + 6.0))
            row(w, "cavernoma", f"cavernoma-like popcorn focus d={2 * r:.1f}mm")
    for name, c, _axes, _r2 in nucleus_list():
        if name.split("_")[0] in ("globus", "substantia", "red", "dentate"):
            row(warp.to_world(c)[0], "iron", f"{name} iron")
    centre = np.array([0.0, -15.0, 5.0])
    for name, (c, a) in AIR_CAVITIES.items():
        c = np.array(c)
        ray = (centre - c) / np.linalg.norm(centre - c)
        for t in np.arange(a, 80.0, 1.0):
            p = c + ray * t
            if maps2.sample(maps2.d_in, p[None])[0] >= 4.0:
                row(warp.to_world(p)[0], "air_bone", f"{name} susceptibility dropout")
                break
    return blobs, rows, blocked
