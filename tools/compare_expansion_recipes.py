"""The expansion recipe with leave-one-family-out choices against the usual one (subject folds), on the
same data of two or more CT painters and the same held-out fifth of the subjects. For validation
decisions only; never give it the test family.

    python tools/compare_expansion_recipes.py --data CT_A_SET CT_C_SET --cache CACHE \\
        --candidate CANDIDATE.safetensors [--seed 0]

CANDIDATE: weights from `cmbdet train classifier --task expansion --data CT_A_SET CT_C_SET --seed S`
(which, with several families, cross-fits and chooses leaving one family out). The held-out fifth is
the one that command held out (`split_subjects` with the same seed, as `train_expansion` draws it);
the usual recipe is trained here on the other four fifths with the families merged into one. Prints
each model's per-subject AUC (largest localized hematoma) on the held-out subjects, pooled and by family.
"""

from __future__ import annotations

import argparse

import numpy as np
from sklearn.metrics import roc_auc_score

from cmbdet.classify.model import load_classifier
from cmbdet.classify.samples import build_sample_set
from cmbdet.classify.train import _labelled, model_scores_from_samples, split_subjects, subject_scores, train_expansion
from cmbdet.lesions.infer import load_lesion_model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", required=True, help="CT phantom sets (pairs) of two or more families")
    parser.add_argument("--cache", required=True, help="feature cache folder (as given to the training command)")
    parser.add_argument("--candidate", required=True, help="weights trained on --data with --seed")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    samples = build_sample_set("expansion", args.data, ct_model=load_lesion_model(), cache_dir=args.cache,
                               perturbed=True)
    labelled = _labelled(samples)
    fit_subjects, val_subjects = split_subjects(labelled, np.random.default_rng(args.seed), 0.2)
    validation = labelled.of_subjects(val_subjects)
    merged = labelled.of_subjects(fit_subjects)
    merged.sites[:] = "one"
    merged.subject_sites = {k: "one" for k in merged.subject_sites}
    usual, _ = train_expansion(merged, np.random.default_rng(args.seed), val_fraction=0.0)
    names = sorted(validation.subject_labels)
    families = sorted(set(validation.subject_sites[n] for n in names))
    for label, model in (("leave-one-family-out (candidate)", load_classifier("expansion", args.candidate)),
                         ("usual recipe (subject folds)", usual)):
        for variant in ("fused", "deep", "radiomics"):
            scores = subject_scores(validation, model_scores_from_samples(model, validation, variant), "expansion")
            parts = []
            for family in families:
                members = [n for n in names if validation.subject_sites[n] == family]
                auc = roc_auc_score([validation.subject_labels[n] for n in members], [scores[n] for n in members])
                parts.append(f"{family} {auc:.3f}")
            pooled = roc_auc_score([validation.subject_labels[n] for n in names], [scores[n] for n in names])
            print(f"{label:34s} {variant:9s} held-out subjects {len(names)}: AUC {pooled:.3f}  " + "  ".join(parts))
    print("usual recipe's LASSO kept", {n: int(c.selected.sum()) for n, c in usual.chains.items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
