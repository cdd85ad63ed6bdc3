"""The Python API: a `Detector` wires the stages; `DetectJob` is its per-subject work in a cohort run.

    from cmbdet.pipeline import load_detector
    from cmbdet.volume import load_volume
    detector = load_detector()                      # shipped weights, CPU or CUDA
    detections = detector.detect(load_volume("scan.nii.gz"))
    detections.xyz_mm, detections.score, detections.region

Batches (inputs, resume, worker processes, Ray) are `cmbdet.batch`; `DetectJob` plugs the detector
into it and keeps every candidate per subject, so that `rescore` can apply another threshold later
without the scans. Torch is imported only when a model is loaded (a rerun with nothing to do never
pays for it).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from cmbdet import __version__
from cmbdet.batch import Subject, SubjectRecord, sha256_file
from cmbdet.detections import Detections
from cmbdet.errors import InputError, notes_with_warnings
from cmbdet.outputs import (
    COUNT_COLUMNS,
    DETECTION_COLUMNS,
    count_row,
    draw_review,
    error_row,
    review_views,
    write_csv_atomic,
    write_label_map,
    write_markups,
)
from cmbdet.volume import SourceGrid, Volume, load_volume
from cmbdet.weights import SHIPPED_WEIGHTS_DIR, read_metadata

if TYPE_CHECKING:
    from cmbdet.proposer.infer import Proposer

#: Final-score threshold used when the weights do not carry one.
DEFAULT_THRESHOLD = 0.5
#: Stage-1 candidates per scan when the weights do not say.
DEFAULT_MAX_CANDIDATES = 60
#: Stage-1 likelihood below which a peak is not a detection (unless the final threshold is lower).
MIN_CANDIDATE_SCORE = 0.05
#: Stage-1 likelihood down to which candidates are kept per subject in a cohort run (for `rescore`).
KEPT_CANDIDATE_SCORE = 0.01


@dataclass
class Detector:
    """Stage 1 (+ stage 2 when ``reclassifier`` is set) + MARS regions, at one score threshold."""

    proposer: Proposer
    reclassifier: object | None = None
    threshold: float = DEFAULT_THRESHOLD
    #: Stage-1 candidates per scan that stage 2 reads (the stage-2 weights say how many their operating
    #: point was chosen with).
    max_candidates: int = DEFAULT_MAX_CANDIDATES

    def detect(self, volume: Volume) -> Detections:
        """Microbleeds in one scan, highest score first; positions in scanner RAS mm."""
        return select_detections(self.candidates(volume, min_stage1=MIN_CANDIDATE_SCORE), self.threshold)

    def candidates(self, volume: Volume, *, min_stage1: float = KEPT_CANDIDATE_SCORE) -> Detections:
        """Every candidate (up to ``max_candidates``) with its stage scores, final score and region,
        highest final score first: what `detect` chooses from. Candidates with a stage-1 likelihood
        below ``min_stage1`` (or below the threshold, if that is lower) are not kept."""
        from cmbdet.preprocess import prepare_working_image
        from cmbdet.proposer.infer import propose_candidates
        from cmbdet.regions import anchor_to_mni, assign_regions

        working = prepare_working_image(volume, self.proposer.spacing_mm)
        found = propose_candidates(working, self.proposer, max_candidates=self.max_candidates,
                                   min_score=min(min_stage1, self.threshold))
        if self.reclassifier is not None:
            from cmbdet.reclassifier.infer import reclassify

            found = reclassify(volume, found, self.reclassifier, working)
        return assign_regions(found.sorted_by_score(), anchor_to_mni(working.mask, working.affine))


def select_detections(candidates: Detections, threshold: float) -> Detections:
    """The detections among `Detector.candidates` at a final-score ``threshold``: score >= threshold
    and a stage-1 likelihood of at least `MIN_CANDIDATE_SCORE` (or the threshold, if lower), in
    score order. The same as `Detector.detect` at that threshold."""
    return candidates.subset(select_indices(candidates, threshold))


def select_indices(candidates: Detections, threshold: float) -> np.ndarray:
    """Indices into ``candidates`` of `select_detections`, in score order."""
    stage1 = candidates.stage_scores.get("stage1", candidates.score)
    keep = np.flatnonzero((stage1 >= min(MIN_CANDIDATE_SCORE, threshold)) & (candidates.score >= threshold))
    return keep[np.argsort(-candidates.score[keep], kind="stable")]


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
    from cmbdet.proposer.infer import load_proposer

    folder = _weights_folder(weights_dir)
    proposer = load_proposer(folder / "proposer.safetensors", device=device)
    reclassifier = None
    stored = proposer.metadata.get("threshold", DEFAULT_THRESHOLD)
    max_candidates = DEFAULT_MAX_CANDIDATES
    reclassifier_path = folder / "reclassifier.safetensors"
    if reclassify and reclassifier_path.exists():
        from cmbdet.reclassifier.infer import load_reclassifier

        reclassifier = load_reclassifier(reclassifier_path, device=device)
        stored = reclassifier.threshold
        max_candidates = int(reclassifier.metadata.get("max_candidates", DEFAULT_MAX_CANDIDATES))
    return Detector(proposer=proposer, reclassifier=reclassifier,
                    threshold=float(stored if threshold is None else threshold), max_candidates=max_candidates)


def _weights_folder(weights_dir: str | Path | None) -> Path:
    folder = Path(weights_dir) if weights_dir is not None else SHIPPED_WEIGHTS_DIR
    if folder.is_file():
        raise InputError(folder, "--weights takes the folder that holds proposer.safetensors and "
                                 f"reclassifier.safetensors, not a file (here: {folder.parent})")
    if not folder.is_dir():
        raise InputError(folder, "weights folder not found")
    return folder


# --- the detector's per-subject work in a cohort run (see cmbdet.batch) ------------------------


@dataclass
class DetectJob:
    """`cmbdet.batch.SubjectJob` for microbleeds: load a subject's scan, keep every candidate, write
    its label map, markups, review picture and candidates; its rows of ``detections.csv`` and
    ``counts.csv`` go into its record. The detector is loaded on the first subject (once per worker)."""

    weights_dir: str | Path | None = None
    reclassify: bool = True
    threshold: float | None = None
    echo: str | int = "auto"
    pictures: bool = True
    device: str | None = None
    _detector: Detector | None = field(default=None, repr=False, compare=False)
    _settings: dict | None = field(default=None, repr=False, compare=False)

    name: ClassVar[str] = "cmb"
    tables: ClassVar[dict[str, tuple[str, ...]]] = {"detections.csv": DETECTION_COLUMNS, "counts.csv": COUNT_COLUMNS}

    def __getstate__(self) -> dict:  # models are never pickled: each worker loads its own
        return {**self.__dict__, "_detector": None}

    def weight_files(self) -> list[Path]:
        folder = _weights_folder(self.weights_dir)
        files = [folder / "proposer.safetensors"]
        if not files[0].is_file():
            raise InputError(files[0], "weights file not found")
        if self.reclassify and (folder / "reclassifier.safetensors").is_file():
            files.append(folder / "reclassifier.safetensors")
        return files

    def resolved_threshold(self) -> float:
        """The final-score threshold: the given one, else the operating point stored with the weights."""
        if self.threshold is not None:
            return float(self.threshold)
        files = self.weight_files()
        return float(read_metadata(files[-1]).get("threshold", DEFAULT_THRESHOLD))

    def settings(self) -> dict:
        """What a run's results depend on (a rerun with other settings is refused): the weights'
        SHA-256, the threshold, the echo choice and the cmbdet version. Cheap: no model is loaded."""
        if self._settings is not None:
            return self._settings
        files = self.weight_files()
        self._settings = {
            "cmbdet_version": __version__,
            "weights": {f.name: sha256_file(f) for f in files},
            "stage2": len(files) > 1,
            "threshold": round(self.resolved_threshold(), 6),
            "echo": str(self.echo),
        }
        return self._settings

    def detector(self) -> Detector:
        if self._detector is None:
            self._detector = load_detector(self.weights_dir, reclassify=self.reclassify,
                                           threshold=self.resolved_threshold(), device=self.device)
        return self._detector

    def run(self, subject: Subject, outdir: Path) -> SubjectRecord:
        detector = self.detector()
        paths = subject.paths
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            volume = load_volume(paths[0] if len(paths) == 1 else list(paths), echo=self.echo)
            candidates = detector.candidates(volume)
            views = review_views(volume, candidates) if self.pictures else None
        notes = notes_with_warnings([*volume.notes, *candidates.notes], caught, sources=[volume.path])
        message = "; ".join(notes)
        files = write_candidates(volume, candidates, outdir, subject.subject,
                                 min_stage1=min(KEPT_CANDIDATE_SCORE, detector.threshold), views=views)
        chosen = select_indices(candidates, detector.threshold)
        detections = candidates.subset(chosen)
        files.update(write_subject_outputs(volume, detections, outdir, subject.subject,
                                           views=None if views is None else views[chosen]))
        return SubjectRecord(
            subject=subject.subject, inputs=[str(p) for p in paths], input_sha256=None,
            settings_id=self.settings_id(), status="ok", message=message,
            counts=count_row(subject.subject, detections, message=message, input_path=subject.input_label),
            rows=detections.to_rows(subject.subject, volume), files=files)

    def settings_id(self) -> str:
        from cmbdet.batch import settings_id

        return settings_id(self.settings())

    def error_record(self, subject: Subject, message: str) -> SubjectRecord:
        return SubjectRecord(subject=subject.subject, inputs=[str(p) for p in subject.paths], input_sha256=None,
                             settings_id=self.settings_id(), status="error", message=message,
                             counts=error_row(subject.subject, message, subject.input_label))


def subject_files(subject: str) -> dict[str, str]:
    """The per-subject files of a microbleed run, relative to OUTDIR."""
    return {
        "label_map": f"{subject}/{subject}_desc-cmb_dseg.nii.gz",
        "markups": f"{subject}/{subject}_cmb.mrk.json",
        "review": f"{subject}/{subject}_review.png",
        "candidates": f"{subject}/{subject}_candidates.npz",
        "candidates_csv": f"{subject}/{subject}_candidates.csv",
    }


def write_subject_outputs(volume: Volume, detections: Detections, outdir: Path, subject: str, *,
                          views: np.ndarray | None = None) -> dict[str, str]:
    """Label map (in the input's grid), markups and, given the detections' ``views`` (of
    `cmbdet.outputs.review_views`), the review picture of a subject; returns what was written,
    relative to OUTDIR."""
    names = subject_files(subject)
    write_label_map(volume, detections, outdir / names["label_map"])
    write_markups(detections, subject, outdir / names["markups"])
    written = {k: names[k] for k in ("label_map", "markups")}
    if views is not None:
        draw_review(views, detections, subject, outdir / names["review"])
        written["review"] = names["review"]
    return written


def write_candidates(volume: Volume, candidates: Detections, outdir: Path, subject: str, *,
                     min_stage1: float, views: np.ndarray | None = None) -> dict[str, str]:
    """Every candidate of a subject with its scores (``_candidates.csv``, the ``detections.csv``
    columns) and, for `rescore`, the same arrays plus the input's grid and the candidates' review
    ``views`` (``_candidates.npz``; views as float16 scaled per candidate, enough for a picture)."""
    from cmbdet.atomic import atomic_path

    names = subject_files(subject)
    write_csv_atomic(outdir / names["candidates_csv"], candidates.to_rows(subject, volume), DETECTION_COLUMNS)
    arrays = {
        "xyz_mm": candidates.xyz_mm, "score": candidates.score, "diameter_mm": candidates.diameter_mm,
        "region": candidates.region.astype(str), "min_stage1": np.float64(min_stage1),
        "canonical_shape": np.asarray(volume.shape), "canonical_affine": volume.affine,
        "source_shape": np.asarray(volume.source.shape), "source_affine": volume.source.affine,
        "source_ornt": volume.source.ornt,
        **{f"stage_{k}": v for k, v in candidates.stage_scores.items()},
    }
    if views is not None:
        scale = np.abs(views).reshape(len(views), -1).max(axis=1, initial=0.0) if len(views) else np.zeros(0)
        scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
        arrays.update(views=(views / scale[:, None, None, None]).astype(np.float16), views_scale=scale)
    with atomic_path(outdir / names["candidates"]) as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(handle, **arrays)
    return {k: names[k] for k in ("candidates", "candidates_csv")}


def read_candidates(path: str | Path) -> tuple[Detections, Volume, float, np.ndarray | None]:
    """(candidates, a data-less `Volume` on the input's grid, the stage-1 floor they were kept down to,
    their review views or None) from a ``_candidates.npz``. The volume's voxels are all 0 (no scan is
    read): enough to write label maps and table rows in the input's grid."""
    with np.load(path, allow_pickle=False) as saved:
        stages = {k[len("stage_"):]: saved[k] for k in saved.files if k.startswith("stage_")}
        candidates = Detections(saved["xyz_mm"], saved["score"], saved["diameter_mm"],
                                region=saved["region"].astype(object), stage_scores=stages)
        shape = tuple(int(v) for v in saved["canonical_shape"])
        grid = SourceGrid(shape=tuple(int(v) for v in saved["source_shape"]), affine=saved["source_affine"],
                          ornt=saved["source_ornt"])
        volume = Volume(data=np.broadcast_to(np.float32(0), shape), affine=saved["canonical_affine"], source=grid)
        views = None
        if "views" in saved.files:
            views = saved["views"].astype(np.float32) * saved["views_scale"][:, None, None, None]
        return candidates, volume, float(saved["min_stage1"]), views


def rescore(outdir: str | Path, threshold: float, *, report: bool = True) -> list[SubjectRecord]:
    """Apply another final-score threshold to a finished ``cmbdet detect`` output folder, without the
    scans or the models: from each subject's kept candidates, rewrite its label map, markups, review
    picture and record, then ``detections.csv``, ``counts.csv``, ``run.json`` (and ``index.html``).
    Subjects that failed stay failed (a later ``detect`` with the new threshold retries them).
    Returns the records of the subjects rescored, by subject."""
    from cmbdet.atomic import remove_stale_temp_files, write_text_atomic
    from cmbdet.batch import _outdir_lock, _subject_summary, load_records, save_record, settings_id, write_tables

    outdir = Path(outdir)
    if not 0.0 <= threshold <= 1.0:
        raise InputError(None, f"--threshold must be in [0, 1], got {threshold:g}")
    try:
        run_info = json.loads((outdir / "run.json").read_text())
        settings = run_info["settings"]
    except (OSError, ValueError, KeyError):
        raise InputError(outdir, "not an output folder of cmbdet detect (no readable run.json with settings)") from None
    old_id = settings_id(settings)
    new_settings = dict(settings, threshold=round(float(threshold), 6))
    new_id = settings_id(new_settings)
    with _outdir_lock(outdir):
        remove_stale_temp_files(outdir)
        records = [r for r in load_records(outdir, DetectJob.name) if r.settings_id in (old_id, new_id)]
        kept = {}
        for record in records:
            if record.status == "ok":
                path = outdir / record.files.get("candidates", "")
                if not path.is_file():
                    raise InputError(path, "candidates file missing: rerun cmbdet detect for this subject")
                kept[record.subject] = read_candidates(path)
                if threshold < kept[record.subject][2]:
                    raise InputError(path, f"candidates were kept down to a stage-1 score of "
                                           f"{kept[record.subject][2]:g}; a lower threshold needs a new detect run")
        for record in records:
            record.settings_id = new_id
            if record.status == "ok":
                candidates, volume, _, views = kept[record.subject]
                chosen = select_indices(candidates, threshold)
                detections = candidates.subset(chosen)
                files = {k: v for k, v in record.files.items() if k in ("candidates", "candidates_csv")}
                if "review" in record.files and views is None:  # no views kept: no stale picture either
                    (outdir / record.files["review"]).unlink(missing_ok=True)
                files.update(write_subject_outputs(volume, detections, outdir, record.subject,
                                                   views=None if views is None else views[chosen]))
                record.files = files
                input_label = ";".join(record.inputs)
                record.counts = count_row(record.subject, detections, message=record.message, input_path=input_label)
                record.rows = detections.to_rows(record.subject, volume)
            else:
                record.counts = error_row(record.subject, record.message, ";".join(record.inputs))
            save_record(outdir, record, DetectJob.name)
        write_tables(outdir, DetectJob.tables, records)
        run_info.update(new_settings, settings=new_settings, settings_id=new_id,
                        rescored=f"threshold {settings.get('threshold')} -> {new_settings['threshold']}",
                        subjects=[_subject_summary(r) for r in records])
        write_text_atomic(outdir / "run.json", json.dumps(run_info, indent=1))
        if report:
            from cmbdet.report import write_report

            write_report(outdir, run_info, records)
    return records
