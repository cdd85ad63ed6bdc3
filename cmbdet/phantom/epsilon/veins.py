"""Vessels of the "epsilon" family, drawn in MNI space as sampled centre lines.

Two sources:

* named vessels from approximate MNI control points, jittered per subject and interpolated by
  splines: dural sinuses (superior sagittal along the brain's top contour, straight, transverse,
  sigmoid, inferior sagittal), the vein of Galen, internal cerebral veins, basal veins of Rosenthal,
  thalamostriate and septal veins, deep and superficial middle cerebral veins, the superior vermian and
  anterior pontomesencephalic veins; and arteries (ICA/MCA with M2 branches, ACA/pericallosal,
  basilar, PCA) which carry no deoxyhaemoglobin and show only as flow voids;
* tortuous walkers guided by distance maps: deep medullary veins radiating from the ventricle wall
  to the cortex, superficial medullary and transcortical veins running in from the surface, pial
  veins winding along the surface (toward the sinuses) with tributaries that join them
  (junctions), sulcal veins following the CSF of the sulci, lenticulostriate / thalamic perforating
  veins in the deep grey matter, and cerebellar surface and medullary veins.

A walker's direction is its previous one plus a guiding pull plus a slowly varying curvature (a
correlated random turn), so thin veins wind in and out of thick slices.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from scipy.interpolate import make_interp_spline

from cmbdet.anatomy import INFRATENTORIAL, MniMaps

KINDS = ("sinus", "deep", "medullary", "superficial", "pial", "tributary", "sulcal", "perforator", "cerebellar",
         "artery")
THIN = ("medullary", "superficial", "tributary", "sulcal", "perforator", "cerebellar")


@dataclass
class Vessels:
    """Centre-line samples (MNI mm). ``radius``: true lumen radius (mm); ``chi``: susceptibility of
    the blood relative to tissue (ppm; 0 for arteries); ``kind``: index into :data:`KINDS`;
    ``vessel``: id of the vessel each sample belongs to; ``junctions``: (J, 3) MNI points where a
    tributary joins another vein."""

    points: np.ndarray
    radius: np.ndarray
    chi: np.ndarray
    kind: np.ndarray
    vessel: np.ndarray
    junctions: np.ndarray


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-9)


class _Field:
    """Trilinear sampling of 2 mm MNI maps (and their gradients) at MNI points."""

    def __init__(self, maps: MniMaps):
        self.maps = maps
        self.csf_smooth = ndi.gaussian_filter(maps.csf, 0.8)
        self.tissue = maps.gm + maps.wm
        self._grads: dict[str, np.ndarray] = {}

    def at(self, arr: np.ndarray, p: np.ndarray, order: int = 1) -> np.ndarray:
        vox = self.maps.mm_to_vox(p)
        return ndi.map_coordinates(arr, vox.T, order=order, mode="nearest")

    def grad(self, name: str, arr: np.ndarray, p: np.ndarray) -> np.ndarray:
        if name not in self._grads:
            self._grads[name] = np.stack(np.gradient(arr.astype(np.float32), float(self.maps.resolution)))
        g = self._grads[name]
        return _unit(np.stack([self.at(g[a], p) for a in range(3)], axis=1))


def _spline(control: np.ndarray, step: float) -> np.ndarray:
    seg = np.linalg.norm(np.diff(control, axis=0), axis=1)
    t = np.concatenate([[0.0], np.cumsum(seg)])
    k = min(3, len(control) - 1)
    n = max(2, int(np.ceil(t[-1] / step)) + 1)
    return make_interp_spline(t, control, k=k)(np.linspace(0.0, t[-1], n))


def _mirror(pts: list[tuple[float, float, float]], side: int) -> np.ndarray:
    a = np.asarray(pts, float)
    a[:, 0] *= side
    return a


#: named vessels: (kind, control points for the right side (x >= 0; mirrored for left unless midline),
#: radius range at start and end (mm), bilateral?)
_NAMED = [
    ("deep", [(3, 4, 14), (3, -8, 15), (2.5, -20, 13), (2, -30, 9), (1, -37, 5)], (0.9, 1.3), True),  # ICV
    ("sinus", [(0, -37, 5), (0, -42, 4), (0, -46, 2)], (2.0, 2.5), False),  # Galen
    ("sinus", [(0, -46, 2), (0, -60, -2), (0, -80, -3), (0, -100, 2)], (2.0, 3.0), False),  # straight
    ("sinus", [(0, -102, 3), (25, -100, -2), (45, -86, -12), (55, -66, -25), (53, -46, -38), (48, -36, -52)],
     (3.0, 4.5), True),  # transverse + sigmoid
    ("sinus", [(0, 28, 30), (0, 2, 38), (0, -26, 32), (0, -38, 8)], (0.8, 1.2), False),  # inferior sagittal
    ("deep", [(18, 5, -16), (24, -8, -12), (22, -22, -8), (14, -34, -2), (3, -40, 3)], (0.8, 1.3), True),  # basal
    ("deep", [(20, -22, 22), (16, -10, 20), (10, 0, 17), (4, 4, 14)], (0.5, 0.8), True),  # thalamostriate
    ("deep", [(3, 25, 8), (4, 12, 14), (3, 4, 14)], (0.35, 0.6), True),  # septal
    ("deep", [(38, 10, -5), (36, 0, -10), (28, 2, -16), (18, 5, -16)], (0.6, 1.0), True),  # deep middle cerebral
    ("pial", [(52, 4, -2), (44, 12, -14), (36, 15, -26)], (0.8, 1.3), True),  # superficial middle cerebral
    ("deep", [(0, -70, -10), (0, -58, -2), (0, -46, 2)], (0.6, 1.0), False),  # superior vermian
    ("deep", [(0, -22, -46), (0, -19, -32), (0, -18, -18)], (0.4, 0.6), False),  # anterior pontomesencephalic
    ("artery", [(14, 0, -22), (22, 2, -16), (32, 4, -12), (40, 2, -4)], (1.3, 1.6), True),  # ICA-MCA M1
    ("artery", [(40, 2, -4), (44, -10, 6), (47, -26, 14)], (0.9, 1.1), True),  # M2 posterior
    ("artery", [(40, 2, -4), (43, 14, 8), (42, 26, 18)], (0.8, 1.0), True),  # M2 anterior
    ("artery", [(12, 6, -16), (3, 12, -8), (2.5, 22, 2), (2.5, 32, 14), (2.5, 22, 27), (2.5, 0, 33),
                (2.5, -24, 35)], (1.0, 1.2), True),  # ACA / pericallosal
    ("artery", [(0, -26, -52), (0, -21, -38), (0, -16, -24)], (1.5, 2.0), False),  # basilar
    ("artery", [(0, -16, -24), (10, -16, -20), (20, -30, -12), (24, -50, -4), (18, -70, 2)], (1.0, 1.3), True),  # PCA
]


def _sss(maps: MniMaps, rng: np.random.Generator) -> np.ndarray:
    """Superior sagittal sinus: 3–4 mm above the brain's top contour near the midline, y 58 -> -100."""
    res = maps.resolution
    xs = np.abs(maps.affine[0, 3] + res * np.arange(maps.shape[0])) <= 6
    col = maps.brain[xs].any(axis=0)  # (Y, Z)
    pts = []
    for y in np.linspace(58.0, -100.0, 24):
        j = int(round((y - maps.affine[1, 3]) / res))
        ks = np.flatnonzero(col[j])
        if ks.size:
            pts.append((0.0, y, maps.affine[2, 3] + res * ks.max() + rng.uniform(3.0, 4.5)))
    a = np.asarray(pts)
    # the sinus hugs the inner table: smooth the contour and close to the torcula
    a[:, 2] = ndi.uniform_filter1d(a[:, 2], 3, mode="nearest")
    return np.vstack([a, [[0.0, -104.0, 6.0]]])


def named_vessels(maps: MniMaps, rng: np.random.Generator, step: float):
    """Yield (kind, points (N, 3), radius (N,)) for the named vessels of one subject."""
    sss = _sss(maps, rng)
    yield "sinus", _spline(sss, step), np.linspace(1.5, 4.5, len(_spline(sss, step))) * rng.uniform(0.8, 1.15)
    dominance = rng.uniform(0.7, 1.3)  # transverse sinus asymmetry
    for kind, ctrl, (r0, r1), bilateral in _NAMED:
        for side in ((1, -1) if bilateral else (1,)):
            c = _mirror(ctrl, side) + rng.normal(0.0, 1.2, (len(ctrl), 3))
            pts = _spline(c, step)
            scale = dominance if (side == 1 and r1 >= 3.0) else (2.0 - dominance if r1 >= 3.0 else 1.0)
            rad = np.linspace(rng.uniform(r0, r1), rng.uniform(r0, r1), len(pts)) * scale
            yield kind, pts, rad


def _walk(rng, f: _Field, start: np.ndarray, direction: np.ndarray, n_steps: np.ndarray, step: float,
          guide, pull: float, turn: float, alive_fn) -> list[np.ndarray]:
    """Tortuous walkers; returns one (M, 3) polyline per walker (>= 2 points)."""
    n = len(start)
    p = start.copy()
    d = _unit(direction)
    curl = np.zeros_like(p)
    paths = [p.copy()]
    alive = np.ones(n, bool)
    lengths = np.zeros(n, int)
    for s in range(int(n_steps.max())):
        curl = 0.85 * curl + turn * rng.normal(size=p.shape)
        d = _unit(d + pull * guide(p, d) + curl)
        p = p + step * d
        alive &= (s < n_steps) & alive_fn(p)
        lengths[alive] += 1
        paths.append(p.copy())
        if not alive.any():
            break
    arr = np.stack(paths, axis=1)  # (n, S, 3)
    return [arr[i, : lengths[i] + 1] for i in range(n) if lengths[i] >= 2]


def _seeds(rng, f: _Field, mask: np.ndarray, n: int) -> np.ndarray:
    idx = np.argwhere(mask)
    if len(idx) == 0 or n <= 0:
        return np.zeros((0, 3))
    pick = idx[rng.integers(0, len(idx), n)]
    return pick * f.maps.resolution + f.maps.affine[:3, 3] + rng.uniform(-0.5, 0.5, (n, 3)) * f.maps.resolution


def grow_vessels(maps: MniMaps, rng: np.random.Generator, *, density: float, step: float) -> Vessels:
    """All vessels of one subject (MNI mm). ``density`` scales the number of walkers (1 = typical);
    ``step``: sample spacing along the centre lines (mm)."""
    f = _Field(maps)
    m = maps
    tissue = f.tissue
    pts_all, rad_all, kind_all, id_all, chi_all = [], [], [], [], []
    junctions: list[np.ndarray] = []
    chi_blood = float(rng.uniform(0.3, 0.55))  # deoxygenation varies between subjects

    def add(kind: str, pts: np.ndarray, rad: np.ndarray, chi: float | None = None) -> None:
        pts_all.append(pts)
        rad_all.append(np.asarray(rad, float))
        kind_all.append(np.full(len(pts), KINDS.index(kind), np.int8))
        id_all.append(np.full(len(pts), len(id_all), np.int32))
        c = 0.0 if kind == "artery" else (chi_blood if chi is None else chi)
        chi_all.append(np.full(len(pts), c * rng.uniform(0.85, 1.15), np.float32))

    for kind, pts, rad in named_vessels(m, rng, step):
        add(kind, pts, rad)

    inside = lambda p: (f.at(tissue, p) > 0.35) & (f.at(m.brain.astype(np.float32), p) > 0.5)  # noqa: E731
    n_of = lambda base: max(1, int(round(base * density)))  # noqa: E731
    regions = m.regions

    # deep medullary veins: from the ventricle wall out through the white matter toward the cortex
    mask = (m.d_vent >= 1.5) & (m.d_vent <= 4.0) & (m.wm > 0.5) & (regions != INFRATENTORIAL)
    seeds = _seeds(rng, f, mask, n_of(320))
    if len(seeds):
        out_dir = f.grad("d_vent", m.d_vent, seeds)
        paths = _walk(rng, f, seeds, out_dir, rng.integers(30, 90, len(seeds)) * 0.5 / step, step,
                      lambda p, d: f.grad("d_vent", m.d_vent, p), 0.25, 0.10,
                      lambda p: inside(p) & (f.at(m.d_cortex, p) > 1.0))
        for path in paths:
            r = np.linspace(rng.uniform(0.25, 0.45), rng.uniform(0.1, 0.18), len(path))
            # the subependymal end: a short stub back toward the ventricle wall
            back = path[0] - f.grad("d_vent", m.d_vent, path[:1])[0] * np.arange(1, 4)[:, None] * step
            add("medullary", np.vstack([back[::-1], path]), np.concatenate([np.full(3, r[0]), r]))

    # superficial medullary / transcortical veins: from the surface inward
    mask = (m.d_env <= -1.0) & (m.d_env >= -3.0) & (m.gm > 0.35)
    seeds = _seeds(rng, f, mask, n_of(220))
    if len(seeds):
        paths = _walk(rng, f, seeds, -f.grad("d_env", m.d_env, seeds), rng.integers(16, 50, len(seeds)) * 0.5 / step,
                      step, lambda p, d: -f.grad("d_env", m.d_env, p), 0.2, 0.12,
                      lambda p: inside(p) & (f.at(m.d_vent, p) > 4.0))
        for path in paths:
            kind = "cerebellar" if f.at(regions.astype(np.float32), path[:1], order=0)[0] == INFRATENTORIAL \
                else "superficial"
            add(kind, path, np.linspace(rng.uniform(0.15, 0.3), rng.uniform(0.07, 0.14), len(path)))

    # pial veins: wind along the surface at ~1.5 mm depth, superior ones drifting up toward the SSS
    mask = (m.d_env <= -0.5) & (m.d_env >= -2.5) & (m.brain)
    seeds = _seeds(rng, f, mask, n_of(55))
    if len(seeds):
        def pial_guide(p, d):
            g = f.grad("d_env", m.d_env, p)
            depth = f.at(m.d_env, p)
            tangential = d - (d * g).sum(1, keepdims=True) * g
            up = np.where((p[:, 2] > 10)[:, None], np.array([[0.0, 0.0, 1.0]]) - 0.02 * p * [1, 0, 0], 0.0)
            return _unit(tangential) - np.clip(depth + 1.5, -2, 2)[:, None] * g + 0.4 * up

        start_dir = _unit(rng.normal(size=seeds.shape))
        paths = _walk(rng, f, seeds, start_dir, rng.integers(60, 220, len(seeds)) * 0.5 / step, step, pial_guide,
                      0.35, 0.06, lambda p: (f.at(m.d_env, p) < 1.0) & (f.at(m.d_env, p) > -5.0))
        for path in paths:
            r = np.linspace(rng.uniform(0.3, 0.6), rng.uniform(0.6, 1.2), len(path))
            add("pial", path, r)
            # tributaries joining this vein
            for _ in range(int(rng.integers(0, 4))):
                if len(path) < 10:
                    break
                j = int(rng.integers(2, len(path) - 2))
                tdir = _unit(rng.normal(size=(1, 3)))
                sub = _walk(rng, f, path[j:j + 1], tdir, np.array([rng.integers(16, 60) * 0.5 / step]), step,
                            pial_guide, 0.35, 0.1, lambda p: (f.at(m.d_env, p) < 1.0) & (f.at(m.d_env, p) > -6.0))
                for s in sub:
                    add("tributary", s[::-1], np.linspace(rng.uniform(0.12, 0.25), 0.9 * r[j], len(s)))
                    junctions.append(path[j])

    # sulcal veins: follow sulcal CSF into the depth of a sulcus
    mask = (m.csf > 0.6) & (m.d_env <= -4.0) & (m.d_vent > 6.0) & m.brain
    seeds = _seeds(rng, f, mask, n_of(60))
    if len(seeds):
        paths = _walk(rng, f, seeds, _unit(rng.normal(size=seeds.shape)), rng.integers(16, 60, len(seeds)) * 0.5 / step,
                      step, lambda p, d: f.grad("csf", f.csf_smooth, p), 0.3, 0.08,
                      lambda p: (f.at(f.csf_smooth, p) > 0.25) & (f.at(m.d_env, p) < 0.5))
        for path in paths:
            add("sulcal", path, np.full(len(path), rng.uniform(0.25, 0.6)))

    # lenticulostriate / thalamic perforating veins: short, tortuous, mostly vertical, in deep grey
    n_perf = n_of(30)
    side = rng.choice([-1.0, 1.0], n_perf)
    thal = rng.random(n_perf) < 0.4
    seeds = np.stack([side * np.where(thal, rng.uniform(5, 16, n_perf), rng.uniform(16, 28, n_perf)),
                      np.where(thal, rng.uniform(-30, -8, n_perf), rng.uniform(-8, 14, n_perf)),
                      np.where(thal, rng.uniform(-2, 6, n_perf), rng.uniform(-10, -2, n_perf))], axis=1)
    up = np.stack([-0.35 * side, np.zeros(n_perf), np.ones(n_perf)], axis=1)
    paths = _walk(rng, f, seeds, up, rng.integers(20, 60, n_perf) * 0.5 / step, step,
                  lambda p, d: _unit(np.stack([-0.35 * np.sign(p[:, 0]), np.zeros(len(p)), np.ones(len(p))], 1)),
                  0.2, 0.15, lambda p: inside(p) & (f.at(m.d_vent, p) > 1.0))
    for path in paths:
        add("perforator", path, np.linspace(rng.uniform(0.12, 0.25), rng.uniform(0.1, 0.2), len(path)))

    # cerebellar surface veins
    mask = (m.d_env <= -0.5) & (m.d_env >= -2.5) & (regions == INFRATENTORIAL)
    seeds = _seeds(rng, f, mask, n_of(14))
    if len(seeds):
        def surface_guide(p, d):
            g = f.grad("d_env", m.d_env, p)
            return _unit(d - (d * g).sum(1, keepdims=True) * g) - np.clip(f.at(m.d_env, p) + 1.5, -2, 2)[:, None] * g

        lengths = rng.integers(40, 120, len(seeds)) * 0.5 / step
        paths = _walk(rng, f, seeds, _unit(rng.normal(size=seeds.shape)), lengths, step, surface_guide,
                      0.35, 0.08, lambda p: (f.at(m.d_env, p) < 1.0) & (f.at(m.d_env, p) > -5.0))
        for path in paths:
            add("cerebellar", path, np.linspace(rng.uniform(0.25, 0.5), rng.uniform(0.4, 0.8), len(path)))

    return Vessels(points=np.concatenate(pts_all), radius=np.concatenate(rad_all), chi=np.concatenate(chi_all),
                   kind=np.concatenate(kind_all), vessel=np.concatenate(id_all),
                   junctions=np.asarray(junctions).reshape(-1, 3))
