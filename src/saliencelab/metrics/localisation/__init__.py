"""Localisation metrics, registered by name on import: does the map point at the object?

All read ground-truth `masks` ((B, H, W) bool, at the maps' resolution; build them from boxes
with :func:`boxes_to_masks`) and record each sample's class in `extras["target"]`
(:func:`per_class_mean` groups by it). An empty mask gives NaN (nothing to localise).

- ``pointing_game``: is the maximum within `tolerance` pixels of the mask (Zhang et al. 2018).
- ``relevance_mass``: share of positive relevance inside the mask (Arras et al. 2022).
- ``relevance_rank``: share of the top-|mask| pixels inside the mask (Arras et al. 2022).
- ``top_k_intersection``: share of the top-k pixels inside the mask (Theiner et al. 2021).
- ``roc_auc``: ROC-AUC of the map as a pixel classifier of the mask.
- ``focus``: share of positive relevance on the target's quadrants of a 2×2 mosaic
  (Arias-Duart et al. 2022); build mosaics with :func:`make_mosaics`.
"""

from .boxes import boxes_to_masks
from .focus import Focus, Mosaics, make_mosaics
from .pointing_game import PointingGame, dilate_masks, per_class_mean
from .relevance_mass import RelevanceMass, RelevanceRank
from .roc_auc import RocAuc
from .top_k import TopKIntersection

__all__ = [
    "Focus",
    "Mosaics",
    "PointingGame",
    "RelevanceMass",
    "RelevanceRank",
    "RocAuc",
    "TopKIntersection",
    "boxes_to_masks",
    "dilate_masks",
    "make_mosaics",
    "per_class_mean",
]
