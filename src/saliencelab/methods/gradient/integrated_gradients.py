"""Integrated gradients (Sundararajan, Taly & Yan 2017, "Axiomatic Attribution for Deep Networks").

    IG(x) = (x - x') ⊙ ∫_0^1 ∂S/∂x(x' + α (x - x')) dα
          ≈ (x - x') ⊙ Σ_k w_k ∂S/∂x(x' + α_k (x - x'))

with the nodes α_k and weights w_k of a quadrature rule on [0, 1]. Completeness says
Σ IG(x) = S(x) - S(x'); the gap `delta` is reported per sample in `extras`.

The n_steps × B interpolated rows are built chunk by chunk (row r = step r // B of sample r % B)
and their weighted gradients summed into a (B, ...) tensor with `index_add_`.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
import torch

from ...core.batching import row_slice
from ...core.context import Context, MethodOutput
from ...core.engine import captured_dtype
from ...core.errors import SaliencelabError, closest
from ...core.registry import quoted, register
from ..options import check_blur_sigma
from ..reference import check_seed
from .baselines import INPUT_BASELINE_CHOICES, float_dtype, input_baselines, positive_int

RULES = (
    "gausslegendre",
    "riemann_left",
    "riemann_right",
    "riemann_middle",
    "riemann_trapezoid",
)


@lru_cache(maxsize=64)
def _nodes(rule: str, n: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if rule == "gausslegendre":
        # Exact for polynomials of degree <= 2n - 1; nodes mapped from [-1, 1] to [0, 1].
        t, w = np.polynomial.legendre.leggauss(n)
        return tuple(0.5 * (t + 1)), tuple(0.5 * w)
    if rule == "riemann_trapezoid":
        h = 1.0 / (n - 1)
        w = [h] * n
        w[0] = w[-1] = h / 2
        return tuple(k * h for k in range(n)), tuple(w)
    offset = {"riemann_left": 0.0, "riemann_middle": 0.5, "riemann_right": 1.0}[rule]
    return tuple((k + offset) / n for k in range(n)), (1.0 / n,) * n


def quadrature(rule: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes α_k and weights w_k (summing to 1) of `rule` with `n` points on [0, 1], float64.

    - gausslegendre: Gauss–Legendre nodes, exact for polynomials up to degree 2n - 1.
    - riemann_left / riemann_right / riemann_middle: α_k = (k + 0, 1, ½) / n, w_k = 1 / n.
    - riemann_trapezoid: α_k = k / (n - 1), w = (½, 1, …, 1, ½) / (n - 1); needs n >= 2.
    """
    if rule not in RULES:
        raise SaliencelabError(
            f"integrated_gradients: unknown rule {rule!r}.{closest(str(rule), RULES)} Use one of "
            f"{', '.join(RULES)}."
        )
    n = positive_int(n, "n_steps", "integrated_gradients", 2 if rule == "riemann_trapezoid" else 1)
    alphas, weights = _nodes(rule, n)
    return np.array(alphas), np.array(weights)


def _shape(x: torch.Tensor) -> tuple[int, ...]:
    return (-1,) + (1,) * (x.dim() - 1)


def target_scores(ctx: Context, inputs: torch.Tensor) -> torch.Tensor:
    """S of each row of `inputs` (row r is of sample r % B), forward only."""
    n, batch = inputs.shape[0], ctx.batch
    samples = torch.arange(n, device=inputs.device) % batch
    # (slices of device tensors per chunk: no chunk waits for a GPU)
    return ctx.engine.scores(
        n, lambda r: row_slice(inputs, r), lambda r: row_slice(samples, r), ctx.target
    )


@register(
    "integrated_gradients",
    family="gradient",
    cost="n_steps",
    reduction="signed sum over channels",
    # a tensor may be per batch; "uniform" baselines are drawn per sample from its own values
    # (the same for a repeated row), but stay off here: one call per step
    rowwise=lambda options: (
        options["baselines"] != "uniform"
        if isinstance(options["baselines"], str)
        else isinstance(options["baselines"], int | float)
    ),
    choices={"baselines": INPUT_BASELINE_CHOICES, "rule": quoted(RULES)},
)
def integrated_gradients(
    ctx: Context,
    *,
    n_steps: int = 50,
    baselines: Any = "zero",
    rule: str = "gausslegendre",
    blur_sigma: float = 10.0,
    seed: int = 0,
) -> MethodOutput:
    """Integrated gradients (Sundararajan et al. 2017): (x - x') ⊙ ∫ ∂S/∂x along the straight path.

    Options: `n_steps` quadrature points; `baselines` "zero" (the default; also None, as
    Captum's) | a number | "blur" (Gaussian blur of the input with `blur_sigma` pixels) |
    "uniform" (uniform noise in each sample's range, seeded by `seed` and the sample's values:
    the same in any batch) | a tensor broadcastable to the inputs; `rule` "gausslegendre" |
    "riemann_left" | "riemann_right" | "riemann_middle" | "riemann_trapezoid". extras["delta"]
    (B,) is the completeness gap Σ IG - (S(x) - S(x')).
    """
    name = "integrated_gradients"
    seed = check_seed(name, seed)
    blur_sigma = check_blur_sigma(blur_sigma, name)  # also when a model makes its baselines
    alphas_np, weights_np = quadrature(rule, n_steps)
    x = ctx.x
    dtype, dev, batch = float_dtype(x), x.device, ctx.batch
    model_baselines = ctx.model.extra.get("baselines")  # a model's own, e.g. text: pad embeddings
    if model_baselines is not None:
        base = model_baselines(x, baselines)
    else:
        base = input_baselines(x, baselines, method=name, blur_sigma=blur_sigma, seed=seed)
    diff = x.to(dtype) - base
    alphas = torch.as_tensor(alphas_np, dtype=dtype, device=dev)
    weights = torch.as_tensor(weights_np, dtype=dtype, device=dev)
    shape = _shape(x)

    # Row r: step r // B of sample r % B. Per-row tables on the device, sliced per chunk (the
    # engine's chunk rows are CPU ranges: moved to a GPU, they would wait for it every chunk).
    n_rows = len(alphas_np) * batch
    ids = torch.arange(n_rows, device=dev)
    steps, samples = ids // batch, ids % batch

    def sample_of(rows: torch.Tensor) -> torch.Tensor:
        return row_slice(samples, rows)

    def make_inputs(rows: torch.Tensor) -> torch.Tensor:
        b = sample_of(rows)
        return torch.addcmul(base[b], alphas[row_slice(steps, rows)].view(shape), diff[b])

    total = torch.zeros_like(diff, dtype=captured_dtype(diff.dtype))  # float32 for half models
    for chunk in ctx.engine.gradients(n_rows, make_inputs, sample_of, ctx.target):
        k = row_slice(steps, chunk.rows)
        total.index_add_(0, chunk.samples, chunk.input_grad * weights[k].view(shape))
    attributions = diff * total

    if ctx.logits is not None:
        s_x = ctx.target.scores(ctx.logits, torch.arange(batch, device=ctx.logits.device))
        s_base = target_scores(ctx, base)
    else:  # a derived context (e.g. inside SmoothGrad): S(x) is not known yet
        s_x, s_base = target_scores(ctx, torch.cat([x.to(dtype), base])).split(batch)
    delta = attributions.flatten(1).sum(1) - (s_x.to(dtype) - s_base.to(dtype)).to(dev)
    return MethodOutput(attributions, extras={"delta": delta})
