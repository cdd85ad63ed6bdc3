"""Venous trees of the "beta" family, grown in MNI space by random walkers.

* medullary veins: start at the ventricle wall, walk outwards (up the ventricle-distance
  gradient) with subject-specific persistence/tortuosity until they reach the cortex; some branch.
* cortical perforators: short, thin, from the brain surface inwards (dots in lobar cortex).
* pial veins: walk tangentially on the brain surface, drifting up towards the midline.
* deep veins (internal cerebral, thalamostriate, basal) and the dural sinuses: jittered
  anatomical polylines.

A :class:`Vein` is a polyline of MNI mm points with a radius (mm) per point. A walker that stops
after a step or two (it met the cortex at once) would leave a stub 1–2 mm long — a round dark blob
the size of a microbleed, not a vein — so medullary tracks shorter than ``MIN_MEDULLARY_MM`` and
perforators shorter than ``MIN_PERFORATOR_MM`` are dropped (their random draws are still made, so
the rest of a subject is unchanged).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from cmbdet.anatomy import MniMaps, mni_maps

#: Shortest medullary vein (or branch) and cortical perforator kept, mm of polyline length.
MIN_MEDULLARY_MM = 5.0
MIN_PERFORATOR_MM = 3.0


def _length_mm(track: np.ndarray) -> float:
    return float(np.linalg.norm(np.diff(track, axis=0), axis=1).sum()) if len(track) > 1 else 0.0


@dataclass
class Vein:
    """(N, 3) MNI mm points, (N,) radius mm, kind name."""

    points: np.ndarray
    radius: np.ndarray
    kind: str


def _guides(maps2: MniMaps) -> dict[str, np.ndarray]:
    """Distance fields and their unit gradients on the 2 mm grid (cached per process)."""
    return _guides_at(maps2.resolution)


@functools.lru_cache(maxsize=2)
def _guides_at(resolution: int) -> dict[str, np.ndarray]:
    maps2 = mni_maps(resolution)
    out: dict[str, np.ndarray] = {}
    for name in ("d_vent", "d_env", "d_cortex"):
        d = ndi.gaussian_filter(getattr(maps2, name), 1.0)
        g = np.stack(np.gradient(d))
        g /= np.maximum(np.linalg.norm(g, axis=0), 1e-3)
        out[name] = getattr(maps2, name)
        out["g_" + name] = g.astype(np.float32)
    out["brain"] = maps2.brain.astype(np.float32)
    out["wm"] = maps2.wm
    out["gm"] = maps2.gm
    return out


def _sample(arr: np.ndarray, pts: np.ndarray, maps2: MniMaps) -> np.ndarray:
    idx = ((pts - maps2.affine[:3, 3]) / maps2.resolution).T
    if arr.ndim == 4:
        return np.stack([ndi.map_coordinates(a, idx, order=1, mode="nearest") for a in arr], axis=1)
    return ndi.map_coordinates(arr, idx, order=1, mode="nearest")


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-9)


def _pool_points(mask: np.ndarray, maps2: MniMaps, n: int, rng: np.random.Generator) -> np.ndarray:
    idx = np.argwhere(mask)
    if len(idx) == 0 or n <= 0:
        return np.zeros((0, 3))
    pick = idx[rng.integers(len(idx), size=n)]
    return maps2.affine[:3, 3] + maps2.resolution * (pick + rng.uniform(-0.5, 0.5, (n, 3)))


def _walk(
    rng: np.random.Generator,
    maps2: MniMaps,
    start: np.ndarray,
    direction: np.ndarray,
    length_mm: np.ndarray,
    *,
    step: float,
    persist: float,
    tort: float,
    pull: tuple[str, float] | None,
    stop_cortex: bool,
    surface: bool = False,
    drift: np.ndarray | None = None,
) -> list[np.ndarray]:
    """Vectorized random walkers; returns one (T_i, 3) polyline per walker."""
    g = _guides(maps2)
    n = len(start)
    pos, d = start.copy(), _unit(direction)
    alive = np.ones(n, bool)
    track = [pos.copy()]
    alive_hist = [alive.copy()]
    n_steps = int(np.ceil(length_mm.max() / step)) if n else 0
    for t in range(1, n_steps + 1):
        new = persist * d + tort * rng.normal(0.0, 1.0, (n, 3))
        if pull is not None:
            new += pull[1] * _sample(g["g_" + pull[0]], pos, maps2)
        if drift is not None:
            new += drift
        if surface:
            nrm = _sample(g["g_d_env"], pos, maps2)
            new -= np.sum(new * nrm, axis=1, keepdims=True) * nrm
        d = _unit(new)
        pos = pos + step * d * alive[:, None]
        if surface:
            nrm = _sample(g["g_d_env"], pos, maps2)
            pos -= (_sample(g["d_env"], pos, maps2) + 0.8)[:, None] * nrm * alive[:, None]
        alive &= t * step <= length_mm
        if stop_cortex:
            alive &= _sample(g["d_cortex"], pos, maps2) > 1.0
        alive &= _sample(g["brain"], pos, maps2) > 0.5 if not surface else True
        track.append(pos.copy())
        alive_hist.append(alive.copy())
    if n == 0:
        return []
    tr = np.stack(track)  # (T, n, 3)
    al = np.stack(alive_hist)
    out = []
    for i in range(n):
        last = int(np.argmin(al[:, i])) if not al[:, i].all() else len(al)
        out.append(tr[: max(last, 2), i])
    return out


def _smooth_polyline(knots: np.ndarray, step: float) -> np.ndarray:
    """Resample a polyline of knots to ~step mm spacing with a light smoothing."""
    seg = np.linalg.norm(np.diff(knots, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    t = np.linspace(0.0, s[-1], max(int(s[-1] / step), 2) + 1)
    pts = np.stack([np.interp(t, s, knots[:, k]) for k in range(3)], axis=1)
    if len(pts) > 4:
        pts[1:-1] = 0.25 * pts[:-2] + 0.5 * pts[1:-1] + 0.25 * pts[2:]
    return pts


def _sss_knots(maps2: MniMaps) -> np.ndarray:
    """Superior sagittal sinus: top of the brain envelope along the midline + 3 mm."""
    i0 = int(round((0.0 - maps2.affine[0, 3]) / 2.0))
    col = maps2.d_env[i0]  # (Y, Z)
    knots = []
    for y in np.linspace(58.0, -96.0, 12):
        j = int(round((y - maps2.affine[1, 3]) / 2.0))
        inside = np.nonzero(col[j] < 0)[0]
        if len(inside) == 0:
            continue
        z = maps2.affine[2, 3] + 2.0 * inside.max()
        knots.append((0.0, y, z + 3.0))
    return np.array(knots, float)


def grow_veins(rng: np.random.Generator, maps2: MniMaps, *, density: float = 1.0) -> list[Vein]:
    """All veins of one subject (MNI mm); ``density`` scales the number of small veins."""
    g = _guides(maps2)
    tort = float(rng.uniform(0.15, 0.7))  # subject tortuosity
    persist = float(rng.uniform(1.0, 2.0))
    veins: list[Vein] = []
    z_mm = maps2.affine[2, 3] + 2.0 * np.arange(maps2.shape[2])
    # medullary veins
    n_med = int(rng.integers(100, 300) * density)
    seed_mask = (g["wm"] > 0.45) & (g["d_vent"] >= 1.0) & (g["d_vent"] <= 6.0) & (z_mm[None, None, :] > -6.0)
    starts = _pool_points(seed_mask, maps2, n_med, rng)
    if len(starts):
        d0 = _sample(g["g_d_vent"], starts, maps2) + 0.3 * rng.normal(0, 1, starts.shape)
        lengths = rng.uniform(12.0, 45.0, len(starts))
        tracks = _walk(rng, maps2, starts, d0, lengths, step=1.2, persist=persist, tort=tort,
                       pull=("d_vent", 0.8), stop_cortex=True)
        for tr in tracks:
            r0 = rng.uniform(0.3, 0.8)
            if _length_mm(tr) >= MIN_MEDULLARY_MM:
                veins.append(Vein(tr, r0 * np.linspace(1.0, 0.45, len(tr)), "medullary"))
        # branches
        parents = [v for v in veins if len(v.points) > 6 and rng.random() < 0.5]
        if parents:
            bstart, bdir, blen, brad = [], [], [], []
            for v in parents:
                k = int(rng.integers(2, len(v.points) - 2))
                tangent = v.points[k + 1] - v.points[k]
                bstart.append(v.points[k])
                bdir.append(_unit(tangent) + rng.normal(0, 0.9, 3))
                blen.append(rng.uniform(5.0, 16.0))
                brad.append(v.radius[k] * rng.uniform(0.5, 0.8))
            tracks = _walk(rng, maps2, np.array(bstart), np.array(bdir), np.array(blen), step=1.2,
                           persist=persist, tort=tort * 1.3, pull=("d_vent", 0.4), stop_cortex=True)
            for tr, r in zip(tracks, brad):
                if _length_mm(tr) >= MIN_MEDULLARY_MM:
                    veins.append(Vein(tr, np.full(len(tr), r), "medullary"))
    # cortical perforators: short and thin, inwards from the surface
    n_perf = int(rng.integers(60, 250) * density)
    surf = (g["brain"] > 0.5) & (g["d_env"] > -4.5) & (g["d_env"] < -0.5) & (g["gm"] > 0.3)
    starts = _pool_points(surf, maps2, n_perf, rng)
    if len(starts):
        d0 = -_sample(g["g_d_env"], starts, maps2) + 0.25 * rng.normal(0, 1, starts.shape)
        tracks = _walk(rng, maps2, starts, d0, rng.uniform(3.0, 12.0, len(starts)), step=1.0,
                       persist=2.0, tort=tort * 0.5, pull=None, stop_cortex=False)
        for tr in tracks:
            r = rng.uniform(0.12, 0.35)
            if _length_mm(tr) >= MIN_PERFORATOR_MM:
                veins.append(Vein(tr, np.full(len(tr), r), "perforator"))
    # pial veins on the surface, drifting up and to the midline
    n_pial = int(rng.integers(15, 45) * max(density, 0.3))
    pial_seed = (g["d_env"] > -3.0) & (g["d_env"] < 0.0) & (z_mm[None, None, :] > -30.0)
    starts = _pool_points(pial_seed, maps2, n_pial, rng)
    if len(starts):
        drift = np.array([0.0, 0.0, 0.5])
        d0 = rng.normal(0, 1, starts.shape)
        tracks = _walk(rng, maps2, starts, d0, rng.uniform(20.0, 70.0, len(starts)), step=1.5,
                       persist=persist + 0.5, tort=tort * 0.8, pull=None, stop_cortex=False, surface=True,
                       drift=drift)
        for tr in tracks:
            r = rng.uniform(0.35, 1.3)
            veins.append(Vein(tr, r * np.linspace(0.7, 1.0, len(tr)), "pial"))
    # deep veins and sinuses
    def jit(k: list, s: float) -> np.ndarray:
        a = np.array(k, float)
        return a + rng.normal(0, s, a.shape)

    for sx in (-1.0, 1.0):
        veins.append(Vein(_smooth_polyline(jit([(sx * 2.5, 8, 14), (sx * 2.5, -10, 16), (sx * 2, -28, 12),
                                                 (0.5 * sx, -38, 6)], 0.8), 1.2), None, "deep"))
        veins[-1].radius = np.full(len(veins[-1].points), rng.uniform(0.9, 1.4))
        veins.append(Vein(_smooth_polyline(jit([(sx * 17, -12, 20), (sx * 12, 0, 18), (sx * 4, 6, 14)], 1.0),
                                           1.2), None, "deep"))
        veins[-1].radius = np.full(len(veins[-1].points), rng.uniform(0.5, 0.9))
        veins.append(Vein(_smooth_polyline(jit([(sx * 20, 0, -12), (sx * 24, -18, -6), (sx * 14, -34, 0),
                                                 (sx * 2, -40, 5)], 1.0), 1.2), None, "deep"))
        veins[-1].radius = np.full(len(veins[-1].points), rng.uniform(0.8, 1.2))
        veins.append(Vein(_smooth_polyline(jit([(0, -94, -6), (sx * 30, -99, -12), (sx * 52, -80, -22),
                                                 (sx * 60, -62, -30), (sx * 55, -48, -42),
                                                 (sx * 45, -36, -58)], 1.5), 3.0), None, "sinus"))
        veins[-1].radius = np.full(len(veins[-1].points), rng.uniform(2.8, 4.0))
    straight = _smooth_polyline(jit([(0, -38, 6), (0, -46, 6), (0, -70, 0), (0, -94, -6)], 0.8), 2.0)
    veins.append(Vein(straight, np.linspace(2.0, 2.8, len(straight)), "sinus"))
    sss = _sss_knots(maps2)
    if len(sss) > 2:
        pts = _smooth_polyline(jit(list(map(tuple, sss)), 0.6), 3.0)
        veins.append(Vein(pts, np.linspace(2.0, 4.0, len(pts)), "sinus"))
    return veins
