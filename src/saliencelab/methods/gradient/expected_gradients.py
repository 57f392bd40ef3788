"""Expected gradients (Erion et al. 2021, "Improving performance of deep learning models with
axiomatic attribution priors and expected gradients"); the same estimator is GradientSHAP
(Lundberg & Lee 2017, SHAP's GradientExplainer; Captum's `GradientShap`).

    EG(x) = E_{x'~D, α~U(0,1), ε~N(0,σ²)} [ (x̃ - x') ⊙ ∂S/∂x(x' + α (x̃ - x')) ],  x̃ = x + ε

i.e. integrated gradients averaged over a distribution D of baselines, estimated by Monte Carlo
with `n_samples` draws (x', α, ε) per input. Completeness holds in expectation:
E[Σ EG] = S(x) - E_{x'}[S(x')].

Default D ("uniform"): `n_samples` images of uniform noise spanning the batch's value range,
drawn once with the seed (draw k of every input uses image k). Erion et al. use training data
as D: pass such a tensor (N, C, H, W), or "batch" to use the batch's own inputs.

Randomness is reproducible and independent of chunking: α and the baseline indices are drawn
once (vectorised) with a seeded generator; the input noise ε of each row is drawn from a
generator seeded by (seed, row), so chunk sizes never change the result.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ...core.context import Context
from ...core.errors import SaliencelabError
from ...core.registry import register
from ..reference import check_seed
from .baselines import (
    DISTRIBUTION_CHOICES,
    baseline_distribution,
    cpu_generator,
    float_dtype,
    positive_int,
)


def row_noise(rows: torch.Tensor, shape: tuple[int, ...], seed: int, like: torch.Tensor):
    """Standard normal noise (len(rows), *shape), row r from a CPU generator seeded by (seed, r)
    (the same noise on every device), moved to `like`'s device."""
    out = torch.empty((len(rows), *shape), dtype=like.dtype)
    gen = torch.Generator()
    for i, r in enumerate(rows.tolist()):
        gen.manual_seed((int(seed) & 0xFFFF_FFFF) << 32 | r)
        out[i].normal_(generator=gen)
    return out.to(like.device)


@register(
    "expected_gradients",
    family="gradient",
    cost="n_samples",
    reduction="signed sum over channels",
    choices={"baselines": DISTRIBUTION_CHOICES},
)
def expected_gradients(
    ctx: Context,
    *,
    baselines: Any = "uniform",
    n_samples: int = 50,
    stdevs: float = 0.0,
    seed: int = 0,
) -> torch.Tensor:
    """Expected gradients / GradientSHAP (Erion et al. 2021): IG averaged over random baselines.

    Options: `baselines` a tensor (N, C, H, W) of reference inputs | "uniform" (default: noise
    images in the batch's range) | "batch" | "zero" | a number; `n_samples` Monte Carlo draws
    per input; `stdevs` std of Gaussian noise added to the input in each draw; `seed`.
    """
    name = "expected_gradients"
    n_samples = positive_int(n_samples, "n_samples", name)
    seed = check_seed(name, seed)
    ok = isinstance(stdevs, (int, float)) and not isinstance(stdevs, bool)
    if not ok or not math.isfinite(stdevs) or stdevs < 0:
        raise SaliencelabError(
            f"{name}: stdevs must be a finite non-negative number, got {stdevs!r}."
        )
    x = ctx.x
    dtype, dev, batch = float_dtype(x), x.device, ctx.batch
    xf = x.to(dtype)
    gen = cpu_generator(seed)  # baselines, α and indices: the same draws on every device
    dist, own_draws = baseline_distribution(x, baselines, method=name, n_samples=n_samples, gen=gen)
    n_rows = n_samples * batch
    alphas = torch.rand(n_rows, generator=gen, dtype=dtype).to(dev)
    if own_draws:
        index = torch.arange(n_rows, device=dev) // batch
    else:
        index = torch.randint(dist.shape[0], (n_rows,), generator=gen).to(dev)
    shape = (-1,) + (1,) * (x.dim() - 1)
    cache: dict[str, torch.Tensor] = {}

    def diff_of(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x', x̃ - x') of these rows (row r: draw r // B of sample r % B), cached for one chunk."""
        if "rows" in cache and torch.equal(cache["rows"], rows):
            return cache["base"], cache["diff"]
        idx = rows.to(dev)
        xt = xf[idx % batch]
        if stdevs > 0:
            xt = xt + stdevs * row_noise(rows, tuple(x.shape[1:]), seed, xt)
        base = dist[index[idx]]
        cache.update(rows=rows, base=base, diff=xt - base)
        return base, cache["diff"]

    def make_inputs(rows: torch.Tensor) -> torch.Tensor:
        base, diff = diff_of(rows)
        return torch.addcmul(base, alphas[rows.to(dev)].view(shape), diff)

    total = torch.zeros_like(xf)
    for chunk in ctx.engine.gradients(n_rows, make_inputs, lambda r: r % batch, ctx.target):
        _, diff = diff_of(chunk.rows)
        total.index_add_(0, chunk.samples.to(dev), diff * chunk.input_grad)
    return total / n_samples
