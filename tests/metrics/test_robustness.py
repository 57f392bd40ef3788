"""Robustness metrics: max/avg sensitivity and local Lipschitz.

References: a direct loop over samples and noisy copies (one `sl.explain` per copy) with the same
noise; Captum's `sensitivity_max` fed the same noise through its `perturb_func`; Quantus'
MaxSensitivity / AvgSensitivity / LocalLipschitzEstimate fed the same noise through a
`perturb_func` that hands out our noise step by step (so the comparison is exact, not
statistical); a constant explainer gives 0; the explainer is called once per batch.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import saliencelab as sl
from saliencelab.core.errors import SaliencelabError
from saliencelab.metrics.base import Explainer
from saliencelab.metrics.robustness._noisy import draw_noise

B, N = 3, 4


class CountingExplainer(Explainer):
    def __init__(self, method: str, options: dict | None = None) -> None:
        super().__init__(method, options)
        self.calls: list[int] = []

    def __call__(self, model, x, target):
        self.calls.append(x.shape[0])
        return super().__call__(model, x, target)


@pytest.fixture
def setup(tiny_cnn, images):
    x = images[:B]
    ex = sl.explain(tiny_cnn, x, "saliency")
    return tiny_cnn, x, ex["saliency"]


def _maps(model, x, target):
    return sl.explain(model, x, "saliency", target=target)["saliency"].maps


def _loop_sensitivity(model, x, ref, target, noise, reduce, normalise=True):
    """Direct formula: one explanation per noisy copy."""
    out = []
    for i in range(x.shape[0]):
        vals = []
        for s in range(N):
            xs = x[i : i + 1] + noise[i * N + s : i * N + s + 1]
            e = _maps(model, xs, target[i : i + 1])[0].double()
            v = (e - ref[i].double()).norm()
            if normalise:
                v = v / ref[i].double().norm()
            vals.append(v)
        vals = torch.stack(vals)
        out.append(vals.max() if reduce == "max" else vals.mean())
    return torch.stack(out)


@pytest.mark.parametrize("name,reduce", [("max_sensitivity", "max"), ("avg_sensitivity", "mean")])
def test_sensitivity_matches_loop(setup, name, reduce):
    model, x, a = setup
    m = sl.metrics.get(name)(radius=0.1, n_samples=N, seed=3)
    values = m.update(a.maps, x=x, model=model, target=a.target, explainer="saliency")
    noise = draw_noise(x, N, 0.1, "uniform", 3)
    assert noise.abs().max() <= 0.1 and noise.abs().max() > 0.05
    ref = _loop_sensitivity(model, x, a.maps, a.target, noise, reduce)
    torch.testing.assert_close(values, ref, rtol=1e-5, atol=1e-7)
    assert (values > 0).all()


def test_unnormalised_and_gaussian(setup):
    model, x, a = setup
    m = sl.metrics.get("max_sensitivity")(
        radius=0.05, n_samples=N, noise="gaussian", normalise=False, seed=1
    )
    values = m.update(a.maps, x=x, model=model, target=a.target, explainer="saliency")
    noise = draw_noise(x, N, 0.05, "gaussian", 1)
    assert 0.03 < float(noise.std()) < 0.07
    ref = _loop_sensitivity(model, x, a.maps, a.target, noise, "max", normalise=False)
    torch.testing.assert_close(values, ref, rtol=1e-5, atol=1e-7)


def _direct_norm(d: torch.Tensor, norm: str) -> torch.Tensor:
    """The norm of a flattened map written out: Σ|d|, max |d| or √Σd²."""
    d = d.double().flatten()
    if norm == "l1":
        return d.abs().sum()
    if norm == "linf":
        return d.abs().max()
    return d.pow(2).sum().sqrt()


@pytest.mark.parametrize("norm", ["l1", "linf"])
def test_normalised_sensitivity_in_other_norms_matches_loop(setup, norm):
    """Direct loop in the chosen norm, for the distance and for ‖e(x)‖ alike."""
    model, x, a = setup
    m = sl.metrics.get("max_sensitivity")(radius=0.1, n_samples=N, norm=norm, seed=3)
    values = m.update(a.maps, x=x, model=model, target=a.target, explainer="saliency")
    noise = draw_noise(x, N, 0.1, "uniform", 3)
    for i in range(B):
        ref = a.maps[i]
        sens = [
            _direct_norm(_maps(model, x[i : i + 1] + noise[i * N + s], a.target[i : i + 1])[0]
                         - ref, norm) / _direct_norm(ref, norm)
            for s in range(N)
        ]  # fmt: skip
        torch.testing.assert_close(values[i], torch.stack(sens).max(), rtol=1e-5, atol=1e-7)


def test_row_norm_is_the_named_norm():
    """`row_norm` against each norm written out row by row."""
    from saliencelab.metrics.robustness._noisy import row_norm

    torch.manual_seed(5)
    t = torch.randn(4, 2, 3, 5)
    t[1, 0, 2, 3] = -9.0  # the largest magnitude is a negative value
    for norm in ("fro", "l2", "l1", "linf"):
        direct = torch.stack([_direct_norm(row, norm) for row in t])
        torch.testing.assert_close(row_norm(t, norm), direct, rtol=1e-12, atol=0)
    assert float(row_norm(t, "linf")[1]) == 9.0


def test_zero_explanation_gives_the_unnormalised_distance(setup):
    """An all-zero e(x) divides by 1 (as documented, like Captum): finite values equal to the
    direct loop's unnormalised distances ‖e(x + δ) − 0‖."""
    model, x, a = setup
    zeros = torch.zeros_like(a.maps)
    noise = draw_noise(x, N, 0.1, "uniform", 3)
    for name, reduce in (("max_sensitivity", "max"), ("avg_sensitivity", "mean")):
        m = sl.metrics.get(name)(radius=0.1, n_samples=N, seed=3)
        values = m.update(zeros, x=x, model=model, target=a.target, explainer="saliency")
        assert values.isfinite().all() and (values > 0).all()
        ref = _loop_sensitivity(model, x, zeros, a.target, noise, reduce, normalise=False)
        torch.testing.assert_close(values, ref, rtol=1e-5, atol=1e-7)


def test_uniform_noise_is_centred_in_the_ball():
    """U(−r, r) per element (docstring): negative and positive values reaching ±r, never beyond,
    mean ≈ 0; the same draws for every sample."""
    x = torch.zeros(2, 3, 4, 4)
    r = 0.1
    d = draw_noise(x, 64, r, "uniform", 7)
    assert d.shape == (2 * 64, 3, 4, 4)
    assert float(d.abs().max()) <= r
    assert float(d.min()) < -0.09 and float(d.max()) > 0.09
    assert (d < 0).double().mean() == pytest.approx(0.5, abs=0.05)
    assert abs(float(d.double().mean())) < 0.005  # 3072 draws: the mean's std is ~0.001
    assert torch.equal(d[:64], d[64:])
    g = draw_noise(x, 64, r, "gaussian", 7)
    assert abs(float(g.double().mean())) < 0.01 and float(g.double().std()) == pytest.approx(
        r, rel=0.1
    )


@pytest.mark.parametrize("name", ["max_sensitivity", "avg_sensitivity"])
def test_default_noise_radius(setup, name):
    """The signature's defaults (radius 0.02, 10 uniform copies): the noisy inputs the explainer
    sees lie within 0.02 of x in L∞, reaching close to it."""
    model, x, a = setup
    seen = []

    class Recording(Explainer):
        def __call__(self, model, x, target):
            seen.append(x.detach().clone())
            return super().__call__(model, x, target)

    m = sl.metrics.get(name)()
    assert (m.radius, m.n_samples, m.noise) == (0.02, 10, "uniform")
    m.update(a.maps, x=x, model=model, target=a.target, explainer=Recording("saliency"))
    (noisy,) = seen
    d = noisy - x.repeat_interleave(10, 0)
    assert float(d.abs().max()) <= 0.02 + 1e-6 and float(d.abs().max()) > 0.018
    assert float(d.min()) < -0.018


def test_sensitivity_max_matches_captum(setup):
    from captum.attr import Saliency
    from captum.metrics import sensitivity_max

    model, x, a = setup
    radius = 0.1
    noise = draw_noise(x, N, radius, "uniform", 0)
    m = sl.metrics.get("max_sensitivity")(radius=radius, n_samples=N, on="attributions")
    ours = m.update(
        a.maps, x=x, model=model, target=a.target, attributions=a.attributions,
        explainer="saliency",
    )  # fmt: skip
    captum = sensitivity_max(
        Saliency(model).attribute,
        x,
        perturb_func=lambda inp: inp + noise,
        n_perturb_samples=N,
        target=a.target,
        abs=True,
    )
    torch.testing.assert_close(ours, captum.double(), rtol=1e-4, atol=1e-6)


def _quantus_noise(noise: torch.Tensor, kind: str):
    """A Quantus perturb_func handing out our noise: step s gets noise row i * N + s of sample i."""
    steps = noise.view(B, N, -1).numpy()
    state = {"s": 0}

    def perturb(arr, indices=None, **kwargs):
        out = arr + steps[:, state["s"]]
        state["s"] += 1
        return out

    return perturb


def _quantus_explain(model, inputs, targets, **kwargs):
    x = torch.as_tensor(inputs)
    t = torch.as_tensor(targets).long()
    return _maps(model, x, t)[:, None].numpy()


@pytest.mark.parametrize(
    "name,cls",
    [
        ("max_sensitivity", "MaxSensitivity"),
        ("avg_sensitivity", "AvgSensitivity"),
        ("local_lipschitz", "LocalLipschitzEstimate"),
    ],
)
def test_matches_quantus(setup, name, cls):
    quantus = pytest.importorskip("quantus")
    model, x, a = setup
    if name == "local_lipschitz":
        m = sl.metrics.get(name)(std=0.1, n_samples=N, seed=5)
        noise = draw_noise(x, N, 0.1, "gaussian", 5)
    else:
        m = sl.metrics.get(name)(radius=0.1, n_samples=N, seed=5)
        noise = draw_noise(x, N, 0.1, "uniform", 5)
    ours = m.update(a.maps, x=x, model=model, target=a.target, explainer="saliency")
    metric = getattr(quantus, cls)(
        nr_samples=N,
        perturb_func=_quantus_noise(noise, name),
        normalise=False,
        abs=False,
        disable_warnings=True,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = metric(
            model=model,
            x_batch=x.numpy(),
            y_batch=a.target.numpy(),
            a_batch=a.maps[:, None].numpy(),
            explain_func=_quantus_explain,
            device="cpu",
        )
    np.testing.assert_allclose(ours.numpy(), np.asarray(theirs), rtol=1e-4, atol=1e-8)


def test_lipschitz_matches_loop(setup):
    model, x, a = setup
    m = sl.metrics.get("local_lipschitz")(std=0.2, n_samples=N, seed=2)
    values = m.update(a.maps, x=x, model=model, target=a.target, explainer="saliency")
    noise = draw_noise(x, N, 0.2, "gaussian", 2)
    for i in range(B):
        ratios = []
        for s in range(N):
            d = noise[i * N + s]
            e = _maps(model, x[i : i + 1] + d, a.target[i : i + 1])[0]
            ratios.append((e - a.maps[i]).double().norm() / d.double().norm())
        assert torch.isclose(values[i], torch.stack(ratios).max(), rtol=1e-5)


@pytest.mark.parametrize("name", ["max_sensitivity", "avg_sensitivity", "local_lipschitz"])
def test_constant_explainer_scores_zero(tiny_cnn, images, name):
    """The centred-Gaussian reference map does not depend on the input: nothing moves."""
    maps = sl.explain(tiny_cnn, images, "center_gaussian")["center_gaussian"].maps
    r = sl.metrics.get(name)(n_samples=3)(
        maps, x=images, model=tiny_cnn, explainer="center_gaussian"
    )
    assert torch.equal(r.values, torch.zeros(len(images), dtype=r.values.dtype))


@pytest.mark.parametrize("name", ["max_sensitivity", "avg_sensitivity", "local_lipschitz"])
def test_explainer_called_once_per_batch(setup, name):
    model, x, a = setup
    ex = CountingExplainer("saliency")
    m = sl.metrics.get(name)(n_samples=5)
    m.update(a.maps, x=x, model=model, target=a.target, explainer=ex)
    assert ex.calls == [B * 5]
    r = m.compute()
    assert r.passes == pytest.approx(5.0)  # 5 gradient passes per sample, nothing else
    assert r.extras[{"local_lipschitz": "ratios"}.get(name, "sensitivities")].shape == (B, 5)


def test_seed_reproducible_and_changes(setup):
    model, x, a = setup

    def run(seed):
        m = sl.metrics.get("max_sensitivity")(n_samples=3, radius=0.1, seed=seed)
        return m.update(a.maps, x=x, model=model, target=a.target, explainer="saliency")

    # the same noise; the chunk-size search may still be cutting the rows differently per call
    torch.testing.assert_close(run(0), run(0), atol=1e-6, rtol=0)
    assert not torch.allclose(run(0), run(1), atol=1e-3)


def test_weights_and_mode_untouched(setup):
    model, x, a = setup
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sl.metrics.get("local_lipschitz")(n_samples=2)(
        a.maps, x=x, model=model, target=a.target, explainer="saliency"
    )
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize(
    "kwargs,words",
    [
        ({"radius": 0.0}, "radius must be a positive number"),
        ({"radius": -1}, "radius must be a positive number"),
        ({"n_samples": 0}, "n_samples must be a positive integer"),
        ({"n_samples": 2.5}, "n_samples must be a positive integer"),
        ({"noise": "salt"}, "noise must be"),
        ({"norm": "l3"}, "norm must be"),
    ],
)
def test_bad_options(kwargs, words):
    with pytest.raises(SaliencelabError, match=words):
        sl.metrics.get("max_sensitivity")(**kwargs)


def test_bad_lipschitz_options():
    with pytest.raises(SaliencelabError, match="std must be a positive number"):
        sl.metrics.get("local_lipschitz")(std=0)
    with pytest.raises(SaliencelabError, match="n_samples must be a positive integer"):
        sl.metrics.get("local_lipschitz")(n_samples=0)


@pytest.mark.parametrize("name", ["max_sensitivity", "avg_sensitivity", "local_lipschitz"])
def test_missing_explainer_is_one_sentence(setup, name):
    model, x, a = setup
    with pytest.raises(SaliencelabError, match="needs explainer") as err:
        sl.metrics.get(name)().update(a.maps, x=x, model=model)
    assert str(err.value).count(". ") == 0 and "\n" not in str(err.value)


def test_attributions_needed_for_on_attributions(setup):
    model, x, a = setup
    with pytest.raises(SaliencelabError, match="on='attributions' needs"):
        sl.metrics.get("max_sensitivity")(on="attributions").update(
            a.maps, x=x, model=model, explainer="saliency"
        )


@pytest.mark.parametrize("name", ["max_sensitivity", "local_lipschitz"])
def test_noise_is_drawn_once_per_shape(setup, images, monkeypatch, name):
    """The seeded noise is kept for the next batch of the same shape (the same values as a fresh
    metric's), and drawn again for another shape or seed."""
    from saliencelab.metrics.robustness import _noisy

    calls = []
    original = _noisy.draw_noise

    def counted(*args, **kwargs):
        calls.append(args[0].shape)
        return original(*args, **kwargs)

    monkeypatch.setattr(_noisy, "draw_noise", counted)
    model, x, a = setup
    kw = {"x": x, "model": model, "target": a.target, "explainer": "saliency"}
    m = sl.metrics.get(name)(n_samples=N, seed=4)
    first = m(a.maps, **kw).values
    again = m(a.maps, **kw).values
    assert len(calls) == 1
    torch.testing.assert_close(again, first, rtol=1e-5, atol=1e-7)
    fresh = sl.metrics.get(name)(n_samples=N, seed=4)(a.maps, **kw).values  # draws its own
    torch.testing.assert_close(again, fresh, rtol=1e-5, atol=1e-7)
    m(a.maps[:2], **{**kw, "x": x[:2], "target": a.target[:2]})  # another batch shape
    assert len(calls) == 3
    m.seed = 5
    changed = m(a.maps, **kw).values
    assert len(calls) == 4 and not torch.allclose(changed, first)


def test_noisy_copies_and_distances_equal_repeated_rows():
    """Broadcasting x and the reference over the noisy copies gives what repeating them does."""
    from saliencelab.metrics.robustness._noisy import distances, noisy_copies, row_norm

    torch.manual_seed(12)
    x, ref = torch.randn(3, 2, 5, 4), torch.randn(3, 5, 4)
    delta = draw_noise(x, N, 0.1, "gaussian", 0)
    assert torch.equal(noisy_copies(x, delta), x.repeat_interleave(N, 0) + delta)
    explained = torch.randn(3 * N, 5, 4)
    for norm in ("fro", "l1", "linf"):
        direct = row_norm(explained.double() - ref.double().repeat_interleave(N, 0), norm)
        assert torch.equal(distances(explained, ref, N, norm), direct.view(3, N))
    # channels-last attributions (the engine's layout for image rows) are flattened in order
    nhwc = torch.randn(3 * N, 2, 5, 4).contiguous(memory_format=torch.channels_last)
    ref4 = torch.randn(3, 2, 5, 4)
    direct = row_norm(nhwc.double() - ref4.double().repeat_interleave(N, 0), "fro")
    assert torch.equal(distances(nhwc, ref4, N, "fro"), direct.view(3, N))
    # the float64 difference is taken in place on a copy: float64 explanations are not changed
    explained64 = explained.double()
    before = explained64.clone()
    distances(explained64, ref, N, "fro")
    assert torch.equal(explained64, before)


SAMPLE_DRAWN = [
    ("integrated_gradients", {"baselines": "uniform", "n_steps": 4}),
    ("expected_gradients", {"n_samples": 4}),
    ("expected_gradients", {"n_samples": 4, "stdevs": 0.1}),
    ("deeplift", {"baselines": "uniform"}),
    ("deeplift_shap", {"n_baselines": 4}),
]


@pytest.mark.parametrize(("method", "options"), SAMPLE_DRAWN)
def test_seeded_explainers_explain_noisy_copies_with_their_samples_draws(tiny_cnn, method, options):
    """Noise of radius 1e-9 is below half a float32 ulp of inputs in [0.25, 1]: every noisy
    copy equals its input bit for bit, so a method whose draws are the sample's own gives the
    reference map again (0), though the copy of sample i is row i·n + k of the B·n-row call
    and the reference row i of B (draws by row gave ~0.5 here). At the default radius, a
    sample's value is the same alone as in the batch."""
    torch.manual_seed(4)
    x = 0.25 + 0.75 * torch.rand(3, 3, 12, 12)
    target = torch.tensor([0, 2, 4])
    maps = sl.explain(tiny_cnn, x, methods={method: options}, target=target)[method].maps
    explainer = Explainer(method, options)
    kw = dict(model=tiny_cnn, explainer=explainer)
    tiny = sl.metrics.get("max_sensitivity")(radius=1e-9, n_samples=3)
    assert torch.equal(x + 1e-9, x)
    values = tiny(maps, x=x, target=target, **kw).values
    assert values.abs().max() < 1e-6
    m = sl.metrics.get("max_sensitivity")(n_samples=3)
    batch = m(maps, x=x, target=target, **kw).values
    alone = m(maps[1:2], x=x[1:2], target=target[1:2], **kw).values
    torch.testing.assert_close(alone[0], batch[1], rtol=1e-4, atol=1e-6)
