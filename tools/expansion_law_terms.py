"""Which of the CT growth law's terms decide expansion in a phantom set: for each subject's largest
hematoma (truth.csv of a `cmbdet phantom --kind ct --pairs` set), the AUC against the drawn labels of
the generator's own probability (the ceiling), of the probability with one term held at a constant
(that term's share of the ceiling), and of the term alone. Reads the truth only; for choosing which
signs a classifier must measure well in a painter (validation sets; never the test family).

    python tools/expansion_law_terms.py --data SET [SET...]
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from cmbdet.phantom.ct.lesion import Hematoma, expansion_probability

#: term -> how a truth row sets it on a Hematoma (the baseline volume is passed separately)
TERMS = ("volume", "irregularity", "blend", "black_hole", "swirl", "islands", "ivh")


def _hematoma(row: dict, held: str | None) -> tuple[float, Hematoma]:
    h = Hematoma(centre_mni=np.zeros(3), target_ml=float(row["volume_ml"]), density_hu=float(row["density_hu"]),
                 irregularity=float(row["irregularity"]), blend=row["blend"] == "1",
                 black_hole=row["black_hole"] == "1", swirl=row["swirl"] == "1", n_islands=int(row["n_islands"]),
                 ivh=row["ivh"] == "1")
    volume_ml = float(row["volume_ml"])
    if held == "volume":
        volume_ml = 10.0
    elif held == "islands":
        h.n_islands = 0
    elif held == "irregularity":
        h.irregularity = 0.0
    elif held is not None:
        setattr(h, held, False)
    return volume_ml, h


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", type=Path, required=True)
    args = parser.parse_args(argv)
    for folder in args.data:
        largest: dict[str, dict] = {}
        with open(folder / "truth.csv", newline="") as f:
            for row in csv.DictReader(f):
                if row["session"] != "baseline" or not row["lesion_id"]:
                    continue
                current = largest.get(row["subject"])
                if current is None or float(row["volume_ml"]) > float(current["volume_ml"]):
                    largest[row["subject"]] = row
        rows = list(largest.values())
        labels = np.array([int(r["expands"]) for r in rows])
        full = np.array([expansion_probability(*_hematoma(r, None)) for r in rows])
        print(f"{folder}: {len(rows)} subjects, {labels.sum()} expand; generator's probability AUC "
              f"{roc_auc_score(labels, full):.3f}")
        for term in TERMS:
            held = np.array([expansion_probability(*_hematoma(r, term)) for r in rows])
            alone = np.log(full / (1 - full)) - np.log(held / (1 - held))  # the term's own logit contribution
            print(f"  {term:13s} law without it {roc_auc_score(labels, held):.3f}   term alone "
                  f"{roc_auc_score(labels, alone) if np.ptp(alone) > 0 else float('nan'):.3f}   sd of its logit "
                  f"{alone.std():.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
