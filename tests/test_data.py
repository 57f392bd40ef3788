"""Labels, sample images, and reading image files of every kind (good and bad)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

import saliencelab as sl
from saliencelab.core.errors import SaliencelabError
from saliencelab.data.images import image_paths, load_image, stretch_to_uint8, to_rgb
from saliencelab.data.labels import imagenet_labels
from saliencelab.data.samples import sample_image, sample_images

# ---------------------------------------------------------------------------------- labels


def test_imagenet_labels():
    labels = imagenet_labels()
    assert len(labels) == 1000
    expected = {
        0: "tench",
        1: "goldfish",
        281: "tabby",
        282: "tiger cat",
        285: "Egyptian cat",
        967: "espresso",
        999: "toilet tissue",
    }
    assert {i: labels[i] for i in expected} == expected
    assert all(label and label == label.strip() for label in labels)
    labels.append("x")  # callers get a copy
    assert len(imagenet_labels()) == 1000


# ---------------------------------------------------------------------------------- samples


def test_sample_images_lists_the_photographs_each_once():
    """scikit-image's `cat` is `chelsea`: listed twice, a loop over the samples explained the
    same photo twice. The alias still loads."""
    names = sample_images()
    assert {"chelsea", "coffee", "astronaut", "rocket", "coins", "camera"} <= set(names)
    assert names == sorted(names) and "cat" not in names
    pixels = [np.asarray(sample_image(n), dtype=np.int16) for n in names]
    for i in range(len(pixels)):
        for j in range(i):
            assert pixels[i].shape != pixels[j].shape or (pixels[i] != pixels[j]).any()
    assert np.array_equal(np.asarray(sample_image("cat")), np.asarray(sample_image("chelsea")))


@pytest.mark.parametrize("name", sample_images())
def test_every_sample_image_is_rgb(name):
    img = sample_image(name)
    assert isinstance(img, Image.Image) and img.mode == "RGB"
    assert min(img.size) > 32


def test_unknown_sample_image_suggests_names():
    with pytest.raises(SaliencelabError, match="Did you mean: chelsea"):
        sample_image("chelsey")


# ------------------------------------------------------------------------- load_image: bad


def _png_with_header_size(path: Path, width: int, height: int) -> Path:
    """A valid 1x1 PNG whose header claims width x height (CRC fixed): only decoding would fail."""
    Image.new("L", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = 8 + 8  # signature, then length + b"IHDR"
    data[ihdr : ihdr + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr - 4 : ihdr + 13]))
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", crc)
    path.write_bytes(bytes(data))
    return path


def test_missing_file(tmp_path):
    with pytest.raises(SaliencelabError, match="does not exist"):
        load_image(tmp_path / "nope.png")


def test_directory(tmp_path):
    with pytest.raises(SaliencelabError, match="is a directory"):
        load_image(tmp_path)


def test_text_file_named_jpg(tmp_path):
    path = tmp_path / "fake.jpg"
    path.write_text("this is not an image")
    with pytest.raises(SaliencelabError, match="not an image"):
        load_image(path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(SaliencelabError, match="not an image"):
        load_image(path)


def test_truncated_file(tmp_path):
    path = tmp_path / "cut.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(SaliencelabError, match="could not be decoded"):
        load_image(path)


def test_over_the_pixel_limit(tmp_path):
    path = tmp_path / "big.png"
    Image.new("RGB", (100, 60)).save(path)
    with pytest.raises(SaliencelabError, match="6,000 pixels, over the limit of 5,000"):
        load_image(path, max_pixels=5000)
    assert load_image(path, max_pixels=6000).size == (100, 60)


def test_pixel_limit_is_checked_before_decoding(tmp_path):
    # 8000 x 8000 claimed, one pixel stored: decoding would fail, so the size check came first.
    path = _png_with_header_size(tmp_path / "claims_big.png", 8000, 8000)
    with pytest.raises(SaliencelabError, match="over the limit"):
        load_image(path)


def test_decompression_bomb(tmp_path):
    path = _png_with_header_size(tmp_path / "bomb.png", 30000, 30000)
    with pytest.raises(SaliencelabError, match="too large"):
        load_image(path, max_pixels=10**10)


# ------------------------------------------------------------------------ load_image: modes


def _roundtrip(tmp_path: Path, img: Image.Image, name: str) -> Image.Image:
    path = tmp_path / name
    img.save(path)
    out = load_image(path)
    assert out.mode == "RGB" and out.size == img.size
    return out


def test_rgb_is_unchanged(tmp_path):
    rng = np.random.default_rng(1)
    a = rng.integers(0, 255, (5, 7, 3), dtype=np.uint8)
    out = _roundtrip(tmp_path, Image.fromarray(a), "rgb.png")
    np.testing.assert_array_equal(np.asarray(out), a)


def test_grayscale(tmp_path):
    a = np.arange(20, dtype=np.uint8).reshape(4, 5) * 10
    out = np.asarray(_roundtrip(tmp_path, Image.fromarray(a), "gray.png"))
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], a)


def test_bilevel(tmp_path):
    img = Image.new("1", (4, 4), 0)
    img.putpixel((1, 1), 1)
    out = _roundtrip(tmp_path, img, "bw.png")
    assert out.getpixel((1, 1)) == (255, 255, 255) and out.getpixel((0, 0)) == (0, 0, 0)


def test_rgba_is_composited_on_white(tmp_path):
    a = np.zeros((1, 3, 4), np.uint8)
    a[0, 0] = (255, 0, 0, 255)  # opaque red stays red
    a[0, 1] = (255, 0, 0, 0)  # transparent becomes white
    a[0, 2] = (0, 0, 0, 128)  # half-transparent black becomes mid gray
    out = np.asarray(_roundtrip(tmp_path, Image.fromarray(a, "RGBA"), "rgba.png"))
    assert tuple(out[0, 0]) == (255, 0, 0)
    assert tuple(out[0, 1]) == (255, 255, 255)
    assert all(abs(int(v) - 127) <= 1 for v in out[0, 2])


def test_gray_with_alpha(tmp_path):
    img = Image.new("LA", (2, 1), (0, 0))
    img.putpixel((1, 0), (0, 255))
    out = _roundtrip(tmp_path, img, "la.png")
    assert out.getpixel((0, 0)) == (255, 255, 255) and out.getpixel((1, 0)) == (0, 0, 0)


def test_palette(tmp_path):
    img = Image.new("P", (2, 1))
    img.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    img.putpixel((1, 0), 1)
    out = _roundtrip(tmp_path, img, "p.png")
    assert out.getpixel((0, 0)) == (10, 20, 30) and out.getpixel((1, 0)) == (200, 100, 50)


def test_palette_with_transparency(tmp_path):
    img = Image.new("P", (2, 1))
    img.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    img.putpixel((1, 0), 1)
    img.info["transparency"] = 0
    out = _roundtrip(tmp_path, img, "pt.png")
    assert out.getpixel((0, 0)) == (255, 255, 255) and out.getpixel((1, 0)) == (200, 100, 50)
    gif = _roundtrip(tmp_path, img, "pt.gif")
    assert gif.getpixel((0, 0)) == (255, 255, 255)


def test_16_bit_png_is_stretched_by_its_range(tmp_path):
    a = np.array([[0, 1000], [2000, 4000]], np.uint16)  # 12-bit data in 16 bits
    out = np.asarray(_roundtrip(tmp_path, Image.fromarray(a), "g16.png"))[..., 0]
    np.testing.assert_array_equal(out, [[0, 64], [128, 255]])


def test_16_bit_big_endian_tiff(tmp_path):
    a = (np.arange(16).reshape(4, 4) * 1000 + 500).astype(">u2")
    img = Image.frombytes("I;16B", (4, 4), a.tobytes())
    out = np.asarray(_roundtrip(tmp_path, img, "g16b.tif"))[..., 0]
    assert out.min() == 0 and out.max() == 255
    np.testing.assert_array_equal(out, stretch_to_uint8(a))


def test_32_bit_int_and_float(tmp_path):
    a = np.arange(16, dtype=np.int32).reshape(4, 4) * 100_000 - 50_000
    out = np.asarray(_roundtrip(tmp_path, Image.fromarray(a), "i32.tif"))[..., 0]
    assert out[0, 0] == 0 and out[-1, -1] == 255 and out[0, 1] == 17
    f = np.linspace(-1, 1, 16, dtype=np.float32).reshape(4, 4)
    out = np.asarray(_roundtrip(tmp_path, Image.fromarray(f), "f32.tif"))[..., 0]
    assert out[0, 0] == 0 and out[-1, -1] == 255


def test_stretch_edge_cases():
    assert stretch_to_uint8(np.full((2, 2), 7, np.uint16)).max() == 0
    out = stretch_to_uint8(np.array([np.nan, 0.0, 1.0]))
    np.testing.assert_array_equal(out, [0, 0, 255])


@pytest.mark.parametrize("suffix", ["tif", "jpg"])
def test_cmyk(tmp_path, suffix):
    img = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # pure red
    out = _roundtrip(tmp_path, img, f"cmyk.{suffix}")
    r, g, b = out.getpixel((4, 4))
    assert r > 240 and g < 15 and b < 15


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.jpg"
    img.save(path, exif=exif)
    assert load_image(path).size == (20, 40)


def _turned_photo(path: Path, orientation: int = 6) -> np.ndarray:
    """A 30x20 PNG stored sideways with EXIF `orientation`: red in the stored top-left corner,
    which the viewer shows top-right (6: turned 90 degrees clockwise). Returns the stored pixels."""
    stored = np.zeros((20, 30, 3), np.uint8)
    stored[:8, :8] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored).save(path, exif=exif)
    return stored


def test_a_pil_image_opened_by_the_user_is_turned_as_its_exif_says(tmp_path):
    """`Image.open(path)` given to the models' preprocess, the overlays and `to_rgb` is the
    photo `sl.load_image(path)` reads (upright), as the README says of PIL images; they used the
    stored pixels, so the model explained, and the overlay drew, the photo sideways."""
    path = tmp_path / "turned.png"
    stored = _turned_photo(path)
    upright = np.asarray(load_image(path))
    assert upright.shape == (30, 20, 3)
    assert np.array_equal(upright, np.rot90(stored, k=-1))  # 90 degrees clockwise
    with Image.open(path) as opened:
        assert np.array_equal(np.asarray(to_rgb(opened)), upright)
        for name in ("shapes_cnn", "efficientnet_lite0"):
            model = sl.load_model(name)
            assert torch.equal(model.preprocess(opened), model.preprocess(load_image(path)))
        drawn = sl.overlay(opened, torch.zeros(1, 30, 20))  # a flat map: the photo itself
        assert np.array_equal(np.asarray(drawn), upright)
    # an image without the tag, and one the user turned already, are left as they are
    plain = Image.fromarray(stored)
    assert np.array_equal(np.asarray(to_rgb(plain)), stored)
    with Image.open(path) as opened:
        turned = ImageOps.exif_transpose(opened)
    assert np.array_equal(np.asarray(to_rgb(turned)), upright)


def test_to_rgb_of_an_in_memory_image():
    assert to_rgb(Image.new("HSV", (2, 2))).mode == "RGB"


# ------------------------------------------------------------------------------ image_paths


def test_image_paths(tmp_path):
    for name in ("b.JPG", "a.png", ".hidden.png", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.webp").write_bytes(b"")
    assert image_paths(tmp_path) == [tmp_path / "a.png", tmp_path / "b.JPG"]
    assert image_paths(str(tmp_path), recursive=True)[-1] == tmp_path / "sub" / "c.webp"
    # Files are kept as given, in order, whatever their suffix.
    assert image_paths([tmp_path / "notes.txt", tmp_path / "sub"]) == [
        tmp_path / "notes.txt",
        tmp_path / "sub" / "c.webp",
    ]


def test_image_paths_errors(tmp_path):
    with pytest.raises(SaliencelabError, match="does not exist"):
        image_paths([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SaliencelabError, match="holds no image files"):
        image_paths(tmp_path / "empty")


def test_preprocess_reads_any_mode_as_load_image_does():
    """A 16-bit grayscale photo or an RGBA one given to a model's preprocess is read like
    `sl.load_image` reads the file (its plain convert('RGB') made 16-bit gray white and dropped
    the alpha, showing the colours hidden under transparent pixels)."""
    from saliencelab.models.square import SquarePreprocess

    gray16 = Image.fromarray(np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16))
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., 0] = 255  # red everywhere, transparent on the left half
    rgba[:, 32:, 3] = 255
    photos = [gray16, Image.fromarray(rgba, "RGBA")]
    pre = SquarePreprocess(64, divisor=255.0)
    shapes = sl.load_model("shapes_cnn").preprocess
    for photo in photos:
        want = np.asarray(to_rgb(photo), np.float32).transpose(2, 0, 1) / 255.0
        np.testing.assert_allclose(pre(photo)[0].numpy(), want, atol=1e-6)
        assert torch.equal(shapes(photo)[0], torch.from_numpy(want.copy()))
    assert 0.4 < float(pre(gray16).mean()) < 0.6  # a ramp, not white
    assert float(pre(photos[1])[0, 1, :, :32].mean()) == 1.0  # transparent: white, not red


def test_a_misspelt_class_name_suggests_the_near_names_only():
    """ "Egyptian kat" suggested "Egyptian cat, Persian cat, tank": difflib's 0.5 cutoff let a
    far name in behind a near one; names well behind the best are dropped now."""
    from saliencelab.core.errors import closest

    labels = imagenet_labels()
    assert closest("Egyptian kat", labels) == " Did you mean: Egyptian cat?"
    assert closest("crane", ["crane", "crane", "crate"]).count("crane") == 2  # equal: both kept
    assert closest("zzzz", labels) == ""


def test_image_paths_skips_files_in_hidden_folders(tmp_path):
    """recursive=True picked up Jupyter's checkpoint copies (`.ipynb_checkpoints/a.png`): only
    the file's own name was checked for a leading dot. A hidden folder given itself is read."""
    hidden = tmp_path / "photos" / ".ipynb_checkpoints"
    hidden.mkdir(parents=True)
    (tmp_path / "photos" / "a.png").write_bytes(b"")
    (hidden / "a-checkpoint.png").write_bytes(b"")
    (tmp_path / "photos" / "sub").mkdir()
    (tmp_path / "photos" / "sub" / "b.png").write_bytes(b"")
    assert image_paths(tmp_path / "photos", recursive=True) == [
        tmp_path / "photos" / "a.png",
        tmp_path / "photos" / "sub" / "b.png",
    ]
    assert image_paths(hidden) == [hidden / "a-checkpoint.png"]
