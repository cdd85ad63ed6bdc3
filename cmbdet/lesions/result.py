"""`Lesions`: the result of `localize_lesions` — a label map plus one row of measurements per lesion.

Positions and boxes are scanner RAS mm (from the volume's affine); volumes are voxel counts times
the voxel volume of the grid the label map lives on (the input's grid for CT, the reference
sequence's for MRI), so they agree with the written label map.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from nibabel.affines import apply_affine
from scipy import ndimage

from cmbdet.anatomy import mni_maps
from cmbdet.detections import Detections
from cmbdet.regions import MniAnchor, anchor_to_mni, assign_regions
from cmbdet.volume import Volume

LESION_COLUMNS = ("subject", "lesion_id", "x_mm", "y_mm", "z_mm", "volume_ml", "abc2_ml",
                  "bbox_min_x_mm", "bbox_min_y_mm", "bbox_min_z_mm", "bbox_max_x_mm", "bbox_max_y_mm",
                  "bbox_max_z_mm", "score", "region", "ivh")

#: Fresh blood on CT (HU, after smoothing over 1 mm): denser than brain, less dense than calcium.
BLOOD_HU = (40.0, 100.0)
#: Blood-dense volume inside the atlas ventricles that counts as intraventricular blood (mL): the
#: partial volume of the ventricle walls and choroid plexus through an approximate fit stays below it.
VENTRICULAR_BLOOD_ML = 1.0
#: Lesions this close to intraventricular blood (mm) are the ones extending into the ventricles.
VENTRICULAR_REACH_MM = 10.0
#: Sampling of the ventricle search (mm).
VENTRICLE_SAMPLING_MM = 2.0


@dataclass(frozen=True)
class Lesions:
    """N lesions in one scan.

    ``labels``: (I, J, K) int16 on the volume's canonical grid, lesion n painted n (1..N).
    ``xyz_mm`` (N, 3) centroids, scanner RAS mm; ``volume_ml`` (N,); ``abc2_ml`` (N,) ABC/2 on the
    largest axial slice; ``bbox_min_mm``/``bbox_max_mm`` (N, 3) RAS mm; ``score`` (N,) in [0, 1];
    ``region`` (N,) lobar/deep/infratentorial; ``ivh`` (N,) 0/1 intraventricular extension.
    """

    labels: np.ndarray
    xyz_mm: np.ndarray
    volume_ml: np.ndarray
    abc2_ml: np.ndarray
    bbox_min_mm: np.ndarray
    bbox_max_mm: np.ndarray
    score: np.ndarray
    region: np.ndarray
    ivh: np.ndarray
    #: What the measurements could not do (e.g. why regions are unknown).
    notes: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.score)

    @property
    def total_volume_ml(self) -> float:
        return float(np.sum(self.volume_ml))

    def mask(self, lesion_id: int) -> np.ndarray:
        """(I, J, K) bool mask of lesion ``lesion_id`` (1-based)."""
        return self.labels == lesion_id

    def to_rows(self, subject: str) -> list[dict]:
        """One dict per lesion with the ``lesions.csv`` columns."""
        rows = []
        for n in range(len(self)):
            lo, hi = self.bbox_min_mm[n], self.bbox_max_mm[n]
            rows.append({
                "subject": subject, "lesion_id": n + 1,
                "x_mm": round(float(self.xyz_mm[n, 0]), 2), "y_mm": round(float(self.xyz_mm[n, 1]), 2),
                "z_mm": round(float(self.xyz_mm[n, 2]), 2), "volume_ml": round(float(self.volume_ml[n]), 3),
                "abc2_ml": round(float(self.abc2_ml[n]), 3),
                "bbox_min_x_mm": round(float(lo[0]), 1), "bbox_min_y_mm": round(float(lo[1]), 1),
                "bbox_min_z_mm": round(float(lo[2]), 1), "bbox_max_x_mm": round(float(hi[0]), 1),
                "bbox_max_y_mm": round(float(hi[1]), 1), "bbox_max_z_mm": round(float(hi[2]), 1),
                "score": round(float(self.score[n]), 4), "region": self.region[n], "ivh": int(self.ivh[n]),
            })
        return rows


def measure_lesions(volume: Volume, labels: np.ndarray, scores: np.ndarray, brain_mask: np.ndarray,
                    mask_affine: np.ndarray, *, blood_hu: tuple[float, float] | None = None) -> Lesions:
    """Measure lesions painted 1..N in ``labels`` ((I, J, K) on ``volume``'s canonical grid), with
    ``scores`` (N,), given a brain mask and its affine (any grid; for regions and IVH). ``blood_hu``
    (CT: the density range of fresh blood, `BLOOD_HU`): IVH also looks for blood inside the
    ventricles (`intraventricular`)."""
    n = int(labels.max()) if labels.size else 0
    spacing = volume.spacing_mm
    voxel_ml = float(abs(np.linalg.det(volume.affine[:3, :3]))) / 1000.0
    xyz = np.zeros((n, 3))
    vol = np.zeros(n)
    abc2 = np.zeros(n)
    lo = np.zeros((n, 3))
    hi = np.zeros((n, 3))
    objects = ndimage.find_objects(labels.astype(np.int32), max_label=n)
    for index, box in enumerate(objects):
        if box is None:
            continue
        sub = labels[box] == index + 1
        ijk = np.argwhere(sub) + np.array([s.start for s in box])
        world = volume.ijk_to_xyz_mm(ijk)
        xyz[index] = world.mean(axis=0)
        vol[index] = len(ijk) * voxel_ml
        # the box holds every voxel, half a voxel beyond the outermost centres
        corners = volume.ijk_to_xyz_mm(np.array([[i, j, k] for i in (-0.5, 0.5) for j in (-0.5, 0.5)
                                                 for k in (-0.5, 0.5)]))
        half = np.abs(corners - corners.mean(axis=0)).max(axis=0)
        lo[index] = world.min(axis=0) - half
        hi[index] = world.max(axis=0) + half
        abc2[index] = abc_over_2_ml(sub, spacing)
    diameter = 2.0 * (3.0 * vol * 1000.0 / (4.0 * np.pi)) ** (1.0 / 3.0)
    found = Detections(xyz, np.asarray(scores, float).reshape(n), diameter)
    if n == 0:
        region, ivh, notes = np.zeros(0, dtype=object), np.zeros(0, dtype=int), ()
    else:
        anchor = anchor_to_mni(brain_mask, mask_affine)
        region = assign_regions(found, anchor).region
        ivh = intraventricular(volume, labels, n, anchor, blood_hu=blood_hu)
        notes = (anchor.note + "; ivh=0",) if anchor.note else ()
    return Lesions(labels=labels.astype(np.int16), xyz_mm=xyz, volume_ml=vol, abc2_ml=abc2, bbox_min_mm=lo,
                   bbox_max_mm=hi, score=np.asarray(scores, float).reshape(n), region=region, ivh=ivh, notes=notes)


def abc_over_2_ml(mask: np.ndarray, spacing_mm: np.ndarray) -> float:
    """ABC/2 (Kothari) in mL of a (I, J, K) bool mask on a canonical grid (k ~ superior).

    A: longest diameter on the slice with the largest area; B: the longest diameter perpendicular
    to A on that slice; C: the number of slices the lesion appears on times the slice spacing (its
    superior-inferior extent). Exact for an ellipsoid up to voxelization (pi/6 ~ 1/2).
    """
    areas = mask.sum(axis=(0, 1))
    if areas.max() == 0:
        return 0.0
    k = int(np.argmax(areas))
    points = np.argwhere(mask[:, :, k]) * spacing_mm[:2]
    a_len, b_len = _diameters(points, spacing_mm[:2])
    c_len = float((areas > 0).sum()) * float(spacing_mm[2])
    return a_len * b_len * c_len / 2.0 / 1000.0


def _diameters(points: np.ndarray, pixel_mm: np.ndarray) -> tuple[float, float]:
    """(A, B) mm: the longest chord of a 2-D point set and the longest extent perpendicular to it."""
    if len(points) > 400:  # the extreme points lie on the convex hull
        from scipy.spatial import ConvexHull

        try:
            points = points[ConvexHull(points).vertices]
        except Exception:
            points = points[:: max(1, len(points) // 400)]
    diff = points[:, None, :] - points[None, :, :]
    dist = np.sqrt((diff**2).sum(-1))
    i, j = np.unravel_index(int(np.argmax(dist)), dist.shape)
    a_len = float(dist[i, j]) + float(pixel_mm.mean())
    if a_len <= float(pixel_mm.mean()):
        return float(pixel_mm[0]), float(pixel_mm[1])
    direction = (points[j] - points[i]) / max(float(dist[i, j]), 1e-6)
    normal = np.array([-direction[1], direction[0]])
    across = points @ normal
    b_len = float(across.max() - across.min()) + float(pixel_mm.mean())
    return a_len, b_len


def intraventricular(volume: Volume, labels: np.ndarray, n: int, anchor: MniAnchor, *,
                     min_fraction: float = 0.1, blood_hu: tuple[float, float] | None = None) -> np.ndarray:
    """(N,) int: 1 when at least ``min_fraction`` of a lesion's voxels fall in the lateral or third
    ventricles, located through the brain's fit to MNI (``anchor``, `cmbdet.regions.anchor_to_mni`);
    0 for every lesion when the anchor could not be fitted.

    With ``blood_hu`` (CT, `BLOOD_HU`) a lesion is also flagged when it lies within
    `VENTRICULAR_REACH_MM` of at least `VENTRICULAR_BLOOD_ML` of blood-dense voxels inside those
    ventricles and outside its own mask (`near_ventricular_blood`): ventricular blood is often
    left out of the hematoma's mask (a thin tongue through the ventricle wall, a layer in the
    dependent horns), so the mask alone misses it."""
    out = np.zeros(n, dtype=int)
    if n == 0 or anchor.to_mni is None:
        return out
    maps = mni_maps(2)
    ventricles = maps.d_vent < 1.0
    step = max(1, int(round(1.5 / float(volume.spacing_mm.min()))))
    sub = labels[::step, ::step, ::step]
    for index in range(n):
        ijk = np.argwhere(sub == index + 1) * step
        if len(ijk) == 0:
            ijk = np.argwhere(labels == index + 1)
        mni = anchor.mni_mm(volume.ijk_to_xyz_mm(ijk))
        vox = np.clip(np.rint(maps.mm_to_vox(mni)).astype(int), 0, np.array(maps.shape) - 1)
        out[index] = int(ventricles[tuple(vox.T)].mean() >= min_fraction)
    if blood_hu is not None:
        out |= near_ventricular_blood(volume, labels, n, anchor, blood_hu)
    return out


def near_ventricular_blood(volume: Volume, labels: np.ndarray, n: int, anchor: MniAnchor,
                           blood_hu: tuple[float, float]) -> np.ndarray:
    """(N,) int: 1 for a lesion with at least `VENTRICULAR_BLOOD_ML` of blood inside the MNI lateral /
    third ventricles (fitted through ``anchor``) outside its own mask, and some of it within
    `VENTRICULAR_REACH_MM`; CT in HU on ``volume``'s canonical grid, sampled every
    `VENTRICLE_SAMPLING_MM` around the ventricles. The lesion's own voxels (and one sample around
    them) are the mask rule's business: a hematoma beside a ventricle must not count as blood inside
    it through an approximate fit."""
    out = np.zeros(n, dtype=int)
    maps = mni_maps(2)
    spacing = volume.spacing_mm
    step = np.maximum(np.round(VENTRICLE_SAMPLING_MM / spacing).astype(int), 1)
    # only the ventricles' neighbourhood is searched (a thin-slice CT smoothed whole would cost seconds)
    ventricle_vox = np.argwhere(maps.d_vent < 1.0)
    unit = np.array([[x, y, z] for x in (0, 1) for y in (0, 1) for z in (0, 1)], float)
    corners_vox = ventricle_vox.min(axis=0) + unit * np.ptp(ventricle_vox, axis=0)
    to_scanner = np.linalg.inv(anchor.to_mni) @ maps.affine  # MNI map voxel -> scanner RAS mm
    corners = volume.xyz_mm_to_ijk(apply_affine(to_scanner, corners_vox))
    margin = (VENTRICULAR_REACH_MM + 2.0 * VENTRICLE_SAMPLING_MM) / spacing
    lo = np.clip(np.floor(corners.min(axis=0) - margin).astype(int), 0, np.array(volume.shape))
    hi = np.clip(np.ceil(corners.max(axis=0) + margin).astype(int) + 1, 0, np.array(volume.shape))
    if np.any(hi - lo < 1):
        return out
    lo -= lo % step  # samples stay on the scan's every-`step` grid
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    density = ndimage.gaussian_filter(np.asarray(volume.data[box], np.float32), 1.0 / spacing)
    density = density[tuple(slice(0, None, s) for s in step)]
    dense = (density >= blood_hu[0]) & (density <= blood_hu[1])
    if not dense.any():
        return out
    ijk = np.argwhere(dense) * step + lo
    vox = np.rint(maps.mm_to_vox(anchor.mni_mm(volume.ijk_to_xyz_mm(ijk)))).astype(int)
    inside = np.all((vox >= 0) & (vox < np.array(maps.shape)), axis=1)
    in_ventricle = np.zeros(len(ijk), bool)
    in_ventricle[inside] = maps.d_vent[tuple(vox[inside].T)] < 1.0
    sample_spacing = spacing * step
    sample_ml = float(np.prod(sample_spacing)) / 1000.0
    if in_ventricle.sum() * sample_ml < VENTRICULAR_BLOOD_ML:
        return out
    blood = np.zeros(dense.shape, bool)
    blood[tuple(((ijk[in_ventricle] - lo) // step).T)] = True
    for index, found in enumerate(ndimage.find_objects(labels.astype(np.int32), max_label=n)):
        if found is None:
            continue
        lesion_ijk = np.argwhere(labels[found] == index + 1) + np.array([s.start for s in found])
        coarse = np.rint((lesion_ijk - lo) / step).astype(int)
        coarse = coarse[np.all((coarse >= 0) & (coarse < np.array(dense.shape)), axis=1)]
        if len(coarse) == 0:  # wholly outside the searched box: farther than the reach from any ventricle
            continue
        own = np.zeros(dense.shape, bool)
        own[tuple(coarse.T)] = True
        own = ndimage.binary_dilation(own)
        outside = blood & ~own
        if outside.sum() * sample_ml < VENTRICULAR_BLOOD_ML:
            continue
        distance = ndimage.distance_transform_edt(~own, sampling=sample_spacing)
        out[index] = int(distance[outside].min() <= VENTRICULAR_REACH_MM)
    return out


def lesions_from_labels(volume: Volume, labels: np.ndarray) -> Lesions:
    """`Lesions` of a label map read back from disk ((I, J, K) on ``volume``'s canonical grid, lesion
    n painted n): centroids, volumes, boxes and ABC/2 measured again; score 1, region ``unknown``
    and IVH 0 (the brain mask they need is not re-derived)."""
    n = int(labels.max()) if labels.size else 0
    if n == 0:
        return empty_lesions(volume)
    spacing = volume.spacing_mm
    voxel_ml = float(abs(np.linalg.det(volume.affine[:3, :3]))) / 1000.0
    xyz, vol, abc2 = np.zeros((n, 3)), np.zeros(n), np.zeros(n)
    lo, hi = np.zeros((n, 3)), np.zeros((n, 3))
    for index, box in enumerate(ndimage.find_objects(labels.astype(np.int32), max_label=n)):
        if box is None:
            continue
        sub = labels[box] == index + 1
        world = volume.ijk_to_xyz_mm(np.argwhere(sub) + np.array([s.start for s in box]))
        xyz[index], vol[index] = world.mean(axis=0), len(world) * voxel_ml
        lo[index], hi[index] = world.min(axis=0), world.max(axis=0)
        abc2[index] = abc_over_2_ml(sub, spacing)
    return Lesions(labels=labels.astype(np.int16), xyz_mm=xyz, volume_ml=vol, abc2_ml=abc2, bbox_min_mm=lo,
                   bbox_max_mm=hi, score=np.ones(n), region=np.array(["unknown"] * n, dtype=object),
                   ivh=np.zeros(n, dtype=int))


def empty_lesions(volume: Volume) -> Lesions:
    z = np.zeros(0)
    return Lesions(np.zeros(volume.shape, np.int16), np.zeros((0, 3)), z, z, np.zeros((0, 3)), np.zeros((0, 3)), z,
                   np.zeros(0, dtype=object), np.zeros(0, dtype=int))
