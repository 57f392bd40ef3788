"""Guided backpropagation and deconvnet: the input gradient with a modified ReLU backward.

- guided backpropagation (Springenberg et al. 2015, "Striving for Simplicity: The All
  Convolutional Net"): at each ReLU, R_in = [x > 0] · max(R_out, 0).
- deconvnet (Zeiler & Fergus 2014, "Visualizing and Understanding Convolutional Networks"):
  at each ReLU, R_in = max(R_out, 0), whatever the input.

Attribution = the modified gradient ∂̃S/∂x, signed (as in Captum). Each is one shared
forward+backward pass (`core/backward.py` hooks the `nn.ReLU` / `nn.ReLU6` modules). Functional
ReLUs are not reached: a forward whose ReLUs are all functional, or a TorchScript / torch.export
model, raises; one with some functional ReLUs warns; a model without any ReLU gets the plain
gradient and a warning.
"""

from __future__ import annotations

import warnings

import torch

from ...core.backward import RELU_MODULES
from ...core.context import Context
from ...core.registry import SharedPass, register

GUIDED = SharedPass(backward="guided", input_grad=True)
DECONV = SharedPass(backward="deconv", input_grad=True)


def _modified_gradient(ctx: Context, backward: str, method: str) -> torch.Tensor:
    if not any(isinstance(m, RELU_MODULES) for m in ctx.model.module.modules()):
        warnings.warn(
            f"{method}: the model has no nn.ReLU or nn.ReLU6 module, so the result is the plain "
            "gradient; use a model whose ReLUs are modules to see the modified backward.",
            stacklevel=3,
        )
    return ctx.capture(input_grad=True, backward=backward).input_grad


@register(
    "guided_backprop",
    family="gradient",
    cost="1",
    shared_passes=(GUIDED,),
    reduction="signed sum over channels",
    rowwise=True,
)
def guided_backprop(ctx: Context) -> torch.Tensor:
    """Guided backpropagation (Springenberg et al. 2015): ReLUs pass back [x>0]·max(grad, 0)."""
    return _modified_gradient(ctx, "guided", "guided_backprop")


@register(
    "deconvnet",
    family="gradient",
    cost="1",
    shared_passes=(DECONV,),
    reduction="signed sum over channels",
    rowwise=True,
)
def deconvnet(ctx: Context) -> torch.Tensor:
    """Deconvnet (Zeiler & Fergus 2014): ReLUs pass back max(grad, 0), ignoring the input."""
    return _modified_gradient(ctx, "deconv", "deconvnet")
