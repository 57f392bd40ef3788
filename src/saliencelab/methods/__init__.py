"""Saliency methods, registered by name on import (see `core/registry.py`)."""

from ..text import leave_one_out  # noqa: F401  (text: leave-one-out over words)
from . import attention, cam, gradient, perturbation, reference, relevance  # noqa: F401
