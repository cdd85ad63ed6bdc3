"""Validation phantom family "beta": an independent SWI / T2*-GRE simulator.

Site personality: a mix of 3 T SWI (0.5–0.8 mm in-plane, 1–2.5 mm slices, high-pass filtered
phase mask applied 3–5 times) and 1.5 T GRE (0.8–1.0 mm in-plane, 3–5 mm slices, magnitude);
MNI152 anatomy warped per subject (smooth random field, ventricle enlargement, brain scaling,
head tilt up to 20°); veins grown by random walkers (medullary, cortical perforators, pial,
deep veins, sinuses) with angle-to-B0 dependent fields; microbleeds with blooming that grows
with TE, field and slice thickness; iron, calcification and air–bone mimics; sub-slice
integration of the complex signal, ring-coil bias, g-factor noise, ghosts and ringing; any of
several axis orders, oblique grids and storage types.

Use :func:`make_subject`; nothing here runs at import.
"""

from __future__ import annotations

import time

import numpy as np
from scipy.spatial import cKDTree

from cmbdet.anatomy import mni_maps
from cmbdet.phantom.generate import PhantomSubject

from .deform import background_field_ppm, intensity_map, sample_contrast, sample_warp
from .draw import draw_blob, draw_tube
from .lesions import anatomical_mimics, sample_calcifications, sample_cmb_count, sample_cmbs
from .protocol import BetaProtocol, sample_protocol
from .scanner import acquire, phase_per_ppm, place_grid, sample_anatomy, store
from .veins import Vein, grow_veins

__all__ = ["BetaProtocol", "make_subject", "sample_protocol"]


def _dense(points: np.ndarray, radius: np.ndarray, step: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Resample a polyline to <= ``step`` mm spacing (points (N, 3), radius (N,))."""
    out_p, out_r = [points[:1]], [radius[:1]]
    for a, b, ra, rb in zip(points[:-1], points[1:], radius[:-1], radius[1:]):
        n = max(int(np.ceil(np.linalg.norm(b - a) / step)), 1)
        t = (np.arange(1, n + 1) / n)[:, None]
        out_p.append(a + t * (b - a))
        out_r.append(ra + t[:, 0] * (rb - ra))
    return np.concatenate(out_p), np.concatenate(out_r)


def _point(world: np.ndarray, **extra) -> dict:
    return {"x_mm": float(world[0]), "y_mm": float(world[1]), "z_mm": float(world[2]), **extra}


def _steep_vein_points(rng, veins_world: list[tuple[Vein, np.ndarray]], slice_axis: np.ndarray, grid,
                       brain_at, avoid: list[np.ndarray], limit: int = 12) -> list[dict]:
    """Midpoints of thin vein segments crossing the slices steeply (dot-like cross-sections)."""
    cands = []
    for v, pw in veins_world:
        if v.kind not in ("medullary", "perforator", "pial"):
            continue
        seg = np.diff(pw, axis=0)
        ln = np.linalg.norm(seg, axis=1)
        ok = ln > 1e-6
        cosang = np.abs(seg @ slice_axis) / np.maximum(ln, 1e-6)
        for s in np.nonzero(ok & (cosang >= 0.8) & (v.radius[:-1] <= 0.6))[0]:
            mid_w = 0.5 * (pw[s] + pw[s + 1])
            mid_m = 0.5 * (v.points[s] + v.points[s + 1])
            cands.append((mid_w, mid_m, v.kind, float(v.radius[s]), float(cosang[s])))
    order = rng.permutation(len(cands))
    out: list[dict] = []
    taken: list[np.ndarray] = list(avoid)
    for i in order:
        w, m, kind, r, c = cands[i]
        if not grid.inside(w, 1.0) or not brain_at(m):
            continue
        if any(np.linalg.norm(w - t) < 6.0 for t in taken):
            continue
        taken.append(w)
        out.append(_point(w, kind="vein", detail=f"{kind} r={r:.2f}mm cos_slice={c:.2f}"))
        if len(out) >= limit:
            break
    return out


def make_subject(rng: np.random.Generator, *, subject: str, tiny: bool = False) -> PhantomSubject:
    """One simulated "beta"-site scan with its microbleed and mimic truth.

    Returns a PhantomSubject: ``image`` 3-D magnitude in the protocol's stored grid; ``cmbs``
    dicts with scanner-RAS centre (mm), visible ``diameter_mm``, MARS ``region`` (+ ``mni_*``,
    ``depth``); ``mimics`` (vein / iron / air_bone / calcification points); ``protocol`` a
    :class:`BetaProtocol`.  Deterministic for a given ``rng`` state.
    """
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    proto = sample_protocol(rng, tiny=tiny)
    maps = mni_maps(2 if tiny else 1)
    maps2 = mni_maps(2)
    warp, _info = sample_warp(rng, maps2)
    contrast = sample_contrast(rng, proto.field_t, proto.te_ms)
    grid = place_grid(rng, proto, warp)
    times["setup_s"] = time.perf_counter() - t0

    t = time.perf_counter()
    veins = grow_veins(rng, maps2, density=float(rng.uniform(0.3, 0.5) if tiny else rng.uniform(0.5, 1.5)))
    times["veins_grow_s"] = time.perf_counter() - t

    t = time.perf_counter()
    inten_mni = intensity_map(maps, contrast)
    field_mni = background_field_ppm(maps, contrast)
    mag_f, phase_f = sample_anatomy(grid, warp, maps, inten_mni, field_mni, proto,
                                   2.0 if tiny else 1.3, rng, contrast.texture)
    del inten_mni, field_mni
    times["anatomy_s"] = time.perf_counter() - t

    t = time.perf_counter()
    atten = np.ones(grid.fine.shape, np.float32)
    field = np.zeros(grid.fine.shape, np.float32)
    chi_vein = float(rng.uniform(0.25, 0.45))
    vein_bloom = 1.4 * float(np.sqrt(chi_vein / 0.35 * proto.field_t / 3.0 * proto.te_ms / 20.0))
    veins_world = []
    dense_p, dense_r = [], []
    for v in veins:
        pw = warp.to_world(v.points)
        veins_world.append((v, pw))
        draw_tube(grid.fine, atten, field, pw, v.radius, chi_ppm=chi_vein, blood_frac=contrast.blood_frac,
                  bloom=vein_bloom)
        p, r = _dense(pw, v.radius)
        dense_p.append(p)
        dense_r.append(r)
    tree = cKDTree(np.concatenate(dense_p)) if dense_p else None
    vrad = np.concatenate(dense_r) if dense_r else np.zeros(0)
    times["veins_draw_s"] = time.perf_counter() - t

    t = time.perf_counter()
    n_cmb = sample_cmb_count(rng, tiny=tiny)
    cmbs = sample_cmbs(rng, n_cmb, proto, warp.to_world, grid.inside, tree, vrad)
    calcs = sample_calcifications(rng, warp.to_world)
    for b in cmbs + calcs:
        draw_blob(grid.fine, atten, field, b.centre_world, b.axes, depth=b.depth, sharp=b.sharp, halo=b.halo,
                  chi_ppm=b.chi_ppm, core_mm=b.core_mm)
    mag_f *= atten
    del atten
    phase_f += field * np.float32(phase_per_ppm(proto))
    del field
    times["lesions_s"] = time.perf_counter() - t

    t = time.perf_counter()
    mag = acquire(rng, proto, grid, mag_f, phase_f)
    del mag_f, phase_f
    image = store(rng, proto, grid, mag)
    times["acquire_s"] = time.perf_counter() - t

    cmb_rows = [
        _point(b.centre_world, diameter_mm=round(b.diameter_mm, 3), region=b.region,
               mni_x=float(b.centre_mni[0]), mni_y=float(b.centre_mni[1]), mni_z=float(b.centre_mni[2]),
               depth=round(b.depth, 3))
        for b in cmbs
    ]
    brain2 = maps2.brain

    def brain_at(mni: np.ndarray) -> bool:
        ijk = np.round(maps2.mm_to_vox(mni[None])[0]).astype(int)
        return bool(np.all(ijk >= 0) and np.all(ijk < maps2.shape) and brain2[tuple(ijk)])

    mimics = [m for m in anatomical_mimics(warp.to_world)
              if grid.inside(np.array([m["x_mm"], m["y_mm"], m["z_mm"]]))]
    mimics += [_point(b.centre_world, kind="calcification", detail=b.detail) for b in calcs
               if grid.inside(b.centre_world)]
    mimics += _steep_vein_points(rng, veins_world, grid.rot[:, 2], grid, brain_at,
                                 [b.centre_world for b in cmbs])
    times["total_s"] = time.perf_counter() - t0
    return PhantomSubject(subject=subject, image=image, cmbs=cmb_rows, mimics=mimics, protocol=proto,
                          geometry=None, timings=times)
