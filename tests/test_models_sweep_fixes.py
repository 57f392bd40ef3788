"""Fixes from the models sweep: black-box scores as lists, labels, shapes models' dtypes and
display, model files with a colon in their name, and two messages."""

from __future__ import annotations

import dataclasses
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import saliencelab as sl
from saliencelab.cli import app
from saliencelab.models.blackbox import blackbox
from saliencelab.models.loading import split_factory_spec
from saliencelab.text.model import TextModel
from saliencelab.viz.overlay import crop_to_aspect

# -- 1. black-box scores returned as a Python list ---------------------------------------------

W = np.random.default_rng(0).normal(size=(3, 4))  # 3 channels -> 4 classes


def _scores(a: np.ndarray) -> np.ndarray:
    return a.mean(axis=(2, 3)) @ W


@pytest.mark.parametrize(
    "as_list",
    [
        lambda s: s.tolist(),  # nested lists (e.g. a remote model's JSON)
        lambda s: list(s),  # 1-d arrays, one per input
        lambda s: [torch.from_numpy(row) for row in s],  # 1-d tensors
        lambda s: [[np.float32(v) for v in row] for row in s],  # NumPy scalars
    ],
    ids=["tolist", "list_of_arrays", "list_of_tensors", "numpy_scalars"],
)
@pytest.mark.parametrize("n", [1, 4])  # 4 = the number of classes: was silently row 0
def test_blackbox_list_of_rows_is_read_as_the_scores(as_list, n):
    x = torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(n))
    want = torch.from_numpy(_scores(x.numpy()))
    got = blackbox(lambda a: as_list(_scores(a)), numpy=True)(x)
    assert got.shape == (n, 4)
    torch.testing.assert_close(got.double(), want, atol=1e-6, rtol=1e-6)


def test_blackbox_list_of_scores_gives_the_arrays_maps():
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    ref = sl.explain(sl.blackbox(_scores, numpy=True), x, methods="feature_ablation")
    as_list = sl.blackbox(lambda a: _scores(a).tolist(), numpy=True)
    ex = sl.explain(as_list, x, methods="feature_ablation")
    assert ex["feature_ablation"].target.tolist() == ref["feature_ablation"].target.tolist()
    torch.testing.assert_close(
        ex["feature_ablation"].maps.double(), ref["feature_ablation"].maps.double()
    )


def test_blackbox_list_of_numpy_float32_scores_is_one_score_per_input():
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    got = blackbox(lambda a: [np.float32(v) for v in _scores(a)[:, 2]], numpy=True)(x)
    torch.testing.assert_close(got.double(), torch.from_numpy(_scores(x.numpy())[:, 2:3]))


@pytest.mark.parametrize("n", [1, 3])
def test_blackbox_list_of_outputs_still_gives_the_first(n):
    """ONNX Runtime's `run` returns a list of arrays; the first is the scores."""
    x = torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    want = torch.from_numpy(_scores(x.numpy()))
    outputs = blackbox(lambda a: [_scores(a), a.mean(axis=(1, 2, 3))], numpy=True)(x)
    one_score = blackbox(lambda a: [_scores(a)[:, 1]], numpy=True)(x)
    as_tuple = blackbox(lambda a: (_scores(a).tolist(), "extra"), numpy=True)(x)
    torch.testing.assert_close(outputs.double(), want)
    torch.testing.assert_close(one_score.double(), want[:, 1:2])
    torch.testing.assert_close(as_tuple.double(), want)


def test_blackbox_ragged_list_is_one_sentence():
    model = blackbox(lambda a: [[1.0, 2.0], [3.0]], numpy=True)
    with pytest.raises(sl.SaliencelabError, match=r"^The black-box function returned a list whose"):
        model(torch.rand(2, 3, 4, 4))


# -- 2. labels ---------------------------------------------------------------------------------

NAMES = ["cat", "dog", "bird", "fish", "frog"]


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 5, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()


@pytest.mark.parametrize(
    "labels",
    [
        dict(enumerate(NAMES)),
        {str(i): name for i, name in enumerate(NAMES)},  # JSON keys
        dict(reversed(list(enumerate(NAMES)))),  # any order
    ],
    ids=["int_keys", "str_keys", "reversed"],
)
def test_labels_dict_becomes_the_list_and_names_a_target(labels):
    model = sl.Model(_net(), labels=labels)
    assert model.labels == NAMES and model.label(4) == "frog"
    x = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    ex = sl.explain(model, x, methods="saliency", target="dog")
    ref = sl.explain(_net(), x, methods="saliency", target=1)
    assert ex["saliency"].target.tolist() == [1]
    torch.testing.assert_close(ex["saliency"].maps, ref["saliency"].maps)


def test_labels_list_and_tuple_are_kept():
    assert sl.Model(_net(), labels=NAMES).labels == NAMES
    assert sl.Model(_net(), labels=tuple(NAMES)).labels == tuple(NAMES)
    assert sl.load_model(_net(), labels=dict(enumerate(NAMES))).labels == NAMES


@pytest.mark.parametrize(
    ("labels", "needle"),
    [
        ("cat dog bird fish frog", r"not one string \('cat dog bird fish frog'\)"),
        ({0: "cat", 1: "dog", 3: "fish"}, r"index 0 to 2, but its keys are 0, 1, 3"),
        ({0: "cat", "0": "dog"}, r"index 0 to 1, but its keys are 0, '0'"),
        (["cat", 1, "bird"], r"the name of class 1 is int \(1\)"),
        ({0: "cat", 1: None}, r"the name of class 1 is NoneType"),
        (5, r"not int"),
    ],
)
def test_bad_labels_are_one_sentence(labels, needle):
    with pytest.raises(sl.SaliencelabError, match=needle) as info:
        sl.Model(_net(), labels=labels)
    assert "\n" not in str(info.value) and str(info.value).startswith("labels ")


def test_text_models_check_their_labels_too(classifier):
    with pytest.raises(sl.SaliencelabError, match="not one string"):
        dataclasses.replace(classifier, labels="ab")
    assert dataclasses.replace(classifier, labels={1: "b", 0: "a"}).labels == ["a", "b"]


def test_a_text_model_built_around_another_module_is_one_sentence(classifier):
    """It was accepted, and failed later with an AttributeError (no `dim`, no tokenizer)."""
    with pytest.raises(sl.SaliencelabError, match=r"has a Identity, not the TextModule"):
        TextModel(module=nn.Identity())
    with pytest.raises(sl.SaliencelabError, match="has no tokenizer; load text models"):
        TextModel(module=classifier.module)


# -- 3. shapes models' preprocess: dtypes --------------------------------------------------------


@pytest.fixture(scope="module")
def cnn():
    return sl.load_model("shapes_cnn")


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return (sl.data.shapes.make(1, seed=0).images[0].permute(1, 2, 0).numpy() * 255).astype(
        np.uint8
    )


@pytest.mark.parametrize(
    ("convert", "dtype"),
    [
        (lambda p: p.astype(np.uint16) * 257, "uint16"),
        (lambda p: p > 127, "bool"),
        (lambda p: torch.from_numpy(p.astype(np.int64)), "int64"),
        (lambda p: p.astype(np.int8) // 2, "int8"),
    ],
)
def test_shapes_preprocess_refuses_other_integer_dtypes(cnn, photo, convert, dtype):
    with pytest.raises(
        sl.SaliencelabError, match=rf"uint8 pixels or floats in \[0, 1\]; got dtype {dtype};"
    ):
        cnn.preprocess(convert(photo))


def test_shapes_preprocess_takes_uint8_and_floats_as_before(cnn, photo):
    want = torch.from_numpy(photo).permute(2, 0, 1)[None].float() / 255.0
    torch.testing.assert_close(cnn.preprocess(photo), want, atol=0, rtol=0)
    torch.testing.assert_close(cnn.preprocess(photo / 255.0), want, atol=1e-6, rtol=0)


# -- 4. shapes models: overlays on what the model saw --------------------------------------------


@pytest.fixture(scope="module")
def wide():
    """A 192×64 photo (the 64×64 shapes image stretched), its object at the left, and the
    object's mask in the model's 64×64 view."""
    data = sl.data.shapes.make(1, size=64, seed=3)
    img = Image.fromarray((data.images[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8))
    return img.resize((192, 64), Image.Resampling.BILINEAR), np.asarray(data.masks[0])


def _heat_centre(overlay: Image.Image, photo: Image.Image) -> tuple[float, float]:
    """(x, y) centre of mass of where the overlay differs from the photo under it."""
    diff = np.abs(np.asarray(overlay, np.float32) - np.asarray(photo, np.float32)).sum(-1)
    ys, xs = np.mgrid[: diff.shape[0], : diff.shape[1]]
    return float((xs * diff).sum() / diff.sum()), float((ys * diff).sum() / diff.sum())


@pytest.mark.parametrize("name", ["shapes_cnn", "shapes_vit"])
def test_shapes_display_is_the_photo_as_the_model_sees_it(name, wide):
    model = sl.load_model(name)
    photo, _ = wide
    shown = model.extra["display"](photo)
    assert shown.size == (64, 64) and shown.mode == "RGB"
    seen = model.preprocess(photo)[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(np.asarray(shown) / 255.0, seen, atol=0.5 / 255 + 1e-6)


def test_shapes_overlay_heat_lies_over_the_object_of_a_wide_photo(cnn, wide):
    photo, mask = wide
    ex = sl.explain(cnn, cnn.preprocess(photo), methods="gradcam")
    shown = cnn.extra.get("display", lambda im: im)(photo)  # what the CLI draws on
    ov = sl.overlay(shown, ex["gradcam"])
    base = crop_to_aspect(shown, 64, 64)  # the photo under the overlay
    # The overlay shows the model's view (old: the photo's central square, without the object)
    np.testing.assert_allclose(
        np.asarray(base) / 255.0, cnn.preprocess(photo)[0].permute(1, 2, 0), atol=0.5 / 255 + 1e-6
    )
    # ... so its heat lies over the object, which is where the mask says in that view.
    cx, cy = _heat_centre(ov, base)
    rows, cols = np.where(mask.any(1))[0], np.where(mask.any(0))[0]
    assert cols[0] <= cx <= cols[-1] and rows[0] <= cy <= rows[-1], (cx, cy, cols, rows)


def test_cli_overlay_of_a_wide_photo_is_the_models_view(runner, cnn, wide, tmp_path):
    photo, mask = wide
    photo.save(tmp_path / "wide.png")
    out = tmp_path / "out"
    args = ["explain", str(tmp_path / "wide.png"), "--model", "shapes_cnn", "-m", "gradcam"]
    result = runner.invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    ov = Image.open(out / "wide_gradcam.png").convert("RGB")
    seen = cnn.preprocess(photo)[0].permute(1, 2, 0)  # the model's view, as a reference
    view = Image.fromarray((seen * 255.0 + 0.5).to(torch.uint8).numpy())
    assert ov.size == (64, 64)
    # Where the heat is faint the overlay is the model's view (old: the photo's central square)
    diff = np.abs(np.asarray(ov, np.float32) - np.asarray(view, np.float32)).sum(-1)
    assert np.median(diff) < 3.0, np.median(diff)
    # ... and its heat lies over the object.
    cx, cy = _heat_centre(ov, view)
    rows, cols = np.where(mask.any(1))[0], np.where(mask.any(0))[0]
    assert cols[0] <= cx <= cols[-1] and rows[0] <= cy <= rows[-1], (cx, cy, cols, rows)


# -- 5. a model file whose name holds a colon ----------------------------------------------------


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.script, torch.jit.save
def test_existing_file_with_a_colon_is_a_model_file(tmp_path, monkeypatch):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    path = tmp_path / "best:final.pt"
    torch.jit.save(torch.jit.script(net), str(path))
    x = torch.rand(2, 3, 8, 8)
    monkeypatch.chdir(tmp_path)
    for spec in ("best:final.pt", str(path)):
        assert split_factory_spec(spec) is None
        model = sl.load_model(spec)
        torch.testing.assert_close(model(x), net(x))
    assert split_factory_spec("best:final") == ("best", "final")  # no such file: a spec
    assert split_factory_spec("x" * 5000 + ":build") == ("x" * 5000, "build")  # too long a name


# -- 6. messages ---------------------------------------------------------------------------------


def test_spec_naming_a_model_instance_says_so(tmp_path):
    (tmp_path / "net.py").write_text(
        textwrap.dedent(
            """
            from torch import nn

            def build():
                return nn.Linear(2, 3)

            model = build()
            """
        )
    )
    with pytest.raises(sl.SaliencelabError) as info:
        sl.load_model(f"{tmp_path / 'net.py'}:model")
    message = str(info.value)
    assert "'model' in" in message and "is a model instance (Linear)" in message
    assert "(it defines build)" in message and "forward" not in message
    assert isinstance(sl.load_model(f"{tmp_path / 'net.py'}:build").module, nn.Linear)


def test_unknown_builder_option_names_only_that_option():
    with pytest.raises(sl.SaliencelabError) as info:
        sl.load_model("shapes_cnn", pretrained=False, foo=1)
    assert str(info.value).startswith("Model 'shapes_cnn' does not accept foo (")
    assert "its options are: pretrained." in str(info.value)


@pytest.mark.parametrize(
    "spec", ["x" * 5000, "x" * 5000 + ":build", "y" * 300 + ".pt", "z" * 300 + ".py:build"]
)
def test_a_name_too_long_for_the_system_is_one_sentence(spec):
    """Path.exists() raised OSError (File name too long) with a traceback."""
    with pytest.raises(sl.SaliencelabError) as e:
        sl.load_model(spec)
    assert "\n" not in str(e.value)
