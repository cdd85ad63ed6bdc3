"""How often the CT lesion localizer's intraventricular-extension flag (`Lesions.ivh`) matches the truth
of a CT phantom set, for each subject's largest hematoma; beside it the flag by the lesion's mask alone
(>= 10 % of its voxels in the MNI lateral / third ventricles, the rule before session 20), so that
both rules are measured on the same localized lesions; and the median wall time of `localize_lesions`
(the IVH look-up included).

    python tools/ivh_flag_check.py --data SET [SET...] [--n 50]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn.metrics import confusion_matrix

from cmbdet.classify.samples import phantom_subjects
from cmbdet.lesions.ct import ct_working_image, load_ct_volume
from cmbdet.lesions.infer import load_lesion_model, localize_lesions
from cmbdet.lesions.result import intraventricular
from cmbdet.regions import anchor_to_mni


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", required=True, help="CT phantom sets (truth.csv with an ivh column)")
    parser.add_argument("--n", type=int, default=50, help="first N subjects of each set")
    args = parser.parse_args(argv)
    localizer = load_lesion_model()
    for folder in args.data:
        truth, seconds, flags = [], [], {"shipped (mask or ventricular blood)": [], "mask alone": []}
        for subject in phantom_subjects(folder, "expansion")[:args.n]:
            if not subject.truth_rows:
                continue
            largest = max(subject.truth_rows.values(), key=lambda r: float(r["volume_ml"]))
            volume = load_ct_volume(subject.files["ct"])
            start = time.perf_counter()
            lesions = localize_lesions(volume, localizer)
            seconds.append(time.perf_counter() - start)
            if not len(lesions.volume_ml):
                continue
            work = ct_working_image(volume, localizer.spacing_mm)
            mask_rule = intraventricular(volume, lesions.labels, len(lesions), anchor_to_mni(work.mask, work.affine))
            index = int(np.argmax(lesions.volume_ml))
            truth.append(int(largest["ivh"]))
            flags["shipped (mask or ventricular blood)"].append(int(lesions.ivh[index]))
            flags["mask alone"].append(int(mask_rule[index]))
        truth = np.array(truth)
        print(f"{folder}: {len(truth)} subjects with a localized hematoma, {truth.sum()} with intraventricular "
              f"extension (largest hematoma); localization {np.median(seconds):.1f} s median per scan")
        for rule, flag in flags.items():
            (tn, fp), (fn, tp) = confusion_matrix(truth, np.array(flag), labels=[0, 1]).tolist()
            sensitivity, specificity = tp / max(tp + fn, 1), tn / max(tn + fp, 1)
            print(f"  {rule:36s} flags {tp} of {tp + fn} and {fp} of the {tn + fp} without; accuracy "
                  f"{(tp + tn) / len(truth):.3f}, balanced {(sensitivity + specificity) / 2:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
