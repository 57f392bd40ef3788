"""Feature-visualization fixes from a sweep: a class name re-read for each model's labels,
Jitter larger than the image, and one-sentence refusals of a class out of range and a tensor of
several channels."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import saliencelab as sl
from saliencelab.core.errors import SaliencelabError
from saliencelab.featurevis import objectives as O
from saliencelab.featurevis import transforms as T
from saliencelab.featurevis.objectives import Capture
from saliencelab.featurevis.visualize import visualize


def test_a_class_name_is_looked_up_in_each_models_labels():
    """One class_logit("cat") reused on a model whose labels come in another order read the
    index it found on the first (it was kept by the number of classes only)."""
    objective = O.class_logit("cat")
    z = torch.tensor([[0.0, 1.0, 2.0]])
    assert objective(Capture(logits=z, labels=["cat", "dog", "cow"])).item() == 0.0
    assert objective(Capture(logits=z, labels=["dog", "cow", "cat"])).item() == 2.0
    assert objective(Capture(logits=z, labels=["cat", "dog", "cow"])).item() == 0.0


@pytest.mark.parametrize("d", [13, 16])
def test_jitter_of_the_images_side_or_more_is_one_sentence(d):
    """Jitter(d) crops (H - d, W - d): at d ≥ the shorter side it returned 0×2 crops or torch's
    RuntimeError inside visualize; below it the crop keeps (H - d, W - d)."""
    x = torch.rand(1, 3, 13, 18)
    with pytest.raises(SaliencelabError, match=r"Jitter\(\d+\) would crop the whole 13×18"):
        T.jitter(d)(x, T.Rng(0))
    assert T.jitter(12)(x, T.Rng(0)).shape[-2:] == (1, 6)


def test_a_class_out_of_range_and_several_channels_are_one_sentence():
    """The class sentence offered target=None, which visualize refuses; a tensor of two
    channels raised Python's ValueError."""
    model = sl.load_model("shapes_cnn")
    with pytest.raises(SaliencelabError) as e:
        sl.visualize(model, 7, steps=1, size=32, progress=False)
    assert "the model has 4 classes (0 to 3)" in str(e.value) and "None" not in str(e.value)
    with pytest.raises(SaliencelabError, match="channel must be an integer"):
        O.neuron("features.0", torch.tensor([1, 2]))
    assert O.neuron("features.0", torch.tensor(1)) is not None


def test_a_class_that_never_moves_is_told_to_start_elsewhere(caplog):
    """A class logit with a zero gradient at the start (EfficientNet-Lite0 at 32 px: one head
    unit of 1280 on) was told to "pick the layer before the ReLU, or another channel", which a
    class objective has neither of."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1)
    with torch.no_grad():
        conv.bias.fill_(-100.0)  # never fires on images in [0, 1]
    net = nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    with caplog.at_level("WARNING", logger="saliencelab"):
        vis = visualize(net, 2, steps=3, size=16, progress=False)
    assert vis.history[0, 0] == vis.history[-1, 0] == net[4].bias[2]  # the bias alone
    text = " ".join(r.getMessage() for r in caplog.records)
    assert "stayed at" in text and "start elsewhere: a larger size" in text
    assert "layer before the ReLU" not in text
