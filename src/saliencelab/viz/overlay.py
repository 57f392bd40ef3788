"""Heatmaps over photos."""

from __future__ import annotations

import numbers
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..core.errors import SaliencelabError
from ..core.result import Attribution
from ..data.images import as_rgb_image
from .colormaps import COLORMAPS, apply_colormap, colormap
from .io import save_image
from .normalize import _as_tensor, _real_number, normalize_map

MapLike = Attribution | torch.Tensor | np.ndarray

# Opacity grows as strength**_GAMMA: below 1 so that mid-strength areas are not washed out.
_GAMMA = 0.7
# Signed maps (input-space gradients: IG, input x gradient, guided backprop) are sparse speckle:
# their opacity grows faster, their colour is at least half-saturated (never near-white), and
# the photo under them is shown in gray, dimmed, so red and blue are the only colours.
_SIGNED_GAMMA = 0.5
_SIGNED_FLOOR = 0.5
_SIGNED_PHOTO = 0.75


def photo_to_draw_on(image: Any) -> Image.Image:
    """The photo as 8-bit RGB (`as_rgb_image`); a float tensor in another dtype than float32 /
    float64 (float16; bfloat16, which NumPy has not) is read as float32 first, so it draws
    exactly as its float32 copy."""
    if isinstance(image, torch.Tensor) and image.is_floating_point():
        if image.dtype not in (torch.float32, torch.float64):
            image = image.float()
    photo = as_rgb_image(image, "to draw on")
    _check_size(photo)
    return photo


def _check_size(image: Image.Image) -> None:
    if image.width < 1 or image.height < 1:
        raise SaliencelabError(
            f"The photo is {image.width} x {image.height} pixels, with nothing to draw on; "
            "pass a photo at least 1 pixel wide and high."
        )


def _check_sample_index(sample: Any) -> int:
    """`sample` as an int: a whole number (Python or NumPy int, a one-element integer tensor),
    never a bool or a float."""
    if (
        isinstance(sample, torch.Tensor)
        and sample.numel() == 1
        and not sample.is_floating_point()
        and not sample.is_complex()
        and sample.dtype != torch.bool
    ):
        return int(sample.item())
    if isinstance(sample, (bool, np.bool_)) or not isinstance(sample, numbers.Integral):
        raise SaliencelabError(
            f"sample must be a whole number (the index of a sample), got {sample!r}; "
            "use e.g. sample=0."
        )
    return int(sample)


def select_map(map_or_attribution: MapLike, sample: int = 0) -> tuple[torch.Tensor, bool]:
    """The raw (H, W) map of `sample` and whether it is signed.

    An :class:`Attribution` gives `maps[sample]` and its `signed` flag; a raw (H, W) map is used
    as is and a raw (B, H, W) batch is indexed by `sample`; a raw map counts as signed when it has
    negative values.
    """
    if isinstance(map_or_attribution, Attribution):
        maps, signed = _as_tensor(map_or_attribution.maps), bool(map_or_attribution.signed)
        what = f"attribution {map_or_attribution.method!r}"
        if maps.ndim != 3:
            raise SaliencelabError(
                f"The maps of {what} have shape {tuple(maps.shape)}, expected (B, H, W); "
                "build the Attribution with one (H, W) map per sample."
            )
    else:
        maps, signed, what = _as_tensor(map_or_attribution), None, "map"
        if maps.ndim == 2:
            maps = maps.unsqueeze(0)
        elif maps.ndim != 3:
            raise SaliencelabError(
                f"Expected a map of shape (H, W) or (B, H, W), got shape {tuple(maps.shape)}; "
                "pass one saliency map, e.g. `attribution.maps[0]`."
            )
    sample = _check_sample_index(sample)
    n = maps.shape[0]
    if not -n <= sample < n:
        raise SaliencelabError(
            f"Sample {sample} is out of range for the {what} with {n} sample(s); "
            f"pass sample between 0 and {n - 1}."
        )
    m = maps[sample]
    if m.numel() == 0:
        raise SaliencelabError(f"The {what} is empty (shape {tuple(m.shape)}); pass a real map.")
    if m.is_floating_point() and not bool(torch.isfinite(m).all()):  # else drawn as the photo
        raise SaliencelabError(
            f"The {what} has NaN or infinite values (sample {sample}); check how it was computed."
        )
    if signed is None:
        signed = bool((torch.nan_to_num(m) < 0).any())
    return m, signed


def default_cmap(signed: bool) -> str:
    """ "diverging" for signed maps, "heat" for unsigned ones."""
    return "diverging" if signed else "heat"


def crop_to_aspect(image: Image.Image, width: int, height: int) -> Image.Image:
    """Center-crop `image` to the aspect ratio width:height (unchanged if it already has it)."""
    _check_size(image)
    w, h = image.size
    target = width / height
    if abs(w / h - target) <= 0.5 / min(w, h):
        return image
    if w / h > target:
        new_w = max(1, round(h * target))
        left = (w - new_w) // 2
        return image.crop((left, 0, left + new_w, h))
    new_h = max(1, round(w / target))
    top = (h - new_h) // 2
    return image.crop((0, top, w, top + new_h))


def _resize(m: torch.Tensor, width: int, height: int) -> np.ndarray:
    if tuple(m.shape) != (height, width):
        m = F.interpolate(m[None, None], size=(height, width), mode="bilinear", align_corners=False)
        m = m[0, 0]
    return m.detach().cpu().numpy()


def heatmap(
    map_or_attribution: MapLike,
    sample: int = 0,
    size: tuple[int, int] | None = None,
    cmap: str | None = None,
    clip_percentile: float | None = 99.5,
) -> Image.Image:
    """The coloured map alone (no photo), at the map's resolution or `size` = (width, height)."""
    m, signed = select_map(map_or_attribution, sample)
    name = cmap or default_cmap(signed)
    colormap(name)  # validate the name
    values = normalize_map(m, signed=COLORMAPS[name], clip_percentile=clip_percentile)
    if size is not None and not (
        isinstance(size, (tuple, list))
        and len(size) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)
    ):
        raise SaliencelabError(
            f"size must be (width, height) in whole pixels, both positive, got {size!r}; "
            "use e.g. (224, 224) or None for the map's own size."
        )
    width, height = size if size is not None else (m.shape[1], m.shape[0])
    return Image.fromarray(apply_colormap(_resize(values, width, height), name), "RGB")


def overlay(
    image: Image.Image,
    map_or_attribution: MapLike,
    sample: int = 0,
    alpha: float = 0.7,
    cmap: str | None = None,
    clip_percentile: float | None = 99.5,
) -> Image.Image:
    """Draw the map of `sample` over `image`, at the image's resolution.

    If the photo's aspect ratio differs from the map's, it is center-cropped to the map's first
    (the models center-crop the largest square). Signed maps use the "diverging" colour map and
    unsigned maps "heat", unless `cmap` says otherwise. `alpha` is the opacity of the colour where
    the map is strongest; elsewhere the opacity is `alpha * strength ** 0.7` (strength = |value|
    after normalisation by the `clip_percentile`-th percentile, in [0, 1]), so cold or neutral
    areas show the photo and mid-strength areas stay visible.

    With "diverging" (signed maps) the sign picks the hue and the strength the opacity: the
    opacity is `alpha * strength ** 0.5`, the colour that of `sign * max(strength, 0.5)` (no
    washed-out near-white tints), and the photo is drawn in gray at 75% brightness, so sparse
    pixel-level evidence stays visible over a colourful photo.

    A constant map (all zero after normalisation, signed or not) gives the bare photo, exactly.
    """
    a = _real_number(alpha)
    if a is None or not 0.0 <= a <= 1.0:
        raise SaliencelabError(
            f"alpha must be a number between 0 and 1, got {alpha!r}; use e.g. 0.5."
        )
    alpha = a
    m, signed = select_map(map_or_attribution, sample)
    photo = crop_to_aspect(photo_to_draw_on(image), m.shape[1], m.shape[0])
    name = cmap or default_cmap(signed)
    colormap(name)  # validate the name
    values = normalize_map(m, signed=COLORMAPS[name], clip_percentile=clip_percentile)
    if not bool(values.any()):  # a constant map: the bare photo, in either colour scheme
        return photo.copy()
    width, height = photo.size
    v = _resize(values, width, height)
    strength = np.clip(np.abs(v), 0.0, 1.0)
    base = np.asarray(photo, dtype=np.float32)
    if name == "diverging":
        colors = apply_colormap(np.sign(v) * np.maximum(strength, _SIGNED_FLOOR), name)
        weight = (alpha * strength**_SIGNED_GAMMA)[..., None]
        gray = base @ np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601 luma
        base = np.repeat(gray[..., None] * _SIGNED_PHOTO, 3, axis=2)
    else:
        colors = apply_colormap(v, name)
        if name == "gray":
            strength = np.ones_like(strength)  # gray has no "neutral" colour: blend it uniformly
        weight = (alpha * strength**_GAMMA)[..., None]
    out = base * (1.0 - weight) + colors.astype(np.float32) * weight
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8), "RGB")


def save_overlay(
    image: Image.Image,
    attribution: MapLike,
    path: str | Path,
    sample: int = 0,
    **kw: Any,
) -> Path:
    """Write :func:`overlay` to `path` (creating parent folders); returns the path.

    PNG unless the suffix names another format Pillow writes (".jpg", ".webp"); the file is
    replaced whole or, on an error (one sentence), left as it was.
    """
    img = overlay(image, attribution, sample=sample, **kw)
    return save_image(img, path)
