"""CT family ``ct-b`` (held out: never trained on). Written apart from ``ct-a``: its own hematoma
shape model (a sphere deformed by a smoothed random field, with budding daughter lobes), its own
density heterogeneity, a sharp reconstruction kernel (unsharp masking) with high-pass noise that
grows towards the skull base, HU calibration offset and gain, thinner and more tilted slices, and a
different mimic set (hyperdense venous sinuses, calcified dural plaques, choroid plexus and pineal
calcification, ring streaks).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from cmbdet.anatomy import CALCIFICATION_SITES_MNI, MniMaps
from cmbdet.phantom.ct.head import CTGrid, Pose
from cmbdet.phantom.ct.lesion import Hematoma, nominal_radius, radius_scale

NAME = "ct-b"


def sample_protocol(rng: np.random.Generator, *, fast: bool = False) -> dict:
    thick = rng.random() < 0.5
    if thick:
        slice_mm = float(rng.choice([4.0, 4.5, 5.0]))
        thickness = slice_mm
    else:
        slice_mm = float(rng.uniform(0.7, 1.0))
        thickness = slice_mm
    inplane = rng.uniform(1.0, 1.5) if fast else rng.uniform(0.55, 0.85) if thick else rng.uniform(0.7, 0.9)
    if fast and not thick:
        slice_mm = thickness = float(rng.uniform(1.0, 1.5))
    orders = [("L", "P", "S"), ("L", "A", "S"), ("R", "A", "S"), ("A", "L", "S"), ("L", "S", "P"), ("R", "P", "S")]
    return {
        "inplane_mm": float(inplane), "slice_mm": slice_mm, "thickness_mm": float(thickness),
        "tilt_deg": float(rng.uniform(-25.0, 25.0)), "axcodes": orders[int(rng.integers(len(orders)))],
        "intercept": float(rng.choice([-1024.0, -1024.0, 0.0])), "sharpen": float(rng.uniform(0.3, 0.9)),
        "noise_hu": float(rng.uniform(4.0, 8.0)), "offset_hu": float(rng.uniform(-6.0, 6.0)),
        "gain": float(rng.uniform(0.97, 1.03)),
    }


def sample_hematomas(rng: np.random.Generator, maps: MniMaps, pose: Pose, *, p_free: float = 0.3) -> list[Hematoma]:
    """Centres drawn from the brain's own region map (not from a list of sites)."""
    if rng.random() < p_free:
        return []
    brain_idx = np.argwhere(maps.brain[::3, ::3, ::3]) * 3
    out: list[Hematoma] = []
    n = 1 + int(rng.random() < 0.12)
    region_names = {1: "lobar", 2: "deep", 3: "infratentorial"}
    for _ in range(n):
        for _attempt in range(50):
            ijk = brain_idx[int(rng.integers(len(brain_idx)))]
            region = region_names.get(int(maps.regions[tuple(ijk)]), "lobar")
            ml = float(rng.lognormal(np.log(12.0), 1.2))
            ml = float(np.clip(ml, 0.5, 100.0 if region != "infratentorial" else 25.0))
            radius = (3.0 * ml * 1000.0 / (4.0 * np.pi)) ** (1.0 / 3.0)
            if maps.d_env[tuple(ijk)] > -min(0.8 * radius + 3.0, 28.0) or maps.csf[tuple(ijk)] > 0.5:
                continue
            centre = maps.affine[:3, :3] @ ijk + maps.affine[:3, 3]
            if any(np.linalg.norm(centre - h.centre_mni) < 45.0 for h in out):
                continue
            break
        else:
            continue
        buds = int(rng.integers(0, 5))
        irregular = float(np.clip(0.15 * buds + rng.uniform(0.0, 0.4), 0.0, 1.0))
        ivh = region == "deep" and float(maps.d_vent[tuple(ijk)]) < radius + 8.0 and rng.random() < 0.5
        out.append(Hematoma(
            centre_mni=centre, target_ml=ml, density_hu=float(rng.normal(68.0, 8.0)), irregularity=irregular,
            blend=bool(rng.random() < 0.2), black_hole=bool(rng.random() < 0.1), swirl=bool(rng.random() < 0.1),
            fluid_level=bool(rng.random() < 0.05), n_islands=int(rng.integers(3, 6)) if rng.random() < 0.12 else 0,
            ivh=bool(ivh), region=region,
            shape={"seed": int(rng.integers(2**31)), "field_amp": 0.15 + 0.25 * irregular,
                   "buds": [(_direction(rng), rng.uniform(0.35, 0.6)) for _ in range(buds)],
                   "elong": rng.uniform(0.75, 1.25, 3), "gravity": pose.gravity_mni,
                   "hypo_seed": int(rng.integers(2**31)), "ivh_hu": float(rng.uniform(55.0, 80.0)),
                   "edema_mm": float(rng.uniform(1.0, 6.0)), "edema_drop": float(rng.uniform(5.0, 14.0))},
        ))
    return out


def _direction(rng: np.random.Generator) -> np.ndarray:
    v = rng.standard_normal(3)
    return v / np.linalg.norm(v)


def _smooth_field(seed: int, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    field = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    field = ndimage.gaussian_filter(field, sigma)
    return field / max(float(field.std()), 1e-6)


def _shape_field(h: Hematoma, u: np.ndarray, grid_shape: tuple[int, ...], radius: float) -> np.ndarray:
    """< 0 inside: elongated sphere + smooth random field (fixed in normalized space) + buds."""
    r = np.sqrt(((u / h.shape["elong"]) ** 2).sum(-1))
    # the random field is laid on a normalized 33^3 lattice and read at u, so it scales with growth
    lattice = _smooth_field(h.shape["seed"], (33, 33, 33), 3.0)
    coords = np.moveaxis((np.clip(u, -2.0, 2.0) + 2.0) * 8.0, -1, 0)
    noise = ndimage.map_coordinates(lattice, coords.reshape(3, -1), order=1).reshape(u.shape[:-1])
    f = r - 1.0 + h.shape["field_amp"] * noise
    for direction, size in h.shape["buds"]:
        f = np.minimum(f, np.sqrt(((u - direction * 0.95) ** 2).sum(-1)) / size - 1.0)
    for k in range(h.n_islands):
        d = _direction(np.random.default_rng(h.shape["seed"] + 17 * (k + 1)))
        f = np.minimum(f, np.sqrt(((u - d * 1.45) ** 2).sum(-1)) / 0.16 - 1.0)
    return f


def _blood(h: Hematoma, maps: MniMaps, radius: float
           ) -> tuple[tuple[slice, ...], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(box on the head grid, its mm coordinates, shape coordinates u, field f, blood fraction)."""
    reach = radius * 2.0 + 15.0
    lo = np.maximum(np.floor(maps.mm_to_vox((h.centre_mni - reach)[None])[0]).astype(int), 0)
    hi = np.minimum(np.ceil(maps.mm_to_vox((h.centre_mni + reach)[None])[0]).astype(int) + 1, maps.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    xyz = np.stack(np.meshgrid(*(maps.affine[d, 3] + np.arange(lo[d], hi[d]) for d in range(3)), indexing="ij"), -1)
    u = ((xyz - h.centre_mni) / radius).astype(np.float32)
    f = _shape_field(h, u, xyz.shape[:-1], radius)
    inside_brain = ndimage.binary_erosion(maps.brain[box], iterations=1) | (maps.d_env[box] < -3.0)
    blood = np.clip(0.5 - f * radius * 0.8, 0.0, 1.0) * inside_brain
    return box, xyz, u, f, blood


def paint_hematoma(h: Hematoma, label: int, hu: np.ndarray, frac: np.ndarray, ids: np.ndarray, maps: MniMaps,
                   rng: np.random.Generator, *, grown_ml: float = 0.0) -> None:
    """As ``ct-a``'s, with this family's own shape, density and edema models."""
    nominal = nominal_radius(h)

    def blood_ml(scale: float) -> float:
        return float(_blood(h, maps, nominal * scale)[4].sum()) / 1000.0

    radius = nominal * radius_scale(h, grown_ml, blood_ml)
    box, xyz, u, f, blood = _blood(h, maps, radius)
    hypo = _smooth_field(h.shape["hypo_seed"], blood.shape, max(radius / 4.0, 1.0))
    density = h.density_hu + 3.0 * _smooth_field(h.shape["hypo_seed"] + 1, blood.shape, 0.8)
    if h.blend:  # a hypodense region bordering the rest with a sharp edge
        density = np.where(hypo > 0.3, density - rng.uniform(20.0, 30.0), density)
    if h.black_hole:  # an enclosed dark pocket
        pocket = (np.sqrt(((u - 0.1 * hypo[..., None]) ** 2).sum(-1)) < 0.3) & (f < -0.3)
        density = np.where(pocket, density - rng.uniform(28.0, 40.0), density)
    if h.swirl:
        density = np.where((np.abs(hypo) < 0.15) & (f < -0.2), density - rng.uniform(12.0, 22.0), density)
    if h.fluid_level:
        density = np.where((u @ h.shape["gravity"]) > 0.1, density + 5.0, density - 20.0)
    d_mm = np.maximum(f * radius, 0.0)
    edema = np.exp(-d_mm / h.shape["edema_mm"]) * (f > 0) * maps.brain[box]
    region = hu[box]
    region -= edema * h.shape["edema_drop"]
    region[:] = blood * density + (1.0 - blood) * region
    frac[box] = np.maximum(frac[box], blood)
    ids[box][blood >= 0.5] = label
    if h.ivh:
        vent = (maps.d_vent[box] < 0.5) & (maps.csf[box] > 0.5)
        near = np.sqrt(((xyz - h.centre_mni) ** 2).sum(-1)) < nominal * radius_scale(h, 0.0, blood_ml) + 22.0
        dependent = ((xyz - h.centre_mni) @ h.shape["gravity"]) > -6.0
        clot = vent & near & dependent
        # a bridge: the shortest segment from the clot to the hematoma, thickened
        if clot.any():
            pts = np.argwhere(clot)
            target = pts[np.argmin(((pts - (np.array(blood.shape) / 2)) ** 2).sum(1))]
            centre = np.array(blood.shape) // 2
            for t in np.linspace(0.0, 1.0, 30):
                p = np.round(centre + t * (target - centre)).astype(int)
                sl = tuple(slice(max(a - 2, 0), a + 3) for a in p)
                clot[sl] |= True
            clot &= maps.brain[box] | vent
        hu[box][clot] = h.shape["ivh_hu"]
        frac[box][clot] = 1.0
        ids[box][clot] = label


def paint_mimics(rng: np.random.Generator, hu: np.ndarray, maps: MniMaps) -> list[dict]:
    """Hyperdense dural sinuses, dural calcified plaques, choroid plexus and pineal calcification."""
    x, y, z = (maps.affine[d, 3] + np.arange(maps.shape[d]) for d in range(3))
    gx, gy, gz = np.meshgrid(x, y, z, indexing="ij", sparse=True)
    found: list[dict] = []
    d = maps.d_env
    if rng.random() < 0.7:  # superior sagittal and transverse sinuses, dense blood in them
        value = rng.uniform(60.0, 80.0)
        sss = (np.abs(gx) < 3.5) & (d > 0.0) & (d < 4.5) & (gz > -10.0)
        transverse = (d > 0.0) & (d < 5.0) & (np.abs(gz + 12.0 + 0.1 * np.abs(gx)) < 3.5) & (gy < -70.0)
        hu[sss | transverse] = value
        found.append({"kind": "hyperdense_sinus", "mni": np.array([0.0, -90.0, 20.0])})
    for _ in range(int(rng.poisson(1.5))):  # calcified dural plaques on the falx or convexity
        pts = np.argwhere((d[::4, ::4, ::4] > 0.5) & (d[::4, ::4, ::4] < 2.5)) * 4
        if len(pts) == 0:
            break
        c = maps.affine[:3, :3] @ pts[int(rng.integers(len(pts)))] + maps.affine[:3, 3]
        r = ((gx - c[0]) ** 2 + (gy - c[1]) ** 2 + (gz - c[2]) ** 2) ** 0.5
        hu[r < rng.uniform(1.5, 3.5)] = rng.uniform(250.0, 700.0)
        found.append({"kind": "dural_calcification", "mni": c})
    if rng.random() < 0.5:
        for c in CALCIFICATION_SITES_MNI["choroid_plexus"]:
            c = np.asarray(c) + rng.normal(0.0, 1.5, 3)
            r = (((gx - c[0]) / 3.0) ** 2 + ((gy - c[1]) / 5.0) ** 2 + ((gz - c[2]) / 3.0) ** 2) ** 0.5
            hu[r < 1.0] = rng.uniform(90.0, 250.0)
            found.append({"kind": "choroid_plexus_calcification", "mni": c})
    if rng.random() < 0.6:
        c = np.asarray(CALCIFICATION_SITES_MNI["pineal"][0]) + rng.normal(0.0, 1.0, 3)
        r = ((gx - c[0]) ** 2 + (gy - c[1]) ** 2 + (gz - c[2]) ** 2) ** 0.5
        hu[r < rng.uniform(1.5, 3.5)] = rng.uniform(80.0, 300.0)
        found.append({"kind": "pineal_calcification", "mni": c})
    return found


def scanner_effects(rng: np.random.Generator, hu: np.ndarray, grid: CTGrid, mni: np.ndarray,
                    protocol: dict) -> np.ndarray:
    """Sharp kernel (unsharp mask), ring streaks, high-pass noise rising towards the skull base,
    calibration gain and offset."""
    blurred = ndimage.gaussian_filter(hu, (1.2, 1.2, 0.0))
    out = hu + protocol["sharpen"] * (hu - blurred)
    white = rng.standard_normal(hu.shape).astype(np.float32)
    high = white - ndimage.gaussian_filter(white, (1.5, 1.5, 0.0))
    high /= max(float(high.std()), 1e-6)
    base_weight = 1.0 + 0.8 * np.clip(-(mni[..., 2] + 10.0) / 40.0, 0.0, 1.0)
    out += protocol["noise_hu"] * high * base_weight
    if rng.random() < 0.3:  # a faint ring around the grid's centre (detector miscalibration)
        ci, cj = (np.array(hu.shape[:2]) - 1) / 2.0 + rng.normal(0.0, 5.0, 2)
        ii, jj = np.meshgrid(np.arange(hu.shape[0]), np.arange(hu.shape[1]), indexing="ij")
        rr = np.sqrt(((ii - ci) * grid.spacing_mm[0]) ** 2 + ((jj - cj) * grid.spacing_mm[1]) ** 2)
        ring = rng.uniform(6.0, 15.0) * np.exp(-0.5 * ((rr - rng.uniform(20.0, 60.0)) / 1.0) ** 2)
        out += ring[..., None]
    return (out * protocol["gain"] + protocol["offset_hu"]).astype(np.float32)
