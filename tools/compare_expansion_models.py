"""Compare expansion-classifier weights on labelled CT phantom sets, per subject (its largest localized
hematoma, as `cmbdet classify` reports it): AUC with a 95 % bootstrap CI for the fused, deep-only and
radiomics-only models of each weights file. For validation decisions; the held-out family's figures
come from `tools/bench_classify.py`, which runs `cmbdet classify` end to end.

    python tools/compare_expansion_models.py --data SET [SET...] --cache CACHE \\
        --weights weights/classifier_expansion.safetensors CANDIDATE.safetensors

The lesions are localized and measured once (`build_sample_set`, cached in CACHE) and every model scores
the same features.
"""

from __future__ import annotations

import argparse

import numpy as np
from sklearn.metrics import roc_auc_score

from cmbdet.classify.model import load_classifier
from cmbdet.classify.samples import build_sample_set
from cmbdet.classify.train import model_scores_from_samples, subject_scores
from cmbdet.lesions.infer import load_lesion_model


def auc_with_ci(labels: np.ndarray, scores: np.ndarray, rng: np.random.Generator, n: int = 2000
                ) -> tuple[float, float, float]:
    boot = []
    for _ in range(n):
        pick = rng.integers(len(labels), size=len(labels))
        if len(set(labels[pick].tolist())) == 2:
            boot.append(roc_auc_score(labels[pick], scores[pick]))
    return float(roc_auc_score(labels, scores)), float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", required=True, help="CT phantom sets written with --pairs")
    parser.add_argument("--cache", required=True, help="feature cache folder")
    parser.add_argument("--weights", nargs="+", required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    samples = build_sample_set("expansion", args.data, ct_model=load_lesion_model(), cache_dir=args.cache)
    for path in args.weights:
        model = load_classifier("expansion", path)
        for variant in ("fused", "deep", "radiomics"):
            by_subject = subject_scores(samples, model_scores_from_samples(model, samples, variant), "expansion")
            names = sorted(s for s in by_subject if s in samples.subject_labels)
            labels = np.array([samples.subject_labels[s] for s in names])
            scores = np.array([by_subject[s] for s in names])
            auc, lo, hi = auc_with_ci(labels, scores, np.random.default_rng(args.seed))
            print(f"{path}  {variant:9s}  subjects {len(names)} ({labels.sum()} expand)  "
                  f"AUC {auc:.3f} [{lo:.3f}, {hi:.3f}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
