"""Leave-one-painter-out for the expansion classifier: which features carry over from one CT
hematoma painter (phantom family) to another? For validation decisions only; never give it the
test family.

    python tools/expansion_painter_transfer.py --data CT_A_SET CT_C_SET --cache CACHE \\
        [--weights weights/classifier_expansion.safetensors] [--features]

Each set is one family's baseline/follow-up pairs. For each set in turn, the expansion recipe of
`cmbdet train classifier` (`train_expansion`, all of the set's subjects used to fit) is trained on it
and its fused, deep-only and radiomics-only chains are scored on every other set, per subject (the
largest localized hematoma): AUC with a 95 % bootstrap CI, beside the generator's own probability
(the ceiling). ``--weights``: existing weights scored on every set too. ``--features``: each
radiomics/sign feature's lesion-level AUC in each set (a feature whose AUC flips side or collapses
between painters measures how a painter renders, not the hematoma). Lesions are localized and
measured once (cached in CACHE, with the re-acquisition copies the robustness filter needs).
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent))

from compare_expansion_models import auc_with_ci  # noqa: E402

from cmbdet.classify.model import load_classifier  # noqa: E402
from cmbdet.classify.samples import SampleSet, build_sample_set  # noqa: E402
from cmbdet.classify.train import model_scores_from_samples, subject_scores, train_expansion  # noqa: E402
from cmbdet.lesions.infer import load_lesion_model  # noqa: E402

VARIANTS = ("fused", "deep", "radiomics")


def ceiling_scores(folder: str) -> dict[str, float]:
    """The generator's probability of each subject's largest truth hematoma (baseline)."""
    best: dict[str, tuple[float, float]] = {}
    with open(Path(folder) / "truth.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            if row.get("session", "baseline") != "baseline" or not row.get("p_expand"):
                continue
            volume = float(row["volume_ml"] or 0)
            if row["subject"] not in best or volume > best[row["subject"]][0]:
                best[row["subject"]] = (volume, float(row["p_expand"]))
    return {s: p for s, (_, p) in best.items()}


def score_line(label: str, samples: SampleSet, by_subject: dict[str, float], seed: int) -> str:
    names = sorted(s for s in by_subject if s in samples.subject_labels)
    labels = np.array([samples.subject_labels[s] for s in names])
    auc, lo, hi = auc_with_ci(labels, np.array([by_subject[s] for s in names]), np.random.default_rng(seed))
    return f"{label:48s} subjects {len(names):3d} ({labels.sum():3d} expand)  AUC {auc:.3f} [{lo:.3f}, {hi:.3f}]"


def feature_table(sets: dict[str, SampleSet]) -> None:
    names = next(iter(sets.values())).names
    print("\nlesion-level AUC of each feature (labelled lesions), by set:")
    print(f"{'feature':44s} " + " ".join(f"{Path(k).name[:16]:>16s}" for k in sets))
    for j, name in enumerate(names):
        values = []
        for samples in sets.values():
            rows = samples.labels >= 0
            x = samples.radiomics[rows, j]
            ok = np.isfinite(x)
            values.append(roc_auc_score(samples.labels[rows][ok], x[ok]) if np.ptp(x[ok]) > 0 else 0.5)
        print(f"{name:44s} " + " ".join(f"{v:16.3f}" for v in values))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", required=True, help="CT phantom sets (pairs), one family each")
    parser.add_argument("--cache", required=True, help="feature cache folder")
    parser.add_argument("--weights", nargs="*", default=[], help="existing expansion weights to score too")
    parser.add_argument("--features", action="store_true", help="print each feature's AUC by set")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    localizer = load_lesion_model()
    sets = {folder: build_sample_set("expansion", [folder], ct_model=localizer, cache_dir=args.cache, perturbed=True)
            for folder in args.data}
    for folder, samples in sets.items():
        ceiling = ceiling_scores(folder)
        print(score_line(f"{Path(folder).name}: generator's probability", samples,
                         {s: ceiling[s] for s in samples.subject_labels if s in ceiling}, args.seed))
    if args.features:
        feature_table(sets)
    for path in args.weights:
        model = load_classifier("expansion", path)
        for folder, samples in sets.items():
            for variant in VARIANTS:
                scores = subject_scores(samples, model_scores_from_samples(model, samples, variant), "expansion")
                print(score_line(f"{Path(path).name} {variant} on {Path(folder).name}", samples, scores, args.seed))
    for train_folder, train_samples in sets.items():
        model, report = train_expansion(train_samples, np.random.default_rng(args.seed), val_fraction=0.0)
        kept = {name: int(chain.selected.sum()) for name, chain in model.chains.items()}
        print(f"\ntrained on {Path(train_folder).name}: LASSO kept {kept}; robust radiomics "
              f"{len(report.get('robust_radiomics', {}).get('kept', []))}")
        for name in ("fused", "radiomics"):
            chosen = [n for n, keep in zip(("deep", *model.names) if name == "fused" else model.names,
                                           model.chains[name].selected) if keep]
            print(f"  {name} chain features: {', '.join(chosen)}")
        for folder, samples in sets.items():
            if folder == train_folder:
                continue
            for variant in VARIANTS:
                scores = subject_scores(samples, model_scores_from_samples(model, samples, variant), "expansion")
                print(score_line(f"  {variant} on {Path(folder).name}", samples, scores, args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
