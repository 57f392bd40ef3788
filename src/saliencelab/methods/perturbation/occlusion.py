"""Occlusion (Zeiler & Fergus, "Visualizing and Understanding Convolutional Networks", ECCV 2014).

A window of h × w pixels (all channels) slides over the image with stride s; at each position the
window is replaced by the baseline and the target score re-evaluated. With windows k covering
pixel p,

    A(p) = mean over k ∋ p of  S(x) − S(x with window k replaced by the baseline),

the same for every channel. Window positions are those of Captum's `Occlusion` with
`sliding_window_shapes=(C, h, w)`, `strides=(C, s, s)`: starts at 0, s, 2s, … while the previous
window did not reach the edge, the last one clipped at the border; so the same settings give
the same map.

Rows are (sample, window) pairs, n_rows = B × windows, built chunk by chunk in one vectorised
step per chunk and run through `ctx.engine.forwards` (inference mode, measured chunk sizes). The
per-window score drops are spread back onto the pixels with a transposed convolution of a box of
ones (Σ over windows of drop × window), divided by the same sum of ones (the coverage count).
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch
import torch.nn.functional as F

from ...core.batching import row_range
from ...core.context import Context, MethodOutput, check_image_batch
from ...core.errors import SaliencelabError
from ...core.registry import register
from ..options import check_flag
from .features import BASELINE_CHOICES, clean_scores, perturbation_baseline
from .incremental import crop, local_forwards, plan_local_prefix, used_layer

__all__ = ["occlusion", "window_grid"]


def _pair(value: Any, name: str) -> tuple[int, int]:
    vals = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(vals) != 2 or not all(
        isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1 for v in vals
    ):
        raise SaliencelabError(
            f"occlusion: {name} must be a positive int or a pair (h, w) of them, not {value!r}."
        )
    return int(vals[0]), int(vals[1])


def window_grid(
    size: tuple[int, int], window: tuple[int, int], stride: tuple[int, int]
) -> tuple[int, int]:
    """Window positions (rows, columns) along H and W: ⌈(L − w) / s⌉ + 1 each (as Captum)."""
    (h, w), (wh, ww), (sh, sw) = size, window, stride
    if wh > h or ww > w:
        raise SaliencelabError(
            f"occlusion: the window {wh}×{ww} is larger than the input {h}×{w}; use a window of "
            "at most the input size."
        )
    if (sh > wh and wh < h) or (sw > ww and ww < w):
        raise SaliencelabError(
            f"occlusion: a stride of {sh}×{sw} with a window of {wh}×{ww} leaves pixels no window "
            "covers; use a stride of at most the window size."
        )
    return math.ceil((h - wh) / sh) + 1, math.ceil((w - ww) / sw) + 1


def _spread(values: torch.Tensor, size, window, stride) -> torch.Tensor:
    """(B, nh, nw) per-window values → (B, H, W) sums over the windows covering each pixel."""
    ones = torch.ones(1, 1, *window, dtype=values.dtype, device=values.device)
    out = F.conv_transpose2d(values[:, None], ones, stride=stride)
    return out[:, 0, : size[0], : size[1]]


@register(
    "occlusion",
    family="perturbation",
    cost=(
        "windows = (⌈(H−h)/s⌉+1)·(⌈(W−w)/s⌉+1) forwards; incremental: up to 6 more per "
        "call (3 rows checked)"
    ),
    reduction="mean score drop of the windows covering the pixel (same for every channel)",
    # incremental forwards run crops outside the chunk's rows; a baseline tensor may be per batch
    rowwise=lambda options: (
        not options["incremental"] and not isinstance(options["baseline"], torch.Tensor)
    ),
    choices={"baseline": BASELINE_CHOICES},
)
def occlusion(
    ctx: Context,
    *,
    window: int | tuple[int, int] = 16,
    stride: int | tuple[int, int] = 8,
    baseline: Any = 0.0,
    blur_sigma: float = 10.0,
    incremental: bool = True,
) -> MethodOutput:
    """Occlusion (Zeiler & Fergus 2014): mean score drop when a sliding window is replaced.

    A(p) = mean over windows k covering p of S(x) − S(x with window k := baseline), equal to
    Captum's Occlusion with sliding_window_shapes=(C, h, w), strides=(C, s, s). Options: `window`
    (int or (h, w)), `stride` (int or (h, w)), `baseline` a number (default 0.0; None and "zero"
    mean the same) | "blur" (Gaussian blur, `blur_sigma` pixels) | "mean" (per-channel mean of the
    image) | a tensor broadcastable to the inputs. maps = A (not summed over channels).

    `incremental=True` recomputes the model's early layers only around each window when that
    saves time and reproduces full forwards (`incremental.py`, Nakandala et al. 2019); the
    map is the same up to float rounding. extras["incremental"] names the layer it ran from.
    """
    check_image_batch(ctx.x, "occlusion")
    incremental = check_flag(incremental, "incremental", "occlusion")
    x = ctx.x
    batch, _, height, width = x.shape
    wh, ww = _pair(window, "window")
    sh, sw = _pair(stride, "stride")
    nh, nw = window_grid((height, width), (wh, ww), (sh, sw))
    n_win = nh * nw
    base = perturbation_baseline(x, baseline, "occlusion", blur_sigma)
    if base.shape[-2:] != (1, 1):
        base = base.expand(base.shape[0], x.shape[1], height, width)
    dev = x.device

    # Window k of every sample: its box (top, left, bottom, right) in pixels, clipped.
    k = torch.arange(n_win, device=dev)
    tops, lefts = (k // nw) * sh, (k % nw) * sw
    boxes = torch.stack(
        [tops, lefts, (tops + wh).clamp_max(height), (lefts + ww).clamp_max(width)], 1
    )

    def perturbed(rows: torch.Tensor, top: torch.Tensor, left: torch.Tensor, size) -> torch.Tensor:
        """Rows (sample r // n_win, window r % n_win) cropped to `size` at (top, left)."""
        samples, box = rows // n_win, boxes[rows % n_win]
        ys = top[:, None] + torch.arange(size[0], device=dev)  # (n, h) absolute rows
        xs = left[:, None] + torch.arange(size[1], device=dev)
        in_h = (ys >= box[:, :1]) & (ys < box[:, 2:3])
        in_w = (xs >= box[:, 1:2]) & (xs < box[:, 3:4])
        occluded = (in_h[:, :, None] & in_w[:, None, :])[:, None]  # (n, 1, h, w)
        return torch.where(
            occluded, crop(base, samples, top, left, size), crop(x, samples, top, left, size)
        )

    prefix = plan_local_prefix(ctx, boxes) if incremental else None
    clean = clean_scores(ctx)
    drops = torch.empty(batch * n_win, dtype=clean.dtype, device=dev)
    check = torch.tensor(sorted({0, n_win // 2, n_win - 1}), device=dev)
    chunks = local_forwards(
        ctx,
        prefix,
        batch * n_win,
        lambda r: r // n_win,
        lambda r: boxes[r % n_win],
        perturbed,
        check,
    )
    for chunk in chunks:  # (rows lo .. hi - 1: no chunk waits for a GPU)
        lo, hi = row_range(chunk.rows)
        drops[lo:hi] = clean[chunk.samples] - chunk.scores.to(dev)
    drops = drops.view(batch, nh, nw)
    total = _spread(drops, (height, width), (wh, ww), (sh, sw))
    count = _spread(torch.ones_like(drops[:1]), (height, width), (wh, ww), (sh, sw))
    maps = total / count
    attributions = maps[:, None].expand(x.shape)
    if x.is_floating_point():  # never an integer dtype: score drops are real numbers
        attributions = attributions.to(x.dtype)
    extras = {"windows": (nh, nw), "incremental": used_layer(prefix)}
    return MethodOutput(attributions, maps=maps, extras=extras)
