"""Score CMB detections against a reference (VALDO 2021 style).

Inputs
------
* ``truth.csv``: ``subject, x_mm, y_mm, z_mm, diameter_mm, region`` (centres in mm, scanner RAS).
  A CMB-free subject is listed with one row whose ``x_mm, y_mm, z_mm`` are empty (like ADNI's
  NOFINDINGS rows). ``diameter_mm`` may be empty or absent (then only the minimum distance applies).
  Other columns are ignored. The truth subjects are the subject universe.
* ``detections.csv`` (from ``cmbdet detect``): one row per detection with at least
  ``subject, x_mm, y_mm, z_mm, score``. If ``counts.csv`` sits beside it, it tells which subjects were
  processed: ``status == "error"`` subjects are reported as errors and score as if they had no
  detections (every lesion missed); truth subjects absent from it are reported as ``not_processed``.
  Detections of subjects that are not in the truth are ignored with a warning.

In memory (bench scripts), pass lists of dicts with the CSV column names straight to
:func:`evaluate`; values may be numbers or strings, ``None``/``""``/NaN mean empty::

    evaluate([{"subject": "s1", "x_mm": 1, "y_mm": 2, "z_mm": 3, "diameter_mm": 4}],
             [{"subject": "s1", "x_mm": 1, "y_mm": 2, "z_mm": 4, "score": 0.9}])

Scoring
-------
* A detection with ``score >= score_threshold`` is a true positive (TP) when its centre lies within
  (``<=``) the match distance of a not yet matched truth centre, Euclidean, in world mm. The match
  distance of a truth lesion is ``max(min_distance_mm, diameter_mm / 2 + margin_mm)``
  (default ``max(5 mm, radius + 2 mm)``).
* Matching is one-to-one and greedy, closest first: all (truth, detection) pairs within distance are
  sorted by distance (ties: higher detection score first, then file order) and taken when both ends
  are still free. Unmatched detections are false positives (FP), so extra detections on one lesion
  are FPs; unmatched truth lesions are false negatives (FN).
* Per subject: ``n_truth, n_detected, tp, fp, fn``, sensitivity ``tp/n_truth`` (NaN without truth),
  precision ``tp/n_detected`` (NaN without detections), F1 ``2tp/(2tp+fp+fn)`` (NaN when 0/0),
  ``count_error = |n_detected - n_truth|``.
* Pooled: TP, FP, FN summed over subjects; sensitivity, precision and F1 from the sums;
  ``fp_per_subject = FP / n_subjects``; ``mean_abs_count_error`` over subjects; ``quiet_rate`` =
  fraction of CMB-free subjects with zero detections (NaN if there are none).
* FROC (threshold-free, uses all detections whatever ``score_threshold``): for every distinct
  detection score t, matching is redone with the detections scoring ``>= t``, giving pooled
  sensitivity and FP/subject. ``sens_at_<L>fp`` is the highest sensitivity reached with
  FP/subject ``<= L`` (0 if no threshold gets there) for L in 1/8, 1/4, 1/2, 1, 2, 4, 8;
  ``froc_mean`` is their mean. All NaN when the truth has no lesion.
* Subject level (any CMB vs none): subject score = highest detection score (0 if none, all
  detections); ``subject_auc`` is the Mann-Whitney AUC (ties count 1/2; NaN with one class only).
  ``subject_balanced_accuracy`` = mean of subject sensitivity and specificity, predicted positive =
  at least one detection with ``score >= score_threshold`` (NaN with one class only).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from cmbdet.atomic import write_text_atomic
from cmbdet.errors import InputError

__all__ = [
    "FROC_LEVELS",
    "PER_SUBJECT_COLUMNS",
    "DetectionTable",
    "Evaluation",
    "TruthTable",
    "best_f1_threshold",
    "evaluate",
    "match_detections",
    "read_detections",
    "read_truth",
    "write_per_subject_csv",
]

#: FP/subject levels at which the FROC sensitivity is reported.
FROC_LEVELS: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)

#: Column order of :func:`write_per_subject_csv` (and keys of each ``Evaluation.per_subject`` dict).
PER_SUBJECT_COLUMNS: tuple[str, ...] = (
    "subject", "status", "n_truth", "n_detected", "tp", "fp", "fn",
    "sensitivity", "precision", "f1", "count_error", "max_score", "message",
)

_XYZ = ("x_mm", "y_mm", "z_mm")
_TRUTH_REQUIRED = ("subject", *_XYZ)
_DET_REQUIRED = ("subject", *_XYZ, "score")
_NAN = float("nan")
_EPS_MM = 1e-9


def froc_key(level: float) -> str:
    """Pooled-dict key of the FROC sensitivity at ``level`` FP/subject, e.g. ``'sens_at_0.125fp'``."""
    return f"sens_at_{level:g}fp"


# --------------------------------------------------------------------------------------- tables


@dataclass
class TruthTable:
    """Reference lesions, grouped by subject.

    ``subjects``: every subject in file order, CMB-free ones included.
    ``centres[s]``: (N, 3) float64, mm, scanner RAS (N = 0 for CMB-free subjects).
    ``diameters[s]``: (N,) float64, mm, NaN where unknown.
    """

    subjects: list[str]
    centres: dict[str, np.ndarray]
    diameters: dict[str, np.ndarray]
    source: str | None = None

    @classmethod
    def from_records(cls, records: Iterable[Mapping[str, Any]], *, source: str | Path | None = None,
                     ) -> TruthTable:
        """Build from dicts keyed like truth.csv columns (``subject, x_mm, y_mm, z_mm[, diameter_mm]``).

        A record whose three coordinates are all empty marks a subject without CMB.
        Raises :class:`InputError` (naming ``source`` and the line) on bad values.
        """
        subjects: list[str] = []
        xyz: dict[str, list[list[float]]] = {}
        diam: dict[str, list[float]] = {}
        for where, rec in _numbered(records):
            subject = _subject(rec, where, source)
            if subject not in xyz:
                subjects.append(subject)
                xyz[subject] = []
                diam[subject] = []
            point = _point(rec, where, source)
            if point is None:
                continue
            d = _number(rec.get("diameter_mm"), "diameter_mm", where, source)
            if not math.isnan(d) and d < 0:
                raise InputError(source, f"{where}: diameter_mm is negative ({d:g})")
            xyz[subject].append(point)
            diam[subject].append(d)
        return cls(
            subjects=subjects,
            centres={s: np.asarray(v, dtype=float).reshape(-1, 3) for s, v in xyz.items()},
            diameters={s: np.asarray(v, dtype=float).reshape(-1) for s, v in diam.items()},
            source=None if source is None else str(source),
        )

    @property
    def n_lesions(self) -> int:
        """Total number of reference lesions."""
        return sum(len(c) for c in self.centres.values())


@dataclass
class DetectionTable:
    """Detections, grouped by subject, plus processing status when known.

    ``centres[s]``: (M, 3) float64, mm, scanner RAS. ``scores[s]``: (M,) float64, 0-1.
    ``status``: subject -> ``"ok"``/``"error"``/... from counts.csv, or ``None`` when unknown
    (then every subject is assumed processed). ``messages``: subject -> counts.csv message.
    ``warnings``: problems found while reading (passed on to the :class:`Evaluation`).
    """

    centres: dict[str, np.ndarray]
    scores: dict[str, np.ndarray]
    status: dict[str, str] | None = None
    messages: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    source: str | None = None

    @classmethod
    def from_records(cls, records: Iterable[Mapping[str, Any]],
                     counts: Iterable[Mapping[str, Any]] | None = None, *,
                     source: str | Path | None = None, counts_source: str | Path | None = None,
                     ) -> DetectionTable:
        """Build from dicts keyed like detections.csv columns (``subject, x_mm, y_mm, z_mm, score``).

        ``counts``: optional dicts keyed like counts.csv (``subject[, status, message]``).
        Records whose three coordinates are all empty are skipped (a subject with no detection).
        """
        xyz: dict[str, list[list[float]]] = {}
        score: dict[str, list[float]] = {}
        out_of_range = 0
        for where, rec in _numbered(records):
            subject = _subject(rec, where, source)
            point = _point(rec, where, source)
            xyz.setdefault(subject, [])
            score.setdefault(subject, [])
            if point is None:
                continue
            s = _number(rec.get("score"), "score", where, source)
            if math.isnan(s):
                raise InputError(source, f"{where}: score is empty")
            out_of_range += not 0.0 <= s <= 1.0
            xyz[subject].append(point)
            score[subject].append(s)
        table = cls(
            centres={s: np.asarray(v, dtype=float).reshape(-1, 3) for s, v in xyz.items()},
            scores={s: np.asarray(v, dtype=float).reshape(-1) for s, v in score.items()},
            source=None if source is None else str(source),
        )
        if out_of_range:
            table.warnings.append(f"{source or 'detections'}: {out_of_range} score(s) outside 0-1")
        if counts is not None:
            table.status = {}
            for where, rec in _numbered(counts):
                subject = _subject(rec, where, counts_source)
                table.status[subject] = (str(rec.get("status") or "ok")).strip().lower() or "ok"
                table.messages[subject] = str(rec.get("message") or "").strip()
            missing = [s for s in table.centres if table.centres[s].size and s not in table.status]
            if missing:
                table.warnings.append(
                    f"{counts_source or 'counts'}: {len(missing)} subject(s) with detections are "
                    f"not listed: {_few(missing)}")
        return table


# ---------------------------------------------------------------------------------------- reading


def read_truth(path: str | Path) -> TruthTable:
    """Read truth.csv (see module docstring). Raises :class:`InputError` naming the file."""
    rows = _read_csv(path, _TRUTH_REQUIRED)
    table = TruthTable.from_records(rows, source=path)
    if not table.subjects:
        raise InputError(path, "no subjects (header only)")
    return table


def read_detections(path: str | Path,
                    counts: str | Path | None | Literal[False] = None) -> DetectionTable:
    """Read detections.csv, and counts.csv when available.

    ``counts``: path of counts.csv; ``None`` (default) uses ``counts.csv`` in the same folder if it
    exists; ``False`` ignores counts. A header-only detections file means no detections at all.
    Raises :class:`InputError` naming the file on a missing/unreadable file or bad values.
    """
    rows = _read_csv(path, _DET_REQUIRED)
    counts_path: Path | None
    if counts is False:
        counts_path = None
    elif counts is None:
        sibling = Path(path).with_name("counts.csv")
        counts_path = sibling if sibling.is_file() and sibling.resolve() != Path(path).resolve() else None
    else:
        counts_path = Path(counts)
    count_rows = None if counts_path is None else _read_csv(counts_path, ("subject",))
    return DetectionTable.from_records(rows, count_rows, source=path, counts_source=counts_path)


def _read_csv(path: str | Path, required: Sequence[str]) -> list[dict[str, str]]:
    """Rows of a CSV file as dicts (keys and values stripped), each with a ``_line`` entry."""
    p = Path(path)
    if p.is_dir():
        raise InputError(path, "is a folder, expected a CSV file")
    try:
        with p.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames
            if not header:
                raise InputError(path, f"empty file, expected a CSV header with {', '.join(required)}")
            header = [(h or "").strip() for h in header]
            reader.fieldnames = header
            missing = [c for c in required if c not in header]
            if missing:
                raise InputError(
                    path, f"missing required column(s) {', '.join(missing)} "
                          f"(found: {', '.join(h for h in header if h) or 'none'}); is it a CSV file?")
            rows = []
            for row in reader:
                clean = {k: (v.strip() if isinstance(v, str) else "") for k, v in row.items() if k}
                if not any(clean.values()):
                    continue  # blank line
                clean["_line"] = str(reader.line_num)
                rows.append(clean)
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except UnicodeDecodeError:
        raise InputError(path, "not a CSV text file (cannot decode as UTF-8)") from None
    except csv.Error as e:
        raise InputError(path, f"not a valid CSV file ({e})") from None
    except OSError as e:
        raise InputError(path, f"cannot read ({e.strerror or e})") from None
    return rows


def _numbered(records: Iterable[Mapping[str, Any]]) -> Iterable[tuple[str, Mapping[str, Any]]]:
    """(``"line N"`` for CSV rows / ``"record N"`` for in-memory dicts, record)."""
    for n, rec in enumerate(records, start=1):
        yield (f"line {rec['_line']}" if "_line" in rec else f"record {n}"), rec


def _subject(rec: Mapping[str, Any], where: str, source: str | Path | None) -> str:
    """The row's subject id; with a ``session`` column, ``SUBJECT_ses-SESSION`` (the id cmbdet gives a
    BIDS file ``sub-01_ses-2_...``), unless the subject already names its session."""
    value = rec.get("subject")
    subject = "" if value is None else str(value).strip()
    if not subject:
        raise InputError(source, f"{where}: subject is empty")
    session = str(rec.get("session") or "").strip()
    if session and "_ses-" not in subject:
        subject = f"{subject}_{session if session.startswith('ses-') else 'ses-' + session}"
    return subject


def _number(value: Any, column: str, where: str, source: str | Path | None) -> float:
    """Float of a cell; NaN for empty. Raises InputError for text and infinities."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return _NAN
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise InputError(source, f"{where}: {column} is not a number ({value!r})") from None
    if math.isinf(x):
        raise InputError(source, f"{where}: {column} is infinite")
    return x


def _point(rec: Mapping[str, Any], where: str, source: str | Path | None) -> list[float] | None:
    """[x, y, z] in mm, or None when all three are empty; error when only some are."""
    xyz = [_number(rec.get(c), c, where, source) for c in _XYZ]
    empty = [c for c, v in zip(_XYZ, xyz, strict=True) if math.isnan(v)]
    if len(empty) == 3:
        return None
    if empty:
        raise InputError(source, f"{where}: {', '.join(empty)} empty but not all coordinates are")
    return xyz


def _few(names: Sequence[str], n: int = 5) -> str:
    return ", ".join(names[:n]) + (f", ... ({len(names) - n} more)" if len(names) > n else "")


# --------------------------------------------------------------------------------------- matching


def _candidate_pairs(truth_xyz: np.ndarray, radius: np.ndarray, det_xyz: np.ndarray,
                     det_score: np.ndarray) -> list[tuple[int, int, float]]:
    """(truth index, detection index, detection score) of pairs within distance, in greedy order."""
    if len(truth_xyz) == 0 or len(det_xyz) == 0:
        return []
    dist = np.linalg.norm(truth_xyz[:, None, :] - det_xyz[None, :, :], axis=-1)  # (T, D) mm
    t_idx, d_idx = np.nonzero(dist <= radius[:, None] + _EPS_MM)
    if t_idx.size == 0:
        return []
    order = np.lexsort((t_idx, d_idx, -det_score[d_idx], dist[t_idx, d_idx]))
    return [(int(t_idx[o]), int(d_idx[o]), float(det_score[d_idx[o]])) for o in order]


def _greedy_tp(pairs: Sequence[tuple[int, int, float]], threshold: float) -> int:
    """Number of one-to-one matches taking ``pairs`` in order, detections with score >= threshold."""
    used_t: set[int] = set()
    used_d: set[int] = set()
    for t, d, s in pairs:
        if s >= threshold and t not in used_t and d not in used_d:
            used_t.add(t)
            used_d.add(d)
    return len(used_t)


def match_detections(truth_xyz_mm: np.ndarray, truth_diameter_mm: np.ndarray, det_xyz_mm: np.ndarray,
                     det_score: np.ndarray, *, min_distance_mm: float = 5.0, margin_mm: float = 2.0) -> np.ndarray:
    """(D,) int: index of the truth lesion each detection matches under the scoring rules, -1 if none.

    One scan; the same one-to-one, closest-first rule as `evaluate` (used to label training candidates).
    """
    truth_xyz_mm = np.asarray(truth_xyz_mm, dtype=float).reshape(-1, 3)
    det_xyz_mm = np.asarray(det_xyz_mm, dtype=float).reshape(-1, 3)
    diameter = np.nan_to_num(np.asarray(truth_diameter_mm, dtype=float).reshape(-1), nan=0.0)
    radius = np.maximum(min_distance_mm, diameter / 2.0 + margin_mm)
    matched = np.full(len(det_xyz_mm), -1, dtype=int)
    used_t: set[int] = set()
    for t, d, _ in _candidate_pairs(truth_xyz_mm, radius, det_xyz_mm, np.asarray(det_score, dtype=float)):
        if t not in used_t and matched[d] < 0:
            used_t.add(t)
            matched[d] = t
    return matched


def _ratio(num: float, den: float) -> float:
    return num / den if den else _NAN


def _mann_whitney_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """P(score_pos > score_neg) + P(tie)/2, from average ranks. NaN with one class."""
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return _NAN
    uniq, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    first_rank = np.cumsum(counts) - counts + 1
    avg_rank = first_rank + (counts - 1) / 2.0
    rank_sum = float(avg_rank[inverse][positive].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


# ------------------------------------------------------------------------------------- evaluation


@dataclass
class Evaluation:
    """Result of :func:`evaluate`.

    ``pooled``: metric name -> value (counts are ints; NaN where undefined). ``per_subject``: one dict
    per truth subject with keys :data:`PER_SUBJECT_COLUMNS`. ``froc``: ``levels`` (FP/subject),
    ``sensitivities`` (at those levels), ``mean``, and the full curve as (K,) float arrays over the
    distinct scores, descending: ``thresholds``, ``sensitivity``, ``fp_per_subject``.
    ``warnings``: one-line messages for the user. ``settings``: the scoring parameters used.
    """

    pooled: dict[str, float]
    per_subject: list[dict[str, Any]]
    froc: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    settings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (arrays as lists, NaN as None)."""
        return _jsonable({
            "settings": self.settings, "pooled": self.pooled, "froc": self.froc,
            "per_subject": self.per_subject, "warnings": self.warnings,
        })

    def to_json(self, indent: int | None = 2) -> str:
        """One JSON object: ``settings, pooled, froc, per_subject, warnings``; NaN -> null."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    def summary_text(self) -> str:
        """A short human-readable table for the terminal."""
        p, s = self.pooled, self.settings

        def f(x: float, digits: int = 3) -> str:
            return "n/a" if isinstance(x, float) and math.isnan(x) else f"{x:.{digits}f}"

        n_free = p["n_subjects_without_cmb"]
        quiet = "n/a" if not n_free else f"{round(p['quiet_rate'] * n_free)}/{n_free} ({f(p['quiet_rate'])})"
        lines = [
            f"subjects   {p['n_subjects']} ({p['n_subjects_with_cmb']} with CMB, {n_free} without, "
            f"{p['n_subjects_error']} failed, {p['n_subjects_not_processed']} not processed)   "
            f"score >= {s['score_threshold']:g}, match within "
            f"max({s['min_distance_mm']:g} mm, diameter/2 + {s['margin_mm']:g} mm)",
            f"lesions    truth {p['n_truth']}  detected {p['n_detected']}  TP {p['tp']}  FP {p['fp']}  "
            f"FN {p['fn']}",
            f"           sensitivity {f(p['sensitivity'])}  precision {f(p['precision'])}  "
            f"F1 {f(p['f1'])}  FP/subject {f(p['fp_per_subject'], 2)}  "
            f"mean |count error| {f(p['mean_abs_count_error'], 2)}",
            f"per scan   AUC {f(p['subject_auc'])}  balanced accuracy "
            f"{f(p['subject_balanced_accuracy'])}  quiet CMB-free {quiet}",
            "FROC       FP/subject " + " ".join(f"{lv:>6g}" for lv in FROC_LEVELS) + "    mean",
            "           sensitivity" + " ".join(f"{f(x):>6}" for x in self.froc["sensitivities"])
            + f"  {f(p['froc_mean']):>6}",
        ]
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def _as_truth(truth: TruthTable | Iterable[Mapping[str, Any]]) -> TruthTable:
    return truth if isinstance(truth, TruthTable) else TruthTable.from_records(truth)


def _as_detections(detections: DetectionTable | Iterable[Mapping[str, Any]]) -> DetectionTable:
    return detections if isinstance(detections, DetectionTable) else DetectionTable.from_records(detections)


def evaluate(truth: TruthTable | Iterable[Mapping[str, Any]],
             detections: DetectionTable | Iterable[Mapping[str, Any]], *,
             score_threshold: float = 0.0, min_distance_mm: float = 5.0, margin_mm: float = 2.0,
             ) -> Evaluation:
    """Score ``detections`` against ``truth`` (rules in the module docstring).

    ``truth``/``detections``: tables from :func:`read_truth`/:func:`read_detections`, or lists of
    dicts keyed like the CSV columns. ``score_threshold``: detections with ``score >=`` it count
    (0-1). ``min_distance_mm``, ``margin_mm``: match distance ``max(min_distance_mm,
    diameter_mm / 2 + margin_mm)``, mm.
    """
    truth = _as_truth(truth)
    dets = _as_detections(detections)
    if not truth.subjects:
        raise ValueError("truth has no subjects")
    warnings = list(dets.warnings)
    universe = set(truth.subjects)

    extra = [s for s in dets.centres if s not in universe and dets.centres[s].size]
    if extra:
        warnings.append(f"{len(extra)} subject(s) with detections are not in the truth, ignored: "
                        f"{_few(extra)}")
    failed = [s for s in truth.subjects if dets.status is not None and dets.status.get(s) == "error"]
    for s in failed:
        msg = dets.messages.get(s, "")
        warnings.append(f"{s}: detection failed{': ' + msg if msg else ''}; counted as all missed")
    not_processed = [s for s in truth.subjects if dets.status is not None and s not in dets.status
                     and not dets.centres.get(s, np.empty((0, 3))).size]
    if not_processed:
        warnings.append(f"{len(not_processed)} truth subject(s) not in counts.csv (not processed?), "
                        f"counted as all missed: {_few(not_processed)}")

    per_subject: list[dict[str, Any]] = []
    events: dict[float, list[int]] = {}  # FROC: score -> [delta TP, delta n_detected]
    subject_scores = np.zeros(len(truth.subjects))
    for i, subject in enumerate(truth.subjects):
        centres, diam = truth.centres[subject], truth.diameters[subject]
        if subject in failed:
            status = "error"
        elif subject in not_processed:
            status = "not_processed"
        else:
            status = "ok" if dets.status is None else dets.status.get(subject, "ok")
        if status in ("error", "not_processed"):
            det_xyz, det_score = np.empty((0, 3)), np.empty(0)
        else:
            det_xyz = dets.centres.get(subject, np.empty((0, 3)))
            det_score = dets.scores.get(subject, np.empty(0))
        radius = np.maximum(min_distance_mm, np.nan_to_num(diam, nan=0.0) / 2.0 + margin_mm)
        radius = np.where(np.isnan(diam), min_distance_mm, radius)
        pairs = _candidate_pairs(centres, radius, det_xyz, det_score)

        keep = det_score >= score_threshold
        n_truth, n_det = len(centres), int(keep.sum())
        tp = _greedy_tp(pairs, score_threshold)
        fp, fn = n_det - tp, n_truth - tp
        max_score = float(det_score.max()) if det_score.size else 0.0
        subject_scores[i] = max_score
        per_subject.append({
            "subject": subject, "status": status, "n_truth": n_truth, "n_detected": n_det,
            "tp": tp, "fp": fp, "fn": fn, "sensitivity": _ratio(tp, n_truth),
            "precision": _ratio(tp, n_det), "f1": _ratio(2 * tp, 2 * tp + fp + fn),
            "count_error": abs(n_det - n_truth), "max_score": max_score,
            "message": dets.messages.get(subject, "") if status != "ok" else "",
        })

        # FROC events: how this subject's TP and detection count change at each of its own scores.
        prev_tp = prev_n = 0
        for s in np.unique(det_score)[::-1]:
            t = float(s)
            tp_s = _greedy_tp(pairs, t) if pairs else 0
            n_s = int((det_score >= t).sum())
            ev = events.setdefault(t, [0, 0])
            ev[0] += tp_s - prev_tp
            ev[1] += n_s - prev_n
            prev_tp, prev_n = tp_s, n_s

    n_subjects = len(truth.subjects)
    n_lesions = truth.n_lesions
    froc = _froc(events, n_lesions, n_subjects)

    tp = sum(r["tp"] for r in per_subject)
    fp = sum(r["fp"] for r in per_subject)
    fn = sum(r["fn"] for r in per_subject)
    has_cmb = np.array([r["n_truth"] > 0 for r in per_subject])
    flagged = np.array([r["n_detected"] > 0 for r in per_subject])
    n_free = int((~has_cmb).sum())
    subj_sens = _ratio(int((flagged & has_cmb).sum()), int(has_cmb.sum()))
    subj_spec = _ratio(int((~flagged & ~has_cmb).sum()), n_free)
    pooled: dict[str, float] = {
        "n_subjects": n_subjects,
        "n_subjects_with_cmb": int(has_cmb.sum()),
        "n_subjects_without_cmb": n_free,
        "n_subjects_error": sum(r["status"] == "error" for r in per_subject),
        "n_subjects_not_processed": sum(r["status"] == "not_processed" for r in per_subject),
        "n_truth": n_lesions,
        "n_detected": tp + fp,
        "tp": tp, "fp": fp, "fn": fn,
        "sensitivity": _ratio(tp, tp + fn),
        "precision": _ratio(tp, tp + fp),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "fp_per_subject": fp / n_subjects,
        "mean_abs_count_error": float(np.mean([r["count_error"] for r in per_subject])),
        "quiet_rate": subj_spec,
        "subject_auc": _mann_whitney_auc(subject_scores, has_cmb),
        "subject_sensitivity": subj_sens,
        "subject_specificity": subj_spec,
        "subject_balanced_accuracy": (subj_sens + subj_spec) / 2.0,
        "froc_mean": froc["mean"],
    }
    pooled.update({froc_key(lv): x for lv, x in zip(froc["levels"], froc["sensitivities"], strict=True)})
    settings = {"score_threshold": float(score_threshold), "min_distance_mm": float(min_distance_mm),
                "margin_mm": float(margin_mm)}
    return Evaluation(pooled=pooled, per_subject=per_subject, froc=froc, warnings=warnings,
                      settings=settings)


def best_f1_threshold(truth: TruthTable | Iterable[Mapping[str, Any]],
                      detections: DetectionTable | Iterable[Mapping[str, Any]],
                      thresholds: Sequence[float] = tuple(np.round(np.arange(0.05, 0.96, 0.05), 2)),
                      *, min_sensitivity: float | None = None,
                      ) -> tuple[float, dict[str, Any]]:
    """The score threshold (from ``thresholds``) with the highest pooled F1, and its pooled figures;
    with ``min_sensitivity``, among the thresholds whose sensitivity reaches it only (empty figures
    when none does).

    Ties go to the lower threshold (higher sensitivity).
    """
    truth, detections = _as_truth(truth), _as_detections(detections)
    best_f1, best = -1.0, (float(thresholds[0]), {})
    for threshold in thresholds:
        pooled = evaluate(truth, detections, score_threshold=float(threshold)).pooled
        if min_sensitivity is not None and not pooled["sensitivity"] >= min_sensitivity - 1e-9:
            continue
        f1 = 0.0 if math.isnan(pooled["f1"]) else pooled["f1"]
        if f1 > best_f1:
            best_f1, best = f1, (float(threshold), pooled)
    return best


def _froc(events: dict[float, list[int]], n_lesions: int, n_subjects: int) -> dict[str, Any]:
    """FROC curve from per-score TP / detection-count increments, thresholds descending."""
    thresholds = np.array(sorted(events, reverse=True), dtype=float)
    d = np.array([events[t] for t in thresholds], dtype=np.int64).reshape(-1, 2)
    cum_tp, cum_n = np.cumsum(d[:, 0]), np.cumsum(d[:, 1])
    cum_fp = cum_n - cum_tp
    sens = cum_tp / n_lesions if n_lesions else np.full(len(thresholds), _NAN)
    fp_rate = cum_fp / n_subjects
    at_level = []
    for level in FROC_LEVELS:
        if not n_lesions:
            at_level.append(_NAN)
            continue
        ok = cum_fp <= level * n_subjects + 1e-9  # compare counts, avoids FP/subject rounding
        at_level.append(float(sens[ok].max()) if ok.any() else 0.0)
    return {
        "levels": list(FROC_LEVELS),
        "sensitivities": at_level,
        "mean": float(np.mean(at_level)) if n_lesions else _NAN,
        "thresholds": thresholds,
        "sensitivity": np.asarray(sens, dtype=float),
        "fp_per_subject": np.asarray(fp_rate, dtype=float),
    }


# ---------------------------------------------------------------------------------------- writing


def write_per_subject_csv(evaluation: Evaluation, path: str | Path) -> None:
    """Write one row per subject (columns :data:`PER_SUBJECT_COLUMNS`, NaN as empty) atomically.

    Writes a temporary file in the same folder, then ``os.replace``; raises :class:`InputError` when
    the folder does not exist or is not writable.
    """
    p = Path(path)
    folder = p.parent if str(p.parent) else Path(".")
    if not folder.is_dir():
        raise InputError(path, "output folder does not exist")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(PER_SUBJECT_COLUMNS)
    for row in evaluation.per_subject:
        writer.writerow([_cell(row.get(c, "")) for c in PER_SUBJECT_COLUMNS])
    try:
        write_text_atomic(p, buffer.getvalue())
    except OSError as e:
        raise InputError(path, f"cannot write ({e.strerror or e})") from None


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return None if math.isnan(x) or math.isinf(x) else float(x)
    return x
