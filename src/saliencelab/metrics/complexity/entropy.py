"""Complexity as the entropy of the map (Bhatt et al. 2020)."""

from __future__ import annotations

import math

import torch

from ..base import EvalBatch, Metric, Scores, register_metric
from ._common import magnitudes, nan_where_zero


@register_metric
class Entropy(Metric):
    """Complexity (Bhatt et al. 2020): the Shannon entropy of |map| as a distribution.

    p_i = |R_i| / Σ_j |R_j|,  H = −Σ_i p_i ln p_i  (0 ln 0 = 0), in nats, in [0, ln n]: 0 when
    all relevance is on one pixel, ln n for a constant map. Lower = simpler. `normalised=True`
    divides by ln n (range [0, 1]). NaN for an all-zero map. Quantus 0.6.0 `Complexity`
    computes ln(p + 1e-12).
    """

    name = "entropy"
    direction = "lower"
    value_range = (0.0, float("inf"))
    family = "complexity"
    reference = (
        "Bhatt et al. 2020, Evaluating and Aggregating Feature-based Model Explanations (IJCAI)"
    )

    def __init__(self, normalised: bool = False) -> None:
        super().__init__(normalised=normalised)
        if normalised:
            self.value_range = (0.0, 1.0)  # type: ignore[misc]

    def score(self, batch: EvalBatch) -> Scores:
        a = magnitudes(batch).double()
        total = a.sum(1, keepdim=True)
        p = a / torch.where(total == 0, torch.ones_like(total), total)
        h = 0.0 - torch.special.xlogy(p, p).sum(1)  # (0.0 - 0: +0, not -0)
        if self.normalised and a.shape[1] > 1:
            h = h / math.log(a.shape[1])  # one pixel: H = 0 already
        return Scores(values=nan_where_zero(h, total[:, 0]))
