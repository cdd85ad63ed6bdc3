"""Review picture and crops of localized lesions.

The picture: an axial overview through the largest lesion with every lesion's outline, then per
lesion (largest first) its largest axial cross-section, outlined, with volume, ABC/2, region, IVH
and score. Radiological display (patient's right on the image left). CT is shown in a brain window
(0..80 HU); MRI between the 1st and 99.5th percentile of the brain.

Crops (``--crops``): per lesion, every sequence and the mask cut to the lesion's box plus 10 mm on
the reference canonical grid (NIfTI, with its affine), and the largest axial cross-section with the
slices 1 mm and 2 mm above and below it, resampled to a 1 mm grid (a 5-slice NIfTI per sequence and
for the mask): what the expansion classifier reads.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from cmbdet.atomic import atomic_path
from cmbdet.lesions.result import Lesions
from cmbdet.volume import Volume, save_image_atomic

CROP_MARGIN_MM = 10.0


def write_lesion_review(volume: Volume, lesions: Lesions, subject: str, path: str | Path, *, ct: bool,
                        max_panels: int = 8) -> Path:
    from matplotlib.figure import Figure

    data = volume.data
    if ct:
        lo, hi = 0.0, 80.0
    else:
        sample = data[::2, ::2, ::2]
        sample = sample[sample > 0]
        lo, hi = np.percentile(sample, [1, 99.5]) if sample.size else (0.0, 1.0)
    n_panels = 1 + min(len(lesions), max_panels)
    cols = min(n_panels, 3)
    rows = int(np.ceil(n_panels / cols))
    fig = Figure(figsize=(3.6 * cols, 3.8 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    aspect = float(volume.spacing_mm[1] / volume.spacing_mm[0])

    def show(ax, k: int, box: tuple[slice, slice] | None = None) -> None:
        sl = box if box is not None else (slice(None), slice(None))
        plane = data[sl[0], sl[1], k]
        i0 = sl[0].start or 0
        j0 = sl[1].start or 0
        extent = (i0 - 0.5, i0 + plane.shape[0] - 0.5, j0 - 0.5, j0 + plane.shape[1] - 0.5)
        ax.imshow(plane.T, cmap="gray", vmin=lo, vmax=hi, origin="lower", extent=extent, aspect=aspect)
        labels = lesions.labels[sl[0], sl[1], k]
        if labels.any():
            ii, jj = np.meshgrid(np.arange(i0, i0 + plane.shape[0]), np.arange(j0, j0 + plane.shape[1]), indexing="ij")
            ax.contour(ii, jj, labels > 0, levels=[0.5], colors="red", linewidths=0.8)
        ax.invert_xaxis()

    overview = axes.ravel()[0]
    if len(lesions):
        k0 = int(np.argmax((lesions.labels == 1).sum(axis=(0, 1))))
    else:
        k0 = volume.shape[2] // 2
    show(overview, k0)
    total = lesions.total_volume_ml
    overview.set_title(f"{subject}: {len(lesions)} lesion(s), {total:.1f} mL\naxial k={k0} (R on left)", fontsize=8)
    for n, ax in zip(range(min(len(lesions), max_panels)), axes.ravel()[1:], strict=False):
        mask = lesions.labels == n + 1
        k = int(np.argmax(mask.sum(axis=(0, 1))))
        box = ndimage.find_objects(mask.astype(np.int8))[0]
        pad = np.ceil(15.0 / volume.spacing_mm[:2]).astype(int)
        sl = (slice(max(box[0].start - pad[0], 0), box[0].stop + pad[0]),
              slice(max(box[1].start - pad[1], 0), box[1].stop + pad[1]))
        show(ax, k, sl)
        ax.set_title(f"#{n + 1} {lesions.volume_ml[n]:.1f} mL (ABC/2 {lesions.abc2_ml[n]:.1f}) {lesions.region[n]}"
                     f"{' IVH' if lesions.ivh[n] else ''}\nscore {lesions.score[n]:.2f}", fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80)
    return Path(path)


def _canonical_image(array: np.ndarray, affine: np.ndarray, dtype=np.float32) -> nib.Nifti1Image:
    image = nib.Nifti1Image(np.asarray(array).astype(dtype), affine)
    image.set_sform(affine, code=1)
    image.set_qform(affine, code=1)
    image.header.set_xyzt_units("mm")
    return image


def write_lesion_crops(sequences: dict[str, np.ndarray], reference: Volume, lesions: Lesions, subject: str,
                       folder: str | Path) -> list[dict]:
    """Crops of every sequence ((I, J, K) arrays on the reference's canonical grid, by name) and of
    each lesion's mask. Returns rows ``subject, lesion_id, sequence, kind, path`` for crops.csv."""
    folder = Path(folder)
    rows: list[dict] = []
    spacing = reference.spacing_mm
    margin = np.ceil(CROP_MARGIN_MM / spacing).astype(int)
    for n in range(1, len(lesions) + 1):
        mask = lesions.labels == n
        box = ndimage.find_objects(mask.astype(np.int8))[0]
        lo = np.maximum([s.start for s in box] - margin, 0)
        hi = np.minimum([s.stop for s in box] + margin, reference.shape)
        crop = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
        affine = reference.affine.copy()
        affine[:3, 3] = reference.ijk_to_xyz_mm(lo[None])[0]
        items = {**{name: array[crop] for name, array in sequences.items()}, "mask": mask[crop]}
        # the 1 mm grid over the crop (axis-aligned with the canonical grid), for the 5 axial slices
        extent = (hi - lo - 1) * spacing
        shape_1mm = np.maximum(np.floor(extent).astype(int) + 1, 1)
        mask_1mm = _resample_1mm(mask[crop].astype(np.float32), spacing, shape_1mm) >= 0.5
        k_big = int(np.argmax(mask_1mm.sum(axis=(0, 1)))) if mask_1mm.any() else shape_1mm[2] // 2
        ks = np.clip(np.arange(k_big - 2, k_big + 3), 0, shape_1mm[2] - 1)
        affine_1mm = affine.copy()
        affine_1mm[:3, :3] = affine[:3, :3] / spacing[None, :]
        affine_5 = affine_1mm.copy()
        affine_5[:3, 3] = affine_1mm[:3, :3] @ np.array([0.0, 0.0, ks[0]]) + affine_1mm[:3, 3]
        for name, array in items.items():
            kind = "mask" if name == "mask" else "image"
            dtype = np.uint8 if kind == "mask" else np.float32
            path = folder / f"{subject}_lesion-{n}_{name}.nii.gz"
            save_image_atomic(_canonical_image(array, affine, dtype), path)
            rows.append({"subject": subject, "lesion_id": n, "sequence": name, "kind": f"{kind}_box",
                         "path": str(path)})
            if kind == "mask":
                slab = mask_1mm[:, :, ks].astype(np.uint8)
            else:
                slab = _resample_1mm(array.astype(np.float32), spacing, shape_1mm)[:, :, ks]
            path = folder / f"{subject}_lesion-{n}_{name}_axial5.nii.gz"
            save_image_atomic(_canonical_image(slab, affine_5, dtype), path)
            rows.append({"subject": subject, "lesion_id": n, "sequence": name, "kind": f"{kind}_axial5",
                         "path": str(path)})
    return rows


def _resample_1mm(array: np.ndarray, spacing: np.ndarray, shape_1mm: np.ndarray) -> np.ndarray:
    """Trilinear resampling of a crop onto a 1 mm grid starting at its first voxel centre."""
    axes = [np.arange(int(n)) / float(s) for n, s in zip(shape_1mm, spacing, strict=True)]
    coords = np.stack(np.meshgrid(*axes, indexing="ij")).reshape(3, -1)
    return ndimage.map_coordinates(array, coords, order=1, mode="nearest").reshape(tuple(int(n) for n in shape_1mm))
