"""Labelled lesions for training and benchmarking the crop classifiers: phantom scans run through
the lesion localizer exactly as `cmbdet classify` runs them, each reported lesion matched to the
truth (`cmbdet.lesions.truth`) and labelled from ``truth.csv``.

* expansion: baseline CTs of a CT phantom set written with pairs (``*_ses-baseline_ct.nii.gz``);
  label = ``expands`` of the matched hematoma; the subject's label is that of its largest truth
  hematoma.
* hbm: MRI phantom subjects (BIDS-named sequences); label = 1 for ``hbm`` (metastasis), 0 for
  ``ich``; the subject's label is its kind (lesion-free subjects have none).

Reports that match no truth lesion carry label -1 (kept for end-to-end subject figures, never used
to fit). Per-subject results are cached as ``.npz`` under a cache folder, keyed by the scan's file
name and the localizer weights' SHA-256, so that a second training run does not redo them.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cmbdet.classify.features import CROP_PIXELS, FEATURES_VERSION, LesionFeatures, lesion_features
from cmbdet.lesions.truth import match_reports, read_truth_map

TASKS = ("hbm", "expansion")


@dataclass
class PhantomSubject:
    """One subject of a phantom set: its image files (sequence name -> path; CT: ``{"ct": path}``),
    truth label map, truth rows (``truth.csv``, by lesion id) and site/family."""

    subject: str
    files: dict[str, Path]
    truth_map: Path
    truth_rows: dict[int, dict]
    site: str


@dataclass
class SampleSet:
    """Lesions of many subjects, stacked: ``crops`` (N, 6, P, P), ``radiomics`` (N, F) with
    ``names``, ``present`` (N, 5), ``volume_ml`` (N,), ``n_lesions`` (N,), ``labels`` (N,) 1/0 (-1:
    no truth lesion), ``subjects`` (N,), ``sites`` (N,), ``lesion_ids`` (N,); per subject
    ``subject_labels`` (subject -> 1/0, absent when it has no truth lesion)."""

    crops: np.ndarray
    radiomics: np.ndarray
    names: tuple[str, ...]
    present: np.ndarray
    volume_ml: np.ndarray
    n_lesions: np.ndarray
    labels: np.ndarray
    subjects: np.ndarray
    sites: np.ndarray
    lesion_ids: np.ndarray
    subject_labels: dict[str, int] = field(default_factory=dict)
    subject_sites: dict[str, str] = field(default_factory=dict)
    #: (N, F) the radiomics of each lesion's perturbed re-acquisition (expansion training; NaN rows for
    #: lesions not re-measured), or None.
    perturbed_radiomics: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, keep: np.ndarray) -> SampleSet:
        keep = np.asarray(keep)
        subjects = set(self.subjects[keep].tolist())
        return SampleSet(self.crops[keep], self.radiomics[keep], self.names, self.present[keep],
                         self.volume_ml[keep], self.n_lesions[keep], self.labels[keep], self.subjects[keep],
                         self.sites[keep], self.lesion_ids[keep],
                         {s: v for s, v in self.subject_labels.items() if s in subjects},
                         {s: v for s, v in self.subject_sites.items() if s in subjects},
                         None if self.perturbed_radiomics is None else self.perturbed_radiomics[keep])

    def of_subjects(self, subjects) -> SampleSet:
        wanted = set(subjects)
        out = self.subset(np.array([s in wanted for s in self.subjects], bool))
        out.subject_labels.update({s: v for s, v in self.subject_labels.items() if s in wanted})
        out.subject_sites.update({s: v for s, v in self.subject_sites.items() if s in wanted})
        return out


def _read_truth_csv(folder: Path) -> dict[str, list[dict]]:
    path = folder / "truth.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no truth.csv (not a phantom set?)")
    rows: dict[str, list[dict]] = {}
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            rows.setdefault(row["subject"], []).append(row)
    return rows


def phantom_subjects(folder: str | Path, task: str) -> list[PhantomSubject]:
    """The subjects of a phantom set for ``task`` (see module docstring), sorted by name."""
    from cmbdet.lesions.mri import group_mri_files

    folder = Path(folder)
    truth = _read_truth_csv(folder)
    out = []
    if task == "expansion":
        for image in sorted(folder.glob("*_ses-baseline_ct.nii.gz")):
            subject = image.name.split("_ses-")[0]
            rows = [r for r in truth.get(subject, []) if r.get("session", "baseline") == "baseline" and r["lesion_id"]]
            out.append(PhantomSubject(subject, {"ct": image},
                                      image.with_name(image.name.replace("_ct.nii.gz", "_desc-truth_dseg.nii.gz")),
                                      {int(r["lesion_id"]): r for r in rows},
                                      (rows or truth.get(subject, [{}]))[0].get("family", "")))
    elif task == "hbm":
        files = [p for p in sorted(folder.glob("*.nii.gz")) if "desc-truth" not in p.name]
        for group in group_mri_files(files):
            name = group.subject.split("_ses-")[0]  # truth.csv names subjects without the session
            rows = [r for r in truth.get(name, []) if r.get("lesion_id")]
            first = next(iter(group.files.values()))
            stem = first.name.split("_ses-")[0] + "_ses-" + first.name.split("_ses-")[1].split("_")[0] \
                if "_ses-" in first.name else group.subject
            out.append(PhantomSubject(group.subject, dict(group.files), folder / f"{stem}_desc-truth_dseg.nii.gz",
                                      {int(r["lesion_id"]): r for r in rows},
                                      truth.get(name, [{}])[0].get("site", "")))
    else:
        raise ValueError(f"unknown task {task!r}")
    return out


def lesion_label(task: str, row: dict) -> int:
    """1/0 label of a truth row (expansion: expands; hbm: metastasis)."""
    if task == "expansion":
        return int(float(row["expands"]))
    return int(row["kind"] == "hbm")


def localize(subject: PhantomSubject, ct_model, mri_model):
    """(lesions, reference volume, arrays) of one subject, read and localized as `cmbdet classify`
    does (`cmbdet.lesions.run.localize_unit`)."""
    from cmbdet.lesions.run import LesionUnit, localize_unit

    unit = LesionUnit(subject.subject, "ct" if "ct" in subject.files else "mri", dict(subject.files))
    lesions, reference, arrays, _, _ = localize_unit(unit, ct_model=ct_model, mri_model=mri_model)
    return lesions, reference, arrays


#: One subject in this many (chosen by its name) is also measured on a re-acquisition for training: the
#: robustness filter's ICC needs a sample of lesions, not all of them, and mirp's morphology is slow.
REMEASURE_EVERY = 3


def _name_number(subject: str) -> int:
    return int.from_bytes(hashlib.sha256(subject.encode()).digest()[:8], "little")


def remeasured(subject: str) -> bool:
    """Whether training measures this subject's lesions on a re-acquisition too (`REMEASURE_EVERY`)."""
    return _name_number(subject) % REMEASURE_EVERY == 0


def subject_features(task: str, subject: PhantomSubject, *, ct_model=None, mri_model=None,
                     cache_dir: str | Path | None = None, cache_key: str = "", perturbed: bool = False) -> dict:
    """One subject's localized lesions as arrays (crops, radiomics, names, present, volume_ml,
    n_lesions, lesion_ids, xyz_mm; with ``perturbed`` (expansion) also perturbed_radiomics, measured on a
    re-acquisition drawn from a generator seeded by the subject's name for the `remeasured` subjects, NaN
    for the others), from the cache when present
    (features only: labels are read from the truth every time)."""
    cache = None
    if cache_dir is not None:
        files = sorted(p.name for p in subject.files.values())
        key = hashlib.sha256(f"{task}|{FEATURES_VERSION}|{perturbed}|{cache_key}|{files}".encode())
        cache = Path(cache_dir) / f"{subject.subject}_{key.hexdigest()[:12]}.npz"
        if cache.is_file():
            with np.load(cache, allow_pickle=False) as data:
                return {k: data[k] for k in data.files}
    lesions, reference, arrays = localize(subject, ct_model, mri_model)
    perturb = np.random.default_rng(_name_number(subject.subject)) \
        if perturbed and task == "expansion" and remeasured(subject.subject) else None
    feats: list[LesionFeatures] = lesion_features(task, reference, arrays, lesions, perturb=perturb)
    out = {
        "crops": np.stack([f.crop for f in feats]) if feats else np.zeros((0, 6, CROP_PIXELS, CROP_PIXELS), np.float32),
        "radiomics": np.stack([f.radiomics for f in feats]) if feats else np.zeros((0, 0)),
        "names": np.array(feats[0].names if feats else [], dtype=str),
        "present": np.stack([f.present for f in feats]) if feats else np.zeros((0, 5)),
        "volume_ml": np.array([f.volume_ml for f in feats]), "n_lesions": np.array([f.n_lesions for f in feats]),
        "lesion_ids": np.array([f.lesion_id for f in feats], int),
        "xyz_mm": lesions.xyz_mm[[f.lesion_id - 1 for f in feats]] if feats else np.zeros((0, 3)),
    }
    if perturbed and task == "expansion":
        out["perturbed_radiomics"] = np.stack([f.perturbed_radiomics for f in feats]) if perturb is not None and feats \
            else np.full(out["radiomics"].shape, np.nan)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(cache.name + ".tmp.npz")
        np.savez_compressed(tmp, **out)
        tmp.replace(cache)
    return out


def label_subject(task: str, subject: PhantomSubject, xyz_mm: np.ndarray) -> tuple[np.ndarray, int]:
    """(labels of the reported lesions (N,) 1/0, -1 when a report matches no truth lesion; the
    subject's label, -1 when it has no truth lesion)."""
    truth_labels, truth_affine, truth = read_truth_map(subject.truth_map)
    matched = match_reports(xyz_mm, truth_labels, truth_affine, truth)
    labels = []
    for index in range(len(xyz_mm)):
        t = matched.get(index)
        row = subject.truth_rows.get(truth[t].lesion_id) if t is not None else None
        labels.append(lesion_label(task, row) if row is not None else -1)
    subject_label = -1
    if subject.truth_rows:
        largest = max(subject.truth_rows.values(), key=lambda r: float(r.get("volume_ml") or 0))
        subject_label = lesion_label(task, largest)
    return np.array(labels, int), subject_label


def build_sample_set(task: str, folders: list[str | Path], *, ct_model=None, mri_model=None,
                     cache_dir: str | Path | None = None, progress=None, perturbed: bool = False) -> SampleSet:
    """Every subject of the phantom sets in ``folders`` through the localizer (see module docstring);
    ``perturbed``: expansion lesions are measured on a re-acquisition too (for training)."""
    model = ct_model if task == "expansion" else mri_model
    model_key = json.dumps(model.metadata, sort_keys=True, default=str) if model is not None else ""
    cache_key = hashlib.sha256(model_key.encode()).hexdigest() if model is not None else ""
    parts, subject_labels, subject_sites = [], {}, {}
    subjects = [s for folder in folders for s in phantom_subjects(folder, task)]
    for index, subject in enumerate(subjects, start=1):
        data = subject_features(task, subject, ct_model=ct_model, mri_model=mri_model, cache_dir=cache_dir,
                                cache_key=cache_key, perturbed=perturbed)
        data["labels"], subject_label = label_subject(task, subject, data["xyz_mm"])
        data["site"] = subject.site
        if subject_label >= 0:
            subject_labels[subject.subject] = subject_label
        subject_sites[subject.subject] = subject.site
        parts.append((subject.subject, data))
        if progress is not None:
            progress(index, len(subjects), subject.subject)
    names = next((tuple(d["names"].tolist()) for _, d in parts if len(d["names"])), ())
    nonempty = [(s, d) for s, d in parts if len(d["labels"])]
    if not nonempty:
        raise ValueError("no lesion was localized in these phantom sets")
    return SampleSet(
        crops=np.concatenate([d["crops"] for _, d in nonempty]).astype(np.float32),
        radiomics=np.concatenate([d["radiomics"] for _, d in nonempty]),
        names=names, present=np.concatenate([d["present"] for _, d in nonempty]),
        volume_ml=np.concatenate([d["volume_ml"] for _, d in nonempty]),
        n_lesions=np.concatenate([d["n_lesions"] for _, d in nonempty]),
        labels=np.concatenate([d["labels"] for _, d in nonempty]),
        subjects=np.concatenate([[s] * len(d["labels"]) for s, d in nonempty]),
        sites=np.concatenate([[str(d["site"])] * len(d["labels"]) for _, d in nonempty]),
        lesion_ids=np.concatenate([d["lesion_ids"] for _, d in nonempty]),
        subject_labels=subject_labels, subject_sites=subject_sites,
        perturbed_radiomics=np.concatenate([d["perturbed_radiomics"] for _, d in nonempty])
        if all("perturbed_radiomics" in d for _, d in nonempty) else None)


def describe_phantom_sets(folders: list[str | Path], samples: SampleSet) -> dict:
    """What a classifier was trained on, for its weights' metadata (folder names, families/sites,
    counts; never a path on the training machine)."""
    revisions: dict[str, set[str]] = {}
    for folder in folders:
        protocols = Path(folder) / "protocols.csv"
        if protocols.is_file():
            with open(protocols, newline="") as handle:
                for row in csv.DictReader(handle):
                    if row.get("family"):
                        revisions.setdefault(row["family"], set()).add(row.get("revision") or "1")
    return {"sources": [Path(f).name for f in folders],
            "sites": sorted(set(samples.subject_sites.values())),
            "family_revisions": {k: ",".join(sorted(v)) for k, v in sorted(revisions.items())},
            "n_subjects": len(samples.subject_sites), "n_lesions_localized": len(samples),
            "n_lesions_labelled": int((samples.labels >= 0).sum()),
            "n_positive": int((samples.labels == 1).sum())}
