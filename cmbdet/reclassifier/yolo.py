"""The only module that imports ultralytics: lazily, and only after making it offline-safe.

Before the first import of ultralytics, `offline_ultralytics` sets ``YOLO_OFFLINE=1`` (no online
checks, no telemetry) and points ``YOLO_CONFIG_DIR`` at a private temporary folder (never the user's
home or working directory) seeded with a font copied from matplotlib's DejaVuSans, so that
ultralytics' font check finds "Arial.ttf" locally instead of downloading it. Models are built from
the packaged ``yolo11-cls.yaml`` (no ``.pt`` from a hub) and trained with ``amp=False`` (its AMP check
would download weights) and ``plots=False``.

The classifier used at inference is rebuilt from its yaml and a safetensors state dict: no pickle.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

#: The ultralytics model definition used for stage 2 (packaged with ultralytics; scale n).
MODEL_YAML = "yolo11n-cls.yaml"


@functools.lru_cache(maxsize=1)
def offline_ultralytics():
    """Configure the environment for offline use, then import and return the ``ultralytics`` module."""
    import sys

    if "ultralytics" not in sys.modules:
        config_dir = Path(tempfile.mkdtemp(prefix="cmbdet-ultralytics-"))
        atexit.register(shutil.rmtree, config_dir, ignore_errors=True)
        _seed_fonts(config_dir)
        os.environ["YOLO_CONFIG_DIR"] = str(config_dir)
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ.setdefault("YOLO_VERBOSE", "False")
    import ultralytics
    from ultralytics.utils import SETTINGS

    SETTINGS.update({"sync": False})  # no usage events, even if a settings file says otherwise
    return ultralytics


def _seed_fonts(config_dir: Path) -> None:
    from matplotlib import get_data_path

    dejavu = Path(get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        shutil.copyfile(dejavu, config_dir / name)


def build_classifier(nc: int = 2, yaml: str | dict = MODEL_YAML) -> nn.Module:
    """A fresh ultralytics classification model (random weights) from its yaml."""
    offline_ultralytics()
    from ultralytics.nn.tasks import ClassificationModel

    return ClassificationModel(cfg=yaml, nc=nc, verbose=False)


def train_classifier(
    dataset_dir: Path, workdir: Path, *, epochs: int, imgsz: int, batch: int, seed: int,
    device: str = "cpu", workers: int = 2, patience: int = 100,
) -> tuple[nn.Module, dict]:
    """Train with ultralytics' classification trainer on an image folder (train/, val/ with one
    sub-folder per class). Returns the best model (by validation) and its yaml dict."""
    offline_ultralytics()
    from ultralytics import YOLO

    model = YOLO(MODEL_YAML, task="classify")
    model.train(
        data=str(dataset_dir), epochs=epochs, imgsz=imgsz, batch=batch, seed=seed, deterministic=True,
        device=device, workers=workers, amp=False, plots=False, pretrained=False, project=str(workdir),
        name="train", exist_ok=True, verbose=False, patience=patience, val=True,
        # Augmentation that fits 2.5-D MRI patches: mild zoom (0.9-1 of the area), flips, brightness and
        # contrast jitter; no hue/saturation (the channels are planes, not colours), no erasing.
        scale=0.1, fliplr=0.5, flipud=0.5, hsv_h=0.0, hsv_s=0.0, hsv_v=0.25, erasing=0.0, auto_augment=None,
        optimizer="AdamW", lr0=0.002, warmup_epochs=1, cos_lr=True, dropout=0.1,
    )
    best = Path(model.trainer.best)
    trained = YOLO(str(best), task="classify") if best.exists() else model
    net = trained.model.float().eval()
    return net, dict(net.yaml)


def classifier_from_state(state: dict[str, torch.Tensor], yaml: dict, nc: int = 2) -> nn.Module:
    """Rebuild a trained classifier from its yaml dict and state dict (no pickle involved)."""
    net = build_classifier(nc=nc, yaml=dict(yaml))
    net.load_state_dict(state)
    return net.float().eval()
