"""What the crop classifiers read of one localized lesion: image crops on a fixed millimetre grid
and a radiomics vector.

Both come from the lesion localizer's output (`cmbdet.lesions.result.Lesions`: a label map on the
reference grid) and the subject's images on that grid, so training (phantom scans run through the
localizer) and use (`cmbdet classify`) read lesions the same way.

* ``crop``: (C, P, P) float32 axial slices through the lesion's centroid (in-plane) on a grid of
  ``pixel_mm``; the reference grid's canonical axes (k ~ superior) define "axial".
  - expansion (CT): the largest axial cross-section of the hematoma and the slices 1 mm and 2 mm
    above and below it (HU windowed 0-100 -> 0-1), plus the mask on the largest slice (6 channels);
  - hbm (MRI): the largest axial cross-section of each sequence (susceptibility = SWI or T2*, T1,
    post-contrast T1, T2, FLAIR; each divided by the median of the non-lesion tissue around it; a
    missing sequence is all zeros and flagged in ``present``), plus the mask (6 channels).
* ``radiomics``: IBSI-defined features of the 3-D lesion computed by mirp on a 1 mm isotropic crop
  (lesion box plus 10 mm): morphology once, then intensity statistics and texture (GLCM, GLSZM for
  CT) of each image; names are ``<image>.<mirp feature name>``. For CT the hematoma's named signs
  follow (`cmbdet.classify.signs`, names ``signs.<sign>``).

Training also measures each CT lesion again on a perturbed re-acquisition
(`cmbdet.classify.robustness`), ``perturbed_radiomics``: the features that agree across the two are
the ones the expansion model may use.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from cmbdet.classify.robustness import perturb_acquisition
from cmbdet.classify.signs import SIGNS_MARGIN_MM, hematoma_signs
from cmbdet.lesions.result import Lesions
from cmbdet.volume import Volume

#: MRI crop channels (before the mask); SWI and T2* both feed "susceptibility".
MRI_SEQUENCES = ("susceptibility", "T1w", "ceT1w", "T2w", "FLAIR")
#: Crop geometry per task: pixels per side and pixel size (mm).
CROP_PIXELS = 64
PIXEL_MM = {"expansion": 1.25, "hbm": 1.5}
#: The CT window mapped to 0..1 for the expansion crop (HU).
CT_WINDOW_HU = (0.0, 100.0)
#: Offsets (mm) of the expansion crop's slices from the largest cross-section.
SLICE_OFFSETS_MM = (-2.0, -1.0, 0.0, 1.0, 2.0)
RADIOMICS_MARGIN_MM = 10.0
#: Changes whenever what `lesion_features` computes changes (training caches are keyed by it).
FEATURES_VERSION = "2-signs-perturbed"


@dataclass
class LesionFeatures:
    """The classifier's view of one lesion (see module docstring).

    ``crop`` (6, P, P) float32; ``radiomics`` (F,) float64 with ``names`` (F,); ``present`` (5,)
    0/1 for the MRI sequences (all 1 for CT); ``volume_ml``; ``n_lesions`` in the subject.
    """

    lesion_id: int
    crop: np.ndarray
    radiomics: np.ndarray
    names: tuple[str, ...]
    present: np.ndarray
    volume_ml: float
    n_lesions: int
    perturbed_radiomics: np.ndarray | None = None


def mri_channels(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Sequence arrays by their `cmbdet.lesions.mri` names -> the five crop channels present."""
    out = {}
    for name, array in arrays.items():
        channel = "susceptibility" if name in ("swi", "T2starw") else name
        if channel in MRI_SEQUENCES and channel not in out:
            out[channel] = array
    return out


def lesion_features(task: str, reference: Volume, arrays: dict[str, np.ndarray], lesions: Lesions,
                    *, radiomics: bool = True, perturb: np.random.Generator | None = None) -> list[LesionFeatures]:
    """Features of every lesion in ``lesions`` (label map on ``reference``'s canonical grid).

    ``arrays``: for ``expansion`` ``{"ct": HU}``; for ``hbm`` the subject's sequences on the
    reference grid (`cmbdet.lesions.mri.SequenceSet.arrays`), each (I, J, K). ``perturb`` (expansion,
    training only): also measure each lesion's radiomics on a re-acquisition drawn with this
    generator (``LesionFeatures.perturbed_radiomics``).
    """
    if task not in PIXEL_MM:
        raise ValueError(f"unknown task {task!r}")
    images = {"ct": arrays["ct"]} if task == "expansion" else mri_channels(arrays)
    spacing = reference.spacing_mm
    out = []
    for n in range(1, len(lesions) + 1):
        mask = lesions.labels == n
        if not mask.any():
            continue
        if task == "expansion":
            crop, present = expansion_crop(images["ct"], mask, spacing), np.ones(len(MRI_SEQUENCES))
        else:
            centre = np.argwhere(mask).mean(axis=0)
            z0 = largest_section_mm(mask, spacing, centre)
            channels, present = [], np.zeros(len(MRI_SEQUENCES))
            for index, name in enumerate(MRI_SEQUENCES):
                if name not in images:
                    channels.append(np.zeros((CROP_PIXELS, CROP_PIXELS), np.float32))
                    continue
                present[index] = 1
                section = sample_axial(images[name], spacing, centre, z0, PIXEL_MM[task])
                around = sample_axial(mask.astype(np.float32), spacing, centre, z0, PIXEL_MM[task]) < 0.5
                channels.append(np.clip(section / _tissue_level(section, around), 0.0, 4.0))
            channels.append(sample_axial(mask.astype(np.float32), spacing, centre, z0, PIXEL_MM[task]))
            crop = np.stack(channels).astype(np.float32)
        others = (lesions.labels > 0) & ~mask
        values, names = (radiomics_vector(task, images, mask, spacing, others) if radiomics else (np.zeros(0), ()))
        perturbed = None
        if radiomics and perturb is not None and task == "expansion":
            perturbed = perturbed_ct_radiomics(perturb, images["ct"], mask, others, spacing)[0]
        out.append(LesionFeatures(n, crop, values, names, present,
                                  float(lesions.volume_ml[n - 1]), len(lesions), perturbed))
    return out


def expansion_crop(hu: np.ndarray, mask: np.ndarray, spacing_mm: np.ndarray) -> np.ndarray:
    """(6, P, P) float32 expansion crop of one hematoma (``mask``) in a canonical CT (HU, voxel sizes
    ``spacing_mm``): its largest axial cross-section and the slices 1 and 2 mm above and below, windowed,
    and the mask on the largest section (see the module docstring)."""
    centre = np.argwhere(mask).mean(axis=0)
    z0 = largest_section_mm(mask, spacing_mm, centre)
    lo, hi = CT_WINDOW_HU
    channels = [np.clip((sample_axial(hu, spacing_mm, centre, z0 + dz, PIXEL_MM["expansion"]) - lo) / (hi - lo),
                        0.0, 1.2) for dz in SLICE_OFFSETS_MM]
    channels.append(sample_axial(mask.astype(np.float32), spacing_mm, centre, z0, PIXEL_MM["expansion"]))
    return np.stack(channels).astype(np.float32)


def largest_section_mm(mask: np.ndarray, spacing_mm: np.ndarray, centre_ijk: np.ndarray) -> float:
    """Height (mm, relative to ``centre_ijk``) of the lesion's largest axial cross-section on a 1 mm
    grid along the canonical k axis."""
    areas = mask.sum(axis=(0, 1)).astype(float)
    ks = np.nonzero(areas)[0]
    heights = np.arange((ks[0] - 0.5) * spacing_mm[2], (ks[-1] + 0.5) * spacing_mm[2] + 1e-6, 1.0)
    sampled = np.interp(heights / spacing_mm[2], np.arange(len(areas)), areas)
    return float(heights[int(np.argmax(sampled))] - centre_ijk[2] * spacing_mm[2])


def sample_axial(array: np.ndarray, spacing_mm: np.ndarray, centre_ijk: np.ndarray, dz_mm: float,
                 pixel_mm: float, pixels: int = CROP_PIXELS) -> np.ndarray:
    """(P, P) float32 axial section of a canonical (I, J, K) array: in-plane centred on
    ``centre_ijk``, ``dz_mm`` above it; trilinear, zero outside the array."""
    offsets = (np.arange(pixels) - (pixels - 1) / 2.0) * pixel_mm
    u, v = np.meshgrid(offsets / spacing_mm[0], offsets / spacing_mm[1], indexing="ij")
    coords = np.stack([centre_ijk[0] + u, centre_ijk[1] + v, np.full_like(u, centre_ijk[2] + dz_mm / spacing_mm[2])])
    return ndimage.map_coordinates(array.astype(np.float32, copy=False), coords, order=1, mode="constant",
                                   cval=0.0).astype(np.float32)


def _tissue_level(section: np.ndarray, around: np.ndarray) -> float:
    """Median of the non-lesion tissue of an MRI section or crop (any shape; ignoring background below 10 % of its
    99th percentile); 1 when there is none."""
    values = section[around]
    values = values[values > 0.1 * max(float(np.percentile(section, 99)), 1e-6)]
    return float(np.median(values)) if len(values) >= 20 and np.median(values) > 0 else 1.0


def crop_1mm(array: np.ndarray, mask: np.ndarray, spacing_mm: np.ndarray,
             margin_mm: float = RADIOMICS_MARGIN_MM) -> tuple[np.ndarray, np.ndarray]:
    """(image, mask) resampled onto a 1 mm isotropic grid over the mask's box plus ``margin_mm``."""
    box = ndimage.find_objects(mask.astype(np.int8))[0]
    margin = np.ceil(margin_mm / spacing_mm).astype(int)
    lo = np.maximum([s.start - m for s, m in zip(box, margin, strict=True)], 0)
    hi = np.minimum([s.stop + m for s, m in zip(box, margin, strict=True)], mask.shape)
    extent = (hi - lo - 1) * spacing_mm
    shape = np.maximum(np.floor(extent).astype(int) + 1, 1)
    axes = [lo[d] + np.arange(shape[d]) / spacing_mm[d] for d in range(3)]
    coords = np.stack(np.meshgrid(*axes, indexing="ij")).reshape(3, -1)
    image = ndimage.map_coordinates(array.astype(np.float32, copy=False), coords, order=1, mode="nearest")
    sub = ndimage.map_coordinates(mask.astype(np.float32), coords, order=1, mode="constant")
    return image.reshape(tuple(shape)), sub.reshape(tuple(shape)) >= 0.5


def radiomics_vector(task: str, images: dict[str, np.ndarray], mask: np.ndarray, spacing_mm: np.ndarray,
                     other_lesions: np.ndarray | None = None) -> tuple[np.ndarray, tuple[str, ...]]:
    """IBSI radiomics of one lesion with mirp (see module docstring): (F,) values and their names.
    MRI: missing sequences give zeros under their names (the layout never depends on the input).
    CT: the hematoma's signs follow (``other_lesions``: the mask of the subject's other lesions)."""
    if task == "expansion":
        image, roi = crop_1mm(images["ct"], mask, spacing_mm)
        values, names = _mirp_features(image, roi, modality="CT", prefix="ct", morphology=True)
        others = np.zeros(mask.shape, bool) if other_lesions is None else other_lesions
        signs, sign_names = hematoma_signs(images["ct"], mask, others, spacing_mm)
        return np.concatenate([values, signs]), (*names, *sign_names)
    values, names = [], []
    roi = None
    for name in MRI_SEQUENCES:
        if name in images:
            image, roi = crop_1mm(images[name], mask, spacing_mm)
            level = _tissue_level(image, ~roi)
            vals, nms = _mirp_features(image / level, roi, modality="MR", prefix=name, morphology=False)
        else:
            vals, nms = _mirp_features(None, None, modality="MR", prefix=name, morphology=False)
        values.append(vals)
        names.extend(nms)
    if roi is None:
        raise ValueError("no sequence to compute radiomics from")
    morph, morph_names = _mirp_features(roi.astype(np.float32), roi, modality="MR", prefix="shape", morphology=True,
                                        only_morphology=True)
    return np.concatenate([morph, *values]), (*morph_names, *names)


def perturbed_ct_radiomics(rng: np.random.Generator, hu: np.ndarray, mask: np.ndarray, other_lesions: np.ndarray,
                           spacing_mm: np.ndarray) -> tuple[np.ndarray, tuple[str, ...]]:
    """`radiomics_vector` of a CT lesion re-acquired as another site might have
    (`cmbdet.classify.robustness.perturb_acquisition` on its 1 mm crop); same names and order."""
    image, roi = crop_1mm(hu, mask, spacing_mm, margin_mm=SIGNS_MARGIN_MM)
    others = crop_1mm(other_lesions.astype(np.float32), mask, spacing_mm, margin_mm=SIGNS_MARGIN_MM)[0] >= 0.5
    image, roi = perturb_acquisition(rng, image, roi)
    if not roi.any():
        roi = crop_1mm(hu, mask, spacing_mm, margin_mm=SIGNS_MARGIN_MM)[1]
    return radiomics_vector("expansion", {"ct": image}, roi, np.ones(3), others)


#: mirp's non-feature columns (identifiers and settings) start with these.
_META_PREFIXES = ("sample_", "image_")
_FEATURE_NAMES: dict[tuple, tuple[str, ...]] = {}


def _mirp_features(image: np.ndarray | None, roi: np.ndarray | None, *, modality: str, prefix: str,
                   morphology: bool, only_morphology: bool = False) -> tuple[np.ndarray, tuple[str, ...]]:
    """One mirp run on a 1 mm image (numpy arrays are read as 1 mm spacing by mirp)."""
    if only_morphology:
        families = ["morphology"]
    elif modality == "CT":
        families = ["morphology", "statistics", "glcm", "glszm"] if morphology else ["statistics", "glcm", "glszm"]
    else:
        families = ["statistics", "glcm"]
    key = (modality, prefix, tuple(families))
    if image is None:  # a missing sequence: the names of a run on a dummy lesion, zero values
        if key not in _FEATURE_NAMES:
            dummy = np.zeros((12, 12, 12), np.float32)
            dummy[3:9, 3:9, 3:9] = 1.0
            dummy += np.random.default_rng(0).random(dummy.shape).astype(np.float32) * 0.5
            _mirp_features(dummy, dummy >= 1.0, modality=modality, prefix=prefix, morphology=morphology,
                           only_morphology=only_morphology)
        names = _FEATURE_NAMES[key]
        return np.zeros(len(names)), names
    from mirp import extract_features

    if modality == "CT":
        settings = {"base_discretisation_method": "fixed_bin_size", "base_discretisation_bin_width": 5.0,
                    "resegmentation_intensity_range": [0.0, 150.0]}
    else:
        settings = {"base_discretisation_method": "fixed_bin_number", "base_discretisation_n_bins": 16}
    # mirp calls logging.basicConfig(level=INFO, stream=stdout) on the root logger when it has no
    # handler: a handler of ours for the call keeps it from taking over the user's logging
    quiet = logging.NullHandler()
    root = logging.getLogger()
    root.addHandler(quiet)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            table = extract_features(image=np.ascontiguousarray(image, np.float32), mask=np.ascontiguousarray(roi),
                                     image_modality=modality, base_feature_families=families, export_features=True,
                                     write_features=False, **settings)[0]
    finally:
        root.removeHandler(quiet)
    columns = [c for c in table.columns if not c.startswith(_META_PREFIXES)]
    values = np.nan_to_num(table[columns].to_numpy(dtype=float)[0], nan=0.0, posinf=0.0, neginf=0.0)
    names = tuple(f"{prefix}.{c}" for c in columns)
    _FEATURE_NAMES.setdefault(key, names)
    return values, names
