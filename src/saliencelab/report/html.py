"""A self-contained HTML report: one `index.html` with a card per image.

The page has inline CSS and no scripts or external assets. Images are referenced by relative path
(the files lie next to `index.html`), or inlined as base64 data URIs with `embed=True` so the page
is a single file. All user text (names, labels, paths, errors) is escaped.
"""

from __future__ import annotations

import base64
import html
import math
import mimetypes
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from ..core.errors import SaliencelabError
from ..core.files import check_outputs, make_folder, write_whole
from ..core.result import Explanation

if TYPE_CHECKING:
    from ..metrics.evaluate import EvalReport

PathLike = str | os.PathLike

# Only raster images are inlined (an SVG could carry script).
_EMBEDDABLE = {"image/png", "image/jpeg", "image/gif", "image/webp"}


@dataclass
class ReportEntry:
    """One image of a report.

    Attributes:
        name: what to call the image (e.g. its file name).
        image_path: the original photo (linked).
        gallery_path: the gallery PNG (photo + one overlay per method).
        overlays: method name → overlay PNG.
        predicted: the predicted label.
        probability: its probability (0..1).
        explained: for a channel or neuron target, what was explained and its reading, e.g.
            "channel 26 of features.3: 3.21", shown instead of a prediction (which the layer's
            readings do not give).
        rows: one dict per method with keys "method", "passes", "seconds" and optionally
            "forwards" and "target" (e.g. the rows of `Explanation.table()` for this sample).
        maps_path: the file with the raw maps (linked).
        error: when set, the card shows this sentence instead (this image could not be explained).
    """

    name: str
    image_path: PathLike | None = None
    gallery_path: PathLike | None = None
    overlays: dict[str, PathLike] = field(default_factory=dict)
    predicted: str | None = None
    probability: float | None = None
    explained: str | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    maps_path: PathLike | None = None
    error: str | None = None

    @classmethod
    def from_explanation(
        cls,
        name: str,
        explanation: Explanation,
        sample: int = 0,
        *,
        image_path: PathLike | None = None,
        gallery_path: PathLike | None = None,
        overlays: Mapping[str, PathLike] | None = None,
        maps_path: PathLike | None = None,
    ) -> ReportEntry:
        """An entry for `sample` of `explanation`: prediction, probability and cost rows (for
        a channel or neuron target: what was explained and its reading instead)."""
        n = explanation.logits.shape[0]
        if not -n <= sample < n:
            raise SaliencelabError(
                f"Sample {sample} is out of range for an explanation of {n} sample(s); "
                f"pass sample between 0 and {n - 1}."
            )
        sample = sample % n
        rows = [r for r in explanation.table() if r["sample"] == sample]
        probs = explanation.probabilities
        predicted: str | None = None
        probability: float | None = None
        explained: str | None = None
        if probs is None:  # a channel or neuron target: its layer's readings, no classes
            explained = explanation.target_text(sample)
            headline = explanation.explained_name or explained
        else:
            index = int(probs[sample].argmax())
            predicted, probability = explanation.label(index), float(probs[sample, index])
            headline = predicted
        rows = report_rows(rows, headline)
        return cls(
            name=name,
            image_path=image_path,
            gallery_path=gallery_path,
            overlays=dict(overlays or {}),
            predicted=predicted,
            probability=probability,
            explained=explained,
            rows=rows,
            maps_path=maps_path,
        )


CSS = """
:root { --bg: #f4f5f7; --card: #fff; --ink: #1c1c20; --muted: #6b6b78; --line: #e3e4e8;
  --accent: #d9480f; --bad: #c92a2a; --bad-bg: #fff5f5; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--ink);
  font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; }
header { padding: 24px 32px 8px; }
h1 { margin: 0 0 4px; font-size: 24px; font-weight: 650; }
.summary { margin: 0; color: var(--muted); }
nav { padding: 4px 32px 0; display: flex; flex-wrap: wrap; gap: 6px; }
nav a { font-size: 13px; padding: 2px 10px; border-radius: 999px; background: var(--card);
  border: 1px solid var(--line); color: var(--ink); text-decoration: none; }
nav a.bad { border-color: var(--bad); color: var(--bad); }
main { display: grid; gap: 20px; padding: 20px 32px 32px;
  grid-template-columns: repeat(auto-fill, minmax(min(100%, 640px), 1fr)); }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 10px;
  padding: 16px 18px; box-shadow: 0 1px 3px rgba(0, 0, 0, .05); min-width: 0; }
.card.error { border-left: 5px solid var(--bad); background: var(--bad-bg); }
.head { display: flex; align-items: baseline; justify-content: space-between; gap: 12px;
  flex-wrap: wrap; }
h2 { margin: 0; font-size: 17px; font-weight: 600; overflow-wrap: anywhere; }
.pred { font-size: 15px; white-space: nowrap; }
.pred b { font-weight: 600; }
.prob { color: var(--muted); margin-left: 6px; font-variant-numeric: tabular-nums; }
.bar { height: 4px; background: var(--line); border-radius: 2px; margin: 8px 0 12px; }
.bar span { display: block; height: 100%; background: var(--accent); border-radius: 2px; }
img { max-width: 100%; height: auto; display: block; }
.gallery { border-radius: 6px; }
details { margin-top: 10px; }
summary { cursor: pointer; color: var(--muted); font-size: 14px; }
.overlays { display: grid; gap: 10px; margin-top: 8px;
  grid-template-columns: repeat(auto-fill, minmax(150px, 1fr)); }
figure { margin: 0; }
figure img { border-radius: 4px; width: 100%; }
figcaption { font-size: 13px; text-align: center; margin-top: 3px; overflow-wrap: anywhere; }
table { border-collapse: collapse; margin-top: 12px; font-size: 13px; width: 100%; }
th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid var(--line); }
th { color: var(--muted); font-weight: 500; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.links { margin: 10px 0 0; font-size: 13px; color: var(--muted); }
.links a { color: var(--ink); }
.missing { color: var(--muted); font-style: italic; font-size: 13px; }
.error-msg { margin: 8px 0 0; color: var(--bad); }
main > .wide { grid-column: 1 / -1; }
.key { color: var(--muted); font-size: 13px; margin: 8px 0 0; }
.ci { color: var(--muted); font-size: 11px; white-space: nowrap; }
footer { padding: 0 32px 24px; color: var(--muted); font-size: 12px; }
"""


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _target(path: PathLike, out_dir: Path) -> Path:
    """Where `path` is: absolute as is, relative to `out_dir` if there, else to the cwd."""
    p = Path(path)
    if p.is_absolute():
        return p
    if (out_dir / p).exists() or not p.exists():
        return out_dir / p
    return p


def _href(path: PathLike, out_dir: Path) -> str:
    """A URL for `path` relative to `out_dir` (already HTML-escaped)."""
    target = _target(path, out_dir)
    try:
        rel = os.path.relpath(target.resolve(), out_dir.resolve())
    except ValueError:  # another drive on Windows
        return _e(target.resolve().as_uri())
    return _e(quote(Path(rel).as_posix()))


def _src(path: PathLike, out_dir: Path, embed: bool) -> str | None:
    """The `src` of an image: a relative URL, or a data URI with `embed` (None if unreadable)."""
    if not embed:
        return _href(path, out_dir)
    target = _target(path, out_dir)
    mime = mimetypes.guess_type(target.name)[0]
    if mime not in _EMBEDDABLE or not target.is_file():
        return None
    data = base64.b64encode(target.read_bytes()).decode("ascii")
    return f"data:{mime};base64,{data}"


def _img(path: PathLike, out_dir: Path, embed: bool, alt: str, cls: str = "") -> str:
    src = _src(path, out_dir, embed)
    if src is None:
        return f'<p class="missing">image not found: {_e(Path(path).name)}</p>'
    klass = f' class="{cls}"' if cls else ""
    return f'<img{klass} src="{src}" alt="{_e(alt)}" loading="lazy">'


REPORT_COLUMNS = ("method", "target", "passes", "forwards", "seconds")


def report_rows(rows: list[dict[str, Any]], headline: str | None) -> list[dict[str, Any]]:
    """The cost rows a card shows (`Explanation.table()`'s rows of one sample, per sample
    figures): method, passes, forwards, seconds, and the target only where some method explained
    another than `headline` (the predicted class, or what a channel or neuron target read)."""
    columns = [c for c in REPORT_COLUMNS if c != "target" or any(r[c] != headline for r in rows)]
    return [{k: r[k] for k in columns} for r in rows]


def _number(value: Any, fmt: str) -> str:
    try:
        return format(float(value), fmt)
    except (TypeError, ValueError):
        return _e(value)


def _table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    has_target = any("target" in r for r in rows)
    has_forwards = any(r.get("forwards") for r in rows)
    head = ["<th>method</th>"]
    if has_target:
        head.append("<th>target</th>")
    head.append('<th class="num">passes</th>')
    if has_forwards:
        head.append('<th class="num">forwards</th>')
    head.append('<th class="num">seconds</th>')
    body = []
    for r in rows:
        cells = [f"<td>{_e(r.get('method', ''))}</td>"]
        if has_target:
            cells.append(f"<td>{_e(r.get('target', ''))}</td>")
        cells.append(f'<td class="num">{_number(r.get("passes", 0), "g")}</td>')
        if has_forwards:
            cells.append(f'<td class="num">{_number(r.get("forwards", 0), "g")}</td>')
        cells.append(f'<td class="num">{_number(r.get("seconds", 0), ".3f")}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (
        "<table><thead><tr>"
        + "".join(head)
        + "</tr></thead><tbody>"
        + "".join(body)
        + "</tbody></table>"
    )


def _card(i: int, entry: ReportEntry, out_dir: Path, embed: bool) -> str:
    name = _e(entry.name)
    if entry.error is not None:
        return (
            f'<article class="card error" id="entry-{i}"><div class="head"><h2>{name}</h2></div>'
            f'<p class="error-msg">{_e(entry.error)}</p></article>'
        )
    parts = [f'<article class="card" id="entry-{i}"><div class="head"><h2>{name}</h2>']
    if entry.predicted is not None:
        prob = ""
        if entry.probability is not None and math.isfinite(entry.probability):
            prob = f'<span class="prob">{entry.probability:.2f}</span>'
        parts.append(f'<span class="pred"><b>{_e(entry.predicted)}</b>{prob}</span>')
    elif entry.explained is not None:
        parts.append(f'<span class="pred">explained: <b>{_e(entry.explained)}</b></span>')
    parts.append("</div>")
    if entry.probability is not None and math.isfinite(entry.probability):
        width = min(max(entry.probability, 0.0), 1.0) * 100
        parts.append(f'<div class="bar"><span style="width: {width:.1f}%"></span></div>')
    if entry.gallery_path is not None:
        parts.append(
            _img(entry.gallery_path, out_dir, embed, f"{entry.name}: all methods", "gallery")
        )
    if entry.overlays:
        figures = "".join(
            f"<figure>{_img(p, out_dir, embed, f'{entry.name}: {m}')}"
            f"<figcaption>{_e(m)}</figcaption></figure>"
            for m, p in entry.overlays.items()
        )
        opened = "" if entry.gallery_path is not None else " open"
        parts.append(
            f"<details{opened}><summary>Overlays, one per method, at the model's resolution "
            f"({len(entry.overlays)})"
            f'</summary><div class="overlays">{figures}</div></details>'
        )
    parts.append(_table(entry.rows))
    links = []
    if entry.maps_path is not None:
        label = _e(Path(entry.maps_path).name)
        links.append(f'<a href="{_href(entry.maps_path, out_dir)}">raw maps ({label})</a>')
    if entry.image_path is not None and not embed:  # (embedded: the page goes out alone, and a
        # relative link to the photo would break there and show the sender's folders)
        links.append(f'<a href="{_href(entry.image_path, out_dir)}">original image</a>')
    if links:
        parts.append('<p class="links">' + " · ".join(links) + "</p>")
    parts.append("</article>")
    return "".join(parts)


def render_index(
    entries: Iterable[ReportEntry],
    out_dir: PathLike = ".",
    title: str = "saliencelab",
    embed: bool = False,
    links: Sequence[tuple[str, PathLike]] = (),
) -> str:
    """The HTML of the report (see :func:`write_index`), with paths relative to `out_dir`."""
    out_dir = Path(out_dir)
    entries = list(entries)
    for entry in entries:
        if not isinstance(entry, ReportEntry):
            raise SaliencelabError(
                f"Report entries must be ReportEntry objects, got {type(entry).__name__}; "
                "build them with ReportEntry(...) or ReportEntry.from_explanation(...)."
            )
    failed = sum(e.error is not None for e in entries)
    methods = {r.get("method") for e in entries for r in e.rows} | {
        m for e in entries for m in e.overlays
    }
    summary = f"{len(entries)} image{'s' if len(entries) != 1 else ''}"
    if methods:
        summary += f" · {len(methods)} method{'s' if len(methods) != 1 else ''}"
    if failed:
        summary += f" · {failed} failed"
    nav = ""
    if len(entries) > 1:
        jumps = []
        for i, e in enumerate(entries):
            bad = ' class="bad"' if e.error is not None else ""
            jumps.append(f'<a href="#entry-{i}"{bad}>{_e(e.name)}</a>')
        nav = "<nav>" + "".join(jumps) + "</nav>"
    extra = ""
    if links:
        anchors = (f'<a href="{_href(path, out_dir)}">{_e(text)}</a>' for text, path in links)
        extra = '<p class="links">' + " · ".join(anchors) + "</p>"
    cards = "\n".join(_card(i, e, out_dir, embed) for i, e in enumerate(entries))
    if not entries:
        cards = '<p class="missing">No images.</p>'
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{CSS}</style></head>\n<body>"
        f'<header><h1>{_e(title)}</h1><p class="summary">{_e(summary)}</p>{extra}</header>'
        f"{nav}\n<main>\n{cards}\n</main>"
        "<footer>Made with saliencelab.</footer></body></html>\n"
    )


def write_index(
    out_dir: PathLike,
    entries: Iterable[ReportEntry],
    title: str = "saliencelab",
    embed: bool = False,
    links: Sequence[tuple[str, PathLike]] = (),
) -> Path:
    """Write `out_dir/index.html` (creating the folder) and return its path.

    Image and maps paths may be absolute, relative to `out_dir`, or relative to the working
    directory; the page links them relative to itself. With `embed=True` images are inlined as
    base64 data URIs, so `index.html` can be moved or mailed alone (the raw-maps link stays a link;
    the link to the original photo, a file elsewhere on this machine, is left out).
    `links` are (text, path) pairs shown under the title, e.g. ("Evaluation", "evaluation/").
    """
    out_dir = make_folder(out_dir, "report folder")
    check_outputs([(out_dir / "index.html", "the report")])  # a name we chose: not user advice
    path = out_dir / "index.html"
    html = render_index(entries, out_dir, title=title, embed=embed, links=links)
    return _write_page(path, html)


_ARROWS = {"higher": "↑", "lower": "↓"}


def scores_table(report: EvalReport, ci: bool = True) -> str:
    """An evaluation as an HTML table: a row per map (the methods, then the reference maps), a
    column per metric with ↑ or ↓ (which way is better), each cell the mean over the samples
    and, with `ci`, its bootstrap 95% CI and the number of finite values; the best mean of each
    column (by its direction, references included) in bold, "n/a" where there is no value."""
    names = report.metrics
    directions = [report[report.methods[0]][m].direction for m in names]
    best = []
    for name, direction in zip(names, directions, strict=True):
        means = [report[m][name].mean for m in report.methods]
        finite = [v for v in means if math.isfinite(v)]
        pick = max if direction == "higher" else min
        best.append(pick(finite) if finite and direction in _ARROWS else None)
    head = "".join(
        f'<th class="num">{_e(n)} {_ARROWS.get(d, "")}</th>'
        for n, d in zip(names, directions, strict=True)
    )
    rows = []
    for method in report.methods:
        cells = []
        for j, name in enumerate(names):
            r = report[method][name]
            text = f"{r.mean:.3f}" if math.isfinite(r.mean) else "n/a"
            if r.mean == best[j]:
                text = f"<b>{text}</b>"
            if ci:  # the CI where it is defined (n ≥ 2), and n always
                lo, hi = r.ci
                interval = f"[{lo:.3f}, {hi:.3f}] " if math.isfinite(lo + hi) else ""
                text += f'<br><span class="ci">{interval}n={r.n}</span>'
            cells.append(f'<td class="num">{text}</td>')
        reference = method in report.references
        label = f"{_e(method)} (reference)" if reference else f"<b>{_e(method)}</b>"
        rows.append(f"<tr><td>{label}</td>{''.join(cells)}</tr>")
    key = "↑ higher is better, ↓ lower is better; the best of each column in bold"
    if ci:
        key += "; under each mean its bootstrap 95% CI (from 2 values) and the number of values"
    return f'<table><tr><th>map</th>{head}</tr>{"".join(rows)}</table><p class="key">{key}.</p>'


def write_figures_page(
    out_dir: PathLike,
    figures: Sequence[tuple[str, PathLike]],
    files: Sequence[PathLike] = (),
    title: str = "saliencelab",
    back: PathLike | None = None,
    embed: bool = False,
    report: EvalReport | None = None,
) -> Path:
    """Write `out_dir/index.html`: (caption, image) figures and links to `files` (e.g. the
    evaluation's charts and its metrics.csv), with a link `back` to the main report; with
    `report`, its `scores_table` first."""
    out_dir = make_folder(out_dir, "report folder")
    check_outputs([(out_dir / "index.html", "the report")])  # a name we chose: not user advice
    links = [f'<a href="{_href(f, out_dir)}">{_e(Path(f).name)}</a>' for f in files]
    if back is not None:
        links.insert(0, f'<a href="{_href(back, out_dir)}">back to the report</a>')
    head = '<p class="links">' + " · ".join(links) + "</p>" if links else ""
    cards = "\n".join(
        f'<article class="card"><h2>{_e(caption)}</h2>{_img(path, out_dir, embed, caption)}'
        "</article>"
        for caption, path in figures
    )
    cards = cards or '<p class="missing">No figures.</p>'
    if report is not None:
        table = f'<article class="card wide"><h2>Scores</h2>{scores_table(report)}</article>'
        cards = f"{table}\n{cards}"
    page = (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{CSS}</style></head>\n<body>"
        f"<header><h1>{_e(title)}</h1>{head}</header>"
        f"\n<main>\n{cards}\n</main>"
        "<footer>Made with saliencelab.</footer></body></html>\n"
    )
    return _write_page(out_dir / "index.html", page)


def _write_page(path: Path, text: str) -> Path:
    """Write `text` to `path` whole (a failed write leaves the page that was there); one
    sentence if it cannot be written (`core/files.py`)."""
    return write_whole(path, lambda f: f.write(text.encode("utf-8")), "the report")
