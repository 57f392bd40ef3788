"""Neurons and channels: activation maps, channel/neuron targets, conditional maps, examples.

Tiny CNNs built here (references: forward hooks and autograd by hand, Captum's Occlusion and
NeuronConductance, the gradient support of a unit), and one EfficientNet-Lite0 check.
"""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import typer
from captum.attr import NeuronConductance, Occlusion
from PIL import Image
from torch import nn
from typer.testing import CliRunner

import saliencelab as sl
from saliencelab.core.errors import SaliencelabError
from saliencelab.neurons import (
    activations,
    channel,
    conditional_map,
    neuron,
    receptive_field,
    save_examples_gallery,
    top_examples,
)
from saliencelab.neurons.commands import register


def _hooked(model: nn.Module, layer: str, x: torch.Tensor):
    """The logits and the layer's output (kept in the graph) of a plain forward."""
    seen = {}
    handle = model.get_submodule(layer).register_forward_hook(
        lambda m, i, o: seen.setdefault("a", o)
    )
    try:
        out = model(x)
    finally:
        handle.remove()
    return out, seen["a"]


class _Stop(Exception):
    pass


def _upto(model: nn.Module, layer: str, x: torch.Tensor) -> torch.Tensor:
    """The layer's output (kept in the graph), by a forward stopped right after it."""
    seen = []

    def stop(m, i, o):
        seen.append(o)
        raise _Stop

    handle = model.get_submodule(layer).register_forward_hook(stop)
    try:
        model(x)
    except _Stop:
        pass
    finally:
        handle.remove()
    return seen[0]


def _no_hooks(model: nn.Module) -> bool:
    return all(
        not m._forward_hooks and not m._backward_hooks and not m._forward_pre_hooks
        for m in model.modules()
    )


def command_app() -> typer.Typer:
    """A Typer app with this module's command registered, as the CLI adds it."""
    app = typer.Typer()
    app.callback()(lambda: None)
    register(app)
    return app


# -- activation maps -------------------------------------------------------------------------------


def test_activations_equal_a_forward_hook_and_rank_by_mean(tiny_cnn, images):
    am = activations(tiny_cnn, images, "features.1", top=4)
    with torch.no_grad():
        _, a = _hooked(tiny_cnn, "features.1", images)
    torch.testing.assert_close(am.activations, a)
    torch.testing.assert_close(am.values, a.mean(dim=(2, 3)))
    assert am.channels.shape == (4, 4) and am.by == "activation" and am.target is None
    for b in range(4):
        ranked = a[b].mean(dim=(1, 2)).argsort(descending=True)[:4]
        assert am.channels[b].tolist() == ranked.tolist()
        assert (am.scores[b][:-1] >= am.scores[b][1:]).all()
        rest = torch.ones(6, dtype=torch.bool)
        rest[am.channels[b]] = False
        assert am.values[b][rest].max() <= am.scores[b].min()
    c = int(am.channels[2, 1])
    up = F.interpolate(a[2:3, c : c + 1], size=(12, 12), mode="bilinear", align_corners=False)
    torch.testing.assert_close(am.maps[2, 1], up[0, 0])
    assert activations(tiny_cnn, images, "features.1", top=99).channels.shape == (4, 6)
    assert _no_hooks(tiny_cnn)


def test_contribution_is_the_spatial_mean_of_gradient_times_activation(tiny_cnn, images):
    am = activations(tiny_cnn, images, "features.3", top=6, by="contribution", target=2)
    out, a = _hooked(tiny_cnn, "features.3", images)
    (g,) = torch.autograd.grad(out[:, 2].sum(), a)
    torch.testing.assert_close(am.values, (g * a).mean(dim=(2, 3)).detach())
    assert am.target.tolist() == [2, 2, 2, 2]
    assert am.channels[0].tolist() == am.values[0].argsort(descending=True).tolist()
    pred = activations(tiny_cnn, images, "features.3", by="contribution")
    assert torch.equal(pred.target, out.argmax(1))


def test_activation_grid_is_a_labelled_picture(tiny_cnn, images, tmp_path):
    am = activations(tiny_cnn, images, "features.1", top=5)
    photo = Image.fromarray(np.full((30, 30, 3), 128, np.uint8))
    img = am.grid(photo, sample=1, tile=64)
    assert img.mode == "RGB" and img.width > 6 * 64 // 2 and img.height > 2 * 64
    assert am.save_grid(photo, tmp_path / "g.png", tile=64).exists()
    rows = am.table(1)
    assert [r["channel"] for r in rows] == am.channels[1].tolist()
    with pytest.raises(SaliencelabError, match="Sample 7 is out of range"):
        am.grid(photo, sample=7)


def test_bad_activation_requests_are_one_sentence(tiny_cnn, images):
    with pytest.raises(SaliencelabError, match="not a spatial map"):
        activations(tiny_cnn, images, "fc")
    with pytest.raises(SaliencelabError, match="Did you mean"):
        activations(tiny_cnn, images, "features.7")
    with pytest.raises(SaliencelabError, match="top must be"):
        activations(tiny_cnn, images, "features.1", top=0)
    with pytest.raises(SaliencelabError, match="by must be"):
        activations(tiny_cnn, images, "features.1", by="gradient")
    with pytest.raises(SaliencelabError, match="only to rank channels by contribution"):
        activations(tiny_cnn, images, "features.1", target=3)


# -- channel and neuron targets --------------------------------------------------------------------


def test_channel_target_gradient_is_that_of_the_channel_mean(tiny_cnn, images):
    ex = sl.explain(
        tiny_cnn, images, methods="saliency", absolute=False, target=channel("features.1", 2)
    )
    x = images.clone().requires_grad_(True)
    _, a = _hooked(tiny_cnn, "features.1", x)
    a[:, 2].mean(dim=(1, 2)).sum().backward()
    torch.testing.assert_close(ex["saliency"].attributions, x.grad)
    assert (ex["saliency"].target == -1).all()
    torch.testing.assert_close(ex.logits, a.mean(dim=(2, 3)).detach())  # the layer's readings
    assert ex.labels is None and ex.total_passes == 1


def test_neuron_target_gradient_is_that_of_the_unit(tiny_cnn, images):
    ex = sl.explain(
        tiny_cnn, images, methods="saliency", absolute=False, target=neuron("features.3", 4, 3, 7)
    )
    centre = sl.explain(
        tiny_cnn, images, methods="saliency", absolute=False, target=neuron("features.3", 4)
    )
    for result, (y, x_) in ((ex, (3, 7)), (centre, (6, 6))):
        x = images.clone().requires_grad_(True)
        _, a = _hooked(tiny_cnn, "features.3", x)
        a[:, 4, y, x_].sum().backward()
        torch.testing.assert_close(result["saliency"].attributions, x.grad)


def test_a_layer_target_stops_the_forward_at_its_layer(tiny_cnn, images):
    calls = []
    handle = tiny_cnn.fc.register_forward_hook(lambda *a: calls.append(1))
    try:
        sl.explain(tiny_cnn, images, methods=["saliency"], target=channel("features.1", 0))
        activations(tiny_cnn, images, "features.1")
    finally:
        handle.remove()
    assert calls == []
    assert _no_hooks(tiny_cnn)


def test_integrated_gradients_of_a_channel_is_complete(tiny_cnn, images):
    target = channel(tiny_cnn.features[3], 1)  # a module works as well as a name
    ex = sl.explain(tiny_cnn, images, methods="integrated_gradients", target=target, n_steps=64)
    with torch.no_grad():
        _, a = _hooked(tiny_cnn, "features.3", images)
        _, a0 = _hooked(tiny_cnn, "features.3", torch.zeros_like(images))
    gap = a[:, 1].mean(dim=(1, 2)) - a0[:, 1].mean(dim=(1, 2))
    total = ex["integrated_gradients"].attributions.flatten(1).sum(1)
    torch.testing.assert_close(total, gap, atol=2e-3, rtol=2e-3)
    assert ex["integrated_gradients"].delta.abs().max() < 2e-3


def test_deeplift_of_a_channel_sums_to_its_difference_from_the_reference(tiny_cnn, images):
    ex = sl.explain(tiny_cnn, images, methods="deeplift", target=channel("features.3", 1))
    with torch.no_grad():
        s = tiny_cnn.features(images)[:, 1].mean(dim=(1, 2))
        s0 = tiny_cnn.features(torch.zeros_like(images))[:, 1].mean(dim=(1, 2))
    total = ex["deeplift"].attributions.flatten(1).sum(1)
    torch.testing.assert_close(total, s - s0, atol=1e-5, rtol=1e-4)


def test_occlusion_of_a_channel_equals_captum_on_the_truncated_model(tiny_cnn, images):
    ex = sl.explain(
        tiny_cnn, images, methods="occlusion", target=channel("features.1", 3), window=4, stride=4
    )
    assert ex["occlusion"].passes == 0 and ex["occlusion"].forwards > 0

    def channel_mean(x):
        return tiny_cnn.features[:2](x)[:, 3].mean(dim=(1, 2))

    ref = Occlusion(channel_mean).attribute(
        images, sliding_window_shapes=(3, 4, 4), strides=(3, 4, 4), baselines=0.0
    )
    torch.testing.assert_close(ex["occlusion"].attributions, ref)


def test_bad_layer_targets_are_one_sentence(tiny_cnn, images):
    with pytest.raises(SaliencelabError, match="Channel 9 is out of range.*6 channels"):
        sl.explain(tiny_cnn, images, methods="saliency", target=channel("features.1", 9))
    with pytest.raises(SaliencelabError, match=r"outside the 12x12 map"):
        sl.explain(tiny_cnn, images, methods="saliency", target=neuron("features.1", 0, 12, 0))
    with pytest.raises(SaliencelabError, match="was not reached"):  # a layer after the target's
        sl.explain(
            tiny_cnn, images, methods="gradcam", layer="features.3", target=channel("features.1", 0)
        )
    with pytest.raises(SaliencelabError, match="no layer named"):
        sl.explain(tiny_cnn, images, methods="saliency", target=channel("features.9", 0))
    with pytest.raises(SaliencelabError, match="must be 0 or more"):
        channel("features.1", -1)
    with pytest.raises(SaliencelabError, match="must be an integer"):
        neuron("features.1", 1.5)
    assert _no_hooks(tiny_cnn)


def test_gradcam_below_the_target_layer_works(tiny_cnn, images):
    ex = sl.explain(
        tiny_cnn,
        images,
        methods="gradcam",
        layer="features.1",
        relu=False,
        target=channel("features.3", 5),
    )
    out, a1 = _hooked(tiny_cnn, "features.1", images)
    a3 = tiny_cnn.features[2:](a1)
    (g,) = torch.autograd.grad(a3[:, 5].mean(dim=(1, 2)).sum(), a1)
    cam = (g.mean(dim=(2, 3), keepdim=True) * a1).sum(1).detach()
    torch.testing.assert_close(ex["gradcam"].maps, cam)


# -- conditional maps ------------------------------------------------------------------------------


def test_conditional_maps_sum_to_input_times_gradient(tiny_cnn, images):
    full = sl.explain(tiny_cnn, images, methods="input_x_gradient", target=1)["input_x_gradient"]
    parts = [conditional_map(tiny_cnn, images, "features.1", k, target=1) for k in range(6)]
    torch.testing.assert_close(sum(p.attributions for p in parts), full.attributions)
    assert parts[2].layer == "features.1" and parts[2].extras["channel"] == 2
    assert not torch.allclose(parts[0].attributions, full.attributions)
    # One channel's map by hand: the gradient through channel 2 only.
    x = images.clone().requires_grad_(True)
    out, a = _hooked(tiny_cnn, "features.1", x)
    (g,) = torch.autograd.grad(out[:, 1].sum(), a, retain_graph=True)
    mask = torch.zeros_like(g)
    mask[:, 2] = 1
    (gx,) = torch.autograd.grad(a, x, g * mask)
    torch.testing.assert_close(parts[2].attributions, x.detach() * gx)
    assert _no_hooks(tiny_cnn)


def test_conditional_maps_of_a_vits_token_layer_sum_to_input_times_gradient():
    """On a token layer (B, T, D) channel c is feature c of the patch tokens; the class token's
    entries belonged to no channel, so the gradient through them was dropped from every map and
    the channels' maps summed to 0.03 off a map of scale 0.036 (they now go with their feature)."""
    vit = sl.load_model("tiny_vit")
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    full = sl.explain(vit, x, methods="input_x_gradient", target=0)["input_x_gradient"].maps
    d = vit.module.blocks[0].norm1.normalized_shape[0]
    total = sum(conditional_map(vit, x, "blocks.0", k, target=0).maps for k in range(d))
    torch.testing.assert_close(total, full, rtol=1e-4, atol=1e-6)


def test_conditional_integrated_gradients_is_the_channels_conductance(tiny_cnn):
    torch.manual_seed(3)
    x = torch.randn(1, 3, 4, 4)
    ours = conditional_map(
        tiny_cnn, x, "features.1", 4, target=0, method="integrated_gradients", n_steps=8
    ).attributions
    cond = NeuronConductance(tiny_cnn, tiny_cnn.features[1])
    ref = sum(
        cond.attribute(x, (4, i, j), target=0, n_steps=8, method="gausslegendre")
        for i in range(4)
        for j in range(4)
    )
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-4)
    whole = sl.explain(tiny_cnn, x, methods="integrated_gradients", target=0, n_steps=16)
    parts = sum(
        conditional_map(
            tiny_cnn, x, "features.1", k, 0, "integrated_gradients", n_steps=16
        ).attributions
        for k in range(6)
    )
    torch.testing.assert_close(parts, whole["integrated_gradients"].attributions)


def test_conditional_map_rejects_methods_without_a_backward(tiny_cnn, images):
    with pytest.raises(SaliencelabError, match="perturbation method"):
        conditional_map(tiny_cnn, images, "features.1", 0, method="occlusion")
    with pytest.raises(SaliencelabError, match="out of range"):
        conditional_map(tiny_cnn, images, "features.1", 6)
    assert _no_hooks(tiny_cnn)


# -- receptive fields ------------------------------------------------------------------------------


def _support_box(model: nn.Module, layer: str, size, y: int, x: int):
    """(left, top, right, bottom) of the input pixels with a nonzero gradient of unit (y, x).

    ``size`` is one side of a square input or ``(height, width)``."""
    height, width = (size, size) if isinstance(size, int) else size
    torch.manual_seed(0)
    inp = torch.rand(2, 3, height, width, requires_grad=True)
    a = _upto(model, layer, inp)
    a[:, :, y, x].sum().backward()
    support = inp.grad.abs().sum(dim=(0, 1)) > 0
    ys, xs = support.any(1).nonzero().flatten(), support.any(0).nonzero().flatten()
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _positive(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.abs() + 0.01)
    return model.eval()


def test_receptive_field_of_a_known_conv_stack():
    torch.manual_seed(0)
    stack = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Conv2d(4, 4, 3, stride=2, padding=1),
        nn.Conv2d(4, 2, 5, dilation=2),
    )
    rf = receptive_field(stack, "4", (64, 64))
    # r: 3, +1·1 = 4, +2·2 = 8, +8·4 = 40; jump 1, 2, 4, 4; first -1, -1, -3, -3.
    assert (rf.size, rf.stride, rf.first, rf.map_size) == ((40, 40), (4, 4), (-3, -3), (8, 8))
    assert rf.box(0, 0) == (0, 0, 37, 37) and rf.box(7, 7) == (25, 25, 64, 64)
    _positive(stack)
    assert rf.box(3, 4) == _support_box(stack, "4", 64, 3, 4)


class _ResidualDown(nn.Module):
    """A ResNet-style block: two 3x3 convs (the first strided) + a strided 1x1 conv skip."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.down = nn.Conv2d(3, 4, 1, stride=2)

    def forward(self, x):
        return self.conv2(self.conv1(x)) + self.down(x)


def test_receptive_field_follows_branches_not_module_order():
    model = _positive(nn.Sequential(_ResidualDown(), nn.MaxPool2d(3, stride=1, padding=1)))
    rf = receptive_field(model, "0", (32, 32))
    assert (rf.size, rf.stride, rf.first) == ((7, 7), (2, 2), (-3, -3))  # not stride 4
    assert rf.box(5, 6) == _support_box(model, "0", 32, 5, 6)
    assert receptive_field(model, "1", (32, 32)).size == (11, 11)


# -- dataset examples ------------------------------------------------------------------------------


def _red_square(value: float, top: int, left: int, size: int = 24) -> Image.Image:
    img = np.zeros((size, size, 3), np.uint8)
    img[top : top + 3, left : left + 3, 0] = round(255 * value)
    return Image.fromarray(img)


def _detector() -> sl.Model:
    """Channel 0 of layer "1" sums a 3x3 patch of red minus green and blue; channel 1 green."""
    conv = nn.Conv2d(3, 2, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0], conv.weight[0, 1], conv.weight[0, 2] = 1.0, -1.0, -1.0
        conv.weight[1, 1] = 1.0
    module = nn.Sequential(
        conv, nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(2 * 12 * 12, 3)
    ).eval()

    def preprocess(images):
        images = images if isinstance(images, (list, tuple)) else [images]
        arrays = [np.asarray(im.convert("RGB"), np.float32) / 255 for im in images]
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()

    return sl.Model(module, preprocess=preprocess, name="detector")


def test_top_examples_rank_a_known_stimulus_and_crop_its_location(tmp_path):
    rng = np.random.default_rng(0)
    values = rng.permutation(np.linspace(0.1, 1.0, 10))
    spots = [(int(rng.integers(0, 21)), int(rng.integers(0, 21))) for _ in values]
    images = [_red_square(v, top, left) for v, (top, left) in zip(values, spots, strict=True)]
    (tmp_path / "broken.png").write_bytes(b"not a png")
    for i, im in enumerate(images[:4]):
        im.save(tmp_path / f"file{i}.png")
    files = [tmp_path / f"file{i}.png" for i in range(4)] + [tmp_path / "broken.png"]
    found = top_examples(_detector(), [*files, *images[4:]], "1", 0, k=4, batch_size=3)
    order = np.argsort(-values)[:4]
    assert [ex.index if ex.index < 4 else ex.index - 1 for ex in found] == order.tolist()
    for ex, i in zip(found, order, strict=True):
        top, left = spots[i]
        assert ex.value == pytest.approx(9 * round(255 * values[i]) / 255, rel=1e-5)
        assert ex.location == (top + 1, left + 1)  # the square's centre
        assert ex.box == (left, top, left + 3, top + 3)  # a 3x3 field: exactly the square
        crop = np.asarray(ex.crop)
        assert crop.shape == (3, 3, 3) and (crop[..., 0] > 0).all()
    assert found[0].field.size == (3, 3) and found[0].channel == 0 and found[0].layer == "1"
    path = save_examples_gallery(found, tmp_path / "out" / "examples.png")
    assert Image.open(path).size[0] > 100


def test_examples_gallery_wraps_its_subtitle_instead_of_cutting_it(monkeypatch):
    """With one or two examples the picture is narrow: the subtitle (the receptive field's size
    and stride) is drawn in full on several lines (it was cut with an ellipsis)."""
    from PIL import ImageDraw

    drawn: list[str] = []
    real = ImageDraw.ImageDraw.text

    def spy(self, xy, text, *args, **kwargs):
        drawn.append(text)
        return real(self, xy, text, *args, **kwargs)

    monkeypatch.setattr(ImageDraw.ImageDraw, "text", spy)
    found = top_examples(_detector(), [_red_square(0.5, 2, 2)], "1", 0, k=1)
    img = sl.examples_gallery(found, tile=64)
    subtitle = "crops: the receptive field (3x3 px, stride 1) of each image's strongest unit"
    title = "1: channel 0, top 1 image"
    head = drawn[: [t.startswith("#1") for t in drawn].index(True)]  # before the captions
    assert " ".join(head) == f"{title} {subtitle}" and not any("…" in t for t in head)
    assert len(head) > 2 and img.width == 10 + 64 + 10  # one tile: the text had to wrap


def test_top_examples_bad_inputs(tmp_path):
    model = _detector()
    images = [_red_square(0.5, 2, 2)]
    with pytest.raises(SaliencelabError, match="Channel 2 is out of range"):
        top_examples(model, images, "1", 2)
    with pytest.raises(SaliencelabError, match="not a spatial map"):
        top_examples(model, images, "4", 0)
    with pytest.raises(SaliencelabError, match="holds no image files"):
        top_examples(model, tmp_path, "1", 0)
    with pytest.raises(SaliencelabError, match="no preprocessing"):
        top_examples(model.module, images, "1", 0)


# -- command line ----------------------------------------------------------------------------------

FACTORY = textwrap.dedent(
    """
    import numpy as np
    import torch
    from torch import nn

    import saliencelab as sl


    def build():
        torch.manual_seed(0)
        module = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3),
        ).eval()

        def preprocess(images):
            images = images if isinstance(images, (list, tuple)) else [images]
            arrays = [np.asarray(im.convert("RGB").resize((32, 32)), np.float32) / 255
                      for im in images]
            return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()

        return sl.Model(module, preprocess=preprocess, labels=["a", "b", "c"], name="tiny")
    """
)


def test_neurons_command(tmp_path):
    factory = tmp_path / "tiny.py"
    factory.write_text(FACTORY)
    spec = f"{factory}:build"
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        pixels = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"p{i}.png")
    app = command_app()
    runner = CliRunner(env={"COLUMNS": "200", "SALIENCELAB_DEBUG": None})
    out = tmp_path / "out"

    res = runner.invoke(
        app,
        [
            "neurons",
            str(folder / "p0.png"),
            "--model",
            spec,
            "--layer",
            "1",
            "--top",
            "4",
            "--by",
            "contribution",
            "--target",
            "b",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    assert (out / "p0_1_contribution.png").exists()
    assert "contribution to b" in res.output and "channel" in res.output

    res = runner.invoke(
        app,
        [
            "neurons",
            "--examples",
            str(folder),
            "--model",
            spec,
            "--layer",
            "3",
            "--channel",
            "2",
            "--k",
            "3",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    assert (out / "examples_3_ch2.png").exists() and "p" in res.output

    for args, message in [
        ([], "Give either an IMAGE"),
        (["--examples", str(folder), "--layer", "3"], "needs --channel"),
        ([str(folder / "p0.png"), "--layer", "6"], "not a spatial map"),
        (["--examples", str(folder), "--layer", "3", "--channel", "9"], "out of range"),
        (["nothing.png", "--layer", "1"], "neither an image file"),
    ]:
        res = runner.invoke(app, ["neurons", *args, "--model", spec, "--out", str(out)])
        assert res.exit_code == 2, res.output
        assert message in " ".join(res.output.split())


def test_neurons_command_draws_at_most_64_channels_and_says_so(tmp_path):
    """--top 100 on a 70-channel layer lists all 70 channels but draws the top 64 (8 columns, as
    a 64-tile grid; 70 tiles would take 9), with a warning saying so."""
    factory = tmp_path / "wide.py"
    factory.write_text(
        FACTORY.replace("nn.Conv2d(3, 6, 3", "nn.Conv2d(3, 70, 3").replace(
            "nn.Conv2d(6, 6, 3", "nn.Conv2d(70, 6, 3"
        )
    )
    photo = tmp_path / "p.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), np.uint8)).save(photo)
    app = command_app()
    runner = CliRunner(env={"COLUMNS": "200", "SALIENCELAB_DEBUG": None})
    out = tmp_path / "out"
    args = ["neurons", str(photo), "--model", f"{factory}:build", "--layer", "1"]
    res = runner.invoke(app, [*args, "--top", "100", "--out", str(out)])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "warning: the grid draws the top 64 of the 70 channels ranked" in text
    assert "1: 70 channels, top 70 by mean activation." in text  # the table lists them all
    pad, tile = 10, 160
    columns = 8  # ceil(sqrt(64)); the photo has its own column on the left
    width = Image.open(out / "p_1_activation.png").width
    assert width == pad + tile + 3 * pad + columns * (tile + pad)
    res = runner.invoke(app, [*args, "--top", "64", "--out", str(out)])
    assert res.exit_code == 0 and "warning" not in res.output


def test_neuron_positions_read_row_then_column_in_every_message(tiny_cnn, images):
    """sl.neuron (explain) and sl.objectives.neuron (visualize) word an outside position alike:
    (y, x), row then column, on a height x width map (one said (x, y) on a width x height map)."""
    from saliencelab.featurevis.objectives import Capture

    with pytest.raises(SaliencelabError) as explain_error:
        sl.explain(
            tiny_cnn, images[:, :, :, :6], methods="saliency", target=neuron("features.1", 0, 2, 7)
        )
    cap = Capture(activations={"features.1": torch.zeros(1, 6, 12, 6)})
    with pytest.raises(SaliencelabError) as visualize_error:
        sl.objectives.neuron("features.1", 0, y=2, x=7)(cap)
    for error in (explain_error, visualize_error):
        assert (
            "The position (y=2, x=7) (row y, column x) is outside the 12x6 map (height x "
            "width)" in str(error.value)
        )
    with pytest.raises(TypeError):  # y and x by name: the order of sl.neuron's is not guessed
        sl.objectives.neuron("features.1", 0, 2, 7)


# -- the real model --------------------------------------------------------------------------------


def test_efficientnet_channel_maps_targets_and_receptive_field(tmp_path):
    model = sl.load_model("efficientnet_lite0")
    photo = sl.sample_image("chelsea")
    x = model.preprocess(photo)
    am = activations(model, x, "_blocks.12", top=16)
    assert am.activations.shape == (1, 192, 7, 7) and am.maps.shape == (1, 16, 224, 224)
    grid = am.grid(photo)
    assert grid.width > 5 * 160 and grid.height > 4 * 160

    small = F.interpolate(x, size=(128, 128), mode="bilinear", align_corners=False)
    head = []
    handle = model.module._conv_head.register_forward_hook(lambda *a: head.append(1))
    try:
        target = channel("_blocks.12", 42)
        ex = sl.explain(model, small, methods="saliency", absolute=False, target=target)
    finally:
        handle.remove()
    assert head == []  # stopped after block 12
    xg = small.clone().requires_grad_(True)
    _upto(model.module, "_blocks.12", xg)[:, 42].mean().backward()
    torch.testing.assert_close(ex["saliency"].attributions, xg.grad)

    rf = receptive_field(model, "_blocks.3", (96, 96))  # TF "same" paddings, depthwise 5x5
    assert (rf.size, rf.stride, rf.map_size) == ((35, 35), (8, 8), (12, 12))
    assert rf.box(6, 5) == _support_box(model.module, "_blocks.3", 96, 6, 5)
    assert receptive_field(model, "_blocks.12", (96, 96)).size == (531, 531)


@pytest.mark.parametrize("by", ["activation", "contribution"])
def test_activations_on_a_vit_use_its_token_layer_as_a_grid(by):
    """On a ViT the default layer is the last block's first norm (as for CAMs) and its tokens
    (B, 1 + h·w, D) arrive as maps (B, D, h, w): compared with a forward hook laid out by hand."""
    from saliencelab.models.vit import TinyViT

    torch.manual_seed(0)
    vit = TinyViT(image_size=(16, 24), patch_size=4, dim=16, depth=2, heads=2).eval()
    x = torch.randn(2, 3, 16, 24)
    seen = []
    handle = vit.blocks[1].norm1.register_forward_hook(lambda m, i, o: seen.append(o.detach()))
    with torch.no_grad():
        vit(x)
    handle.remove()
    expected = seen[0][:, 1:].transpose(1, 2).reshape(2, 16, 4, 6)  # class token dropped
    result = activations(vit, x, top=3, by=by)
    assert result.layer == "blocks.1.norm1"
    torch.testing.assert_close(result.activations, expected, atol=1e-6, rtol=1e-5)
    assert result.maps.shape == (2, 3, 16, 24)
    if by == "activation":
        torch.testing.assert_close(result.values, expected.mean(dim=(2, 3)))


def test_top_examples_skip_files_over_max_pixels(tmp_path):
    """Files with more pixels than `max_pixels` are skipped (logged), as `sl.load_image` does;
    the limit is the caller's (the CLI's --max-pixels), not only the library default."""
    for i, value in enumerate((0.3, 0.9)):
        _red_square(value, 5, 5).save(tmp_path / f"small{i}.png")  # 24 x 24 = 576 pixels
    _red_square(1.0, 5, 5, size=40).save(tmp_path / "big.png")  # 1600 pixels, the strongest
    detector = _detector()
    model = sl.Model(  # the top-left 24 x 24 of each image
        detector.module,
        preprocess=lambda ims: detector.preprocess([im.crop((0, 0, 24, 24)) for im in ims]),
    )
    everything = top_examples(model, tmp_path, "1", 0, k=3)
    assert everything[0].source.endswith("big.png")
    kept = top_examples(model, tmp_path, "1", 0, k=3, max_pixels=1000)
    assert sorted(ex.source.rsplit("/", 1)[-1] for ex in kept) == ["small0.png", "small1.png"]


# -- review fixes: inputs, unsupported models, token layers --------------------------------------


def _tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2),
    )  # fmt: skip


def _flags(module: nn.Module):
    return module.training, [p.requires_grad for p in module.parameters()], _no_hooks(module)


def test_activations_takes_float64_and_refuses_bad_inputs_in_one_sentence():
    """Wrong channels, a missing batch axis and uint8 images raised torch's RuntimeError /
    ValueError with a traceback; float64 failed instead of being cast as sl.explain does."""
    net = _tiny_cnn().train()
    net[0].weight.requires_grad_(False)
    before = _flags(net)
    x = torch.rand(2, 3, 16, 16)
    ref = sl.activations(net, x, layer="2", top=2)
    same = sl.activations(net, x.double(), layer="2", top=2)
    assert torch.allclose(ref.values, same.values, atol=1e-5)
    bad = [
        (x[:, :1], "first layer cannot take inputs of shape (2, 1, 16, 16)"),
        (x[0], "x.unsqueeze(0)"),
        ((x * 255).to(torch.uint8), "uint8 images need preprocessing"),
        (x[:0], "The batch is empty"),
    ]
    for inputs, message in bad:
        for by in ("activation", "contribution"):
            with pytest.raises(SaliencelabError) as err:
                sl.activations(net, inputs, layer="2", by=by)
            assert message in str(err.value) and "\n" not in str(err.value)
            assert _flags(net) == before
    rf = sl.receptive_field(net, "2", x.double()[:1])  # float64 example input: cast too
    assert rf.size == (3, 3) and _flags(net) == before


def test_black_boxes_and_text_models_are_refused_by_every_neuron_tool():
    """They used to get the CAM sentence ("use a gradient method such as saliency"), wrong for a
    black box, or a message about the wrong input shape."""
    bb = sl.blackbox(lambda a: a.flatten(1)[:, :3])
    text = sl.Model(nn.Linear(4, 2), extra={"prepare": lambda x, t: (x, t)}, name="texty")
    x = torch.rand(1, 3, 8, 8)
    photo = Image.new("RGB", (8, 8))
    calls = [
        lambda m: sl.activations(m, x),
        lambda m: sl.conditional_map(m, x, None, 0),
        lambda m: sl.receptive_field(m, None, (8, 8)),
        lambda m: sl.top_examples(m, [photo], None, 0),
    ]
    for model, message in ((bb, "black-box function"), (text, "text model texty")):
        for call in calls:
            with pytest.raises(SaliencelabError, match=message) as err:
                call(model)
            assert "\n" not in str(err.value)


def test_channel_targets_on_vit_tokens_read_features_on_the_patch_grid():
    """sl.channel on a ViT token layer (B, 65, 48) read token c (channel 60 'in range of 65
    channels'); it now reads feature c of the patch tokens, in sl.activations and sl.explain
    alike (a Conv1d's (B, C, L) channels on signal inputs stay axis 1)."""
    model = sl.load_model("shapes_vit")
    x = model.preprocess(sl.data.shapes.make(2, seed=0))
    layer = "blocks.2.norm1"
    am = sl.activations(model, x, layer=layer, top=48)
    ranked = sl.activations(model, x, layer=layer, by="contribution", target=sl.channel(layer, 5))
    assert ranked.target_label() == f"channel 5 of {layer}"
    with pytest.raises(SaliencelabError, match=r"has 48 channels"):
        sl.activations(model, x, layer=layer, by="contribution", target=sl.channel(layer, 60))
    # the score's gradient is that of feature 5's grid mean: its contribution is its own mean
    grid_mean = am.values[:, 5]
    assert torch.allclose(ranked.values[:, 5] * 64, grid_mean, rtol=1e-3, atol=1e-4)
    # sl.explain: the gradient of feature 5's mean over the 64 patch tokens (class token out)
    got = sl.explain(model, x, methods="saliency", target=sl.channel(layer, 5))["saliency"]
    xg = x.clone().requires_grad_(True)
    seen = []
    handle = model.module.get_submodule(layer).register_forward_hook(lambda m, i, o: seen.append(o))
    try:
        model.module.eval()(xg)
    finally:
        handle.remove()
    (grad,) = torch.autograd.grad(seen[0][:, 1:, 5].mean(1).sum(), xg)
    torch.testing.assert_close(got.attributions, grad.abs(), rtol=1e-4, atol=1e-6)
    with pytest.raises(SaliencelabError, match=r"has 48 channels"):
        sl.explain(model, x, methods="saliency", target=sl.channel(layer, 60))
    # a Conv1d on signals: channel c is axis 1 of its (B, C, L) output, as before
    net = nn.Sequential(nn.Conv1d(2, 4, 3), nn.ReLU(), nn.Conv1d(4, 3, 3)).eval()
    signal = torch.randn(2, 2, 16, requires_grad=True)
    out = sl.explain(net, signal.detach(), methods="saliency", target=sl.channel("0", 3))
    (want,) = torch.autograd.grad(net[0](signal)[:, 3].mean(1).sum(), signal)
    torch.testing.assert_close(out["saliency"].attributions, want.abs(), rtol=1e-5, atol=1e-7)


def test_conditional_map_on_vit_tokens_gates_the_feature_not_the_token():
    from saliencelab.core.tokens import token_layout
    from saliencelab.neurons.conditional import _keep_mask

    model = sl.load_model("shapes_vit")
    x = model.preprocess(sl.data.shapes.make(2, seed=0))
    a = torch.zeros(1, 65, 48)
    with token_layout(model, x):
        keep = _keep_mask("blocks.2.norm1", a, 5)
        with pytest.raises(SaliencelabError, match=r"has 48 channels"):
            _keep_mask("blocks.2.norm1", a, 60)
    expected = torch.zeros(1, 65, 48)
    expected[0, :, 5] = 1  # feature 5 of the 64 patch tokens, and of the class token
    assert torch.equal(keep, expected)
    with pytest.raises(SaliencelabError, match=r"has 48 channels"):
        sl.conditional_map(model, x, None, 60)
    assert sl.conditional_map(model, x, None, 5).maps.shape == (2, 64, 64)


def test_examples_command_says_one_image_in_the_singular(tmp_path):
    factory = tmp_path / "net.py"
    factory.write_text(FACTORY)
    photo = tmp_path / "p.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), np.uint8)).save(photo)
    app = command_app()
    runner = CliRunner(env={"COLUMNS": "200", "SALIENCELAB_DEBUG": None})
    args = ["neurons", "--examples", str(photo), "--model", f"{factory}:build", "--layer", "3"]
    res = runner.invoke(app, [*args, "--channel", "2", "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "the 1 strongest image;" in text and "1 images" not in text


def test_top_examples_on_a_vits_token_layer_read_channels_on_the_patch_grid(tmp_path):
    """A vision transformer's token layer (B, T, D): channel c is feature c of the patch tokens
    laid on the patch grid, as in `sl.activations`; the crop is the strongest token's own patch
    (the analytic receptive field refused the layer, and the CLI's default layer with it)."""
    vit = sl.load_model("shapes_vit")
    images = [
        Image.fromarray((im.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
        for im in sl.data.shapes.make(5, seed=0).images
    ]
    found = top_examples(vit, images, None, 3, k=3, batch_size=2)
    seen = []
    layer = vit.module.get_submodule("blocks.2.norm1")
    handle = layer.register_forward_hook(lambda m, i, out: seen.append(out[:, 1:, 3].detach()))
    try:
        with torch.no_grad():
            vit.module(vit.preprocess(images))
    finally:
        handle.remove()
    tokens = seen[0]  # (5, 64): the patch tokens of an 8x8 grid, the class token dropped
    best = tokens.amax(dim=1).argsort(descending=True)[:3]
    assert [ex.index for ex in found] == best.tolist()
    for ex in found:
        t = int(tokens[ex.index].argmax())
        assert ex.value == pytest.approx(float(tokens[ex.index, t]), rel=1e-5)
        assert ex.location == divmod(t, 8)
        y, x = ex.location
        assert ex.box == (8 * x, 8 * y, 8 * x + 8, 8 * y + 8) and ex.crop.size == (8, 8)
    field = found[0].field
    assert found[0].layer == "blocks.2.norm1" and field.tokens and field.size == (8, 8)
    assert field.describe() == (
        "token patches 8x8 px (through attention a token sees the whole image)"
    )
    for i, im in enumerate(images):
        im.save(tmp_path / f"{i}.png")
    result = CliRunner(env={"COLUMNS": "200"}).invoke(
        command_app(),
        [
            "neurons",
            "--examples",
            str(tmp_path),
            "--model",
            "shapes_vit",
            "--channel",
            "3",
            "--k",
            "2",
            "--out",
            str(tmp_path / "out"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "token patches 8x8 px" in result.output
