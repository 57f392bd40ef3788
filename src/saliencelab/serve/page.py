"""The web app's one page: the form (model, image, methods, target, layer) and, after a
request, its results (the image as the model sees it, the top classes, one overlay per method).

Everything a user or a model supplies (file names, class names, targets, layer names, error
sentences) is escaped with `html.escape`; images are inlined as PNG data URIs, so a saved page
is self-contained.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from dataclasses import dataclass, field

from PIL import Image

from ..core.registry import MethodSpec
from ..core.result import Attribution, cost_text
from ..metrics.evaluate import EvalReport
from ..report.html import CSS, _e, scores_table
from ..text.render import WORDS_CSS

_PAGE_CSS = """
form.main { background: var(--card); border: 1px solid var(--line); border-radius: 10px;
  padding: 14px 18px; margin: 0 32px; display: grid; gap: 10px; }
form.main label { font-size: 14px; }
.row { display: flex; flex-wrap: wrap; gap: 16px; align-items: center; }
fieldset { border: 1px solid var(--line); border-radius: 8px; padding: 6px 10px; margin: 0; }
legend { color: var(--muted); font-size: 13px; }
.methods { display: flex; flex-wrap: wrap; gap: 4px 14px; font-size: 14px; }
.methods label { white-space: nowrap; }
button { font: inherit; padding: 4px 14px; border-radius: 6px; border: 1px solid var(--accent);
  background: var(--accent); color: #fff; cursor: pointer; }
button.small { padding: 0 8px; font-size: 12px; background: var(--card); color: var(--accent); }
.error-box { margin: 12px 32px 0; padding: 10px 14px; border-radius: 8px;
  border-left: 5px solid var(--bad); background: var(--bad-bg); color: var(--bad); }
.results { padding: 16px 32px 32px; display: grid; gap: 16px;
  grid-template-columns: minmax(200px, 320px) 1fr; align-items: start; }
@media (max-width: 800px) { .results { grid-template-columns: 1fr; } }
.results > .wide { grid-column: 1 / -1; }
.card .overlays { grid-template-columns: repeat(auto-fill, minmax(220px, 1fr)); }
.cost { color: var(--muted); font-size: 12px; display: block; }
form.inline { display: inline; margin: 0; }
textarea { font: inherit; vertical-align: top; }
.words .note { color: var(--muted); font-size: 13px; margin: 4px 0; }
.words td, .words th { vertical-align: top; }
"""


@dataclass
class Choices:
    """What the form offers and what it shows as chosen."""

    models: Sequence[str]
    samples: Sequence[str]
    methods: Sequence[MethodSpec]
    model: str = ""
    sample: str = ""
    chosen_methods: Sequence[str] = ()
    target: str = ""
    layer: str = ""
    options: str = ""
    metrics: Sequence[tuple[str, str, str]] = ()  # (name, family, direction) of each offered
    chosen_metrics: Sequence[str] = ()
    image_id: str = ""  # an image the server keeps, sent again by the form
    image_name: str = ""
    text: str = ""
    has_text: bool = False  # a text model is served: the form has a Text field
    channels: bool = False  # show the layer's top channels
    by: str = "activation"


@dataclass
class Overlay:
    """One method's map over the image: the picture, what it explained, and the Attribution
    (its cost, layer and sign)."""

    image: Image.Image
    target: str
    attribution: Attribution


@dataclass
class Scores:
    """The evaluation of the maps (the methods', then the reference maps'), or the sentence
    why it could not be computed."""

    report: EvalReport | None = None
    error: str | None = None


@dataclass
class Channels:
    """A layer's top channels on the image: the grid picture and a row per channel (rank,
    channel, value, mean, max), or the sentence why they could not be drawn."""

    layer: str = ""
    by: str = "activation"
    grid: Image.Image | None = None
    rows: list[dict] = field(default_factory=list)
    n_channels: int = 0
    target: str | None = None  # what the contributions are to
    error: str | None = None


@dataclass
class Result:
    """What one request explained: an image (`shown`, `overlays`) or a text (`words`)."""

    name: str  # the image's name, or the text
    headline: str  # "predicted: tabby (0.51)" or what was explained
    top: list[tuple[int, str, float]] = field(default_factory=list)  # (index, label, prob)
    overlays: list[Overlay] = field(default_factory=list)
    seconds: float = 0.0
    scores: Scores | None = None
    shown: Image.Image | None = None  # the image as the model sees it
    words: str | None = None  # HTML: the legend and the table of coloured words per method
    explained: str | None = None  # the class a text's words are scored for
    channels: Channels | None = None


def png_data_uri(image: Image.Image) -> str:
    """`image` as a `data:image/png;base64,...` URI."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _seconds(s: float) -> str:
    return f"{s * 1000:.0f} ms" if s < 1 else f"{s:.2f} s"


def _options(values: Sequence[str], chosen: str, empty: str | None = None) -> str:
    first = f'<option value="">{_e(empty)}</option>' if empty is not None else ""
    return first + "".join(
        f'<option value="{_e(v)}"{" selected" if v == chosen else ""}>{_e(v)}</option>'
        for v in values
    )


def _method_boxes(c: Choices) -> str:
    families: dict[str, list[MethodSpec]] = {}
    for spec in c.methods:
        families.setdefault(spec.family, []).append(spec)
    groups = []
    for family, specs in families.items():
        boxes = "".join(
            f'<label title="{_e(s.summary)} Passes per sample: {_e(s.cost)}.">'
            f'<input type="checkbox" name="methods" value="{_e(s.name)}"'
            f"{' checked' if s.name in c.chosen_methods else ''}> {_e(s.name)}</label>"
            for s in specs
        )
        groups.append(
            f'<fieldset><legend>{_e(family)}</legend><div class="methods">{boxes}</div></fieldset>'
        )
    return "".join(groups)


def _metric_boxes(c: Choices) -> str:
    if not c.metrics:
        return ""
    arrows = {"higher": "↑", "lower": "↓"}
    boxes = "".join(
        f'<label title="{_e(family)}; {_e(direction)} is better">'
        f'<input type="checkbox" name="metrics" value="{_e(name)}"'
        f"{' checked' if name in c.chosen_metrics else ''}> {_e(name)} {arrows[direction]}</label>"
        for name, family, direction in c.metrics
    )
    return (
        f"<fieldset><legend>score the maps (optional; the reference maps random, "
        f'center_gaussian and sobel are scored too)</legend><div class="methods">{boxes}</div>'
        "</fieldset>"
    )


def _text_row(c: Choices) -> str:
    if not c.has_text:
        return ""
    return (
        '<div class="row"><label>Text (for a text model) <textarea name="text" rows="2" '
        f'cols="70">{_e(c.text)}</textarea></label><span class="cost">Target, for a text '
        "model: a class of a classifier; the text to compare with for a sentence encoder; "
        "the continuation for a language model.</span></div>"
    )


def _hidden(name: str, value: str) -> str:
    return f'<input type="hidden" name="{_e(name)}" value="{_e(value)}">'


def _form(c: Choices) -> str:
    kept = ""
    if c.image_id:
        kept = (
            _hidden("image_id", c.image_id)
            + f"<span>current image: <b>{_e(c.image_name)}</b> (or pick another below)</span>"
        )
    return (
        '<form class="main" method="post" action="/explain" enctype="multipart/form-data">'
        f'<div class="row"><label>Model <select name="model">{_options(c.models, c.model)}'
        f"</select></label>{kept}</div>"
        '<div class="row"><label>Image <input type="file" name="image" accept="image/*"></label>'
        f'<label>or a sample photo <select name="sample">'
        f"{_options(c.samples, c.sample, empty='(none)')}</select></label></div>"
        f"{_text_row(c)}{_method_boxes(c)}"
        '<div class="row"><label>Target <input name="target" size="24" '
        f'placeholder="the predicted class" value="{_e(c.target)}"></label>'
        '<label>Layer <input name="layer" size="18" placeholder="found automatically" '
        f'value="{_e(c.layer)}"></label>'
        '<label>Options <input name="options" size="34" '
        'placeholder="n_steps=16; smoothgrad.n_samples=8" '
        f'value="{_e(c.options)}"></label></div>'
        f"{_metric_boxes(c)}"
        '<div class="row"><label><input type="checkbox" name="channels" value="on"'
        f"{' checked' if c.channels else ''}> the layer's top channels, by</label>"
        f'<select name="by">{_options(["activation", "contribution"], c.by)}</select>'
        '<button type="submit">Explain</button></div>'
        "</form>"
    )


def _class_button(c: Choices, index: int | str) -> str:
    """A form that explains `index` (a class, or a target such as "channel:LAYER:C") of the
    kept image with the same choices."""
    fields = _hidden("model", c.model) + _hidden("image_id", c.image_id) + _hidden("text", c.text)
    fields += "".join(_hidden("methods", m) for m in c.chosen_methods)
    fields += "".join(_hidden("metrics", m) for m in c.chosen_metrics)
    fields += _hidden("channels", "on" if c.channels else "") + _hidden("by", c.by)
    fields += _hidden("layer", c.layer) + _hidden("options", c.options)
    fields += _hidden("target", str(index))
    return (
        f'<form class="inline" method="post" action="/explain" enctype="multipart/form-data">'
        f'{fields}<button class="small" type="submit">explain</button></form>'
    )


def _scores(s: Scores) -> str:
    if s.report is None:
        return f'<div class="card wide"><h2>Scores</h2><p class="error-msg">{_e(s.error)}</p></div>'
    return (
        f'<div class="card wide"><h2>Scores</h2>{scores_table(s.report, ci=False)}'
        '<p class="key">One image: a hint, not a verdict (score a dataset with saliencelab '
        "evaluate).</p></div>"
    )


def _channels(c: Choices, ch: Channels) -> str:
    if ch.error is not None or ch.grid is None:
        sentence = f'<p class="error-msg">{_e(ch.error)}</p>'
        return f'<div class="card wide"><h2>Channels</h2>{sentence}</div>'
    what = "mean activation" if ch.by == "activation" else "contribution"
    if ch.target is not None:
        what += f" to {ch.target}"
    # columns: rank, channel, the ranking value, the mean activation when that is not it, max
    heads = ["rank", "channel", what] + (["mean activation"] if ch.by != "activation" else [])
    heads.append("max activation")
    keys = ["rank", "channel", "value"] + (["mean"] if ch.by != "activation" else []) + ["max"]
    rows = []
    for r in ch.rows:
        cells = "".join(
            f'<td class="num">{r[k] if k in ("rank", "channel") else format(r[k], ".4g")}</td>'
            for k in keys
        )
        button = _class_button(c, f"channel:{ch.layer}:{r['channel']}")
        rows.append(f"<tr>{cells}<td>{button}</td></tr>")
    head = "".join(f'<th class="num">{_e(h)}</th>' for h in heads)
    head += "<th>explain the channel</th>"
    return (
        f'<div class="card wide"><h2>Channels of {_e(ch.layer)}</h2>'
        f'<p class="summary">top {len(ch.rows)} of {ch.n_channels} by {what}; "explain" '
        "explains a channel's mean activation with the methods ticked</p>"
        f'<img src="{png_data_uri(ch.grid)}" alt="the top channels">'
        f"<table><tr>{head}</tr>{''.join(rows)}</table></div>"
    )


def _results(c: Choices, r: Result) -> str:
    rows = "".join(
        f'<tr><td>{_e(label)}</td><td class="num">{p:.3f}</td>'
        f"<td>{_class_button(c, i) if c.image_id or c.text else ''}</td></tr>"
        for i, label, p in r.top
    )
    top = (
        f'<table><tr><th>class</th><th class="num">probability</th><th></th></tr>{rows}</table>'
        if rows
        else ""
    )
    if r.words is not None:  # a text
        explained = ""
        if r.explained:
            explained = f'<p class="summary">explained: <b>{_e(r.explained)}</b></p>'
        return (
            '<section class="results">'
            f'<div class="card"><h2>Text</h2><p class="summary">{_e(r.headline)}</p>'
            f"{explained}{top}</div>"
            f'<div class="card words"><div class="head"><h2>Words</h2><span class="prob">'
            f"{_seconds(r.seconds)} in all</span></div>{r.words}</div>"
            f"{_scores(r.scores) if r.scores is not None else ''}"
            f"{_channels(c, r.channels) if r.channels is not None else ''}"
            "</section>"
        )
    figures = []
    for o in r.overlays:
        a = o.attribution
        layer = f" · layer {_e(a.layer)}" if a.layer else ""
        figures.append(
            f'<figure><img src="{png_data_uri(o.image)}" alt="{_e(a.method)} map">'
            f"<figcaption><b>{_e(a.method)}</b> · {_e(o.target)}"
            f'<span class="cost">{_seconds(a.seconds)} · {cost_text(a.passes, a.forwards)}'
            f"{layer}</span>"
            "</figcaption></figure>"
        )
    signed = any(o.attribution.signed for o in r.overlays)
    unsigned = any(not o.attribution.signed for o in r.overlays)
    key = []
    if signed:
        key.append("signed maps: red for the target, blue against it")
    if unsigned:
        key.append("unsigned maps: brighter is more")
    shown = png_data_uri(r.shown) if r.shown is not None else ""
    return (
        '<section class="results">'
        f'<div class="card"><h2>{_e(r.name)}</h2>'
        f'<p class="summary">{_e(r.headline)}</p>'
        f'<img class="gallery" src="{shown}" alt="the image as the model sees '
        f'it">{top}</div>'
        f'<div class="card"><div class="head"><h2>Maps</h2><span class="prob">'
        f"{_seconds(r.seconds)} in all</span></div>"
        f'<div class="overlays">{"".join(figures)}</div>'
        f'<p class="key">{_e("; ".join(key))}.</p></div>'
        f"{_scores(r.scores) if r.scores is not None else ''}"
        f"{_channels(c, r.channels) if r.channels is not None else ''}"
        "</section>"
    )


def render(c: Choices, result: Result | None = None, error: str | None = None) -> str:
    """The whole page: the form, then the error sentence or the results."""
    err = f'<div class="error-box">{_e(error)}</div>' if error else ""
    body = _results(c, result) if result is not None else ""
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>saliencelab</title><style>{CSS}{WORDS_CSS}{_PAGE_CSS}</style></head>\n<body>"
        '<header><h1>saliencelab</h1><p class="summary">See what a model looks at: pick a '
        "model, an image and methods.</p></header>"
        f"{_form(c)}{err}{body}"
        "<footer>Made with saliencelab. This page is self-contained: save it to keep the "
        "results.</footer></body></html>\n"
    )
