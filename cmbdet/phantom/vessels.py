"""Venous tree of a phantom head, generated in MNI space (mm).

Each vessel is a polyline with a *visible* (bloomed) radius and a darkening
depth; :func:`cmbdet.phantom.render.render_tubes` draws them as 3-D tubes on
the acquisition grid, so they continue across slices (the main CMB mimic:
a vein crossing an axial slice looks like a dark dot on that slice).

Modelled: superior sagittal, straight, transverse and sigmoid sinuses (from
the brain envelope), internal cerebral veins, vein of Galen, thalamostriate
and basal veins, superficial middle cerebral veins, thin medullary veins
running radially through the white matter to the lateral ventricles, pial
veins walking along the cortical surface toward the sagittal sinus, short
veins dipping into sulci, vertical lenticulostriate/insular veins and a few
cerebellar surface veins.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from ..anatomy import DEEP, INFRATENTORIAL, LOBAR, MniMaps
from .randomize import VesselStyle, tortuous_vein, wiggle


@dataclass
class Vessel:
    points: np.ndarray  # (n, 3) mm
    radius: np.ndarray  # (n,) visible radius (half of the FWHM of the dark tube), mm
    depth: float  # peak fractional darkening before partial volume
    kind: str  # 'sinus' | 'deep' | 'medullary' | 'pial' | 'sulcal' | 'deep_vertical' | 'cerebellar' | 'tortuous'


def _sample(arr: np.ndarray, maps: MniMaps, pts: np.ndarray, cval: float = 0.0) -> np.ndarray:
    return ndi.map_coordinates(arr, maps.mm_to_vox(pts).T, order=1, cval=cval, prefilter=False)


def _grad_env(maps: MniMaps, pts: np.ndarray) -> np.ndarray:
    """Unit outward normal of the brain envelope at pts (N, 3)."""
    h = float(maps.resolution)
    g = np.zeros_like(pts)
    for a in range(3):
        e = np.zeros(3)
        e[a] = h
        g[:, a] = _sample(maps.d_env, maps, pts + e, 50.0) - _sample(maps.d_env, maps, pts - e, 50.0)
    n = np.linalg.norm(g, axis=1, keepdims=True)
    return g / np.maximum(n, 1e-6)


@functools.lru_cache(maxsize=2)
def _pools(res: int) -> dict[str, np.ndarray]:
    """Candidate voxel positions (mm) for vessel seeds, per kind."""
    from ..anatomy import mni_maps

    maps = mni_maps(res)
    aff = maps.affine

    def mm(mask: np.ndarray) -> np.ndarray:
        ijk = np.argwhere(mask)
        return (ijk * res + aff[:3, 3]).astype(np.float32)

    x = aff[0, 3] + res * np.arange(maps.shape[0])[:, None, None]
    z = aff[2, 3] + res * np.arange(maps.shape[2])[None, None, :]
    shell = np.abs(maps.d_env + 2.0) <= 0.6 * res
    return {
        "medullary": mm(
            (maps.wm >= 0.5)
            & (maps.d_cortex >= 1.5)
            & (maps.d_cortex <= 6.0)
            & (maps.regions == LOBAR)
            & (z > -4.0)
            & (maps.d_vent >= 12.0)
            & (maps.d_vent <= 55.0)
        ),
        "surface": mm(shell & (z > -25.0)),
        "cerebellar": mm((np.abs(maps.d_env + 2.0) <= 1.5 * res) & (maps.regions == INFRATENTORIAL) & (z < -15)),
        "deep": mm((maps.regions == DEEP) & (maps.gm >= 0.4) & (maps.d_vent >= 3.0)),
        "insula": mm(
            (np.abs(np.abs(x) - 37.0) < 3.0) & (maps.gm >= 0.5) & (z > -8) & (z < 16) & (maps.regions == LOBAR)
        ),
    }


def _pick(rng: np.random.Generator, pool: np.ndarray, n: int) -> np.ndarray:
    if len(pool) == 0 or n <= 0:
        return np.zeros((0, 3))
    idx = rng.integers(0, len(pool), size=n)
    return pool[idx].astype(float) + rng.uniform(-0.5, 0.5, size=(n, 3))


def _polyline(knots: np.ndarray, step: float = 2.0) -> np.ndarray:
    """Resample a knot polyline at ~step mm (linear)."""
    seg = np.linalg.norm(np.diff(knots, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    n = max(2, int(np.ceil(s[-1] / step)) + 1)
    t = np.linspace(0.0, s[-1], n)
    return np.stack([np.interp(t, s, knots[:, a]) for a in range(3)], axis=1)


def _ray_to_surface(maps: MniMaps, origin: np.ndarray, dirs: np.ndarray, offset: float) -> np.ndarray:
    """First point along each ray (from origin) where d_env >= offset."""
    r = np.arange(20.0, 150.0, 0.5)
    pts = origin[None, None, :] + dirs[:, None, :] * r[None, :, None]
    d = _sample(maps.d_env, maps, pts.reshape(-1, 3), 50.0).reshape(len(dirs), len(r))
    k = np.argmax(d >= offset, axis=1)
    return origin[None, :] + dirs * r[k][:, None]


def _bezier(p0: np.ndarray, p1: np.ndarray, bend: np.ndarray, n: int) -> np.ndarray:
    t = np.linspace(0, 1, n)[:, None]
    c = 0.5 * (p0 + p1) + bend
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * c + t**2 * p1


def generate_veins(
    maps: MniMaps, rng: np.random.Generator, *, swi: bool, bloom: float = 1.0, density: float = 1.0,
    style: VesselStyle | None = None,
) -> list[Vessel]:
    """Random venous tree for one subject in MNI mm. ``density`` scales the counts. ``style``
    (domain randomization, see :mod:`.randomize`) scales calibre, count and contrast of the small
    veins, makes them tortuous and adds thin tortuous veins; ``None`` is the classic family."""
    out: list[Vessel] = []
    dk = 1.0 if swi else 0.5  # GRE: weaker vein contrast
    bloom = bloom * (1.15 if swi else 1.0)
    if style is not None:
        density *= style.density

    def add(points, radius, depth, kind):
        pts = np.asarray(points, float)
        if style is not None and kind != "sinus":
            pts = wiggle(pts, style.tortuosity_mm * rng.uniform(0.3, 1.0), rng)
            radius = np.asarray(radius, float) * style.calibre
            radius = np.interp(np.linspace(0, 1, len(pts)), np.linspace(0, 1, np.size(radius)),
                               np.broadcast_to(radius, (max(np.size(radius), 1),)))
            depth = depth * style.contrast
        rad = np.broadcast_to(np.asarray(radius, float) * bloom, (len(pts),)).copy()
        out.append(Vessel(pts, rad, float(np.clip(depth, 0.0, 0.97)), kind))

    # -- dural sinuses ------------------------------------------------------
    phi = np.deg2rad(np.arange(18.0, 208.0, 5.0))
    dirs = np.stack([np.zeros_like(phi), np.cos(phi), np.sin(phi)], axis=1)
    sss = _ray_to_surface(maps, np.array([0.0, -18.0, 12.0]), dirs, 0.5 + rng.uniform(0, 1.0))
    sss[:, 0] += rng.normal(0, 0.7)
    rad = np.linspace(1.6, 3.6, len(sss)) * rng.uniform(0.85, 1.15)
    add(sss, rad, rng.uniform(0.45, 0.75) * (0.7 + 0.3 * dk), "sinus")
    torcula = sss[-1]
    galen = np.array([0.0, -46.0, 4.0]) + rng.normal(0, 1.0, 3)
    add(
        _polyline(np.stack([galen, 0.5 * (galen + torcula) + [0, 0, 2.0], torcula])),
        rng.uniform(1.6, 2.3),
        rng.uniform(0.5, 0.8) * (0.7 + 0.3 * dk),
        "sinus",
    )
    for sx in (-1.0, 1.0):
        alpha = np.deg2rad(np.linspace(90.0, 8.0, 16))
        zline = np.linspace(torcula[2], -28.0 + rng.normal(0, 2), len(alpha))
        pts = []
        for a, zz in zip(alpha, zline):
            d = np.array([sx * np.cos(a), -np.sin(a), 0.0])
            pts.append(_ray_to_surface(maps, np.array([0.0, -40.0, zz]), d[None], 0.8)[0])
        pts = np.array(pts)
        sig = np.array([[sx * 47.0, -44.0, -48.0], [sx * 42.0, -34.0, -68.0]]) + rng.normal(0, 1.5, (2, 3))
        ts = _polyline(np.concatenate([pts, sig]), 2.5)
        rad = np.linspace(3.2, 3.8, len(ts)) * rng.uniform(0.8, 1.1)
        add(ts, rad, rng.uniform(0.45, 0.7) * (0.7 + 0.3 * dk), "sinus")

    # -- deep veins -----------------------------------------------------------
    for sx in (-1.0, 1.0):
        icv = np.array([[sx * 3.0, 2.0, 14.0], [sx * 3.0, -18.0, 15.0], [sx * 2.5, -36.0, 10.0], [0, -46.0, 4.0]])
        add(_polyline(icv + rng.normal(0, 0.8, icv.shape)), rng.uniform(0.9, 1.3), rng.uniform(0.65, 0.9) * dk, "deep")
        tsv = np.array([[sx * 19.0, -24.0, 20.0], [sx * 13.0, -8.0, 18.0], [sx * 4.0, 1.0, 14.0]])
        add(_polyline(tsv + rng.normal(0, 1.0, tsv.shape)), rng.uniform(0.6, 0.9), rng.uniform(0.55, 0.85) * dk, "deep")
        bvr = np.array([[sx * 22, 2, -14], [sx * 24, -18, -9], [sx * 15, -36, -2], [sx * 4, -45, 3]], float)
        add(_polyline(bvr + rng.normal(0, 1.0, bvr.shape)), rng.uniform(0.7, 1.1), rng.uniform(0.5, 0.8) * dk, "deep")
        smcv = np.array([[sx * 52, -14, 10], [sx * 47, 4, -2], [sx * 38, 16, -16], [sx * 30, 18, -26]], float)
        add(_polyline(smcv + rng.normal(0, 1.5, smcv.shape)), rng.uniform(0.7, 1.2), rng.uniform(0.5, 0.8) * dk, "deep")

    pools = _pools(maps.resolution)

    # -- medullary veins: radial through the WM toward the ventricles ---------
    n_med = int(rng.integers(250, 500) * density * (1.0 if swi else 0.6))
    starts = _pick(rng, pools["medullary"], n_med)
    if len(starts):
        vidx = np.clip(np.round(maps.mm_to_vox(starts)).astype(int), 0, np.array(maps.shape) - 1)
        nearest = maps.vent_idx[:, vidx[:, 0], vidx[:, 1], vidx[:, 2]].T.astype(float)
        ends = nearest * maps.resolution + maps.affine[:3, 3]
        r0 = rng.uniform(0.25, 0.55, size=len(starts))
        depth = rng.uniform(0.5, 0.92, size=len(starts)) * dk
        for p0, p1, r, dp in zip(starts, ends, r0, depth):
            v = p1 - p0
            length = np.linalg.norm(v)
            if length < 8.0:
                continue
            p1 = p1 - v / length * rng.uniform(2.5, 5.0)
            bend = rng.normal(0, 0.1 * length, 3)
            bend += np.array([0.0, 0.0, 0.06 * length])  # arch upward over the ventricle
            n = max(3, int(length / 3.0))
            add(_bezier(p0, p1, bend, n), np.linspace(0.75 * r, 1.2 * r, n), dp, "medullary")

    # -- pial veins: walk along the cortical surface toward the vertex -------
    n_pial = int(rng.integers(50, 110) * density * (1.0 if swi else 0.7))
    p = _pick(rng, pools["surface"], n_pial)
    if len(p):
        target_d = rng.uniform(-3.0, -1.0, size=len(p))
        heading = rng.normal(size=p.shape)
        n_steps = rng.integers(8, 30, size=len(p))
        steps = [p.copy()]
        stopped = np.zeros(len(p), bool)
        for s in range(int(n_steps.max())):
            nrm = _grad_env(maps, p)
            goal = np.stack([-p[:, 0], -0.1 * p[:, 1], 70.0 - p[:, 2]], axis=1)
            goal /= np.maximum(np.linalg.norm(goal, axis=1, keepdims=True), 1e-6)
            heading /= np.maximum(np.linalg.norm(heading, axis=1, keepdims=True), 1e-6)
            heading = 0.55 * heading + 0.45 * goal + rng.normal(0, 0.35, p.shape)
            heading -= nrm * np.sum(heading * nrm, axis=1, keepdims=True)
            heading /= np.maximum(np.linalg.norm(heading, axis=1, keepdims=True), 1e-6)
            q = p + 3.0 * heading
            dq = _sample(maps.d_env, maps, q, 50.0)
            q = q - (dq - target_d)[:, None] * _grad_env(maps, q)
            stopped |= s >= n_steps
            p = np.where(stopped[:, None], p, q)
            steps.append(p.copy())
            stopped |= np.abs(p[:, 0]) < 5.0
        walk = np.stack(steps, axis=1)  # (N, S, 3)
        for w in walk:
            moved = np.concatenate([[True], np.linalg.norm(np.diff(w, axis=0), axis=1) > 1e-6])
            pts = w[moved]
            if len(pts) < 4:
                continue
            r = rng.uniform(0.45, 1.0)
            add(pts, np.linspace(0.7 * r, 1.3 * r, len(pts)), rng.uniform(0.55, 0.9) * dk, "pial")

    # -- short veins dipping into sulci / cortex (dots on axial slices) -------
    n_sulc = int(rng.integers(100, 240) * density * (1.0 if swi else 0.6))
    starts = _pick(rng, pools["surface"], n_sulc)
    if len(starts):
        nrm = _grad_env(maps, starts)
        for p0, nv in zip(starts, nrm):
            d = -nv + rng.normal(0, 0.45, 3)
            d /= max(np.linalg.norm(d), 1e-6)
            length = rng.uniform(5.0, 15.0)
            pts = _bezier(p0, p0 + d * length, rng.normal(0, 0.1 * length, 3), 4)
            add(pts, rng.uniform(0.25, 0.6), rng.uniform(0.45, 0.85) * dk, "sulcal")

    # -- vertical deep veins (lenticulostriate, insular) ---------------------
    n_dv = int(rng.integers(10, 30) * density)
    pool = np.concatenate([pools["deep"], pools["insula"]])
    for p0 in _pick(rng, pool, n_dv):
        d = np.array([rng.normal(0, 0.3), rng.normal(0, 0.3), 1.0])
        d /= np.linalg.norm(d)
        length = rng.uniform(8.0, 20.0)
        pts = _polyline(np.stack([p0 - d * length / 2, p0 + d * length / 2]), 2.5)
        add(pts, rng.uniform(0.25, 0.55), rng.uniform(0.45, 0.8) * dk, "deep_vertical")

    # -- cerebellar surface veins -------------------------------------------
    n_cb = int(rng.integers(6, 20) * density)
    for p0 in _pick(rng, pools["cerebellar"], n_cb):
        nv = _grad_env(maps, p0[None])[0]
        t = np.cross(nv, rng.normal(size=3))
        t /= max(np.linalg.norm(t), 1e-6)
        length = rng.uniform(10.0, 30.0)
        pts = _bezier(p0, p0 + t * length, nv * rng.uniform(-2, 2) + rng.normal(0, 2, 3), 6)
        add(pts, rng.uniform(0.35, 0.8), rng.uniform(0.45, 0.8) * dk, "cerebellar")

    # -- thin tortuous veins anywhere in the white matter and cortex (randomized family only) ----
    if style is not None and style.n_tortuous:
        pool = np.concatenate([pools["medullary"], pools["surface"], pools["deep"]])
        for p0 in _pick(rng, pool, int(style.n_tortuous * (1.0 if swi else 0.7))):
            pts = tortuous_vein(p0, rng, rng.uniform(6.0, 30.0))
            add(pts, rng.uniform(0.15, 0.75), rng.uniform(0.4, 0.9) * dk, "tortuous")
    return out
