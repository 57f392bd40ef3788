"""Loading models: registry names, factory specs, TorchScript, torch.export, weights, errors."""

from __future__ import annotations

import sys
import textwrap
import warnings

import pytest
import torch
from torch import nn

from saliencelab.core.errors import SaliencelabError
from saliencelab.models.loading import split_factory_spec
from saliencelab.models.model import Model
from saliencelab.models.zoo import list_models, load_model, register_model, register_scheme


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.act(self.conv(x))), 1))


FACTORY = """
import torch
from torch import nn

class Net(nn.Module):
    def __init__(self, width=4):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3)
        self.fc = nn.Linear(width, 2)

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3)))

def build(width=4):
    return Net(width)

def not_a_model():
    return 42

NUMBER = 3
"""

X = torch.randn(2, 3, 8, 8)


@pytest.fixture
def factory_file(tmp_path):
    path = tmp_path / "mynet.py"
    path.write_text(FACTORY)
    return path


# ------------------------------------------------------------------------------ registry


def test_list_models_has_the_bundled_model():
    assert "efficientnet_lite0" in list_models()


def test_unknown_name_suggests_close_names():
    with pytest.raises(SaliencelabError, match="Did you mean: efficientnet_lite0"):
        load_model("efficientnet_lite")


def test_model_names_match_in_any_case():
    """`sl.load_model` and `--model` find registered names and scheme prefixes ignoring case."""

    @register_model("_Test_Mixed")
    def mixed() -> Model:
        return Model(module=Tiny(), name="mixed")

    @register_scheme("_TestScheme")
    def scheme(rest: str) -> Model:
        return Model(module=Tiny(), name=rest)

    for name in ("_Test_Mixed", "_test_mixed", "_TEST_MIXED"):
        assert load_model(name).name == "mixed"
    assert load_model("_testscheme:a/B").name == "a/B"  # the rest keeps its case
    assert load_model("Shapes_CNN", pretrained=False).name == "shapes_cnn"


def test_cli_model_names_match_in_any_case():
    from typer.testing import CliRunner

    from saliencelab.cli import app

    res = CliRunner().invoke(app, ["layers", "SHAPES_CNN", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "features.3" in res.output


def test_unknown_builder_option():
    with pytest.raises(SaliencelabError, match="options are: pretrained"):
        load_model("efficientnet_lite0", pretrainde=False)


def test_register_model_and_scheme():
    @register_model("_test_tiny")
    def tiny(scale: int = 1) -> Model:
        return Model(module=Tiny(), name=f"tiny{scale}")

    @register_scheme("_test")
    def scheme(rest: str) -> Model:
        return Model(module=Tiny(), name=rest)

    assert load_model("_test_tiny", scale=3).name == "tiny3"
    assert load_model("_test_tiny", labels=["a", "b"]).labels == ["a", "b"]
    assert load_model("_test:some/path").name == "some/path"
    assert "_test_tiny" in list_models() and "_test:..." in list_models()
    with pytest.raises(ValueError):
        register_model("_test_tiny")(lambda: None)


def test_wrapping_a_module_or_model():
    net = Tiny()
    m = load_model(net, labels=["cat", "dog"])
    assert m.module is net and m.labels == ["cat", "dog"] and m.name == "Tiny"
    assert load_model(m) is m
    with pytest.raises(SaliencelabError, match="Unknown option"):
        load_model(net, weights="w.pt")
    with pytest.raises(SaliencelabError, match="Cannot load a model from a int"):
        load_model(3)


def test_split_factory_spec():
    assert split_factory_spec("a/b.py:build") == ("a/b.py", "build")
    assert split_factory_spec("pkg.mod:Cls.create") == ("pkg.mod", "Cls.create")
    assert split_factory_spec(r"C:\models\net.pt") is None
    assert split_factory_spec("model.pt2") is None


# ----------------------------------------------------------------------------- factories


def test_factory_from_a_python_file(factory_file):
    m = load_model(f"{factory_file}:build", width=6, labels=["a", "b"])
    assert isinstance(m, Model) and m.name == "build" and m.labels == ["a", "b"]
    assert m.module.conv.out_channels == 6 and not m.module.training
    assert m(X).shape == (2, 2)


def test_factory_from_a_module(tmp_path, monkeypatch, factory_file):
    monkeypatch.syspath_prepend(str(tmp_path))
    m = load_model("mynet:build")
    assert m(X).shape == (2, 2)
    sys.modules.pop("mynet", None)


def test_factory_returning_a_model_is_kept(tmp_path):
    path = tmp_path / "zoo_entry.py"
    path.write_text(
        textwrap.dedent("""
        from torch import nn
        from saliencelab.models.model import Model

        def build():
            return Model(module=nn.Linear(2, 2), name="mine", labels=["x", "y"])
        """)
    )
    m = load_model(f"{path}:build")
    assert m.name == "mine" and m.labels == ["x", "y"]


def test_factory_with_weights(tmp_path, factory_file):
    ref = load_model(f"{factory_file}:build")
    weights = tmp_path / "w.pt"
    torch.save({"state_dict": ref.module.state_dict()}, weights)
    m = load_model(f"{factory_file}:build", weights=weights)
    torch.testing.assert_close(m(X), ref(X))
    # "module." prefixes from nn.DataParallel are removed.
    torch.save({f"module.{k}": v for k, v in ref.module.state_dict().items()}, weights)
    torch.testing.assert_close(load_model(f"{factory_file}:build", weights=weights)(X), ref(X))


def test_weights_that_do_not_fit(tmp_path, factory_file):
    weights = tmp_path / "w.pt"
    torch.save(load_model(f"{factory_file}:build", width=5).module.state_dict(), weights)
    with pytest.raises(SaliencelabError, match="do not fit the model.*3 wrong-shape keys"):
        load_model(f"{factory_file}:build", weights=weights)


def test_pickled_weights_are_refused_unless_trusted(tmp_path, factory_file):
    ref = load_model(f"{factory_file}:build")
    weights = tmp_path / "pickled.pt"
    torch.save({"state_dict": ref.module.state_dict(), "extra": Tiny}, weights)
    with pytest.raises(SaliencelabError, match="weights_only=True.*trust_pickle=True"):
        load_model(f"{factory_file}:build", weights=weights)
    m = load_model(f"{factory_file}:build", weights=weights, trust_pickle=True)
    torch.testing.assert_close(m(X), ref(X))


def test_factory_errors(tmp_path, factory_file):
    cases = {
        f"{tmp_path / 'missing.py'}:build": "does not exist",
        f"{factory_file}:buidl": "has no 'buidl'.*Did you mean: build",
        f"{factory_file}:NUMBER": "not a function",
        f"{factory_file}:not_a_model": "returned a int, not a model",
        "no_such_module_xyz:build": "No Python module named 'no_such_module_xyz'",
        f"{tmp_path}:build": "not a Python file",
    }
    for spec, message in cases.items():
        with pytest.raises(SaliencelabError, match=message):
            load_model(spec)
    with pytest.raises(SaliencelabError, match="raised TypeError"):
        load_model(f"{factory_file}:build", depth=3)
    # no close name: the file's own functions and classes, not what it imports (torch, nn)
    with pytest.raises(SaliencelabError, match="no 'create'") as err:
        load_model(f"{factory_file}:create")
    assert str(err.value).endswith("It defines: Net, build, not_a_model.")
    with pytest.raises(SaliencelabError, match=r"is a Python file; name the function.*:build'"):
        load_model(str(factory_file))  # the ':build' left out
    missing = tmp_path / "w.pt"
    with pytest.raises(SaliencelabError, match="Weights file .* does not exist"):
        load_model(f"{factory_file}:build", weights=missing)


def test_factory_file_that_fails_to_import(tmp_path):
    path = tmp_path / "broken.py"
    path.write_text("import torch\nraise RuntimeError('boom')\n")
    with pytest.raises(SaliencelabError, match="failed with RuntimeError: boom"):
        load_model(f"{path}:build")


# --------------------------------------------------------------------------- model files


def test_torchscript_file(tmp_path):
    net = Tiny().eval()
    path = tmp_path / "tiny.ts"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(net), path)
    m = load_model(str(path))
    assert m.name == "tiny"
    torch.testing.assert_close(m(X), net(X))


BATCH = ({0: torch.export.Dim("batch")},)  # a dynamic batch, as saliencelab needs


def test_torch_export_archive(tmp_path):
    net = Tiny().eval()
    path = tmp_path / "tiny.pt2"
    torch.export.save(torch.export.export(net, (X,), dynamic_shapes=BATCH), path)
    m = load_model(path)
    torch.testing.assert_close(m(X), net(X))
    torch.testing.assert_close(m(X[:1]), net(X[:1]))


def test_torch_export_with_a_fixed_batch_is_refused_at_load(tmp_path):
    """torch.export fixes the example's batch size by default; the engine's chunks have other
    sizes, so such a file fails at load with the export recipe (not at every method)."""
    path = tmp_path / "fixed.pt2"
    torch.export.save(torch.export.export(Tiny().eval(), (X,)), path)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pytest.raises(SaliencelabError, match=r"exactly 2 row.*Dim\('batch'\)"):
            load_model(str(path))
    assert not seen, [str(w.message) for w in seen]  # torch's notices while reading: quiet


def test_model_file_errors(tmp_path):
    state = tmp_path / "state.pt"
    torch.save(Tiny().state_dict(), state)
    with pytest.raises(SaliencelabError, match="holds weights .*weights="):
        load_model(str(state))

    pickled = tmp_path / "whole.pt"
    torch.save(Tiny(), pickled)
    with pytest.raises(SaliencelabError, match="pickled Python objects"):
        load_model(str(pickled))
    assert isinstance(load_model(str(pickled), trust_pickle=True).module, Tiny)

    # a trusted pickle whose class's module is not importable here names that module
    code = tmp_path / "code"
    code.mkdir()
    (code / "netdef.py").write_text(FACTORY)
    sys.path.insert(0, str(code))
    try:
        import netdef

        torch.save(netdef.build(), tmp_path / "elsewhere.pt")
    finally:
        sys.path.remove(str(code))
        sys.modules.pop("netdef", None)
    with pytest.raises(SaliencelabError, match="not importable here \\(the module 'netdef'\\)"):
        load_model(str(tmp_path / "elsewhere.pt"), trust_pickle=True)

    junk = tmp_path / "junk.pt"
    junk.write_text("not a model")
    with pytest.raises(SaliencelabError, match="is not a PyTorch model file"):
        load_model(str(junk))

    with pytest.raises(SaliencelabError, match="does not exist"):
        load_model(str(tmp_path / "missing.pt2"))
    with pytest.raises(SaliencelabError, match="Unexpected option"):
        load_model(str(state), width=3)


def test_exported_model_keeps_its_layers_for_cam(tmp_path, tiny_cnn):
    """A torch.export archive is unflattened, so layer hooks fire and Grad-CAM matches."""
    import saliencelab as sl

    x = torch.randn(2, 3, 12, 12)
    path = tmp_path / "tiny.pt2"
    torch.export.save(torch.export.export(tiny_cnn, (x,), dynamic_shapes=BATCH), path)
    loaded = sl.load_model(str(path))
    got = sl.explain(loaded, x, methods="gradcam", layer="features")["gradcam"].maps
    want = sl.explain(tiny_cnn, x, methods="gradcam", layer="features")["gradcam"].maps
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
