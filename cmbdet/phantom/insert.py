"""Synthetic microbleeds inserted into a real scan: check the detector on your own scanner's images.

A phantom is only as real as its simulator. Inserting microbleeds into a real background keeps the
real anatomy, vessels, noise, reconstruction and post-processing of a site, so the check answers
"does cmbdet find an obvious microbleed on *this* scanner's images?" — and, with the untouched copy,
"what does it report on this scan without any added lesion?".

Each microbleed darkens the magnitude as a susceptibility source does: a smooth round focus whose
signal decays with echo time much faster than tissue (T2* of a few ms), and whose visible size grows
with echo time (blooming). Multi-echo input (4-D, or one file per echo) gets each echo its own
darkening and size, from the echo times in the sidecars (else assumed 5 ms apart). Positions are
drawn inside the brain (the scan's own brain mask), away from each other and from the edges of the
field of view, and written to ``truth.csv`` in scanner RAS mm, as for any phantom set.
"""

from __future__ import annotations

import csv
import io
import json
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np

from cmbdet.atomic import write_bytes_atomic
from cmbdet.echoes import echo_times_ms
from cmbdet.preprocess import brain_mask
from cmbdet.volume import load_volume, read_nifti, save_image_atomic

#: T2* of tissue next to a microbleed and inside its blooming region, ms.
TISSUE_T2STAR_MS = 40.0
CMB_T2STAR_MS = 4.0


def _tissue_points(data3d: np.ndarray, spacing: np.ndarray, margin_mm: float) -> np.ndarray:
    """(N, 3) voxel indices inside the brain and at least ``margin_mm`` from the array's faces."""
    mask = brain_mask(data3d, spacing)
    if mask.sum() < 50:  # a crop inside the brain has no skull to find: take bright-enough tissue
        mask = data3d > np.percentile(data3d, 30)
    margin = np.ceil(margin_mm / spacing).astype(int)
    inner = np.zeros_like(mask)
    inner[margin[0]:-margin[0] or None, margin[1]:-margin[1] or None, margin[2]:-margin[2] or None] = True
    return np.argwhere(mask & inner)


def insert_microbleeds(
    image: nib.Nifti1Image, rng: np.random.Generator, *, n_cmb: int, diameter_mm: tuple[float, float] = (2.5, 6.0),
    echo_times: list[float] | None = None, min_distance_mm: float = 8.0,
) -> tuple[nib.Nifti1Image, list[dict]]:
    """A copy of a magnitude image (3-D, or 4-D with echoes on axis 4) with ``n_cmb`` microbleeds, and
    their truth rows (``x_mm, y_mm, z_mm`` scanner RAS of the image's affine, ``diameter_mm`` visible at
    the longest echo). Fewer are inserted when the brain has no room for more."""
    data = np.asarray(image.dataobj, dtype=np.float32)
    if data.ndim == 3:
        data = data[..., None]
    n_echoes = data.shape[3]
    times = np.asarray(echo_times if echo_times is not None and len(echo_times) == n_echoes
                       else 5.0 * np.arange(1, n_echoes + 1), float)
    spacing = np.sqrt((image.affine[:3, :3] ** 2).sum(axis=0))
    finite = np.isfinite(data).all(axis=3)  # NaN/Inf voxels (left as they are) never host a microbleed
    pool = _tissue_points(np.where(finite, data[..., 0], 0.0), spacing, margin_mm=diameter_mm[1])
    pool = pool[finite[tuple(pool.T)]]
    chosen: list[np.ndarray] = []
    for index in rng.permutation(len(pool)):
        if len(chosen) >= n_cmb:
            break
        point = pool[index]
        if all(np.linalg.norm((point - c) * spacing) >= min_distance_mm for c in chosen):
            chosen.append(point)
    out = data.copy()
    rows = []
    grid = np.indices(data.shape[:3], dtype=np.float32)
    for centre in chosen:
        visible = float(rng.uniform(*diameter_mm))
        offset = rng.uniform(-0.5, 0.5, 3)  # not on a voxel centre
        r_mm = np.sqrt(sum(((grid[a] - centre[a] - offset[a]) * spacing[a]) ** 2 for a in range(3)))
        for e, te in enumerate(times):
            # blooming: the dark region grows with TE up to the visible diameter at the longest echo
            radius = 0.5 * visible * (0.55 + 0.45 * te / times.max())
            profile = 1.0 / (1.0 + (r_mm / radius) ** 6)
            darkening = 1.0 - np.exp(-te * (1.0 / CMB_T2STAR_MS - 1.0 / TISSUE_T2STAR_MS))
            out[..., e] *= 1.0 - darkening * profile
        world = nib.affines.apply_affine(image.affine, centre + offset)
        rows.append({"x_mm": float(world[0]), "y_mm": float(world[1]), "z_mm": float(world[2]),
                     "diameter_mm": round(visible, 2), "region": ""})
    out = out[..., 0] if n_echoes == 1 else out
    copy = nib.Nifti1Image(out, image.affine, image.header)
    copy.header.set_data_dtype(np.float32)
    copy.header["scl_slope"], copy.header["scl_inter"] = 1.0, 0.0
    return copy, rows


def write_inserted_set(background: str | Path, outdir: str | Path, *, n_copies: int, n_cmb: int, seed: int,
                       diameter_mm: tuple[float, float] = (2.5, 6.0)) -> Path:
    """``n_copies`` copies of ``background`` with ``n_cmb`` microbleeds each plus one untouched copy,
    and ``truth.csv`` (the untouched copy is a CMB-free subject): a set `cmbdet detect` and
    `cmbdet evaluate` read like any phantom set. Deterministic for a seed."""
    background = Path(background)
    load_volume(background)  # refuses, in one line, what detect refuses: unreadable, phase, CT, a time series
    image = read_nifti(background)
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    stem = background.name.split(".")[0]
    times = echo_times_ms(background)
    truth = []
    for copy_index in range(n_copies + 1):
        subject = f"{stem}-insert{copy_index:02d}"
        rng = np.random.default_rng([seed, copy_index])
        count = n_cmb if copy_index < n_copies else 0
        copy, rows = insert_microbleeds(image, rng, n_cmb=count, diameter_mm=diameter_mm, echo_times=times)
        if len(rows) < count:
            warnings.warn(f"{subject}: {len(rows)} of {count} microbleeds inserted (no room for more at least "
                          f"{diameter_mm[1]:g} mm inside the field of view and 8 mm apart)", stacklevel=2)
        save_image_atomic(copy, out / f"{subject}.nii.gz")
        truth += [{"subject": subject, **row} for row in rows] or [
            {"subject": subject, "x_mm": "", "y_mm": "", "z_mm": "", "diameter_mm": "", "region": ""}]
    if times is not None:
        for copy_index in range(n_copies + 1):
            sidecar = out / f"{stem}-insert{copy_index:02d}.json"
            write_bytes_atomic(sidecar, json.dumps({"EchoTime": [t / 1000 for t in times]}).encode())
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, ["subject", "x_mm", "y_mm", "z_mm", "diameter_mm", "region"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(truth)
    write_bytes_atomic(out / "truth.csv", buffer.getvalue().encode())
    return out
