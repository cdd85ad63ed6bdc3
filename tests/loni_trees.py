"""Building ADNI- and AIBL-shaped download trees for the converter tests.

DICOM series are written with pydicom from the synthetic head of `tests.conftest.ellipsoid_head`, on
a grid given by DICOM tags: the patient-frame (LPS) position of pixel (row r, column c) of slice k is
``IPP_k + c * PixelSpacing[1] * row_dir + r * PixelSpacing[0] * col_dir`` (the DICOM definition), so a
test knows where every pixel is without asking dcm2niix.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from tests.conftest import ellipsoid_head

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


@dataclass(frozen=True)
class DicomGeometry:
    """Slice grid by DICOM tags: first slice position (LPS mm), row/column direction cosines (LPS),
    PixelSpacing (between rows, between columns; mm), slice step along row x column (mm, may be < 0)."""

    first_position_lps: tuple[float, float, float]
    row_dir: tuple[float, float, float]
    col_dir: tuple[float, float, float]
    pixel_spacing: tuple[float, float] = (3.5, 4.0)
    slice_step: float = 5.0
    shape_crk: tuple[int, int, int] = (48, 56, 26)  # columns, rows, slices

    def slice_position_lps(self, k: int) -> np.ndarray:
        normal = np.cross(self.row_dir, self.col_dir)
        return np.asarray(self.first_position_lps) + k * self.slice_step * normal

    def ras_of_pixel(self, c: int, r: int, k: int) -> np.ndarray:
        """Scanner RAS mm of column c, row r of slice k, from the tags alone."""
        lps = (self.slice_position_lps(k) + c * self.pixel_spacing[1] * np.asarray(self.row_dir)
               + r * self.pixel_spacing[0] * np.asarray(self.col_dir))
        return LPS_TO_RAS @ lps

    def ras_affine_crk(self) -> np.ndarray:
        """(column, row, slice) index -> RAS mm, the same formula as `ras_of_pixel` (for drawing)."""
        affine = np.eye(4)
        affine[:3, 0] = LPS_TO_RAS @ (self.pixel_spacing[1] * np.asarray(self.row_dir))
        affine[:3, 1] = LPS_TO_RAS @ (self.pixel_spacing[0] * np.asarray(self.col_dir))
        affine[:3, 2] = LPS_TO_RAS @ (self.slice_step * np.cross(self.row_dir, self.col_dir))
        affine[:3, 3] = LPS_TO_RAS @ np.asarray(self.first_position_lps)
        return affine


def rotation(axis, degrees: float) -> np.ndarray:
    axis = np.asarray(axis, dtype=float) / np.linalg.norm(axis)
    a = np.deg2rad(degrees)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * k @ k


def geometry(kind: str) -> DicomGeometry:
    """Named test grids: axial, axial-reversed (slices foot-ward), coronal, sagittal, oblique."""
    if kind == "axial":
        return DicomGeometry((-84.0, -110.0, -62.0), (1, 0, 0), (0, 1, 0))
    if kind == "axial-reversed":
        return DicomGeometry((-84.0, -110.0, 63.0), (1, 0, 0), (0, 1, 0), slice_step=-5.0)
    if kind == "coronal":
        return DicomGeometry((-84.0, 60.0, 90.0), (1, 0, 0), (0, 0, -1), pixel_spacing=(3.5, 3.5),
                             slice_step=-5.0, shape_crk=(48, 52, 30))
    if kind == "sagittal":
        return DicomGeometry((62.0, -100.0, 90.0), (0, 1, 0), (0, 0, -1), pixel_spacing=(3.5, 4.0),
                             slice_step=5.0, shape_crk=(50, 52, 26))
    if kind == "oblique":
        rot = rotation((1, 0.3, 0), 17)
        row, col = rot @ np.array([1.0, 0, 0]), rot @ np.array([0, 1.0, 0])
        start = rot @ np.array([-84.0, -110.0, -62.0])
        return DicomGeometry(tuple(start), tuple(row), tuple(col))
    raise ValueError(kind)


def spot_pixels(geom: DicomGeometry, n: int, seed: int) -> list[tuple[int, int, int]]:
    """``n`` pixel positions (c, r, k) well inside the synthetic brain, at least 15 mm apart."""
    rng = np.random.default_rng(seed)
    found: list[tuple[int, int, int]] = []
    for _ in range(10_000):
        if len(found) == n:
            return found
        crk = tuple(int(rng.integers(3, s - 3)) for s in geom.shape_crk)
        ras = geom.ras_of_pixel(*crk)
        if np.sqrt((ras[0] / 60) ** 2 + (ras[1] / 75) ** 2 + (ras[2] / 55) ** 2) > 0.6:
            continue
        if all(np.linalg.norm(ras - geom.ras_of_pixel(*p)) > 15 for p in found):
            found.append(crk)
    raise ValueError("the grid does not cover the synthetic brain")


def write_dicom_series(folder: Path, geom: DicomGeometry, *, description: str, spots_ras: list[np.ndarray],
                       name: str = "slice{n:03d}.dcm", order: str = "forward", date: str = "20110602",
                       time: str = "125224", echo_time_ms: float = 20.0, patient_id: str = "002_S_0295",
                       series_number: int = 5) -> list[Path]:
    """One DICOM series, one file per slice, pixel data from `ellipsoid_head` with dark spots at
    ``spots_ras``. ``order``: file/instance order ``forward``, ``reverse`` or ``shuffled``."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    data = ellipsoid_head(geom.ras_affine_crk(), shape=geom.shape_crk, dark_spots_mm=spots_ras)
    slices = list(range(geom.shape_crk[2]))
    if order == "reverse":
        slices = slices[::-1]
    elif order == "shuffled":
        slices = list(np.random.default_rng(1).permutation(slices))
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    paths = []
    for n, k in enumerate(slices):
        meta = FileMetaDataset()
        sop = generate_uid()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = MRImageStorage, sop
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = MRImageStorage, sop, "MR"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.PatientID, ds.PatientName, ds.PatientPosition = patient_id, "anonymous", "HFS"
        ds.SeriesDescription, ds.ProtocolName, ds.SeriesNumber = description, description, series_number
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = date
        ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = time
        ds.Manufacturer, ds.MagneticFieldStrength = "SIEMENS", 3
        ds.EchoTime, ds.RepetitionTime, ds.FlipAngle = echo_time_ms, 650, 20
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
        ds.InstanceNumber, ds.AcquisitionNumber = n + 1, 1
        ds.ImagePositionPatient = [f"{v:.6f}" for v in geom.slice_position_lps(k)]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in (*geom.row_dir, *geom.col_dir)]
        ds.PixelSpacing = [f"{v:.6f}" for v in geom.pixel_spacing]
        ds.SliceThickness = f"{abs(geom.slice_step):.6f}"
        ds.Rows, ds.Columns = geom.shape_crk[1], geom.shape_crk[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = np.ascontiguousarray(np.round(data[:, :, k].T).astype(np.uint16)).tobytes()
        path = folder / name.format(n=n + 1)
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_nifti(path: Path, affine: np.ndarray, shape, spots_ras: list[np.ndarray], seed: int = 0) -> None:
    """A LONI-style NIfTI download (``.nii`` or ``.nii.gz``) of the synthetic head."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(ellipsoid_head(affine, shape=shape, dark_spots_mm=spots_ras, seed=seed), affine),
             str(path))


def voxel_centre_ras(affine: np.ndarray, ijk) -> np.ndarray:
    return nib.affines.apply_affine(affine, np.asarray(ijk, dtype=float))


def oblique_lps_affine(spacing=(3.5, 3.5, 5.0), shape=(48, 56, 26), degrees=12.0) -> np.ndarray:
    """An LPS-ordered (x runs to the patient's left) oblique voxel->RAS affine centred on the head."""
    base = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    centre = np.array([(s - 1) / 2 for s in shape])
    base[:3, 3] = -base[:3, :3] @ centre
    rot = np.eye(4)
    rot[:3, :3] = rotation((0, 0, 1), degrees) @ rotation((1, 0, 0), 8)
    return rot @ base


def write_xml(path: Path, *, ptid: str, visit: str, series_id: str, image_id: str, description: str) -> None:
    """A LONI metadata XML (the elements the converter reads)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        '<?xml version="1.0" encoding="UTF-8"?>\n<idaxs><project><subject>'
        f"<subjectIdentifier>{ptid}</subjectIdentifier><study><series>"
        f"<seriesIdentifier>{series_id}</seriesIdentifier><visit><visitIdentifier>{visit}</visitIdentifier></visit>"
        f'<seriesLevelMeta><derivedProduct><imageUID>{image_id}</imageUID></derivedProduct>'
        f'<relatedImageDetail><originalRelatedImage><protocolTerm><protocol term="Description">{description}'
        "</protocol></protocolTerm></originalRelatedImage></relatedImageDetail></seriesLevelMeta>"
        "</series></study></subject></project></idaxs>\n")
