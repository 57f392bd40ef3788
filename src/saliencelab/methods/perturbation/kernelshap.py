"""KernelSHAP (Lundberg & Lee 2017, "A Unified Approach to Interpreting Model Predictions",
NeurIPS 2017) on feature masks, batched, fitted in closed form with efficiency exact.

A sample with M features is explained by φ minimising the Shapley-kernel-weighted squared error
of the additive model g(z) = φ_0 + Σ_i φ_i z_i over coalitions z ∈ {0, 1}^M,

    π(z) = (M − 1) / (C(M, |z|) · |z| · (M − |z|)),

where v(z) is the target score of x with the features outside z set to the baseline. π is
infinite for |z| ∈ {0, M}, i.e. the constraints φ_0 = v(∅) and Σ_i φ_i = Δ = v(1) − v(∅)
(efficiency). They are enforced exactly by elimination: φ_M = Δ − Σ_{i<M} φ_i, so

    v(z) − v(∅) − z_M Δ = Σ_{i<M} φ_i (z_i − z_M),

an unconstrained weighted least-squares problem in M − 1 unknowns, solved in closed form for all
samples at once (`surrogate.py`).

- M ≤ `exact_up_to`, or n_samples ≥ 2^M − 2: all 2^M − 2 proper coalitions are enumerated with
  weights π(z); the solution then equals the exact Shapley values (Lundberg & Lee, Theorem 2;
  Charnes et al. 1988), φ_i = Σ_S |S|!(M−|S|−1)!/M! [v(S ∪ i) − v(S)].
- Otherwise n_samples coalitions are drawn with probability ∝ π: a size s with probability
  ∝ C(M, s) π(s) = (M − 1) / (s (M − s)), then s features uniformly; each drawn coalition then
  weighs 1. With `paired=True` every draw z comes with its complement 1 − z (same kernel mass),
  which lowers the variance (Covert & Lee 2021, "Improving KernelSHAP").

Cost: 2 forwards (x and the baseline) plus the coalitions, per sample.
"""

from __future__ import annotations

import math
import operator
from typing import Any

import torch

from ...core.context import Context, MethodOutput
from ...core.errors import SaliencelabError
from ...core.registry import register
from ..gradient.baselines import cpu_generator, positive_int
from ..options import check_flag
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

__all__ = ["enumerated_coalitions", "kernelshap", "sampled_coalitions", "shapley_kernel"]

MAX_EXACT = 20  # 2^20 forwards per sample is the most enumeration may ask for


def shapley_kernel(sizes: torch.Tensor, m: int) -> torch.Tensor:
    """π(s) = (M − 1) / (C(M, s) s (M − s)) for coalition sizes 0 < s < M, float64."""
    s = sizes.to(torch.float64)
    log_comb = math.lgamma(m + 1) - torch.lgamma(s + 1) - torch.lgamma(m - s + 1)
    return (m - 1) / (torch.exp(log_comb) * s * (m - s))


def enumerated_coalitions(m: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(2^M − 2, M) bool: every coalition except the empty and the full one."""
    codes = torch.arange(1, 2**m - 1, device=device)
    return ((codes[:, None] >> torch.arange(m, device=device)) & 1).bool()


def sampled_coalitions(
    n: int, m: int, seed: int, paired: bool = True, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """(n, M) bool coalitions drawn ∝ the Shapley kernel (sizes, then uniform subsets), seeded.

    With `paired`, rows 2k and 2k+1 are a draw and its complement. Drawn on the CPU (the same
    coalitions on every device), returned on `device`.
    """
    gen = cpu_generator(seed)
    draws = (n + 1) // 2 if paired else n
    sizes = torch.arange(1, m)
    mass = (m - 1) / (sizes * (m - sizes)).to(torch.float64)
    size = sizes[torch.multinomial(mass, draws, replacement=True, generator=gen)]
    keys = torch.rand((draws, m), generator=gen)
    z = keys.argsort(dim=1).argsort(dim=1) < size[:, None]  # s of M features, uniformly
    if paired:
        z = torch.stack([z, ~z], dim=1).reshape(-1, m)
    return z[:n].to(device)


# What a user can do about a singular system (kernelshap has no ridge penalty).
SINGULAR = (
    "raise n_samples or exact_up_to (to enumerate every coalition), or use fewer features "
    "(n_segments or a coarser feature_mask)"
)


def _exact_up_to(value: Any) -> int:
    try:
        if isinstance(value, bool):
            raise TypeError
        n = operator.index(value)
    except TypeError:
        n = -1
    if not 0 <= n <= MAX_EXACT:
        raise SaliencelabError(
            f"kernelshap: exact_up_to must be an integer from 0 to {MAX_EXACT} (enumeration costs "
            f"2^M forwards), got {value!r}."
        )
    return n


@register(
    "kernelshap",
    family="perturbation",
    cost=(
        "2 + min(n_samples, 2^M − 2) forwards at most (2^M when M ≤ exact_up_to; M = features; "
        "repeated coalitions run once)"
    ),
    reduction="Shapley value of the feature",
    choices={"feature_mask": FEATURE_MASK_CHOICES, "baseline": BASELINE_CHOICES},
)
def kernelshap(
    ctx: Context,
    *,
    feature_mask: Any = None,
    n_segments: int = DEFAULT_SEGMENTS,
    n_samples: int = 1000,
    baseline: Any = 0.0,
    blur_sigma: float = 10.0,
    exact_up_to: int = 10,
    paired: bool = True,
    seed: int = 0,
) -> MethodOutput:
    """KernelSHAP (Lundberg & Lee 2017): Shapley values of features by kernel-weighted regression.

    φ minimises Σ_z π(z)(v(z) − φ_0 − Σ_i φ_i z_i)², π(z) = (M−1)/(C(M,|z|)|z|(M−|z|)), with φ_0 =
    v(∅) and Σφ = v(1) − v(∅) enforced exactly. M ≤ `exact_up_to` (or n_samples ≥ 2^M − 2)
    enumerates every coalition, giving exact Shapley values; otherwise n_samples coalitions are
    drawn ∝ π (`paired` with their complements, `seed`). Options: `feature_mask` None (grid of about
    `n_segments` cells) | "grid" | "slic" | an integer tensor; `baseline` a number (default 0.0;
    None and "zero" mean the same) | "blur" (`blur_sigma` px) | "mean" | a tensor. extras:
    shapley_values (B, M), base_value v(∅) (B,), exact (B,) whether enumerated, feature_mask.
    """
    name = "kernelshap"
    seed = check_seed(name, seed)
    paired = check_flag(paired, "paired", name)
    n_samples = positive_int(n_samples, "n_samples", name, minimum=1)
    n_segments = positive_int(n_segments, "n_segments", name)
    exact_up_to = _exact_up_to(exact_up_to)
    x = ctx.x
    dev = x.device
    mask = make_feature_mask(feature_mask, x, n_segments, name)
    base = perturbation_baseline(x, baseline, name, blur_sigma)
    counts = n_features(mask)
    widest = int(counts.max())

    per_sample, weights, exact = [], [], []
    for m in counts.tolist():  # one draw per sample (its own seeded generator), not per feature
        enumerate_all = m <= exact_up_to or n_samples >= 2**m - 2
        if enumerate_all:
            z = enumerated_coalitions(m, dev)
            w = shapley_kernel(z.sum(1), m)
        else:
            if n_samples < m - 1:
                raise SaliencelabError(
                    f"kernelshap: n_samples={n_samples} is fewer than the {m - 1} unknowns of a "
                    f"sample with {m} features; raise n_samples to at least {m - 1} (better ≥ 10×) "
                    "or use fewer features."
                )
            z = sampled_coalitions(n_samples, m, seed, paired, dev)
            w = torch.ones(n_samples, dtype=torch.float64, device=dev)
        ends = torch.ones(2, m, dtype=torch.bool, device=dev)
        ends[1] = False  # the full and the empty coalition
        per_sample.append(torch.cat([ends, z]) if m > 0 else z)
        weights.append(w)
        exact.append(enumerate_all)
    coalitions = Coalitions.stack(per_sample, widest)
    y = coalition_scores(ctx, coalitions, mask, base)

    full, empty = y[:, 0], y[:, 1]
    delta = full - empty
    z = coalitions.z[:, 2:].to(torch.float64)  # (B, N, F) the proper coalitions
    w = torch.zeros(z.shape[:2], dtype=torch.float64, device=dev)
    for b, wb in enumerate(weights):
        w[b, : len(wb)] = wb
    last = (counts - 1).view(-1, 1, 1)
    z_last = z.gather(2, last.expand(-1, z.shape[1], 1))[..., 0]  # (B, N)
    free = torch.arange(widest, device=dev) < counts[:, None] - 1  # the M − 1 unknowns
    design = (z - z_last[..., None]) * free[:, None, :]
    target = y[:, 2:] - empty[:, None] - z_last * delta[:, None]
    penalty = (~free).to(torch.float64)  # 1 pins the eliminated and padded columns to 0
    phi = weighted_least_squares(design, target, w, penalty, method=name, remedy=SINGULAR)
    phi = phi.scatter(1, last.view(-1, 1), (delta - phi.sum(1))[:, None])

    attributions, maps = feature_attributions(phi, mask, x)
    extras = {
        "shapley_values": phi,
        "base_value": empty,
        "exact": torch.tensor(exact, device=dev),
        "feature_mask": mask,
    }
    return MethodOutput(attributions, maps=maps, extras=extras)
