"""Activations run in place in plain forward passes (core/inplace.py): which qualify, that the
values do not move, that the switches come back, and that the engine uses it only where it may."""

import pytest
import torch
from torch import nn

import saliencelab as sl
from saliencelab.core.engine import Engine
from saliencelab.core.fused import folded
from saliencelab.core.inplace import ACTIVATIONS, inplace_activations
from saliencelab.models.model import Model


def _switches(model: nn.Module) -> list[bool]:
    return [m.inplace for m in model.modules() if isinstance(m, ACTIVATIONS)]


def _frozen(model: nn.Module) -> nn.Module:
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


@pytest.mark.parametrize("name, size", [("shapes_cnn", 64), ("efficientnet_lite0", 96)])
def test_every_activation_of_the_bundled_models_runs_in_place_with_the_same_values(name, size):
    model = _frozen(sl.load_model(name).module)
    x = torch.randn(3, 3, size, size)
    n_act = sum(isinstance(m, (nn.ReLU, nn.ReLU6)) for m in model.modules())
    with torch.inference_mode():
        plain = model(x)
        with inplace_activations(model, x) as n:
            assert n == n_act and all(_switches(model))
            assert torch.equal(model(x), plain)
        assert not any(_switches(model))
        with folded(model, x):
            plain_folded = model(x)
            with inplace_activations(model, x) as n:
                assert n == n_act
                assert torch.equal(model(x), plain_folded)
    assert not any(_switches(model))


class Net(nn.Module):
    """conv → ReLU → linear, with the pre-activation read elsewhere as `reuse` says."""

    def __init__(self, reuse: str = "") -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.fc = nn.Linear(4, 2)
        self.reuse = reuse

    def forward(self, x):
        if self.reuse == "input":  # the model's input, read by the activation alone
            return self.fc(self.conv(self.act(x)).mean((2, 3)))
        z = self.conv(x)
        if self.reuse == "view":
            a = self.act(z[:, :2]).sum(1, keepdim=True) + z[:, 2:].mean(1, keepdim=True)
            a = a.expand(-1, 4, -1, -1)
        elif self.reuse == "storage":  # an alias no operator shows: seen by the output check
            kept = torch.empty(0).set_(z.untyped_storage(), z.storage_offset(), z.shape, z.stride())
            a = self.act(z) + kept.mean()
        elif self.reuse == "shared":  # the same module on a fresh tensor, then on a view
            a = self.act(z)
            a = a + self.act(a[:, :1])
        else:
            a = self.act(z)
        y = self.fc(a.mean((2, 3)))
        if self.reuse == "late":  # reads z only for rows of large inputs: the probe's row is not
            big = (x.mean((1, 2, 3)) > 5)[:, None]
            y = torch.where(big, y + z.mean((1, 2, 3))[:, None], y)
        return y


def test_a_fresh_input_read_once_qualifies():
    torch.manual_seed(0)
    model = _frozen(Net())
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad(), inplace_activations(model, x) as n:
        assert n == 1 and model.act.inplace


@pytest.mark.parametrize("reuse", ["view", "input", "shared", "late", "storage"])
def test_an_input_read_elsewhere_a_view_or_the_models_input_does_not_qualify(reuse):
    torch.manual_seed(0)
    model = _frozen(Net(reuse))
    probe_row = torch.randn(1, 3, 6, 6)
    x = torch.cat([torch.randn(1, 3, 6, 6), torch.randn(1, 3, 6, 6) + 10])  # row 1 is "big"
    kept = x.clone()
    with torch.no_grad():
        plain = model(x)
        with inplace_activations(model, probe_row) as n:
            assert n == 0 and not model.act.inplace
            out = model(x)
    assert torch.equal(out, plain) and torch.equal(x, kept)


def test_late_reads_are_seen_by_the_operators_not_only_by_the_probes_output():
    """Row 1 of `late` reads the pre-activation, which the probe's row does not show in its
    output: only the count of operators reading the tensor keeps the activation out of place."""
    torch.manual_seed(0)
    model = _frozen(Net("late"))
    x = torch.cat([torch.randn(1, 3, 6, 6), torch.randn(1, 3, 6, 6) + 10])
    with torch.no_grad():
        plain = model(x)
        model.act.inplace = True  # what a choice from the probe's output alone would do
        assert not torch.equal(model(x)[1], plain[1])
        model.act.inplace = False


class SpyReLU(nn.ReLU):
    """A ReLU that records its switch at every call."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[bool] = []

    def forward(self, x):
        self.calls.append(self.inplace)
        return super().forward(x)


def _spy_model() -> tuple[Model, SpyReLU]:
    torch.manual_seed(0)
    spy = SpyReLU()
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), spy, nn.Flatten(),
                        nn.Linear(4 * 6 * 6, 3))  # fmt: skip
    return Model(net.eval()), spy


def _forward_scores(engine: Engine, x: torch.Tensor) -> torch.Tensor:
    chunks = engine.forwards(
        x.shape[0], lambda rows: x[rows], lambda rows: rows, example=x[:1]
    )  # fmt: skip
    return torch.cat([c.logits for c in chunks])


def test_the_engine_runs_plain_forwards_in_place_and_puts_the_switch_back():
    model, spy = _spy_model()
    x = torch.randn(4, 3, 6, 6)
    with torch.no_grad():
        plain = model.module(x)
    spy.calls.clear()
    out = _forward_scores(Engine(model), x)
    assert spy.calls[-1] is True and spy.inplace is False
    torch.testing.assert_close(out, plain, rtol=1e-5, atol=1e-6)  # (BatchNorm folded)


def test_not_in_place_with_a_users_hook_or_in_gradient_passes():
    model, spy = _spy_model()
    x = torch.randn(4, 3, 6, 6)
    handle = model.module[0].register_forward_hook(lambda m, i, o: None)
    try:
        spy.calls.clear()
        _forward_scores(Engine(model), x)
        assert spy.calls and not any(spy.calls)
    finally:
        handle.remove()
    spy.calls.clear()
    sl.explain(model, x, ["saliency"], target=0)
    assert spy.calls and not any(spy.calls)


def test_the_switch_comes_back_when_the_pass_fails():
    model, spy = _spy_model()
    x = torch.randn(4, 3, 6, 6)
    engine = Engine(model)
    _forward_scores(engine, x)  # probes and settles

    def bad_rows(rows):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        list(engine.forwards(4, bad_rows, lambda rows: rows, example=x[:1]))
    assert spy.inplace is False


def test_a_new_structure_is_probed_again():
    torch.manual_seed(0)
    model = _frozen(Net())
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad(), inplace_activations(model, x) as n:
        assert n == 1
    model.reuse = "view"  # same modules: the kept choice holds for the structure
    model.act = nn.ReLU()  # a new module: probed again
    with torch.no_grad(), inplace_activations(model, x) as n:
        assert n == 0


class Tokens(nn.Module):
    """Reads its convolution's output twice: once through `.contiguous()` of a transposed view,
    which copies NCHW rows but returns a view of channels-last ones (a ReLU in place on it would
    then overwrite the map that `head` reads)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.act = nn.ReLU()
        self.fc, self.head = nn.Linear(8, 4), nn.Linear(8, 4)

    def forward(self, x):
        h = self.conv(x)
        t = h.flatten(2).transpose(1, 2).contiguous()
        return self.fc(self.act(t).mean(1)) + self.head(h.mean((2, 3)))


def test_the_probe_runs_in_the_passs_memory_layout():
    torch.manual_seed(0)
    model = Model(_frozen(Tokens()))
    x = torch.randn(8, 3, 8, 8)
    engine = Engine(model)
    assert engine.probe_layout(x)  # the passes of 8 rows run channels-last
    with torch.no_grad():
        plain = model.module(x)
    torch.testing.assert_close(_forward_scores(engine, x), plain, rtol=1e-5, atol=1e-5)
    nchw = x[:1]
    cl = x[:1].contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        with inplace_activations(model.module, nchw) as n_nchw:
            pass
        with inplace_activations(model.module, cl) as n_cl:
            pass
    assert (n_nchw, n_cl) == (1, 0)
