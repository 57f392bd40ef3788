"""LIME and KernelSHAP against references: exact Shapley values by brute-force enumeration of
the Shapley formula, a linear model's own coefficients, and Captum's Lime / KernelShap."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from captum._utils.models.linear_model import SkLearnLinearRegression, SkLearnRidge
from captum.attr import KernelShap, Lime
from torch import nn

import saliencelab as sl
from saliencelab.core.errors import SaliencelabError
from saliencelab.methods.gradient.baselines import gaussian_blur

# Imported here so the methods are registered even before the package imports them.
from saliencelab.methods.perturbation import kernelshap, lime  # noqa: F401
from saliencelab.methods.perturbation.features import default_feature_mask
from saliencelab.methods.perturbation.kernelshap import sampled_coalitions
from saliencelab.methods.perturbation.lime import lime_coalitions, lime_weights


class Interactions(nn.Module):
    """A nonlinear tabular model with pairwise and higher-order interactions."""

    def __init__(self, m: int, classes: int = 3) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(m, 16), nn.Tanh(), nn.Linear(16, classes))
        self.pair = nn.Parameter(torch.randn(classes, m, m) / m)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        quad = (torch.matmul(x, self.pair) * x).sum(-1).T  # x_b^T P_c x_b
        return self.mlp(x) + quad + x.prod(dim=1, keepdim=True).tanh()


def exact_shapley(model, x, base, mask, target) -> torch.Tensor:
    """φ_i = Σ_{S ⊆ N∖i} |S|!(M−|S|−1)!/M! [v(S ∪ i) − v(S)] for one input x, by enumeration.

    v(S) = the target score of x with the elements whose feature is outside S set to `base`.
    """
    m = int(mask.max()) + 1
    subsets = list(itertools.product([False, True], repeat=m))
    keep = torch.tensor(subsets)[:, mask]  # (2^M, *mask.shape)
    if keep.dim() == x.dim():  # mask shared by the channels
        keep = keep[:, None]
    with torch.no_grad():
        scores = model(torch.where(keep, x, base))[:, target]
    v = {s: float(scores[k]) for k, s in enumerate(subsets)}
    phi = torch.zeros(m, dtype=torch.float64)
    for s, value in v.items():
        size = sum(s)
        for i in range(m):
            if not s[i]:
                with_i = s[:i] + (True,) + s[i + 1 :]
                w = math.factorial(size) * math.factorial(m - size - 1) / math.factorial(m)
                phi[i] += w * (v[with_i] - value)
    return phi


def _tabular(m: int, batch: int = 2, seed: int = 0):
    torch.manual_seed(seed)
    model = Interactions(m).double().eval()
    x = torch.randn(batch, m, dtype=torch.float64)
    base = 0.3 * torch.randn(batch, m, dtype=torch.float64)
    return model, x, base


@pytest.mark.parametrize("m", [3, 6, 10])
def test_kernelshap_equals_exact_shapley_values(m):
    model, x, base = _tabular(m)
    target = [1, 2]
    a = sl.explain(model, x, "kernelshap", target=target, baseline=base)["kernelshap"]
    mask = torch.arange(m)
    for b in range(2):
        ref = exact_shapley(model, x[b], base[b], mask, target[b])
        torch.testing.assert_close(a.extras["shapley_values"][b], ref, atol=1e-5, rtol=0)
        torch.testing.assert_close(a.attributions[b], ref, atol=1e-5, rtol=0)
    assert a.extras["exact"].all()
    assert a.forwards == 2**m  # every coalition, the empty and full ones included


def test_kernelshap_exact_on_images_with_different_feature_counts(tiny_cnn, images):
    """Per-sample masks with 3 and 5 features (padding must not leak between samples)."""
    model, x = tiny_cnn.double(), images[:2].double()
    mask = torch.zeros(2, 12, 12, dtype=torch.long)
    mask[0, :, 4:8], mask[0, :, 8:] = 1, 2
    mask[1] = torch.arange(12)[:, None].expand(12, 12) * 5 // 12
    base = x.mean(dim=(2, 3), keepdim=True)
    a = sl.explain(model, x, "kernelshap", target=3, feature_mask=mask, baseline="mean")
    phi = a["kernelshap"].extras["shapley_values"]
    for b, m in enumerate((3, 5)):
        ref = exact_shapley(model, x[b], base[b], mask[b], 3)
        torch.testing.assert_close(phi[b, :m], ref, atol=1e-5, rtol=0)
        assert (phi[b, m:] == 0).all()
        # every pixel of a feature carries the feature's value, in every channel
        expected = ref[mask[b]]
        torch.testing.assert_close(a["kernelshap"].maps[b], expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(a["kernelshap"].attributions[b, 2], expected, atol=1e-5, rtol=0)


def test_kernelshap_sampled_keeps_efficiency_and_approaches_shapley():
    m = 12
    model, x, base = _tabular(m, batch=1, seed=3)
    ref = exact_shapley(model, x[0], base[0], torch.arange(m), 0)
    for paired in (True, False):
        a = sl.explain(
            model, x, "kernelshap", target=0, baseline=base, n_samples=3000, paired=paired
        )["kernelshap"]
        phi = a.extras["shapley_values"][0]
        assert not a.extras["exact"].any()
        # repeated draws are evaluated once: 2 + the distinct coalitions of the same sampler
        drawn = sampled_coalitions(3000, m, seed=0, paired=paired)
        assert a.forwards == 2 + len(torch.unique(drawn, dim=0)) < 3002
        with torch.no_grad():
            gap = model(x)[0, 0] - model(base)[0, 0]
        torch.testing.assert_close(phi.sum(), gap, atol=1e-9, rtol=0)  # efficiency, exactly
        err = (phi - ref).abs().max() / ref.abs().max()
        assert err < 0.1, f"paired={paired}: relative error {err:.3f}"


def test_kernelshap_enumerates_when_the_budget_covers_every_coalition():
    model, x, base = _tabular(6, batch=1)
    a = sl.explain(model, x, "kernelshap", target=0, baseline=base, exact_up_to=0, n_samples=62)[
        "kernelshap"
    ]
    assert a.extras["exact"].all()
    ref = exact_shapley(model, x[0], base[0], torch.arange(6), 0)
    torch.testing.assert_close(a.extras["shapley_values"][0], ref, atol=1e-5, rtol=0)


def test_kernelshap_equals_captum_kernelshap_on_kernel_proportional_coalitions():
    """Captum's KernelShap (its own kernel: weight 1 per drawn coalition, 1e6 for the empty and
    full ones, and its own regression) fed every proper coalition of M = 4 features repeated in
    proportion to the Shapley kernel, π(1) : π(2) : π(3) = 2 : 1 : 2, is exact and deterministic:
    it must equal our enumeration."""
    m = 4
    model, x, base = _tabular(m, batch=2, seed=5)
    ours = sl.explain(model, x, "kernelshap", target=1, baseline=base)["kernelshap"]
    proper = [z for z in itertools.product([0, 1], repeat=m) if 0 < sum(z) < m]
    rows = [[1] * m, [0] * m] + [z for z in proper for _ in range(1 if sum(z) == 2 else 2)]

    def perturb(original, **kwargs):
        for row in rows:
            yield torch.tensor([row])

    captum = KernelShap(model)
    captum.perturb_func = perturb
    theirs = captum.attribute(
        x, baselines=base, target=1, feature_mask=torch.arange(m)[None], n_samples=len(rows)
    )
    torch.testing.assert_close(ours.attributions, theirs.double(), atol=1e-4, rtol=0)


def test_kernelshap_agrees_with_captum_kernelshap_sampling():
    """With its own random coalitions Captum only approaches the exact values (Monte Carlo)."""
    m = 4
    model, x, base = _tabular(m, batch=1, seed=5)
    ours = sl.explain(model, x, "kernelshap", target=1, baseline=base)["kernelshap"]
    torch.manual_seed(0)
    theirs = KernelShap(model).attribute(
        x,
        baselines=base,
        target=1,
        feature_mask=torch.arange(m)[None],
        n_samples=2000,
        perturbations_per_eval=2000,
    )
    scale = ours.attributions.abs().max()
    assert (ours.attributions - theirs).abs().max() < 0.1 * scale


def test_kernelshap_blur_baseline_efficiency(tiny_cnn, images):
    a = sl.explain(tiny_cnn, images, "kernelshap", target=0, n_segments=9, baseline="blur")
    with torch.no_grad():
        gap = tiny_cnn(images)[:, 0] - tiny_cnn(gaussian_blur(images, 10.0))[:, 0]
    phi = a["kernelshap"].extras["shapley_values"]
    assert phi.shape == (4, 9)
    torch.testing.assert_close(phi.sum(1), gap.double(), atol=1e-5, rtol=0)


def test_kernelshap_on_slic_superpixels(tiny_cnn, images):
    a = sl.explain(tiny_cnn, images, "kernelshap", target=0, feature_mask="slic", n_segments=5)
    phi = a["kernelshap"].extras["shapley_values"]
    mask = a["kernelshap"].extras["feature_mask"]
    counts = mask.flatten(1).amax(1) + 1
    with torch.no_grad():
        gap = tiny_cnn(images)[:, 0] - tiny_cnn(torch.zeros_like(images))[:, 0]
    torch.testing.assert_close(phi.sum(1), gap.double(), atol=1e-5, rtol=0)
    assert all((phi[b, int(c) :] == 0).all() for b, c in enumerate(counts))


# -- LIME -------------------------------------------------------------------------------------


def test_lime_recovers_a_linear_models_coefficients():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 12 * 12, 4)).double().eval()
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    base = 0.5
    a = sl.explain(
        model, x, "lime", target=2, n_segments=9, alpha=0.0, n_samples=50, baseline=base
    )["lime"]
    mask = a.extras["feature_mask"]
    w = model[1].weight[2].detach().view(3, 12, 12)
    for b in range(2):
        contrib = (w * (x[b] - base)).sum(0)  # (H, W)
        ref = torch.zeros(9, dtype=torch.float64).index_add_(
            0, mask[b].flatten(), contrib.flatten()
        )
        torch.testing.assert_close(a.extras["coefficients"][b], ref, atol=1e-8, rtol=0)
    intercept = model(torch.full_like(x, base))[:, 2].detach()
    torch.testing.assert_close(a.extras["intercept"], intercept, atol=1e-8, rtol=0)
    torch.testing.assert_close(a.extras["r2"], torch.ones(2, dtype=torch.float64))
    # each sample's 50 coalitions (same seed), a repeated draw evaluated once
    assert a.forwards == len(torch.unique(lime_coalitions(50, 9, seed=0), dim=0)) < 50


def test_lime_on_tabular_inputs_recovers_coefficients():
    torch.manual_seed(0)
    lin = nn.Linear(5, 2).double()
    x = torch.randn(3, 5, dtype=torch.float64)
    a = sl.explain(lin, x, "lime", target=1, alpha=0.0, n_samples=40)["lime"]
    ref = lin.weight[1].detach() * x
    torch.testing.assert_close(a.attributions, ref, atol=1e-8, rtol=0)
    torch.testing.assert_close(a.maps, ref, atol=1e-8, rtol=0)


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_lime_equals_captum_lime_on_the_same_coalitions(tiny_cnn, images, alpha):
    """Captum's Lime with our coalitions, kernel and a (ridge) least-squares surrogate."""
    n, width = 200, 0.25
    a = sl.explain(tiny_cnn, images[:2], "lime", target=1, n_segments=9, n_samples=n, alpha=alpha)
    ours = a["lime"].attributions
    z = lime_coalitions(n, 9, seed=0)

    def perturb(original, **kwargs):
        for row in z:
            yield row[None].long()

    def similarity(original, perturbed, interpretable, **kwargs):
        return float(lime_weights(interpretable.bool(), torch.tensor([9]), width).item())

    surrogate = SkLearnRidge(alpha=alpha) if alpha else SkLearnLinearRegression()
    captum = Lime(tiny_cnn, surrogate, similarity_func=similarity, perturb_func=perturb)
    mask = default_feature_mask(images[:1], "grid", 9)[:, None]
    theirs = captum.attribute(
        images[:2],
        baselines=0.0,
        target=1,
        feature_mask=mask,
        n_samples=n,
        perturbations_per_eval=n,
    )
    scale = theirs.abs().max()
    torch.testing.assert_close(ours, theirs, atol=1e-4 * float(scale), rtol=0)


def test_lime_weights_are_the_exponential_cosine_kernel():
    z = torch.tensor([[[1, 1, 1, 1], [1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 0, 0]]]).bool()
    d = torch.tensor([0.0, 0.5, 1.0, 1 - math.sqrt(0.5)], dtype=torch.float64)
    torch.testing.assert_close(
        lime_weights(z, torch.tensor([4]), 0.25)[0], torch.exp(-(d**2) / 0.0625)
    )


# -- both ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "opts"),
    [("lime", {"n_samples": 60}), ("kernelshap", {"n_samples": 60, "exact_up_to": 4})],
)
def test_seeded_deterministic_and_independent_of_chunk_size(tiny_cnn, images, method, opts):
    def run(**kw):
        return sl.explain(tiny_cnn, images, method, n_segments=9, **opts, **kw)[method]

    first = run(chunk_size=5)
    torch.testing.assert_close(run(chunk_size=64).attributions, first.attributions)
    torch.testing.assert_close(run().attributions, first.attributions)
    other = run(seed=1).attributions
    assert (other - first.attributions).abs().max() > 1e-4  # the seed matters


@pytest.mark.parametrize(
    ("method", "opts"),
    [("lime", {"n_samples": 60}), ("kernelshap", {"n_samples": 60, "exact_up_to": 4})],
)
def test_a_batch_equals_one_sample_at_a_time(tiny_cnn, images, method, opts):
    model, x = tiny_cnn.double(), images.double()
    together = sl.explain(model, x, method, target=[0, 1, 2, 3], n_segments=9, **opts)[method]
    for b in range(4):
        alone = sl.explain(model, x[b : b + 1], method, target=b, n_segments=9, **opts)[method]
        torch.testing.assert_close(alone.attributions[0], together.attributions[b])


def test_registered_as_perturbation_methods():
    specs = {s.name: s for s in sl.methods()}
    for name in ("lime", "kernelshap"):
        assert specs[name].family == "perturbation"
        assert {"feature_mask", "n_samples", "baseline", "seed"} <= set(specs[name].options)


@pytest.mark.parametrize(
    ("method", "opts", "message"),
    [
        ("lime", {"feature_mask": torch.zeros(5, 5, dtype=torch.long)}, "does not fit inputs"),
        ("lime", {"alpha": 0.0, "n_samples": 9}, "fewer than the 10 unknowns"),
        ("lime", {"n_samples": 0}, "n_samples must be an integer of at least 2"),
        ("lime", {"kernel_width": 0}, "kernel_width must be a positive number"),
        ("lime", {"alpha": -1}, "alpha must be a non-negative number"),
        ("lime", {"baseline": "blurr"}, "unknown baseline 'blurr'"),
        ("kernelshap", {"exact_up_to": 50}, "exact_up_to must be an integer from 0 to 20"),
        ("kernelshap", {"exact_up_to": 0, "n_samples": 5}, "fewer than the 8 unknowns"),
        ("kernelshap", {"feature_mask": torch.ones(4, 12, 12)}, "integer feature ids"),
    ],
)
def test_bad_options_are_one_clear_sentence(tiny_cnn, images, method, opts, message):
    opts = {"n_segments": 9, **opts}
    with pytest.raises(SaliencelabError, match=message):
        sl.explain(tiny_cnn, images, method, **opts)


class ViewsConvOutput(nn.Module):
    """A CNN whose head uses `.view` on a conv output: that fails on channels-last strides."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 12 * 12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x))
        return self.fc(h.view(h.shape[0], -1))


@pytest.mark.parametrize("make_model", ["tiny_cnn", "views"])
def test_coalition_scores_match_one_forward_per_drawn_row(make_model, tiny_cnn, images):
    """Repeated coalitions are run once and NHWC is used where the model allows it; every drawn
    row's score must still equal a plain forward of its perturbed input (a loop, one at a time)."""
    from saliencelab.core.context import Context
    from saliencelab.core.engine import Engine
    from saliencelab.core.targets import Target
    from saliencelab.methods.perturbation.features import apply_features, channels_last_ok
    from saliencelab.methods.perturbation.surrogate import Coalitions, coalition_scores

    torch.manual_seed(1)
    net = tiny_cnn if make_model == "tiny_cnn" else ViewsConvOutput().eval()
    model = sl.Model(net)
    x = images[:2]
    mask = default_feature_mask(x, "grid", 4)
    z0 = torch.tensor([[1, 0, 1, 0], [1, 0, 1, 0], [0, 0, 0, 1], [1, 0, 1, 0], [1, 1, 1, 1]])
    z1 = torch.tensor([[0, 1, 1, 0], [0, 1, 1, 0], [1, 1, 0, 0]])
    coalitions = Coalitions.stack([z0.bool(), z1.bool()], 4)
    target = torch.tensor([1, 2])
    ctx = Context(model, Engine(model, chunk_size=2), x, Target(target))
    ctx.engine.probe_layout(x)  # as sl.explain does before any method runs
    y = coalition_scores(ctx, coalitions, mask, torch.zeros(1, 1, 1, 1))
    assert ctx.engine.cost.forward_rows == 3 + 2  # distinct (sample, coalition) pairs
    assert channels_last_ok(ctx) == (make_model == "tiny_cnn")
    for b, zb in enumerate([z0, z1]):
        for k, row in enumerate(zb):
            inp = apply_features(x[b : b + 1], 0.0, mask[b : b + 1], row[None].bool())
            with torch.no_grad():
                ref = net(inp)[0, target[b]].double()
            torch.testing.assert_close(y[b, k], ref, atol=1e-6, rtol=1e-5)
    assert (y[1, 3:] == 0).all()  # padded rows


# -- coalition samplers and per-element masks ------------------------------------------------------


def test_lime_coalitions_are_all_ones_then_fair_coin_flips():
    z = lime_coalitions(2001, 50, seed=3)
    assert z.shape == (2001, 50) and z[0].all()
    draws = z[1:].double()
    assert abs(float(draws.mean()) - 0.5) < 0.01  # 100 000 Bernoulli(½): sd 0.0016
    assert (draws.mean(0) - 0.5).abs().max() < 0.06  # each feature: 2000 draws, sd 0.011


@pytest.mark.parametrize("paired", [False, True])
def test_kernelshap_sampler_draws_sizes_in_proportion_to_the_shapley_kernel(paired):
    """P(|z| = s) ∝ C(M, s) π(s) = (M − 1) / (s (M − s)); each feature equally likely; with
    `paired` every odd row is the complement of the row before it."""
    m, n = 6, 40000
    z = sampled_coalitions(n, m, seed=2, paired=paired)
    assert z.shape == (n, m)
    sizes = z.sum(1)
    assert ((sizes > 0) & (sizes < m)).all()
    mass = torch.tensor([(m - 1) / (s * (m - s)) for s in range(1, m)], dtype=torch.float64)
    expected = mass / mass.sum()  # 0.263, 0.164, 0.146, 0.164, 0.263
    observed = torch.bincount(sizes, minlength=m + 1)[1:m].double() / n
    assert (observed - expected).abs().max() < 0.01  # sd ≤ 0.0022
    assert (z.double().mean(0) - 0.5).abs().max() < 0.01  # E|z| = M/2 by symmetry
    if paired:
        assert torch.equal(z[1::2], ~z[0::2])


def test_kernelshap_per_channel_mask_maps_sum_the_channels(tiny_cnn, images):
    """One feature per channel (M = 3, exact): the map at every pixel is Σ_c φ_c, which by
    efficiency is f(x) − f(0)."""
    mask = torch.arange(3).view(1, 3, 1, 1).expand(1, 3, 12, 12)
    a = sl.explain(tiny_cnn, images, "kernelshap", target=0, feature_mask=mask)["kernelshap"]
    assert a.extras["exact"].all()
    with torch.no_grad():
        gap = tiny_cnn(images)[:, 0] - tiny_cnn(torch.zeros_like(images))[:, 0]
    assert float(gap.abs().min()) > 1e-3
    torch.testing.assert_close(a.maps, gap[:, None, None].expand(4, 12, 12), atol=1e-5, rtol=0)
    with torch.no_grad():  # base_value is v(∅), the score of the baseline
        empty = tiny_cnn(torch.zeros_like(images))[:, 0].double()
    torch.testing.assert_close(a.extras["base_value"], empty, atol=1e-6, rtol=0)


def test_lime_defaults_equal_sklearn_weighted_ridge():
    """Default LIME (1000 coalitions, σ = 0.25, ridge α = 1, baseline 0) is sklearn's Ridge fitted
    with sample_weight π(z) on the same coalitions; r2 is the weighted R² sklearn's score gives."""
    from sklearn.linear_model import Ridge

    torch.manual_seed(9)
    f = 5
    mlp = nn.Sequential(nn.Linear(f, 8), nn.Tanh(), nn.Linear(8, 3)).double().eval()
    x = torch.randn(2, f, dtype=torch.float64)
    a = sl.explain(mlp, x, "lime", target=[1, 2])["lime"]
    z = lime_coalitions(1000, f, seed=0)
    d = 1 - torch.sqrt(z.sum(1).double() / f)
    pi = torch.exp(-(d**2) / 0.25**2).numpy()
    for b, c in enumerate([1, 2]):
        with torch.no_grad():
            y = mlp(torch.where(z, x[b], 0.0))[:, c].numpy()
        ridge = Ridge(alpha=1.0).fit(z.double().numpy(), y, sample_weight=pi)
        coef = torch.from_numpy(ridge.coef_)
        torch.testing.assert_close(a.extras["coefficients"][b], coef, atol=1e-8, rtol=1e-6)
        torch.testing.assert_close(a.attributions[b], coef, atol=1e-8, rtol=1e-6)
        assert a.extras["intercept"][b].item() == pytest.approx(ridge.intercept_, abs=1e-8)
        r2 = ridge.score(z.double().numpy(), y, sample_weight=pi)
        assert a.extras["r2"][b].item() == pytest.approx(r2, abs=1e-8)


def test_lime_of_a_model_blind_to_its_input_is_a_perfect_constant_fit():
    """y(z) constant: β = 0, intercept = the score, and R² = 1 (as sklearn's r2_score gives for a
    perfect fit of a constant target)."""
    from sklearn.metrics import r2_score

    mlp = nn.Sequential(nn.Linear(4, 3)).double().eval()
    with torch.no_grad():
        mlp[0].weight.zero_()
        mlp[0].bias.copy_(torch.tensor([0.5, -1.0, 2.0]))
    x = torch.randn(2, 4, dtype=torch.float64)
    a = sl.explain(mlp, x, "lime", target=2, n_samples=50)["lime"]
    torch.testing.assert_close(a.extras["coefficients"], torch.zeros(2, 4, dtype=torch.float64))
    torch.testing.assert_close(a.extras["intercept"], torch.full((2,), 2.0, dtype=torch.float64))
    assert r2_score([2.0] * 3, [2.0] * 3) == 1.0
    assert a.extras["r2"].tolist() == [1.0, 1.0]
