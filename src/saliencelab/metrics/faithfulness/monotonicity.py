"""Monotonicity (Arya et al. 2019) and monotonicity correlation (Nguyen & Martinez 2020)."""

from __future__ import annotations

import torch

from ...core.errors import SaliencelabError
from ..base import EvalBatch, Scores, register_metric
from ..checks import check_choice, check_positive, check_positive_int, check_range
from ..stats import pixel_order, spearman
from .perturbation import (
    FaithfulnessMetric,
    as_01,
    baseline_like,
    exact_float,
    generator,
    input_first,
    ranked_replacement_scores,
    ranks_of,
    replaced,
    rows_of,
    run_rows,
    step_counts,
)


def check_steps(name: str, steps: int, why: str) -> None:
    """`steps` a whole number of at least 2 (`why`: what one step could not do)."""
    check_positive_int(name, "steps", steps)
    if steps < 2:
        raise SaliencelabError(f"steps must be at least 2 for {name} ({why}), got {steps}.")


def check_steps_fit(name: str, steps: int, x: torch.Tensor) -> None:
    """No more steps than the H·W pixels of `x`: a step past that adds no pixel, and such empty
    steps counted as increments that did not decrease (monotonicity) or as tied points of the
    correlation, lifting the score."""
    pixels = x.shape[-2] * x.shape[-1]
    if steps > pixels:
        raise SaliencelabError(
            f"steps={steps} of {name} is more than the {pixels} pixels of the inputs (a step "
            f"past that adds no pixel); give steps of at most {pixels}."
        )


def _ascending_ranks(maps: torch.Tensor, absolute: bool) -> torch.Tensor:
    m = maps.abs() if absolute else maps
    return ranks_of(pixel_order(m, descending=False))


@register_metric
class Monotonicity(FaithfulnessMetric):
    """Monotonicity (Arya et al. 2019; as Quantus' Monotonicity). Higher is better, in [0, 1].

    Pixels are ranked by map value (|map| with `absolute=True`, Quantus' default), ascending,
    ties by position. Starting from the `baseline`, at step k = 0..steps the first
    round(k·H·W/steps) pixels (all channels) are copied from the input: features are added in
    increasing order of importance. The curve is the target's probability at each step (step 0,
    the baseline alone, drawn for reference). As in Arya et al.'s AIX360 and Quantus, whose
    sequence is the prediction after each addition, the value is the fraction of the steps − 1
    increments from step 1 on where it does not decrease; `extras["monotonic"]` is 1 where all
    do (Quantus' boolean). Costs steps + 1 forwards; `steps` from 2 to H·W (`check_steps_fit`).
    """

    name = "monotonicity"
    direction = "higher"
    value_range = (0.0, 1.0)
    reference = (
        "Arya et al. 2019, One Explanation Does Not Fit All: A Toolkit and Taxonomy of AI "
        "Explainability Techniques"
    )

    def __init__(
        self,
        steps: int = 50,
        baseline: float | torch.Tensor = 0.0,
        absolute: bool = True,
        score: str = "probability",
    ) -> None:
        check_steps(self.name, steps, "it scores the increments between additions")
        super().__init__(steps=steps, baseline=baseline, absolute=absolute, score=score)

    def check_inputs(
        self, x: torch.Tensor, maps: torch.Tensor, masks: torch.Tensor | None = None
    ) -> None:
        super().check_inputs(x, maps, masks)
        check_steps_fit(self.name, self.steps, x)

    def score(self, batch: EvalBatch) -> Scores:
        self.check_inputs(batch.x, batch.maps)
        _, _, h, w = batch.x.shape
        steps = self.steps
        base = baseline_like(self.name, self.baseline, batch.x, allow_number=True)
        ranks = _ascending_ranks(batch.maps, self.absolute)
        counts = step_counts(steps, h * w, batch.device)
        curves = ranked_replacement_scores(
            batch, ranks, counts, batch.x, base, self.score_kind
        ).double()
        up = curves[:, 1:].diff(dim=1) >= 0  # after each addition (not the baseline alone)
        return Scores(
            values=up.double().mean(dim=1),
            curves=curves,
            curve_x=counts.double().cpu() / (h * w),
            extras={"monotonic": up.all(dim=1).double()},
        )


@register_metric
class MonotonicityCorrelation(FaithfulnessMetric):
    """Monotonicity correlation (Nguyen & Martinez 2020; as Quantus). Higher is better.

    Pixels ranked by (|map| with `absolute=True`) ascending are split into `steps` groups of
    round(k·H·W/steps) boundaries. Each group alone is replaced (all channels) `n_samples`
    times, by a uniform value in `uniform_range` per draw (`perturbation="uniform"`, seeded,
    the same draws for every sample) or by `baseline` (`"baseline"`: one draw). With
    v_g = mean_draws (f(x_g) − f(x))² / f(x)² (not divided when |f(x)| < eps) and a_g the
    group's summed attribution, the value is Spearman's correlation of (a_g) and (v_g).
    Costs steps · n_samples + 1 forwards per sample (steps + 1 with a baseline); `steps` from 2
    to H·W.
    """

    name = "monotonicity_correlation"
    direction = "higher"
    value_range = (-1.0, 1.0)
    reference = "Nguyen & Martinez 2020, On quantitative aspects of model interpretability"

    def __init__(
        self,
        steps: int = 50,
        n_samples: int = 10,
        perturbation: str = "uniform",
        uniform_range: tuple[float, float] = (0.0, 1.0),
        baseline: float | torch.Tensor = 0.0,
        absolute: bool = True,
        eps: float = 1e-5,
        seed: int = 0,
        score: str = "probability",
    ) -> None:
        check_steps(self.name, steps, "it correlates the groups' attributions and effects")
        check_positive_int(self.name, "n_samples", n_samples)
        check_choice(self.name, "perturbation", perturbation, ("uniform", "baseline"))
        check_range(self.name, "uniform_range", uniform_range)
        check_positive(self.name, "eps", eps)
        super().__init__(
            steps=steps,
            n_samples=n_samples,
            perturbation=perturbation,
            uniform_range=uniform_range,
            baseline=baseline,
            absolute=absolute,
            eps=eps,
            seed=seed,
            score=score,
        )

    def check_inputs(
        self, x: torch.Tensor, maps: torch.Tensor, masks: torch.Tensor | None = None
    ) -> None:
        super().check_inputs(x, maps, masks)
        check_steps_fit(self.name, self.steps, x)

    def score(self, batch: EvalBatch) -> Scores:
        self.check_inputs(batch.x, batch.maps)
        b, _, h, w = batch.x.shape
        dtype = batch.x.dtype
        steps, kind, draws, eps = self.steps, self.perturbation, self.n_samples, float(self.eps)
        if kind == "baseline":
            draws = 1  # every draw would be the same
            fill = baseline_like(self.name, self.baseline, batch.x, allow_number=True)
        else:
            lo, hi = self.uniform_range
            u = torch.rand(steps, draws, generator=generator(self.seed), dtype=torch.float64)
            values = (lo + (hi - lo) * u).to(device=batch.device, dtype=batch.x.dtype)
        ranks = _ascending_ranks(batch.maps, self.absolute)
        counts = step_counts(steps, h * w, batch.device)
        # the group of each pixel: g where counts[g] <= rank < counts[g + 1]
        group = torch.searchsorted(counts, ranks, right=True) - 1  # (B, H·W)
        exact = exact_float(steps)
        fgroup = group.to(exact)

        def keep_of(samples: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
            """(n, 1, H, W) 1 where the pixel is not in the row's group g."""
            mask = as_01(torch.ne, fgroup.index_select(0, samples), g.to(exact)[:, None], dtype)
            return mask.view(-1, 1, h, w)

        def make(samples: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
            # group g replaced by draw d; k >= 1 only (k = 0, the input itself, is known)
            g, d = (k - 1) // draws, (k - 1) % draws
            if kind == "uniform":
                f = values[g, d].view(-1, 1, 1, 1)
            else:
                f = fill if isinstance(fill, float) else rows_of(fill, samples)
            return replaced(rows_of(batch.x, samples), keep_of(samples, g), f)

        known = input_first(batch, self.score_kind)
        scores = run_rows(batch, steps * draws + 1, make, self.score_kind, known)
        y = scores[:, :1]
        sq = (scores[:, 1:] - y).square().view(b, steps, draws).mean(dim=2)
        inv = torch.where(y.abs() >= eps, 1.0 / y.square(), torch.ones_like(y))
        variance = sq * inv
        m = batch.maps.abs() if self.absolute else batch.maps
        att = torch.zeros(b, steps, dtype=torch.float64, device=batch.device)
        att.scatter_add_(1, group.clamp(max=steps - 1), m.flatten(1).double())
        return Scores(
            values=spearman(att, variance),
            curves=variance,
            curve_x=counts[1:].double().cpu() / (h * w),
            extras={"group_attributions": att},
        )
