"""How well the expansion classifier's own measurements tell each named sign the CT phantoms draw:
for each subject's largest localized hematoma, the AUC of every sign measurement (`signs.*`, plus
mirp's skewness and Moran's I) for the presence of each truth sign of the subject's largest hematoma
(truth.csv: intraventricular extension, irregularity above its median, blend, black hole, swirl,
>= 3 satellite islands); the three best per sign, as max(AUC, 1 - AUC). Validation sets only.

    python tools/expansion_sign_measurements.py --data SET [SET...] [--cache DIR]
"""

from __future__ import annotations

import argparse

import numpy as np
from sklearn.metrics import roc_auc_score

from cmbdet.classify.samples import build_sample_set, phantom_subjects
from cmbdet.lesions.infer import load_lesion_model

SIGNS = ("ivh", "irregularity", "blend", "black_hole", "swirl", "islands")
EXTRA = ("ct.stat_skew", "ct.morph_moran_i")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", required=True, help="CT phantom sets with --pairs truth")
    parser.add_argument("--cache", help="feature cache folder (as `cmbdet train classifier` keeps one)")
    args = parser.parse_args(argv)
    localizer = load_lesion_model()
    for folder in args.data:
        samples = build_sample_set("expansion", [folder], ct_model=localizer, cache_dir=args.cache, perturbed=True)
        truth = {s.subject: max(s.truth_rows.values(), key=lambda r: float(r["volume_ml"]))
                 for s in phantom_subjects(folder, "expansion") if s.truth_rows}
        largest: dict[str, int] = {}
        for index, subject in enumerate(samples.subjects):
            if samples.labels[index] >= 0 and (subject not in largest
                                               or samples.volume_ml[index] > samples.volume_ml[largest[subject]]):
                largest[subject] = index
        subjects = [s for s in largest if s in truth]
        rows = np.array([largest[s] for s in subjects])
        columns = [j for j, n in enumerate(samples.names) if n.startswith("signs.") or n in EXTRA]
        print(f"{folder}: {len(subjects)} subjects")
        for sign in SIGNS:
            present = np.array([float(truth[s][sign]) for s in subjects])
            if sign == "irregularity":
                present = present > np.median(present)
            present = present.astype(int)
            if present.min() == present.max():
                print(f"  {sign:12s} (all subjects alike)")
                continue
            aucs = [(roc_auc_score(present, samples.radiomics[rows, j]), samples.names[j]) for j in columns]
            best = sorted(((max(a, 1 - a), n) for a, n in aucs), reverse=True)[:3]
            print(f"  {sign:12s} {int(present.sum()):3d} with it; best: "
                  + ", ".join(f"{name} {auc:.2f}" for auc, name in best))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
