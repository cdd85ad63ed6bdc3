"""Non-contrast head CT phantoms with hematomas, per family, and baseline/follow-up pairs.

    from cmbdet.phantom.ct import make_ct_subject, write_ct_set
    write_ct_set("ct_phantoms", n=10, seed=0, family="ct-a", pairs=True)

Families (each its own painter, see its module): ``ct-a`` (training), ``ct-b`` (held-out test),
``ct-c`` (validation).

Each subject: ``<subject>_ct.nii.gz`` (int16 + scl_slope/scl_inter, HU as nibabel applies them), its
truth label map ``<subject>_desc-truth_dseg.nii.gz`` (same grid, lesion n = value n) and rows in
``truth.csv`` (one per hematoma, or one empty row for a hemorrhage-free scan). With ``pairs`` a
follow-up scan ``<subject>_ses-followup_ct.nii.gz`` of the same head with the grown hematomas, its
truth map, and ``followup_ml``/``expands``/``p_expand`` in ``truth.csv``: ``expands`` is read from
the painted baseline and follow-up volumes (>= 6 mL or >= 33 %), ``p_expand`` is the generator's
probability and ``drawn_expands`` its coin flip (revision 2 on: the follow-up is painted until it
holds the drawn growth, so the two agree).

Volumes in ``truth.csv``: ``volume_ml`` counts the truth map's voxels (voxel centre in the blood,
partial-volume fraction >= 0.5) times the voxel volume, as a segmentation is scored; ``true_ml`` is
the generator's continuous blood volume in the subject's space (islands and IVH included).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import nibabel as nib
import numpy as np

from cmbdet.anatomy import mni_maps
from cmbdet.atomic import write_bytes_atomic
from cmbdet.phantom.ct import family_a, family_b, family_c
from cmbdet.phantom.ct.head import (
    grid_mni,
    head_hu,
    make_grid,
    oriented_image,
    sample_on_grid,
    sample_pose,
    sample_tissue_hu,
    stored_image,
)
from cmbdet.phantom.ct.lesion import draw_growth, expansion_label
from cmbdet.volume import save_image_atomic

FAMILIES: dict[str, ModuleType] = {family_a.NAME: family_a, family_b.NAME: family_b, family_c.NAME: family_c}
#: Raised when what the CT families draw changes (recorded in protocols.csv and in a classifier's
#: metadata). 2: a follow-up is painted until it holds the drawn growth (`lesion.radius_scale`; in
#: revision 1 hematomas with ventricular extension grew too little), so expansion labels follow the
#: generator's law; baseline scans are unchanged from revision 1.
REVISION = 2
TRUTH_COLUMNS = ["subject", "session", "lesion_id", "kind", "x_mm", "y_mm", "z_mm", "volume_ml", "true_ml",
                 "region", "ivh", "density_hu", "irregularity", "blend", "black_hole", "swirl", "fluid_level",
                 "islands", "n_islands", "followup_ml", "followup_true_ml", "growth_ml", "expands", "p_expand",
                 "drawn_expands", "family", "image"]


@dataclass
class CTPhantom:
    """One scan: ``image`` (stored NIfTI), ``truth`` (NIfTI label map, same grid), ``lesions`` rows."""

    subject: str
    image: nib.Nifti1Image
    truth: nib.Nifti1Image
    lesions: list[dict]
    protocol: dict
    mimics: list[dict] = field(default_factory=list)
    followup: CTPhantom | None = None


def _family(name: str) -> ModuleType:
    if name not in FAMILIES:
        raise ValueError(f"unknown CT phantom family {name!r} (choose from {', '.join(FAMILIES)})")
    return FAMILIES[name]


def make_ct_subject(rng: np.random.Generator, *, subject: str, family: str = "ct-a", fast: bool = False,
                    pairs: bool = False, p_free: float | None = None) -> CTPhantom:
    """One CT phantom (and its follow-up with ``pairs``). ``fast``: coarse in-plane grid (1-1.5 mm),
    for training sets and tests."""
    fam = _family(family)
    maps = mni_maps(1)
    protocol = fam.sample_protocol(rng, fast=fast)
    pose = sample_pose(rng, max_pitch_deg=12.0 if family == "ct-a" else 18.0)
    tissue = sample_tissue_hu(rng)
    base = head_hu(tissue)
    mimics = fam.paint_mimics(rng, base, maps)
    kwargs = {} if p_free is None else {"p_free": p_free}
    hematomas = fam.sample_hematomas(rng, maps, pose, **kwargs)
    grid = make_grid(rng, pose, inplane_mm=protocol["inplane_mm"], slice_mm=protocol["slice_mm"],
                     thickness_mm=protocol["thickness_mm"], tilt_deg=protocol["tilt_deg"],
                     axcodes=tuple(protocol["axcodes"]))
    mni = grid_mni(grid, pose)
    noise_seed = int(rng.integers(2**31))

    def render(grown_mls: list[float], session: str) -> tuple[nib.Nifti1Image, nib.Nifti1Image, list[dict]]:
        hu = base.copy()
        frac = np.zeros(maps.shape, np.float32)
        ids = np.zeros(maps.shape, np.int16)
        paint_rng = np.random.default_rng(noise_seed)
        for n, (h, grown_ml) in enumerate(zip(hematomas, grown_mls, strict=True), start=1):
            fam.paint_hematoma(h, n, hu, frac, ids, maps, paint_rng, grown_ml=grown_ml)
        n_sub = max(1, int(round(protocol["thickness_mm"] / 1.0)))
        hu_grid, frac_grid, id_grid = sample_on_grid([hu, frac, ids.astype(np.float32)], grid, pose,
                                                     orders=[1, 1, 0], n_sub=n_sub)
        labels = np.where(frac_grid >= 0.5, np.rint(id_grid), 0).astype(np.int16)
        # voxels over half blood whose centre fell outside the id map take the nearest lesion's id
        missing = (frac_grid >= 0.5) & (labels == 0)
        if missing.any() and hematomas:
            from scipy import ndimage

            _, index = ndimage.distance_transform_edt(labels == 0, return_indices=True)
            labels[missing] = labels[tuple(index[:, missing])]
        scanned = fam.scanner_effects(np.random.default_rng([noise_seed, len(session)]), hu_grid, grid, mni, protocol)
        image = stored_image(scanned, grid, intercept=protocol["intercept"])
        truth = oriented_image(labels, grid)
        voxel_ml = float(np.prod(grid.spacing_mm)) / 1000.0
        rows = []
        for n, h in enumerate(hematomas, start=1):
            mask = labels == n
            count = int(mask.sum())
            centroid = grid.affine[:3, :3] @ np.argwhere(mask).mean(0) + grid.affine[:3, 3] if count else \
                pose.mni_to_world(h.centre_mni)[0]
            true_ml = float((frac * (ids == n)).sum() + 0.0) / 1000.0 * pose.scale**3
            rows.append({"subject": subject, "session": session, "lesion_id": n, "kind": "ich",
                         "x_mm": round(float(centroid[0]), 2), "y_mm": round(float(centroid[1]), 2),
                         "z_mm": round(float(centroid[2]), 2), "volume_ml": round(count * voxel_ml, 4),
                         "true_ml": round(true_ml, 4), "region": h.region, "ivh": int(h.ivh),
                         "density_hu": round(h.density_hu, 1), **h.features(), "family": family})
        return image, truth, rows

    image, truth, rows = render([0.0] * len(hematomas), "baseline")
    phantom = CTPhantom(subject, image, truth, rows, {**protocol, "family": family, "revision": REVISION,
                                                        "pose_scale": pose.scale},
                        [{"kind": m["kind"], "mni": [round(float(v), 1) for v in m["mni"]]} for m in mimics])
    if pairs:
        grown_mls = []  # head-grid mL (true_ml is in the scanned head: pose scale cubed)
        for h, row in zip(hematomas, rows, strict=True):
            followup_ml, expands, p = draw_growth(rng, row["true_ml"], h)
            grown_mls.append((followup_ml - row["true_ml"]) / pose.scale**3)
            row.update(p_expand=round(p, 4), drawn_expands=int(expands))
        f_image, f_truth, f_rows = render(grown_mls, "followup")
        for row, f_row in zip(rows, f_rows, strict=True):
            row.update(followup_ml=f_row["volume_ml"], followup_true_ml=f_row["true_ml"],
                       growth_ml=round(f_row["true_ml"] - row["true_ml"], 4),
                       expands=int(expansion_label(row["true_ml"], f_row["true_ml"])))
        phantom.followup = CTPhantom(subject, f_image, f_truth, f_rows, phantom.protocol)
    return phantom


def write_ct_set(outdir: str | Path, n: int, seed: int, *, family: str = "ct-a", fast: bool = False,
                 pairs: bool = False, start: int = 0, p_free: float | None = None) -> Path:
    """Write subjects ``start .. start+n-1`` of a family (subject i uses ``default_rng([seed, i])``,
    named ``sub-<family><seed>x<i>``) with ``truth.csv`` and ``protocols.csv``."""
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    _family(family)
    truth: list[dict] = []
    protocols: list[dict] = []
    for i in range(start, start + int(n)):
        rng = np.random.default_rng([int(seed), i])
        subject = f"sub-{family.replace('-', '')}{seed}x{i:04d}"
        ph = make_ct_subject(rng, subject=subject, family=family, fast=fast, pairs=pairs, p_free=p_free)
        stem = f"{subject}_ses-baseline" if pairs else subject
        save_image_atomic(ph.image, out / f"{stem}_ct.nii.gz")
        save_image_atomic(ph.truth, out / f"{stem}_desc-truth_dseg.nii.gz")
        for row in ph.lesions:
            row["image"] = f"{stem}_ct.nii.gz"
        truth.extend(ph.lesions or [{"subject": subject, "session": "baseline", "family": family,
                                     "image": f"{stem}_ct.nii.gz"}])
        if ph.followup is not None:
            save_image_atomic(ph.followup.image, out / f"{subject}_ses-followup_ct.nii.gz")
            save_image_atomic(ph.followup.truth, out / f"{subject}_ses-followup_desc-truth_dseg.nii.gz")
        protocols.append({"subject": subject, **{k: (json.dumps(v) if isinstance(v, (list, tuple)) else v)
                                                 for k, v in ph.protocol.items()},
                          "n_lesions": len(ph.lesions), "mimics": ";".join(m["kind"] for m in ph.mimics)})
    _append_csv(out / "truth.csv", TRUTH_COLUMNS, truth)
    _append_csv(out / "protocols.csv", list(protocols[0].keys()) if protocols else ["subject"], protocols)
    return out / "truth.csv"


def _append_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    """Write rows, keeping rows of other subjects already in the file (so sets can be built in parts)."""
    old: list[dict] = []
    if path.exists():
        with open(path, newline="") as handle:
            new_subjects = {r["subject"] for r in rows}
            old = [r for r in csv.DictReader(handle) if r["subject"] not in new_subjects]
            columns = list(dict.fromkeys([*columns, *(old[0].keys() if old else [])]))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(sorted([*old, *rows], key=lambda r: (r["subject"], str(r.get("lesion_id", "")))))
    write_bytes_atomic(path, buffer.getvalue().encode())
