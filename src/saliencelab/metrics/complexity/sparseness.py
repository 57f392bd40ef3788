"""Sparseness: the Gini index of |map| (Chalasani et al. 2020)."""

from __future__ import annotations

import torch

from ..base import EvalBatch, Metric, Scores, register_metric
from ..stats import sorted_values
from ._common import magnitudes, nan_where_zero


@register_metric
class Sparseness(Metric):
    """Sparseness (Chalasani et al. 2020): the Gini index of the map's magnitudes.

    With a_(1) ≤ … ≤ a_(n) the sorted |map| values,
    G = Σ_i (2i − n − 1) a_(i) / (n Σ_i a_(i)), in [0, 1 − 1/n]: 0 for a constant map, 1 − 1/n
    when all relevance is on one pixel. Higher = sparser. NaN for an all-zero map (Quantus
    0.6.0 adds 1e-7 to every value first and returns 0 there).
    """

    name = "sparseness"
    direction = "higher"
    value_range = (0.0, 1.0)
    family = "complexity"
    reference = (
        "Chalasani et al. 2020, Concise Explanations of Neural Networks using Adversarial "
        "Training (ICML)"
    )

    def __init__(self) -> None:
        super().__init__()

    def score(self, batch: EvalBatch) -> Scores:
        a = sorted_values(magnitudes(batch)).double()
        n = a.shape[1]
        i = torch.arange(1, n + 1, dtype=torch.double, device=a.device)
        total = a.sum(1)
        gini = ((2 * i - n - 1) * a).sum(1) / (n * total)
        return Scores(values=nan_where_zero(gini, total))
