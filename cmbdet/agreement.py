"""Per-scan microbleed counts against rated counts (``cmbdet evaluate --counts``).

Rated reads often give counts, not positions. For the scans that have both a rated count and a
predicted one this reports:

* ICC(A,1) — two-way, absolute agreement, single measures (McGraw & Wong 1996; Shrout & Fleiss
  ICC(2,1)): ``(MSR - MSE) / (MSR + (k-1) MSE + k/n (MSC - MSE))`` with k = 2 "raters" (the rater
  and the detector), n scans; it counts a systematic over- or under-count against agreement.
  ICC(C,1) (consistency, Shrout & Fleiss ICC(3,1)): ``(MSR - MSE) / (MSR + (k-1) MSE)``, blind to
  a constant offset. NaN with fewer than 2 scans or no spread.
* Bland–Altman: differences ``predicted - rated``; bias (mean difference), SD (n-1) and 95% limits
  of agreement ``bias ± 1.96 SD``; mean absolute difference; Spearman's rho.
* Count categories 0 / 1 / 2–4 / >=5 (the usual burden groups): the 4x4 confusion table (rows rated,
  columns predicted), the fraction in the same category and Cohen's kappa (unweighted, and linearly
  weighted for the ordered categories; scikit-learn).
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cmbdet.errors import InputError
from cmbdet.evaluate import _jsonable, _read_csv, read_detections

COUNT_CATEGORIES: tuple[str, ...] = ("0", "1", "2-4", ">=5")


def count_category(n: float) -> int:
    """Index into `COUNT_CATEGORIES`: 0 -> 0, 1 -> 1, 2..4 -> 2, >= 5 -> 3."""
    return 0 if n < 0.5 else 1 if n < 1.5 else 2 if n < 4.5 else 3


def icc_two_way(table: np.ndarray) -> tuple[float, float]:
    """(ICC(A,1), ICC(C,1)) of an (n scans, k raters) table (formulas in the module docstring)."""
    table = np.asarray(table, dtype=float)
    n, k = table.shape
    if n < 2 or k < 2:
        return math.nan, math.nan
    grand = table.mean()
    ss_rows = k * ((table.mean(axis=1) - grand) ** 2).sum()
    ss_cols = n * ((table.mean(axis=0) - grand) ** 2).sum()
    ss_error = ((table - grand) ** 2).sum() - ss_rows - ss_cols
    msr, msc, mse = ss_rows / (n - 1), ss_cols / (k - 1), ss_error / ((n - 1) * (k - 1))
    den_a = msr + (k - 1) * mse + k / n * (msc - mse)
    den_c = msr + (k - 1) * mse
    icc_a = (msr - mse) / den_a if den_a > 0 else math.nan
    icc_c = (msr - mse) / den_c if den_c > 0 else math.nan
    return float(icc_a), float(icc_c)


@dataclass
class CountAgreement:
    """Result of `count_agreement`; ``figures`` keyed as in `to_dict`, ``per_scan`` one dict per pair."""

    figures: dict[str, Any]
    confusion: np.ndarray  # (4, 4) int, rows rated category, columns predicted
    per_scan: list[dict[str, Any]]
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return _jsonable({"figures": self.figures, "categories": list(COUNT_CATEGORIES),
                          "confusion": self.confusion, "per_scan": self.per_scan, "warnings": self.warnings})

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    def summary_text(self) -> str:
        f = self.figures

        def x(value: float, digits: int = 3) -> str:
            return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"

        lines = [
            f"scans      {f['n_scans']} with a rated and a predicted count (rated total {f['rated_total']}, "
            f"predicted total {f['predicted_total']})",
            f"ICC        A,1 (two-way, absolute agreement) {x(f['icc_a1'])}   C,1 (consistency) {x(f['icc_c1'])}",
            f"Bland-Altman  bias (predicted - rated) {x(f['bias'], 2)}   95% limits {x(f['loa_lower'], 2)} .. "
            f"{x(f['loa_upper'], 2)}   mean |difference| {x(f['mean_abs_difference'], 2)}   "
            f"Spearman {x(f['spearman'])}",
            f"categories same category {x(f['category_agreement'])}   kappa {x(f['kappa'])}   "
            f"linear weighted kappa {x(f['kappa_linear'])}",
            "           rated \\ predicted " + " ".join(f"{c:>5}" for c in COUNT_CATEGORIES),
        ]
        for name, row in zip(COUNT_CATEGORIES, self.confusion, strict=True):
            lines.append(f"           {name:>17} " + " ".join(f"{int(v):>5}" for v in row))
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def count_agreement(rated: Mapping[str, float], predicted: Mapping[str, float]) -> CountAgreement:
    """Agreement of predicted with rated per-scan counts over the scans in both (module docstring)."""
    from scipy.stats import spearmanr
    from sklearn.metrics import cohen_kappa_score

    subjects = [s for s in rated if s in predicted]
    notes = []
    missing = [s for s in rated if s not in predicted]
    if missing:
        notes.append(f"{len(missing)} rated scan(s) have no predicted count, left out: {', '.join(missing[:5])}")
    r = np.array([float(rated[s]) for s in subjects])
    p = np.array([float(predicted[s]) for s in subjects])
    n = len(subjects)
    diff = p - r
    sd = float(diff.std(ddof=1)) if n > 1 else math.nan
    bias = float(diff.mean()) if n else math.nan
    icc_a, icc_c = icc_two_way(np.stack([r, p], axis=1)) if n else (math.nan, math.nan)
    cat_r = np.array([count_category(v) for v in r], dtype=int)
    cat_p = np.array([count_category(v) for v in p], dtype=int)
    confusion = np.zeros((4, 4), dtype=int)
    np.add.at(confusion, (cat_r, cat_p), 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one class only: sklearn warns and returns NaN
        kappa = float(cohen_kappa_score(cat_r, cat_p, labels=[0, 1, 2, 3])) if n else math.nan
        kappa_lin = float(cohen_kappa_score(cat_r, cat_p, labels=[0, 1, 2, 3], weights="linear")) if n else math.nan
        rho = float(spearmanr(r, p).statistic) if n > 2 else math.nan
    figures = {
        "n_scans": n, "rated_total": float(r.sum()), "predicted_total": float(p.sum()),
        "icc_a1": icc_a, "icc_c1": icc_c, "bias": bias, "sd_difference": sd,
        "loa_lower": bias - 1.96 * sd, "loa_upper": bias + 1.96 * sd,
        "mean_abs_difference": float(np.abs(diff).mean()) if n else math.nan, "spearman": rho,
        "category_agreement": float((cat_r == cat_p).mean()) if n else math.nan,
        "kappa": kappa, "kappa_linear": kappa_lin,
    }
    per_scan = [{"subject": s, "rated": float(a), "predicted": float(b), "difference": float(b - a),
                 "rated_category": COUNT_CATEGORIES[ca], "predicted_category": COUNT_CATEGORIES[cb]}
                for s, a, b, ca, cb in zip(subjects, r, p, cat_r, cat_p, strict=True)]
    if n < 2:
        notes.append("fewer than 2 scans with both counts: ICC and limits of agreement are undefined")
    return CountAgreement(figures=figures, confusion=confusion, per_scan=per_scan, warnings=notes)


def read_rated_counts(path: str | Path) -> dict[str, float]:
    """Rated counts per scan: a manifest (``subject[, session], n_cmb``; the scan id is
    ``subject_session`` as detect names it; empty = unrated, left out) or a truth.csv (microbleed rows
    per subject; an empty-coordinate row = 0)."""
    rows = _read_csv(path, ("subject",))
    if rows and "n_cmb" in rows[0]:
        from cmbdet.training_data import scan_id

        return {scan_id(r["subject"], r.get("session", "")): _count(r["n_cmb"], path, r)
                for r in rows if r["n_cmb"] != ""}
    from cmbdet.evaluate import read_truth

    table = read_truth(path)
    return {s: float(len(table.centres[s])) for s in table.subjects}


def read_predicted_counts(path: str | Path, score_threshold: float = 0.0, subjects: list[str] | None = None,
                          ) -> tuple[dict[str, float], list[str]]:
    """Predicted counts per subject and warnings: a ``counts.csv`` (``n_cmb`` of ``status == ok``
    rows; failed subjects are left out with a warning) or a ``detections.csv`` (detections with
    ``score >= score_threshold`` per subject; ``counts.csv`` beside it tells the subjects processed,
    else every one of ``subjects`` is taken as processed: 0 when it has no detection)."""
    rows = _read_csv(path, ("subject",))
    notes: list[str] = []
    if not rows or "n_cmb" in rows[0]:
        counts = {}
        for r in rows:
            if (r.get("status") or "ok").lower() != "ok" or r.get("n_cmb", "") == "":
                notes.append(f"{r['subject']}: detection {r.get('status') or 'gave no count'}, left out")
                continue
            counts[r["subject"]] = _count(r["n_cmb"], path, r)
        return counts, notes
    table = read_detections(path)
    if table.status is not None:
        names = list(table.status)
    else:
        names = list(dict.fromkeys([*table.centres, *(subjects or [])]))
        notes.append(f"no counts.csv beside {path}: every rated scan is taken as processed (0 without detections)")
    counts = {}
    for s in names:
        if table.status is not None and table.status.get(s) != "ok":
            notes.append(f"{s}: detection {table.status.get(s)}, left out")
            continue
        counts[s] = float((table.scores.get(s, np.empty(0)) >= score_threshold).sum())
    return counts, notes


def _count(text: str, path: str | Path, row: dict) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InputError(path, f"line {row.get('_line', '?')}: n_cmb is not a number ({text!r})") from None
    if not math.isfinite(value) or value < 0:
        raise InputError(path, f"line {row.get('_line', '?')}: n_cmb must be a count >= 0 ({text!r})")
    return value
