"""Layer-wise relevance propagation: rules (what), composites (where), canonizers (model
surgery, always undone) and `LRPRule` (how it runs in the engine); registers the method `lrp`."""

from .attributor import LayerRecord, LRPRule, lrp
from .canonizers import MBConvResidual, MergeBatchNorm, ResidualSum, default_canonizers
from .composites import PRESETS, Composite, composite_from_name
from .rules import AlphaBeta, Epsilon, Flat, Gamma, Pass, Rule, WSquare, ZBox, ZPlus

__all__ = [
    "PRESETS",
    "AlphaBeta",
    "Composite",
    "Epsilon",
    "Flat",
    "Gamma",
    "LRPRule",
    "LayerRecord",
    "MBConvResidual",
    "MergeBatchNorm",
    "Pass",
    "ResidualSum",
    "Rule",
    "WSquare",
    "ZBox",
    "ZPlus",
    "composite_from_name",
    "default_canonizers",
    "lrp",
]
