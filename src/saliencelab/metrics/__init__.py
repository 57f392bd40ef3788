"""Metrics for saliency maps: faithfulness, robustness, localisation, complexity, randomisation
(sanity checks) and axiomatic properties. Each is a :class:`Metric` registered by name.

>>> rep = sl.evaluate(model, x, ex, metrics=["deletion", "pointing_game"], masks=masks)
>>> m = sl.metrics.get("deletion")(steps=50); m.update(maps, x=x, model=model); m.compute()
"""

from . import axiomatic, complexity, faithfulness, localisation, randomisation, robustness  # noqa: F401
from .base import (
    CurvesDroppedWarning,
    EmptyMaskWarning,
    EvalBatch,
    Explainer,
    Metric,
    MetricResult,
    Scores,
    available,
    get_metric,
    make_batch,
    metric_classes,
    register_metric,
)
from .evaluate import EvalReport, evaluate
from .localisation import boxes_to_masks, make_mosaics, per_class_mean

get = get_metric

__all__ = [
    "CurvesDroppedWarning",
    "EmptyMaskWarning",
    "EvalBatch",
    "EvalReport",
    "Explainer",
    "Metric",
    "MetricResult",
    "Scores",
    "available",
    "boxes_to_masks",
    "make_mosaics",
    "per_class_mean",
    "evaluate",
    "get",
    "get_metric",
    "make_batch",
    "metric_classes",
    "register_metric",
]
