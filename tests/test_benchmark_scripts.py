"""The benchmark scripts that swap library internals for their A/B comparisons or timers must keep
running as the library changes: a renamed function or attribute, or a changed signature, breaks
them without any other test noticing. Each runs `main(argv)` at its smallest settings here (a
few seconds in all), on the shapes CNN, with its outputs under tmp_path."""

from __future__ import annotations

import importlib.util
import math
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

import saliencelab as sl
from saliencelab.core import batching
from saliencelab.core import engine as engine_module
from saliencelab.core.engine import Engine

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _script(name: str):
    """benchmarks/<name>.py as a module (its folder on sys.path, as when run: the scripts import
    harness.py and one another by name)."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _torch_threads():
    """The scripts set torch's threads (one, as they time) and the harness clock: put them back
    for the other tests. (The other benchmark test files import this fixture and `_script`.)"""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
    _script("harness").use_clock("wall")


def test_inplace_activations_switches_the_engine_off_and_on(monkeypatch):
    """The script replaces `core.engine.inplace_activations` by a stand-in ("off"): it must still
    be what the engine calls, and the values must not move."""
    script = _script("inplace_activations")
    called: Counter[str] = Counter()
    off = script._switched_off

    def counted_off(*args, **kwargs):
        called["inplace_activations"] += 1
        return off(*args, **kwargs)

    monkeypatch.setattr(script, "_switched_off", counted_off)
    real = engine_module.inplace_activations
    cases = "shapes:completeness,shapes:deletion"
    rows = script.main(["--cases", cases, "--repeats", "1", "--malloc", "default"])
    assert [r["case"] for r in rows] == cases.split(",")
    assert all(r["max_diff"] == 0 and math.isfinite(r["in_place_over_off"]) for r in rows)
    assert called["inplace_activations"] > 0  # the forward passes ran "off"
    assert engine_module.inplace_activations is real


def test_chunk_cut_old_and_new_cut_agree():
    """The script swaps `core.batching._balanced` for the old cut (same signature)."""
    script = _script("chunk_cut")
    new_cut = batching._balanced
    rows = script.main(
        ["--images", "9", "--metrics", "completeness", "--repeats", "1", "--malloc", "default"]
    )
    assert [(r["metric"], r["images"]) for r in rows] == [("completeness", 9)]
    assert batching._balanced is new_cut


def test_op_count_fixes_the_engine_chunk_size(monkeypatch):
    """The script sets `Engine.__init__.__defaults__` to (chunk, None): the defaults must still
    be (chunk_size, memory_budget), and the model's operators must be told from the library's."""
    script = _script("op_count")
    monkeypatch.setattr(Engine.__init__, "__defaults__", Engine.__init__.__defaults__)
    result = script.main(["--metrics", "completeness", "--images", "2", "--chunk", "2"])
    engine = Engine(sl.load_model("shapes_cnn"))
    assert engine.chunk_size == 2 and engine.memory_budget is None
    assert result["completeness"]["model"] > 0 and result["completeness"]["library"] > 0


def test_metric_overhead_layers_give_the_same_values():
    """The script calls `Engine.forwards`, `folded` and `make_batch(engine=...)` directly (and
    checks by hand, engine and metric agree)."""
    script = _script("metric_overhead")
    result = script.main(["--images", "2", "--repeats", "1", "--malloc", "default"])
    assert {"floor", "floor, folded", "by hand", "engine", "metric"} <= set(result)
    assert all(math.isfinite(v["over_floor"]) for k, v in result.items() if k != "tiny_op_us")


def test_metrics_floor_quick_times_the_parts(tmp_path):
    """The script wraps library functions with timers (`_parts`); each must exist, and the
    explainer's calls must be seen where a metric makes them (input invariance)."""
    script = _script("metrics_floor")
    for name in script.model_metrics():
        for owner, attr, _, _ in script._parts(name):
            where = vars(owner) if isinstance(owner, type) else dir(owner)
            assert attr in where, f"{name}: {owner} has no {attr}"
    out = tmp_path / "metrics_floor.json"
    argv = ["--quick", "--metrics", "completeness,input_invariance", "--malloc", "default"]
    result = script.main([*argv, "--out", str(out)])
    assert out.exists()
    parts = {r["metric"]: r["parts_seconds"] for r in result["rows"]}
    assert set(parts) == {"completeness", "input_invariance"}
    assert {"engine", "explain", "shift offset"} <= set(parts["input_invariance"])
    assert all(r["values_agree"] for r in result["rows"])


# -- the agreement checks and the warm-up every peer comparison uses -----------------------------


def test_an_agreement_fails_on_a_difference_a_nan_mismatch_or_all_nan():
    """A check that cannot fail is no check: NaN on one side only, or NaN everywhere, was left
    out of max |diff| (which then read 0), and a failed check still let the ratio stand."""
    harness = _script("harness")
    nan = float("nan")
    close = harness.max_abs_agreement(torch.tensor([1.0, nan, 3.0]), [1.0, nan, 3.05], 0.1)
    assert close.ok and close.diff == pytest.approx(0.05)
    far = harness.max_abs_agreement(torch.tensor([1.0, 2.0]), [1.0, 2.5], 0.1)
    one_sided = harness.max_abs_agreement(torch.tensor([1.0, nan]), [1.0, 2.0], 0.1)
    everywhere = harness.max_abs_agreement(torch.tensor([nan, nan]), [nan, nan], 0.1)
    assert not far.ok and far.diff == pytest.approx(0.5)
    assert not one_sided.ok and one_sided.nan_mismatches == 1
    assert not everywhere.ok and everywhere.all_nan
    assert harness.valid_ratio(2.0, [close]) == 2.0
    assert harness.valid_ratio(2.0, [close, far]) is None
    assert harness.exit_status([close]) == 0 and harness.exit_status([close, one_sided]) == 1
    with pytest.raises(ValueError, match="shapes differ"):
        harness.max_abs_agreement(torch.zeros(2), torch.zeros(3), 0.1)


def test_settle_warms_up_until_the_chunk_search_is_closed():
    """A pass that fits one chunk looked settled after one call (the old `searching()` test saw
    one size), while the engine still tried other sizes on the next calls: the timed calls
    then mixed search chunks with settled ones."""
    harness = _script("harness")
    model, x = sl.load_model("shapes_cnn"), sl.data.shapes.make(8, seed=0).images
    batching.forget_chunk_sizes()
    call = lambda: sl.explain(model, x, methods="saliency")  # noqa: E731
    log, _ = harness.settle(call, model.module)
    assert not batching._PARTIAL
    with harness.record_passes(model.module) as again:
        call()
    assert again.calls == log.calls  # the timed calls run what the warm-up ended on


def test_a_floor_runs_in_the_layout_our_passes_ran():
    """The floors were plain NCHW passes while the engine ran channels-last rows (1.25-1.35x
    faster on EfficientNet-Lite0), so ours/floor was flattered by the layout."""
    harness = _script("harness")
    model, x = sl.load_model("shapes_cnn"), sl.data.shapes.make(8, seed=0).images.contiguous()
    log, _ = harness.settle(lambda: sl.explain(model, x, methods="saliency"), model.module)
    targets = torch.zeros(8, dtype=torch.long)
    floor = harness.Floor(model.module, x, targets, lambda: None, log.ran_channels_last())
    rows, _ = floor._batch(8)
    assert log.ran_channels_last() == rows.is_contiguous(memory_format=torch.channels_last)
    assert log.ran_channels_last()  # on CPU the engine runs this model channels-last
    plain, _ = harness.Floor(model.module, x, targets, lambda: None)._batch(8)
    assert plain.is_contiguous()
