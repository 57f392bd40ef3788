"""saliencelab: see what a deep learning model looks at, and use it to evaluate the model.

>>> import saliencelab as sl
>>> model = sl.load_model("efficientnet_lite0")
>>> x = model.preprocess(sl.sample_image("chelsea"))
>>> ex = sl.explain(model, x, methods=["saliency", "gradcam", "integrated_gradients"])
"""

from . import methods as _builtin_methods  # noqa: F401  (registers them; before `methods` below)
from .core.errors import SaliencelabError
from .core.explain import explain
from .core.registry import MethodSpec, methods, register
from .core.result import Attribution, Explanation
from .models.model import Model

__all__ = [
    "Attribution",
    "Explanation",
    "MethodSpec",
    "Model",
    "SaliencelabError",
    "explain",
    "methods",
    "register",
]
__version__ = "0.1.0"
