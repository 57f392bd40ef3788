"""ROC-AUC of a map as a pixel classifier of the ground-truth mask."""

from __future__ import annotations

from ..base import EvalBatch, Metric, Scores, register_metric
from ..stats import ranks
from ._common import flat_maps_and_masks, ratio, target_extras


@register_metric
class RocAuc(Metric):
    """Area under the ROC curve of the map's values as scores of "pixel in the mask" (Fawcett
    2006, An introduction to ROC analysis; a localisation score in Quantus, Hedström et al. 2023).

    By the Mann–Whitney identity, with average ranks r (ties share their mean rank),
    P = |mask| and Q = N − P:  AUC = (Σ_{p ∈ mask} r_p − P(P + 1)/2) / (P · Q),
    the probability that a random mask pixel outranks a random background pixel (ties count
    1/2). Equal to sklearn's `roc_auc_score(mask, map)` and to Quantus 0.6.0 `AUC`. 0.5 is
    chance. NaN where the mask is empty or covers the whole map (one class only).
    """

    name = "roc_auc"
    direction = "higher"
    value_range = (0.0, 1.0)
    needs = ("masks",)
    family = "localisation"
    reference = (
        "Fawcett 2006, An introduction to ROC analysis; as a localisation score in "
        "Hedström et al. 2023, Quantus (JMLR 24:34)"
    )

    def __init__(self) -> None:
        super().__init__()

    def score(self, batch: EvalBatch) -> Scores:
        v, m = flat_maps_and_masks(batch, self.name)
        n = v.shape[1]
        p = m.sum(1).double()
        q = n - p
        r = ranks(v)
        u = (r * m).sum(1) - p * (p + 1) / 2
        return Scores(values=ratio(u, p * q), extras=target_extras(batch))
