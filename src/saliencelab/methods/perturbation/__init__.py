"""Perturbation methods: occlusion, RISE, feature ablation (and LIME / KernelSHAP).

They need only forwards, so they also explain black-box models (`models/blackbox.py`).
Feature masks shared by the feature-based methods live in `features.py`.
"""

from . import (  # noqa: F401
    feature_ablation,
    features,
    kernelshap,
    lime,
    occlusion,
    rise,
)
