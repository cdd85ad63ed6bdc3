"""Phantom family "epsilon": an independent SWI / T2*-GRE simulator (second validation family),
written to be hard in the ways real scans are hard for microbleed detectors.

* Head (:mod:`.head`): MNI152 anatomy (:mod:`cmbdet.anatomy`) under a per-subject rotation,
  anisotropic scale and smooth sum-of-sines warp; relaxometry per tissue and field (proton density
  with the short-TR T1 weighting, R2*), atrophy (wider sulci and ventricles), a layered head (CSF
  rim, inner table, diploe, outer table, scalp; face and neck; eyes; air cavities), lumpy bilateral
  iron in the deep nuclei (extra R2* and susceptibility).
* Vessels (:mod:`.veins`): named sinuses, deep veins (internal cerebral, basal vein of Rosenthal,
  Galen, thalamostriate, ...) and arteries from jittered MNI control points; tortuous walkers for
  deep medullary veins radiating from the ventricles, superficial medullary / transcortical, pial
  veins with joining tributaries, sulcal, lenticulostriate / thalamic and cerebellar veins.
* Foci (:mod:`.foci`): microbleeds as haemosiderin spheres sized so that their dipole field blooms
  to a drawn visible diameter (mostly 2–4 mm), lobar / deep / infratentorial by subject pattern,
  some beside small veins; ~25 % of subjects without; calcifications with diamagnetic phase.
* Scanner (:mod:`.scanner`, :mod:`.protocol`): 1.5 / 3 T, TE 12–40 ms, the field of every source by the
  dipole kernel (B0 along scanner z), intravoxel dephasing, blood partial volume with its own phase,
  complex sub-slice integration, coil shading, k-space truncation, partial Fourier, apodization,
  motion ghosts, complex noise (Rician), zero-filled reconstruction to 0.45–1.0 mm in-plane, slices
  1–4 mm, SWI (homodyne high-pass, phase mask to a power) or magnitude GRE, tilted and oblique slabs,
  any stored axis order and signs, int16 / uint16 / float32.

Truth: each microbleed's scanner-RAS centre, visible diameter and MARS region (plus its MNI centre,
deposit radius, susceptibility), a label map in the stored grid, and mimic points (veins that cross
the slices steeply, vein junctions, flow voids, iron nuclei, air–bone zones, calcifications).

Use :func:`make_subject`; nothing here runs at import.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import nibabel as nib
import numpy as np

from cmbdet.anatomy import AIR_BONE_ZONES_MNI, IRON_NUCLEI_MNI, mni_maps
from cmbdet.phantom.generate import PhantomSubject

from .foci import place_calcifications, place_cmbs, sample_cmb_count
from .head import background_field, iron_map, sample_pose, sample_tissue, signal_map, upsample2
from .protocol import EpsilonProtocol, sample_protocol
from .scanner import acquire, build_scene, complex_image, label_map, place_grid, sample_maps, store
from .veins import KINDS, THIN, grow_vessels

__all__ = ["EpsilonProtocol", "EpsilonSubject", "make_subject", "sample_protocol"]


@dataclass
class EpsilonSubject(PhantomSubject):
    """A :class:`~cmbdet.phantom.generate.PhantomSubject` with the truth label map (uint16, the
    image's grid: microbleed ``n`` of ``cmbs`` is label ``n``; 0 elsewhere)."""

    labels: nib.Nifti1Image | None = field(default=None, repr=False)


def _row(w: np.ndarray, **extra) -> dict:
    return {"x_mm": float(w[0]), "y_mm": float(w[1]), "z_mm": float(w[2]), **extra}


def _in_image(img: nib.Nifti1Image, w: np.ndarray) -> bool:
    ijk = nib.affines.apply_affine(np.linalg.inv(img.affine), w)
    return bool(np.all(ijk >= -0.5) and np.all(ijk <= np.asarray(img.shape) - 0.5))


def make_subject(rng: np.random.Generator, *, subject: str, tiny: bool = False) -> EpsilonSubject:
    """One simulated epsilon scan and its truth, deterministic for a given ``rng`` state.

    ``image``: 3-D magnitude in the stored grid (any axis order; the affine maps voxels to scanner
    RAS mm); ``cmbs``: ``x_mm, y_mm, z_mm`` (scanner RAS), visible ``diameter_mm``, ``region``
    (lobar/deep/infratentorial), ``mni_x/y/z``, ``core_mm``, ``chi_ppm``, ``detail``; ``mimics``: vein /
    iron / air_bone / calcification points; ``labels``: truth label map. ``tiny``: 2.5–3 mm voxels,
    few, large microbleeds (for tests)."""
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    proto = sample_protocol(rng, tiny=tiny)
    maps2 = mni_maps(2)
    maps = maps2 if tiny else mni_maps(1)
    pose = sample_pose(rng)
    tissue = sample_tissue(rng, proto.field_t)
    grid, proto = place_grid(rng, proto, pose, maps2, tissue)
    times["setup_s"] = time.perf_counter() - t0

    t = time.perf_counter()
    step = 1.0 if tiny else 0.5
    vessels = grow_vessels(maps2, rng, density=0.3 if tiny else float(rng.uniform(0.7, 1.3)), step=step)
    times["vessels_s"] = time.perf_counter() - t

    t = time.perf_counter()
    iron2 = iron_map(maps2, tissue, rng)
    iron = iron2 if tiny else upsample2(iron2, maps.shape)
    signal = signal_map(maps, tissue, proto.te_ms, proto.field_t, iron, rng)
    del iron
    bg = background_field(maps2, tissue, pose, iron2)
    fine_signal, fine_bg = sample_maps(grid, pose, [(signal, maps), (bg, maps2)])
    del signal
    times["head_s"] = time.perf_counter() - t

    t = time.perf_counter()

    def inside_scan(p: np.ndarray, margin: float) -> bool:
        return grid.inside(pose.mni_to_world(p[None]), margin)

    n = sample_cmb_count(rng)
    cmbs = place_cmbs(rng, min(n, 4) if tiny else n, maps, vessels, inside_scan, field_t=proto.field_t,
                      te_ms=proto.te_ms, tiny=tiny)
    calcs = place_calcifications(rng, proto.field_t, proto.te_ms, inside_scan)
    scale = float(np.cbrt(abs(np.linalg.det(pose.matrix))))
    vessels_w = pose.mni_to_world(vessels.points)
    foci_w = [(pose.mni_to_world(f.centre_mni[None])[0], f) for f in cmbs + calcs]
    scene = build_scene(grid, vessels_w, vessels, step, foci_w, proto, scale)
    times["scene_s"] = time.perf_counter() - t

    t = time.perf_counter()
    artery_level = float(rng.uniform(0.05, 0.25) if proto.arteries_dark else rng.uniform(1.0, 1.3))
    slices = complex_image(grid, proto, fine_signal, fine_bg, scene, tissue.signal("blood", proto.te_ms),
                           artery_level)
    del fine_signal, fine_bg, scene
    times["signal_s"] = time.perf_counter() - t

    t = time.perf_counter()
    wm = tissue.signal("wm", proto.te_ms)
    data, rec, proto = acquire(rng, proto, grid, slices, wm / proto.snr)
    del slices
    image = store(rng, proto, data, rec, max(tissue.signal("csf", proto.te_ms), tissue.signal("gm", proto.te_ms)))
    del data
    centres = np.array([w for w, f in foci_w[:len(cmbs)]]).reshape(-1, 3)
    labels = label_map(image, centres, np.array([f.diameter_mm for f in cmbs]))
    times["acquire_s"] = time.perf_counter() - t

    cmb_rows = [_row(w, diameter_mm=round(f.diameter_mm, 3), region=f.region, mni_x=float(f.centre_mni[0]),
                     mni_y=float(f.centre_mni[1]), mni_z=float(f.centre_mni[2]), core_mm=round(f.core_mm * scale, 3),
                     chi_ppm=round(f.chi, 3), detail=f.detail) for w, f in foci_w[:len(cmbs)]]
    mimics = _mimics(rng, image, pose, vessels, vessels_w, foci_w[len(cmbs):], rec.axes[:, 2], proto, tiny)
    times["total_s"] = time.perf_counter() - t0
    return EpsilonSubject(subject=subject, image=image, cmbs=cmb_rows, mimics=mimics, protocol=proto, geometry=None,
                          timings=times, labels=labels)


def _mimics(rng, image, pose, vessels, vessels_w, calcs_w, slice_axis, proto, tiny) -> list[dict]:
    out: list[dict] = []
    for w, f in calcs_w:
        out.append(_row(w, kind="calcification", detail=f"{f.detail} d={f.diameter_mm:.1f}mm"))
    for name in ("globus_pallidus", "dentate", "substantia_nigra", "red_nucleus"):
        for c, _ in IRON_NUCLEI_MNI[name]:
            out.append(_row(pose.mni_to_world(np.asarray(c)[None])[0], kind="iron", detail=name))
    for name, pts in AIR_BONE_ZONES_MNI.items():
        for c in pts:
            out.append(_row(pose.mni_to_world(np.asarray(c)[None])[0], kind="air_bone", detail=name))
    art = vessels.kind == KINDS.index("artery")
    if proto.arteries_dark:
        for v in np.unique(vessels.vessel[art]):
            idx = np.flatnonzero(vessels.vessel == v)
            out.append(_row(vessels_w[idx[len(idx) // 2]], kind="vein", detail="artery flow void"))
    for j in vessels.junctions[: 5 if tiny else 15]:
        out.append(_row(pose.mni_to_world(j[None])[0], kind="vein", detail="junction"))
    # thin veins crossing the slices steeply: a round dark dot in one slice
    nxt = np.roll(vessels_w, -1, axis=0) - vessels_w
    same = np.roll(vessels.vessel, -1) == vessels.vessel
    cos = np.abs((nxt / np.maximum(np.linalg.norm(nxt, axis=1, keepdims=True), 1e-9)) @ slice_axis)
    thin = np.isin(vessels.kind, [KINDS.index(k) for k in THIN])
    taken: list[np.ndarray] = [np.array([m["x_mm"], m["y_mm"], m["z_mm"]]) for m in out]
    count = 0
    for i in rng.permutation(np.flatnonzero(thin & same & (cos >= 0.8))):
        w = vessels_w[i]
        if any(np.linalg.norm(w - a) < 8.0 for a in taken) or not _in_image(image, w):
            continue
        taken.append(w)
        out.append(_row(w, kind="vein", detail=f"{KINDS[vessels.kind[i]]} r={vessels.radius[i]:.2f}mm steep"))
        count += 1
        if count >= (10 if tiny else 25):
            break
    return [m for m in out if _in_image(image, np.array([m["x_mm"], m["y_mm"], m["z_mm"]]))]
