"""One picture per image: the photo and one overlay per method, side by side, labelled."""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from ..core.errors import SaliencelabError, closest
from ..core.result import Attribution, Explanation
from .colormaps import COLORMAPS, apply_colormap
from .io import save_image
from .overlay import (
    _check_sample_index,
    crop_to_aspect,
    default_cmap,
    overlay,
    photo_to_draw_on,
    select_map,
)

#: Gap between tiles and around the edge, in pixels.
PAD = 10
#: Tiles per row before wrapping.
MAX_COLUMNS = 6

_BACKGROUND = (255, 255, 255)
_INK = (28, 28, 32)
_MUTED = (110, 110, 120)
# Characters the bundled default font lacks, and what to draw instead.
_FALLBACK = {"\u2014": "-", "\u2013": "-", "\u2212": "-", "\u00d7": "x", "\u2192": "->"}

Attributions = Explanation | Mapping[str, Attribution] | Sequence[Attribution] | Attribution


@lru_cache(maxsize=32)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (OSError, ImportError, TypeError):  # no FreeType: fixed-size bitmap font
        return ImageFont.load_default()


@lru_cache(maxsize=1024)
def _glyph_ok(font: Any, ch: str) -> bool:
    if ch.isascii():
        return True
    try:
        missing = font.getmask("\ufffe")
        mask = font.getmask(ch)
        return mask.size != missing.size or bytes(mask) != bytes(missing)
    except (UnicodeEncodeError, OSError):
        return False


def _plain(ch: str) -> str:
    """`ch` without its accents ("é" → "e", "Å" → "A"), or "?" when that leaves nothing."""
    base = "".join(c for c in unicodedata.normalize("NFKD", ch) if not unicodedata.combining(c))
    return base if base and base.isascii() and base.isprintable() else "?"


def _drawable(text: str, font: Any) -> str:
    """`text` with characters the font cannot draw replaced (em dash → hyphen, "é" → "e",
    unknown → ?)."""
    text = "".join(_FALLBACK.get(ch, ch) for ch in text)
    return "".join(ch if _glyph_ok(font, ch) else _plain(ch) for ch in text)


def _fit(draw: ImageDraw.ImageDraw, text: str, font: Any, width: int, middle: bool = False) -> str:
    """`text`, shortened with an ellipsis until it fits in `width` pixels: at its end, or with
    `middle` in its middle, keeping its start and end (names: "gradcam_plus_plus" and "gradcam"
    stay apart as "grad…plus" and "gradcam")."""
    text = _drawable(text, font)
    if draw.textlength(text, font=font) <= width:
        return text
    head, tail = (
        (text[: (len(text) + 1) // 2], text[(len(text) + 1) // 2 :]) if middle else (text, "")
    )
    while (head or tail) and draw.textlength(head + "…" + tail, font=font) > width:
        if len(head) > len(tail) or not tail:
            head = head[:-1]
        else:
            tail = tail[1:]
    return head + "…" + tail


def wrap(draw: ImageDraw.ImageDraw, text: str, font: Any, width: int) -> list[str]:
    """`text` broken between words into lines that fit in `width` pixels (a single word wider
    than that is shortened with an ellipsis)."""
    lines: list[str] = []
    for word in _drawable(text, font).split():
        if lines and draw.textlength(f"{lines[-1]} {word}", font=font) <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return [_fit(draw, line, font, width) for line in lines]


def _line_height(font: Any) -> int:
    ascent, descent = font.getmetrics()
    return ascent + descent


def _centered(
    draw: ImageDraw.ImageDraw,
    x0: int,
    y: int,
    width: int,
    text: str,
    font,
    fill,
    middle: bool = False,
):
    text = _fit(draw, text, font, width, middle)
    x = x0 + (width - draw.textlength(text, font=font)) / 2
    draw.text((x, y), text, font=font, fill=fill)


def _cost(a: Attribution) -> str:
    """Per sample: passes, forwards and the call's seconds split evenly over its samples."""
    parts = []
    if a.passes:
        parts.append(f"{a.passes:g} pass" + ("" if a.passes == 1 else "es"))
    if a.forwards:
        parts.append(f"{a.forwards:g} fwd")
    seconds = a.seconds / max(int(a.maps.shape[0]), 1)
    if seconds:
        parts.append(f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s")
    return " · ".join(parts)


def _layer_text(layer: Any) -> str:
    if isinstance(layer, (list, tuple)):
        return ", ".join(str(x) for x in layer)
    return "" if layer is None else str(layer)


def _unique_names(attributions: Sequence[Attribution]) -> dict[str, Attribution]:
    """Each Attribution under its method name; those sharing one are told apart by their layer,
    e.g. "gradcam (features.3)" and "gradcam (features.12)", or numbered, "gradcam (2)", when
    the layers do not tell them apart (a later one used to replace an earlier one)."""
    counts: dict[str, int] = {}
    for a in attributions:
        counts[a.method] = counts.get(a.method, 0) + 1
    labels = []
    for a in attributions:
        label = a.method
        if counts[a.method] > 1 and _layer_text(a.layer):
            label = f"{a.method} ({_layer_text(a.layer)})"
        labels.append(label)
    out: dict[str, Attribution] = {}
    for label, a in zip(labels, attributions, strict=True):
        name, k = label, 1
        while name in out or (name != label and name in labels):
            k += 1
            name = f"{label} ({k})"
        out[name] = a
    return out


def _as_dict(attributions: Attributions) -> dict[str, Attribution]:
    if isinstance(attributions, Explanation):
        return dict(attributions.attributions)
    if isinstance(attributions, Attribution):
        return {attributions.method: attributions}
    if isinstance(attributions, Mapping):
        bad = [k for k, a in attributions.items() if not isinstance(a, Attribution)]
        if bad:
            raise SaliencelabError(
                f"The gallery draws Attributions (from sl.explain), but {bad[0]!r} is a "
                f"{type(attributions[bad[0]]).__name__}; draw your own maps with "
                "sl.save_overlay(image, maps, path)."
            )
        return dict(attributions)
    if isinstance(attributions, Sequence) and all(isinstance(a, Attribution) for a in attributions):
        return _unique_names(list(attributions))
    raise SaliencelabError(
        f"Expected an Explanation or a dict of Attributions, got {type(attributions).__name__}; "
        "pass the result of sl.explain(...)."
    )


def _check_sample(explanation: Explanation, sample: int) -> None:
    n = explanation.logits.shape[0]
    if not -n <= sample < n:
        raise SaliencelabError(
            f"Sample {sample} is out of range for an explanation of {n} sample(s); "
            f"pass sample between 0 and {n - 1}."
        )


def input_caption(seen: tuple[int, int], original: tuple[int, int]) -> list[str]:
    """The input tile's caption: the (width, height) the model saw, and the original photo's
    when it differs (the model's preprocessing cropped or resized it)."""
    lines = ["input", f"model saw {seen[0]} x {seen[1]}"]
    if tuple(original) != tuple(seen):
        lines.append(f"original {original[0]} x {original[1]}")
    return lines


def colorbar_legend(
    cmap: str,
    width: int = 160,
    height: int = 10,
    labels: Sequence[str] | None = None,
    font_size: int = 11,
) -> Image.Image:
    """A horizontal colour bar for `cmap` with small labels under its ends (and middle).

    Default labels: "low"/"high" for sequential maps, "negative"/"0"/"positive" for "diverging".
    """
    signed = COLORMAPS.get(cmap)
    if signed is None:
        apply_colormap(np.zeros(1), cmap)  # raises the unknown-name error
    for what, v in (("width", width), ("height", height), ("font_size", font_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise SaliencelabError(
                f"colorbar_legend: {what} must be a positive whole number of pixels, got {v!r}."
            )
    values = np.linspace(-1.0 if signed else 0.0, 1.0, width)[None].repeat(height, axis=0)
    bar = Image.fromarray(apply_colormap(values, cmap), "RGB")
    if labels is None:
        labels = ["negative", "0", "positive"] if signed else ["low", "high"]
    placed, font = _legend_labels(list(labels), width, font_size)
    lh = _line_height(font)
    out = Image.new("RGB", (width, height + 2 + lh), _BACKGROUND)
    out.paste(bar, (0, 0))
    draw = ImageDraw.Draw(out)
    draw.rectangle((0, 0, width - 1, height - 1), outline=(200, 200, 205))
    for x, text in placed:
        draw.text((x, height + 2), text, font=font, fill=_MUTED)
    return out


#: Smallest font size a legend label is shrunk to before labels are dropped.
_MIN_LEGEND_FONT = 7
#: Pixels kept free between two legend labels.
_LABEL_GAP = 3


def _legend_labels(
    labels: list[str], width: int, font_size: int
) -> tuple[list[tuple[float, str]], Any]:
    """Where to draw each legend label (x, text) under a `width`-pixel bar, and the font.

    Labels sit under their fraction of the bar (ends and middle). When they would overlap or not
    fit (a 32-px tile drew "lowhigh"), the font shrinks down to `_MIN_LEGEND_FONT`; then the
    middle labels are dropped, then all of them (one end alone would be misleading).
    """
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    n = len(labels)
    fracs = [i / (n - 1) if n > 1 else 0.5 for i in range(n)]
    keep_sets = [list(range(n))]
    if n > 2:
        keep_sets.append([0, n - 1])
    sizes = list(range(font_size, min(font_size, _MIN_LEGEND_FONT) - 1, -1))
    for keep in keep_sets:
        for size in sizes:
            font = _font(size)
            placed, right = [], -_LABEL_GAP
            for i in keep:
                text = _drawable(labels[i], font)
                tw = draw.textlength(text, font=font)
                if tw > width:
                    break
                x = min(max(fracs[i] * width - tw / 2, 0), width - tw)
                if x < right + _LABEL_GAP:
                    break
                placed.append((x, text))
                right = x + tw
            else:
                return placed, font
    return [], _font(font_size)


def gallery(
    image: Image.Image,
    explanation: Attributions,
    sample: int = 0,
    title: str | None = None,
    tile: int = 224,
    methods: list[str] | None = None,
    legend: bool = True,
    original_size: tuple[int, int] | None = None,
) -> Image.Image:
    """The photo followed by one overlay per method, each labelled with its name and cost.

    With an :class:`Explanation`, the default title is the predicted label and its probability
    for `sample`; a tile whose method explained another class says which. For a channel or
    neuron target the title is what was explained and its value instead, e.g. "channel 26 of
    features.3: 3.21". Wraps after `MAX_COLUMNS` tiles. `legend` adds the colour bars used under
    the tiles. `tile` is the longer side of a tile in pixels (tiles keep the maps' aspect
    ratio). The input tile's caption gives the size the model saw and, when it differs, the
    original photo's: `original_size` (width, height) when `image` is already the model's view
    (as the CLI draws), else `image`'s size.
    """
    if isinstance(tile, bool) or not isinstance(tile, int) or tile < 32:
        raise SaliencelabError(
            f"tile must be a whole number of pixels, at least 32, got {tile!r}; use e.g. 224."
        )
    sample = _check_sample_index(sample)
    photo = photo_to_draw_on(image)
    attributions = _as_dict(explanation)
    if methods is not None:
        chosen: dict[str, Attribution] = {}
        for name in methods:
            # a tile's name, or a method name shared by several tiles ("gradcam" for
            # "gradcam (features.3)" and "gradcam (features.12)")
            keys = [name] if name in attributions else []
            keys = keys or [k for k, a in attributions.items() if a.method == name]
            if not keys:
                raise SaliencelabError(
                    f"There is no method {name!r} to draw; available: {', '.join(attributions)}."
                    f"{closest(name, attributions)}"
                )
            chosen.update((k, attributions[k]) for k in keys)
        attributions = chosen
    if not attributions:
        raise SaliencelabError("There are no attributions to draw; pass at least one method.")

    pred_index = None
    if isinstance(explanation, Explanation):
        _check_sample(explanation, sample)
        if title is None:
            title = explanation.target_text(sample)
        if explanation.explained is None:  # (the title says which channel was explained)
            pred_index = int(explanation.predictions[sample])

    # Every tile has the aspect ratio of the first map; the photo is cropped like the model does.
    maps = {name: select_map(a, sample) for name, a in attributions.items()}
    mh, mw = next(iter(maps.values()))[0].shape  # maps are at the model's input resolution
    # `tile` is a tile's longer side: a tall map (40 wide, 300 high) used to make tiles `tile`
    # wide and 7.5 times as high (a 224-px gallery 1786 px high)
    if mh > mw:
        tw, th = max(1, round(tile * mw / mh)), tile
    else:
        tw, th = tile, max(1, round(tile * mh / mw))
    cw = max(tw, min(tile, 160))  # a column: the tile, centred, with room for its captions
    photo_tile = crop_to_aspect(photo, mw, mh).resize((tw, th), Image.Resampling.LANCZOS)

    caption = input_caption((mw, mh), original_size or photo.size)
    tiles: list[tuple[Image.Image, list[str]]] = [(photo_tile, caption)]
    cmaps: list[str] = []
    for name, a in attributions.items():
        cmaps.append(default_cmap(maps[name][1]))
        ov = overlay(photo_tile, a, sample=sample)
        if ov.size != (tw, th):
            ov = ImageOps.pad(ov, (tw, th), color=_BACKGROUND)
        lines = [name, _cost(a)]
        m = maps[name][0]
        if bool(m.max() == m.min()):  # drawn, it would look like the bare photo
            lines.append(f"flat map (all {float(m.flatten()[0]):.3g})")
        if pred_index is not None and a.target.numel() > sample:
            target = int(a.target[sample])
            if target != pred_index:
                lines.append("target: " + explanation.target_label(a, sample))
        tiles.append((ov, lines))

    name_font = _font(max(11, tile // 15))
    small_font = _font(max(9, tile // 19))
    title_font = _font(max(13, tile // 11))
    n_lines = max(len(lines) for _, lines in tiles)
    caption_h = 4 + _line_height(name_font) + (n_lines - 1) * _line_height(small_font)

    legend_imgs = []
    if legend:
        legend_imgs = [colorbar_legend(c, width=min(160, cw)) for c in dict.fromkeys(cmaps)]
    legend_h = max((im.height for im in legend_imgs), default=0)
    legend_h = legend_h + PAD if legend_h else 0

    cols = min(len(tiles), MAX_COLUMNS)
    rows = math.ceil(len(tiles) / cols)
    width = PAD + cols * (cw + PAD)
    title_lines = wrap(
        ImageDraw.Draw(Image.new("RGB", (1, 1))), title or "", title_font, width - 2 * PAD
    )
    title_h = len(title_lines) * _line_height(title_font) + PAD if title_lines else 0
    height = PAD + title_h + rows * (th + caption_h + PAD) + legend_h
    canvas = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(canvas)

    for i, line in enumerate(title_lines):
        draw.text((PAD, PAD + i * _line_height(title_font)), line, font=title_font, fill=_INK)
    y0 = PAD + title_h
    for i, (img, lines) in enumerate(tiles):
        r, c = divmod(i, cols)
        x = PAD + c * (cw + PAD)
        y = y0 + r * (th + caption_h + PAD)
        canvas.paste(img, (x + (cw - tw) // 2, y))
        y += th + 4
        _centered(draw, x, y, cw, lines[0], name_font, _INK, middle=True)  # the method
        y += _line_height(name_font)
        for line in lines[1:]:
            _centered(draw, x, y, cw, line, small_font, _MUTED)
            y += _line_height(small_font)
    x = PAD
    for im in legend_imgs:
        canvas.paste(im, (x, height - legend_h))
        x += im.width + 2 * PAD
    return canvas


def save_gallery(
    image: Image.Image,
    explanation: Attributions,
    path: str | Path,
    **kw: Any,
) -> Path:
    """Write :func:`gallery` to `path` (creating parent folders); returns the path.

    PNG unless the suffix names another format Pillow writes; the file is replaced whole or, on
    an error (one sentence), left as it was.
    """
    img = gallery(image, explanation, **kw)
    return save_image(img, path)
