"""Feature visualization: parameterizations, transforms and objectives against their formulas,
the optimisation loop on a tiny CNN (rises, deterministic, restores the model), and the real-model
check: class visualizations of EfficientNet-Lite0 are recognised under fresh random transforms.
"""

from __future__ import annotations

import dataclasses
import math
import re
import textwrap
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import typer
from conftest import TwiceConv
from PIL import Image
from torch import nn
from typer.testing import CliRunner

import saliencelab as sl
from saliencelab.core.errors import SaliencelabError
from saliencelab.featurevis import objectives as O
from saliencelab.featurevis import spectrum
from saliencelab.featurevis import transforms as T
from saliencelab.featurevis.commands import register
from saliencelab.featurevis.objectives import Capture
from saliencelab.featurevis.param import (
    IMAGENET_EIGVAL,
    FourierParam,
    MacoParam,
    PixelParam,
    color_sqrt,
    fourier_scale,
    frequencies,
    imagenet_covariance,
    to_valid,
)
from saliencelab.featurevis.visualize import ChunkSearch as VisChunkSearch
from saliencelab.featurevis.visualize import default_normalize, probe_normalize, visualize


def command_app() -> typer.Typer:
    """A Typer app with this module's command registered, as the CLI adds it."""
    app = typer.Typer()
    app.callback()(lambda: None)
    register(app)
    return app


pytestmark = pytest.mark.usefixtures("one_thread")


# -- parameterizations -----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(16, 16), (15, 20)])
def test_fourier_param_is_the_inverse_rfft_of_the_scaled_spectrum(size):
    h, w = size
    p = FourierParam(2, size, decay=1.3, decorrelate=False, seed=3)
    assert p().shape == (2, 3, h, w)
    # spatial() = irfft2(scale * (a + ib)) with orthonormal scaling.
    c = torch.complex(p.spectrum[:, 0], p.spectrum[:, 1]) * p.scale
    torch.testing.assert_close(p.spatial(), torch.fft.irfft2(c, s=size, norm="ortho"))
    # Inverse: setting the spectrum to rfft2(image) / scale reproduces any real image exactly.
    target = torch.randn(2, 3, h, w)
    coef = torch.fft.rfft2(target, norm="ortho") / p.scale
    with torch.no_grad():
        p.spectrum.copy_(torch.stack([coef.real, coef.imag], dim=1))
    torch.testing.assert_close(p.spatial(), target, atol=1e-5, rtol=0)
    torch.testing.assert_close(p(), torch.sigmoid(target), atol=1e-5, rtol=0)


def test_fourier_scale_follows_one_over_f_to_the_decay_and_keeps_white_variance():
    h, w, decay = 32, 48, 1.5
    s = fourier_scale(h, w, decay).double()
    f = frequencies(h, w)
    expected = 1.0 / f.clamp(min=1.0 / 48) ** decay
    ratio = s / expected
    torch.testing.assert_close(ratio, torch.full_like(ratio, float(ratio[0, 0])))
    assert float(frequencies(4, 4)[1, 1]) == pytest.approx(math.sqrt(2) / 4)
    # White complex coefficients with variance 1 per part give pixels of variance ~1.
    g = torch.Generator().manual_seed(0)
    c = torch.complex(
        torch.randn(400, h, w // 2 + 1, generator=g), torch.randn(400, h, w // 2 + 1, generator=g)
    )
    pixels = torch.fft.irfft2(c * s.float(), s=(h, w), norm="ortho")
    assert float(pixels.var()) == pytest.approx(1.0, rel=0.05)


def test_color_sqrt_is_the_square_root_of_the_imagenet_covariance():
    cov = imagenet_covariance()
    m = color_sqrt(normalize=False).double()
    torch.testing.assert_close(m, m.T)
    torch.testing.assert_close(m @ m.T, cov, atol=1e-5, rtol=0)
    torch.testing.assert_close(
        torch.linalg.eigvalsh(cov).flip(0),
        torch.tensor(IMAGENET_EIGVAL, dtype=torch.float64),
        atol=1e-4,
        rtol=0,
    )
    # An independent reference: Lucid's `color_correlation_svd_sqrt` (V·sqrt(Λ), 2 digits) gives
    # the same covariance.
    lucid = torch.tensor(
        [[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], dtype=torch.float64
    )
    torch.testing.assert_close(lucid @ lucid.T, cov, atol=6e-3, rtol=0)
    normalized = color_sqrt()
    assert float(normalized.norm(dim=0).max()) == pytest.approx(1.0)
    torch.testing.assert_close(normalized.double(), m / m.norm(dim=0).max(), atol=1e-6, rtol=0)
    # Decorrelated pixels: independent channels t give rgb = M t.
    p = PixelParam(1, 8, decorrelate=True, valid="clip", seed=0)
    with torch.no_grad():
        p.pixels.normal_(0, 0.1)
    rgb = torch.einsum("ij,njhw->nihw", normalized, p.pixels) + 0.5
    torch.testing.assert_close(p(), rgb.clamp(0, 1))


def test_clip_keeps_gradients_that_point_back_into_range():
    t = torch.tensor([-0.7, 0.0, 0.7, 0.7], requires_grad=True)  # x = t + 0.5: -0.2, .5, 1.2, 1.2
    x = to_valid(t, "clip")
    torch.testing.assert_close(x.detach(), torch.tensor([0.0, 0.5, 1.0, 1.0]))
    x.backward(torch.tensor([-1.0, 2.0, 3.0, -4.0]))
    # Below 0 with g < 0 (descent raises x): kept; inside: kept; above 1 with g > 0: kept; above 1
    # with g < 0 (descent would raise it further): dropped.
    torch.testing.assert_close(t.grad, torch.tensor([-1.0, 2.0, 3.0, 0.0]))
    with pytest.raises(SaliencelabError, match="valid must be"):
        to_valid(t, "tanh")


def test_maco_keeps_the_magnitude_and_learns_only_the_phase():
    h, w = 24, 30
    p = MacoParam(2, (h, w), seed=1)
    assert [name for name, _ in p.named_parameters()] == ["phase"]
    x = p().detach()
    assert x.shape == (2, 3, h, w) and 0 < float(x.min()) and float(x.max()) < 1
    spatial = p.spatial()
    torch.testing.assert_close(spatial.mean(dim=(-2, -1)), torch.zeros(2, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        spatial.std(dim=(-2, -1), unbiased=False), torch.ones(2, 3), atol=1e-4, rtol=0
    )
    # |rfft2(image)| is the fixed magnitude up to one factor per channel (the standardisation);
    # columns fx = 0 and Nyquist are excluded (irfft2 keeps only their Hermitian part).
    amp = torch.fft.rfft2(spatial, norm="ortho").abs()[..., 1:-1]
    ratio = amp / p.magnitude[..., 1:-1]
    torch.testing.assert_close(ratio, ratio[..., :1, :1].expand_as(ratio), rtol=1e-3, atol=1e-5)
    # A step changes the phase and leaves the magnitude alone.
    before = p.magnitude.clone()
    p().sum().backward()
    assert p.phase.grad is not None and p.phase.grad.abs().sum() > 0
    assert torch.equal(p.magnitude, before)


def test_natural_spectrum_data_file_is_a_reproducible_natural_power_law():
    table = spectrum.load()
    mag = np.array(table["log_magnitude"])
    assert mag.shape == (3, spectrum.RADIUS_BINS, spectrum.ANGLE_BINS)
    # Natural images: amplitude ~ 1/f^alpha with alpha near 1 (Field 1987; van der Schaaf 1996).
    assert all(0.8 < s < 1.8 for s in table["slope"]), table["slope"]
    assert np.all(np.diff(mag.mean(axis=2)[:, 1:-1], axis=1) < 0.05)  # falls with frequency
    # A fresh estimate with fewer crops agrees with the stored table.
    fresh = np.array(spectrum.estimate(crops_per_photo=4, seed=1)["log_magnitude"])
    assert np.abs(fresh - mag)[:, 1:].mean() < 0.25
    m = spectrum.natural_magnitude(40, 50)
    assert m.shape == (3, 40, 26) and float(m[:, 0, 0].abs().max()) == 0.0
    assert bool((m[:, 0, 1] > m[:, 0, 20]).all()) and bool((m[:, 1:] > 0).all())


def test_default_fourier_and_maco_images_are_their_formulas():
    """Defaults the docstrings promise: FourierParam mixes colours by color_sqrt (decorrelate=True)
    and MacoParam scales by contrast 1.5 before the sigmoid; both written out by hand here."""
    m = color_sqrt()
    f = FourierParam(2, (12, 10), seed=4)
    c = torch.complex(f.spectrum[:, 0], f.spectrum[:, 1]) * fourier_scale(12, 10)
    t = torch.fft.irfft2(c, s=(12, 10), norm="ortho")
    torch.testing.assert_close(f(), torch.sigmoid(torch.einsum("ij,njhw->nihw", m, t)))
    p = MacoParam(2, (12, 10), seed=4)
    z = torch.fft.irfft2(torch.polar(p.magnitude.expand_as(p.phase), p.phase), s=(12, 10))
    z = (z - z.mean(dim=(-2, -1), keepdim=True)) / z.std(dim=(-2, -1), keepdim=True, unbiased=False)
    torch.testing.assert_close(p(), torch.sigmoid(1.5 * torch.einsum("ij,njhw->nihw", m, z)))


def test_natural_magnitude_below_the_table_follows_the_fitted_power_law():
    """Below the lowest frequency bin the amplitude extrapolates |F| ∝ f^-α with the table's
    slope α: on a 1024-pixel-wide grid fx = 1/1024 and 2/1024 both lie below it (angle 0), so
    their amplitudes differ by exactly 2^α per channel, the lower frequency the larger."""
    table = spectrum.load()
    assert math.log(2 / 1024) < table["log_radius"][0]
    m = spectrum.natural_magnitude(8, 1024).double()
    ratio = m[:, 0, 1] / m[:, 0, 2]
    expected = 2.0 ** torch.tensor(table["slope"], dtype=torch.float64)
    torch.testing.assert_close(ratio, expected, atol=0, rtol=1e-5)


@pytest.mark.parametrize("make", [FourierParam, MacoParam, PixelParam], ids=lambda m: m.__name__)
def test_each_image_starts_from_its_own_draw(make):
    """Image 0 of a batch of 3 is the image of a batch of 1 with the same seed: image i is the
    i-th draw (FourierParam drew its spectrum (2, N, ...), interleaving the images; a (N, 3, 15,
    20) randn's last 16 values depend on N); the images of a batch still differ. Up to 1e-6:
    torch.sigmoid on CPU computes the last numel % 16 values with a scalar exp, 1 ulp apart."""
    one, three = make(1, (15, 20), seed=5), make(3, (15, 20), seed=5)
    with torch.no_grad():
        torch.testing.assert_close(three()[0], one()[0], atol=1e-6, rtol=0)
        assert not torch.equal(three()[1], three()[0])


# -- transforms ----------------------------------------------------------------------------------


def _ramp(n: int = 1, h: int = 9, w: int = 9) -> torch.Tensor:
    return torch.arange(n * 3 * h * w, dtype=torch.float32).reshape(n, 3, h, w) / (n * 3 * h * w)


def test_pad_jitter_and_crop_are_what_they_say():
    x = _ramp(2, 8, 10)
    rng = T.Rng(0)
    p = T.Pad(3)(x, rng)
    assert p.shape == (2, 3, 14, 16)
    assert torch.equal(p[..., 3:-3, 3:-3], x) and bool((p[..., :3, :] == 0.5).all())
    torch.testing.assert_close(T.Pad(2, "reflect")(x, rng), F.pad(x, [2] * 4, mode="reflect"))
    j = T.Jitter(3)(x, rng)
    assert j.shape == (2, 3, 5, 7)
    offsets = [
        (dy, dx)
        for dy in range(4)
        for dx in range(4)
        if torch.equal(j, x[..., dy : dy + 5, dx : dx + 7])
    ]
    assert len(offsets) == 1
    c = T.RandomCrop((0.25, 0.25))(x, T.Rng(1))  # a 4x5 box, resized back to 8x10
    assert c.shape == x.shape
    found = [
        (t, left)
        for t in range(5)
        for left in range(6)
        if torch.allclose(
            c,
            F.interpolate(
                x[..., t : t + 4, left : left + 5],
                size=(8, 10),
                mode="bilinear",
                align_corners=False,
            ),
        )
    ]
    assert len(found) == 1


def test_rotation_and_scale_match_their_formulas():
    x = _ramp(1, 7, 7)
    torch.testing.assert_close(
        T.rotate(x, 90.0), torch.rot90(x, 1, dims=(-2, -1)), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(T.rotate(x, 0.0), x, atol=1e-6, rtol=0)
    s = T.RandomScale([1.5])(x, T.Rng(0))
    torch.testing.assert_close(
        s, F.interpolate(x, size=(10, 10), mode="bilinear", align_corners=False)
    )
    r = T.RandomRotate(30.0)
    out = r(x, T.Rng(5))
    angle = T.Rng(5).uniform(-30.0, 30.0)  # the same draw
    torch.testing.assert_close(out, T.rotate(x, angle))


def test_affine_scales_rotates_and_shifts_in_one_resampling():
    x = _ramp(2, 8, 8)
    torch.testing.assert_close(T.affine(x), x, atol=1e-6, rtol=0)
    # Half the magnification into half the size: each output pixel is the mean of a 2x2 block.
    torch.testing.assert_close(
        T.affine(x, scale=0.5, size=4), F.avg_pool2d(x, 2), atol=1e-6, rtol=0
    )
    # A shift of (2, -1) pixels: output P shows input P + (2, -1); the rest is the fill value.
    out = T.affine(x, shift=(2.0, -1.0), fill=0.25)
    torch.testing.assert_close(out[..., 1:, :-2], x[..., :-1, 2:], atol=1e-6, rtol=0)
    assert bool((out[..., 0, :] == 0.25).all()) and bool((out[..., :, -2:] == 0.25).all())
    # A quarter turn of an odd square image, at twice the magnification about the centre.
    y = _ramp(1, 9, 9)
    turned = T.affine(y, degrees=90.0)
    torch.testing.assert_close(turned, torch.rot90(y, 1, dims=(-2, -1)), atol=1e-5, rtol=0)
    zoom = T.affine(y, scale=2.0)
    torch.testing.assert_close(zoom[..., 4, 4], y[..., 4, 4])  # the centre stays
    # Its random version draws (s, θ, dx, dy) from the generator in that order.
    ra = T.RandomAffine([0.9, 1.1], degrees=10, shift=3, size=6)
    g = T.Rng(3)
    s, angle = g.choice([0.9, 1.1]), g.uniform(-10, 10)
    dx, dy = g.uniform(-3, 3), g.uniform(-3, 3)
    torch.testing.assert_close(ra(y, T.Rng(3)), T.affine(y, s, angle, (dx, dy), 6))


def test_jitter_offsets_cover_zero_to_d_inclusive():
    """Jitter(d) crops at (dy, dx) uniform on {0, ..., d}²: over many seeds every offset occurs,
    read back from where the crop matches the input."""
    x = _ramp(1, 8, 8)
    seen = set()
    for seed in range(60):
        j = T.Jitter(2)(x, T.Rng(seed))
        seen |= {
            (dy, dx)
            for dy in range(3)
            for dx in range(3)
            if torch.equal(j, x[..., dy : dy + 6, dx : dx + 6])
        }
    assert seen == {(dy, dx) for dy in range(3) for dx in range(3)}


def test_noise_and_seeded_chains_are_repeatable():
    x = torch.full((4, 3, 64, 64), 0.5)
    n = T.Noise(0.1)(x, T.Rng(0)) - x
    assert abs(float(n.mean())) < 0.01 and float(n.std()) == pytest.approx(0.1, rel=0.05)
    chain = T.standard(48)
    y = torch.rand(2, 3, 48, 48, requires_grad=True)
    a, b, c = chain(y, T.Rng(7)), chain(y, T.Rng(7)), chain(y, T.Rng(8))
    assert a.shape == (2, 3, 48, 48) and torch.equal(a, b) and not torch.equal(a, c)
    a.sum().backward()
    assert y.grad is not None and float(y.grad.abs().sum()) > 0
    assert T.maco(32)(torch.rand(1, 3, 64, 64), T.Rng(0)).shape == (1, 3, 32, 32)


def test_noise_draws_do_not_depend_on_the_batch_size():
    """Image 0's noise, and the crop drawn after it, are the same in a batch of 1 or 3: each
    image's noise has its own generator (on CPU the noise used to come from the parameters'
    generator, so every later crop moved with the batch size)."""
    chain = T.compose(T.Noise(0.1), T.RandomCrop((0.25, 1.0)), T.Noise(0.1))
    x = torch.full((3, 3, 15, 20), 0.5)
    torch.testing.assert_close(chain(x, T.Rng(4))[:1], chain(x[:1], T.Rng(4)), atol=0, rtol=0)
    noise = T.Noise(0.1)(x, T.Rng(4)) - x
    assert not torch.equal(noise[0], noise[1])


def test_random_scale_in_a_list_warns_that_the_final_resize_undoes_it(tiny):
    """visualize appends a resize to `size` to a list of transforms, which restores the size
    RandomScale changed (a 16-pixel square stays 16 pixels at scale 0.5): a warning says so and
    names RandomAffine; none when a crop to a fixed size follows the RandomScale."""
    square = torch.zeros(1, 1, 64, 64)
    square[..., 24:40, 24:40] = 1.0
    undone = T.compose(T.RandomScale([0.5]), T.Resize(64))(square, T.Rng(0))
    assert int((undone[0, 0, 32] > 0.5).sum()) == 16
    obj = O.channel("features.1", 0)
    with pytest.warns(UserWarning, match="RandomScale.*undone.*RandomAffine"):
        visualize(tiny, obj, steps=1, size=16, transforms=[T.RandomScale([0.5])], progress=False)
    kept = [T.RandomScale([0.5, 2.0]), T.RandomCrop((0.5, 1.0), size=16)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        visualize(tiny, obj, steps=1, size=16, transforms=kept, progress=False)


# -- objectives ----------------------------------------------------------------------------------


def _capture() -> Capture:
    g = torch.Generator().manual_seed(0)
    return Capture(
        activations={
            "a": torch.randn(3, 4, 5, 6, generator=g),
            "v": torch.randn(3, 4, generator=g),
        },
        logits=torch.randn(3, 5, generator=g),
        images=torch.rand(3, 3, 6, 7, generator=g),
        labels=["cat", "dog", "bird", "fish", "frog"],
    )


def test_layer_objectives_match_their_formulas():
    cap = _capture()
    a = cap.activations["a"]
    torch.testing.assert_close(O.neuron("a", 2)(cap), a[:, 2, 2, 3])
    torch.testing.assert_close(O.neuron("a", 1, x=5, y=0)(cap), a[:, 1, 0, 5])
    torch.testing.assert_close(O.channel("a", 3)(cap), a[:, 3].mean(dim=(1, 2)))
    torch.testing.assert_close(O.channel("v", 3)(cap), cap.activations["v"][:, 3])
    torch.testing.assert_close(O.layer("a")(cap), (a**2).mean(dim=(1, 2, 3)))
    v = torch.tensor([1.0, -2.0, 0.0, 2.0])
    by_hand = torch.stack([sum(a[n, c] * v[c] for c in range(4)).mean() / 3.0 for n in range(3)])
    torch.testing.assert_close(O.direction("a", v)(cap), by_hand)
    torch.testing.assert_close(O.class_logit("bird")(cap), cap.logits[:, 2])
    torch.testing.assert_close(O.class_logit(4)(cap), cap.logits[:, 4])
    for bad, message in [
        (O.channel("a", 4), "out of range"),
        (O.neuron("a", 0, x=6), "outside"),
        (O.class_logit("zebra"), "no class named"),
        (O.direction("a", [1.0, 2.0]), "one value per channel"),
    ]:
        with pytest.raises(SaliencelabError, match=message):
            bad(cap)


def test_neuron_centre_is_h_over_2_w_over_2_on_even_maps():
    """The default unit is at (h // 2, w // 2), as sl.neuron's in sl.explain: on a 4x6 map that
    is (2, 3), not (1, 2) (odd maps cannot tell the two roundings apart)."""
    a = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).reshape(2, 3, 4, 6)
    cap = Capture(activations={"a": a})
    torch.testing.assert_close(O.neuron("a", 1)(cap), a[:, 1, 2, 3])
    torch.testing.assert_close(O.as_objective(sl.neuron("a", 1))(cap), a[:, 1, 2, 3])
    torch.testing.assert_close(O.neuron("a", 1, x=0)(cap), a[:, 1, 2, 0])
    torch.testing.assert_close(O.neuron("a", 1, y=0)(cap), a[:, 1, 0, 3])


def test_explain_targets_are_objectives_of_the_same_quantity():
    """sl.channel / sl.neuron (the explain targets) given to visualize read what they read in
    sl.explain: a channel's mean activation, one unit (the centre by default)."""
    cap = _capture()
    a = cap.activations["a"]
    torch.testing.assert_close(O.as_objective(sl.channel("a", 3))(cap), a[:, 3].mean(dim=(1, 2)))
    torch.testing.assert_close(O.as_objective(sl.neuron("a", 2))(cap), a[:, 2, 2, 3])
    torch.testing.assert_close(O.as_objective(sl.neuron("a", 1, y=0, x=5))(cap), a[:, 1, 0, 5])


def test_diversity_is_minus_the_mean_gram_cosine_to_the_others():
    cap = _capture()
    a = cap.activations["a"]
    grams = [a[n].reshape(4, -1) @ a[n].reshape(4, -1).T for n in range(3)]
    cos = [
        [float((grams[i] * grams[j]).sum() / grams[i].norm() / grams[j].norm()) for j in range(3)]
        for i in range(3)
    ]
    expected = torch.tensor([-(sum(cos[i]) - cos[i][i]) / 2 for i in range(3)])
    torch.testing.assert_close(O.diversity("a")(cap), expected, atol=1e-5, rtol=0)
    one = Capture(activations={"a": a[:1]})
    assert torch.equal(O.diversity("a")(one), torch.zeros(1))


def test_regularisers_by_hand():
    x = torch.tensor([[0.0, 1.0, 0.0], [0.5, 0.5, 1.0]])  # one 2x3 image, one channel ...
    cap = Capture(images=x.expand(1, 3, 2, 3))  # ... repeated over 3 channels
    # Vertical diffs |.5-0|, |.5-1|, |1-0| -> mean 2/3; horizontal 1, 1, 0, .5 -> mean 5/8.
    torch.testing.assert_close(O.total_variation()(cap), torch.tensor([2 / 3 + 5 / 8]))
    torch.testing.assert_close(O.l1()(cap), torch.tensor([2.0 / 6]))  # .5 .5 .5 0 0 .5
    torch.testing.assert_close(O.l2(0.0)(cap), torch.tensor([2.5 / 6]))  # 0 1 0 .25 .25 1
    padded = F.pad(x[None, None], [1, 1, 1, 1], mode="replicate")[0, 0]
    means = torch.stack(
        [torch.stack([padded[i : i + 3, j : j + 3].mean() for j in range(3)]) for i in range(2)]
    )
    torch.testing.assert_close(O.blur()(cap), ((x - means) ** 2).mean().reshape(1))
    torch.testing.assert_close(means[0, 0], torch.tensor(3.5 / 9))  # (0+0+1)·2 + .5·3


def test_blur_gradient_is_a_step_towards_the_blurred_image():
    """blur() stops the gradient through its target: d/dx mean((x - stopgrad(b(x)))²) is
    2(x - b(x)) / n, b the 3x3 replicate-padded mean filter written out here with avg_pool2d."""
    x = torch.rand(1, 3, 5, 6, generator=torch.Generator().manual_seed(2), requires_grad=True)
    O.blur()(Capture(images=x)).sum().backward()
    blurred = F.avg_pool2d(F.pad(x.detach(), [1, 1, 1, 1], mode="replicate"), 3, stride=1)
    torch.testing.assert_close(x.grad, 2 * (x.detach() - blurred) / x.numel())


def test_objectives_compose_with_plus_minus_and_numbers():
    cap = _capture()
    a, b, c = O.channel("a", 0), O.layer("a"), O.class_logit(1)
    combo = 2 * a - b / 4 + c * 0.5 - O.total_variation()
    expected = 2 * a(cap) - b(cap) / 4 + 0.5 * c(cap) - O.total_variation()(cap)
    torch.testing.assert_close(combo(cap), expected)
    torch.testing.assert_close((-a)(cap), -a(cap))
    torch.testing.assert_close(sum([a, b, c])(cap), a(cap) + b(cap) + c(cap))
    assert combo.layers == ("a",) and combo.logits and not (a - b).logits
    assert "channel(a, 0)" in combo.name and "class_logit(1)" in combo.name
    with pytest.raises(SaliencelabError, match="not multiplied"):
        a * b
    with pytest.raises(SaliencelabError, match="nonzero"):
        a / 0


# -- the optimisation on a tiny CNN -------------------------------------------------------------


class Tiny(nn.Module):
    """Zero-mean 5x5 filters without biases: flat images give 0, structure drives the units."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 5, padding=2), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()
        )
        with torch.no_grad():
            w = self.features[0].weight
            w -= w.mean(dim=(1, 2, 3), keepdim=True)
            self.features[0].bias.zero_()
            self.features[2].bias.zero_()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


@pytest.fixture
def tiny() -> sl.Model:
    module = Tiny()
    module.train()  # must come back in training mode
    module.fc.weight.requires_grad_(True)
    module.features[0].bias.requires_grad_(False)
    return sl.Model(module, labels=["a", "b", "c", "d"], name="tiny")


def _natural(size: int) -> torch.Tensor:
    photos = [sl.sample_image(n).resize((size, size)) for n in ("chelsea", "coffee", "astronaut")]
    arr = np.stack([np.asarray(p, dtype=np.float32) / 255 for p in photos])
    return torch.from_numpy(arr).permute(0, 3, 1, 2)


@pytest.mark.parametrize("param", ["fft", "maco", "pixel", "decorrelated"])
def test_visualize_raises_the_objective_far_above_noise_and_photos(tiny, param):
    obj = O.channel("features.3", 5)
    # Seed 1: MACO's rise over 40 steps varies with the seed (1.4x to 4x at seed 0 to 7).
    vis = visualize(
        tiny, obj, steps=40, size=32, param=param, batch=2, lr=0.2, progress=False, seed=1
    )
    assert vis.images.shape == (2, 3, 32, 32) and vis.history.shape == (40, 2)
    assert 0 <= float(vis.images.min()) and float(vis.images.max()) <= 1
    h = vis.history
    # It rose (MACO starts from full-contrast images, the others from gray).
    assert bool((h[-5:].mean(0) > (1.5 if param == "maco" else 3) * h[:5].mean(0)).all()), h
    values = {}
    for name, images in [
        ("final", vis.images),
        ("noise", torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))),
        ("photos", _natural(32)),
    ]:
        with torch.no_grad():
            a = tiny.module.features(images)
        values[name] = obj(Capture(activations={"features.3": a}))
    if param == "maco":
        # The natural spectrum caps the contrast MACO can put into the 5x5 filters' band.
        assert float(values["final"].min()) > 2 * float(values["photos"].max()), values
        assert vis.transparency.shape == (2, 32, 32)
        assert float(vis.transparency.max()) == pytest.approx(1.0)
    else:
        base = max(float(values["noise"].max()), float(values["photos"].max()))
        assert float(values["final"].min()) > 2 * base, values
        assert vis.transparency is None


def test_visualize_is_deterministic_and_restores_the_model(tiny):
    flags = [p.requires_grad for p in tiny.module.parameters()]
    obj = O.channel(tiny.module.features[1], 2) - 0.1 * O.total_variation()
    a = visualize(tiny, obj, steps=6, size=24, progress=False, seed=3)
    b = visualize(tiny, obj, steps=6, size=24, progress=False, seed=3)
    c = visualize(tiny, obj, steps=6, size=24, progress=False, seed=4)
    assert torch.equal(a.images, b.images) and torch.equal(a.history, b.history)
    assert not torch.equal(a.images, c.images)
    assert a.objectives == ["channel(ReLU, 2) - 0.1 * total_variation()"]
    assert [p.requires_grad for p in tiny.module.parameters()] == flags
    assert all(m.training for m in tiny.module.modules())
    assert all(not m._forward_hooks for m in tiny.module.modules())

    def broken(cap):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        visualize(
            tiny,
            O.channel("features.1", 0) + O.Objective(broken, "broken"),
            steps=2,
            size=16,
            progress=False,
        )
    assert [p.requires_grad for p in tiny.module.parameters()] == flags
    assert all(m.training for m in tiny.module.modules())
    assert all(not m._forward_hooks for m in tiny.module.modules())


def test_hidden_layer_objectives_stop_the_forward_early(tiny):
    calls = []
    handle = tiny.module.fc.register_forward_hook(lambda *a: calls.append(1))
    visualize(tiny, O.channel("features.1", 0), steps=3, size=16, progress=False)
    assert calls == []
    visualize(tiny, O.class_logit("b"), steps=3, size=16, progress=False)
    assert len(calls) == 3
    handle.remove()


def test_one_run_renders_several_objectives_each_on_its_own_image(tiny):
    objs = [O.class_logit(0), O.class_logit(3)]
    vis = visualize(tiny, objs, steps=30, size=24, batch=4, progress=False)
    assert vis.objectives == ["class_logit(0)"] * 2 + ["class_logit(3)"] * 2
    with torch.no_grad():
        logits = tiny.module(vis.images)
    assert bool((logits[:2, 0] > logits[2:, 0]).all()) and bool(
        (logits[2:, 3] > logits[:2, 3]).all()
    )
    with pytest.raises(SaliencelabError, match="does not split evenly"):
        visualize(tiny, objs, steps=1, size=16, batch=3, progress=False)
    with pytest.raises(SaliencelabError, match="no layer named"):
        visualize(tiny, O.channel("features.9", 0), steps=1, size=16, progress=False)
    with pytest.raises(SaliencelabError, match="Unknown parameterization"):
        visualize(tiny, objs, steps=1, size=16, param="fourier", progress=False)


def test_chunked_passes_give_the_same_images_as_one_batch(tiny):
    """In float64: Adam's first steps are about lr·sign(g), so a float32 gradient at the rounding
    level of the batched kernels (which sum in another order per batch size and CPU) moves an
    image by ~1e-2; float64 rounding is far below any gradient the objectives give."""
    tiny.module.double()
    objs = [O.channel("features.3", 1) - 0.5 * O.total_variation(), O.class_logit("c")]
    runs = [
        visualize(tiny, objs, steps=8, size=20, batch=6, param=p, chunk=c, seed=1, progress=False)
        for p in ("maco", "fft")
        for c in (6, 4, 1)
    ]
    assert all(r.images.dtype == torch.float64 for r in runs)
    for group in (runs[:3], runs[3:]):
        for other in group[1:]:
            torch.testing.assert_close(other.images, group[0].images, atol=1e-9, rtol=0)
            torch.testing.assert_close(other.history, group[0].history, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(runs[1].transparency, runs[0].transparency, atol=1e-9, rtol=0)
    assert [r.chunk for r in runs[:3]] == [6, 4, 1]
    with pytest.raises(SaliencelabError, match="one chunk"):
        visualize(
            tiny, O.diversity("features.3"), steps=1, size=16, batch=3, chunk=1, progress=False
        )


@pytest.mark.parametrize("param", ["fft", "maco", "pixel"])
def test_an_image_is_the_same_alone_or_first_in_a_batch(param):
    """Image 0 of visualize([A, B]) is visualize(A)'s image, default transforms (MACO's noise
    included): each image starts from its own draw and has its own noise generator. chunk=1 lets
    the model see one image at a time, so its batched kernels' rounding, which Adam amplifies,
    stays out of the comparison (diversity, batchwise, is the documented exception). In float64,
    so that the rounding of batched FFTs and transforms stays far below the gradients."""
    model = sl.load_model("shapes_cnn")
    model.module.double()
    a, b = O.channel("features.12", 3), O.channel("features.12", 5)
    kw = {"param": param, "steps": 4, "size": 50, "chunk": 1, "progress": False}
    alone, first = visualize(model, a, **kw), visualize(model, [a, b], **kw)
    torch.testing.assert_close(first.images[0], alone.images[0], atol=1e-9, rtol=0)
    torch.testing.assert_close(first.history[:, 0], alone.history[:, 0], atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_a_model_in_another_dtype_gets_its_inputs_in_that_dtype(tiny, dtype):
    """The images are optimised in float32 (float64 for a float64 model) and cast to the model's
    dtype on the way in; the run follows the float32 run up to the dtype's precision."""
    kw = {"steps": 20, "size": 16, "lr": 0.2, "seed": 0, "progress": False}
    obj = O.channel("features.3", 5)
    reference = visualize(tiny, obj, **kw)
    tiny.module.to(dtype)
    seen = []
    handle = tiny.module.features.register_forward_pre_hook(lambda m, i: seen.append(i[0].dtype))
    try:
        vis = visualize(tiny, obj, **kw)
    finally:
        handle.remove()
    assert set(seen) == {dtype}
    assert vis.images.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert vis.history[-1, 0] > 10 * vis.history[0, 0] > 0  # it rose as in float32
    tol = {torch.float64: 1e-5, torch.float16: 1e-1, torch.bfloat16: 1e-1}[dtype]
    torch.testing.assert_close(vis.history.float(), reference.history, rtol=tol, atol=1e-4)


@pytest.mark.parametrize("param", ["fft", "maco"])
def test_a_float64_model_sees_the_float32_runs_draws(param):
    """Starting draws and transform noise are drawn in float32 whatever the model's dtype, so a
    float64 copy of a model follows the float32 run (MACO's noise was drawn in float64 before)."""
    m32, m64 = sl.load_model("shapes_cnn"), sl.load_model("shapes_cnn")
    m64.module.double()
    kw = {"param": param, "steps": 4, "size": 32, "progress": False}
    a, b = visualize(m32, 1, **kw), visualize(m64, 1, **kw)
    torch.testing.assert_close(b.history.float(), a.history, rtol=1e-4, atol=1e-5)
    # mean, not max: a float32 gradient at rounding level may flip one pixel's first Adam step
    assert (b.images.float() - a.images).abs().mean() < 1e-4


def test_chunk_search_halves_while_steps_get_faster():
    s = VisChunkSearch(8)
    sizes = []
    for seconds in [9.0, 1.0, 9.0, 0.8, 9.0, 0.79]:  # each size: a warm-up step, a timed step
        sizes.append(s.size)
        s.record(seconds)
    assert sizes == [8, 8, 4, 4, 2, 2]
    assert s.settled and s.size == 2  # 1 % faster than 4 is not worth halving again
    s = VisChunkSearch(8)
    for seconds in [9.0, 1.0, 9.0, 1.2]:
        s.record(seconds)
    assert s.settled and s.size == 8
    assert VisChunkSearch(1).settled and VisChunkSearch(5, fixed=2).size == 2


def test_diversity_term_makes_the_batch_less_alike(tiny):
    obj = O.channel("features.3", 1)
    div = O.diversity("features.3")
    plain = visualize(tiny, obj, steps=25, size=24, batch=3, progress=False, seed=1)
    diverse = visualize(tiny, obj + 50 * div, steps=25, size=24, batch=3, progress=False, seed=1)

    def diversity(v):
        with torch.no_grad():
            return float(
                div(Capture(activations={"features.3": tiny.module.features(v.images)})).mean()
            )

    assert diversity(diverse) > diversity(plain) + 0.05, (diversity(diverse), diversity(plain))


def test_save_and_gallery(tiny, tmp_path):
    vis = visualize(
        tiny,
        [O.class_logit("a"), O.channel("features.1", 1)],
        steps=2,
        size=20,
        param="maco",
        progress=False,
    )
    paths = vis.save(tmp_path)
    assert [p.name for p in paths] == [
        "featurevis_00_class_logit_a.png",
        "featurevis_00_class_logit_a_transparent.png",
        "featurevis_01_channel_features_1_1.png",
        "featurevis_01_channel_features_1_1_transparent.png",
    ]
    img = Image.open(paths[0])
    assert img.size == (20, 20)
    assert np.array_equal(np.asarray(img), np.asarray(vis.pil(0)))
    assert Image.open(paths[1]).mode == "RGBA"
    g = vis.gallery(tile=64)
    assert g.width > 2 * 64


def test_normalisation_is_read_from_the_preprocessing():
    def preprocess(img):
        arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255
        mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
        return torch.from_numpy(((arr - mean) / std).astype(np.float32)).permute(2, 0, 1)[None]

    model = sl.Model(Tiny(), preprocess=preprocess)
    x = torch.rand(2, 3, 5, 5)
    expected = (x - torch.tensor([0.485, 0.456, 0.406])[:, None, None]) / torch.tensor(
        [0.229, 0.224, 0.225]
    )[:, None, None]
    torch.testing.assert_close(default_normalize(model)(x), expected, atol=1e-5, rtol=0)
    assert probe_normalize(sl.Model(Tiny())) is None
    torch.testing.assert_close(default_normalize(sl.Model(Tiny()))(x), x)
    custom = sl.Model(Tiny(), preprocess=preprocess, extra={"normalize": lambda t: 2 * t})
    torch.testing.assert_close(default_normalize(custom)(x), 2 * x)


# -- the real model ------------------------------------------------------------------------------

CLASSES = ["Egyptian cat", "espresso", "goldfish", "volcano", "daisy"]


@pytest.fixture(scope="module")
def lite0():
    return sl.load_model("efficientnet_lite0")


@pytest.fixture(scope="module")
def class_visualizations(lite0):
    return visualize(
        lite0,
        [O.class_logit(c) for c in CLASSES],
        steps=48,
        size=112,
        param="fft",
        seed=0,
        progress=False,
    )


def test_efficientnet_normalisation_is_found(lite0):
    x = torch.rand(1, 3, 4, 4)
    torch.testing.assert_close(
        default_normalize(lite0)(x), (x * 255 - 127) / 128, atol=1e-5, rtol=0
    )


def test_class_visualizations_are_recognised_under_fresh_transforms(lite0, class_visualizations):
    vis = class_visualizations
    labels = list(lite0.labels)
    idx = torch.tensor([labels.index(c) for c in CLASSES])
    norm = default_normalize(lite0)
    chains = {
        # New draws (another seed) from the optimisation's distribution ...
        "standard": T.standard(112),
        # ... and from a wider one: more scale, rotation and shift, plus noise.
        "wider": T.compose(
            T.Pad(8),
            T.Jitter(16),
            T.RandomAffine([0.8, 0.9, 1.1, 1.2], degrees=15.0, shift=8.0, size=112),
            T.Noise(0.02),
        ),
    }
    for name, chain in chains.items():
        rng = T.Rng(12345)
        with torch.no_grad():
            probs = torch.stack(
                [
                    lite0(norm(chain(vis.images, rng))).softmax(1)[torch.arange(5), idx]
                    for _ in range(4)
                ]
            ).mean(0)
        recognised = int((probs >= 0.5).sum())
        assert recognised >= 4, (name, dict(zip(CLASSES, probs.tolist(), strict=True)))


def test_class_objective_rises_far_above_noise_and_photos(lite0, class_visualizations):
    vis = class_visualizations
    h = vis.history
    assert bool((h[-4:].mean(0) > h[:4].mean(0) + 10).all())
    labels = list(lite0.labels)
    idx = [labels.index(c) for c in CLASSES]
    norm = default_normalize(lite0)
    photos = lite0.preprocess(
        [sl.sample_image(n) for n in ("chelsea", "coffee", "astronaut", "rocket")]
    )
    with torch.no_grad():
        final = lite0(norm(vis.images))[torch.arange(5), idx]
        noise = lite0(norm(torch.rand(4, 3, 112, 112)))[:, idx].amax(0)
        natural = lite0(photos)[:, idx].amax(0)  # includes a cat and an espresso photo
    assert bool((final > 2 * natural).all()), (final, natural)
    assert bool((final > noise + 20).all()), (final, noise)


# -- the CLI ------------------------------------------------------------------------------------

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
        )

        def preprocess(images):
            images = images if isinstance(images, (list, tuple)) else [images]
            arrays = [np.asarray(im.convert("RGB").resize((32, 32)), np.float32) / 255
                      for im in images]
            return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()

        return sl.Model(module.eval(), preprocess=preprocess, labels=["a", "b", "c"], name="tiny")
    """
)


def test_visualize_draws_at_the_models_input_size_unless_told(tiny, tmp_path):
    """Without a size the images are the model's input size (shapes_cnn: 64 x 64), else 224;
    an explicit size wins, in Python and on the command line."""
    objective = O.channel("features.2", 1)
    sized = dataclasses.replace(tiny, input_size=(20, 28))
    assert sl.visualize(sized, objective, steps=1, progress=False).images.shape[-2:] == (20, 28)
    told = sl.visualize(sized, objective, steps=1, size=24, progress=False)
    assert told.images.shape[-2:] == (24, 24)
    assert sl.visualize(tiny, objective, steps=1, progress=False).images.shape[-2:] == (224, 224)
    assert sl.load_model("shapes_cnn").input_size == (64, 64)

    factory = tmp_path / "tiny.py"
    factory.write_text(FACTORY.replace('name="tiny")', 'name="tiny", input_size=(20, 20))'))
    app = command_app()
    runner = CliRunner(env={"COLUMNS": "200", "SALIENCELAB_DEBUG": None})
    common = ["visualize", "--model", f"{factory}:build", "--steps", "1", "--class", "b"]
    for extra, side in (([], 20), (["--size", "24"], 24)):
        out = tmp_path / f"out{side}"
        res = runner.invoke(app, [*common, *extra, "--out", str(out)])
        assert res.exit_code == 0, res.output
        assert f"{side}x{side} px" in res.output
        assert Image.open(out / "featurevis_00_class_logit_b.png").size == (side, side)


def test_a_class_index_is_named_by_its_class(tmp_path, runner):
    """`--class 1` gave `featurevis_00_class_logit_1.png`, titled class_logit(1)."""
    factory = tmp_path / "tiny.py"
    factory.write_text(FACTORY)
    app = command_app()
    args = ["visualize", "--model", f"{factory}:build", "--steps", "1", "--size", "20"]
    res = runner.invoke(app, [*args, "--class", "1", "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "o" / "featurevis_00_class_logit_b.png").exists()
    from saliencelab.featurevis.commands import _class_names

    model = sl.Model(torch.nn.Linear(2, 4), labels=["crane", "7", "crane", "dog"])
    assert _class_names(model, ["0", "1", "3", "dog", "9"]) == ["0", "1", "dog", "dog", "9"]


def test_class_with_layer_but_no_channel_says_what_conflicts(tmp_path):
    factory = tmp_path / "tiny.py"
    factory.write_text(FACTORY)
    app = command_app()
    runner = CliRunner(env={"COLUMNS": "200", "SALIENCELAB_DEBUG": None})
    args = ["visualize", "--model", f"{factory}:build", "--class", "b", "--layer", "2"]
    res = runner.invoke(app, [*args, "--out", str(tmp_path)])
    text = " ".join(res.output.split())
    assert res.exit_code == 2, res.output
    assert "error: --class and --layer were given without --channel" in text
    assert "--layer NAME --channel N" in text and "--class NAME alone" in text


def test_visualize_command(tmp_path):
    factory = tmp_path / "tiny.py"
    factory.write_text(FACTORY)
    spec = f"{factory}:build"
    app = command_app()
    runner = CliRunner(env={"COLUMNS": "200", "SALIENCELAB_DEBUG": None})
    out = tmp_path / "out"
    common = ["visualize", "--model", spec, "--steps", "3", "--size", "24", "--out", str(out)]

    res = runner.invoke(app, [*common, "--class", "b"])
    assert res.exit_code == 0, res.output
    assert (out / "featurevis_00_class_logit_b.png").exists()
    assert not (out / "index.html").exists()
    # the folder once in the header, file names whole in the rows (a long path was folded)
    assert f"file (in {out})" in res.output
    assert re.search(r"│ featurevis_00_class_logit_b\.png +│", res.output)

    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    res = runner.invoke(
        app,
        [
            *common,
            "--layer",
            "2",
            "--channel",
            "1",
            "--channel",
            "4",
            "--param",
            "maco",
            "--batch",
            "2",
            "--diversity",
            "10",
            "--examples",
            str(folder),
            "--k",
            "2",
        ],
    )
    assert res.exit_code == 0, res.output
    for name in [
        "featurevis_03_channel_2_4.png",
        "featurevis_03_channel_2_4_transparent.png",
        "featurevis_gallery.png",
        "featurevis_examples_2_ch1.png",
        "index.html",
    ]:
        assert (out / name).exists(), name
    assert "channel(2, 4)" in res.output
    # The first run's image is still in the folder: named as an earlier run's.
    assert "1 file this run did not write (featurevis_00_class_logit_b.png)" in res.output

    # One image into the same folder: no gallery or index.html of its own, so the earlier run's
    # are named, not left to pass for this run's.
    res = runner.invoke(app, [*common, "--class", "b"])
    assert res.exit_code == 0, res.output
    older = sorted(p.name for p in out.iterdir() if p.name != "featurevis_00_class_logit_b.png")
    assert "index.html" in older and "featurevis_gallery.png" in older
    shown = ", ".join(older[:3]) + ", ..."
    assert f"{len(older)} files this run did not write ({shown})" in res.output
    assert (out / "index.html").exists()  # nothing deleted

    for args, message in [
        (["--layer", "2", "--channel", "9"], "out of range"),
        (["--channel", "1"], "needs --layer"),
        ([], "Nothing to visualize"),
        (["--class", "zebra"], "no class named"),
        (["--class", "a", "--param", "wavelet"], "--param must be one of"),
    ]:
        res = runner.invoke(app, [*common, *args])
        assert res.exit_code == 2, res.output
        assert message in " ".join(res.output.split())
    # an image so large it would exhaust memory (5000 px: killed at 23 GB) is refused first
    res = runner.invoke(app, [*common, "--class", "a", "--size", "5000"])
    assert res.exit_code == 2 and "--size" in res.output and "1024" in res.output, res.output


# -- review fixes: layer outputs, token layers, unsupported models, stuck objectives -------------


class _PairBlock(nn.Module):
    """A block returning (map, something else), as many blocks do."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor):
        a = self.conv(x)
        return a, a.mean()


class _PairNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = _PairBlock()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, _ = self.block(x)
        return self.fc(a.mean((2, 3)))


def _state(module: nn.Module):
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())
    return module.training, [p.requires_grad for p in module.parameters()], hooks


def test_layer_objectives_read_the_first_tensor_of_a_tuple_output():
    """A layer returning a tuple used to fail with AttributeError ('tuple' has no 'dim')."""
    torch.manual_seed(0)
    net = _PairNet().train()
    net.fc.weight.requires_grad_(False)
    before = _state(net)
    obj = O.channel("block", 1)
    vis = visualize(net, obj, steps=2, size=16, transforms="none", progress=False)
    with torch.no_grad():
        expected = net.block.conv(vis.images)[:, 1].mean()
    assert _state(net) == before
    neuron = visualize(net, O.neuron("block", 1, y=2, x=3), steps=1, size=16, progress=False)
    assert neuron.values.shape == (1,)
    # the final image's value, recomputed, is the channel mean of the tuple's first element
    cap = Capture(activations={"block": net.block.conv(vis.images)})
    assert torch.allclose(obj(cap), expected.view(1), atol=1e-6)


def test_a_layer_called_twice_is_read_at_its_first_call_with_or_without_logits():
    """With a class term the forward ran on and the second call overwrote the first: the same
    channel objective then read another tensor than without it."""
    torch.manual_seed(0)
    net = TwiceConv()
    kw = dict(steps=3, size=16, transforms="none", progress=False, seed=1)
    alone = visualize(net, O.channel("shared", 2), **kw)
    with_logits = visualize(net, O.channel("shared", 2) + 0 * O.class_logit(0), **kw)
    assert torch.allclose(alone.history, with_logits.history, atol=1e-6)
    still = visualize(net, O.channel("shared", 2) + 0 * O.class_logit(0), **{**kw, "lr": 1e-12})
    with torch.no_grad():
        first = net.shared(torch.tanh(net.stem(still.images)))[:, 2].mean()
    assert float(first) == pytest.approx(float(still.values[0]), abs=1e-5)


def test_channel_and_neuron_objectives_on_a_vit_read_features_on_the_patch_grid():
    """Channel c of a ViT token layer (B, 65, 48) was token c (channel 60 was accepted, 48 was
    refused as out of range of '65 channels'); now it is feature c on the 8x8 grid."""
    model = sl.load_model("shapes_vit")
    layer = "blocks.2.norm1"
    with pytest.raises(SaliencelabError, match=r"has 48 channels \(0 to 47\)"):
        visualize(model, O.channel(layer, 60), steps=1, progress=False)
    vis = visualize(model, O.channel(layer, 47), steps=1, lr=1e-12, transforms="none")
    am = sl.activations(model, default_normalize(model)(vis.images), layer=layer, top=48)
    assert float(am.values[0, 47]) == pytest.approx(float(vis.values[0]), rel=1e-3, abs=1e-4)
    with pytest.raises(SaliencelabError, match=r"outside the 8x8 map"):
        visualize(model, O.neuron(layer, 3, y=9, x=0), steps=1, progress=False)
    visualize(model, sl.neuron(layer, 3, y=7, x=7), steps=1, progress=False)


def test_black_boxes_and_text_models_are_refused_in_one_sentence():
    bb = sl.blackbox(lambda a: a.flatten(1)[:, :3])
    with pytest.raises(SaliencelabError, match="black-box function") as err:
        visualize(bb, 0, steps=1, size=16, progress=False)
    assert "\n" not in str(err.value)
    text = sl.Model(nn.Linear(4, 2), extra={"prepare": lambda x, t: (x, t)}, name="texty")
    with pytest.raises(SaliencelabError, match="text model texty"):
        visualize(text, 0, steps=1, size=16, progress=False)


def test_an_objective_that_never_moves_warns_and_names_the_layer_before_the_relu(caplog):
    """A channel behind a ReLU that is off on the starting image has a zero gradient: the
    result is the starting gray, which used to come back without a word."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1)
    with torch.no_grad():
        conv.bias.fill_(-100.0)  # never fires on images in [0, 1]
    net = nn.Sequential(nn.Sequential(conv, nn.ReLU()), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with caplog.at_level("WARNING", logger="saliencelab"):
        vis = visualize(net, O.channel("0", 1), steps=3, size=16, progress=False)
    assert float(vis.values[0]) == 0.0
    text = " ".join(r.getMessage() for r in caplog.records)
    assert "stayed at 0 for all 3 steps" in text and "e.g. 0.0" in text
    caplog.clear()
    with caplog.at_level("WARNING", logger="saliencelab"):
        visualize(net, O.channel("0.0", 1), steps=3, size=16, progress=False)
    assert not caplog.records


def test_cli_diversity_values_are_labelled_with_the_diversity_term(tmp_path):
    """The table showed 'layer(2)' next to values that include the weighted diversity term
    (negative values for a mean square)."""
    factory = tmp_path / "tiny.py"
    factory.write_text(FACTORY)
    app = command_app()
    runner = CliRunner(env={"COLUMNS": "250", "SALIENCELAB_DEBUG": None})
    out = tmp_path / "out"
    args = ["visualize", "--model", f"{factory}:build", "--layer", "2", "--steps", "2"]
    args += ["--size", "24", "--batch", "2", "--diversity", "10", "--out", str(out)]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "layer(2) + 10 * diversity(2)" in " ".join(res.output.split())
    assert (out / "featurevis_00_layer_2.png").exists()


def test_cli_examples_are_found_before_the_optimisation(tmp_path, monkeypatch):
    """A layer the examples cannot use failed only after the whole optimisation had run."""
    import saliencelab.featurevis.commands as commands

    factory = tmp_path / "tiny.py"
    factory.write_text(FACTORY)
    app = command_app()

    def no_run(*a, **k):
        raise AssertionError("visualize ran before the examples were checked")

    monkeypatch.setattr(commands, "visualize", no_run)
    runner = CliRunner(env={"COLUMNS": "200", "SALIENCELAB_DEBUG": None})
    res = runner.invoke(
        app,
        ["visualize", "--model", f"{factory}:build", "--layer", "2", "--channel", "9"]
        + ["--examples", str(tmp_path / "missing"), "--out", str(tmp_path / "o")],
    )
    assert res.exit_code == 2, res.output
    assert "AssertionError" not in res.output
