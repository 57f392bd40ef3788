"""The model adapter (`models/model.py`) and the training script `scripts/train_shapes.py`."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import saliencelab as sl
from saliencelab.models import shapes as shape_models

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


# -- what sl.explain accepts as a model ------------------------------------------------------------


def test_a_plain_function_is_pointed_to_blackbox():
    net = nn.Linear(4, 3)
    with pytest.raises(sl.SaliencelabError) as info:
        sl.explain(lambda a: net(a), torch.randn(2, 4), methods="occlusion")
    sentence = str(info.value)
    assert "got function" in sentence and "sl.blackbox(fn)" in sentence
    assert "numpy=True" in sentence and "occlusion" in sentence and "kernelshap" in sentence
    assert "sl.Model(module)" not in sentence  # a function is not a network to wrap
    assert sentence.count(". ") == 0 and sentence.endswith(".")  # one sentence


def test_a_callable_object_is_pointed_to_blackbox_and_wrapping_it_works():
    class Scorer:  # e.g. a scikit-learn model's predict_proba bound in an object
        def __call__(self, batch: np.ndarray) -> np.ndarray:
            return batch.reshape(len(batch), -1)[:, :3]

    x = torch.rand(2, 1, 4, 4)
    with pytest.raises(sl.SaliencelabError, match=r"got Scorer; .*sl\.blackbox\(fn\)"):
        sl.explain(Scorer(), x, methods="occlusion")
    occlusion = {"occlusion": {"window": 2, "stride": 2}}
    ex = sl.explain(sl.blackbox(Scorer(), numpy=True), x, methods=occlusion)
    assert ex["occlusion"].maps.shape == (2, 4, 4)


def test_a_non_callable_keeps_the_model_sentence_and_a_class_is_built_first():
    with pytest.raises(sl.SaliencelabError, match=r"got int; wrap your network with sl\.Model"):
        sl.explain(3, torch.randn(1, 4), methods="occlusion")
    with pytest.raises(sl.SaliencelabError, match=r"got the class Linear; build the network"):
        sl.explain(nn.Linear, torch.randn(1, 4), methods="occlusion")


def test_a_factory_returning_a_function_is_pointed_to_blackbox(tmp_path):
    path = tmp_path / "fn_factory.py"
    path.write_text("def build():\n    return lambda x: x.flatten(1)[:, :3]\n")
    with pytest.raises(sl.SaliencelabError, match=r"returned a function.*sl\.blackbox\(fn\)"):
        sl.load_model(f"{path}:build")


# -- scripts/train_shapes.py: reproduced or not ----------------------------------------------------


@pytest.fixture(scope="module")
def train_script():
    spec = importlib.util.spec_from_file_location("train_shapes", SCRIPTS / "train_shapes.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["train_shapes"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("train_shapes", None)


def test_compare_weights_says_identical_or_how_far(train_script):
    compare = train_script.compare_weights
    ref = {"w": torch.tensor([1.0, 2.0, 3.0]), "n": torch.tensor(5)}
    same = {k: v.clone() for k, v in ref.items()}
    assert compare(same, ref) == "identical to the bundled weights"
    moved = {**same, "w": torch.tensor([1.0, 2.5, 2.75])}
    assert compare(moved, ref) == "differs from the bundled weights (max |Δ| 0.5 in w)"
    counted = {**same, "n": torch.tensor(6)}  # a counter alone
    assert compare(counted, ref) == "differs from the bundled weights (in n)"
    both = {**moved, "n": torch.tensor(600)}  # the counter does not hide the weights' |Δ|
    assert "max |Δ| 0.5 in w" in compare(both, ref)
    assert "missing n" in compare({"w": ref["w"]}, ref)
    assert "w: (2,)" in compare({**same, "w": torch.zeros(2)}, ref)
    assert compare(same, None) == "no bundled weights to compare with"


def test_the_script_compares_with_the_bundled_file_not_the_out_folder(
    train_script, tmp_path, monkeypatch, capsys
):
    """Weights equal to the bundled ones written to an empty folder are "identical" (they were
    reported as "changed" because the folder held no file before); other weights differ."""
    bundled = shape_models.load("shapes_cnn")
    other = shape_models.load("shapes_cnn", pretrained=False)
    for model in (bundled, other):
        model.extra.update(accuracy=1.0, train_seconds=0.0, train_cpu_seconds=0.0)
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        for model, phrase in ((bundled, "identical to the bundled weights"), (other, "differs")):
            monkeypatch.setattr(train_script, "train", lambda name, **kw: model)  # noqa: B023
            out = tmp_path / phrase.split()[0]
            out.mkdir()
            argv = ["train_shapes.py", "--only", "shapes_cnn", "--out", str(out)]
            monkeypatch.setattr(sys, "argv", argv)
            train_script.main()
            line = capsys.readouterr().out.strip().splitlines()[-1]
            assert phrase in line and "changed" not in line, line
            assert (out / "shapes_cnn.pt").is_file()
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
    written = (tmp_path / "identical" / "shapes_cnn.pt").read_bytes()
    assert written == (shape_models.DATA_DIR / "shapes_cnn.pt").read_bytes()
