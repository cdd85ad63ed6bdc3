"""Realistic SWI / T2*-GRE phantom heads with cerebral microbleeds and their mimics.

What is modelled
----------------
* Anatomy: MNI152 2009a GM/WM templates (nilearn, offline) plus CSF = brain
  minus tissue, deformed per subject by a random affine (rotation +-8 deg,
  scale 0.9-1.1) and a smooth B-spline displacement field (~2-3 mm RMS, 25 mm
  nodes). Atrophy widens ventricles and sulci and the brain-skull CSF rim;
  Fazekas-graded white-matter hyperintensity-like patches (periventricular
  caps + deep spots) are mildly bright. A few-% smooth tissue texture.
* Head: synthesized around the brain envelope (CSF rim, skull with dark
  tables and intermediate diploe, galea, subcutaneous fat, skin), face/neck
  soft tissue, eyes, air sinuses and mastoid/ear air (see
  :mod:`cmbdet.anatomy`). Outside air is pure noise.
* Contrast: magnitude with CSF brightest, GM brighter than WM, bone dark,
  fat medium-bright. SWI: darker and more numerous veins, stronger iron and
  blooming; GRE: weaker vein contrast, stronger air-bone dropout.
* Veins (:mod:`.vessels`): sinuses, deep veins, medullary, pial, sulcal,
  lenticulostriate, cerebellar veins as 3-D tubes (visible diameter
  ~0.5-2.5 mm small veins, 3-9 mm sinuses) drawn analytically with voxel
  partial volume and orientation-to-B0 dependent darkening.
* Iron: bilateral soft-edged darkening of globus pallidus (strongest),
  putamen, caudate, substantia nigra, red nucleus, dentate. Calcification
  dots (pineal, choroid plexus) in some subjects.
* Air-bone susceptibility dropout near frontal/ethmoid/sphenoid sinuses,
  mastoids and ear canals, irregular, growing with field, TE, slice thickness
  (and worse on GRE).
* Acquisition: any voxel size/axis order/sign, oblique grids, slab coverage
  (sometimes cropping vertex or cerebellum), through-slice integration (box
  slice profile), smooth bias field (up to +-30 %), motion ghosting + Gibbs
  ringing in some scans, Rician noise (SNR 8-40; Gaussian for signed float
  storage), int16/uint16/float32 storage with varied scales and slopes.
* CMBs: round/ovoid foci, 2-10 mm visible (bloomed) diameter (mostly 2-5),
  very dark core with a soft edge, integrated over each voxel; placed in
  tissue via the MARS region map (lobar/deep/infratentorial ~60/30/10, with
  lobar- or deep-predominant subjects); ~35 % of subjects have none.

What is not modelled
--------------------
Phase images / QSM, true dipole blooming patterns (the ``randomized`` family's
``dipole_bloom`` ingredient adds them, in magnitude), flow artefacts, k-space
trajectory effects other than ghosting and truncation, multi-echo, real
cortical folding variability beyond the smooth deformation, cavernomas,
macro-haemorrhage, tumours, infarcts, superficial siderosis, coil-array noise
maps (noise is spatially uniform), fat-water chemical shift.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

from ..anatomy import (
    AIR_BONE_ZONES_MNI,
    CALCIFICATION_SITES_MNI,
    DEEP,
    INFRATENTORIAL,
    IRON_NUCLEI_MNI,
    LOBAR,
    REGION_NAMES,
    MniMaps,
    mni_maps,
)
from ..atomic import write_bytes_atomic
from ..volume import save_image_atomic
from .geometry import SubjectGeometry, make_geometry, rotation
from .protocol import Protocol, sample_protocol
from .randomize import (
    DIPOLE_BLOOM_SHARE,
    CmbProfile,
    Randomization,
    dipole_bloom_shape,
    multicoil_noise,
    randomize_cmb_diameter,
    randomize_slices,
    randomize_tissue,
    sample_cmb_profile,
    sample_vessel_style,
    swi_phase_mask,
)
from .render import (
    add_noise,
    bias_field,
    bloom_factor,
    fov_box,
    mni_magnitude,
    render_blob,
    render_dipole_bloom,
    render_tubes,
    ringing,
    sample_anatomy,
    sample_to_grid,
    to_storage,
)
from .vessels import generate_veins

TRUTH_COLUMNS = ["subject", "x_mm", "y_mm", "z_mm", "diameter_mm", "region"]
MIMIC_COLUMNS = ["subject", "x_mm", "y_mm", "z_mm", "kind", "detail"]


@dataclass
class PhantomSubject:
    subject: str
    image: nib.Nifti1Image  # 3-D magnitude, protocol grid/orientation
    cmbs: list[dict]  # x_mm, y_mm, z_mm (scanner RAS), diameter_mm, region (+ mni_x/y/z)
    mimics: list[dict]  # x_mm, y_mm, z_mm, kind ('vein'|'iron'|'air_bone'|'calcification'), detail
    protocol: Protocol
    geometry: SubjectGeometry | None = field(default=None, repr=False)
    timings: dict[str, float] = field(default_factory=dict, repr=False)


# ---------------------------------------------------------------------------
# CMB placement


@functools.lru_cache(maxsize=2)
def _cmb_pools(res: int) -> dict[int, np.ndarray]:
    maps = mni_maps(res)
    tissue = maps.gm + maps.wm
    pools = {
        LOBAR: (maps.regions == LOBAR) & (tissue >= 0.85) & (maps.gm >= 0.25) & (maps.d_env <= -1.0),
        DEEP: (maps.regions == DEEP) & (tissue >= 0.85) & (maps.d_vent >= 3.0),
        INFRATENTORIAL: (maps.regions == INFRATENTORIAL) & (tissue >= 0.85),
    }
    return {k: np.argwhere(v).astype(np.int16) for k, v in pools.items()}


def sample_cmb_count(rng: np.random.Generator) -> int:
    """~35 % zero; else skewed 1..~15, occasionally up to 30."""
    if rng.random() < 0.35:
        return 0
    if rng.random() < 0.07:
        return int(rng.integers(12, 31))
    return int(min(1 + rng.geometric(0.32) - 1 + (rng.random() < 0.3) * rng.integers(0, 4), 15))


def _cmb_diameter(rng: np.random.Generator, bloom: float) -> float:
    d = 2.0 + rng.gamma(1.3, 0.9)
    if rng.random() < 0.04:
        d = rng.uniform(6.0, 10.0)
    return float(np.clip(d * (0.85 + 0.15 * bloom), 2.0, 10.0))


def _inside_grid(g: np.ndarray, geom: SubjectGeometry, margin: np.ndarray) -> bool:
    ext = geom.spacing * (geom.shape - 1)
    return bool(np.all(g >= margin) and np.all(g <= ext - margin))


def _place_cmbs(rng, n, maps: MniMaps, geom: SubjectGeometry, bloom: float,
                size_rng: np.random.Generator | None = None) -> list[dict]:
    """``size_rng`` (the randomized family's `cmb_size` stream) redraws some diameters over the whole range."""
    pattern = rng.choice(["mixed", "lobar", "deep"], p=[0.5, 0.3, 0.2])
    probs = {"mixed": [0.58, 0.3, 0.12], "lobar": [0.85, 0.1, 0.05], "deep": [0.3, 0.55, 0.15]}[pattern]
    pools = _cmb_pools(maps.resolution)
    placed: list[dict] = []
    for _ in range(n):
        diam = _cmb_diameter(rng, bloom)
        if size_rng is not None:
            diam = randomize_cmb_diameter(diam, size_rng)
        for _attempt in range(60):
            reg = [LOBAR, DEEP, INFRATENTORIAL][int(rng.choice(3, p=probs))]
            pool = pools[reg]
            if len(pool) == 0:
                continue
            ijk = pool[int(rng.integers(len(pool)))].astype(float) + rng.uniform(-0.45, 0.45, 3)
            mni = ijk * maps.resolution + maps.affine[:3, 3]
            w = geom.mni_to_world(mni)[0]
            g = geom.world_to_gridmm(w)[0]
            margin = np.maximum(geom.spacing, diam / 2.0 + 1.0)
            if not _inside_grid(g, geom, margin):
                continue
            if any(np.linalg.norm(g - c["_grid"]) < 0.5 * (diam + c["diameter_mm"]) + 1.0 for c in placed):
                continue
            placed.append(
                {
                    "x_mm": float(w[0]),
                    "y_mm": float(w[1]),
                    "z_mm": float(w[2]),
                    "diameter_mm": round(diam, 3),
                    "region": REGION_NAMES[reg],
                    "mni_x": float(mni[0]),
                    "mni_y": float(mni[1]),
                    "mni_z": float(mni[2]),
                    "_grid": g,
                }
            )
            break
    return placed


# ---------------------------------------------------------------------------


def _base_resolution(p: Protocol, tiny: bool) -> int:
    return 2 if tiny or (p.inplane_mm >= 1.8 and p.slice_mm >= 1.8) else 1


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    a, b, c, d = q
    return np.array(
        [
            [a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
            [2 * (b * c + a * d), a * a - b * b + c * c - d * d, 2 * (c * d - a * b)],
            [2 * (b * d - a * c), 2 * (c * d + a * b), a * a - b * b - c * c + d * d],
        ]
    )


def make_subject(
    rng: np.random.Generator,
    *,
    subject: str = "ph",
    protocol: Protocol | None = None,
    n_cmb: int | None = None,
    tiny: bool = False,
    randomization: Randomization | None = None,
) -> PhantomSubject:
    """One phantom head with ground truth. Deterministic for a given ``rng`` state.

    ``randomization`` (the training family ``randomized``, see :mod:`.randomize`) draws tissue,
    vessel, microbleed, noise and SWI-processing parameters over wide ranges from a generator of its
    own; ``None`` is the classic family, unchanged.
    """
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    dr = None if randomization is None else np.random.default_rng(rng.integers(2**63))
    if protocol is None:
        protocol = sample_protocol(rng, tiny=tiny)
        if dr is not None and randomization.resolution:  # own stream: scans not redrawn stay as they were
            protocol = randomize_slices(protocol, np.random.Generator(dr.bit_generator.jumped()))
    if protocol.contrast not in ("swi", "gre"):
        raise ValueError(f"contrast must be 'swi' or 'gre', got {protocol.contrast!r}")
    res = _base_resolution(protocol, tiny)
    maps = mni_maps(res)
    timings["maps"] = time.perf_counter() - t0
    geom = make_geometry(rng, protocol)
    anat = sample_anatomy(rng, protocol, maps)
    if dr is not None and randomization.tissue:
        anat = randomize_tissue(anat, dr)
    swi = protocol.contrast == "swi"
    bloom = bloom_factor(protocol)

    t = time.perf_counter()
    box = fov_box(maps, geom)
    mag = mni_magnitude(maps, anat, rng, box)
    timings["mni"] = time.perf_counter() - t
    t = time.perf_counter()
    img = sample_to_grid(mag, box, maps, geom)
    del mag
    timings["sample"] = time.perf_counter() - t

    # veins
    t = time.perf_counter()
    coarse = tiny or protocol.inplane_mm >= 1.8
    style = sample_vessel_style(dr) if dr is not None and randomization.vessels else None
    veins = generate_veins(maps, dr if style is not None else rng, swi=swi, bloom=bloom,
                           density=0.35 if coarse else 1.0, style=style)
    b0 = geom.rot.T @ np.array([0.0, 0.0, 1.0])
    polys = []
    mimics: list[dict] = []
    slice_dir = geom.rot[:, 2]
    if veins:
        allw = geom.mni_to_world(np.concatenate([v.points for v in veins]), iters=4)
        splits = np.cumsum([len(v.points) for v in veins])[:-1]
        allg = geom.world_to_gridmm(allw)
        for v, w, g in zip(veins, np.split(allw, splits), np.split(allg, splits)):
            polys.append((g, v.radius, v.depth))
            # mimic sample points: where the vein runs steeply through the slices (dot-like)
            if len(w) >= 2 and v.kind != "sinus":
                d = np.gradient(w, axis=0)
                d /= np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-6)
                steep = np.abs(d @ slice_dir) > 0.5
                cand = np.flatnonzero(steep) if steep.any() else np.arange(len(w))
                k = int(rng.choice(cand))
                mimics.append({"kind": "vein", "detail": v.kind, "_w": w[k]})
    att = np.zeros(img.shape, np.float32)
    render_tubes(att, polys, geom.spacing, b0)
    timings["veins"] = time.perf_counter() - t

    # calcifications (pineal, choroid plexus)
    t = time.perf_counter()
    bloom_rng = (np.random.Generator(dr.bit_generator.jumped(3)) if dr is not None and randomization.dipole_bloom
                 else None)  # own stream: the `dipole_bloom` ingredient (revision 4) changes nothing else drawn
    inplane_mm = float(np.sort(geom.spacing)[:2].mean())
    for name, sites in CALCIFICATION_SITES_MNI.items():
        if rng.random() < (0.3 if name == "pineal" else 0.2):
            for c in sites:
                mni = np.asarray(c) + rng.normal(0, 1.0, 3)
                w = geom.mni_to_world(mni)[0]
                diam = float(rng.uniform(1.5, 4.5))
                depth = float(rng.uniform(0.6, 0.9))
                if bloom_rng is not None and bloom_rng.random() < DIPOLE_BLOOM_SHARE:  # diamagnetic: blooms alike
                    render_dipole_bloom(att, geom.world_to_gridmm(w)[0], diam, geom.spacing, b0,
                                        **dipole_bloom_shape(bloom_rng, depth, inplane_mm))
                else:
                    render_blob(att, geom.world_to_gridmm(w)[0], diam, geom.spacing, depth=depth, sharp=8.0)
                mimics.append({"kind": "calcification", "detail": name, "_w": w})
    # iron and air-bone mimic points
    for name, items in IRON_NUCLEI_MNI.items():
        if anat.iron[name] >= 0.15:
            for (c, _r), jit in zip(items, anat.iron_jitter[name]):
                mimics.append({"kind": "iron", "detail": name, "_w": geom.mni_to_world(np.asarray(c) + jit)[0]})
    for name, pts in AIR_BONE_ZONES_MNI.items():
        for c in pts:
            s = _sample_point(maps.suscept, maps, np.asarray(c))
            if 1.0 - np.exp(-((anat.air_kappa * s) ** 2)) > 0.1:
                mimics.append({"kind": "air_bone", "detail": name, "_w": geom.mni_to_world(np.asarray(c))[0]})

    # CMBs
    n = sample_cmb_count(rng) if n_cmb is None else int(n_cmb)
    size_rng = (np.random.Generator(dr.bit_generator.jumped(2)) if dr is not None and randomization.cmb_size
                else None)  # own stream: nothing else this scan draws changes with it
    cmbs = _place_cmbs(rng, n, maps, geom, bloom, size_rng)
    for c in cmbs:
        axes = np.array([1.0, rng.uniform(1.0, 1.3), rng.uniform(0.85, 1.15)])
        axes /= np.prod(axes) ** (1 / 3)
        depth = float(rng.uniform(0.86, 0.98))
        sharp = float(rng.uniform(3.5, 6.5) / bloom)
        rot = _random_rotation(rng)
        centre = c.pop("_grid")
        if dr is not None and randomization.cmb_profile:
            profile = sample_cmb_profile(dr, bloom)
            if bloom_rng is not None and bloom_rng.random() < DIPOLE_BLOOM_SHARE:
                _render_dipole_cmb(att, centre, c["diameter_mm"], geom.spacing, b0, profile, dr,
                                   dipole_bloom_shape(bloom_rng, profile.depth, inplane_mm))
            else:
                _render_randomized_cmb(att, centre, c["diameter_mm"], geom.spacing, rot, profile, dr)
            continue
        render_blob(att, centre, c["diameter_mm"], geom.spacing, depth=depth, sharp=sharp, axes=axes, rot=rot)
    if dr is not None and randomization.swi_mask and (swi or dr.random() < 0.3):
        img *= 1.0 - att
        img = swi_phase_mask(dr, img, att, geom.spacing, b0)
    else:
        img *= 1.0 - att
    del att
    timings["lesions"] = time.perf_counter() - t

    # acquisition artefacts, noise, storage
    t = time.perf_counter()
    noisy = dr is not None and randomization.noise
    img *= bias_field(rng, geom.shape, protocol.bias * (dr.uniform(0.5, 2.5) if noisy else 1.0))
    if protocol.ringing > 0 or (noisy and dr.random() < 0.25):
        img = ringing(rng, img, protocol.ringing if protocol.ringing > 0 else float(dr.uniform(0.02, 0.07)))
    if noisy and protocol.dtype != "float32_signed":
        img = multicoil_noise(dr, img, 0.66 / float(np.exp(dr.uniform(np.log(5.0), np.log(60.0)))))
    else:
        img = add_noise(rng, img, 0.66 / protocol.snr, rician=protocol.dtype != "float32_signed")
    data = to_storage(img, protocol)
    del img
    timings["noise"] = time.perf_counter() - t
    image = _oriented_image(data, geom, protocol)

    ext = geom.spacing * (geom.shape - 1)
    out_mimics = []
    for m in mimics:
        w = m.pop("_w")
        g = geom.world_to_gridmm(w)[0]
        if np.all(g >= 0) and np.all(g <= ext):
            out_mimics.append({"x_mm": float(w[0]), "y_mm": float(w[1]), "z_mm": float(w[2]), **m})
    timings["total"] = time.perf_counter() - t0
    return PhantomSubject(subject, image, cmbs, out_mimics, protocol, geom, timings)


def _render_randomized_cmb(att: np.ndarray, centre: np.ndarray, diameter: float, spacing: np.ndarray,
                           rot: np.ndarray, profile: CmbProfile, rng: np.random.Generator) -> None:
    """A microbleed with a randomized profile: core (maybe lumpy: 2-3 overlapping lobes) and halo."""
    if profile.halo_depth > 0:
        render_blob(att, centre, diameter * 1.8, spacing, depth=profile.halo_depth, sharp=3.0)
    if profile.lumps:
        for _ in range(profile.lumps + 1):
            offset = rng.normal(0, diameter * 0.12, 3)
            render_blob(att, centre + offset, diameter * rng.uniform(0.7, 0.9), spacing, depth=profile.depth,
                        sharp=profile.sharp, axes=profile.axes, rot=rot)
    else:
        render_blob(att, centre, diameter, spacing, depth=profile.depth, sharp=profile.sharp, axes=profile.axes,
                    rot=rot)


def _render_dipole_cmb(att: np.ndarray, centre: np.ndarray, diameter: float, spacing: np.ndarray, b0: np.ndarray,
                       profile: CmbProfile, rng: np.random.Generator, shape: dict) -> None:
    """A microbleed whose dark spot is the dipole field's intravoxel dephasing (`render_dipole_bloom`), with
    the profile's halo and lumps (the lumps are sub-deposits); draws from ``rng`` exactly what
    `_render_randomized_cmb` draws, so the scan's other randomization is unchanged."""
    if profile.halo_depth > 0:
        render_blob(att, centre, diameter * 1.8, spacing, depth=profile.halo_depth, sharp=3.0)
    sources = tuple((rng.normal(0, diameter * 0.12, 3), float(rng.uniform(0.7, 0.9)))
                    for _ in range(profile.lumps + 1)) if profile.lumps else ()
    render_dipole_bloom(att, centre, diameter, spacing, b0, sources=sources, **shape)


def _sample_point(arr: np.ndarray, maps: MniMaps, mni: np.ndarray) -> float:
    ijk = np.clip(np.round(maps.mm_to_vox(mni[None])[0]).astype(int), 0, np.array(maps.shape) - 1)
    return float(arr[tuple(ijk)])


def _oriented_image(data: np.ndarray, geom: SubjectGeometry, p: Protocol) -> nib.Nifti1Image:
    """Canonical-grid array -> Nifti1Image in the protocol's axis order/signs."""
    img = nib.Nifti1Image(data, geom.affine)
    xf = ornt_transform(io_orientation(geom.affine), axcodes2ornt(tuple(p.axcodes)))
    img = img.as_reoriented(xf)
    img = nib.Nifti1Image(np.ascontiguousarray(np.asanyarray(img.dataobj)), img.affine)
    img.header.set_xyzt_units("mm")
    img.set_sform(img.affine, code=1)
    img.set_qform(img.affine, code=1)
    if p.dtype in ("int16", "uint16") and p.slope != 1.0:
        img.header.set_slope_inter(p.slope, 0.0)
        img = nib.Nifti1Image.from_bytes(img.to_bytes())
    return img


# ---------------------------------------------------------------------------
# writing sets


def _csv_bytes(columns: list[str], rows: list[dict]) -> bytes:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow(r)
    return buf.getvalue().encode()


def truth_rows(ph: PhantomSubject) -> list[dict]:
    """truth.csv rows; a subject without CMB gets one row with empty fields."""
    if not ph.cmbs:
        return [{"subject": ph.subject, "x_mm": "", "y_mm": "", "z_mm": "", "diameter_mm": "", "region": ""}]
    return [
        {
            "subject": ph.subject,
            "x_mm": f"{c['x_mm']:.3f}",
            "y_mm": f"{c['y_mm']:.3f}",
            "z_mm": f"{c['z_mm']:.3f}",
            "diameter_mm": f"{c['diameter_mm']:.3f}",
            "region": c["region"],
        }
        for c in ph.cmbs
    ]


def write_phantom_set(
    outdir: str | os.PathLike,
    n: int,
    seed: int,
    *,
    tiny: bool = False,
    montage: bool = True,
    protocol_sampler: Callable[[np.random.Generator], Protocol] | None = None,
    family: str = "classic",
    without: tuple[str, ...] = (),
) -> Path:
    """Write ``n`` phantoms of a family (see :mod:`.families`) + truth.csv, mimics.csv,
    protocols.csv, dataset.json (family, role, seed, count: what a model trained on it records)
    (+ montage/).

    Subject i uses ``np.random.default_rng([seed, i])`` and is named ``f"ph{seed}_{i:04d}"``
    (classic) or ``f"{family}{seed}_{i:04d}"``, so a subject does not depend on ``n``.
    ``protocol_sampler(rng)`` (optional, classic family only) replaces :func:`sample_protocol`;
    it receives the subject's generator before anything else is drawn.
    """
    from .families import FAMILIES, family_revision, subject_maker

    make = subject_maker(family, without=tuple(without))
    if protocol_sampler is not None and family != "classic":
        raise ValueError("protocol_sampler applies to the classic family only")
    prefix = "ph" if family == "classic" else family
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    truth: list[dict] = []
    mimic_rows: list[dict] = []
    proto_rows: list[dict] = []
    if montage:
        (out / "montage").mkdir(exist_ok=True)
    for i in range(int(n)):
        rng = np.random.default_rng([int(seed), i])
        name = f"{prefix}{seed}_{i:04d}"
        if protocol_sampler is not None:
            ph = make_subject(rng, subject=name, protocol=protocol_sampler(rng), tiny=tiny)
        else:
            ph = make(rng, subject=name, tiny=tiny)
        save_image_atomic(ph.image, out / f"{name}.nii.gz")
        labels = getattr(ph, "labels", None)  # truth label map, where a family provides one (epsilon)
        if labels is not None:
            (out / "labels").mkdir(exist_ok=True)
            save_image_atomic(labels, out / "labels" / f"{name}_cmb-labels.nii.gz")
        truth.extend(truth_rows(ph))
        for m in ph.mimics:
            mimic_rows.append(
                {
                    "subject": name,
                    "x_mm": f"{m['x_mm']:.3f}",
                    "y_mm": f"{m['y_mm']:.3f}",
                    "z_mm": f"{m['z_mm']:.3f}",
                    "kind": m["kind"],
                    "detail": m.get("detail", ""),
                }
            )
        proto_rows.append({"subject": name, **ph.protocol.as_row(), "n_cmb": len(ph.cmbs)})
        if montage:
            from .montage import render_montage

            render_montage(ph.image, ph.cmbs, out / "montage" / f"{name}.png", mimics=ph.mimics, title=name)
    write_bytes_atomic(out / "truth.csv", _csv_bytes(TRUTH_COLUMNS, truth))
    write_bytes_atomic(out / "mimics.csv", _csv_bytes(MIMIC_COLUMNS, mimic_rows))
    proto_cols = list(dict.fromkeys(k for row in proto_rows for k in row))
    write_bytes_atomic(out / "protocols.csv", _csv_bytes(proto_cols, proto_rows))
    description = {"family": family, "role": FAMILIES[family].role, "seed": int(seed), "n_scans": int(n),
                   "n_cmb": sum(1 for row in truth if row["x_mm"] != ""),
                   "n_cmb_free": sum(1 for row in truth if row["x_mm"] == ""),
                   "without": sorted(without), "tiny": bool(tiny),
                   "revision": family_revision(family, without)}
    write_bytes_atomic(out / "dataset.json", json.dumps(description, indent=1).encode())
    return out


__all__ = [
    "PhantomSubject",
    "Protocol",
    "make_subject",
    "sample_protocol",
    "truth_rows",
    "write_phantom_set",
    "rotation",
]
