"""viz/: colour maps, normalisation, overlays and galleries on synthetic images and maps."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from saliencelab.core.errors import SaliencelabError
from saliencelab.core.result import Attribution, Explanation
from saliencelab.data import shapes
from saliencelab.viz import (
    apply_colormap,
    colorbar_legend,
    colormap,
    gallery,
    heatmap,
    normalize_map,
    overlay,
    save_gallery,
    save_overlay,
)
from saliencelab.viz.colormaps import luminance
from saliencelab.viz.gallery import MAX_COLUMNS, PAD


def blob(h: int = 32, w: int = 32, cx: float = 0.5, cy: float = 0.5, s: float = 0.15):
    y, x = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    return torch.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * s**2))


def attribution(maps: torch.Tensor, method: str = "m", signed: bool = True, **kw) -> Attribution:
    b = maps.shape[0]
    return Attribution(
        method, maps, maps[:, None], torch.zeros(b, dtype=torch.long), signed=signed, **kw
    )


def photo(w: int = 80, h: int = 60, color=(120, 140, 160)) -> Image.Image:
    return Image.new("RGB", (w, h), color)


# --- colour maps -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["heat", "diverging", "gray"])
def test_tables_are_256_rgb_uint8(name):
    lut = colormap(name)
    assert lut.shape == (256, 3) and lut.dtype == np.uint8


def test_heat_runs_dark_to_bright_with_monotonic_luminance():
    lut = colormap("heat")
    lum = luminance(lut)
    assert lum[0] < 0.01 and lum[-1] > 0.8
    assert np.all(np.diff(lum) > 0)


def test_gray_endpoints():
    out = apply_colormap(np.array([0.0, 1.0]), "gray")
    assert out.tolist() == [[0, 0, 0], [255, 255, 255]]


def test_diverging_zero_is_white_and_ends_are_blue_and_red():
    out = apply_colormap(torch.tensor([[-1.0, 0.0, 1.0]]), "diverging")
    assert out.shape == (1, 3, 3)
    neg, zero, pos = out[0].astype(int)
    assert zero.tolist() == [255, 255, 255]
    assert neg[2] > neg[0]  # blue
    assert pos[0] > pos[2]  # red
    # lightness falls away from 0 on both sides
    lum = luminance(colormap("diverging"))
    assert np.all(np.diff(lum[:128]) >= 0) and np.all(np.diff(lum[128:]) <= 0)


def test_apply_colormap_clips_and_handles_nan():
    out = apply_colormap(np.array([-5.0, np.nan, 7.0]), "heat")
    lut = colormap("heat")
    assert out.tolist() == [lut[0].tolist(), lut[0].tolist(), lut[-1].tolist()]


def test_unknown_colormap_is_a_user_error():
    with pytest.raises(SaliencelabError, match="heat"):
        apply_colormap(np.zeros(3), "haet")


# --- normalisation -----------------------------------------------------------------------------


def test_signed_normalisation_keeps_zero_at_center():
    m = torch.tensor([[-2.0, 0.0, 1.0, 4.0]])
    out = normalize_map(m, signed=True, clip_percentile=None)
    assert out.tolist() == [[-0.5, 0.0, 0.25, 1.0]]


def test_unsigned_normalisation_is_min_max():
    m = torch.tensor([[2.0, 3.0, 4.0, 6.0]])
    out = normalize_map(m, signed=False, clip_percentile=None)
    assert out.tolist() == [[0.0, 0.25, 0.5, 1.0]]


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("value", [0.0, 3.0, -2.0])
def test_constant_maps_give_no_nan(signed, value):
    out = normalize_map(torch.full((2, 5, 5), value), signed=signed)
    assert torch.isfinite(out).all()
    # a constant carries no contrast: all cold (unsigned) or all 0 (signed), never full strength
    assert (out == 0.0).all()


@pytest.mark.parametrize("value", [-3.0, 3.0, 1e-30])
def test_a_constant_signed_map_draws_as_the_bare_photo(value):
    """A constant signed map used to become its sign, full strength: -3 everywhere painted the
    whole photo dark blue, like the strongest possible map."""
    pic = Image.new("RGB", (32, 32), (120, 160, 200))
    a = attribution(torch.full((1, 8, 8), value), "flat", signed=True)
    drawn = np.asarray(overlay(pic, a), dtype=np.float64)
    # a constant map: the bare photo, exactly (not the dimmed gray base of signed overlays)
    assert np.array_equal(drawn, np.asarray(pic, dtype=np.float64))


def test_percentile_clipping_ignores_one_outlier():
    m = torch.rand(50, 50, generator=torch.Generator().manual_seed(0))
    m[0, 0] = 1000.0
    clipped = normalize_map(m, signed=False, clip_percentile=99.0)
    raw = normalize_map(m, signed=False, clip_percentile=None)
    assert clipped.max() == 1.0 and clipped.median() > 0.3  # the bulk keeps its contrast
    assert raw.median() < 0.01  # without clipping the outlier squashes everything
    signed = normalize_map(m - 0.5, signed=True, clip_percentile=99.0)
    assert signed.max() == 1.0 and signed.min() >= -1.0 and (signed == 1.0).sum() > 1


@pytest.mark.parametrize("signed", [False, True])
def test_a_sparse_map_is_drawn_not_taken_for_a_constant_one(signed):
    """16 lit pixels of 64² (0.4 %, a 4×4 watermark): the 99.5th percentile is the map's
    minimum, which zeroed the whole map (the overlay was the bare photo). The percentile then
    gives way to the maximum: the map is min-max scaled (unsigned) or divided by max |m|."""
    m = torch.zeros(64, 64)
    m[2:6, 2:6] = 1.0
    if signed:
        m[40, 40] = -0.5
    got = normalize_map(m, signed=signed)
    want = m / m.abs().max() if signed else (m - m.min()) / (m.max() - m.min())
    torch.testing.assert_close(got, want)
    photo = Image.new("RGB", (64, 64), (128, 128, 128))
    drawn = np.asarray(overlay(photo, m, alpha=1.0))
    assert not (drawn[3, 3] == np.asarray(photo)[3, 3]).all()


def test_normalisation_is_per_map_and_keeps_shape_and_raw_map():
    m = torch.stack([torch.rand(8, 8), 100 * torch.rand(8, 8)])
    before = m.clone()
    out = normalize_map(m, signed=False)
    assert out.shape == m.shape
    assert torch.allclose(out.amax(dim=(1, 2)), torch.ones(2))
    assert torch.equal(m, before)


def test_normalisation_accepts_numpy_and_rejects_bad_shapes():
    assert normalize_map(np.ones((4, 4)), signed=True).shape == (4, 4)
    with pytest.raises(SaliencelabError, match="shape"):
        normalize_map(torch.zeros(1, 1, 4, 4), signed=True)
    with pytest.raises(SaliencelabError, match="clip_percentile"):
        normalize_map(torch.zeros(4, 4), signed=True, clip_percentile=0)


# --- overlays ----------------------------------------------------------------------------------


def test_overlay_square_photo_keeps_photo_size():
    out = overlay(photo(64, 64), attribution(blob()[None]))
    assert isinstance(out, Image.Image) and out.size == (64, 64) and out.mode == "RGB"


def test_overlay_crops_a_wide_photo_to_the_map_aspect():
    # Left third red, middle blue, right third red: the center crop keeps only blue.
    img = np.zeros((60, 90, 3), np.uint8)
    img[:, :15] = (255, 0, 0)
    img[:, 15:75] = (0, 0, 255)
    img[:, 75:] = (255, 0, 0)
    out = overlay(Image.fromarray(img), torch.zeros(16, 16), cmap="heat")
    assert out.size == (60, 60)
    assert (np.asarray(out) == (0, 0, 255)).all()  # zero heat shows the photo unchanged


def test_overlay_crops_a_tall_photo_and_matches_non_square_maps():
    assert overlay(photo(40, 100), blob(32, 32)).size == (40, 40)
    assert overlay(photo(100, 100), blob(16, 32)).size == (100, 50)


def test_cold_areas_show_the_photo_and_hot_areas_are_coloured():
    m = torch.zeros(1, 20, 20)
    m[0, 5:15, 5:15] = 1.0
    out = np.asarray(overlay(photo(20, 20), attribution(m, signed=False))).astype(int)
    assert (out[0, 0] == (120, 140, 160)).all()
    assert np.abs(out[10, 10] - (120, 140, 160)).sum() > 100


def test_signed_and_unsigned_pick_different_colour_maps():
    m = blob()[None]
    img = photo(32, 32, color=(128, 128, 128))
    signed = np.asarray(overlay(img, attribution(m, signed=True)))
    unsigned = np.asarray(overlay(img, attribution(m, signed=False)))
    assert not np.array_equal(signed, unsigned)
    assert signed[16, 16, 0] > signed[16, 16, 2]  # diverging: positive is red
    hot = colormap("heat")[-1].astype(int)
    assert np.abs(unsigned[16, 16].astype(int) - hot).sum() < np.abs(128 - hot).sum()
    assert np.array_equal(overlay(img, attribution(m, signed=True), cmap="heat"), unsigned)


def test_raw_maps_with_negatives_count_as_signed():
    img = photo(32, 32, color=(128, 128, 128))
    m = blob() - blob(cx=0.2, cy=0.2, s=0.05)
    assert np.array_equal(overlay(img, m), overlay(img, attribution(m[None], signed=True)))


def test_overlay_picks_the_sample():
    maps = torch.stack([blob(cx=0.2), blob(cx=0.8)])
    a = attribution(maps, signed=False)
    left = np.asarray(overlay(photo(32, 32), a, sample=0)).astype(int)
    right = np.asarray(overlay(photo(32, 32), a, sample=1)).astype(int)
    assert left[16, 6].sum() != right[16, 6].sum()
    assert np.array_equal(np.asarray(overlay(photo(32, 32), maps, sample=1)), right)


def test_overlay_bad_input_is_a_user_error():
    a = attribution(blob()[None])
    with pytest.raises(SaliencelabError, match="out of range"):
        overlay(photo(), a, sample=3)
    with pytest.raises(SaliencelabError, match="shape"):
        overlay(photo(), torch.zeros(1, 1, 8, 8))
    with pytest.raises(SaliencelabError, match="shape"):
        overlay(photo(), torch.zeros(8))
    with pytest.raises(SaliencelabError, match="PIL"):
        overlay("cat.png", a)  # a path, not an image (arrays of pixels are taken)
    with pytest.raises(SaliencelabError, match="alpha"):
        overlay(photo(), a, alpha=2)


def test_save_overlay_creates_folders(tmp_path):
    path = save_overlay(photo(), attribution(blob()[None]), tmp_path / "a" / "b" / "x.png")
    assert path.exists()
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == (60, 60)


def test_heatmap_alone():
    a = attribution(blob()[None])
    assert heatmap(a).size == (32, 32)
    assert heatmap(a, size=(50, 40)).size == (50, 40)


# --- galleries ---------------------------------------------------------------------------------


def explanation(n_methods: int, signed_every: int = 2) -> Explanation:
    atts = {}
    for i in range(n_methods):
        m = blob(cx=0.2 + 0.6 * i / max(1, n_methods - 1))[None]
        atts[f"method{i}"] = attribution(
            m, f"method{i}", signed=i % signed_every == 0, passes=i + 1, seconds=0.1
        )
    logits = torch.tensor([[0.0, 2.0, 0.5]])
    return Explanation(atts, torch.zeros(1, 3, 32, 32), logits, ["a", "tabby", "c"])


def test_gallery_has_one_tile_per_method_plus_photo():
    tile = 64
    img = gallery(photo(), explanation(3), tile=tile, legend=False)
    assert img.width == PAD + 4 * (tile + PAD)
    wider = gallery(photo(), explanation(4), tile=tile, legend=False)
    assert wider.width - img.width == tile + PAD
    assert wider.height == img.height


def test_gallery_wraps_into_rows():
    tile = 48
    one_row = gallery(photo(), explanation(MAX_COLUMNS - 1), tile=tile, legend=False)
    two_rows = gallery(photo(), explanation(MAX_COLUMNS + 1), tile=tile, legend=False)
    assert one_row.width == two_rows.width == PAD + MAX_COLUMNS * (tile + PAD)
    assert two_rows.height > one_row.height + tile


def test_gallery_methods_subset_dict_input_and_legend():
    ex = explanation(3)
    sub = gallery(photo(), ex, methods=["method2"], tile=48, legend=False)
    assert sub.width == PAD + 2 * (48 + PAD)
    from_dict = gallery(photo(), dict(ex.attributions), tile=48, legend=False)
    assert from_dict.width == PAD + 4 * (48 + PAD)
    assert from_dict.height < gallery(photo(), ex, tile=48, legend=False).height  # no title
    assert gallery(photo(), ex, tile=48).height > gallery(photo(), ex, tile=48, legend=False).height


def test_gallery_draws_the_photo_tile():
    tile = 64
    img = np.asarray(gallery(photo(color=(10, 200, 30)), explanation(1), tile=tile))
    assert ((img == (10, 200, 30)).all(axis=-1)).sum() >= tile * tile


def test_gallery_bad_input_is_a_user_error():
    ex = explanation(2)
    with pytest.raises(SaliencelabError, match="method1"):
        gallery(photo(), ex, methods=["methd1"])
    with pytest.raises(SaliencelabError, match="out of range"):
        gallery(photo(), ex, sample=2)
    with pytest.raises(SaliencelabError):
        gallery(photo(), {})


def test_gallery_title_with_unusual_characters_and_save(tmp_path):
    title = "chelsea \u2014 Egyptian cat (0.71) \u4e2d <b>"
    path = save_gallery(photo(), explanation(2), tmp_path / "g" / "gallery.png", title=title)
    with Image.open(path) as im:
        assert im.format == "PNG"


def test_colorbar_legend():
    bar = colorbar_legend("diverging", width=101)
    assert bar.width == 101
    assert np.asarray(bar)[5, 50].tolist() == [255, 255, 255]


# --- independent references (numpy / PIL doing the same operation directly) -------------------


@pytest.mark.parametrize("q", [37.3, 90.0, 99.5])
def test_normalisation_matches_numpy_percentile_reference(q):
    rng = np.random.default_rng(3)
    m = rng.normal(size=(7, 9)).astype(np.float32) * 3.0
    ref_unsigned = np.clip((m - m.min()) / (np.percentile(m, q) - m.min()), 0.0, 1.0)
    ref_signed = np.clip(m / np.percentile(np.abs(m), q), -1.0, 1.0)
    out_unsigned = normalize_map(torch.from_numpy(m), signed=False, clip_percentile=q).numpy()
    out_signed = normalize_map(torch.from_numpy(m), signed=True, clip_percentile=q).numpy()
    np.testing.assert_allclose(out_unsigned, ref_unsigned, atol=1e-5)
    np.testing.assert_allclose(out_signed, ref_signed, atol=1e-5)


def test_percentile_interpolates_between_the_right_neighbours():
    # 0..9 at q=90: position 8.1, so the 90th percentile is 8.1 (not 8.9); 9 is clipped to 1.
    m = torch.arange(10, dtype=torch.float32)[None]
    out = normalize_map(m, signed=False, clip_percentile=90.0)
    np.testing.assert_allclose(out[0].numpy(), np.minimum(np.arange(10) / 8.1, 1.0), atol=1e-6)


def _blend(base: np.ndarray, colors: np.ndarray, weight: np.ndarray) -> np.ndarray:
    w = weight[..., None]
    return np.clip(np.rint(base * (1.0 - w) + colors * w), 0, 255).astype(np.uint8)


def test_unsigned_overlay_matches_a_hand_computed_blend():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    m = rng.random((6, 6)).astype(np.float32)
    alpha = 0.6
    v = (m - m.min()) / (m.max() - m.min())  # clip_percentile=None: plain min-max
    lut = colormap("heat").astype(np.float64)
    colors = lut[np.floor(v * 255 + 0.5).astype(int)]
    expected = _blend(img.astype(np.float64), colors, alpha * v**0.7)
    got = overlay(Image.fromarray(img), torch.from_numpy(m), alpha=alpha, clip_percentile=None)
    assert np.abs(np.asarray(got).astype(int) - expected.astype(int)).max() <= 1


def test_signed_overlay_matches_a_hand_computed_blend():
    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    m = rng.normal(size=(6, 6)).astype(np.float32)
    alpha = 0.8
    v = m / np.abs(m).max()
    s = np.abs(v)
    lut = colormap("diverging").astype(np.float64)
    shown = np.sign(v) * np.maximum(s, 0.5)
    colors = lut[np.floor((shown + 1) / 2 * 255 + 0.5).astype(int)]
    luma = img.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    base = np.repeat(luma[..., None] * 0.75, 3, axis=2)
    expected = _blend(base, colors, alpha * s**0.5)
    got = overlay(Image.fromarray(img), torch.from_numpy(m), alpha=alpha, clip_percentile=None)
    assert np.abs(np.asarray(got).astype(int) - expected.astype(int)).max() <= 1


def test_overlay_crops_a_tall_photo_at_its_center():
    # Top and bottom fifths green, the middle blue: the center square crop keeps only blue.
    img = np.zeros((100, 60, 3), np.uint8)
    img[:20] = (0, 255, 0)
    img[20:80] = (0, 0, 255)
    img[80:] = (0, 255, 0)
    out = overlay(Image.fromarray(img), torch.zeros(16, 16), cmap="heat")
    assert out.size == (60, 60)
    assert (np.asarray(out) == (0, 0, 255)).all()


def test_heatmap_resizes_to_width_by_height():
    # A map brighter to the right (H=2, W=4) drawn at width 40, height 10: dark left, bright right.
    m = torch.tensor([[0.0, 1.0, 2.0, 3.0], [0.0, 1.0, 2.0, 3.0]])
    out = np.asarray(heatmap(m, size=(40, 10), clip_percentile=None)).astype(int)
    assert out.shape == (10, 40, 3)
    lut = colormap("heat").astype(int)
    assert (out[:, 0] == lut[0]).all() and (out[:, -1] == lut[-1]).all()
    assert (out[0] == out[-1]).all()  # rows are identical: the gradient runs along the width


def _captions(monkeypatch) -> list[str]:
    import importlib

    gallery_module = importlib.import_module("saliencelab.viz.gallery")  # the module, not gallery()
    texts: list[str] = []
    real = gallery_module._centered

    def spy(draw, x0, y, width, text, font, fill, middle=False):
        texts.append(text)
        real(draw, x0, y, width, text, font, fill, middle)

    monkeypatch.setattr(gallery_module, "_centered", spy)
    return texts


def test_gallery_captions_photo_size_methods_in_order_and_other_targets(monkeypatch):
    ex = explanation(3)  # predicted class 1 ("tabby"); every attribution explained class 0 ("a")
    ex.attributions["method1"].target[:] = 1  # this one explained the predicted class
    texts = _captions(monkeypatch)
    gallery(photo(80, 60), ex, methods=["method2", "method0", "method1"], tile=64, legend=False)
    assert texts[:3] == ["input", "model saw 32 x 32", "original 80 x 60"]
    names = [t for t in texts if t.startswith("method")]
    assert names == ["method2", "method0", "method1"]
    assert texts.count("target: a") == 2 and "target: tabby" not in texts


def test_gallery_tiles_follow_the_map_aspect():
    tile = 64
    wide = attribution(blob(16, 32)[None], "wide")  # H=16, W=32: tiles are 64 x 32
    img = np.asarray(
        gallery(photo(100, 100, (10, 200, 30)), {"wide": wide}, tile=tile, legend=False)
    )
    green = (img == (10, 200, 30)).all(axis=-1)
    rows, cols = np.nonzero(green)
    assert cols.max() - cols.min() + 1 == tile and rows.max() - rows.min() + 1 == tile // 2


def test_a_flat_map_gets_a_caption_line_saying_so():
    """An all-zero map draws as the bare photo: its tile gets one more caption line ("flat map
    (all 0)"), so the gallery is one small line taller than with a map that has structure."""
    m = blob(cx=0.5)[None]
    atts = {"ok": attribution(m, "ok", signed=False, passes=1, seconds=0.1)}
    flat = {"ok": attribution(torch.zeros_like(m), "ok", signed=False, passes=1, seconds=0.1)}
    seen = photo(32, 32)  # the map's size: the input's caption has two lines, not three
    with_structure = gallery(seen, atts, tile=64, legend=False)
    zero = gallery(seen, flat, tile=64, legend=False)
    assert zero.width == with_structure.width and zero.height > with_structure.height
    assert zero.height - with_structure.height < 20  # one line of the small font


# --- writing pictures ----------------------------------------------------------------------------


def test_saving_to_a_folder_or_under_a_file_is_one_sentence(tmp_path):
    """A folder as the path, or a parent that is a file, used to raise IsADirectoryError or
    FileNotFoundError with a traceback."""
    a = attribution(blob()[None])
    with pytest.raises(SaliencelabError, match="is a folder"):
        save_overlay(photo(), a, tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(SaliencelabError, match="file' is a file, where the folder of the picture"):
        save_gallery(photo(), {"m": a}, tmp_path / "file" / "g.png")


def test_a_failed_save_leaves_the_existing_file_as_it_was(tmp_path, monkeypatch):
    """The picture is written beside the path and moved over it when complete: a write that
    fails half-way used to leave a truncated PNG in place of the old one."""
    path = tmp_path / "cat.png"
    path.write_bytes(b"the old picture")
    real_save = Image.Image.save

    def broken(self, fp, *args, **kwargs):
        fp.write(b"half a pic")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", broken)
    with pytest.raises(SaliencelabError, match="No space left on device"):
        save_overlay(photo(), attribution(blob()[None]), path)
    assert path.read_bytes() == b"the old picture"
    assert [p.name for p in tmp_path.iterdir()] == ["cat.png"]  # no temporary file left
    monkeypatch.setattr(Image.Image, "save", real_save)
    save_overlay(photo(), attribution(blob()[None]), path)
    assert Image.open(path).format == "PNG" and Image.open(path).size == (60, 60)


def test_the_suffix_picks_the_format(tmp_path):
    """ "cat.jpg" used to get PNG bytes under a JPEG name; no or an unknown suffix is PNG."""
    a = attribution(blob()[None])
    assert Image.open(save_overlay(photo(), a, tmp_path / "cat.jpg")).format == "JPEG"
    assert Image.open(save_overlay(photo(), a, tmp_path / "cat")).format == "PNG"
    assert Image.open(save_gallery(photo(), {"m": a}, tmp_path / "g.webp")).format == "WEBP"


def test_infinite_values_colour_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rgb = apply_colormap(torch.tensor([float("inf"), -float("inf"), float("nan")]), "heat")
    lut = colormap("heat")
    assert rgb.tolist() == [lut[255].tolist(), lut[0].tolist(), lut[0].tolist()]


@pytest.mark.parametrize("bad", ["99", True, [99]])
def test_a_clip_percentile_that_is_no_number_is_one_sentence(bad):
    with pytest.raises(SaliencelabError, match="clip_percentile"):
        normalize_map(blob(), signed=False, clip_percentile=bad)


@pytest.mark.parametrize("size", [(0, 10), (-5, 10), (10.5, 10), 10])
def test_a_heatmap_size_that_is_no_size_is_one_sentence(size):
    """(0, 10) used to reach F.interpolate and fail with a RuntimeError."""
    with pytest.raises(SaliencelabError, match="size must be"):
        heatmap(blob(), size=size)


def test_a_colour_bar_of_no_width_is_one_sentence():
    """width=0 used to fail inside PIL's rectangle drawing with a ValueError."""
    with pytest.raises(SaliencelabError, match="width must be"):
        colorbar_legend("heat", width=0)


def test_a_tall_map_keeps_its_tiles_within_the_tile_size():
    """`tile` is the longer side: a 40 x 300 map used to give tiles 224 wide and 1680 high."""
    tall = attribution(torch.rand(1, 300, 40), "integrated_gradients", signed=False)
    img = gallery(photo(512, 512), {"integrated_gradients": tall}, tile=224, legend=False)
    assert img.height < 224 + 120
    # the column stays wide enough for the method's name
    assert img.width >= PAD + 2 * (160 + PAD)


def test_accented_letters_lose_their_accents_not_the_letter():
    """The bundled font has ASCII only: "café" was drawn "caf?"."""
    from saliencelab.viz.gallery import _drawable, _font

    assert _drawable("café Ünïcode — 中", _font(12)) == "cafe Unicode - ?"


def test_a_photo_given_as_a_tensor_or_array_draws_as_the_pil_image():
    """Galleries and overlays refused tensors ("Expected a PIL image"), so the shapes data had to
    be converted by hand; a normalised model input (values outside [0, 1]) is refused."""
    data = shapes.make(1, seed=0)
    pixels = (data.images[0].permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)
    photo = Image.fromarray(pixels)
    m = torch.randn(64, 64)
    want = np.asarray(overlay(photo, m))
    for given in (data.images[0], data.images[0].numpy(), pixels, torch.from_numpy(pixels)):
        np.testing.assert_array_equal(np.asarray(overlay(given, m)), want)
    with pytest.raises(SaliencelabError, match=r"pixels in \[0, 1\].*not the model's"):
        overlay(data.images[0] * 4 - 2, m)
    with pytest.raises(SaliencelabError, match="got shape \\(5, 64, 64\\)"):
        overlay(torch.rand(5, 64, 64), m)


def test_an_rgba_photo_array_draws_as_the_rgba_pil_image_laid_on_white():
    """One reader (`data.images.as_rgb_image`) serves overlays and preprocessing: RGBA arrays,
    which `preprocess` took and overlays refused, draw as the PIL image they are."""
    rgba = np.random.default_rng(1).integers(0, 256, (32, 32, 4), dtype=np.uint8)
    m = torch.randn(32, 32)
    want = np.asarray(overlay(Image.fromarray(rgba, "RGBA"), m))
    np.testing.assert_array_equal(np.asarray(overlay(rgba, m)), want)
    np.testing.assert_array_equal(np.asarray(overlay(rgba.transpose(2, 0, 1), m)), want)
