"""BatchNorm folding for plain passes (core/fused.py): the formula, when it must not fold, the
cache, and that the engine uses the copy only for hook-free forward passes."""

import torch
from torch import nn

import saliencelab as sl
from saliencelab.core import fused
from saliencelab.core.engine import Engine
from saliencelab.models.model import Model


def _randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g))
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            if m.affine:
                m.weight.data.copy_(torch.randn(c, generator=g))
                m.bias.data.copy_(torch.randn(c, generator=g))
    return model.eval()


class ConvBN(nn.Module):
    def __init__(self, bias: bool = False, reuse: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=bias)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 2)
        self.reuse = reuse

    def forward(self, x):
        y = self.conv(x)
        z = self.bn(y)
        if self.reuse:  # the conv's output is read twice: folding would change the result
            z = z + y
        return self.fc(z.relu().mean((2, 3)))


def test_fold_matches_the_formula_and_shares_the_rest():
    torch.manual_seed(0)
    model = _randomise_bn(ConvBN(bias=True))
    x = torch.randn(2, 3, 8, 8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    copy = fused.folded_copy(model, x)
    assert copy is not None and isinstance(copy.bn, nn.Identity)
    bn, conv = model.bn, model.conv
    s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    torch.testing.assert_close(copy.conv.weight, conv.weight * s[:, None, None, None])
    torch.testing.assert_close(copy.conv.bias, (conv.bias - bn.running_mean) * s + bn.bias)
    assert copy.fc.weight is model.fc.weight  # untouched layers are shared, not copied
    assert not any(p.requires_grad for p in copy.conv.parameters())
    with torch.no_grad():
        torch.testing.assert_close(copy(x), model(x), rtol=1e-5, atol=1e-6)
    for k, v in model.state_dict().items():  # the model itself is unchanged
        assert torch.equal(v, before[k])
    assert isinstance(model.bn, nn.BatchNorm2d)


def test_linear_then_batchnorm1d_without_affine():
    torch.manual_seed(1)
    model = _randomise_bn(nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6, affine=False)))
    x = torch.randn(3, 5)
    copy = fused.folded_copy(model, x)
    assert copy is not None and isinstance(copy[1], nn.Identity)
    with torch.no_grad():
        torch.testing.assert_close(copy(x), model(x), rtol=1e-5, atol=1e-6)


def test_no_fold_where_it_would_change_the_model():
    torch.manual_seed(2)
    x = torch.randn(2, 3, 8, 8)
    # the conv output is also read by the residual sum: the probe check rejects the copy
    assert fused.folded_copy(_randomise_bn(ConvBN(reuse=True)), x) is None
    # batch statistics in eval mode (no running stats): nothing to fold
    plain = ConvBN()
    plain.bn = nn.BatchNorm2d(4, track_running_stats=False)
    assert fused.folded_copy(plain.eval(), x) is None
    # a BatchNorm module called twice (shared) is left alone
    conv1, conv2, bn = nn.Conv2d(3, 3, 1), nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)
    shared = _randomise_bn(nn.Sequential(conv1, bn, conv2, bn))
    assert fused.folded_copy(shared, x) is None


def test_cache_follows_weight_edits_and_device_moves():
    torch.manual_seed(3)
    model = _randomise_bn(ConvBN())
    x = torch.randn(2, 3, 8, 8)
    first = fused.folded_copy(model, x)
    assert fused.folded_copy(model, x) is first  # kept
    with torch.no_grad():
        model.bn.running_var.mul_(4.0)  # an in-place edit bumps the version: rebuilt
    second = fused.folded_copy(model, x)
    assert second is not first
    with torch.no_grad():
        torch.testing.assert_close(second(x), model(x), rtol=1e-5, atol=1e-6)
    model.double()  # new storage and dtype: rebuilt
    third = fused.folded_copy(model, x.double())
    assert third is not second and third.conv.weight.dtype == torch.float64


def test_has_hooks():
    model = ConvBN()
    assert not fused.has_hooks(model)
    handle = model.fc.register_forward_hook(lambda m, i, o: None)
    assert fused.has_hooks(model)
    handle.remove()
    assert not fused.has_hooks(model)


def test_engine_forwards_use_the_copy_only_without_hooks():
    torch.manual_seed(4)
    module = _randomise_bn(ConvBN())
    model = Model(module=module)
    x = torch.randn(20, 3, 8, 8)  # at least FOLD_MIN_ROWS rows: worth a copy
    with torch.no_grad():
        expected = module(x)

    def scores(engine):
        return torch.cat([c.logits for c in engine.forwards(len(x), lambda r: x[r], lambda r: r)])

    calls = []
    original_forward = module.bn.forward
    module.bn.forward = lambda t: calls.append(len(t)) or original_forward(t)  # not a hook
    torch.testing.assert_close(scores(Engine(model)), expected, rtol=1e-5, atol=1e-6)
    assert calls == [1]  # only the copy's one-row probe ran the model's own BatchNorm
    # Engine.logits runs the model itself: exactly model(x)
    assert torch.equal(Engine(model).logits(x), expected)
    assert sum(calls) == 1 + len(x)
    # a user's hook must see every row: the model itself runs
    seen = []
    handle = module.register_forward_hook(lambda m, i, o: seen.append(len(o)))
    try:
        torch.testing.assert_close(scores(Engine(model)), expected, rtol=1e-5, atol=1e-6)
    finally:
        handle.remove()
    assert sum(seen) == len(x)


def test_folded_shapes_cnn_and_efficientnet():
    for name, x in [
        ("shapes_cnn", sl.data.shapes.make(2, seed=0).images.contiguous()),
        ("efficientnet_lite0", torch.randn(1, 3, 224, 224)),
    ]:
        module = sl.load_model(name).module.eval()
        copy = fused.folded_copy(module, x)
        assert copy is not None, name
        assert not any(isinstance(m, nn.BatchNorm2d) for m in copy.modules())
        with torch.no_grad():
            ref = module(x)
            torch.testing.assert_close(copy(x), ref, rtol=0, atol=1e-5 * float(ref.abs().max()))
