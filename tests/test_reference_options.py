"""Options of the reference maps (`methods/reference.py`): a bad `sigma` or `seed` is one
`SaliencelabError` sentence naming the method, the option, the value and what is allowed (and
exit code 2 on the command line), where it used to fall back silently to another map or raise a
raw TypeError / ValueError; good values still give the documented maps."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

import saliencelab as sl
from saliencelab.cli import app

POSITIVE = r"sigma must be a positive number \(the Gaussian's σ as a fraction .*\) for "
POSITIVE += r"center_gaussian, got "
SEED = r"seed must be an integer from -2\*\*63 to 2\*\*63 - 1 for random, got "


def explain(tiny_cnn, x, method, **options):
    return sl.explain(tiny_cnn, x, methods=method, **options)[method].maps


@pytest.mark.parametrize(
    ("sigma", "shown"),
    [
        (-1, "-1"),
        (0, "0"),
        (0.0, "0.0"),
        (math.nan, "nan"),
        ("a", "'a'"),
        (True, "True"),
        (None, "None"),
        ([0.25], r"\[0.25\]"),
    ],
)
def test_bad_sigma_is_one_sentence(tiny_cnn, images, sigma, shown):
    with pytest.raises(sl.SaliencelabError, match=POSITIVE + shown + r"\.$"):
        explain(tiny_cnn, images, "center_gaussian", sigma=sigma)


@pytest.mark.parametrize("sigma", [math.inf, -math.inf])
def test_infinite_sigma_is_refused_not_a_constant_map(tiny_cnn, images, sigma):
    match = "sigma must be a finite positive number" if sigma > 0 else POSITIVE
    with pytest.raises(sl.SaliencelabError, match=match) as info:
        explain(tiny_cnn, images, "center_gaussian", sigma=sigma)
    assert str(info.value).endswith(f"got {sigma!r}.") and "center_gaussian" in str(info.value)


@pytest.mark.parametrize(
    ("size", "sigma"),
    [((12, 12), 1e-4), ((12, 12), 1e-30), ((13, 11), 1e-30), ((13, 11), 1e-200)],
)
def test_sigma_so_small_the_map_underflows_is_refused(tiny_cnn, size, sigma):
    """An even side: 0 at every pixel; odd sides, σ² below float32: NaN at the centre (0/0)."""
    x = torch.rand(2, 3, *size)
    h, w = size
    with pytest.raises(sl.SaliencelabError, match=f"too small for center_gaussian on {h}×{w}"):
        explain(tiny_cnn, x, "center_gaussian", sigma=sigma)


def test_tiny_sigma_on_odd_sides_is_the_centre_pixel(tiny_cnn):
    """Odd sides have a centre pixel (d = 0): a σ far below a pixel is a valid one-pixel map."""
    maps = explain(tiny_cnn, torch.rand(1, 3, 13, 11), "center_gaussian", sigma=1e-4)
    expected = torch.zeros(13, 11)
    expected[6, 5] = 1
    torch.testing.assert_close(maps[0], expected)


@pytest.mark.parametrize(
    ("seed", "shown"),
    [
        ("a", "'a'"),
        (1.5, "1.5"),
        (2.0, "2.0"),
        (True, "True"),
        (None, "None"),
        (2**63, str(2**63)),
        (-(2**63) - 1, str(-(2**63) - 1)),
    ],
)
def test_bad_seed_is_one_sentence(tiny_cnn, images, seed, shown):
    with pytest.raises(sl.SaliencelabError, match=SEED + shown + r"\.$"):
        explain(tiny_cnn, images, "random", seed=seed)


@pytest.mark.parametrize("sigma", [0.25, 1, 0.05, np.float64(0.4), 1e300])
def test_valid_sigma_gives_the_documented_gaussian(tiny_cnn, sigma):
    """exp(-d²/2σ²) around the centre, σ = sigma × the shorter side; here on 10 × 14 images."""
    x = torch.rand(3, 3, 10, 14)
    maps = explain(tiny_cnn, x, "center_gaussian", sigma=sigma)
    s = float(sigma) * 10
    expected = torch.tensor(
        [
            [math.exp(-((i - 4.5) ** 2 + (j - 6.5) ** 2) / (2 * s * s)) for j in range(14)]
            for i in range(10)
        ]
    )
    assert maps.shape == (3, 10, 14)
    for m in maps:
        torch.testing.assert_close(m, expected, rtol=1e-5, atol=1e-7)


def test_valid_seeds_still_work_and_differ(tiny_cnn, images):
    maps = {s: explain(tiny_cnn, images, "random", seed=s) for s in (0, -1, 2**63 - 1, -(2**63))}
    assert all(((m >= 0) & (m < 1)).all() for m in maps.values())
    assert not torch.equal(maps[0], maps[-1])
    torch.testing.assert_close(explain(tiny_cnn, images, "random", seed=np.int64(-1)), maps[-1])
    torch.testing.assert_close(explain(tiny_cnn, images, "random"), maps[0])  # default seed 0


def test_sobel_takes_no_options(tiny_cnn, images):
    with pytest.raises(sl.SaliencelabError, match="No requested method takes the option 'sigma'"):
        explain(tiny_cnn, images, "sobel", sigma=0.25)


# -- command line ---------------------------------------------------------------------------------


@pytest.fixture
def shape_images(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, im in enumerate(sl.data.shapes.make(2, seed=0).images):
        pixels = (im.permute(1, 2, 0).numpy() * 255).clip(0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"s{i}.png")
    return folder


@pytest.mark.parametrize(
    ("method", "option", "words"),
    [
        ("center_gaussian", "sigma=abc", "sigma must be a positive number"),
        ("center_gaussian", "sigma=inf", "sigma must be a finite positive number"),
        ("random", "seed=1.5", "seed must be an integer from -2**63"),
    ],
)
def test_cli_bad_reference_option_is_one_sentence_and_exit_2(
    runner, shape_images, tmp_path, method, option, words
):
    out = tmp_path / "eval"
    args = ["evaluate", str(shape_images), "--model", "shapes_cnn", "--methods", method]
    args += ["--metrics", "sparseness", "--method-option", option, "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and words in errors[0] and method in errors[0], result.stderr
