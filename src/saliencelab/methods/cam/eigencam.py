"""Eigen-CAM (Muhammad & Yeasin 2020): activations projected on their first principal component."""

from __future__ import annotations

import torch

from ...core.context import Context, LayerArg, MethodOutput
from ...core.registry import quoted, register
from ..options import check_flag
from .common import FUSIONS, LAYER_GRADIENT, cam_layers, fuse, layer_pass

__all__ = ["eigencam", "principal_projection"]


def principal_projection(a: torch.Tensor, center: bool = False) -> torch.Tensor:
    """(B, K, h, w) → (B, h, w): each sample's activation matrix M (h·w, K) times its first right
    singular vector v₁, signed so the map correlates positively with the mean over channels."""
    b, k, h, w = a.shape
    m = a.flatten(2).transpose(1, 2)  # (B, hw, K)
    work = m if m.dtype in (torch.float32, torch.float64) else m.float()
    if center:
        work = work - work.mean(dim=1, keepdim=True)
    _, _, vh = torch.linalg.svd(work, full_matrices=False)
    proj = (work @ vh[:, 0, :, None])[..., 0]  # (B, hw)
    mean_map = work.mean(dim=2)
    cov = ((proj - proj.mean(dim=1, keepdim=True)) * (mean_map - mean_map.mean(1, True))).sum(1)
    sign = torch.where(cov < 0, -1.0, 1.0).to(proj.dtype)
    return (proj * sign[:, None]).to(a.dtype).view(b, h, w)


@register(
    "eigencam",
    family="cam",
    cost="1 (activations of the shared layer pass; no gradient used)",
    shared_passes=(LAYER_GRADIENT,),
    signed=False,
    reduction="cam",
    rowwise=True,
    choices={"fusion": quoted(FUSIONS)},
)
def eigencam(
    ctx: Context,
    *,
    layer: LayerArg = None,
    center: bool = False,
    relu: bool = True,
    fusion: str = "mean",
) -> MethodOutput:
    """Eigen-CAM: the activations' projection on their first principal component (class-agnostic).

    With M the (h·w, K) matrix of a sample's activations and M = U Σ Vᵀ its SVD, L = ReLU(M v₁)
    reshaped to (h, w) (= σ₁ u₁). The sign of a singular vector is arbitrary, so it is fixed to
    make L correlate positively with the mean activation over channels. The paper projects M as is
    (`center=False`); `center=True` first subtracts each channel's spatial mean, as
    pytorch-grad-cam does. On non-negative (post-ReLU) activations M v₁ is already ≥ 0.

    It ignores the target. It reads the activations of the shared layer pass, so with gradient CAMs
    it costs nothing more; alone, that pass is one forward plus a backward from the score down to
    the layer only.

    Muhammad & Yeasin, "Eigen-CAM: Class Activation Map using Principal Components", IJCNN 2020.
    """
    center = check_flag(center, "center", "eigencam")
    layers = cam_layers(ctx, layer, fusion, relu)
    cap = layer_pass(ctx, layers)
    maps = {}
    for name in layers:
        proj = principal_projection(cap.activations[name], center)
        maps[name] = proj.clamp(min=0) if relu else proj
    return fuse(ctx, maps, fusion, relu)
