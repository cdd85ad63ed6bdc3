"""The hematoma-expansion generator's own ceiling: AUC of its expansion probability against the
labels it draws (the best any classifier of baseline CT can reach on these phantoms).

    python tools/ct_expansion_ceiling.py [--family ct-a] [--n 3000] [--seed 0]
    python tools/ct_expansion_ceiling.py --data SET_DIR [SET_DIR ...]

Without ``--data``: draws subjects with the family's sampler (no image is rendered; baseline volume =
the drawn target volume) and growth with `cmbdet.phantom.ct.lesion.draw_growth`; prints the
expansion rate and the AUC over every hematoma and over each subject's largest hematoma (the lesion
a subject's label is read from). With ``--data``: the same figures against the labels of written pair
sets (``truth.csv``: read from the painted follow-up volumes), and how often those labels agree with
the generator's draw (``drawn_expands``, revision 2 of the CT families on).
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from cmbdet.anatomy import mni_maps
from cmbdet.phantom.ct.generate import FAMILIES
from cmbdet.phantom.ct.head import sample_pose
from cmbdet.phantom.ct.lesion import draw_growth


def drawn_subjects(family: str, n: int, seed: int) -> list[list[dict]]:
    """``n`` subjects' hematomas as rows (volume_ml, p_expand, expands), drawn without rendering."""
    rng = np.random.default_rng(seed)
    maps = mni_maps(1)
    subjects = []
    while len(subjects) < n:
        rows = []
        for h in FAMILIES[family].sample_hematomas(rng, maps, sample_pose(rng), p_free=0.0):
            _, expands, p = draw_growth(rng, h.target_ml, h)
            rows.append({"volume_ml": h.target_ml, "p_expand": p, "expands": int(expands)})
        if rows:
            subjects.append(rows)
    return subjects


def written_subjects(folders: list[str]) -> list[list[dict]]:
    """Baseline hematoma rows of written pair sets, grouped by subject."""
    by_subject: dict[str, list[dict]] = {}
    for folder in folders:
        with open(Path(folder) / "truth.csv", newline="") as handle:
            for row in csv.DictReader(handle):
                if row.get("session", "baseline") == "baseline" and row.get("p_expand"):
                    by_subject.setdefault(row["subject"], []).append(
                        {"volume_ml": float(row["volume_ml"]), "p_expand": float(row["p_expand"]),
                         "expands": int(row["expands"]),
                         "drawn": int(row["drawn_expands"]) if row.get("drawn_expands") else None})
    return list(by_subject.values())


def report(name: str, subjects: list[list[dict]]) -> None:
    rows = [r for s in subjects for r in s]
    largest = [max(s, key=lambda r: r["volume_ml"]) for s in subjects]
    labels = np.array([r["expands"] for r in rows])
    big = np.array([r["expands"] for r in largest])
    print(f"{name}: {len(subjects)} subjects, {len(rows)} hematomas, expansion rate {labels.mean():.3f}; "
          f"generator-probability AUC {roc_auc_score(labels, [r['p_expand'] for r in rows]):.3f} over every "
          f"hematoma, {roc_auc_score(big, [r['p_expand'] for r in largest]):.3f} over each subject's largest "
          f"(rate {big.mean():.3f})")
    drawn = [r for r in rows if r.get("drawn") is not None]
    if drawn:
        agree = sum(r["drawn"] == r["expands"] for r in drawn)
        print(f"  painted labels agreeing with the generator's draw: {agree} of {len(drawn)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="ct-a", choices=sorted(FAMILIES))
    parser.add_argument("--n", type=int, default=3000, help="subjects to draw (default 3000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", nargs="+", help="written pair set folder(s) with truth.csv instead of drawing")
    args = parser.parse_args(argv)
    if args.data:
        report(", ".join(Path(d).name for d in args.data), written_subjects(args.data))
    else:
        report(args.family, drawn_subjects(args.family, args.n, args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
