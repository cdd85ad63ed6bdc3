"""Errors that reach the user as one line (the CLI prints them without a traceback)."""

from __future__ import annotations

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
