"""Reference maps that ignore the model: random, a centred Gaussian, and edges (Sobel).

Every evaluation report scores them next to the real methods, so a reader sees whether a method
beats trivial baselines (Adebayo et al. 2018 showed edge detectors pass for saliency maps to the
eye). They cost no pass.
"""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F

from ..core.context import Context, MethodOutput
from ..core.errors import SaliencelabError
from ..core.registry import register
from ..core.seeds import sample_generators

REFERENCE_METHODS = ("random", "center_gaussian", "sobel")

#: `sample_seeds` packs the seed into 8 signed bytes.
SEED_RANGE = (-(2**63), 2**63 - 1)
SIGMA_MEANING = "the Gaussian's σ as a fraction of the image's shorter side, e.g. 0.25"


def _spatial(ctx: Context) -> tuple[int, int, int]:
    x = ctx.x
    if x.dim() != 4:
        raise SaliencelabError(
            f"Reference maps are for images (B, C, H, W), got inputs of shape {tuple(x.shape)}; "
            "explain these inputs with a gradient or perturbation method such as saliency."
        )
    return x.shape[0], x.shape[-2], x.shape[-1]


def check_seed(name: str, seed: object) -> int:
    """`seed` as an int if it is an integer (a Python or NumPy int, not a bool) that fits the 64
    signed bits `sample_seeds` hashes; a float such as 1.5 is refused, not truncated."""
    try:
        n = None if isinstance(seed, bool) else operator.index(seed)  # type: ignore[arg-type]
    except TypeError:
        n = None
    lo, hi = SEED_RANGE
    if n is None or not lo <= n <= hi:
        raise SaliencelabError(
            f"seed must be an integer from -2**63 to 2**63 - 1 for {name}, got {seed!r}."
        )
    return n


def check_sigma(name: str, sigma: object, h: int, w: int) -> float:
    """`sigma` as a float if it is a finite number > 0 whose Gaussian is not 0 (or NaN) at every
    pixel of an h × w image: a σ far below a pixel underflows float32 (σ = 1e-4 on 64 × 64)."""
    from ..metrics.checks import check_positive  # here: the metrics package imports this module

    s = check_positive(name, "sigma", sigma, SIGMA_MEANING)  # numbers only: NaN, ±inf, ≤ 0 refused
    # The pixel nearest the centre is the map's largest value: 0 or NaN there means no map.
    d2_min = 0.25 * (h % 2 == 0) + 0.25 * (w % 2 == 0)
    spread = s * min(h, w)
    peak = torch.exp(-torch.tensor(d2_min, dtype=torch.float32) / (2 * spread * spread))
    if not peak > 0:
        raise SaliencelabError(
            f"sigma {sigma!r} is too small for {name} on {h}×{w} images: the Gaussian underflows "
            f"float32, leaving no pixel above 0; use a larger sigma, e.g. 1/{min(h, w)} (σ of one "
            "pixel) or more."
        )
    return s


@register("random", family="reference", cost="0", signed=False, reduction="none")
def random_map(ctx: Context, *, seed: int = 0) -> MethodOutput:
    """Uniform noise U(0, 1) per pixel, each image's from a generator seeded with `seed` and the
    image itself: the same map for the same image on every call, in any batch.

    The per-image generators come from `core/seeds.py`.
    """
    b, h, w = _spatial(ctx)
    gens = sample_generators(ctx.x, check_seed("random", seed))
    maps = torch.stack([torch.rand(h, w, generator=g) for g in gens]).to(ctx.x.device)
    return MethodOutput(maps[:, None], maps=maps)


@register("center_gaussian", family="reference", cost="0", signed=False, reduction="none")
def center_gaussian(ctx: Context, *, sigma: float = 0.25) -> MethodOutput:
    """exp(-d²/2σ²) around the image centre, σ = `sigma` × the shorter side (centre bias)."""
    b, h, w = _spatial(ctx)
    s = check_sigma("center_gaussian", sigma, h, w) * min(h, w)
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
