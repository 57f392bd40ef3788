"""Top-k intersection (Theiner et al. 2021)."""

from __future__ import annotations

import math

import torch

from ...core.errors import SaliencelabError
from ..base import EvalBatch, Metric, Scores, register_metric
from ._common import flat_maps_and_masks, nan_where, target_extras, top_k_hits


@register_metric
class TopKIntersection(Metric):
    """Top-k intersection (Theiner et al. 2021): share of the k most relevant pixels in the mask.

    value = |{k highest-valued pixels} ∩ mask| / k, ranking the signed map (pass `maps.abs()` to
    rank by magnitude). `k` is a pixel count (default 1000, as in Quantus, meant for 224×224
    maps) or, below 1, a fraction of the map's pixels (k = round(k · H · W)). With
    `concept_influence=True` the value is divided by the mask's share of the image,
    |mask| / (H · W), so 1 means "as often in the mask as chance". Ties at the k-th value are
    averaged over every order of the tied pixels. NaN where the mask is empty.
    """

    name = "top_k_intersection"
    direction = "higher"
    value_range = (0.0, 1.0)
    needs = ("masks",)
    family = "localisation"
    reference = (
        "Theiner et al. 2021, Interpretable Semantic Photo Geolocation (WACV 2022, "
        "arXiv:2104.14995)"
    )

    def __init__(self, k: float = 1000, concept_influence: bool = False) -> None:
        number = isinstance(k, (int, float)) and not isinstance(k, bool)
        if not (number and (0 < k < 1 or (k >= 1 and math.isfinite(k) and k == int(k)))):
            raise SaliencelabError(
                f"k must be a whole pixel count ≥ 1 or a fraction in (0, 1) for {self.name}, "
                f"got {k!r}."
            )
        super().__init__(k=k, concept_influence=concept_influence)
        if concept_influence:  # a ratio to chance: 1 / (the mask's share) at most
            self.value_range = (0.0, math.inf)

    def pixels(self, n: int, unit: str = "pixels") -> int:
        """The number of pixels k stands for on maps of `n` pixels (`unit`: "features" for
        (B, F) maps of features or words)."""
        k = max(1, round(self.k * n)) if self.k < 1 else int(self.k)
        if k > n:
            raise SaliencelabError(
                f"k={self.k} is more than the {n} {unit} of the maps; give a smaller k or a "
                "fraction such as k=0.05."
            )
        return k

    def check_inputs(
        self, x: torch.Tensor, maps: torch.Tensor, masks: torch.Tensor | None = None
    ) -> None:
        self.pixels(maps[0].numel(), _unit(maps))  # k larger than a map: one sentence

    def score(self, batch: EvalBatch) -> Scores:
        v, m = flat_maps_and_masks(batch, self.name)
        b, n = v.shape
        k = self.pixels(n, _unit(batch.maps))
        values = top_k_hits(v, m, torch.full((b,), k, dtype=torch.long, device=v.device)) / k
        if self.concept_influence:
            values = values * n / m.sum(1).clamp(min=1)
        values = nan_where(values, ~m.any(1))
        return Scores(values=values, extras=target_extras(batch))


def _unit(maps: torch.Tensor) -> str:
    """What a map's values are: "pixels" of (B, H, W) maps, "features" of (B, F) maps (tabular
    features, or a text's words)."""
    return "pixels" if maps.dim() >= 3 else "features or words"
