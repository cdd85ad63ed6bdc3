"""``cmbdet lesions``: plan the inputs (CT files one by one, MRI files grouped per subject), and run
the lesion localizer on each subject through the shared batch runner (`cmbdet.batch.run_batch`:
resume, worker processes, Ray, status rows), as ``cmbdet detect`` does.

Outputs in OUTDIR: ``lesions.csv`` (one row per lesion), ``counts.csv`` (one row per input unit,
``status`` ok/error), ``run.json``; per subject ``<subject>/<subject>_desc-hemorrhage_dseg.nii.gz``
(label map in the input's exact grid; MRI: the reference sequence's), its JSON sidecar, a review
PNG, ``<subject>_lesions-record.json`` (written last) and, with ``crops``, ``<subject>/crops/`` plus
``crops.csv``. One bad input never stops the others.

Reusable pieces (also for the crop classifier): `plan_inputs` (inputs -> `LesionUnit`s),
`localize_unit` (read + localize one unit, nothing written) and `write_lesion_outputs` (its files).

    from cmbdet.lesions.run import localize_unit, plan_inputs
    for unit in plan_inputs(["ct_folder/"]):
        lesions, reference, arrays, reference_name, notes = localize_unit(unit, ct_model=model, mri_model=None)
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from cmbdet import __version__
from cmbdet.atomic import write_text_atomic
from cmbdet.batch import Subject, SubjectRecord, sha256_file
from cmbdet.errors import InputError, notes_with_warnings
from cmbdet.lesions.result import LESION_COLUMNS, Lesions
from cmbdet.training_data import subject_from_filename
from cmbdet.volume import Volume, write_like_source

if TYPE_CHECKING:
    from cmbdet.lesions.infer import LesionModel

COUNT_COLUMNS = ("subject", "n_lesions", "total_volume_ml", "status", "message", "input")
CROP_COLUMNS = ("subject", "lesion_id", "sequence", "kind", "path")
MODALITIES = ("auto", "ct", "mri")


@dataclass
class LesionUnit:
    """One unit of work: a CT file or one subject's MRI files."""

    subject: str
    modality: str  # "ct" / "mri" / "" when undecided (error)
    files: dict[str, Path]
    error: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def input(self) -> str:
        return ";".join(str(p) for p in self.files.values())


def _is_label_map(path: Path) -> bool:
    """A segmentation stored beside the scans (BIDS ``_dseg``/``_probseg``/``_mask``, e.g. a phantom's truth or an
    earlier run's lesion map copied next to its scan), never a scan to localize lesions in."""
    name = path.name.lower().removesuffix(".gz").removesuffix(".nii")
    return name.endswith(("_dseg", "_probseg", "_mask"))


def plan_inputs(inputs: Sequence[str | Path], modality: str = "auto", *,
                exclude: Sequence[str | Path] = ()) -> list[LesionUnit]:
    """Files, folders, list files and manifest CSVs (read by column name as `cmbdet detect` reads them; a
    CT row keeps the manifest's subject id) -> units; ``auto`` decides CT or MRI per file from its values.
    Label maps stored beside the scans (``_dseg``, ``_probseg``, ``_mask``) found in a folder are skipped.
    Files found in a folder under an ``exclude`` folder (the output folder) are never inputs, nor, as for
    `cmbdet detect`, those of an earlier cmbdet output folder, those under a BIDS root's ``derivatives/``,
    ``sourcedata/`` ..., and ``part-phase``/``real``/``imag`` images (a warning says how many)."""
    from cmbdet.batch import (
        BIDS_NON_RAW,
        EARLIER_OUTPUT,
        NOT_MAGNITUDE_PARTS,
        _earlier_outputs,
        _is_bids_root,
        _is_nifti,
        _read_list,
        _read_manifest,
        _under,
        file_or_dangling_link,
    )
    from cmbdet.lesions.ct import guess_modality
    from cmbdet.lesions.mri import entities, group_mri_files, sequence_of

    if modality not in MODALITIES:
        raise InputError(None, f"unknown modality {modality!r} (choose auto, ct or mri)")
    excluded = [Path(e).resolve() for e in exclude]
    files: list[Path] = []
    folder_of: dict[Path, Path] = {}
    named: dict[Path, str] = {}  # a manifest's subject id of a file
    skipped: dict[str, int] = {}
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            outputs, bids_root = _earlier_outputs(path), _is_bids_root(path)
            found = []
            for p in sorted(path.rglob("*")):
                if not file_or_dangling_link(p) or not _is_nifti(p) or p.name.startswith(".") or _under(p, excluded):
                    continue
                top = p.relative_to(path).parts[0]
                why = (EARLIER_OUTPUT if _under(p, outputs) else f"under {top}/" if bids_root and top in BIDS_NON_RAW
                       else f"part-{entities(p)['part']}" if entities(p).get("part") in NOT_MAGNITUDE_PARTS
                       else "label maps (_dseg, _probseg, _mask)" if _is_label_map(p) else "")
                if why:
                    skipped[why] = skipped.get(why, 0) + 1
                else:
                    found.append(p)
            if not found:
                warnings.warn(f"{path}: folder holds no .nii/.nii.gz file", stacklevel=2)
            for p in found:
                folder_of[p] = p.parent if p.parent != path or "sub-" in path.name else path
            files.extend(found)
        elif path.is_file() and not _is_nifti(path) and path.suffix.lower() in (".csv", ".tsv"):
            for subject, _, file in _read_manifest(path):  # by column name, as `cmbdet detect` reads it
                files.append(file)
                named[file] = subject
        elif path.is_file() and not _is_nifti(path) and path.suffix.lower() in (".txt", ".lst", ".list"):
            files.extend(_read_list(path))
        else:
            files.append(path)
    units: list[LesionUnit] = []
    mri_files: list[Path] = []
    for path in files:
        chosen, why = modality, ""
        if modality == "auto":
            try:
                chosen, why = guess_modality(path)
            except InputError as err:
                if sequence_of(path) is None:
                    units.append(LesionUnit(named.get(path) or subject_from_filename(path), "", {"image": path},
                                            error=str(err)))
                    continue
                chosen = "mri"  # an unreadable sequence file stays with its subject, which fails naming it
        if chosen == "ct":
            units.append(LesionUnit(named.get(path) or subject_from_filename(path), "ct", {"ct": path},
                                    notes=[f"modality auto: {why}"] if why else ["modality: ct (given)"]))
        else:
            mri_files.append(path)
    # only files found in a folder input group by that folder (a subject folder)
    subject_folders = {p: f for p, f in folder_of.items() if p in mri_files and _is_subject_folder(f, folder_of)}
    for group in group_mri_files(mri_files, subject_folders):
        units.append(LesionUnit(group.subject, "mri", group.files,
                                error=f"{group.source}: {group.error}" if group.error else "",
                                notes=["modality auto: MRI (not a CT's HU range)"] if modality == "auto"
                                else ["modality: mri (given)"]))
    if skipped:
        warnings.warn(f"skipped {sum(skipped.values())} file(s): "
                      + ", ".join(f"{n} {why}" for why, n in skipped.items()), stacklevel=2)
    return units


def _is_subject_folder(folder: Path, folder_of: dict[Path, Path]) -> bool:
    from cmbdet.lesions.mri import entities

    members = [p for p, f in folder_of.items() if f == folder]
    return "sub-" in folder.name or all("sub" not in entities(p) for p in members)




# --- one unit: localize, then write -------------------------------------------------------------


def localize_unit(unit: LesionUnit, *, ct_model: LesionModel | None, mri_model: LesionModel | None = None,
                  classical: bool = False) -> tuple[Lesions, Volume, dict[str, np.ndarray], str, list[str]]:
    """Read one unit and localize its lesions; nothing is written.

    Returns (lesions on the reference's canonical grid, the reference `Volume` (CT: the scan; MRI: the
    reference sequence, see `cmbdet.lesions.mri`), every sequence as an (I, J, K) float32 array on
    that grid by name (CT: ``{"ct": HU}``), the reference's name, notes on how it was read (warnings
    raised while reading included)). ``classical`` (or an MRI unit without ``mri_model``) runs the
    classical peer; a CT unit needs ``ct_model`` otherwise. Raises `InputError` for a bad unit.
    """
    from cmbdet.lesions.ct import load_ct_volume
    from cmbdet.lesions.infer import classical_ct_lesions, localize_lesions
    from cmbdet.lesions.mri import classical_mri_lesions, load_sequence_set

    if unit.error:
        raise InputError(None, unit.error)
    notes = list(unit.notes)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if unit.modality == "ct":
            volume = load_ct_volume(unit.files["ct"])
            if not classical and ct_model is None:
                raise ValueError("localize_unit: a CT unit needs ct_model (or classical=True)")
            lesions = classical_ct_lesions(volume) if classical else localize_lesions(volume, ct_model)
            reference, arrays, reference_name = volume, {"ct": volume.data}, "ct"
            notes.extend(volume.notes)
        else:
            seqs = load_sequence_set(unit.files)
            if classical or mri_model is None:
                if not classical:
                    notes.append("no MRI lesion network available: the classical peer (dark on SWI/T2*) was used")
                lesions = classical_mri_lesions(seqs)
            else:
                lesions = localize_lesions(seqs, mri_model)
            reference, arrays, reference_name = seqs.reference, seqs.arrays, seqs.reference_name
            notes.extend(seqs.notes)
    notes.extend(lesions.notes)
    return lesions, reference, arrays, reference_name, notes_with_warnings(notes, caught, sources=[reference.path])


def subject_files(subject: str) -> dict[str, str]:
    """The per-subject files of a lesion run (crops aside), relative to OUTDIR."""
    return {
        "label_map": f"{subject}/{subject}_desc-hemorrhage_dseg.nii.gz",
        "sidecar": f"{subject}/{subject}_desc-hemorrhage_dseg.json",
        "review": f"{subject}/{subject}_lesions.png",
    }


def write_lesion_outputs(unit: LesionUnit, outdir: Path, lesions: Lesions, reference: Volume,
                         arrays: dict[str, np.ndarray], reference_name: str, notes: list[str], *,
                         pictures: bool = True, crops: bool = False, model_summary: dict | None = None
                         ) -> tuple[dict[str, str], list[dict]]:
    """Write one unit's label map (in the reference input's grid), JSON sidecar, review PNG (with
    ``pictures``) and per-lesion crops (with ``crops``; earlier crops of the subject are removed).

    ``model_summary``: the network's settings (`model_summary`), empty/None when the classical peer
    ran. Returns (the files written relative to OUTDIR, by name; the crops' ``crops.csv`` rows).
    """
    from cmbdet.lesions.review import write_lesion_crops, write_lesion_review

    outdir = Path(outdir)
    names = subject_files(unit.subject)
    write_like_source(reference, lesions.labels, outdir / names["label_map"])
    sidecar = {
        "cmbdet_version": __version__, "modality": unit.modality,
        "inputs": {name: str(path) for name, path in unit.files.items()},
        "reference": {"sequence": reference_name, "path": str(reference.path)},
        "read": notes,
        "method": "network" if model_summary else "classical",
        "model": model_summary or {},
        "n_lesions": len(lesions), "labels": "lesion n painted with value n (lesions.csv lesion_id)",
    }
    write_text_atomic(outdir / names["sidecar"], json.dumps(sidecar, indent=1))
    files = {k: names[k] for k in ("label_map", "sidecar")}
    if pictures:
        write_lesion_review(reference, lesions, unit.subject, outdir / names["review"], ct=unit.modality == "ct")
        files["review"] = names["review"]
    crop_rows: list[dict] = []
    if crops:
        folder = outdir / unit.subject / "crops"
        for stale in folder.glob(f"{unit.subject}_lesion-*.nii.gz"):
            stale.unlink()
        crop_rows = write_lesion_crops(arrays, reference, lesions, unit.subject, folder)
        for row in crop_rows:  # crops.csv, like the records, gives paths relative to OUTDIR
            row["path"] = Path(row["path"]).relative_to(outdir).as_posix()
            files[f"crop:{Path(row['path']).name}"] = row["path"]
    return files, crop_rows


def process_unit(unit: LesionUnit, outdir: Path, *, ct_model, mri_model=None, classical: bool = False,
                 pictures: bool = True, crops: bool = False) -> tuple[Lesions, list[dict], list[str]]:
    """`localize_unit` then `write_lesion_outputs`. Returns (lesions, crop rows, notes)."""
    lesions, reference, arrays, reference_name, notes = localize_unit(unit, ct_model=ct_model, mri_model=mri_model,
                                                                      classical=classical)
    used = None if classical else ct_model if unit.modality == "ct" else mri_model
    _, crop_rows = write_lesion_outputs(unit, Path(outdir), lesions, reference, arrays, reference_name, notes,
                                        pictures=pictures, crops=crops, model_summary=model_summary(used))
    return lesions, crop_rows, notes


def model_summary(model: LesionModel | None) -> dict:
    """What the sidecar says about the network ({} when none ran)."""
    if model is None:
        return {}
    summary = {"modality": model.modality, "threshold": model.threshold, "min_ml": model.min_ml,
               "group_mm": model.group_mm, "spacing_mm": model.spacing_mm, "steps": model.metadata.get("steps")}
    if model.modality == "ct":  # the CT steps after the network (`ct_lesions_from_probability`)
        summary.update(max_dense_fraction=model.max_dense_fraction, refine_hu=model.refine_hu,
                       refine_mm=model.refine_mm)
    return summary


# --- the batch: units as the runner's subjects, and the per-subject job -------------------------


@dataclass(frozen=True)
class LesionSubject(Subject):
    """A `LesionUnit` as a `cmbdet.batch.Subject`: ``paths`` are all the unit's files (hashed for
    resume), ``unit`` what to run."""

    unit: LesionUnit = field(default=None, compare=False)  # type: ignore[assignment]


def lesion_subjects(units: Sequence[LesionUnit]) -> list[LesionSubject]:
    """The units as the batch runner's subjects. Two units with one subject id are refused (an
    `InputError` naming both inputs) before any work starts, as ``cmbdet detect`` does."""
    from cmbdet.lesions.mri import sequence_of

    seen: dict[str, LesionUnit] = {}
    for unit in units:
        if unit.subject in seen:
            first = seen[unit.subject]
            sequences = [sequence_of(u.input) for u in (first, unit)]
            if first.modality == unit.modality == "ct" and all(sequences):
                raise InputError(None, f"{first.input} and {unit.input} are named as MRI sequences of one subject "
                                       f"({' and '.join(sequences)}), but --modality ct reads each file as a CT of "
                                       "its own; leave --modality out (auto) or give --modality mri")
            raise InputError(None, f"subject id {unit.subject!r} is given twice: {first.input} and "
                                   f"{unit.input}; give each scan a distinct file name (e.g. BIDS sub-/ses-), or "
                                   "one subject's MRI sequences in one folder")
        seen[unit.subject] = unit
    return [LesionSubject(unit.subject, tuple(unit.files.values()), unit) for unit in units]


@dataclass
class LesionsJob:
    """`cmbdet.batch.SubjectJob` for hemorrhagic lesions: localize a unit (`localize_unit`), write its
    files (`write_lesion_outputs`); its rows of ``lesions.csv``, ``counts.csv`` (and ``crops.csv``)
    go into its record. The networks are loaded on the first subject that needs them (once per
    worker) and never pickled.

    ``ct_weights``/``mri_weights``: weights files (None: the shipped ones; MRI without shipped
    weights runs the classical peer). ``modality``: the modality choice of `plan_inputs`.
    """

    ct_weights: str | Path | None = None
    mri_weights: str | Path | None = None
    modality: str = "auto"
    classical: bool = False
    pictures: bool = True
    crops: bool = False
    device: str | None = None
    _models: dict = field(default_factory=dict, repr=False, compare=False)
    _settings: dict | None = field(default=None, repr=False, compare=False)

    name: ClassVar[str] = "lesions"

    def __getstate__(self) -> dict:  # models are never pickled: each worker loads its own
        return {**self.__dict__, "_models": {}}

    @property
    def tables(self) -> dict[str, tuple[str, ...]]:
        crops = {"crops.csv": CROP_COLUMNS} if self.crops else {}
        return {"lesions.csv": LESION_COLUMNS, "counts.csv": COUNT_COLUMNS, **crops}

    def weight_files(self) -> dict[str, Path | None]:
        """``ct``/``mri`` -> the weights file a network of that modality runs with (None: no
        network; with ``classical`` both are None). A given file must be lesion weights of its
        modality (read from its header, no torch); a missing shipped CT file is None here and an
        error for each CT subject."""
        from cmbdet.lesions.infer import SHIPPED_CT
        from cmbdet.weights import SHIPPED_WEIGHTS_DIR, read_metadata

        if self.classical:
            return {"ct": None, "mri": None}
        out: dict[str, Path | None] = {}
        for modality, given, shipped in (("ct", self.ct_weights, SHIPPED_CT), ("mri", self.mri_weights,
                                                                               "lesions_mri.safetensors")):
            path = Path(given) if given else SHIPPED_WEIGHTS_DIR / shipped
            if not given and not path.is_file():
                out[modality] = None
                continue
            meta = read_metadata(path)
            if meta.get("kind") != "lesions" or str(meta.get("modality", "ct")) != modality:
                raise InputError(path, f"not {modality.upper()} lesion-model weights (kind {meta.get('kind')!r}, "
                                       f"modality {meta.get('modality')!r})")
            out[modality] = path
        return out

    def settings(self) -> dict:
        """What a run's results depend on (a rerun with other settings is refused): the weights'
        SHA-256, the modality choice, classical or not, crops or not and the cmbdet version.
        Cheap: no model is loaded."""
        if self._settings is None:
            self._settings = {
                "cmbdet_version": __version__,
                "command": "lesions",
                "weights": {k: None if f is None else sha256_file(f) for k, f in self.weight_files().items()},
                "modality": self.modality,
                "classical": bool(self.classical),
                "crops": bool(self.crops),
            }
        return self._settings

    def settings_id(self) -> str:
        from cmbdet.batch import settings_id

        return settings_id(self.settings())

    def model(self, modality: str) -> LesionModel | None:
        """The network for ``ct``/``mri`` units (None: the classical peer runs), loaded once."""
        if modality not in self._models:
            from cmbdet.lesions.infer import SHIPPED_CT, load_lesion_model
            from cmbdet.weights import shipped_weights

            path = self.weight_files().get(modality)
            if path is None and modality == "ct" and not self.classical:
                path = shipped_weights(SHIPPED_CT)  # raises: the shipped CT weights are missing
            self._models[modality] = None if path is None else load_lesion_model(path, device=self.device)
        return self._models[modality]

    def run(self, subject: Subject, outdir: Path) -> SubjectRecord:
        unit = _unit_of(subject)
        try:
            model = None if unit.error or self.classical else self.model(unit.modality)
            lesions, reference, arrays, reference_name, notes = localize_unit(
                unit, ct_model=model if unit.modality == "ct" else None,
                mri_model=model if unit.modality == "mri" else None, classical=self.classical)
        except InputError as err:
            if err.path is None and not unit.error:
                raise InputError(unit.input, err.problem) from None
            raise
        files, crop_rows = write_lesion_outputs(unit, outdir, lesions, reference, arrays, reference_name, notes,
                                                pictures=self.pictures, crops=self.crops,
                                                model_summary=model_summary(model))
        message = "; ".join(notes)
        counts = {"subject": unit.subject, "n_lesions": len(lesions),
                  "total_volume_ml": round(lesions.total_volume_ml, 3), "status": "ok", "message": message,
                  "input": unit.input}
        return SubjectRecord(subject=unit.subject, inputs=[str(p) for p in subject.paths], input_sha256=None,
                             settings_id=self.settings_id(), status="ok", message=message, counts=counts,
                             rows=lesions.to_rows(unit.subject), files=files,
                             extra_rows={"crops.csv": crop_rows} if self.crops else {})

    def error_record(self, subject: Subject, message: str) -> SubjectRecord:
        counts = {"subject": subject.subject, "n_lesions": "", "total_volume_ml": "", "status": "error",
                  "message": message, "input": subject.input_label}
        return SubjectRecord(subject=subject.subject, inputs=[str(p) for p in subject.paths], input_sha256=None,
                             settings_id=self.settings_id(), status="error", message=message, counts=counts)


def _unit_of(subject: Subject) -> LesionUnit:
    if not isinstance(subject, LesionSubject) or subject.unit is None:
        raise TypeError("LesionsJob runs LesionSubjects (see lesion_subjects), not plain Subjects")
    return subject.unit
