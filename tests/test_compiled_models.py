"""Methods that act through hooks refuse what their hooks cannot reach, instead of returning the
plain gradient: compiled models (TorchScript, torch.export), functional ReLUs, layers called
through their functional form. After every such error the model is as it was."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import saliencelab as sl
from saliencelab.core.errors import SaliencelabError

HOOK_METHODS = ("guided_backprop", "deconvnet", "lrp", "deeplift")
BATCH = ({0: torch.export.Dim("batch")},)


class BNNet(nn.Module):
    """conv → BN → ReLU → max pool → conv → ReLU → pool → linear (what LRP canonizes)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1),
            nn.BatchNorm2d(6),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 6, 3, padding=1),
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


class MixedReLUs(nn.Module):
    """One ReLU module, one functional ReLU (`functional=True`: both functional)."""

    def __init__(self, functional: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.fc = nn.Linear(6, 4)
        self.functional = functional

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(x)
        h = F.relu(h) if self.functional else self.relu(h)
        h = F.relu(self.conv2(h))
        return self.fc(h.mean((2, 3)))


class FunctionalLayers(nn.Module):
    """Conv / linear modules whose weights the forward uses through F.conv2d / F.linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.act = nn.ReLU()
        self.fc = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(F.conv2d(x, self.conv.weight, self.conv.bias, padding=1))
        return F.linear(h.mean((2, 3)), self.fc.weight, self.fc.bias)


@pytest.fixture
def net() -> nn.Module:
    torch.manual_seed(0)
    return BNNet().eval()


@pytest.fixture
def x() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.rand(2, 3, 8, 8)


def _scripted(net: nn.Module, x: torch.Tensor, how: str) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.script(net) if how == "script" else torch.jit.trace(net, x)


def _exported(net: nn.Module, x: torch.Tensor, tmp_path, how: str) -> nn.Module:
    program = torch.export.export(net, (x,), dynamic_shapes=BATCH)
    if how == "program":
        return program.module()
    path = tmp_path / "net.pt2"
    torch.export.save(program, path)
    return sl.load_model(str(path)).module


def _assert_clean(module: nn.Module, training: bool = False) -> None:
    """No hook left, training flags and requires_grad as they were (all trainable here)."""
    for m in module.modules():
        assert m.training == training
        if not isinstance(m, torch.jit.ScriptModule):
            assert not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
    assert all(p.requires_grad for p in module.parameters())


def _flags_and_hooks(module: nn.Module) -> list:
    """Training flags, requires_grad and hooks of every (non-TorchScript) module."""
    out: list = [p.requires_grad for p in module.parameters()]
    for m in module.modules():
        out.append(m.training)
        if not isinstance(m, torch.jit.ScriptModule):
            out.append(
                (dict(m._forward_hooks), dict(m._forward_pre_hooks), dict(m._backward_hooks))
            )
    return out


# -- compiled models: one sentence, no silent plain gradient ------------------------------------


@pytest.mark.parametrize("how", ["script", "trace"])
@pytest.mark.parametrize("method", HOOK_METHODS)
def test_hook_methods_refuse_torchscript(net, x, how, method):
    compiled = _scripted(net, x, how)
    compiled.train()  # restored after the error
    with pytest.raises(SaliencelabError, match=f"^{method} works through hooks.*TorchScript"):
        sl.explain(compiled, x, methods=method, target=1)
    _assert_clean(compiled, training=True)


@pytest.mark.parametrize("how", ["archive", "program"])
@pytest.mark.parametrize("method", HOOK_METHODS)
def test_hook_methods_refuse_torch_export(net, x, tmp_path, how, method):
    compiled = _exported(net, x, tmp_path, how)
    before = [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in compiled.modules()]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "gradient × input" warning before the error
        with pytest.raises(SaliencelabError, match=f"^{method} works through hooks.*torch.export"):
            sl.explain(compiled, x, methods=method, target=1)
    # (`ExportedProgram.module()` has a hook of its own)
    after = [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in compiled.modules()]
    assert after == before


def test_plain_gradients_of_compiled_models_still_work(net, x, tmp_path):
    want = sl.explain(net, x, methods="saliency", target=1)["saliency"].maps
    for compiled in (_scripted(net, x, "script"), _exported(net, x, tmp_path, "archive")):
        got = sl.explain(compiled, x, methods="saliency", target=1)["saliency"].maps
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("layer", [None, "features.4"])
def test_layer_methods_on_torchscript_say_why(net, x, layer):
    """Was: RuntimeError `register_forward_hook is not supported on ScriptModules`."""
    compiled = _scripted(net, x, "script")
    compiled.train()
    with pytest.raises(SaliencelabError, match="TorchScript model runs as one compiled graph"):
        sl.explain(compiled, x, methods="gradcam", layer=layer)
    _assert_clean(compiled, training=True)


@pytest.mark.parametrize(
    "call",
    [
        lambda m, x: sl.explain(m, x, methods="gradcam"),
        lambda m, x: sl.explain(m, x, methods="eigencam", layer="features.4"),
        lambda m, x: sl.explain(m, x, methods="saliency", target=sl.channel("features.4", 0)),
        lambda m, x: sl.explain(m, x, methods="cam", layer=m.features),
        lambda m, x: sl.activations(m, x, layer="features.4"),
    ],
)
def test_layer_methods_on_a_flat_export_graph_point_to_unflatten(net, x, tmp_path, call):
    """`ExportedProgram.module()` keeps submodules that only hold weights: CAMs said "no layer
    with a spatial output" and named layers were "not reached (a neuron or channel target
    stops it...)". Now one sentence pointing to the unflattened model, which works."""
    flat = _exported(net, x, tmp_path, "program")
    before = _flags_and_hooks(flat)
    with pytest.raises(SaliencelabError, match="^A torch.export program's module.*unflatten"):
        call(flat, x)
    assert _flags_and_hooks(flat) == before
    unflattened = _exported(net, x, tmp_path, "file")
    want = sl.explain(net, x, methods="gradcam", target=1)["gradcam"].maps
    got = sl.explain(unflattened, x, methods="gradcam", target=1)["gradcam"].maps
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize(
    "how, metric, why",
    [
        (how, "input_invariance", "absorbs a shift of the inputs into the model's first layer")
        for how in ("script", "trace", "program", "file")
    ]
    + [
        (how, "model_randomisation", "re-initialises the model's layers")
        for how in ("script", "trace")
    ],
)
def test_metrics_that_change_the_layers_refuse_compiled_models(net, x, tmp_path, how, metric, why):
    """Were: RuntimeError `register_forward_pre_hook` / `get_submodule is not supported on
    ScriptModules`, and for torch.export models an error blaming the first layer's type
    (`_guards_fn`, `InterpreterModule`). The metrics that only run the model score it (the
    Python model's values)."""
    scripted = how in ("script", "trace")
    compiled = _scripted(net, x, how) if scripted else _exported(net, x, tmp_path, how)
    kind = "TorchScript" if scripted else "torch.export"
    # `ExportedProgram.module()` is in train mode and carries a hook of its own: as it was
    before = _flags_and_hooks(compiled)
    ex = sl.explain(net, x, methods="saliency", target=1)
    with pytest.raises(SaliencelabError, match=f"^{metric} {why}, which a {kind} model"):
        sl.evaluate(compiled, x, ex, metrics=metric, target=1, references=False)
    assert _flags_and_hooks(compiled) == before
    ours, python = (
        sl.evaluate(m, x, ex, metrics="completeness", target=1, references=False)["saliency"][
            "completeness"
        ].values
        for m in (compiled, net)
    )
    torch.testing.assert_close(ours, python)


def test_a_scripted_submodule_is_refused_too(x):
    torch.manual_seed(0)
    inner = _scripted(BNNet().eval(), x, "script")
    outer = nn.Sequential(inner).eval()
    with pytest.raises(SaliencelabError, match="^lrp works through hooks.*TorchScript"):
        sl.explain(outer, x, methods="lrp", target=1)


# -- guided backprop / deconvnet: functional ReLUs ---------------------------------------------


@pytest.mark.parametrize("method", ["guided_backprop", "deconvnet"])
def test_only_functional_relus_is_an_error(x, method):
    torch.manual_seed(0)
    model = MixedReLUs(functional=True).train()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # guided.py's "no nn.ReLU" warning comes first
        with pytest.raises(SaliencelabError, match=r"none ran.*2 functional ReLU call"):
            sl.explain(model, x, methods=method, target=1)
    _assert_clean(model, training=True)


@pytest.mark.parametrize("method", ["guided_backprop", "deconvnet"])
def test_mixed_module_and_functional_relus_warn(x, method):
    torch.manual_seed(0)
    model = MixedReLUs().eval()
    with pytest.warns(UserWarning, match=r"1 of the 2 ReLU calls .* functional"):
        got = sl.explain(model, x, methods=method, target=1)[method].attributions
    _assert_clean(model)
    # The module ReLU still got the modified backward: not the plain gradient.
    plain = sl.explain(model, x, methods="saliency", absolute=False, target=1)["saliency"]
    assert not torch.allclose(got, plain.attributions)


def test_relu_modules_only_raise_nothing(net, x):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for method in ("guided_backprop", "deconvnet"):
            sl.explain(net, x, methods=method, target=1)


def test_a_relu_free_forward_keeps_the_existing_warning(x):
    model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.Tanh(), nn.Flatten(), nn.LazyLinear(3))
    model(x)
    with pytest.warns(UserWarning, match="no nn.ReLU"):
        sl.explain(model.eval(), x, methods="guided_backprop", target=1)


# -- LRP / DeepLIFT: layers whose hooks never run ----------------------------------------------


@pytest.mark.parametrize("method", ["lrp", "deeplift"])
def test_rules_whose_hooks_never_run_are_an_error(x, method):
    """The modules exist (so rules are assigned), but the forward calls F.conv2d / F.linear /
    F.relu with their weights: before, the result was gradient × input without a word."""
    torch.manual_seed(0)
    model = FunctionalLayers().train()
    weights = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(SaliencelabError, match=f"^{method} applies .* none of the"):
        sl.explain(model, x, methods=method, target=1)
    _assert_clean(model, training=True)
    for p, w in zip(model.parameters(), weights, strict=True):
        torch.testing.assert_close(p.detach(), w)


@pytest.mark.parametrize("method", ["guided_backprop", "lrp", "deeplift"])
def test_a_channel_target_before_the_hooked_layers_is_not_an_error(net, x, method):
    """A channel target stops the forward at its layer: hooks after it need not have run."""
    from saliencelab.neurons.targets import channel

    sl.explain(net, x, methods=method, target=channel("features.0", 1))
