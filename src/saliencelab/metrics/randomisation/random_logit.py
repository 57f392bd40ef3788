"""Random-logit test (Sixt, Granz & Landgraf 2020, "When Explanations Lie: Why Many Modified BP
Attributions Fail"; Quantus' RandomLogit).

A class-sensitive explanation of class c should differ from the explanation of another class c'
on the same input. Per sample, c' is drawn uniformly from the other classes (a torch generator
seeded with `seed` and the sample's input, so an image gets the same class in any batch: a
dataset scored in batches gives the values of one call), the maps are recomputed for c' and
compared with the given maps: value = sim(E(x, c), E(x, c')). Lower is better.

Quantus differences: Quantus draws c' with NumPy (other random classes for the same seed). Its
default SSIM is not ours: Quantus divides each batch of maps by its largest |value|
(`normalise_by_max`), flattens every map to 1-D and calls `skimage.metrics.structural_similarity`
with its defaults, a 7-pixel uniform window and sample covariance, and the data range max − min
of the two maps together. Ours (`similarity.ssim`) compares the 2-D maps with the 11 × 11
Gaussian window (σ = 1.5) of Wang et al. 2004 and population covariance, on each map min-max
normalised to [0, 1] (data range 1), and a constant map gets 0 (1 against another constant map)
where Quantus' SSIM gives ~0.99 (an all-zero map against a sparse one) or NaN (two constant
maps). The values differ (0.38 for ours, 0.09 for Quantus' on a pair of correlated 32 × 32
noise maps). With two classes c' = 1 − c is forced, which the tests use to compare with
Quantus exactly (by Spearman).
"""

from __future__ import annotations

import numbers
from typing import Any

import torch

from ...core.errors import SaliencelabError
from ...core.seeds import sample_seeds
from ...models.model import Model
from ..base import EvalBatch, Metric, Scores, register_metric
from .similarity import check_image_maps, check_similarity, check_similarity_fits, similarity_to


def random_other_class(
    target: torch.Tensor, num_classes: int, seed: int, x: torch.Tensor
) -> torch.Tensor:
    """(B,) a class ≠ target per sample, uniform over the other `num_classes - 1`: the target
    shifted by 1 + s mod (num_classes − 1), s the sample's 63-bit seed from `seed` and its input
    (`core/seeds.py`; uniform to within (num_classes − 1) / 2⁶³): the same class for the same
    image in any batch."""
    if num_classes < 2:
        raise SaliencelabError("The random-logit test needs a model with at least two classes.")
    shift = torch.tensor([1 + s % (num_classes - 1) for s in sample_seeds(x, seed)])
    return (target.cpu() + shift) % num_classes


@register_metric
class RandomLogit(Metric):
    """Similarity of the target's explanation to a random other class's (Sixt et al. 2020).

    value = sim(E(x, c), E(x, c')), c' uniform over the classes ≠ c (seeded); sim is "ssim"
    (default; Quantus' default is SSIM too, with other settings: module docstring), "spearman",
    "spearman_abs" or "hog". A constant map on one side gives 0, on both 1, for every sim
    (`similarity`'s convention; Quantus gives NaN for the correlations, and its SSIM ~1 for an
    all-zero map against a sparse one). Lower is better. The random classes are returned in
    `extras["random_class"]`. Cost: one explanation of the batch (plus one forward to count the
    classes when the model has no labels and `num_classes` is not given).
    """

    name = "random_logit"
    direction = "lower"
    value_range = (-1.0, 1.0)
    needs = ("model", "explainer")
    family = "randomisation"
    reference = "Sixt et al. 2020, When Explanations Lie: Why Many Modified BP Attributions Fail"

    def __init__(
        self,
        similarity: str = "ssim",
        seed: int = 42,
        num_classes: int | None = None,
        similarity_options: dict[str, Any] | None = None,
    ) -> None:
        check_similarity(similarity, similarity_options)
        if num_classes is not None and (
            isinstance(num_classes, bool)
            or not isinstance(num_classes, numbers.Integral)
            or num_classes < 2
        ):
            raise SaliencelabError(
                f"num_classes must be None (read from the model) or at least 2, got "
                f"{num_classes!r}."
            )
        super().__init__(
            similarity=similarity,
            seed=seed,
            num_classes=num_classes,
            similarity_options=similarity_options,
        )

    def check_inputs(
        self, x: torch.Tensor, maps: torch.Tensor, masks: torch.Tensor | None = None
    ) -> None:
        check_similarity_fits(self.name, self.similarity, self.similarity_options, maps)

    def check_model(self, model: Model) -> None:
        n = len(model.labels) if model.labels is not None else None
        if self.num_classes is not None and n is not None and self.num_classes > n:
            raise SaliencelabError(
                f"num_classes={self.num_classes} is more than the model's {n} classes; pass at "
                f"most {n}, or None to read it from the model."
            )

    def check_classes(self, highest: int) -> None:
        if self.num_classes is not None and highest >= self.num_classes:
            raise SaliencelabError(
                f"The maps explain class {highest}, beyond num_classes={self.num_classes} of "
                f"random_logit; pass num_classes of at least {highest + 1}, or None to read it "
                "from the model."
            )

    def _classes(self, batch: EvalBatch) -> int:
        if self.num_classes is not None:
            return int(self.num_classes)
        assert batch.model is not None
        if batch.model.labels is not None:
            return len(batch.model.labels)
        return int(batch.require_engine().logits(batch.x[:1]).shape[-1])

    def score(self, batch: EvalBatch) -> Scores:
        assert batch.explainer is not None
        check_image_maps(self.name, batch.maps)
        compare = similarity_to(self.similarity, batch.maps, self.similarity_options)
        n = self._classes(batch)
        lo, hi = batch.target_bounds()
        if hi >= n or lo < 0:
            raise SaliencelabError(
                f"The targets must be classes in [0, {n}); pass num_classes=... if the model has "
                "more."
            )
        other = random_other_class(batch.target, n, self.seed, batch.x).to(batch.target.device)
        maps = batch.explainer.maps(batch.model, batch.x, other)
        values = compare(maps)
        return Scores(values=values, extras={"random_class": other})
