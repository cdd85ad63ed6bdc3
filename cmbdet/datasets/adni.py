"""ADNI downloads: ``ADNI/<PTID e.g. 002_S_0295>/<description>/<date_time>/<I####>/...``.

PTID ``002_S_0295`` -> BIDS participant ``ADNI002S0295``, RID 295 (the rating tables' key).
Ratings: ``MAYOADIRL_MRI_MCH_<date>.csv`` (`cmbdet.datasets.ratings`).
"""

from __future__ import annotations

from pathlib import Path

from cmbdet.datasets.loni import ConversionResult, LoniLayout, convert_loni
from cmbdet.datasets.ratings import read_ratings

ADNI = LoniLayout(
    name="ADNI",
    subject_pattern=r"\d{3}_S_\d{4}",
    participant_label=lambda folder: "ADNI" + folder.replace("_", ""),
    rid=lambda folder: int(folder.rsplit("_", 1)[-1]),
)


def convert_adni(src: str | Path, out: str | Path, *, ratings: str | Path | None = None, lps: bool = False,
                 series_pattern: str | None = None, several: str = "rated-latest", progress=None) -> ConversionResult:
    """Convert an ADNI download tree (see `cmbdet.datasets.loni.convert_loni` for what is done)."""
    table = read_ratings(ratings, lps=lps) if ratings is not None else None
    return convert_loni(ADNI, src, out, ratings=table, series_pattern=series_pattern, several=several,
                        progress=progress)
