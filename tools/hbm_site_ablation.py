"""Leave-one-site-out on the hbm training sites: what the cross-site metric term buys on a site the
model did not train on, measured without touching the test site.

    python tools/hbm_site_ablation.py --data DATA/hbm_train --cache DATA/cache_hbm [--weights 0 0.3] [--epochs 150]

For each training site: fit `HBMNet` on the other sites' subjects (all of them), score the left-out
site's subjects (a subject's score is its most suspicious lesion; threshold 0.5), print per-subject
AUC and accuracy per metric weight, and the mean over the left-out sites.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from cmbdet.classify.model import ClassifierModel
from cmbdet.classify.samples import build_sample_set
from cmbdet.classify.train import fit_hbm_net, model_scores_from_samples, subject_scores
from cmbdet.lesions.infer import load_lesion_model
from cmbdet.weights import SHIPPED_WEIGHTS_DIR


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, nargs="+")
    parser.add_argument("--cache", required=True)
    parser.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.3])
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    samples = build_sample_set("hbm", args.data, mri_model=load_lesion_model(SHIPPED_WEIGHTS_DIR /
                                                                            "lesions_mri.safetensors"),
                               cache_dir=args.cache)
    samples = samples.subset(samples.labels >= 0)
    sites = sorted(set(samples.sites.tolist()))
    results: dict[float, list[tuple[float, float]]] = {w: [] for w in args.weights}
    for site in sites:
        train = samples.subset(samples.sites != site)
        test = samples.subset(samples.sites == site)
        for weight in args.weights:
            net, mean, scale = fit_hbm_net(train, np.random.default_rng(args.seed), epochs=args.epochs,
                                           metric_weight=weight)
            model = ClassifierModel("hbm", net, 0.5, samples.names, tab_mean=mean, tab_scale=scale)
            scores = subject_scores(test, model_scores_from_samples(model, test), "hbm")
            names = sorted(s for s in scores if s in test.subject_labels)
            truth = np.array([test.subject_labels[s] for s in names])
            values = np.array([scores[s] for s in names])
            auc, accuracy = roc_auc_score(truth, values), float(((values >= 0.5) == truth.astype(bool)).mean())
            results[weight].append((auc, accuracy))
            print(f"left out {site} ({len(names)} subjects): metric weight {weight:g}: AUC {auc:.3f}, "
                  f"accuracy {accuracy:.3f}", flush=True)
    for weight, rows in results.items():
        aucs, accs = np.array(rows).T
        print(f"metric weight {weight:g}: mean over left-out sites AUC {aucs.mean():.3f}, accuracy {accs.mean():.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
