"""Max- and avg-sensitivity (Yeh et al. 2019): how much an explanation moves under input noise."""

from __future__ import annotations

from typing import ClassVar

import torch

from ..base import EvalBatch, LastDraw, Metric, Scores, register_metric
from ..checks import check_choice, check_positive, check_positive_int
from ._noisy import (
    Noise,
    On,
    distances,
    explain_noisy,
    kept_noise,
    noisy_copies,
    reference,
    row_norm,
)


class _Sensitivity(Metric):
    """s_k = ‖e(x + δ_k) − e(x)‖ / ‖e(x)‖ for n seeded δ_k ~ U(−r, r)^d (or N(0, r²)^d)."""

    direction = "lower"
    value_range = (0.0, float("inf"))
    needs = ("model", "explainer")
    family = "robustness"
    reference = "Yeh et al. 2019, On the (In)fidelity and Sensitivity of Explanations (NeurIPS)"
    _reduce: ClassVar[str] = "max"

    def __init__(
        self,
        radius: float = 0.02,
        n_samples: int = 10,
        noise: Noise = "uniform",
        norm: str = "fro",
        normalise: bool = True,
        on: On = "maps",
        seed: int = 0,
    ) -> None:
        what = "the noise's L∞ radius, or its std for noise='gaussian'"
        check_positive(self.name, "radius", radius, what)
        check_positive_int(self.name, "n_samples", n_samples, "noisy copies per input")
        check_choice(self.name, "noise", noise, ("uniform", "gaussian"))
        check_choice(self.name, "norm", norm, ("fro", "l2", "l1", "linf"))
        check_choice(self.name, "on", on, ("maps", "attributions"))
        super().__init__(
            radius=radius,
            n_samples=n_samples,
            noise=noise,
            norm=norm,
            normalise=normalise,
            on=on,
            seed=seed,
        )
        self._draws = LastDraw()  # the noise, kept for the next batch of the same shape

    def sensitivities(self, batch: EvalBatch) -> torch.Tensor:
        """(B, n_samples) the sensitivity of each noisy copy."""
        ref = reference(batch, self.on)
        n = self.n_samples
        x = batch.x
        delta = kept_noise(self._draws, x, n, self.radius, self.noise, self.seed)
        explained = explain_noisy(batch, noisy_copies(x, delta), n, self.on)
        sens = distances(explained, ref, n, self.norm)
        if self.normalise:
            # ‖e(x)‖ = 0 divides by 1, as Captum's sensitivity_max does.
            den = row_norm(ref, self.norm)
            sens = sens / torch.where(den > 0, den, torch.ones_like(den))[:, None]
        return sens

    def score(self, batch: EvalBatch) -> Scores:
        sens = self.sensitivities(batch)
        values = sens.amax(dim=1) if self._reduce == "max" else sens.mean(dim=1)
        return Scores(values=values, extras={"sensitivities": sens})


@register_metric
class MaxSensitivity(_Sensitivity):
    """Max-sensitivity (Yeh et al. 2019), lower is better.

    SENS_max = max_k ‖e(x + δ_k) − e(x)‖ / ‖e(x)‖ over `n_samples` seeded δ_k, uniform in the L∞
    ball of radius `radius` (`noise="gaussian"`: N(0, radius²) per element). `normalise=False`
    drops the division by ‖e(x)‖; `norm` is "fro" (L2 of the flattened map), "l1" or "linf".
    `on="attributions"` compares the full (C, H, W) attributions instead of the maps.

    All B · n_samples noisy inputs are explained in one explainer call (chunked by the engine).
    Captum's `sensitivity_max` (normalised by ‖e(x)‖, a zero norm divides by 1) and Quantus'
    `MaxSensitivity(normalise=False)` compute the same value for the same noise.
    """

    name = "max_sensitivity"
    _reduce = "max"


@register_metric
class AvgSensitivity(_Sensitivity):
    """Avg-sensitivity (Yeh et al. 2019), lower is better: the mean over the noisy copies of
    ‖e(x + δ_k) − e(x)‖ / ‖e(x)‖ (same options as max-sensitivity; Quantus' AvgSensitivity)."""

    name = "avg_sensitivity"
    _reduce = "mean"
