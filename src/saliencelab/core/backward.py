"""Modified backward passes through ReLU-like activations (guided backprop, deconvnet).

- guided backpropagation (Springenberg et al. 2015): at each ReLU, pass back only positive
  gradients where the input was positive: R_in = (x > 0) * max(R_out, 0).
- deconvnet (Zeiler & Fergus 2014): pass back the ReLU of the gradient, ignoring the input:
  R_in = max(R_out, 0).

Both act on activation modules (`nn.ReLU`, `nn.ReLU6`); functional ReLUs are not reached, as in
Captum. ReLU6 keeps its own gate (0 < x < 6) under guided backprop.
"""

from __future__ import annotations

from typing import Protocol, Union

import torch
from torch import nn

from .state import Hooks

RELU_MODULES = (nn.ReLU, nn.ReLU6)
BACKWARD_MODES = ("plain", "guided", "deconv")


class _PositiveGradient(torch.autograd.Function):
    """Identity forward; backward keeps only positive gradients."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad.clamp(min=0)


class _DeconvReLU(torch.autograd.Function):
    """Forward = the module's output; backward = max(grad, 0) to the module's input."""

    @staticmethod
    def forward(ctx, inp, out):
        return out.detach().clone()

    @staticmethod
    def backward(ctx, grad):
        return grad.clamp(min=0), None


def _guided_hook(module, inputs, out):
    # The module's own backward applies (x > 0); clamping the incoming gradient first gives
    # (x > 0) * max(grad, 0).
    return _PositiveGradient.apply(out)


def _deconv_hook(module, inputs, out):
    return _DeconvReLU.apply(inputs[0], out)


class BackwardRule(Protocol):
    """A modified backward pass (LRP rules, DeepLIFT multipliers…) given to the engine.

    `install` registers its hooks (and any reversible model surgery, undone with
    `hooks.on_exit(undo)`) on `model`; the engine removes them after the pass, also on error.
    """

    def install(self, model: nn.Module, hooks: Hooks) -> None: ...


Backward = Union[str, BackwardRule]  # noqa: UP007


def install_backward_mode(model: nn.Module, mode: Backward, hooks: Hooks) -> int:
    """Hook every ReLU module of `model` for `mode` (or install a rule); returns hooks added."""
    if not isinstance(mode, str):
        before = len(hooks.handles)
        mode.install(model, hooks)
        return len(hooks.handles) - before
    if mode == "plain":
        return 0
    if mode not in BACKWARD_MODES:
        raise ValueError(f"unknown backward mode {mode!r}")
    fn = _guided_hook if mode == "guided" else _deconv_hook
    count = 0
    for m in model.modules():
        if isinstance(m, RELU_MODULES):
            hooks.add(m.register_forward_hook(fn))
            count += 1
    return count
