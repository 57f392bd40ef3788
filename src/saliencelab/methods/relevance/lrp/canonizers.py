"""Canonizers: reversible model surgery that puts a network in a form the LRP rules expect.

LRP rules are defined for layers z = W a + b followed by an elementwise activation. Two common
building blocks do not have that form (Montavon et al. 2019, "Layer-Wise Relevance Propagation:
An Overview", §10.2.2; Guillemot et al. 2020, "Breaking Batch Normalization for better
explainability of Deep Neural Networks through Layer-wise Relevance Propagation"):

- **BatchNorm after a Conv / Linear** (`MergeBatchNorm`). In eval mode BN is the affine map
  y = (z − μ) s + β with s = γ / sqrt(σ² + eps), so conv-then-BN is one layer with
  W' = s·W (per output channel) and b' = s (b − μ) + β. Merging them lets z-plus / gamma /
  alpha-beta see the true sign of each contribution (a BN with negative scale flips it).
- **Residual additions written in `forward`** (`MBConvResidual`, for the bundled
  EfficientNet-Lite0's `MBConvBlock`, `h + x`): the block's `forward` is replaced by one that
  adds through a `ResidualSum` module, which the composites give the epsilon rule: the relevance
  of the sum is split in proportion to each term's contribution,

      R_h = h / (h + x + ε·sign(h + x)) · R,   R_x = x / (h + x + ε·sign(h + x)) · R.

  (Without the canonizer the plain gradient through `+` is the same split with ε = 0.)

Every edit is registered with `hooks.on_exit(undo)` right after it is made, so the engine
restores the original modules and the original parameter *objects* (bit-identical, still tied to
any optimizer) after the pass, also when it fails. BN layers are paired with the Conv / Linear
registered right before them in the same parent (true of `nn.Sequential` stacks, torchvision /
timm blocks and EfficientNet-Lite0), each BN once even where the same modules are registered in
several parents; the `lrp` method checks that the canonized model gives the same logits and
says so if not.
"""

from __future__ import annotations

import types
from collections.abc import Sequence
from functools import partial
from typing import Protocol

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from ....core.derived import kept
from ....core.state import Hooks
from ....models.efficientnet_lite import MBConvBlock

SUM_NAME = "_lrp_sum"


class Canonizer(Protocol):
    """Reversible surgery: edits `model` and registers the undo of each edit on `hooks`."""

    def apply(self, model: nn.Module, hooks: Hooks) -> int:
        """Edit the model; returns the number of edits made."""
        ...


class ResidualSum(nn.Module):
    """a + b as a module, so an LRP rule can be attached to a residual addition."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b


def _out_features(layer: nn.Module) -> int | None:
    if isinstance(layer, nn.Linear):
        return layer.out_features
    if isinstance(layer, _ConvNd) and not layer.transposed:
        return layer.out_channels
    return None


def merged_parameters(layer: nn.Module, bn: _BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """(W', b') of `layer` followed by `bn` in eval mode.

    W' = s·W, b' = s (b − μ) + β with s = γ / sqrt(σ² + eps) (γ = 1, β = 0 without affine).
    """
    with torch.no_grad():
        w = layer.weight
        scale = torch.rsqrt(bn.running_var + bn.eps)
        if bn.affine:
            scale = scale * bn.weight
        bias = layer.bias if layer.bias is not None else torch.zeros_like(bn.running_mean)
        shift = (bias - bn.running_mean) * scale
        if bn.affine:
            shift = shift + bn.bias
        weight = w * scale.view(-1, *([1] * (w.dim() - 1))).to(w.dtype)
        return weight, shift.to(w.dtype)


class MergeBatchNorm:
    """Merge each eval-mode BatchNorm into the Conv / Linear registered right before it.

    The layer gets W', b' as new frozen parameters and the BN is replaced by `nn.Identity` in its
    parent; undo puts back the original parameter objects and the BN module. W', b' are kept
    for the next pass until a source changes (`core/derived.py`). Layers in `keep` are left as
    they are: a neuron or channel target reads its layer's own output, which a merge would
    change (the forward stops there, so the BN after it never runs).
    """

    def __init__(self, keep: Sequence[nn.Module] = ()) -> None:
        self.keep = tuple(keep)

    def apply(self, model: nn.Module, hooks: Hooks) -> int:
        edits = 0
        # A module may be registered in several parents (`self.conv`, `self.bn` and again in
        # `self.block = nn.Sequential(self.conv, self.bn)`): each BN is merged once, and its
        # other slots after the same layer are only replaced by the identity (merging it again
        # would scale the layer's weights twice). A layer takes at most one BN.
        merged: dict[int, nn.Module] = {}  # id(bn) -> the layer it was merged into
        folded: set[int] = set()  # ids of those layers
        for parent in list(model.modules()):
            children = list(parent._modules.items())
            for (_, layer), (name, bn) in zip(children, children[1:], strict=False):
                if id(bn) in merged:
                    if merged[id(bn)] is layer:
                        self._replace(parent, name, bn, hooks)
                elif (
                    isinstance(bn, _BatchNorm)
                    and bn.running_mean is not None
                    and bn.running_var is not None
                    and _out_features(layer) == bn.num_features
                    and "weight" in layer._parameters  # not a parametrized weight
                    and not any(layer is k for k in self.keep)
                    and id(layer) not in folded
                ):
                    self._merge(parent, name, layer, bn, hooks)
                    merged[id(bn)] = layer
                    folded.add(id(layer))
                    edits += 1
        return edits

    @staticmethod
    def _replace(parent: nn.Module, name: str, bn: _BatchNorm, hooks: Hooks) -> None:
        """Another slot of a BN already merged: the identity there too, undone after."""
        hooks.on_exit(partial(parent._modules.__setitem__, name, bn))
        parent._modules[name] = kept(bn, "identity", (), nn.Identity)

    @staticmethod
    def _merge(parent: nn.Module, name: str, layer: nn.Module, bn: _BatchNorm, hooks: Hooks):
        sources = (layer.weight, layer.bias, bn.weight, bn.bias, bn.running_mean, bn.running_var)
        weight, bias = kept(
            bn,
            ("merged", bn.eps),
            (*sources, bn.num_batches_tracked),
            lambda: tuple(
                nn.Parameter(t, requires_grad=False) for t in merged_parameters(layer, bn)
            ),
        )
        params = layer._parameters
        original = (params["weight"], params["bias"])

        def undo() -> None:
            params["weight"], params["bias"] = original
            parent._modules[name] = bn

        # Swapped in the modules' dicts (what `setattr` does, without its checks: this runs for
        # every BatchNorm on every pass).
        hooks.on_exit(undo)  # registered first: a failure half-way is undone too
        params["weight"], params["bias"] = weight, bias
        parent._modules[name] = kept(bn, "identity", (), nn.Identity)


def _mbconv_forward(block: MBConvBlock, x: torch.Tensor) -> torch.Tensor:
    """`MBConvBlock.forward` with the skip addition routed through `block._lrp_sum`."""
    h = x
    if block.has_expand:
        h = block._expand_act(block._bn0(block._expand_conv(h)))
    h = block._depthwise_act(block._bn1(block._depthwise_conv(h)))
    h = block._bn2(block._project_conv(h))
    return getattr(block, SUM_NAME)(h, x)


class MBConvResidual:
    """Route the skip addition of each EfficientNet-Lite `MBConvBlock` through a `ResidualSum`."""

    def apply(self, model: nn.Module, hooks: Hooks) -> int:
        edits = 0
        for block in list(model.modules()):
            if type(block) is MBConvBlock and block.has_skip and "forward" not in vars(block):
                hooks.on_exit(partial(_undo_mbconv, block))
                block._modules[SUM_NAME] = kept(block, SUM_NAME, (), ResidualSum)
                block.forward = types.MethodType(_mbconv_forward, block)
                edits += 1
        return edits


def _undo_mbconv(block: nn.Module) -> None:
    vars(block).pop("forward", None)
    block._modules.pop(SUM_NAME, None)


def default_canonizers(keep: Sequence[nn.Module] = ()) -> tuple[Canonizer, ...]:
    """BN merging (not into the layers in `keep`), then residual sums of the bundled
    EfficientNet-Lite."""
    return (MergeBatchNorm(keep), MBConvResidual())
