"""Saliency methods, registered by name on import (see `core/registry.py`)."""

from . import cam, gradient  # noqa: F401
