"""Gradient-free CAMs that weight each channel by forwards: Score-CAM and Ablation-CAM.

Both run one forward per (sample, channel) row, n_rows = B × K, through the engine: chunked under
a memory budget at a measured chunk size, in inference mode, each chunk built vectorised (masks
for Score-CAM, channel ablation in a layer hook for Ablation-CAM). The activations and the clean
score come from the shared layer pass, so the cost is 1 pass + K forwards per sample (K = the
layer's channels, or `max_channels`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...core.batching import row_slice
from ...core.context import Context, LayerArg, MethodOutput, check_image_batch
from ...core.errors import SaliencelabError
from ...core.registry import quoted, register
from .common import (
    FUSIONS,
    LAYER_GRADIENT,
    cam_layers,
    fuse,
    gather_channels,
    layer_pass,
    nonzero_divide,
    selected_channels,
    weighted_sum,
)

__all__ = ["ablationcam", "scorecam"]

WEIGHTINGS = ("softmax", "probability")


class _ChannelRows:
    """Row r of a pass over B samples × m channels: sample r // m, channel idx[r // m, r % m].

    Both are per-row tables on the device, sliced by a chunk's rows (the engine's CPU ranges:
    moved to a GPU, or indexing its tensors, they would wait for it every chunk)."""

    def __init__(self, idx: torch.Tensor) -> None:
        self.idx = idx
        self.batch, self.m = idx.shape
        self.samples = torch.arange(self.n_rows, device=idx.device) // self.m
        self.channels = idx.reshape(-1)  # row-major: entry r is idx[r // m, r % m]

    @property
    def n_rows(self) -> int:
        return self.batch * self.m

    def sample_of(self, rows: torch.Tensor) -> torch.Tensor:
        return row_slice(self.samples, rows)

    def split(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.sample_of(rows), row_slice(self.channels, rows)


def _scorecam_scores(ctx: Context, a: torch.Tensor, rows: _ChannelRows, weighting: str):
    """(B, m) score of the target for x ⊙ mask_k, mask_k = the channel upsampled, min-max scaled."""
    x, size = ctx.x, ctx.x.shape[-2:]

    def make_inputs(r: torch.Tensor) -> torch.Tensor:
        samples, channels = rows.split(r)
        up = F.interpolate(
            a[samples, channels][:, None], size=size, mode="bilinear", align_corners=False
        )
        low = up.amin(dim=(2, 3), keepdim=True)
        mask = nonzero_divide(up - low, up.amax(dim=(2, 3), keepdim=True) - low)
        return x[samples] * mask.to(x.dtype)  # (the activations may be float32, x half)

    scores = []
    for chunk in ctx.engine.forwards(rows.n_rows, make_inputs, rows.sample_of, ctx.target):
        if weighting == "probability":
            scores.append(ctx.target.scores(chunk.logits.softmax(dim=-1), chunk.samples))
        else:
            scores.append(chunk.scores)
    return torch.cat(scores).view(rows.batch, rows.m)


@register(
    "scorecam",
    family="cam",
    cost="1 + K forwards (K = the layer's channels, or max_channels)",
    shared_passes=(LAYER_GRADIENT,),
    signed=False,
    reduction="cam",
    rowwise=True,
    choices={"weighting": quoted(WEIGHTINGS), "fusion": quoted(FUSIONS)},
)
def scorecam(
    ctx: Context,
    *,
    layer: LayerArg = None,
    max_channels: int | None = None,
    weighting: str = "softmax",
    relu: bool = True,
    fusion: str = "mean",
) -> MethodOutput:
    """Score-CAM: channels weighted by the score of the input masked by each (Wang et al. 2020).

    mask_k = s(Up(A_k)), Up = bilinear upsampling to the input, s = min-max scaling to [0, 1]
    (a constant channel gives mask 0); S_k = score of the target class for x ⊙ mask_k;
    L = ReLU(Σ_k α_k A_k) with

    - `weighting="softmax"` (default): α = softmax over channels of S, S the target's logit (or
      the target function's score). This is the paper's Algorithm 1 and pytorch-grad-cam's
      ScoreCAM (which upsamples with align_corners=True, we with False as the official code).
      Its baseline term f(X_b) is constant over channels, so the softmax cancels it.
    - `weighting="probability"`: α_k = softmax over classes of the masked input's logits, at the
      target class: the official code (haofanwang/Score-CAM), without a channel softmax.
      Needs class targets.

    Not the mix of the two (class probabilities, then a channel softmax): probabilities lie in
    [0, 1], so their softmax makes the weights almost uniform (tf-keras-vis issue #103).
    `max_channels=m` keeps, per sample, the m channels of highest mean activation (the others
    weigh 0), for m forwards instead of K.

    Wang et al., "Score-CAM: Score-Weighted Visual Explanations for Convolutional Neural
    Networks", CVPR Workshops 2020.
    """
    if weighting not in WEIGHTINGS:
        raise SaliencelabError(
            f"weighting must be one of {', '.join(map(repr, WEIGHTINGS))}, not {weighting!r}."
        )
    check_image_batch(ctx.x, "scorecam")
    if weighting == "probability" and ctx.target.fn is not None:
        raise SaliencelabError(
            "scorecam with weighting='probability' needs class targets, not a target function; "
            "use weighting='softmax'."
        )
    layers = cam_layers(ctx, layer, fusion, relu)
    cap = layer_pass(ctx, layers)
    maps = {}
    for name in layers:
        a = cap.activations[name]
        rows = _ChannelRows(selected_channels(a, max_channels))
        scores = _scorecam_scores(ctx, a, rows, weighting)
        alpha = scores.softmax(dim=1) if weighting == "softmax" else scores
        maps[name] = weighted_sum(gather_channels(a, rows.idx), alpha.to(a.dtype), relu)
    return fuse(ctx, maps, fusion, relu)


def _ablated_scores(ctx: Context, module: nn.Module, name: str, k: int, rows: _ChannelRows):
    """(B, m) target score with channel idx[b, j] of the layer's output set to 0."""
    x = ctx.x

    def make_inputs(r: torch.Tensor) -> torch.Tensor:
        return x[rows.split(r)[0]]

    def ablate(out: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        # The channel axis: 1 of a map (n, K, h, w); the last of tokens (n, T, K) (transformer
        # layers, every token's channel k is zeroed) or of a channels-last map (n, h, w, K).
        if out.dim() == 4 and out.shape[1] == k:
            axis = 1
        elif out.dim() in (3, 4) and out.shape[-1] == k:
            axis = out.dim() - 1
        else:
            raise SaliencelabError(
                f"The layer {name} gave an output of shape {tuple(out.shape)} while ablating, "
                f"not (n, {k}, h, w) or tokens (n, T, {k}); pick a layer that runs once per "
                "forward."
            )
        _, channels = rows.split(r)
        keep = torch.ones(out.shape[0], k, dtype=out.dtype, device=out.device)
        keep[torch.arange(out.shape[0], device=out.device), channels.to(out.device)] = 0
        shape = [out.shape[0]] + [1] * (out.dim() - 1)
        shape[axis] = k
        return out * keep.view(shape)

    scores = ctx.engine.scores(
        rows.n_rows, make_inputs, rows.sample_of, ctx.target, edit=(module, ablate)
    )
    return scores.view(rows.batch, rows.m)


@register(
    "ablationcam",
    family="cam",
    cost="1 + K forwards (K = the layer's channels, or max_channels)",
    shared_passes=(LAYER_GRADIENT,),
    signed=False,
    reduction="cam",
    rowwise=True,
    choices={"fusion": quoted(FUSIONS)},
)
def ablationcam(
    ctx: Context,
    *,
    layer: LayerArg = None,
    max_channels: int | None = None,
    relu: bool = True,
    fusion: str = "mean",
) -> MethodOutput:
    """Ablation-CAM: channels weighted by the score drop when zeroed (Desai & Ramaswamy 2020).

    w_k = (y_c − y_c^k) / y_c, with y_c the target score (logit) and y_c^k the score with channel
    k of the layer set to 0; L = ReLU(Σ_k w_k A_k). w = 0 for a sample whose y_c is 0. As in the
    paper the channel is zeroed (pytorch-grad-cam instead writes a very negative value when the
    layer's minimum is not 0). `max_channels=m` ablates, per sample, only the m channels of
    highest mean activation (the others weigh 0).

    Desai & Ramaswamy, "Ablation-CAM: Visual Explanations for Deep Convolutional Network via
    Gradient-free Localization", WACV 2020.
    """
    layers = cam_layers(ctx, layer, fusion, relu)
    cap = layer_pass(ctx, layers)
    y = cap.scores[:, None]
    maps = {}
    for name, module in layers.items():
        a = cap.activations[name]
        rows = _ChannelRows(selected_channels(a, max_channels))
        ablated = _ablated_scores(ctx, module, name, a.shape[1], rows)
        weights = nonzero_divide(y - ablated, y.expand_as(ablated))
        maps[name] = weighted_sum(gather_channels(a, rows.idx), weights.to(a.dtype), relu)
    return fuse(ctx, maps, fusion, relu)
