"""Rendering: MNI-space tissue magnitude -> acquisition grid -> lesions, artefacts, storage.

Signal units: bright CSF ~ 1 before bias/noise/storage scaling.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from ..anatomy import AIR_CAVITIES_MNI, IRON_NUCLEI_MNI, MniMaps
from .geometry import SubjectGeometry, bspline_weights, tensor_field
from .protocol import Protocol

# ---------------------------------------------------------------------------
# per-subject anatomy / contrast parameters


@dataclass
class AnatomyParams:
    i_csf: float
    i_gm: float
    i_wm: float
    atrophy: float  # 0..1
    csf_rim_mm: float
    bone_mm: float
    scalp_mm: float
    iron: dict[str, float]  # nucleus -> peak darkening
    iron_jitter: dict[str, np.ndarray]
    wmh: list[tuple[np.ndarray, float, float]] = field(default_factory=list)  # centre mm, radius mm, amplitude
    air_kappa: float = 1.0
    tissue_noise: float = 0.03
    diploe: float = 0.3
    fat: float = 0.72


def bloom_factor(p: Protocol) -> float:
    """Relative blooming of susceptibility sources (1 at 3 T, TE 20 ms, GRE)."""
    b = (p.field_t * p.te_ms / 60.0) ** 0.3
    return float(np.clip(b * (1.12 if p.contrast == "swi" else 0.95), 0.7, 1.4))


def sample_anatomy(rng: np.random.Generator, p: Protocol, maps: MniMaps) -> AnatomyParams:
    swi = p.contrast == "swi"
    i_gm = rng.uniform(0.66, 0.78) if swi else rng.uniform(0.70, 0.82)
    i_wm = i_gm * (rng.uniform(0.80, 0.90) if swi else rng.uniform(0.83, 0.92))
    atrophy = float(rng.uniform(0, 1) ** 2)
    sus = float(np.clip((p.field_t * p.te_ms / 60.0) ** 0.5, 0.5, 1.4)) * (1.0 if swi else 0.55)
    depth = {
        "globus_pallidus": rng.uniform(0.3, 0.55),
        "putamen": rng.uniform(0.06, 0.25),
        "caudate": rng.uniform(0.03, 0.12),
        "substantia_nigra": rng.uniform(0.25, 0.45),
        "red_nucleus": rng.uniform(0.25, 0.45),
        "dentate": rng.uniform(0.2, 0.45),
    }
    iron = {k: float(np.clip(v * sus, 0.0, 0.8)) for k, v in depth.items()}
    jitter = {k: rng.normal(0, 1.2, size=(len(IRON_NUCLEI_MNI[k]), 3)) for k in IRON_NUCLEI_MNI}
    # white-matter hyperintensity-like patches (Fazekas 0-3)
    wmh: list[tuple[np.ndarray, float, float]] = []
    fazekas = int(rng.choice(4, p=[0.35, 0.35, 0.2, 0.1]))
    if fazekas:
        for sx in (-1.0, 1.0):  # periventricular caps
            for c in ((13.0, 24.0, 12.0), (24.0, -52.0, 12.0)):
                cc = np.array([sx * c[0], c[1], c[2]]) + rng.normal(0, 2, 3)
                wmh.append((cc, rng.uniform(3, 5 + 3 * fazekas), rng.uniform(0.08, 0.2)))
        ijk = np.argwhere((maps.regions == 2) & (maps.wm > 0.6))
        n = int(rng.integers(2, 6) * fazekas**1.5)
        for q in ijk[rng.integers(0, len(ijk), n)] if len(ijk) else []:
            cc = q * maps.resolution + maps.affine[:3, 3]
            wmh.append((cc, rng.uniform(2, 3 + 3 * fazekas), rng.uniform(0.08, 0.22)))
    kappa = float(rng.uniform(0.7, 1.5) * (p.field_t / 3.0) ** 0.8 * (p.te_ms / 20.0) * np.sqrt(p.slice_mm / 2.0))
    kappa *= 1.0 if swi else 1.5
    return AnatomyParams(
        i_csf=float(rng.uniform(0.92, 1.02)),
        i_gm=float(i_gm),
        i_wm=float(i_wm),
        atrophy=atrophy,
        csf_rim_mm=float(rng.uniform(0.3, 1.5) + 2.5 * atrophy),
        bone_mm=float(rng.uniform(5.0, 8.0)),
        scalp_mm=float(rng.uniform(4.0, 8.0)),
        iron=iron,
        iron_jitter=jitter,
        wmh=wmh,
        air_kappa=kappa,
        tissue_noise=float(rng.uniform(0.02, 0.05)),
        diploe=float(rng.uniform(0.08, 0.4)),
        fat=float(rng.uniform(0.55, 0.8)),
    )


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], step_vox: float) -> np.ndarray:
    """Smooth random field (unit-ish std) on a grid via a cubic B-spline of random nodes."""
    nodes = [int(np.ceil(n / step_vox)) + 3 for n in shape]
    coef = rng.normal(size=nodes).astype(np.float32)
    ws = [bspline_weights(np.arange(n), m, step_vox) for n, m in zip(shape, nodes)]
    f = tensor_field(coef, *ws)
    f *= np.float32(1.0 / 0.55)  # cubic B-spline of unit-variance nodes has std ~0.55
    return f


def _soft_ellipsoid(x, y, z, c, r, sharp: float = 6.0):
    rr2 = ((x - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((z - c[2]) / r[2]) ** 2
    return 1.0 / (1.0 + rr2 ** (sharp / 2.0))


@functools.lru_cache(maxsize=2)
def _brain_bbox(res: int) -> tuple[slice, slice, slice]:
    from ..anatomy import mni_maps

    idx = np.argwhere(mni_maps(res).brain)
    lo, hi = idx.min(0), idx.max(0) + 1
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))  # type: ignore[return-value]


@functools.lru_cache(maxsize=2)
def _sharp_tissue(res: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """GM/WM/CSF fractions with crisper boundaries than the population-average template.

    A logistic contrast stretch of each tissue fraction (renormalized to sum
    to one inside the brain) approximates one subject's sharp GM/WM/CSF edges.
    """
    from ..anatomy import mni_maps

    maps = mni_maps(res)
    k = 7.0 if res == 1 else 5.0
    out = []
    for p in (maps.gm, maps.wm, maps.csf):
        out.append((1.0 / (1.0 + np.exp(-k * (p - 0.5)))).astype(np.float32))
    total = out[0] + out[1] + out[2]
    total = np.where(total > 1e-3, total, 1.0)
    brain = maps.brain
    return tuple((np.where(brain, o / total, 0.0)).astype(np.float32) for o in out)  # type: ignore[return-value]


def _brain_signal(maps: MniMaps, a: AnatomyParams, box, tex: np.ndarray) -> np.ndarray:
    """Brain magnitude (tissue mix, atrophy, texture, WMH, iron) on ``box``."""
    res = maps.resolution
    sgm, swm, scsf = _sharp_tissue(res)
    gm = sgm[box]
    wm = swm[box]
    csf = scsf[box]
    off = np.array([s.start for s in box]) * res + maps.affine[:3, 3]
    shp = gm.shape
    x = (off[0] + res * np.arange(shp[0], dtype=np.float32))[:, None, None]
    y = (off[1] + res * np.arange(shp[1], dtype=np.float32))[None, :, None]
    z = (off[2] + res * np.arange(shp[2], dtype=np.float32))[None, None, :]
    # atrophy: ventricles and sulci widen
    if a.atrophy > 0.02:
        deep = maps.regions[box] == 2
        f = np.clip((5.0 * a.atrophy - maps.d_vent[box]) * 0.5 + 0.5, 0.0, 1.0)
        f *= deep
        fs = np.clip((2.0 * a.atrophy - maps.d_sulc[box]) * (1 / 1.5) + 0.5, 0.0, 1.0)
        fs *= ~deep
        np.maximum(f, fs, out=f)
        f *= maps.brain[box]
        new_csf = np.maximum(csf, f)
        keep = (1.0 - new_csf) / np.maximum(1.0 - csf, 1e-3)
        gm = gm * keep
        wm = wm * keep
        csf = new_csf
    tissue = gm + wm
    sig = csf * np.float32(a.i_csf)
    sig += gm * np.float32(a.i_gm)
    sig += wm * np.float32(a.i_wm)
    # fine tissue texture (a few %, ~5 mm correlation)
    sig *= 1.0 + np.float32(a.tissue_noise) * tex * tissue
    # WMH-like patches: mildly bright on T2*-weighted magnitude
    for c, r, amp in a.wmh:
        sub, sl = _local(x, y, z, c, 2.5 * r)
        if sub is None:
            continue
        g = np.exp(-0.5 * (((sub[0] - c[0]) ** 2 + (sub[1] - c[1]) ** 2 + (sub[2] - c[2]) ** 2) / r**2))
        sig[sl] *= 1.0 + amp * g * wm[sl]
    # iron in deep nuclei
    for name, items in IRON_NUCLEI_MNI.items():
        depth = a.iron.get(name, 0.0)
        for (c, r), jit in zip(items, a.iron_jitter[name]):
            cc = np.asarray(c) + jit
            sub, sl = _local(x, y, z, cc, 1.8 * max(r))
            if sub is None:
                continue
            s = _soft_ellipsoid(sub[0], sub[1], sub[2], cc, r)
            sig[sl] *= 1.0 - depth * s * tissue[sl]
    return sig


def mni_magnitude(
    maps: MniMaps, a: AnatomyParams, rng: np.random.Generator, box: tuple[slice, slice, slice]
) -> np.ndarray:
    """Subject magnitude (CSF ~ 1) on ``maps`` head grid cropped to ``box``. float32."""
    res = maps.resolution
    shp = tuple(s.stop - s.start for s in box)
    off = np.array([s.start for s in box]) * res + maps.affine[:3, 3]
    y = (off[1] + res * np.arange(shp[1], dtype=np.float32))[None, :, None]
    fine = _smooth_noise(rng, shp, 5.0 / res)  # texture, soft-tissue mix, dropout irregularity
    coarse = _smooth_noise(rng, shp, 30.0 / res)

    # head outside the brain: CSF rim, skull (tables + diploe), scalp layers, face.
    # One radial profile (mm from the brain envelope) per subject, locally
    # stretched by a smooth random field so rim/bone/scalp thickness varies.
    stretch = 1.0 + 0.18 * coarse + 0.15 * np.clip(np.abs(y + 20.0) / 80.0, 0, 1)
    t = maps.d_env[box] / stretch
    prof_x, prof_y = _head_profile(a)
    head = np.interp(t.ravel(), prof_x, prof_y).astype(np.float32).reshape(shp)
    # face / neck soft tissue (fat-muscle mix) below the cranium
    lower = maps.lower_head[box] * np.clip(t - (a.csf_rim_mm + a.bone_mm), 0.0, 1.0)
    mix = 0.3 + 0.4 * np.clip(0.5 + 0.25 * fine, 0.0, 1.0)
    head += lower * (mix - head)
    eyes = maps.eyes[box]
    head += eyes * (0.95 - head)
    head += maps.cistern[box] * (0.85 * a.i_csf - head)
    head *= 1.0 - maps.air[box]
    # brain
    bb = _brain_bbox(res)
    inner = tuple(slice(max(b.start, o.start), min(b.stop, o.stop)) for b, o in zip(bb, box))
    if all(s.stop > s.start for s in inner):
        local = tuple(slice(s.start - o.start, s.stop - o.start) for s, o in zip(inner, box))
        sig = _brain_signal(maps, a, inner, fine[local])
        np.copyto(head[local], sig, where=maps.brain[inner])
    # air-bone susceptibility dropout (irregular, TE/field/slice dependent)
    sus = maps.suscept[box]
    near = sus > 0.02
    if near.any():
        irregular = np.clip(1.0 - 0.6 * fine[near], 0.2, 2.5)
        drop = np.exp(-((a.air_kappa * sus[near] * irregular) ** 2))
        head[near] *= drop.astype(np.float32)
    return head


def _head_profile(a: AnatomyParams) -> tuple[np.ndarray, np.ndarray]:
    """Magnitude vs distance (mm) outside the brain envelope: CSF rim, skull, scalp, air."""
    r, b, s = a.csf_rim_mm, a.bone_mm, a.scalp_mm
    x = [
        -100.0,
        r - 0.5,
        r + 0.3,
        r + 0.3 * b,
        r + 0.5 * b,
        r + 0.7 * b,
        r + b - 0.3,
        r + b + 0.4,
        r + b + 0.25 * s,
        r + b + 0.4 * s,
        r + b + 0.8 * s,
        r + b + s - 0.3,
        r + b + s + 0.3,
        1000.0,
    ]
    y = [a.i_csf * 0.95, a.i_csf * 0.95, 0.04, 0.06, a.diploe, 0.06, 0.04, 0.3, 0.33, a.fat, a.fat, 0.45, 0.0, 0.0]
    return np.asarray(x, np.float32), np.asarray(y, np.float32)


def _local(x, y, z, c, rad):
    """Sub-box (open grids) and slices around centre c (mm) with radius rad."""
    xs, ys, zs = x[:, 0, 0], y[0, :, 0], z[0, 0, :]
    sl = []
    for v, cc in ((xs, c[0]), (ys, c[1]), (zs, c[2])):
        i0 = int(np.searchsorted(v, cc - rad))
        i1 = int(np.searchsorted(v, cc + rad))
        if i1 <= i0:
            return None, None
        sl.append(slice(i0, i1))
    sl = tuple(sl)
    return (x[sl[0]], y[:, sl[1]], z[:, :, sl[2]]), sl


# ---------------------------------------------------------------------------
# sampling onto the acquisition grid


def _interp_matrix_axis(arr: np.ndarray, pos: np.ndarray, axis: int) -> np.ndarray:
    n = arr.shape[axis]
    if n == 1:
        return np.repeat(arr, len(pos), axis=axis)
    p = np.clip(pos, 0, n - 1)
    i0 = np.minimum(np.floor(p).astype(int), n - 2)
    w = (p - i0).astype(np.float32)
    shp = [1] * arr.ndim
    shp[axis] = -1
    w = w.reshape(shp)
    return np.take(arr, i0, axis=axis) * (1 - w) + np.take(arr, i0 + 1, axis=axis) * w


def fov_box(maps: MniMaps, geom: SubjectGeometry, margin_mm: float = 12.0) -> tuple[slice, slice, slice]:
    """Head-grid slices covering the acquisition FOV (MNI bounding box + margin)."""
    n = geom.shape
    corners = np.array([[i, j, k] for i in (0, n[0] - 1) for j in (0, n[1] - 1) for k in (0, n[2] - 1)], float)
    mni = geom.world_to_mni(geom.index_to_world(corners))
    lo = np.floor(maps.mm_to_vox(mni.min(0) - margin_mm)).astype(int)
    hi = np.ceil(maps.mm_to_vox(mni.max(0) + margin_mm)).astype(int) + 1
    lo = np.clip(lo, 0, np.array(maps.shape) - 1)
    hi = np.clip(hi, lo + 1, np.array(maps.shape))
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))  # type: ignore[return-value]


def sample_to_grid(
    mag: np.ndarray, box: tuple[slice, slice, slice], maps: MniMaps, geom: SubjectGeometry, chunk: int = 24
) -> np.ndarray:
    """Resample the MNI magnitude onto the canonical acquisition grid.

    In-plane the field is sampled every ``maps.resolution`` mm (or every voxel
    if coarser) and linearly upsampled; through-plane each slice is the mean
    of ceil(thickness / resolution) sub-slice samples (box slice profile).
    Returns (n0, n1, n2) float32.
    """
    res = float(maps.resolution)
    sp, n = geom.spacing, geom.shape
    pos = []
    for a in (0, 1):
        if sp[a] < res * 0.999 and n[a] > 1:
            ni = int(np.ceil((n[a] - 1) * sp[a] / res)) + 1
            pos.append(np.linspace(0.0, n[a] - 1, ni))
        else:
            pos.append(np.arange(n[a], dtype=float))
    n_sub = max(1, int(np.ceil(sp[2] / res - 1e-6)))
    sub = (np.arange(n_sub) + 0.5) / n_sub - 0.5
    lin = geom.A @ geom.rot @ np.diag(sp)  # index -> MNI (linear part)
    off = geom.A @ (geom.origin - geom.centre)
    box_origin = np.array([s.start for s in box]) * res + maps.affine[:3, 3]
    out = np.empty((len(pos[0]), len(pos[1]), int(n[2])), np.float32)
    p0 = pos[0].astype(np.float32)[:, None, None]
    p1 = pos[1].astype(np.float32)[None, :, None]
    for k0 in range(0, int(n[2]), chunk):
        ks = np.arange(k0, min(k0 + chunk, int(n[2])))
        p2v = (ks[:, None] + sub[None, :]).ravel()
        p2 = p2v.astype(np.float32)[None, None, :]
        disp = geom.displacement_on_grid(pos[0], pos[1], p2v)
        coords = np.empty((3, len(pos[0]), len(pos[1]), len(p2v)), np.float32)
        for d in range(3):
            c = lin[d, 0] * p0 + lin[d, 1] * p1 + lin[d, 2] * p2 + (off[d] - box_origin[d])
            coords[d] = (c + disp[d]) / res
        vals = ndi.map_coordinates(mag, coords.reshape(3, -1), order=1, cval=0.0, prefilter=False)
        vals = vals.reshape(len(pos[0]), len(pos[1]), len(ks), n_sub).mean(axis=3)
        out[:, :, ks] = vals
    if len(pos[0]) != n[0]:
        out = _interp_matrix_axis(out, np.arange(n[0]) * (len(pos[0]) - 1) / (n[0] - 1), 0)
    if len(pos[1]) != n[1]:
        out = _interp_matrix_axis(out, np.arange(n[1]) * (len(pos[1]) - 1) / (n[1] - 1), 1)
    return np.ascontiguousarray(out, dtype=np.float32)


# ---------------------------------------------------------------------------
# lesions and vessels (analytic, partial-volume aware) on the grid


def render_tubes(
    att: np.ndarray,
    polylines: list[tuple[np.ndarray, np.ndarray, float]],
    spacing: np.ndarray,
    b0: np.ndarray,
) -> None:
    """Max-combine dark tubes into ``att`` (attenuation 0..1, canonical grid).

    polylines: (points (n, 3) grid-mm, visible radius (n,) mm, depth). Each
    segment is a Gaussian tube (FWHM = 2 x radius) convolved analytically with
    the voxel box (variance spacing^2/12 per axis, i.e. slice-profile
    integration in the slice direction); darkening scales with
    sin^2(angle to B0) as for a cylinder's external field.
    """
    import math

    n0, n1, n2 = (int(v) for v in att.shape)
    sx, sy, sz = (float(v) for v in spacing)
    bx, by, bz = sx * sx / 12.0, sy * sy / 12.0, sz * sz / 12.0
    gx = np.arange(n0, dtype=np.float32) * sx
    gy = np.arange(n1, dtype=np.float32) * sy
    gz = np.arange(n2, dtype=np.float32) * sz
    b0x, b0y, b0z = (float(v) for v in b0)
    for pts, rad, depth in polylines:
        pts = np.asarray(pts, float)
        if len(pts) < 2:
            continue
        segs = np.diff(pts, axis=0)
        lens = np.sqrt((segs**2).sum(axis=1))
        rmid = 0.5 * (rad[:-1] + rad[1:])
        for i in range(len(segs)):
            length = float(lens[i])
            if length < 1e-6:
                continue
            ux, uy, uz = segs[i, 0] / length, segs[i, 1] / length, segs[i, 2] / length
            sig2 = (float(rmid[i]) / 1.1774) ** 2
            # orthonormal e1, e2 perpendicular to u
            if abs(ux) < 0.9:
                e1x, e1y, e1z = 0.0, uz, -uy
            else:
                e1x, e1y, e1z = -uz, 0.0, ux
            nrm = math.sqrt(e1x * e1x + e1y * e1y + e1z * e1z)
            e1x, e1y, e1z = e1x / nrm, e1y / nrm, e1z / nrm
            e2x, e2y, e2z = uy * e1z - uz * e1y, uz * e1x - ux * e1z, ux * e1y - uy * e1x
            c00 = sig2 + bx * e1x * e1x + by * e1y * e1y + bz * e1z * e1z
            c11 = sig2 + bx * e2x * e2x + by * e2y * e2y + bz * e2z * e2z
            c01 = bx * e1x * e2x + by * e1y * e2y + bz * e1z * e2z
            det = c00 * c11 - c01 * c01
            q00, q11, q01 = c11 / det, c00 / det, -c01 / det
            s_al2 = sig2 + bx * ux * ux + by * uy * uy + bz * uz * uz
            cosb = ux * b0x + uy * b0y + uz * b0z
            peak = depth * (0.3 + 0.7 * (1.0 - cosb * cosb)) * sig2 / math.sqrt(det)
            if peak < 0.02:
                continue
            p0 = pts[i]
            p1 = pts[i + 1]
            lo = []
            hi = []
            for a, (bv, sp, nn) in enumerate(((bx, sx, n0), (by, sy, n1), (bz, sz, n2))):
                ext = 3.0 * math.sqrt(sig2 + bv)
                lo.append(max(int(math.floor((min(p0[a], p1[a]) - ext) / sp)), 0))
                hi.append(min(int(math.ceil((max(p0[a], p1[a]) + ext) / sp)) + 1, nn))
            if hi[0] <= lo[0] or hi[1] <= lo[1] or hi[2] <= lo[2]:
                continue
            dx = (gx[lo[0] : hi[0]] - np.float32(p0[0]))[:, None, None]
            dy = (gy[lo[1] : hi[1]] - np.float32(p0[1]))[None, :, None]
            dz = (gz[lo[2] : hi[2]] - np.float32(p0[2]))[None, None, :]
            t = dx * np.float32(ux) + dy * np.float32(uy) + dz * np.float32(uz)
            along = t - np.clip(t, 0.0, length)
            d1 = dx * np.float32(e1x) + dy * np.float32(e1y) + dz * np.float32(e1z)
            d2 = dx * np.float32(e2x) + dy * np.float32(e2y) + dz * np.float32(e2z)
            q = (
                np.float32(-0.5 * q00) * d1 * d1
                + np.float32(-q01) * d1 * d2
                + np.float32(-0.5 * q11) * d2 * d2
                + np.float32(-0.5 / s_al2) * along * along
            )
            f = np.exp(q)
            f *= np.float32(peak)
            sl = att[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
            np.maximum(sl, f, out=sl)


def render_blob(
    att: np.ndarray,
    centre: np.ndarray,
    diameter: float,
    spacing: np.ndarray,
    *,
    depth: float,
    sharp: float,
    axes: np.ndarray | None = None,
    rot: np.ndarray | None = None,
) -> None:
    """Max-combine one round/ovoid dark focus (CMB, calcification) into ``att``.

    centre in grid-mm. Darkening profile ``depth / (1 + r^sharp)`` with r the
    ellipsoidal radius in units of diameter/2, so the visible (50 %) contour
    has the given diameter. Integrated numerically over each voxel (in-plane
    and through the slice thickness).
    """
    axes = np.ones(3) if axes is None else np.asarray(axes, float)
    rot = np.eye(3) if rot is None else rot
    rad = diameter / 2.0
    box = _subvoxel_box(att.shape, centre, 1.5 * diameter * axes.max() + spacing, spacing, diameter)
    if box is None:
        return
    fine = box[2]
    dx = fine[0][:, None, None]
    dy = fine[1][None, :, None]
    dz = fine[2][None, None, :]
    r2 = 0.0
    for b in range(3):
        comp = dx * rot[0, b] + dy * rot[1, b] + dz * rot[2, b]
        r2 = r2 + (comp / (rad * axes[b])) ** 2
    _max_voxel_means(att, box, depth / (1.0 + r2 ** (sharp / 2.0)))


def _subvoxel_box(shape, centre: np.ndarray, ext: np.ndarray, spacing: np.ndarray, diameter: float):
    """The voxels within ``ext`` (grid-mm) of ``centre`` and sub-voxel sample positions in them, fine
    enough for a focus of ``diameter``: ``(lo, nsub, fine)`` with ``fine[a]`` the sample coordinates along
    axis ``a`` relative to ``centre`` (``nsub[a]`` per voxel), or None when the box misses the grid."""
    lo = np.maximum(np.floor((centre - ext) / spacing).astype(int), 0)
    hi = np.minimum(np.ceil((centre + ext) / spacing).astype(int) + 1, np.array(shape))
    if np.any(hi <= lo):
        return None
    nsub = np.clip(np.ceil(spacing / (diameter / 6.0)), 1, 12).astype(int)
    fine = []
    for a in range(3):
        vox = np.arange(lo[a], hi[a]) * spacing[a]
        offs = ((np.arange(nsub[a]) + 0.5) / nsub[a] - 0.5) * spacing[a]
        fine.append((vox[:, None] + offs[None, :]).ravel() - centre[a])
    return lo, nsub, fine


def _max_voxel_means(att: np.ndarray, box, values: np.ndarray) -> None:
    """Max-combine into ``att`` the per-voxel means of ``values`` sampled on `_subvoxel_box`'s samples."""
    lo, nsub, _ = box
    n = np.array(values.shape) // nsub
    means = values.reshape(n[0], nsub[0], n[1], nsub[1], n[2], nsub[2]).mean(axis=(1, 3, 5)).astype(np.float32)
    sl = tuple(slice(lo[a], lo[a] + n[a]) for a in range(3))
    np.maximum(att[sl], means, out=att[sl])


def render_dipole_bloom(
    att: np.ndarray,
    centre: np.ndarray,
    diameter: float,
    spacing: np.ndarray,
    b0: np.ndarray,
    *,
    core_fraction: float,
    core_depth: float,
    reference_voxel_mm: float,
    sources: tuple[tuple[np.ndarray, float], ...] = (),
) -> None:
    """Max-combine the magnitude signal loss of a magnetized deposit (microbleed, calcification) into
    ``att``: intravoxel dephasing in the deposit's dipole field rather than a drawn profile.

    The deposit is a sphere of radius ``core_fraction * diameter / 2`` (or several: ``sources``, offset
    from ``centre`` in grid-mm and radius scale) whose own signal is darkened by ``core_depth``. Around
    it the field of a magnetized sphere gives the phase ``C (3 cos^2(theta) - 1) / r^3`` (theta: angle to
    ``b0``, a unit vector in grid axes). A voxel of sides ``spacing`` over which the phase changes with
    gradient ``g`` keeps the magnitude ``prod_a 1 / sqrt(1 + (g_a spacing_a)^2 / 12)`` (the box average
    of a linear phase ramp, without its sinc ripples). ``C`` is set so that on the equator the
    half-signal contour lies at ``diameter / 2`` for cubic voxels of ``reference_voxel_mm``; so the
    dark spot is ~1.19x longer along B0 than across it, keeps its signal on the magic-angle cones, and
    grows with the voxel size (slice thickness included) as blooming does.
    """
    rad = diameter / 2.0
    b0 = np.asarray(b0, float) / np.linalg.norm(b0)
    parts = sources or ((np.zeros(3), 1.0),)
    reach = max(float(np.linalg.norm(o)) + rad * s for o, s in parts)
    ext = 1.6 * reach * (max(1.0, float(spacing.max()) / reference_voxel_mm)) ** 0.25 + spacing
    box = _subvoxel_box(att.shape, centre, ext, spacing, diameter)
    if box is None:
        return
    fine = box[2]
    grid = np.meshgrid(*fine, indexing="ij", sparse=True)
    gradient = [np.zeros((len(fine[0]), len(fine[1]), len(fine[2])), np.float64) for _ in range(3)]
    core = np.zeros(gradient[0].shape, bool)
    for offset, scale in parts:
        d = [g - o for g, o in zip(grid, np.asarray(offset, float))]
        r2 = np.maximum(d[0] ** 2 + d[1] ** 2 + d[2] ** 2, 1e-6)
        along = d[0] * b0[0] + d[1] * b0[1] + d[2] * b0[2]
        r_edge = rad * scale
        # equator: |grad| = 3C / r^4; half signal where |grad| * voxel = 6 (1/sqrt(1 + 36/12) = 1/2)
        strength = 2.0 * r_edge**4 / reference_voxel_mm
        inv5, inv7 = r2**-2.5, r2**-3.5
        for a in range(3):
            gradient[a] += strength * (6.0 * along * b0[a] * inv5 - 15.0 * along**2 * d[a] * inv7 + 3.0 * d[a] * inv5)
        core |= r2 < (core_fraction * r_edge) ** 2
    kept = np.ones(core.shape, np.float64)
    for a in range(3):
        kept /= np.sqrt(1.0 + (gradient[a] * spacing[a]) ** 2 / 12.0)
    _max_voxel_means(att, box, 1.0 - np.where(core, kept * (1.0 - core_depth), kept))


# ---------------------------------------------------------------------------
# artefacts, noise, storage


def bias_field(rng: np.random.Generator, shape: np.ndarray, strength: float) -> np.ndarray:
    """Smooth multiplicative field with max |relative deviation| ~ strength."""
    nodes = [5, 5, 4]
    coef = rng.normal(size=nodes).astype(np.float32)
    ws = [bspline_weights(np.arange(n), m, max((n - 1) / (m - 3), 1e-3)) for n, m in zip(shape, nodes)]
    f = tensor_field(coef, *ws)
    f /= max(float(np.abs(f).max()), 1e-6)
    return np.exp(np.log1p(strength) * f).astype(np.float32)


def ringing(rng: np.random.Generator, img: np.ndarray, strength: float, phase_axis: int = 0) -> np.ndarray:
    """Motion ghosting along the phase axis and mild Gibbs ringing (in-plane), slice by slice."""
    from scipy import fft

    n = img.shape[phase_axis]
    read_axis = 1 - phase_axis
    ph = np.zeros(n, np.float32)
    hit = rng.random(n) < 0.3
    ph[hit] = rng.normal(0, 2.0 * strength * np.pi, hit.sum())
    err = np.exp(1j * ph).astype(np.complex64)
    cut = 0.5 - strength * 1.5  # Gibbs: truncate the outer k-space band a little
    keep = [(np.abs(fft.fftfreq(img.shape[a])) <= cut).astype(np.float32) for a in (0, 1)]
    shp_p = [1, 1, 1]
    shp_p[phase_axis] = n
    shp_r = [1, 1, 1]
    shp_r[read_axis] = img.shape[read_axis]
    filt_p = (err * keep[phase_axis]).reshape(shp_p)
    filt_r = keep[read_axis].reshape(shp_r)
    out = np.empty_like(img, dtype=np.float32)
    step = max(1, int(4_000_000 // max(img.shape[0] * img.shape[1], 1)))
    for k0 in range(0, img.shape[2], step):
        sl = img[:, :, k0 : k0 + step]
        k = fft.fftn(sl.astype(np.complex64), axes=(0, 1), workers=2)
        k *= filt_p
        k *= filt_r
        out[:, :, k0 : k0 + step] = np.abs(fft.ifftn(k, axes=(0, 1), workers=2, overwrite_x=True))
    return out


def add_noise(rng: np.random.Generator, img: np.ndarray, sigma: float, rician: bool) -> np.ndarray:
    n1 = rng.standard_normal(img.shape, dtype=np.float32)
    if not rician:
        return img + sigma * n1
    n1 *= sigma
    n1 += img
    n2 = rng.standard_normal(img.shape, dtype=np.float32)
    n2 *= sigma
    np.square(n1, out=n1)
    np.square(n2, out=n2)
    n1 += n2
    return np.sqrt(n1, out=n1)


def to_storage(img: np.ndarray, p: Protocol) -> np.ndarray:
    """Scale (CSF ~ 1 -> p.max_value) and cast to the protocol's stored dtype."""
    v = img * np.float32(p.max_value)
    if p.dtype == "int16":
        return np.clip(np.round(v / p.slope), 0, 32767).astype(np.int16)
    if p.dtype == "uint16":
        return np.clip(np.round(v / p.slope), 0, 65535).astype(np.uint16)
    return v.astype(np.float32)


def cavity_centres() -> list[np.ndarray]:
    return [np.asarray(c) for items in AIR_CAVITIES_MNI.values() for c, _ in items]
