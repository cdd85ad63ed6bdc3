"""The CT signs of a hematoma that the literature links to early expansion, measured on baseline CT.

Radiologists read expansion risk from a handful of named signs (volume; an irregular margin;
density heterogeneity as the blend, black-hole and swirl signs; satellite islands; blood reaching
the ventricles). Each measurement here follows a sign's definition, relative to the hematoma's own
density wherever it can, so that a scanner's calibration, kernel and noise change it little — a
classifier that leans on them has less of one site's rendering to learn than one leaning on texture
statistics alone.

`hematoma_signs(hu, lesion_mask, other_lesions_mask, spacing_mm)` returns (values, names) for one
lesion; all work happens on a 1 mm isotropic crop (`cmbdet.classify.features.crop_1mm`).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

#: Below the hematoma's median density by this much (HU, after 1 mm smoothing) is "hypodense" inside it.
HYPODENSE_DROP_HU = 15.0
#: A satellite island: denser than the hematoma's median minus this (HU) ...
ISLAND_DROP_HU = 20.0
#: ... within this distance of the hematoma (mm) but not touching it.
ISLAND_REACH_MM = (2.0, 15.0)
#: CSF density on CT (HU): the shell around a hematoma that reaches a ventricle has much of it.
CSF_HU = (-5.0, 18.0)
#: Crop margin around the lesion (mm).
SIGNS_MARGIN_MM = 20.0

SIGN_NAMES: tuple[str, ...] = (
    "signs.log_volume_ml", "signs.solidity", "signs.surface_ratio", "signs.hole_fraction",
    "signs.hypodense_fraction", "signs.enclosed_hypodense_log_ml", "signs.hypodense_components",
    "signs.otsu_gap_hu", "signs.otsu_separation", "signs.iqr_hu", "signs.island_count", "signs.island_log_ml",
    "signs.nearby_lesions", "signs.csf_contact",
)


def hematoma_signs(hu: np.ndarray, lesion_mask: np.ndarray, other_lesions_mask: np.ndarray,
                   spacing_mm: np.ndarray) -> tuple[np.ndarray, tuple[str, ...]]:
    """(len(SIGN_NAMES),) float64 sign measurements of one lesion and their names.

    ``hu``: CT in HU on a canonical grid of ``spacing_mm``; ``lesion_mask``: the lesion; ``other_lesions_mask``:
    every other lesion the localizer reported (same grid)."""
    from cmbdet.classify.features import crop_1mm

    image, mask = crop_1mm(hu, lesion_mask, spacing_mm, margin_mm=SIGNS_MARGIN_MM)
    others = crop_1mm(other_lesions_mask.astype(np.float32), lesion_mask, spacing_mm,
                      margin_mm=SIGNS_MARGIN_MM)[0] >= 0.5
    values = dict.fromkeys(SIGN_NAMES, 0.0)
    if mask.sum() < 4:
        return np.array([values[n] for n in SIGN_NAMES]), SIGN_NAMES
    smooth = ndimage.gaussian_filter(image, 1.0)
    filled = _filled(mask)
    blood = float(np.median(image[mask]))
    inside = smooth[filled]

    values["signs.log_volume_ml"] = float(np.log(mask.sum() / 1000.0))
    values["signs.solidity"], values["signs.surface_ratio"] = _margin(filled)
    values["signs.hole_fraction"] = float((filled & ~mask).sum() / filled.sum())

    hypodense = filled & (smooth < blood - HYPODENSE_DROP_HU)
    values["signs.hypodense_fraction"] = float(hypodense.sum() / filled.sum())
    rim = filled & ~ndimage.binary_erosion(filled, iterations=2)
    labels, n = ndimage.label(hypodense)
    if n:
        sizes = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, n + 1))
        touches = ndimage.maximum(rim, labels, index=np.arange(1, n + 1)).astype(bool)
        values["signs.enclosed_hypodense_log_ml"] = float(np.log1p(sizes[~touches].sum()))
        values["signs.hypodense_components"] = float((sizes >= 3).sum())
    values["signs.otsu_gap_hu"], values["signs.otsu_separation"] = _two_densities(inside)
    values["signs.iqr_hu"] = float(np.subtract(*np.percentile(inside, [75, 25])))

    distance = ndimage.distance_transform_edt(~filled)
    near = (distance > ISLAND_REACH_MM[0]) & (distance <= ISLAND_REACH_MM[1])
    fine = ndimage.gaussian_filter(image, 0.5)  # islands are small: less smoothing than for the densities inside
    dense = near & (fine >= blood - ISLAND_DROP_HU) & (fine <= blood + 40.0) & ~others
    labels, n = ndimage.label(dense)
    if n:
        sizes = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, n + 1))
        # an island is a small separate clot: not a large dense structure running through the shell
        reaches = ndimage.minimum(distance, labels, index=np.arange(1, n + 1)) <= ISLAND_REACH_MM[0] + 1.0
        islands = (sizes >= 5) & (sizes <= max(0.3 * mask.sum(), 50)) & ~reaches
        values["signs.island_count"] = float(islands.sum())
        values["signs.island_log_ml"] = float(np.log1p(sizes[islands].sum()))
    _, n_other = ndimage.label(others & (distance <= 20.0))
    values["signs.nearby_lesions"] = float(n_other)
    shell = (distance > 0) & (distance <= 3.0)
    values["signs.csf_contact"] = float(((smooth >= CSF_HU[0]) & (smooth <= CSF_HU[1]) & shell).sum()
                                        / max(shell.sum(), 1))
    return np.array([values[n] for n in SIGN_NAMES]), SIGN_NAMES


def _filled(mask: np.ndarray) -> np.ndarray:
    """The lesion with its holes filled, in 3-D and in every axial section (a hypodense core the
    localizer left out belongs to the hematoma)."""
    filled = ndimage.binary_fill_holes(mask)
    for k in range(mask.shape[2]):
        filled[:, :, k] |= ndimage.binary_fill_holes(mask[:, :, k])
    return filled


def _margin(filled: np.ndarray) -> tuple[float, float]:
    """(solidity: volume / convex-hull volume; surface ratio: boundary voxels / those of a ball of the
    same volume) — an irregular, lobulated margin lowers the first and raises the second."""
    points = np.argwhere(filled).astype(float)
    volume = float(len(points))
    try:
        hull = ConvexHull(points).volume if len(points) >= 5 else volume
    except QhullError:
        hull = volume
    solidity = min(volume / max(hull, 1.0), 1.0)
    surface = float((filled & ~ndimage.binary_erosion(filled)).sum())
    ball_radius = (3.0 * volume / (4.0 * np.pi)) ** (1.0 / 3.0)
    ball_surface = max(4.0 * np.pi * ball_radius**2, 1.0)
    return solidity, surface / ball_surface


def _two_densities(values: np.ndarray) -> tuple[float, float]:
    """(gap between the two densities Otsu's threshold splits the hematoma into, HU; share of the variance
    that split explains) — large for a blend sign (two densities with a sharp border)."""
    from skimage.filters import threshold_otsu

    if len(values) < 8 or np.ptp(values) < 1e-3:
        return 0.0, 0.0
    t = threshold_otsu(values)
    low, high = values[values <= t], values[values > t]
    if not len(low) or not len(high):
        return 0.0, 0.0
    gap = float(high.mean() - low.mean())
    w0, w1 = len(low) / len(values), len(high) / len(values)
    separation = float(w0 * w1 * gap**2 / max(values.var(), 1e-6))
    return gap, separation
