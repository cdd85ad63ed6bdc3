"""How often the CT lesion localizer's intraventricular-extension flag (`Lesions.ivh`: >= 10 % of the
lesion's voxels in the MNI lateral / third ventricles) matches the truth of a CT phantom set, for each
subject's largest hematoma. For validation only (never the test family).

    python tools/ivh_flag_check.py --data SET [SET...] [--n 50]
"""

from __future__ import annotations

import argparse

import numpy as np
from sklearn.metrics import confusion_matrix, roc_auc_score

from cmbdet.classify.samples import localize, phantom_subjects
from cmbdet.lesions.infer import load_lesion_model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", required=True, help="CT phantom sets (truth.csv with an ivh column)")
    parser.add_argument("--n", type=int, default=50, help="first N subjects of each set")
    args = parser.parse_args(argv)
    localizer = load_lesion_model()
    for folder in args.data:
        truth, flag = [], []
        for subject in phantom_subjects(folder, "expansion")[:args.n]:
            if not subject.truth_rows:
                continue
            largest = max(subject.truth_rows.values(), key=lambda r: float(r["volume_ml"]))
            lesions, _, _ = localize(subject, localizer, None)
            if len(lesions.volume_ml):
                truth.append(int(largest["ivh"]))
                flag.append(int(lesions.ivh[int(np.argmax(lesions.volume_ml))]))
        truth, flag = np.array(truth), np.array(flag)
        (tn, fp), (fn, tp) = confusion_matrix(truth, flag, labels=[0, 1]).tolist()
        print(f"{folder}: {len(truth)} subjects, {truth.sum()} with intraventricular extension; flagged "
              f"{tp} of them and {fp} of the {tn + fp} without; AUC {roc_auc_score(truth, flag):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
