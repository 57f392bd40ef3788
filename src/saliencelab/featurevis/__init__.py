"""Feature visualization: synthetic images that make a neuron, channel, direction or class fire.

>>> import saliencelab as sl
>>> model = sl.load_model("efficientnet_lite0")
>>> vis = sl.visualize(model, sl.objectives.class_logit("Egyptian cat"), steps=256)
>>> vis = sl.visualize(model, sl.objectives.channel("_blocks.12", 7), param="maco")
>>> vis.save("out/")
>>> ex = sl.top_examples(model, "photos/", "_blocks.12", channel=7)
>>> sl.featurevis.examples_picture(model, vis, 0, ex).save("channel7.png")

- :mod:`.param`: pixel, Fourier (1/f^decay), decorrelated colour and MACO parameterizations;
- :mod:`.transforms`: seeded random pad, jitter, scale, rotation, noise and crops, in torch;
- :mod:`.objectives`: neuron, channel, layer (DeepDream), direction, class logit, diversity and
  regularisers, composable with +, - and * a number;
- :mod:`.visualize`: the optimisation loop and its :class:`Visualization` result;
- :mod:`.spectrum`: the natural-image spectrum MACO keeps fixed.
"""

from . import objectives, transforms
from .param import FourierParam, ImageParam, MacoParam, PixelParam, color_sqrt
from .visualize import Visualization, examples_picture, visualize

__all__ = [
    "FourierParam",
    "ImageParam",
    "MacoParam",
    "PixelParam",
    "Visualization",
    "color_sqrt",
    "examples_picture",
    "objectives",
    "transforms",
    "visualize",
]
