"""Completeness (Sundararajan et al. 2017): attributions sum to the output difference."""

from __future__ import annotations

import math

import torch

from ..base import EvalBatch, Metric, Scores, register_metric
from ..checks import check_choice
from ..faithfulness.perturbation import replaced, rows_of
from ._common import OUTPUTS, BaselineSpec, Output, baseline_of, check_baseline


@register_metric
class Completeness(Metric):
    """Completeness gap (Sundararajan et al. 2017, Integrated Gradients), lower is better.

    gap = |Σ_i a_i − (f(x) − f(x'))| with f the target's logit (`output="probability"`: its
    softmax probability) and x' the baseline: a number, a tensor, or per sample the minimum
    ("black"), maximum ("white") or mean ("mean") of its values. `relative=True` divides by
    |f(x) − f(x')| (NaN where that is 0). Σ a sums the full input-space attributions when the
    batch has them, else the maps. Integrated Gradients with enough steps scores ≈ 0 (its
    completeness axiom); plain gradients do not. 2 forwards per sample.

    Quantus' `Completeness` tests exact equality of the same two sides (a boolean); this is the
    size of the gap.
    """

    name = "completeness"
    direction = "lower"
    value_range = (0.0, math.inf)
    needs = ("model",)
    family = "axiomatic"
    reference = "Sundararajan et al. 2017, Axiomatic Attribution for Deep Networks (ICML)"

    def __init__(
        self, baseline: BaselineSpec = 0.0, output: Output = "logit", relative: bool = False
    ) -> None:
        check_baseline(baseline)
        check_choice(self.name, "output", output, OUTPUTS)
        super().__init__(baseline=baseline, output=output, relative=relative)

    def output_difference(self, batch: EvalBatch) -> torch.Tensor:
        """(B,) f(x) − f(x') of the target class."""
        x = batch.x
        b = x.shape[0]
        base = baseline_of(x, self.baseline)  # broadcastable to x

        def make(rows: torch.Tensor) -> torch.Tensor:
            rows = rows.to(x.device)
            idx = rows % b
            keep = (rows < b).to(x.dtype).view(-1, *[1] * (x.dim() - 1))  # 1: x, 0: baseline
            return replaced(rows_of(x, idx), keep, rows_of(base, idx))

        kind = "logit" if self.output == "logit" else "probability"
        f = batch.scores(2 * b, make, lambda rows: rows % b, kind=kind).double()
        return f[:b] - f[b:]

    def score(self, batch: EvalBatch) -> Scores:
        full = batch.attributions
        a = full if full is not None and full.shape == batch.x.shape else batch.maps
        total = a.flatten(1).double().sum(1)
        delta = self.output_difference(batch).to(total.device)
        gap = (total - delta).abs()
        if self.relative:
            gap = torch.where(delta != 0, gap / delta.abs(), torch.full_like(gap, math.nan))
        return Scores(values=gap, extras={"sum_attributions": total, "output_difference": delta})
