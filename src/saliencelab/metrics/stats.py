"""Small statistics the metrics share, batched in torch: ranks, correlations, AUC, bootstrap CI."""

from __future__ import annotations

import math

import numpy as np
import torch


def pixel_order(maps: torch.Tensor, descending: bool = True) -> torch.Tensor:
    """(B, H*W) pixel indices sorted by map value; ties keep raster order (row-major position).

    `descending=True` is the "most relevant first" (MoRF) order.
    """
    flat = maps.flatten(1)
    return torch.sort(flat, dim=1, descending=descending, stable=True).indices


def sorted_values(values: torch.Tensor) -> torch.Tensor:
    """`values` sorted ascending along the last axis (values only, no indices).

    On the CPU NumPy's vectorised sort does this about 9× faster than torch.sort (measured on
    64 × 224² float32 maps); elsewhere torch.sort.
    """
    if values.device.type == "cpu" and values.dtype in (torch.float32, torch.float64):
        return torch.from_numpy(np.sort(values.detach().numpy(), axis=-1))
    return torch.sort(values, dim=-1).values


def ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks along the last axis, 1 = smallest, ties share their average rank (scipy's rankdata)."""
    v = values.double()
    order = v.argsort(dim=-1, stable=True)
    sorted_v = v.gather(-1, order)
    n = v.shape[-1]
    pos = torch.arange(1, n + 1, dtype=torch.double, device=v.device).expand_as(v)
    # Average rank over each run of equal values: first and last position of each run.
    new_run = torch.ones_like(sorted_v, dtype=torch.bool)
    new_run[..., 1:] = sorted_v[..., 1:] != sorted_v[..., :-1]
    run_id = new_run.long().cumsum(-1) - 1
    run_first = torch.zeros_like(sorted_v).scatter_reduce(
        -1, run_id, pos, "amin", include_self=False
    )
    run_last = torch.zeros_like(sorted_v).scatter_reduce(
        -1, run_id, pos, "amax", include_self=False
    )
    avg = ((run_first + run_last) / 2).gather(-1, run_id)
    return torch.empty_like(v).scatter_(-1, order, avg)


def pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation along the last axis; NaN where either side is constant."""
    a = a.double() - a.double().mean(-1, keepdim=True)
    b = b.double() - b.double().mean(-1, keepdim=True)
    den = (a.square().sum(-1) * b.square().sum(-1)).sqrt()
    out = (a * b).sum(-1) / den
    return torch.where(den > 0, out, torch.full_like(out, math.nan))


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation along the last axis (Pearson of average ranks)."""
    return pearson(ranks(a), ranks(b))


def trapezoid(y: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
    """Area under the curve(s) `y` (…, K) by the trapezoid rule; `x` defaults to [0, 1] evenly."""
    y = y.double()
    if x is None:
        x = torch.linspace(0, 1, y.shape[-1], dtype=torch.double, device=y.device)
    return torch.trapezoid(y, x.double().to(y.device), dim=-1)


def bootstrap_ci(
    values: torch.Tensor, level: float = 0.95, n_resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean (Efron 1979); NaN for < 2 values."""
    v = values.double().flatten().cpu()
    v = v[torch.isfinite(v)]
    if v.numel() < 2:
        return (math.nan, math.nan)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, v.numel(), (n_resamples, v.numel()), generator=g)
    means = v[idx].mean(dim=1)
    alpha = (1 - level) / 2
    lo, hi = torch.quantile(means, torch.tensor([alpha, 1 - alpha], dtype=torch.double))
    return (float(lo), float(hi))
