"""Which series are susceptibility-weighted (T2*-GRE, SWI), decided from the series description.

A description is normalised first (lower case; every run of characters other than letters, digits
and ``*`` becomes ``_``), so ``Axial T2-Star``, ``Axial_T2_Star`` and ``AXIAL_T2_STAR`` all read
``axial_t2_star``. Exclusions are checked before inclusions, so ``gre_field_mapping`` is a field map,
not a GRE scan. A user pattern (``--series REGEX``) replaces both lists: the user knows their names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: (regex on the normalised description, reason) — checked first; a match is skipped with the reason.
EXCLUDE_PATTERNS: tuple[tuple[str, str], ...] = (
    (r"field_?map|fmap|b0_?map", "field map"),
    (r"(^|_)pha(se)?(_|$)|phase", "phase image"),
    (r"(^|_)m(in)?_?ip(_|$)|minip|mip_images", "minimum-intensity projection"),
    (r"locali[sz]er|scout|survey|(^|_)loc(_|$)|3_?plane|aahead", "localizer"),
    (r"mp_?rage|spgr|(^|_)t1|ir_?fspgr|mprage", "T1-weighted structural (MPRAGE/SPGR)"),
    (r"flair", "FLAIR"),
    (r"dti|dwi|diffusion|(^|_)asl|perfusion|pcasl|bold|fmri|(^|_)rest", "diffusion/perfusion/functional"),
    (r"calibration|(^|_)cal(_|$)|b1_?map", "calibration"),
)

#: (regex on the normalised description, modality) — the first match decides; ``swi`` or ``T2starw``.
INCLUDE_PATTERNS: tuple[tuple[str, str], ...] = (
    (r"swi|swan|susceptib", "swi"),
    (r"t2_?star|t2\*|t2s(_|$)|(^|_)gre(_|$)|hemo|(^|_)ffe(_|$)|t2_?ffe|(^|_)t2_$", "T2starw"),
)


@dataclass(frozen=True)
class SeriesChoice:
    """Outcome of `choose_series`: ``take`` or not, the BIDS suffix when taken, why not otherwise."""

    take: bool
    modality: str = ""
    reason: str = ""


def normalise_description(description: str) -> str:
    """Lower case, runs of characters other than ``[a-z0-9*]`` -> ``_`` (kept at the ends)."""
    return re.sub(r"[^a-z0-9*]+", "_", description.strip().lower())


def modality_of(description: str) -> str:
    """``swi`` when the description says SWI/SWAN/susceptibility, else ``T2starw``."""
    return "swi" if re.search(INCLUDE_PATTERNS[0][0], normalise_description(description)) else "T2starw"


def choose_series(description: str, user_pattern: str | None = None) -> SeriesChoice:
    """Take a series or not, from its description.

    ``user_pattern``: a regex (case-insensitive, searched in the raw and the normalised description)
    that replaces the default lists.
    """
    norm = normalise_description(description)
    if user_pattern is not None:
        if re.search(user_pattern, description, re.IGNORECASE) or re.search(user_pattern, norm, re.IGNORECASE):
            return SeriesChoice(True, modality_of(description))
        return SeriesChoice(False, reason=f"description does not match --series {user_pattern!r}")
    if not norm.strip("_"):
        return SeriesChoice(False, reason="no series description")
    for pattern, reason in EXCLUDE_PATTERNS:
        if re.search(pattern, norm):
            return SeriesChoice(False, reason=f"not susceptibility-weighted: {reason}")
    for pattern, modality in INCLUDE_PATTERNS:
        if re.search(pattern, norm):
            return SeriesChoice(True, modality)
    return SeriesChoice(False, reason="not susceptibility-weighted: no T2*/SWI/GRE pattern in the description "
                                      "(use --series to take it)")
