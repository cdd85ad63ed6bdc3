"""MRI input: one subject's sequences (BIDS-named files, or a folder per subject) read onto one
reference grid, and the MRI lesion path (network or classical peer).

Sequences are recognised by their BIDS suffix: ``_swi``, ``_T2starw``, ``_T1w``, ``_ce-<agent>_T1w``
(post-contrast T1), ``_T2w``, ``_FLAIR``. The reference is SWI, else T2*, else the first present of
post-contrast T1, T1, FLAIR, T2; every other sequence is resampled (trilinear, through the scanner
RAS coordinates of the affines) onto the reference's grid, and the notes say so.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from cmbdet.errors import InputError
from cmbdet.preprocess import brain_mask, normalize_intensity, resample_to_spacing
from cmbdet.volume import Volume, load_volume

#: Sequence names, in order of preference for the reference grid; also the network's channel order.
SEQUENCES = ("swi", "T2starw", "ceT1w", "T1w", "FLAIR", "T2w")
#: Network channels: susceptibility (SWI or T2*), T1, post-contrast T1, T2, FLAIR, brain mask.
CHANNELS = ("susceptibility", "T1w", "ceT1w", "T2w", "FLAIR", "mask")
_SUFFIX = re.compile(r"(?:^|_)(swi|T2starw|T1w|T2w|FLAIR)$", re.IGNORECASE)  # BIDS suffix or a bare name


def sequence_of(path: str | Path) -> str | None:
    """The sequence name of a BIDS-named file, or of a file named just that (``SWI.nii.gz``, any case);
    None when the name ends in no known sequence."""
    stem = _stem(Path(path).name)
    match = _SUFFIX.search(stem)
    if not match:
        return None
    suffix = {s.lower(): s for s in ("swi", "T2starw", "T1w", "T2w", "FLAIR")}[match.group(1).lower()]
    if suffix == "T1w" and re.search(r"(^|_)ce-[A-Za-z0-9]+(_|$)", stem):
        return "ceT1w"
    return suffix


def entities(path: str | Path) -> dict[str, str]:
    """BIDS entities (``sub``, ``ses``, ...) of a file name."""
    out = {}
    for part in _stem(Path(path).name).split("_"):
        if "-" in part:
            key, value = part.split("-", 1)
            out[key] = value
    return out


def _stem(name: str) -> str:
    for ext in (".nii.gz", ".nii"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name


@dataclass
class MRIGroup:
    """One subject's MRI files: ``files`` sequence name -> path; ``error`` when the group is refused."""

    subject: str
    files: dict[str, Path]
    error: str = ""
    source: str = ""


def group_mri_files(paths: list[Path], folders: dict[Path, Path] | None = None) -> list[MRIGroup]:
    """Group MRI files into subjects.

    Files with BIDS ``sub-`` (and ``ses-``) entities group by them; files from a subject folder (an
    input folder whose name carries ``sub-``, or whose files carry no ``sub-``) form that folder's
    group, and such a group holding files of different ``sub-`` labels is refused. ``folders``
    maps a file to the input folder it was found in.
    """
    folders = folders or {}
    groups: OrderedDict[str, MRIGroup] = OrderedDict()
    for path in paths:
        ent = entities(path)
        folder = folders.get(path)
        subject_folder = folder is not None and ("sub-" in folder.name or "sub" not in ent)
        if subject_folder:
            key = f"folder:{folder}"
            name = _folder_subject(folder)
        elif "sub" in ent:
            name = f"sub-{ent['sub']}" + (f"_ses-{ent['ses']}" if "ses" in ent else "")
            key = f"bids:{name}"
        else:
            name = _stem(path.name)
            key = f"file:{path}"
        group = groups.setdefault(key, MRIGroup(subject=name, files={}, source=str(folder or path)))
        sequence = sequence_of(path) or _stem(path.name).split("_")[-1]
        if sequence in group.files:
            group.error = group.error or (f"two files for the {sequence} sequence in one subject "
                                          f"({group.files[sequence].name}, {path.name})")
        group.files[sequence] = path
    for key, group in groups.items():
        if not key.startswith("folder:"):
            continue
        labels = sorted({entities(p).get("sub") for p in group.files.values()} - {None})
        folder_label = entities(Path(group.source)).get("sub") or (
            group.subject[4:] if group.subject.startswith("sub-") else None)
        if len(labels) > 1 or (labels and folder_label and labels != [folder_label.split("_")[0]]):
            group.error = (f"files of different subjects in one group ({', '.join('sub-' + s for s in labels)}"
                           f"{' in folder of sub-' + folder_label if folder_label else ''}); refusing to mix them")
    return list(groups.values())


def _folder_subject(folder: Path) -> str:
    parts = [p for p in (folder.parent.name, folder.name) if p.startswith(("sub-", "ses-"))]
    if folder.name == "anat" and folder.parent.name.startswith(("sub-", "ses-")):
        parts = [p for p in (folder.parent.parent.name, folder.parent.name) if p.startswith(("sub-", "ses-"))]
    return "_".join(parts) if parts and parts[0].startswith("sub-") else folder.name


@dataclass
class SequenceSet:
    """One subject's sequences on the reference grid.

    ``reference``: the reference `Volume` (its grid is the label map's). ``arrays``: sequence name ->
    (I, J, K) float32 on the reference's canonical grid (raw intensities). ``notes``: how each was read.
    """

    reference: Volume
    reference_name: str
    arrays: dict[str, np.ndarray]
    paths: dict[str, Path]
    notes: list[str] = field(default_factory=list)


#: A sequence covering less of the reference's field of view than this is left out (a wrong header, or
#: a slab elsewhere): resampled, it would be an almost empty channel that looks like a present one.
MIN_SHARED_FIELD = 0.25


def load_sequence_set(files: dict[str, Path]) -> SequenceSet:
    """Read a subject's sequences and resample them onto the reference (see module docstring)."""
    known = {name: path for name, path in files.items() if name in SEQUENCES}
    unknown = sorted(set(files) - set(known))
    if not known:
        names = ", ".join(p.name for p in files.values())
        raise InputError(next(iter(files.values()), None), f"no recognised MRI sequence among {names} "
                         "(expected BIDS suffixes _swi, _T2starw, _T1w, _ce-<agent>_T1w, _T2w, _FLAIR)")
    ref_name = next(name for name in SEQUENCES if name in known)
    notes = []
    if ref_name not in ("swi", "T2starw"):
        notes.append(f"no SWI or T2* sequence: {ref_name} ({known[ref_name].name}) is the reference grid")
    else:
        notes.append(f"reference grid: {ref_name} ({known[ref_name].name})")
    if unknown:
        notes.append(f"ignored files of unknown sequence: {', '.join(files[u].name for u in unknown)}")
    reference = load_volume(known[ref_name])
    arrays = {ref_name: reference.data}
    for name, path in known.items():
        if name == ref_name:
            continue
        other = load_volume(path)
        same = other.shape == reference.shape and np.allclose(other.affine, reference.affine, atol=1e-3)
        if same:
            arrays[name] = other.data
            continue
        to_other = np.linalg.inv(other.affine) @ reference.affine
        grid = np.indices(reference.shape, dtype=np.float32).reshape(3, -1)
        coords = to_other[:3, :3].astype(np.float32) @ grid + to_other[:3, 3:4].astype(np.float32)
        inside = np.all((coords > -0.5) & (coords < np.array(other.shape, np.float32)[:, None] - 0.5), axis=0)
        if inside.mean() < MIN_SHARED_FIELD:
            notes.append(f"{name} ({path.name}) left out: it covers only {inside.mean():.0%} of the reference's "
                         "field of view (check its header)")
            continue
        arrays[name] = ndimage.map_coordinates(other.data, coords, order=1, mode="constant",
                                               cval=0.0).reshape(reference.shape).astype(np.float32)
        notes.append(f"{name} ({path.name}) resampled from {'x'.join(f'{s:.2g}' for s in other.spacing_mm)} mm "
                     f"onto the reference grid")
    for volume_notes in (reference.notes,):
        notes.extend(volume_notes)
    return SequenceSet(reference=reference, reference_name=ref_name, arrays=arrays, paths=dict(known), notes=notes)


def mri_working(seqs: SequenceSet, spacing_mm: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(channels (6, I, J, K) float32, brain mask (I, J, K) bool, affine) on the working grid; each
    sequence normalized to brain ~1, a missing sequence all zeros."""
    ref = seqs.reference
    resampled = {name: resample_to_spacing(array, ref.affine, spacing_mm) for name, array in seqs.arrays.items()}
    affine = next(iter(resampled.values()))[1]
    base = resampled[seqs.reference_name][0]
    mask_grid, mask_affine = resample_to_spacing(base, affine, 2.0)
    coarse = brain_mask(mask_grid, np.sqrt((mask_affine[:3, :3] ** 2).sum(axis=0)))
    mask = ndimage.zoom(coarse.astype(np.float32), np.array(base.shape) / np.array(coarse.shape), order=1) > 0.5
    mask = _fit(mask, base.shape)
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    channels = np.zeros((len(CHANNELS), *base.shape), np.float32)
    for name, (array, _) in resampled.items():
        index = 0 if name in ("swi", "T2starw") else CHANNELS.index(name)
        if index == 0 and name != seqs.reference_name and seqs.reference_name in ("swi", "T2starw"):
            continue
        channels[index] = normalize_intensity(array, mask, spacing)
    channels[-1] = mask
    return channels, mask, affine


def _fit(mask: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    out = np.zeros(shape, bool)
    sl = tuple(slice(0, min(a, b)) for a, b in zip(mask.shape, shape, strict=True))
    out[sl] = mask[sl]
    return out


def mri_probability(seqs: SequenceSet, model) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(blood probability, brain mask, affine) on the working grid from the MRI network; the subject must
    have SWI or T2* (`InputError` otherwise: the network never saw a subject without them — training drops
    every other sequence but never that one — and without them it painted whole brains as one lesion)."""
    from cmbdet.lesions.infer import probability_map

    if seqs.reference_name not in ("swi", "T2starw"):
        names = ", ".join(p.name for p in seqs.paths.values())
        raise InputError(seqs.paths[seqs.reference_name],
                         f"no SWI or T2*-weighted sequence among {names}: the MRI network localizes hemorrhage on "
                         "the susceptibility sequence (_swi or _T2starw), the others only add to it; "
                         "--classical reads T1/FLAIR alone")
    channels, mask, affine = mri_working(seqs, model.spacing_mm)
    prob = probability_map(channels[: model.net.in_channels], mask, model)
    return prob * ndimage.binary_dilation(mask, iterations=2), mask, affine


def classical_mri_lesions(seqs: SequenceSet, *, spacing_mm: float = 1.5, min_ml: float = 0.3):
    """The classical MRI peer: blood is dark on SWI/T2* (normalized < 0.45, 3x3x3 median) — or,
    without them, bright on T1 (> 1.5) — inside the brain eroded by 3 mm; opening, components,
    size filter."""
    from cmbdet.lesions.infer import lesions_from_probability

    channels, mask, affine = mri_working(seqs, spacing_mm)
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    inner = ndimage.distance_transform_edt(mask, sampling=spacing) > 3.0
    if channels[0].any():
        blood = ndimage.median_filter(channels[0], size=3) < 0.45
    elif channels[1].any():
        blood = ndimage.median_filter(channels[1], size=3) > 1.5
    else:
        blood = ndimage.median_filter(channels[3] if channels[3].any() else channels[4], size=3) < 0.5
    blood = ndimage.binary_opening(blood & inner, iterations=1)
    return lesions_from_probability(seqs.reference, blood.astype(np.float32), affine, mask, threshold=0.5,
                                    min_ml=min_ml)
