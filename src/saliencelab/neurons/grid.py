"""Drawing grids of labelled tiles: channel maps over a photo, and dataset examples.

Colouring uses the viz module (`overlay`, colour maps, colour bars) and its fonts, so these
pictures look like the method galleries.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from PIL import Image, ImageDraw, ImageOps

from ..core.errors import SaliencelabError
from ..viz.gallery import PAD, _centered, _font, _line_height, colorbar_legend, input_caption, wrap
from ..viz.overlay import crop_to_aspect, overlay, photo_to_draw_on

if TYPE_CHECKING:
    from .activations import ActivationMaps

_BACKGROUND = (255, 255, 255)
_INK = (28, 28, 32)
_MUTED = (110, 110, 120)


@dataclass
class Tile:
    """One picture and its caption lines (the first in ink, the others muted)."""

    image: Image.Image
    lines: list[str] = field(default_factory=list)


def value_text(v: float) -> str:
    """A short number for a caption: 3 significant digits."""
    return f"{v:.3g}"


def draw_grid(
    tiles: Sequence[Tile],
    columns: int | None = None,
    title: str | None = None,
    subtitle: str | None = None,
    lead: Tile | None = None,
    legend: Image.Image | None = None,
) -> Image.Image:
    """Tiles (all one size) in a grid of `columns` (default: about square), with captions.

    `lead` (e.g. the photo) gets its own column on the left, with `legend` under it; without a
    lead the legend goes under the grid.
    """
    if not tiles:
        raise SaliencelabError("There is nothing to draw; pass at least one tile.")
    tw, th = tiles[0].image.size
    if columns is not None and (isinstance(columns, bool) or int(columns) < 1):
        raise SaliencelabError(f"columns must be 1 or more, not {columns!r}.")
    cols = min(len(tiles), int(columns) if columns else math.ceil(math.sqrt(len(tiles))))
    rows = math.ceil(len(tiles) / cols)
    name_font = _font(max(11, tw // 13))
    small_font = _font(max(9, tw // 16))
    title_font = _font(max(14, tw // 9))
    n_lines = max(len(t.lines) for t in [*tiles, *([lead] if lead else [])])
    caption_h = 4 + _line_height(name_font) + max(0, n_lines - 1) * _line_height(small_font)

    left = PAD + (tw + 3 * PAD if lead else 0)
    grid_h = rows * (th + caption_h + PAD)
    lead_h = th + caption_h + PAD + (legend.height + PAD if lead and legend else 0)
    legend_below = legend is not None and lead is None
    width = left + cols * (tw + PAD)
    if legend_below:
        width = max(width, legend.width + 2 * PAD)
    # Title and subtitle wrap between words to the picture's width (a narrow grid of one or
    # two examples cut them short before).
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    title_lines = wrap(measure, title, title_font, width - 2 * PAD) if title else []
    sub_lines = wrap(measure, subtitle, small_font, width - 2 * PAD) if subtitle else []
    title_h = len(title_lines) * _line_height(title_font)
    title_h += len(sub_lines) * _line_height(small_font) + 2 if sub_lines else 0
    title_h += PAD if title_h else 0
    height = PAD + title_h + max(grid_h, lead_h if lead else 0)
    height += legend.height + PAD if legend_below else 0
    canvas = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(canvas)

    y = PAD
    for line in title_lines:
        draw.text((PAD, y), line, font=title_font, fill=_INK)
        y += _line_height(title_font)
    y += 2 if sub_lines else 0
    for line in sub_lines:
        draw.text((PAD, y), line, font=small_font, fill=_MUTED)
        y += _line_height(small_font)
    y0 = PAD + title_h

    def put(tile: Tile, x: int, y: int) -> int:
        canvas.paste(tile.image, (x, y))
        y += th + 4
        for i, line in enumerate(tile.lines):
            font = name_font if i == 0 else small_font
            _centered(draw, x, y, tw, line, font, _INK if i == 0 else _MUTED)
            y += _line_height(font)
        return y

    if lead is not None:
        put(lead, PAD, y0)
        if legend is not None:
            canvas.paste(legend, (PAD, y0 + th + caption_h + PAD))
        draw.line((left - 2 * PAD, y0, left - 2 * PAD, y0 + grid_h - PAD), fill=(225, 225, 230))
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        put(tile, left + c * (tw + PAD), y0 + r * (th + caption_h + PAD))
    if legend_below:
        canvas.paste(legend, (PAD, height - legend.height - PAD))
    return canvas


def activation_grid(
    maps: ActivationMaps,
    image: Image.Image,
    sample: int,
    tile: int = 160,
    columns: int | None = None,
    title: str | None = None,
    original_size: tuple[int, int] | None = None,
) -> Image.Image:
    """The photo, then each top channel's map over a gray copy of it, captioned "ch 42 · 3.1".

    One colour map for every tile: "diverging" when the layer has negative activations on this
    sample, else "heat". Each tile is normalised on its own (its value is in the caption). The
    photo's caption gives the size the model saw, and the original's when it differs
    (`original_size` (width, height) when `image` is already the model's view, else `image`'s).
    """
    if isinstance(tile, bool) or not isinstance(tile, int) or tile < 32:
        raise SaliencelabError(f"tile must be at least 32 pixels, got {tile!r}; use e.g. 160.")
    photo = photo_to_draw_on(image)
    h, w = maps.maps.shape[-2:]
    tw, th = tile, max(1, round(tile * h / w))
    photo_tile = crop_to_aspect(photo, w, h).resize((tw, th), Image.Resampling.LANCZOS)
    # Maps go over a gray copy of the photo, so their colours read the same on any photo.
    under = ImageOps.grayscale(photo_tile).convert("RGB")
    signed = bool((maps.activations[sample] < 0).any())
    cmap = "diverging" if signed else "heat"
    tiles = []
    channels, scores = maps.channels[sample].tolist(), maps.scores[sample].tolist()
    for c, v in zip(channels, scores, strict=True):
        # The layer's own map: overlay upsamples it bilinearly to the tile after normalising
        # (as `maps.maps` is upsampled to the input), without normalising H x W values.
        raw = maps.activations[sample, c].detach().float().cpu()
        ov = overlay(under, raw, cmap=cmap)
        tiles.append(Tile(ov, [f"ch {c} · {value_text(v)}"]))
    what = "mean activation" if maps.by == "activation" else "contribution"
    if maps.by == "contribution" and maps.target_label(sample) is not None:
        what += f" to {maps.target_label(sample)}"
    k, n = len(tiles), maps.activations.shape[1]
    if title is None:
        title = f"{maps.layer}: top {k} of {n} channels by {what}"
    a = maps.activations[sample]
    subtitle = (
        f"map {a.shape[-2]}x{a.shape[-1]}, upsampled bilinearly; each tile scaled to its own range"
    )
    if maps.by == "contribution":
        subtitle += "; tiles show activations, captions contributions"
    labels = ["negative", "0", "positive"] if signed else ["low", "high"]
    legend = colorbar_legend(cmap, width=min(160, tw), labels=labels)
    seen = (maps.maps.shape[-1], maps.maps.shape[-2])  # maps are at the input's resolution
    lead = Tile(photo_tile, input_caption(seen, original_size or photo.size))
    return draw_grid(tiles, columns, title, subtitle, lead, legend)
