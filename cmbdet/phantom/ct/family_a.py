"""CT family ``ct-a`` (the training family): lobulated hematomas as unions of ellipsoids with a
cosine-ripple margin, Gaussian kernel blur and lightly correlated Gaussian noise, thick 5 mm or thin
0.6-1.25 mm slices, and the classic density-threshold mimics (calcified choroid plexus, pineal and
basal ganglia calcification, dense falx, beam-hardening streaks between the petrous bones).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from cmbdet.anatomy import CALCIFICATION_SITES_MNI, IRON_NUCLEI_MNI, MniMaps
from cmbdet.phantom.ct.head import CTGrid, Pose, random_axcodes
from cmbdet.phantom.ct.lesion import Hematoma, nominal_radius, radius_scale, sample_volume_ml

NAME = "ct-a"

_REGION_CENTRES = {  # (MNI centre, spread) of where hematomas sit
    "deep": [((-24.0, 0.0, 2.0), (5.0, 10.0, 6.0)), ((24.0, 0.0, 2.0), (5.0, 10.0, 6.0)),
             ((-12.0, -18.0, 6.0), (4.0, 6.0, 5.0)), ((12.0, -18.0, 6.0), (4.0, 6.0, 5.0))],
    "lobar": [((-40.0, 20.0, 20.0), (8.0, 20.0, 15.0)), ((40.0, 20.0, 20.0), (8.0, 20.0, 15.0)),
              ((-40.0, -50.0, 25.0), (8.0, 15.0, 15.0)), ((40.0, -50.0, 25.0), (8.0, 15.0, 15.0)),
              ((-45.0, -20.0, -5.0), (6.0, 15.0, 8.0)), ((45.0, -20.0, -5.0), (6.0, 15.0, 8.0))],
    "infratentorial": [((-20.0, -60.0, -35.0), (6.0, 6.0, 5.0)), ((20.0, -60.0, -35.0), (6.0, 6.0, 5.0)),
                       ((0.0, -27.0, -28.0), (3.0, 3.0, 5.0))],
}


def sample_protocol(rng: np.random.Generator, *, fast: bool = False) -> dict:
    """Acquisition of one scan: grid, kernel, noise, storage."""
    thick = rng.random() < 0.6
    if thick:
        slice_mm = thickness = 5.0
    else:
        slice_mm = float(rng.choice([0.8, 1.0, 1.25]))
        thickness = slice_mm * rng.uniform(1.0, 1.3)
    # in-plane 0.6-0.9 mm (clinical 512 matrices reach 0.45 mm; coarser keeps phantom sets cheap)
    inplane = rng.uniform(1.0, 1.5) if fast else rng.uniform(0.6, 0.9) if thick else rng.uniform(0.75, 0.9)
    if fast and not thick:
        slice_mm = thickness = float(rng.uniform(1.0, 1.5))
    return {
        "inplane_mm": float(inplane), "slice_mm": float(slice_mm), "thickness_mm": float(thickness),
        "tilt_deg": float(rng.uniform(-15.0, 15.0) if rng.random() < 0.5 else 0.0),
        "axcodes": random_axcodes(rng), "intercept": float(rng.choice([-1024.0, 0.0, -1000.0])),
        "blur_mm": float(rng.uniform(0.3, 0.7)), "noise_hu": float(rng.uniform(2.5, 6.0)),
        "calibration_hu": float(rng.uniform(-2.0, 2.0)),
    }


def sample_hematomas(rng: np.random.Generator, maps: MniMaps, pose: Pose, *, p_free: float = 0.25) -> list[Hematoma]:
    """0 (with probability ``p_free``), 1, or occasionally 2 hematomas."""
    if rng.random() < p_free:
        return []
    n = 2 if rng.random() < 0.1 else 1
    out: list[Hematoma] = []
    for _ in range(n):
        for _attempt in range(30):
            region = str(rng.choice(["deep", "lobar", "infratentorial"], p=[0.5, 0.35, 0.15]))
            centres = _REGION_CENTRES[region]
            c, s = centres[int(rng.integers(len(centres)))]
            centre = np.asarray(c) + rng.normal(0.0, s)
            ml = sample_volume_ml(rng, 0.5, 100.0 if region != "infratentorial" else 30.0)
            radius = (3.0 * ml * 1000.0 / (4.0 * np.pi)) ** (1.0 / 3.0)
            ijk = np.round(maps.mm_to_vox(centre[None])[0]).astype(int)
            if np.any(ijk < 0) or np.any(ijk >= maps.shape) or not maps.brain[tuple(ijk)]:
                continue
            if maps.d_env[tuple(ijk)] > -min(radius * 0.7, 25.0):
                continue
            if any(np.linalg.norm(centre - h.centre_mni) < 40.0 for h in out):
                continue
            break
        else:
            continue
        irregular = float(rng.beta(1.2, 2.0))
        n_lobes = 1 + int(round(irregular * 5))
        lobes = [(rng.normal(0.0, 0.45 * irregular, 3), rng.uniform(0.55, 1.0, 3)) for _ in range(n_lobes)]
        lobes[0] = (np.zeros(3), rng.uniform(0.75, 1.0, 3))
        ripple = [(rng.normal(0.0, 1.0, 3) * rng.uniform(2.0, 5.0), rng.uniform(0, 2 * np.pi)) for _ in range(6)]
        d_vent = float(maps.d_vent[tuple(np.clip(np.round(maps.mm_to_vox(centre[None])[0]).astype(int), 0,
                                                  np.array(maps.shape) - 1))])
        ivh = (region == "deep" and d_vent < radius + 10.0 and rng.random() < 0.6) or rng.random() < 0.08
        h = Hematoma(
            centre_mni=centre, target_ml=ml, density_hu=float(rng.uniform(55.0, 85.0)), irregularity=irregular,
            blend=bool(rng.random() < 0.15), black_hole=bool(rng.random() < 0.12), swirl=bool(rng.random() < 0.15),
            fluid_level=bool(rng.random() < 0.08), n_islands=int(rng.choice([0, 0, 0, 0, 0, 1, 2, 3, 4, 5])),
            ivh=bool(ivh), region=region,
            shape={"lobes": lobes, "ripple": ripple, "ripple_amp": 0.08 + 0.22 * irregular,
                   "blend_normal": _unit(rng), "blend_offset": float(rng.uniform(-0.3, 0.3)),
                   "blend_drop": float(rng.uniform(20.0, 32.0)), "hole_centre": rng.normal(0.0, 0.15, 3),
                   "hole_radius": float(rng.uniform(0.25, 0.4)), "hole_drop": float(rng.uniform(30.0, 42.0)),
                   "swirl_k": rng.normal(0.0, 1.0, (3, 3)) * 4.0, "swirl_drop": float(rng.uniform(14.0, 24.0)),
                   "islands": [(_unit(rng) * rng.uniform(1.15, 1.6), rng.uniform(0.12, 0.25)) for _ in range(6)],
                   "edema": float(rng.uniform(0.15, 0.45)), "edema_drop": float(rng.uniform(7.0, 15.0)),
                   "texture": float(rng.uniform(2.0, 4.0)), "ivh_hu": float(rng.uniform(50.0, 75.0)),
                   "gravity": pose.gravity_mni},
        )
        out.append(h)
    return out


def _unit(rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(0.0, 1.0, 3)
    return v / np.linalg.norm(v)


def _implicit(h: Hematoma, u: np.ndarray) -> np.ndarray:
    """Signed shape function on normalized coordinates u (..., 3) (unit = nominal radius): < 0 inside."""
    f = np.full(u.shape[:-1], np.inf, np.float32)
    for centre, radii in h.shape["lobes"]:
        r = np.sqrt((((u - centre) / radii) ** 2).sum(-1))
        f = np.minimum(f, r - 1.0)
    ripple = np.zeros_like(f)
    for k, phase in h.shape["ripple"]:
        ripple += np.cos(u @ k + phase)
    return f + h.shape["ripple_amp"] * ripple / np.sqrt(len(h.shape["ripple"]))


def _islands(h: Hematoma, u: np.ndarray) -> np.ndarray:
    f = np.full(u.shape[:-1], np.inf, np.float32)
    for centre, radius in h.shape["islands"][: h.n_islands]:
        f = np.minimum(f, np.sqrt(((u - centre) ** 2).sum(-1)) / radius - 1.0)
    return f


def _blood(h: Hematoma, maps: MniMaps, radius: float) -> tuple[tuple[slice, ...], np.ndarray, np.ndarray, np.ndarray]:
    """(box on the head grid, lobe coordinates u, implicit field f, blood fraction) at ``radius`` mm."""
    reach = radius * 2.2 + 20.0
    lo = np.maximum(np.floor(maps.mm_to_vox((h.centre_mni - reach)[None])[0]).astype(int), 0)
    hi = np.minimum(np.ceil(maps.mm_to_vox((h.centre_mni + reach)[None])[0]).astype(int) + 1, maps.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    axes = [maps.affine[d, 3] + maps.affine[d, d] * np.arange(lo[d], hi[d]) for d in range(3)]
    xyz = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).astype(np.float32)
    u = (xyz - h.centre_mni) / radius
    brain_env = maps.d_env[box] < -0.5
    f = np.minimum(_implicit(h, u), _islands(h, u))
    blood = np.clip(0.5 - f * radius, 0.0, 1.0) * brain_env  # 1 mm ramp at the margin
    return box, u, f, blood


def paint_hematoma(h: Hematoma, label: int, hu: np.ndarray, frac: np.ndarray, ids: np.ndarray, maps: MniMaps,
                   rng: np.random.Generator, *, grown_ml: float = 0.0) -> None:
    """Paint the hematoma (its blood, islands, edema and IVH) into the head-grid HU map; ``frac``
    gets its blood fraction (0-1) and ``ids`` its label where the fraction is >= 0.5. The lobe radii
    are calibrated so that the blood volume is ``target_ml`` at baseline and the baseline's plus
    ``grown_ml`` (head-grid mL) at follow-up (`radius_scale`); the ventricular blood stays as at baseline."""
    nominal = nominal_radius(h)

    def blood_ml(scale: float) -> float:
        return float(_blood(h, maps, nominal * scale)[3].sum()) / 1000.0

    radius = nominal * radius_scale(h, grown_ml, blood_ml)
    box, u, f, blood = _blood(h, maps, radius)
    # density with its heterogeneity signs
    density = np.full(u.shape[:-1], h.density_hu, np.float32)
    texture = ndimage.gaussian_filter(rng.normal(0.0, 1.0, density.shape), 1.0).astype(np.float32)
    density += h.shape["texture"] * texture * 2.0
    if h.blend:
        side = (u @ h.shape["blend_normal"]) > h.shape["blend_offset"]
        density -= h.shape["blend_drop"] * side
    if h.black_hole:
        inner = np.sqrt(((u - h.shape["hole_centre"]) ** 2).sum(-1)) < h.shape["hole_radius"]
        density -= h.shape["hole_drop"] * inner
    if h.swirl:
        wave = np.cos(u @ h.shape["swirl_k"][0]) * np.cos(u @ h.shape["swirl_k"][1])
        density -= h.shape["swirl_drop"] * (wave > 0.55) * (np.sqrt((u**2).sum(-1)) < 0.75)
    if h.fluid_level:
        dependent = (u @ h.shape["gravity"]) > 0.0
        density = np.where(dependent, density + 6.0, density - 22.0)
    # edema: a rim of lower density around the blood, in brain tissue only
    d_mm = np.maximum(f * radius, 0.0)
    width = 1.5 + h.shape["edema"] * radius
    edema = np.clip(1.0 - d_mm / width, 0.0, 1.0) * (f > 0) * maps.brain[box] * (maps.csf[box] < 0.5)
    region = hu[box]
    region -= edema * h.shape["edema_drop"]
    region[:] = blood * density + (1.0 - blood) * region
    frac[box] = np.maximum(frac[box], blood)
    ids[box][blood >= 0.5] = label
    if h.ivh:
        _paint_ivh(h, label, hu, frac, ids, maps, nominal * radius_scale(h, 0.0, blood_ml))


def _paint_ivh(h: Hematoma, label: int, hu: np.ndarray, frac: np.ndarray, ids: np.ndarray, maps: MniMaps,
               radius: float) -> None:
    """Blood in the ventricles near the hematoma (dependent part) and a channel into them."""
    c_vox = np.round(maps.mm_to_vox(h.centre_mni[None])[0]).astype(int)
    c_vox = np.clip(c_vox, 0, np.array(maps.shape) - 1)
    target = maps.vent_idx[(slice(None), *c_vox)].astype(float)
    start = c_vox.astype(float)
    for t in np.linspace(0.0, 1.0, 40):  # channel of radius 2.5 mm
        p = start + t * (target - start)
        lo = np.maximum(np.floor(p - 3).astype(int), 0)
        hi = np.minimum(np.ceil(p + 4).astype(int), maps.shape)
        box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        g = np.stack(np.meshgrid(*(np.arange(a, b) for a, b in zip(lo, hi, strict=True)), indexing="ij"), -1)
        inside = (np.sqrt(((g - p) ** 2).sum(-1)) <= 2.5) & maps.brain[box]
        hu[box][inside] = h.shape["ivh_hu"]
        frac[box][inside] = 1.0
        ids[box][inside] = label
    # the dependent part of the ventricles within reach
    reach = radius + 30.0
    lo = np.maximum((target - reach).astype(int), 0)
    hi = np.minimum((target + reach).astype(int) + 1, maps.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    vent = (maps.d_vent[box] < 0.5) & (maps.csf[box] > 0.5)
    g = np.stack(np.meshgrid(*(np.arange(a, b) for a, b in zip(lo, hi, strict=True)), indexing="ij"), -1)
    toward = ((g - target) * maps.resolution) @ h.shape["gravity"]
    dist = np.sqrt((((g - target) * maps.resolution) ** 2).sum(-1))
    blood = vent & (toward > -4.0) & (dist < reach)
    hu[box][blood] = h.shape["ivh_hu"]
    frac[box][blood] = 1.0
    ids[box][blood] = label


def paint_mimics(rng: np.random.Generator, hu: np.ndarray, maps: MniMaps) -> list[dict]:
    """Calcifications and the dense falx on the head grid; returns [{kind, x_mm, y_mm, z_mm (MNI)}]."""
    found: list[dict] = []

    def blob(centre, radii, value):
        reach = np.asarray(radii) + 2.0
        lo = np.maximum(np.floor(maps.mm_to_vox((np.asarray(centre) - reach)[None])[0]).astype(int), 0)
        hi = np.minimum(np.ceil(maps.mm_to_vox((np.asarray(centre) + reach)[None])[0]).astype(int) + 1, maps.shape)
        axes = [maps.affine[d, 3] + maps.affine[d, d] * np.arange(lo[d], hi[d]) for d in range(3)]
        xyz = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
        r = np.sqrt((((xyz - centre) / radii) ** 2).sum(-1))
        w = np.clip((1.0 - r) * min(radii) + 0.5, 0.0, 1.0)
        box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        hu[box] = w * value + (1.0 - w) * hu[box]

    if rng.random() < 0.6:
        for c in CALCIFICATION_SITES_MNI["choroid_plexus"]:
            centre = np.asarray(c) + rng.normal(0.0, 2.0, 3)
            blob(centre, rng.uniform(2.0, 5.0, 3), rng.uniform(120.0, 400.0))
            found.append({"kind": "choroid_plexus_calcification", "mni": centre})
    if rng.random() < 0.5:
        centre = np.asarray(CALCIFICATION_SITES_MNI["pineal"][0]) + rng.normal(0.0, 1.0, 3)
        blob(centre, rng.uniform(2.0, 4.0, 3), rng.uniform(100.0, 350.0))
        found.append({"kind": "pineal_calcification", "mni": centre})
    if rng.random() < 0.2:
        for c, _ in IRON_NUCLEI_MNI["globus_pallidus"]:
            for _ in range(int(rng.integers(1, 4))):
                centre = np.asarray(c) + rng.normal(0.0, 2.5, 3)
                blob(centre, rng.uniform(1.2, 3.0, 3), rng.uniform(80.0, 220.0))
                found.append({"kind": "basal_ganglia_calcification", "mni": centre})
    if rng.random() < 0.7:
        value = rng.uniform(60.0, 110.0)
        x, y, z = (maps.affine[d, 3] + maps.affine[d, d] * np.arange(maps.shape[d]) for d in range(3))
        ix = np.nonzero(np.abs(x) <= 0.6)[0]
        yy, zz = np.meshgrid(y, z, indexing="ij")
        sheet = (zz > 18.0 - 0.15 * np.abs(yy + 20.0)) | (yy < -70.0)
        for i in ix:
            near = sheet & (maps.d_env[i] < 2.0)
            column = near & ((maps.csf[i] > 0.4) | ~maps.brain[i])
            hu[i][column] = value
        found.append({"kind": "dense_falx", "mni": np.array([0.0, -20.0, 40.0])})
    return found


def scanner_effects(rng: np.random.Generator, hu: np.ndarray, grid: CTGrid, mni: np.ndarray,
                    protocol: dict) -> np.ndarray:
    """Kernel blur, beam-hardening streaks near the skull base and noise, on the acquisition grid.
    ``mni``: (X, Y, Z, 3) MNI mm of the voxel centres."""
    sig = protocol["blur_mm"] / grid.spacing_mm[:2]
    out = ndimage.gaussian_filter(hu, (sig[0], sig[1], 0.0))
    if rng.random() < 0.7:
        out += _streaks(rng, mni, grid)
    noise = rng.normal(0.0, 1.0, hu.shape).astype(np.float32)
    noise = ndimage.gaussian_filter(noise, (0.6, 0.6, 0.0))
    noise *= protocol["noise_hu"] / max(float(noise.std()), 1e-6)
    return (out + noise + protocol["calibration_hu"]).astype(np.float32)


def _streaks(rng: np.random.Generator, mni: np.ndarray, grid: CTGrid) -> np.ndarray:
    """Dark band and streaks in the axial plane between the petrous bones (MNI z -48..-22)."""
    x, y, z = mni[..., 0], mni[..., 1], mni[..., 2]
    band = np.clip(1.0 - np.abs(z + 35.0) / 13.0, 0.0, 1.0) * (y < -5.0) * (y > -85.0)
    out = -rng.uniform(10.0, 30.0) * band * np.exp(-(((y + 30.0) / 12.0) ** 2)) * (np.abs(x) < 35.0)
    for _ in range(int(rng.integers(3, 8))):
        angle = rng.uniform(0.0, np.pi)
        px, py = rng.normal(0.0, 15.0), rng.normal(-30.0, 8.0)
        dist = np.abs(-(x - px) * np.sin(angle) + (y - py) * np.cos(angle))
        out += rng.uniform(-35.0, 25.0) * np.exp(-0.5 * (dist / rng.uniform(0.6, 1.5)) ** 2) * band
    return out.astype(np.float32)


def grid_parameters(protocol: dict) -> dict:
    return {k: protocol[k] for k in ("inplane_mm", "slice_mm", "thickness_mm", "tilt_deg", "axcodes")}


__all__ = ["NAME", "paint_hematoma", "paint_mimics", "sample_hematomas", "sample_protocol", "scanner_effects",
           "CTGrid"]
