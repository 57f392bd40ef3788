"""The bundled EfficientNet-Lite0: weights, predictions, padding, preprocessing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from saliencelab.core.errors import SaliencelabError
from saliencelab.data.samples import sample_image
from saliencelab.models.efficientnet_lite import (
    EfficientNetLite,
    _pretrained_state_dict,
    display,
    efficientnet_lite0,
    preprocess,
    same_padding,
)
from saliencelab.models.zoo import load_model


@pytest.fixture(scope="module")
def model():
    return efficientnet_lite0()


def top1(model, name: str) -> str:
    with torch.no_grad():
        return model.label(int(model(model.preprocess(sample_image(name))).argmax()))


def test_state_dict_keys_match_exactly():
    state = _pretrained_state_dict()
    assert len(state) == 296
    net = EfficientNetLite()
    assert set(net.state_dict()) == set(state)
    net.load_state_dict(state, strict=True)


def test_model_metadata(model):
    assert model.name == "efficientnet_lite0"
    assert model.default_layer == "_head_act"
    assert model.input_size == (224, 224)
    assert len(model.labels) == 1000
    assert not model.module.training
    assert model.extra["display"] is display


def test_activations_are_separate_relu6_modules(model):
    modules = dict(model.module.named_modules())
    acts = [m for m in modules.values() if isinstance(m, torch.nn.ReLU6)]
    assert len({id(m) for m in acts}) == len(acts) == 2 + 15 * 2 + 1
    assert all(not m.inplace for m in acts)
    for name in ("_stem_act", "_head_act", "_blocks.0._depthwise_act", "_blocks.5._expand_act"):
        assert isinstance(modules[name], torch.nn.ReLU6)


def test_chelsea_is_a_cat(model):
    assert top1(model, "chelsea") in {"Egyptian cat", "tabby", "tiger cat"}


def test_coffee_is_espresso(model):
    assert top1(model, "coffee") == "espresso"


def test_load_model_by_name():
    m = load_model("efficientnet_lite0", pretrained=False)
    assert m.name == "efficientnet_lite0"


@pytest.mark.parametrize(
    "size, kernel, stride, expected",
    [
        (224, 3, 2, (0, 1)),
        (225, 3, 2, (1, 1)),
        (112, 5, 2, (1, 2)),
        (7, 3, 1, (1, 1)),
        (5, 1, 1, (0, 0)),
    ],
)
def test_same_padding_formula(size, kernel, stride, expected):
    assert same_padding(size, kernel, stride, 1) == expected


@pytest.mark.parametrize("size, spatial", [(224, 7), (225, 8), (100, 4)])
def test_output_shapes_for_any_input_size(model, size, spatial):
    shapes = {}
    hooks = [
        model.module.get_submodule(n).register_forward_hook(
            lambda _m, _i, out, n=n: shapes.__setitem__(n, tuple(out.shape))
        )
        for n in ("_blocks.15", "_head_act")
    ]
    try:
        with torch.no_grad():
            logits = model.module(torch.zeros(2, 3, size, size))
    finally:
        for h in hooks:
            h.remove()
    assert logits.shape == (2, 1000)
    assert shapes["_blocks.15"] == (2, 320, spatial, spatial)
    assert shapes["_head_act"] == (2, 1280, spatial, spatial)


def test_preprocess_shapes_and_range():
    img = sample_image("coffee")
    x = preprocess(img)
    assert x.shape == (1, 3, 224, 224) and x.dtype == torch.float32
    assert x.min() >= -127 / 128 and x.max() <= 128 / 128
    batch = preprocess([img, img.convert("L"), np.asarray(img)])
    assert batch.shape == (3, 3, 224, 224)
    torch.testing.assert_close(batch[0], batch[2])
    # Pure white and black pixels map to the ends of the range.
    ends = preprocess(Image.new("RGB", (10, 20), (255, 0, 127)))
    assert ends[0, 0].unique().item() == pytest.approx(1.0)
    assert ends[0, 1].unique().item() == pytest.approx(-127 / 128)
    assert ends[0, 2].unique().item() == 0


def test_preprocess_crops_the_central_square():
    img = np.zeros((100, 300, 3), np.uint8)
    img[:, 100:200] = 255  # only the central square is white
    assert preprocess(img).min().item() == pytest.approx(1.0)


def test_preprocess_takes_float_photos_in_0_1_as_the_overlays_do():
    pixels = np.random.default_rng(0).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    as_float = pixels.astype(np.float32) / 255
    assert torch.equal(preprocess(as_float), preprocess(pixels))
    assert torch.equal(preprocess(torch.from_numpy(as_float).permute(2, 0, 1)), preprocess(pixels))


def test_preprocess_rejects_bad_input():
    with pytest.raises(SaliencelabError, match=r"\[0, 1\].*not the model's normalised input"):
        preprocess(np.full((8, 8, 3), -0.5, np.float32))
    with pytest.raises(SaliencelabError, match="uint8; got shape"):
        preprocess(np.zeros((8, 8, 3), np.int32))
    with pytest.raises(SaliencelabError, match="PIL image"):
        preprocess("cat.jpg")
    with pytest.raises(SaliencelabError, match="empty"):
        preprocess([])


def test_display_is_what_the_model_sees():
    img = sample_image("rocket")
    shown = display(img)
    assert shown.size == (224, 224) and shown.mode == "RGB"
    x = torch.from_numpy(np.asarray(shown, np.float32)).permute(2, 0, 1)
    torch.testing.assert_close(preprocess(img)[0], (x - 127) / 128)
    assert display(Image.new("RGBA", (50, 30))).mode == "RGB"
