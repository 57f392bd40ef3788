"""Infidelity (Yeh et al. 2019): how well attributions predict the effect of input noise."""

from __future__ import annotations

import torch

from ..base import EvalBatch, Scores, register_metric
from ..checks import check_positive, check_positive_int
from .correlation import unit_attributions
from .perturbation import (
    FaithfulnessMetric,
    generator,
    input_first,
    run_rows,
)


def gaussian_perturbations(n: int, shape: tuple[int, ...], std: float, seed: int) -> torch.Tensor:
    """(n, *shape) perturbations I ~ N(0, std²), seeded, the same for every sample (CPU)."""
    return torch.randn(n, *shape, generator=generator(seed), dtype=torch.float64) * std


@register_metric
class Infidelity(FaithfulnessMetric):
    """Infidelity (Yeh et al. 2019). Lower is better, ≥ 0.

    INFD = E_I[(Iᵀa − (f(x) − f(x − I)))²] over `n_perturbations` Gaussian perturbations
    I ~ N(0, std²) of every input value (seeded; the same I for every sample). `a` is the full
    (B, C, H, W) attribution when the batch carries one (an sl.Explanation of a gradient-type
    method does), else the map broadcast over channels. With `normalize=True` the attribution
    is first scaled by the optimal β = E[Iᵀa · Δf] / E[(Iᵀa)²] (Captum's `normalize`).
    Equals `captum.metrics.infidelity` given the same perturbations. Without `normalize` (the
    default, as Captum's) the value scales with the map (a map ×10 scores ~100× more, and an
    all-zero map can beat a good one): compare methods with `normalize=True`, which Yeh et
    al.'s own evaluation code always applies (it also draws I as the difference to a noisy
    baseline, std 0.2, rather than noise around x). f is the target's logit
    by default, as in Quantus and Captum's usual forward (`score="probability"`: its softmax
    probability). Costs n_perturbations + 1 forwards per sample.
    """

    name = "infidelity"
    direction = "lower"
    value_range = (0.0, float("inf"))
    reference = "Yeh et al. 2019, On the (In)fidelity and Sensitivity of Explanations"

    def __init__(
        self,
        n_perturbations: int = 10,
        std: float = 0.1,
        normalize: bool = False,
        seed: int = 0,
        score: str = "logit",
    ) -> None:
        check_positive_int(self.name, "n_perturbations", n_perturbations)
        check_positive(self.name, "std", std)
        super().__init__(
            n_perturbations=n_perturbations, std=std, normalize=normalize, seed=seed, score=score
        )

    def score(self, batch: EvalBatch) -> Scores:
        self.check_batch(batch)
        n, std = self.n_perturbations, float(self.std)
        shape = tuple(batch.x.shape[1:])
        noise = self._draws.get(
            (n, shape, std, self.seed), lambda: gaussian_perturbations(n, shape, std, self.seed)
        )
        noise_x = noise.to(device=batch.device, dtype=batch.x.dtype)

        def make(samples: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
            # x - I_(k-1); k >= 1 only (k = 0, the input itself, is known)
            return batch.x.index_select(0, samples).sub_(noise_x.index_select(0, k - 1))

        known = input_first(batch, self.score_kind)
        scores = run_rows(batch, n + 1, make, self.score_kind, known)
        drops = scores[:, :1] - scores[:, 1:]  # f(x) - f(x - I), (B, n)
        a = unit_attributions(batch, "element")  # (B, C·H·W)
        dots = a @ noise.to(batch.device).reshape(n, -1).T  # Iᵀa, (B, n)
        if self.normalize:
            den = dots.square().sum(1, keepdim=True)
            beta = torch.where(den > 0, (dots * drops).sum(1, keepdim=True) / den, 0.0)
            dots = beta * dots
        values = (dots - drops).square().mean(dim=1)
        return Scores(values=values, extras={"dots": dots, "drops": drops})
