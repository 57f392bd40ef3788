"""Relevance mass accuracy and relevance rank accuracy (Arras et al. 2022, CLEVR-XAI)."""

from __future__ import annotations

import math

from ..base import EvalBatch, Metric, Scores, register_metric
from ..checks import check_choice
from ._common import (
    Part,
    flat_maps_and_masks,
    nan_where,
    ratio,
    relevance,
    target_extras,
    top_k_hits,
    total,
)

_ARRAS = (
    "Arras et al. 2022, CLEVR-XAI: A benchmark dataset for the ground truth evaluation of neural "
    "network explanations (Information Fusion 81:14)"
)


@register_metric
class RelevanceMass(Metric):
    """Relevance mass accuracy (Arras et al. 2022): the share of relevance inside the mask.

    value = Σ_{p ∈ mask} R_p / Σ_p R_p with R = max(map, 0) (`part="positive"`, the paper's
    choice), |map| (`"absolute"`) or the signed map (`"signed"`, Quantus 0.6.0 with abs=False,
    not bounded to [0, 1]). NaN where the mask is empty or the map has no relevance of that part
    (denominator 0).
    """

    name = "relevance_mass"
    direction = "higher"
    value_range = (0.0, 1.0)
    needs = ("masks",)
    family = "localisation"
    reference = _ARRAS

    def __init__(self, part: Part = "positive") -> None:
        check_choice(self.name, "part", part, ("positive", "absolute", "signed"))
        super().__init__(part=part)
        if part == "signed":  # a share of signed sums: any value
            self.value_range = (-math.inf, math.inf)  # type: ignore[misc]

    def score(self, batch: EvalBatch) -> Scores:
        v, m = flat_maps_and_masks(batch, self.name)
        r = relevance(v, self.part)
        values = ratio(total(r, m), total(r))
        return Scores(values=nan_where(values, ~m.any(1)), extras=target_extras(batch))


@register_metric
class RelevanceRank(Metric):
    """Relevance rank accuracy (Arras et al. 2022): how many of the top-K pixels are in the mask.

    With K = |mask|, value = |{K highest-valued pixels} ∩ mask| / K, ranking the signed map
    (pass `maps.abs()` to rank by magnitude). Ties at the K-th value are averaged (the mean over
    every order of the tied pixels), so a constant map scores the chance level |mask| / N, where
    Quantus 0.6.0 breaks ties by NumPy's unstable argsort. NaN where the mask is empty.
    """

    name = "relevance_rank"
    direction = "higher"
    value_range = (0.0, 1.0)
    needs = ("masks",)
    family = "localisation"
    reference = _ARRAS

    def __init__(self) -> None:
        super().__init__()

    def score(self, batch: EvalBatch) -> Scores:
        v, m = flat_maps_and_masks(batch, self.name)
        k = m.sum(1)
        values = ratio(top_k_hits(v, m, k), k.double())
        return Scores(values=values, extras=target_extras(batch))
