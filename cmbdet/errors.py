"""What reaches the user as one line: errors (the CLI prints them without a traceback) and notes."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path


class InputError(Exception):
    """Bad user input: a file that is missing, unreadable, or not a usable scan.

    The message names the file and the problem in one line, e.g.
    ``InputError(path, "not a NIfTI file")`` -> ``"scan.nii.gz: not a NIfTI file"``.
    """

    def __init__(self, path: str | Path | None, problem: str):
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(problem if path is None else f"{path}: {problem}")


def notes_with_warnings(notes: Iterable[str], caught: Iterable, sources: Iterable[str | Path] = ()) -> list[str]:
    """``notes`` followed by the messages of the ``caught`` warnings (``warnings.catch_warnings(record=True)``)
    that say something new. A warning repeats a note when it is the note itself, or the note prefixed
    with the file it came from (``"<source>: <note>"``, ``sources``: the files whose notes ``notes``
    holds); the same text about another file is kept, since it names that file."""
    merged = list(notes)
    sources = [str(source) for source in sources]
    for warning in caught:
        message = str(warning.message)
        if not any(message == note or message in {f"{source}: {note}" for source in sources} for note in merged):
            merged.append(message)
    return merged
