#!/usr/bin/env python
"""Stage 2 as YOLO classification or YOLO detection? Trains both on the same 2.5-D patch images with
the same budget and compares them on the same held-out patches.

    cmbdet train reclassifier ... --workdir WORK      # keeps WORK/patches/{train,val}/{cmb,mimic}/*.png
    python tools/compare_stage2_task.py --patches WORK/patches --epochs 5 --max-train 4000

Classification: ultralytics' classify trainer on the image folders (what cmbdet ships).
Detection: the same images as a detection set; a CMB patch is labelled with one box of
``--box-mm`` centred on the patch (stage 1 centres candidates on the lesion), a mimic patch has no
box (background). Its CMB probability for a patch is the highest confidence of a box whose centre
lies within 3 mm of the patch centre. Both are built from the packaged yaml (scale n), offline, with
amp=False and plots=False. Prints ROC AUC, best F1 and accuracy at 0.5 on the validation patches,
training seconds and inference milliseconds per patch.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _sample(files: list[Path], limit: int, rng: np.random.Generator) -> list[Path]:
    return files if len(files) <= limit else [files[i] for i in sorted(rng.choice(len(files), limit, replace=False))]


def _split_files(patches: Path, split: str, limit: int, rng: np.random.Generator) -> dict[str, list[Path]]:
    files = {name: sorted((patches / split / name).glob("*.png")) for name in ("cmb", "mimic")}
    total = sum(len(v) for v in files.values())
    if total > limit:  # keep the class ratio
        files = {k: _sample(v, max(1, int(limit * len(v) / total)), rng) for k, v in files.items()}
    return files


def _roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    from scipy.stats import rankdata

    ranks = rankdata(scores)  # ties share their mean rank
    pos = labels.sum()
    neg = len(labels) - pos
    return float((ranks[labels].sum() - pos * (pos + 1) / 2) / (pos * neg))


def _figures(scores: np.ndarray, labels: np.ndarray) -> dict:
    best_f1 = 0.0
    for t in np.linspace(0.05, 0.95, 19):
        pred = scores >= t
        tp = int((pred & labels).sum())
        if tp:
            precision, recall = tp / pred.sum(), tp / labels.sum()
            best_f1 = max(best_f1, 2 * precision * recall / (precision + recall))
    return {"auc": _roc_auc(scores, labels), "best_f1": best_f1,
            "accuracy_at_0.5": float(((scores >= 0.5) == labels).mean())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patches", required=True, type=Path, help="folder with train/ and val/ class folders")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--max-train", type=int, default=4000, help="training images used (class ratio kept)")
    parser.add_argument("--max-val", type=int, default=2000)
    parser.add_argument("--box-mm", type=float, default=5.0)
    parser.add_argument("--fov-mm", type=float, default=32.0, help="field of view the patches were made with")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)

    import torch

    from cmbdet.reclassifier.yolo import offline_ultralytics, train_classifier

    torch.set_num_threads(2)
    offline_ultralytics()
    from ultralytics import YOLO

    rng = np.random.default_rng(args.seed)
    train = _split_files(args.patches, "train", args.max_train, rng)
    val = _split_files(args.patches, "val", args.max_val, rng)
    val_files = val["cmb"] + val["mimic"]
    labels = np.array([True] * len(val["cmb"]) + [False] * len(val["mimic"]))
    results = {}
    with tempfile.TemporaryDirectory(prefix="cmbdet-compare-") as tmp:
        root = Path(tmp)
        # The same images, as a classification folder and as a detection set.
        for split, files in (("train", train), ("val", val)):
            for name, paths in files.items():
                (root / "cls" / split / name).mkdir(parents=True)
                for p in paths:
                    shutil.copy(p, root / "cls" / split / name / p.name)
                    image_dir, label_dir = root / "det" / "images" / split, root / "det" / "labels" / split
                    image_dir.mkdir(parents=True, exist_ok=True)
                    label_dir.mkdir(parents=True, exist_ok=True)
                    shutil.copy(p, image_dir / f"{name}_{p.name}")
                    if name == "cmb":
                        side = args.box_mm / args.fov_mm
                        (label_dir / f"{name}_{p.stem}.txt").write_text(f"0 0.5 0.5 {side:.4f} {side:.4f}\n")
        (root / "det" / "data.yaml").write_text(
            f"path: {root / 'det'}\ntrain: images/train\nval: images/val\nnames:\n  0: cmb\n")
        print(f"train {({k: len(v) for k, v in train.items()})}, val {({k: len(v) for k, v in val.items()})}",
              file=sys.stderr)

        started = time.perf_counter()
        net, _ = train_classifier(root / "cls", root / "runs-cls", epochs=args.epochs, imgsz=64, batch=64,
                                  seed=args.seed)
        cls_seconds = time.perf_counter() - started
        from cmbdet.reclassifier.infer import CLASS_NAMES, Reclassifier, cmb_probability

        reclassifier = Reclassifier(net=net, yaml={})
        import cv2

        images = np.stack([cv2.imread(str(p)) for p in val_files])
        tick = time.perf_counter()
        cls_scores = cmb_probability(reclassifier, images, flips=False)
        cls_ms = 1000 * (time.perf_counter() - tick) / len(images)
        results["classification"] = {**_figures(cls_scores, labels), "train_seconds": round(cls_seconds),
                                     "ms_per_patch": cls_ms, "classes": list(CLASS_NAMES)}

        started = time.perf_counter()
        model = YOLO("yolo11n.yaml", task="detect")
        model.train(data=str(root / "det" / "data.yaml"), epochs=args.epochs, imgsz=64, batch=64, seed=args.seed,
                    deterministic=True, device="cpu", workers=2, amp=False, plots=False, pretrained=False,
                    project=str(root / "runs-det"), name="train", exist_ok=True, verbose=False, val=True,
                    mosaic=0.0, scale=0.1, translate=0.05, fliplr=0.5, flipud=0.5, hsv_h=0.0, hsv_s=0.0, hsv_v=0.25,
                    optimizer="AdamW", lr0=0.002, warmup_epochs=1, cos_lr=True)
        det_seconds = time.perf_counter() - started
        best = Path(model.trainer.best)
        detector = YOLO(str(best), task="detect") if best.exists() else model
        centre_px, reach_px = 32.0, 3.0 / args.fov_mm * 64
        tick = time.perf_counter()
        det_scores = []
        for start in range(0, len(val_files), 256):
            for result in detector.predict([str(p) for p in val_files[start:start + 256]], imgsz=64, conf=0.001,
                                           device="cpu", verbose=False):
                boxes = result.boxes
                near = np.linalg.norm(boxes.xywh[:, :2].numpy() - centre_px, axis=1) <= reach_px
                det_scores.append(float(boxes.conf.numpy()[near].max()) if near.any() else 0.0)
        det_ms = 1000 * (time.perf_counter() - tick) / len(val_files)
        results["detection"] = {**_figures(np.array(det_scores), labels), "train_seconds": round(det_seconds),
                                "ms_per_patch": det_ms}

    print(f"{'task':<15} {'AUC':>6} {'best F1':>8} {'acc@0.5':>8} {'train s':>8} {'ms/patch':>9}")
    for task, r in results.items():
        print(f"{task:<15} {r['auc']:>6.3f} {r['best_f1']:>8.3f} {r['accuracy_at_0.5']:>8.3f} "
              f"{r['train_seconds']:>8d} {r['ms_per_patch']:>9.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                               "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
