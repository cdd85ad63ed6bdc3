"""The `Volume` type: a 3-D magnitude scan in one canonical orientation, with the way back.

Orientation is handled here and only here:

* on load, the array is reoriented to the closest RAS+ axis order (nibabel's ``io_orientation``;
  an oblique grid stays oblique, its rotation lives in the affine) — every stage works on that;
* on write, arrays in the canonical grid are put back into the input file's exact grid (same shape,
  same affine, same axis order and signs), so a label map overlays the input in any viewer;
* voxel <-> world conversions go through the affines (``nibabel.affines.apply_affine``).

World coordinates are scanner RAS+ millimetres, as nibabel reports them for the input file.
"""

from __future__ import annotations

import gzip
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.affines import apply_affine
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform
from scipy import ndimage

from cmbdet.atomic import atomic_path
from cmbdet.echoes import (
    ECHO_CHOICES,
    combine_echoes,
    describe_echo_numbers,
    echo_index_from_name,
    read_echo_times,
    series_echo_times,
)
from cmbdet.errors import InputError

#: 4-D series with at most this many volumes are read as multi-echo magnitude (echoes on axis 4).
MAX_ECHOES = 16

_RAS_ORNT = axcodes2ornt(("R", "A", "S"))


@dataclass(frozen=True)
class SourceGrid:
    """The grid of the file as read: what label maps are written back onto."""

    shape: tuple[int, int, int]
    affine: np.ndarray  # (4, 4) voxel -> scanner RAS mm of the file
    ornt: np.ndarray  # (3, 2) nibabel orientation of the file's axes relative to RAS
    header: nib.Nifti1Header | None = None

    @property
    def axcodes(self) -> tuple[str, str, str]:
        return tuple(nib.aff2axcodes(self.affine))  # type: ignore[return-value]


@dataclass(frozen=True, eq=False)
class Volume:
    """A 3-D scan in RAS-canonical voxel order.

    ``data``: (I, J, K) float32, axis i runs to the Right, j to Anterior, k to Superior (closest
    axis for oblique grids). ``affine``: (4, 4) canonical voxel -> scanner RAS mm.
    ``source``: the input file's own grid. ``notes``: what was done at load (echo combination,
    repairs) in words a user can read in the outputs.
    """

    data: np.ndarray
    affine: np.ndarray
    source: SourceGrid
    path: Path | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.data.shape)  # type: ignore[return-value]

    @property
    def spacing_mm(self) -> np.ndarray:
        """(3,) voxel size in mm along the canonical axes i, j, k."""
        return np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0))

    def ijk_to_xyz_mm(self, ijk: np.ndarray) -> np.ndarray:
        """(N, 3) canonical voxel coordinates -> (N, 3) scanner RAS mm."""
        return apply_affine(self.affine, np.asarray(ijk, dtype=float).reshape(-1, 3))

    def xyz_mm_to_ijk(self, xyz_mm: np.ndarray) -> np.ndarray:
        """(N, 3) scanner RAS mm -> (N, 3) canonical voxel coordinates (float)."""
        return apply_affine(np.linalg.inv(self.affine), np.asarray(xyz_mm, dtype=float).reshape(-1, 3))

    def to_source_ijk(self, ijk: np.ndarray) -> np.ndarray:
        """(N, 3) canonical voxel coordinates -> (N, 3) voxel coordinates in the input file's array."""
        canonical_to_source = np.linalg.inv(self.source.affine) @ self.affine
        return apply_affine(canonical_to_source, np.asarray(ijk, dtype=float).reshape(-1, 3))

    def to_source_array(self, array: np.ndarray) -> np.ndarray:
        """An (I, J, K) array on the canonical grid -> the same voxels in the input file's axis order."""
        if array.shape != self.data.shape:
            raise ValueError(f"array shape {array.shape} is not the volume's {self.data.shape}")
        back = ornt_transform(_RAS_ORNT, self.source.ornt)
        return np.ascontiguousarray(apply_orientation(array, back))

    def from_source_array(self, array: np.ndarray) -> np.ndarray:
        """An array in the input file's axis order (e.g. a label map written by `write_like_source`)
        -> the same voxels on the canonical grid (the inverse of `to_source_array`)."""
        if tuple(array.shape[:3]) != tuple(self.source.shape[:3]):
            raise ValueError(f"array shape {array.shape} is not the input file's {self.source.shape}")
        return np.ascontiguousarray(apply_orientation(array, self.source.ornt))

    def with_data(self, data: np.ndarray) -> Volume:
        """The same grid with other voxel values (same shape required)."""
        if data.shape != self.data.shape:
            raise ValueError(f"data shape {data.shape} is not the volume's {self.data.shape}")
        return replace(self, data=data)


def image_values(image: nib.Nifti1Image) -> np.ndarray:
    """An image's voxel values as float32 (scaling applied); a complex-valued image — magnitude and phase in
    one file — gives its magnitude."""
    data = np.asarray(image.dataobj)
    if np.iscomplexobj(data):
        data = np.abs(data)
    return data.astype(np.float32, copy=False)


def volume_from_image(
    image: nib.Nifti1Image,
    path: str | Path | None = None,
    *,
    echo: str | int = "auto",
    echo_times: list[float] | None = None,
    echo_numbers: Sequence[int] | None = None,
    why_no_echo_times: str | None = None,
) -> Volume:
    """Check and reorient an in-memory NIfTI image (see `load_volume`). For a 4-D (multi-echo) image:
    ``echo_times`` in ms per echo, or ``None`` with ``why_no_echo_times`` saying why (for the note);
    ``echo_numbers``: the 1-based echo number of each echo (default 1..E), see `combine_echoes`."""
    name = str(path) if path is not None else "<image>"
    notes: list[str] = []
    affine = _checked_affine(image, name, notes)
    try:
        data = image_values(image)
    except Exception as err:  # truncated gzip, short file, bad scaling: all "cannot read"
        raise InputError(name, f"could not read the image data ({type(err).__name__}: {err}); "
                               "the file may be truncated or corrupt") from None
    if np.issubdtype(image.get_data_dtype(), np.complexfloating):
        notes.append("complex-valued image: its magnitude is used")
    data = _checked_dimensions(data, name)
    data = _repair_non_finite(data, name, notes)
    _check_magnitude(data, name)
    if data.ndim == 4:
        data, message = combine_echoes(data, echo, echo_times, name, numbers=echo_numbers,
                                       why_no_times=why_no_echo_times)
        notes.append(message)

    ornt = io_orientation(affine)
    canonical = np.ascontiguousarray(apply_orientation(data, ornt), dtype=np.float32)
    canonical_affine = affine @ inv_ornt_aff(ornt, data.shape)
    header = image.header.copy() if isinstance(image.header, nib.Nifti1Header) else None
    source = SourceGrid(shape=tuple(int(s) for s in data.shape), affine=affine, ornt=ornt, header=header)
    return Volume(
        data=canonical,
        affine=canonical_affine,
        source=source,
        path=None if path is None else Path(path),
        notes=tuple(notes),
    )


def load_volume(path: str | Path | Sequence[str | Path], *, echo: str | int = "auto") -> Volume:
    """Load a 3-D or multi-echo NIfTI magnitude scan into a RAS-canonical `Volume`.

    ``path``: one file (3-D, or 4-D with echoes on axis 4), or a sequence of 3-D files holding one
    echo each (BIDS ``_echo-N``, dcm2niix ``_eN``) on one grid; those are ordered by echo time
    (sidecar), else by the echo number in the name, else as given. ``echo``: ``"auto"`` (default:
    echoes weighted for susceptibility contrast by echo time, see `cmbdet.echoes`), ``"rss"``
    root-sum-of-squares, ``"last"``, ``"first"``, or a 0-based index (for files numbered by echo,
    ``N`` is the echo numbered ``N + 1``, refused if that file is absent). Echo times are read from
    JSON sidecars; a missing or bad sidecar is named in the note, never fatal. What was done is
    recorded in ``Volume.notes``. Raises `InputError` (one line naming the file) for anything that is
    not a usable magnitude scan.
    """
    if not isinstance(path, str | Path):
        paths = [Path(p) for p in path]
        if len(paths) == 1:
            return load_volume(paths[0], echo=echo)
        if not paths:
            raise InputError("<no file>", "an empty list of echo files was given")
        return _load_echo_files(paths, echo)
    path = Path(path)
    image = read_nifti(path)
    n_echoes = int(np.prod(image.shape[3:])) if len(image.shape) > 3 else 1
    times, why = series_echo_times([read_echo_times(path)], n_echoes)
    return volume_from_image(image, path, echo=echo, echo_times=times, why_no_echo_times=why)


def read_nifti(path: Path) -> nib.Nifti1Image:
    """A NIfTI-1 or -2 image (data not yet read), or `InputError` naming the file and what is wrong."""
    if not path.exists():
        raise InputError(path, "no such file")
    if path.is_dir():
        raise InputError(path, "is a directory, not a NIfTI file")
    if path.stat().st_size == 0:
        raise InputError(path, "file is empty (0 bytes)")
    if not path.name.lower().endswith((".nii", ".nii.gz")):
        raise InputError(path, "not a NIfTI file (expected .nii or .nii.gz)")
    with open(path, "rb") as handle:
        gzipped = handle.read(2) == b"\x1f\x8b"
    try:
        image = _read_gzipped(path) if gzipped else nib.load(str(path))
    except InputError:
        raise
    except Exception as err:
        raise InputError(path, f"not a readable NIfTI file ({_short(err)})") from None
    if not isinstance(image, nib.Nifti1Image | nib.Nifti2Image):
        raise InputError(path, f"not a NIfTI image ({type(image).__name__})")
    return image


def read_label_map(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(integer labels as stored (I, J, K), affine) of a label map such as a ``_dseg`` file, or `InputError`
    naming the file: missing, not NIfTI, truncated or corrupt, not 3-D, or holding non-integer values."""
    path = Path(path)
    image = read_nifti(path)
    try:
        values = np.asarray(image.dataobj)
    except Exception as err:
        raise InputError(path, f"could not read the label map's data ({_short(err)}); "
                               "the file may be truncated or corrupt") from None
    if values.ndim > 3 and all(s == 1 for s in values.shape[3:]):
        values = values.reshape(values.shape[:3])
    if values.ndim != 3:
        raise InputError(path, f"a label map must be 3-D, this one has shape {values.shape}")
    if not np.all(np.isfinite(values)) or not np.array_equal(values, np.round(values)):
        raise InputError(path, "not a label map: it holds non-integer values")
    return values.astype(np.int32), image.affine


def _read_gzipped(path: Path) -> nib.Nifti1Image | nib.Nifti2Image:
    """A gzipped NIfTI decompressed whole, so that its CRC is checked (nibabel reads the image data and
    stops before the gzip trailer: a corrupted file would be read as if it were fine)."""
    try:
        data = gzip.decompress(path.read_bytes())
    except (OSError, EOFError, zlib.error) as err:
        raise InputError(path, f"could not read the image data ({type(err).__name__}: {err}); "
                               "the file may be truncated or corrupt") from None
    try:
        return nib.Nifti1Image.from_bytes(data)
    except Exception:  # not NIfTI-1: perhaps NIfTI-2 (any other error is reported by the caller)
        return nib.Nifti2Image.from_bytes(data)


def _load_echo_files(paths: list[Path], echo: str | int) -> Volume:
    """One subject stored one echo per file: check they share one grid, order them, stack, combine.

    Order: by sidecar echo time when every file has a usable, distinct one, else by the echo number in
    the names (BIDS ``_echo-N``, dcm2niix ``_eN``), else as given. With echo numbers, ``--echo N`` is the
    file numbered ``N + 1`` and, without echo times, echo ``k`` is assumed at ``k`` echo spacings."""
    times, why = series_echo_times([read_echo_times(p) for p in paths], len(paths))
    named = [echo_index_from_name(p) for p in paths]
    numbers = named if all(k is not None for k in named) else None
    if numbers is not None and len(set(numbers)) < len(numbers):
        twice = sorted({k for k in numbers if numbers.count(k) > 1})
        raise InputError(paths[0], f"two echo files with the same echo number {', '.join(map(str, twice))} "
                                   f"({', '.join(p.name for p in paths)})")
    if times is not None:
        order = np.argsort(times, kind="stable")
    elif numbers is not None:
        order = np.argsort(numbers, kind="stable")
    else:
        order = np.arange(len(paths))
    paths = [paths[i] for i in order]
    times = None if times is None else [times[i] for i in order]
    numbers = None if numbers is None else [numbers[i] for i in order]
    names = ", ".join(p.name for p in paths)
    if numbers is not None and echo not in ECHO_CHOICES:
        try:
            requested = int(echo)
        except (TypeError, ValueError):
            requested = None  # an unknown choice: combine_echoes says so
        if requested is not None and requested + 1 not in numbers:
            held = describe_echo_numbers(numbers) or f"numbered 1..{len(numbers)}"
            raise InputError(paths[0], f"echo {requested} requested (0-based: echo number {requested + 1}), but no "
                                       f"echo file is numbered {requested + 1} ({names}: {held})")
    images = [read_nifti(p) for p in paths]
    first = images[0]
    for p, image in zip(paths[1:], images[1:]):
        if image.shape[:3] != first.shape[:3]:
            raise InputError(p, f"echo file is not on the grid of {paths[0].name} (shape {image.shape} vs "
                                f"{first.shape}); echoes of one scan must share one grid")
        if not np.allclose(image.affine, first.affine, atol=1e-3):
            raise InputError(p, f"echo file is not on the grid of {paths[0].name}: its voxel-to-world affine "
                                f"differs from {paths[0].name}'s (by up to {_grid_offset_mm(image, first):.3g} mm "
                                "at the corners; position or orientation); echoes of one scan must share one grid")
        if len(image.shape) > 3 and any(s > 1 for s in image.shape[3:]):
            raise InputError(p, f"echo file is {len(image.shape)}-D (shape {image.shape}); one 3-D echo per file")
    try:
        stacked = np.stack([image_values(im).reshape(im.shape[:3]) for im in images], 3)
    except Exception as err:
        raise InputError(paths[0], f"could not read the echo files ({type(err).__name__}: {err})") from None
    combined = nib.Nifti1Image(stacked, first.affine, first.header)
    volume = volume_from_image(combined, paths[0], echo=echo, echo_times=times, echo_numbers=numbers,
                               why_no_echo_times=why)
    return replace(volume, notes=(f"{len(paths)} echo files read as one scan ({names})", *volume.notes))


def _grid_offset_mm(image: nib.Nifti1Image, reference: nib.Nifti1Image) -> float:
    """The largest distance (mm) between where two affines put the corner voxels of ``reference``'s grid."""
    corners = np.array(np.meshgrid(*[[0, max(s - 1, 0)] for s in reference.shape[:3]], indexing="ij")).reshape(3, -1).T
    return float(np.max(np.linalg.norm(apply_affine(image.affine, corners) - apply_affine(reference.affine, corners),
                                       axis=1)))


def write_like_source(volume: Volume, array: np.ndarray, path: str | Path, *, dtype=np.int16) -> Path:
    """Write an array on the volume's canonical grid as NIfTI in the input file's exact grid.

    Same shape, affine (sform and qform), axis order and signs as the input; written atomically.
    """
    data = volume.to_source_array(np.asarray(array)).astype(dtype)
    header = nib.Nifti1Header()
    header.set_data_dtype(dtype)
    image = nib.Nifti1Image(data, volume.source.affine, header)
    image.set_sform(volume.source.affine, code=1)
    image.set_qform(volume.source.affine, code=1)
    image.header.set_xyzt_units("mm")
    image.header["scl_slope"] = 1.0
    image.header["scl_inter"] = 0.0
    return save_image_atomic(image, path)


def save_image_atomic(image: nib.Nifti1Image, path: str | Path) -> Path:
    """Save a NIfTI image through a temp file in the same folder and a rename: never half-written."""
    with atomic_path(path) as tmp:
        nib.save(image, tmp)
    return Path(path)


# --- checks -------------------------------------------------------------------------------------


def _short(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else type(err).__name__


def _checked_affine(image: nib.Nifti1Image, name: str, notes: list[str]) -> np.ndarray:
    header = image.header
    sform_code = int(header["sform_code"]) if "sform_code" in header else 0
    qform_code = int(header["qform_code"]) if "qform_code" in header else 0
    affine = np.asarray(image.affine, dtype=float)
    if not np.all(np.isfinite(affine)):
        raise InputError(name, "the affine (voxel-to-world matrix) has non-finite values")
    if abs(np.linalg.det(affine[:3, :3])) < 1e-6:
        raise InputError(name, "singular affine (voxel-to-world matrix has zero volume); cannot place voxels")
    if sform_code == 0 and qform_code == 0:
        axcodes = "".join(nib.aff2axcodes(affine))
        message = (f"header has neither sform nor qform: orientation unknown; using nibabel's default "
                   f"(voxel sizes only, axes {axcodes})")
        warnings.warn(f"{name}: {message}", stacklevel=3)
        notes.append(message)
    elif sform_code > 0 and qform_code > 0:
        qform = np.asarray(image.get_qform(), dtype=float)
        if not np.allclose(qform, affine, atol=1e-3):
            ident = np.allclose(qform[:3, :3], np.diag(np.diag(qform[:3, :3]))) and np.allclose(qform[:3, 3], 0)
            kind = "an identity-like qform" if ident else "a qform that differs"
            message = f"{kind} and the sform disagree; using the sform (nibabel's rule), as most viewers do"
            warnings.warn(f"{name}: {message}", stacklevel=3)
            notes.append(message)
    return affine


def _checked_dimensions(data: np.ndarray, name: str) -> np.ndarray:
    """Drop trailing singleton axes; accept 3-D or multi-echo 4-D (echoes on axis 4) only."""
    if data.size == 0 or 0 in data.shape:
        raise InputError(name, f"image has zero size (shape {data.shape})")
    # NIfTI allows trailing singleton dimensions (x, y, z, 1, 1): drop them.
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim < 3:
        raise InputError(name, f"{data.ndim}-D image (shape {data.shape}); a 3-D volume is needed")
    if data.ndim > 4:
        raise InputError(name, f"{data.ndim}-D image (shape {data.shape}); a 3-D or multi-echo 4-D volume is needed")
    if data.ndim == 4 and data.shape[3] > MAX_ECHOES:
        raise InputError(name, f"4-D series with {data.shape[3]} volumes looks like a time series, not "
                               f"multi-echo magnitude (at most {MAX_ECHOES} echoes); give one 3-D volume")
    if min(data.shape[:3]) < 2:
        raise InputError(name, f"image has a single slice (shape {data.shape}); a 3-D volume is needed")
    return data


def _repair_non_finite(data: np.ndarray, name: str, notes: list[str]) -> np.ndarray:
    """NaN/infinite voxels: those connected to the edge of the field of view are background (masking
    pipelines write NaN outside the brain) and become 0; those inside take the value of their nearest
    finite voxel, so that a hole in the image never reads as a dark focus. Per volume of a 4-D series."""
    bad = ~np.isfinite(data)
    n_bad = int(bad.sum())
    if n_bad == 0:
        return data
    if data.size - n_bad < 0.01 * data.size:
        raise InputError(name, f"{n_bad / data.size:.0%} of voxels are NaN or infinite; not a usable scan")
    data = data.copy()
    n_inside = 0
    for index in np.ndindex(data.shape[3:]):
        volume, hole = data[(..., *index)], bad[(..., *index)]
        if not hole.any():
            continue
        components, _ = ndimage.label(hole)
        edge = np.zeros(hole.shape, bool)
        for axis in range(3):
            edge[(slice(None),) * axis + (0,)] = edge[(slice(None),) * axis + (-1,)] = True
        at_edge = np.setdiff1d(np.unique(components[edge & hole]), [0])
        inside = hole & ~np.isin(components, at_edge)
        volume[hole & ~inside] = 0.0
        if inside.any():
            n_inside += int(inside.sum())
            box = tuple(slice(max(int(a.min()) - 1, 0), int(a.max()) + 2) for a in np.nonzero(inside))
            _, nearest = ndimage.distance_transform_edt(hole[box], return_indices=True)
            filled = volume[box][tuple(nearest)]
            volume[box][inside[box]] = filled[inside[box]]
    message = (f"{n_bad} NaN/infinite voxels ({n_bad / data.size:.1%}): "
               f"{n_bad - n_inside} at the edge of the field of view set to 0 (background)"
               + (f", {n_inside} inside it filled from their nearest finite voxels" if n_inside else ""))
    warnings.warn(f"{name}: {message}", stacklevel=3)
    notes.append(message)
    return data


def _looks_like_ct(data: np.ndarray) -> bool:
    """Air around the head near -1000 and much of the rest in the 0-100 of brain: a CT in HU (a phase
    image spreads its values over its whole range)."""
    sample = data[(slice(None, None, 2),) * data.ndim]
    return bool(np.mean((sample > -1100) & (sample < -900)) > 0.1 and np.mean((sample >= 0) & (sample <= 100)) > 0.1)


def _check_magnitude(data: np.ndarray, name: str) -> None:
    """Reject images that cannot be magnitude: constant, or phase (values symmetric around zero)."""
    if not data.max() > data.min():
        raise InputError(name, "image is constant (all voxels have one value); nothing to detect")
    lo, hi = np.percentile(data, [0.5, 99.5])
    if hi <= 0:
        raise InputError(name, f"almost every value is zero or negative (99.5th percentile {hi:.3g}): not a "
                               "magnitude image (a difference image, or a wrong scl_slope/scl_inter?)")
    if lo < 0 and -lo > 0.5 * hi and np.mean(data < 0) > 0.2:
        if _looks_like_ct(data):
            raise InputError(name, f"values look like a CT in Hounsfield units (0.5th/99.5th percentiles {lo:.4g}/"
                                   f"{hi:.4g}: air near -1000, brain 0-100); cmbdet detect reads SWI/T2*-GRE MRI "
                                   "(for hematomas on CT: cmbdet lesions --modality ct)")
        raise InputError(
            name,
            f"values are symmetric around zero (0.5th/99.5th percentiles {lo:.3g}/{hi:.3g}): this looks like a "
            "phase image; cmbdet needs the magnitude (or SWI) image",
        )
