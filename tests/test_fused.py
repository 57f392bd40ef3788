"""BatchNorm folding for plain forward passes (core/fused.py): the formula, when it must not
fold, restoring the model, weight edits, and that the engine folds only hook-free passes."""

import pytest
import torch
from torch import nn

import saliencelab as sl
from saliencelab.core.engine import Engine
from saliencelab.core.fused import folded, has_hooks
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


def _state(model: nn.Module) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same_state(model: nn.Module, before: dict) -> bool:
    return all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_fold_matches_the_formula_and_is_undone():
    torch.manual_seed(0)
    model = _randomise_bn(ConvBN(bias=True))
    x = torch.randn(2, 3, 8, 8)
    before, params = _state(model), dict(model.named_parameters())
    with torch.no_grad():
        expected = model(x)
        with folded(model, x) as did:
            assert did
            bn, conv = model.bn, model.conv
            s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            w, b = params["conv.weight"], params["conv.bias"]
            torch.testing.assert_close(conv.weight, w * s[:, None, None, None])
            torch.testing.assert_close(conv.bias, (b - bn.running_mean) * s + bn.bias)
            assert torch.equal(bn(x), x)  # the BatchNorm passes its input through
            torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-6)
    assert _same_state(model, before)
    assert dict(model.named_parameters()) == params  # the very same parameter objects
    assert "forward" not in model.bn.__dict__


def test_linear_then_batchnorm1d_without_affine():
    torch.manual_seed(1)
    model = _randomise_bn(nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6, affine=False)))
    x = torch.randn(3, 5)
    with torch.no_grad():
        expected = model(x)
        with folded(model, x) as did:
            assert did
            torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-6)


def test_no_fold_where_it_would_change_the_model():
    torch.manual_seed(2)
    x = torch.randn(2, 3, 8, 8)
    cases = {"conv output read twice (the probe check rejects)": _randomise_bn(ConvBN(reuse=True))}
    plain = ConvBN()
    plain.bn = nn.BatchNorm2d(4, track_running_stats=False)  # batch statistics in eval mode
    cases["no running statistics"] = plain.eval()
    conv1, conv2, bn = nn.Conv2d(3, 3, 1), nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)
    cases["a shared BatchNorm"] = _randomise_bn(nn.Sequential(conv1, bn, conv2, bn))
    cases["training mode"] = _randomise_bn(ConvBN()).train()
    for name, model in cases.items():
        before = _state(model)
        with torch.no_grad(), folded(model, x) as did:
            assert not did, name
        assert _same_state(model, before), name


def test_a_forward_replaced_on_the_instance_is_not_folded():
    torch.manual_seed(5)
    model = _randomise_bn(ConvBN())
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad(), folded(model, x) as did:
        assert did
    original = model.bn.forward
    model.bn.forward = lambda t: original(t) * 2  # the model now reads the BatchNorm differently
    with torch.no_grad():
        expected = model(x)
        with folded(model, x) as did:
            assert not did
            assert torch.equal(model(x), expected)


def test_weight_edits_dtype_nesting_and_errors():
    torch.manual_seed(3)
    model = _randomise_bn(ConvBN())
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        with folded(model, x):
            pass
        model.bn.running_var.mul_(4.0)  # an in-place edit: the folded weights follow
        unfolded = model(x)
        with folded(model, x, probe=False) as did:  # pairs known: no probe needed
            assert did
            torch.testing.assert_close(model(x), unfolded, rtol=1e-5, atol=1e-6)
        # a train-mode forward moves the running statistics in place without a version bump
        # (its batch counter is a source of the kept weights too)
        model.train()
        model(x * 3 + 1)
        model.eval()
        unfolded = model(x)
        with folded(model, x, probe=False) as did:
            assert did
            torch.testing.assert_close(model(x), unfolded, rtol=1e-5, atol=1e-6)
        expected = model(x)
        with folded(model, x) as did:
            assert did
            torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-6)
            with folded(model, x) as again:  # already folded: not twice
                assert not again
                torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-6)
        model.double()  # new storage and dtype
        with folded(model, x.double()):
            assert model.conv.weight.dtype == torch.float64
            torch.testing.assert_close(model(x.double()), expected.double(), rtol=1e-5, atol=1e-6)
        before = _state(model)
        with pytest.raises(RuntimeError, match="boom"), folded(model, x.double()):
            raise RuntimeError("boom")
        assert _same_state(model, before) and "forward" not in model.bn.__dict__


def test_has_hooks():
    model = ConvBN()
    assert not has_hooks(model)
    handle = model.fc.register_forward_hook(lambda m, i, o: None)
    assert has_hooks(model)
    handle.remove()
    assert not has_hooks(model)


def test_engine_folds_only_hook_free_forward_passes():
    torch.manual_seed(4)
    module = _randomise_bn(ConvBN())
    model = Model(module=module)
    x = torch.randn(20, 3, 8, 8)  # at least FOLD_MIN_ROWS rows: worth the probe
    with torch.no_grad():
        expected = module(x)

    def scores(engine):
        return torch.cat([c.logits for c in engine.forwards(len(x), lambda r: x[r], lambda r: r)])

    calls = []

    class CountingBN(nn.BatchNorm2d):  # counts its calls without a hook
        def forward(self, t):
            calls.append(len(t))
            return super().forward(t)

    counting = CountingBN(4).eval()
    counting.load_state_dict(module.bn.state_dict())
    module.bn = counting
    torch.testing.assert_close(scores(Engine(model)), expected, rtol=1e-5, atol=1e-6)
    assert calls == [1]  # only the one-row probe ran the BatchNorm itself
    assert "forward" not in module.bn.__dict__  # put back
    # Engine.logits does not fold: every row runs the BatchNorm itself, and the logits are
    # model(x) up to the rounding of the channels-last convolution (not bit-equal on every CPU)
    torch.testing.assert_close(Engine(model).logits(x), expected, rtol=1e-6, atol=1e-7)
    assert sum(calls) == 1 + len(x)
    # a user's hook must see the model as it is
    seen = []
    handle = module.bn.register_forward_hook(lambda m, i, o: seen.append(len(o)))
    try:
        torch.testing.assert_close(scores(Engine(model)), expected, rtol=1e-5, atol=1e-6)
    finally:
        handle.remove()
    assert sum(seen) == len(x)


def test_a_short_pass_folds_a_fresh_model_and_a_single_row_does_not_probe():
    """Small metric batches (8 images) fold from their first pass: the probe is kept per model,
    so every later pass gains. A one-row pass neither probes nor folds."""
    from saliencelab.core.engine import FOLD_MIN_ROWS

    assert FOLD_MIN_ROWS == 2
    calls = []

    class CountingBN(nn.BatchNorm2d):
        def forward(self, t):
            calls.append(len(t))
            return super().forward(t)

    torch.manual_seed(5)
    for rows, folds in ((1, False), (FOLD_MIN_ROWS, True), (8, True)):
        module = _randomise_bn(ConvBN())
        counting = CountingBN(4).eval()
        counting.load_state_dict(module.bn.state_dict())
        module.bn = counting
        x = torch.randn(rows, 3, 8, 8)
        with torch.no_grad():
            expected = module(x)
        calls.clear()
        chunks = Engine(Model(module=module), chunk_size=rows).forwards(
            rows, lambda r, x=x: x[r], lambda r: r
        )
        torch.testing.assert_close(
            torch.cat([c.logits for c in chunks]), expected, rtol=1e-5, atol=1e-6
        )
        # folded: only the one-row probe ran the BatchNorm; else the pass ran it on every row
        assert calls == ([1] if folds else [rows]), rows


def test_folds_the_shapes_cnn_and_efficientnet():
    for name, x in [
        ("shapes_cnn", sl.data.shapes.make(2, seed=0).images.contiguous()),
        ("efficientnet_lite0", torch.randn(1, 3, 224, 224)),
    ]:
        module = sl.load_model(name).module.eval()
        with torch.no_grad():
            ref = module(x)
            with folded(module, x) as did:
                assert did, name
                assert all(
                    "forward" in m.__dict__
                    for m in module.modules()
                    if isinstance(m, nn.BatchNorm2d)
                )
                out = module(x)
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-5 * float(ref.abs().max()))


def test_a_replaced_parameter_is_seen_even_if_its_id_could_be_reused():
    torch.manual_seed(6)
    model = _randomise_bn(ConvBN())
    x = torch.randn(2, 3, 8, 8)
    for _ in range(5):  # fresh parameters: version 0, and the allocator may reuse the memory
        model.conv.weight = nn.Parameter(torch.randn_like(model.conv.weight))
        with torch.no_grad():
            expected = model(x)
            with folded(model, x):
                torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-6)


def test_a_forward_pass_with_a_layer_edit_runs_unfolded():
    """An edit of the convolution's output must meet the BatchNorm after it (reference: the
    zeroed output run through the BatchNorm by hand), in a pass long enough to fold."""
    torch.manual_seed(7)
    module = _randomise_bn(ConvBN(bias=True))
    model = Model(module=module)
    x = torch.randn(20, 3, 8, 8)  # at least FOLD_MIN_ROWS rows
    with torch.no_grad():
        z = module.bn(torch.zeros_like(module.conv(x)))
        expected = module.fc(z.relu().mean((2, 3)))
    edit = (module.conv, lambda out, rows: out * 0)
    chunks = Engine(model).forwards(len(x), lambda r: x[r], lambda r: r, edit=edit)
    torch.testing.assert_close(torch.cat([c.logits for c in chunks]), expected)
    assert not has_hooks(module) and "forward" not in module.bn.__dict__


class SharedConvBN(nn.Module):
    """A convolution called twice (its second output read by a BatchNorm), then a plain pair."""

    def __init__(self) -> None:
        super().__init__()
        self.shared, self.bn1 = nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)
        self.conv2, self.bn2 = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.bn1(self.shared(self.shared(x).relu()))
        return self.bn2(self.conv2(y)).mean((2, 3))


def test_a_layer_called_twice_is_not_folded_but_the_other_pairs_are():
    """Folding into a layer run twice would change its first call: that pair is left out, and
    the model's other pair still folds (reference: torch's fusion formula)."""
    torch.manual_seed(8)
    model = _randomise_bn(SharedConvBN())
    x = torch.randn(2, 3, 8, 8)
    before = _state(model)
    with torch.no_grad():
        expected = model(x)
        with folded(model, x) as did:
            assert did
            assert torch.equal(model.shared.weight, before["shared.weight"])
            assert "forward" not in model.bn1.__dict__
            bn = model.bn2
            s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            w = before["conv2.weight"] * s[:, None, None, None]
            torch.testing.assert_close(model.conv2.weight, w)
            torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-6)
    assert _same_state(model, before)


def test_a_changed_eps_refolds_the_weights():
    torch.manual_seed(9)
    model = _randomise_bn(ConvBN(bias=True))
    x = torch.randn(2, 3, 8, 8)
    w, b = model.conv.weight.detach().clone(), model.conv.bias.detach().clone()
    with torch.no_grad():
        for eps in (1e-5, 0.5):
            model.bn.eps = eps
            expected = model(x)
            with folded(model, x) as did:
                assert did
                bn = model.bn
                s = bn.weight / torch.sqrt(bn.running_var + eps)
                torch.testing.assert_close(model.conv.weight, w * s[:, None, None, None])
                torch.testing.assert_close(model.conv.bias, (b - bn.running_mean) * s + bn.bias)
                torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-6)
