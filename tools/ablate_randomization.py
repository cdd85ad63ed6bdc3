#!/usr/bin/env python
"""What each domain-randomization ingredient buys the stage-2 shape model, on the VALIDATION family.

    # the five ingredients of revision 1 (the README table; --full is a revision-1 set, `--without resolution`)
    for X in tissue vessels cmb_profile noise swi_mask; do
        cmbdet phantom -o DATA/rand-without-$X -n 40 --seed S_X --family randomized \
            --without $X,resolution,cmb_size,dipole_bloom --no-montage
    done
    python tools/ablate_randomization.py --base DATA/train-classic-s103 --full DATA/train-rand-s101 \
        --without DATA/rand-without-* --val DATA/val-beta-s7101 DATA/val-beta-s7102 --cache WORK/shape --n 40
    # `resolution` (revision 2): --full a revision-2 set, --without the same seed with `--without resolution`

One shape model per training set: the ``--base`` scans plus ``--n`` scans of the randomized family
with every ingredient (``--full``) or with one switched off (each ``--without`` folder, named
``...-without-INGREDIENT``). Stage 1 and the YOLO classifier are the shipped ones, and so is the
combination: 30 candidates and a shape share of 0.75, with the stage-1 weight and threshold chosen
per model on the validation scans (`choose_stage2_point`). Prints the ROC AUC among the first 60
candidates per validation scan (microbleed vs clear mimic) and the F1, sensitivity and FP/subject at
each model's validation operating point. Per-scan measurements are cached in ``--cache`` (the
format of tools/train_shape_stage.py, so its cache can be shared); each randomized set in a folder
of its own there, so that sets drawn with one seed (e.g. with and without an ingredient) can be
compared.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", nargs="+", required=True, help="training folders every model gets")
    parser.add_argument("--full", required=True, help="randomized-family folder with every ingredient")
    parser.add_argument("--without", nargs="+", required=True, help="randomized folders with one ingredient off")
    parser.add_argument("--val", nargs="+", required=True, help="validation family folders")
    parser.add_argument("--cache", required=True)
    parser.add_argument("--n", type=int, default=40, help="randomized scans per training set")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from sklearn.metrics import roc_auc_score

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from train_shape_stage import _samples

    from cmbdet.proposer.infer import load_proposer
    from cmbdet.reclassifier.infer import load_reclassifier
    from cmbdet.reclassifier.shape_train import choose_stage2_point, train_shape_model
    from cmbdet.training_data import read_labelled_set
    from cmbdet.weights import shipped_weights

    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    proposer = load_proposer(None)
    reclassifier = load_reclassifier(shipped_weights("reclassifier.safetensors"))

    def measured(folders: list[str], limit: int | None = None, yolo: bool = False, own_cache: bool = False):
        # own_cache: a randomized set's subjects share names with the other sets of its seed
        where = cache / Path(folders[0]).name if own_cache else cache
        where.mkdir(parents=True, exist_ok=True)
        scans = [s for d in folders for s in read_labelled_set(d)][:limit]
        pairs = [_samples(s, proposer, reclassifier, 150, where, yolo) for s in scans]
        return [p[0] for p in pairs], [p[1] for p in pairs]

    base, _ = measured(args.base)
    val, val_yolo = measured(args.val, yolo=True)
    sets = {"every ingredient": args.full} | {
        f"without {Path(d).name.rsplit('without-', 1)[-1]}": d for d in args.without}
    print(f"validation: {len(val)} scans; every model: {len(base)} base scans + {args.n} randomized scans")
    print("| randomized scans | candidate ROC AUC | F1 | sensitivity | FP/subject |")
    print("|---|---|---|---|---|")
    for name, folder in sets.items():
        train, _ = measured([folder], args.n, own_cache=True)
        model = train_shape_model(base + train, seed=args.seed)
        keep = [(s.is_cmb | s.clear_mimic)[:60] for s in val]
        truth = np.concatenate([s.is_cmb[:60][k] for s, k in zip(val, keep, strict=True)])
        prob = np.concatenate([model.probability(s.candidate_features[:60])[k] for s, k in zip(val, keep, strict=True)])
        best, _ = choose_stage2_point(val, val_yolo, model, counts=(30,), shape_weights=(0.75,))
        print(f"| {name} | {roc_auc_score(truth, prob):.3f} | {best['f1']:.3f} | {best['sensitivity']:.3f} | "
              f"{best['fp_per_subject']:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
