"""Audit of saliencelab.neurons: edges the main tests leave open (found by mutation).

Sample ranges, the activation table, class names of targets, layer targets on a linear layer,
conditional relevance maps, dataset examples on non-square images clipped at the border,
receptive fields of adaptive pooling, "same" padding, non-square kernels and parallel branches,
the grid's colour map and layout, and the `neurons` command's options. References: forward
hooks and autograd by hand, the gradient support of a unit, known stimuli, the docstrings.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from PIL import Image, ImageChops
from test_neurons import (  # the same readings and CLI model
    FACTORY,
    _hooked,
    _positive,
    _support_box,
    _upto,
)
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
    top_examples,
)
from saliencelab.neurons.commands import register

# -- activation maps -------------------------------------------------------------------------------


def test_activation_maps_accept_samples_0_to_n_minus_1_only(tiny_cnn, images):
    """The docstring's range: sample between 0 and n - 1 (negatives count from the end)."""
    am = activations(tiny_cnn, images, "features.1", top=2)
    assert am.table(-4) == am.table(0) and am.table(3) == am.table(-1)
    for bad in (4, -5):
        with pytest.raises(SaliencelabError, match=f"Sample {bad} is out of range"):
            am.table(bad)
    with pytest.raises(SaliencelabError, match="Sample 4 is out of range"):
        am.grid(Image.new("RGB", (12, 12)), sample=4)


def test_activation_table_rows_are_ranked_from_1_with_the_samples_own_statistics(tiny_cnn, images):
    """Each row's mean and max are those of the sample's own map (a forward hook), ranks 1..k."""
    am = activations(tiny_cnn, images, "features.3", top=3)
    with torch.no_grad():
        _, a = _hooked(tiny_cnn, "features.3", images)
    for sample in (1, 2):
        means = a[sample].mean(dim=(1, 2))
        order = means.argsort(descending=True)[:3].tolist()
        rows = am.table(sample)
        assert [r["rank"] for r in rows] == [1, 2, 3]
        assert [r["channel"] for r in rows] == order
        for r in rows:
            c = r["channel"]
            assert r["value"] == pytest.approx(float(means[c]), rel=1e-5)
            assert r["mean"] == pytest.approx(float(means[c]), rel=1e-5)
            assert r["max"] == pytest.approx(float(a[sample, c].max()), rel=1e-5)


def test_contribution_target_label_names_class_0_and_custom_targets(tiny_cnn, images):
    """target_label: the class's name, also for class 0; "custom" only for a callable target."""
    model = sl.Model(tiny_cnn, labels=["zero", "one", "two", "three", "four"])
    am = activations(model, images, "features.3", top=2, by="contribution", target=0)
    assert am.target.tolist() == [0, 0, 0, 0]
    assert [am.target_label(i) for i in range(4)] == ["zero"] * 4
    custom = activations(
        model, images, "features.3", top=2, by="contribution", target=lambda s: s[:, 1]
    )
    assert custom.target_label(0) == "custom"
    assert activations(model, images, "features.3", top=2).target_label(0) is None


# -- channel and neuron targets on a layer without positions ---------------------------------------


@pytest.mark.parametrize("make", [channel, neuron])
def test_a_unit_of_a_linear_layer_is_its_output(tiny_cnn, images, make):
    """On a (B, K) layer, channel/neuron k read the output itself: the gradient is that of
    logit k, by autograd (class 4's logits are negative here, so a sign change shows)."""
    x = images.clone().requires_grad_(True)
    logits = tiny_cnn(x)
    assert (logits[:, 4] < 0).all()
    logits[:, 4].sum().backward()
    ex = sl.explain(tiny_cnn, images, methods="saliency", absolute=False, target=make("fc", 4))
    torch.testing.assert_close(ex["saliency"].attributions, x.grad)
    torch.testing.assert_close(ex.logits, logits.detach())  # the readings are the logits


def test_neuron_positions_are_checked_on_both_axes(tiny_cnn, images):
    """A position outside the map fails on x as well as on y (features.1 is 12 x 12)."""
    for y, x in ((0, 12), (12, 0), (11, 12)):
        with pytest.raises(SaliencelabError, match="outside the 12x12 map"):
            sl.explain(tiny_cnn, images, methods="saliency", target=neuron("features.1", 0, y, x))
    sl.explain(tiny_cnn, images, methods="saliency", target=neuron("features.1", 0, 11, 11))


def test_a_bool_is_not_a_channel_index():
    """`True` is an int to Python, but not a channel: refused as the docstring's integers."""
    for make in (lambda: channel("features.1", True), lambda: neuron("features.1", 0, y=False)):
        with pytest.raises(SaliencelabError, match="must be an integer"):
            make()


# -- conditional maps with relevance methods -------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "layer"),
    [
        ("lrp", "features.3"),
        ("deeplift", "features.2"),
        # the method's own rule hooks the layer too (LRP at a conv, DeepLIFT at a ReLU): the
        # gate used to be cut out of the graph, and every channel gave the whole map
        ("lrp", "features.2"),
        ("deeplift", "features.3"),
        ("deeplift", "features.1"),
    ],
)
def test_conditional_relevance_maps_sum_to_the_methods_map(tiny_cnn, images, method, layer):
    """Relevance methods are accepted, and their backward is linear in the gradient at the
    layer, so the channels' conditional maps sum to the method's map (module docstring)."""
    full = sl.explain(tiny_cnn, images, methods=method, target=1)[method].attributions
    parts = [
        conditional_map(tiny_cnn, images, layer, k, target=1, method=method).attributions
        for k in range(6)
    ]
    torch.testing.assert_close(sum(parts), full, atol=1e-7, rtol=1e-5)
    assert not any(torch.allclose(p, full) for p in parts)


@pytest.mark.parametrize("method", ["deconvnet", "deeplift_shap"])
def test_a_conditional_map_at_a_layer_the_method_hooks_is_restricted(tiny_cnn, images, method):
    """At a ReLU that deconvnet's and DeepLIFT-SHAP's rules hook themselves, a channel's map is
    not the whole map (it was, exactly, before the gate ran after the method's hook)."""
    full = sl.explain(tiny_cnn, images, methods=method, target=1)[method].attributions
    one = conditional_map(tiny_cnn, images, "features.1", 2, target=1, method=method)
    assert not torch.allclose(one.attributions, full)
    assert not tiny_cnn.features[1]._forward_hooks and not tiny_cnn.features[1]._forward_pre_hooks


# -- dataset examples ------------------------------------------------------------------------------


def _spot_detector() -> sl.Model:
    """Layer "0": channel 0 weighs red with 1 at the centre of its 3x3 kernel, 0.5 around it (so
    a single red pixel peaks exactly at its own unit); any image size."""
    conv = nn.Conv2d(3, 2, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0] = 0.5
        conv.weight[0, 0, 1, 1] = 1.0
        conv.weight[1, 1] = 1.0
    module = nn.Sequential(conv, nn.ReLU()).eval()

    def preprocess(images):
        images = images if isinstance(images, (list, tuple)) else [images]
        arrays = [np.asarray(im.convert("RGB"), np.float32) / 255 for im in images]
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()

    return sl.Model(module, preprocess=preprocess, name="spots")


def _red_pixel(value: float, y: int, x: int, height: int = 16, width: int = 24) -> Image.Image:
    img = np.zeros((height, width, 3), np.uint8)
    img[y, x, 0] = round(255 * value)
    return Image.fromarray(img)


def test_top_examples_on_wide_images_locate_the_unit_and_clip_its_box():
    """Images 16 high, 24 wide with one red pixel: the unit is the pixel (y, x), its 3x3 field
    the box around it clipped to the image (by hand), the image is the model's 24 x 16 view."""
    spots = [(0.5, 5, 9), (1.0, 15, 23), (0.8, 0, 20), (0.3, 7, 2)]
    images = [_red_pixel(v, y, x) for v, y, x in spots]
    found = top_examples(_spot_detector(), images, "0", 0, k=3, batch_size=2)
    assert [ex.index for ex in found] == [1, 2, 0]
    for ex in found:
        value, y, x = spots[ex.index]
        assert ex.location == (y, x)
        assert ex.value == pytest.approx(round(255 * value) / 255, rel=1e-6)
        assert ex.box == (max(x - 1, 0), max(y - 1, 0), min(x + 2, 24), min(y + 2, 16))
        assert ex.image.size == (24, 16)
        assert ex.crop.size == (ex.box[2] - ex.box[0], ex.box[3] - ex.box[1])
        assert ex.activation.shape == (16, 24)
    assert found[0].box == (22, 14, 24, 16)  # the corner pixel: clipped right and below
    assert found[0].field.input_size == (16, 24) and found[0].field.map_size == (16, 24)


def test_examples_show_the_image_at_the_models_input_size():
    """A model that resizes 48 x 32 photos to 24 x 16: each example's image is 24 wide, 16 high
    (model_view's docstring: resized to (H, W)), and its crop is cut from that view."""
    detector = _spot_detector()
    model = sl.Model(
        detector.module,
        preprocess=lambda ims: detector.preprocess(
            [im.resize((24, 16), Image.Resampling.NEAREST) for im in ims]
        ),
    )
    big = np.zeros((32, 48, 3), np.uint8)
    big[10:12, 30:32, 0] = 255  # a 2 x 2 block: one red pixel at (5, 15) after the resize
    (ex,) = top_examples(model, [Image.fromarray(big)], "0", 0, k=1)
    assert ex.image.size == (24, 16) and ex.location == (5, 15)
    red = np.asarray(ex.crop)[..., 0]  # the view is resized bilinearly: the block is blurred
    assert red.shape == (3, 3) and red[1, 1] == red.max() > 0  # centred on the unit's pixel


def test_top_examples_need_at_least_one_example():
    """k = 0 keeps nothing: refused with the sentence for k and batch_size."""
    with pytest.raises(SaliencelabError, match="k and batch_size must be 1 or more"):
        top_examples(_spot_detector(), [_red_pixel(1.0, 3, 3)], "0", 0, k=0)


# -- receptive fields ------------------------------------------------------------------------------


def test_receptive_field_of_adaptive_pooling_is_its_windows():
    """AdaptiveAvgPool2d(3) on 10 x 7: windows [floor(i·n/3), ceil((i+1)·n/3)), 4 rows and 3
    columns wide, every 3 rows and 2 columns; every unit's box equals its gradient support."""
    model = _positive(nn.Sequential(nn.Conv2d(3, 2, 1), nn.AdaptiveAvgPool2d(3)))
    rf = receptive_field(model, "1", (10, 7))
    assert (rf.size, rf.stride, rf.first, rf.map_size) == ((4, 3), (3, 2), (0, 0), (3, 3))
    for y in range(3):
        for x in range(3):
            assert rf.box(y, x) == _support_box(model, "1", (10, 7), y, x), (y, x)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")  # PyTorch's note
def test_receptive_field_of_same_padding_with_an_even_kernel():
    """padding="same" with a 4 x 4 kernel pads 1 before and 2 after (PyTorch); the boxes at the
    corners and inside equal the gradient support."""
    model = _positive(nn.Sequential(nn.Conv2d(3, 2, 4, padding="same")))
    rf = receptive_field(model, "0", (12, 12))
    assert (rf.size, rf.first) == ((4, 4), (-1, -1))
    for y, x in ((0, 0), (5, 6), (11, 11)):
        assert rf.box(y, x) == _support_box(model, "0", 12, y, x), (y, x)


def test_receptive_field_of_a_non_square_kernel_on_a_non_square_input():
    """A 3 x 5 kernel (padding 1, 2) then a 2 x 2 average pool: size (4, 6), stride 2; the boxes
    equal the gradient support (height from the rows, width from the columns)."""
    model = _positive(nn.Sequential(nn.Conv2d(3, 2, (3, 5), padding=(1, 2)), nn.AvgPool2d(2)))
    rf = receptive_field(model, "1", (12, 20))
    assert (rf.size, rf.stride, rf.first, rf.map_size) == ((4, 6), (2, 2), (-1, -2), (6, 10))
    for y, x in ((0, 0), (2, 5), (5, 9)):
        assert rf.box(y, x) == _support_box(model, "1", (12, 20), y, x), (y, x)


class _TwoBranches(nn.Module):
    """A 5x5 branch computed first, then a 3x3 conv → ReLU branch at the same resolution."""

    def __init__(self) -> None:
        super().__init__()
        self.wide = nn.Conv2d(3, 2, 5, padding=2)
        self.narrow = nn.Conv2d(3, 2, 3, padding=1)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.wide(x) + self.act(self.narrow(x))


def test_receptive_field_of_an_activation_is_that_of_its_own_input():
    """A ReLU after the 3x3 conv sees 3x3 pixels, though a 5x5 branch ran before it at the same
    resolution (an Inception-like block); the block's sum sees 5x5. Gradient support agrees."""
    model = _positive(nn.Sequential(_TwoBranches()))
    act = receptive_field(model, "0.act", (12, 12))
    assert act.size == (3, 3) and act.box(4, 5) == _support_box(model, "0.act", 12, 4, 5)
    block = receptive_field(model, "0", (12, 12))
    assert block.size == (5, 5) and block.box(4, 5) == _support_box(model, "0", 12, 4, 5)


def _contains(box, inner) -> bool:
    return box[0] <= inner[0] and box[1] <= inner[1] and box[2] >= inner[2] and box[3] >= inner[3]


@pytest.mark.parametrize(("n_in", "n_out"), [(5, 3), (10, 4), (3, 5), (7, 3)])
def test_receptive_field_of_adaptive_pooling_contains_every_window(n_in, n_out):
    """Adaptive pooling of n_in rows into n_out (and 8 columns into 4): every unit's box contains
    its window [floor(i·n_in/n_out), ceil((i+1)·n_in/n_out)) (the gradient support), and equals it
    where the windows are evenly spaced (7 -> 3; 8 -> 4). Was kernel ceil(in/out), stride
    in // out: 5 -> 3 gave unit 2 rows 2-3 for its window 3-4, 3 -> 5 boxes past the image."""
    model = _positive(nn.Sequential(nn.Conv2d(3, 2, 1), nn.AdaptiveAvgPool2d((n_out, 4))))
    rf = receptive_field(model, "1", (n_in, 8))
    for y in range(n_out):
        for x in range(4):
            support = _support_box(model, "1", (n_in, 8), y, x)
            assert _contains(rf.box(y, x), support), (y, x, rf.box(y, x), support)
            assert rf.box(y, x)[0::2] == support[0::2]  # columns: 8 -> 4 is exact
            if (n_in, n_out) == (7, 3):
                assert rf.box(y, x) == support
    if (n_in, n_out) == (5, 3):  # windows: rows 0-1, 1-3, 3-4; boxes 3 rows every row
        assert [rf.box(y, 0)[1::2] for y in range(3)] == [(0, 3), (1, 4), (2, 5)]


@pytest.mark.parametrize(
    "pad",
    [nn.ZeroPad2d(1), nn.ConstantPad2d(1, 0.5), nn.ReflectionPad2d(1), nn.ReplicationPad2d(1)],
    ids=lambda p: type(p).__name__,
)
def test_receptive_field_of_a_pad_module_is_an_offset(pad):
    """Was size 1 x 1 (the pad's output took the field seen at its size, the input's): a pad
    moves the field (f' = f - p·j), so a valid 3x3 conv after a 1-pixel pad sees 3 x 3 pixels
    from -1; every box tried equals the gradient support."""
    model = _positive(nn.Sequential(pad, nn.Conv2d(3, 2, 3)))
    rf = receptive_field(model, "1", (16, 16))
    assert (rf.size, rf.stride, rf.first, rf.map_size) == ((3, 3), (1, 1), (-1, -1), (16, 16))
    for y, x in ((0, 0), (1, 1), (5, 0), (15, 15)):
        assert rf.box(y, x) == _support_box(model, "1", 16, y, x), (y, x)


@pytest.mark.parametrize(
    ("layers", "size", "field"),
    [
        ([nn.ReflectionPad2d(2), nn.Conv2d(3, 2, 5)], 16, (5, 5)),  # was 1 x 1
        ([nn.Conv2d(3, 2, 3), nn.ZeroPad2d(1), nn.Conv2d(2, 2, 3)], 16, (5, 5)),  # was 3 x 3
        ([nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(3, 2, 3, 2), nn.Conv2d(2, 2, 3, 2)], 32, (7, 7)),
    ],
    ids=["reflect-conv5", "conv-pad-conv", "pad-right-bottom-strided"],
)
def test_receptive_fields_through_pads_match_the_gradient_support(layers, size, field):
    """Pads before a kernel of 2p + 1, a pad between two valid convs back to the input size (its
    output used to take the input's 1 x 1 field), and a pad on the right and bottom only before
    strided convs (used to be refused as "not a module"): boxes equal the gradient support."""
    model = _positive(nn.Sequential(*layers))
    last = str(len(layers) - 1)
    rf = receptive_field(model, last, (size, size))
    assert rf.size == field
    h, w = rf.map_size
    for y, x in ((0, 0), (1, 2), (h // 2, w // 2), (h - 1, w - 1)):
        assert rf.box(y, x) == _support_box(model, last, size, y, x), (y, x)


class _FunctionalResize(nn.Module):
    """Two strided convs, then F.interpolate back up (or F.pad around a valid conv), then a conv."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.a = nn.Conv2d(3, 2, 3, stride=2, padding=1)
        self.b = nn.Conv2d(2, 2, 3, stride=2, padding=1)
        self.valid = nn.Conv2d(3, 2, 3)
        self.c = nn.Conv2d(2, 2, 3, padding=1)

    def forward(self, x):
        if self.how == "interpolate":  # 16 -> 8 -> 4 -> 8, a size the first conv had
            return self.c(nn.functional.interpolate(self.b(self.a(x)), scale_factor=2.0))
        return self.c(nn.functional.pad(self.valid(x), [1, 1, 1, 1]))  # 16 -> 14 -> 16


@pytest.mark.parametrize("how", ["upsample", "interpolate", "pad"])
def test_a_receptive_field_after_a_size_change_not_followed_is_refused(how):
    """nn.Upsample / F.interpolate after strided convs, and F.pad in forward, land on a size a
    tensor had before; the field used to be the widest one seen at that size (wrong boxes, no
    error). Now it is the sentence asking for the module form."""
    if how == "upsample":
        model = nn.Sequential(
            nn.Conv2d(3, 2, 3, 2, 1),
            nn.Conv2d(2, 2, 3, 2, 1),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(2, 2, 3, padding=1),
        )
        layer = "3"
    else:
        model, layer = _FunctionalResize(how), "c"
    with pytest.raises(SaliencelabError, match=f"{layer} cannot be followed") as err:
        receptive_field(model.eval(), layer, (16, 16))
    assert "\n" not in str(err.value) and str(err.value).endswith("to get receptive fields.")


class _GatedChannelsLast(nn.Module):
    """A squeeze-and-excitation gate (1 x 1 maps), then a ConvNeXt-style channels-last MLP."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.squeeze = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(4, 4, 1), nn.Sigmoid())
        self.dw = nn.Conv2d(4, 4, 7, padding=3, groups=4)
        self.norm, self.mlp = nn.LayerNorm(4), nn.Linear(4, 4)
        self.out = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        h = self.conv(x)
        h = h * self.squeeze(h)
        h = h + self.mlp(self.norm(self.dw(h).permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
        return self.out(h)


def test_a_gate_and_a_channels_last_block_keep_their_branch_fields():
    """The functional results after a squeeze-and-excitation gate (1 x 1, not counted) and a
    permuted channels-last MLP take the field of their branch: 3 + 6 = 9 pixels, not refused."""
    rf = receptive_field(_positive(_GatedChannelsLast()), "out", (16, 16))
    assert (rf.size, rf.stride, rf.first) == ((9, 9), (1, 1), (-4, -4))


# -- the grid --------------------------------------------------------------------------------------


def test_activation_grid_colour_map_is_diverging_only_for_negative_activations(
    tiny_cnn, images, monkeypatch
):
    """activation_grid's docstring: "diverging" when the layer has negative activations on the
    sample, else "heat" (a ReLU output has zeros but no negatives)."""
    from saliencelab.neurons import grid

    used = []
    real = grid.overlay

    def spy(*args, **kw):
        used.append(kw.get("cmap"))
        return real(*args, **kw)

    monkeypatch.setattr(grid, "overlay", spy)
    photo = Image.new("RGB", (12, 12), (120, 120, 120))
    relu = activations(tiny_cnn, images, "features.1", top=2)
    assert (relu.activations[0] == 0).any() and not (relu.activations[0] < 0).any()
    relu.grid(photo, tile=32)
    assert used == ["heat", "heat"]
    used.clear()
    conv = activations(tiny_cnn, images, "features.0", top=2)
    assert (conv.activations[0] < 0).any()
    conv.grid(photo, tile=32)
    assert used == ["diverging", "diverging"]


def test_activation_grid_has_no_empty_columns(tiny_cnn, images):
    """Asked for more columns than tiles, the grid ends one margin after its last tile, as
    with exactly as many columns (no blank tile columns on the right)."""
    from saliencelab.viz.gallery import PAD

    am = activations(tiny_cnn, images, "features.1", top=3)
    photo = Image.new("RGB", (12, 12), (120, 120, 120))
    img = am.grid(photo, tile=32, columns=10)
    content = ImageChops.difference(img, Image.new("RGB", img.size, (255, 255, 255))).getbbox()
    assert img.width - content[2] <= PAD
    assert img.size == am.grid(photo, tile=32, columns=3).size


# -- command line ----------------------------------------------------------------------------------


@pytest.fixture
def cli(tmp_path, monkeypatch):
    """(invoke, folder of 5 photos 20 x 20, the factory's model), run in tmp_path (short paths)."""
    monkeypatch.chdir(tmp_path)
    Path("tiny.py").write_text(FACTORY)
    spec = "tiny.py:build"
    folder = Path("photos")
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        pixels = rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"p{i}.png")
    app = typer.Typer()
    app.callback()(lambda: None)
    register(app)
    runner = CliRunner(env={"COLUMNS": "200", "SALIENCELAB_DEBUG": None})

    def invoke(*args):
        return runner.invoke(app, ["neurons", *args, "--model", spec, "--out", "out"])

    return invoke, folder, sl.load_model(spec)


def _table_rows(output: str) -> list[list[str]]:
    return [
        [cell.strip() for cell in line.strip("│").split("│")]
        for line in output.splitlines()
        if line.startswith("│")
    ]


def test_neurons_command_draws_top_channels_by_mean_activation(cli):
    """--top 2: two rows, the two channels of layer 1 with the largest mean (forward hook)."""
    invoke, folder, model = cli
    res = invoke(str(folder / "p3.png"), "--layer", "1", "--top", "2")
    assert res.exit_code == 0, res.output
    x = model.preprocess([Image.open(folder / "p3.png")])
    with torch.no_grad():
        _, a = _hooked(model.module, "1", x)
    means = a[0].mean(dim=(1, 2))
    rows = _table_rows(res.output)
    assert [int(r[1]) for r in rows] == means.argsort(descending=True)[:2].tolist()
    assert [int(r[0]) for r in rows] == [1, 2]


def test_neurons_command_examples_keep_k_images(cli):
    """--k 3 lists the 3 photos whose channel 2 of layer 3 peaks highest (forward hook)."""
    invoke, folder, model = cli
    res = invoke("--examples", str(folder), "--layer", "3", "--channel", "2", "--k", "3")
    assert res.exit_code == 0, res.output
    x = model.preprocess([Image.open(folder / f"p{i}.png") for i in range(5)])
    with torch.no_grad():
        _, a = _hooked(model.module, "3", x)
    best = a[:, 2].flatten(1).amax(1).argsort(descending=True)[:3].tolist()
    rows = _table_rows(res.output)
    assert [r[1] for r in rows] == [str(folder / f"p{i}.png") for i in best]
    assert [int(r[0]) for r in rows] == [1, 2, 3]


def test_neurons_command_refuses_target_without_contribution(cli):
    """--target is for --by contribution (its help says so): with the default ranking, exit 2."""
    invoke, folder, _ = cli
    res = invoke(str(folder / "p0.png"), "--layer", "1", "--target", "b")
    assert res.exit_code == 2
    assert "--target is used only with --by contribution" in " ".join(res.output.split())


class _FunctionalPooling(nn.Module):
    """The tutorial style: pooling done with F.max_pool2d inside forward."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 16, 3)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        x = nn.functional.max_pool2d(nn.functional.relu(self.conv1(x)), 2)
        x = nn.functional.max_pool2d(nn.functional.relu(self.conv2(x)), 2)
        return self.fc(x.mean((2, 3)))


def test_a_receptive_field_behind_functional_pooling_is_refused_not_one_pixel():
    """Was: size (1, 1), stride (1, 1) for conv2, whose units really see 8 × 8 pixels at stride 2
    (the gradient support); the analysis cannot follow F.max_pool2d, so it says so. Before the
    pooling (conv1) the field is still the conv's 3 × 3."""
    torch.manual_seed(0)
    net = _FunctionalPooling().eval()
    with pytest.raises(SaliencelabError, match="conv2 cannot be followed.*F.max_pool2d"):
        receptive_field(net, "conv2", torch.rand(1, 3, 32, 32))
    rf = receptive_field(net, "conv1", torch.rand(1, 3, 32, 32))
    assert (rf.size, rf.stride) == ((3, 3), (1, 1))


def test_the_default_probe_is_the_models_input_size_and_channels():
    """Without `x`: the model's `input_size` (the shapes CNN: 64 × 64, so its real map size) and
    the first convolution's channels (a 1-channel model works; a wrong given input is one
    sentence)."""
    model = sl.load_model("shapes_cnn")
    rf = receptive_field(model, "features.4")
    x = sl.data.shapes.make(1, seed=0).images
    assert rf.input_size == (64, 64)
    assert rf.map_size == tuple(_upto(model.module.eval(), "features.4", x).shape[-2:])
    gray = nn.Sequential(nn.Conv2d(1, 4, 5), nn.ReLU()).eval()
    assert receptive_field(gray, "0").size == (5, 5)
    with pytest.raises(SaliencelabError):
        receptive_field(gray, "0", torch.rand(1, 3, 16, 16))


def test_activation_maps_print_as_a_summary():
    model = sl.load_model("shapes_cnn")
    x = sl.data.shapes.make(2, seed=0).images
    am = activations(model, x, "features.4", top=3)
    text = repr(am)
    expected = ", ".join(str(int(c)) for c in am.channels[0])
    assert text.startswith("ActivationMaps(features.4, by activation: 2 samples, ")
    assert f"top channels of sample 0: {expected})" in text and len(text) < 300
