"""`sl.Model`'s fields are checked when set (also after construction), labels must name the
outputs one for one, and a preprocess must return one tensor row per image."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import saliencelab as sl


def _cnn(classes: int = 5) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(4, classes),
    ).eval()  # fmt: skip


def _images(n: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)) for _ in range(n)]


def _to_tensor(images):
    images = images if isinstance(images, list) else [images]
    arrays = [np.asarray(im, np.float32) / 255 for im in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


@pytest.mark.parametrize("labels", [list("abc"), list("abcdefg")])
def test_labels_that_do_not_name_the_outputs_are_one_sentence(labels):
    """random_logit drew from len(labels) classes (0.159 instead of 0.458 with 3 labels on 5
    logits), evaluate said "the model has 3 classes", a name past the logits crashed visualize."""
    model = sl.Model(_cnn(5), labels=labels)
    x = torch.rand(4, 3, 16, 16)
    message = f"The model gives 5 scores per input but has {len(labels)} labels; give one label "
    with pytest.raises(sl.SaliencelabError, match=message):
        sl.explain(model, x, "saliency")
    maps = {"m": torch.rand(4, 16, 16)}
    with pytest.raises(sl.SaliencelabError, match=message):
        sl.evaluate(model, x, maps, metrics=["random_logit"], explainer="saliency")
    with pytest.raises(sl.SaliencelabError, match=message):
        sl.visualize(model, "b", steps=1, size=16)
    model.labels = list("abcde")  # fixed: the same calls run
    sl.explain(model, x, "saliency")


def test_fields_set_later_are_checked_as_the_constructor_checks_them():
    model = sl.Model(_cnn(3), labels=["a", "b", "c"])
    with pytest.raises(sl.SaliencelabError, match="not one string"):
        model.labels = "xyz"  # was read one letter per class
    assert model.labels == ["a", "b", "c"]
    model.labels = {0: "x", 1: "y", 2: "z"}
    assert model.labels == ["x", "y", "z"]
    model.input_size = 16
    assert model.input_size == (16, 16)
    with pytest.raises(sl.SaliencelabError, match="input_size must be"):
        model.input_size = "big"
    with pytest.raises(sl.SaliencelabError, match="default_layer must be a layer's dotted name"):
        model.default_layer = 3
    model.default_layer = model.module[0]  # a submodule: its name
    assert model.default_layer == "0"
    with pytest.raises(sl.SaliencelabError, match="not part of the model"):
        model.default_layer = nn.Conv2d(3, 3, 1)
    with pytest.raises(sl.SaliencelabError, match="preprocess must be a function"):
        model.preprocess = "imagenet"
    with pytest.raises(sl.SaliencelabError, match="for a function of a batch, use sl.blackbox"):
        sl.Model(lambda x: x)
    with pytest.raises(sl.SaliencelabError, match="already an sl.Model"):
        sl.Model(model)
    with pytest.raises(sl.SaliencelabError, match="extra must be a dict"):
        sl.Model(_cnn(3), extra=["a"])
    assert sl.Model(_cnn(3), extra=None).extra == {}


@pytest.mark.parametrize(
    ("preprocess", "message"),
    [
        (lambda images: _to_tensor(images)[:1], "returned 1 row for 3 inputs; it must return one"),
        (lambda images: [_to_tensor(images)], "preprocess returned list; it must return the"),
        (lambda images: None, "preprocess returned NoneType"),
    ],
)
def test_a_preprocess_that_loses_rows_or_returns_no_tensor_is_one_sentence(preprocess, message):
    """A preprocess ignoring its input explained 1 image for 3 (the others vanished)."""
    model = sl.Model(_cnn(3), preprocess=preprocess)
    images = _images(3)
    for call in (
        lambda: sl.explain(model, images, "saliency"),
        lambda: sl.activations(model, images, "0"),
        lambda: sl.top_examples(model, images, "0", 0),
    ):
        with pytest.raises(sl.SaliencelabError, match=message):
            call()


def test_a_preprocess_returning_numpy_is_read_as_a_tensor():
    model = sl.Model(_cnn(3), preprocess=lambda images: _to_tensor(images).numpy())
    images = _images(2)
    ex = sl.explain(model, images, "saliency")
    plain = sl.explain(model, _to_tensor(images), "saliency")
    torch.testing.assert_close(ex["saliency"].maps, plain["saliency"].maps)


@pytest.mark.parametrize("shown", [torch.zeros(3, 16, 16), None, np.zeros((16, 16, 3))])
def test_a_display_returning_no_image_is_one_sentence(shown):
    model = sl.Model(_cnn(3), preprocess=_to_tensor, extra={"display": lambda image: shown})
    with pytest.raises(sl.SaliencelabError, match=r"extra\['display'\] returned"):
        sl.top_examples(model, _images(2), "0", 0, k=1)


def test_a_model_failing_on_the_size_chosen_for_it_says_so():
    """A head built for 16x16 images, given no input_size: visualize (at its default size) and
    receptive_field (at 224) failed with torch's "mat1 and mat2 shapes cannot be multiplied"."""
    torch.manual_seed(0)
    module = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 16 * 16, 3)
    ).eval()
    with pytest.raises(sl.SaliencelabError) as info:
        sl.visualize(module, 0, steps=1)
    assert "if it takes another image size, pass size=(H, W)" in str(info.value)
    assert "mat1 and mat2 shapes cannot be multiplied" in str(info.value)
    with pytest.raises(sl.SaliencelabError, match=r"pass x=\(H, W\) or give the model its input"):
        sl.receptive_field(module, "3")
    assert sl.visualize(module, 0, steps=1, size=16).images.shape[-2:] == (16, 16)


def test_complex_scores_are_one_sentence():
    """They were cast to their real part with a warning (as a black box's are refused)."""

    class Complex(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = _cnn(3)

        def forward(self, x):
            return self.net(x).to(torch.complex64)

    x = torch.rand(2, 3, 16, 16)
    for method in ("saliency", "occlusion"):
        with pytest.raises(sl.SaliencelabError, match="The model returned complex scores"):
            sl.explain(Complex(), x, method)
