"""Models in float64 / float16 / bfloat16: inputs are cast to the model's dtype everywhere a model
reads images (dataset examples, the CLI's probes and predictions), and checks made to rounding
(LRP's canonization check, input invariance) allow the rounding of the model's dtype. Each result
is compared with the float32 model's on the same inputs.
"""

from __future__ import annotations

import copy
import importlib
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from typer.testing import CliRunner

import saliencelab as sl
from saliencelab.cli import _probe_layers, app
from saliencelab.featurevis.commands import _predictions, strongest_units
from saliencelab.featurevis.visualize import default_normalize
from saliencelab.methods.relevance.lrp import Composite, Epsilon

LOW = (torch.float16, torch.bfloat16)
DTYPES = (torch.float64, *LOW)
RUNNER = CliRunner(env={"COLUMNS": "200", "SALIENCELAB_DEBUG": None})
invariance = importlib.import_module("saliencelab.metrics.axiomatic.input_invariance")

#: Factories of the bundled shapes CNN in each dtype, for the CLI.
FACTORY = textwrap.dedent(
    """
    import torch
    import saliencelab as sl


    def _build(dtype):
        model = sl.load_model("shapes_cnn")
        model.module.to(dtype)
        return model


    def build32():
        return _build(torch.float32)


    def build64():
        return _build(torch.float64)


    def build16():
        return _build(torch.float16)


    def buildbf():
        return _build(torch.bfloat16)
    """
)
BUILD = {
    torch.float32: "build32",
    torch.float64: "build64",
    torch.float16: "build16",
    torch.bfloat16: "buildbf",
}


pytestmark = pytest.mark.usefixtures("one_thread")


def shapes_cnn(dtype: torch.dtype = torch.float32) -> sl.Model:
    model = sl.load_model("shapes_cnn")
    model.module.to(dtype)
    return model


def eps(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps


@pytest.fixture(scope="module")
def data():
    return sl.data.shapes.make(4, seed=0)


@pytest.fixture(scope="module")
def x(data) -> torch.Tensor:
    return shapes_cnn().preprocess(data)


@pytest.fixture(scope="module")
def x8() -> torch.Tensor:
    """Eight shapes, on which merging BatchNorm in float16 moved the logits by 0.006 (refused)."""
    return shapes_cnn().preprocess(sl.data.shapes.make(8, seed=0))


@pytest.fixture(scope="module")
def photos(data) -> list[Image.Image]:
    return [
        Image.fromarray((im.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
        for im in data.images
    ]


@pytest.fixture
def factory(tmp_path, photos):
    """(the factory file, a folder of the photos)."""
    path = tmp_path / "net.py"
    path.write_text(FACTORY)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, photo in enumerate(photos):
        photo.save(folder / f"s{i}.png")
    return path, folder


# -- inputs cast to the model's dtype ------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_top_examples_casts_the_images_to_the_models_dtype(photos, dtype):
    ref = sl.top_examples(shapes_cnn(), photos, "features.10", 3, k=4)
    got = sl.top_examples(shapes_cnn(dtype), photos, "features.10", 3, k=4)
    ref_values = {e.index: e.value for e in ref}
    assert sorted(e.index for e in got) == sorted(ref_values)
    for e in got:
        assert e.value == pytest.approx(ref_values[e.index], rel=32 * eps(dtype), abs=1e-6)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=str)
def test_cli_neurons_examples_on_a_model_not_in_float32(factory, dtype):
    path, folder = factory
    out = factory[0].parent / "out"
    args = ["neurons", "--examples", str(folder), "--model", f"{path}:{BUILD[dtype]}"]
    res = RUNNER.invoke(
        app,
        [*args, "--layer", "features.10", "--channel", "3", "--k", "2"]
        + [
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    assert (out / "examples_features.10_ch3.png").is_file()


@pytest.mark.parametrize("dtype", LOW, ids=str)
def test_visualize_predictions_and_units_read_the_model_in_its_dtype(dtype):
    """`saliencelab visualize` reports the model's class and a channel's strongest unit on the
    (float32) visualizations: fed to a float16 / bfloat16 model in its dtype, they agree with
    the float32 model's."""
    m32, model = shapes_cnn(), shapes_cnn(dtype)
    vis = sl.visualize(m32, [1, 2], steps=2, size=32, progress=False)
    normalize = default_normalize(m32)
    ref, got = _predictions(m32, vis, normalize), _predictions(model, vis, normalize)
    assert [label for label, _ in got] == [label for label, _ in ref]
    for (_, p), (_, q) in zip(got, ref, strict=True):
        assert p == pytest.approx(q, abs=32 * eps(dtype))
    units = {0: 3, 1: 5}
    ref_units = strongest_units(m32, vis, "features.10", units, normalize)
    got_units = strongest_units(model, vis, "features.10", units, normalize)
    for i in units:
        assert got_units[i] == pytest.approx(ref_units[i], rel=32 * eps(dtype), abs=1e-3)


@pytest.mark.parametrize("dtype", LOW, ids=str)
def test_cli_visualize_on_a_half_model(factory, dtype):
    path, folder = factory
    out = path.parent / "vis"
    model = ["visualize", "--model", f"{path}:{BUILD[dtype]}", "--steps", "2"]
    res = RUNNER.invoke(app, [*model, "--class", "1", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert (out / "featurevis_00_class_logit_disk.png").is_file()  # class 1, named
    channel = ["--layer", "features.10", "--channel", "3", "--examples", str(folder), "--k", "2"]
    res = RUNNER.invoke(app, [*model, *channel, "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert (out / "featurevis_examples_features_10_ch3.png").is_file()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16], ids=str)
def test_layers_probe_casts_its_input_to_the_models_dtype(factory, dtype):
    assert _probe_layers(shapes_cnn(dtype), None) == _probe_layers(shapes_cnn(), None)
    path, _ = factory
    res = RUNNER.invoke(app, ["layers", f"{path}:{BUILD[dtype]}"])
    ref = RUNNER.invoke(app, ["layers", f"{path}:build32"])
    assert res.exit_code == 0, res.output
    assert res.output == ref.output


# -- LRP: the canonization check and its options ------------------------------------------------


@pytest.mark.parametrize("dtype", LOW, ids=str)
@pytest.mark.parametrize("name", ["shapes_cnn", "shapes_vit"])
def test_lrp_canonizes_half_models_as_float32_does(x8, name, dtype):
    """BatchNorm merged in float16 / bfloat16 changes the logits by rounding only: accepted, and
    the maps are those of the float32 model up to that rounding."""
    m32, model = sl.load_model(name), sl.load_model(name)
    model.module.to(dtype)
    ref = sl.explain(m32, x8, methods="lrp")["lrp"].maps
    got = sl.explain(model, x8, methods="lrp")["lrp"].maps.float()
    assert torch.isfinite(got).all()
    assert (got - ref).norm() / ref.norm() < 16 * eps(dtype)  # measured: 7 ε (f16), 6 ε (bf16)


class Misordered(nn.Module):
    """A BatchNorm registered after a conv but applied before it, to the input: merging it into
    the conv (as the canonizer pairs them) changes what the model computes."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 3, 3, padding=1)  # as many channels as the BatchNorm has
        self.bn = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3, 3)
        with torch.no_grad():
            self.bn.running_mean.fill_(0.5)
            self.bn.running_var.fill_(0.25)
            self.bn.weight.fill_(2.0)
            self.bn.bias.fill_(-1.0)
            self.fc.weight.mul_(10.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(self.bn(x))).mean((2, 3)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, *LOW], ids=str)
def test_lrp_still_refuses_a_wrong_merge(dtype):
    model = Misordered().eval().to(dtype)
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # the merge's error, relative to the logits: far above rounding
        logits = model(x.to(dtype)).float()
    with pytest.raises(sl.SaliencelabError, match="canonized model's outputs differ"):
        sl.explain(model, x, methods="lrp")
    maps = sl.explain(model, x, methods="lrp", canonize=False)["lrp"].maps
    assert torch.isfinite(maps.float()).all() and logits.abs().max() > 1


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"epsilon": "x"}, "epsilon must be >= 0, a finite number"),
        ({"gamma": None}, "gamma must be >= 0, a finite number"),
        ({"epsilon": True}, "epsilon must be >= 0, a finite number .not a bool."),
        ({"composite": "epsilon_gamma_box", "gamma": True}, "gamma must be >= 0"),
        ({"epsilon": float("inf")}, "epsilon must be >= 0, a finite number"),
        ({"epsilon": float("nan")}, "epsilon must be >= 0, a finite number"),
        ({"composite": "epsilon_gamma_box", "gamma": float("inf")}, "gamma must be >= 0"),
        ({"gamma": -1.0}, "gamma must be >= 0"),
        ({"epsilon": 1e308}, "float32 can hold .at most 3.4e\\+38."),
        # gamma a composite without LRP-γ would ignore, as low / high are refused
        ({"composite": "epsilon", "gamma": 5.0}, "composite='epsilon' does not use"),
        ({"gamma": 0.5}, "composite='epsilon_plus' does not use"),
    ],
)
def test_lrp_bad_epsilon_and_gamma_are_one_sentence(x, options, words):
    with pytest.raises(sl.SaliencelabError, match=words):
        sl.explain(shapes_cnn(), x, methods={"lrp": options})


def test_lrp_epsilon_must_fit_the_models_dtype(x):
    with pytest.raises(sl.SaliencelabError, match="float16 can hold .at most 6.55e\\+04."):
        sl.explain(shapes_cnn(torch.float16), x, methods="lrp", epsilon=1e5)
    big = sl.explain(shapes_cnn(torch.float64), x, methods="lrp", composite="epsilon", epsilon=1e5)
    assert torch.isfinite(big["lrp"].maps).all()


def test_lrp_refuses_epsilon_and_gamma_a_composite_object_ignores(x):
    composite = Composite([(nn.Linear, Epsilon(0.1))])
    for option in ({"epsilon": 0.1}, {"gamma": 0.5}):
        with pytest.raises(sl.SaliencelabError, match="Composite"):
            sl.explain(shapes_cnn(), x, methods={"lrp": {"composite": composite, **option}})


def test_lrp_gamma_is_used_where_the_composite_has_lrp_gamma(x):
    """gamma is accepted where it applies, and changes the map (not ignored)."""
    maps = {
        g: sl.explain(shapes_cnn(), x, methods="lrp", composite="epsilon_gamma_box", gamma=g)[
            "lrp"
        ].maps
        for g in (0.25, 2.0)
    }
    assert not torch.allclose(maps[0.25], maps[2.0])


# -- input invariance ------------------------------------------------------------------------


def _invariance(model: sl.Model, x: torch.Tensor, methods: list[str]) -> dict[str, float]:
    ex = sl.explain(model, x, methods=methods)
    report = sl.evaluate(model, x, ex, metrics="input_invariance")
    return {row["method"]: row["mean"] for row in report.table()}


@pytest.mark.parametrize("dtype", LOW, ids=str)
def test_input_invariance_allows_the_rounding_of_the_models_dtype(x8, dtype):
    """The model-free sobel map of x and x + shift scores as in float32 (0), the invariant
    saliency close to float32's, and input × gradient stays far from invariant."""
    methods = ["saliency", "input_x_gradient"]  # (on x8 the bf16 output gap was 0.016: refused)
    ref = _invariance(shapes_cnn(), x8, methods)
    got = _invariance(shapes_cnn(dtype), x8, methods)
    assert got["sobel"] == ref["sobel"] == 0.0
    assert got["saliency"] <= ref["saliency"] + 0.1
    assert got["input_x_gradient"] > 0.25 and ref["input_x_gradient"] > 0.9


def test_changed_fraction_with_one_atol_per_sample_is_isclose():
    """With one atol per sample, sample i's fraction is that of `torch.isclose` with its atol,
    also with NaN (never close) and infinities (close only to themselves)."""
    g = torch.Generator().manual_seed(0)
    b = torch.rand(3, 5, 5, generator=g, dtype=torch.float64)
    a = b + 0.01 * torch.randn(3, 5, 5, generator=g, dtype=torch.float64)
    atol = [0.0, 0.01, 1.0]

    def want(a, b):
        return torch.stack(
            [(~torch.isclose(a[i], b[i], 1e-5, atol[i])).double().mean() for i in range(3)]
        )

    per_sample = torch.tensor(atol, dtype=torch.float64).view(3, 1, 1)
    torch.testing.assert_close(invariance.changed_fraction(a, b, 1e-5, per_sample), want(a, b))
    a[0, 0, 0] = b[0, 0, 0] = float("nan")
    a[1, 0, 0] = b[1, 0, 0] = float("inf")
    a[2, 0, 0] = float("inf")
    torch.testing.assert_close(invariance.changed_fraction(a, b, 1e-5, per_sample), want(a, b))


# -- drawing on a photo in any float dtype ---------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64], ids=str)
def test_overlays_take_a_photo_tensor_in_any_float_dtype(data, x, dtype):
    """The photo as a (3, H, W) tensor of any float dtype draws as the float32 copy of the same
    values does: overlay, gallery and the activation grid."""
    model = shapes_cnn()
    ex = sl.explain(model, x[:1], methods="gradcam")
    photo = data.images[0].to(dtype)
    same = photo.float()
    assert np.array_equal(
        np.asarray(sl.overlay(photo, ex["gradcam"])), np.asarray(sl.overlay(same, ex["gradcam"]))
    )
    assert np.array_equal(
        np.asarray(sl.viz.gallery(photo, ex)), np.asarray(sl.viz.gallery(same, ex))
    )
    maps = sl.activations(model, x[:1], layer="features.10", top=2)
    assert np.array_equal(np.asarray(maps.grid(photo)), np.asarray(maps.grid(same)))


# -- what methods compute from a half model's gradients: in float32 -------------------------------


def _small_gradient_cnn() -> nn.Module:
    """A CNN whose input and layer gradients are ~1e-4: their cubes (Grad-CAM++), products
    (guided Grad-CAM) and squares lie below float16's smallest number (6e-8)."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    ).eval()
    with torch.no_grad():
        net[-1].weight.mul_(1e-2)
    return net


@pytest.mark.parametrize(
    "method",
    ["gradcam", "gradcam_plus_plus", "xgradcam", "layercam", "guided_gradcam"]
    + ["integrated_gradients", "smoothgrad_sq", "lrp"],
)
@pytest.mark.parametrize("dtype", LOW)
def test_half_models_maps_are_computed_in_float32(method, dtype):
    """The model runs in its dtype; its gradients and activations reach the method in float32,
    so the maps follow the float32 model's (they were all zeros in float16 for Grad-CAM++ and
    guided Grad-CAM) up to the rounding of the model's own pass."""
    net = _small_gradient_cnn()
    torch.manual_seed(1)
    x = torch.rand(2, 3, 16, 16).to(dtype).float()  # exact in both dtypes
    target = [1, 2]
    want = sl.explain(net, x, methods=method, target=target)[method]
    half = copy.deepcopy(net).to(dtype)
    got = sl.explain(half, x, methods=method, target=target)[method]
    assert got.maps.dtype == torch.float32 and got.attributions.dtype == torch.float32
    assert want.maps.abs().max() > 0
    # (the input gradients, ~1e-4, are float16 subnormals: saliency itself is 5 % off there)
    tol = {torch.float16: 0.15, torch.bfloat16: 0.3}[dtype]
    rel = (got.maps - want.maps).norm() / want.maps.norm()
    assert rel < tol, float(rel)
