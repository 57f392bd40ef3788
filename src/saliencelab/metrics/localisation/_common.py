"""Helpers the localisation metrics share: mask checks, relevance parts, tie-averaged top-k."""

from __future__ import annotations

import math
from typing import Literal

import torch

from ...core.errors import SaliencelabError
from ..base import EvalBatch

Part = Literal["positive", "absolute", "signed"]


def flat_maps_and_masks(batch: EvalBatch, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, N) maps (float32 or float64, as given) and (B, N) bool masks, checked to match.

    Sums over pixels are accumulated in float64 (see `total`); orderings and comparisons are
    exact in any dtype.
    """
    masks = batch.masks
    if masks is None:
        raise SaliencelabError(
            f"The metric {name} needs masks: pass masks=... ((B, H, W) bool ground-truth masks)."
        )
    maps = batch.maps
    if masks.dim() == 4 and masks.shape[1] == 1:
        masks = masks[:, 0]
    if tuple(masks.shape) != tuple(maps.shape):
        raise SaliencelabError(
            f"The masks have shape {tuple(masks.shape)} but the maps {tuple(maps.shape)}; "
            "give one (H, W) mask per map at the maps' resolution."
        )
    b = maps.shape[0]
    flat = maps.reshape(b, -1)
    if flat.dtype not in (torch.float32, torch.float64):
        flat = flat.float()
    return flat, masks.to(maps.device).reshape(b, -1).bool()


def total(values: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
    """Σ over pixels (of the masked pixels), accumulated in float64."""
    if masks is not None:
        values = torch.where(masks, values, 0)
    return values.double().sum(1)  # (faster on CPU than sum(dtype=torch.float64))


def relevance(values: torch.Tensor, part: Part) -> torch.Tensor:
    """The part of the relevance a mass-type score counts: max(v, 0), |v| or v itself."""
    if part == "positive":
        return values.clamp(min=0)
    if part == "absolute":
        return values.abs()
    if part == "signed":
        return values
    raise SaliencelabError(
        f"Unknown relevance part {part!r}; use 'positive', 'absolute' or 'signed'."
    )


def ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den, NaN where den is 0 (the score is undefined)."""
    out = num / torch.where(den == 0, torch.ones_like(den), den)
    return torch.where(den == 0, torch.full_like(out, math.nan), out)


def top_k_hits(values: torch.Tensor, masks: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Expected number of the `k` highest-valued pixels that lie in the mask, per row.

    Ties at the k-th value are averaged: with `t` the k-th largest value, the pixels above `t`
    all count, and the `k - #(v > t)` remaining picks are spread over the pixels equal to `t`,
    so they add `(k - #(v > t)) · #(v = t, in mask) / #(v = t)` — the mean over every order of
    the tied pixels. Rows with k = 0 give 0. `values` (B, N), `masks` (B, N) bool, `k` (B,) long.
    """
    n = values.shape[1]
    kk = k.clamp(min=1, max=n)
    top = values.topk(int(kk.max()), dim=1, sorted=True).values  # a sort only if k is large
    t = top.gather(1, (kk - 1)[:, None])  # (B, 1) the k-th largest value
    greater = values > t
    equal = values == t
    n_gt = greater.sum(1)
    n_eq = equal.sum(1)
    in_gt = (greater & masks).sum(1).double()
    in_eq = (equal & masks).sum(1).double()
    hits = in_gt + (kk - n_gt).double() * in_eq / n_eq.double()
    return torch.where(k > 0, hits, torch.zeros_like(hits))


def target_extras(batch: EvalBatch) -> dict[str, torch.Tensor]:
    """The per-sample class, so results can be grouped by class (see `per_class_mean`)."""
    return {"target": batch.target.detach().clone()}


def nan_where(values: torch.Tensor, undefined: torch.Tensor) -> torch.Tensor:
    return torch.where(undefined, torch.full_like(values, math.nan), values)
