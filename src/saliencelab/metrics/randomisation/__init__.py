"""Randomisation metrics (sanity checks), registered by name on import.

- "model_randomisation": model-parameter randomisation test (Adebayo et al. 2018).
- "random_logit": explanation of the target vs a random other class (Sixt et al. 2020).

`similarity` holds the map similarities they use (Spearman with / without abs, SSIM, HOG).
"""

from . import similarity
from .parameter import ModelRandomisation, select_stages, stages
from .random_logit import RandomLogit

__all__ = ["ModelRandomisation", "RandomLogit", "select_stages", "similarity", "stages"]
