"""Drawing word scores: a self-contained HTML page and a terminal rendering (Rich).

Each word's background comes from the diverging colour map of `viz/colormaps.py` (blue =
lowers the score, white = 0, red = raises it), scaled per text and method so that the largest
|score| is fully saturated: colour(s) = diverging(s / max|s|). Unsigned scores (saliency, L2
token scores: how much a word matters, not which way) use the white-to-purple "purples" map
instead, so that no magnitude reads as "raises it"; the legend shows the scales the rows use.
The page has inline CSS, no scripts and no external assets; every piece of text in it (words,
texts, names, targets) is HTML-escaped. Hovering a word shows its score. A text cut to the
model's length says where, on the page and in the terminal.
"""

from __future__ import annotations

import html
import numbers
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.errors import SaliencelabError
from ..core.files import write_whole
from ..core.result import Attribution, Explanation
from ..viz.colormaps import apply_colormap, luminance

PathLike = str | os.PathLike


def _attributions(source: Explanation | Attribution | Mapping[str, Attribution]):
    if isinstance(source, Attribution):
        items = [(source.method, source)]
    elif isinstance(source, Mapping):
        items = list(source.items())
    else:
        raise SaliencelabError(
            f"Expected an explanation or an attribution of texts, not {type(source).__name__}."
        )
    if not items:
        raise SaliencelabError(
            "The explanation has no attributions to draw; explain texts with at least one method."
        )
    for name, a in items:
        if "tokens" not in a.extras:
            raise SaliencelabError(
                f"The attribution {name!r} has no words (.tokens): it was not computed on texts "
                "with a text model; explain strings with a model from sl.load_model('hf:PATH')."
            )
    return items


def word_scores(a: Attribution, sample: int) -> tuple[list[str], torch.Tensor]:
    """(words, their scores) of one text of an attribution."""
    n = len(a.extras["tokens"])
    if isinstance(sample, bool) or not isinstance(sample, numbers.Integral) or not -n <= sample < n:
        raise SaliencelabError(
            f"sample must be the index of one of the {n} texts explained (0 to {n - 1}), not "
            f"{sample!r}."
        )
    words = a.extras["tokens"][sample]
    return words, a.maps[sample, : len(words)].detach().float().cpu()


def word_colors(scores: torch.Tensor, signed: bool = True) -> tuple[np.ndarray, np.ndarray, float]:
    """(background RGB (n, 3), text RGB (n, 3), scale) for scores (n,): diverging at 0, or for
    unsigned scores (`signed=False`) white to purple by |score|."""
    scale = float(scores.abs().max()) if scores.numel() else 0.0
    values = scores / scale if scale > 0 else torch.zeros_like(scores)
    background = apply_colormap(values if signed else values.abs(), _cmap(signed))
    dark = luminance(background) < 0.3
    text = np.where(dark[:, None], 255, 0).astype(np.uint8).repeat(3, axis=1)
    return background, text, scale


def _hex(rgb: np.ndarray) -> str:
    return "#{:02x}{:02x}{:02x}".format(*(int(c) for c in rgb))


def _cmap(signed: bool) -> str:
    return "diverging" if signed else "purples"


def _bar(signed: bool) -> str:
    stops = apply_colormap(torch.linspace(-1 if signed else 0, 1, 9), _cmap(signed))
    gradient = ", ".join(_hex(c) for c in stops)
    return f'<span class="bar" style="background: linear-gradient(to right, {gradient})"></span>'


def legend_html(
    source: Explanation | Attribution | Mapping[str, Attribution] | None = None,
) -> str:
    """The colour scales of the rows of `source`: signed rows (blue lowers the score, red
    raises it) and unsigned ones (white to purple: how much a word matters); both without one."""
    kinds = {a.signed for _, a in _attributions(source)} if source is not None else {True, False}
    lines = []
    if True in kinds:
        lines.append(f"<span>− lowers the score</span>{_bar(True)}<span>raises it +</span>")
    if False in kinds:
        lines.append(f"<span>0</span>{_bar(False)}<span>matters most (magnitude)</span>")
    return (
        "".join(f'<div class="legend">{line}</div>' for line in lines)
        + '<p class="note">Colours are scaled per row to its largest |score| (shown on the '
        "right); hover a word for its score.</p>"
    )


def separators(a: Attribution, sample: int) -> list[str]:
    """What goes before each word of a text: the original text between the words, with white
    space collapsed to one space ("" between "<" and "b" in "<b>"); a space if unknown."""
    words = a.extras["tokens"][sample]
    texts, spans = a.extras.get("texts"), a.extras.get("char_spans")
    if not texts or not spans:
        return [""] + [" "] * (len(words) - 1)
    text, out, previous = texts[sample], [], 0
    for start, end in spans[sample]:
        gap = text[previous:start]
        out.append(" " if gap and not gap.strip() else " ".join(gap.split()))
        previous = end
    out[0] = out[0].strip()
    return out


def _tokens_html(a: Attribution, sample: int) -> str:
    words, scores = word_scores(a, sample)
    background, text, _ = word_colors(scores, bool(a.signed))
    parts = []
    for w, sep, s, bg, fg in zip(
        words, separators(a, sample), scores.tolist(), background, text, strict=True
    ):
        title = html.escape(f"{w}: {s:+.4g}", quote=True)
        parts.append(
            f'{html.escape(sep)}<span class="w" style="background:{_hex(bg)};color:{_hex(fg)}" '
            f'title="{title}">{html.escape(w)}</span>'
        )
    if cut_at(a, sample) is not None:
        parts.append(' <span class="ctx" title="the rest is not explained">… (cut)</span>')
    if a.extras.get("continuation") is not None:
        escaped = html.escape(a.extras["continuation"])
        parts.append(f' <span class="ctx" title="continuation (target)">{escaped}</span>')
    return "".join(parts)


def cut_at(a: Attribution, sample: int) -> int | None:
    """The character a text too long for the model was cut after, or None (the whole text)."""
    cut = a.extras.get("cut")
    return None if not cut else cut[sample]


#: The coloured words, their legend and scale (`legend_html`, `text_table`); the web app's page
#: uses them too.
WORDS_CSS = """
.legend { display: flex; align-items: center; gap: 0.6em; font-size: 0.9em; margin: 0.2em 0; }
.legend .bar { display: inline-block; width: 16em; height: 1em; margin: 0; border-radius: 0;
  border: 1px solid #ccc; }
td.scale { color: #555; font-size: 0.85em; white-space: nowrap; }
.tokens { line-height: 2.1; }
.w { padding: 0.15em 0.3em; border-radius: 0.25em; border: 1px solid #e4e4e4; }
.ctx { color: #777; font-style: italic; }
"""
_PAGE_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 70em; }
h1 { font-size: 1.4em; } h2 { font-size: 1.1em; margin-top: 1.6em; }
.meta, .note { color: #555; font-size: 0.9em; }
table { border-collapse: collapse; margin-top: 0.5em; }
td, th { padding: 0.4em 0.8em; border-bottom: 1px solid #eee; text-align: left;
  vertical-align: top; }
th { font-weight: 600; white-space: nowrap; }
"""


def text_html(
    source: Explanation | Attribution | Mapping[str, Attribution],
    *,
    title: str = "saliencelab: text",
    model: str | None = None,
    target: str | Mapping[int, str] | None = None,
) -> str:
    """A self-contained HTML page colouring each word of each text, one row per method.

    `model` and `target` are shown under the title (`target` may be one string or one per text
    index). Without `target`, an explanation of a score (a similarity, a continuation) shows
    what it explained and its value per text (`Explanation.target_text`, as the CLI's page).
    """
    items = _attributions(source)
    first = items[0][1]
    texts = first.extras.get("texts") or [" ".join(words) for words in first.extras["tokens"]]
    if target is None and isinstance(source, Explanation) and source.target_values is not None:
        target = {b: source.target_text(b) for b in range(len(texts))}
    meta = []
    if model:
        meta.append(f"model: {html.escape(model)}")
    if isinstance(target, str):
        meta.append(f"target: {html.escape(target)}")
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_PAGE_CSS}{WORDS_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    if meta:
        parts.append(f'<p class="meta">{" · ".join(meta)}</p>')
    parts.append(legend_html(source))
    for b, text in enumerate(texts):
        parts.append(f"<h2>Text {b + 1}: “{html.escape(text)}”</h2>")
        if isinstance(target, Mapping) and b in target:
            parts.append(f'<p class="meta">target: {html.escape(target[b])}</p>')
        end = cut_at(first, b)
        if end is not None:
            parts.append(
                f'<p class="meta">Longer than the model takes: cut after character {end} '
                f"(…{html.escape(text[max(0, end - 40) : end])}); the rest is not explained.</p>"
            )
        parts.append(text_table(source, b))
    parts.append("</body></html>")
    return "\n".join(parts)


def text_table(source: Explanation | Attribution | Mapping[str, Attribution], sample: int) -> str:
    """The HTML table of one text (`sample`): a row per method with its words coloured and its
    scale (classes of `WORDS_CSS`)."""
    rows = ["<table>"]
    for name, a in _attributions(source):
        _, _, scale = word_colors(word_scores(a, sample)[1])
        cells = _tokens_html(a, sample)
        kind = "signed" if a.signed else "magnitude"
        rows.append(
            f'<tr><th>{html.escape(name)}</th><td class="tokens">{cells}</td>'
            f'<td class="scale">max |score| {scale:.3g}<br>{kind}</td></tr>'
        )
    rows.append("</table>")
    return "\n".join(rows)


def save_text_html(
    source: Explanation | Attribution | Mapping[str, Attribution], path: PathLike, **kwargs: Any
) -> Path:
    """Write :func:`text_html` to `path` (folders created; replaced whole, one sentence if it
    cannot be written, `core/files.py`); returns the path."""
    page = text_html(source, **kwargs)
    return write_whole(path, lambda f: f.write(page.encode("utf-8")), "the page")


def shown(text: str) -> str:
    """`text` safe to print on a terminal: control characters other than tab and newline (the
    escape that starts a colour or cursor sequence, bell, carriage return, DEL, C1 codes) are
    written as `\\xNN` so that a user's text can neither restyle nor rewrite the terminal."""
    return "".join(
        f"\\x{ord(c):02x}" if (ord(c) < 32 and c not in "\t\n") or 127 <= ord(c) < 160 else c
        for c in text
    )


def terminal_text(a: Attribution, sample: int = 0):
    """The words of one text as a Rich `Text`, each on its colour (for a terminal)."""
    from rich.color import Color
    from rich.style import Style
    from rich.text import Text

    _attributions(a)
    words, scores = word_scores(a, sample)
    background, text, _ = word_colors(scores, bool(a.signed))
    out = Text()
    for w, sep, bg, fg in zip(words, separators(a, sample), background, text, strict=True):
        out.append(shown(sep))
        style = Style(bgcolor=Color.from_rgb(*map(int, bg)), color=Color.from_rgb(*map(int, fg)))
        out.append(shown(w), style=style)
    if cut_at(a, sample) is not None:
        out.append(" … (cut: the rest is not explained)", style="dim italic")
    if a.extras.get("continuation") is not None:
        out.append(" " + shown(a.extras["continuation"]), style="dim italic")
    return out
