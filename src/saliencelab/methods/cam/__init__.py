"""Class activation maps: CAM, Grad-CAM and its variants, Score-CAM, Eigen-CAM, Ablation-CAM.

Shared machinery (weighting, layer fusion, the shared layer pass) is in `common.py`.
"""

from . import eigencam, fc_cam, gradcam, perturbation  # noqa: F401
