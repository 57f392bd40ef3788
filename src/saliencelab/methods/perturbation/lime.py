"""LIME (Ribeiro, Singh & Guestrin 2016, "Why Should I Trust You?": Explaining the Predictions
of Any Classifier", KDD 2016) on feature masks, batched, fitted in closed form.

For each sample with F features:

1. draw coalitions z ∈ {0, 1}^F: the all-ones coalition, then n_samples − 1 with each z_f an
   independent Bernoulli(½) (a CPU `torch.Generator` seeded with `seed`);
2. score the target on x with the features where z_f = 0 set to the baseline: y(z);
3. weigh each coalition by the paper's exponential kernel (§3.4), π(z) = exp(−d(z)² / σ²),
   with the cosine distance over z of the `lime` package's image explainer (Ribeiro et al.
   suggest cosine for text and L2 for images), d(z) = 1 − cos(z, 1) = 1 − sqrt(|z| / F)
   (d = 1 for z = 0), σ = `kernel_width`;
4. fit g(z) = β_0 + Σ_f β_f z_f by weighted ridge regression,
   min_β Σ_z π(z) (y(z) − g(z))² + α Σ_{f≥1} β_f² (intercept not penalised),
   in closed form: (XᵀΠX + αD) β = XᵀΠy, all samples at once (`surrogate.py`).

The attribution of each element of x is its feature's coefficient β_f.

Defaults and peers. `kernel_width=0.25` and `alpha=1.0` are those of the `lime` package's image
explainer (LimeImageExplainer: cosine distance over z, kernel_width 0.25, Ridge(alpha=1)), but that
package uses sqrt(exp(−d²/σ²)) = exp(−d²/(2σ²)), which is this kernel with σ = 0.25·√2 ≈ 0.354.
Captum's `Lime` defaults differ: cosine distance between the input tensors themselves (not the
coalitions), exp(−d²/(2σ²)) with σ = 1.0, and a Lasso surrogate (α = 0.01, sklearn's scaling).
With the same coalitions, kernel and a ridge / least-squares surrogate the two agree (tested).
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch

from ...core.context import Context, MethodOutput
from ...core.errors import SaliencelabError
from ...core.registry import register
from ..gradient.baselines import cpu_generator, positive_int
from ..reference import check_seed
from .features import (
    BASELINE_CHOICES,
    DEFAULT_SEGMENTS,
    FEATURE_MASK_CHOICES,
    feature_attributions,
    n_features,
    perturbation_baseline,
)
from .features import feature_mask as make_feature_mask
from .surrogate import Coalitions, coalition_scores, weighted_least_squares

__all__ = ["lime", "lime_coalitions", "lime_weights"]


def lime_coalitions(
    n_samples: int, n_feat: int, seed: int, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """(n_samples, n_feat) bool: the all-ones coalition, then Bernoulli(½) draws (seeded, on the
    CPU: the same coalitions on every device), on `device`."""
    draws = torch.rand((n_samples - 1, n_feat), generator=cpu_generator(seed)) < 0.5
    ones = torch.ones(1, n_feat, dtype=torch.bool)
    return torch.cat([ones, draws]).to(device)


def lime_weights(z: torch.Tensor, n_feat: torch.Tensor, kernel_width: float) -> torch.Tensor:
    """π(z) = exp(−d²/σ²), d = cosine distance of z to the all-ones vector of its sample's
    F_b features: d = 1 − sqrt(|z| / F_b), and 1 for the empty coalition. z (B, N, F)."""
    size = z.sum(dim=-1).to(torch.float64)
    f = n_feat.to(device=z.device, dtype=torch.float64).view(-1, *([1] * (z.dim() - 2)))
    distance = 1.0 - torch.sqrt(size / f)
    return torch.exp(-(distance**2) / kernel_width**2)


# What a user can do about a singular system (alpha = 0 with too few distinct coalitions).
SINGULAR = (
    "raise n_samples, use fewer features (n_segments or a coarser feature_mask), or set alpha > 0"
)


def _positive_number(value: Any, name: str, minimum_ok: bool) -> float:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not minimum_ok):
        kind = "a non-negative" if minimum_ok else "a positive"
        raise SaliencelabError(f"lime: {name} must be {kind} number, got {value!r}.")
    return float(value)


@register(
    "lime",
    family="perturbation",
    cost="n_samples forwards at most (repeated coalitions run once)",
    reduction="feature coefficient",
    choices={"feature_mask": FEATURE_MASK_CHOICES, "baseline": BASELINE_CHOICES},
)
def lime(
    ctx: Context,
    *,
    feature_mask: Any = None,
    n_segments: int = DEFAULT_SEGMENTS,
    n_samples: int = 1000,
    baseline: Any = 0.0,
    blur_sigma: float = 10.0,
    kernel_width: float = 0.25,
    alpha: float = 1.0,
    seed: int = 0,
) -> MethodOutput:
    """LIME (Ribeiro et al. 2016): coefficients of a locally weighted linear surrogate.

    g(z) = β_0 + Σ_f β_f z_f fitted to the target score on n_samples coalitions z (all-ones, then
    Bernoulli(½) per feature, `seed`), weighted by π(z) = exp(−d(z)²/σ²), d(z) the cosine distance
    of z to all-ones, σ = `kernel_width`, ridge penalty `alpha` on β_1..F; each element gets its
    feature's β_f. Options: `feature_mask` None (a grid of about `n_segments` cells) | "grid" |
    "slic" | an integer tensor (images (B, H, W); tabular (B, F)); `baseline` a number (default 0.0;
    None and "zero" mean the same) | "blur" (`blur_sigma` px) | "mean" | a tensor. With alpha=0,
    n_samples must be at least the number of features + 1. extras: coefficients (B, F), intercept
    (B,), r2 (B,) weighted R² of the surrogate, feature_mask.
    """
    name = "lime"
    seed = check_seed(name, seed)
    # one sample is the all-ones coalition alone: nothing varies, every coefficient is 0
    n_samples = positive_int(n_samples, "n_samples", name, minimum=2)
    n_segments = positive_int(n_segments, "n_segments", name)
    kernel_width = _positive_number(kernel_width, "kernel_width", minimum_ok=False)
    alpha = _positive_number(alpha, "alpha", minimum_ok=True)
    x = ctx.x
    mask = make_feature_mask(feature_mask, x, n_segments, name)
    base = perturbation_baseline(x, baseline, name, blur_sigma)
    counts = n_features(mask)
    widest = int(counts.max())
    if alpha == 0 and n_samples < widest + 1:
        raise SaliencelabError(
            f"lime: n_samples={n_samples} is fewer than the {widest + 1} unknowns of the surrogate "
            f"({widest} features + intercept); raise n_samples or set alpha > 0."
        )

    per_sample = [lime_coalitions(n_samples, int(f), seed, x.device) for f in counts.tolist()]
    coalitions = Coalitions.stack(per_sample, widest)
    y = coalition_scores(ctx, coalitions, mask, base)
    z = coalitions.z
    weights = lime_weights(z, counts, kernel_width)

    design = torch.cat([torch.ones_like(z[..., :1]), z], dim=-1).to(torch.float64)
    padded = torch.arange(widest, device=x.device) >= counts[:, None]  # (B, F)
    penalty = torch.full((len(counts), widest + 1), alpha, dtype=torch.float64, device=x.device)
    penalty[:, 0] = 0.0  # the intercept is not penalised
    penalty[:, 1:][padded] = 1.0  # padded features: X column 0, so β_f = 0 exactly
    beta = weighted_least_squares(design, y, weights, penalty, method=name, remedy=SINGULAR)
    coef, intercept = beta[:, 1:], beta[:, 0]

    fit = (design @ beta[..., None])[..., 0]
    mean = (weights * y).sum(1, keepdim=True) / weights.sum(1, keepdim=True)
    ss_res = (weights * (y - fit) ** 2).sum(1)
    ss_tot = (weights * (y - mean) ** 2).sum(1)
    r2 = torch.where(ss_tot > 0, 1 - ss_res / ss_tot.clamp_min(1e-300), torch.ones_like(ss_tot))

    attributions, maps = feature_attributions(coef, mask, x)
    extras = {"coefficients": coef, "intercept": intercept, "r2": r2, "feature_mask": mask}
    return MethodOutput(attributions, maps=maps, extras=extras)
