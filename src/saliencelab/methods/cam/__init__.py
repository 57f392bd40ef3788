"""Class activation maps: CAM, Grad-CAM and its variants, Score-CAM, Eigen-CAM, Ablation-CAM."""

from . import gradcam  # noqa: F401
