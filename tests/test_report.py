"""``OUTDIR/index.html``: every link resolves inside OUTDIR, nothing points outside, and a real headless
browser renders it."""

from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest
from PIL import Image

from cmbdet.cli import main

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.urls: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in ("href", "src", "srcset", "action", "data", "poster") and value is not None:
                self.urls.append(value)
            if name == "id":
                self.ids.add(value)


@pytest.fixture()
def report_dir(scan_dir, random_weights, tmp_path) -> Path:
    (scan_dir / "sub-03 broken_swi.nii.gz").write_bytes(b"truncated")
    out = tmp_path / "out dir"
    assert main(["detect", str(scan_dir), "-o", str(out), "--weights", str(random_weights), "--quiet"]) == 1
    return out


def report_links(outdir: Path) -> tuple[str, list[str]]:
    """``OUTDIR/index.html``'s text and its URLs, each checked to resolve to a file inside OUTDIR (or an
    anchor on the page)."""
    page = (outdir / "index.html").read_text()
    parser = _Links()
    parser.feed(page)
    for url in parser.urls:
        parts = urlsplit(url)
        assert not parts.scheme and not parts.netloc, f"URL leaves OUTDIR: {url}"
        if not parts.path:
            assert parts.fragment in parser.ids, f"dangling anchor {url}"
            continue
        target = (outdir / unquote(parts.path)).resolve()
        assert target.is_relative_to(outdir.resolve()), f"URL leaves OUTDIR: {url}"
        assert target.is_file(), f"broken link {url}"
    return page, parser.urls


def total_row(page: str) -> dict[str, str]:
    """The counts table's total row as {column: cell text}."""
    header = re.search(r"<table><tr>((?:<th>[^<]*</th>)+)</tr>", page).group(1)
    columns = re.findall(r"<th>([^<]*)</th>", header)
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", re.search(r"<tr><th>total</th>(.*?)</tr>", page).group(1))
    return dict(zip(columns[1:], cells, strict=True))


def test_report_links_resolve_inside_outdir_and_it_shows_counts_and_failures(report_dir):
    page, urls = report_links(report_dir)
    assert len(urls) >= 10
    for expected in ("sub-01_ses-1/sub-01_ses-1_review.png", "sub-02/sub-02_desc-cmb_dseg.nii.gz",
                     "sub-02/sub-02_cmb.mrk.json", "counts.csv"):
        assert expected in urls, expected
    assert '<tr class="error"><td>sub-03 broken_swi</td>' in page and "not a readable NIfTI" in page
    assert "threshold" in page and "torch" in page


def test_report_renders_in_headless_chromium(report_dir, tmp_path):
    browser = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    if browser is None:
        pytest.skip("no headless browser installed (Debian: apt-get install chromium)")
    shot = tmp_path / "report.png"
    run = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                          "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,1800",
                          f"--screenshot={shot}", (report_dir / "index.html").as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert shot.is_file(), run.stderr[-2000:]
    image = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert image.shape == (1800, 1200)
    # Text, tables and the review pictures: far from a blank page; dark pixels of the scans' background.
    assert image.std() > 30 and (image < 40).mean() > 0.01
