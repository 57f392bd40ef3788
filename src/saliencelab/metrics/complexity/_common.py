"""Helpers the complexity metrics share."""

from __future__ import annotations

import math

import torch

from ..base import EvalBatch


def magnitudes(batch: EvalBatch) -> torch.Tensor:
    """(B, N) |map| of a batch, float32 or float64 as given (complexity scores magnitudes only)."""
    a = batch.maps.reshape(batch.maps.shape[0], -1).abs()
    return a if a.dtype in (torch.float32, torch.float64) else a.float()


def nan_where_zero(values: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    """NaN where a map is all zeros (no relevance: the score is undefined)."""
    return torch.where(total == 0, torch.full_like(values, math.nan), values)
