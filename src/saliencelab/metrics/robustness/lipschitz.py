"""Local Lipschitz estimate (Alvarez-Melis & Jaakkola 2018)."""

from __future__ import annotations

import torch

from ..base import EvalBatch, LastDraw, Metric, Scores, register_metric
from ..checks import check_choice, check_positive, check_positive_int
from ._noisy import (
    On,
    distances,
    explain_noisy,
    kept_noise,
    noise_key,
    noisy_copies,
    reference,
    row_norm,
)


@register_metric
class LocalLipschitz(Metric):
    """Local Lipschitz estimate (Alvarez-Melis & Jaakkola 2018), lower is better.

    L(x) = max_k ‖e(x) − e(x'_k)‖₂ / ‖x − x'_k‖₂ with x'_k = x + δ_k, δ_k ~ N(0, std²) per element
    (`noise="uniform"`: U(−std, std)), `n_samples` seeded copies, all explained in one explainer
    call. `on="attributions"` compares the full attributions instead of the maps. Quantus'
    `LocalLipschitzEstimate` (defaults: Euclidean norms, Gaussian noise) computes the same value
    for the same noise (it adds 1e-10 to the denominator).
    """

    name = "local_lipschitz"
    direction = "lower"
    value_range = (0.0, float("inf"))
    needs = ("model", "explainer")
    family = "robustness"
    reference = (
        "Alvarez-Melis & Jaakkola 2018, On the Robustness of Interpretability Methods (ICML WHI)"
    )

    def __init__(
        self,
        std: float = 0.1,
        n_samples: int = 10,
        noise: str = "gaussian",
        on: On = "maps",
        seed: int = 0,
    ) -> None:
        check_positive(self.name, "std", std, "the noise's standard deviation")
        check_positive_int(self.name, "n_samples", n_samples, "noisy copies per input")
        check_choice(self.name, "noise", noise, ("uniform", "gaussian"))
        check_choice(self.name, "on", on, ("maps", "attributions"))
        super().__init__(std=std, n_samples=n_samples, noise=noise, on=on, seed=seed)
        self._draws = LastDraw()  # the noise, kept for the next batch of the same shape
        self._norms = LastDraw()  # and the norm of each noise row

    def ratios(self, batch: EvalBatch) -> torch.Tensor:
        """(B, n_samples) ‖e(x) − e(x'_k)‖₂ / ‖x − x'_k‖₂ of each noisy copy."""
        ref = reference(batch, self.on)
        n = self.n_samples
        x = batch.x
        delta = kept_noise(self._draws, x, n, self.std, self.noise, self.seed)  # type: ignore[arg-type]
        explained = explain_noisy(batch, noisy_copies(x, delta), n, self.on)
        num = distances(explained, ref, n, "l2")
        key = noise_key(x, n, self.std, self.noise, self.seed)  # type: ignore[arg-type]
        den = self._norms.get(key, lambda: row_norm(delta, "l2"))
        return num / den.view(x.shape[0], n)

    def score(self, batch: EvalBatch) -> Scores:
        r = self.ratios(batch)
        return Scores(values=r.amax(dim=1), extras={"ratios": r})
