"""The bundled EfficientNet-Lite0 on real photographs: Grad-CAM points at the right object."""

from __future__ import annotations

import pytest
import torch

import saliencelab as sl


@pytest.fixture(scope="module")
def model() -> sl.Model:
    return sl.load_model("efficientnet_lite0")


def test_gradcam_on_a_cat_espresso_mosaic_points_at_the_class_asked_for(model):
    """Cat on the left half, espresso on the right: each class's Grad-CAM lies on its half."""
    cat = model.preprocess(sl.sample_image("chelsea"))
    cup = model.preprocess(sl.sample_image("coffee"))
    x = torch.cat([cat, cup], dim=3).expand(2, -1, -1, -1)  # (2, 3, 224, 448)
    ex = sl.explain(model, x, methods="gradcam", target=["Egyptian cat", "espresso"])
    maps = ex["gradcam"].maps
    assert maps.shape == (2, 224, 448)
    on_left = maps[:, :, :224].sum(dim=(1, 2)) / maps.sum(dim=(1, 2))
    assert on_left[0] > 0.9  # "Egyptian cat": on the cat
    assert on_left[1] < 0.1  # "espresso": on the cup
    peak = maps.flatten(1).argmax(dim=1) % 448
    assert peak[0] < 224 <= peak[1]


def test_chelsea_explained_with_several_methods_at_once(model):
    x = model.preprocess(sl.sample_image("chelsea"))
    ex = sl.explain(model, x, methods=["saliency", "input_x_gradient", "gradcam"])
    assert model.label(int(ex["gradcam"].target[0])) in {"Egyptian cat", "tabby", "tiger cat"}
    assert ex.total_passes == 1
    for a in ex.values():
        assert a.maps.shape == (1, 224, 224)
        assert torch.isfinite(a.maps).all() and a.maps.abs().sum() > 0
