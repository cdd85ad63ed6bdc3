"""Where the shipped weights live, and safe (code-free) loading and saving of torch weights.

Weights are safetensors files: tensors plus a flat string->string metadata dict. Loading never runs
code from the file (unlike pickle-based ``.pt``), and nothing is ever downloaded.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import TYPE_CHECKING

from cmbdet.atomic import atomic_path
from cmbdet.errors import InputError

if TYPE_CHECKING:
    import torch

#: Where the shipped weights are: inside the package in a wheel / ``pip install .`` (the build copies
#: the repository's top-level ``weights/`` to ``cmbdet/_weights/``, see pyproject.toml), else the
#: ``weights/`` folder beside the package (a clone or an editable install).
_PACKAGED_WEIGHTS_DIR = Path(__file__).resolve().parent / "_weights"
_CHECKOUT_WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
SHIPPED_WEIGHTS_DIR = _PACKAGED_WEIGHTS_DIR if _PACKAGED_WEIGHTS_DIR.is_dir() else _CHECKOUT_WEIGHTS_DIR


def shipped_weights(name: str) -> Path:
    """Path of a shipped weights file, e.g. ``shipped_weights("proposer.safetensors")``."""
    path = SHIPPED_WEIGHTS_DIR / name
    if not path.exists():
        raise InputError(path, "shipped weights not found (is this a complete clone of cmbdet?); "
                               "pass the weights folder explicitly with --weights")
    return path


def save_state(path: str | Path, state: dict[str, torch.Tensor], metadata: dict) -> Path:
    """Save tensors and JSON-able metadata atomically as safetensors."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"cmbdet": json.dumps(_finite_or_null(metadata), allow_nan=False)})
    return Path(path)


def _finite_or_null(value):
    """``value`` with every NaN or infinite float replaced by None (strict JSON has no NaN: a figure that could
    not be measured, e.g. a recall without microbleeds, is stored as null)."""
    if isinstance(value, dict):
        return {k: _finite_or_null(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_or_null(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def load_state(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Load tensors (CPU) and the metadata saved by `save_state`."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "weights file not found")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = json.loads((handle.metadata() or {}).get("cmbdet", "{}"))
            state = {key: handle.get_tensor(key) for key in handle.keys()}
    except InputError:
        raise
    except Exception as err:
        raise InputError(path, f"not a cmbdet weights file ({type(err).__name__}: {err})") from None
    return state, metadata


def pick_device(device: str | None = None) -> torch.device:
    """``device`` if given, else CUDA when present, else CPU."""
    import torch

    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def check_device(device: str | None) -> None:
    """Refuse, before any work, a ``--device`` torch cannot use on this machine (a malformed name, or CUDA
    where there is none) with an `InputError`; a bare index (``0``, as ultralytics takes it) is a CUDA device."""
    if not device:
        return
    import torch

    try:
        chosen = torch.device(int(device) if str(device).isdigit() else device)
    except (RuntimeError, ValueError) as err:
        raise InputError(None, f"--device {device}: not a device torch knows ({err})") from None
    if chosen.type == "cuda" and (not torch.cuda.is_available()
                                  or (chosen.index or 0) >= torch.cuda.device_count()):
        raise InputError(None, f"--device {device}: no such CUDA device on this machine "
                               f"({torch.cuda.device_count()} found); leave --device out to run on the CPU")


def read_metadata(path: str | Path) -> dict:
    """The metadata saved by `save_state`, read from the safetensors header alone (no tensors, no torch):
    8 bytes little-endian header length, then a JSON header whose ``__metadata__`` holds it."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(length))
        return json.loads(header.get("__metadata__", {}).get("cmbdet", "{}"))
    except FileNotFoundError:
        raise InputError(path, "weights file not found") from None
    except (OSError, ValueError, struct.error) as err:
        raise InputError(path, f"not a cmbdet weights file ({type(err).__name__}: {err})") from None

