"""DICOM series: read and check the headers (pydicom), convert to NIfTI with dcm2niix.

The geometry is dcm2niix's (the ``dcm2niix`` PyPI package ships the binary; `dcm2niix_binary` finds it
through the package), never computed here. Only the files that pydicom reads completely are handed
to dcm2niix, from a private staging folder of links, so a corrupt file cannot spoil a series and
nothing is ever written into the source tree.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from cmbdet.atomic import atomic_path, write_text_atomic
from cmbdet.errors import InputError

#: Suffixes treated as DICOM; files without a suffix are DICOM when they carry the ``DICM`` marker.
DICOM_SUFFIXES = (".dcm", ".ima", ".dicom")

DCM2NIIX_TIMEOUT_S = 900


@dataclass
class DicomSeries:
    """The readable files of one DICOM series (one SeriesInstanceUID) in one folder."""

    folder: Path
    series_uid: str
    files: list[Path]
    description: str
    acquired: str  # "YYYYMMDD" or "" (AcquisitionDate, else SeriesDate, else StudyDate)
    acquisition_time: str  # "HHMMSS..." or ""
    echo_times_ms: list[float] = field(default_factory=list)

    @property
    def scan_date(self) -> str:
        """The acquisition day as ``YYYY-MM-DD``, or "" when the headers hold no valid date."""
        day = self.acquired
        valid = len(day) == 8 and day.isdigit() and 1 <= int(day[4:6]) <= 12 and 1 <= int(day[6:]) <= 31
        return f"{day[:4]}-{day[4:6]}-{day[6:]}" if valid else ""


@dataclass
class FolderScan:
    """What `read_dicom_folder` found: series by UID and the files it could not read (path, why)."""

    series: list[DicomSeries]
    corrupt: list[tuple[Path, str]]


def looks_like_dicom(path: Path) -> bool:
    """A ``.dcm``/``.ima``/``.dicom`` file, or a suffix-less file with the DICM marker at byte 128."""
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    if path.suffix:
        return False
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def read_dicom_folder(files: list[Path]) -> FolderScan:
    """Read every file's header and check its pixel data is complete; group the good ones by series."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    groups: dict[str, list[tuple[Path, object]]] = {}
    corrupt: list[tuple[Path, str]] = []
    for path in sorted(files):
        try:
            ds = pydicom.dcmread(path)
            problem = _pixel_problem(ds)
        except InvalidDicomError as err:
            problem = f"not a DICOM file ({err})"
        except Exception as err:  # truncated or garbled files raise many kinds of errors
            problem = f"unreadable DICOM ({type(err).__name__}: {err})"
        if problem:
            corrupt.append((path, problem[:200]))
            continue
        groups.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append((path, ds))
    series = []
    for uid, members in groups.items():
        first = members[0][1]
        echo_times = sorted({float(ds.get("EchoTime", 0) or 0) for _, ds in members})
        series.append(DicomSeries(
            folder=members[0][0].parent, series_uid=uid, files=[p for p, _ in members],
            description=str(first.get("SeriesDescription", "") or first.get("ProtocolName", "") or ""),
            acquired=str(first.get("AcquisitionDate", "") or first.get("SeriesDate", "")
                         or first.get("StudyDate", "") or ""),
            acquisition_time=str(first.get("AcquisitionTime", "") or first.get("SeriesTime", "") or ""),
            echo_times_ms=echo_times,
        ))
    return FolderScan(series=series, corrupt=corrupt)


def _pixel_problem(ds) -> str:
    """Why a dataset's image is unusable ("" when it is fine): no pixels, or fewer bytes than declared."""
    if "PixelData" not in ds:
        return "no pixel data"
    if ds.file_meta.get("TransferSyntaxUID", None) is not None and ds.file_meta.TransferSyntaxUID.is_compressed:
        return ""  # compressed: the length is not predictable; dcm2niix decodes it
    try:
        expected = (int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1))
                    * int(ds.get("NumberOfFrames", 1) or 1) * int(ds.BitsAllocated) // 8)
    except (AttributeError, TypeError, ValueError) as err:
        return f"incomplete image header ({err})"
    if len(ds.PixelData) < expected:
        return f"truncated pixel data ({len(ds.PixelData)} of {expected} bytes)"
    return ""


def dcm2niix_binary() -> Path:
    """The dcm2niix executable shipped by the ``dcm2niix`` package (raises InputError when absent)."""
    try:
        import dcm2niix
    except ImportError:
        raise InputError(None, "the dcm2niix package is not installed (pip install dcm2niix)") from None
    path = Path(dcm2niix.bin)
    if not path.is_file() or not os.access(path, os.X_OK):
        raise InputError(path, "the dcm2niix package has no runnable binary")
    return path


@dataclass
class ConvertedSeries:
    """A DICOM series written as one NIfTI (+ sidecar JSON) and what happened on the way."""

    image: Path
    sidecar: Path
    notes: list[str]


def convert_series(series: DicomSeries, image_path: Path, extra_sidecar: dict | None = None) -> ConvertedSeries:
    """Convert ``series`` to ``image_path`` (``.nii.gz``) and its ``.json`` sidecar, atomically.

    dcm2niix runs on links to the series' files in a temporary folder; several echoes (dcm2niix
    writes one image per echo) of one grid are stacked along axis 4, ordered by echo time (detect
    combines them, by default weighting later echoes). ``extra_sidecar`` keys are added to dcm2niix's JSON.
    Raises InputError (naming the series folder) when dcm2niix fails or writes no usable image.
    """
    binary = dcm2niix_binary()
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="cmbdet-dcm2niix-") as tmp:
        stage, out = Path(tmp) / "in", Path(tmp) / "out"
        stage.mkdir()
        out.mkdir()
        for n, path in enumerate(series.files):
            _link_or_copy(path.resolve(), stage / f"{n:05d}.dcm")
        command = [str(binary), "-b", "y", "-ba", "y", "-z", "y", "-f", "image", "-w", "1", "-d", "0",
                   "-i", "n", "-x", "n", "-v", "0", "-o", str(out), str(stage)]
        env = {**os.environ, "HOME": tmp}  # no user defaults file (~/.dcm2nii.ini) changes the result
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=DCM2NIIX_TIMEOUT_S, env=env)
        except subprocess.TimeoutExpired:
            raise InputError(series.folder, f"dcm2niix took longer than {DCM2NIIX_TIMEOUT_S} s") from None
        images = sorted(out.glob("*.nii.gz"))
        if done.returncode != 0 or not images:
            tail = " ".join((done.stderr or done.stdout or "").split())[-200:]
            raise InputError(series.folder, f"dcm2niix failed (exit {done.returncode}): {tail}")
        loaded = [(p, nib.load(str(p)), _sidecar(p)) for p in images]
        if len(loaded) == 1:
            path, image, sidecar = loaded[0]
            sidecar.update(extra_sidecar or {})
            with atomic_path(image_path) as target:
                shutil.copyfile(path, target)
        else:
            shapes = {img.shape[:3] for _, img, _ in loaded}
            same_grid = len(shapes) == 1 and all(np.allclose(img.affine, loaded[0][1].affine, atol=1e-3)
                                                 for _, img, _ in loaded)
            if not same_grid:
                raise InputError(series.folder, f"dcm2niix wrote {len(loaded)} images on different grids "
                                                f"({', '.join(p.name for p in images)}); convert it by hand")
            loaded.sort(key=lambda item: float(item[2].get("EchoTime", 0) or 0))
            stacked = np.stack([np.asarray(img.dataobj) for _, img, _ in loaded], axis=-1)
            first = loaded[0][1]
            merged = nib.Nifti1Image(stacked, first.affine, first.header)
            merged.set_qform(*first.get_qform(coded=True))
            merged.set_sform(*first.get_sform(coded=True))
            sidecar = loaded[0][2]
            sidecar["EchoTime"] = [item[2].get("EchoTime") for item in loaded]
            sidecar.update(extra_sidecar or {})
            notes.append(f"{len(loaded)} echoes stacked as 4-D with their echo times in the sidecar (detect "
                         "combines them, by default weighting later echoes: --echo auto)")
            with atomic_path(image_path) as target:
                nib.save(merged, str(target))
    sidecar_path = sidecar_path_of(image_path)
    write_text_atomic(sidecar_path, json.dumps(sidecar, indent=2, sort_keys=True) + "\n")
    return ConvertedSeries(image=image_path, sidecar=sidecar_path, notes=notes)


def sidecar_path_of(image_path: Path) -> Path:
    """``x.nii.gz`` / ``x.nii`` -> ``x.json``."""
    name = image_path.name
    stem = name[: -len(".nii.gz")] if name.endswith(".nii.gz") else Path(name).stem
    return image_path.with_name(stem + ".json")


def _sidecar(image: Path) -> dict:
    path = sidecar_path_of(image)
    return json.loads(path.read_text()) if path.exists() else {}


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.symlink(source, target)
    except OSError:
        shutil.copyfile(source, target)
