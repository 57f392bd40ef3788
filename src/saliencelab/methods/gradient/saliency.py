"""Saliency and input×gradient: one forward+backward pass, shared with other methods."""

from __future__ import annotations

import torch

from ...core.context import Context, MethodOutput
from ...core.registry import SharedPass, register
from ..options import check_flag

INPUT_GRADIENT = SharedPass(backward="plain", input_grad=True)


@register(
    "saliency",
    family="gradient",
    cost="1",
    shared_passes=(INPUT_GRADIENT,),
    signed=False,
    reduction="sum of |grad| over channels",
    rowwise=True,
)
def saliency(ctx: Context, *, absolute: bool = True) -> MethodOutput:
    """Vanilla gradient |dS_c/dx| (Simonyan et al. 2014).

    attributions = |∂S_c/∂x| (or the signed gradient with `absolute=False`, a signed map); maps
    sum channels (Simonyan et al. take the maximum of |∂S_c/∂x| over channels).
    """
    absolute = check_flag(absolute, "absolute", "saliency")
    grad = ctx.capture(input_grad=True).input_grad
    return MethodOutput(grad.abs(), signed=False) if absolute else MethodOutput(grad, signed=True)


@register(
    "input_x_gradient",
    family="gradient",
    cost="1",
    shared_passes=(INPUT_GRADIENT,),
    reduction="signed sum over channels",
    rowwise=True,
)
def input_x_gradient(ctx: Context) -> torch.Tensor:
    """Input × gradient, x ⊙ ∂S_c/∂x (Shrikumar et al. 2016); maps sum channels."""
    return ctx.x * ctx.capture(input_grad=True).input_grad
