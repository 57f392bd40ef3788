"""Layer-wise relevance propagation: each rule against its formula, LRP-0 = gradient × input,
Captum's LRP, conservation, reversible canonizers, and the bundled EfficientNet-Lite0."""

from __future__ import annotations

import copy
from collections import Counter

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import saliencelab as sl
from saliencelab.core.derived import forget
from saliencelab.core.engine import Engine
from saliencelab.core.errors import SaliencelabError
from saliencelab.core.state import Hooks
from saliencelab.core.targets import Target
from saliencelab.methods.relevance.lrp import (
    AlphaBeta,
    Composite,
    Epsilon,
    Flat,
    Gamma,
    LRPRule,
    MBConvResidual,
    MergeBatchNorm,
    Pass,
    ResidualSum,
    WSquare,
    ZBox,
    ZPlus,
)
from saliencelab.methods.relevance.lrp.canonizers import merged_parameters
from saliencelab.models.efficientnet_lite import Conv2dSame, MBConvBlock

LAYERS = (nn.Linear, nn.Conv2d)
STAB = 1e-6


def _sign0(t):
    return torch.where(t >= 0, 1.0, -1.0).double()


def _stab(d, eps=STAB):
    return d + eps * _sign0(d)


def _lrp(model, x, composite, target, **options):
    return sl.explain(model, x, methods="lrp", target=target, composite=composite, **options)


# -- each rule equals its formula on one layer --------------------------------------------------


def _one_layer(kind: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(3)
    if kind == "linear":
        layer, x = nn.Linear(7, 5), torch.randn(3, 7)
    elif kind == "linear_3d":  # channels last, rows in between
        layer, x = nn.Linear(4, 5), torch.randn(3, 2, 4)
    elif kind == "grouped_conv":  # (rules run grouped layers as separate forwards)
        layer, x = nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2), torch.randn(3, 4, 6, 6)
    else:
        layer, x = nn.Conv2d(3, 4, 3, stride=2, padding=1), torch.randn(3, 3, 6, 6)
    with torch.no_grad():
        layer.bias.mul_(3.0)  # biases comparable to the contributions
    return layer.double().eval(), x.double()


def _dense(layer: nn.Module, x: torch.Tensor, weight: torch.Tensor | None = None):
    """The bias-free layer as a matrix M (out, in), built column by column from unit inputs."""
    w = layer.weight if weight is None else weight
    fn = nn.functional.linear if isinstance(layer, nn.Linear) else None
    n_in = x[0].numel()
    eye = torch.eye(n_in, dtype=x.dtype).view(n_in, *x.shape[1:])
    with torch.no_grad():
        if fn is not None:
            out = fn(eye, w)
        else:
            out = nn.functional.conv2d(eye, w, None, layer.stride, layer.padding, 1, layer.groups)
    return out.reshape(n_in, -1).T


def _bias(layer, z_shape):
    b = layer.bias.detach()
    if isinstance(layer, nn.Linear):
        return b.expand(z_shape)
    return b.view(-1, 1, 1).expand(z_shape)


def _by_hand(rule, layer, x, v):
    """R_in of every sample by the matrix formula of `rule`; relevance of the output z ⊙ v."""
    m = _dense(layer, x)
    out = []
    for xi, vi in zip(x, v, strict=True):
        a = xi.flatten()
        with torch.no_grad():
            z_full = layer(xi[None])[0]
        b = _bias(layer, z_full.shape).flatten()
        z = z_full.flatten()
        r = z * vi.flatten()
        c = a[None, :] * m  # c[k, j] = a_j w_jk
        pos, neg = c.clamp(min=0), c.clamp(max=0)
        if isinstance(rule, Epsilon):
            r_in = (c / _stab(z, rule.epsilon)[:, None] * r[:, None]).sum(0)
        elif isinstance(rule, ZPlus):
            r_in = (pos / _stab(pos.sum(1))[:, None] * r[:, None]).sum(0)
        elif isinstance(rule, AlphaBeta):
            rp = pos / _stab(pos.sum(1))[:, None]
            rn = neg / _stab(neg.sum(1))[:, None]
            r_in = ((rule.alpha * rp - rule.beta * rn) * r[:, None]).sum(0)
        elif isinstance(rule, Gamma):
            up = (z >= 0)[:, None]
            cg = c + rule.gamma * torch.where(up, pos, neg)
            bg = b + rule.gamma * torch.where(z >= 0, b.clamp(min=0), b.clamp(max=0))
            r_in = (cg / _stab(cg.sum(1) + bg)[:, None] * r[:, None]).sum(0)
        elif isinstance(rule, ZBox):
            lo, hi = a.min(), a.max()
            cb = a[None, :] * m - lo * m.clamp(min=0) - hi * m.clamp(max=0)
            r_in = (cb / _stab(cb.sum(1))[:, None] * r[:, None]).sum(0)
        elif isinstance(rule, Flat):
            support = _dense(layer, x, torch.ones_like(layer.weight))
            r_in = (support / _stab(support.sum(1))[:, None] * r[:, None]).sum(0)
        elif isinstance(rule, WSquare):
            sq = m * m
            r_in = (sq / _stab(sq.sum(1))[:, None] * r[:, None]).sum(0)
        out.append(r_in.view_as(xi))
    return torch.stack(out)


RULES = [
    Epsilon(0.0),
    Epsilon(0.5),
    ZPlus(),
    AlphaBeta(2.0, 1.0),
    AlphaBeta(1.0, 0.0),
    Gamma(0.25),
    Gamma(3.0),
    ZBox(),
    Flat(),
    WSquare(),
]


@pytest.mark.parametrize("sign", ["signed", "nonnegative", "after_relu6"])
@pytest.mark.parametrize("kind", ["linear", "linear_3d", "conv", "grouped_conv"])
@pytest.mark.parametrize("rule", RULES, ids=repr)
def test_each_rule_equals_its_formula_on_one_layer(rule, kind, sign):
    layer, x = _one_layer(kind)
    model = nn.Sequential(layer, nn.Flatten()).eval()
    if sign != "signed":  # (non-negative inputs: some rules take a shorter path)
        x = x.clamp(min=0)
    if sign == "after_relu6":  # known non-negative (x < 6: the pass-through keeps R)
        if not rule.proportional:
            pytest.skip("a rule for the input layer only")
        model = nn.Sequential(nn.ReLU6(), layer, nn.Flatten()).eval()
    with torch.no_grad():
        v = torch.randn(model(x).shape, dtype=x.dtype)
    target = lambda out: (out * v).sum(1)  # noqa: E731  (relevance z ⊙ v on every output)
    if rule.proportional:
        composite = Composite([(LAYERS, rule), (nn.ReLU6, Pass())])
    else:
        composite = Composite([], first=rule)
    got = _lrp(model, x, composite, target)["lrp"].attributions
    torch.testing.assert_close(got, _by_hand(rule, layer, x, v.view(len(x), -1)))


@pytest.mark.parametrize(
    ("layer", "shape", "nhwc"),
    [
        (nn.Linear(6, 4), (3, 6), False),
        (nn.Linear(6, 4), (2, 5, 6), False),
        (nn.Conv1d(3, 4, 3, stride=2, padding=1), (2, 3, 9), False),
        (nn.Conv2d(3, 4, 3, stride=2, padding=(1, 2), dilation=2), (2, 3, 11, 10), False),
        (nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False), (2, 4, 7, 7), True),
        (nn.Conv3d(2, 3, 3, padding=1), (1, 2, 5, 5, 5), False),
        (Conv2dSame(3, 4, 3, stride=2), (2, 3, 9, 8), False),  # asymmetric padding
        (Conv2dSame(3, 4, 5, stride=1), (2, 3, 9, 8), True),
        (Conv2dSame(4, 4, 3, stride=2, groups=4), (2, 4, 10, 10), True),
    ],
)
def test_direct_vjp_equals_autograd(layer, shape, nhwc):
    """Rules take (∂z/∂a)ᵀ s of Linear / Conv layers from the transposed map directly, not
    from a nested autograd.grad: the same numbers, for any weight handed to them."""
    from saliencelab.methods.relevance.lrp.rules import _direct_vjp

    torch.manual_seed(0)
    a = torch.randn(shape)
    if nhwc:
        a = a.contiguous(memory_format=torch.channels_last)
    weight = torch.randn_like(layer.weight)  # e.g. W⁺ or |W|: not the layer's own
    leaf = a.clone().requires_grad_(True)
    params = layer._parameters
    saved, params["weight"] = params["weight"], weight
    try:
        z = layer(leaf)
        s = torch.randn_like(z)
        (expected,) = torch.autograd.grad(z, leaf, s)
        direct = _direct_vjp(layer, a, weight)
    finally:
        params["weight"] = saved
    assert direct is not None
    torch.testing.assert_close(direct(s), expected, rtol=1e-5, atol=1e-5)


def test_direct_vjp_is_not_used_where_the_forward_is_unknown():
    from saliencelab.methods.relevance.lrp.rules import _direct_vjp

    class Shifted(nn.Conv2d):  # a forward of its own: only autograd knows its gradient
        def forward(self, x):
            return super().forward(x + 1)

    conv = nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect")
    assert _direct_vjp(conv, torch.randn(1, 2, 5, 5), conv.weight) is None
    shifted = Shifted(2, 2, 3)
    assert _direct_vjp(shifted, torch.randn(1, 2, 5, 5), shifted.weight) is None
    same = nn.Conv2d(2, 2, 3, padding="same")
    assert _direct_vjp(same, torch.randn(1, 2, 5, 5), same.weight) is None


def test_z_box_takes_given_bounds_per_channel():
    layer, x = _one_layer("conv")
    low = torch.tensor([-3.0, -2.0, -4.0], dtype=x.dtype).view(1, 3, 1, 1)
    model = nn.Sequential(layer, nn.Flatten()).eval()
    got = _lrp(model, x, Composite([], first=ZBox(low, 5.0)), 2)["lrp"].attributions
    m = _dense(layer, x)
    lo = low.expand_as(x)[0].flatten()
    for xi, gi in zip(x, got, strict=True):
        a = xi.flatten()
        z = layer(xi[None]).flatten()
        cb = a[None, :] * m - lo[None, :] * m.clamp(min=0) - 5.0 * m.clamp(max=0)
        r = torch.zeros_like(z)
        r[2] = z[2]
        want = (cb / _stab(cb.sum(1))[:, None] * r[:, None]).sum(0)
        torch.testing.assert_close(gi.flatten(), want)


def test_residual_sum_splits_relevance_in_proportion_to_the_terms():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(6, 6)
            self.add = ResidualSum()

        def forward(self, x):
            return self.add(self.fc(x), x)

    torch.manual_seed(0)
    model = Block().double().eval()
    x = torch.randn(2, 6, dtype=torch.double)
    records, _ = _records(model, x, Composite([(ResidualSum, Epsilon(0.1))]), torch.tensor([1, 4]))
    (rec,) = records
    h, z = model.fc(x), model(x)
    den = _stab(z, 0.1)
    torch.testing.assert_close(rec.relevance_in[0], h / den * rec.relevance_out)
    torch.testing.assert_close(rec.relevance_in[1], x / den * rec.relevance_out)


# -- LRP-0 = gradient × input; Captum's LRP ----------------------------------------------------


def _relu_net(bias: bool) -> nn.Module:
    torch.manual_seed(5)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=bias),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, bias=bias),
        nn.ReLU6(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(8 * 2 * 2, 64, bias=bias),
        nn.ReLU(),
        nn.Linear(64, 5, bias=bias),  # wide: each output has positive and negative contributions
    ).eval()


def test_lrp_0_is_gradient_times_input_on_a_bias_free_relu_network(images):
    model = _relu_net(bias=False)
    ex = sl.explain(
        model, images, methods=["lrp", "input_x_gradient"], composite="epsilon", epsilon=0.0
    )
    lrp, ixg = ex["lrp"].attributions, ex["input_x_gradient"].attributions
    assert lrp.abs().sum() > 0
    torch.testing.assert_close(lrp, ixg, rtol=1e-4, atol=1e-6)
    # ... and LRP-ε with a large ε is not (the comparison can fail).
    big = sl.explain(model, images, methods="lrp", composite="epsilon", epsilon=1.0)["lrp"]
    assert not torch.allclose(big.attributions, ixg, rtol=1e-2, atol=1e-3)


def test_epsilon_rule_matches_captum_lrp(tiny_cnn, images):
    from captum.attr import LRP

    target = tiny_cnn(images).argmax(1)
    ours = _lrp(tiny_cnn, images, "epsilon", target.tolist(), epsilon=1e-9)["lrp"]
    theirs = LRP(tiny_cnn).attribute(images.clone(), target=target)
    torch.testing.assert_close(ours.attributions, theirs.detach(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("inplace", [False, True])
def test_relu6_passes_relevance_through_where_it_clips(inplace):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(4, 8, bias=False), nn.ReLU6(inplace=inplace), nn.Linear(8, 3, bias=False)
    ).eval()
    with torch.no_grad():
        model[0].weight.mul_(10)
        x = torch.randn(5, 4)
        assert (model[0](x) > 6).any()
        score = model(x)[:, 0]
    methods = ["lrp", "input_x_gradient"]
    ex = sl.explain(model, x, methods=methods, composite="epsilon", epsilon=0.0, target=0)
    torch.testing.assert_close(ex["lrp"].attributions.sum(1), score)  # bias-free: conserved
    assert not torch.allclose(ex["input_x_gradient"].attributions.sum(1), score, atol=1e-3)
    assert model[1].inplace is inplace


# -- conservation ---------------------------------------------------------------------------------


def _records(model, x, composite, target):
    rule = LRPRule(composite, canonizers=(), record=True)
    engine = Engine(sl.Model(model), chunk_size=len(x))
    (chunk,) = engine.gradients(len(x), lambda r: x[r], lambda r: r, Target(target), backward=rule)
    return rule.records, chunk


@pytest.mark.parametrize(
    ("rule", "bias"),
    [
        (ZPlus(), True),
        (AlphaBeta(2.0, 1.0), True),
        (AlphaBeta(1.0, 0.0), True),
        (Epsilon(1e-9), False),
    ],
    ids=["z_plus", "alpha2_beta1", "alpha1_beta0", "epsilon_bias_free"],
)
def test_relevance_is_conserved_layer_by_layer(rule, bias, images):
    model = _relu_net(bias)
    if bias:  # a positive logit without bias has positive contributions to conserve
        nn.init.zeros_(model[-1].bias)
    x = images.abs() if isinstance(rule, AlphaBeta) else images
    composite = Composite([(LAYERS, rule), (nn.AvgPool2d, Epsilon(1e-9))])
    with torch.no_grad():
        logits = model(x)
    target = logits.argmax(1)
    assert (logits.max(1).values > 0).all()
    records, chunk = _records(model, x, composite, target)
    assert [r.name for r in records] == ["8", "6", "4", "2", "0"]  # backward order
    for rec in records:
        out_sum = rec.relevance_out.flatten(1).sum(1)
        in_sum = rec.relevance_in[0].flatten(1).sum(1)
        torch.testing.assert_close(in_sum, out_sum, rtol=1e-4, atol=1e-5)
    for upper, lower in zip(records, records[1:], strict=False):  # through ReLU / ReLU6 / flatten
        torch.testing.assert_close(
            lower.relevance_out.flatten(1).sum(1),
            upper.relevance_in[0].flatten(1).sum(1),
            rtol=1e-4,
            atol=1e-5,
        )
    total = (chunk.input_grad).flatten(1).sum(1)
    torch.testing.assert_close(total, chunk.scores, rtol=1e-4, atol=1e-5)


def test_epsilon_with_biases_is_not_conservative(images):
    """The conservation test above can fail: biases absorb relevance under LRP-ε."""
    records, chunk = _records(
        _relu_net(bias=True), images, Composite([(LAYERS, Epsilon(1e-9))]), torch.tensor([0] * 4)
    )
    gap = chunk.input_grad.flatten(1).sum(1) - chunk.scores
    assert gap.abs().min() > 1e-3


# -- canonizers -----------------------------------------------------------------------------------


def _bn_net() -> nn.Module:
    torch.manual_seed(2)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1, bias=False),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Conv2d(6, 6, 3, groups=6, padding=1),  # depthwise, with a bias
        nn.BatchNorm2d(6),
        nn.ReLU6(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 4),
        nn.BatchNorm1d(4),
    )
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_()  # negative scales too
                m.bias.normal_()
    return model.eval()


def _snapshot(model):
    return (
        list(model.modules()),
        {n: (p, p.detach().clone()) for n, p in model.named_parameters()},
        {n: b.detach().clone() for n, b in model.named_buffers()},
    )


def _assert_restored(model, snap):
    modules, params, buffers = snap
    assert list(model.modules()) == modules  # the same objects, in the same places
    now = dict(model.named_parameters())
    assert now.keys() == params.keys()
    for name, (obj, value) in params.items():
        assert now[name] is obj and torch.equal(obj, value)
    for name, value in model.named_buffers():
        assert torch.equal(value, buffers[name])
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks and "forward" not in vars(m)


def test_merging_batchnorm_keeps_outputs_and_is_undone_exactly(images):
    model = _bn_net()
    snap = _snapshot(model)
    with torch.no_grad():
        before = model(images)
    with Hooks() as hooks:
        assert MergeBatchNorm().apply(model, hooks) == 3
        assert sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()) == 0
        with torch.no_grad():
            merged = model(images)
    torch.testing.assert_close(merged, before, rtol=1e-5, atol=1e-5)
    _assert_restored(model, snap)
    with torch.no_grad():
        assert torch.equal(model(images), before)


def test_canonizers_are_undone_when_the_method_raises(images):
    model = _bn_net()
    snap = _snapshot(model)

    def failing_target(out):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        sl.explain(model, images, methods="lrp", target=failing_target)
    _assert_restored(model, snap)


def test_lrp_on_a_batchnorm_net_equals_lrp_on_its_merged_twin(images):
    """With canonize=True a BN net is explained as the equivalent net with BN merged by hand."""
    model = _bn_net()
    twin = copy.deepcopy(model)
    for layer, bn in ((0, 1), (3, 4), (8, 9)):
        w, b = merged_parameters(model[layer], model[bn])
        twin[layer].weight, twin[layer].bias = nn.Parameter(w), nn.Parameter(b)
        twin[bn] = nn.Identity()
    composite = "epsilon_alpha2_beta1"
    ours = _lrp(model, images, composite, 1)["lrp"].attributions
    want = _lrp(twin, images, composite, 1, canonize=False)["lrp"].attributions
    torch.testing.assert_close(ours, want)
    unmerged = _lrp(model, images, composite, 1, canonize=False)["lrp"].attributions
    assert not torch.allclose(unmerged, want, rtol=1e-3, atol=1e-4)


# -- kept weights, in-place edits, fused activations ---------------------------------------------


class _Ops(TorchDispatchMode):
    """The ATen ops run inside the block, by name."""

    def __init__(self):
        super().__init__()
        self.names = Counter()

    def total(self):
        return self.names.total()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def _fresh(model):
    """A copy of the model: other parameter objects, so nothing kept for `model` applies."""
    return copy.deepcopy(model)


@pytest.mark.parametrize("composite", ["epsilon_plus", "epsilon_gamma_box", "epsilon_alpha2_beta1"])
def test_kept_weights_are_rebuilt_when_the_weights_change(composite, images):
    # float64: alpha-beta on signed inputs amplifies float32 rounding (see rules.AlphaBeta)
    model, images = _bn_net().double(), images.double()
    snap = _snapshot(model)
    forget(model)
    with _Ops() as cold:
        first = _lrp(model, images, composite, 1)["lrp"].attributions
    with _Ops() as warm:
        again = _lrp(model, images, composite, 1)["lrp"].attributions
    assert torch.equal(again, first)
    # The merged BatchNorms and the rules' weight copies were kept from the first call.
    assert warm.names["rsqrt"] == 0 < cold.names["rsqrt"]
    assert warm.total() <= cold.total() - 6 * 3
    _assert_restored(model, snap)

    edits = [
        lambda m: m[0].weight.mul_(-1.5),  # a conv weight, in place (as an optimiser step)
        lambda m: m[1].weight.neg_(),  # a BatchNorm scale: flips the merged weight's signs
        lambda m: m[9].running_var.mul_(4.0),  # a BatchNorm statistic: halves the logits
        lambda m: m[3].weight.neg_(),  # a depthwise conv's weight
    ]
    for edit in edits:
        with torch.no_grad():
            edit(model)
        got = _lrp(model, images, composite, 1)["lrp"].attributions
        want = _lrp(_fresh(model), images, composite, 1)["lrp"].attributions
        assert (got - first).abs().max() > 1e-3 * first.abs().max()  # (stale: equal)
        torch.testing.assert_close(got, want)
        first = got

    model[3].weight = nn.Parameter(torch.randn_like(model[3].weight))  # another tensor object
    got = _lrp(model, images, composite, 1)["lrp"].attributions
    torch.testing.assert_close(got, _lrp(_fresh(model), images, composite, 1)["lrp"].attributions)

    model.train()  # a train-mode forward updates running statistics without a version bump
    with torch.no_grad():
        model(images * 3 + 1)
    model.eval()
    got = _lrp(model, images, composite, 1)["lrp"].attributions
    torch.testing.assert_close(got, _lrp(_fresh(model), images, composite, 1)["lrp"].attributions)

    model.float()  # new storage (float32: equal up to rounding, amplified by alpha-beta)
    got = _lrp(model, images.float(), composite, 1)["lrp"].attributions
    want = _lrp(_fresh(model), images.float(), composite, 1)["lrp"].attributions
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=0, atol=0.05 * want.abs().max())


def test_parameters_and_hooks_are_restored_after_each_call(images):
    model = _bn_net()
    snap = _snapshot(model)
    seen = []
    model[0].register_forward_hook(lambda m, i, o: seen.append(m.weight))
    for composite in ("epsilon_plus", "epsilon_alpha2_beta1", "epsilon_plus"):
        _lrp(model, images, composite, 0)
        assert len(model[0]._forward_hooks) == 1  # the user's hook, and only it
        for m in model.modules():
            assert m is model[0] or not m._forward_hooks
            assert not m._forward_pre_hooks and "forward" not in vars(m)
        now = dict(model.named_parameters())
        for name, (obj, value) in snap[1].items():
            assert now[name] is obj and torch.equal(obj, value)
        assert list(model.modules()) == snap[0]
    # In the LRP passes the conv ran with its merged weight, one kept object; outside, its own.
    merged = [w for w in seen if w is not model[0].weight]
    assert len(merged) >= 3 and all(w is merged[0] for w in merged)  # (one per chunk)
    model(images)
    assert seen[-1] is model[0].weight


class _Block(nn.Module):
    """conv → BatchNorm → activation, with the activation reading a copy (`fuse=False`, so
    the pass-through runs on its own), a second reader of the conv's output (`skip`), and the
    output edited in place (`inplace`): all compute the same function."""

    def __init__(self, act: nn.Module, fuse: bool = True, skip: bool = False, inplace=False):
        super().__init__()
        torch.manual_seed(4)
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.act = act
        self.head = nn.Sequential(nn.Conv2d(6, 6, 3, padding=1), nn.AdaptiveAvgPool2d(1))
        self.fc = nn.Linear(6, 4)
        self.fuse, self.skip, self.inplace = fuse, skip, inplace
        with torch.no_grad():
            self.bn.running_mean.normal_()
            self.bn.weight.normal_()
            self.conv.weight.mul_(4)

    def forward(self, x):
        h = self.bn(self.conv(x))
        a = self.act(h if self.fuse else h.clone())
        if self.inplace:
            a.mul_(0.5).add_(1.0)
            h += 0.25
        else:
            a = a * 0.5 + 1.0
            h = h + 0.25
        if self.skip:
            a = a + h
        return self.fc(self.head(a).flatten(1))


@pytest.mark.parametrize("act", [nn.ReLU6(), nn.SiLU(), nn.Hardswish()], ids=repr)
@pytest.mark.parametrize("skip", [False, True])
@pytest.mark.parametrize("composite", ["epsilon", "epsilon_plus", "epsilon_gamma_box"])
def test_fused_activation_equals_the_pass_through(act, skip, composite, images):
    """The activation after a hooked layer hands relevance f(z) ⊙ g to the layer (no ratio);
    with a second reader of z, or z or f(z) edited in place later, the result is the same."""
    separate = _Block(act, fuse=False, skip=skip).eval()
    want = _lrp(separate, images, composite, 2)["lrp"].attributions
    for inplace in (False, True):
        model = _Block(act, fuse=True, skip=skip, inplace=inplace).eval()
        with torch.no_grad():
            assert torch.allclose(model(images), separate(images), atol=1e-6)
        got = _lrp(model, images, composite, 2)["lrp"].attributions
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * want.abs().max())


def test_layer_output_edited_in_place_gives_the_same_relevance(images):
    """ResNet's `out += identity` and an in-place ReLU right after a merged BatchNorm edit the
    hooked layer's output: its rule recomputes it (no copy of every output is kept)."""

    class Res(nn.Module):
        def __init__(self, inplace):
            super().__init__()
            torch.manual_seed(6)
            self.conv1, self.bn1 = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)
            self.relu = nn.ReLU(inplace=inplace)
            self.conv2 = nn.Conv2d(3, 3, 3, padding=1)
            self.fc = nn.Linear(3 * 12 * 12, 4)
            self.inplace = inplace

        def forward(self, x):
            out = self.relu(self.bn1(self.conv1(x)))
            out2 = self.conv2(out)
            if self.inplace:
                out2 += x
            else:
                out2 = out2 + x
            return self.fc(out2.flatten(1))

    # float64: alpha-beta's ½(a·w ± |a|·|w|) cancels, and in float32 its maps move by
    # rounding with the memory layout and chunking alone
    x = images.double()
    for composite in ("epsilon", "epsilon_plus", "epsilon_alpha2_beta1"):
        want = _lrp(Res(False).double().eval(), x, composite, 3)["lrp"].attributions
        got = _lrp(Res(True).double().eval(), x, composite, 3)["lrp"].attributions
        torch.testing.assert_close(got, want)


# -- the presets, layer by layer by hand (mutation audit) ----------------------------------------


def _chain_net() -> nn.Module:
    torch.manual_seed(11)
    return (
        nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1),  # the first layer: the preset's `first` rule, if any
            nn.Conv2d(4, 4, 3, padding=1),
            nn.AvgPool2d(2),
            nn.Flatten(),
            nn.Linear(16, 3),
        )
        .double()
        .eval()
    )


PRESET_RULES = {  # (first conv, second conv) as the composites' docstring lists them
    "epsilon": (Epsilon, Epsilon),
    "epsilon_plus": (ZPlus, ZPlus),
    "epsilon_plus_flat": (Flat, ZPlus),
    "epsilon_gamma_box": (ZBox, Gamma),
    "epsilon_alpha2_beta1": (AlphaBeta, AlphaBeta),
}


@pytest.mark.parametrize("epsilon", [None, 0.5])
@pytest.mark.parametrize("composite", list(PRESET_RULES))
def test_presets_equal_their_rules_chained_by_hand(composite, epsilon):
    """Documented defaults: ε = 1e-6 (dense layers and pooling), γ = 0.25, α2β1, z-box bounds
    the sample's min / max; each layer's relevance by its matrix formula (`_by_hand`)."""
    model, eps = _chain_net(), 1e-6 if epsilon is None else epsilon
    torch.manual_seed(12)
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    conv1, conv2, pool, _, lin = model
    with torch.no_grad():
        z1 = conv1(x)
        z2 = conv2(z1)
        p = pool(z2)
        v = torch.randn(2, 3, dtype=torch.float64)
        score = (model(x) * v).sum(1)
    make = {
        Epsilon: lambda: Epsilon(eps),
        ZPlus: ZPlus,
        Flat: Flat,
        ZBox: ZBox,
        Gamma: lambda: Gamma(0.25),
        AlphaBeta: lambda: AlphaBeta(2.0, 1.0),
    }
    first, second = (make[r]() for r in PRESET_RULES[composite])
    r_lin = _by_hand(Epsilon(eps), lin, p.flatten(1), v)
    leaf = z2.clone().requires_grad_(True)  # pooling: LRP-ε of a linear map without bias
    (g,) = torch.autograd.grad(pool(leaf), leaf, r_lin.view_as(p) / _stab(p, eps))
    r_pool = z2 * g
    r_conv2 = _by_hand(second, conv2, z1, r_pool / z2)
    want = _by_hand(first, conv1, x, r_conv2 / z1)
    target = lambda out: (out * v).sum(1)  # noqa: E731
    options = {} if epsilon is None else {"epsilon": epsilon}
    got = _lrp(model, x, composite, target, **options)["lrp"]
    torch.testing.assert_close(got.attributions, want, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(got.delta, got.attributions.flatten(1).sum(1) - score)


@pytest.mark.parametrize("rule", [ZPlus(), AlphaBeta(2.0, 1.0), Gamma(0.25)], ids=repr)
def test_leaky_relu_output_is_signed_for_the_next_layer(rule):
    """A LeakyReLU's output can be negative: the layer after it must not take the shortcut for
    non-negative inputs (unlike after ReLU6 in the test above)."""
    layer, x = _one_layer("linear")
    act = nn.LeakyReLU(0.3)
    model = nn.Sequential(act, layer, nn.Flatten()).eval()
    a = act(x)
    assert (a < 0).any()
    with torch.no_grad():
        v = torch.randn(model(x).shape, dtype=x.dtype)
    composite = Composite([(LAYERS, rule), (nn.LeakyReLU, Pass())])
    got = _lrp(model, x, composite, lambda out: (out * v).sum(1))["lrp"].attributions
    # R = a ⊙ g at the activation's output passes through it unchanged to x
    torch.testing.assert_close(got, _by_hand(rule, layer, a, v))


# -- options and errors ------------------------------------------------------------------------


def test_non_proportional_rules_only_on_the_input_layer(tiny_cnn, images):
    composite = Composite([(nn.Linear, Flat())])
    with pytest.raises(SaliencelabError, match="only to the layer that reads the model's input"):
        _lrp(tiny_cnn, images, composite, 0)


def test_bad_options_are_one_clear_sentence(tiny_cnn, images):
    with pytest.raises(SaliencelabError, match="unknown composite 'epsilon_pluss'.*epsilon_plus"):
        _lrp(tiny_cnn, images, "epsilon_pluss", 0)
    with pytest.raises(SaliencelabError, match="epsilon must be >= 0"):
        _lrp(tiny_cnn, images, "epsilon", 0, epsilon=-1.0)
    with pytest.raises(SaliencelabError, match="does not broadcast"):
        _lrp(tiny_cnn, images, "epsilon_gamma_box", 0, low=torch.zeros(5))


def test_lrp_is_listed_with_its_options():
    spec = {m.name: m for m in sl.methods()}["lrp"]
    assert spec.family == "relevance"
    assert spec.options["composite"] == "epsilon_plus" and spec.options["canonize"] is True


# -- the bundled EfficientNet-Lite0 ------------------------------------------------------------


@pytest.fixture(scope="module")
def effnet() -> sl.Model:
    return sl.load_model("efficientnet_lite0")


def test_lrp_on_efficientnet_points_at_the_cat_and_leaves_the_model_unchanged(effnet):
    cat = effnet.preprocess(sl.sample_image("chelsea"))
    cup = effnet.preprocess(sl.sample_image("coffee"))
    x = torch.cat([cat, cup], dim=3)  # (1, 3, 224, 448): cat | espresso
    snap = _snapshot(effnet.module)
    ex = sl.explain(effnet, x, methods="lrp", target="Egyptian cat")  # ex.logits: before LRP
    maps = ex["lrp"].maps
    assert maps.shape == (1, 224, 448) and torch.isfinite(maps).all()
    positive = maps.clamp(min=0)
    assert positive[..., :224].sum() / positive.sum() > 0.8  # on the cat's side
    peak = positive.flatten(1).argmax(1) % 448
    assert peak[0] < 224
    _assert_restored(effnet.module, snap)
    with torch.no_grad():
        assert torch.equal(effnet.module(x), ex.logits)


def test_mbconv_residual_canonizer_keeps_outputs_and_is_undone(effnet):
    model = effnet.module
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    snap = _snapshot(model)
    with torch.no_grad():
        before = model(x)
    with Hooks() as hooks:
        edits = MBConvResidual().apply(model, hooks)
        skips = [b for b in model.modules() if isinstance(b, MBConvBlock) and b.has_skip]
        assert edits == len(skips) == 9
        assert all(isinstance(b._lrp_sum, ResidualSum) for b in skips)
        with torch.no_grad():
            assert torch.equal(model(x), before)
    _assert_restored(model, snap)


def test_z_plus_with_signed_inputs_stays_finite_where_every_contribution_is_negative():
    """Rounding in ½ (z − b + |W||a|) can put z⁺ at or below 0 for a neuron whose contributions
    are all negative (the motorcycle photo hit it in EfficientNet-Lite0: NaN maps). The direct
    formula R_j = Σ_k (a_j w_jk)⁺ / (Σ_j' (a_j' w_j'k)⁺ + s) R_k gives 0 for such a neuron."""
    from saliencelab.methods.relevance.lrp.rules import LayerView

    torch.manual_seed(0)
    lin = nn.Linear(6, 3).double()
    a = torch.tensor([[1.5, -2.0, 0.7, -0.3, 2.5, -1.1]], dtype=torch.float64)
    with torch.no_grad():  # neuron 0: every a_j w_jk < 0, and a large bias (z − b cancels)
        lin.weight[0] = -torch.sign(a[0]) * torch.tensor([0.3, 0.2, 0.9, 0.4, 0.1, 0.5])
        lin.bias[0] = 1e8
    lin = lin.float()
    a = a.float()
    z = lin(a).detach()
    relevance = torch.tensor([[2.0, -1.0, 0.5]])
    (g,) = ZPlus().propagate(LayerView(lin, (a,), z), relevance.clone())
    r = a * g
    contrib = (a[0][:, None] * lin.weight.T).clamp(min=0)  # (6, 3) (a_j w_jk)⁺
    ref = (contrib / (contrib.sum(0) + 1e-6) * relevance[0]).sum(1)
    assert torch.isfinite(r).all()
    torch.testing.assert_close(r[0], ref, atol=1e-5, rtol=1e-4)


def test_lrp_on_efficientnet_is_finite_on_the_motorcycle(effnet):
    x = effnet.preprocess(sl.sample_image("motorcycle"))
    maps = sl.explain(effnet, x, methods="lrp")["lrp"].maps
    assert torch.isfinite(maps).all()  # was NaN: a z⁺ denominator at 0 after rounding


def test_channel_target_on_a_layer_followed_by_batchnorm():
    """A channel target on a conv that a BatchNorm follows reads the conv's own output: the
    canonizer leaves that conv unmerged (merging changed the target, and the logit check
    raised). LRP-0 then equals the target's input x gradient, canonized or not."""
    model = sl.load_model("shapes_cnn")
    x = sl.data.shapes.make(3, seed=0).images
    target = sl.channel("features.8", 5)  # Conv2d, then BatchNorm2d features.9
    xi = x.clone().requires_grad_(True)
    acts = {}
    handle = model.module.features[8].register_forward_hook(lambda m, i, o: acts.update(a=o))
    model.module(xi)
    handle.remove()
    (g,) = torch.autograd.grad(acts["a"][:, 5].mean(dim=(1, 2)).sum(), xi)
    expected = (g * x).sum(1)
    for canonize in (True, False):
        opts = {"composite": "epsilon", "epsilon": 0.0, "canonize": canonize}
        got = sl.explain(model, x, methods={"lrp": opts}, target=target)["lrp"].maps
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-4)


def test_composite_from_name_defaults_are_the_lrp_methods():
    """Built by name without parameters (the documented `LRPRule(composite_from_name(...))`), a
    preset has the `lrp` method's default epsilon and gamma."""
    import inspect

    from saliencelab.core.registry import get_method
    from saliencelab.methods.relevance.lrp import composite_from_name

    defaults = inspect.signature(composite_from_name).parameters
    options = get_method("lrp").options
    assert options["epsilon"] == 1e-6 and options["gamma"] == 0.25  # what its errors suggest
    assert defaults["epsilon"].default == options["epsilon"]
    assert defaults["gamma"].default == options["gamma"]


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"composite": "epsilon_gamma_box", "low": "a"}, "bound low must be None"),
        ({"composite": "epsilon_gamma_box", "high": [1.0]}, "bound high must be None"),
        ({"composite": "epsilon_gamma_box", "low": float("nan")}, "finite number"),
        ({"composite": "epsilon_gamma_box", "low": 1.0, "high": -1.0}, "bounds are reversed"),
        ({"canonize": "no"}, "canonize must be True or False"),
        # bounds a composite without z-box would ignore (they were, silently)
        ({"composite": "epsilon_plus", "low": 0.0}, "composite='epsilon_plus' does not use"),
        ({"high": 1.0}, "composite='epsilon_plus' does not use"),
    ],
)
def test_bad_options_are_one_sentence(images, options, words):
    with pytest.raises(SaliencelabError, match=words):
        sl.explain(_relu_net(bias=True), images, methods={"lrp": options}, target=0)
    if options.get("composite") == "epsilon_gamma_box":  # the rule checks its bounds itself
        with pytest.raises(SaliencelabError, match=words):
            ZBox(options.get("low"), options.get("high"))


@pytest.mark.parametrize(
    "act",
    [
        nn.Tanh(),
        nn.Softsign(),
        nn.Sigmoid(),
        nn.Softplus(),
        nn.Tanhshrink(),
        nn.LogSigmoid(),
        nn.SiLU(),
        nn.LeakyReLU(0.1),
        nn.PReLU(16, 0.2),
    ],
    ids=repr,
)
def test_every_elementwise_activation_passes_relevance_through(act):
    """Bias-free Linear → f → Linear, LRP-0 (composite "epsilon", ε = 0): the activation's
    relevance goes through unchanged, R(z) = R(f(z)) (the composites' docstring), so the map is
    x ⊙ W1ᵀ((f(z) ⊙ w2) / z), computed by hand in float64, and sums to the score. Tanh and
    softsign got their gradient (ΣR 0.007 for a score of 0.13) and sigmoid, softplus too."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 16, bias=False), act, nn.Linear(16, 3, bias=False))
    net = net.double().eval()
    with torch.no_grad():
        net[0].weight.mul_(2)
    x = torch.randn(4, 6, dtype=torch.double)
    got = sl.explain(net, x, methods="lrp", composite="epsilon", epsilon=0.0, target=1)["lrp"]
    with torch.no_grad():
        z = net[0](x)
        relevance = net[1](z) * net[2].weight[1]  # LRP-0 at the last layer
        want = x * ((relevance / z) @ net[0].weight)
        score = net(x)[:, 1]
    torch.testing.assert_close(got.attributions, want)
    torch.testing.assert_close(got.attributions.sum(1), score)
