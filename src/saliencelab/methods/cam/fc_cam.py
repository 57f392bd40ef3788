"""CAM (Zhou et al. 2016): channels weighted by the classifier's row for the target class."""

from __future__ import annotations

from torch import nn

from ...core.context import Context, LayerArg, MethodOutput
from ...core.errors import SaliencelabError
from ...core.layers import get_layer, module_name
from ...core.registry import quoted, register
from .common import FUSIONS, LAYER_GRADIENT, cam_layers, fuse, layer_pass, weighted_sum


def find_classifier(root: nn.Module, fc: str | nn.Module | None) -> tuple[str, nn.Linear]:
    """(name, module) of the linear classifier: `fc` by name or module, else the last nn.Linear."""
    if fc is None:
        linears = [(n, m) for n, m in root.named_modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise SaliencelabError(
                "cam needs a model ending in global average pooling and a linear classifier, but "
                "this model has no nn.Linear layer; use gradcam, which gives the same map on such "
                "models and works on any model."
            )
        return linears[-1]
    if isinstance(fc, nn.Module):
        name, module = module_name(root, fc), fc
    elif isinstance(fc, str):
        name, module = fc, get_layer(root, fc)
    else:
        raise SaliencelabError(
            f"fc must be a layer name, a module or None, not {type(fc).__name__}."
        )
    if not isinstance(module, nn.Linear):
        raise SaliencelabError(
            f"fc={name!r} is a {type(module).__name__}, not an nn.Linear; name the linear "
            "classifier that follows the global average pooling."
        )
    return name, module


@register(
    "cam",
    family="cam",
    cost="1 (activations of the shared layer pass)",
    shared_passes=(LAYER_GRADIENT,),
    signed=False,
    reduction="cam",
    choices={"fusion": quoted(FUSIONS)},
)
def cam(
    ctx: Context,
    *,
    layer: LayerArg = None,
    fc: str | nn.Module | None = None,
    relu: bool = True,
    fusion: str = "mean",
) -> MethodOutput:
    """CAM: channels weighted by the linear classifier's weights for the class (Zhou et al. 2016).

    L = ReLU(Σ_k W_ck A_k), where W is the weight of the linear layer that follows global average
    pooling of the layer A (the bias is dropped). Needs layer → global average pool → linear;
    `fc` names that linear layer (default: the model's last nn.Linear). On such a model
    CAM = h·w × Grad-CAM exactly, since ∂S_c/∂A_kij = W_ck / (h·w). The paper's map has no ReLU
    (`relu=False`). Needs class targets (not a target function).

    Zhou et al., "Learning Deep Features for Discriminative Localization", CVPR 2016.
    """
    layers = cam_layers(ctx, layer, fusion, relu)
    fc_name, linear = find_classifier(ctx.model.module, fc)
    target = ctx.target
    if target.fn is not None or bool((target.indices < 0).any()):
        raise SaliencelabError(
            "cam weights channels by the classifier's row of a class, so it needs class targets, "
            "not a target function; use gradcam for a custom score."
        )
    if int(target.indices.max()) >= linear.out_features:
        raise SaliencelabError(
            f"The target class {int(target.indices.max())} is beyond the {linear.out_features} "
            f"outputs of {fc_name}; name the model's final classifier with fc=..."
        )
    cap = layer_pass(ctx, layers)
    weights = linear.weight.detach()[target.indices.to(linear.weight.device)]  # (B, K)
    maps = {}
    for name in layers:
        a = cap.activations[name]
        if a.shape[1] != linear.in_features:
            raise SaliencelabError(
                f"cam needs the layer's channels to feed the classifier {fc_name} through global "
                f"average pooling, but {name} has {a.shape[1]} channels and {fc_name} takes "
                f"{linear.in_features} features; pick the layer just before the pooling, name the "
                "classifier with fc=..., or use gradcam."
            )
        maps[name] = weighted_sum(a, weights.to(a.dtype), relu)
    return fuse(ctx, maps, fusion, relu)


__all__ = ["cam", "find_classifier"]
