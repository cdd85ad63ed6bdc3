"""Atomic file output: write to a temporary file beside the target, then rename it into place.

A run that is interrupted or fails leaves either the old file or nothing, never half a file. A run
killed outright (``kill -9``) can leave a temporary file behind; its name carries `TEMP_MARKER`
(``.NAME.cmbdet-tmp-RANDOM.EXT``) so that `remove_stale_temp_files` can find it on the next run.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: Part of every temporary file name made by `atomic_path`.
TEMP_MARKER = ".cmbdet-tmp-"


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder (same extension); on success it becomes ``path``
    with the usual permissions (0666 less the umask); on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{TEMP_MARKER}", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write text atomically (see `atomic_path`)."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            handle.write(text)
    return Path(path)


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write bytes atomically (see `atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def remove_stale_temp_files(folder: str | Path) -> list[Path]:
    """Delete the temporary files that `atomic_path` left in ``folder`` and its sub-folders (a killed
    run); returns what was removed. Only call it while no other process writes into ``folder``."""
    removed = []
    for path in Path(folder).rglob(f".*{TEMP_MARKER}*"):
        if path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
