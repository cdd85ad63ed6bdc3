"""The BIDS-like output tree: names, and writing one image (+ JSON sidecar) into it, idempotently.

``sub-<label>[/ses-<label>]/anat/sub-<label>[_ses-<label>]_<T2starw|swi>.nii.gz``. A NIfTI download is
copied byte for byte (``.nii`` gzipped, the bytes inside unchanged); a DICOM series goes through
dcm2niix (`cmbdet.datasets.dicom`). The sidecar records where the image came from and a SHA-256
fingerprint of the source files; a rerun whose fingerprint matches leaves the image alone.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from cmbdet import __version__
from cmbdet.atomic import atomic_path, write_text_atomic
from cmbdet.datasets.dicom import DicomSeries, convert_series, sidecar_path_of
from cmbdet.errors import InputError

BIDS_VERSION = "1.9.0"


def bids_label(text: str) -> str:
    """A BIDS label: letters and digits only (``002_S_0295`` -> ``002S0295``)."""
    return re.sub(r"[^A-Za-z0-9]", "", text)


def image_relpath(participant: str, session: str, modality: str) -> Path:
    """``sub-P/ses-S/anat/sub-P_ses-S_<modality>.nii.gz`` (no session level when ``session`` is "")."""
    stem = f"sub-{participant}" + (f"_ses-{session}" if session else "")
    folder = Path(f"sub-{participant}") / (f"ses-{session}" if session else "") / "anat"
    return folder / f"{stem}_{modality}.nii.gz"


def fingerprint(files: list[Path], root: Path) -> str:
    """SHA-256 over the source files' paths (relative to ``root``) and contents."""
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(str(path.relative_to(root)).encode())
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


@dataclass
class WrittenImage:
    """Outcome of `write_image`: the image, whether it was (re)written, and notes for the report."""

    path: Path
    rewritten: bool
    notes: list[str]


def write_image(out_path: Path, *, source_rel: str, source_sha256: str, nifti: Path | None = None,
                dicom: DicomSeries | None = None, metadata: dict | None = None) -> WrittenImage:
    """Put one image at ``out_path`` (``.nii.gz``) with its sidecar, unless it is already there from the
    same source (same fingerprint). Exactly one of ``nifti`` / ``dicom``. ``metadata``: extra sidecar keys.
    Raises InputError naming the source when it cannot be read or converted.
    """
    sidecar_path = sidecar_path_of(out_path)
    if out_path.exists() and sidecar_path.exists():
        try:
            old = json.loads(sidecar_path.read_text())
        except (OSError, ValueError):
            old = {}
        if old.get("CmbdetSourceSHA256") == source_sha256:
            return WrittenImage(out_path, rewritten=False, notes=["already converted from the same files"])
    provenance = {"CmbdetSource": source_rel, "CmbdetSourceSHA256": source_sha256,
                  "CmbdetVersion": __version__, **(metadata or {})}
    if dicom is not None:
        done = convert_series(dicom, out_path, provenance)
        return WrittenImage(out_path, rewritten=True, notes=done.notes)
    if nifti is None:
        raise ValueError("write_image needs nifti or dicom")
    try:
        header = nib.load(str(nifti)).header
        np.asarray(nib.load(str(nifti)).dataobj[..., :1])  # the data is there (a cut file fails here)
    except Exception as err:
        raise InputError(nifti, f"not a readable NIfTI file ({type(err).__name__}: {err})") from None
    with atomic_path(out_path) as tmp:
        if nifti.name.lower().endswith(".nii.gz"):
            tmp.write_bytes(nifti.read_bytes())
        else:
            tmp.write_bytes(gzip.compress(nifti.read_bytes(), compresslevel=6, mtime=0))
    zooms = [float(z) for z in header.get_zooms()[:3]]
    sidecar = {**provenance, "CmbdetVoxelSizeMm": zooms}
    write_text_atomic(sidecar_path, json.dumps(sidecar, indent=2, sort_keys=True) + "\n")
    notes = [] if nifti.name.lower().endswith(".nii.gz") else ["NIfTI gzipped (contents unchanged)"]
    return WrittenImage(out_path, rewritten=True, notes=notes)


def points_outside(image_path: Path, xyz_mm: np.ndarray, margin_vox: float = 0.5) -> int:
    """How many of the (N, 3) scanner-RAS mm points fall outside the image's voxel grid."""
    if len(xyz_mm) == 0:
        return 0
    image = nib.load(str(image_path))
    ijk = nib.affines.apply_affine(np.linalg.inv(image.affine), np.asarray(xyz_mm, dtype=float).reshape(-1, 3))
    shape = np.asarray(image.shape[:3], dtype=float)
    inside = np.all((ijk >= -margin_vox) & (ijk <= shape - 1 + margin_vox), axis=1)
    return int((~inside).sum())


def check_folders(src: Path, out: Path) -> None:
    """SRC must be a folder and OUT must not lie inside it (SRC is never written to)."""
    if src.is_file() and src.name.lower().endswith((".zip", ".tar", ".tar.gz", ".tgz")):
        raise InputError(src, "an archive, not a folder: unpack it first (e.g. unzip) and give the folder")
    if src.is_file():
        raise InputError(src, "a file, not a folder: give the folder of the download")
    if not src.is_dir():
        raise InputError(src, "no such folder")
    src_real, out_real = src.resolve(), out.resolve()
    if out_real == src_real or src_real in out_real.parents:
        raise InputError(out, f"the output folder is inside the source tree {src}; choose another (SRC is never "
                              "modified)")
    if out.exists() and not out.is_dir():
        raise InputError(out, "exists and is not a folder")


def write_dataset_description(out: Path, name: str) -> None:
    """``dataset_description.json`` at the top of the BIDS tree (rewritten only when it changes)."""
    text = json.dumps({"Name": name, "BIDSVersion": BIDS_VERSION, "DatasetType": "raw",
                       "GeneratedBy": [{"Name": "cmbdet convert", "Version": __version__}]}, indent=2) + "\n"
    path = out / "dataset_description.json"
    if not path.exists() or path.read_text() != text:
        write_text_atomic(path, text)
