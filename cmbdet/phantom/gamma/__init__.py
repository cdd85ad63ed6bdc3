"""Phantom family "gamma": the held-out TEST family.

Written independently of the training/validation phantom code (own head
warp, tissue model, vein tree, microbleed profile, SWI phase, coil noise and
storage conventions). One call builds one subject::

    from cmbdet.phantom.gamma import make_subject
    ph = make_subject(np.random.default_rng([seed, i]), subject="g0001")

Truth: ``ph.cmbs`` (scanner RAS mm of ``ph.image.affine``, bloomed diameter,
MARS region) and ``ph.mimics`` (veins cut steeply by the slices, iron,
air–bone dropout, calcifications, cavernomas).
"""

from __future__ import annotations

import time

import nibabel as nib
import numpy as np
from scipy.spatial import cKDTree

from cmbdet.phantom.generate import PhantomSubject

__all__ = ["make_subject"]


def make_subject(rng: np.random.Generator, *, subject: str, tiny: bool = False) -> PhantomSubject:
    """Draw one gamma subject from ``rng`` (deterministic for a given state).

    ``tiny``: a small scan (<= 80^3 voxels, ~2.5–3 mm voxels, large CMBs) for tests.
    """
    from cmbdet.phantom.gamma import acquisition as acq
    from cmbdet.phantom.gamma.head import head_maps, sample_warp
    from cmbdet.phantom.gamma.lesions import place_cmbs, place_mimics, sample_cmb_count
    from cmbdet.phantom.gamma.objects import FineCanvas, VeinLook
    from cmbdet.phantom.gamma.tissue import mni_signal, tissue_params
    from cmbdet.phantom.gamma.veins import KIND_NAMES, SINUS, grow_veins

    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    maps2 = head_maps(2)
    maps = maps2 if tiny else head_maps(1)
    timings["templates_s"] = time.perf_counter() - t0

    pp = acq.sample_protocol_params(rng, tiny)
    warp, atrophy = sample_warp(rng)
    surf = maps2.surf_seeds[::8]
    grid, tilt, coverage = acq.make_grid(rng, pp, warp, surf, tiny)
    tp = tissue_params(rng, pp["field_t"])
    swi = pp["contrast"] == "swi"

    t = time.perf_counter()
    veins = grow_veins(maps2, rng, density=0.35 if tiny else 1.0)
    vw = warp.to_world(veins.points)
    look = VeinLook(
        dark_small=float(rng.uniform(0.55, 0.95)),
        dark_sinus=float(rng.uniform(0.3, 0.9)),
        bloom_gain=float(rng.uniform(1.0, 3.0)),
        phase_rad=float(rng.uniform(1.0, 3.0)),
    )
    timings["veins_s"] = time.perf_counter() - t

    t = time.perf_counter()
    mimic_blobs, mimics, blocked = place_mimics(rng, maps2, warp, grid, tiny)
    reach = veins.radius_mm * (1.0 + 1.6 * look.bloom_gain * (pp["field_t"] / 3.0) * (pp["te_ms"] / 20.0)) + 0.5
    tree = cKDTree(vw)
    cmb_blobs, cmbs = place_cmbs(rng, sample_cmb_count(rng, tiny), maps2, warp, grid, tree, reach, blocked, pp, tiny)
    mimics += _vein_mimics(rng, veins, vw, grid, KIND_NAMES, SINUS)
    timings["lesions_s"] = time.perf_counter() - t

    t = time.perf_counter()
    sig, phase_mni, _ref = mni_signal(maps, tp, pp, atrophy, rng, swi)
    spacing = 2.0 if tiny else 1.0
    box_o, box_shape = acq.world_box(grid, warp, spacing)
    box = acq.pull_to_box(maps.affine, [sig], warp, box_o, box_shape, spacing)[0]
    tissue = acq.box_to_slices(box, box_o, spacing, grid, 1 if pp["voxel"][2] <= 1.5 else 2)
    del box, sig
    iron_phase = None
    if swi:  # the high-passed iron phase is smooth: pull it on a 2 mm box
        po, pshape = acq.world_box(grid, warp, 2.0)
        pbox = acq.pull_to_box(maps.affine, [phase_mni], warp, po, pshape, 2.0)[0]
        iron_phase = acq.box_to_slices(pbox, po, 2.0, grid, 1)
    del phase_mni
    timings["tissue_s"] = time.perf_counter() - t

    t = time.perf_counter()
    canvas = FineCanvas(grid, swi)
    # render on ~1.6 mm segments: join every second point
    sel = _every_second(veins.vein_id)
    p = vw[sel]
    vid = veins.vein_id[sel]
    rad = veins.radius_mm[sel]
    same = vid[:-1] == vid[1:]
    seg_idx = np.flatnonzero(same)
    pos_in_vein = np.arange(len(vid)) - np.searchsorted(vid, vid)  # vein ids are ascending
    chunk = vid[seg_idx] * 100000 + pos_in_vein[seg_idx] // 3
    canvas.add_vein_segments(
        p[seg_idx], p[seg_idx + 1], 0.5 * (rad[seg_idx] + rad[seg_idx + 1]), chunk, look, pp["field_t"], pp["te_ms"]
    )
    for b in mimic_blobs + cmb_blobs:
        canvas.add_blob(b, rng)
    dark, obj_phase = canvas.integrate()
    del canvas
    timings["objects_s"] = time.perf_counter() - t

    t = time.perf_counter()
    img = tissue * (1.0 - dark)
    del dark
    if swi:
        ph = np.clip(obj_phase + np.maximum(iron_phase, 0.0), 0.0, np.pi)  # type: ignore[operator]
        img *= (1.0 - ph / np.pi) ** pp["swi_mask_power"]
    bias, gmap = acq.coil_fields(rng, grid, pp["n_coils"], pp["field_t"], pp["g_factor_max"])
    img *= bias
    img = acq.add_artefacts(rng, img, pp["ghosting"], pp["ringing"])
    sigma = (gmap / pp["snr"]).astype(np.float32)
    img = acq.coil_noise(rng, img.astype(np.float32), sigma, pp["n_coils"])
    image, storage, slope, qform_only = acq.store(rng, img, grid, pp["axcodes"])
    timings["noise_store_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t0

    zooms = image.header.get_zooms()
    protocol = acq.GammaProtocol(
        family="gamma",
        vendor_style=pp["style"],
        field_t=pp["field_t"],
        te_ms=round(pp["te_ms"], 2),
        tr_ms=round(pp["tr_ms"], 2),
        flip_deg=round(pp["flip_deg"], 2),
        contrast=pp["contrast"],
        swi_mask_power=pp["swi_mask_power"] if swi else 0,
        voxel_x_mm=round(float(zooms[0]), 4),
        voxel_y_mm=round(float(zooms[1]), 4),
        voxel_z_mm=round(float(zooms[2]), 4),
        in_plane_mm=round(float(pp["voxel"][0]), 4),
        slice_mm=round(float(pp["voxel"][2]), 4),
        nx=int(image.shape[0]),
        ny=int(image.shape[1]),
        nz=int(image.shape[2]),
        axcodes="".join(nib.aff2axcodes(image.affine)),
        tilt_deg=round(tilt, 2),
        coverage=coverage,
        snr=round(pp["snr"], 2),
        n_coils=pp["n_coils"],
        g_factor_max=round(pp["g_factor_max"], 3),
        ghosting=round(pp["ghosting"], 3),
        ringing=round(pp["ringing"], 3),
        storage=storage,
        scl_slope=round(slope, 6),
        qform_only=qform_only,
    )
    return PhantomSubject(
        subject=subject,
        image=image,
        cmbs=cmbs,
        mimics=mimics,
        protocol=protocol,  # type: ignore[arg-type]
        geometry=None,
        timings=timings,
    )


def _every_second(vein_id: np.ndarray) -> np.ndarray:
    """Indices keeping every second point of each polyline plus its last point."""
    n = len(vein_id)
    start = np.r_[True, vein_id[1:] != vein_id[:-1]]
    end = np.r_[vein_id[1:] != vein_id[:-1], True]
    first = np.maximum.accumulate(np.where(start, np.arange(n), 0))
    return np.flatnonzero((((np.arange(n) - first) % 2) == 0) | end)


def _vein_mimics(rng: np.random.Generator, veins, vw: np.ndarray, grid, kind_names: dict, sinus: int) -> list[dict]:
    """Points where thin veins run steeply through the slices (dot-like), plus a few others."""
    same = np.r_[veins.vein_id[1:] == veins.vein_id[:-1], False]
    d = np.zeros_like(vw)
    d[same] = vw[1:][same[:-1]] - vw[:-1][same[:-1]]
    norm = np.linalg.norm(d, axis=1)
    steep = np.abs(d @ grid.rot[:, 2]) / np.maximum(norm, 1e-9)
    cand = same & (norm > 0) & (veins.radius_mm <= 0.75) & (veins.kind != sinus) & (steep >= 0.8)
    cand &= grid.in_fov(vw, margin_vox=1.0)
    order = rng.permutation(np.flatnonzero(cand))
    chosen: list[int] = []
    for i in order:
        if len(chosen) >= 25:
            break
        if all(np.linalg.norm(vw[i] - vw[j]) >= 8.0 for j in chosen):
            chosen.append(int(i))
    rows = [
        {
            "x_mm": float(vw[i][0]),
            "y_mm": float(vw[i][1]),
            "z_mm": float(vw[i][2]),
            "kind": "vein",
            "detail": f"{kind_names[int(veins.kind[i])]} vein r={veins.radius_mm[i]:.2f}mm "
            f"through-slice cos={steep[i]:.2f}",
        }
        for i in chosen
    ]
    other = np.flatnonzero(same & (veins.kind == sinus) & grid.in_fov(vw, margin_vox=1.0))
    for i in rng.permutation(other)[:3]:
        rows.append(
            {
                "x_mm": float(vw[i][0]),
                "y_mm": float(vw[i][1]),
                "z_mm": float(vw[i][2]),
                "kind": "vein",
                "detail": f"dural sinus r={veins.radius_mm[i]:.2f}mm",
            }
        )
    return rows
