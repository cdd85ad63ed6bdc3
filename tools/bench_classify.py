"""Benchmark of the crop classifiers, end to end: `cmbdet classify` run on phantom scans the models
never saw, its tables joined with the phantoms' truth; every figure of issue 12 printed in one run.

    # expansion (baseline CT of a held-out family; the follow-up scans only give the labels)
    python tools/bench_classify.py --task expansion --data DATA/exp_test_ctb --out OUT/exp \\
        [--weights W] [--ssl-train DATA/exp_train_cta [DATA/exp_train_ctc] --cache CACHE] [--seeds 5]
    # metastasis vs hematoma (a held-out site, and a same-site split)
    python tools/bench_classify.py --task hbm --data DATA/hbm_test_s4 --out OUT/s4 [--weights W]
    # ... with some sequences only (a site that lacks the others)
    python tools/bench_classify.py --task hbm --data DATA/hbm_test_s4 --out OUT/s4-swi --sequences swi

Per subject (the ``classification.csv`` subject row: hbm the most suspicious lesion, expansion the
largest hematoma) against the subject's truth (hbm: metastasis or hematoma; expansion: its largest
hematoma's label); subjects whose lesions the localizer missed count as "no lesion" (a wrong answer
for accuracy, probability 0 for AUC). Per lesion: localized lesions matched to truth lesions
(`cmbdet.lesions.truth`). AUC with a 95 % bootstrap CI over subjects (2000 resamples), accuracy,
precision, recall, F1 and average precision at the stored threshold; for expansion every model in
the weights (``--compare``: deep-only, radiomics-only, fused), the generator's own probability as a
ceiling, and a decision-curve table (net benefit by threshold probability). ``--ssl-train``: the
self-supervised pretraining's gain with a fifth of the labels (CNN alone, scratch vs SimSiam
initialization, mean over ``--seeds`` seeds with a t-interval), trained on those sets' cached
lesions (SimSiam on all their crops, the fifth of the labels drawn by subject, stratified by family
and label) and scored on this set's.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np

from cmbdet.classify.samples import phantom_subjects
from cmbdet.cli import main as cmbdet_main
from cmbdet.lesions.mri import SEQUENCES
from cmbdet.lesions.truth import match_reports, read_truth_map


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def truth_subject(name: str) -> str:
    """``sub-x_ses-baseline`` -> ``sub-x`` (classify names subjects by file; truth by subject)."""
    return name.split("_ses-")[0]


def auc_ci(labels: np.ndarray, scores: np.ndarray, rng: np.random.Generator, n: int = 2000):
    from sklearn.metrics import roc_auc_score

    labels, scores = np.asarray(labels), np.asarray(scores, float)
    if len(set(labels.tolist())) < 2:
        return float("nan"), float("nan"), float("nan")
    auc = roc_auc_score(labels, scores)
    boot = []
    for _ in range(n):
        idx = rng.integers(0, len(labels), len(labels))
        if len(set(labels[idx].tolist())) == 2:
            boot.append(roc_auc_score(labels[idx], scores[idx]))
    return float(auc), float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))


def figures(labels, scores, threshold: float, rng) -> dict:
    from sklearn.metrics import average_precision_score

    labels = np.asarray(labels, int)
    scores = np.asarray(scores, float)
    called = scores >= threshold
    tp = int((called & (labels == 1)).sum())
    fp = int((called & (labels == 0)).sum())
    fn = int((~called & (labels == 1)).sum())
    auc, lo, hi = auc_ci(labels, scores, rng)
    precision = tp / max(tp + fp, 1)
    recall = tp / max(tp + fn, 1)
    return {"n": len(labels), "positives": int(labels.sum()), "accuracy": float((called == (labels == 1)).mean()),
            "auc": auc, "auc_lo": lo, "auc_hi": hi, "precision": precision, "recall": recall,
            "f1": 2 * precision * recall / max(precision + recall, 1e-9),
            "ap": float(average_precision_score(labels, scores)) if labels.any() else float("nan")}


def decision_curve(labels, scores, thresholds=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)) -> list[dict]:
    """Net benefit (Vickers & Elkin): TP/n - FP/n * pt / (1 - pt), for the model, treat-all, treat-none."""
    labels, scores = np.asarray(labels, int), np.asarray(scores, float)
    n, prevalence = len(labels), float(np.mean(labels))
    out = []
    for pt in thresholds:
        called = scores >= pt
        tp, fp = float((called & (labels == 1)).sum()), float((called & (labels == 0)).sum())
        odds = pt / (1 - pt)
        out.append({"pt": pt, "model": tp / n - fp / n * odds, "treat_all": prevalence - (1 - prevalence) * odds,
                    "treat_none": 0.0})
    return out


def run_classify(task: str, data: Path, out: Path, weights: str | None, extra: list[str],
                 sequences: list[str] | None = None) -> float:
    """`cmbdet classify` on the set's scans (baseline CTs / MRI sequences, truth maps excluded); with
    ``sequences``, only those of each subject's MRI sequences are given (a site that lacks the others)."""
    subjects = phantom_subjects(data, task)
    listing = out.parent / f"{out.name}_inputs.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    listing.write_text("".join(f"{p.resolve()}\n" for s in subjects for name, p in s.files.items()
                               if sequences is None or name in sequences))
    args = ["classify", str(listing), "--task", task, "-o", str(out), "--compare", "--no-pictures", "--quiet",
            "--modality", "ct" if task == "expansion" else "mri", *extra]
    if weights:
        args += ["--weights", weights]
    started = time.perf_counter()
    code = cmbdet_main(args)
    seconds = time.perf_counter() - started
    if code not in (0, 1):
        raise SystemExit(f"cmbdet classify exited {code}")
    return seconds / max(len(subjects), 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", required=True, choices=("hbm", "expansion"))
    parser.add_argument("--data", required=True, help="phantom set (truth.csv) the models never saw")
    parser.add_argument("--out", required=True, help="classify output folder (reused when complete: resume)")
    parser.add_argument("--weights", help="classifier weights (default: shipped)")
    parser.add_argument("--ssl-train", nargs="+", help="expansion: training phantom set(s) for the SSL-gain "
                        "experiment (the model's own training sets)")
    parser.add_argument("--cache", help="feature cache for --ssl-train (and this set's lesions)")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--label-fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1, help="cmbdet classify --workers (seconds per subject "
                        "are then wall time shared by the workers)")
    parser.add_argument("--sequences", nargs="+", choices=SEQUENCES, help="hbm: give classify only these "
                        "sequences of each subject (the figures of a site without the others); default: all")
    args = parser.parse_args(argv)
    if args.sequences and args.task != "hbm":
        parser.error("--sequences is for --task hbm (expansion reads one CT)")
    rng = np.random.default_rng(args.seed)
    data, out = Path(args.data), Path(args.out)
    seconds = run_classify(args.task, data, out, args.weights, ["--workers", str(args.workers)], args.sequences)
    if args.sequences:
        print(f"sequences given: {', '.join(args.sequences)} (the subject's others left out)")
    subjects = {s.subject: s for s in phantom_subjects(data, args.task)}
    classified = _rows(out / "classification.csv")
    counts = {r["subject"]: r for r in _rows(out / "counts.csv")}
    threshold = float(next((r["threshold"] for r in classified), 0.5))
    positive = "hbm" if args.task == "hbm" else "expands"

    # --- per subject ---
    subject_truth, subject_score, subject_called = [], [], []
    for name, subject in subjects.items():
        if not subject.truth_rows:
            continue  # lesion-free: nothing to classify
        largest = max(subject.truth_rows.values(), key=lambda r: float(r.get("volume_ml") or 0))
        label = int(largest["kind"] == "hbm") if args.task == "hbm" else int(float(largest["expands"]))
        row = next((r for r in classified if truth_subject(r["subject"]) == truth_subject(name)
                    and not r["lesion_id"]), None)
        score = float(row["probability"]) if row and row["probability"] != "" else 0.0
        subject_truth.append(label)
        subject_score.append(score)
        subject_called.append(row is not None and row["label"] == positive)
    errors = sum(1 for r in counts.values() if r["status"] != "ok")
    if errors == len(counts):
        raise SystemExit(f"every input failed, e.g. {next(iter(counts.values()))['message']}")
    print(f"task {args.task}: {data.name}, {len(subjects)} scans, {len(subject_truth)} with lesions "
          f"({sum(subject_truth)} {positive}), classify errors {errors}, {seconds:.1f} s/subject wall "
          f"(localizer + classifier), threshold {threshold:.3f} (stored with the weights)")
    per_subject = figures(subject_truth, subject_score, threshold, rng)
    _print_table("per subject (end to end)", {"shipped": per_subject})

    # --- per lesion, every model in the weights ---
    compare = _rows(out / "classification_compare.csv")
    lesion_rows: dict[str, list[tuple[int, dict]]] = {}
    for name, subject in subjects.items():
        folder = next((f for f in out.iterdir() if f.is_dir() and truth_subject(f.name) == truth_subject(name)), None)
        if folder is None:
            continue
        label_map = folder / f"{folder.name}_desc-hemorrhage_dseg.nii.gz"
        _, _, found = read_truth_map(label_map)
        truth_labels, truth_affine, truth = read_truth_map(subject.truth_map)
        matched = match_reports(np.array([f.xyz_mm for f in found]).reshape(-1, 3), truth_labels, truth_affine, truth)
        for p, t in matched.items():
            row = subject.truth_rows.get(truth[t].lesion_id)
            if row is None:
                continue
            label = int(row["kind"] == "hbm") if args.task == "hbm" else int(float(row["expands"]))
            lesion_rows.setdefault(folder.name, []).append((found[p].lesion_id, {"label": label}))
    by_model: dict[str, tuple[list, list]] = {}
    for r in compare:
        for lesion_id, info in lesion_rows.get(r["subject"], []):
            if str(lesion_id) == r["lesion_id"]:
                labels, scores = by_model.setdefault(r["model"], ([], []))
                labels.append(info["label"])
                scores.append(float(r["probability"]))
    _print_table("per lesion (localized lesions matched to truth)",
                 {m: figures(lab, sc, threshold, rng) for m, (lab, sc) in by_model.items()})

    if args.task == "expansion":
        # the same subjects under each model (subject row = largest hematoma)
        volumes = _lesion_volumes(out)
        per_model = {}
        for model in sorted({r["model"] for r in compare}):
            labels, scores = [], []
            for name, subject in subjects.items():
                if not subject.truth_rows:
                    continue
                largest = max(subject.truth_rows.values(), key=lambda r: float(r.get("volume_ml") or 0))
                folder = next((k for k in volumes if truth_subject(k) == truth_subject(name)), None)
                score = 0.0
                if folder is not None and volumes[folder]:
                    lesion_id = max(volumes[folder], key=volumes[folder].get)
                    score = next(float(r["probability"]) for r in compare if r["subject"] == folder
                                 and r["model"] == model and r["lesion_id"] == str(lesion_id))
                labels.append(int(float(largest["expands"])))
                scores.append(score)
            per_model[model] = figures(labels, scores, threshold, rng)
        ceiling_labels, ceiling_scores = [], []
        for subject in subjects.values():
            if subject.truth_rows:
                largest = max(subject.truth_rows.values(), key=lambda r: float(r.get("volume_ml") or 0))
                ceiling_labels.append(int(float(largest["expands"])))
                ceiling_scores.append(float(largest["p_expand"]))
        per_model["generator ceiling"] = figures(ceiling_labels, ceiling_scores, 0.5, rng)
        _print_table("per subject, by model (largest hematoma)", per_model)
        fused = per_model.get("fused", {})
        ceiling = per_model["generator ceiling"]["auc"]
        print(f"fused AUC {fused.get('auc', float('nan')):.3f} vs ceiling {ceiling:.3f}: gap "
              f"{ceiling - fused.get('auc', float('nan')):.3f}; fused >= deep: "
              f"{fused.get('auc', 0) >= per_model.get('deep', {}).get('auc', 1)}, fused >= radiomics: "
              f"{fused.get('auc', 0) >= per_model.get('radiomics', {}).get('auc', 1)}")
        print("\ndecision curve (per subject, fused; net benefit):")
        print(f"{'pt':>5} {'model':>8} {'treat all':>10} {'treat none':>11}")
        for row in decision_curve(subject_truth, subject_score):
            print(f"{row['pt']:>5.2f} {row['model']:>8.3f} {row['treat_all']:>10.3f} {row['treat_none']:>11.3f}")
        if args.ssl_train:
            ssl_gain(args, data, rng)
    return 0


def _lesion_volumes(out: Path) -> dict[str, dict[int, float]]:
    """Subject folder -> lesion id -> volume (mL), from the label maps classify wrote."""
    volumes = {}
    for folder in out.iterdir():
        label_map = folder / f"{folder.name}_desc-hemorrhage_dseg.nii.gz"
        if folder.is_dir() and label_map.is_file():
            _, _, found = read_truth_map(label_map)
            volumes[folder.name] = {f.lesion_id: f.volume_ml for f in found}
    return volumes


def _print_table(title: str, table: dict[str, dict]) -> None:
    print(f"\n{title}:")
    print(f"{'model':<18} {'n':>4} {'pos':>4} {'acc':>6} {'AUC':>6} {'95% CI':>14} {'prec':>6} {'recall':>6} "
          f"{'F1':>6} {'AP':>6}")
    for name, f in table.items():
        interval = f"[{f['auc_lo']:.3f}, {f['auc_hi']:.3f}]"
        print(f"{name:<18} {f['n']:>4} {f['positives']:>4} {f['accuracy']:>6.3f} {f['auc']:>6.3f} "
              f"{interval:>14} {f['precision']:>6.3f} {f['recall']:>6.3f} "
              f"{f['f1']:>6.3f} {f['ap']:>6.3f}")


def ssl_gain(args, data: Path, rng: np.random.Generator) -> None:
    """CNN-alone AUC on this set's subjects (largest localized lesion matched to truth), trained on
    ``label_fraction`` of the training set's subjects' labels, from scratch vs from SimSiam."""
    from scipy import stats
    from sklearn.metrics import roc_auc_score

    from cmbdet.classify.samples import build_sample_set
    from cmbdet.classify.train import cnn_logits, pretrain_simsiam, split_subjects, subject_scores, train_cnn
    from cmbdet.lesions.infer import load_lesion_model

    localizer = load_lesion_model()
    # perturbed=True: the cache entries `cmbdet train classifier --task expansion` wrote (same crops; the
    # re-acquisition's radiomics they also hold are not used here)
    train = build_sample_set("expansion", args.ssl_train, ct_model=localizer, cache_dir=args.cache, perturbed=True)
    test = build_sample_set("expansion", [data], ct_model=localizer, cache_dir=args.cache)
    test = test.subset(test.labels >= 0)
    labelled = train.subset(train.labels >= 0)
    print(f"\nSSL gain: SimSiam on {len(train)} unlabelled training crops; CNN alone fitted on "
          f"{args.label_fraction:.0%} of {len(labelled.subject_labels)} training subjects' labels; scored on "
          f"{len(test.subject_labels)} test subjects")
    encoder = pretrain_simsiam(train.crops, np.random.default_rng(args.seed), task="expansion")
    gains = []
    for seed in range(args.seeds):
        seed_rng = np.random.default_rng(1000 + seed)
        _, few = split_subjects(labelled, seed_rng, args.label_fraction)
        part = labelled.of_subjects(few)
        aucs = []
        for state in (None, encoder.state_dict()):
            net = train_cnn(part.crops, part.labels, np.random.default_rng(2000 + seed), encoder_state=state)
            scores = subject_scores(test, cnn_logits(net, test.crops), "expansion")
            names = sorted(s for s in scores if s in test.subject_labels)
            aucs.append(roc_auc_score([test.subject_labels[s] for s in names], [scores[s] for s in names]))
        gains.append(aucs[1] - aucs[0])
        print(f"seed {seed}: {len(part)} labelled crops; AUC scratch {aucs[0]:.3f}, SimSiam {aucs[1]:.3f}, "
              f"gain {aucs[1] - aucs[0]:+.3f}")
    gains = np.array(gains)
    half = stats.t.ppf(0.975, len(gains) - 1) * gains.std(ddof=1) / np.sqrt(len(gains)) if len(gains) > 1 else np.nan
    print(f"SSL gain at {args.label_fraction:.0%} labels: mean {gains.mean():+.3f} AUC, 95% CI "
          f"[{gains.mean() - half:+.3f}, {gains.mean() + half:+.3f}] over {len(gains)} seeds")


if __name__ == "__main__":
    sys.exit(main())
