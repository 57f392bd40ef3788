"""Neurons and channels: what one unit of a hidden layer responds to.

- :func:`activations`: a layer's feature maps on an input, its top channels drawn over the photo;
- :func:`channel` / :func:`neuron`: targets for `sl.explain` ("which pixels make channel 42 of
  block 12 fire");
- :func:`conditional_map`: where one channel mattered for a class;
- :func:`top_examples`: the images (and the crops) that activate a channel most;
- :func:`receptive_field`: which input pixels a layer's units see.
"""

from .activations import ActivationMaps, activations
from .conditional import conditional_map
from .examples import Example, examples_gallery, save_examples_gallery, top_examples
from .receptive_field import ReceptiveField, receptive_field
from .targets import ChannelTarget, NeuronTarget, channel, neuron

__all__ = [
    "ActivationMaps",
    "ChannelTarget",
    "Example",
    "NeuronTarget",
    "ReceptiveField",
    "activations",
    "channel",
    "conditional_map",
    "examples_gallery",
    "neuron",
    "receptive_field",
    "save_examples_gallery",
    "top_examples",
]
