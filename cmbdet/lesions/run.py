"""``cmbdet lesions``: plan the inputs (CT files one by one, MRI files grouped per subject), run the
lesion localizer on each, and write the outputs.

Outputs in OUTDIR: ``lesions.csv`` (one row per lesion), ``counts.csv`` (one row per input unit,
``status`` ok/error), ``run.json``; per subject ``<subject>/<subject>_desc-hemorrhage_dseg.nii.gz``
(label map in the input's exact grid; MRI: the reference sequence's), its JSON sidecar, a review
PNG and, with ``crops``, ``<subject>/crops/`` plus ``crops.csv``. Tables are rewritten atomically
after every subject; one bad input never stops the others.

The loop is deliberately thin over reusable pieces (`plan_inputs`, `process_unit`, the writers in
`cmbdet.outputs`/`cmbdet.atomic`) so that it can move onto the shared batch runner (resume,
executors) when that lands.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cmbdet import __version__
from cmbdet.atomic import write_text_atomic
from cmbdet.errors import InputError
from cmbdet.lesions.result import LESION_COLUMNS, Lesions
from cmbdet.outputs import write_csv_atomic
from cmbdet.training_data import subject_from_filename
from cmbdet.volume import write_like_source

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


@dataclass
class LesionResult:
    subject: str
    status: str
    message: str = ""
    n_lesions: int = 0
    total_volume_ml: float = 0.0
    seconds: float = 0.0
    modality: str = ""
    row: dict = field(default_factory=dict)


def plan_inputs(inputs: Sequence[str | Path], modality: str = "auto") -> list[LesionUnit]:
    """Files, folders and list files -> units; ``auto`` decides CT or MRI per file from its values."""
    from cmbdet.batch import _is_nifti, _read_list
    from cmbdet.lesions.ct import guess_modality
    from cmbdet.lesions.mri import group_mri_files

    if modality not in MODALITIES:
        raise InputError(None, f"unknown modality {modality!r} (choose auto, ct or mri)")
    files: list[Path] = []
    folder_of: dict[Path, Path] = {}
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and _is_nifti(p) and not p.name.startswith("."))
            if not found:
                warnings.warn(f"{path}: folder holds no .nii/.nii.gz file", stacklevel=2)
            for p in found:
                folder_of[p] = p.parent if p.parent != path or "sub-" in path.name else path
            files.extend(found)
        elif path.is_file() and not _is_nifti(path) and path.suffix.lower() in (".txt", ".lst", ".list", ".csv"):
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
                units.append(LesionUnit(subject_from_filename(path), "", {"image": path}, error=str(err)))
                continue
        if chosen == "ct":
            units.append(LesionUnit(subject_from_filename(path), "ct", {"ct": path},
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
    return units


def _is_subject_folder(folder: Path, folder_of: dict[Path, Path]) -> bool:
    from cmbdet.lesions.mri import entities

    members = [p for p, f in folder_of.items() if f == folder]
    return "sub-" in folder.name or all("sub" not in entities(p) for p in members)


def process_unit(unit: LesionUnit, outdir: Path, *, ct_model, mri_model=None, classical: bool = False,
                 pictures: bool = True, crops: bool = False) -> tuple[Lesions, list[dict], list[str]]:
    """Run one unit and write its per-subject files. Returns (lesions, crop rows, notes)."""
    from cmbdet.lesions.ct import load_ct_volume
    from cmbdet.lesions.infer import classical_ct_lesions, localize_lesions
    from cmbdet.lesions.mri import classical_mri_lesions, load_sequence_set
    from cmbdet.lesions.review import write_lesion_crops, write_lesion_review

    if unit.error:
        raise InputError(None, unit.error)
    notes = list(unit.notes)
    folder = outdir / unit.subject
    if unit.modality == "ct":
        volume = load_ct_volume(unit.files["ct"])
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
    label_path = folder / f"{unit.subject}_desc-hemorrhage_dseg.nii.gz"
    write_like_source(reference, lesions.labels, label_path)
    sidecar = {
        "cmbdet_version": __version__, "modality": unit.modality,
        "inputs": {name: str(path) for name, path in unit.files.items()},
        "reference": {"sequence": reference_name, "path": str(reference.path)},
        "read": notes,
        "method": "classical" if classical or (unit.modality == "mri" and mri_model is None) else "network",
        "model": _model_summary(ct_model if unit.modality == "ct" else mri_model),
        "n_lesions": len(lesions), "labels": "lesion n painted with value n (lesions.csv lesion_id)",
    }
    write_text_atomic(label_path.with_name(label_path.name.replace(".nii.gz", ".json")), json.dumps(sidecar, indent=1))
    if pictures:
        write_lesion_review(reference, lesions, unit.subject, folder / f"{unit.subject}_lesions.png",
                            ct=unit.modality == "ct")
    crop_rows = write_lesion_crops(arrays, reference, lesions, unit.subject, folder / "crops") if crops else []
    return lesions, crop_rows, notes


def _model_summary(model) -> dict:
    if model is None:
        return {}
    return {"modality": model.modality, "threshold": model.threshold, "min_ml": model.min_ml,
            "spacing_mm": model.spacing_mm, "steps": model.metadata.get("steps")}


def lesions_batch(units: Sequence[LesionUnit], outdir: str | Path, *, ct_model=None, mri_model=None,
                  classical: bool = False, pictures: bool = True, crops: bool = False,
                  progress: Callable[[int, int, LesionResult], None] | None = None) -> list[LesionResult]:
    """Run every unit; write the tables after each one (see module docstring)."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    lesion_rows: list[dict] = []
    count_rows: list[dict] = []
    crop_rows: list[dict] = []
    results: list[LesionResult] = []
    for index, unit in enumerate(_unique(units), start=1):
        started = time.perf_counter()
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                lesions, crops_written, notes = process_unit(unit, outdir, ct_model=ct_model, mri_model=mri_model,
                                                             classical=classical, pictures=pictures, crops=crops)
            message = "; ".join([*notes, *(str(w.message) for w in caught)])
            lesion_rows.extend(lesions.to_rows(unit.subject))
            crop_rows.extend(crops_written)
            row = {"subject": unit.subject, "n_lesions": len(lesions),
                   "total_volume_ml": round(lesions.total_volume_ml, 3), "status": "ok", "message": message,
                   "input": unit.input}
            result = LesionResult(unit.subject, "ok", message, len(lesions), lesions.total_volume_ml,
                                  time.perf_counter() - started, unit.modality, row)
        except InputError as err:
            message = str(err) if err.path is not None or unit.error or not unit.files else f"{unit.input}: {err}"
            row = {"subject": unit.subject, "n_lesions": "", "total_volume_ml": "", "status": "error",
                   "message": message, "input": unit.input}
            result = LesionResult(unit.subject, "error", message, seconds=time.perf_counter() - started,
                                  modality=unit.modality, row=row)
        except Exception as err:  # a bug or an unforeseen file: report it, go on with the others
            message = f"{unit.input}: unexpected {type(err).__name__}: {err}"
            row = {"subject": unit.subject, "n_lesions": "", "total_volume_ml": "", "status": "error",
                   "message": message, "input": unit.input}
            result = LesionResult(unit.subject, "error", message, seconds=time.perf_counter() - started,
                                  modality=unit.modality, row=row)
        count_rows.append(row)
        results.append(result)
        write_csv_atomic(outdir / "lesions.csv", lesion_rows, LESION_COLUMNS)
        write_csv_atomic(outdir / "counts.csv", count_rows, COUNT_COLUMNS)
        if crops:
            write_csv_atomic(outdir / "crops.csv", crop_rows, CROP_COLUMNS)
        if progress is not None:
            progress(index, len(units), result)
    record = {"cmbdet_version": __version__, "command": "lesions", "classical": classical,
              "ct_model": _model_summary(ct_model), "mri_model": _model_summary(mri_model),
              "subjects": [{"subject": r.subject, "modality": r.modality, "status": r.status,
                            "n_lesions": r.n_lesions, "total_volume_ml": round(r.total_volume_ml, 3),
                            "seconds": round(r.seconds, 2), "message": r.message} for r in results]}
    write_text_atomic(outdir / "run.json", json.dumps(record, indent=1))
    return results


def _unique(units: Sequence[LesionUnit]) -> list[LesionUnit]:
    seen: dict[str, int] = {}
    for unit in units:
        seen[unit.subject] = seen.get(unit.subject, 0) + 1
        if seen[unit.subject] > 1:
            warnings.warn(f"{unit.input}: subject id {unit.subject!r} repeats in this batch; written as "
                          f"{unit.subject}-{seen[unit.subject]}", stacklevel=3)
            unit.subject = f"{unit.subject}-{seen[unit.subject]}"
    return list(units)
