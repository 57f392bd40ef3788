"""Robustness metrics, registered by name on import: max/avg sensitivity, local Lipschitz."""

from .lipschitz import LocalLipschitz
from .sensitivity import AvgSensitivity, MaxSensitivity

__all__ = ["AvgSensitivity", "LocalLipschitz", "MaxSensitivity"]
