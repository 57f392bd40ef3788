"""Dataset examples: the images that make one channel fire most (Zeiler & Fergus 2014).

`top_examples(model, images, layer, channel)` runs the images through the model in batches (one
forward each, under inference mode, stopped right after the layer), scores every image by the
channel's strongest unit, max_ij A_kij, and keeps the `k` best (sorted by (-value, index): of
equal values the earlier image, whatever the batch size). Each example carries the crop of the
image around that unit: its receptive field (computed analytically from the convolutions and
poolings on the path, see :mod:`.receptive_field`), clipped to the image (the nearest pixel for
a unit that sees only padding). Only the running top k is kept, so a folder of any size takes
bounded memory.

Zeiler & Fergus, "Visualizing and Understanding Convolutional Networks", ECCV 2014 (the image
patches that activate a feature map most); Olah et al., "Feature Visualization", Distill 2017
("dataset examples").
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageOps
from torch import nn

from ..core.batching import batch_rows
from ..core.engine import Engine
from ..core.errors import SaliencelabError
from ..core.layers import resolve_layer
from ..core.targets import LayerTarget
from ..core.tokens import as_layer_map, find_token_layer, token_layout
from ..data.images import MAX_PIXELS, image_paths, load_image, to_rgb
from ..models.model import Model, as_model, as_model_input, displayed, preprocessed
from ..viz.io import save_image
from .activations import check_spatial
from .grid import Tile, draw_grid, value_text
from .receptive_field import ReceptiveField, receptive_field
from .targets import _index, check_channel

log = logging.getLogger("saliencelab")

_PAD_COLOR = (235, 235, 238)  # around a crop that is not square (clipped at the image's edge)

ImagesArg = str | os.PathLike | Image.Image | Iterable[str | os.PathLike | Image.Image]


@dataclass
class Example:
    """One image that activates the channel strongly.

    Attributes:
        source: the file path, or "image N" for a PIL image given directly.
        index: its position among the images read.
        value: the channel's strongest activation on it, max_ij A_kij.
        location: (y, x) of that unit in the layer's map.
        box: (left, top, right, bottom) of the unit's receptive field in the model's input
            pixels, clipped to the image (right/bottom exclusive; at least one pixel, the
            nearest, for a unit whose field lies wholly in the padding).
        image: the image as the model sees it (e.g. center-cropped and resized).
        crop: `image` cropped to `box`.
        activation: (h, w) the channel's map on this image.
        layer: the layer's dotted name.
        channel: the channel.
        field: the layer's receptive field (`box` is its box at `location`).
    """

    source: str
    index: int
    value: float
    location: tuple[int, int]
    box: tuple[int, int, int, int]
    image: Image.Image
    crop: Image.Image
    activation: torch.Tensor
    layer: str = ""
    channel: int = -1
    field: ReceptiveField | None = None


class _ChannelMap(LayerTarget):
    """Reads one channel's map (n, h, w) of a layer; the score is its maximum. Inside a
    `token_layout`, a transformer's tokens (n, T, D) are read on the patch grid (n, D, h, w)
    (`tokens` then says so)."""

    def __init__(self, layer: nn.Module, name: str, channel: int) -> None:
        self.layer, self.name, self.channel = layer, name, channel
        self.tokens = False

    def read(self, activation: torch.Tensor) -> torch.Tensor:
        self.tokens = isinstance(activation, torch.Tensor) and activation.dim() == 3
        activation = as_layer_map(self.name, activation)
        check_spatial(self.name, activation)
        check_channel(self.name, activation, self.channel)
        return activation[:, self.channel]

    def __call__(self, readings: torch.Tensor) -> torch.Tensor:
        return readings.flatten(1).amax(dim=1)


def _sources(images: ImagesArg) -> list[str | Path | Image.Image]:
    """Files (folders expanded, sorted) and PIL images, in order."""
    if isinstance(images, (str, os.PathLike, Image.Image)):
        images = [images]
    out: list[str | Path | Image.Image] = []
    for item in images:
        if isinstance(item, Image.Image):
            out.append(item)
        elif isinstance(item, (str, os.PathLike)):
            out.extend(image_paths(item))
        else:
            raise SaliencelabError(
                f"Images must be file paths, folders or PIL images, not {type(item).__name__}."
            )
    if not out:
        raise SaliencelabError("No images were given; pass a folder, files or PIL images.")
    return out


def _name(source: str | Path | Image.Image, index: int) -> str:
    return f"image {index + 1}" if isinstance(source, Image.Image) else str(source)


def _read(source: str | Path | Image.Image, max_pixels: int = MAX_PIXELS) -> Image.Image:
    if isinstance(source, Image.Image):
        return to_rgb(source)  # as `sl.load_image` reads a file: 16-bit stretched, alpha on white
    return load_image(source, max_pixels=max_pixels)


def model_view(model: Model, image: Image.Image, size: Sequence[int]) -> Image.Image:
    """The image as the model sees it: the model's `extra["display"]`, else resized to (H, W)."""
    shown = displayed(model, image)
    if shown is None:
        shown = image
    height, width = int(size[0]), int(size[1])
    if shown.size != (width, height):
        shown = shown.resize((width, height), Image.Resampling.BILINEAR)
    return shown


def top_examples(
    model: Model | nn.Module,
    images: ImagesArg,
    layer: str | nn.Module | None,
    channel: int,
    k: int = 9,
    batch_size: int = 16,
    max_pixels: int = MAX_PIXELS,
) -> list[Example]:
    """The `k` images that activate channel `channel` of `layer` most, best first (of equal
    values, the earlier image first).

    Args:
        model: an `sl.Model` with preprocessing (images go through `model.preprocess`).
        images: a folder, image files, PIL images, or a list of them.
        layer: a dotted name, a module, or None (the model's default / last spatial layer).
        channel: the channel k; an image's score is max over positions of A_k.
        k: examples kept.
        batch_size: images read and run together.
        max_pixels: image files with more pixels are skipped (as `sl.load_image`).

    An image that cannot be read is logged and skipped. A preprocess may keep each image's own
    size (a fully convolutional model): every example then has its own map and receptive field
    (each batch must still be one tensor, e.g. `batch_size=1`).
    """
    from .activations import refuse_unsupported

    model = as_model(model)
    refuse_unsupported(model, "Dataset examples")
    if model.preprocess is None:
        raise SaliencelabError(
            "top_examples reads images, but this model has no preprocessing; wrap it with "
            "sl.Model(module, preprocess=...)."
        )
    channel = _index(channel, "channel")
    k = _index(k, "number of examples k")
    batch_size = _index(batch_size, "batch size")
    if k < 1 or batch_size < 1:
        raise SaliencelabError("k and batch_size must be 1 or more.")
    sources = _sources(images)
    engine = Engine(model)
    module: nn.Module | None = None
    name = ""
    reader: _ChannelMap | None = None
    # Running top k, best first (ties: the earlier image first): (value, image index, the
    # channel's map (h, w), the input's shape (C, H, W), its dtype), so images of different sizes
    # each keep their own map and field.
    best: list[tuple[float, int, torch.Tensor, tuple[int, ...], torch.dtype]] = []
    n_ok = 0
    for start in range(0, len(sources), batch_size):
        batch, where = [], []
        for i in range(start, min(start + batch_size, len(sources))):
            try:
                batch.append(_read(sources[i], max_pixels))
                where.append(i)
            except SaliencelabError as e:
                log.warning("skipping %s: %s", _name(sources[i], i), e)
        if not batch:
            continue
        x = as_model_input(model, preprocessed(model, batch))  # the model's device and dtype
        if reader is None:
            default = model.default_layer
            if layer is None and default is None:  # vision transformers: as sl.activations
                default = find_token_layer(model.module, x, model.extra.get("reshape"))
            name, module = resolve_layer(model.module, layer, x, default)
            reader = _ChannelMap(module, name, channel)
        passes = engine.forwards(x.shape[0], *batch_rows(x), reader)
        with token_layout(model, x), closing(passes) as chunks:  # restored if this frame is kept
            maps = torch.cat([c.logits for c in chunks]).float().cpu()  # (n, h, w)
        n_ok += len(where)
        values = maps.flatten(1).amax(dim=1).tolist()
        shape = tuple(x.shape[1:])
        best += [(v, i, m, shape, x.dtype) for v, i, m in zip(values, where, maps, strict=True)]
        best = sorted(best, key=lambda e: (-e[0], e[1]))[:k]
    if reader is None or module is None:
        raise SaliencelabError("None of the images could be read; check the files.")
    log.info("ranked %d image%s by channel %d of %s", n_ok, "s" * (n_ok != 1), channel, name)
    fields: dict[tuple[int, ...], ReceptiveField] = {}  # one per input shape
    for _, _, amap, shape, dtype in best:
        if shape in fields:
            continue
        if reader.tokens:  # a token's own patch (it sees the whole image through attention)
            fields[shape] = ReceptiveField.token_patches(name, amap.shape, shape[-2:])
        else:
            fields[shape] = receptive_field(model, module, torch.zeros((1, *shape), dtype=dtype))
    return [
        _example(model, sources[i], i, v, m, fields[shape], channel, shape[-2:], max_pixels)
        for v, i, m, shape, _ in best
    ]


def _example(
    model: Model,
    source: str | Path | Image.Image,
    index: int,
    value: float,
    amap: torch.Tensor,
    rf: ReceptiveField,
    channel: int,
    input_size: Sequence[int],
    max_pixels: int = MAX_PIXELS,
) -> Example:
    y, x = divmod(int(amap.flatten().argmax()), amap.shape[1])
    image = model_view(model, _read(source, max_pixels), input_size)
    box = rf.box(y, x)
    crop = image.crop(box)
    return Example(
        _name(source, index), index, value, (y, x), box, image, crop, amap, rf.layer, channel, rf
    )


def examples_gallery(
    examples: Sequence[Example],
    title: str | None = None,
    tile: int = 128,
    columns: int | None = None,
) -> Image.Image:
    """The examples' crops in a grid, best first, each captioned with its rank, value and file.

    A crop clipped by the image's edge (not square) is scaled to fit and padded in light gray.
    """
    if not examples:
        raise SaliencelabError("There are no examples to draw; pass the result of top_examples.")
    if isinstance(tile, bool) or not isinstance(tile, int) or tile < 32:
        raise SaliencelabError(f"tile must be at least 32 pixels, got {tile!r}; use e.g. 128.")
    first = examples[0]
    subtitle = None
    if title is None and first.layer:
        n = len(examples)
        title = f"{first.layer}: channel {first.channel}, top {n} image{'s' if n != 1 else ''}"
    if first.field is not None and first.field.tokens:
        h, w = first.field.size
        subtitle = f"crops: the patch ({h}x{w} px) of each image's strongest token"
    elif first.field is not None:
        (h, w), (sy, sx) = first.field.size, first.field.stride
        subtitle = (
            f"crops: the receptive field ({h}x{w} px, stride {sy}"
            + ("" if sy == sx else f"x{sx}")
            + ") of each image's strongest unit"
        )
    tiles = []
    for rank, ex in enumerate(examples, start=1):
        crop = ImageOps.pad(ex.crop, (tile, tile), Image.Resampling.LANCZOS, color=_PAD_COLOR)
        tiles.append(Tile(crop, [f"#{rank} · {value_text(ex.value)}", Path(ex.source).name]))
    return draw_grid(tiles, columns, title, subtitle)


def save_examples_gallery(examples: Sequence[Example], path: str | os.PathLike, **kw: Any) -> Path:
    """Write :func:`examples_gallery` to `path` (creating parent folders; PNG unless its suffix
    names another format); returns it."""
    return save_image(examples_gallery(examples, **kw), path)
