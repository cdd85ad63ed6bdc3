"""Phantom family "delta": an independent SWI / T2*-GRE simulator (validation family).

Site personality (see the modules for details):

* anatomy: MNI152 maps (:mod:`cmbdet.anatomy`) under a per-subject cubic-polynomial warp, brain
  size 0.85–1.15, head rotation up to 15 degrees about any axis, ventricular enlargement and
  sulcal widening (:mod:`.head`);
* contrast from relaxometry: proton density and R2* per tissue, R2* growing with field, extra
  R2* in the iron-rich nuclei; CSF rim, dark skull, bright scalp;
* veins as cubic splines (medullary, transcortical perforators, pial, deep veins, sinuses) rendered
  as magnetised cylinders: blood signal inside, 2-D dipole phase outside and its analytic
  intravoxel dephasing, so contrast depends on calibre, angle to B0, field, TE and voxel size
  (:mod:`.veins`, :mod:`.scanner`);
* microbleeds, iron foci and calcifications as magnetised spheres (dipole dephasing, opposite
  phase for calcium) whose visible size is solved for the protocol (:mod:`.foci`);
* a smooth field from the air cavities (rotating with the head) and the iron nuclei: air–bone
  dropout arises from its gradients across the voxel and through the slice;
* acquisition: 1.5 / 3 T, TE 15–40 ms, magnitude GRE or SWI (Gaussian high-pass phase, negative
  mask applied 2–5 times), in-plane 0.5–1.0 mm, slices 1–5 mm integrated from sub-slices, optional
  k-space truncation, an exp-Legendre bias, complex (Rician) noise, a random signed axis
  permutation in storage, occasional oblique slabs and vertex cuts, int16 or float32
  (:mod:`.protocol`, :mod:`.scanner`).

Use :func:`make_subject`; nothing here runs at import.
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np

from cmbdet.anatomy import mni_maps
from cmbdet.phantom.generate import PhantomSubject

from .foci import landmark_mimics, omega_te, place_cmbs, place_focal_mimics, sample_cmb_count
from .head import field_map_ppm, sample_contrast, sample_pose, signal_map
from .protocol import DeltaProtocol, sample_protocol
from .scanner import SliceGrid, acquire, place_grid, render_foci, render_veins, sample_head, store
from .veins import KINDS, VeinSamples, grow_veins

__all__ = ["DeltaProtocol", "make_subject", "sample_protocol"]


def _row(w: np.ndarray, **extra) -> dict:
    return {"x_mm": float(w[0]), "y_mm": float(w[1]), "z_mm": float(w[2]), **extra}


def steep_vein_points(rng: np.random.Generator, veins: VeinSamples, grid: SliceGrid, in_brain, avoid: list[np.ndarray],
                      limit: int) -> list[dict]:
    """Thin vein samples crossing the slices steeply (a round dark dot in one slice), >= 8 mm apart."""
    slice_axis = grid.axes[:, 2]
    cos = np.abs(veins.tangent @ slice_axis)
    thin = np.isin(veins.kind, [KINDS.index("medullary"), KINDS.index("perforator"), KINDS.index("pial")])
    cand = np.flatnonzero(thin & (veins.radius_mm <= 0.5) & (cos >= 0.75))
    taken = list(avoid)
    out: list[dict] = []
    for i in rng.permutation(cand):
        w = veins.points[i]
        if not grid.inside(w, 1.0) or not in_brain(w) or any(np.linalg.norm(w - a) < 8.0 for a in taken):
            continue
        taken.append(w)
        out.append(_row(w, kind="vein", detail=f"{KINDS[veins.kind[i]]} r={veins.radius_mm[i]:.2f}mm "
                                               f"cos_slice={cos[i]:.2f}"))
        if len(out) >= limit:
            break
    return out


def flow_void_points(veins: VeinSamples, grid: SliceGrid) -> list[dict]:
    """The middle of each artery drawn as a flow void (listed as kind 'vein')."""
    out = []
    artery = veins.kind == KINDS.index("artery")
    for v in np.unique(veins.vein[artery]):
        idx = np.flatnonzero(veins.vein == v)
        w = veins.points[idx[len(idx) // 2]]
        if grid.inside(w, 1.0):
            out.append(_row(w, kind="vein", detail=f"artery flow void r={veins.radius_mm[idx[len(idx) // 2]]:.2f}mm"))
    return out


def make_subject(rng: np.random.Generator, *, subject: str, tiny: bool = False) -> PhantomSubject:
    """One simulated delta scan and its truth, deterministic for a given ``rng`` state.

    ``image``: 3-D magnitude (stored grid, any axis order); ``cmbs``: scanner-RAS centre (mm),
    visible ``diameter_mm``, ``region`` (lobar/deep/infratentorial); ``mimics``: vein / iron /
    air_bone / calcification points; ``protocol``: a :class:`DeltaProtocol`.  ``tiny``: 2.5–3 mm
    voxels, at most 80 per axis, larger microbleeds (for tests).
    """
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    proto = sample_protocol(rng, tiny=tiny)
    maps2 = mni_maps(2)
    maps = maps2 if tiny else mni_maps(1)
    pose = sample_pose(rng)
    tc = sample_contrast(rng, proto.field_t)
    grid = place_grid(rng, proto, pose, maps2, tc.rim_csf_mm + tc.skull_mm + tc.scalp_mm)
    proto = replace(proto, sub_slices=grid.sub)  # the grid may afford fewer sub-slices
    w_te = omega_te(proto.field_t, proto.te_ms)
    times["setup_s"] = time.perf_counter() - t0

    t = time.perf_counter()
    spacing = float(np.clip(0.5 * grid.fine_voxel_mm.min(), 0.2, 0.8))
    veins = grow_veins(rng, maps2, pose, density=0.35 if tiny else float(rng.uniform(0.6, 1.4)), spacing_mm=spacing)
    times["veins_s"] = time.perf_counter() - t

    t = time.perf_counter()
    signal = signal_map(maps, tc, proto.te_ms, rng)
    field = field_map_ppm(maps2, pose, tc, rng)
    mag, phase = sample_head(grid, pose, signal, maps, field, maps2, w_te)
    del signal, field
    times["head_s"] = time.perf_counter() - t

    t = time.perf_counter()
    te = proto.te_ms / 1000.0
    blood = tc.pd["blood"] * np.exp(-te * tc.r2s["blood"])
    render_veins(mag, phase, grid, veins, w_te, float(rng.uniform(0.35, 0.65)), float(blood))
    times["veins_render_s"] = time.perf_counter() - t

    t = time.perf_counter()
    voxel = float(np.prod(grid.fine_voxel_mm) ** (1.0 / 3.0))
    cmbs = place_cmbs(rng, sample_cmb_count(rng, tiny=tiny), maps2, pose, veins, grid.inside, w_te, voxel, tiny=tiny)
    focal = place_focal_mimics(rng, pose, grid.inside, w_te, voxel, cmbs)
    render_foci(mag, phase, grid, cmbs + focal, w_te)
    times["foci_s"] = time.perf_counter() - t

    t = time.perf_counter()
    wm = tc.pd["wm"] * np.exp(-te * tc.r2s["wm"])
    out = acquire(rng, proto, grid, mag, phase, float(wm))
    del mag, phase
    image = store(rng, proto, grid, out)
    times["acquire_s"] = time.perf_counter() - t

    def in_brain(w: np.ndarray) -> bool:
        ijk = np.rint(maps2.mm_to_vox(pose.world_to_mni(w[None]))[0]).astype(int)
        return bool(np.all(ijk >= 0) and np.all(ijk < maps2.shape) and maps2.brain[tuple(ijk)])

    cmb_rows = [_row(f.centre_world, diameter_mm=round(f.diameter_mm, 3), region=f.region,
                     mni_x=float(f.centre_mni[0]), mni_y=float(f.centre_mni[1]), mni_z=float(f.centre_mni[2]),
                     core_mm=round(f.core_mm, 3), strength=round(f.strength, 3)) for f in cmbs]
    mimics = landmark_mimics(pose, grid.inside)
    mimics += [_row(f.centre_world, kind=f.kind, detail=f"{f.detail} d={f.diameter_mm:.1f}mm") for f in focal]
    mimics += flow_void_points(veins, grid)
    mimics += steep_vein_points(rng, veins, grid, in_brain, [f.centre_world for f in cmbs + focal],
                                limit=10 if tiny else 25)
    times["total_s"] = time.perf_counter() - t0
    return PhantomSubject(subject=subject, image=image, cmbs=cmb_rows, mimics=mimics, protocol=proto,
                          geometry=None, timings=times)
