"""Issue 11's side-by-side: 2.5-D ultralytics YOLO segmentation against the shipped 3-D U-Net (CT).

    python tools/compare_lesion_yolo_seg.py --train DIR [DIR ...] --val DIR --workdir W \
        [--epochs 12] [--imgsz 128] [--max-train-scans 0] [--conf 0.1 0.25 0.5] [--seed 0] [--cache DIR]

The YOLO model is ultralytics' ``yolo11n-seg.yaml`` (built from its yaml, no pretrained weights,
offline: `cmbdet.reclassifier.yolo.offline_ultralytics`), trained on axial slices of the same 2 mm
working grid the U-Net reads. Each image holds three slices (k-1, k, k+1: 2.5-D) in the blood window
(0..100 HU -> 0..255) inside the cranial cavity; the labels are the truth mask's connected pieces in
slice k as polygons. Slices with blood are all kept, blood-free slices of the brain at one in four.
A tenth of the training scans is ultralytics' own validation split (its early stopping); ``--val``
is never trained on.

On ``--val`` both models go through the same CT steps after the blood probability
(`cmbdet.lesions.infer.ct_lesions_from_probability`: grouping, density refinement, calcification
filter, with the shipped operating point); YOLO's probability on a slice is the largest confidence of
the predicted instance masks covering each pixel, kept above each ``--conf``. Printed: the figures of
`tools/bench_lesions.py` for the U-Net and for YOLO at each confidence. These are validation figures:
the confidence is chosen here, so YOLO's best row is optimistic.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_lesions import score_subject, summarize, truth_lesions  # noqa: E402

from cmbdet.lesions.ct import ct_working_image, load_ct_volume  # noqa: E402
from cmbdet.lesions.infer import (  # noqa: E402
    ct_lesions_from_probability,
    load_lesion_model,
    localize_lesions,
)
from cmbdet.lesions.train import ct_training_pairs, prepare_ct_scan  # noqa: E402
from cmbdet.reclassifier.yolo import offline_ultralytics  # noqa: E402

SEG_YAML = "yolo11n-seg.yaml"


def slice_images(hu: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(K, I, J, 3) uint8: for each axial slice k, slices k-1, k, k+1 in the blood window, brain only."""
    window = (np.clip(hu, 0.0, 100.0) * 2.55 * mask).astype(np.uint8)
    padded = np.concatenate([window[:, :, :1], window, window[:, :, -1:]], axis=2)
    return np.stack([padded[:, :, k:k + 3] for k in range(hu.shape[2])])


def polygons(blood_slice: np.ndarray) -> list[np.ndarray]:
    """Outer contours of the blood pieces of one slice, (N, 2) as (x = column, y = row) normalized."""
    height, width = blood_slice.shape
    contours, _ = cv2.findContours(blood_slice.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    out = []
    for contour in contours:
        points = contour.reshape(-1, 2).astype(float)
        if len(points) < 3:  # a piece of one or two pixels: its box corners instead
            x0, y0 = points.min(0) - 0.5
            x1, y1 = points.max(0) + 0.5
            points = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
        out.append(points / [width, height])
    return out


def write_dataset(pairs: list[tuple[Path, Path]], folder: Path, cache: Path, rng: np.random.Generator) -> Path:
    """Images and YOLO polygon labels from labelled CTs; returns the dataset yaml."""
    order = rng.permutation(len(pairs))
    n_val = max(1, len(pairs) // 10)
    counts = {"train": 0, "val": 0}
    for rank, index in enumerate(order):
        split = "val" if rank < n_val else "train"
        image_path, truth_path = pairs[index]
        scan = prepare_ct_scan(image_path, truth_path, 2.0, cache)
        images = slice_images(scan.hu, scan.mask)
        blood = scan.blood > 0.5
        for k in range(images.shape[0]):
            has_blood = bool(blood[:, :, k].any())
            if not scan.mask[:, :, k].any() or (not has_blood and rng.random() > 0.25):
                continue
            stem = f"{image_path.name.replace('.nii.gz', '')}_k{k:03d}"
            (folder / "images" / split).mkdir(parents=True, exist_ok=True)
            (folder / "labels" / split).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(folder / "images" / split / f"{stem}.png"), images[k])
            lines = ["0 " + " ".join(f"{v:.5f}" for v in poly.reshape(-1)) for poly in polygons(blood[:, :, k])]
            (folder / "labels" / split / f"{stem}.txt").write_text("\n".join(lines))
            counts[split] += 1
    print(f"dataset: {counts['train']} training and {counts['val']} validation slices", file=sys.stderr)
    data_yaml = folder / "data.yaml"
    data_yaml.write_text(f"path: {folder}\ntrain: images/train\nval: images/val\nnames:\n  0: blood\n")
    return data_yaml


def train_segmenter(data_yaml: Path, workdir: Path, *, epochs: int, imgsz: int, seed: int):
    offline_ultralytics()
    from ultralytics import YOLO

    model = YOLO(SEG_YAML, task="segment")
    model.train(data=str(data_yaml), epochs=epochs, imgsz=imgsz, batch=16, seed=seed, deterministic=True,
                device="cpu", workers=2, amp=False, plots=False, pretrained=False, project=str(workdir),
                name="seg", exist_ok=True, verbose=False, val=True, optimizer="AdamW", lr0=0.002,
                # CT slices: flips and mild scale, no colour jitter (the channels are slices)
                hsv_h=0.0, hsv_s=0.0, hsv_v=0.0, fliplr=0.5, flipud=0.0, scale=0.2, degrees=10.0, mosaic=0.5,
                erasing=0.0)
    best = Path(model.trainer.best)
    return YOLO(str(best), task="segment") if best.exists() else model


def yolo_probability(model, hu: np.ndarray, mask: np.ndarray, imgsz: int, conf: float) -> np.ndarray:
    """(I, J, K) float32: per pixel the largest confidence among predicted masks covering it."""
    images = slice_images(hu, mask)
    prob = np.zeros(hu.shape, np.float32)
    slices = [k for k in range(hu.shape[2]) if mask[:, :, k].any()]
    for start in range(0, len(slices), 32):
        batch = slices[start:start + 32]
        results = model.predict([images[k] for k in batch], imgsz=imgsz, conf=conf, verbose=False,
                                retina_masks=True, device="cpu")
        for k, result in zip(batch, results, strict=True):
            if result.masks is None:
                continue
            masks = result.masks.data.cpu().numpy() > 0.5  # (N, I, J) at the input size
            scores = result.boxes.conf.cpu().numpy()
            for m, score in zip(masks, scores, strict=True):
                prob[:, :, k] = np.where(m, np.maximum(prob[:, :, k], score), prob[:, :, k])
    return prob


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", nargs="+", required=True)
    parser.add_argument("--val", required=True)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--imgsz", type=int, default=128)
    parser.add_argument("--max-train-scans", type=int, default=0, help="0: all")
    parser.add_argument("--conf", type=float, nargs="+", default=[0.1, 0.25, 0.5])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", help="prepared-scan cache of tools/train_lesions.py (default: WORKDIR/cache)")
    args = parser.parse_args(argv)
    workdir = Path(args.workdir)
    rng = np.random.default_rng(args.seed)
    pairs = [p for folder in args.train for p in ct_training_pairs(folder)]
    if args.max_train_scans:
        pairs = [pairs[i] for i in sorted(rng.choice(len(pairs), args.max_train_scans, replace=False))]
    data_yaml = workdir / "dataset" / "data.yaml"
    if not data_yaml.exists():
        data_yaml = write_dataset(pairs, workdir / "dataset", Path(args.cache or workdir / "cache"), rng)
    started = time.time()
    yolo = train_segmenter(data_yaml, workdir, epochs=args.epochs, imgsz=args.imgsz, seed=args.seed)
    print(f"trained yolo11n-seg on {len(pairs)} scans in {time.time() - started:.0f} s", file=sys.stderr)

    unet = load_lesion_model()
    methods = ["unet (shipped)"] + [f"yolo-seg conf {c:g}" for c in args.conf]
    rows: dict[str, list[dict]] = {m: [] for m in methods}
    for image_path, truth_path in ct_training_pairs(args.val):
        truth_labels, truth_image, truth = truth_lesions(truth_path)
        for method in methods:
            t0, c0 = time.perf_counter(), time.process_time()
            volume = load_ct_volume(image_path)
            if method.startswith("unet"):
                found = localize_lesions(volume, unet)
            else:
                work = ct_working_image(volume, unet.spacing_mm)
                prob = yolo_probability(yolo, work.hu, work.mask, args.imgsz, float(method.split()[-1]))
                found = ct_lesions_from_probability(volume, work, prob, _at_threshold(unet, 0.5))
            row = score_subject(volume.to_source_array(found.labels), found.xyz_mm, found.volume_ml, truth_labels,
                                truth_image, truth)
            row.update(seconds=time.perf_counter() - t0, cpu_seconds=time.process_time() - c0)
            rows[method].append(row)
        print(f"{image_path.name}: " + ", ".join(f"{m} tp {rows[m][-1]['tp']} fp {rows[m][-1]['fp']}"
                                                for m in methods), file=sys.stderr, flush=True)
    print(f"validation: {args.val} ({len(rows[methods[0]])} subjects); YOLO trained on {len(pairs)} scans, "
          f"{args.epochs} epochs, imgsz {args.imgsz}")
    print(f"{'method':<22} {'sens':>6} {'FP/subj':>8} {'Dice mean':>10} {'Dice median':>11} {'med |dV| mL':>12} "
          f"{'s/vol med':>9}")
    for method in methods:
        s = summarize(rows[method])
        print(f"{method:<22} {s['sensitivity']:>6.3f} {s['fp_per_subject']:>8.2f} {s['dice_mean'] or 0:>10.3f} "
              f"{s['dice_median'] or 0:>11.3f} {s['median_abs_volume_error_ml'] or 0:>12.2f} "
              f"{s['seconds_median']:>9.1f}")
    return 0


def _at_threshold(model, threshold: float):
    """A copy of the shipped operating point with another probability threshold (YOLO's probability
    is already a kept mask: 0.5 keeps exactly what it predicted)."""
    from dataclasses import replace

    return replace(model, threshold=threshold)


if __name__ == "__main__":
    raise SystemExit(main())
