"""The Python API: a `Detector` wires the stages; `detect_batch` runs many scans and writes outputs.

    from cmbdet.pipeline import load_detector
    from cmbdet.volume import load_volume
    detector = load_detector()                      # shipped weights, CPU or CUDA
    detections = detector.detect(load_volume("scan.nii.gz"))
    detections.xyz_mm, detections.score, detections.region
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cmbdet import __version__
from cmbdet.detections import Detections
from cmbdet.errors import InputError
from cmbdet.outputs import (
    COUNT_COLUMNS,
    DETECTION_COLUMNS,
    count_row,
    error_row,
    write_csv_atomic,
    write_label_map,
    write_markups,
    write_review_picture,
    write_text_atomic,
)
from cmbdet.preprocess import prepare_working_image
from cmbdet.proposer.infer import Proposer, load_proposer, propose_candidates
from cmbdet.regions import assign_regions
from cmbdet.training_data import subject_from_filename
from cmbdet.volume import Volume, load_volume
from cmbdet.weights import SHIPPED_WEIGHTS_DIR

#: Final-score threshold used when the weights do not carry one.
DEFAULT_THRESHOLD = 0.5
#: Stage-1 likelihood below which a peak is not a candidate (unless the final threshold is lower).
MIN_CANDIDATE_SCORE = 0.05


@dataclass
class Detector:
    """Stage 1 (+ stage 2 when ``reclassifier`` is set) + MARS regions, at one score threshold."""

    proposer: Proposer
    reclassifier: object | None = None
    threshold: float = DEFAULT_THRESHOLD
    max_candidates: int = 30

    def detect(self, volume: Volume) -> Detections:
        """Microbleeds in one scan, highest score first; positions in scanner RAS mm."""
        working = prepare_working_image(volume, self.proposer.spacing_mm)
        # A threshold under the usual stage-1 floor (0 for an FROC) keeps weaker candidates too.
        found = propose_candidates(working, self.proposer, max_candidates=self.max_candidates,
                                   min_score=min(MIN_CANDIDATE_SCORE, self.threshold))
        if self.reclassifier is not None:
            from cmbdet.reclassifier.infer import reclassify

            found = reclassify(volume, found, self.reclassifier)
        found = found.subset(found.score >= self.threshold).sorted_by_score()
        return assign_regions(found, working.mask, working.affine)


def load_detector(
    weights_dir: str | Path | None = None,
    *,
    reclassify: bool = True,
    threshold: float | None = None,
    device: str | None = None,
) -> Detector:
    """A `Detector` from a weights folder (default: the shipped ``weights/``).

    ``reclassify=False`` runs stage 1 alone. ``threshold`` overrides the operating point stored
    with the weights (final score in [0, 1]; 0 keeps every candidate, e.g. for an FROC).
    """
    folder = Path(weights_dir) if weights_dir is not None else SHIPPED_WEIGHTS_DIR
    if not folder.is_dir():
        raise InputError(folder, "weights folder not found")
    proposer = load_proposer(folder / "proposer.safetensors", device=device)
    reclassifier = None
    stored = proposer.metadata.get("threshold", DEFAULT_THRESHOLD)
    reclassifier_path = folder / "reclassifier.safetensors"
    if reclassify and reclassifier_path.exists():
        from cmbdet.reclassifier.infer import load_reclassifier

        reclassifier = load_reclassifier(reclassifier_path, device=device)
        stored = reclassifier.threshold
    return Detector(proposer=proposer, reclassifier=reclassifier,
                    threshold=float(stored if threshold is None else threshold))


# --- batches ------------------------------------------------------------------------------------


@dataclass
class SubjectResult:
    subject: str
    input_path: Path
    status: str  # "ok" or "error"
    message: str = ""
    n_cmb: int = 0
    seconds: float = 0.0
    counts: dict = field(default_factory=dict)


def expand_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """Files, folders (searched recursively for .nii/.nii.gz) and text files listing paths -> scans.

    A path that does not exist is kept, so that it is reported as that subject's error.
    """
    scans: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and _is_nifti(p) and not p.name.startswith("."))
            if not found:
                warnings.warn(f"{path}: folder holds no .nii/.nii.gz file", stacklevel=2)
            scans.extend(found)
        elif path.is_file() and not _is_nifti(path) and path.suffix.lower() in (".txt", ".lst", ".list", ".csv"):
            scans.extend(_read_list(path))
        else:
            scans.append(path)
    return scans


def detect_batch(
    detector: Detector,
    scans: Sequence[Path],
    outdir: str | Path,
    *,
    echo: str | int = "auto",
    pictures: bool = True,
    progress: Callable[[int, int, SubjectResult], None] | None = None,
) -> list[SubjectResult]:
    """Run the detector on every scan; one bad scan never stops the others.

    Writes (atomically, updated after every subject) ``OUTDIR/detections.csv``, ``OUTDIR/counts.csv``
    and ``OUTDIR/run.json``, and per subject ``OUTDIR/<subject>/<subject>_desc-cmb_dseg.nii.gz``
    (label map in the input's grid), ``..._cmb.mrk.json`` (3D Slicer markups) and ``..._review.png``.
    """
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    subjects = _unique_subjects(scans)
    detection_rows: list[dict] = []
    count_rows: list[dict] = []
    results: list[SubjectResult] = []
    for index, (path, subject) in enumerate(zip(scans, subjects, strict=True), start=1):
        started = time.perf_counter()
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                volume = load_volume(path, echo=echo)
                detections = detector.detect(volume)
                folder = outdir / subject
                write_label_map(volume, detections, folder / f"{subject}_desc-cmb_dseg.nii.gz")
                write_markups(detections, subject, folder / f"{subject}_cmb.mrk.json")
                if pictures:
                    write_review_picture(volume, detections, subject, folder / f"{subject}_review.png")
            message = "; ".join((*volume.notes, *detections.notes))
            detection_rows.extend(detections.to_rows(subject, volume))
            row = count_row(subject, detections, message=message, input_path=str(path))
            result = SubjectResult(subject, Path(path), "ok", message, len(detections),
                                   time.perf_counter() - started, row)
            for w in caught:
                if not str(w.message).startswith(str(path)):
                    warnings.warn(f"{path}: {w.message}", stacklevel=2)
        except InputError as err:
            row = error_row(subject, str(err), str(path))
            result = SubjectResult(subject, Path(path), "error", str(err), 0, time.perf_counter() - started, row)
        except Exception as err:  # a bug or an unforeseen file: report it, go on with the others
            message = f"{path}: unexpected {type(err).__name__}: {err}"
            row = error_row(subject, message, str(path))
            result = SubjectResult(subject, Path(path), "error", message, 0, time.perf_counter() - started, row)
        count_rows.append(row)
        results.append(result)
        write_csv_atomic(outdir / "detections.csv", detection_rows, DETECTION_COLUMNS)
        write_csv_atomic(outdir / "counts.csv", count_rows, COUNT_COLUMNS)
        if progress is not None:
            progress(index, len(scans), result)
    write_text_atomic(outdir / "run.json", json.dumps(_run_record(detector, results), indent=1))
    return results


def _run_record(detector: Detector, results: list[SubjectResult]) -> dict:
    return {
        "cmbdet_version": __version__,
        "threshold": detector.threshold,
        "stage2": detector.reclassifier is not None,
        "proposer": {k: v for k, v in detector.proposer.metadata.items() if k != "history"},
        "subjects": [{"subject": r.subject, "input": str(r.input_path), "status": r.status,
                      "n_cmb": r.n_cmb, "seconds": round(r.seconds, 2), "message": r.message} for r in results],
    }


def _is_nifti(path: Path) -> bool:
    return path.name.lower().endswith((".nii", ".nii.gz"))


def _read_list(path: Path) -> list[Path]:
    out = []
    for line in path.read_text().splitlines():
        line = line.strip().split(",")[0].strip()
        if not line or line.startswith("#") or line.lower() in ("path", "image", "input"):
            continue
        item = Path(line)
        out.append(item if item.is_absolute() else path.parent / item)
    return out


def _unique_subjects(scans: Sequence[Path]) -> list[str]:
    """Subject ids from file names; repeated ids get ``-2``, ``-3`` ... (with a warning)."""
    seen: dict[str, int] = {}
    out = []
    for path in scans:
        subject = subject_from_filename(path)
        seen[subject] = seen.get(subject, 0) + 1
        if seen[subject] > 1:
            warnings.warn(f"{path}: subject id {subject!r} repeats in this batch; written as "
                          f"{subject}-{seen[subject]}", stacklevel=3)
            subject = f"{subject}-{seen[subject]}"
        out.append(subject)
    return out
