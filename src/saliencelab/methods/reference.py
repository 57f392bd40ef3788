"""Reference maps that ignore the model: random, a centred Gaussian, and edges (Sobel).

Every evaluation report scores them next to the real methods, so a reader sees whether a method
beats trivial baselines (Adebayo et al. 2018 showed edge detectors pass for saliency maps to the
eye). They cost no pass.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..core.context import Context, MethodOutput
from ..core.registry import register
from ..core.seeds import sample_generators

REFERENCE_METHODS = ("random", "center_gaussian", "sobel")


def _spatial(ctx: Context) -> tuple[int, int, int]:
    x = ctx.x
    if x.dim() != 4:
        from ..core.errors import SaliencelabError

        raise SaliencelabError(
            f"Reference maps are for images (B, C, H, W), got inputs of shape {tuple(x.shape)}."
        )
    return x.shape[0], x.shape[-2], x.shape[-1]


@register("random", family="reference", cost="0", signed=False, reduction="none")
def random_map(ctx: Context, *, seed: int = 0) -> MethodOutput:
    """Uniform noise U(0, 1) per pixel, each image's from a generator seeded with `seed` and the
    image itself (`core/seeds.py`): the same map for the same image on every call, in any batch."""
    b, h, w = _spatial(ctx)
    gens = sample_generators(ctx.x, seed)
    maps = torch.stack([torch.rand(h, w, generator=g) for g in gens]).to(ctx.x.device)
    return MethodOutput(maps[:, None], maps=maps)


@register("center_gaussian", family="reference", cost="0", signed=False, reduction="none")
def center_gaussian(ctx: Context, *, sigma: float = 0.25) -> MethodOutput:
    """exp(-d²/2σ²) around the image centre, σ = `sigma` × the shorter side (centre bias)."""
    b, h, w = _spatial(ctx)
    s = sigma * min(h, w)
    ys = torch.arange(h, dtype=torch.float32, device=ctx.x.device) - (h - 1) / 2
    xs = torch.arange(w, dtype=torch.float32, device=ctx.x.device) - (w - 1) / 2
    d2 = ys[:, None] ** 2 + xs[None, :] ** 2
    maps = torch.exp(-d2 / (2 * s * s)).expand(b, h, w).clone()
    return MethodOutput(maps[:, None], maps=maps)


@register("sobel", family="reference", cost="0", signed=False, reduction="none")
def sobel(ctx: Context) -> MethodOutput:
    """Edge magnitude √(Gx² + Gy²) of the channel-mean image, Sobel 3×3 kernels, replicate pad."""
    _spatial(ctx)
    gray = ctx.x.detach().float().mean(dim=1, keepdim=True)
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=gray.device)
    kernels = torch.stack([kx, kx.t()])[:, None]
    g = F.conv2d(F.pad(gray, (1, 1, 1, 1), mode="replicate"), kernels)
    maps = g.square().sum(dim=1).sqrt()
    return MethodOutput(maps[:, None], maps=maps)
