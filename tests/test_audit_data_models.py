"""Audit of saliencelab.data and saliencelab.models: edges the main tests leave open (found by
mutation).

Data: the shapes generator's documented object sizes, watermark share, subsets, argument checks
and cross masks at their boundary; premultiplied alpha; the sample photographs. Models: the
logits inside outputs, labels and devices of `sl.Model`, dtype casting, spec and weights loading,
black-box scores, square crops, TensorFlow "same" padding, the ViT's pooling and attention,
shapes preprocessing, and Hugging Face loading. References: the docstrings, numbers by hand,
NumPy / PIL / scikit-image, and PyTorch's own modules.
"""

from __future__ import annotations

import math
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import saliencelab as sl
from saliencelab.core.errors import SaliencelabError
from saliencelab.data import shapes
from saliencelab.data.images import to_rgb
from saliencelab.data.samples import sample_image
from saliencelab.models import shapes as shape_models
from saliencelab.models.blackbox import blackbox
from saliencelab.models.efficientnet_lite import Conv2dSame
from saliencelab.models.model import Model, as_model_input, logits_of, parameter_dtype
from saliencelab.models.square import SquarePreprocess
from saliencelab.models.vit import Attention, TinyViT, shapes_on_noise
from saliencelab.models.zoo import list_models, load_model

# -- the shapes generator --------------------------------------------------------------------------


def test_default_object_sides_span_14_to_22_pixels_at_64():
    """The module docstring: sides drawn uniformly from about 22 % to 34 % of the side, "14 to
    22 pixels at 64 × 64", both ends included (9 values over 900 images: each ~100 times)."""
    sides = shapes.make(900, seed=21).boxes
    sides = (sides[:, 2] - sides[:, 0]).tolist()
    assert set(sides) == set(range(14, 23))


def test_watermark_fraction_is_the_share_of_watermarked_images():
    """`watermark_fraction` is the share of images that carry a watermark: 0.2 and 0.7 of 2000
    images, within 4 binomial standard deviations."""
    n = 2000
    for f in (0.2, 0.7):
        data = shapes.make(n, size=32, seed=5, shortcut=1.0, watermark_fraction=f)
        share = data.watermarked.float().mean().item()
        assert abs(share - f) < 4 * math.sqrt(f * (1 - f) / n), (f, share)
        assert (data.watermark_labels[data.watermarked] >= 0).all()


def test_a_subset_slices_every_per_sample_field():
    """`data[index]`: the samples at `index`, every (N, ...) field sliced, the shared masks
    and names kept."""
    data = shapes.make(10, seed=1, shortcut=0.5, backdoor=0.5)
    index = torch.tensor([7, 2, 5])
    sub = data[index]
    for name in (
        "images",
        "labels",
        "object_labels",
        "masks",
        "boxes",
        "watermarked",
        "watermark_labels",
        "triggered",
    ):
        assert torch.equal(getattr(sub, name), getattr(data, name)[index]), name
    assert torch.equal(sub.watermark_mask, data.watermark_mask) and sub.task == data.task
    assert len(sub) == 3 and sub.target == data.target


@pytest.mark.parametrize("kw", [{"shortcut": -0.1}, {"backdoor": -0.5}, {"backdoor": 1.01}])
def test_probabilities_outside_0_1_are_refused(kw):
    """shortcut and backdoor are probabilities in [0, 1] (or None): below 0 is refused too."""
    with pytest.raises(SaliencelabError, match="is a probability in"):
        shapes.make(4, **kw)


def test_cross_masks_include_their_boundary():
    """A cross of arms 0.35 wide: |u| ≤ 0.35 or |v| ≤ 0.35 (≤, the docstring's formula). At a
    side of 20 pixels columns 6 and 13 lie exactly at |u| = 0.35: drawn pixel by pixel in
    float64, the reference includes them."""
    data = shapes.make(40, size=40, seed=3, task="shape", object_size=(20, 20))
    crosses = (data.object_labels == 3).nonzero().flatten().tolist()
    assert crosses
    for i in crosses:
        left, top, right, bottom = data.boxes[i].tolist()  # xyxy
        assert (right - left, bottom - top) == (20, 20)
        ref = torch.zeros(40, 40, dtype=torch.bool)
        for r in range(top, top + 20):
            for c in range(left, left + 20):
                u, v = (c - (left + 9.5)) / 10, (r - (top + 9.5)) / 10
                ref[r, c] = abs(u) <= 0.35 or abs(v) <= 0.35
        assert torch.equal(data.masks[i], ref), i
        assert data.masks[i, top, left + 6] and data.masks[i, top, left + 13]


# -- images and samples ----------------------------------------------------------------------------


def test_premultiplied_alpha_is_composited_on_white():
    """RGBa (premultiplied alpha, band "a") is transparency too: a clear pixel becomes white,
    an opaque one keeps its colour (load_image's docstring)."""
    a = np.zeros((1, 2, 4), np.uint8)
    a[0, 1] = (200, 100, 50, 255)
    img = Image.fromarray(a, "RGBA").convert("RGBa")
    out = np.asarray(to_rgb(img))
    assert out[0, 0].tolist() == [255, 255, 255] and out[0, 1].tolist() == [200, 100, 50]


def test_motorcycle_is_the_left_view_of_the_stereo_pair():
    """The sample "motorcycle" is scikit-image's stereo_motorcycle()[0], the left view."""
    skimage_data = pytest.importorskip("skimage.data")
    left = skimage_data.stereo_motorcycle()[0]
    np.testing.assert_array_equal(np.asarray(sample_image("motorcycle")), left)


# -- sl.Model --------------------------------------------------------------------------------------


class _Outputs(nn.Module):
    """A linear layer whose forward returns its logits inside a container of `kind`."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.kind = kind

    def forward(self, x):
        logits = self.fc(x)
        aux = logits.detach() * 0 - 1
        if self.kind == "tuple":
            return logits, aux  # as HF models with return_dict=False: logits first
        return {"out": aux, "hidden": aux, "logits": logits}


@pytest.mark.parametrize("kind", ["tuple", "dict"])
def test_model_output_logits_are_the_first_item_or_the_logits_key(kind):
    """logits_of: the first item of a tuple, the "logits" entry of a dict even when other keys
    ("out") are present; compared with the linear layer by hand."""
    module = _Outputs(kind)
    x = torch.randn(2, 4)
    expected = module.fc(x)
    torch.testing.assert_close(Model(module)(x), expected)
    torch.testing.assert_close(logits_of(module(x)), expected)


def test_model_label_of_an_index_outside_the_labels_is_the_number():
    """Indices that are no class (negative: a custom target's -1, or past the end) print as the
    number, never as a class counted from the end."""
    model = Model(nn.Linear(2, 3), labels=["a", "b", "c"])
    assert [model.label(i) for i in (0, 2)] == ["a", "c"]
    assert model.label(-1) == "-1" and model.label(3) == "3"


def test_model_device_of_a_module_with_only_buffers():
    """A module without parameters lives where its buffers are (here the meta device)."""
    module = nn.Module()
    module.register_buffer("table", torch.zeros(3, device="meta"))
    assert Model(module).device == torch.device("meta")
    assert Model(nn.Identity()).device == torch.device("cpu")


def test_inputs_take_the_first_floating_tensors_dtype():
    """parameter_dtype: the first *floating* parameter or buffer (an integer counter before a
    float64 table is skipped), and float inputs are cast to it, integer ones kept."""
    module = nn.Module()
    module.register_buffer("count", torch.zeros(1, dtype=torch.long))
    module.register_buffer("table", torch.zeros(3, dtype=torch.float64))
    model = Model(module)
    assert parameter_dtype(model) == torch.float64
    assert as_model_input(model, torch.ones(2, 3)).dtype == torch.float64
    assert as_model_input(model, torch.ones(2, 3, dtype=torch.long)).dtype == torch.long


# -- loading ---------------------------------------------------------------------------------------

FACTORY = """
import torch
from torch import nn


class Wrapper(nn.Module):
    def __init__(self):
        super().__init__()
        self.module = nn.Linear(3, 2)  # a submodule really named "module"
        self.head = nn.Linear(2, 2)

    def forward(self, x):
        return self.head(self.module(x))


def build():
    return Wrapper()
"""


@pytest.fixture
def factory(tmp_path):
    path = tmp_path / "wrapped_net.py"
    path.write_text(FACTORY)
    return f"{path}:build"


def test_weights_of_a_model_with_a_submodule_named_module_load_as_saved(tmp_path, factory):
    """Only a "module." prefix on *every* key (nn.DataParallel) is removed: a model whose own
    submodule is called "module" loads its weights unchanged (outputs as the saved model's)."""
    torch.manual_seed(0)
    ref = load_model(factory)
    path = tmp_path / "w.pt"
    torch.save(ref.module.state_dict(), path)
    loaded = load_model(factory, weights=path)
    x = torch.randn(4, 3)
    torch.testing.assert_close(loaded(x), ref(x))


def test_training_checkpoints_with_model_state_dict_load(tmp_path, factory):
    """The usual PyTorch training checkpoint {"epoch", "model_state_dict", "optimizer_state_dict"}
    loads its model_state_dict."""
    torch.manual_seed(1)
    ref = load_model(factory)
    opt = torch.optim.SGD(ref.module.parameters(), lr=0.1)
    path = tmp_path / "checkpoint.pt"
    torch.save(
        {
            "epoch": 3,
            "model_state_dict": ref.module.state_dict(),
            "optimizer_state_dict": opt.state_dict(),
        },
        path,
    )
    x = torch.randn(4, 3)
    torch.testing.assert_close(load_model(factory, weights=path)(x), ref(x))


def test_weights_with_missing_keys_are_one_sentence(tmp_path, factory):
    """Missing keys fail with the sentence, not PyTorch's RuntimeError; a list cut after three
    names says so with "..." (4 keys missing here)."""
    ref = load_model(factory)
    path = tmp_path / "w.pt"
    torch.save({"other.weight": torch.zeros(1)}, path)
    with pytest.raises(SaliencelabError, match="do not fit") as err:
        load_model(factory, weights=path)
    message = str(err.value)
    assert "4 missing keys: " in message and "1 unexpected keys: other.weight" in message
    shown = message.split("4 missing keys: ")[1].split(", 1 unexpected")[0]
    assert shown.endswith(", ...") and len(shown.split(", ")) == 4
    assert set(shown.split(", ")[:3]) <= set(ref.module.state_dict())


def test_loading_a_factory_file_leaves_sys_path_and_sys_modules_as_they_were(tmp_path, factory):
    """The file's folder is on sys.path only while it is imported; a file that fails to import
    leaves no half-imported module behind."""
    before = list(sys.path)
    load_model(factory)
    assert sys.path == before
    broken = tmp_path / "broken_audit.py"
    broken.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(SaliencelabError, match="boom"):
        load_model(f"{broken}:build")
    assert sys.path == before
    assert not [name for name in sys.modules if "broken_audit" in name]


def test_a_missing_model_file_with_an_upper_case_suffix_is_a_missing_file(tmp_path, monkeypatch):
    """MODEL.PT names a model file (suffixes are case-insensitive, as on Windows): a missing one
    is reported as a missing file, not as an unknown model name."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SaliencelabError, match="Model file 'MISSING.PT' does not exist"):
        load_model("MISSING.PT")


def test_list_models_is_sorted_names_then_sorted_schemes():
    """list_models' docstring: registered names sorted, then the schemes as "prefix:..."."""
    names = list_models()
    plain = [n for n in names if not n.endswith(":...")]
    schemes = [n for n in names if n.endswith(":...")]
    assert names == plain + schemes and plain == sorted(plain) and schemes == sorted(schemes)
    assert "hf:..." in schemes and "shapes_cnn" in plain


# -- black boxes -----------------------------------------------------------------------------------


def test_blackbox_scores_as_a_python_list_of_floats():
    """A function returning one score per input as a plain list (N,) gives scores (N, 1)
    (BlackBox's docstring: a tensor, an array, a list...)."""
    model = blackbox(lambda t: [float(v) for v in t.flatten(1).sum(1)])
    x = torch.randn(3, 2, 4, 4)
    torch.testing.assert_close(model(x), x.flatten(1).sum(1, keepdim=True), check_dtype=False)


def test_blackbox_integer_scores_are_floats():
    """Votes (integers) become floating scores, so occlusion's differences are fractional
    averages as for the same scores given as floats."""
    x = torch.randn(2, 3, 8, 8)
    votes = blackbox(lambda t: (t.flatten(1) > 0).sum(1, keepdim=True))
    floats = blackbox(lambda t: (t.flatten(1) > 0).sum(1, keepdim=True).float())
    assert votes(x).dtype == torch.get_default_dtype()
    a = sl.explain(votes, x, methods="occlusion", target=0, window=4, stride=4)["occlusion"]
    b = sl.explain(floats, x, methods="occlusion", target=0, window=4, stride=4)["occlusion"]
    torch.testing.assert_close(a.attributions, b.attributions)


def test_blackbox_refuses_an_input_that_wants_gradients():
    """Called on an input that requires grad (grad enabled), a black box says it has no
    gradients (module docstring: one sentence), rather than returning detached scores."""
    model = blackbox(lambda t: t.flatten(1).sum(1))
    x = torch.randn(2, 3, requires_grad=True)
    with pytest.raises(SaliencelabError, match="needs gradients"):
        model(x)
    with torch.no_grad():
        assert model(x).shape == (2, 1)


# -- square preprocessing and TensorFlow "same" padding -------------------------------------------


def test_square_preprocess_crops_the_central_square_of_a_portrait_photo():
    """A photo 10 wide and 30 high whose rows 10..19 (the central square) alone are white:
    the input is all ones ((255 / 255 - 0) / 1)."""
    img = np.zeros((30, 10, 3), np.uint8)
    img[10:20] = 255
    x = SquarePreprocess(10, 0.0, 1.0, divisor=255.0)(Image.fromarray(img))
    assert x.shape == (1, 3, 10, 10) and torch.equal(x, torch.ones_like(x))


def test_square_preprocess_to_a_non_square_size_is_height_by_width():
    """size=(8, 12): batches (B, 3, 8, 12) and a display 12 wide, 8 high (PIL's (W, H))."""
    pre = SquarePreprocess((8, 12))
    img = Image.new("RGB", (20, 30), (10, 20, 30))
    assert pre([img, img]).shape == (2, 3, 8, 12)
    assert pre.display(img).size == (12, 8)


def test_conv2d_same_pads_as_tensorflow_on_a_non_square_input():
    """TensorFlow "same", kernel 3, stride 2, on 7 x 8: out = ceil(in / 2) = 4 x 4; rows pad
    total 3·2 + 3 - 7 = 2 → (1, 1), columns 3·2 + 3 - 8 = 1 → (0, 1), the extra after. The
    reference pads by hand, then runs a plain unpadded convolution."""
    torch.manual_seed(0)
    conv = Conv2dSame(3, 2, 3, stride=2)
    x = torch.randn(1, 3, 7, 8)
    ref = F.conv2d(F.pad(x, [0, 1, 1, 1]), conv.weight, conv.bias, stride=2)
    assert ref.shape == (1, 2, 4, 4)
    torch.testing.assert_close(conv(x), ref)
    # stride 1 keeps the size, padded 1 on every side as nn.Conv2d(padding=1)
    one = Conv2dSame(3, 2, 3)
    x = torch.randn(1, 3, 5, 6)
    torch.testing.assert_close(one(x), F.conv2d(x, one.weight, one.bias, padding=1))


# -- the tiny ViT ----------------------------------------------------------------------------------


def test_vit_tokens_are_class_then_registers_then_patches():
    """TinyViT's docstring: [class, registers…, patches] tokens + positions (zero positions and
    known class and register tokens here)."""
    vit = TinyViT(image_size=8, patch_size=4, dim=6, depth=1, heads=2, registers=2)
    with torch.no_grad():
        vit.pos_embed.zero_()
        vit.cls_token.fill_(7.0)
        vit.reg_token.copy_(torch.arange(12.0).view(1, 2, 6))
    x = torch.randn(2, 3, 8, 8)
    tokens = vit.tokens(x).detach()
    assert tokens.shape == (2, 1 + 2 + 4, 6)
    assert (tokens[:, 0] == 7).all()
    assert torch.equal(tokens[:, 1:3], torch.arange(12.0).view(1, 2, 6).expand(2, -1, -1))
    patches = vit.patch_embed(x).flatten(2).transpose(1, 2).detach()
    torch.testing.assert_close(tokens[:, 3:], patches)


def test_vit_mean_pooling_skips_the_class_and_register_tokens():
    """pool="avg": the head reads the mean of the patch tokens only (after the final norm),
    recomputed with forward hooks."""
    torch.manual_seed(0)
    vit = TinyViT(image_size=8, patch_size=4, dim=6, depth=1, heads=2, registers=2, pool="avg")
    vit.eval()
    seen = {}
    handle = vit.norm.register_forward_hook(lambda m, i, o: seen.setdefault("out", o))
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        logits = vit(x)
    handle.remove()
    torch.testing.assert_close(logits, vit.head(seen["out"][:, 3:].mean(dim=1)).detach())


def test_vit_fused_and_explicit_attention_agree():
    """The explicit softmax(Q Kᵀ / √d_head) V path equals PyTorch's scaled_dot_product_attention
    (the fused path), whose scale is 1 / √d_head."""
    torch.manual_seed(0)
    attn = Attention(dim=8, heads=2)
    x = torch.randn(2, 5, 8)
    fused = attn(x)
    attn.fused_attn = False
    torch.testing.assert_close(attn(x), fused, atol=1e-6, rtol=1e-5)


def test_shapes_on_noise_uses_every_position():
    """ "placed uniformly at random": over 400 images of 12 x 12 with shapes of 8, every top and
    left from 0 to 12 - 8 = 4 occurs (each about 80 times), none beyond."""
    _, _, boxes = shapes_on_noise(400, size=12, side=8, seed=1)
    assert set(boxes[:, 0].tolist()) == set(range(5)) == set(boxes[:, 1].tolist())


# -- the shapes models -----------------------------------------------------------------------------


def test_shapes_preprocess_of_gray_inputs_matches_pil_gray():
    """Gray pixels as an H x W x 1 uint8 array, or a (1, 1, H, W) tensor, give the three equal
    channels PIL's gray-to-RGB conversion gives."""
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (64, 64), dtype=np.uint8)
    expected = shape_models.preprocess(Image.fromarray(gray, "L"))
    assert expected.shape == (1, 3, 64, 64)
    torch.testing.assert_close(shape_models.preprocess(gray[..., None]), expected)
    tensor = torch.from_numpy(gray.astype(np.float32) / 255)[None, None]
    torch.testing.assert_close(shape_models.preprocess(tensor), expected)


def test_shapes_preprocess_downscales_with_antialiasing():
    """ "resized (bilinear)", antialiased: a 1-pixel checkerboard at 128 x 128 halves to an even
    grey (every output pixel averages black and white), not to one of its two colours."""
    i = torch.arange(128)
    board = ((i[:, None] + i[None, :]) % 2).float().expand(1, 3, -1, -1)
    x = shape_models.preprocess(board)
    assert x.shape == (1, 3, 64, 64)
    assert (x - 0.5).abs().max() < 0.2


def test_a_colour_recipe_labels_the_model_with_colour_names():
    """A recipe's `data` are `make` options: with task="colour" the classes are the colours."""
    recipe = shape_models.Recipe("cnn", "none.pt", data={"task": "colour"})
    model = shape_models.as_shapes_model(shape_models.ShapesCNN(), "colours", recipe)
    assert model.labels == list(shapes.COLOUR_CLASSES) and model.extra["task"] == "colour"


# -- Hugging Face loading --------------------------------------------------------------------------


def test_text_length_limit_is_the_smallest_real_limit():
    """The limit is the smallest of the model's positions and the tokenizer's length; the
    tokenizer's "no limit" sentinel (transformers' VERY_LARGE_INTEGER, 1e30) is no limit;
    with none known, 512."""
    from saliencelab.models.hf import _max_length

    config = SimpleNamespace(max_position_embeddings=24)
    assert _max_length(config, SimpleNamespace(model_max_length=512), None) == 24
    assert _max_length(SimpleNamespace(), SimpleNamespace(model_max_length=512), 128) == 128
    assert _max_length(SimpleNamespace(), SimpleNamespace(model_max_length=int(1e30)), None) == 512


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    """A tiny BERT classifier (24 positions) with a WordLevel tokenizer, saved offline."""
    pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    words = ["[PAD]", "[UNK]", "a", "cat", "sat"]
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(words),
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=24,
    )
    path = tmp_path_factory.mktemp("audit-bert")
    BertForSequenceClassification(config).eval().save_pretrained(path)
    PreTrainedTokenizerFast(
        tokenizer_object=tk, unk_token="[UNK]", pad_token="[PAD]"
    ).save_pretrained(path)
    return path


def test_hf_max_length_cannot_exceed_the_models_positions(bert_dir):
    """max_length= lowers the limit (10) but cannot raise it past the 24 positions."""
    assert load_model(f"hf:{bert_dir}", max_length=10).max_length == 10
    assert load_model(f"hf:{bert_dir}", max_length=100).max_length == 24


def test_hf_loading_restores_the_transformers_log_level(bert_dir):
    """_quiet_transformers' docstring: the log level and progress bars are restored."""
    from transformers.utils import logging as hf_logging

    before = hf_logging.get_verbosity()
    hf_logging.set_verbosity_info()
    try:
        load_model(f"hf:{bert_dir}")
        assert hf_logging.get_verbosity() == hf_logging.INFO
    finally:
        hf_logging.set_verbosity(before)


def test_an_unconvertible_transparent_mode_is_one_sentence():
    """Pillow cannot convert "La" (premultiplied luminance + alpha) to RGBA: one sentence, as
    for the modes without transparency (was a bare ValueError)."""
    from PIL import Image

    from saliencelab.data.images import to_rgb

    with pytest.raises(sl.SaliencelabError, match="Cannot convert an image in Pillow mode 'La'"):
        to_rgb(Image.new("La", (2, 2)))
