"""Activations run in place in plain forward passes (core/inplace.py): which qualify, that the
values do not move, that the switches come back, and that the engine uses it only where it may."""

import pytest
import torch
from torch import nn

import saliencelab as sl
import saliencelab.core.engine as engine_module
from saliencelab.core.engine import Engine
from saliencelab.core.fused import folded
from saliencelab.core.inplace import ACTIVATIONS, inplace_activations, inplace_choice
from saliencelab.core.targets import Target
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


def test_not_in_place_with_a_users_hook():
    model, spy = _spy_model()
    x = torch.randn(4, 3, 6, 6)
    handle = model.module[0].register_forward_hook(lambda m, i, o: None)
    try:
        spy.calls.clear()
        _forward_scores(Engine(model), x)
        assert spy.calls and not any(spy.calls)
        sl.explain(model, x, ["saliency"], target=0)
        assert spy.calls and not any(spy.calls)
    finally:
        handle.remove()


def _saliency(model: Model, x: torch.Tensor, monkeypatch=None) -> torch.Tensor:
    if monkeypatch is not None:  # every choice empty: the pass as it was before
        monkeypatch.setattr(engine_module, "inplace_choice", lambda *a, **k: [])
    try:
        return sl.explain(model, x, ["saliency"], target=0)["saliency"].maps
    finally:
        if monkeypatch is not None:
            monkeypatch.undo()


@pytest.mark.parametrize("name, size", [("shapes_cnn", 64), ("tiny", 6)])
def test_plain_gradient_passes_run_relu_in_place_with_the_same_maps(name, size, monkeypatch):
    if name == "tiny":
        model, spy = _spy_model()
    else:
        model, spy = sl.load_model(name), None
    x = torch.randn(8, 3, size, size)
    kept = x.clone()
    off = _saliency(model, x, monkeypatch)
    if spy is not None:
        spy.calls.clear()
    on = _saliency(model, x)
    assert torch.equal(on, off) and torch.equal(x, kept)
    assert not any(_switches(model.module))
    if spy is not None:  # the pass's forward ran in place (the probe's runs both ways)
        assert spy.calls[-1] is True and spy.inplace is False
    else:  # the choice kept for gradient passes: all 4 ReLU
        assert len(inplace_choice(model.module, x, probe=False, grad=True)) == 4


def test_the_switch_is_off_between_a_gradient_pass_chunks():
    """The caller runs its own code between chunks: the switches are on around the forward."""
    model, spy = _spy_model()
    x = torch.randn(6, 3, 6, 6)
    engine = Engine(model, chunk_size=2)
    spy.calls.clear()
    seen = []
    target = Target(torch.zeros(6, dtype=torch.long))
    for _chunk in engine.gradients(6, lambda r: x[r], lambda r: r, target, example=x[:2]):
        seen.append(spy.inplace)
    assert seen == [False, False, False] and spy.calls[-3:] == [True, True, True]


@pytest.mark.parametrize(
    "method, layer",
    [("gradcam", "0"), ("gradcam", "2"), ("gradcam_plus_plus", "1"), ("layercam", "2")],
)
def test_gradient_cams_run_relu_in_place_with_the_same_maps(method, layer, monkeypatch):
    """The captured layer is kept while the model goes on with a copy: the convolution, the
    BatchNorm feeding the ReLU, or the in-place ReLU itself."""
    model, spy = _spy_model()
    x = torch.randn(8, 3, 6, 6)
    methods = {method: {"layer": layer}}

    def maps() -> torch.Tensor:
        return sl.explain(model, x, methods, target=0)[method].maps

    monkeypatch.setattr(engine_module, "inplace_choice", lambda *a, **k: [])
    off = maps()
    monkeypatch.undo()
    spy.calls.clear()
    on = maps()
    assert spy.calls[-1] is True and spy.inplace is False
    assert torch.equal(on, off)


@pytest.mark.parametrize("method", ["guided_backprop", "deeplift"])
def test_gradient_passes_that_hook_backward_stay_out_of_place(method):
    model, spy = _spy_model()
    x = torch.randn(4, 3, 6, 6)
    spy.calls.clear()
    sl.explain(model, x, [method], target=0)
    assert spy.calls and not any(spy.calls)


class Saved(nn.Module):
    """conv → `first` → ReLU: the ReLU's input is a tensor `first` may keep for its backward."""

    def __init__(self, first: nn.Module, act: nn.Module) -> None:
        super().__init__()
        self.conv, self.first, self.act = nn.Conv2d(3, 4, 3, padding=1), first, act
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.act(self.first(self.conv(x))).mean((2, 3)))


@pytest.mark.parametrize(
    "first, act, forward, grad",
    [
        (nn.Identity(), nn.ReLU(), 1, 1),  # the convolution keeps its input, not its output
        (nn.Sigmoid(), nn.ReLU(), 1, 0),  # autograd keeps sigmoid's output: a read (detach)
        (nn.Tanh(), nn.ReLU(), 1, 0),
        (nn.Identity(), nn.SiLU(), 1, 0),  # in place it would be slower (a copy of its input)
        (nn.Identity(), nn.ReLU6(), 1, 0),  # no faster in place (GRAD_ACTIVATIONS)
    ],
)
def test_the_gradient_probe_keeps_what_autograd_needs(first, act, forward, grad):
    torch.manual_seed(0)
    model = _frozen(Saved(first, act))
    x = torch.randn(4, 3, 6, 6)
    assert len(inplace_choice(model, x, grad=False)) == forward
    assert len(inplace_choice(model, x, grad=True)) == grad
    leaf = x.clone().requires_grad_(True)
    (ref,) = torch.autograd.grad(model(leaf)[:, 0].sum(), leaf)
    maps = sl.explain(Model(model), x, ["saliency"], target=0)["saliency"].maps
    torch.testing.assert_close(maps, ref.abs().sum(1), rtol=1e-5, atol=1e-7)
    assert not model.act.inplace


class KeepsOutput(torch.autograd.Function):
    """3x whose backward reads its output kept on ctx (not `save_for_backward`: autograd then
    neither records a read of it nor checks its version)."""

    @staticmethod
    def forward(ctx, x):
        ctx.y = x * 3
        return ctx.y

    @staticmethod
    def backward(ctx, g):
        return g * ctx.y.mean()  # reads every value, those ReLU would zero in place too


class Kept(Saved):
    def forward(self, x):
        return self.fc(self.act(KeepsOutput.apply(self.conv(x))).mean((2, 3)))


def test_the_gradient_probe_sees_an_overwritten_tensor_only_backward_reads():
    """Operator records and the probe's output both let the ReLU run in place (a forward-only
    pass may); only the probe's backward shows that the input gradient would change."""
    torch.manual_seed(0)
    model = _frozen(Kept(nn.Identity(), nn.ReLU()))
    x = torch.randn(4, 3, 6, 6)
    assert len(inplace_choice(model, x, grad=False)) == 1
    assert len(inplace_choice(model, x, grad=True)) == 0
    leaf = x.clone().requires_grad_(True)
    (ref,) = torch.autograd.grad(model(leaf)[:, 0].sum(), leaf)
    maps = sl.explain(Model(model), x, ["saliency"], target=0)["saliency"].maps
    torch.testing.assert_close(maps, ref.abs().sum(1), rtol=1e-5, atol=1e-7)


def test_input_invariance_explains_its_shifted_model_with_relu_in_place():
    """The shift correction of a zero-padded first layer is a corrected forward, not a hook, so
    the shifted model's gradient pass gets the plain-pass speed-ups."""
    model, spy = _spy_model()  # its convolution pads with zeros: a position-dependent offset
    x = torch.randn(4, 3, 6, 6)
    target = torch.zeros(4, dtype=torch.long)
    maps = sl.explain(model, x, ["saliency"], target=target)["saliency"].maps
    spy.calls.clear()
    metric = sl.metrics.get("input_invariance")()
    r = metric(maps, x=x, model=model, target=target, explainer="saliency")
    assert True in spy.calls and spy.inplace is False
    assert (r.values == 0).all()  # gradients are input invariant
    assert not any("forward" in m.__dict__ for m in model.module.modules())
