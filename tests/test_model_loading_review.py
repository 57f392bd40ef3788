"""Loading models, reviewed from a user's side: every way to give a model either works as the
README says or stops with one SaliencelabError sentence (never a traceback, never a different
model than the one asked for)."""

from __future__ import annotations

import os
import sys
import textwrap
import warnings

import pytest
import torch
from conftest import CNN_FACTORY
from torch import nn

from saliencelab.cli import app
from saliencelab.core.errors import SaliencelabError
from saliencelab.models.model import Model
from saliencelab.models.zoo import load_model

NET = textwrap.dedent(
    """
    import torch
    from torch import nn


    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(self.conv(x).mean((2, 3)))


    def build():
        return Net()
    """
)

X = torch.randn(2, 3, 8, 8)


@pytest.fixture
def away_from_path(tmp_path, monkeypatch):
    """Work in `tmp_path`, which is not on sys.path (as for the `saliencelab` command, whose
    sys.path holds its script's folder, not the working folder); drop modules imported there."""
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", os.getcwd())])
    monkeypatch.chdir(tmp_path)
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        if name.startswith("review_"):
            del sys.modules[name]


def one_line(text: str) -> str:
    return " ".join(text.split())


# -- factories ------------------------------------------------------------------------------------


def test_package_module_factory_is_found_from_the_working_folder(away_from_path):
    """`package.module:build` names a package in the working folder, as `python -m` finds it."""
    (away_from_path / "review_pkg").mkdir()
    (away_from_path / "review_pkg" / "__init__.py").write_text("")
    (away_from_path / "review_pkg" / "nets.py").write_text(NET)
    model = load_model("review_pkg.nets:build")
    assert model(X).shape == (2, 3)
    assert str(away_from_path) not in sys.path  # put there for the import only


def test_a_module_level_parse_args_does_not_read_saliencelabs_arguments(tmp_path, monkeypatch):
    """A training script with parse_args() at module level saw the CLI's own arguments (argparse
    printed its usage and exited); it now sees none. One with required arguments, or a factory
    that exits, stops with one sentence."""
    monkeypatch.setattr(sys, "argv", ["saliencelab", "layers", "train.py:build", "--debug"])
    parse = 'import argparse\np = argparse.ArgumentParser()\np.add_argument("--lr", default=0.1)\n'
    train = tmp_path / "train.py"
    train.write_text(parse + "args = p.parse_args()\n" + NET)
    assert load_model(f"{train}:build")(X).shape == (2, 3)
    assert sys.argv[0] == "saliencelab"  # restored

    required = tmp_path / "train_required.py"
    required.write_text(parse + 'p.add_argument("--data", required=True)\np.parse_args()\n' + NET)
    with pytest.raises(SaliencelabError, match=r"exited \(SystemExit: 2\).*__main__"):
        load_model(f"{required}:build")
    exits = tmp_path / "exits.py"
    exits.write_text("import sys\ndef build():\n    sys.exit('no GPU here')\n")
    with pytest.raises(SaliencelabError, match="raised SystemExit: no GPU here"):
        load_model(f"{exits}:build")


def test_a_factory_parameter_named_like_a_model_field_goes_to_the_factory(tmp_path):
    """`build(input_size=...)` gets the input_size it is given: it was taken for the Model's
    field and the factory silently built its default (another model)."""
    path = tmp_path / "sized.py"
    path.write_text(
        NET + "\n\ndef sized(input_size=8, name='a'):\n    net = Net()\n"
        "    net.seen = (input_size, name)\n    return net\n"
    )
    model = load_model(f"{path}:sized", input_size=32, name="b")
    assert model.module.seen == (32, "b")
    # a factory without such a parameter: the keywords set the Model's fields, as before
    plain = load_model(f"{path}:build", input_size=16, name="mine")
    assert (plain.input_size, plain.name) == ((16, 16), "mine")


def test_input_size_may_be_one_number_and_is_checked():
    """`input_size=16` (one side, as --input-size 16) is the square (16, 16): as a bare int it
    broke sl.visualize and sl.receptive_field with a TypeError."""
    assert Model(module=nn.Linear(2, 2), input_size=16).input_size == (16, 16)
    assert Model(module=nn.Linear(2, 2), input_size=[12, 20]).input_size == (12, 20)
    assert load_model(nn.Linear(2, 2), input_size=16).input_size == (16, 16)
    for bad in ((16,), (0, 16), "224", 2.5, True):
        with pytest.raises(SaliencelabError, match="input_size must be"):
            Model(module=nn.Linear(2, 2), input_size=bad)


# -- weights ---------------------------------------------------------------------------------------

WRAPPED = NET.replace(
    "def build():",
    "class Outer(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
    "        self.module = Net()\n\n    def forward(self, x):\n        return self.module(x)\n\n\n"
    "def outer():\n    return Outer()\n\n\ndef build():",
)


def test_weights_of_a_model_whose_every_key_starts_with_module_load(tmp_path):
    """A model whose only child is called `module` has every key start with "module."; its own
    checkpoint was refused (the prefix was taken for DataParallel's and removed)."""
    path = tmp_path / "outer.py"
    path.write_text(WRAPPED)
    torch.manual_seed(0)
    ref = load_model(f"{path}:outer")
    torch.save(ref.module.state_dict(), tmp_path / "w.pt")
    loaded = load_model(f"{path}:outer", weights=tmp_path / "w.pt")
    torch.testing.assert_close(loaded(X), ref(X))


@pytest.mark.parametrize("prefix", ["_orig_mod.", "_orig_mod.module.", "module._orig_mod."])
def test_weights_saved_from_a_compiled_model_load(tmp_path, prefix):
    """torch.compile's "_orig_mod." prefix (alone or with DataParallel's) is removed like
    DataParallel's "module."; the checkpoint was refused as another architecture's."""
    path = tmp_path / "net.py"
    path.write_text(NET)
    torch.manual_seed(1)
    ref = load_model(f"{path}:build")
    torch.save({prefix + k: v for k, v in ref.module.state_dict().items()}, tmp_path / "c.pt")
    loaded = load_model(f"{path}:build", weights=tmp_path / "c.pt")
    torch.testing.assert_close(loaded(X), ref(X))


def test_a_trusted_checkpoint_holding_the_model_itself_loads_its_weights(tmp_path):
    """{"model": model, "epoch": ...} (a trusted pickle) gives the model's state dict; it was
    read as the state dict itself and refused for its unexpected keys "model" and "epoch"."""
    path = tmp_path / "lin.py"
    path.write_text("from torch import nn\ndef build():\n    return nn.Linear(3, 2)\n")
    torch.manual_seed(2)
    saved = nn.Linear(3, 2)
    torch.save({"model": saved, "epoch": 4}, tmp_path / "ckpt.pt")
    loaded = load_model(f"{path}:build", weights=tmp_path / "ckpt.pt", trust_pickle=True)
    x = torch.randn(2, 3)
    torch.testing.assert_close(loaded(x), saved(x))


def test_a_model_file_given_as_weights_is_named_as_such(tmp_path):
    """A TorchScript or torch.export file as weights= is one sentence pointing to loading it as
    the model (it was "not a PyTorch weights file (RuntimeError)", after a torch warning, with
    advice to pass a .pt2 or TorchScript file as weights)."""
    path = tmp_path / "net.py"
    path.write_text(NET)
    module = load_model(f"{path}:build").module
    torch.jit.save(torch.jit.script(module), tmp_path / "net.ts")
    program = torch.export.export(
        module, (torch.randn(2, 3, 8, 8),), dynamic_shapes=({0: torch.export.Dim("batch")},)
    )
    torch.export.save(program, tmp_path / "net.pt2")
    for name, kind in (("net.ts", "a TorchScript model"), ("net.pt2", "a torch.export archive")):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with pytest.raises(SaliencelabError, match=f"is {kind}, not a state dict") as e:
                load_model(f"{path}:build", weights=tmp_path / name)
        assert f"load_model('{tmp_path / name}')" in str(e.value)


def test_a_broken_weights_file_is_told_to_be_a_state_dict(tmp_path):
    """The advice for an unreadable weights file is a state dict, not "a torch.export archive
    (.pt2), a TorchScript file", which weights= does not take."""
    path = tmp_path / "net.py"
    path.write_text(NET)
    (tmp_path / "w.pt").write_bytes(b"not a checkpoint" * 8)
    with pytest.raises(SaliencelabError, match="not a PyTorch weights file") as e:
        load_model(f"{path}:build", weights=tmp_path / "w.pt")
    assert ".pt2" not in str(e.value) and "state_dict()" in str(e.value)


def test_a_trusted_pickled_model_finds_its_class_from_the_working_folder(away_from_path):
    """The refusal's advice, "run from the folder of the code that defined the model's class",
    did not work from the `saliencelab` command (the working folder is not on its sys.path)."""
    (away_from_path / "review_pickled.py").write_text(NET)
    sys.path.insert(0, str(away_from_path))
    import review_pickled  # noqa: PLC0415

    sys.path.remove(str(away_from_path))
    torch.save(review_pickled.build(), away_from_path / "whole.pt")
    del sys.modules["review_pickled"]
    model = load_model("whole.pt", trust_pickle=True)
    assert type(model.module).__name__ == "Net" and model(X).shape == (2, 3)
    with pytest.raises(SaliencelabError, match="trust_pickle=True"):
        load_model("whole.pt")


# -- names and directories ------------------------------------------------------------------------


def test_directories_are_named_as_directories(away_from_path):
    """A Hugging Face directory given without hf: points to hf:PATH; a bare existing folder name
    is "a directory", not "Unknown model"."""
    hf_dir = away_from_path / "my-bert"
    hf_dir.mkdir()
    (hf_dir / "config.json").write_text("{}")
    with pytest.raises(SaliencelabError, match=r"with the hf: prefix, 'hf:.*my-bert'"):
        load_model(str(hf_dir))
    (away_from_path / "checkpoints").mkdir()
    with pytest.raises(SaliencelabError, match="'checkpoints' is a directory"):
        load_model("checkpoints")


def test_an_empty_model_name_is_one_sentence():
    with pytest.raises(SaliencelabError, match="No model was named"):
        load_model("")


# -- the command line ------------------------------------------------------------------------------


@pytest.fixture
def plain(tmp_path) -> str:
    path = tmp_path / "plain.py"
    path.write_text(CNN_FACTORY)
    return f"{path}:build"


@pytest.mark.parametrize("normalize", ["nan,nan", "0.5,inf", "nan,0.5,0.5,0.2,0.2,0.2"])
def test_normalize_refuses_values_that_are_not_finite(runner, plain, normalize):
    """--normalize nan,nan passed the `std <= 0` check and made every input NaN."""
    args = ["layers", plain, "--input-size", "8", "--normalize", normalize]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert f"--normalize '{normalize}' is not understood" in one_line(result.stderr)


def test_devices_this_pytorch_cannot_use_are_one_sentence(runner, plain, monkeypatch):
    """--device meta listed layers of a model without values; mps on a PyTorch without it was a
    traceback; cuda:N past the last GPU is named."""
    base = ["layers", plain, "--input-size", "8", "--device"]
    result = runner.invoke(app, [*base, "meta"])
    assert result.exit_code == 2 and "--device meta holds no values" in one_line(result.stderr)
    if not torch.backends.mps.is_available():
        result = runner.invoke(app, [*base, "mps"])
        assert result.exit_code == 2  # a traceback exits with 1
        assert "error: --device mps cannot be used" in one_line(result.stderr)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    result = runner.invoke(app, [*base, "cuda:3"])
    assert result.exit_code == 2
    assert "this machine has 1 CUDA GPU(s), cuda:0 to cuda:0" in one_line(result.stderr)


def test_a_factory_spec_without_a_function_a_config_file_and_the_factorys_own_error(tmp_path):
    """'net.py:' was an "Unknown model"; hf:dir/config.json said the directory had no
    config.json; a factory's own SaliencelabError came wrapped in "raised SaliencelabError: ..."."""
    import saliencelab as sl
    from saliencelab.core.errors import SaliencelabError

    with pytest.raises(
        SaliencelabError, match=r"names a Python file but no function.*net\.py:build"
    ):
        sl.load_model("net.py:")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(SaliencelabError, match="is the model's config file; give its folder"):
        sl.load_model(f"hf:{tmp_path / 'config.json'}")
    factory = tmp_path / "own.py"
    factory.write_text(
        "from saliencelab.core.errors import SaliencelabError\n"
        "def build():\n    raise SaliencelabError('Give build() a size.')\n"
    )
    with pytest.raises(SaliencelabError, match=r"^Give build\(\) a size\.$"):
        sl.load_model(f"{factory}:build")


def test_weights_for_a_registered_model_say_where_weights_go(tmp_path):
    """'does not accept weights (got an unexpected keyword argument ...)' named the builder's
    options but not what --weights is for."""
    import saliencelab as sl
    from saliencelab.core.errors import SaliencelabError

    with pytest.raises(SaliencelabError, match=r"comes with its weights.*'file\.py:build'"):
        sl.load_model("shapes_cnn", weights=tmp_path / "w.pt")
