"""Gradient methods: known answers, axioms, and Captum on the same inputs.

Integrated gradients, expected gradients (GradientSHAP), guided backprop, deconvnet and the
SmoothGrad family, checked against explicit formulas on a linear model, completeness on a smooth
CNN, exact quadrature, and Captum 0.9 (float64 where the comparison is tight).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from captum.attr import (
    Deconvolution,
    GradientShap,
    GuidedBackprop,
    InputXGradient,
    IntegratedGradients,
    NoiseTunnel,
    Saliency,
)
from torch import nn

import saliencelab as sl
from saliencelab.core.errors import SaliencelabError
from saliencelab.methods.gradient import smoothgrad as smoothgrad_module
from saliencelab.methods.gradient.baselines import gaussian_blur
from saliencelab.methods.gradient.integrated_gradients import RULES, quadrature


def _linear() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 3)).double().eval()


def _smooth_cnn() -> nn.Module:
    """A small CNN with smooth activations (IG's integrand is smooth, so quadrature converges)."""
    torch.manual_seed(0)
    return (
        nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1),
            nn.Tanh(),
            nn.Conv2d(6, 6, 3, padding=1),
            nn.Softplus(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(6, 5),
        )
        .double()
        .eval()
    )


@pytest.fixture
def x_small() -> torch.Tensor:
    torch.manual_seed(2)
    return torch.randn(4, 3, 4, 4, dtype=torch.float64)


@pytest.fixture
def cnn64(tiny_cnn) -> nn.Module:
    return tiny_cnn.double()


@pytest.fixture
def images64(images) -> torch.Tensor:
    return images.double()


TARGETS = torch.tensor([0, 1, 2, 1])  # mixed targets in one batch


def _run(model, x, method, target=TARGETS, **options):
    return sl.explain(model, x, methods={method: options}, target=target)[method]


# -- known answers on a linear model S = w·x + b -------------------------------------------------


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("baselines", ["zero", 0.5, "blur", "uniform", "tensor"])
def test_ig_on_a_linear_model_is_w_times_x_minus_baseline(x_small, rule, baselines):
    model = _linear()
    w = model[1].weight[TARGETS].view(x_small.shape)
    if baselines == "tensor":
        baselines = torch.randn(3, 1, 1, dtype=torch.float64)
    a = _run(model, x_small, "integrated_gradients", n_steps=5, rule=rule, baselines=baselines)
    if isinstance(baselines, torch.Tensor):
        base = baselines.expand_as(x_small)
    elif baselines == "zero":
        base = torch.zeros_like(x_small)
    elif baselines == 0.5:
        base = torch.full_like(x_small, 0.5)
    elif baselines == "blur":
        base = gaussian_blur(x_small, 10.0)  # checked against an explicit kernel below
    else:  # uniform noise in each sample's range: read x' back as x - attr / w
        base = x_small - a.attributions / w
        lo = x_small.flatten(1).amin(1).view(-1, 1, 1, 1)
        hi = x_small.flatten(1).amax(1).view(-1, 1, 1, 1)
        assert ((base >= lo - 1e-9) & (base <= hi + 1e-9)).all()
        assert base.std() > 0.1
    torch.testing.assert_close(a.attributions, w * (x_small - base))
    torch.testing.assert_close(a.delta, torch.zeros(4, dtype=torch.float64), atol=1e-10, rtol=0)


def test_blur_baseline_is_a_gaussian_blur():
    x = torch.zeros(1, 1, 21, 21, dtype=torch.float64)
    x[0, 0, 10, 10] = 1.0
    model = nn.Sequential(nn.Flatten(), nn.Linear(441, 1)).double()
    a = _run(model, x, "integrated_gradients", target=0, baselines="blur", blur_sigma=2.0)
    w = model[1].weight.view(1, 1, 21, 21)
    blurred = (x - a.attributions / w)[0, 0]
    t = torch.arange(-6, 7, dtype=torch.float64)  # the kernel spans ±3σ
    g = torch.exp(-0.5 * (t / 2.0) ** 2)
    expected = torch.zeros(21, 21, dtype=torch.float64)
    expected[4:17, 4:17] = torch.outer(g, g) / g.sum() ** 2
    torch.testing.assert_close(blurred, expected)


def test_saliency_and_input_x_gradient_on_a_linear_model(x_small):
    model = _linear()
    w = model[1].weight[TARGETS].view(x_small.shape)
    ex = sl.explain(model, x_small, methods=["saliency", "input_x_gradient"], target=TARGETS)
    torch.testing.assert_close(ex["saliency"].attributions, w.abs())
    torch.testing.assert_close(ex["input_x_gradient"].attributions, w * x_small)


def test_expected_gradients_on_a_linear_model_with_one_baseline(x_small):
    model = _linear()
    w = model[1].weight[TARGETS].view(x_small.shape)
    base = torch.randn(1, 3, 4, 4, dtype=torch.float64)
    a = _run(model, x_small, "expected_gradients", baselines=base, n_samples=7)
    torch.testing.assert_close(a.attributions, w * (x_small - base))
    torch.manual_seed(0)
    np.random.seed(0)
    theirs = GradientShap(model).attribute(x_small, baselines=base, target=TARGETS, n_samples=7)
    torch.testing.assert_close(a.attributions, theirs)


# -- quadrature ----------------------------------------------------------------------------------


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("n", [2, 3, 7, 50])
def test_quadrature_weights_sum_to_one_and_nodes_lie_in_0_1(rule, n):
    alphas, weights = quadrature(rule, n)
    assert len(alphas) == len(weights) == n
    assert math.isclose(weights.sum(), 1.0, rel_tol=1e-12)
    assert (alphas >= 0).all() and (alphas <= 1).all() and (weights > 0).all()


@pytest.mark.parametrize("n", [1, 2, 5, 12])
def test_gauss_legendre_integrates_polynomials_up_to_degree_2n_minus_1(n):
    alphas, weights = quadrature("gausslegendre", n)
    for degree in range(2 * n):
        assert math.isclose((weights * alphas**degree).sum(), 1 / (degree + 1), rel_tol=1e-12)
    if n <= 5:  # and not beyond (for larger n the error at degree 2n is below float precision)
        assert not math.isclose((weights * alphas ** (2 * n)).sum(), 1 / (2 * n + 1), rel_tol=1e-9)


def test_riemann_rules_are_exact_on_the_degree_they_should_be():
    for rule in ("riemann_middle", "riemann_trapezoid"):
        alphas, weights = quadrature(rule, 6)
        assert math.isclose((weights * alphas).sum(), 0.5, rel_tol=1e-12)
    left, _ = quadrature("riemann_left", 4)
    right, _ = quadrature("riemann_right", 4)
    np.testing.assert_allclose(left, [0, 0.25, 0.5, 0.75])
    np.testing.assert_allclose(right, [0.25, 0.5, 0.75, 1])


# -- completeness --------------------------------------------------------------------------------


def test_ig_completeness_with_gauss_legendre_and_worse_with_left_riemann():
    # float64: one gap is 4e-4, so float32 rounding alone (1e-8 of logits ~1) is 1e-4 of it
    model = _smooth_cnn()
    torch.manual_seed(1)
    x = torch.randn(4, 3, 12, 12, dtype=torch.float64)
    logits = model(x).detach()
    gap = (
        logits.gather(1, TARGETS[:, None])[:, 0]
        - model(torch.zeros_like(x)).detach().gather(1, TARGETS[:, None])[:, 0]
    )
    gl = _run(model, x, "integrated_gradients", n_steps=64)
    assert (gl.delta.abs() / gap.abs()).max() < 1e-8
    torch.testing.assert_close(gl.attributions.flatten(1).sum(1) - gap, gl.delta)
    left = _run(model, x, "integrated_gradients", n_steps=8, rule="riemann_left")
    assert (left.delta.abs() / gap.abs()).max() > 1e-2


# -- Captum on the same inputs (float64) -----------------------------------------------------------


def test_saliency_and_input_x_gradient_match_captum(cnn64, images64):
    ex = sl.explain(cnn64, images64, methods=["saliency", "input_x_gradient"], target=TARGETS)
    sal = Saliency(cnn64).attribute(images64, target=TARGETS)
    ixg = InputXGradient(cnn64).attribute(images64, target=TARGETS)
    torch.testing.assert_close(ex["saliency"].attributions, sal)
    torch.testing.assert_close(ex["input_x_gradient"].attributions, ixg)


@pytest.mark.parametrize(
    "rule", ["gausslegendre", "riemann_left", "riemann_right", "riemann_middle"]
)
@pytest.mark.parametrize("baselines", ["zero", "tensor"])
def test_integrated_gradients_matches_captum(cnn64, images64, rule, baselines):
    if baselines == "tensor":
        torch.manual_seed(3)
        baselines = torch.randn_like(images64) * 0.1
    theirs, delta = IntegratedGradients(cnn64).attribute(
        images64,
        baselines=None if isinstance(baselines, str) else baselines,
        target=TARGETS,
        n_steps=12,
        method=rule,
        return_convergence_delta=True,
    )
    a = _run(cnn64, images64, "integrated_gradients", n_steps=12, rule=rule, baselines=baselines)
    # Captum casts its step sizes to float32 (and builds its Riemann nodes with a float32
    # linspace), so in float64 the two agree to ~1e-7, not to machine precision.
    torch.testing.assert_close(a.attributions, theirs, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(a.delta, delta, rtol=1e-6, atol=1e-8)


def test_trapezoid_weights_sum_to_one_unlike_captums(cnn64, images64):
    # Captum's riemann_trapezoid uses the nodes linspace(0, 1, n) with weights 1/n halved at both
    # ends, which sum to (n - 1)/n; ours are the trapezoid weights 1/(n - 1) (halved), so ours
    # equal Captum's times n / (n - 1).
    n = 10
    theirs = IntegratedGradients(cnn64).attribute(
        images64, target=TARGETS, n_steps=n, method="riemann_trapezoid"
    )
    a = _run(cnn64, images64, "integrated_gradients", n_steps=n, rule="riemann_trapezoid")
    torch.testing.assert_close(a.attributions, theirs * n / (n - 1), rtol=1e-6, atol=1e-9)


def test_guided_backprop_and_deconvnet_match_captum(cnn64, images64):
    ex = sl.explain(cnn64, images64, methods=["guided_backprop", "deconvnet"], target=TARGETS)
    gbp = GuidedBackprop(cnn64).attribute(images64, target=TARGETS)
    dec = Deconvolution(cnn64).attribute(images64, target=TARGETS)
    torch.testing.assert_close(ex["guided_backprop"].attributions, gbp)
    torch.testing.assert_close(ex["deconvnet"].attributions, dec)
    plain = sl.explain(cnn64, images64, methods="saliency", target=TARGETS, absolute=False)
    assert not torch.allclose(gbp, plain["saliency"].attributions)
    assert ex["guided_backprop"].passes == 1 and ex["deconvnet"].passes == 1


class _FixedNoise:
    """Makes Captum and saliencelab add the very same noise.

    saliencelab draws its (n, B, ...) standard-normal noise through
    `smoothgrad.standard_normal` (k-major: draw k of sample b is [k, b]) and scales it by σ;
    Captum's NoiseTunnel calls `torch.normal(0, stdev_expanded)` for (B·n, ...) rows ordered
    sample-major (row b·n + k). Both are patched to serve slices of one fixed tensor `z`.
    """

    def __init__(self, monkeypatch, z: torch.Tensor) -> None:
        self.z, self.used = z, 0
        monkeypatch.setattr(smoothgrad_module, "standard_normal", self.ours)
        monkeypatch.setattr(torch, "normal", self.captums)

    def ours(self, shape, gen, like):
        out = self.z[self.used : self.used + shape[0]]
        self.used += shape[0]
        assert out.shape == shape
        return out.to(like)

    def captums(self, mean, std):
        n, b = self.z.shape[:2]
        return mean + std * self.z.transpose(0, 1).reshape(b * n, *self.z.shape[2:])


@pytest.mark.parametrize("kind", ["smoothgrad", "smoothgrad_sq", "vargrad"])
@pytest.mark.parametrize("base", ["saliency", "input_x_gradient", "guided_backprop"])
def test_smoothgrad_family_matches_captums_noise_tunnel_with_the_same_noise(
    monkeypatch, cnn64, images64, kind, base
):
    n, sigma = 6, 0.3
    torch.manual_seed(5)
    _FixedNoise(monkeypatch, torch.randn(n, *images64.shape, dtype=torch.float64))
    a = _run(cnn64, images64, kind, base=base, n_samples=n, stdevs=sigma)
    peer = {"saliency": Saliency, "input_x_gradient": InputXGradient}.get(base, GuidedBackprop)
    theirs = NoiseTunnel(peer(cnn64)).attribute(
        images64, nt_type=kind, nt_samples=n, stdevs=sigma, target=TARGETS
    )
    torch.testing.assert_close(a.attributions, theirs)
    assert a.passes == n


def test_smoothgrad_is_the_mean_over_its_noise_and_sigma_follows_the_range(monkeypatch, cnn64):
    torch.manual_seed(1)
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    z = torch.randn(4, *x.shape, dtype=torch.float64)
    _FixedNoise(monkeypatch, z)
    a = _run(
        cnn64,
        x,
        "smoothgrad",
        target=TARGETS[:3],
        n_samples=4,
        noise_level=0.2,
        base="integrated_gradients",
        base_options={"n_steps": 8},
    )
    sigma = 0.2 * (x.flatten(1).amax(1) - x.flatten(1).amin(1))
    torch.testing.assert_close(a.sigma, sigma)
    ig = [
        _run(
            cnn64,
            x + sigma.view(-1, 1, 1, 1) * z[k],
            "integrated_gradients",
            TARGETS[:3],
            n_steps=8,
        )
        for k in range(4)
    ]
    torch.testing.assert_close(a.attributions, torch.stack([i.attributions for i in ig]).mean(0))
    assert a.passes == 4 * 8


def test_vargrad_over_groups_of_draws_equals_one_group(monkeypatch, cnn64, images64):
    torch.manual_seed(6)
    z = torch.randn(7, *images64.shape, dtype=torch.float64)
    _FixedNoise(monkeypatch, z)
    one = _run(cnn64, images64, "vargrad", n_samples=7, stdevs=0.5)
    _FixedNoise(monkeypatch, z)
    monkeypatch.setattr(smoothgrad_module, "MAX_NOISY_VALUES", 2 * images64.numel())  # 2 draws
    grouped = _run(cnn64, images64, "vargrad", n_samples=7, stdevs=0.5)
    scale = one.attributions.abs().max()  # the variances are small: compare relative to them
    torch.testing.assert_close(grouped.attributions, one.attributions, rtol=1e-9, atol=1e-9 * scale)
    assert grouped.passes == 7


def test_expected_gradients_and_captum_gradient_shap_estimate_the_same_expectation():
    # Both estimate E_{x'~D} IG(x; x'), which we compute accurately as the mean over the
    # baselines of IG with 32 Gauss–Legendre steps; 500 draws each bring both within a few %.
    model = _smooth_cnn()
    torch.manual_seed(1)
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    dist = torch.randn(3, 3, 6, 6, dtype=torch.float64)
    target = TARGETS[:2]
    ref = torch.stack(
        [
            _run(model, x, "integrated_gradients", target, n_steps=32, baselines=d).attributions
            for d in dist
        ]
    ).mean(0)
    ours = _run(model, x, "expected_gradients", target, baselines=dist, n_samples=500)
    torch.manual_seed(0)
    np.random.seed(0)
    theirs = GradientShap(model).attribute(x, baselines=dist, target=target, n_samples=500)

    def rel(a):
        return ((a - ref).norm() / ref.norm()).item()

    assert rel(ours.attributions) < 0.08 and rel(theirs) < 0.08
    assert ours.passes == 500


def test_expected_gradients_noise_is_reproducible_and_independent_of_chunking(cnn64, images64):
    kw = dict(n_samples=5, stdevs=0.2, baselines="batch")
    one = sl.explain(cnn64, images64, methods={"expected_gradients": kw}, chunk_size=64)
    small = sl.explain(cnn64, images64, methods={"expected_gradients": kw}, chunk_size=3)
    torch.testing.assert_close(
        one["expected_gradients"].attributions, small["expected_gradients"].attributions
    )
    other = sl.explain(cnn64, images64, methods={"expected_gradients": {**kw, "seed": 1}})
    assert not torch.allclose(
        one["expected_gradients"].attributions, other["expected_gradients"].attributions
    )


@pytest.mark.parametrize(
    ("method", "options"),
    [
        ("expected_gradients", {"n_samples": 8}),
        ("deeplift_shap", {"n_baselines": 3}),
    ],
)
def test_batch_baselines_do_not_depend_on_the_batchs_order(cnn64, images64, method, options):
    """baselines="batch" depends on which inputs share the batch, by definition, but not on
    their order: reversing the batch changed expected gradients' maps by 0.68 of their scale
    (each draw's reference index was a row position)."""
    kw = {**options, "baselines": "batch"}
    forward = sl.explain(cnn64, images64, methods={method: kw}, target=TARGETS)[method]
    flipped = sl.explain(cnn64, images64.flip(0), methods={method: kw}, target=TARGETS.flip(0))
    torch.testing.assert_close(flipped[method].attributions.flip(0), forward.attributions)


# -- documented defaults and distributions (mutation audit) -----------------------------------


def test_ig_defaults_are_captums_fifty_gauss_legendre_steps_from_zero(cnn64, images64):
    # Captum's defaults are the same: 50 Gauss–Legendre steps from a zero baseline.
    theirs = IntegratedGradients(cnn64).attribute(images64, target=TARGETS)
    a = _run(cnn64, images64, "integrated_gradients")
    torch.testing.assert_close(a.attributions, theirs, rtol=1e-6, atol=1e-9)
    assert a.passes == 50


def test_uniform_baseline_spans_each_samples_range(x_small):
    # On S = w·x the baseline reads back as x' = x - IG / w; mapped to u = (x' - lo) / (hi - lo)
    # with each sample's own range it should look like U(0, 1): it reaches both ends.
    model = _linear()
    w = model[1].weight[TARGETS].view(x_small.shape)
    a = _run(model, x_small, "integrated_gradients", n_steps=2, baselines="uniform")
    flat = x_small.flatten(1)
    lo, hi = flat.amin(1, keepdim=True), flat.amax(1, keepdim=True)
    u = ((x_small - a.attributions / w).flatten(1) - lo) / (hi - lo)
    assert (u.amin(1) < 0.1).all() and (u.amax(1) > 0.9).all()
    assert ((u.mean(1) - 0.5).abs() < 0.15).all()


def _eg_baselines(model, x, w, **options):
    """E[x̃ - x'] of expected gradients on S = w·x (its gradient is w whatever α)."""
    a = _run(model, x, "expected_gradients", **options)
    return x - a.attributions / w


def test_expected_gradients_uniform_references_span_each_samples_range(x_small):
    # One draw on S = w·x: x - EG / w is the draw's reference x'. Mapped with each sample's own
    # range to u = (x' - lo) / (hi - lo), it looks like U(0, 1) (not the batch's range), and
    # each sample has its own reference (drawn from its own generator, not shared by row k).
    model = _linear()
    w = model[1].weight[TARGETS].view(x_small.shape)
    one = _eg_baselines(model, x_small, w, n_samples=1).flatten(1)
    flat = x_small.flatten(1)
    lo, hi = flat.amin(1, keepdim=True), flat.amax(1, keepdim=True)
    u = (one - lo) / (hi - lo)
    assert (u.amin(1) > -1e-9).all() and (u.amax(1) < 1 + 1e-9).all()
    assert (u.amin(1) < 0.15).all() and (u.amax(1) > 0.85).all()  # 48 values each
    assert ((u.mean(1) - 0.5).abs() < 0.15).all()
    for i in range(1, 4):
        assert not torch.allclose(u[i], u[0])
    # a fresh noise image per draw: three draws average to another reference than draw 0's
    three = _eg_baselines(model, x_small, w, n_samples=3).flatten(1)
    assert not torch.allclose(three, one)


def test_expected_gradients_input_noise_has_std_stdevs(x_small):
    # One draw per input against x' = 0: IG / w = x̃ - x' = x + stdevs·ε, ε ~ N(0, 1), so
    # x - IG / w = -stdevs·ε (and 0 without noise).
    model = _linear()
    w = model[1].weight[TARGETS].view(x_small.shape)
    base = torch.zeros(1, 3, 4, 4, dtype=torch.float64)
    noise = -_eg_baselines(model, x_small, w, baselines=base, n_samples=1, stdevs=0.5)
    assert 0.43 < noise.std().item() < 0.57 and abs(noise.mean().item()) < 0.1
    quiet = _eg_baselines(model, x_small, w, baselines=base, n_samples=1)
    torch.testing.assert_close(quiet, torch.zeros_like(quiet))


def test_smoothgrad_defaults_are_25_draws_at_15_percent_of_the_range(cnn64, images64):
    a = _run(cnn64, images64, "smoothgrad")
    flat = images64.flatten(1)
    torch.testing.assert_close(a.sigma, 0.15 * (flat.amax(1) - flat.amin(1)))
    assert a.passes == 25


def test_vargrad_is_the_population_variance_of_the_draws_also_in_groups(monkeypatch, cnn64):
    # The values are ~1e-7: compared relatively (the default atol would hide any error).
    torch.manual_seed(6)
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    z = torch.randn(7, *x.shape, dtype=torch.float64)
    target = TARGETS[:2]
    draws = torch.stack(
        [_run(cnn64, x + 0.5 * z[k], "saliency", target).attributions for k in range(7)]
    )
    want = draws.var(0, unbiased=False)
    for group in (7, 2, 3):
        _FixedNoise(monkeypatch, z)
        monkeypatch.setattr(smoothgrad_module, "MAX_NOISY_VALUES", group * x.numel())
        got = _run(cnn64, x, "vargrad", target, n_samples=7, stdevs=0.5)
        torch.testing.assert_close(got.attributions, want, rtol=1e-9, atol=0)


@pytest.mark.parametrize("kind", ["smoothgrad", "smoothgrad_sq", "vargrad"])
def test_smoothgrad_family_of_a_noise_free_map_averages_its_maps(images64, cnn64, kind):
    # center_gaussian ignores the input: every draw gives the same map m, so the mean of m is m,
    # the mean of m² is m², and the variance is 0 (for the maps as for the attributions).
    m = _run(cnn64, images64, "center_gaussian").maps
    a = _run(cnn64, images64, kind, base="center_gaussian", n_samples=3)
    want = {"smoothgrad": m, "smoothgrad_sq": m * m, "vargrad": torch.zeros_like(m)}[kind]
    torch.testing.assert_close(a.maps.to(want.dtype), want, atol=1e-6, rtol=1e-6)


def test_squared_and_variance_kinds_are_unsigned_for_a_signed_base(cnn64, images64):
    opts = {"base": "input_x_gradient", "n_samples": 3}
    ex = sl.explain(
        cnn64, images64, methods={k: opts for k in ("smoothgrad", "smoothgrad_sq", "vargrad")}
    )
    assert ex["smoothgrad"].signed and (ex["smoothgrad"].attributions < 0).any()
    for kind in ("smoothgrad_sq", "vargrad"):
        assert not ex[kind].signed and (ex[kind].attributions >= 0).all()


# -- batches, chunks, passes, state ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "options"),
    [
        ("integrated_gradients", {"n_steps": 6}),
        ("expected_gradients", {"n_samples": 5}),
        ("smoothgrad", {"n_samples": 3}),
        ("vargrad", {"n_samples": 3, "base": "input_x_gradient"}),
        ("guided_backprop", {}),
    ],
)
def test_mixed_targets_equal_one_call_per_sample(cnn64, images64, method, options):
    both = _run(cnn64, images64, method, **options)
    for i in range(4):
        # Row i equals row i of the same batch run with target i for all (the noise and
        # baselines drawn depend on the seed and the batch, not on the targets).
        alone = _run(cnn64, images64, method, target=int(TARGETS[i]), **options)
        torch.testing.assert_close(both.attributions[i], alone.attributions[i])
    assert torch.equal(both.target, TARGETS)


@pytest.mark.parametrize(
    ("method", "options"),
    [
        ("integrated_gradients", {"n_steps": 7}),
        ("smoothgrad", {"n_samples": 5}),
        (
            "smoothgrad",
            {"n_samples": 2, "base": "integrated_gradients", "base_options": {"n_steps": 4}},
        ),
    ],
)
def test_chunk_size_3_equals_one_chunk(tiny_cnn, images, method, options):
    one = sl.explain(tiny_cnn, images, methods={method: options}, chunk_size=64)[method]
    small = sl.explain(tiny_cnn, images, methods={method: options}, chunk_size=3)[method]
    torch.testing.assert_close(one.attributions, small.attributions)


def _one_sample_in_three_batches(model, method, options, run):
    """Sample x's attributions alone, first in a batch of 4 and third in it; the other three
    inputs have other ranges (one three times brighter), so a batch-wide range would move."""
    torch.manual_seed(3)
    x = torch.rand(1, 3, 12, 12)
    others = torch.rand(3, 3, 12, 12) * torch.tensor([1.0, 3.0, 0.5]).view(3, 1, 1, 1)
    first, third = torch.cat([x, others]), torch.cat([others[:2], x, others[2:]])
    alone = run(model, x, method, torch.tensor([2]), **options).attributions[0]
    at0 = run(model, first, method, torch.tensor([2, 0, 1, 3]), **options).attributions[0]
    at2 = run(model, third, method, torch.tensor([0, 1, 2, 3]), **options).attributions[2]
    return alone, at0, at2


SAMPLE_DRAWN = [
    ("integrated_gradients", {"baselines": "uniform", "n_steps": 4}),
    ("expected_gradients", {"n_samples": 4}),
    ("expected_gradients", {"n_samples": 4, "stdevs": 0.1}),
    ("expected_gradients", {"n_samples": 4, "baselines": "tensor"}),
]


@pytest.mark.parametrize(("method", "options"), SAMPLE_DRAWN)
def test_random_draws_are_the_samples_own_not_its_rows(tiny_cnn, method, options):
    """A sample gets the same map alone, first in a batch of 4 and third in it: its uniform
    baseline / references, α's, reference indices and input noise are seeded by `seed` and the
    sample's values, over its own value range, not by its row or the batch (up to rounding)."""
    if options.get("baselines") == "tensor":
        torch.manual_seed(5)
        options = {**options, "baselines": torch.rand(6, 3, 12, 12)}
    alone, at0, at2 = _one_sample_in_three_batches(tiny_cnn, method, options, _run)
    torch.testing.assert_close(at0, alone)
    torch.testing.assert_close(at2, alone)

    def in_chunks_of_3(model, x, method, target, **options):  # draws made per chunk of rows
        return sl.explain(model, x, methods={method: options}, target=target, chunk_size=3)[method]

    torch.testing.assert_close(
        _one_sample_in_three_batches(tiny_cnn, method, options, in_chunks_of_3)[2], alone
    )
    reseeded = _one_sample_in_three_batches(tiny_cnn, method, {**options, "seed": 1}, _run)[0]
    assert not torch.allclose(reseeded, alone)  # and the draws still follow the seed


def test_passes_reported(tiny_cnn, images):
    ex = sl.explain(
        tiny_cnn,
        images,
        methods={"integrated_gradients": {"n_steps": 16}, "smoothgrad": {"n_samples": 5}},
    )
    assert ex["integrated_gradients"].passes == 16
    assert ex["integrated_gradients"].forwards == 1  # S(x') for the completeness gap
    assert ex["smoothgrad"].passes == 5
    specs = {m.name: m for m in sl.methods()}
    assert specs["integrated_gradients"].cost == "n_steps"
    assert specs["expected_gradients"].cost == "n_samples"
    assert specs["smoothgrad"].options["base"] == "saliency"


def test_ig_runs_as_few_python_steps_as_chunks(tiny_cnn, images):
    calls = []
    tiny_cnn.register_forward_hook(lambda *a: calls.append(a[1][0].shape[0]))
    sl.explain(tiny_cnn, images, methods="integrated_gradients", n_steps=50, chunk_size=40)
    # one forward for the target, then 200 rows in chunks of 40, then S(x') in one forward; the
    # engine may probe once with one row in each layout whether channels-last gives the same output
    assert [c for c in calls if c != 1] == [4, 40, 40, 40, 40, 40, 4]
    assert calls.count(1) <= 2


@pytest.mark.parametrize("method", ["guided_backprop", "deconvnet"])
def test_hooks_removed_and_flags_restored_after_guided_even_when_it_raises(
    tiny_cnn, images, method
):
    tiny_cnn.train()
    tiny_cnn.fc.weight.requires_grad_(False)

    def bad_target(out):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        sl.explain(tiny_cnn, images, methods=method, target=bad_target)
    assert tiny_cnn.training and all(m.training for m in tiny_cnn.modules())
    assert not tiny_cnn.fc.weight.requires_grad
    assert tiny_cnn.features[0].weight.requires_grad
    for m in tiny_cnn.modules():
        assert not m._forward_hooks and not m._backward_hooks and not m._forward_pre_hooks
    # and the next plain gradient is the plain gradient again
    tiny_cnn.eval()
    sal = sl.explain(tiny_cnn, images, methods="saliency", absolute=False, target=1)["saliency"]
    x = images.clone().requires_grad_(True)
    tiny_cnn(x)[:, 1].sum().backward()
    torch.testing.assert_close(sal.attributions, x.grad)


def test_guided_backprop_without_relu_modules_warns(x_small):
    with pytest.warns(UserWarning, match="no nn.ReLU"):
        sl.explain(_linear(), x_small, methods="guided_backprop")


# -- bad options: one clear sentence ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "options", "message"),
    [
        ("integrated_gradients", {"baselines": "zeros"}, "unknown baselines 'zeros'.*zero"),
        ("integrated_gradients", {"rule": "simpson"}, "unknown rule 'simpson'"),
        ("integrated_gradients", {"rule": "gauss_legendre"}, "Did you mean: gausslegendre"),
        ("integrated_gradients", {"n_steps": 0}, "n_steps must be an integer of at least 1"),
        ("integrated_gradients", {"n_steps": 2.5}, "n_steps must be an integer"),
        ("integrated_gradients", {"n_steps": 1, "rule": "riemann_trapezoid"}, "at least 2"),
        ("integrated_gradients", {"baselines": torch.zeros(2, 3, 5, 5)}, "does not broadcast"),
        ("integrated_gradients", {"blur_sigma": -1, "baselines": "blur"}, "blur_sigma"),
        ("expected_gradients", {"baselines": torch.zeros(3, 3, 5, 5)}, "must have shape"),
        ("expected_gradients", {"baselines": "blurry"}, "unknown baselines 'blurry'"),
        ("expected_gradients", {"n_samples": 0}, "n_samples must be"),
        ("expected_gradients", {"stdevs": -0.1}, "stdevs must be"),
        ("smoothgrad", {"base": "salency"}, "Did you mean: saliency"),
        ("smoothgrad", {"base": "vargrad"}, "cannot itself be vargrad"),
        ("smoothgrad", {"base_options": {"n_step": 3}}, "has no option 'n_step'"),
        ("vargrad", {"noise_level": -1}, "noise_level must be"),
    ],
)
def test_bad_options_are_one_clear_sentence(tiny_cnn, images, method, options, message):
    with pytest.raises(SaliencelabError, match=message) as info:
        sl.explain(tiny_cnn, images, methods={method: options})
    text = str(info.value)
    assert "\n" not in text and text.endswith((".", "?"))


# -- options refused in one sentence, not read by their truth value or truncated -----------------


@pytest.mark.parametrize(
    ("method", "options", "words"),
    [
        ("saliency", {"absolute": "no"}, "absolute must be True or False"),
        ("integrated_gradients", {"baselines": "uniform", "seed": "a"}, "seed must be an integer"),
        ("integrated_gradients", {"seed": 1.7}, "seed must be an integer"),
        ("integrated_gradients", {"baselines": float("nan")}, "finite number"),
        ("smoothgrad", {"seed": None}, "seed must be an integer"),
        ("vargrad", {"seed": 2**70}, "seed must be an integer"),
        ("smoothgrad", {"base": 3}, "base must be a method's name"),
        ("smoothgrad", {"base_options": 3}, "base_options must be a dict"),
        ("smoothgrad", {"noise_level": float("inf")}, "noise_level must be"),
        ("expected_gradients", {"seed": "a"}, "seed must be an integer"),
        ("expected_gradients", {"stdevs": float("nan")}, "stdevs must be a finite"),
        ("expected_gradients", {"baselines": float("inf")}, "finite number"),
    ],
)
def test_bad_options_are_one_sentence(x_small, method, options, words):
    with pytest.raises(SaliencelabError, match=words):
        _run(_smooth_cnn(), x_small, method, n_samples=2, **options) if method in (
            "smoothgrad",
            "vargrad",
        ) else _run(_smooth_cnn(), x_small, method, **options)


def test_flags_take_bools_and_0_1(x_small):
    model = _smooth_cnn()
    signed = _run(model, x_small, "saliency", absolute=False).attributions
    assert torch.equal(_run(model, x_small, "saliency", absolute=0).attributions, signed)
    assert torch.equal(
        _run(model, x_small, "saliency", absolute=np.bool_(False)).attributions, signed
    )


def test_blur_of_a_sigma_far_beyond_the_image_is_the_full_kernels_blur():
    """A σ larger than the image folds the kernel to the image's size with the same result,
    instead of allocating a ±3σ kernel (σ = 1e6 asked for petabytes)."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 9, dtype=torch.float64)

    def full(x, sigma):  # the plain ±3σ kernel, replicate padding
        r = math.ceil(3 * sigma)
        t = torch.arange(-r, r + 1, dtype=x.dtype)
        k = torch.exp(-0.5 * (t / sigma) ** 2)
        k = k / k.sum()
        y = torch.nn.functional.pad(x, (r, r, r, r), mode="replicate")
        y = torch.nn.functional.conv2d(y, k.view(1, 1, 1, -1).expand(3, 1, 1, -1), groups=3)
        return torch.nn.functional.conv2d(y, k.view(1, 1, -1, 1).expand(3, 1, -1, 1), groups=3)

    for sigma in (0.7, 2.5, 4.0, 30.0):
        torch.testing.assert_close(gaussian_blur(x, sigma), full(x, sigma))
    # σ → ∞: the kernel's mass lies past the image, on its edges: every pixel becomes the mean
    # of the four corner pixels (the tails summed by erf there)
    huge = gaussian_blur(x, 1e9)
    corners = x[..., [0, -1], :][..., [0, -1]].mean(dim=(-2, -1), keepdim=True)
    torch.testing.assert_close(huge, corners.expand_as(x), atol=1e-7, rtol=0)
    ig = _run(
        _smooth_cnn(),
        x[:, :, :4, :4],
        "integrated_gradients",
        target=0,
        n_steps=4,
        baselines="blur",
        blur_sigma=1e12,
    )
    assert torch.isfinite(ig.maps).all()


def test_deconvnet_is_the_same_with_in_place_relus():
    """An in-place ReLU overwrote the input the deconv hook read, so the gradient went through
    the ReLU's own x > 0 gate (101 % off); the input is now kept before the module runs, and
    guided backprop (which reads only the output) is the same either way too."""
    torch.manual_seed(0)

    def net(inplace):
        return nn.Sequential(
            nn.Conv2d(3, 4, 3), nn.ReLU(inplace=inplace), nn.Flatten(), nn.Linear(4 * 4 * 4, 3)
        ).eval()

    a, b = net(True), net(False)
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, 6, 6)
    for method in ("deconvnet", "guided_backprop"):
        ours = _run(a, x, method, target=0).attributions
        torch.testing.assert_close(ours, _run(b, x, method, target=0).attributions, msg=method)
    # a module used twice, in place: each call's own input is kept
    relu = nn.ReLU(inplace=True)
    twice = nn.Sequential(nn.Conv2d(3, 4, 3), relu, nn.Conv2d(4, 4, 1), relu, nn.Flatten()).eval()
    plain = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 1), nn.ReLU(), nn.Flatten()
    ).eval()
    plain.load_state_dict(twice.state_dict())
    want = _run(plain, x, "deconvnet", target=5).attributions
    torch.testing.assert_close(_run(twice, x, "deconvnet", target=5).attributions, want)


def test_signed_gradients_are_labelled_signed_and_so_is_their_smoothgrad(tiny_cnn, images):
    """saliency(absolute=False) returned a signed map labelled unsigned (drawn with the
    unsigned heat colours, negative values clipped), and SmoothGrad of it inherited the label."""
    methods = {
        "saliency": {"absolute": False},
        "smoothgrad": {"n_samples": 2, "base_options": {"absolute": False}},
    }
    ex = sl.explain(tiny_cnn, images[:2], methods=methods)
    for name in methods:
        assert ex[name].signed and bool((ex[name].maps < 0).any()), name
    plain = sl.explain(
        tiny_cnn, images[:2], methods={"saliency": {}, "smoothgrad": {"n_samples": 2}}
    )
    assert not plain["saliency"].signed and not plain["smoothgrad"].signed
