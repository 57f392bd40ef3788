"""Fixes from a sweep of saliencelab.neurons: conditional maps whose gate never ran, receptive
fields through ceil-mode pools, fields in the padding, unit positions, images of several sizes,
ties among dataset examples, neurons on 1-D maps, resolution-keeping leaf modules, layers the
forward never runs, bad input sizes and non-square strides in the `neurons` command.

References: autograd by hand, the gradient support of a unit, PyTorch's pooling windows,
sorting by (-value, index), and the receptive-field recurrence worked out by hand.
"""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch
from PIL import Image
from test_neurons import _no_hooks, _positive, _support_box, _upto, command_app
from torch import nn
from typer.testing import CliRunner

import saliencelab as sl
from saliencelab.core.errors import SaliencelabError
from saliencelab.neurons import (
    activations,
    conditional_map,
    neuron,
    receptive_field,
    top_examples,
)

pytestmark = pytest.mark.usefixtures("one_thread")


class _Unused(nn.Module):
    """A convolution, then the mean of its channels; `unused` is never called."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 3, padding=1)
        self.unused = nn.Conv2d(4, 4, 1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.c1(x).mean(dim=(2, 3)))


def _state(model: nn.Module):
    return [m.training for m in model.modules()], [p.requires_grad for p in model.parameters()]


# -- 1. conditional maps whose gate never runs ----------------------------------------------------


def test_conditional_map_refuses_a_layer_the_forward_does_not_reach(tiny_cnn, images):
    """A channel target at features.1 stops the forward before features.3 and a layer the
    forward never calls is never gated: each channel's map was the whole input x gradient (the
    32 channels summed to 32 times it); now one sentence, the model left as it was."""
    tiny_cnn.train()
    before = _state(tiny_cnn)
    with pytest.raises(SaliencelabError, match=r"features\.3 was not run .* before the target"):
        conditional_map(tiny_cnn, images, "features.3", 0, target=sl.channel("features.1", 2))
    assert _no_hooks(tiny_cnn) and _state(tiny_cnn) == before
    net = _Unused().eval()
    for c in (1, 99):  # 99 is no channel of it: no map at all
        with pytest.raises(SaliencelabError, match="unused was not run by the model's forward"):
            conditional_map(net, images, "unused", c)
    assert _no_hooks(net)


def test_conditional_map_at_the_targets_own_layer_is_that_channels_share(tiny_cnn, images):
    """Target: channel 2's mean at features.3. Its gradient at the layer lies on channel 2 only,
    so channel 2's conditional map is x * d(mean A_2)/dx and every other channel's is 0 (the
    gate never ran: every channel got the whole map)."""
    target = sl.channel("features.3", 2)
    x = images.clone().requires_grad_(True)
    a = _upto(tiny_cnn, "features.3", x)
    (g,) = torch.autograd.grad(a[:, 2].mean(dim=(1, 2)).sum(), x)
    maps = [conditional_map(tiny_cnn, images, "features.3", k, target=target) for k in range(6)]
    torch.testing.assert_close(maps[2].attributions, images * g)
    for k in (0, 1, 3, 4, 5):
        assert maps[k].attributions.abs().max() == 0
    unit = neuron("features.3", 4, y=5, x=6)
    (g,) = torch.autograd.grad(_upto(tiny_cnn, "features.3", x)[:, 4, 5, 6].sum(), x)
    ours = conditional_map(tiny_cnn, images, "features.3", 4, target=unit).attributions
    torch.testing.assert_close(ours, images * g)
    assert conditional_map(tiny_cnn, images, "features.3", 1, target=unit).maps.abs().max() == 0
    with pytest.raises(SaliencelabError, match="out of range"):
        conditional_map(tiny_cnn, images, "features.3", 6, target=target)
    assert _no_hooks(tiny_cnn)


# -- 2. ceil-mode pools ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kernel", "stride", "padding", "size"),
    [(3, 3, 0, 7), (3, 3, 0, 8), (3, 2, 1, 10), (2, 4, 0, 11), (3, 3, 1, 9)],
)
def test_receptive_field_through_a_ceil_mode_pool_is_its_gradient_support(
    kernel, stride, padding, size
):
    """Ceil mode's extra window pads only at the end: MaxPool2d(3, 3, ceil_mode) on 7 pixels
    has windows 0..2, 3..5, 6 (first was -1, box (0, 0, 2, 2)). Reference: the gradient support
    of the average pool with the same windows (a max pool's gradient reaches one pixel)."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 2, 3, padding=1)
    avg = _positive(nn.Sequential(conv, nn.AvgPool2d(kernel, stride, padding, ceil_mode=True)))
    rf = receptive_field(avg, "1", (size, size))
    h, w = rf.map_size
    assert (h, w) == _upto(avg, "1", torch.rand(1, 3, size, size)).shape[-2:]
    for y in range(h):
        for x in range(w):
            assert rf.box(y, x) == _support_box(avg, "1", size, y, x), (y, x)
    biggest = nn.Sequential(conv, nn.MaxPool2d(kernel, stride, padding, ceil_mode=True))
    assert receptive_field(biggest, "1", (size, size)) == rf
    pool = receptive_field(nn.Sequential(nn.MaxPool2d(3, 3, ceil_mode=True)), "0", (7, 7))
    assert (
        pool.first == (0, 0) and pool.box(0, 0) == (0, 0, 3, 3) and pool.box(2, 2) == (6, 6, 7, 7)
    )


# -- 3 and 4. boxes in the padding, positions outside the map --------------------------------------


def _padded(padding: int) -> nn.Module:
    """One 3x3 convolution with `padding`, strongest where it sees only the padding."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 2, 3, padding=padding))
    with torch.no_grad():
        net[0].weight.copy_(-net[0].weight.abs())
        net[0].bias.fill_(0.5)
    return net.eval()


def test_a_field_wholly_in_the_padding_gets_the_nearest_pixel():
    """Padding 5: unit (0, 0) sees pixels -5..-3 on each axis, none of the image; its box was
    (0, 0, -2, -2) (PIL raised) and with padding 3 the empty (0, 0, 0, 0). Now the image's
    nearest pixel, (0, 0, 1, 1); a unit that sees part of the image keeps its gradient support."""
    for padding in (3, 5):
        net = _positive(_padded(padding))
        rf = receptive_field(net, "0", (16, 16))
        h, w = rf.map_size
        assert rf.box(0, 0) == (0, 0, 1, 1)  # the corner pixel
        assert rf.box(h - 1, w - 1) == (15, 15, 16, 16)
        assert rf.box(0, w // 2) == (w // 2 - padding, 0, w // 2 - padding + 3, 1)
        assert rf.box(padding - 1, padding - 1) == _support_box(
            net, "0", 16, padding - 1, padding - 1
        )


def test_top_examples_crop_a_unit_that_sees_only_padding(tmp_path):
    net = _padded(5)

    def preprocess(images):
        arrays = [np.asarray(im.convert("RGB").resize((16, 16)), np.float32) / 255 for im in images]
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()

    model = sl.Model(net, preprocess=preprocess, input_size=16)
    rng = np.random.default_rng(0)
    photos = [Image.fromarray(rng.integers(0, 255, (16, 16, 3), np.uint8)) for _ in range(2)]
    found = top_examples(model, photos, "0", 0, k=2)
    for ex in found:
        assert ex.location == (0, 0) and ex.value == pytest.approx(0.5)  # the bias alone
        assert ex.box == (0, 0, 1, 1) and ex.crop.size == (1, 1)
        assert ex.crop.getpixel((0, 0)) == ex.image.getpixel((0, 0))
    assert sl.save_examples_gallery(found, tmp_path / "g.png").exists()


def test_box_refuses_a_unit_outside_the_map():
    rf = receptive_field(nn.Sequential(nn.Conv2d(3, 2, 3, stride=2, padding=1)), "0", (16, 12))
    assert rf.map_size == (8, 6)
    assert rf.box(7, 5) == (9, 13, 12, 16)  # first -1, stride 2, size 3: rows 13..15, cols 9..11
    for y, x in [(8, 0), (0, 6), (-1, 0), (100, 100), (-20, -20)]:
        with pytest.raises(SaliencelabError, match=rf"\(y={y}, x={x}\) .* outside the 8x6 map"):
            rf.box(y, x)
    with pytest.raises(SaliencelabError, match="two integers"):
        rf.box(1.5, 2)


# -- 5 and 6. images of several sizes, ties --------------------------------------------------------


def _own_size(images):
    """Each image at its own size, pixels in [0, 1]."""
    arrays = [np.asarray(im.convert("RGB"), np.float32) / 255 for im in images]
    return torch.stack([torch.from_numpy(a).permute(2, 0, 1) for a in arrays])


def test_top_examples_of_images_of_several_sizes():
    """A fully convolutional model fed each image at its own size: the running maps were viewed
    to the next batch's size (RuntimeError). Each example now has its own map, box and field."""
    torch.manual_seed(0)
    net = _positive(
        nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.Conv2d(4, 4, 3, stride=2))
    )
    model = sl.Model(net, preprocess=_own_size)
    rng = np.random.default_rng(1)
    photos = [
        Image.fromarray(rng.integers(0, 255, (h, w, 3), np.uint8))
        for h, w in [(24, 24), (20, 36), (31, 17)]
    ]
    found = top_examples(model, photos, "1", 1, k=3, batch_size=1)
    values = []
    for im in photos:
        with torch.no_grad():
            values.append(float(net(_own_size([im]))[0, 1].max()))
    assert [ex.index for ex in found] == np.argsort(values)[::-1].tolist()
    for ex in found:
        im = photos[ex.index]
        a = _upto(net, "1", _own_size([im]))[0, 1].detach()
        torch.testing.assert_close(ex.activation, a)
        assert ex.value == pytest.approx(values[ex.index])
        assert ex.image.size == im.size and ex.field.input_size == (im.height, im.width)
        y, x = ex.location
        assert a[y, x] == a.max()
        # first: -1 then -1 - 0·2: f = -1; stride 4; size 3 + 2·2 = 7 (clipped to the image).
        top, left = -1 + 4 * y, -1 + 4 * x
        box = (max(left, 0), max(top, 0), min(left + 7, im.width), min(top + 7, im.height))
        assert ex.box == box and ex.crop.size == (box[2] - box[0], box[3] - box[1])


def _counter(values):
    """Images of one gray level each; the model's channel 0 is the sum of a pixel's R, G, B
    (exact in float32 for whole numbers), so equal levels tie exactly in any batch."""
    conv = nn.Conv2d(3, 1, 1, bias=False)
    with torch.no_grad():
        conv.weight.fill_(1.0)

    def preprocess(images):
        arrays = [np.asarray(im.convert("RGB"), np.float32) for im in images]  # 0..255, whole
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()

    photos = [Image.new("RGB", (6, 6), (v, v, v)) for v in values]
    return sl.Model(nn.Sequential(conv).eval(), preprocess=preprocess), photos


@pytest.mark.parametrize("batch_size", [1, 2, 3, 5, 16])
def test_top_examples_break_ties_by_the_earlier_image(batch_size):
    """Five equal images gave a, b at batch size 1; d, e at 3; c, e at 5 and 16."""
    levels = [40, 90, 90, 60, 90, 40, 90]
    model, photos = _counter(levels)
    found = top_examples(model, photos, "0", 0, k=4, batch_size=batch_size)
    order = sorted(range(len(levels)), key=lambda i: (-levels[i], i))[:4]
    assert [ex.index for ex in found] == order == [1, 2, 4, 6]
    assert [ex.value for ex in found] == [3.0 * levels[i] for i in order]
    model, photos = _counter([50] * 5)
    assert [e.index for e in top_examples(model, photos, "0", 0, 2, batch_size)] == [0, 1]


# -- 7. neurons on 1-D maps ------------------------------------------------------------------------


def test_a_neuron_on_a_conv1d_map_is_read_at_x_along_its_length():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv1d(2, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool1d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    ).eval()
    x = torch.randn(2, 2, 10)
    for target, where in [(neuron("0", 1), 5), (neuron("0", 1, x=3), 3)]:
        ex = sl.explain(net, x, methods="saliency", target=target)
        xg = x.clone().requires_grad_(True)
        a = _upto(net, "0", xg)
        (g,) = torch.autograd.grad(a[:, 1, where].sum(), xg)
        torch.testing.assert_close(ex.target_values, a[:, 1, where].detach())
        torch.testing.assert_close(ex["saliency"].attributions, g.abs())
        assert str(target) == f"channel 1 of 0 at (x={where})"
    with pytest.raises(SaliencelabError, match=r"no rows; leave y out"):
        sl.explain(net, x, methods="saliency", target=neuron("0", 1, y=0, x=3))
    with pytest.raises(SaliencelabError, match=r"x=10 is outside the 1-D map of length 10"):
        sl.explain(net, x, methods="saliency", target=neuron("0", 1, x=10))
    with pytest.raises(SaliencelabError, match=r"\(B, C\), which has no positions"):
        sl.explain(net, x, methods="saliency", target=neuron("4", 1, y=0, x=0))
    assert _no_hooks(net)


# -- 8. a leaf module that keeps the resolution ----------------------------------------------------


class _Twice(nn.Module):
    """Keeps the resolution, doubles the channels: [x, 2x]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, 2 * x], 1)


def test_a_leaf_module_that_keeps_the_resolution_keeps_the_field():
    model = _positive(
        nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), _Twice(), nn.Conv2d(4, 2, 3, stride=2))
    )
    rf = receptive_field(model, "2", (16, 16))
    # r: 3, then 3 + 2 = 5; jump 1, 2; first -1, -1.
    assert (rf.size, rf.stride, rf.first, rf.map_size) == ((5, 5), (2, 2), (-1, -1), (7, 7))
    for y, x in [(0, 0), (3, 4), (6, 6)]:
        assert rf.box(y, x) == _support_box(model, "2", 16, y, x)


# -- 9. layers the forward never runs --------------------------------------------------------------


def test_a_layer_the_forward_never_runs_is_named_as_such(tiny_cnn, images):
    """Without a target the sentences spoke of "the target's layer" and of a neuron or channel
    target stopping the forward."""
    net = _Unused().train()
    before = _state(net)
    x = torch.rand(2, 3, 8, 8)
    for by in ("activation", "contribution"):
        with pytest.raises(SaliencelabError) as err:
            activations(net, x, "unused", by=by)
        text = str(err.value)
        assert text.startswith("The layer unused was not run by the model's forward;")
        assert "target" not in text
    assert _no_hooks(net) and _state(net) == before
    with pytest.raises(SaliencelabError) as err:
        activations(
            tiny_cnn, images, "features.3", by="contribution", target=sl.channel("features.1", 0)
        )
    text = str(err.value)
    assert "features.3 was not run" in text and "channel 0 of features.1" in text
    assert _no_hooks(tiny_cnn)


# -- 10 and 11. input sizes, the command's stride --------------------------------------------------


def test_receptive_field_refuses_a_bad_input_size():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1)).eval()
    for bad in [(-3, 4), (2.5, 3), (0, 5), (4,), (True, 4)]:
        with pytest.raises(SaliencelabError, match="two whole numbers of pixels"):
            receptive_field(net, "0", bad)
    assert receptive_field(net, "0", (np.int64(5), 6)).map_size == (5, 6)


ANISO = textwrap.dedent(
    """
    import numpy as np
    import torch
    from torch import nn

    import saliencelab as sl


    def build():
        torch.manual_seed(0)
        module = nn.Sequential(
            nn.Conv2d(3, 4, 3, stride=(1, 4), padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1)
        )

        def preprocess(images):
            arrays = [np.asarray(im.convert("RGB").resize((32, 32)), np.float32) for im in images]
            return torch.from_numpy(np.stack(arrays) / 255).permute(0, 3, 1, 2).float()

        return sl.Model(module, preprocess=preprocess, input_size=32)
    """
)


def test_examples_command_prints_both_strides(tmp_path):
    """Strides (1, 4): the field is 3 + 2 = 5 rows and 3 + 2·4 = 11 columns; the command said
    "stride 1"."""
    factory = tmp_path / "aniso.py"
    factory.write_text(ANISO)
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), np.uint8)).save(tmp_path / f"p{i}.png")
    runner = CliRunner(env={"COLUMNS": "200", "SALIENCELAB_DEBUG": None})
    args = ["neurons", "--examples", str(tmp_path), "--model", f"{factory}:build", "--layer", "2"]
    res = runner.invoke(command_app(), [*args, "--channel", "1", "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    assert "receptive field 5x11 px, stride 1x4." in " ".join(res.output.split())


def test_top_examples_read_a_pil_image_as_load_image_reads_its_file(tmp_path):
    """PIL images were read with convert('RGB'): a 16-bit gray photo clipped to white and an
    RGBA photo's transparent pixels drawn black, where `sl.load_image` of the same file (and
    every preprocess) stretches 16-bit values and lays transparency on white."""
    net = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1))

    def preprocess(images):
        arrays = [np.asarray(im.resize((16, 16)), np.float32) / 255 for im in images]
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()

    model = sl.Model(net.eval(), preprocess=preprocess, input_size=16)
    gray16 = Image.fromarray((np.arange(256).reshape(16, 16) * 16).astype(np.uint16))
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:, 8:, 3] = 255  # red on the right half, transparent (red hidden) on the left
    for k, photo in enumerate([gray16, Image.fromarray(rgba)]):
        path = tmp_path / f"photo{k}.png"
        photo.save(path)
        (from_pil,) = top_examples(model, [photo], "0", 0, k=1)
        (from_file,) = top_examples(model, [path], "0", 0, k=1)
        assert from_pil.value == pytest.approx(from_file.value)
        assert np.array_equal(np.asarray(from_pil.image), np.asarray(from_file.image))
    assert np.asarray(from_pil.image)[0, 0].tolist() == [255, 255, 255]  # white, not black


def test_activation_maps_of_a_conv1d_layer_ask_for_a_2d_one():
    """On a Conv1d layer the refusal said "pick a convolutional layer", which it is."""
    net = nn.Sequential(nn.Conv1d(3, 4, 3, padding=1)).eval()
    with pytest.raises(SaliencelabError, match=r"outputs shape \(2, 4, 8\).*2-D convolutional"):
        activations(net, torch.rand(2, 3, 8), "0")
