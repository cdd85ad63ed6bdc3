"""Delta veins: smooth cubic splines through random control points.

Classes: medullary veins (from juxtacortical white matter straight-ish to the nearest ventricle
wall, with a random bow and wiggle), transcortical perforators (short, diving inward from the
surface: at the vertex they cross axial slices as dots), pial veins (hopping along the brain
surface, drifting towards the vertex), and the deep veins and dural sinuses (fixed MNI routes,
jittered).  Control points are chosen in MNI space, mapped to scanner RAS through the subject's
pose, and the spline is drawn there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from scipy.interpolate import CubicSpline

from cmbdet.anatomy import DEEP, LOBAR, MniMaps

from .head import HeadPose

KINDS = ("medullary", "perforator", "pial", "deep", "sinus", "artery")


@dataclass(frozen=True)
class VeinSamples:
    """Veins sampled densely along their axes, scanner RAS mm.

    points (M, 3); tangent (M, 3) unit; radius_mm (M,); kind (M,) index into ``KINDS``;
    vein (M,) which vein each sample belongs to; spacing_mm the sample step.
    """

    points: np.ndarray
    tangent: np.ndarray
    radius_mm: np.ndarray
    kind: np.ndarray
    vein: np.ndarray
    spacing_mm: float

    def __len__(self) -> int:
        return len(self.radius_mm)


def _sample(arr: np.ndarray, maps2: MniMaps, pts: np.ndarray, order: int = 1) -> np.ndarray:
    return ndi.map_coordinates(arr, maps2.mm_to_vox(pts).T, order=order, mode="nearest")


def _project(p: np.ndarray, maps2: MniMaps, grad: list[np.ndarray], target_mm: float) -> np.ndarray:
    """Move MNI points along the envelope-distance gradient until ``d_env`` is ``target_mm``."""
    for _ in range(4):
        d = _sample(maps2.d_env, maps2, p)
        g = np.stack([_sample(gi, maps2, p) for gi in grad], axis=1)
        n2 = np.maximum((g * g).sum(1), 0.25)
        p = p - ((d - target_mm) / n2)[:, None] * g
    return p


def _jitter_path(rng: np.random.Generator, a: np.ndarray, b: np.ndarray, n_ctrl: int, wiggle: float) -> np.ndarray:
    """Control points from ``a`` to ``b`` (MNI mm) bowed and wiggled sideways by ``wiggle`` x length."""
    length = float(np.linalg.norm(b - a))
    d = (b - a) / max(length, 1e-6)
    perp = np.cross(d, rng.normal(size=3))
    perp /= max(np.linalg.norm(perp), 1e-6)
    perp2 = np.cross(d, perp)
    t = np.linspace(0.0, 1.0, n_ctrl)
    bow = np.sin(np.pi * t) * rng.normal(0.0, 0.12) * length
    side = rng.normal(0.0, wiggle * length, (n_ctrl, 2))
    side[0] = side[-1] = 0.0
    return a + t[:, None] * (b - a) + (bow + side[:, 0])[:, None] * perp + side[:, 1:2] * perp2


def _spline(ctrl_world: np.ndarray, r_start: float, r_end: float, ds: float):
    seg = np.linalg.norm(np.diff(ctrl_world, axis=0), axis=1)
    keep = np.concatenate([[True], seg > 1e-3])
    ctrl_world = ctrl_world[keep]
    if len(ctrl_world) < 2:
        return None
    s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(ctrl_world, axis=0), axis=1))])
    cs = CubicSpline(s, ctrl_world, bc_type="natural")
    # resample uniformly in arc length (the chord parameter is close to it)
    t = np.linspace(0.0, s[-1], max(int(np.ceil(s[-1] / (ds * 0.5))), 2))
    p = cs(t)
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(p, axis=0), axis=1))])
    n = max(int(np.ceil(arc[-1] / ds)), 2)
    tt = np.interp(np.linspace(0.0, arc[-1], n), arc, t)
    pts = cs(tt)
    tan = cs(tt, 1)
    tan /= np.maximum(np.linalg.norm(tan, axis=1, keepdims=True), 1e-9)
    rad = np.linspace(r_start, r_end, n)
    return pts, tan, rad


def grow_veins(rng: np.random.Generator, maps2: MniMaps, pose: HeadPose, *, density: float,
               spacing_mm: float) -> VeinSamples:
    """Draw this subject's veins (``density`` scales the counts; about 1 for a full scan)."""
    grad = np.gradient(maps2.d_env, maps2.resolution)
    tortuosity = float(rng.uniform(0.02, 0.09))
    size = float(np.mean(pose.scale))
    paths: list[tuple[np.ndarray, float, float, int]] = []  # (MNI control points, r0, r1, kind)
    aff = maps2.affine
    res = maps2.resolution

    def vox_to_mm(ijk: np.ndarray) -> np.ndarray:
        return aff[:3, 3] + res * ijk

    z_mm = aff[2, 3] + res * np.arange(maps2.shape[2])
    supra = (z_mm > -5.0)[None, None, :]
    # medullary veins
    pool = np.argwhere((maps2.wm >= 0.5) & (maps2.d_cortex >= 2.0) & (maps2.d_cortex <= 6.0) & supra
                       & ((maps2.regions == LOBAR) | (maps2.regions == DEEP))
                       & (maps2.d_vent >= 12.0) & (maps2.d_vent <= 55.0))
    n_med = int(rng.integers(60, 160) * density)
    for ijk in pool[rng.choice(len(pool), size=min(n_med, len(pool)), replace=False)]:
        start = vox_to_mm(ijk + rng.uniform(-0.5, 0.5, 3))
        vent = vox_to_mm(maps2.vent_idx[:, ijk[0], ijk[1], ijk[2]].astype(float))
        d = vent - start
        length = float(np.linalg.norm(d))
        start = start - d / length * rng.uniform(1.0, 4.0)  # begin in the cortex
        end = start + d * rng.uniform(0.55, 0.95)
        ctrl = _jitter_path(rng, start, end, int(rng.integers(4, 7)), tortuosity * rng.uniform(0.5, 2.0))
        paths.append((ctrl, rng.uniform(0.15, 0.22), rng.uniform(0.22, 0.45), 0))
    # perforators: short and steep, from the surface inwards
    surf = np.argwhere((maps2.d_env >= -2.0) & (maps2.d_env <= -0.5) & (maps2.gm >= 0.3) & supra)
    n_perf = int(rng.integers(40, 120) * density)
    for ijk in surf[rng.choice(len(surf), size=min(n_perf, len(surf)), replace=False)]:
        p = vox_to_mm(ijk + rng.uniform(-0.5, 0.5, 3))
        g = np.array([gi[tuple(ijk)] for gi in grad])
        inward = -g / max(np.linalg.norm(g), 1e-6) + rng.normal(0.0, 0.25, 3)
        inward /= np.linalg.norm(inward)
        end = p + inward * rng.uniform(6.0, 18.0)
        ctrl = _jitter_path(rng, p, end, int(rng.integers(3, 5)), tortuosity * rng.uniform(1.0, 3.0))
        paths.append((ctrl, rng.uniform(0.15, 0.3), rng.uniform(0.15, 0.35), 1))
    # pial veins
    surf0 = np.argwhere((maps2.d_env >= -0.5) & (maps2.d_env <= 1.0) & (z_mm > -20.0)[None, None, :])
    n_pial = int(rng.integers(15, 40) * density)
    for ijk in surf0[rng.choice(len(surf0), size=min(n_pial, len(surf0)), replace=False)]:
        p = vox_to_mm(ijk.astype(float))
        direction = rng.normal(size=3) + np.array([0.0, 0.0, rng.uniform(0.0, 1.2)])
        pts = [p]
        for _ in range(int(rng.integers(4, 9))):
            g = np.array([_sample(gi, maps2, pts[-1][None])[0] for gi in grad])
            g /= max(np.linalg.norm(g), 1e-6)
            direction = direction - (direction @ g) * g + rng.normal(0.0, 0.35, 3)
            direction /= max(np.linalg.norm(direction), 1e-6)
            q = _project((pts[-1] + direction * rng.uniform(5.0, 9.0))[None], maps2, grad,
                         float(rng.uniform(0.0, 1.2)))[0]
            pts.append(q)
        paths.append((np.array(pts), rng.uniform(0.25, 0.45), rng.uniform(0.4, 0.75), 2))
    # deep veins (pairs) and sinuses
    for sx in (-1.0, 1.0):
        icv = np.array([[2.5, 8.0, 16.0], [2.5, -10.0, 17.0], [2.0, -25.0, 14.0], [1.0, -33.0, 8.0]])
        rosenthal = np.array([[22.0, 2.0, -14.0], [24.0, -15.0, -8.0], [14.0, -30.0, -2.0], [3.0, -36.0, 4.0]])
        for route, r0, r1 in ((icv, 0.6, 0.9), (rosenthal, 0.5, 0.8)):
            ctrl = route * np.array([sx, 1.0, 1.0]) + rng.normal(0.0, 1.0, route.shape)
            paths.append((ctrl, r0 * rng.uniform(0.8, 1.2), r1 * rng.uniform(0.8, 1.2), 3))
        transverse = np.array([[2.0, -102.0, 2.0], [30.0, -100.0, -6.0], [50.0, -85.0, -18.0], [58.0, -65.0, -30.0]])
        ctrl = _project(transverse * np.array([sx, 1.0, 1.0]) + rng.normal(0.0, 1.0, (4, 3)), maps2, grad, 3.0)
        paths.append((ctrl, rng.uniform(2.0, 3.0), rng.uniform(2.0, 3.0), 4))
    galen = np.array([[0.0, -33.0, 6.0], [0.0, -42.0, 4.0], [0.0, -50.0, 4.0]]) + rng.normal(0.0, 0.8, (3, 3))
    paths.append((galen, rng.uniform(1.0, 1.5), rng.uniform(1.3, 1.9), 3))
    straight = np.array([[0.0, -50.0, 4.0], [0.0, -70.0, 4.0], [0.0, -90.0, 3.0], [0.0, -102.0, 2.0]])
    paths.append((straight + rng.normal(0.0, 1.0, (4, 3)), rng.uniform(1.6, 2.2), rng.uniform(2.0, 2.8), 4))
    # arteries (flow voids: no susceptibility, no signal inside): basilar, carotid siphons, M1 segments
    basilar = np.array([[0.0, -24.0, -50.0], [0.0, -19.0, -36.0], [0.0, -15.0, -24.0], [0.0, -13.0, -15.0]])
    paths.append((basilar + rng.normal(0.0, 1.0, (4, 3)), rng.uniform(1.2, 1.7), rng.uniform(1.2, 1.7), 5))
    for sx in (-1.0, 1.0):
        carotid = np.array([[16.0, 0.0, -40.0], [17.0, 4.0, -30.0], [15.0, 2.0, -20.0], [14.0, 2.0, -16.0]])
        m1 = np.array([[14.0, 2.0, -16.0], [25.0, 3.0, -15.0], [36.0, 2.0, -11.0], [44.0, -4.0, -4.0]])
        for route, r in ((carotid, 1.8), (m1, 1.2)):
            ctrl = route * np.array([sx, 1.0, 1.0]) + rng.normal(0.0, 0.8, route.shape)
            paths.append((ctrl, r * rng.uniform(0.8, 1.1), r * rng.uniform(0.7, 1.0), 5))
    ys = np.linspace(62.0, -100.0, 10)
    sss = np.stack([np.zeros_like(ys), ys, np.full_like(ys, 95.0)], axis=1)
    sss = _project(sss, maps2, grad, float(rng.uniform(2.0, 4.0)))
    paths.append((sss, rng.uniform(1.5, 2.5), rng.uniform(3.0, 4.0), 4))

    pts, tans, rads, kinds, ids = [], [], [], [], []
    for i, (ctrl, r0, r1, kind) in enumerate(paths):
        out = _spline(pose.mni_to_world(ctrl), r0 * size, r1 * size, spacing_mm)
        if out is None:
            continue
        p, t, r = out
        pts.append(p)
        tans.append(t)
        rads.append(r)
        kinds.append(np.full(len(r), kind, np.int8))
        ids.append(np.full(len(r), i, np.int32))
    return VeinSamples(points=np.concatenate(pts), tangent=np.concatenate(tans), radius_mm=np.concatenate(rads),
                       kind=np.concatenate(kinds), vein=np.concatenate(ids), spacing_mm=float(spacing_mm))
