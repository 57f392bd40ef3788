"""Deletion and insertion (Petsiuk et al. 2018, RISE): the area under a pixel-removal curve."""

from __future__ import annotations

import torch

from ..base import EvalBatch, Scores, register_metric
from ..checks import check_positive, check_positive_int
from ..stats import pixel_order, trapezoid
from .perturbation import (
    FaithfulnessMetric,
    baseline_like,
    gaussian_blur,
    ranked_replacement_scores,
    ranks_of,
    step_counts,
)


class _Curve(FaithfulnessMetric):
    """Pixels ranked by map value (descending, ties by position), moved in `steps` steps."""

    direction = "lower"
    value_range = (0.0, 1.0)
    range_of_probabilities = True
    reference = (
        "Petsiuk et al. 2018, RISE: Randomized Input Sampling for Explanation of Black-box Models"
    )

    def _curve(
        self, batch: EvalBatch, inside: torch.Tensor | float, outside: torch.Tensor
    ) -> Scores:
        _, _, h, w = batch.x.shape
        ranks = ranks_of(pixel_order(batch.maps))
        counts = step_counts(self.steps, h * w, batch.device)
        curves = ranked_replacement_scores(batch, ranks, counts, inside, outside, self.score_kind)
        x_axis = counts.double().cpu() / (h * w)
        return Scores(values=trapezoid(curves), curves=curves, curve_x=x_axis)


@register_metric
class Deletion(_Curve):
    """Deletion (Petsiuk et al. 2018): the target's probability as the top pixels are removed.

    Pixels are ranked by map value, descending (ties by raster position); at step k = 0..steps
    the first round(k·H·W/steps) pixels, all channels, are replaced by `baseline` (a number or a
    tensor broadcastable to x, in model input space). The curve is the softmax probability of
    the target (`score="logit"`: its logit) at each step; the value is its area over [0, 1] by
    the trapezoid rule, the steps evenly spaced at k/steps (as RISE's `auc`; `curve_x` holds the
    exact fractions round(k·H·W/steps)/(H·W), at most 1/(2·H·W) from k/steps). Lower is better.
    Costs steps + 1 forwards per sample.
    """

    name = "deletion"
    direction = "lower"

    def __init__(
        self, steps: int = 100, baseline: float | torch.Tensor = 0.0, score: str = "probability"
    ) -> None:
        check_positive_int(self.name, "steps", steps)
        super().__init__(steps=steps, baseline=baseline, score=score)

    def score(self, batch: EvalBatch) -> Scores:
        self.check_batch(batch)
        base = baseline_like(self.name, self.baseline, batch.x, allow_number=True)
        return self._curve(batch, base, batch.x)


@register_metric
class Insertion(_Curve):
    """Insertion (Petsiuk et al. 2018): the target's probability as top pixels are restored.

    Starts from a Gaussian-blurred copy of the input (std `blur_sigma` pixels, kernel radius
    max(1, int(3·sigma + 0.5)), borders replicated) and copies pixels from the input in the
    same order and steps as deletion. Value: area under the probability curve over [0, 1]
    (steps at k/steps, as deletion's). Higher is better.
    (The RISE code blurs with an 11 × 11 near-box kernel, `gkern(11, 5)`, zero-padded, which
    darkens the borders: a blur, not the same one.)
    """

    name = "insertion"
    direction = "higher"
    curve_labels = ("fraction restored", "score (mean over samples)")  # the curves' axes

    def __init__(
        self, steps: int = 100, blur_sigma: float = 5.0, score: str = "probability"
    ) -> None:
        check_positive_int(self.name, "steps", steps)
        check_positive(self.name, "blur_sigma", blur_sigma)
        super().__init__(steps=steps, blur_sigma=blur_sigma, score=score)

    def score(self, batch: EvalBatch) -> Scores:
        self.check_batch(batch)
        blurred = gaussian_blur(batch.x, float(self.blur_sigma))
        return self._curve(batch, batch.x, blurred)
