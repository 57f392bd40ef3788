"""Axiomatic metrics, registered by name on import: completeness, non-sensitivity, input
invariance."""

from .completeness import Completeness
from .input_invariance import InputInvariance
from .non_sensitivity import NonSensitivity

__all__ = ["Completeness", "InputInvariance", "NonSensitivity"]
