"""AIBL downloads: ``AIBL/<RID>/<description>/<date_time>/<S####>/AIBL_<RID>_MR_..._S####_I####.nii``.

RID ``1234`` -> BIDS participant ``AIBL1234``. Ratings: a table shaped like ADNI's microbleed reads
(RID, SCANDATE, TYPE, STATUS, NOFINDINGS, optional image id and coordinates; `cmbdet.datasets.ratings`).
"""

from __future__ import annotations

from pathlib import Path

from cmbdet.datasets.loni import ConversionResult, LoniLayout, convert_loni
from cmbdet.datasets.ratings import read_ratings

AIBL = LoniLayout(
    name="AIBL",
    subject_pattern=r"\d+",
    participant_label=lambda folder: f"AIBL{int(folder)}",
    rid=int,
)


def convert_aibl(src: str | Path, out: str | Path, *, ratings: str | Path | None = None, lps: bool = False,
                 series_pattern: str | None = None, several: str = "rated-latest", progress=None) -> ConversionResult:
    """Convert an AIBL download tree (see `cmbdet.datasets.loni.convert_loni` for what is done)."""
    table = read_ratings(ratings, lps=lps) if ratings is not None else None
    return convert_loni(AIBL, src, out, ratings=table, series_pattern=series_pattern, several=several,
                        progress=progress)
