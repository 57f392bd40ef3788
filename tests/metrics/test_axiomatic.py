"""Axiomatic metrics: completeness, non-sensitivity, input invariance.

References: the formulas computed directly on tiny models (one forward per perturbed input in a
loop); axioms (IG completeness ≈ 0 on a smooth net; gradients are input-invariant, input ×
gradient is not, Kindermans et al.); Quantus 0.6.0 on the same inputs: Completeness (its output
difference, read through its `output_func`, and its boolean), NonSensitivity (the same count with
`normalise=False`, or one sample with normalisation, since Quantus normalises by the batch
maximum) and InputInvariance (its boolean equals "fraction == 0" on a model without zero
padding, where its bias shift is exact; with a perturb_func that shifts every element, as its
default one misses the first element of each sample).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import saliencelab as sl
from saliencelab.core.errors import SaliencelabError
from saliencelab.metrics.axiomatic.input_invariance import shifted_model


class SmoothNet(nn.Module):
    """conv → tanh → avg-pool → linear: smooth, so IG converges fast."""

    def __init__(self, padding: int = 1, classes: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=padding)
        self.fc = nn.Linear(4, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.tanh(self.conv(x)).mean((2, 3)))


class PadConv(nn.Conv2d):
    """Pads inside its forward (like TF-"same" convolutions): `padding` says 0, yet borders see
    zeros."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(nn.functional.pad(x, (1, 1, 1, 1)))


class LeftHalf(nn.Module):
    """Reads only the left half of an 8×8 image: the right half is irrelevant to the output."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3 * 8 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.tanh(x[..., :4]).flatten(1))


@pytest.fixture
def smooth():
    torch.manual_seed(0)
    return SmoothNet().eval()


@pytest.fixture
def x8():
    torch.manual_seed(2)
    return torch.randn(3, 3, 8, 8)


# -- completeness ----------------------------------------------------------------------------------


def test_completeness_formula(smooth, x8):
    a = sl.explain(smooth, x8, "input_x_gradient")["input_x_gradient"]
    r = sl.metrics.get("completeness")()(a.maps, x=x8, model=smooth, attributions=a.attributions)
    with torch.no_grad():
        f = smooth(x8).double()
        f0 = smooth(torch.zeros_like(x8)).double()
    t = a.target
    delta = f[torch.arange(3), t] - f0[torch.arange(3), t]
    expected = (a.attributions.double().sum((1, 2, 3)) - delta).abs()
    torch.testing.assert_close(r.values, expected, rtol=1e-6, atol=1e-6)
    assert r.forwards == pytest.approx(2.0)
    # Probabilities, a named baseline and the relative gap.
    r = sl.metrics.get("completeness")(baseline="black", output="probability", relative=True)(
        a.maps, x=x8, model=smooth, attributions=a.attributions
    )
    with torch.no_grad():
        p = smooth(x8).softmax(1).double()
        base = x8.amin((1, 2, 3), keepdim=True).expand_as(x8)
        p0 = smooth(base).softmax(1).double()
    d = p[torch.arange(3), t] - p0[torch.arange(3), t]
    torch.testing.assert_close(
        r.values, (a.attributions.double().sum((1, 2, 3)) - d).abs() / d.abs(), rtol=1e-5, atol=0
    )


def test_completeness_ig_near_zero_saliency_not(smooth, x8):
    ex = sl.explain(smooth, x8, ["integrated_gradients", "saliency"], n_steps=64)
    m = sl.metrics.get("completeness")(relative=True)
    ig = m(ex["integrated_gradients"].maps, x=x8, model=smooth,
           attributions=ex["integrated_gradients"].attributions).values  # fmt: skip
    sal = m(ex["saliency"].maps, x=x8, model=smooth, attributions=ex["saliency"].attributions)
    assert (ig < 1e-4).all()
    assert (sal.values > 0.05).all()


def test_completeness_uses_maps_without_attributions(smooth, x8):
    a = sl.explain(smooth, x8, "input_x_gradient")["input_x_gradient"]
    with_maps = sl.metrics.get("completeness")()(a.maps, x=x8, model=smooth).values
    with_attr = sl.metrics.get("completeness")()(
        a.maps, x=x8, model=smooth, attributions=a.attributions
    ).values
    torch.testing.assert_close(with_maps, with_attr, rtol=1e-5, atol=1e-5)  # maps sum channels


def test_completeness_matches_quantus(smooth, x8):
    quantus = pytest.importorskip("quantus")
    ex = sl.explain(smooth, x8, "integrated_gradients", n_steps=64)["integrated_gradients"]
    seen = []

    def record(d):
        seen.append(np.asarray(d, dtype=np.float64))
        return d

    q = quantus.Completeness(
        normalise=False, abs=False, output_func=record, perturb_baseline="black",
        disable_warnings=True,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exact = q(
            model=smooth, x_batch=x8.numpy(), y_batch=ex.target.numpy(),
            a_batch=ex.attributions.numpy(), device="cpu", softmax=False,
        )  # fmt: skip
    # IG's baseline is zero; Quantus' "black" is each image's minimum: score against that one.
    ours = sl.metrics.get("completeness")(baseline="black")(
        ex.maps, x=x8, model=smooth, attributions=ex.attributions
    )
    theirs_gap = np.abs(ex.attributions.double().sum((1, 2, 3)).numpy() - seen[0])
    np.testing.assert_allclose(ours.extras["output_difference"].numpy(), seen[0], rtol=1e-5)
    np.testing.assert_allclose(ours.values.numpy(), theirs_gap, rtol=1e-5, atol=1e-7)
    assert list(exact) == [bool(v == 0) for v in ours.values]


# -- non-sensitivity -------------------------------------------------------------------------------


def _loop_non_sensitivity(model, x, maps, target, eps, normalise=True):
    """Direct formula, one pixel at a time, baseline = each image's minimum."""
    out = []
    for i in range(x.shape[0]):
        a = maps[i].double().abs().flatten()
        if normalise and a.max() > 0:
            a = a / a.max()
        with torch.no_grad():
            p = model(x[i : i + 1]).softmax(1)[0, target[i]]
        count = 0
        for j in range(a.numel()):
            xp = x[i : i + 1].clone()
            xp[..., j // x.shape[-1], j % x.shape[-1]] = x[i].min()
            with torch.no_grad():
                moved = (model(xp).softmax(1)[0, target[i]] - p).abs() >= eps
            count += int(bool(moved) != bool(a[j] >= eps))
        out.append(count)
    return torch.tensor(out, dtype=torch.float64)


def test_non_sensitivity_matches_loop(smooth, x8):
    torch.manual_seed(0)
    maps = torch.rand(3, 8, 8) * (torch.rand(3, 8, 8) > 0.5)  # half the pixels zero
    target = torch.tensor([0, 1, 2])
    m = sl.metrics.get("non_sensitivity")(eps=1e-5)
    r = m(maps, x=x8, model=smooth, target=target)
    ref = _loop_non_sensitivity(smooth, x8, maps, target, 1e-5)
    torch.testing.assert_close(r.values, ref)
    assert (r.values > 10).all()  # a dense net moves on every pixel: the zero half violates
    assert r.forwards == pytest.approx(65.0)
    frac = sl.metrics.get("non_sensitivity")(fraction=True)(maps, x=x8, model=smooth, target=target)
    torch.testing.assert_close(frac.values, ref / 64)


def test_non_sensitivity_gradient_on_ignoring_model(x8):
    torch.manual_seed(0)
    model = LeftHalf().eval()
    sal = sl.explain(model, x8, "saliency")["saliency"]
    assert (sal.maps[..., 4:] == 0).all()
    r = sl.metrics.get("non_sensitivity")()(sal.maps, x=x8, model=model, target=sal.target)
    assert (r.values == 0).all()
    rand = torch.rand(3, 8, 8) + 0.1  # attributes relevance to the ignored half too
    r = sl.metrics.get("non_sensitivity")()(rand, x=x8, model=model, target=sal.target)
    assert (r.values == 32).all()
    assert (r.extras["nonzero_but_insensitive"] == 32).all()


def test_non_sensitivity_groups(x8):
    """Groups of 4 pixels: zero where every pixel of the group is zero."""
    torch.manual_seed(0)
    model = LeftHalf().eval()
    sal = sl.explain(model, x8, "saliency")["saliency"]
    r = sl.metrics.get("non_sensitivity")(features_in_step=4, fraction=True)(
        sal.maps, x=x8, model=model, target=sal.target
    )
    assert (r.values == 0).all() and r.forwards == pytest.approx(17.0)


@pytest.mark.parametrize("batch", [3, 1])
def test_non_sensitivity_matches_quantus(smooth, x8, batch):
    quantus = pytest.importorskip("quantus")
    x = x8[:batch, :, :5, :5].contiguous()  # Quantus runs one forward per element: keep it small
    torch.manual_seed(1)
    maps = torch.rand(batch, 5, 5) * (torch.rand(batch, 5, 5) > 0.5)
    target = torch.tensor([0, 1, 2])[:batch]
    normalise = batch == 1  # Quantus normalises by the maximum over the whole batch
    q = quantus.NonSensitivity(
        eps=1e-5, features_in_step=1, normalise=normalise, disable_warnings=True
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = q(
            model=smooth, x_batch=x.numpy(), y_batch=target.numpy(),
            a_batch=maps[:, None].numpy(), device="cpu",
        )  # fmt: skip
    ours = sl.metrics.get("non_sensitivity")(unit="element", normalise=normalise)(
        maps, x=x, model=smooth, target=target
    )
    np.testing.assert_array_equal(ours.values.numpy(), np.asarray(theirs, dtype=np.float64))


# -- input invariance ------------------------------------------------------------------------------


@pytest.mark.parametrize("padding", [0, 1, "inside"])
def test_shifted_model_absorbs_the_shift(x8, padding):
    torch.manual_seed(0)
    net = SmoothNet(padding=0 if padding == "inside" else padding).eval()
    if padding == "inside":
        net.conv = PadConv(3, 4, 3)
    model = sl.models.model.as_model(net)
    shift = torch.tensor([-1.0, 0.5, 2.0])
    before = {k: v.clone() for k, v in net.state_dict().items()}
    m2 = shifted_model(model, x8, shift)
    with torch.no_grad():
        torch.testing.assert_close(
            m2.module(x8 + shift.view(1, 3, 1, 1)), net(x8), rtol=1e-5, atol=1e-5
        )
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k])


@pytest.mark.parametrize("padding", [0, 1])
def test_input_invariance_gradients_pass_input_x_gradient_fails(x8, padding):
    torch.manual_seed(0)
    net = SmoothNet(padding=padding).eval()
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    ex = sl.explain(net, x8, ["saliency", "input_x_gradient", "gradcam"])
    m = sl.metrics.get("input_invariance")()
    for method in ("saliency", "gradcam"):
        r = m(ex[method].maps, x=x8, model=net, explainer=method)
        assert (r.values == 0).all(), method
        assert float(r.extras["output_gap"].max()) < 1e-4
    r = m(ex["input_x_gradient"].maps, x=x8, model=net, explainer="input_x_gradient")
    assert (r.values > 0.5).all()
    mae = sl.metrics.get("input_invariance")(measure="mae")(
        ex["input_x_gradient"].maps, x=x8, model=net, explainer="input_x_gradient"
    )
    # input × gradient of the shifted input differs by shift × gradient, summed over channels.
    grad = sl.explain(net, x8, "saliency", absolute=False)["saliency"].attributions
    expected = (grad * -1.0).sum(1).abs().flatten(1).mean(1).double()
    torch.testing.assert_close(mae.values, expected, rtol=1e-4, atol=1e-6)
    assert net.training
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k])


def _shift_all(arr, indices=None, indexed_axes=None, input_shift=0.0, **kwargs):
    # Quantus 0.6.0's default baseline_replacement_by_shift leaves the first element of each
    # sample unshifted (its shifted model then differs from the original); shift them all.
    return arr + input_shift


def test_input_invariance_matches_quantus(x8):
    quantus = pytest.importorskip("quantus")
    torch.manual_seed(0)
    net = SmoothNet(padding=0).eval()  # no zero padding: Quantus' per-channel bias shift is exact
    for method in ("saliency", "input_x_gradient"):
        a = sl.explain(net, x8, method)[method]

        def explain(model, inputs, targets, method=method, **kwargs):
            x = torch.as_tensor(inputs)
            return (
                sl.explain(model, x, method, target=torch.as_tensor(targets))[method]
                .maps[:, None]
                .numpy()
            )

        q = quantus.InputInvariance(input_shift=-1, perturb_func=_shift_all, disable_warnings=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = q(
                model=net, x_batch=x8.numpy(), y_batch=a.target.numpy(),
                a_batch=a.maps[:, None].numpy(), explain_func=explain, device="cpu",
            )  # fmt: skip
        ours = sl.metrics.get("input_invariance")(shift=-1.0)(
            a.maps, x=x8, model=net, target=a.target, explainer=method
        )
        assert list(np.asarray(theirs, dtype=bool)) == [bool(v == 0) for v in ours.values]
        assert all(theirs) == (method == "saliency")


def test_input_invariance_bad_first_layer(x8):
    net = nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 2, 3), nn.Flatten(), nn.LazyLinear(2))
    net(x8)
    net.eval()
    maps = torch.rand(3, 8, 8)
    with pytest.raises(SaliencelabError, match="first layer to be an nn.Conv2d or nn.Linear"):
        sl.metrics.get("input_invariance")()(maps, x=x8, model=net, explainer="saliency")

    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 3)

        def forward(self, x):
            return self.conv(x * 2).mean((2, 3))

    with pytest.raises(SaliencelabError, match="does not get the model's input unchanged"):
        sl.metrics.get("input_invariance")()(maps, x=x8, model=Scaled(), explainer="saliency")


# -- bad input -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,kwargs,words",
    [
        ("completeness", {"baseline": "grey"}, "baseline must be"),
        ("completeness", {"output": "softmax"}, "output must be"),
        ("non_sensitivity", {"eps": 0}, "eps must be a positive number"),
        ("non_sensitivity", {"features_in_step": 0}, "features_in_step must be a positive"),
        ("non_sensitivity", {"unit": "patch"}, "unit must be"),
        ("input_invariance", {"measure": "max"}, "measure must be"),
    ],
)
def test_bad_options(name, kwargs, words):
    with pytest.raises(SaliencelabError, match=words):
        sl.metrics.get(name)(**kwargs)


def test_input_invariance_needs_explainer(smooth, x8):
    with pytest.raises(SaliencelabError, match="needs explainer") as err:
        sl.metrics.get("input_invariance")().update(torch.rand(3, 8, 8), x=x8, model=smooth)
    assert "\n" not in str(err.value)


def test_shift_per_channel_must_match(smooth, x8):
    with pytest.raises(SaliencelabError, match="shift has 2 values for inputs with 3 channels"):
        sl.metrics.get("input_invariance")(shift=[1.0, 2.0])(
            torch.rand(3, 8, 8), x=x8, model=smooth, explainer="saliency"
        )
