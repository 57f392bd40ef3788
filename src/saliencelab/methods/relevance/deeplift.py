"""DeepLIFT (rescale rule) and DeepLIFT-SHAP.

- DeepLIFT (Shrikumar, Greenside & Kundaje 2017, "Learning Important Features Through
  Propagating Activation Differences"):
      φ(x) = (x - x') ⊙ m(x, x'),
  with m the multipliers of the target score S propagated back from the output by the rescale
  rule at nonlinearities (see `multipliers.py`). Summation-to-delta: Σ φ = S(x) - S(x'); the gap
  `delta` = Σ φ - (S(x) - S(x')) is reported per sample in `extras`.
- DeepLIFT-SHAP (Lundberg & Lee 2017, "A Unified Approach to Interpreting Model Predictions",
  DeepExplainer; Captum's `DeepLiftShap`): DeepLIFT averaged over a distribution of references,
      φ(x) = (1/N) Σ_k (x - x'_k) ⊙ m(x, x'_k),   Σ φ = S(x) - (1/N) Σ_k S(x'_k).

Each (input, reference) pair is one row of the engine's gradient pass; `make_inputs` stacks the
chunk's inputs on its references, [x; x'], so one forward and one backward carry both (cost:
two rows through the model per pair). DeepLIFT-SHAP's pairs are samples × references, row
r = reference r // B of sample r % B. Only nonlinearities that are modules get the rescale rule
(the bundled EfficientNet-Lite0 uses `nn.ReLU6` modules); residual additions are linear and
need nothing. Max pooling uses Captum's max-pooling rule (see `multipliers.py`).
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Callable
from typing import Any

import torch

from ...core.batching import row_range, row_slice
from ...core.context import Context, MethodOutput
from ...core.engine import captured_dtype
from ...core.errors import SaliencelabError
from ...core.registry import register
from ...core.seeds import sample_generators
from ..gradient.baselines import (
    DISTRIBUTION_CHOICES,
    INPUT_BASELINE_CHOICES,
    UniformReferences,
    baseline_distribution,
    cpu_generator,
    draw_seeds,
    float_dtype,
    input_baselines,
    positive_int,
    seeded_draws,
)
from ..reference import check_seed
from .multipliers import DeepLiftRescale

DEFAULT_UNIFORM_REFERENCES = 16


def _check_eps(eps: Any, method: str) -> float:
    if not isinstance(eps, numbers.Real) or isinstance(eps, bool) or not eps > 0:
        raise SaliencelabError(f"{method}: eps must be a positive number, got {eps!r}.")
    return float(eps)


def deeplift_pairs(
    ctx: Context,
    samples: torch.Tensor,
    reference_of: Callable[[torch.Tensor], torch.Tensor],
    *,
    eps: float,
    method: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DeepLIFT over (input, reference) pairs, one per entry of `samples`, chunked by the engine.

    Pair r explains sample `samples[r]` (on the inputs' device: a chunk's pairs are a slice of
    it) against the references `reference_of(rows)` of a chunk's pairs `rows` (the engine's CPU
    range). Returns the attributions summed per sample (B, ...), and S(x), S(x') of each pair.
    """
    x = ctx.x
    dtype, dev = float_dtype(x), x.device
    xf = x.to(dtype)
    n_pairs = len(samples)
    rule = DeepLiftRescale(eps=eps, method=method)

    def sample_of(rows: torch.Tensor) -> torch.Tensor:
        return row_slice(samples, rows)

    def make_inputs(rows: torch.Tensor) -> torch.Tensor:
        return torch.cat([xf[sample_of(rows)], reference_of(rows).to(dtype)])

    total = torch.zeros_like(xf, dtype=captured_dtype(dtype))  # float32 for half models
    s_x = torch.empty(n_pairs, device=dev, dtype=dtype)
    s_ref = torch.empty(n_pairs, device=dev, dtype=dtype)
    for chunk in ctx.engine.gradients(n_pairs, make_inputs, sample_of, ctx.target, backward=rule):
        n = len(chunk.rows)
        lo, hi = row_range(chunk.rows)
        diff = chunk.inputs[:n] - chunk.inputs[n:]
        total.index_add_(0, chunk.samples, diff * chunk.input_grad[:n])
        if rule.reference_logits is None:
            # A neuron / channel target stopped the forward at its layer, before the model's
            # output: both halves were read and scored. The input half's gradient is still its
            # own score's (rows are independent and the rule sends nothing to the references).
            scores = chunk.scores.to(dtype)
            s_x[lo:hi], s_ref[lo:hi] = scores[:n], scores[n:]
        else:
            s_x[lo:hi] = chunk.scores.to(dtype)
            s_ref[lo:hi] = ctx.target.scores(rule.reference_logits, chunk.samples).to(dtype)
    # The engine counted one row per pair; each pair also ran its reference row.
    ctx.engine.cost.grad_rows += n_pairs
    if rule.reached == 0:
        warnings.warn(
            f"{method}: the model has no nonlinearity module DeepLIFT can reach (nn.ReLU, "
            "nn.Sigmoid, nn.MaxPool2d…), so the result is the gradient times (x - x'); use a "
            "model whose activations are modules to get the rescale rule.",
            stacklevel=3,
        )
    return total, s_x, s_ref


def warn_unconserved(
    delta: torch.Tensor, gap: torch.Tensor, scores: torch.Tensor, method: str
) -> None:
    """Warn when summation-to-delta fails: |delta| above 1 % of |S(x) - S(x')| (plus the float
    rounding of the scores) for some sample. The rescale rule conserves the score difference
    exactly through the modules it reaches; a gap this large means the model computes
    nonlinearities it does not reach, whose gradient is taken instead (one host read a call)."""
    rounding = 64 * torch.finfo(scores.dtype).eps * scores.abs().clamp(min=1.0)
    off = delta.abs() > 1e-2 * gap.abs() + rounding
    if not bool(off.any()):
        return
    share = float((delta.abs() / gap.abs().clamp(min=torch.finfo(gap.dtype).tiny)).max())
    warnings.warn(
        f"{method}: summation-to-delta is off by up to {share:.0%} of S(x) - S(x') "
        "(extras['delta']): the model computes nonlinearities the rescale rule does not reach "
        "(functional calls such as F.relu or torch.sigmoid, attention's softmax and products, "
        "normalisation layers), where it takes their gradient, or an eps so large that "
        "changed inputs take the gradient too; integrated_gradients keeps completeness on any "
        "differentiable model.",
        stacklevel=3,
    )


@register(
    "deeplift",
    family="relevance",
    cost="2",
    reduction="signed sum over channels",
    choices={"baselines": INPUT_BASELINE_CHOICES},
)
def deeplift(
    ctx: Context,
    *,
    baselines: Any = "zero",
    blur_sigma: float = 10.0,
    seed: int = 0,
    eps: float = 1e-10,
) -> MethodOutput:
    """DeepLIFT, rescale rule (Shrikumar et al. 2017): (x - x') ⊙ multipliers of S.

    Options: `baselines` (the reference x') "zero" (the default; also None, as Captum's) | a
    number | "blur" (Gaussian blur of the input with `blur_sigma` pixels, a number checked
    whatever the baselines) | "uniform" (noise in each sample's range, `seed`) | a tensor
    broadcastable to the inputs; `eps`: below this |x - x'| a nonlinearity uses its gradient
    (at least the smallest normal number of the dtype: 6.1e-5 in float16).
    extras["delta"] (B,) is the summation-to-delta gap Σ φ - (S(x) - S(x')).
    """
    name = "deeplift"
    eps = _check_eps(eps, name)
    seed = check_seed(name, seed)
    base = input_baselines(ctx.x, baselines, method=name, blur_sigma=blur_sigma, seed=seed)
    batch = ctx.batch
    samples = torch.arange(batch, device=base.device)  # pair i: sample i and its baseline
    attributions, s_x, s_ref = deeplift_pairs(
        ctx, samples, lambda r: row_slice(base, r), eps=eps, method=name
    )
    delta = attributions.flatten(1).sum(1) - (s_x - s_ref)
    warn_unconserved(delta, s_x - s_ref, s_x, name)
    return MethodOutput(attributions, extras={"delta": delta})


@register(
    "deeplift_shap",
    family="relevance",
    cost="2 * n_baselines",
    reduction="signed sum over channels",
    choices={"baselines": DISTRIBUTION_CHOICES},
)
def deeplift_shap(
    ctx: Context,
    *,
    baselines: Any = "uniform",
    n_baselines: int | None = None,
    seed: int = 0,
    eps: float = 1e-10,
) -> MethodOutput:
    """DeepLIFT-SHAP (Lundberg & Lee 2017): DeepLIFT averaged over a distribution of references.

    Options: `baselines` a tensor (N, C, H, W) of references | "uniform" (the default, also
    None: noise images in each input's own value range, drawn per input from `seed` and its
    values: the same map in any batch) | "batch" (the batch's own inputs, in any order) | "zero" |
    a number;
    `n_baselines` how many references to use: by default all N of a tensor (or "batch"), and
    16 "uniform" draws; fewer than N samples that many without replacement (`seed`), the same
    subset for every input; `eps` as in deeplift. extras["delta"] (B,) is
    Σ φ - (S(x) - mean_k S(x'_k)).
    """
    name = "deeplift_shap"
    eps = _check_eps(eps, name)
    seed = check_seed(name, seed)
    if n_baselines is not None:
        n_baselines = positive_int(n_baselines, "n_baselines", name)
    x, batch = ctx.x, ctx.batch
    dev = x.device
    n_draws = n_baselines or DEFAULT_UNIFORM_REFERENCES
    dist = baseline_distribution(x, baselines, method=name, n_samples=n_draws)
    sample_shape = tuple(x.shape[1:])
    uniform = isinstance(dist, UniformReferences)
    if uniform:
        # Reference k of input b from draw k's seed of b's own generator (seed and its values):
        # the same references in any batch and on every device, drawn per chunk of pairs.
        seeds = draw_seeds(sample_generators(x, seed), dist.n)
        n_refs = dist.n
        dtype = float_dtype(x)
    else:  # one distribution for all inputs (a subset of it: the same for every input)
        if n_baselines is not None and n_baselines < dist.shape[0]:
            keep = torch.randperm(dist.shape[0], generator=cpu_generator(seed))[:n_baselines]
            dist = dist[keep.to(dev)]
        n_refs = dist.shape[0]
    # Pair r: reference r // B of sample r % B. Per-pair tables on the device, sliced per chunk
    # (the engine's chunk rows are CPU ranges: moved to a GPU, they would wait for it every
    # chunk); the seeds are indexed on the host by the rows themselves.
    ids = torch.arange(n_refs * batch, device=dev)
    refs, samples = ids // batch, ids % batch

    def reference_of(rows: torch.Tensor) -> torch.Tensor:
        if uniform:
            u, _ = seeded_draws(
                seeds[rows % batch, rows // batch], sample_shape, dtype, uniform=True, normal=False
            )
            return dist.take(row_slice(samples, rows), u)
        return dist[row_slice(refs, rows)].expand(len(rows), *sample_shape)

    total, s_x, s_ref = deeplift_pairs(ctx, samples, reference_of, eps=eps, method=name)
    attributions = total / n_refs
    mean_ref = torch.zeros(batch, device=dev, dtype=s_ref.dtype)
    mean_ref.index_add_(0, samples, s_ref / n_refs)
    delta = attributions.flatten(1).sum(1) - (s_x[:batch] - mean_ref)
    warn_unconserved(delta, s_x[:batch] - mean_ref, s_x[:batch], name)
    return MethodOutput(attributions, extras={"delta": delta, "n_baselines": n_refs})
