"""What every class activation map shares: layers, the shared pass, weighting, multi-layer fusion.

A CAM at a layer with activations A (B, K, h, w) is

    L = ReLU(Σ_k w_k ⊙ A_k)

where the methods differ only in the weights w: one number per channel (B, K) for CAM, Grad-CAM,
Grad-CAM++, XGrad-CAM, Score-CAM and Ablation-CAM, or one per activation (B, K, h, w) for HiResCAM
and LayerCAM. :func:`weighted_sum` is that formula; :func:`fuse` combines the maps of several
layers when `layer=[...]` names more than one.

Methods return the map at the layer's resolution (B, h, w); `sl.explain` upsamples it bilinearly
to the input. A fused map is returned at input resolution, because the layers' resolutions differ.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ...core.context import Capture, Context, LayerArg, MethodOutput, check_image_batch, upsample
from ...core.errors import SaliencelabError
from ...core.registry import SharedPass
from ..options import check_flag

# The one forward+backward pass all gradient CAMs share: the activations of their layers and the
# gradient of the target score with respect to them (backward stops at the layers).
LAYER_GRADIENT = SharedPass(backward="plain", input_grad=False, layer=True)

FUSIONS = ("mean", "max")


def cam_layers(
    ctx: Context, layer: LayerArg, fusion: str, relu: Any = True
) -> dict[str, nn.Module]:
    """The layers of a CAM call (one, or several to fuse), with the options checked first."""
    check_flag(relu, "relu", ctx.method or "A CAM")
    if fusion not in FUSIONS:
        raise SaliencelabError(
            f"fusion must be one of {', '.join(map(repr, FUSIONS))}, not {fusion!r}."
        )
    if isinstance(layer, (list, tuple)) and not layer:
        raise SaliencelabError(
            "layer=[] names no layer; give a layer name, a list of them, or None."
        )
    layers = ctx.layers(layer)
    if len(layers) > 1:
        check_image_batch(ctx.x, f"{ctx.method or 'A CAM'} over several layers")
    return layers


def layer_pass(ctx: Context, layers: Mapping[str, nn.Module]) -> Capture:
    """The shared pass over `layers`, every layer checked to give a spatial map (B, K, h, w)."""
    cap = ctx.capture(dict(layers), input_grad=False)
    for name in layers:
        check_spatial(name, cap.activations[name])
    return cap


def check_spatial(name: str, activations: torch.Tensor) -> None:
    """Fail clearly unless the layer's output is a spatial map (B, K, h, w) with h·w > 1."""
    if activations.dim() != 4 or activations.shape[-2:].numel() < 2:
        raise SaliencelabError(
            f"The layer {name} outputs shape {tuple(activations.shape)}, not a spatial map "
            "(B, C, h, w) with h·w > 1, which CAM methods need; pick a 2-D convolutional layer "
            "before the global pooling (or leave layer=None to use the last one)."
        )


def weighted_sum(a: torch.Tensor, weights: torch.Tensor, relu: bool = True) -> torch.Tensor:
    """Σ_k w_k ⊙ A_k then ReLU: A (B, K, h, w), w (B, K) or (B, K, h, w) → (B, h, w)."""
    if weights.dim() == 2:
        weights = weights[:, :, None, None]
    cam = (weights * a).sum(dim=1)
    return cam.clamp(min=0) if relu else cam


def fuse(
    ctx: Context, maps: Mapping[str, torch.Tensor], fusion: str = "mean", relu: bool = True
) -> MethodOutput:
    """One layer's map as is; several layers' maps fused at input resolution; signed when the
    maps were not passed through the ReLU (`relu=False`).

    Fusion: each layer's map (B, h_l, w_l) is upsampled bilinearly to the input (H, W) and divided
    by its largest absolute value per sample (its max for a non-negative map, so each layer
    peaks at 1 and none dominates by scale; an all-zero map stays zero); then the layers are
    combined per pixel by their `"mean"` (as pytorch-grad-cam does, up to its min-max scaling) or
    their `"max"` (each pixel keeps the strongest layer's evidence).
    """
    names = list(maps)
    signed = None if relu else True  # the registered default (unsigned) unless the ReLU is off
    if len(names) == 1:
        return MethodOutput(maps[names[0]], layer=names[0], signed=signed)
    size = ctx.x.shape[-2:]
    scaled = []
    for name in names:
        m = upsample(maps[name], size)
        peak = m.flatten(1).abs().amax(dim=1)[:, None, None]
        scaled.append(m / torch.where(peak > 0, peak, torch.ones_like(peak)))
    stack = torch.stack(scaled)
    fused = stack.mean(dim=0) if fusion == "mean" else stack.amax(dim=0)
    return MethodOutput(fused, layer=names, signed=signed)


def nonzero_divide(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den (broadcast), and 0 where den == 0."""
    ok = den != 0
    return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(num))


def selected_channels(a: torch.Tensor, max_channels: int | None) -> torch.Tensor:
    """(B, m) channel indices per sample: all K, or the `max_channels` of highest mean."""
    b, k = a.shape[:2]
    if max_channels is not None:
        try:  # an integer (a float such as 1.5 is refused, not truncated)
            m = None if isinstance(max_channels, bool) else operator.index(max_channels)
        except TypeError:
            m = None
        if m is None or m < 1:
            raise SaliencelabError(
                f"max_channels must be at least 1, a whole number of channels (or None for all), "
                f"not {max_channels!r}."
            )
        max_channels = m
    if max_channels is None or max_channels >= k:
        return torch.arange(k, device=a.device).expand(b, k)
    return a.mean(dim=(2, 3)).topk(max_channels, dim=1).indices


def gather_channels(a: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """The channels `idx` (B, m) of each sample of `a` (B, K, h, w) → (B, m, h, w)."""
    return a[torch.arange(a.shape[0], device=a.device)[:, None], idx]
