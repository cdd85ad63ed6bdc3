"""Multi-echo magnitude: echo times and the combination that keeps susceptibility contrast.

A microbleed is visible because its field disturbance dephases the signal: the longer the echo time
(TE), the darker and larger it looks (blooming). A plain root-sum-of-squares of all echoes is
dominated by the bright, short echoes, in which a microbleed is barely visible. ``auto`` therefore
weights each echo by its contrast-to-noise for a small T2* change, ``w(TE) = TE * exp(-TE / T2*)``
(the optimum for a mono-exponential decay), with the brain's T2* fitted from the echoes themselves.

Echo times come from the JSON sidecar beside each file (BIDS / dcm2niix ``EchoTime``, seconds; a
value above 1 is read as milliseconds), or, if there is none, are assumed equally spaced — and the
note says so.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from cmbdet.errors import InputError

#: How echoes of a multi-echo series are combined (besides a 0-based echo index).
ECHO_CHOICES = ("auto", "rss", "first", "last")

_ECHO_IN_NAME = (re.compile(r"_echo-(\d+)(?=[_.])"), re.compile(r"_e(\d+)(?=(_[a-z]+)?\.nii)", re.IGNORECASE))


def sidecar_path(path: str | Path) -> Path:
    """``scan.nii.gz`` -> ``scan.json`` (BIDS and dcm2niix sidecar)."""
    path = Path(path)
    name = path.name
    for ext in (".nii.gz", ".nii"):
        if name.lower().endswith(ext):
            name = name[: -len(ext)]
            break
    return path.with_name(name + ".json")


def echo_times_ms(path: str | Path) -> list[float] | None:
    """Echo time(s) in ms from the JSON sidecar beside ``path`` (``EchoTime`` number or list, or
    ``EchoTimes``), or ``None`` when there is no sidecar or it does not say."""
    side = sidecar_path(path)
    if not side.is_file():
        return None
    try:
        meta = json.loads(side.read_text())
    except (OSError, ValueError):
        return None
    value = meta.get("EchoTime", meta.get("EchoTimes")) if isinstance(meta, dict) else None
    values = value if isinstance(value, list) else [value]
    try:
        times = [float(v) for v in values]
    except (TypeError, ValueError):
        return None
    if not times or not all(np.isfinite(times)) or min(times) <= 0:
        return None
    return [t * 1000.0 if t < 1.0 else t for t in times]  # BIDS stores seconds


def echo_index_from_name(path: str | Path) -> int | None:
    """The echo number written in a file name: BIDS ``_echo-2_``, dcm2niix ``_e2``; else ``None``."""
    name = Path(path).name
    for pattern in _ECHO_IN_NAME:
        match = pattern.search(name)
        if match:
            return int(match.group(1))
    return None


def combine_echoes(
    echoes: np.ndarray, choice: str | int, echo_times: list[float] | None, name: str
) -> tuple[np.ndarray, str]:
    """Combine (I, J, K, E) magnitude echoes into one (I, J, K) float32 image.

    ``choice``: ``auto`` (TE x exp(-TE/T2*) weights, see the module docstring), ``rss``
    (root-sum-of-squares), ``first``, ``last`` or a 0-based index. ``echo_times``: ms per echo, or
    ``None`` if unknown. Returns the image and a sentence for the user saying what was done.
    """
    n = echoes.shape[3]
    if choice == "auto":
        times, assumed = (echo_times, False) if echo_times is not None and len(echo_times) == n else (
            list(np.arange(1, n + 1, dtype=float)), True)
        weights, t2star = _contrast_weights(echoes, np.asarray(times, float))
        combined = np.tensordot(echoes.astype(np.float32), (weights / weights.sum()).astype(np.float32),
                                axes=([3], [0]))
        unit = "echo spacings" if assumed else "ms"
        why = ("no JSON sidecar with EchoTime" if echo_times is None else
               f"the sidecars give {len(echo_times)} echo time(s) for {n} echoes")
        told = (f"echo times unknown ({why}): assumed equally spaced; " if assumed else
                f"TE {', '.join(f'{t:g}' for t in times)} ms; ")
        message = (f"multi-echo input ({n} echoes): {told}combined for susceptibility contrast with weights "
                   f"TE*exp(-TE/T2*), T2* {t2star:.3g} {unit} fitted from the brain signal "
                   f"(relative weights {', '.join(f'{w:.2f}' for w in weights / weights.max())})")
        return np.ascontiguousarray(combined, dtype=np.float32), message
    if choice == "rss":
        combined = np.sqrt(np.sum(np.square(echoes, dtype=np.float64), axis=3)).astype(np.float32)
        return combined, f"multi-echo input ({n} echoes): root-sum-of-squares of all echoes used"
    if choice == "last":
        index = n - 1
    elif choice == "first":
        index = 0
    else:
        try:
            index = int(choice)
        except (TypeError, ValueError):
            raise InputError(name, f"unknown echo choice {choice!r} (use auto, rss, first, last or a 0-based "
                                   "index)") from None
        if not 0 <= index < n:
            raise InputError(name, f"echo {index} requested but the series has {n} echoes (0..{n - 1})")
    te = f" (TE {echo_times[index]:g} ms)" if echo_times is not None and len(echo_times) == n else ""
    return np.ascontiguousarray(echoes[..., index], dtype=np.float32), \
        f"multi-echo input ({n} echoes): echo {index + 1} of {n}{te} used"


def _contrast_weights(echoes: np.ndarray, times: np.ndarray) -> tuple[np.ndarray, float]:
    """Weights TE * exp(-TE / T2*) with T2* fitted (log-linear) to the median bright-tissue signal;
    with no measurable decay, T2* is taken as the longest TE (weights grow with TE)."""
    first = echoes[..., int(np.argmin(times))]
    tissue = first >= np.percentile(first, 60)
    signal = np.array([np.median(echoes[..., e][tissue]) for e in range(echoes.shape[3])], dtype=float)
    t2star = float(times.max())
    if np.all(signal > 0) and len(times) >= 2 and np.ptp(times) > 0:
        slope = np.polyfit(times, np.log(signal), 1)[0]
        if slope < 0:
            t2star = float(np.clip(-1.0 / slope, 0.5 * times.min(), 10.0 * times.max()))
    weights = times * np.exp(-times / t2star)
    return weights, t2star
