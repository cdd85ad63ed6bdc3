"""Which lesion features survive a change of scanner? Perturb a lesion's image the way another site
would have acquired it, measure the feature again, and keep the features whose values agree.

This is the radiomics practice of test-retest / image-perturbation robustness (features are kept by
their intra-class correlation across perturbed copies before any model is fitted), done here with
the perturbations a CT site can differ in: slice thickness and in-plane pixel size (partial volume),
reconstruction kernel (blur), noise, HU calibration, and the margin a segmentation draws.

    perturbed_image, perturbed_roi = perturb_acquisition(rng, image_1mm, roi_1mm)
    icc = intraclass_correlation(np.stack([values, values_perturbed]))   # (F,) per feature
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

#: Ranges of the perturbation (one site's protocol is drawn from these).
SLICE_MM = (1.0, 5.0)
INPLANE_MM = (0.5, 1.5)
KERNEL_SIGMA_MM = (0.3, 0.9)
NOISE_HU = (2.0, 7.0)
CALIBRATION_HU = (-4.0, 4.0)
#: Keep a feature when its ICC(1,1) across perturbed copies reaches this ("excellent" reliability).
ROBUST_ICC = 0.9


def perturb_acquisition(rng: np.random.Generator, image: np.ndarray, roi: np.ndarray
                        ) -> tuple[np.ndarray, np.ndarray]:
    """A re-acquisition of a 1 mm isotropic CT crop (HU) and its lesion mask: the image averaged over
    the voxels of a randomly drawn grid (slices along a random canonical axis) and interpolated back,
    blurred by a kernel, given new noise and a calibration offset; the mask grown or shrunk by one
    voxel a third of the time each."""
    image = np.asarray(image, np.float32)
    slice_axis = int(rng.integers(3))
    sizes = np.full(3, rng.uniform(*INPLANE_MM))
    sizes[slice_axis] = rng.uniform(*SLICE_MM)
    # partial volume of a coarser grid: box-average over the voxel, then back to 1 mm
    coarse = ndimage.uniform_filter(image, size=np.maximum(np.round(sizes).astype(int), 1), mode="nearest")
    step = np.maximum(sizes, 1.0)
    offset = rng.uniform(0.0, 1.0, 3) * step
    axes = [np.arange(offset[d], image.shape[d], step[d]) for d in range(3)]
    samples = ndimage.map_coordinates(coarse, np.stack(np.meshgrid(*axes, indexing="ij")).reshape(3, -1),
                                      order=1, mode="nearest").reshape([len(a) for a in axes])
    back = [np.interp(np.arange(image.shape[d]), axes[d], np.arange(len(axes[d]))) for d in range(3)]
    out = ndimage.map_coordinates(samples, np.stack(np.meshgrid(*back, indexing="ij")).reshape(3, -1),
                                  order=1, mode="nearest").reshape(image.shape)
    out = ndimage.gaussian_filter(out, rng.uniform(*KERNEL_SIGMA_MM))
    noise = ndimage.gaussian_filter(rng.normal(0.0, 1.0, image.shape), 0.5)
    out = out + noise / max(float(noise.std()), 1e-6) * rng.uniform(*NOISE_HU) + rng.uniform(*CALIBRATION_HU)
    change = rng.integers(3)
    roi = np.asarray(roi, bool)
    if change == 1 and roi.sum() > 30:
        shrunk = ndimage.binary_erosion(roi)
        roi = shrunk if shrunk.sum() >= 8 else roi
    elif change == 2:
        roi = ndimage.binary_dilation(roi)
    return out.astype(np.float32), roi


def intraclass_correlation(values: np.ndarray) -> np.ndarray:
    """ICC(1,1) of each feature: ``values`` (k copies, N lesions, F features) -> (F,); 1 = the copies
    agree exactly, 0 = as much disagreement within a lesion as between lesions. Constant features get 0."""
    values = np.asarray(values, float)
    k, n = values.shape[:2]
    lesion_mean = values.mean(axis=0)
    grand = lesion_mean.mean(axis=0)
    between = k * ((lesion_mean - grand) ** 2).sum(axis=0) / max(n - 1, 1)
    within = ((values - lesion_mean) ** 2).sum(axis=(0, 1)) / max(n * (k - 1), 1)
    denominator = between + (k - 1) * within
    return np.where(denominator > 1e-12, (between - within) / np.maximum(denominator, 1e-12), 0.0)
