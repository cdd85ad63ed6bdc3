"""Venous tree of the gamma family, grown in MNI space by vectorized walkers.

Vessel classes (own design): medullary veins walking from the ventricle wall
to the cortex along the depth gradient (with side branches), pial veins
crawling along the brain surface towards the vertex, short transcortical
veins diving into the cortex, and hand-placed deep veins and dural sinuses.
The result is a set of polylines (MNI mm) with a radius per point.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from cmbdet.phantom.gamma.head import HeadMaps

#: vein class codes
MEDULLARY, BRANCH, PIAL, TRANSCORTICAL, DEEP_VEIN, SINUS = range(6)
KIND_NAMES = {
    MEDULLARY: "medullary",
    BRANCH: "medullary_branch",
    PIAL: "pial",
    TRANSCORTICAL: "transcortical",
    DEEP_VEIN: "deep",
    SINUS: "sinus",
}


@dataclass
class VeinSet:
    """Polylines: ``points`` (N, 3) mm, ``radius_mm`` (N,), ``vein_id`` (N,),
    ``kind`` (N,) class code; consecutive points of one ``vein_id`` are joined."""

    points: np.ndarray
    radius_mm: np.ndarray
    vein_id: np.ndarray
    kind: np.ndarray

    def segments(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Segment starts, ends (M, 3), radius (M,), kind (M,)."""
        same = self.vein_id[1:] == self.vein_id[:-1]
        p0 = self.points[:-1][same]
        p1 = self.points[1:][same]
        r = 0.5 * (self.radius_mm[:-1][same] + self.radius_mm[1:][same])
        return p0, p1, r, self.kind[:-1][same]


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-9)


def _grad(maps: HeadMaps, pts: np.ndarray) -> np.ndarray:
    """Unit depth gradient (pointing into the brain) at MNI points ``(N, 3)``."""
    assert maps.grad_in is not None, "vein growth needs the step-2 head maps"
    return np.stack([maps.sample(maps.grad_in[a], pts) for a in range(3)], 1)


def _walk(
    maps: HeadMaps,
    rng: np.random.Generator,
    start: np.ndarray,
    d0: np.ndarray,
    n_steps: np.ndarray,
    *,
    mode: str,
    tortuosity: float,
    step_mm: float = 0.8,
    target_depth: np.ndarray | None = None,
) -> list[np.ndarray]:
    """Grow all walkers together; returns one (k, 3) polyline per walker.

    ``mode``: ``"out"`` (towards the cortex; stops in grey matter),
    ``"in"`` (into the brain), ``"surface"`` (tangential at ``target_depth``).
    """
    n = len(start)
    pos = start.astype(float).copy()
    d = _unit(d0.astype(float))
    trail = [pos.copy()]
    alive = np.ones(n, bool)
    alive_hist = [alive.copy()]
    for s in range(int(n_steps.max())):
        g = _grad(maps, pos)
        noise = rng.standard_normal((n, 3)) * tortuosity
        if mode == "out":
            new = 0.55 * d - 0.45 * g + noise
        elif mode == "in":
            new = 0.6 * d + 0.4 * g + noise
        else:
            v = 0.8 * d + noise + np.array([0.0, 0.0, 0.25]) - np.array([0.12, 0.0, 0.0]) * np.sign(pos[:, :1])
            v -= np.sum(v * g, 1, keepdims=True) * g
            depth = maps.sample(maps.d_in, pos)
            v += 0.35 * (target_depth - depth)[:, None] * g  # type: ignore[operator]
            new = v
        d = _unit(new)
        pos = pos + step_mm * d * alive[:, None]
        depth = maps.sample(maps.d_in, pos)
        stop = (s + 1 >= n_steps) | (depth <= 0.3)
        if mode == "out":
            stop |= (maps.sample(maps.gm, pos) > 0.5) | (depth < 3.0)
        if mode == "in":
            stop |= depth > 25.0
        alive = alive & ~stop
        trail.append(pos.copy())
        alive_hist.append(alive.copy())
        if not alive.any():
            break
    tr = np.stack(trail, 1)  # (n, steps, 3)
    ah = np.stack(alive_hist, 1)
    lengths = ah.sum(1) + 1
    return [tr[i, : min(lengths[i], tr.shape[1])] for i in range(n)]


def _smooth_path(ctrl: np.ndarray, rng: np.random.Generator, step: float, wiggle: float) -> np.ndarray:
    """Resample control points to ``step`` mm with a smooth random wiggle."""
    seg = np.linalg.norm(np.diff(ctrl, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    t = np.arange(0.0, s[-1], step)
    pts = np.stack([np.interp(t, s, ctrl[:, a]) for a in range(3)], 1)
    if wiggle > 0 and len(pts) > 4:
        w = ndi.gaussian_filter1d(rng.standard_normal((len(pts), 3)), 6.0 / step, axis=0)
        w *= wiggle / max(float(w.std()), 1e-6)
        pts = pts + w
    return pts


def _push_out(maps: HeadMaps, pts: np.ndarray, centre: np.ndarray, offset: float) -> np.ndarray:
    """Move points along rays from ``centre`` to ``offset`` mm outside the brain mask."""
    ray = _unit(pts - centre)
    radii = np.arange(10.0, 140.0, 0.7)
    cand = centre[None, None, :] + ray[:, None, :] * radii[None, :, None]
    inside = maps.sample(maps.brain.astype(np.float32), cand.reshape(-1, 3)).reshape(len(pts), -1) > 0.5
    last = np.where(inside.any(1), len(radii) - 1 - np.argmax(inside[:, ::-1], axis=1), 0)
    return centre + ray * (radii[last] + offset)[:, None]


def grow_veins(maps: HeadMaps, rng: np.random.Generator, *, density: float = 1.0) -> VeinSet:
    """Grow one subject's venous tree in MNI space (``maps`` must be step-2 maps)."""
    tort = rng.uniform(0.12, 0.65)
    polys: list[tuple[np.ndarray, np.ndarray, int]] = []  # points, radius, kind

    # medullary veins: ventricle wall -> cortex
    n_med = max(4, int(rng.uniform(60, 200) * density))
    seeds = maps.vent_seeds[rng.integers(0, len(maps.vent_seeds), n_med)] + rng.normal(0, 1.0, (n_med, 3))
    d0 = -_grad(maps, seeds) + rng.normal(0, 0.3, (n_med, 3))
    med = _walk(maps, rng, seeds, d0, np.full(n_med, 110), mode="out", tortuosity=tort)
    r_med = np.exp(rng.normal(np.log(0.24), 0.3, n_med)).clip(0.15, 0.45)
    for p, r in zip(med, r_med, strict=True):
        if len(p) >= 6:
            taper = r * (1.0 - 0.45 * np.linspace(0, 1, len(p)))
            polys.append((p, taper, MEDULLARY))
    # superficial medullary veins: from the white matter out to the cortex
    n_sup = max(4, int(rng.uniform(100, 320) * density))
    lo, hi = np.array([-65.0, -100.0, -40.0]), np.array([65.0, 70.0, 75.0])
    cand = rng.uniform(lo, hi, (n_sup * 6, 3))
    depth = maps.sample(maps.d_in, cand)
    ok = (maps.sample(maps.wm, cand) > 0.7) & (depth > 6.0) & (depth < 28.0)
    seeds = cand[ok][:n_sup]
    if len(seeds):
        d0 = -_grad(maps, seeds) + rng.normal(0, 0.3, (len(seeds), 3))
        sup = _walk(maps, rng, seeds, d0, np.full(len(seeds), 60), mode="out", tortuosity=tort)
        r_sup = np.exp(rng.normal(np.log(0.2), 0.3, len(seeds))).clip(0.13, 0.4)
        for p, r in zip(sup, r_sup, strict=True):
            if len(p) >= 5:
                polys.append((p, np.linspace(r, 1.2 * r, len(p)), MEDULLARY))
    # side branches from medullary trunks
    trunks = [q for q in polys if len(q[0]) >= 15]
    if trunks:
        n_br = int(len(trunks) * rng.uniform(0.3, 0.9))
        starts, dirs, rads = [], [], []
        for _ in range(n_br):
            p, r, _k = trunks[rng.integers(len(trunks))]
            i = rng.integers(len(p) // 4, len(p) - 3)
            t = _unit(p[i + 2] - p[i])
            side = _unit(np.cross(t, rng.standard_normal(3)))
            ang = rng.uniform(0.4, 1.1)
            starts.append(p[i])
            dirs.append(np.cos(ang) * t + np.sin(ang) * side)
            rads.append(r[i] * rng.uniform(0.5, 0.8))
        if starts:
            br = _walk(
                maps,
                rng,
                np.array(starts),
                np.array(dirs),
                rng.integers(8, 35, len(starts)),
                mode="out",
                tortuosity=tort,
            )
            for p, r in zip(br, rads, strict=True):
                if len(p) >= 4:
                    polys.append((p, np.full(len(p), max(r, 0.12)), BRANCH))

    # pial veins crawling along the surface towards the vertex
    ss = maps.surf_seeds
    n_pial = max(3, int(rng.uniform(35, 110) * density))
    seeds = ss[rng.integers(0, len(ss), n_pial)]
    g = _grad(maps, seeds)
    d0 = rng.standard_normal((n_pial, 3))
    d0 -= np.sum(d0 * g, 1, keepdims=True) * g
    target = rng.uniform(0.8, 2.2, n_pial)
    pial = _walk(
        maps, rng, seeds, d0, rng.integers(20, 90, n_pial), mode="surface", tortuosity=0.6 * tort, target_depth=target
    )
    for p in pial:
        if len(p) >= 6:
            r = float(np.exp(rng.normal(np.log(0.45), 0.3)))
            polys.append((p, np.linspace(r * 0.7, min(r * 1.3, 0.8), len(p)), PIAL))

    # short transcortical / intracortical veins diving inwards (dot-like in convexity slices)
    n_tc = max(4, int(rng.uniform(60, 240) * density))
    seeds = ss[rng.integers(0, len(ss), n_tc)]
    g = _grad(maps, seeds)
    tc = _walk(
        maps,
        rng,
        seeds,
        g + rng.normal(0, 0.25, (n_tc, 3)),
        rng.integers(5, 22, n_tc),
        mode="in",
        tortuosity=0.7 * tort,
    )
    r_tc = np.exp(rng.normal(np.log(0.2), 0.3, n_tc)).clip(0.13, 0.4)
    for p, r in zip(tc, r_tc, strict=True):
        if len(p) >= 4:
            polys.append((p, np.full(len(p), r), TRANSCORTICAL))

    # deep veins (paired) and the vein of Galen (hand-placed, jittered)
    def j(sd: float) -> np.ndarray:
        return rng.normal(0.0, sd, 3)

    galen = np.array([0.0, -40.0, 5.0]) + j(1.5)
    for sx in (-1.0, 1.0):
        icv = np.array([[sx * 3, 4, 15], [sx * 2.5, -10, 16], [sx * 1.5, -28, 11]]) + j(1.0)
        polys.append(
            (_smooth_path(np.vstack([icv, galen]), rng, 0.8, 0.6), np.full(1, rng.uniform(0.7, 1.1)), DEEP_VEIN)
        )
        bvr = np.array([[sx * 22, 2, -11], [sx * 21, -18, -7], [sx * 12, -32, -1]]) + j(1.5)
        polys.append(
            (_smooth_path(np.vstack([bvr, galen]), rng, 0.8, 0.8), np.full(1, rng.uniform(0.6, 1.0)), DEEP_VEIN)
        )
        tsv = np.array([[sx * 20, -12, 22], [sx * 14, -2, 19], [sx * 4, 4, 15]]) + j(1.5)
        polys.append((_smooth_path(tsv, rng, 0.8, 0.5), np.full(1, rng.uniform(0.4, 0.7)), DEEP_VEIN))
    # dural sinuses pushed just outside the brain
    c0 = np.array([0.0, -18.0, 10.0])
    ys = np.arange(62.0, -100.0, -6.0)
    sss = np.stack([np.zeros_like(ys), ys, np.full_like(ys, 60.0)], 1)
    sss = _push_out(maps, sss, c0 + np.array([0, 0, -20.0]), rng.uniform(2.5, 4.5))
    sss[:, 0] = 0.0
    polys.append((_smooth_path(sss, rng, 1.0, 0.5), np.full(1, rng.uniform(2.5, 4.0)), SINUS))
    torcular = sss[-1]
    straight = _smooth_path(np.vstack([galen, (galen + torcular) / 2 + np.array([0, 0, 4.0]), torcular]), rng, 1.0, 0.4)
    polys.append((straight, np.full(1, rng.uniform(1.6, 2.5)), SINUS))
    cb = np.array([0.0, -55.0, -30.0])
    for sx in (-1.0, 1.0):
        ang = np.deg2rad(np.linspace(0, 80, 9))
        ctrl = np.stack([sx * np.sin(ang) * 60, -55 - np.cos(ang) * 45, np.linspace(-8, -28, 9)], 1)
        tr = _push_out(maps, ctrl, cb, rng.uniform(2.0, 4.0))
        polys.append((_smooth_path(np.vstack([torcular, tr]), rng, 1.0, 0.5), np.full(1, rng.uniform(2.0, 3.5)), SINUS))

    pts, rad, vid, kind = [], [], [], []
    for i, (p, r, k) in enumerate(polys):
        pts.append(p)
        rad.append(np.broadcast_to(r, (len(p),)) if np.ndim(r) else np.full(len(p), r))
        vid.append(np.full(len(p), i))
        kind.append(np.full(len(p), k))
    return VeinSet(np.vstack(pts), np.concatenate(rad).astype(float), np.concatenate(vid), np.concatenate(kind))
