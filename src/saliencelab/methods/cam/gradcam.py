"""Grad-CAM (Selvaraju et al. 2017): L = ReLU(Σ_k α_k A^k), α_k = mean_ij ∂S_c/∂A^k_ij."""

from __future__ import annotations

from ...core.context import Context, LayerArg, MethodOutput
from ...core.registry import SharedPass, register

LAYER_GRADIENT = SharedPass(backward="plain", input_grad=False, layer=True)


@register(
    "gradcam",
    family="cam",
    cost="1",
    shared_passes=(LAYER_GRADIENT,),
    signed=False,
    reduction="cam",
)
def gradcam(ctx: Context, *, layer: LayerArg = None, relu: bool = True) -> MethodOutput:
    """Grad-CAM: channel weights = spatial mean of the gradient; ReLU of the weighted sum."""
    layers = ctx.layers(layer)
    cap = ctx.capture(layers, input_grad=False)
    name = next(iter(layers))
    a, g = cap.activations[name], cap.gradients[name]
    cam = (g.mean(dim=(2, 3), keepdim=True) * a).sum(dim=1)
    cam = cam.clamp(min=0) if relu else cam
    return MethodOutput(cam, layer=name)
