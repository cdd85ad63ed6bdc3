"""Multi-sequence MRI phantoms with hemorrhagic lesions, per site.

Anatomy, pose, grids and sampling come from the CT phantom's shared head (`cmbdet.phantom.ct.head`);
here each sequence gets its own contrast, grid and noise. Lesions (signal by age after the usual
T1/T2 evolution table):

* non-neoplastic hematoma (``ich``): usually single, deep (basal ganglia, thalamus, pons,
  cerebellum) or lobar, smooth margin, uniform core of one age, a complete hemosiderin rim dark
  on SWI/T2* (blooming with the site's echo time), edema in proportion to the volume;
* hemorrhagic metastasis (``hbm``): often several, at the grey-white junction, heterogeneous core
  (mixed ages), an enhancing rim or nodule on post-contrast T1, FLAIR edema out of proportion
  (spreading through white matter), an incomplete rim.

Sites differ in contrast (tissue intensities), noise, resolution and which sequences exist; the
label map (truth) lives on the reference grid (SWI, else T2*, else the first present of
post-contrast T1, T1, FLAIR, T2) and paints each lesion's blood and tumour core (not edema).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from cmbdet.anatomy import MniMaps, mni_maps
from cmbdet.atomic import write_bytes_atomic
from cmbdet.phantom.ct.head import make_grid, oriented_image, random_axcodes, sample_on_grid, sample_pose
from cmbdet.volume import save_image_atomic

#: Per-site settings: sequences present, in-plane / slice mm per sequence, noise (fraction of WM), TE
#: blooming (mm of rim growth), contrast jitter, fraction of metastasis subjects.
SITES: dict[str, dict] = {
    "mri-s1": {"sequences": ("swi", "T1w", "ceT1w", "T2w", "FLAIR"), "noise": 0.03, "bloom_mm": 1.0, "jitter": 0.05},
    "mri-s2": {"sequences": ("swi", "T1w", "FLAIR"), "noise": 0.05, "bloom_mm": 1.5, "jitter": 0.08},
    "mri-s3": {"sequences": ("T2starw", "T1w", "ceT1w", "T2w"), "noise": 0.04, "bloom_mm": 0.7, "jitter": 0.06},
    "mri-s4": {"sequences": ("swi", "ceT1w", "FLAIR", "T2w"), "noise": 0.06, "bloom_mm": 2.0, "jitter": 0.12},
}
#: Relative tissue signal per sequence: wm, gm, csf, fat (scalp), bone, air.
_TISSUE = {
    "swi": (0.85, 0.72, 1.0, 0.55, 0.08, 0.02),
    "T2starw": (0.8, 0.7, 1.0, 0.6, 0.08, 0.02),
    "T1w": (1.0, 0.68, 0.22, 1.25, 0.06, 0.02),
    "ceT1w": (1.0, 0.68, 0.22, 1.25, 0.06, 0.02),
    "T2w": (0.45, 0.62, 1.0, 0.75, 0.06, 0.02),
    "FLAIR": (0.62, 0.82, 0.08, 0.8, 0.05, 0.02),
}
#: Hematoma core signal by age (T1, T2, susceptibility), relative to white matter.
_AGE = {
    "hyperacute": (0.75, 1.1, 0.5), "acute": (0.7, 0.25, 0.2), "early_subacute": (1.35, 0.3, 0.25),
    "late_subacute": (1.45, 1.2, 0.45), "chronic": (0.3, 0.9, 0.3),
}
TRUTH_COLUMNS = ["subject", "lesion_id", "kind", "x_mm", "y_mm", "z_mm", "volume_ml", "region", "age",
                 "site", "reference", "sequences"]


@dataclass
class MRIPhantom:
    subject: str
    images: dict[str, nib.Nifti1Image]
    truth: nib.Nifti1Image
    lesions: list[dict]
    reference: str
    site: str


def _grid_for(rng: np.random.Generator, name: str, pose, fast: bool, axcodes):
    if fast:
        inplane, slice_mm = rng.uniform(1.3, 1.8), rng.uniform(1.5, 3.0)
    elif name in ("swi", "T2starw"):
        inplane, slice_mm = rng.uniform(0.7, 1.0), rng.choice([1.5, 2.0, 2.5])
    elif name in ("T1w", "ceT1w"):
        inplane, slice_mm = 1.0, 1.0 if rng.random() < 0.6 else 1.2
    else:
        inplane, slice_mm = rng.uniform(0.8, 1.0), rng.choice([3.0, 4.0, 5.0])
    return make_grid(rng, pose, inplane_mm=inplane, slice_mm=float(slice_mm), thickness_mm=float(slice_mm),
                     tilt_deg=float(rng.uniform(-10, 10)), axcodes=axcodes, fov_mm=(190.0, 220.0, 160.0))


def _sites_of_lesions(rng: np.random.Generator, maps: MniMaps, kind: str) -> list[tuple[np.ndarray, str]]:
    """Centres (MNI mm) and regions: ich deep/lobar/infratentorial, hbm at the grey-white junction."""
    pts = np.argwhere(maps.brain[::2, ::2, ::2]) * 2
    regions = {1: "lobar", 2: "deep", 3: "infratentorial"}
    out: list[tuple[np.ndarray, str]] = []
    n = 1 if kind == "ich" else int(rng.choice([1, 1, 2, 2, 3, 4]))
    for _ in range(200):
        if len(out) >= n:
            break
        ijk = pts[int(rng.integers(len(pts)))]
        region = regions.get(int(maps.regions[tuple(ijk)]), "lobar")
        d_cortex, d_env = float(maps.d_cortex[tuple(ijk)]), float(maps.d_env[tuple(ijk)])
        if kind == "hbm" and not (1.5 <= d_cortex <= 6.0 and d_env < -8.0 and maps.wm[tuple(ijk)] > 0.3):
            continue
        if kind == "ich":
            wanted = rng.choice(["deep", "lobar", "infratentorial"], p=[0.55, 0.3, 0.15])
            if region != wanted or d_env > -12.0 or maps.csf[tuple(ijk)] > 0.4:
                continue
        centre = maps.affine[:3, :3] @ ijk + maps.affine[:3, 3]
        if any(np.linalg.norm(centre - c) < 30.0 for c, _ in out):
            continue
        out.append((centre, region))
    return out


def make_mri_subject(rng: np.random.Generator, *, subject: str, site: str = "mri-s1", fast: bool = False,
                     kind: str | None = None) -> MRIPhantom:
    """One subject: ``kind`` 'ich', 'hbm' or 'none' (default: drawn, 20 % lesion-free)."""
    cfg = SITES[site]
    maps = mni_maps(1)
    kind = kind or str(rng.choice(["ich", "hbm", "none"], p=[0.4, 0.4, 0.2]))
    pose = sample_pose(rng)
    centres = [] if kind == "none" else _sites_of_lesions(rng, maps, kind)
    # lesion fields on the head grid: core fraction, rim fraction, edema, enhancement, per-lesion id, signal
    core = np.zeros(maps.shape, np.float32)
    rim = np.zeros(maps.shape, np.float32)
    edema = np.zeros(maps.shape, np.float32)
    enhance = np.zeros(maps.shape, np.float32)
    ids = np.zeros(maps.shape, np.float32)
    sig_t1 = np.zeros(maps.shape, np.float32)
    sig_t2 = np.zeros(maps.shape, np.float32)
    sig_sus = np.zeros(maps.shape, np.float32)
    lesions = []
    for n, (centre, region) in enumerate(centres, start=1):
        ml = float(np.exp(rng.uniform(np.log(1.0), np.log(40.0)))) if kind == "ich" else \
            float(np.exp(rng.uniform(np.log(0.4), np.log(12.0))))
        radius = (3.0 * ml * 1000.0 / (4.0 * np.pi)) ** (1.0 / 3.0)
        reach = radius * 2.0 + (30.0 if kind == "hbm" else 15.0)
        lo = np.maximum(np.floor(maps.mm_to_vox((centre - reach)[None])[0]).astype(int), 0)
        hi = np.minimum(np.ceil(maps.mm_to_vox((centre + reach)[None])[0]).astype(int) + 1, maps.shape)
        box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        xyz = np.stack(np.meshgrid(*(maps.affine[d, 3] + np.arange(lo[d], hi[d]) for d in range(3)),
                                   indexing="ij"), -1)
        radii = radius * rng.uniform(0.8, 1.2, 3)
        r = np.sqrt((((xyz - centre) / radii) ** 2).sum(-1))
        bumpy = ndimage.gaussian_filter(rng.standard_normal(r.shape), 2.0)
        bumpy /= max(float(bumpy.std()), 1e-6)
        r = r + (0.04 if kind == "ich" else 0.12) * bumpy
        d_mm = (r - 1.0) * radius
        frac = np.clip(0.5 - d_mm, 0.0, 1.0) * (maps.brain[box] | (maps.d_env[box] < -2))
        age = str(rng.choice(list(_AGE)))
        t1, t2, sus = _AGE[age]
        if kind == "hbm":  # mixed ages: a heterogeneous core
            other = _AGE[str(rng.choice(list(_AGE)))]
            mix = np.clip(ndimage.gaussian_filter(rng.standard_normal(r.shape), 1.5) * 2.0 + 0.5, 0.0, 1.0)
            t1 = t1 * (1 - mix) + other[0] * mix
            t2 = t2 * (1 - mix) + other[1] * mix
            sus = sus * (1 - mix) + other[2] * mix
        rim_width = rng.uniform(1.0, 2.0) + cfg["bloom_mm"]
        shell = np.clip(1.0 - np.abs(d_mm - rim_width / 2.0) / (rim_width / 2.0), 0.0, 1.0) * (d_mm > -0.5)
        if kind == "hbm":  # incomplete rim: keep an arc only
            direction = rng.standard_normal(3)
            direction /= np.linalg.norm(direction)
            shell *= (((xyz - centre) @ direction) / np.maximum(np.linalg.norm(xyz - centre, axis=-1), 1e-3)) > \
                rng.uniform(-0.2, 0.4)
            ring = np.clip(1.0 - np.abs(d_mm + 1.0) / 1.5, 0.0, 1.0)
            np.maximum(enhance[box], ring * rng.uniform(0.8, 1.5), out=enhance[box])
            reach_edema = rng.uniform(10.0, 25.0)
            wm_pref = 0.3 + 0.7 * maps.wm[box]
            np.maximum(edema[box], np.exp(-np.maximum(d_mm, 0) / reach_edema) * (d_mm > 0) * wm_pref
                       * maps.brain[box], out=edema[box])
        else:
            reach_edema = 1.0 + 0.15 * radius
            np.maximum(edema[box], np.exp(-np.maximum(d_mm, 0) / reach_edema) * (d_mm > 0) * maps.brain[box],
                       out=edema[box])
        np.maximum(rim[box], shell * (1.0 - frac), out=rim[box])
        core[box] = np.maximum(core[box], frac)
        ids[box][frac >= 0.5] = n
        sig_t1[box] = np.where(frac > 0, t1, sig_t1[box])
        sig_t2[box] = np.where(frac > 0, t2, sig_t2[box])
        sig_sus[box] = np.where(frac > 0, sus, sig_sus[box])
        lesions.append({"kind": kind, "region": region, "age": age, "centre": centre})
    jitter = {name: rng.uniform(1 - cfg["jitter"], 1 + cfg["jitter"], 6) for name in cfg["sequences"]}
    axcodes = random_axcodes(rng)
    images: dict[str, nib.Nifti1Image] = {}
    reference = next(s for s in ("swi", "T2starw", "ceT1w", "T1w", "FLAIR", "T2w") if s in cfg["sequences"])
    truth_img = None
    rows: list[dict] = []
    d = maps.d_env
    skull = ((d > 2.5) & (d <= 9.0)).astype(np.float32)
    fat = ((d > 9.0) & (d <= 14.0)).astype(np.float32)
    csf_rim = ((d > 0) & (d <= 2.5)).astype(np.float32)
    for name in cfg["sequences"]:
        wm, gm, csf, fat_s, bone, air = np.array(_TISSUE[name]) * jitter[name]
        img = maps.wm * wm + maps.gm * gm + maps.csf * csf + csf_rim * csf + fat * fat_s + skull * bone
        img = np.where((maps.brain | (d <= 14.0)), img, air).astype(np.float32)
        edema_gain = {"T2w": 0.5, "FLAIR": 0.6, "T1w": -0.2, "ceT1w": -0.2}.get(name, 0.05)
        img = img * (1.0 + edema_gain * edema * (1.0 - core))
        if name in ("T1w", "ceT1w"):
            lesion_signal = sig_t1 * wm
        elif name in ("T2w", "FLAIR"):
            lesion_signal = sig_t2 * wm * (0.8 if name == "FLAIR" else 1.0)
        else:
            lesion_signal = sig_sus * wm
        img = img * (1.0 - core) + core * lesion_signal
        if name in ("swi", "T2starw"):
            img = img * (1.0 - 0.85 * rim)
        if name == "ceT1w":
            img = img + enhance * 0.8 * wm * (1.0 - 0.5 * core)
        grid = _grid_for(rng, name, pose, fast, axcodes)
        n_sub = max(1, int(round(grid.slice_thickness_mm / 1.0)))
        fields = [img] + ([core, ids] if name == reference else [])
        orders = [1] + ([1, 0] if name == reference else [])
        sampled = sample_on_grid(fields, grid, pose, orders=orders, n_sub=n_sub)
        signal = sampled[0]
        sigma = cfg["noise"] * wm
        noisy = np.sqrt((signal + rng.normal(0, sigma, signal.shape)) ** 2 + rng.normal(0, sigma, signal.shape) ** 2)
        stored = np.clip(noisy / max(float(np.percentile(noisy, 99.5)), 1e-6) * 3000.0, 0, 32767).astype(np.int16)
        images[name] = oriented_image(stored, grid)
        if name == reference:
            labels = np.where(sampled[1] >= 0.5, np.rint(sampled[2]), 0).astype(np.int16)
            truth_img = oriented_image(labels, grid)
            voxel_ml = float(np.prod(grid.spacing_mm)) / 1000.0
            for n, lesion in enumerate(lesions, start=1):
                mask = labels == n
                c = grid.affine[:3, :3] @ np.argwhere(mask).mean(0) + grid.affine[:3, 3] if mask.any() else \
                    pose.mni_to_world(lesion["centre"])[0]
                rows.append({"subject": subject, "lesion_id": n, "kind": lesion["kind"], "x_mm": round(float(c[0]), 2),
                             "y_mm": round(float(c[1]), 2), "z_mm": round(float(c[2]), 2),
                             "volume_ml": round(int(mask.sum()) * voxel_ml, 4), "region": lesion["region"],
                             "age": lesion["age"], "site": site, "reference": reference,
                             "sequences": " ".join(cfg["sequences"])})
    return MRIPhantom(subject, images, truth_img, rows, reference, site)


_SUFFIX = {"swi": "swi", "T2starw": "T2starw", "T1w": "T1w", "ceT1w": "ce-gadolinium_T1w", "T2w": "T2w",
           "FLAIR": "FLAIR"}


def write_mri_set(outdir: str | Path, n: int, seed: int, *, site: str = "mri-s1", fast: bool = False,
                  start: int = 0, balanced: bool = False) -> Path:
    """Write subjects as BIDS-named files ``sub-<site><seed>x<i>_ses-1_<suffix>.nii.gz`` plus the truth
    map ``..._desc-truth_dseg.nii.gz`` (reference grid) and ``truth.csv``. ``balanced``: subject i is
    ich, hbm, ich, hbm, lesion-free in turn (exactly 20 % lesion-free), else drawn (about 20 %)."""
    if site not in SITES:
        raise ValueError(f"unknown MRI site {site!r} (choose from {', '.join(SITES)})")
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    for i in range(start, start + int(n)):
        rng = np.random.default_rng([int(seed), i])
        subject = f"sub-{site.replace('-', '')}{seed}x{i:04d}"
        kind = ("ich", "hbm", "ich", "hbm", "none")[i % 5] if balanced else None
        ph = make_mri_subject(rng, subject=subject, site=site, fast=fast, kind=kind)
        for name, image in ph.images.items():
            save_image_atomic(image, out / f"{subject}_ses-1_{_SUFFIX[name]}.nii.gz")
        save_image_atomic(ph.truth, out / f"{subject}_ses-1_desc-truth_dseg.nii.gz")
        rows.extend(ph.lesions or [{"subject": subject, "kind": "none", "site": site, "reference": ph.reference,
                                    "sequences": " ".join(SITES[site]["sequences"])}])
    old = []
    path = out / "truth.csv"
    if path.exists():
        with open(path, newline="") as handle:
            subjects = {r["subject"] for r in rows}
            old = [r for r in csv.DictReader(handle) if r["subject"] not in subjects]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=TRUTH_COLUMNS, extrasaction="ignore", restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(sorted([*old, *rows], key=lambda r: (r["subject"], str(r.get("lesion_id", "")))))
    write_bytes_atomic(path, buffer.getvalue().encode())
    return path
