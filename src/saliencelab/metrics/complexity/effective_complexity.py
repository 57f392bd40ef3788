"""Effective complexity (Nguyen & Martínez 2020)."""

from __future__ import annotations

from ..base import EvalBatch, Metric, Scores, register_metric
from ..checks import check_at_least
from ._common import magnitudes


@register_metric
class EffectiveComplexity(Metric):
    """Effective complexity (Nguyen & Martínez 2020): how many pixels carry relevance.

    value = #{i : |R_i| > eps · s}, with s = max_j |R_j| when `relative=True` (the default:
    the map is first scaled to max 1, as Quantus 0.6.0 does by default, so `eps` does not
    depend on the method's units) or s = 1 when `relative=False`. `fraction=True` divides by
    the number of pixels. Lower = simpler. An all-zero map counts 0.
    """

    name = "effective_complexity"
    direction = "lower"
    value_range = (0.0, float("inf"))
    family = "complexity"
    reference = (
        "Nguyen & Martínez 2020, On Quantitative Aspects of Model Interpretability "
        "(arXiv:2007.07584)"
    )

    def __init__(self, eps: float = 1e-5, relative: bool = True, fraction: bool = False) -> None:
        check_at_least(self.name, "eps", eps, 0, "the threshold")
        super().__init__(eps=eps, relative=relative, fraction=fraction)

    def score(self, batch: EvalBatch) -> Scores:
        a = magnitudes(batch)
        threshold = self.eps * (a.amax(1, keepdim=True) if self.relative else 1.0)
        count = (a > threshold).sum(1).double()
        if self.fraction:
            count = count / a.shape[1]
        return Scores(values=count)
