"""Activation maps of a layer: which channels fire on an input, and where.

`activations(model, x, layer)` captures the feature maps A (B, K, h, w) of a layer, ranks the
channels of each sample, and keeps the top ones upsampled onto the input (bilinear), ready to be
drawn as a labelled grid over the photo (`ActivationMaps.grid`). Channels are ranked

- `by="activation"`: by their mean activation a_k = (1/hw) Σ_ij A_kij (one forward, stopped
  right after the layer);
- `by="contribution"`: by their contribution to the target score S,
  c_k = (1/hw) Σ_ij (∂S/∂A_kij) · A_kij, the spatial mean of gradient × activation: the k-th
  term of the first-order Taylor expansion of S in the layer, Σ_k hw·c_k ≈ S - S(A=0), and the
  spatial mean of channel k's term in HiResCAM / Grad-CAM's weighted sum (Selvaraju et al.,
  "Grad-CAM", ICCV 2017; Draelos & Carin, "HiResCAM", 2020). One forward+backward pass, with
  the backward stopped at the layer.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from ..core.batching import batch_rows
from ..core.context import Context, autograd_allowed, upsample
from ..core.engine import Engine
from ..core.errors import SaliencelabError
from ..core.explain import input_errors_explained
from ..core.layers import refuse_unhookable, resolve_layer
from ..core.state import Hooks
from ..core.targets import LayerTarget, PendingTarget, Target, TargetSpec, layer_target
from ..core.tokens import find_token_layer, to_grid, token_layout
from ..models.model import Model, as_model
from ..viz.io import save_image
from .targets import ChannelTarget, NeuronTarget

RANKINGS = ("activation", "contribution")


def refuse_unsupported(model: Model, what: str) -> None:
    """One sentence for a model without the layers these tools read: a black-box function (no
    layers, no gradients) or a text model (token ids, no spatial maps)."""
    from ..models.blackbox import is_blackbox
    from ..text.model import TextModel

    if is_blackbox(model):
        raise SaliencelabError(
            f"{what} cannot be computed for a black-box function, which exposes no layers and no "
            "gradients; use an nn.Module (or sl.Model) instead."
        )
    if isinstance(model, TextModel) or model.extra.get("prepare") is not None:
        raise SaliencelabError(
            f"{what} cannot be computed for the text model {model.name}, which reads token ids "
            "and has no layers with spatial maps (B, C, h, w); explain texts with sl.explain and "
            "the text methods (integrated_gradients, leave_one_out, ...)."
        )


def as_batch(model: Model, x: Any) -> torch.Tensor:
    """`x` as an input batch on the model's device, as `sl.explain` takes it: a tensor (B, ...)
    (float inputs cast to the model's parameter dtype, e.g. float64 -> float32) or what
    `model.preprocess` takes; a missing batch axis (one (C, H, W) image for a model with 2-D
    convolutions, which would run it unbatched) or an empty batch is one sentence."""
    from ..core.explain import _as_batch

    if not isinstance(x, torch.Tensor) and model.preprocess is None:
        raise SaliencelabError(
            f"Got inputs of type {type(x).__name__} for a model with no preprocessing; pass a "
            "tensor, or wrap the model with sl.Model(module, preprocess=...)."
        )
    images = any(isinstance(m, nn.Conv2d) for m in model.module.modules())
    if images and isinstance(x, torch.Tensor) and x.dim() == 3 and x.shape[0] in (1, 3):
        raise SaliencelabError(
            f"Inputs need a batch axis, but got a tensor of shape {tuple(x.shape)}, one image "
            "(C, H, W); use x.unsqueeze(0) for a single input."
        )
    return _as_batch(model, x)


def not_run(name: str, target: TargetSpec = None) -> SaliencelabError:
    """One sentence for a layer the model's forward did not run: not used at all, or (with a
    neuron or channel target) not before the target's layer, where the forward stops."""
    reader = layer_target(target)
    if reader is None:
        return SaliencelabError(
            f"The layer {name} was not run by the model's forward; pick a layer the forward uses "
            "(see `saliencelab layers MODEL`)."
        )
    what = str(reader) if isinstance(reader, (ChannelTarget, NeuronTarget)) else "a layer target"
    return SaliencelabError(
        f"The layer {name} was not run by the model's forward before the target ({what}) was "
        "read, where the forward stops; pick a layer that runs before the target's layer or "
        "the target's layer itself (see `saliencelab layers MODEL`)."
    )


@contextmanager
def watched(module: nn.Module) -> Iterator[list[bool]]:
    """A flag, [True] once `module`'s forward ran while inside (its hook removed on exit)."""
    refuse_unhookable(module)
    ran = [False]

    def hook(mod: nn.Module, inputs: Any, out: Any) -> None:
        ran[0] = True

    with Hooks() as hooks:
        hooks.add(module.register_forward_hook(hook))
        yield ran


def check_spatial(name: str, activation: torch.Tensor) -> None:
    """Fail with one sentence unless the layer's output is a map (B, K, h, w)."""
    if activation.dim() != 4:
        raise SaliencelabError(
            f"The layer {name} outputs shape {tuple(activation.shape)}, not a spatial map "
            "(B, C, h, w); pick a 2-D convolutional layer (list them with `saliencelab layers "
            "MODEL --spatial`)."
        )


class LayerOutput(LayerTarget):
    """Reads a layer's whole output (forward-only passes that only want the activations)."""

    def __init__(self, layer: str | nn.Module) -> None:
        self.layer = layer

    def read(self, activation: torch.Tensor) -> torch.Tensor:
        return activation

    def __call__(self, readings: torch.Tensor) -> torch.Tensor:
        return readings.flatten(1).sum(dim=1)


def layer_outputs(
    engine: Engine, x: torch.Tensor, layer: nn.Module, name: str | None = None
) -> torch.Tensor:
    """The layer's output for every row of `x`: chunked forwards, each stopped at the layer.
    A layer the forward does not run is one sentence about `name` (its dotted name)."""
    reader = LayerOutput(layer)
    with watched(layer) as ran:
        try:
            chunks = list(engine.forwards(x.shape[0], *batch_rows(x), reader))
        except SaliencelabError:
            if ran[0]:
                raise
            raise not_run(name or type(layer).__name__) from None
    return torch.cat([c.logits for c in chunks])


@dataclass
class ActivationMaps:
    """The channels of one layer on a batch, ranked per sample.

    Attributes:
        layer: the layer's dotted name.
        by: "activation" or "contribution", what `values` hold.
        activations: (B, K, h, w) the layer's feature maps, all channels.
        values: (B, K) each channel's ranking value: its mean activation, or its contribution
            (1/hw) Σ_ij ∂S/∂A_kij · A_kij to the target score.
        channels: (B, top) the top channels of each sample, highest value first.
        scores: (B, top) their values.
        maps: (B, top, H, W) their activation maps, upsampled onto the input (bilinear).
        target: (B,) the explained class of each sample for `by="contribution"` (-1 for a
            callable or neuron target), else None.
        labels: the model's class names, for captions.
        target_name: what a target of -1 explained, e.g. "channel 26 of features.3" for a
            channel target (None: "custom", a callable).
    """

    layer: str
    by: str
    activations: torch.Tensor
    values: torch.Tensor
    channels: torch.Tensor
    scores: torch.Tensor
    maps: torch.Tensor
    target: torch.Tensor | None = None
    labels: Any = None
    target_name: str | None = None

    def __repr__(self) -> str:
        """A summary (the dataclass repr printed every activation and all the labels)."""
        top = ", ".join(str(int(c)) for c in self.channels[0, :8]) if self.channels.numel() else ""
        more = ", ..." if self.channels.shape[-1] > 8 else ""
        return (
            f"ActivationMaps({self.layer}, by {self.by}: {self.values.shape[0]} samples, "
            f"{self.values.shape[1]} channels of {tuple(self.activations.shape[-2:])}; "
            f"top channels of sample 0: {top}{more})"
        )

    def _sample(self, sample: int) -> int:
        n = self.values.shape[0]
        if not -n <= sample < n:
            raise SaliencelabError(
                f"Sample {sample} is out of range for activation maps of {n} sample(s); pass "
                f"sample between 0 and {n - 1}."
            )
        return sample % n

    def target_label(self, sample: int = 0) -> str | None:
        """The explained class of `sample` as a name, the channel or neuron of a layer target
        ("channel 26 of features.3"), "custom" for a callable; None when ranked by activation."""
        if self.target is None:
            return None
        t = int(self.target[self._sample(sample)])
        if t < 0:
            return self.target_name or "custom"
        if self.labels is not None and t < len(self.labels):
            return str(self.labels[t])
        return str(t)

    def table(self, sample: int = 0) -> list[dict[str, Any]]:
        """One row per top channel of `sample`: rank, channel, value, mean and max activation."""
        i = self._sample(sample)
        a = self.activations[i].flatten(1)
        rows = []
        channels, scores = self.channels[i].tolist(), self.scores[i].tolist()
        for rank, (c, v) in enumerate(zip(channels, scores, strict=True)):
            rows.append(
                {
                    "rank": rank + 1,
                    "channel": c,
                    "value": v,
                    "mean": float(a[c].mean()),
                    "max": float(a[c].max()),
                }
            )
        return rows

    def grid(
        self,
        image: Image.Image,
        sample: int = 0,
        tile: int = 160,
        columns: int | None = None,
        title: str | None = None,
        original_size: tuple[int, int] | None = None,
    ) -> Image.Image:
        """The photo and one tile per top channel: its map over the photo, "ch 42 · 3.1".

        `original_size`: the photo's (width, height) when `image` is already the model's view,
        for the input caption (see :func:`~saliencelab.neurons.grid.activation_grid`).
        """
        from .grid import activation_grid

        sample = self._sample(sample)
        return activation_grid(self, image, sample, tile, columns, title, original_size)

    def save_grid(self, image: Image.Image, path: str | Path, **kw: Any) -> Path:
        """Write :meth:`grid` to `path` (creating parent folders; PNG unless its suffix names
        another format); returns the path."""
        return save_image(self.grid(image, **kw), path)


def _top(top: int, k: int) -> int:
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise SaliencelabError(f"top must be a whole number of channels, 1 or more, not {top!r}.")
    return min(top, k)


@autograd_allowed()  # by="contribution" needs gradients, also inside no_grad / inference_mode
def activations(
    model: Model | nn.Module,
    x: Any,
    layer: str | nn.Module | None = None,
    top: int = 16,
    by: str = "activation",
    target: TargetSpec = None,
) -> ActivationMaps:
    """The feature maps of `layer` on `x` and each sample's `top` channels.

    Args:
        model: an `sl.Model` or a plain `nn.Module`.
        x: input batch (B, C, H, W), or image(s) the model's preprocess takes.
        layer: a dotted name, a module, or None (the model's default / last spatial layer; for
            a vision transformer the last block's first norm, its tokens laid on the patch grid).
        top: channels kept per sample.
        by: "activation" (mean activation, one forward) or "contribution" (mean over space of
            gradient × activation for the target score, one forward+backward).
        target: the score contributions are computed for (`by="contribution"` only): None for
            the predicted class, a class index or name, a callable, or `sl.channel(...)`.
    """
    if by not in RANKINGS:
        raise SaliencelabError(f"by must be 'activation' or 'contribution', not {by!r}.")
    if by == "activation" and target is not None:
        raise SaliencelabError(
            "A target is used only to rank channels by contribution; pass by='contribution' or "
            "leave the target out."
        )
    model = as_model(model)
    refuse_unsupported(model, "Activation maps")
    x = as_batch(model, x)
    with input_errors_explained(model, x), token_layout(model, x):
        return _activations(model, x, layer, top, by, target)


def _activations(
    model: Model, x: torch.Tensor, layer: Any, top: int, by: str, target: TargetSpec
) -> ActivationMaps:
    default = model.default_layer
    reshape = model.extra.get("reshape")
    if layer is None and default is None:  # vision transformers: as Context.layer
        default = find_token_layer(model.module, x, reshape)
    name, module = resolve_layer(model.module, layer, x, default)
    engine = Engine(model)
    indices = None
    if by == "activation":
        a = layer_outputs(engine, x, module, name)
        if x.dim() == 4:  # token layers (B, T, D) as maps (B, D, h, w) (core/tokens.py)
            a = to_grid(a, x.shape[-2:], module=model.module, reshape=reshape, name=name)
        check_spatial(name, a)
        values = a.mean(dim=(2, 3))
    else:
        ctx = Context(model, engine, x, PendingTarget(target, x.shape[0], model.labels))
        with watched(module) as ran:
            try:
                cap = ctx.capture({name: module}, input_grad=False)
            except SaliencelabError:
                if ran[0]:
                    raise
                raise not_run(name, target) from None
        resolved: Target = ctx.resolve(target, cap.logits)
        a, g = cap.activations[name], cap.gradients[name]
        check_spatial(name, a)
        values = (g * a).mean(dim=(2, 3))
        indices = resolved.indices.detach().clone()
    k = _top(top, a.shape[1])
    scores, channels = values.topk(k, dim=1)
    picked = a[torch.arange(a.shape[0], device=a.device)[:, None], channels]  # (B, k, h, w)
    maps = upsample(picked.flatten(0, 1), x.shape[-2:]).view(*channels.shape, *x.shape[-2:])
    reading = layer_target(target)
    labels = None if reading is not None else model.labels
    target_name = None if reading is None else str(reading)
    return ActivationMaps(name, by, a, values, channels, scores, maps, indices, labels, target_name)
