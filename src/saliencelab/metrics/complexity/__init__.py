"""Complexity metrics, registered by name on import: how simple is the map? (no model needed)

- ``sparseness``: Gini index of |map| (Chalasani et al. 2020); higher = sparser.
- ``entropy``: Shannon entropy of |map| / Σ|map| (Bhatt et al. 2020); lower = simpler.
- ``effective_complexity``: pixels with |map| > eps (Nguyen & Martínez 2020); lower = simpler.
"""

from .effective_complexity import EffectiveComplexity
from .entropy import Entropy
from .sparseness import Sparseness

__all__ = ["EffectiveComplexity", "Entropy", "Sparseness"]
