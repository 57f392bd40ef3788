"""Expected gradients (Erion et al. 2021, "Improving performance of deep learning models with
axiomatic attribution priors and expected gradients"); the same estimator is GradientSHAP
(Lundberg & Lee 2017, SHAP's GradientExplainer; Captum's `GradientShap`).

    EG(x) = E_{x'~D, α~U(0,1), ε~N(0,σ²)} [ (x̃ - x') ⊙ ∂S/∂x(x' + α (x̃ - x')) ],  x̃ = x + ε

i.e. integrated gradients averaged over a distribution D of baselines, estimated by Monte Carlo
with `n_samples` draws (x', α, ε) per input. Completeness holds in expectation:
E[Σ EG] = E_ε[S(x + ε)] - E_{x'}[S(x')] (S(x) - E_{x'}[S(x')] without input noise).

Default D ("uniform"): images of uniform noise spanning the input's own value range, a fresh
one for each draw. Erion et al. use training data as D: pass such a tensor (N, C, H, W) (each
draw picks one of its N references at random), or "batch" to use the batch's inputs as the
empirical distribution, the explained input itself included (a draw of itself adds 0, so with B
inputs the estimate is (B − 1)/B of the one over the others alone; the one choice whose result
depends, by definition, on the other inputs of the batch, though not on their order: the
references are indexed in an order of their contents).

The draws are a function of the input, not of its row: each input's α's, reference indices and
per-draw seeds come from a CPU generator seeded by `seed` and the input's values
(`core/seeds.py`), and draw k's noise (its uniform reference, its ε) from a CPU generator seeded
by draw k's seed. So an input gets the same map alone or at any position of any batch (up to
float rounding), on every device, and whatever the chunk sizes.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ...core.batching import row_slice
from ...core.context import Context
from ...core.engine import captured_dtype
from ...core.errors import SaliencelabError
from ...core.registry import register
from ...core.seeds import sample_generators
from ..reference import check_seed
from .baselines import (
    DISTRIBUTION_CHOICES,
    UniformReferences,
    baseline_distribution,
    draw_seeds,
    float_dtype,
    positive_int,
    queued_copy,
    seeded_draws,
)


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

    Options: `baselines` a tensor (N, C, H, W) of reference inputs | "uniform" (the default, also
    None: a noise image in the input's own range per draw) | "batch" | "zero" | a number;
    `n_samples` Monte Carlo draws per input; `stdevs` std of Gaussian noise added to the input in
    each draw; `seed`. The draws are seeded by `seed` and the input itself: the same map in any
    batch, except with "batch", whose references are the batch's other inputs (in an order of
    their contents, so not their order in the batch).
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
    sample = tuple(x.shape[1:])
    dist = baseline_distribution(x, baselines, method=name, n_samples=n_samples)
    uniform = isinstance(dist, UniformReferences)
    # Per input, from its own CPU generator (seed and its values): the same draws in any batch
    # and on every device. (B, n_samples) each; draw k of input b is row k·B + b.
    gens = sample_generators(x, seed)
    alphas = torch.stack([torch.rand(n_samples, generator=g, dtype=torch.float32) for g in gens])
    alphas = alphas.to(dev, dtype)  # drawn in float32: the same for every model dtype
    index = None
    if not uniform:
        n_refs = dist.shape[0]
        index = torch.stack([torch.randint(n_refs, (n_samples,), generator=g) for g in gens])
        index = index.to(dev)
    seeds = draw_seeds(gens, n_samples) if uniform or stdevs > 0 else None
    n_rows = n_samples * batch
    shape = (-1,) + (1,) * (x.dim() - 1)
    cache: dict[str, torch.Tensor] = {}
    # Row r: draw r // B of sample r % B. Per-row tables on the device, sliced per chunk (the
    # engine's chunk rows are CPU ranges: moved to a GPU, they would wait for it every chunk);
    # the seeds are indexed on the host by the rows themselves.
    ids = torch.arange(n_rows, device=dev)
    draws, samples = ids // batch, ids % batch

    def sample_of(rows: torch.Tensor) -> torch.Tensor:
        return row_slice(samples, rows)

    def diff_of(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x', x̃ - x') of these rows (row r: draw r // B of sample r % B), cached for one chunk."""
        if "rows" in cache and torch.equal(cache["rows"], rows):  # (CPU rows: no wait)
            return cache["base"], cache["diff"]
        b, k = sample_of(rows), row_slice(draws, rows)
        xt = xf[b]
        u = eps = None
        if seeds is not None:
            row_seeds = seeds[rows % batch, rows // batch]  # (host seeds, host rows)
            u, eps = seeded_draws(row_seeds, sample, dtype, uniform=uniform, normal=stdevs > 0)
        if eps is not None:
            xt = xt + stdevs * queued_copy(eps, dev)
        base = dist.take(b, u) if uniform else dist[index[b, k]].expand_as(xt)
        cache.update(rows=rows, base=base, diff=xt - base)
        return base, cache["diff"]

    def make_inputs(rows: torch.Tensor) -> torch.Tensor:
        base, diff = diff_of(rows)
        k = row_slice(draws, rows)
        return torch.addcmul(base, alphas[sample_of(rows), k].view(shape), diff)

    total = torch.zeros_like(xf, dtype=captured_dtype(xf.dtype))  # float32 for half models
    for chunk in ctx.engine.gradients(n_rows, make_inputs, sample_of, ctx.target):
        _, diff = diff_of(chunk.rows)
        total.index_add_(0, chunk.samples, diff * chunk.input_grad)
    return total / n_samples
