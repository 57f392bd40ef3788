"""saliencelab: see what a deep learning model looks at, and use it to evaluate the model.

>>> import saliencelab as sl
>>> model = sl.load_model("efficientnet_lite0")
>>> x = model.preprocess(sl.sample_image("chelsea"))
>>> ex = sl.explain(model, x, methods=["saliency", "gradcam", "integrated_gradients"])
"""

from . import methods as _builtin_methods  # noqa: F401  (registers them; before `methods` below)
from . import metrics
from .core.cpu_memory import reuse_freed_memory
from .core.errors import SaliencelabError
from .core.explain import explain
from .core.registry import MethodSpec, methods, register
from .core.result import Attribution, Explanation
from .data.images import image_paths, load_image
from .data.labels import imagenet_labels
from .data.samples import sample_image, sample_images
from .featurevis import Visualization, objectives, visualize
from .metrics import EvalReport, MetricResult, evaluate
from .models.blackbox import blackbox
from .models.model import Model
from .models.zoo import list_models, load_model, register_model, register_scheme
from .neurons import (
    ActivationMaps,
    Example,
    ReceptiveField,
    activations,
    channel,
    conditional_map,
    examples_gallery,
    neuron,
    receptive_field,
    save_examples_gallery,
    top_examples,
)
from .report.html import ReportEntry, write_index
from .text import TextModel, continuation, save_text_html, similarity_to
from .viz.gallery import gallery, save_gallery
from .viz.overlay import overlay, save_overlay

__all__ = [
    "EvalReport",
    "MetricResult",
    "evaluate",
    "metrics",
    "ActivationMaps",
    "Visualization",
    "Attribution",
    "Example",
    "ReceptiveField",
    "TextModel",
    "activations",
    "blackbox",
    "channel",
    "conditional_map",
    "continuation",
    "examples_gallery",
    "neuron",
    "objectives",
    "receptive_field",
    "save_examples_gallery",
    "save_text_html",
    "similarity_to",
    "top_examples",
    "visualize",
    "Explanation",
    "MethodSpec",
    "Model",
    "ReportEntry",
    "SaliencelabError",
    "explain",
    "gallery",
    "image_paths",
    "imagenet_labels",
    "list_models",
    "load_image",
    "load_model",
    "methods",
    "overlay",
    "register",
    "reuse_freed_memory",
    "register_model",
    "register_scheme",
    "sample_image",
    "sample_images",
    "save_gallery",
    "save_overlay",
    "write_index",
]
__version__ = "0.1.0"
