"""Conditional maps: where one channel of a layer mattered for a class.

The class score's gradient is restricted, at `layer`, to channel k: a hook on the layer passes the
forward through unchanged and, in the backward, zeroes the gradient of every other channel,

    g̃ = m_k ⊙ ∂S/∂A,   m_k = 1 on channel k, 0 elsewhere,

so the input gradient is ∂S/∂x restricted to the paths through channel k,
(∂A/∂x)ᵀ (m_k ⊙ ∂S/∂A). The chosen gradient method (input × gradient by default, or integrated
gradients, SmoothGrad, ...) then runs on that gradient. With integrated gradients this is the
conductance of the channel's neurons summed over its positions (Dhamdhere, Sundararajan & Yan,
"How Important Is a Neuron?", ICLR 2019; Captum's NeuronConductance, one neuron at a time).

Linearity identity: Σ_k m_k = 1, and these methods are linear in the gradient at the layer
(input × gradient, integrated gradients, signed saliency with `absolute=False`; not |·| or
squared variants such as saliency's default or smoothgrad_sq), so

    Σ_k conditional_map(k) = the method's unconditional map,

whenever every path from the input to the score goes through the layer (a block output of a
sequential backbone; not a layer inside a residual branch, whose skip path bypasses it).

A neuron or channel target (`sl.channel(layer', c')`) stops the forward at its own layer. At the
gated layer itself the target reads the gated output, so the map of channel k is the method's
map of the target restricted to channel k: for a target on channel c' (whose gradient at the
layer lies on channel c' alone) the whole map when k = c', and 0 for every other channel. A
gated layer the forward does not run (not used, or after the target's layer) would leave the
gradient unrestricted, so it is one sentence instead.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from ..core.errors import SaliencelabError
from ..core.explain import explain, input_errors_explained
from ..core.layers import get_layer, resolve_layer
from ..core.registry import get_method
from ..core.result import Attribution
from ..core.state import Hooks
from ..core.targets import LayerTarget, TargetSpec, layer_target
from ..core.tokens import as_layer_map, find_token_layer, token_layout
from ..models.model import Model, as_model
from .activations import as_batch, not_run, refuse_unsupported
from .targets import _index, check_channel

#: Families whose maps come from a backward pass through the layer, which the gate restricts.
BACKWARD_FAMILIES = ("gradient", "relevance")


class _GateGradient(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by a 0/1 channel mask."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(keep)
        return a.view_as(a)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (keep,) = ctx.saved_tensors
        return grad * keep, None


def _keep_mask(name: str, a: torch.Tensor, channel: int) -> torch.Tensor:
    """1 where the layer's output `a` holds channel `channel`, 0 elsewhere (broadcastable).

    A vision transformer's tokens (B, T, D) are read on the patch grid (B, D, h, w), as
    `sl.activations` reads them: the mask marks the entries that channel of the map is read
    from (found by laying each entry's index on the grid), so it keeps feature `channel` of the
    patch tokens (not token `channel`). Entries the grid does not read (the class and register
    tokens) count as their feature's channel too, where the grid's channels are the tokens'
    features: every entry then belongs to exactly one channel, and the maps of all channels
    still sum to the unconditional map.
    """
    if a.dim() != 3:
        k = check_channel(name, a, channel)
        keep = torch.zeros((1, k) + (1,) * (a.dim() - 2), dtype=a.dtype, device=a.device)
        keep[:, channel] = 1
        return keep
    index = torch.arange(a[:1].numel(), dtype=torch.float64, device=a.device).view_as(a[:1])
    grid = as_layer_map(name, index)
    check_channel(name, grid, channel)
    keep = torch.zeros(index.numel(), dtype=a.dtype, device=a.device)
    keep[grid[:, channel].flatten().long()] = 1
    keep = keep.view_as(a[:1])
    if grid.shape[1] == a.shape[-1]:  # the prefix tokens' entries: by their feature
        read = torch.zeros(index.numel(), dtype=torch.bool, device=a.device)
        read[grid.flatten().long()] = True
        feature = torch.arange(a.shape[-1], device=a.device) == channel
        keep[~read.view_as(a[:1]) & feature] = 1
    return keep


class _Gated:
    """Whether the gate's layer ran, and whether the gate went into a gradient pass."""

    def __init__(self) -> None:
        self.ran = False
        self.gated = False

    def apply(self, name: str, a: torch.Tensor, channel: int) -> torch.Tensor:
        """`a` with only `channel`'s gradient kept (`a` itself in a forward-only pass)."""
        self.ran = True
        keep = _keep_mask(name, a, channel)
        if not a.requires_grad:  # forward-only pass: nothing flows back
            return a
        self.gated = True
        return _GateGradient.apply(a, keep)


def channel_gate(name: str, channel: int, state: _Gated | None = None):
    """A forward hook keeping only `channel`'s gradient at the layer it is registered on."""
    state = state or _Gated()

    def hook(module: nn.Module, inputs: Any, out: Any) -> Any:
        a = out if isinstance(out, torch.Tensor) else out[0]
        gated = state.apply(name, a, channel)
        if gated is a:
            return None
        return gated if isinstance(out, torch.Tensor) else (gated, *out[1:])

    return hook


class _GatedReading(LayerTarget):
    """A neuron or channel target read at the gated layer itself: it reads the gated output.

    The forward stops at the target's layer before any later hook there, so the gate goes into
    the reading instead of a hook."""

    def __init__(self, reader: LayerTarget, name: str, channel: int, state: _Gated) -> None:
        self.reader, self.name, self.channel, self.state = reader, name, channel, state
        self.layer = reader.layer

    def read(self, activation: torch.Tensor) -> torch.Tensor:
        return self.reader.read(self.state.apply(self.name, activation, self.channel))

    def __call__(self, readings: torch.Tensor) -> torch.Tensor:
        return self.reader(readings)

    def __str__(self) -> str:
        return str(self.reader)


def _module(root: nn.Module, layer: str | nn.Module) -> nn.Module:
    return get_layer(root, layer) if isinstance(layer, str) else layer


def conditional_map(
    model: Model | nn.Module,
    x: Any,
    layer: str | nn.Module | None,
    channel: int,
    target: TargetSpec = None,
    method: str = "input_x_gradient",
    **options: Any,
) -> Attribution:
    """Where channel `channel` of `layer` mattered for the target: the method's map of the score
    with the gradient at the layer restricted to that channel.

    Args:
        model: an `sl.Model` or a plain `nn.Module`.
        x: input batch (B, C, H, W), or image(s) the model's preprocess takes.
        layer: a dotted name, a module, or None (the model's default / last spatial layer).
        channel: the channel k kept at the layer.
        target: the score explained (None: the predicted class), as in `sl.explain`.
        method: a gradient or relevance method (input_x_gradient, saliency, integrated_gradients,
            smoothgrad, ...); `**options` are its options (e.g. `n_steps=32`).

    Returns the method's :class:`~saliencelab.Attribution` with `layer` set and
    `extras["channel"]`. The conditional maps of all channels sum to the unconditional map
    (see the module docstring for when). A neuron or channel target at `layer` itself gives
    channel k its share of the target's gradient (for a target on channel c': the whole map
    when k = c', else 0); a `layer` the forward does not run before the target is read (or at
    all) is one sentence.
    """
    spec = get_method(method)
    if spec.family not in BACKWARD_FAMILIES:
        raise SaliencelabError(
            f"{method} is a {spec.family} method, which does not backpropagate through the layer, "
            "so a conditional map cannot restrict it; use a gradient method such as "
            "input_x_gradient or integrated_gradients."
        )
    channel = _index(channel, "channel")
    model = as_model(model)
    refuse_unsupported(model, "A conditional map")
    x = as_batch(model, x)
    default = model.default_layer
    if layer is None and default is None:  # vision transformers: as sl.activations
        default = find_token_layer(model.module, x, model.extra.get("reshape"))
    with input_errors_explained(model, x):
        name, module = resolve_layer(model.module, layer, x, default)
    reader = layer_target(target)
    state = _Gated()
    with Hooks() as hooks, token_layout(model, x):
        if reader is not None and _module(model.module, reader.layer) is module:
            target = _GatedReading(reader, name, channel, state)  # read at the gated layer
        else:
            gate = hooks.add(module.register_forward_hook(channel_gate(name, channel, state)))

            def gate_last(mod: nn.Module, args: Any) -> None:
                # The method's own hooks on this layer (DeepLIFT's and LRP's rules,
                # deconvnet's) are registered after the gate and rebuild the output from a
                # detached copy; the gate must wrap what they return, or it is cut out of the
                # graph.
                mod._forward_hooks.move_to_end(gate.id)

            hooks.add(module.register_forward_pre_hook(gate_last))
        with warnings.catch_warnings():
            # The gate passes one channel's share of the score on purpose: DeepLIFT's check
            # that the map sums to S(x) - S(x') would call that a gap.
            warnings.filterwarnings("ignore", message=".*summation-to-delta is off")
            ex = explain(model, x, methods=method, target=target, **options)
    if not state.ran:  # the gate never applied: the map would be the unrestricted one
        raise not_run(name, reader)
    if not state.gated:
        raise SaliencelabError(
            f"The output of the layer {name} carries no gradient in the model's forward "
            "(computed under torch.no_grad() or detached), so a conditional map cannot restrict "
            "it; pick a layer the score's gradient flows through."
        )
    a = ex[method]
    a.layer = name
    a.extras["channel"] = channel
    return a
