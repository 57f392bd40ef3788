"""Axiomatic metrics: completeness, non-sensitivity, input invariance.

References: the formulas computed directly on tiny models (one forward per perturbed input in a
loop); axioms (IG completeness ≈ 0 on a smooth net; gradients are input-invariant, input ×
gradient is not, Kindermans et al.); Quantus 0.6.0 on the same inputs: Completeness (its output
difference, read through its `output_func`, and its boolean), NonSensitivity (the same count with
`normalise=False`, or one sample with normalisation, since Quantus normalises by the batch
maximum) and InputInvariance (its boolean equals "fraction == 0" on a model without zero
padding, where its bias shift is exact; with a perturb_func that shifts every element, as its
default one misses the first element of each sample). Input invariance shifts the model in
place: its values equal those of a deep-copied shifted model (the implementation it replaced),
the model is bit-identical afterwards, and every forward it runs is counted.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import saliencelab as sl
from saliencelab.core.engine import Engine
from saliencelab.core.errors import SaliencelabError
from saliencelab.metrics.axiomatic._common import baseline_of
from saliencelab.metrics.axiomatic.input_invariance import shifted_model
from saliencelab.metrics.base import Explainer, make_batch
from saliencelab.models.model import as_model


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


class Doubled(nn.Conv2d):
    """2 × a convolution: still affine, but its output comes from a multiplication (the shift
    correction does not change it in place)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * 2.0


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
    # The inputs' logits come from the forward that resolved the predicted class: only the
    # baseline runs, one row for the 3 samples (they share it). With the target given, the
    # inputs run too.
    assert r.forwards == pytest.approx(1 / 3)
    given = sl.metrics.get("completeness")()(
        a.maps, x=x8, model=smooth, target=t, attributions=a.attributions
    )
    torch.testing.assert_close(given.values, expected, rtol=1e-6, atol=1e-6)
    assert given.forwards == pytest.approx(4 / 3)
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


@pytest.mark.parametrize("chunk", [1, 2, 4, 8])
def test_completeness_any_chunking_and_layout(smooth, x8, chunk):
    """The 3 samples' rows (inputs, then baselines: one row for a baseline they share, else 3;
    only the baselines where resolving the predicted class already gave the inputs' logits) cut
    in chunks of 1, 2, 4 or 8: chunks of inputs only, baselines only or both give the formula's
    values, and every row reaches the model in the layout the engine feeds (channels-last where
    its probe found that safe)."""
    a = sl.explain(smooth, x8, "input_x_gradient")["input_x_gradient"]
    t = a.target
    cases = [(b, t) for b in (0.0, -0.5, "black", x8[1], x8.flip(0))] + [("black", None)]
    for baseline, target in cases:
        with torch.no_grad():
            f = smooth(x8).double()
            f0 = smooth(baseline_of(x8, baseline).expand_as(x8).contiguous()).double()
        delta = f[torch.arange(3), t] - f0[torch.arange(3), t]
        expected = (a.attributions.double().sum((1, 2, 3)) - delta).abs()
        engine = Engine(as_model(smooth), chunk_size=chunk)
        batch = make_batch(a.maps, x=x8, model=smooth, target=target,
                           attributions=a.attributions, engine=engine)  # fmt: skip
        assert (batch.input_logits is None) == (target is not None)
        layouts: list[bool] = []

        def pre(mod, args, layouts=layouts):
            layouts.append(args[0].is_contiguous(memory_format=torch.channels_last))

        handle = smooth.register_forward_pre_hook(pre)
        try:
            values = sl.metrics.get("completeness")(baseline=baseline).update(batch=batch)
        finally:
            handle.remove()
        torch.testing.assert_close(values, expected, rtol=1e-6, atol=1e-6)
        shared = isinstance(baseline, float) or (
            isinstance(baseline, torch.Tensor) and baseline.dim() < x8.dim()
        )
        rows = (3 if target is not None else 0) + (1 if shared else 3)
        assert len(layouts) == -(-rows // chunk)
        assert set(layouts) == {batch.row_layout() == torch.channels_last}


def test_completeness_uses_maps_without_attributions(smooth, x8):
    a = sl.explain(smooth, x8, "input_x_gradient")["input_x_gradient"]
    with_maps = sl.metrics.get("completeness")()(a.maps, x=x8, model=smooth).values
    with_attr = sl.metrics.get("completeness")()(
        a.maps, x=x8, model=smooth, attributions=a.attributions
    ).values
    torch.testing.assert_close(with_maps, with_attr, rtol=1e-5, atol=1e-5)  # maps sum channels


def test_completeness_sums_the_attributions_not_the_maps(smooth, x8):
    """Σ a sums the full attributions when the batch has them (docstring), even where their
    channel sum is not the maps: the formula with f computed directly."""
    torch.manual_seed(4)
    attributions = torch.randn_like(x8)
    target = torch.tensor([0, 1, 2])
    with torch.no_grad():
        f = smooth(x8).double()[torch.arange(3), target]
        f0 = smooth(torch.zeros_like(x8)).double()[torch.arange(3), target]
    for maps in (torch.zeros(3, 8, 8), torch.rand(3, 8, 8) * 50):
        r = sl.metrics.get("completeness")()(
            maps, x=x8, model=smooth, target=target, attributions=attributions
        )
        total = attributions.double().sum((1, 2, 3))
        torch.testing.assert_close(r.extras["sum_attributions"], total)
        torch.testing.assert_close(r.values, (total - (f - f0)).abs(), rtol=1e-6, atol=1e-6)


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


def test_non_sensitivity_group_is_zero_only_if_all_its_pixels_are(x8):
    """Groups of 2 pixels (raster order) on a model reading only the left half: on the left,
    every other pixel's attribution is zero, so each left group holds one zero and one non-zero
    pixel (non-zero: no violation, as the output moves); the right half is all non-zero but
    ignored: its 8 × 2 groups violate. Hand count: 16 of 32 groups."""
    torch.manual_seed(0)
    model = LeftHalf().eval()
    maps = torch.rand(3, 8, 8) + 0.1
    maps[..., 0:4:2] = 0.0  # columns 0 and 2: the first pixel of each left group
    target = torch.tensor([0, 1, 2])
    r = sl.metrics.get("non_sensitivity")(features_in_step=2)(maps, x=x8, model=model,
                                                               target=target)  # fmt: skip
    assert r.values.tolist() == [16.0] * 3
    assert r.extras["zero_but_sensitive"].tolist() == [0] * 3
    assert r.extras["nonzero_but_insensitive"].tolist() == [16] * 3
    assert r.forwards == pytest.approx(33.0)


def test_non_sensitivity_normalises_per_sample(x8):
    """Normalisation by each sample's own maximum (docstring; Quantus uses the batch's): a
    sample's map scaled by 1e-6 scores as unscaled, here 0 violations by hand (attribution
    non-zero exactly on the left half the model reads); without normalisation its values are
    below eps, so its 32 left pixels are zero but move the output."""
    torch.manual_seed(0)
    model = LeftHalf().eval()
    maps = torch.rand(3, 8, 8) + 0.1
    maps[..., 4:] = 0.0
    maps[1] *= 1e-6
    target = torch.tensor([0, 1, 2])
    r = sl.metrics.get("non_sensitivity")()(maps, x=x8, model=model, target=target)
    assert r.values.tolist() == [0.0, 0.0, 0.0]
    raw = sl.metrics.get("non_sensitivity")(normalise=False)(maps, x=x8, model=model,
                                                              target=target)  # fmt: skip
    assert raw.values.tolist() == [0.0, 32.0, 0.0]
    assert raw.extras["zero_but_sensitive"].tolist() == [0, 32, 0]


def test_non_sensitivity_fraction_is_per_group():
    """`fraction=True` divides by the number of groups: 4-pixel groups (a half row each) of a
    map non-zero everywhere, on a model reading the left half: the 8 right groups of 16
    violate, 8 / 16 = 0.5 (by hand)."""
    torch.manual_seed(2)
    x = torch.randn(2, 3, 8, 8)
    torch.manual_seed(0)
    model = LeftHalf().eval()
    maps = torch.rand(2, 8, 8) + 0.1
    target = torch.tensor([0, 2])
    m = sl.metrics.get("non_sensitivity")
    count = m(features_in_step=4)(maps, x=x, model=model, target=target)
    assert count.values.tolist() == [8.0, 8.0]
    frac = m(features_in_step=4, fraction=True)(maps, x=x, model=model, target=target)
    assert frac.values.tolist() == [0.5, 0.5]


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


def _case(first: str, x8: torch.Tensor) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """(net, inputs, shift): SmoothNet with a first layer of each kind, "pad0" (no padding: the
    bias absorbs the shift), "pad1" (zero padding: a hook), "inside" (pads in its forward: a
    hook), "nobias" (no padding, no bias: a hook), "doubled" (padding, output of a product: a
    hook, not in place); or "linear", an MLP on (B, D) inputs (the bias absorbs the shift, one
    value per feature)."""
    torch.manual_seed(0)
    if first == "linear":
        net = nn.Sequential(nn.Linear(12, 5), nn.Tanh(), nn.Linear(5, 3))
        return net.eval(), x8.flatten(1)[:, :12].contiguous(), torch.linspace(-1.0, 2.0, 12)
    net = SmoothNet(padding=1 if first == "pad1" else 0)
    if first == "inside":
        net.conv = PadConv(3, 4, 3)
    if first == "nobias":
        net.conv = nn.Conv2d(3, 4, 3, bias=False)
    if first == "doubled":
        net.conv = Doubled(3, 4, 3, padding=1)
    return net.eval(), x8, torch.tensor([-1.0, 0.5, 2.0])


def _shifted(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    return x + shift.view(1, -1, *[1] * (x.dim() - 2))


FIRSTS = ["pad0", "pad1", "inside", "nobias", "doubled", "linear"]


def _reference_shifted_copy(net: nn.Module, x: torch.Tensor, shift: torch.Tensor) -> nn.Module:
    """The implementation before the in-place one: a deep copy whose first layer absorbs the
    shift (bias b − W·shift where the offset is the same at every position, a new bias if the
    layer had none; else a hook subtracting the offset map)."""
    name = "0" if isinstance(net, nn.Sequential) else "conv"  # the nets of `_case`
    copied = copy.deepcopy(net)
    layer = copied.get_submodule(name)
    with torch.no_grad():
        probe = shift.reshape(1, -1, *[1] * (x.dim() - 2)).expand(1, *x.shape[1:]).contiguous()
        offset = layer(probe) - layer(torch.zeros_like(probe))
    flat = offset.flatten(2) if offset.dim() > 2 else offset.unsqueeze(-1)
    per_channel = flat[..., :1]
    with torch.no_grad():
        if torch.allclose(flat, per_channel.expand_as(flat), rtol=1e-6, atol=1e-7):
            if layer.bias is None:
                layer.bias = nn.Parameter(-per_channel.flatten().clone())
            else:
                layer.bias.add_(-per_channel.flatten().to(layer.bias))
        else:
            layer.register_forward_hook(lambda m, i, out: out - offset.to(out.dtype))
    return copied


def _bytes(net: nn.Module) -> dict[str, tuple[int, torch.Tensor]]:
    """Each parameter's and buffer's identity and exact bits."""
    return {
        k: (id(v), v.detach().clone().contiguous().view(torch.uint8))
        for k, v in [*net.named_parameters(), *net.named_buffers()]
    }


def _assert_untouched(net: nn.Module, before: dict, flags: tuple) -> None:
    after = _bytes(net)
    assert after.keys() == before.keys()
    for k, (ident, bits) in before.items():
        assert after[k][0] == ident, k
        assert torch.equal(after[k][1], bits), k
    assert _flags(net) == flags
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in net.modules())
    assert not any("forward" in m.__dict__ for m in net.modules())  # no forward replaced


def _flags(net: nn.Module) -> tuple[list[bool], list[bool]]:
    return [m.training for m in net.modules()], [p.requires_grad for p in net.parameters()]


@pytest.mark.parametrize("first", FIRSTS)
def test_shifted_model_absorbs_the_shift(x8, first):
    net, x, shift = _case(first, x8)
    model = sl.models.model.as_model(net)
    before, flags = _bytes(net), _flags(net)
    with torch.no_grad():
        y = net(x)
    with shifted_model(model, x, shift) as m2, torch.no_grad():
        assert m2.module is net  # in place: no copy
        torch.testing.assert_close(m2.module(_shifted(x, shift)), y, rtol=1e-5, atol=1e-5)
    _assert_untouched(net, before, flags)


@pytest.mark.parametrize("first", FIRSTS)
@pytest.mark.parametrize("method", ["saliency", "input_x_gradient"])
@pytest.mark.parametrize("measure", ["fraction", "mae"])
def test_input_invariance_equals_the_copy_based_reference(x8, first, method, measure):
    net, x, shift = _case(first, x8)
    net.train()  # a model in training mode: eval for the passes, restored after
    if first == "linear":
        net[0].bias.requires_grad_(False)  # mixed requires_grad
    on = "attributions" if first == "linear" else "maps"
    a = sl.explain(net, x, method)[method]
    before, flags = _bytes(net), _flags(net)
    metric = sl.metrics.get("input_invariance")(shift=shift.tolist(), measure=measure, on=on)
    # (B, D) inputs: the maps are one number per sample; score the attributions
    maps, kw = (a.maps, {}) if on == "maps" else (a.attributions, {"attributions": a.attributions})
    r = metric(maps, x=x, model=net, target=a.target, explainer=method, **kw)
    _assert_untouched(net, before, flags)

    ref_net = _reference_shifted_copy(net, x, shift)
    a2 = sl.explain(ref_net, _shifted(x, shift), method, target=a.target)[method]
    ref, out = (a.maps, a2.maps) if on == "maps" else (a.attributions, a2.attributions)
    ref, out = ref.double(), out.double()
    if measure == "mae":
        expected = (ref - out).abs().flatten(1).mean(1)
    else:
        expected = (~torch.isclose(ref, out, rtol=1e-5, atol=1e-4)).flatten(1).double().mean(1)
    # The same layers, weights and rows: equal to float rounding (a bias-free layer gets a hook
    # here where the reference gave it a bias; and the engine's chunk-size search may cut the
    # rows of the in-place model, explained three times by now, into other chunks than those of
    # the fresh copy, which rounds differently). Saliency's MAE is that rounding itself, ~1e-8
    # on some CPUs' kernels.
    torch.testing.assert_close(r.values, expected, rtol=1e-6, atol=1e-7)
    if method == "saliency":
        assert (r.values == 0).all() if measure == "fraction" else r.values.max() < 1e-6


class _Raising(Explainer):
    """Raises inside the explanation, while the model is shifted."""

    def __init__(self) -> None:
        super().__init__("saliency")

    def __call__(self, model, x, target):
        super().__call__(model, x, target)  # runs on the shifted model, then fails
        raise RuntimeError("explainer failed")


@pytest.mark.parametrize("first", FIRSTS)
def test_model_is_restored_when_the_explainer_raises(x8, first):
    net, x, _ = _case(first, x8)
    net.train()
    maps = torch.rand(3, *x.shape[2:]) if x.dim() == 4 else torch.rand(x.shape)
    before, flags = _bytes(net), _flags(net)
    versions = [p._version for p in net.parameters()]
    with pytest.raises(RuntimeError, match="explainer failed"):
        sl.metrics.get("input_invariance")()(maps, x=x, model=net, explainer=_Raising())
    _assert_untouched(net, before, flags)
    # A bias changed in place is copied back in place: its version counter moved (caches keyed
    # on it, e.g. core/fused.py's folded weights, see the change); nothing else was written.
    moved = [p._version != v for p, v in zip(net.parameters(), versions, strict=True)]
    shifted_bias = {"pad0": "conv.bias", "linear": "0.bias"}.get(first)  # the others: a hook
    assert moved == [name == shifted_bias for name, _ in net.named_parameters()]


class _ReadsInputTwice(nn.Module):
    """Its first layer gets the input unchanged, but the input is read again later: a shift
    absorbed in the first layer still changes the output."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.tanh(self.conv(x)).mean((2, 3))) + x.mean((1, 2, 3))[:, None]


def test_input_invariance_refuses_a_model_that_does_not_absorb_the_shift(x8):
    torch.manual_seed(0)
    net = _ReadsInputTwice().eval()
    before, flags = _bytes(net), _flags(net)
    with pytest.raises(SaliencelabError, match="gives outputs .* away from the model's"):
        sl.metrics.get("input_invariance")()(
            torch.rand(3, 8, 8), x=x8, model=net, explainer="saliency"
        )
    _assert_untouched(net, before, flags)


class _Reversed(Explainer):
    """Explains the rows in reverse order with a `__call__` of its own: the metric does not see
    the explanation's logits, so it runs the shifted model's first row itself."""

    def __call__(self, model, x, target):
        a = super().__call__(model, x.flip(0), target.flip(0))
        return dataclasses.replace(a, maps=a.maps.flip(0), attributions=a.attributions.flip(0))


@pytest.mark.parametrize("first", ["pad0", "pad1"])
@pytest.mark.parametrize("explainer", ["saliency", "gradcam", "integrated_gradients", "reversed"])
def test_input_invariance_counts_every_forward(x8, first, explainer):
    net, _, _ = _case(first, x8)
    # explained once before, as a user does: the layout probe and Grad-CAM's layer search run
    # once per model (uncounted by sl.explain: core/layout.py, core/layers.py)
    method = "saliency" if explainer == "reversed" else explainer
    a = sl.explain(net, x8, method)[method]
    rows = {"forward": 0, "grad": 0}

    def pre(mod, args):
        rows["forward" if torch.is_inference_mode_enabled() else "grad"] += args[0].shape[0]

    handle = net.register_forward_pre_hook(pre)
    try:
        ex = _Reversed("saliency") if explainer == "reversed" else explainer
        # target given: a target of None is resolved by a forward before the metric runs
        metric = sl.metrics.get("input_invariance")()
        r = metric(a.maps, x=x8, model=net, target=a.target, explainer=ex)
    finally:
        handle.remove()
    b = x8.shape[0]
    assert round(r.forwards * b) == rows["forward"]
    assert round(r.passes * b) == rows["grad"]
    # one row finds the first layer and the logits to check; the explanation's first forward
    # gives the shifted model's logits, except where it does not start with the first row
    if explainer in ("saliency", "reversed"):
        assert rows == {"forward": 1 + (explainer == "reversed"), "grad": b}


@pytest.mark.parametrize("composite", ["epsilon_gamma_box", "epsilon_plus_flat"])
def test_input_invariance_of_lrp_rules_that_ignore_the_shift(composite):
    """z^B (bounded box) and flat rules at the first layer give the same relevance for x and
    x + shift: the correction of a zero-padded first layer must reach the model's forward only,
    not the layer's forwards that LRP runs with other weights (W⁺, W⁻, ones) swapped in."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    ).eval()  # fmt: skip
    x, target = torch.rand(4, 3, 16, 16), torch.arange(4)
    options = {"composite": composite}
    maps = sl.explain(net, x, {"lrp": options}, target=target)["lrp"].maps
    metric = sl.metrics.get("input_invariance")(measure="mae")
    explainer = Explainer("lrp", options)
    r = metric(maps, x=x, model=net, target=target, explainer=explainer)
    assert (r.values / maps.abs().flatten(1).mean(1)).max() < 1e-5


@pytest.mark.parametrize("composite", ["epsilon_plus", "epsilon_gamma_box"])
def test_input_invariance_of_lrp_with_a_batchnorm_merged_into_the_first_layer(composite):
    """LRP's canonizer merges the BatchNorm after a zero-padded first layer into it (W' = s·W):
    the shifted model must then subtract the merged layer's response to the shift. It subtracted
    W·shift, so LRP's own check refused the call ("outputs differ by 2.74") and the whole
    sl.evaluate with it. Reference: the same net with the BatchNorm merged by hand beforehand
    (nothing left to merge: the weights the shift was absorbed for are the ones that run)."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    ).eval()  # fmt: skip
    bn = net[1]
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.2, 3)
        bn.weight.uniform_(0.5, 2), bn.bias.uniform_(-0.5, 0.5)
    merged = copy.deepcopy(net)
    with torch.no_grad():
        s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        merged[0].weight.mul_(s[:, None, None, None])
        merged[0].bias.copy_((net[0].bias - bn.running_mean) * s + bn.bias)
    merged[1] = nn.Identity()
    x, target = torch.rand(4, 3, 12, 12), torch.arange(4)
    options = {"composite": composite}
    results = []
    for model in (net, merged):
        ex = sl.explain(model, x, {"lrp": options}, target=target)["lrp"]
        metric = sl.metrics.get("input_invariance")(measure="mae")
        r = metric(ex.maps, x=x, model=model, target=target, explainer=Explainer("lrp", options))
        results.append((ex.maps, r.values))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-3, atol=1e-6)
    assert (results[0][1] > 0).all()  # LRP at such a first layer is not input-invariant


def test_input_invariance_leaves_batchnorm_foldable():
    """A forward-only explainer on the shifted model must not make the engine remember the
    model as unfoldable (its folded first layer would subtract the unfolded offset)."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(8, 4),
    ).eval()  # fmt: skip
    bn = net[1]  # statistics far from the identity: a fold that ignored the offset would show
    (
        bn.running_mean.uniform_(-1, 1),
        bn.running_var.uniform_(0.2, 3),
        bn.weight.data.uniform_(0.5, 2),
    )
    x, target = torch.rand(4, 3, 12, 12), torch.arange(4)
    maps = torch.rand(4, 12, 12)
    explainer = Explainer("occlusion", {"window": 4, "stride": 4})
    sl.metrics.get("input_invariance")()(maps, x=x, model=net, target=target, explainer=explainer)
    with Engine(as_model(net)).folded_session(x) as did:
        assert did


class _Switchable(nn.Module):
    """A conv net whose forward may start scaling its input (the first layer then no longer gets
    it unchanged)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)
        self.scale = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.tanh(self.conv(x * 2 if self.scale else x)).mean((2, 3)))


def test_input_invariance_remembers_first_layer_and_offset_until_they_change(x8):
    """The first layer and its response to the shift are kept per model between calls; an
    in-place weight edit, a new weight, other conv settings or another shift are seen, and a
    first layer that stops getting the input unchanged is looked for again."""
    torch.manual_seed(0)
    net = _Switchable().eval()

    def score(shift=-1.0):
        maps = sl.explain(net, x8, "saliency")["saliency"].maps  # of the model as it is now
        m = sl.metrics.get("input_invariance")(shift=shift)
        return m(maps, x=x8, model=net, explainer="saliency")

    assert (score().values == 0).all()
    with torch.no_grad():
        net.conv.weight.mul_(1.5)  # a stale offset would make the shifted model's outputs differ
    assert (score().values == 0).all()
    net.conv.weight = nn.Parameter(torch.randn_like(net.conv.weight))
    assert (score().values == 0).all()
    net.conv.padding = (0, 0)  # the offset is now the same everywhere
    assert (score([0.5, -1.0, 2.0]).values == 0).all()
    r = score()
    assert (r.values == 0).all() and float(r.extras["output_gap"].max()) < 1e-5
    net.scale = True
    with pytest.raises(SaliencelabError, match="does not get the model's input unchanged"):
        score()
    net.scale = False
    net.conv = nn.Sequential(nn.Identity(), nn.Conv2d(3, 4, 3))  # "conv" is not a layer now
    with pytest.raises(SaliencelabError, match="first layer to be an nn.Conv2d or nn.Linear"):
        score()


def test_changed_fraction_is_isclose():
    """The fast finite path of the 'fraction' measure equals isclose, and NaN or infinities
    follow isclose's rules."""
    from saliencelab.metrics.axiomatic.input_invariance import changed_fraction

    torch.manual_seed(3)
    a = torch.randn(4, 50, dtype=torch.float64)
    b = a + torch.randn_like(a) * torch.logspace(-7, -2, 50, dtype=torch.float64)
    b[0, :5] = a[0, :5] * (1 + 1e-5)  # at the relative tolerance
    for rtol, atol in ((1e-5, 1e-4), (0.0, 1e-6), (1e-3, 0.0)):
        expected = (~torch.isclose(a, b, rtol=rtol, atol=atol)).double().mean(1)
        assert torch.equal(changed_fraction(a, b, rtol, atol), expected)
    b[1, 0], b[2, 1], a[3, 2], b[3, 2] = math.nan, math.inf, -math.inf, -math.inf
    expected = (~torch.isclose(a, b, rtol=1e-5, atol=1e-4)).double().mean(1)
    assert torch.equal(changed_fraction(a, b, 1e-5, 1e-4), expected)


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


def test_changed_fraction_uses_the_tolerance_of_the_second_argument():
    """isclose(a, b) is |a − b| ≤ atol + rtol·|b|: asymmetric for a large rtol. By hand, with
    rtol 0.5: a = 1, b = 1.8 is close (0.8 ≤ 0.9), a = 1.8, b = 1 is not (0.8 > 0.5); and
    against isclose on values of very different magnitudes."""
    from saliencelab.metrics.axiomatic.input_invariance import changed_fraction

    a = torch.tensor([[1.0, 1.0], [1.8, 1.8]], dtype=torch.float64)
    b = a.flip(0)
    assert changed_fraction(a, b, 0.5, 0.0).tolist() == [0.0, 1.0]
    torch.manual_seed(6)
    a = torch.logspace(-4, 4, 60, dtype=torch.float64).repeat(3, 1)
    a[1] *= -1
    b = a * torch.linspace(0.3, 3.0, 60, dtype=torch.float64)[torch.randperm(60)]
    for rtol, atol in ((0.5, 0.0), (0.5, 1e-3), (0.9, 0.0)):
        expected = (~torch.isclose(a, b, rtol=rtol, atol=atol)).double().mean(1)
        assert torch.equal(changed_fraction(a, b, rtol, atol), expected)
        assert 0 < float(expected.min()) and float(expected.max()) < 1


def test_input_invariance_default_shift_is_minus_one(smooth, x8):
    """The default shift is −1 (signature): the explainer is asked for x₂ = x − 1."""
    seen = []

    class Recording(Explainer):
        def __call__(self, model, x, target):
            seen.append(x.detach().clone())
            return super().__call__(model, x, target)

    m = sl.metrics.get("input_invariance")()
    assert m.shift == -1.0
    a = sl.explain(smooth, x8, "saliency")["saliency"]
    r = m(a.maps, x=x8, model=smooth, target=a.target, explainer=Recording("saliency"))
    (x2,) = seen
    torch.testing.assert_close(x2, x8 - 1.0, rtol=0, atol=1e-6)
    assert (r.values == 0).all()


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
        ("completeness", {"baseline": math.nan}, "baseline of completeness must be finite"),
        ("non_sensitivity", {"baseline": torch.full((3, 1, 1), -math.inf)}, "must be finite"),
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
