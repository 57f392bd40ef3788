"""Sensitivity-n (Ancona et al. 2018): correlation of attribution sums and output drops per n."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ...core.errors import SaliencelabError
from ..base import EvalBatch, Scores, register_metric
from ..checks import check_positive_int
from ..stats import pearson
from .perturbation import (
    FaithfulnessMetric,
    as_numbers,
    as_tuple,
    baseline_like,
    input_first,
    random_subsets,
    replaced,
    rows_of,
    run_rows,
)


def check_fractions(name: str, fractions: object) -> None:
    """One sentence unless `fractions` are one or more numbers in (0, 1]."""
    fr = as_numbers(fractions)
    if fr is None or fr.numel() == 0 or not ((fr > 0) & (fr <= 1)).all():
        raise SaliencelabError(
            f"The fractions of {name} must be numbers in (0, 1], got {fractions!r}."
        )


@register_metric
class SensitivityN(FaithfulnessMetric):
    """Sensitivity-n (Ancona et al. 2018). Higher is better, in [-1, 1].

    For each n = max(1, round(f · H·W)), f in `fractions`, draw `n_samples` random subsets S of
    n pixels (seeded, the same for every sample), replace them (all channels) by `baseline`, and
    take the Pearson correlation over the subsets of Σ_{i∈S} map_i with f(x) − f(x_S). The
    curve is that correlation per n (curve_x = n / (H·W)); the value is its mean over n (NaN
    entries skipped). Costs len(fractions) · n_samples + 1 forwards per sample.

    Quantus 0.6's SensitivityN computes another quantity (a correlation across the samples of
    a batch, with cumulative MoRF removal), so it is not comparable to this one.
    """

    name = "sensitivity_n"
    direction = "higher"
    value_range = (-1.0, 1.0)
    reference = (
        "Ancona et al. 2018, Towards better understanding of gradient-based attribution methods "
        "for deep neural networks"
    )

    def __init__(
        self,
        fractions: Sequence[float] = (0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.8),
        n_samples: int = 20,
        baseline: float | torch.Tensor = 0.0,
        seed: int = 0,
        score: str = "probability",
    ) -> None:
        check_fractions(self.name, fractions)
        check_positive_int(self.name, "n_samples", n_samples, "a correlation needs 2", minimum=2)
        super().__init__(
            fractions=as_tuple(fractions),
            n_samples=n_samples,
            baseline=baseline,
            seed=seed,
            score=score,
        )

    def score(self, batch: EvalBatch) -> Scores:
        self.check_batch(batch)
        b, _, h, w = batch.x.shape
        draws = self.n_samples
        fr = torch.tensor(self.fractions, dtype=torch.float64)
        ns = torch.round(fr * h * w).long().clamp(min=1)
        sizes = ns.repeat_interleave(draws)
        masks = self._draws.get(  # (len(ns) · draws, H·W)
            (h * w, tuple(sizes.tolist()), self.seed),
            lambda: random_subsets(h * w, sizes, self.seed),
        )
        fill = baseline_like(self.name, self.baseline, batch.x, allow_number=True)
        keep = (~masks).to(device=batch.device, dtype=batch.x.dtype)  # 1: the pixel stays

        def make(samples: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
            # subset k - 1 replaced; k >= 1 only (k = 0, the input itself, is known)
            inside = fill if isinstance(fill, float) else rows_of(fill, samples)
            row_keep = keep.index_select(0, k - 1).view(-1, 1, h, w)
            return replaced(rows_of(batch.x, samples), row_keep, inside)

        known = input_first(batch, self.score_kind)
        scores = run_rows(batch, sizes.numel() + 1, make, self.score_kind, known)
        drops = (scores[:, :1] - scores[:, 1:]).view(b, ns.numel(), draws)
        sums = (batch.maps.flatten(1).double() @ masks.to(batch.device).double().T).view(
            b, ns.numel(), draws
        )
        curves = pearson(sums, drops)  # (B, len(ns))
        return Scores(
            values=curves.nanmean(dim=1),
            curves=curves,
            curve_x=ns.double() / (h * w),
        )
