"""Gradient CAMs: Grad-CAM and its variants, and Guided Grad-CAM.

All of them are maths over one forward+backward pass: the activations A (B, K, h, w) of the layer
and the gradient G = ∂S_c/∂A of the target score S_c (the logit, or a target function's score).
That pass is declared shared, so asking for several of them (at any of their layers) together with
saliency or input×gradient runs it once. Each variant below only says how it weights channels;
:func:`~.common.weighted_sum` and :func:`~.common.fuse` do the rest.

Options common to all: `layer` (a name, a module, None for the model's default or last spatial
layer, or a list to fuse several layers), `relu` (True: ReLU of the weighted sum, the papers'
maps; False: the signed sum), `fusion` ("mean" or "max", for several layers).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ...core.context import Context, LayerArg, MethodOutput, check_image_batch, upsample
from ...core.registry import SharedPass, quoted, register
from .common import (
    FUSIONS,
    LAYER_GRADIENT,
    cam_layers,
    fuse,
    layer_pass,
    nonzero_divide,
    weighted_sum,
)

__all__ = ["LAYER_GRADIENT", "gradient_cam"]

GUIDED_INPUT_GRADIENT = SharedPass(backward="guided", input_grad=True)

WeightFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def gradient_cam(
    ctx: Context, layer: LayerArg, relu: bool, fusion: str, weights: WeightFn
) -> MethodOutput:
    """ReLU(Σ_k w_k ⊙ A_k) at each layer with w = weights(A, G) from the shared pass; fused."""
    layers = cam_layers(ctx, layer, fusion, relu)
    cap = layer_pass(ctx, layers)
    maps = {}
    for name in layers:
        a, g = cap.activations[name], cap.gradients[name]
        maps[name] = weighted_sum(a, weights(a, g), relu)
    return fuse(ctx, maps, fusion, relu)


# -- channel weights -----------------------------------------------------------------------------


def gradcam_weights(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """w_k = (1/hw) Σ_ij G_kij: the spatial mean of the gradient."""
    return g.mean(dim=(2, 3))


def gradcam_plus_plus_weights(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """w_k = Σ_ij α_kij ReLU(G_kij), α_kij = G²_kij / (2 G²_kij + Σ_ab A_kab · G³_kij); α = 0 where
    the denominator is 0."""
    g2 = g * g
    alpha = nonzero_divide(g2, 2 * g2 + a.sum(dim=(2, 3), keepdim=True) * g2 * g)
    return (alpha * g.clamp(min=0)).sum(dim=(2, 3))


def xgradcam_weights(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """w_k = Σ_ij (A_kij / Σ_ab A_kab) G_kij; 0 for a channel whose activations sum to 0."""
    return nonzero_divide((a * g).sum(dim=(2, 3)), a.sum(dim=(2, 3)))


def hirescam_weights(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """w_kij = G_kij: the gradient itself, element-wise."""
    return g


def layercam_weights(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """w_kij = ReLU(G_kij): the positive part of the gradient, element-wise."""
    return g.clamp(min=0)


# -- methods -------------------------------------------------------------------------------------

_CAM = {
    "family": "cam",
    "cost": "1",
    "shared_passes": (LAYER_GRADIENT,),
    "signed": False,
    "reduction": "cam",
    "rowwise": True,
    "choices": {"fusion": quoted(FUSIONS)},
}


@register("gradcam", **_CAM)
def gradcam(
    ctx: Context, *, layer: LayerArg = None, relu: bool = True, fusion: str = "mean"
) -> MethodOutput:
    """Grad-CAM: channels weighted by the spatial mean of the gradient (Selvaraju et al. 2017).

    L = ReLU(Σ_k w_k A_k),  w_k = (1/hw) Σ_ij ∂S_c/∂A_kij.

    Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
    Localization", ICCV 2017. Equals Captum's LayerGradCam (with relu_attributions=True).
    """
    return gradient_cam(ctx, layer, relu, fusion, gradcam_weights)


@register("gradcam_plus_plus", **_CAM)
def gradcam_plus_plus(
    ctx: Context, *, layer: LayerArg = None, relu: bool = True, fusion: str = "mean"
) -> MethodOutput:
    """Grad-CAM++: gradient weights from 2nd/3rd-order terms (Chattopadhay et al. 2018).

    L = ReLU(Σ_k w_k A_k),  w_k = Σ_ij α_kij ReLU(G_kij),
    α_kij = G_kij² / (2 G_kij² + Σ_ab A_kab G_kij³),  G = ∂S_c/∂A.

    The paper (Eq. 19) explains the exponential of the score, Y_c = exp(S_c), with S_c piecewise
    linear in A (a ReLU network), so ∂ⁿY_c/∂A_kijⁿ = Y_c G_kijⁿ: the α above is its
    α = ∂²Y/∂A² / (2 ∂²Y/∂A² + Σ_ab A_kab ∂³Y/∂A³), and its weights Σ α ReLU(∂Y/∂A) are the
    w_k above times Y_c > 0, a per-sample scale we drop (as pytorch-grad-cam does). α is 0 where
    its denominator is 0 (pytorch-grad-cam adds 1e-6 instead). The derivation assumes A ≥ 0 (a
    layer after a ReLU); on signed activations (a ViT's LayerNorm output, its default layer) the
    denominators can come near 0 and the α's are unstable.

    Chattopadhay et al., "Grad-CAM++: Generalized Gradient-Based Visual Explanations for Deep
    Convolutional Networks", WACV 2018.
    """
    return gradient_cam(ctx, layer, relu, fusion, gradcam_plus_plus_weights)


@register("xgradcam", **_CAM)
def xgradcam(
    ctx: Context, *, layer: LayerArg = None, relu: bool = True, fusion: str = "mean"
) -> MethodOutput:
    """XGrad-CAM: the gradient averaged with the channel's normalised activations (Fu et al. 2020).

    L = ReLU(Σ_k w_k A_k),  w_k = Σ_ij (A_kij / Σ_ab A_kab) ∂S_c/∂A_kij. Its axioms assume A ≥ 0
    (a layer after a ReLU); on signed activations Σ_ab A_kab can be near 0.

    Fu et al., "Axiom-based Grad-CAM: Towards Accurate Visualization and Explanation of CNNs",
    BMVC 2020.
    """
    return gradient_cam(ctx, layer, relu, fusion, xgradcam_weights)


@register("hirescam", **_CAM)
def hirescam(
    ctx: Context, *, layer: LayerArg = None, relu: bool = True, fusion: str = "mean"
) -> MethodOutput:
    """HiResCAM: gradient ⊙ activation, summed over channels (Draelos & Carin 2020).

    L = ReLU(Σ_k ∂S_c/∂A_k ⊙ A_k). On a GAP + linear head it equals Grad-CAM; elsewhere it keeps
    the gradient's spatial detail that Grad-CAM averages away.

    Draelos & Carin, "Use HiResCAM instead of Grad-CAM for faithful explanations of convolutional
    neural networks", arXiv:2011.08891, 2020.
    """
    return gradient_cam(ctx, layer, relu, fusion, hirescam_weights)


@register("layercam", **_CAM)
def layercam(
    ctx: Context, *, layer: LayerArg = None, relu: bool = True, fusion: str = "mean"
) -> MethodOutput:
    """LayerCAM: positive gradient ⊙ activation, summed over channels (Jiang et al. 2021).

    L = ReLU(Σ_k ReLU(∂S_c/∂A_k) ⊙ A_k). Meant also for shallow layers: pass `layer=[...]` to
    fuse several. Jiang et al. (Eq. 9) fuse layers by the element-wise max of tanh(2 · M / max M):
    `fusion="max"` orders the pixels exactly so (tanh is increasing; each map is divided by its
    peak, not squashed), while the default `"mean"` (pytorch-grad-cam's) can reorder them.

    Jiang et al., "LayerCAM: Exploring Hierarchical Class Activation Maps for Localization",
    IEEE TIP 2021.
    """
    return gradient_cam(ctx, layer, relu, fusion, layercam_weights)


@register(
    "guided_gradcam",
    family="cam",
    cost="2 (the shared layer pass + a guided backprop pass)",
    shared_passes=(LAYER_GRADIENT, GUIDED_INPUT_GRADIENT),
    signed=True,
    reduction="sum over channels",
    rowwise=True,
    choices={"fusion": quoted(FUSIONS)},
)
def guided_gradcam(
    ctx: Context, *, layer: LayerArg = None, relu: bool = True, fusion: str = "mean"
) -> MethodOutput:
    """Guided Grad-CAM: guided backprop ⊙ upsampled Grad-CAM (Selvaraju et al. 2017).

    attributions = GB ⊙ Up(L_GradCAM), per input channel (B, C, H, W), where GB is the guided
    backpropagation gradient (Springenberg et al. 2015) and Up bilinear upsampling to the input;
    maps sum the channels. As Captum's GuidedGradCam (called with interpolate_mode="bilinear";
    its default is "nearest"). It uses the shared plain layer pass and the shared guided pass.

    Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
    Localization", ICCV 2017.
    """
    check_image_batch(ctx.x, "guided_gradcam")
    cam = gradient_cam(ctx, layer, relu, fusion, gradcam_weights)
    guided = ctx.capture(input_grad=True, backward="guided").input_grad
    up = upsample(cam.attributions, ctx.x.shape[-2:])
    return MethodOutput(guided * up[:, None], layer=cam.layer)
