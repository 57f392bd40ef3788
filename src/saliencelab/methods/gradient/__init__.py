"""Gradient-based methods: saliency, input×gradient, integrated and expected gradients, guided
backpropagation, deconvnet, and the SmoothGrad family (SmoothGrad, SmoothGrad², VarGrad)."""

from . import (  # noqa: F401
    expected_gradients,
    guided,
    integrated_gradients,
    saliency,
    smoothgrad,
)
