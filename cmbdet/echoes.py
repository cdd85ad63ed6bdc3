"""Multi-echo magnitude: echo times and the combination that keeps susceptibility contrast.

A microbleed is visible because its field disturbance dephases the signal: the longer the echo time
(TE), the darker and larger it looks (blooming). A plain root-sum-of-squares of all echoes is
dominated by the bright, short echoes, in which a microbleed is barely visible. ``auto`` therefore
weights each echo by its contrast-to-noise for a small T2* change, ``w(TE) = TE * exp(-TE / T2*)``
(the optimum for a mono-exponential decay), with the brain's T2* fitted from the echoes themselves.

Echo times come from the JSON sidecar beside each file (BIDS / dcm2niix ``EchoTime``, seconds; a
value above 1 is read as milliseconds). Without usable ones (no sidecar, or one that is unreadable,
lacks ``EchoTime``, gives a time that is not a positive number, or times that are not distinct) the
echoes are assumed equally spaced, echo number ``k`` at ``k`` spacings — the numbers written in the
file names (``_echo-1_``, ``_e4``) when there are any, so that a missing echo leaves its gap — and the
note says so, naming the sidecar and its problem.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
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


#: Why echo times are unknown when no file of the series has a sidecar.
NO_SIDECAR = "no JSON sidecar with EchoTime"


@dataclass(frozen=True)
class SidecarTimes:
    """What the JSON sidecar beside one image says about its echo times.

    ``times_ms``: the echo time(s) in ms, or ``None``. ``problem``: why a sidecar that exists gives no
    usable times, in words (``"unreadable JSON (Expecting value at line 1 column 28)"``); ``None`` when
    the times are fine or when there is no sidecar at all.
    """

    sidecar: Path
    times_ms: list[float] | None
    problem: str | None = None

    @property
    def found(self) -> bool:
        """Whether the sidecar file exists."""
        return self.times_ms is not None or self.problem is not None


def read_echo_times(path: str | Path) -> SidecarTimes:
    """The echo time(s) in ms that the JSON sidecar beside ``path`` gives (``EchoTime`` number or list, or
    ``EchoTimes``), or why it gives none. Never raises: a bad sidecar does not make the image unusable."""
    side = sidecar_path(path)
    if not side.is_file():
        return SidecarTimes(side, None)
    try:
        meta = json.loads(side.read_text())
    except json.JSONDecodeError as err:
        return SidecarTimes(side, None, f"unreadable JSON ({err.msg} at line {err.lineno} column {err.colno})")
    except (OSError, ValueError) as err:
        return SidecarTimes(side, None, f"could not be read ({type(err).__name__}: {err})")
    value = meta.get("EchoTime", meta.get("EchoTimes")) if isinstance(meta, dict) else None
    if value is None:
        return SidecarTimes(side, None, "EchoTime missing")
    values = value if isinstance(value, list) else [value]
    if not values:
        return SidecarTimes(side, None, "EchoTime is an empty list")
    times = []
    for v in values:
        try:
            t = float(v)
        except (TypeError, ValueError):
            return SidecarTimes(side, None, f"EchoTime {v!r} is not a number")
        if not np.isfinite(t):
            return SidecarTimes(side, None, f"EchoTime {v!r} is not finite")
        if t <= 0:
            return SidecarTimes(side, None, f"EchoTime {v!r} is not positive")
        times.append(t * 1000.0 if t < 1.0 else t)  # BIDS stores seconds
    return SidecarTimes(side, times)


def echo_times_ms(path: str | Path) -> list[float] | None:
    """Echo time(s) in ms from the JSON sidecar beside ``path`` (``EchoTime`` number or list, or
    ``EchoTimes``), or ``None`` when there is no sidecar or it does not say (see `read_echo_times`
    for why)."""
    return read_echo_times(path).times_ms


def series_echo_times(readings: Sequence[SidecarTimes], n_echoes: int) -> tuple[list[float] | None, str | None]:
    """The echo times (ms, one per echo, in the order of ``readings``) of one series, from its sidecars:
    one sidecar giving ``n_echoes`` times (a 4-D file) or one sidecar per echo file giving one time each.

    Returns ``(times, None)``, or ``(None, why)`` with ``why`` naming the sidecars and their problems
    (missing, unreadable, ``EchoTime`` missing / not positive / not finite, times not distinct).
    """
    if not any(r.found for r in readings):
        return None, NO_SIDECAR
    problems = [f"{r.sidecar.name}: {r.problem}" for r in readings if r.problem is not None]
    per_file = 1 if len(readings) > 1 else n_echoes
    for r in readings:
        if r.times_ms is not None and len(r.times_ms) != per_file:
            problems.append(f"{r.sidecar.name}: EchoTime gives {len(r.times_ms)} echo time(s) for "
                            f"{per_file} echo{'es' if per_file > 1 else ''}")
    missing = [r.sidecar.name for r in readings if not r.found]
    if missing:
        problems.append(f"no sidecar {', '.join(missing)}")
    if problems:
        return None, "; ".join(problems)
    times = [t for r in readings for t in r.times_ms or []]
    if len(set(times)) < len(times):
        names = ", ".join(r.sidecar.name for r in readings)
        return None, f"{names}: echo times {', '.join(f'{t:g}' for t in times)} ms are not distinct"
    return times, None


def missing_echo_numbers(numbers: Sequence[int]) -> list[int]:
    """Echo numbers (1-based) below the highest of ``numbers`` that are not among them."""
    return sorted(set(range(1, max(numbers) + 1)) - set(numbers)) if numbers else []


def describe_echo_numbers(numbers: Sequence[int]) -> str:
    """``"numbered 1, 2, 4; echo 3 missing"`` (or ``""`` for a complete series numbered 1..n)."""
    missing = missing_echo_numbers(numbers)
    if not missing and sorted(numbers) == list(range(1, len(numbers) + 1)):
        return ""
    told = f"numbered {', '.join(str(k) for k in numbers)}"
    if missing:
        told += f"; echo{'es' if len(missing) > 1 else ''} {', '.join(str(k) for k in missing)} missing"
    return told


def echo_index_from_name(path: str | Path) -> int | None:
    """The echo number written in a file name: BIDS ``_echo-2_``, dcm2niix ``_e2``; else ``None``."""
    name = Path(path).name
    for pattern in _ECHO_IN_NAME:
        match = pattern.search(name)
        if match:
            return int(match.group(1))
    return None


def combine_echoes(
    echoes: np.ndarray,
    choice: str | int,
    echo_times: list[float] | None,
    name: str,
    *,
    numbers: Sequence[int] | None = None,
    why_no_times: str | None = None,
) -> tuple[np.ndarray, str]:
    """Combine (I, J, K, E) magnitude echoes into one (I, J, K) float32 image.

    ``choice``: ``auto`` (TE x exp(-TE/T2*) weights, see the module docstring), ``rss``
    (root-sum-of-squares), ``first``, ``last`` or a 0-based index: with ``numbers``, index ``N`` is
    the echo numbered ``N + 1``. ``echo_times``: ms per echo, or ``None`` if unknown (``why_no_times``
    says why, in words). ``numbers``: the 1-based echo number of each echo (from the file names;
    default 1..E): without echo times, echo ``k`` is assumed at ``k`` echo spacings. Returns the image
    and a sentence for the user saying what was done.
    """
    n = echoes.shape[3]
    numbers = list(range(1, n + 1)) if numbers is None else [int(k) for k in numbers]
    if len(numbers) != n:
        raise ValueError(f"{len(numbers)} echo numbers for {n} echoes")
    gaps = describe_echo_numbers(numbers)
    series = f"{n} echoes" + (f" {gaps}" if gaps else "")
    known = echo_times is not None and len(echo_times) == n
    if choice == "auto":
        times, assumed = (echo_times, False) if known else (list(np.asarray(numbers, dtype=float)), True)
        weights, t2star = _contrast_weights(echoes, np.asarray(times, float))
        combined = np.tensordot(echoes.astype(np.float32), (weights / weights.sum()).astype(np.float32),
                                axes=([3], [0]))
        unit = "echo spacings" if assumed else "ms"
        if echo_times is None:
            why = why_no_times or NO_SIDECAR
        else:
            why = f"the sidecars give {len(echo_times)} echo time(s) for {n} echoes"
        spacing = ("assumed equally spaced" if not gaps else
                   f"assumed equally spaced by echo number (TE proportional to {', '.join(str(k) for k in numbers)})")
        told = (f"echo times unknown ({why}): {spacing}; " if assumed else
                f"TE {', '.join(f'{t:g}' for t in times)} ms; ")
        message = (f"multi-echo input ({series}): {told}combined for susceptibility contrast with weights "
                   f"TE*exp(-TE/T2*), T2* {t2star:.3g} {unit} fitted from the brain signal "
                   f"(relative weights {', '.join(f'{w:.2f}' for w in weights / weights.max())})")
        return np.ascontiguousarray(combined, dtype=np.float32), message
    if choice == "rss":
        combined = np.sqrt(np.sum(np.square(echoes, dtype=np.float64), axis=3)).astype(np.float32)
        return combined, f"multi-echo input ({series}): root-sum-of-squares of all echoes used"
    if choice == "last":
        index = n - 1
    elif choice == "first":
        index = 0
    else:
        try:
            requested = int(choice)
        except (TypeError, ValueError):
            raise InputError(name, f"unknown echo choice {choice!r} (use auto, rss, first, last or a 0-based "
                                   "index)") from None
        if requested + 1 not in numbers:
            if gaps:
                raise InputError(name, f"echo {requested} (echo number {requested + 1}) requested but the series "
                                       f"holds {series}")
            raise InputError(name, f"echo {requested} requested but the series has {n} echoes (0..{n - 1})")
        index = numbers.index(requested + 1)
    te = f" (TE {echo_times[index]:g} ms)" if known else ""
    which = f"echo {numbers[index]} of {n}" if not gaps else f"echo {numbers[index]}"
    return np.ascontiguousarray(echoes[..., index], dtype=np.float32), \
        f"multi-echo input ({series}): {which}{te} used"


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
