"""DeepLIFT (rescale) and DeepLIFT-SHAP: summation-to-delta, Captum, formulas, chunking, hooks."""

from __future__ import annotations

import warnings

import pytest
import torch
from captum.attr import DeepLift, DeepLiftShap
from torch import nn

import saliencelab as sl
from saliencelab.core.errors import SaliencelabError
from saliencelab.core.targets import LayerTarget
from saliencelab.methods.gradient.baselines import gaussian_blur

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:captum.*")


def _mlp() -> nn.Module:
    """ReLU, ReLU6, sigmoid and tanh modules; inputs scaled so that ReLU6 also saturates."""
    torch.manual_seed(2)
    model = nn.Sequential(
        nn.Flatten(),
        nn.Linear(12, 16),
        nn.ReLU(),
        nn.Linear(16, 16),
        nn.ReLU6(),
        nn.Linear(16, 12),
        nn.Sigmoid(),
        nn.Linear(12, 12),
        nn.Tanh(),
        nn.Linear(12, 3),
    ).eval()
    with torch.no_grad():
        model[3].weight.mul_(8)
    return model


def _pool_cnn() -> nn.Module:
    """In-place ReLU then overlapping max pooling (3x3, stride 2), then ReLU again."""
    torch.manual_seed(3)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, stride=2, padding=1),
        nn.Conv2d(6, 6, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(6 * 6 * 6, 5),
    ).eval()


class _SharedReLU(nn.Module):
    """One ReLU module called twice (Captum refuses this; the rule hooks each call)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu(self.conv2(self.relu(self.conv1(x))))
        return self.fc(h.mean(dim=(2, 3)))


def _scores(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).gather(1, target[:, None])[:, 0]


def _run(model, x, method="deeplift", target=None, **options) -> sl.Attribution:
    return sl.explain(model, x, methods=method, target=target, **options)[method]


# -- summation-to-delta --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tiny_cnn", "mlp", "pool_cnn", "shared_relu"])
@pytest.mark.parametrize("baseline", ["zero", "random"])
def test_summation_to_delta(name, baseline, tiny_cnn, images):
    model = {"tiny_cnn": tiny_cnn, "mlp": _mlp(), "pool_cnn": _pool_cnn()}.get(name)
    if model is None:
        torch.manual_seed(4)
        model = _SharedReLU().eval()
    x = images[:, :, :2, :2] * 3 if name == "mlp" else images
    torch.manual_seed(5)
    base = torch.zeros_like(x) if baseline == "zero" else torch.randn_like(x) * 0.5
    target = torch.tensor([0, 1, 2, 0])
    a = _run(model, x, target=target, baselines=base)
    gap = _scores(model, x, target) - _scores(model, base, target)
    torch.testing.assert_close(a.attributions.flatten(1).sum(1), gap, atol=1e-5, rtol=0)
    torch.testing.assert_close(a.delta, a.attributions.flatten(1).sum(1) - gap, atol=1e-6, rtol=0)
    # The check has teeth: gradient × (x - x') misses the same gap.
    grad = _run(model, x, method="saliency", target=target, absolute=False).attributions
    grad_gap = (grad * (x - base)).flatten(1).sum(1) - gap
    assert grad_gap.abs().max() > 1e-3


def test_mlp_input_reaches_both_kinks_of_relu6(images):
    with torch.no_grad():
        h = _mlp()[:4](images[:, :, :2, :2] * 3)
    assert (h > 6).any() and (h < 0).any()


# -- against Captum ------------------------------------------------------------------------------


def _tanh_cnn() -> nn.Module:
    torch.manual_seed(6)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.Sigmoid(),
        nn.Conv2d(4, 4, 3, stride=2, padding=1),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, 5),
    ).eval()


def _maxpool_linear() -> nn.Module:
    # Captum 0.9.0's max-pooling rule takes its fallback gradient from the first sample
    # (captum#1276) and, next to another hooked module, gets unequal multipliers for the two
    # halves; without an adjacent nonlinearity and with nowhere x = x', it is the same rule.
    torch.manual_seed(7)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 6 * 6, 5)
    ).eval()


@pytest.mark.parametrize("name", ["tiny_cnn", "tanh_cnn", "maxpool"])
@pytest.mark.parametrize("baseline", ["zero", "random"])
def test_deeplift_matches_captum(name, baseline, tiny_cnn, images):
    model = {"tiny_cnn": tiny_cnn, "tanh_cnn": _tanh_cnn(), "maxpool": _maxpool_linear()}[name]
    torch.manual_seed(8)
    base = torch.zeros_like(images) if baseline == "zero" else torch.randn_like(images) * 0.5
    target = torch.tensor([4, 1, 2, 3])
    a = _run(model, images, target=target, baselines=base)
    ref, delta = DeepLift(model).attribute(
        images, base, target=target, return_convergence_delta=True
    )
    torch.testing.assert_close(a.attributions, ref.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.delta, delta, atol=1e-5, rtol=0)


def test_deeplift_shap_matches_captum(tiny_cnn, images):
    torch.manual_seed(9)
    refs = torch.randn(3, 3, 12, 12) * 0.5
    target = torch.tensor([0, 3, 2, 1])
    a = _run(tiny_cnn, images, "deeplift_shap", target=target, baselines=refs)
    ref = DeepLiftShap(tiny_cnn).attribute(images, refs, target=target)
    torch.testing.assert_close(a.attributions, ref.detach(), atol=1e-5, rtol=1e-5)
    assert a.n_baselines == 3 and a.passes == 6
    mean_ref = torch.stack([_scores(tiny_cnn, r.expand(4, -1, -1, -1), target) for r in refs])
    gap = _scores(tiny_cnn, images, target) - mean_ref.mean(0)
    torch.testing.assert_close(a.attributions.flatten(1).sum(1), gap, atol=1e-5, rtol=0)
    torch.testing.assert_close(a.delta, torch.zeros(4), atol=1e-5, rtol=0)


def test_deeplift_shap_with_one_reference_is_deeplift(tiny_cnn, images):
    ref = torch.randn(1, 3, 12, 12)
    shap = _run(tiny_cnn, images, "deeplift_shap", baselines=ref).attributions
    torch.testing.assert_close(shap, _run(tiny_cnn, images, baselines=ref[0]).attributions)


def test_deeplift_shap_subsamples_and_draws_references(tiny_cnn, images):
    refs = torch.randn(5, 3, 12, 12)
    a = _run(tiny_cnn, images, "deeplift_shap", baselines=refs, n_baselines=2, seed=1)
    b = _run(tiny_cnn, images, "deeplift_shap", baselines=refs, n_baselines=2, seed=1)
    assert a.n_baselines == 2 and a.passes == 4
    torch.testing.assert_close(a.attributions, b.attributions)
    u = _run(tiny_cnn, images, "deeplift_shap")
    assert u.n_baselines == 16 and u.delta.abs().max() < 1e-5


class _ChannelMean(LayerTarget):
    """The mean of one channel of a hidden layer: the forward stops there, before the logits."""

    def __init__(self, layer: str, channel: int) -> None:
        self.layer, self.channel = layer, channel

    def read(self, activation: torch.Tensor) -> torch.Tensor:
        return activation.flatten(2).mean(2)

    def __call__(self, readings: torch.Tensor) -> torch.Tensor:
        return readings[:, self.channel]


@pytest.mark.parametrize("layer", ["features.2", "features.3"])  # a conv, then a ReLU module
def test_hidden_channel_target_keeps_summation_to_delta(layer, tiny_cnn, images):
    base = torch.randn_like(images) * 0.5
    for method in ["deeplift", "deeplift_shap"]:
        a = _run(tiny_cnn, images, method, target=_ChannelMean(layer, 2), baselines=base[:1])
        with torch.no_grad():
            upto = tiny_cnn.features[: int(layer[-1]) + 1]
            gap = upto(images)[:, 2].mean((1, 2)) - upto(base[:1])[:, 2].mean((1, 2))
        torch.testing.assert_close(a.attributions.flatten(1).sum(1), gap, atol=1e-5, rtol=0)
        torch.testing.assert_close(a.delta, torch.zeros(4), atol=1e-5, rtol=0)


# -- formulas ------------------------------------------------------------------------------------


def test_linear_model_is_weight_times_difference(images):
    torch.manual_seed(10)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 12 * 12, 5)).eval()
    base = torch.randn_like(images)
    target = torch.tensor([1, 4, 0, 2])
    with pytest.warns(UserWarning, match="no nonlinearity module"):
        a = _run(model, images, target=target, baselines=base)
    w = model[1].weight[target].view(4, 3, 12, 12)
    torch.testing.assert_close(a.attributions, w * (images - base))


def test_rescale_multiplier_is_the_secant_slope_or_the_gradient_where_nothing_changed():
    """y = σ(x1 - x2) from x' = (0, 0): at x = (3, 1) the sigmoid's multiplier is the secant slope
    (σ(2) - σ(0)) / 2; at x = (1, 1) its input did not change and it is the gradient σ'(0) = 1/4."""
    model = nn.Sequential(nn.Linear(2, 1), nn.Sigmoid()).eval()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, -1.0]]))
        model[0].bias.zero_()
    x = torch.tensor([[3.0, 1.0], [1.0, 1.0]])
    a = _run(model, x, target=0, baselines="zero")
    secant = (torch.sigmoid(torch.tensor(2.0)).item() - 0.5) / 2
    expected = torch.tensor([[3 * secant, -secant], [0.25, -0.25]])
    torch.testing.assert_close(a.attributions, expected)


def test_max_pool_fallback_is_the_gradient_at_the_inputs_argmax():
    """One 2×2 window, S = 2·max, x = (3, 1, 0, -1), x' = (2.8, 5, 0, -1), eps = 0.5.
    Element 0 changed by 0.2 < eps: its multiplier is the gradient at x, ∂S/∂x_0 = 2 (x's
    argmax), so φ_0 = 0.2 · 2. Element 1 (Δ = -4): the window's Δy = 3 - 5 = -2 is routed to
    x''s argmax, m = 2 · (-2) / (-4) = 1, φ_1 = -4. The unchanged elements get 0."""
    model = nn.Sequential(nn.MaxPool2d(2), nn.Flatten(), nn.Linear(1, 1, bias=False)).eval()
    with torch.no_grad():
        model[2].weight.fill_(2.0)
    x = torch.tensor([[[[3.0, 1.0], [0.0, -1.0]]]])
    base = torch.tensor([[[[2.8, 5.0], [0.0, -1.0]]]])
    with pytest.warns(UserWarning, match="summation-to-delta is off by up to 10%"):
        a = _run(model, x, target=0, baselines=base, eps=0.5)  # Σφ = -3.6, ΔS = -4
    torch.testing.assert_close(a.attributions, torch.tensor([[[[0.4, -4.0], [0.0, 0.0]]]]))


def test_mixed_targets_equal_one_sample_at_a_time(tiny_cnn, images):
    target = [0, 1, 2, 3]
    base = torch.randn_like(images)
    batch = _run(tiny_cnn, images, target=target, baselines=base)
    for i, t in enumerate(target):
        one = _run(tiny_cnn, images[i : i + 1], target=t, baselines=base[i : i + 1])
        torch.testing.assert_close(batch.attributions[i : i + 1], one.attributions)


@pytest.mark.parametrize("method", ["deeplift", "deeplift_shap"])
def test_chunk_size_one_equals_one_chunk(method, tiny_cnn, images):
    refs = torch.randn(3, 3, 12, 12)
    base = refs if method == "deeplift_shap" else refs[0]
    one = sl.explain(tiny_cnn, images, methods=method, baselines=base, chunk_size=64)[method]
    small = sl.explain(tiny_cnn, images, methods=method, baselines=base, chunk_size=1)[method]
    torch.testing.assert_close(small.attributions, one.attributions)
    torch.testing.assert_close(small.delta, one.delta)


@pytest.mark.parametrize(
    ("method", "options"),
    [("deeplift", {"baselines": "uniform"}), ("deeplift_shap", {"n_baselines": 4})],
)
def test_uniform_references_are_the_samples_own_not_its_rows(tiny_cnn, method, options):
    """A sample gets the same map alone, first in a batch of 4 and third in it: its uniform
    references are drawn from `seed` and its own values, in its own range (the other inputs
    have other ranges), not by row or from the batch's range (up to rounding)."""
    torch.manual_seed(3)
    x = torch.rand(1, 3, 12, 12)
    others = torch.rand(3, 3, 12, 12) * torch.tensor([1.0, 3.0, 0.5]).view(3, 1, 1, 1)
    first, third = torch.cat([x, others]), torch.cat([others[:2], x, others[2:]])
    alone = _run(tiny_cnn, x, method, target=torch.tensor([2]), **options)
    at0 = _run(tiny_cnn, first, method, target=torch.tensor([2, 0, 1, 3]), **options)
    at2 = _run(tiny_cnn, third, method, target=torch.tensor([0, 1, 2, 3]), **options)
    torch.testing.assert_close(at0.attributions[0], alone.attributions[0])
    torch.testing.assert_close(at2.attributions[2], alone.attributions[0])
    torch.testing.assert_close(at2.delta[2], alone.delta[0], atol=1e-5, rtol=0)
    small = sl.explain(tiny_cnn, third, methods=method, target=at2.target, chunk_size=1, **options)
    torch.testing.assert_close(small[method].attributions, at2.attributions)


# -- safety --------------------------------------------------------------------------------------


def _assert_unchanged(model: nn.Module, state: dict) -> None:
    assert model.training and all(m.training for m in model.modules())
    assert model[1].inplace
    assert not model[0].weight.requires_grad and model[3].weight.requires_grad
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k])


class _Boom(nn.Module):
    """Raises when it sees the paired batch [x; x'] (8 rows), not on the plain forward (4)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] == 8:
            raise RuntimeError("boom")
        return x


@pytest.mark.parametrize("raises", [False, True])
def test_hooks_removed_and_model_unchanged(raises, images):
    model = _pool_cnn()
    if raises:
        model.insert(5, _Boom())
    model.train()
    model[0].weight.requires_grad_(False)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    if raises:
        with pytest.raises(RuntimeError, match="boom"):
            _run(model, images, chunk_size=64)
    else:
        _run(model, images, "deeplift_shap", baselines=torch.randn(2, 3, 12, 12))
    _assert_unchanged(model, state)


def test_bad_options_are_one_clear_sentence(tiny_cnn, images):
    with pytest.raises(SaliencelabError, match="eps must be a positive number"):
        _run(tiny_cnn, images, eps=0)
    with pytest.raises(SaliencelabError, match="unknown baselines 'blurr'"):
        _run(tiny_cnn, images, baselines="blurr")
    with pytest.raises(SaliencelabError, match="n_baselines must be an integer"):
        _run(tiny_cnn, images, "deeplift_shap", n_baselines=0)
    with pytest.raises(SaliencelabError, match="distribution of baselines must have shape"):
        _run(tiny_cnn, images, "deeplift_shap", baselines=torch.zeros(2, 3, 5, 5))


def test_nonlinearity_off_the_batch_axis_is_a_clear_error():
    class Transposed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc, self.relu = nn.Linear(5, 3), nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.relu(x.T).T)

    with pytest.raises(SaliencelabError, match="batch on its first axis"):
        _run(Transposed(), torch.randn(3, 5))


def test_registered_in_the_relevance_family():
    specs = {m.name: m for m in sl.methods()}
    assert specs["deeplift"].family == "relevance" and specs["deeplift"].cost == "2"
    assert specs["deeplift_shap"].cost == "2 * n_baselines"
    assert {"baselines", "eps"} <= set(specs["deeplift_shap"].options)


# -- the bundled model ---------------------------------------------------------------------------


def test_efficientnet_lite0_on_chelsea():
    model = sl.load_model("efficientnet_lite0")
    x = model.preprocess(sl.sample_image("chelsea"))
    ex = sl.explain(model, x, methods="deeplift", baselines="blur")
    a = ex["deeplift"]
    s_x = ex.logits[0, a.target]
    gap = s_x - _scores(model.module, gaussian_blur(x, 10.0), a.target)
    assert gap.abs().item() > 1
    assert a.delta.abs().item() < 1e-4 * gap.abs().item()
    torch.testing.assert_close(a.attributions.sum().view(1), gap, atol=1e-3, rtol=1e-4)
    assert a.maps.shape == (1, 224, 224) and a.passes == 2


@pytest.mark.parametrize(
    ("method", "options"),
    [
        ("deeplift", {"baselines": "uniform", "seed": "a"}),
        ("deeplift", {"seed": 1.5}),
        ("deeplift_shap", {"seed": None}),
        ("deeplift_shap", {"seed": 2**70}),
    ],
)
def test_a_bad_seed_is_one_sentence(method, options):
    x = torch.randn(2, 12)
    with pytest.raises(SaliencelabError, match="seed must be an integer"):
        _run(_mlp(), x, method, **options)


def test_a_nan_baseline_is_one_sentence():
    with pytest.raises(SaliencelabError, match="finite number"):
        _run(_mlp(), torch.randn(2, 12), "deeplift", baselines=float("nan"))


class _FunctionalAttention(nn.Module):
    """A linear map, then x ⊙ softmax(x) (a product and a softmax no module hooks reach)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.fc, self.relu, self.out = nn.Linear(12, 6), nn.ReLU(), nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu(self.fc(x))
        return self.out(h * h.softmax(dim=-1))


@pytest.mark.parametrize("method", ["deeplift", "deeplift_shap"])
def test_a_gap_in_summation_to_delta_is_warned(method):
    """The rescale rule conserves S(x) - S(x') through the modules it reaches (no warning on
    the MLP, every nonlinearity a module); a product and softmax it does not reach break it,
    and the call says by how much (the largest |delta| / |S(x) - S(x')|)."""
    torch.manual_seed(6)
    x = torch.randn(4, 12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sl.explain(_mlp(), x, methods=method, target=0)
    with pytest.warns(UserWarning, match="summation-to-delta is off by up to") as seen:
        a = sl.explain(_FunctionalAttention().eval(), x, methods=method, target=0)[method]
    gap = a.attributions.sum(1) - a.extras["delta"]  # S(x) - S(x') (mean over references)
    share = float((a.extras["delta"].abs() / gap.abs()).max())
    assert share > 0.01 and f"{share:.0%}" in str(seen[0].message)
