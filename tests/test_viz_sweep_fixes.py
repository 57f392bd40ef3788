"""Drawing defects a read-only sweep found: each test failed on the code before its fix."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from saliencelab.core.errors import SaliencelabError
from saliencelab.core.result import Attribution
from saliencelab.viz.gallery import _legend_labels, gallery
from saliencelab.viz.normalize import normalize_map
from saliencelab.viz.overlay import overlay


def attribution(maps: torch.Tensor, method: str = "m", signed: bool = False, **kw) -> Attribution:
    b = maps.shape[0]
    return Attribution(
        method, maps, maps[:, None], torch.zeros(b, dtype=torch.long), signed=signed, **kw
    )


def photo(w: int = 48, h: int = 48, color=(120, 160, 200)) -> Image.Image:
    return Image.new("RGB", (w, h), color)


def pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img).astype(int)


def a_map(seed: int = 0, shape=(16, 16)) -> np.ndarray:
    return np.random.default_rng(seed).random(shape)


# --- A. attributions sharing a method name ---------------------------------------------------


def test_gallery_draws_every_attribution_that_shares_a_method_name():
    """[gradcam at features.3, gradcam at features.12]: only the last used to be drawn."""
    a1 = attribution(torch.rand(1, 8, 8), "gradcam", layer="features.3")
    a2 = attribution(torch.rand(1, 8, 8), "gradcam", layer="features.12")
    one = gallery(photo(), [a1], tile=64, legend=False)
    two = gallery(photo(), [a1, a2], tile=64, legend=False)
    three = gallery(photo(), [a1, a2, a1], tile=64, legend=False)  # same layer: numbered
    assert one.height == two.height == three.height
    assert one.width < two.width < three.width  # one more map tile each time


def test_gallery_methods_filter_picks_every_tile_of_a_shared_method_name():
    a1 = attribution(torch.rand(1, 8, 8), "gradcam", layer="features.3")
    a2 = attribution(torch.rand(1, 8, 8), "gradcam", layer="features.12")
    both = gallery(photo(), [a1, a2], tile=64, legend=False)
    assert gallery(photo(), [a1, a2], methods=["gradcam"], tile=64, legend=False).size == both.size
    one = gallery(photo(), [a1, a2], methods=["gradcam (features.3)"], tile=64, legend=False)
    assert one.width < both.width


# --- B. NumPy arrays torch.from_numpy cannot take ---------------------------------------------


@pytest.mark.parametrize(
    "convert",
    [
        np.flipud,
        lambda m: m[::-1, ::-1],
        lambda m: m.astype(">f4"),
        lambda m: m.astype(">f8"),
        lambda m: m.astype(np.longdouble),
        lambda m: m.astype(object),
    ],
    ids=["flipud", "reversed", "big-endian-f4", "big-endian-f8", "longdouble", "object"],
)
def test_unusual_numpy_maps_draw_like_their_plain_copy(convert):
    m = a_map().astype(np.float32)
    odd = convert(m)
    plain = np.ascontiguousarray(np.asarray(odd, dtype=np.float32))
    assert np.array_equal(pixels(overlay(photo(), odd)), pixels(overlay(photo(), plain)))


def test_an_object_array_of_non_numbers_is_refused_in_one_sentence():
    m = np.array([["a", "b"], ["c", "d"]], dtype=object)
    with pytest.raises(SaliencelabError, match="object array"):
        overlay(photo(), m)


# --- C. float64 maps are normalised in float64 ------------------------------------------------


@pytest.mark.parametrize("scale", [1e-50, 1e-300, 1e39, 1e300])
@pytest.mark.parametrize("signed", [False, True])
def test_a_float64_map_is_drawn_the_same_at_any_scale(scale, signed):
    m = torch.from_numpy(a_map() - (0.5 if signed else 0.0))
    ref = normalize_map(m, signed=signed)
    scaled = normalize_map(m * scale, signed=signed)
    assert torch.allclose(scaled, ref, atol=1e-6)
    assert np.abs(pixels(overlay(photo(), m * scale)) - pixels(overlay(photo(), m))).max() <= 1


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_every_float_dtype_still_draws(dtype):
    m = torch.from_numpy(a_map()).to(dtype)
    out = normalize_map(m, signed=False)
    assert out.dtype == torch.float32 and float(out.max()) == 1.0 and float(out.min()) == 0.0
    ref = overlay(photo(), m.float())
    assert np.abs(pixels(overlay(photo(), m)) - pixels(ref)).max() <= 1


# --- D. clip_percentile as any real number ----------------------------------------------------


@pytest.mark.parametrize(
    "q", [np.float32(99), np.float64(99), np.int64(99), torch.tensor(99.0), torch.tensor(99)]
)
def test_clip_percentile_accepts_numpy_scalars_and_0d_tensors(q):
    m = torch.from_numpy(a_map())
    assert torch.equal(
        normalize_map(m, signed=False, clip_percentile=q), normalize_map(m, False, 99)
    )
    assert np.array_equal(
        pixels(overlay(photo(), m, clip_percentile=q)),
        pixels(overlay(photo(), m, clip_percentile=99)),
    )


@pytest.mark.parametrize(
    "q", [True, np.bool_(True), 0, 150, np.float32(0), torch.tensor(101.0), float("nan"), "99"]
)
def test_clip_percentile_still_refuses_bools_and_out_of_range(q):
    with pytest.raises(SaliencelabError, match="clip_percentile"):
        normalize_map(torch.rand(4, 4), signed=False, clip_percentile=q)


# --- E. a constant map draws as the bare photo ------------------------------------------------


@pytest.mark.parametrize("value", [-3.0, 0.0, 3.0, 1e-30])
@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("cmap", [None, "gray"])
def test_a_constant_map_draws_as_the_bare_photo_exactly(value, signed, cmap):
    pic = photo(32, 32)
    a = attribution(torch.full((1, 8, 8), value), "flat", signed=signed)
    assert np.array_equal(pixels(overlay(pic, a, cmap=cmap)), pixels(pic))


# --- F. one-sentence errors instead of tracebacks ---------------------------------------------


@pytest.mark.parametrize("sample", [1.0, True, "1", None])
def test_sample_must_be_a_whole_number(sample):
    with pytest.raises(SaliencelabError, match="sample must be a whole number"):
        overlay(photo(), torch.rand(2, 8, 8), sample=sample)
    with pytest.raises(SaliencelabError, match="sample must be a whole number"):
        gallery(photo(), attribution(torch.rand(2, 8, 8)), sample=sample)


def test_numpy_and_tensor_integer_samples_still_work():
    m = torch.rand(2, 8, 8)
    ref = pixels(overlay(photo(), m, sample=1))
    assert np.array_equal(pixels(overlay(photo(), m, sample=np.int64(1))), ref)
    assert np.array_equal(pixels(overlay(photo(), m, sample=torch.tensor(1))), ref)


@pytest.mark.parametrize("alpha", ["0.5", None, True, 1.5, float("nan")])
def test_alpha_must_be_a_number_between_0_and_1(alpha):
    with pytest.raises(SaliencelabError, match="alpha must be"):
        overlay(photo(), torch.rand(8, 8), alpha=alpha)


def test_alpha_as_a_numpy_scalar_works():
    m = torch.rand(8, 8)
    assert np.array_equal(
        pixels(overlay(photo(), m, alpha=np.float32(0.5))), pixels(overlay(photo(), m, alpha=0.5))
    )


@pytest.mark.parametrize("size", [(0, 0), (0, 10), (10, 0)])
def test_an_empty_photo_is_refused_in_one_sentence(size):
    with pytest.raises(SaliencelabError, match="nothing to draw on"):
        overlay(Image.new("RGB", size), torch.rand(8, 8))


# --- G. legend labels that do not fit ---------------------------------------------------------


@pytest.mark.parametrize("width", [16, 32, 48, 64, 160])
@pytest.mark.parametrize(
    "labels", [["low", "high"], ["negative", "0", "positive"]], ids=["heat", "diverging"]
)
def test_legend_labels_never_overlap_or_overflow(width, labels):
    from PIL import ImageDraw

    placed, font = _legend_labels(labels, width, 11)
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    spans = sorted((x, x + draw.textlength(text, font=font)) for x, text in placed)
    for x0, x1 in spans:
        assert 0 <= x0 and x1 <= width
    for (_, right), (left, _) in zip(spans, spans[1:], strict=False):
        assert left > right  # at least a pixel apart: no "lowhigh"
    if width >= 160:
        assert [t for _, t in placed] == labels  # wide bars keep every label at full size


def test_a_32_pixel_gallery_has_a_legend_without_overlapping_labels():
    a = attribution(torch.rand(1, 8, 8))
    img = gallery(photo(), a, tile=32)
    assert img.width > 0  # drawn; the label layout is checked above


def test_names_too_long_for_their_tile_keep_their_start_and_end():
    """Method names are shortened in the middle: at a small tile gradcam_plus_plus and gradcam
    were both drawn "gra…"; legends and bar labels of the charts do the same."""
    from PIL import ImageDraw

    from saliencelab.viz.gallery import _fit, _font

    draw = ImageDraw.Draw(Image.new("RGB", (10, 10)))
    font = _font(12)
    width = int(draw.textlength("gradca", font=font))  # neither name fits
    for long, other in [("gradcam_plus_plus", "gradcam"), ("smoothgrad_sq", "smoothgrad")]:
        short = _fit(draw, long, font, width, middle=True)
        assert short[:2] == long[:2] and short[-1] == long[-1] and "…" in short
        assert draw.textlength(short, font=font) <= width
        assert short != _fit(draw, other, font, width, middle=True)
        assert _fit(draw, long, font, width) == _fit(draw, other, font, width)  # as they were
    assert _fit(draw, "gradcam", font, 200, middle=True) == "gradcam"  # fits: as it is
    assert _fit(draw, "gradcam_plus_plus", font, width).endswith("…")  # titles: cut at the end
    assert _fit(draw, "abc", font, 1, middle=True) == "…"  # nothing fits: the ellipsis alone
