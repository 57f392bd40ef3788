"""Gradient-based methods: saliency, input×gradient, integrated gradients, SmoothGrad…"""

from . import saliency  # noqa: F401
