"""CT family ``ct-c`` (validation: for choosing features and recipes that carry over between
painters; never trained on). Written apart from ``ct-a`` and ``ct-b``: it shares only the head
(`head`) and the hematoma biology and growth law (`lesion`).

Hematomas are blobby soft unions (a soft minimum of ellipsoidal radii, necks filled) of a core
ellipsoid stretched along a principal axis (lobar bleeds elongated along the cortex, deep bleeds
flattened medio-laterally, infratentorial ones near round) and daughter lobes at its surface, more
with irregularity, under a knobbly surface of von Mises bumps over direction; satellites sit a drawn
gap beyond the surface, mostly off the ends of the principal axis. Ventricular extension is a tapered
tongue into the nearest ventricle, whose dependent part fills up to a level perpendicular to gravity.
Density signs: blend = two populations split by a spherical (curved) boundary, black hole = an
enclosed bean-shaped pocket, swirl = hypodense logarithmic-spiral arms, fluid level = sediment under
a meniscus; oedema = a rim a drawn 5-20 HU below the local white matter, its width growing with the
square root of the volume. Scanner: in-plane noise with a ring-shaped power spectrum plus a blotchy
low-frequency part, independent between slices, iterative-reconstruction-like edge-preserving
smoothing (in-plane Perona-Malik diffusion), beam-hardening cupping, a fan of streaks from the petrous
apexes with a dark inter-petrous bar, streaks from metal, and an air-anchored calibration gain.
Protocols: 2-3 mm or 5 mm slices at 0.45-0.7 mm in-plane (1-1.5 mm with ``fast``). Mimics: paired basal-ganglia
calcification, a hyperdense middle cerebral artery, thin subdural-like crescents of intermediate
density at the convexity, falx calcification plaques, metal dots (clip, burr-hole marker).
"""

from __future__ import annotations

import numpy as np
from scipy import fft as sfft
from scipy import ndimage

from cmbdet.anatomy import IRON_NUCLEI_MNI, MniMaps
from cmbdet.phantom.ct.head import CTGrid, Pose
from cmbdet.phantom.ct.lesion import Hematoma, nominal_radius, radius_scale

NAME = "ct-c"

#: MARS labels of `MniMaps.regions` per hematoma region, the share of each region, and the volume
#: law (median mL, log-sd, cap mL): lobar bleeds run larger, infratentorial ones smaller.
_MARS = {"lobar": 1, "deep": 2, "infratentorial": 3}
_REGION_SHARE = {"deep": 0.46, "lobar": 0.40, "infratentorial": 0.14}
_VOLUME_LAW = {"deep": (10.0, 0.75, 100.0), "lobar": (16.0, 0.8, 100.0), "infratentorial": (5.0, 0.7, 30.0)}
#: Stored axis orders of this family's scanners (an axial acquisition stored in various ways).
_AXCODES = [("L", "P", "S"), ("L", "P", "S"), ("R", "P", "S"), ("L", "A", "I"), ("R", "A", "S"),
            ("P", "R", "I"), ("S", "P", "L")]
_GRID_KEYS = ("inplane_mm", "slice_mm", "thickness_mm", "tilt_deg", "axcodes")
#: Above this (HU, head grid and acquisition grid) a voxel is metal: it throws streaks.
_METAL_HU = 2800.0


# --- acquisition ---------------------------------------------------------------------------------


def sample_protocol(rng: np.random.Generator, *, fast: bool = False) -> dict:
    """One scan's acquisition: 5 mm or 2-3 mm slices, 0.45-0.7 mm in-plane (1-1.5 mm with ``fast``,
    the coarse grid of training sets and tests; the slices stay as drawn), noise (HU before the
    reconstruction's smoothing, more on thinner slices) and its spectrum, edge-preserving
    reconstruction, cupping, calibration, storage."""
    thick = rng.random() < 0.45
    if thick:
        slice_mm = thickness = 5.0
    else:
        slice_mm = float(rng.choice([2.0, 2.5, 3.0]))
        thickness = slice_mm * float(rng.uniform(1.0, 1.2))
    inplane = rng.uniform(1.0, 1.5) if fast else rng.uniform(0.45, 0.7)
    tilt = 0.0 if rng.random() < 0.2 else float(np.clip(rng.normal(-6.0, 9.0), -22.0, 20.0))
    return {
        "inplane_mm": float(inplane), "slice_mm": float(slice_mm), "thickness_mm": float(thickness),
        "tilt_deg": tilt, "axcodes": _AXCODES[int(rng.integers(len(_AXCODES)))],
        "intercept": float(rng.choice([-1024.0, 0.0, -1000.0], p=[0.5, 0.35, 0.15])),
        "noise_hu": float(rng.uniform(3.5, 6.0) * np.sqrt(5.0 / thickness)),
        "nps_peak_per_mm": float(rng.uniform(0.18, 0.32)), "nps_width_per_mm": float(rng.uniform(0.06, 0.12)),
        "blotch": float(rng.uniform(0.15, 0.4)),
        "ir_iterations": int(rng.integers(2, 5)), "ir_kappa_hu": float(rng.uniform(9.0, 16.0)),
        "cupping_hu": float(rng.uniform(2.0, 8.0)), "calibration_gain": float(rng.uniform(0.995, 1.007)),
    }


def grid_parameters(protocol: dict) -> dict:
    """The protocol's entries that define the acquisition grid."""
    return {key: protocol[key] for key in _GRID_KEYS}


# --- hematomas: drawing ------------------------------------------------------------------------


def sample_hematomas(rng: np.random.Generator, maps: MniMaps, pose: Pose, *, p_free: float = 0.3) -> list[Hematoma]:
    """0 (with probability ``p_free``), 1, or occasionally 2 hematomas, centred on voxels of the
    region's MARS label (lobar ones in subcortical white matter)."""
    if rng.random() < p_free:
        return []
    n = 2 if rng.random() < 0.08 else 1
    out: list[Hematoma] = []
    for _ in range(n):
        for _attempt in range(40):
            region = str(rng.choice(list(_REGION_SHARE), p=list(_REGION_SHARE.values())))
            pool = _candidate_voxels(maps, region)
            ijk = pool[int(rng.integers(len(pool)))]
            centre = maps.affine[:3, :3] @ ijk + maps.affine[:3, 3] + rng.uniform(-1.5, 1.5, 3)
            median, log_sd, cap = _VOLUME_LAW[region]
            ml = float(np.clip(rng.lognormal(np.log(median), log_sd), 0.5, cap))
            radius = (3.0 * ml * 1000.0 / (4.0 * np.pi)) ** (1.0 / 3.0)
            if maps.d_env[tuple(ijk)] > -min(0.55 * radius + 3.0, 26.0):
                continue
            if any(np.linalg.norm(centre - h.centre_mni) < 42.0 for h in out):
                continue
            break
        else:
            continue
        out.append(_draw_hematoma(rng, maps, pose, centre, ijk, ml, region))
    return out


def _candidate_voxels(maps: MniMaps, region: str) -> np.ndarray:
    """(N, 3) head-grid voxel indices (every third voxel) where a hematoma of ``region`` may sit."""
    sub = (slice(1, None, 3),) * 3
    ok = maps.brain[sub] & (maps.csf[sub] < 0.3) & (maps.regions[sub] == _MARS[region])
    if region == "lobar":
        ok &= maps.wm[sub] > 0.4
    return np.argwhere(ok) * 3 + 1


def _draw_hematoma(rng: np.random.Generator, maps: MniMaps, pose: Pose, centre: np.ndarray, ijk: np.ndarray,
                   ml: float, region: str) -> Hematoma:
    irregular = float(np.clip(rng.gamma(3.0, 0.11), 0.0, 1.0))
    nominal = (3.0 * ml * 1000.0 / (4.0 * np.pi)) ** (1.0 / 3.0)
    frame, elong, flat = _principal_frame(rng, maps, ijk, region)
    # lobes: a core flattened and stretched along the principal axis, and daughter lobes centred
    # inside its surface (more, and a smaller core, with irregularity), in a soft union
    axes = np.array([elong, 1.0, flat])
    core_scale = 0.85 - 0.25 * irregular
    sharpness = float(rng.uniform(6.0, 12.0))
    core = {"lobe_centres": [np.zeros(3)], "lobe_inverse": [frame / (axes * core_scale)[None, :]], "bumps": [],
            "sharpness": sharpness}
    centres = [np.zeros(3)]
    scales = [core_scale]
    for _ in range(min(int(rng.poisson(0.3 + 6.0 * irregular)), 9)):
        direction = frame[:, 0] * rng.choice([-1.0, 1.0]) * rng.uniform(0.0, 1.2) + rng.normal(0.0, 1.0, 3)
        direction /= np.linalg.norm(direction)
        centres.append(direction * _extent(core, direction) * rng.uniform(0.75, 1.1))
        scales.append(float(rng.uniform(0.3, 0.5 + 0.15 * irregular)))
    n_lobes = len(centres)
    inverse = [frame / (axes * s)[None, :] for s in scales]  # u -> lobe coordinates: (u - c) @ inv
    n_bumps = 2 + int(round(8 * irregular))
    bumps = [(_unit(rng), float(rng.uniform(0.04, 0.1 + 0.35 * irregular)), float(rng.uniform(8.0, 30.0)))
             for _ in range(n_bumps)]
    shape = {"lobe_centres": centres, "lobe_inverse": inverse, "sharpness": sharpness, "bumps": bumps,
             "rho_ref": core_scale * float(np.cbrt(elong * flat))}
    slack = 1.0 + sum(a for _, a, _ in bumps) + np.log(n_lobes) / sharpness  # bound on the lobe radius at the surface
    shape["reach"] = max(float(np.linalg.norm(c)) + s * max(elong, 1.0) * slack
                         for c, s in zip(centres, scales, strict=True))
    # satellites: off the ends of the principal axis mostly, a drawn gap beyond the surface
    n_islands = 0 if rng.random() < 0.78 else int(rng.integers(1, 7))
    islands = []
    for _ in range(n_islands):
        direction = frame[:, 0] * rng.choice([-1.0, 1.0]) * rng.uniform(0.5, 1.5) + rng.normal(0.0, 0.6, 3)
        direction /= np.linalg.norm(direction)
        size = max(float(rng.uniform(0.1, 0.18)), 1.6 / nominal)
        gap = max(float(rng.uniform(0.3, 0.7)), 2.0 / nominal)
        islands.append((direction * (_extent(shape, direction) + gap + size), size))
    shape["islands"] = islands
    shape["reach"] = max([shape["reach"], *(float(np.linalg.norm(p)) + s for p, s in islands)])
    d_vent = float(maps.d_vent[tuple(ijk)])
    if region == "deep" and d_vent < nominal + 10.0:
        ivh = rng.random() < 0.5
    else:
        ivh = d_vent < nominal + 20.0 and rng.random() < 0.12
    shape.update(
        gravity=pose.gravity_mni, grain_hu=float(rng.uniform(1.5, 3.5)), core_hu=float(rng.uniform(2.0, 6.0)),
        blend_centre=_unit(rng) * rng.uniform(1.2, 2.0), blend_cut=float(rng.uniform(-0.25, 0.35)),
        blend_drop=float(rng.uniform(20.0, 32.0)),
        hole_centre=rng.normal(0.0, 0.12, 3), hole_frame=_random_frame(rng), hole_size=float(rng.uniform(0.8, 1.2)),
        hole_drop=float(rng.uniform(30.0, 45.0)),
        swirl_centre=rng.normal(0.0, 0.1, 3), swirl_axis=_unit(rng), swirl_arms=int(rng.integers(2, 4)),
        swirl_twist=float(rng.uniform(2.0, 4.0)), swirl_drop=float(rng.uniform(14.0, 24.0)),
        level=float(rng.uniform(-0.15, 0.35)), sediment_hu=float(rng.uniform(6.0, 12.0)),
        serum_drop=float(rng.uniform(14.0, 24.0)),
        edema_mm=float(rng.uniform(1.0, 3.0)), edema_per_sqrt_ml=float(rng.uniform(0.5, 1.2))
        * (0.5 if region == "infratentorial" else 1.0), edema_below_wm=float(rng.uniform(5.0, 20.0)),
        ivh_hu=float(rng.uniform(48.0, 70.0)), ivh_fill=float(rng.uniform(0.2, 0.55)),
        tongue_mm=(float(rng.uniform(2.0, 3.5)), float(rng.uniform(1.2, 2.0))),
    )
    return Hematoma(
        centre_mni=np.asarray(centre, float), target_ml=ml, density_hu=float(rng.triangular(50.0, 67.0, 85.0)),
        irregularity=irregular, blend=bool(rng.random() < 0.14), black_hole=bool(rng.random() < 0.1),
        swirl=bool(rng.random() < 0.15), fluid_level=bool(rng.random() < 0.06), n_islands=n_islands,
        ivh=bool(ivh), region=region, shape=shape,
    )


def _principal_frame(rng: np.random.Generator, maps: MniMaps, ijk: np.ndarray, region: str
                     ) -> tuple[np.ndarray, float, float]:
    """(3, 3) orthonormal frame (columns: principal axis, middle, flattened axis), elongation of the
    principal axis and flattening of the third."""
    if region == "lobar":  # along the cortex: the principal axis is tangent to the brain's envelope
        normal = _envelope_normal(maps, ijk)
        v = rng.normal(0.0, 1.0, 3)
        principal = v - (v @ normal) * normal
        third = normal
        elong, flat = rng.uniform(1.4, 2.2), rng.uniform(0.75, 1.0)
    elif region == "deep":  # antero-posterior like the putamen and thalamus, flat medio-laterally
        principal = np.array([0.0, 1.0, 0.0]) + rng.normal(0.0, 0.25, 3)
        third = np.array([1.0, 0.0, 0.0])
        elong, flat = rng.uniform(1.15, 1.6), rng.uniform(0.55, 0.8)
    else:
        principal, third = rng.normal(0.0, 1.0, 3), rng.normal(0.0, 1.0, 3)
        elong, flat = rng.uniform(1.0, 1.25), rng.uniform(0.85, 1.0)
    a = principal / np.linalg.norm(principal)
    c = third - (third @ a) * a
    c /= np.linalg.norm(c)
    return np.stack([a, np.cross(c, a), c], axis=1), float(elong), float(flat)


def _envelope_normal(maps: MniMaps, ijk: np.ndarray) -> np.ndarray:
    """Unit outward normal of the brain envelope near a voxel (gradient of the signed distance)."""
    i = np.clip(ijk, 2, np.array(maps.shape) - 3)
    g = np.array([maps.d_env[tuple(i + 2 * e)] - maps.d_env[tuple(i - 2 * e)] for e in np.eye(3, dtype=int)])
    norm = np.linalg.norm(g)
    return g / norm if norm > 1e-6 else np.array([0.0, 0.0, 1.0])


def _unit(rng: np.random.Generator) -> np.ndarray:
    """A direction uniform on the sphere (height and azimuth)."""
    height, azimuth = rng.uniform(-1.0, 1.0), rng.uniform(0.0, 2.0 * np.pi)
    ring = np.sqrt(1.0 - height**2)
    return np.array([ring * np.cos(azimuth), ring * np.sin(azimuth), height])


def _random_frame(rng: np.random.Generator) -> np.ndarray:
    q, _ = np.linalg.qr(rng.normal(0.0, 1.0, (3, 3)))
    return q


# --- hematomas: shape ------------------------------------------------------------------------------


def _core(shape: dict, u: np.ndarray) -> np.ndarray:
    """(...) float32 level of the lobed body at normalized coordinates ``u`` (..., 3) (unit: the
    radius): 1 on the surface, < 1 inside, about linear in distance near it. The lobes' ellipsoidal
    radii are blended by a soft minimum (``sharpness``: lower fills the necks between lobes more),
    and the result is pushed out by bumps over direction."""
    beta = shape["sharpness"]
    total = np.zeros(u.shape[:-1], np.float32)
    for centre, inverse in zip(shape["lobe_centres"], shape["lobe_inverse"], strict=True):
        q = (u - centre.astype(np.float32)) @ inverse.astype(np.float32)
        total += np.exp(-beta * np.minimum(np.sqrt(np.einsum("...i,...i->...", q, q)), 60.0 / beta))
    level = np.maximum(-np.log(np.maximum(total, 1e-30)) / beta, 0.0)
    r = np.sqrt(np.einsum("...i,...i->...", u, u))
    omega = u / np.maximum(r, 1e-6)[..., None]
    bump = np.zeros_like(level)
    for direction, amplitude, sharpness in shape["bumps"]:
        bump += amplitude * np.exp(sharpness * (omega @ direction.astype(np.float32) - 1.0))
    return (level / (1.0 + bump)).astype(np.float32)


def _extent(shape: dict, direction: np.ndarray) -> float:
    """How far (normalized units) the body reaches along a unit direction from its centre."""
    t = np.linspace(0.0, 4.0, 401, dtype=np.float32)
    inside = np.nonzero(_core(shape, t[:, None] * direction[None, :].astype(np.float32)) <= 1.0)[0]
    return float(t[inside[-1]]) if len(inside) else 0.0


def _blood(h: Hematoma, maps: MniMaps, radius: float, margin_mm: float = 2.0
           ) -> tuple[tuple[slice, ...], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(box on the head grid, normalized coordinates u (..., 3), body level (...), distance to the
    blood surface in mm (...; < 0 inside), blood fraction (...)) at ``radius`` mm."""
    reach = radius * h.shape["reach"] + margin_mm
    lo = np.maximum(np.floor(maps.mm_to_vox((h.centre_mni - reach)[None])[0]).astype(int), 0)
    hi = np.minimum(np.ceil(maps.mm_to_vox((h.centre_mni + reach)[None])[0]).astype(int) + 1, maps.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    axes = [((maps.affine[d, 3] + maps.affine[d, d] * np.arange(lo[d], hi[d]) - h.centre_mni[d]) / radius)
            .astype(np.float32) for d in range(3)]
    u = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
    level = _core(h.shape, u)
    dist = (level - 1.0) * (h.shape["rho_ref"] * radius)
    for k, (centre, size) in enumerate(h.shape["islands"]):
        if k >= h.n_islands:
            break
        d_island = (np.sqrt(((u - centre.astype(np.float32)) ** 2).sum(-1)) - size) * radius
        np.minimum(dist, d_island, out=dist)
    blood = np.clip(0.5 - dist, 0.0, 1.0) * (maps.d_env[box] < -1.0)
    return box, u, level, dist, blood.astype(np.float32)


def _ivh(h: Hematoma, maps: MniMaps) -> tuple[np.ndarray, np.ndarray]:
    """(flat head-grid indices, HU) of the ventricular blood: a tapered tongue from the hematoma's
    centre to the nearest ventricle, and that ventricle's dependent part up to a level perpendicular
    to gravity (the same at baseline and follow-up; cached in ``h.shape``)."""
    if "ivh_voxels" in h.shape:
        return h.shape["ivh_voxels"]
    c_vox = np.clip(np.round(maps.mm_to_vox(h.centre_mni[None])[0]).astype(int), 0, np.array(maps.shape) - 1)
    target = maps.vent_idx[(slice(None), *c_vox)].astype(int)
    target_mm = maps.affine[:3, :3] @ target + maps.affine[:3, 3]
    # the nearest ventricle: the connected ventricular CSF around the target, within 45 mm
    lo = np.maximum(target - 45, 0)
    hi = np.minimum(target + 46, maps.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    vent = (maps.d_vent[box] < 0.5) & (maps.csf[box] > 0.5)
    components, _ = ndimage.label(vent)
    local = target - lo
    keep = components[tuple(local)]
    if keep == 0 and vent.any():
        pts = np.argwhere(vent)
        keep = components[tuple(pts[np.argmin(((pts - local) ** 2).sum(1))])]
    chamber = components == keep if keep else np.zeros_like(vent)
    pts = np.argwhere(chamber)
    gravity = h.shape["gravity"]
    flat_idx: list[np.ndarray] = []
    values: list[np.ndarray] = []
    if len(pts):
        height = (pts + lo - target) @ gravity  # mm along gravity (1 mm grid): larger = more dependent
        cut = np.quantile(height, 1.0 - h.shape["ivh_fill"])
        below = pts[height >= cut] + lo
        depth = (height[height >= cut] - cut) / max(float(height.max() - cut), 1.0)
        flat_idx.append(np.ravel_multi_index(below.T, maps.shape))
        values.append(h.shape["ivh_hu"] + 6.0 * depth)
    # the tongue: points within a radius tapering from the hematoma to the ventricle
    start, end = np.asarray(h.centre_mni, float), target_mm
    r0, r1 = h.shape["tongue_mm"]
    lo_t = np.maximum(np.floor(maps.mm_to_vox((np.minimum(start, end) - r0 - 1)[None])[0]).astype(int), 0)
    hi_t = np.minimum(np.ceil(maps.mm_to_vox((np.maximum(start, end) + r0 + 1)[None])[0]).astype(int) + 1,
                      maps.shape)
    box_t = tuple(slice(a, b) for a, b in zip(lo_t, hi_t, strict=True))
    xyz = np.stack(np.meshgrid(*(maps.affine[d, 3] + maps.affine[d, d] * np.arange(lo_t[d], hi_t[d])
                                 for d in range(3)), indexing="ij"), axis=-1)
    seg = end - start
    t = np.clip(((xyz - start) @ seg) / max(float(seg @ seg), 1e-6), 0.0, 1.0)
    dist = np.linalg.norm(xyz - start - t[..., None] * seg, axis=-1)
    tongue = (dist <= r0 + (r1 - r0) * t) & (maps.d_env[box_t] < -1.0)
    pts_t = np.argwhere(tongue) + lo_t
    flat_idx.append(np.ravel_multi_index(pts_t.T, maps.shape))
    values.append(np.full(len(pts_t), h.shape["ivh_hu"] + 4.0))
    idx = np.concatenate(flat_idx)
    hu = np.concatenate(values).astype(np.float32)
    idx, first = np.unique(idx, return_index=True)
    h.shape["ivh_voxels"] = (idx, hu[first])
    return h.shape["ivh_voxels"]


def _ivh_in_box(idx: np.ndarray, box: tuple[slice, ...], shape: tuple[int, ...]) -> tuple[np.ndarray, int]:
    """(mask of the box's shape, True at the given flat head-grid indices; how many lie outside the box)."""
    ijk = np.stack(np.unravel_index(idx, shape), axis=1)
    lo = np.array([s.start for s in box])
    hi = np.array([s.stop for s in box])
    inside = np.all((ijk >= lo) & (ijk < hi), axis=1)
    mask = np.zeros(tuple(hi - lo), bool)
    mask[tuple((ijk[inside] - lo).T)] = True
    return mask, int(np.count_nonzero(~inside))


# --- hematomas: painting ------------------------------------------------------------------------


def paint_hematoma(h: Hematoma, label: int, hu: np.ndarray, frac: np.ndarray, ids: np.ndarray, maps: MniMaps,
                   rng: np.random.Generator, *, grown_ml: float = 0.0) -> None:
    """Paint one hematoma (blood with its density signs, satellites, oedema, ventricular blood) into
    the head-grid HU map ``hu`` (X, Y, Z); ``frac`` takes its blood fraction, ``ids`` ``label`` where
    the fraction is >= 0.5 and in the ventricular blood. The radius is calibrated (`radius_scale`) so
    that the labelled blood is ``target_ml`` at baseline and the baseline's plus ``grown_ml`` (head-grid
    mL) at follow-up; the ventricular blood is the baseline's at both."""
    nominal = nominal_radius(h)
    ivh_idx, ivh_hu = _ivh(h, maps) if h.ivh else (np.zeros(0, np.int64), np.zeros(0, np.float32))

    def blood_ml(scale: float) -> float:
        box, _, _, _, blood = _blood(h, maps, nominal * scale)
        in_vent, outside = _ivh_in_box(ivh_idx, box, maps.shape)
        kept = (blood >= 0.5) & ~in_vent
        return (float(blood[kept].sum()) + float(in_vent.sum()) + outside) / 1000.0

    radius = nominal * radius_scale(h, grown_ml, blood_ml)
    edema_mm = h.shape["edema_mm"] + h.shape["edema_per_sqrt_ml"] * np.sqrt(4.0 * np.pi * radius**3 / 3000.0)
    box, u, level, dist, blood = _blood(h, maps, radius, margin_mm=edema_mm + 2.0)
    density = _density(h, u, level, dist, rng)
    region = hu[box]
    # oedema: towards a density below the local white matter, flat then falling off at its width
    white = region[maps.wm[box] > 0.9]
    below_wm = (float(np.median(white)) if white.size else float(np.median(region[maps.brain[box]]))) \
        - h.shape["edema_below_wm"]
    reach = np.clip(1.0 - (np.maximum(dist, 0.0) / edema_mm) ** 2, 0.0, 1.0)
    edema = reach * (dist > 0.0) * maps.brain[box] * (maps.csf[box] < 0.5) * (region < 90.0)
    region += edema * (np.minimum(below_wm, region) - region)
    region[:] = blood * density + (1.0 - blood) * region
    frac[box] = np.maximum(frac[box], blood)
    ids[box][blood >= 0.5] = label
    if len(ivh_idx):
        hu.flat[ivh_idx] = ivh_hu
        frac.flat[ivh_idx] = 1.0
        ids.flat[ivh_idx] = label


def _density(h: Hematoma, u: np.ndarray, level: np.ndarray, dist: np.ndarray, rng: np.random.Generator
             ) -> np.ndarray:
    """(...) float32 HU of the blood in the box: a denser core, a boxcar-correlated grain, and the
    signs (blend, black hole, swirl, fluid level) in this family's own shapes."""
    s = h.shape
    grain = ndimage.uniform_filter(rng.standard_normal(level.shape).astype(np.float32), 3) * 3.0
    density = h.density_hu + s["grain_hu"] * grain + s["core_hu"] * np.clip(0.6 - level, -0.4, 0.6)
    interior = dist < -1.0
    if h.blend:  # the part inside a large sphere off to one side is the hypodense (unclotted) population
        centre = s["blend_centre"]
        in_sphere = np.linalg.norm(u - centre.astype(np.float32), axis=-1) < np.linalg.norm(centre) - s["blend_cut"]
        drop = min(s["blend_drop"], h.density_hu - 32.0)  # >= 18 HU, and no darker than about 32 HU
        density = np.where(in_sphere, density - drop, density + 3.0)
    if h.black_hole:  # a bean: an ellipsoid with a smaller one bitten out of its side, enclosed
        local = (u - s["hole_centre"].astype(np.float32)) @ s["hole_frame"].astype(np.float32)
        size = s["hole_size"]
        outer = ((local / (np.array([0.34, 0.24, 0.2]) * size)) ** 2).sum(-1) < 1.0
        bite = (((local - np.array([0.0, 0.2 * size, 0.0])) / (np.array([0.22, 0.14, 0.22]) * size)) ** 2).sum(-1) < 1.0
        pocket = outer & ~bite & (level < 0.7) & (dist < -1.5)
        density = np.where(pocket, density - s["hole_drop"], density)
    if h.swirl:  # hypodense logarithmic-spiral arms about an axis through an off-centre point
        axis = s["swirl_axis"].astype(np.float32)
        rel = u - s["swirl_centre"].astype(np.float32)
        along = rel @ axis
        radial = rel - along[..., None] * axis
        e1 = np.cross(axis, np.array([0.0, 0.0, 1.0]) if abs(axis[2]) < 0.9 else np.array([1.0, 0.0, 0.0]))
        e1 = (e1 / np.linalg.norm(e1)).astype(np.float32)
        e2 = np.cross(axis, e1).astype(np.float32)
        rho = np.linalg.norm(radial, axis=-1)
        theta = np.arctan2(radial @ e2, radial @ e1)
        arms = np.cos(s["swirl_arms"] * (theta - s["swirl_twist"] * np.log(rho + 0.05))) > 0.3
        density = np.where(arms & (rho < 0.6) & (np.abs(along) < 0.5) & interior, density - s["swirl_drop"], density)
    if h.fluid_level:  # cells settle below a level perpendicular to gravity, serum above it
        below = (u @ s["gravity"].astype(np.float32)) > s["level"]
        density = np.where(below, density + s["sediment_hu"], density - s["serum_drop"])
    return np.clip(density, 15.0, 100.0).astype(np.float32)


# --- mimics --------------------------------------------------------------------------------------


def paint_mimics(rng: np.random.Generator, hu: np.ndarray, maps: MniMaps) -> list[dict]:
    """Dense things that are not hematomas, on the head grid ``hu`` (X, Y, Z) HU: paired basal-ganglia
    calcification, a hyperdense middle cerebral artery, thin subdural-like convexity crescents of
    intermediate density, falx calcification plaques, metal dots. Returns [{kind, mni (3,) mm}]."""
    found: list[dict] = []
    if rng.random() < 0.35:  # basal ganglia: the same cluster on both sides, mirrored
        (left, _), (right, _) = IRON_NUCLEI_MNI["globus_pallidus"]
        offsets = [rng.normal(0.0, [1.5, 3.0, 2.0]) for _ in range(int(rng.integers(2, 5)))]
        for site in (left, right):
            for off in offsets:
                centre = np.asarray(site) + off * np.array([np.sign(site[0]), 1.0, 1.0]) + rng.normal(0.0, 0.5, 3)
                _ellipsoid(hu, maps, centre, rng.uniform(0.8, 2.2, 3), float(rng.uniform(90.0, 350.0)))
                found.append({"kind": "basal_ganglia_calcification", "mni": centre})
    if rng.random() < 0.2:  # thrombus in M1: a dense tube in the sylvian cistern
        side = float(rng.choice([-1.0, 1.0]))
        start = np.array([side * 9.0, 3.0, -15.0]) + rng.normal(0.0, 1.0, 3)
        end = np.array([side * rng.uniform(34.0, 42.0), rng.uniform(0.0, 8.0), rng.uniform(-10.0, -3.0)])
        _tube(hu, maps, start, end, float(rng.uniform(1.2, 1.9)), float(rng.uniform(58.0, 80.0)))
        found.append({"kind": "hyperdense_mca", "mni": (start + end) / 2.0})
    if rng.random() < 0.25:  # a thin subdural-like crescent over one convexity
        centre = _crescent(rng, hu, maps)
        found.append({"kind": "convexity_crescent", "mni": centre})
    if rng.random() < 0.4:
        for _ in range(int(rng.integers(1, 4))):
            centre = np.array([rng.normal(0.0, 0.3), rng.uniform(-60.0, 30.0), rng.uniform(25.0, 60.0)])
            _falx_plaque(hu, maps, centre, float(rng.uniform(3.0, 8.0)), float(rng.uniform(1.5, 3.5)),
                         float(rng.uniform(150.0, 600.0)))
            found.append({"kind": "falx_calcification", "mni": centre})
    if rng.random() < 0.12:
        for _ in range(int(rng.integers(1, 3))):
            if rng.random() < 0.6:  # an aneurysm clip near the circle of Willis
                centre = np.array([rng.choice([-1.0, 1.0]) * rng.uniform(4.0, 20.0), rng.uniform(0.0, 15.0),
                                   rng.uniform(-18.0, -8.0)])
                kind = "aneurysm_clip"
            else:  # a burr-hole marker at Kocher's point, in the skull
                side = rng.choice([-1.0, 1.0])
                centre = np.array([side * 28.0, 12.0, 0.0])
                z_mm = maps.affine[2, 3] + np.arange(maps.shape[2])
                column = np.abs(maps.d_env[_vox(maps, centre)[:2]] - 6.0) + 1e3 * (z_mm < 20.0)
                centre[2] = z_mm[int(np.argmin(column))]
                kind = "burr_hole_marker"
            _ellipsoid(hu, maps, centre, rng.uniform(1.0, 2.2, 3), 6000.0)
            found.append({"kind": kind, "mni": centre})
    return found


def _vox(maps: MniMaps, mni: np.ndarray) -> tuple[int, int, int]:
    return tuple(int(v) for v in np.clip(np.round(maps.mm_to_vox(np.asarray(mni)[None])[0]), 0,
                                         np.array(maps.shape) - 1))


def _local(maps: MniMaps, lo_mm: np.ndarray, hi_mm: np.ndarray) -> tuple[tuple[slice, ...], np.ndarray]:
    """(box, (..., 3) MNI mm of its voxels) covering [lo_mm, hi_mm]."""
    lo = np.maximum(np.floor(maps.mm_to_vox(lo_mm[None])[0]).astype(int), 0)
    hi = np.minimum(np.ceil(maps.mm_to_vox(hi_mm[None])[0]).astype(int) + 1, maps.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    xyz = np.stack(np.meshgrid(*(maps.affine[d, 3] + maps.affine[d, d] * np.arange(lo[d], hi[d])
                                 for d in range(3)), indexing="ij"), axis=-1)
    return box, xyz


def _ellipsoid(hu: np.ndarray, maps: MniMaps, centre: np.ndarray, radii: np.ndarray, value: float) -> None:
    box, xyz = _local(maps, centre - radii - 1.5, centre + radii + 1.5)
    r = np.sqrt((((xyz - centre) / radii) ** 2).sum(-1))
    w = np.clip((1.0 - r) * float(np.min(radii)) + 0.5, 0.0, 1.0)  # ~1 mm edge
    hu[box] = w * value + (1.0 - w) * hu[box]


def _tube(hu: np.ndarray, maps: MniMaps, start: np.ndarray, end: np.ndarray, radius: float, value: float) -> None:
    box, xyz = _local(maps, np.minimum(start, end) - radius - 1.5, np.maximum(start, end) + radius + 1.5)
    seg = end - start
    t = np.clip(((xyz - start) @ seg) / float(seg @ seg), 0.0, 1.0)
    d = np.linalg.norm(xyz - start - t[..., None] * seg, axis=-1)
    w = np.clip(radius + 0.5 - d, 0.0, 1.0)
    hu[box] = w * value + (1.0 - w) * hu[box]


def _crescent(rng: np.random.Generator, hu: np.ndarray, maps: MniMaps) -> np.ndarray:
    """A thin cap under the inner table over one convexity, thickest at its middle: it fills the CSF
    rim and presses a drawn depth into the cortex."""
    side = float(rng.choice([-1.0, 1.0]))
    axis = np.array([side * 0.8, rng.uniform(-0.4, 0.3), rng.uniform(0.2, 0.6)])
    axis /= np.linalg.norm(axis)
    centre_head = np.array([0.0, -18.0, 10.0])
    box, xyz = _local(maps, np.array([-80.0, -110.0, -40.0]), np.array([80.0, 80.0, 85.0]))
    rel = xyz - centre_head
    cos = (rel @ axis) / np.maximum(np.linalg.norm(rel, axis=-1), 1e-6)
    half_angle = np.deg2rad(rng.uniform(25.0, 45.0))
    taper = np.clip(1.0 - np.arccos(np.clip(cos, -1.0, 1.0)) / half_angle, 0.0, 1.0) ** 0.7
    depth = rng.uniform(1.0, 3.5) * taper - 0.5  # mm inside the brain's envelope
    d = maps.d_env[box]
    w = np.clip(d + depth + 0.5, 0.0, 1.0) * (taper > 0.0) * (d < 5.5) * (hu[box] < 100.0)
    value = float(rng.uniform(42.0, 58.0))
    hu[box] = w * value + (1.0 - w) * hu[box]
    # its middle, on the surface of the brain along the axis
    t = np.arange(0.0, 110.0, 1.0)
    ray = centre_head + t[:, None] * axis
    outside = [maps.d_env[_vox(maps, p)] > 0.2 for p in ray]
    return ray[int(np.argmax(outside))] if any(outside) else centre_head + 60.0 * axis


def _falx_plaque(hu: np.ndarray, maps: MniMaps, centre: np.ndarray, length: float, height: float,
                 value: float) -> None:
    """A calcified plate in the midline: an ellipse in y-z, about 1 mm thick, in the falx (CSF, not brain)."""
    box, xyz = _local(maps, centre - np.array([2.0, length + 1, height + 1]), centre + np.array([2.0, length + 1,
                                                                                               height + 1]))
    r = np.sqrt(((xyz[..., 1] - centre[1]) / length) ** 2 + ((xyz[..., 2] - centre[2]) / height) ** 2)
    w = np.clip((1.0 - r) * height + 0.5, 0.0, 1.0) * np.clip(1.3 - np.abs(xyz[..., 0] - centre[0]), 0.0, 1.0)
    w *= (maps.csf[box] > 0.3) | ~maps.brain[box]
    hu[box] = w * value + (1.0 - w) * hu[box]


# --- scanner -------------------------------------------------------------------------------------


def scanner_effects(rng: np.random.Generator, hu: np.ndarray, grid: CTGrid, mni: np.ndarray,
                    protocol: dict) -> np.ndarray:
    """The scanner on the acquisition grid (canonical (I, J, K) HU, slices along K): cupping, streaks
    from the petrous apexes and from metal, noise with a ring-shaped in-plane spectrum, edge-preserving
    smoothing, calibration. ``mni``: (I, J, K, 3) MNI mm of the voxel centres."""
    x, y, z = mni[..., 0], mni[..., 1], mni[..., 2]
    metal = hu > _METAL_HU
    tissue = hu > -300.0
    r2 = (x / 70.0) ** 2 + ((y + 18.0) / 88.0) ** 2 + ((z - 10.0) / 95.0) ** 2
    out = hu - protocol["cupping_hu"] * np.clip(1.0 - r2, 0.0, 1.0) * tissue
    if rng.random() < 0.8:
        out += _petrous_fan(rng, mni)
    if metal.any():
        out += _metal_streaks(rng, metal, grid)
    weight = (1.0 + 0.3 * np.clip(1.0 - r2, 0.0, 1.0)).astype(np.float32)  # fewer photons through the middle
    out += protocol["noise_hu"] * weight * _ring_noise(rng, hu.shape, grid.spacing_mm, protocol)
    out = _edge_preserving(out.astype(np.float32), protocol["ir_iterations"], protocol["ir_kappa_hu"])
    return ((out + 1000.0) * protocol["calibration_gain"] - 1000.0).astype(np.float32)


def _ring_noise(rng: np.random.Generator, shape: tuple[int, ...], spacing: np.ndarray, protocol: dict) -> np.ndarray:
    """(I, J, K) float32 unit-variance noise, independent between slices, in-plane spectrum a ring at
    ``nps_peak_per_mm`` plus a low-frequency (blotchy) part with ``blotch`` of the variance."""
    white = rng.standard_normal(shape, dtype=np.float32)
    spectrum = sfft.rfft2(white, axes=(0, 1), workers=1)
    fi = sfft.fftfreq(shape[0], d=spacing[0])[:, None]
    fj = sfft.rfftfreq(shape[1], d=spacing[1])[None, :]
    f = np.hypot(fi, fj)
    nyquist = 0.5 / max(spacing[0], spacing[1])
    peak = min(protocol["nps_peak_per_mm"], 0.7 * nyquist)
    ring = np.exp(-0.5 * ((f - peak) / protocol["nps_width_per_mm"]) ** 2).astype(np.float32)
    low = np.exp(-0.5 * (f / 0.04) ** 2).astype(np.float32)
    parts = []
    for filt in (ring, low):
        part = sfft.irfft2(spectrum * filt[..., None], s=shape[:2], axes=(0, 1), workers=1).astype(np.float32)
        part /= max(float(part.std()), 1e-6)
        parts.append(part)
    b = protocol["blotch"]
    return np.sqrt(1.0 - b) * parts[0] + np.sqrt(b) * parts[1]


def _edge_preserving(hu: np.ndarray, iterations: int, kappa: float, step: float = 0.2) -> np.ndarray:
    """In-plane regularized Perona-Malik diffusion: smooths where the (slightly smoothed) image varies
    well below ``kappa`` HU between neighbours, keeps edges; single-voxel outliers do not survive."""
    out = hu.copy()
    for _ in range(iterations):
        guide = ndimage.gaussian_filter(out, (1.0, 1.0, 0.0))
        flux_i = np.zeros_like(out)
        flux_j = np.zeros_like(out)
        g = guide[1:] - guide[:-1]
        flux_i[:-1] = (out[1:] - out[:-1]) * np.exp(-((g / kappa) ** 2))
        g = guide[:, 1:] - guide[:, :-1]
        flux_j[:, :-1] = (out[:, 1:] - out[:, :-1]) * np.exp(-((g / kappa) ** 2))
        change = flux_i + flux_j
        change[1:] -= flux_i[:-1]
        change[:, 1:] -= flux_j[:, :-1]
        out += step * change
    return out


def _petrous_fan(rng: np.random.Generator, mni: np.ndarray) -> np.ndarray:
    """Streaks fanning from the petrous apexes backwards over the posterior fossa and a dark bar
    between the apexes, in the voxels near the skull base (``mni``: (I, J, K, 3) mm)."""
    apex_z = rng.uniform(-38.0, -30.0)
    reach_z = rng.uniform(4.0, 8.0)
    out = np.zeros(mni.shape[:-1], np.float32)
    where = np.abs(mni[..., 2] - apex_z) < 3.0 * reach_z
    if not where.any():
        return out
    x, y, z = (mni[..., d][where] for d in range(3))
    near = np.exp(-0.5 * ((z - apex_z) / reach_z) ** 2)
    apexes = [np.array([side * rng.uniform(20.0, 26.0), rng.uniform(-20.0, -12.0)]) for side in (-1.0, 1.0)]
    # the inter-petrous bar: a dark band along the segment between the apexes, set back a little
    a, b = apexes[0] + [0.0, -8.0], apexes[1] + [0.0, -8.0]
    seg = b - a
    t = np.clip(((x - a[0]) * seg[0] + (y - a[1]) * seg[1]) / float(seg @ seg), 0.0, 1.0)
    d = np.hypot(x - a[0] - t * seg[0], y - a[1] - t * seg[1])
    streaks = -rng.uniform(8.0, 25.0) * np.exp(-0.5 * (d / rng.uniform(3.0, 6.0)) ** 2)
    for apex in apexes:
        theta = np.arctan2(y - apex[1], x - apex[0])
        decay = np.exp(-np.hypot(x - apex[0], y - apex[1]) / rng.uniform(25.0, 50.0))
        backwards = -np.pi / 2.0 - np.sign(apex[0]) * 0.4  # towards the posterior fossa's middle
        for _ in range(int(rng.integers(4, 9))):
            off = (theta - (backwards + rng.normal(0.0, 0.5)) + np.pi) % (2.0 * np.pi) - np.pi
            width = rng.uniform(0.015, 0.04)
            streaks += rng.choice([-1.0, 1.0]) * rng.uniform(12.0, 40.0) * np.exp(-0.5 * (off / width) ** 2) * decay
    out[where] = streaks * near
    return out


def _metal_streaks(rng: np.random.Generator, metal: np.ndarray, grid: CTGrid) -> np.ndarray:
    """Star-shaped bright/dark streaks through the metal in each slice that holds some."""
    out = np.zeros(metal.shape, np.float32)
    ii = (np.arange(metal.shape[0], dtype=np.float32) * grid.spacing_mm[0])[:, None]
    jj = (np.arange(metal.shape[1], dtype=np.float32) * grid.spacing_mm[1])[None, :]
    lines = [(rng.uniform(0.0, np.pi), rng.choice([-1.0, 1.0]) * rng.uniform(60.0, 200.0), rng.uniform(0.4, 1.2))
             for _ in range(int(rng.integers(6, 13)))]
    area_ref = 12.0 / float(grid.spacing_mm[0] * grid.spacing_mm[1])  # voxels of a ~4 mm cross-section
    for k in np.unique(np.nonzero(metal)[2]):
        pts = np.argwhere(metal[:, :, k])
        ci, cj = pts.mean(0) * grid.spacing_mm[:2]
        di, dj = ii - ci, jj - cj
        r = np.hypot(di, dj)
        streak = np.zeros(metal.shape[:2], np.float32)
        for angle, amplitude, width in lines:
            d = np.abs(-di * np.sin(angle) + dj * np.cos(angle))
            streak += amplitude * np.exp(-0.5 * (d / width) ** 2)
        out[:, :, k] = streak * np.exp(-r / 40.0) * min(1.0, len(pts) / area_ref)
    return out


__all__ = ["NAME", "grid_parameters", "paint_hematoma", "paint_mimics", "sample_hematomas", "sample_protocol",
           "scanner_effects"]
