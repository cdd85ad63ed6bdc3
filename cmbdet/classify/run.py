"""``cmbdet classify``: localize each input's lesions (or reuse an earlier ``cmbdet lesions`` run)
and classify every lesion, through the shared batch runner (resume, workers, status rows).

Outputs in OUTDIR:
* ``classification.csv``: ``subject, lesion_id, task, probability, label, threshold, model`` per
  lesion, plus one subject row (``lesion_id`` empty): for ``hbm`` the most suspicious lesion, for
  ``expansion`` the largest hematoma (``label`` ``no_lesion`` when none was found);
* ``counts.csv``: one status row per input (``subject, task, n_lesions, label, probability,
  status, message, input``);
* ``classification_compare.csv`` with ``--compare`` (expansion): each lesion's probability under
  the deep-only, radiomics-only and fused models stored in the weights;
* per subject: the lesion label map, sidecar and review picture of `cmbdet.lesions.run` (so that
  ``lesion_id`` can be looked up; not rewritten when ``--lesions`` is given) and with ``--cam``
  ``cam/<subject>_lesion-<n>_cam.png``: a class-activation map (Grad-CAM of the network part) over
  the crop the model read.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar

import numpy as np

from cmbdet import __version__
from cmbdet.batch import Subject, SubjectRecord, record_path, sha256_file
from cmbdet.classify.model import EXPANSION_MODELS, LABELS, SHIPPED, ClassifierModel
from cmbdet.errors import InputError, notes_with_warnings
from cmbdet.lesions.result import Lesions
from cmbdet.lesions.run import LesionsJob, LesionUnit, _unit_of, localize_unit, write_lesion_outputs
from cmbdet.lesions.run import model_summary as lesion_model_summary
from cmbdet.volume import Volume

CLASSIFICATION_COLUMNS = ("subject", "lesion_id", "task", "probability", "label", "threshold", "model")
COUNT_COLUMNS = ("subject", "task", "n_lesions", "label", "probability", "status", "message", "input")
COMPARE_COLUMNS = ("subject", "lesion_id", "task", "model", "probability")
#: The modality each task reads.
TASK_MODALITY = {"hbm": "mri", "expansion": "ct"}


@dataclass
class ClassifyJob:
    """`cmbdet.batch.SubjectJob` for the crop classifiers (see module docstring).

    ``weights``: classifier weights (None: the shipped ones for ``task``); ``localizer``: the
    `LesionsJob` whose networks and writers localize the lesions; ``lesions_dir``: reuse the label
    maps of an earlier ``cmbdet lesions`` run instead.
    """

    task: str
    weights: str | Path | None = None
    localizer: LesionsJob = field(default_factory=LesionsJob)
    lesions_dir: str | Path | None = None
    cam: bool = False
    compare: bool = False
    device: str | None = None
    _model: ClassifierModel | None = field(default=None, repr=False, compare=False)
    _settings: dict | None = field(default=None, repr=False, compare=False)

    name: ClassVar[str] = "classify"

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_model": None}

    @property
    def tables(self) -> dict[str, tuple[str, ...]]:
        extra = {"classification_compare.csv": COMPARE_COLUMNS} if self.compare else {}
        return {"classification.csv": CLASSIFICATION_COLUMNS, "counts.csv": COUNT_COLUMNS, **extra}

    def weight_file(self) -> Path:
        from cmbdet.weights import SHIPPED_WEIGHTS_DIR, read_metadata

        if self.task not in SHIPPED:
            raise InputError(None, f"unknown task {self.task!r} (choose hbm or expansion)")
        path = Path(self.weights) if self.weights else SHIPPED_WEIGHTS_DIR / SHIPPED[self.task]
        if not path.is_file():
            raise InputError(path, "classifier weights file not found")
        meta = read_metadata(path)
        if meta.get("kind") != "classifier" or meta.get("task") != self.task:
            raise InputError(path, f"not {self.task} classifier weights (kind {meta.get('kind')!r}, "
                                   f"task {meta.get('task')!r})")
        return path

    def settings(self) -> dict:
        """What the results depend on: classifier weights, the localizer's settings (or the reused
        lesions folder), CAMs and comparison outputs, the cmbdet version."""
        if self._settings is None:
            self._settings = {
                "cmbdet_version": __version__, "command": "classify", "task": self.task,
                "weights": sha256_file(self.weight_file()),
                "lesions": str(Path(self.lesions_dir).resolve()) if self.lesions_dir else self.localizer.settings(),
                "cam": bool(self.cam), "compare": bool(self.compare),
            }
        return self._settings

    def settings_id(self) -> str:
        from cmbdet.batch import settings_id

        return settings_id(self.settings())

    def model(self) -> ClassifierModel:
        if self._model is None:
            from cmbdet.classify.model import load_classifier

            self._model = load_classifier(self.task, self.weight_file(), device=self.device)
        return self._model

    def run(self, subject: Subject, outdir: Path) -> SubjectRecord:
        from cmbdet.classify.features import lesion_features

        unit = _unit_of(subject)
        if unit.error:
            raise InputError(None, unit.error)
        wanted = TASK_MODALITY[self.task]
        if unit.modality != wanted:
            raise InputError(unit.input, f"the {self.task} classifier reads {wanted.upper()} and this input is "
                                         f"{unit.modality.upper()} (give --modality if the guess is wrong)")
        files: dict[str, str] = {}
        if self.lesions_dir:
            lesions, reference, arrays, notes = reuse_lesions(unit, Path(self.lesions_dir))
        else:
            localizer = self.localizer.model(unit.modality)
            lesions, reference, arrays, reference_name, notes = localize_unit(
                unit, ct_model=localizer if unit.modality == "ct" else None,
                mri_model=localizer if unit.modality == "mri" else None)
            files, _ = write_lesion_outputs(unit, outdir, lesions, reference, arrays, reference_name, notes,
                                            pictures=self.localizer.pictures,
                                            model_summary=lesion_model_summary(localizer))
        model = self.model()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            features = lesion_features(self.task, reference, arrays, lesions)
            scores = model.scores(features)
        notes = notes_with_warnings(notes, caught)
        if self.task == "hbm" and not {"T2w", "FLAIR"} & set(unit.files):
            notes.append(HBM_WITHOUT_T2_NOTE)
        probability = scores["fused"]
        rows = [self._row(unit.subject, f.lesion_id, p, model) for f, p in zip(features, probability, strict=True)]
        chosen = self._subject_choice(features, probability)
        subject_row = self._row(unit.subject, "", probability[chosen] if chosen is not None else None, model)
        rows.append(subject_row)
        if self.cam and features:
            from cmbdet.classify.cam import write_cams

            files.update(write_cams(model, features, unit.subject, outdir))
        extra = {}
        if self.compare:
            variants = EXPANSION_MODELS if self.task == "expansion" else ("fused",)
            extra["classification_compare.csv"] = [
                {"subject": unit.subject, "lesion_id": f.lesion_id, "task": self.task, "model": name,
                 "probability": round(float(scores[name][i]), 4)}
                for i, f in enumerate(features) for name in variants]
        message = "; ".join(notes)
        counts = {"subject": unit.subject, "task": self.task, "n_lesions": len(features),
                  "label": subject_row["label"], "probability": subject_row["probability"], "status": "ok",
                  "message": message, "input": unit.input}
        return SubjectRecord(subject=unit.subject, inputs=[str(p) for p in subject.paths], input_sha256=None,
                             settings_id=self.settings_id(), status="ok", message=message, counts=counts,
                             rows=rows, files=files, extra_rows=extra)

    def _subject_choice(self, features, probability: np.ndarray) -> int | None:
        """The lesion that speaks for the subject: hbm the most suspicious, expansion the largest."""
        if not features:
            return None
        if self.task == "hbm":
            return int(np.argmax(probability))
        return int(np.argmax([f.volume_ml for f in features]))

    def _row(self, subject: str, lesion_id, probability: float | None, model: ClassifierModel) -> dict:
        if probability is None:
            label, shown = "no_lesion", ""
        else:
            label, shown = LABELS[self.task][int(probability >= model.threshold)], round(float(probability), 4)
        return {"subject": subject, "lesion_id": lesion_id, "task": self.task, "probability": shown, "label": label,
                "threshold": round(model.threshold, 4), "model": model.name}

    def error_record(self, subject: Subject, message: str) -> SubjectRecord:
        counts = {"subject": subject.subject, "task": self.task, "n_lesions": "", "label": "", "probability": "",
                  "status": "error", "message": message, "input": subject.input_label}
        return SubjectRecord(subject=subject.subject, inputs=[str(p) for p in subject.paths], input_sha256=None,
                             settings_id=self.settings_id(), status="error", message=message, counts=counts)


#: hbm without T2w and FLAIR was measured below its target on the held-out site (weights/CLASSIFIERS.md,
#: "With some sequences missing": SWI alone 0.906, SWI + post-contrast T1 0.844 against 0.969 with all four).
HBM_WITHOUT_T2_NOTE = ("hbm without T2w or FLAIR: measured less accurate on a held-out site (hematomas called "
                       "metastasis more often; weights/CLASSIFIERS.md)")


def with_reused_label_maps(subjects: list[Subject], lesions_dir: str | Path) -> list[Subject]:
    """The subjects with the label map each reuses from ``lesions_dir`` among their paths, so that the batch
    runner's input hashes cover it: a subject whose label map changed since an earlier classify run is
    redone, not skipped."""
    from cmbdet.lesions.run import subject_files

    return [replace(s, paths=(*s.paths, Path(lesions_dir) / subject_files(s.subject)["label_map"])) for s in subjects]


def reuse_lesions(unit: LesionUnit, lesions_dir: Path) -> tuple[Lesions, Volume, dict[str, np.ndarray], list[str]]:
    """Read a unit's images and the label map an earlier ``cmbdet lesions`` run wrote for it
    (``<lesions_dir>/<subject>/<subject>_desc-hemorrhage_dseg.nii.gz``, in the reference's grid)."""
    from cmbdet.lesions.result import lesions_from_labels
    from cmbdet.lesions.run import subject_files
    from cmbdet.volume import read_label_map

    label_path = lesions_dir / subject_files(unit.subject)["label_map"]
    if not label_path.is_file():
        raise InputError(label_path, f"no label map of subject {unit.subject} in the --lesions folder "
                                     "(run `cmbdet lesions` on this input first)")
    record = record_path(lesions_dir, unit.subject, LesionsJob.name)
    if record.is_file():
        try:
            made_from = set(json.loads(record.read_text()).get("input_sha256") or ())
        except ValueError:
            made_from = set()
        if made_from and made_from != {sha256_file(p) for p in unit.files.values()}:
            raise InputError(label_path, f"the label map was made from other input files than {unit.input} "
                                         "(their SHA-256 differ; see its record): run `cmbdet lesions` on this input")
    reference, arrays, _, notes = _read_unit(unit)
    labels, label_affine = read_label_map(label_path)
    if labels.shape != tuple(reference.source.shape[:3]) or not np.allclose(label_affine, reference.source.affine,
                                                                               atol=1e-3):
        raise InputError(label_path, f"the label map is not on the grid of {reference.path} (another scan?)")
    sidecar = label_path.with_name(label_path.name.replace(".nii.gz", ".json"))
    if sidecar.is_file():
        try:
            used = json.loads(sidecar.read_text()).get("reference", {}).get("path")
        except ValueError:
            used = None
        if used and Path(used).name != Path(str(reference.path)).name:
            raise InputError(label_path, f"the label map was made from {used}, not from {reference.path}")
    notes = [*notes, f"lesions reused from {label_path}"]
    return lesions_from_labels(reference, reference.from_source_array(labels)), reference, arrays, notes


def _read_unit(unit: LesionUnit) -> tuple[Volume, dict[str, np.ndarray], str, list[str]]:
    """(reference volume, arrays on its grid, reference name, notes) of a unit, without localizing."""
    from cmbdet.lesions.ct import load_ct_volume
    from cmbdet.lesions.mri import load_sequence_set

    if unit.modality == "ct":
        volume = load_ct_volume(unit.files["ct"])
        return volume, {"ct": volume.data}, "ct", [*unit.notes, *volume.notes]
    seqs = load_sequence_set(unit.files)
    return seqs.reference, seqs.arrays, seqs.reference_name, [*unit.notes, *seqs.notes]
