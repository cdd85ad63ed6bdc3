"""Cohort runs: which scans, under which subject ids, which of them still need work, and who runs them.

The batch side of ``cmbdet detect`` (the Python API for one scan is `cmbdet.pipeline.Detector`):

* **inputs** — files, folders, text lists, manifest CSVs read by their column names, BIDS roots
  (SWI / T2*-weighted magnitude only) -> `Subject`s with unique ids; the per-echo files of one
  subject (BIDS ``_echo-N_``, dcm2niix ``_eN``) become one subject; two inputs with one id are
  refused before any work starts;
* **resume** — every subject's files end with a record (``<subject>/<subject>_<job>-record.json``,
  written last, atomically) holding the SHA-256 of its input and the run's settings; a rerun skips
  subjects whose record matches, redoes the rest, and rebuilds the tables from the records;
* **executors** — in this process, local worker processes (spawned, models loaded once per worker)
  or Ray tasks on a Ray cluster; all write the same files.

What a subject *is* lives in a job object (`SubjectJob`): the microbleed detector's job is
`cmbdet.pipeline.DetectJob`; another model can reuse everything here with a job of its own.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import importlib.util
import json
import os
import re
import shlex
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

from cmbdet.atomic import remove_stale_temp_files, write_text_atomic
from cmbdet.errors import InputError

#: BIDS suffixes of the images cmbdet runs on (magnitude only; ``part-phase`` etc. are skipped); ``MEGRE`` is
#: BIDS's multi-echo GRE (one file per echo, ``echo-N``).
BIDS_SCAN_SUFFIXES = ("swi", "T2starw", "GRE", "MEGRE", "T2star")
#: BIDS ``part-`` values that are not magnitude images.
NOT_MAGNITUDE_PARTS = ("phase", "real", "imag")
#: Top-level folders of a BIDS root that hold no raw scans.
BIDS_NON_RAW = ("derivatives", "sourcedata", "code", "stimuli")
#: BIDS entities that do not separate subjects: the echoes (and parts) of one acquisition.
ENTITIES_NOT_IN_ID = ("echo", "part")

_ENTITY = re.compile(r"([a-zA-Z]+)-([a-zA-Z0-9+]+)")
_DCM2NIIX_ECHO = re.compile(r"(.+)_e(\d+)")


# --- inputs -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Subject:
    """One unit of work: a subject id and its input file(s) (several: the echoes of one scan, in
    echo order)."""

    subject: str
    paths: tuple[Path, ...]

    @property
    def input_label(self) -> str:
        """The input file(s) as written in tables (``;``-separated)."""
        return ";".join(str(p) for p in self.paths)


@dataclass
class Inputs:
    """Subjects found in the inputs, and the files discovery left out (path, reason)."""

    subjects: list[Subject]
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    def skipped_summary(self) -> str:
        """One line: how many files were left out and why, e.g. ``3 T1w, 2 phase``; '' if none."""
        counts: dict[str, int] = {}
        for _, reason in self.skipped:
            counts[reason] = counts.get(reason, 0) + 1
        return ", ".join(f"{n} {reason}" for reason, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def parse_file_name(path: str | Path) -> tuple[str, int | None, dict[str, str], str | None]:
    """(subject id, echo number or None, BIDS entities, BIDS suffix or None) of a scan's file name.

    BIDS names (``sub-01_ses-2_acq-x_run-1_echo-2_part-mag_swi.nii.gz``): the id joins every entity
    but ``echo`` and ``part`` (``sub-01_ses-2_acq-x_run-1``). Other names: the name without
    ``.nii``/``.nii.gz`` and without a dcm2niix echo suffix (``scan_e2`` -> ``scan``, echo 2).
    """
    stem = _stem(Path(path).name)
    parts = stem.split("_")
    if _ENTITY.fullmatch(parts[0]) and parts[0].startswith("sub-"):
        entities = {}
        suffix = None
        for n, part in enumerate(parts):
            match = _ENTITY.fullmatch(part)
            if match:
                entities[match[1]] = match[2]
            elif n == len(parts) - 1:
                suffix = part
        subject = "_".join(f"{k}-{v}" for k, v in entities.items() if k not in ENTITIES_NOT_IN_ID)
        echo = int(entities["echo"]) if entities.get("echo", "").isdigit() else None
        return subject, echo, entities, suffix
    match = _DCM2NIIX_ECHO.fullmatch(stem)
    if match:
        return match[1], int(match[2]), {}, None
    return stem, None, {}, None


def subject_id(path: str | Path) -> str:
    """The subject id of a scan file (see `parse_file_name`)."""
    return parse_file_name(path)[0]


def collect_inputs(items: Sequence[str | Path], *, exclude: Sequence[str | Path] = ()) -> Inputs:
    """Files, folders, text lists and manifest CSVs -> `Inputs` (unique subject ids, in input order).

    * a ``.nii``/``.nii.gz`` file is taken as given (a missing one is kept, to be reported as that
      subject's error);
    * a BIDS root (``dataset_description.json`` or ``sub-*`` folders) gives its SWI / T2*w / GRE /
      T2star magnitude images, leaving out other suffixes, phase and ``derivatives/`` (in `skipped`);
    * any other folder is searched recursively for NIfTI files (BIDS-named files other than the
      scans above are skipped the same way);
    * a ``.csv``/``.tsv`` with a header is a manifest: columns ``subject`` (optional), ``image`` or
      ``path``, ``session`` (optional); a ``.txt``/``.lst``/``.list`` (or header-less CSV) lists one
      path per line (``#`` comments allowed). Relative paths are relative to the list's folder.

    Files under an ``exclude`` folder (the output folder) are never inputs. Raises `InputError`
    naming both files when two inputs get the same subject id and are not echoes of one scan.
    """
    excluded = [Path(e).resolve() for e in exclude]
    entries: list[tuple[str, int | None, Path]] = []
    skipped: list[tuple[Path, str]] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            if _is_bids_root(path):
                found, left_out = _discover_bids(path, excluded)
            else:
                found, left_out = _discover_folder(path, excluded)
            if not found and _holds_dicom(path, excluded):
                warnings.warn(f"{path}: folder holds DICOM files and no scan cmbdet can use: convert them first "
                              f"(cmbdet convert points {shlex.quote(str(path))} -o OUT; then cmbdet detect OUT)",
                              stacklevel=2)
            elif not found and left_out:
                warnings.warn(f"{path}: none of its {len(left_out)} NIfTI file(s) is taken as a susceptibility-"
                              "weighted magnitude scan by its name (see the skipped files); give a file itself "
                              "to run on it whatever its name", stacklevel=2)
            elif not found:
                bids = "; SWI/T2starw/GRE/MEGRE/T2star magnitude in a BIDS root" if _is_bids_root(path) else ""
                warnings.warn(f"{path}: folder holds no scan cmbdet can use (.nii/.nii.gz{bids})", stacklevel=2)
            entries.extend((*parse_file_name(p)[:2], p) for p in found)
            skipped.extend(left_out)
        elif path.is_file() and not _is_nifti(path) and path.suffix.lower() in (".csv", ".tsv"):
            entries.extend(_read_manifest(path))
        elif path.is_file() and not _is_nifti(path) and path.suffix.lower() in (".txt", ".lst", ".list"):
            entries.extend((*parse_file_name(p)[:2], p) for p in _read_list(path))
        else:
            entries.append((*parse_file_name(path)[:2], path))
    return Inputs(group_subjects(entries), skipped)


def group_subjects(entries: Iterable[tuple[str, int | None, Path]]) -> list[Subject]:
    """(subject id, echo number or None, path) -> `Subject`s in first-seen order; the files of one id
    that carry distinct echo numbers and sit in one folder are one subject (sorted by echo); files of one
    id with different BIDS suffixes (``_swi`` and ``_T2starw`` of one session) are subjects
    ``<id>_<suffix>``. Any other repeat of an id (same-named echo files in two folders included: two
    patients scanned with one protocol) is refused with an `InputError` naming both files."""
    by_id: dict[str, list[tuple[int | None, Path]]] = {}
    for subject, echo, path in entries:
        by_id.setdefault(subject, []).append((echo, path))
    for subject, files in list(by_id.items()):  # e.g. a session holding both _swi and _T2starw
        suffixes = {parse_file_name(path)[3] for _, path in files}
        if len(suffixes) > 1 and None not in suffixes:
            del by_id[subject]
            for echo, path in files:
                by_id.setdefault(f"{subject}_{parse_file_name(path)[3]}", []).append((echo, path))
            warnings.warn(f"{subject}: {' and '.join(sorted('_' + x for x in suffixes))} scans, each run as its own "
                          f"subject ({', '.join(sorted(f'{subject}_{x}' for x in suffixes))})", stacklevel=2)
    subjects = []
    for subject, files in by_id.items():
        seen: dict[int | None, Path] = {}
        for echo, path in files:
            clash = seen.get(echo) if echo is not None else next(iter(seen.values()), None)
            if clash is None and echo is not None and None in seen:
                clash = seen[None]
            elsewhere = ""
            if clash is None and seen:  # echoes are one scan only in one folder: two patients' same-named echo files
                first = next(iter(seen.values()))
                if Path(first).parent.resolve() != Path(path).parent.resolve():
                    clash, elsewhere = first, " (echo files in different folders are not one scan)"
            if clash is not None:
                same = Path(clash).resolve() == Path(path).resolve()
                raise InputError(None, f"subject id {subject!r} is given twice: {clash} and {path}"
                                       f"{' (the same file listed twice)' if same else elsewhere}; "
                                       "give each scan a distinct name, or list them in a manifest CSV with "
                                       "subject/session columns")
            seen[echo] = path
        subjects.append(Subject(subject, tuple(p for _, p in sorted(files, key=lambda f: f[0] or 0))))
    return subjects


def _stem(name: str) -> str:
    for ext in (".nii.gz", ".nii"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name


def _is_nifti(path: Path) -> bool:
    return path.name.lower().endswith((".nii", ".nii.gz"))


def file_or_dangling_link(path: Path) -> bool:
    """A regular file, or a link to nothing: kept among a folder's scans so that the run reports it as that
    subject's error instead of leaving it out unseen."""
    return path.is_file() or (path.is_symlink() and not path.exists())


def _is_bids_root(folder: Path) -> bool:
    return (folder / "dataset_description.json").is_file() or any(
        p.is_dir() and p.name.startswith("sub-") for p in folder.iterdir())


def _under(path: Path, folders: Sequence[Path]) -> bool:
    resolved = path.resolve()
    return any(resolved.is_relative_to(f) for f in folders)


def scan_filter(path: Path) -> str | None:
    """Why a found file is not a scan to run on (None: it is one)."""
    _, _, entities, suffix = parse_file_name(path)
    if entities:  # a BIDS name
        if entities.get("part") in NOT_MAGNITUDE_PARTS:
            return f"part-{entities['part']}"
        if suffix not in BIDS_SCAN_SUFFIXES:
            return f"_{suffix}" if suffix else "no BIDS suffix (contrast unknown)"
    elif _stem(path.name).endswith(("_ph", "_phase")):  # dcm2niix / common phase names
        return "phase"
    return None


def _earlier_outputs(folder: Path) -> list[Path]:
    """Folders under ``folder`` (itself included) that an earlier cmbdet run wrote: those holding a
    ``run.json`` that names ``cmbdet_version``. Their label maps are never scans."""
    found = []
    for path in folder.rglob("run.json"):
        try:
            if '"cmbdet_version"' in path.read_text(errors="replace")[:4096]:
                found.append(path.parent.resolve())
        except OSError:
            continue
    return found


EARLIER_OUTPUT = "in an earlier cmbdet output folder"


def _discover_folder(folder: Path, excluded: Sequence[Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    found, skipped = [], []
    outputs = _earlier_outputs(folder)
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder).parts
        if not file_or_dangling_link(path) or not _is_nifti(path) or any(p.startswith(".") for p in relative):
            continue
        if _under(path, excluded):
            continue
        if _under(path, outputs):
            skipped.append((path, EARLIER_OUTPUT))
            continue
        reason = scan_filter(path)
        (skipped.append((path, reason)) if reason else found.append(path))
    return found, skipped


def _holds_dicom(folder: Path, excluded: Sequence[Path]) -> bool:
    """Whether any file under ``folder`` (hidden and ``excluded`` folders left out) is DICOM."""
    from cmbdet.datasets.dicom import looks_like_dicom

    for parent, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".") and not _under(Path(parent) / d, excluded)]
        if any(looks_like_dicom(Path(parent) / name) for name in names if not name.startswith(".")):
            return True
    return False


def _discover_bids(root: Path, excluded: Sequence[Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    found, skipped = [], []
    outputs = _earlier_outputs(root)
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root).parts
        if not file_or_dangling_link(path) or not _is_nifti(path) or any(p.startswith(".") for p in relative):
            continue
        if _under(path, excluded):
            continue
        if _under(path, outputs):
            skipped.append((path, EARLIER_OUTPUT))
            continue
        if relative[0] in BIDS_NON_RAW:
            skipped.append((path, f"under {relative[0]}/"))
            continue
        reason = scan_filter(path) if path.name.startswith("sub-") else "not a BIDS scan name"
        (skipped.append((path, reason)) if reason else found.append(path))
    return found, skipped


def _read_list(path: Path) -> list[Path]:
    out = []
    for line in path.read_text().splitlines():
        line = line.strip().split(",")[0].strip()
        if not line or line.startswith("#"):
            continue
        item = Path(line)
        out.append(item if item.is_absolute() else path.parent / item)
    return out


def _read_manifest(path: Path) -> list[tuple[str, int | None, Path]]:
    """A manifest CSV/TSV read by column names (see `collect_inputs`)."""
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with open(path, newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.reader(handle, delimiter=delimiter))
    rows = [r for r in rows if any(c.strip() for c in r) and not r[0].lstrip().startswith("#")]
    if not rows:
        raise InputError(path, "manifest is empty")
    header = [c.strip().lower() for c in rows[0]]
    column = next((c for c in ("image", "path") if c in header), None)
    if column is None:
        if _is_nifti(Path(rows[0][0].strip())):  # a header-less list of paths
            return [(*parse_file_name(p)[:2], p) for p in _read_list(path)]
        raise InputError(path, f"a manifest needs a header with an 'image' (or 'path') column; found "
                               f"{', '.join(header) or 'none'}")
    index = {name: header.index(name) for name in ("subject", "session", column) if name in header}
    entries = []
    for number, row in enumerate(rows[1:], start=2):
        cells = [c.strip() for c in row] + [""] * len(header)
        image = cells[index[column]]
        if not image:
            raise InputError(path, f"line {number}: empty {column}")
        file = Path(image) if Path(image).is_absolute() else path.parent / image
        name_id, echo, _, _ = parse_file_name(file)
        subject = cells[index["subject"]] if "subject" in index else ""
        session = cells[index["session"]] if "session" in index else ""
        if subject:
            subject = scan_id(_clean_id(subject), _clean_id(session) if session else "")
        entries.append((subject or name_id, echo, file))
    return entries


def scan_id(subject: str, session: str = "") -> str:
    """The id of a manifest row's scan: ``subject``, or ``subject_session`` when there is a session
    (``sub-01`` + ``ses-2`` -> ``sub-01_ses-2``; a subject that already ends with it is kept)."""
    subject, session = subject.strip(), session.strip()
    if not session or subject.endswith(f"_{session}"):
        return subject
    return f"{subject}_{session}"


def _clean_id(value: str) -> str:
    """A subject/session value as a safe folder name (no path separators or spaces)."""
    cleaned = re.sub(r"[^A-Za-z0-9._+-]+", "-", value).strip("-")
    return cleaned if cleaned.strip(".") else "x"


def sha256_file(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


def input_hashes(subject: Subject) -> tuple[str, ...] | None:
    """SHA-256 of each input file, or None if one cannot be read (the subject then runs and fails)."""
    try:
        return tuple(sha256_file(p) for p in subject.paths)
    except OSError:
        return None


# --- jobs and records ---------------------------------------------------------------------------


@dataclass
class SubjectRecord:
    """What one subject's run produced; saved last, as ``<subject>/<subject>_<job>-record.json``.

    ``counts``: its ``counts.csv`` row. ``rows``: its rows of the per-finding table. ``extra_rows``:
    its rows of any further table of the job, by table name. ``files``: the files written (relative
    to OUTDIR). ``settings_id``: hash of the run settings it was made with.
    """

    subject: str
    inputs: list[str]
    input_sha256: list[str] | None
    settings_id: str
    status: str  # "ok" or "error"
    message: str = ""
    seconds: float = 0.0
    counts: dict = field(default_factory=dict)
    rows: list[dict] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    extra_rows: dict[str, list[dict]] = field(default_factory=dict)

    def complete_in(self, outdir: Path) -> bool:
        return all((outdir / f).is_file() for f in self.files.values())


class SubjectJob(Protocol):
    """The per-subject work of one model (see `cmbdet.pipeline.DetectJob`).

    The job must be picklable before its models are loaded (it travels to worker processes and Ray
    actors); `settings` must be cheap (it is called up front, also when nothing is left to do).
    """

    #: Short name used in file names (``<subject>_<name>-record.json``).
    name: str
    #: Table name -> its leading columns, e.g. ``{"detections.csv": (...), "counts.csv": (...)}``;
    #: the first table is filled from `SubjectRecord.rows`, the second from `SubjectRecord.counts`,
    #: any further one from `SubjectRecord.extra_rows` under its name.
    tables: dict[str, tuple[str, ...]]

    def settings(self) -> dict: ...

    def run(self, subject: Subject, outdir: Path) -> SubjectRecord: ...

    def error_record(self, subject: Subject, message: str) -> SubjectRecord: ...


def settings_id(settings: dict) -> str:
    """A short stable hash of JSON-able settings."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def record_path(outdir: Path, subject: str, job_name: str) -> Path:
    return outdir / subject / f"{subject}_{job_name}-record.json"


def save_record(outdir: Path, record: SubjectRecord, job_name: str) -> Path:
    """Write a subject's record atomically (its last file: a record means the subject is done)."""
    return write_text_atomic(record_path(outdir, record.subject, job_name), json.dumps(asdict(record), indent=1))


def load_records(outdir: Path, job_name: str) -> list[SubjectRecord]:
    """Every readable subject record in OUTDIR (any settings)."""
    records = []
    for path in sorted(outdir.glob(f"*/*_{job_name}-record.json")):
        try:
            record = SubjectRecord(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            continue  # unreadable: that subject is simply redone
        if path.parent.name == record.subject:
            records.append(record)
    return records


# --- a batch ------------------------------------------------------------------------------------


@dataclass
class BatchResult:
    """What `run_batch` did: the records of this run's subjects (in input order), how many were
    skipped as already done, and the temp files it cleaned up."""

    records: list[SubjectRecord]
    skipped_done: int = 0
    cleaned: list[Path] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)  # subject folders made with other settings

    @property
    def failed(self) -> list[SubjectRecord]:
        return [r for r in self.records if r.status != "ok"]


def run_batch(
    job: SubjectJob,
    subjects: Sequence[Subject],
    outdir: str | Path,
    *,
    workers: int = 1,
    ray_address: str | None = None,
    use_ray: bool = False,
    overwrite: bool = False,
    progress: Callable[[SubjectRecord, int, int], None] | None = None,
    report: Callable[[Path, dict, list[SubjectRecord]], object] | None = None,
    table_interval_s: float = 5.0,
) -> BatchResult:
    """Run ``job`` on every subject not already done in OUTDIR; one bad subject never stops the others.

    Up front: refuses (`InputError`) an OUTDIR made with other settings unless ``overwrite`` (which
    redoes this run's subjects; other subjects' folders are never deleted: those made with other
    settings are left out of the tables, with a warning), and removes temporary files a killed run
    left. Then skips subjects whose record matches this run's settings and input SHA-256, runs the
    others (in this process, ``workers`` local processes, or Ray tasks with ``use_ray``), and keeps
    the tables (the union of every subject done in OUTDIR with these settings, each once, sorted by
    subject) and ``run.json`` up to date: after every subject at most every ``table_interval_s``
    seconds, and at the end. ``progress(record, n_done, n_total)`` is called as subjects finish;
    ``report(outdir, run_info, records)`` at the end.
    """
    if use_ray and importlib.util.find_spec("ray") is None:  # before OUTDIR exists: nothing half-made
        raise InputError(None, RAY_MISSING)
    outdir = Path(outdir)
    _writable_output_folder(outdir)
    with _outdir_lock(outdir):
        cleaned = remove_stale_temp_files(outdir)
        settings = job.settings()
        sid = settings_id(settings)
        run_info = _check_run_settings(outdir, settings, overwrite)
        run_info.update(settings, settings=settings, settings_id=sid, status="running",
                        started=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        write_text_atomic(outdir / "run.json", json.dumps(run_info, indent=1))

        known = {r.subject: r for r in load_records(outdir, job.name)}
        current = {s.subject for s in subjects}
        # Records made with these settings count (also of subjects not in this run: the tables are the
        # union); with --overwrite the subjects of this run are redone all the same.
        done = {k: r for k, r in known.items() if r.settings_id == sid and not (overwrite and k in current)}
        # Subject folders made with other settings and not in this run are never deleted (not even with
        # --overwrite, which redoes this run's subjects only): kept on disk, left out of the tables.
        left_out = sorted(k for k, r in known.items() if r.settings_id != sid and k not in current)
        if left_out:
            warnings.warn(f"{outdir}: {len(left_out)} subject folder(s) made with other settings are left out of "
                          f"the tables (not in this run, so not redone; kept on disk): "
                          f"{', '.join(left_out[:5])}{' ...' if len(left_out) > 5 else ''}", stacklevel=2)

        todo: list[tuple[Subject, tuple[str, ...] | None]] = []
        skipped = 0
        for subject in subjects:
            hashes = input_hashes(subject)
            previous = done.get(subject.subject)
            if (previous is not None and previous.status == "ok" and hashes is not None
                    and previous.input_sha256 == list(hashes) and previous.complete_in(outdir)
                    and previous.inputs == [str(p) for p in subject.paths]):
                skipped += 1
                continue
            done.pop(subject.subject, None)
            if subject.subject in known:  # redone: the earlier run's files go (this run may not make them all)
                _remove_subject_files(outdir, [known[subject.subject]], job.name)
            todo.append((subject, hashes))

        tables = _TableWriter(outdir, job.tables, done, table_interval_s)
        total = len(subjects)
        finished = skipped
        this_run: dict[str, SubjectRecord] = {s.subject: done[s.subject] for s in subjects if s.subject in done}
        if todo or cleaned or not (outdir / next(iter(job.tables))).exists():
            tables.write(force=True)
        # closing: an exception here (SIGTERM, Ctrl-C) stops the executor's workers at once, not at garbage collection
        with contextlib.closing(_execute(job, todo, outdir, workers=workers, use_ray=use_ray,
                                         ray_address=ray_address)) as results:
            for record in results:
                finished += 1
                this_run[record.subject] = record
                tables.add(record)
                if progress is not None:
                    progress(record, finished, total)
        tables.write(force=True)
        records = [this_run[s.subject] for s in subjects if s.subject in this_run]
        run_info.update(status="finished", finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                        subjects=[_subject_summary(r) for r in sorted(tables.records.values(),
                                                                         key=lambda r: r.subject)])
        write_text_atomic(outdir / "run.json", json.dumps(run_info, indent=1))
        if report is not None:
            report(outdir, run_info, sorted(tables.records.values(), key=lambda r: r.subject))
    return BatchResult(records, skipped, cleaned, left_out)


def _subject_summary(record: SubjectRecord) -> dict:
    """A subject's entry in run.json: status, its counts (``n_cmb``, ``n_lesions``, ...), time, message."""
    counts = {k: v for k, v in record.counts.items() if k not in ("subject", "status", "message", "input")}
    return {"subject": record.subject, "input": ";".join(record.inputs), "status": record.status, **counts,
            "seconds": round(record.seconds, 2), "message": record.message}


def _check_run_settings(outdir: Path, settings: dict, overwrite: bool) -> dict:
    """The previous run.json's content (for the new one), after refusing other settings."""
    path = outdir / "run.json"
    if not path.exists():
        return {}
    try:
        previous = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    before = previous.get("settings")
    if before is None or before == settings or overwrite:
        return {}
    differences = [f"{key} {_short(before.get(key))} there, {_short(settings.get(key))} now"
                   for key in sorted(set(before) | set(settings)) if before.get(key) != settings.get(key)]
    raise InputError(outdir, f"holds a run with other settings ({'; '.join(differences)}); rerun with "
                             "--overwrite to redo it with these settings, or choose another output folder")


def _short(value) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_short(v)}" for k, v in value.items()) + "}"
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return f"sha256 {value[:12]}…"
    return json.dumps(value) if not isinstance(value, str) else value


def _remove_subject_files(outdir: Path, records: Sequence[SubjectRecord], job_name: str) -> None:
    for record in records:
        for name in record.files.values():
            (outdir / name).unlink(missing_ok=True)
        record_path(outdir, record.subject, job_name).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            (outdir / record.subject).rmdir()


def _writable_output_folder(outdir: Path) -> None:
    """Make OUTDIR and check that files can be written into it, before any work: a file in its place or a
    folder that cannot be written to is one `InputError` naming it, not an error on every subject later."""
    import tempfile

    from cmbdet.atomic import TEMP_MARKER

    if outdir.exists() and not outdir.is_dir():
        raise InputError(outdir, "is a file, not a folder: give -o a folder (it is made if missing)")
    try:
        outdir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=outdir, prefix=f".probe{TEMP_MARKER}"):
            pass
    except OSError as err:
        raise InputError(outdir, f"cannot write into this output folder ({err.strerror or err})") from None


@contextlib.contextmanager
def _outdir_lock(outdir: Path) -> Iterator[None]:
    """Refuse a second run writing into the same OUTDIR at the same time (a lock on the folder
    itself, released by the OS even after kill -9; POSIX only)."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock
        yield
        return
    fd = os.open(outdir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise InputError(outdir, "another cmbdet run is writing into this folder") from None
        yield
    finally:
        os.close(fd)


class _TableWriter:
    """Keeps the union of the records and rewrites the tables (atomically), at most every interval."""

    def __init__(self, outdir: Path, tables: dict[str, tuple[str, ...]], records: dict[str, SubjectRecord],
                 interval_s: float):
        self.outdir, self.tables, self.records, self.interval_s = outdir, tables, dict(records), interval_s
        self.last = 0.0

    def add(self, record: SubjectRecord) -> None:
        self.records[record.subject] = record
        self.write()

    def write(self, force: bool = False) -> None:
        if not force and time.monotonic() - self.last < self.interval_s:
            return
        write_tables(self.outdir, self.tables, self.records.values())
        self.last = time.monotonic()


def write_tables(outdir: Path, tables: dict[str, tuple[str, ...]], records: Iterable[SubjectRecord]) -> None:
    """The per-finding table (from ``rows``), the per-subject table (from ``counts``) and any further
    table (from ``extra_rows``), by subject."""
    from cmbdet.outputs import write_csv_atomic

    ordered = sorted(records, key=lambda r: r.subject)
    (rows_name, rows_columns), (counts_name, counts_columns), *further = list(tables.items())
    write_csv_atomic(outdir / rows_name, [row for r in ordered for row in r.rows], rows_columns)
    write_csv_atomic(outdir / counts_name, [r.counts for r in ordered], counts_columns)
    for name, columns in further:
        write_csv_atomic(outdir / name, [row for r in ordered for row in r.extra_rows.get(name, [])], columns)


# --- executors ----------------------------------------------------------------------------------


def run_subject(job: SubjectJob, subject: Subject, hashes: tuple[str, ...] | None, outdir: Path) -> SubjectRecord:
    """Run one subject and save its record; a failure becomes an error record, never an exception."""
    started = time.perf_counter()
    try:
        record = job.run(subject, outdir)
    except InputError as err:
        record = job.error_record(subject, str(err))
    except Exception as err:  # a bug or an unforeseen file: report it, go on with the others
        record = job.error_record(subject, f"{subject.input_label}: unexpected {type(err).__name__}: {err}")
    record.input_sha256 = None if hashes is None else list(hashes)
    record.seconds = time.perf_counter() - started
    save_record(outdir, record, job.name)
    return record


def _execute(job: SubjectJob, todo: list[tuple[Subject, tuple[str, ...] | None]], outdir: Path, *,
             workers: int, use_ray: bool, ray_address: str | None) -> Iterator[SubjectRecord]:
    if not todo:
        return
    if use_ray:
        yield from _execute_ray(job, todo, outdir, workers, ray_address)
    elif workers > 1 and len(todo) > 1:
        yield from _execute_local(job, todo, outdir, workers)
    else:
        for subject, hashes in todo:
            yield run_subject(job, subject, hashes, outdir)


_WORKER_JOB: SubjectJob | None = None
#: Linux prctl option: the signal a process gets when its parent dies.
_PR_SET_PDEATHSIG = 1


def _worker_init(job: SubjectJob, threads: int, parent: int | None = None) -> None:
    """Set up a worker process: its job, its torch threads, and its death with ``parent`` (the batch's
    process): a worker must never outlive the run that started it (after ``kill -9`` of that run it
    would go on writing into OUTDIR, outside the folder's lock, then hang)."""
    global _WORKER_JOB
    _WORKER_JOB = job
    if parent is not None:
        _die_with_parent(parent)
    if "OMP_NUM_THREADS" not in os.environ:
        with contextlib.suppress(ImportError):
            import torch

            torch.set_num_threads(threads)


def _die_with_parent(parent: int, poll_s: float = 0.2) -> None:
    """End this process as soon as process ``parent`` is gone: on Linux the kernel kills it at once
    (``prctl(PR_SET_PDEATHSIG, SIGKILL)``); everywhere a daemon thread checks every ``poll_s``
    seconds whether this process was handed to another parent, and exits it if so."""
    import signal
    import threading

    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os._exit(1)

    if os.getppid() != parent:  # the parent died before this worker got here
        os._exit(1)
    threading.Thread(target=watch, name="cmbdet-parent-watch", daemon=True).start()


def _worker_run(subject: Subject, hashes: tuple[str, ...] | None, outdir: Path) -> SubjectRecord:
    assert _WORKER_JOB is not None, "worker not initialised"
    return run_subject(_WORKER_JOB, subject, hashes, outdir)


class Terminated(SystemExit):
    """SIGTERM during a run with worker processes: the workers are stopped, then the process exits
    with 128 + SIGTERM (143), as it would have without the handler."""


@contextlib.contextmanager
def _sigterm_stops_the_run() -> Iterator[None]:
    """While inside: SIGTERM prints one line and raises `Terminated` in the main thread, so that the
    worker processes are stopped on the way out. Only where SIGTERM has its default action and in the
    main thread (an application's own handler is left alone); a second SIGTERM while stopping is ignored."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def on_sigterm(signum, frame) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("cmbdet: terminated (SIGTERM): stopping the worker processes; run the same command again to "
              "finish the remaining subjects", file=sys.stderr, flush=True)
        raise Terminated(128 + signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _stop_workers(pool) -> None:
    """Kill a process pool's workers now (its subjects are abandoned: a rerun redoes them) and shut it down
    without waiting for their subjects."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    for process in processes:
        with contextlib.suppress(Exception):
            process.kill()
    for process in processes:
        with contextlib.suppress(Exception):
            process.join(5)
    pool.shutdown(wait=False, cancel_futures=True)


def _execute_local(job: SubjectJob, todo, outdir: Path, workers: int) -> Iterator[SubjectRecord]:
    """Local worker processes. Spawned, not forked: forking after torch has run can deadlock. The workers
    die with this process (see `_worker_init`); when this generator ends early (an exception, SIGTERM,
    Ctrl-C, or closed by its caller) they are killed, not waited for."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    workers = min(workers, len(todo))
    threads = max(1, (os.cpu_count() or 1) // workers)
    context = multiprocessing.get_context("spawn")
    with _sigterm_stops_the_run():
        pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init,
                                   initargs=(job, threads, os.getpid()))
        finished = False
        try:
            futures = {pool.submit(_worker_run, subject, hashes, outdir): (subject, hashes)
                       for subject, hashes in todo}
            for future in as_completed(futures):
                subject, hashes = futures[future]
                try:
                    record = future.result()
                except Exception as err:  # the worker process died (e.g. out of memory)
                    record = job.error_record(subject, f"{subject.input_label}: worker process failed "
                                                       f"({type(err).__name__}: {err})")
                    record.input_sha256 = None if hashes is None else list(hashes)
                    save_record(outdir, record, job.name)
                yield record
            finished = True
        finally:
            if finished:
                pool.shutdown(wait=True)
            else:
                _stop_workers(pool)


RAY_MISSING = "--ray needs the optional dependency ray: pip install 'cmbdet[ray]'"


def _execute_ray(job: SubjectJob, todo, outdir: Path, workers: int, address: str | None) -> Iterator[SubjectRecord]:
    """Ray: one actor per worker slot (models loaded once per actor), subjects handed out as they
    finish. ``address``: a Ray cluster (``ray://host:10001`` or ``host:6379``); None: the cluster
    of ``RAY_ADDRESS``, else a local Ray instance. Inputs and OUTDIR must be on a filesystem every
    node sees at the same path."""
    try:
        import ray
    except ImportError:
        raise InputError(None, RAY_MISSING) from None
    started_here = not ray.is_initialized()
    if started_here:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
                 configure_logging=True)
    try:
        slots = workers if workers > 1 else max(1, int(ray.cluster_resources().get("CPU", 1)))
        actor_class = ray.remote(num_cpus=1)(_RayWorker)
        idle = [actor_class.remote(job) for _ in range(min(slots, len(todo)))]
        queue = list(todo)
        pending: dict = {}
        while queue or pending:
            while idle and queue:
                actor = idle.pop()
                subject, hashes = queue.pop(0)
                pending[actor.run.remote(subject, hashes, str(outdir))] = (actor, subject, hashes)
            ready, _ = ray.wait(list(pending), num_returns=1)
            actor, subject, hashes = pending.pop(ready[0])
            try:
                record = ray.get(ready[0])
            except Exception as err:  # the actor died: report its subject, start a fresh actor
                record = job.error_record(subject, f"{subject.input_label}: Ray task failed "
                                                   f"({type(err).__name__}: {str(err).splitlines()[0]})")
                record.input_sha256 = None if hashes is None else list(hashes)
                save_record(outdir, record, job.name)
                ray.kill(actor)
                actor = actor_class.remote(job)
            idle.append(actor)
            yield record
    finally:
        if started_here:
            ray.shutdown()


class _RayWorker:
    """A Ray actor holding one job (its models loaded on the first subject, kept for the rest)."""

    def __init__(self, job: SubjectJob):
        self.job = job

    def run(self, subject: Subject, hashes, outdir: str) -> SubjectRecord:
        return run_subject(self.job, subject, hashes, Path(outdir))


# --- progress -----------------------------------------------------------------------------------


def progress_printer(total: int, *, quiet: bool = False, stream=None,
                     describe: Callable[[SubjectRecord], str] | None = None,
                     noteworthy: Callable[[SubjectRecord], bool] | None = None,
                     ) -> tuple[Callable[[SubjectRecord, int, int], None], Callable[[], None]]:
    """(callback, close) reporting finished subjects on ``stream`` (stderr), each as ``describe`` says.

    On a terminal: a tqdm bar with rate and ETA, the ``noteworthy`` subjects (default: failures)
    printed above it. Otherwise (a log file, a cluster job): one plain line per subject with the ETA,
    no carriage returns. Nothing if ``quiet``.
    """
    stream = stream or sys.stderr
    describe = describe or (lambda r: "ok" if r.status == "ok" else f"ERROR: {r.message}")
    noteworthy = noteworthy or (lambda r: r.status != "ok")
    if quiet:
        return (lambda record, done, n: None), (lambda: None)
    started = time.monotonic()
    if stream.isatty():
        from tqdm import tqdm

        bar = tqdm(total=total, unit="scan", file=stream, dynamic_ncols=True, smoothing=0.1)

        def on_tty(record: SubjectRecord, done: int, n: int) -> None:
            if noteworthy(record):
                bar.write(f"{record.subject}: {describe(record)}", file=stream)
            bar.n = done
            bar.set_postfix_str(record.subject, refresh=False)
            bar.refresh()

        return on_tty, bar.close

    first_done: list[int] = []

    def on_line(record: SubjectRecord, done: int, n: int) -> None:
        if not first_done:
            first_done.append(done - 1)  # subjects skipped as done before this run's first result
        elapsed = time.monotonic() - started
        ran = done - first_done[0]
        eta = elapsed / ran * (n - done) if ran else 0.0
        print(f"[{done}/{n}] {record.subject}: {describe(record)} ({record.seconds:.1f} s; "
              f"ETA {_clock(eta)})", file=stream, flush=True)

    return on_line, lambda: None


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
