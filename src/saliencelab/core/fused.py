"""BatchNorm folded into the layer before it, in place, for the engine's plain forward passes.

In eval mode BatchNorm is an affine map per channel, y = γ·(z − μ)/√(σ² + ε) + β (Ioffe &
Szegedy 2015). When z is the output of a convolution or linear layer that nothing else reads,
the map folds into that layer's weights: W' = s·W, b' = s·(b − μ) + β with s = γ/√(σ² + ε)
(the standard inference fusion; `torch.nn.utils.fusion` computes it). The folded model computes
the same function up to float rounding (~1e-6 relative) with one pass less over every activation
BatchNorm reads. Measured on one CPU thread with channels-last rows: 1.13× faster forwards of
the shapes CNN at 8 rows, 1.28× of EfficientNet-Lite0 (benchmarks/README.md).

`folded(module, example)` folds for the duration of a `with` block and puts everything back on
exit: each folded layer gets the folded weight and bias, each folded BatchNorm passes its input
through. Everything else is the model itself (its attributes, its other layers).

- Pairs are found once per model structure by a probe forward of one row: a BatchNorm (eval
  mode, running statistics) whose input is the very tensor a convolution or linear layer
  returned, each of the two called once. They are kept only if the folded model's output on the
  probe equals the model's up to float rounding (a layer output also read elsewhere fails it).
- The folded weights are kept per pair and recomputed when a source tensor changes (another
  tensor, new storage or a new in-place version; an in-place edit through `.data`, which
  bypasses version counting, is not seen: use `torch.no_grad()` and in-place ops, as
  optimisers do).

The engine folds only its plain forward-only passes (no layer edit, no layer target, no hook on
the model: `Engine.forwards`): the perturbation methods and the metrics. Gradient passes run the
model as it is: the gradient of a network with clamps (ReLU6) is not continuous, and rounding
flips units sitting at a clamp; on EfficientNet-Lite0 photos the folded model's input gradient
differed by up to 2 % of its largest value (max-relative; 0.1-0.6 % in L2). So does
`Engine.logits` (exactly `model(x)`).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils.fusion import fuse_conv_bn_weights, fuse_linear_bn_weights

from ..models.model import logits_of
from .derived import kept
from .state import Hooks, submodules

_Foldable = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_PAIRS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # module -> (structure, pairs)
_ACTIVE: weakref.WeakSet = weakref.WeakSet()  # models folded right now (no folding twice)


def has_hooks(module: nn.Module, modules: list[nn.Module] | None = None) -> bool:
    """Whether any submodule (or the global registry) has a forward or backward hook."""
    glob = nn.modules.module
    if (
        glob._global_forward_hooks
        or glob._global_forward_pre_hooks
        or glob._global_backward_hooks
        or glob._global_backward_pre_hooks
    ):
        return True
    return any(
        m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
        for m in (submodules(module) if modules is None else modules)
    )


def _pass_through(x: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
    return x


@dataclass(eq=False)
class _Pair:
    """A layer and the BatchNorm that reads its output; the folded weights, kept."""

    layer: nn.Module
    bn: _BatchNorm

    def still_foldable(self) -> bool:
        """The BatchNorm still uses running statistics, and neither module's forward was
        replaced on the instance since the pair was found."""
        return (
            _foldable_bn(self.bn)
            and "forward" not in self.bn.__dict__
            and "forward" not in self.layer.__dict__
        )

    def folded_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """W', b' of the layer with the BatchNorm folded in, kept until a source changes
        (`core/derived.py`; a train-mode BatchNorm forward updates the running statistics
        without a version bump, so `num_batches_tracked` is a source too)."""
        layer, bn = self.layer, self.bn
        sources = (layer.weight, layer.bias, bn.running_mean, bn.running_var, bn.weight, bn.bias)

        def fold() -> tuple[torch.Tensor, torch.Tensor]:
            mean, var = bn.running_mean, bn.running_var
            gamma, beta = bn.weight, bn.bias
            if gamma is None:  # no affine part: γ = 1, β = 0
                gamma, beta = torch.ones_like(mean), torch.zeros_like(mean)
            linear = isinstance(layer, nn.Linear)
            fuse = fuse_linear_bn_weights if linear else fuse_conv_bn_weights
            weight, bias = fuse(layer.weight, layer.bias, mean, var, bn.eps, gamma, beta)
            return weight.requires_grad_(False), bias.requires_grad_(False)

        key = ("folded into", id(layer), bn.eps)
        return kept(bn, key, (*sources, bn.num_batches_tracked), fold)


@contextmanager
def folded(
    module: nn.Module,
    example: torch.Tensor,
    probe: bool = True,
    modules: list[nn.Module] | None = None,
) -> Iterator[bool]:
    """Fold the model's BatchNorm layers in place inside the block (yields whether any was).

    `example`: a batch like the pass's inputs (one row is used by the probe). With
    `probe=False` only pairs found earlier are used (finding them costs two one-row forwards).
    Call with the model in the state it runs in (eval mode, frozen) and no hooks on it.
    `modules`: its `submodules`, where the caller has them (one walk for several checks).
    """
    pairs = None if module in _ACTIVE else _pairs(module, example, probe, modules)
    if pairs and not all(pair.still_foldable() for pair in pairs):
        pairs = None
    if not pairs:
        yield False
        return
    weights = [pair.folded_weights() for pair in pairs]
    with _swapped(module, pairs, weights):
        yield True


@contextmanager
def _swapped(
    module: nn.Module, pairs: list[_Pair], weights: list[tuple[torch.Tensor, torch.Tensor]]
) -> Iterator[None]:
    saved = []
    _ACTIVE.add(module)
    try:
        for pair, (weight, bias) in zip(pairs, weights, strict=True):
            params, state = pair.layer._parameters, pair.bn.__dict__
            saved.append((pair, params["weight"], params["bias"], state.get("forward")))
            params["weight"], params["bias"] = weight, bias
            state["forward"] = _pass_through
        yield
    finally:
        for pair, weight, bias, forward in reversed(saved):
            pair.layer._parameters["weight"], pair.layer._parameters["bias"] = weight, bias
            if forward is None:
                del pair.bn.__dict__["forward"]
            else:
                pair.bn.__dict__["forward"] = forward
        _ACTIVE.discard(module)


def _foldable_bn(m: nn.Module) -> bool:
    return isinstance(m, _BatchNorm) and not m.training and m.running_mean is not None


def _pairs(
    module: nn.Module, example: torch.Tensor, probe: bool, modules: list[nn.Module] | None = None
) -> list[_Pair] | None:
    """The verified pairs of the model's current structure (its submodules; found and cached
    on first use). The state of each pair is checked when folding (`_Pair.still_foldable`)."""
    cached = _PAIRS.get(module)
    if cached is None and not probe:
        return None
    structure = tuple(map(id, submodules(module) if modules is None else modules))
    if cached is not None and cached[0] == structure:
        return cached[1]
    if not probe:
        return None
    if any(m.training for m in module.modules()) or not any(map(_foldable_bn, module.modules())):
        return None  # nothing to fold, or a probe forward would update batch statistics
    if any(t.is_inference() for t in (*module.parameters(), *module.buffers())):
        return None  # no version counters: edits could not be seen
    row = example[:1].detach().clone()  # (a copy: a model may change its input)
    try:
        with torch.no_grad():
            pairs, plain = _find_pairs(module, row)
            if pairs:
                weights = [pair.folded_weights() for pair in pairs]
                with _swapped(module, pairs, weights):
                    fast = logits_of(module.forward(row))
                tol = 1e-4 * float(plain.abs().max()) + 1e-6
                same = fast.shape == plain.shape and bool(((fast - plain).abs() <= tol).all())
                pairs = pairs if same else None
    except Exception:  # noqa: BLE001  (a model the probe cannot run: use it as it is)
        pairs = None
    _PAIRS[module] = (structure, pairs or None)
    return pairs or None


def _find_pairs(module: nn.Module, row: torch.Tensor) -> tuple[list[_Pair], torch.Tensor]:
    """Layer → BatchNorm pairs seen in a probe forward, and the probe's output."""
    outputs: dict[int, tuple[nn.Module, torch.Tensor]] = {}  # id(output) -> (layer, output)
    calls: dict[nn.Module, int] = {}
    seen: list[tuple[nn.Module, nn.Module]] = []

    def layer_hook(m, inputs, out):
        calls[m] = calls.get(m, 0) + 1
        if isinstance(out, torch.Tensor):
            outputs[id(out)] = (m, out)

    def bn_hook(m, inputs):
        calls[m] = calls.get(m, 0) + 1
        x = inputs[0] if inputs else None
        if isinstance(x, torch.Tensor) and id(x) in outputs and outputs[id(x)][1] is x:
            seen.append((outputs[id(x)][0], m))

    with Hooks() as hooks:
        for m in module.modules():
            if isinstance(m, _Foldable):
                hooks.add(m.register_forward_hook(layer_hook))
            elif _foldable_bn(m):
                hooks.add(m.register_forward_pre_hook(bn_hook))
        out = logits_of(module.forward(row))
    layers = [layer for layer, _ in seen]
    pairs = [
        _Pair(layer, bn)
        for layer, bn in seen
        if calls[layer] == 1 and calls[bn] == 1 and layers.count(layer) == 1
    ]
    return pairs, out
