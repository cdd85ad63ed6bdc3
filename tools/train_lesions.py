"""Train the CT (or MRI) lesion network on phantom folders and store it with its operating point.

    python tools/train_lesions.py --data DIR [DIR ...] -o weights/lesions_ct.safetensors \
        [--steps 600] [--spacing-mm 2] [--val-fraction 0.1] [--seed 0] [--cache DIR]

Folders hold ``*_ct.nii.gz`` with ``*_desc-truth_dseg.nii.gz`` beside them (`cmbdet phantom --kind ct`).
A fraction of the scans is held out; the probability threshold with the best working-grid Dice on
them is stored in the weights. Prints the loss every 50 steps and the validation Dice per threshold.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from cmbdet.lesions.infer import load_lesion_model
from cmbdet.lesions.train import (
    ct_training_pairs,
    mri_training_groups,
    prepare_ct_scan,
    prepare_mri_scan,
    train_lesion_model,
    working_dice,
)


def describe_lesion_set(folder: str | Path) -> dict:
    """What a phantom folder holds, for the weights' metadata — never its path: the folder's name, and
    from its truth.csv the families or sites, the phantom seeds (from the subject ids) and counts."""
    import csv
    import re

    folder = Path(folder)
    out: dict = {"name": folder.name}
    truth = folder / "truth.csv"
    if truth.exists():
        with open(truth, newline="") as handle:
            rows = list(csv.DictReader(handle))
        subjects = sorted({r["subject"] for r in rows})
        out["families"] = sorted({r.get("family") or r.get("site") or "" for r in rows} - {""})
        # phantom ids are sub-<family><seed>x<index>: the part before the index names family and seed
        out["subject_ids"] = sorted({m.group(1) + "x*" for s in subjects if (m := re.match(r"(.+?)x\d+$", s))})
        out["n_subjects_in_truth"] = len(subjects)
        out["n_lesions_in_truth"] = sum(1 for r in rows if r.get("lesion_id"))
    out["n_images"] = len([p for p in folder.glob("*.nii.gz") if "desc-truth" not in p.name])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", required=True)
    parser.add_argument("-o", "--output", required=True)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--patch", type=int, default=32)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (one-cycle)")
    parser.add_argument("--modality", choices=("ct", "mri"), default="ct")
    parser.add_argument("--spacing-mm", type=float, default=2.0, help="working grid of the network (mm)")
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--max-scans", type=int, default=0, help="use at most this many scans (0: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache", help="folder for the prepared working-grid arrays")
    parser.add_argument("--init", help="continue training from these lesion weights")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    listing = ct_training_pairs if args.modality == "ct" else mri_training_groups
    prepare = prepare_ct_scan if args.modality == "ct" else prepare_mri_scan
    pairs = [p for folder in args.data for p in listing(folder)]
    if args.max_scans:
        pairs = pairs[: args.max_scans]
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(pairs))
    n_val = max(1, int(round(args.val_fraction * len(pairs))))
    val_pairs = [pairs[i] for i in order[:n_val]]
    train_pairs = [pairs[i] for i in order[n_val:]]
    cache = Path(args.cache) if args.cache else None
    print(f"preparing {len(train_pairs)} training and {len(val_pairs)} validation scans", file=sys.stderr)
    train = [prepare(a, b, args.spacing_mm, cache=cache) for a, b in train_pairs]
    val = [prepare(a, b, args.spacing_mm, cache=cache) for a, b in val_pairs]
    init = load_lesion_model(args.init) if args.init else None
    model = train_lesion_model(train, rng, steps=args.steps, batch_size=args.batch_size, patch=args.patch,
                               width=args.width, spacing_mm=args.spacing_mm, init=init, lr=args.lr,
                               log=lambda line: print(line, file=sys.stderr, flush=True))
    dice = working_dice(model, val)
    best = max(dice, key=dice.get)
    print("validation Dice (working grid) by threshold: " + ", ".join(f"{t:g}: {d:.3f}" for t, d in dice.items()))
    model.threshold = float(best)
    model.metadata.update(seed=args.seed, lr=args.lr, data=[describe_lesion_set(d) for d in args.data],
                          n_train=len(train),
                          n_val=len(val),
                          val_dice=round(dice[best], 4), val_scans=[p[1].name for p in val_pairs])
    if init is not None:  # what the starting weights were trained on, so the file says all it has seen
        model.metadata["init"] = {k: init.metadata[k] for k in ("steps", "data", "n_train", "seed", "init")
                                  if k in init.metadata}
    model.save(args.output)
    print(f"wrote {args.output} (threshold {best:g})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
