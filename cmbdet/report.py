"""``OUTDIR/index.html``: the page a person opens to review a cohort run (detect, lesions, classify).

One static HTML file (inline CSS, no script, nothing fetched from anywhere) that links only to files
inside OUTDIR by relative paths: the run's settings and versions, the counts per subject (and region)
with failures and their messages, then each subject's pictures (review picture, class-activation maps)
with links to its label map, sidecar, markups and candidates.
"""

from __future__ import annotations

import html
import platform
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from urllib.parse import quote

from cmbdet.atomic import write_text_atomic
from cmbdet.batch import SubjectRecord

#: Packages whose installed versions the report lists (read from their metadata, not imported).
REPORTED_PACKAGES = ("cmbdet", "torch", "ultralytics", "nibabel", "numpy", "scipy", "scikit-image")
#: Record file kinds linked from a subject's section (in this order), with their link text.
LINKED_FILES = {"label_map": "label map (NIfTI)", "sidecar": "label map sidecar (JSON)",
                "markups": "markups (3D Slicer)", "candidates_csv": "all candidates (CSV)"}
#: Record file kinds shown as pictures: the review picture, then one class-activation map per lesion.
PICTURE_KINDS = ("review", "cam:")
#: Columns of a subject's counts row that are not counts.
NOT_COUNTS = ("subject", "status", "message", "input")
#: Numeric columns that do not add up over subjects (no total is shown for them).
NOT_ADDITIVE = ("probability", "threshold")

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; } h3 { font-size: 1em; margin: 0.3em 0; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: left; font-size: 0.9em; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
tr.error td { background: #fde8e8; }
.subject { border-top: 1px solid #ddd; padding: 0.6em 0; }
.subject img { max-width: 100%; height: auto; border: 1px solid #eee; }
.note { color: #666; font-size: 0.85em; }
"""


def write_report(outdir: str | Path, run_info: dict, records: Sequence[SubjectRecord], *,
                 tables: Sequence[str] = ("counts.csv", "detections.csv")) -> Path:
    """Write ``OUTDIR/index.html`` for the subjects' records (sorted by subject); returns its path.
    ``tables``: the run's tables in OUTDIR, linked at the top."""
    outdir = Path(outdir)
    return write_text_atomic(outdir / "index.html", report_html(outdir, run_info, records, tables=tables))


def report_html(outdir: Path, run_info: dict, records: Sequence[SubjectRecord], *,
                tables: Sequence[str] = ("counts.csv", "detections.csv")) -> str:
    """The page's HTML (see module docstring)."""
    records = sorted(records, key=lambda r: r.subject)
    ok = [r for r in records if r.status == "ok"]
    failed = [r for r in records if r.status != "ok"]
    count_keys = [k for k in (ok[0].counts if ok else {}) if k not in NOT_COUNTS]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>cmbdet report: {_e(outdir.resolve().name)}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>cmbdet report: {_e(outdir.resolve().name)}</h1>",
        f'<p class="note">Written {_e(time.strftime("%Y-%m-%d %H:%M:%S %Z"))}. {len(records)} subject(s): '
        f"{len(ok)} ok, {len(failed)} failed. Tables: "
        + ", ".join(_link(name) for name in (*tables, "run.json") if (outdir / name).is_file()) + ".</p>",
        "<h2>Settings and versions</h2>",
        _settings_table(run_info),
        "<h2>Counts per subject</h2>",
        _counts_table(records, count_keys),
    ]
    if failed:
        parts += ["<h2>Failures</h2>", "<table><tr><th>subject</th><th>input</th><th>message</th></tr>"]
        parts += [f'<tr class="error"><td>{_e(r.subject)}</td><td>{_e(";".join(r.inputs))}</td>'
                  f"<td>{_e(r.message)}</td></tr>" for r in failed]
        parts.append("</table>")
    parts.append("<h2>Review pictures</h2>")
    for record in ok:
        parts.append(_subject_section(outdir, record, count_keys))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _settings_table(run_info: dict) -> str:
    settings = run_info.get("settings", {})
    rows = []
    for key, value in settings.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k} (sha256 {str(v)[:12]}…)" if len(str(v)) == 64 else f"{k}: {v}"
                              for k, v in value.items())
        rows.append((key, value))
    for key in ("started", "finished", "rescored"):
        if key in run_info:
            rows.append((key, run_info[key]))
    rows.append(("python", platform.python_version()))
    for package in REPORTED_PACKAGES:
        try:
            rows.append((package, metadata.version(package)))
        except metadata.PackageNotFoundError:
            continue
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _counts_table(records: Sequence[SubjectRecord], count_keys: list[str]) -> str:
    head = "".join(f"<th>{_e(k)}</th>" for k in ("subject", "status", *count_keys, "message"))
    rows = [f"<table><tr>{head}</tr>"]
    totals: dict[str, float | None] = {k: None if k in NOT_ADDITIVE else 0 for k in count_keys}
    for r in records:
        subject = (f'<a href="#{_anchor(r.subject)}">{_e(r.subject)}</a>' if r.status == "ok" else _e(r.subject))
        cells = [f"<td>{subject}</td>", f"<td>{_e(r.status)}</td>"]
        for key in count_keys:
            value = r.counts.get(key, "")
            cells.append(f'<td class="n">{_e(value)}</td>')
            if r.status != "ok" or totals[key] is None:
                continue
            is_number = isinstance(value, int | float) and not isinstance(value, bool)
            totals[key] = totals[key] + value if is_number else None  # a text column gets no total
        cells.append(f"<td>{_e(r.message)}</td>")
        rows.append(f'<tr class="{_e(r.status)}">{"".join(cells)}</tr>')
    if records:
        cells = "".join(f'<td class="n">{"" if totals[k] is None else f"{totals[k]:g}"}</td>' for k in count_keys)
        rows.append(f"<tr><th>total</th><td></td>{cells}<td></td></tr>")
    rows.append("</table>")
    return "\n".join(rows)


def _subject_section(outdir: Path, record: SubjectRecord, count_keys: list[str]) -> str:
    counts = ", ".join(f"{k} {record.counts.get(k, '')}" for k in count_keys)
    links = "".join(f" · {_link(record.files[kind], text)}" for kind, text in LINKED_FILES.items()
                    if kind in record.files and (outdir / record.files[kind]).is_file())
    pictures = [(kind, path) for prefix in PICTURE_KINDS for kind, path in record.files.items()
                if (kind == prefix or (prefix.endswith(":") and kind.startswith(prefix))) and (outdir / path).is_file()]
    image = "".join(f'<img src="{_href(path)}" alt="{_e(kind)} picture of {_e(record.subject)}" loading="lazy">'
                    for kind, path in pictures) or '<p class="note">no picture for this subject</p>'
    note = f'<p class="note">{_e(record.message)}</p>' if record.message else ""
    return (f'<div class="subject" id="{_anchor(record.subject)}"><h3>{_e(record.subject)}</h3>'
            f"<p>{_e(counts)}{links}</p>{note}{image}</div>")


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _href(relative: str) -> str:
    """A relative URL for a file inside OUTDIR (each path segment percent-encoded)."""
    return "/".join(quote(part) for part in Path(relative).parts)


def _link(relative: str, text: str | None = None) -> str:
    return f'<a href="{_href(relative)}">{_e(text or relative)}</a>'


def _anchor(subject: str) -> str:
    return "s-" + quote(subject, safe="")
