"""benchmarks/run.py (saliencelab against Captum and pytorch-grad-cam) at its smallest settings on
the shapes CNN: every comparison is an agreement with a tolerance that gates its ratios and the
exit status, SmoothGrad's noise σ is checked against its definition, and the timed calls run
the chunks the warm-up settled on (not the engine's chunk-size search)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

pytest.importorskip("captum")

from test_benchmark_scripts import _script, _torch_threads  # noqa: E402, F401 (autouse)

from saliencelab.core import batching  # noqa: E402

TINY = ["--model", "shapes_cnn", "--batch", "2", "--n-steps", "4", "--n-samples", "2"]
TINY += ["--quick", "--clock", "cpu", "--malloc", "default"]


def _run(tmp_path: Path, methods: str, *extra: str) -> tuple[int, dict]:
    out = tmp_path / "out"
    status = _script("run").main([*TINY, "--methods", methods, *extra, "--out", str(out)])
    result = json.loads((out / "results.json").read_text())
    assert (out / "table.md").exists()
    return status, result


def _ratio(v) -> bool:
    return v is not None and math.isfinite(v) and v > 0


def test_run_agrees_with_the_peers_and_reports_ratios(tmp_path):
    if _script("peers").import_grad_cam()[0] is None:  # imported as the script does
        pytest.skip("pytorch-grad-cam is not installed")
    status, result = _run(tmp_path, "saliency,smoothgrad,gradcam")
    assert status == 0 and result["exit_status"] == 0
    assert result["agreements"] and all(a["ok"] for a in result["agreements"])
    res = result["results"]
    for key, names in (
        ("saliency", ["captum"]),
        ("smoothgrad", ["captum"]),
        ("gradcam", ["pytorch-grad-cam", "captum"]),
    ):
        rec = res[key]
        assert _ratio(rec["ours_over_floor"]) and rec["floor_met"] in (True, False), key
        assert rec["floor_channels_last"] in (True, False)
        assert rec["chunk"] == max(rec["chunks_seen"], key=rec["chunks_seen"].count)
        for name in names:
            p = rec["peers"][name]
            assert p["agreements"] and all(a["ok"] for a in p["agreements"]), (key, name)
            assert all(math.isfinite(a["tol"]) and a["tol"] > 0 for a in p["agreements"])
            assert _ratio(p["speedup"]) and _ratio(p["speedup_of_medians"]), (key, name)
            assert p["met"] in (True, False, None)
    sg = res["smoothgrad"]
    # σ checked against its definition from the recorded noisy rows; Captum's abs as asked
    (sigma,) = sg["agreements"]
    assert sigma["ok"] and "σ" in sigma["what"]
    assert sg["captum_abs"] is True and sg["options"]["base_options"] == {"absolute": True}
    assert "abs=True" in sg["peers"]["captum"]["call"]
    fixed = sg["peers"]["captum"]["agreement"]["fixed_noise"]
    if fixed["batch_sizes"]["ours"] == fixed["batch_sizes"]["captum"]:
        # the same batches: exact, no rounding allowance
        tols = [a["tol"] for a in sg["peers"]["captum"]["agreements"]]
        assert tols == [_script("run").EXACT_REL] and "rounding" not in fixed


def test_a_disagreement_drops_the_ratio_and_fails(tmp_path, monkeypatch):
    peers = _script("peers")
    real = peers.captum_saliency

    def off(*args):
        call = real(*args)
        return lambda: call() * 1.01  # a wrong answer (1 % off)

    monkeypatch.setattr(peers, "captum_saliency", off)
    status, result = _run(tmp_path, "saliency")
    assert status != 0 and result["exit_status"] != 0
    rec = result["results"]["saliency"]
    cap = rec["peers"]["captum"]
    assert not cap["agreements"][0]["ok"] and cap["agreement"]["ok"] is False
    assert cap["speedup"] is None and cap["speedup_of_medians"] is None and cap["met"] is None
    assert rec["ours_over_floor"] is None and rec["floor_met"] is None
    assert not all(a["ok"] for a in result["agreements"])
    table = (tmp_path / "out" / "table.md").read_text()
    assert "DISAGREE" in table and "met" not in table.split("| captum |")[1]


def test_a_wrong_noise_sigma_fails_although_the_fixed_noise_check_holds(tmp_path, monkeypatch):
    """Captum is fed our noisy rows, so the fixed-noise check cannot see a wrong σ: the σ check
    (measured from those rows against 0.15 × (max − min) per image) must."""
    from saliencelab.methods.gradient import smoothgrad

    real = smoothgrad.standard_normal
    monkeypatch.setattr(smoothgrad, "standard_normal", lambda *a: 1.2 * real(*a))
    status, result = _run(tmp_path, "smoothgrad")
    assert status != 0
    rec = result["results"]["smoothgrad"]
    (sigma,) = rec["agreements"]
    assert not sigma["ok"] and sigma["diff"] == pytest.approx(0.2, abs=0.05)
    cap = rec["peers"]["captum"]
    assert all(a["ok"] for a in cap["agreements"])  # the fixed-noise comparison still agrees
    assert cap["speedup"] is None and rec["ours_over_floor"] is None


def test_the_timed_calls_run_the_settled_chunks(tmp_path, monkeypatch):
    """The warm-up stopped when one call showed one chunk size, while the engine's search went
    on across calls: timed calls ran search chunks ([8], [4, 2, 1, 1], [4, 4], ...)."""
    harness = _script("harness")
    run = _script("run")
    seen: list[list[int]] = []
    once = harness._once

    def recorded_once(c, sync):
        if c.name != "saliencelab":
            return once(c, sync)
        with harness.record_passes(bench[0].module) as log:
            out = once(c, sync)
        seen.append(run.grad_sizes(log))
        return out

    bench: list = []

    class Bench(run.Bench):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            bench.append(self)

    monkeypatch.setattr(harness, "_once", recorded_once)
    monkeypatch.setattr(run, "Bench", Bench)
    batching.forget_chunk_sizes()  # a fresh search, as in a new process
    status, result = _run(tmp_path, "integrated_gradients", "--n-steps", "8", "--repeats", "3")
    assert status == 0
    rec = result["results"]["integrated_gradients"]
    assert len(seen) == 3 and sum(seen[0]) == 2 * 8
    assert all(sizes == rec["chunks_seen"] for sizes in seen), (seen, rec["chunks_seen"])
    assert rec["chunk"] == max(rec["chunks_seen"], key=rec["chunks_seen"].count)
    assert _ratio(rec["peers"]["captum"]["speedup"])


def test_the_rounding_allowance_applies_only_where_the_batch_sizes_differ():
    """Fixed noise is exact where both sides ran the noisy rows in batches of the same sizes;
    only where they did not may the model's per-batch-size rounding (≤ 1e-2, corr ≥ 1 − 1e-6)
    pass."""
    from types import SimpleNamespace

    run, harness = _script("run"), _script("harness")
    bench = run.Bench(run.parse(TINY))
    spec = run.first_registered("smoothgrad")
    fn = bench.ours({spec.name: {"n_samples": 2, "base_options": {"absolute": True}}})
    plog, ex = bench.warm(fn, keep_inputs=True)
    noisy, sigma, note = bench._noisy_rows(plog)
    assert noisy is not None, note
    ours = ex[spec.name].attributions
    off = ours.clone()
    for i in range(len(off)):  # one pixel per image off by 5e-3 of the map's scale
        off[i].view(-1)[0] += 5e-3 * float(ours[i].abs().max())
    fake = {spec.name: SimpleNamespace(attributions=off)}
    for sizes, tol, ok in (([4], run.EXACT_REL, False), ([2, 2], run.ROUNDING_REL, True)):
        log = harness.PassLog(calls=[(n, "grad") for n in sizes])
        agree, checks = bench._smoothgrad_agreement(spec, fake, log, noisy, sigma, True, note)
        assert checks[0].tol == tol and all(a.ok for a in checks) is ok, (sizes, checks)
        assert ("rounding" in agree["fixed_noise"]) is ok
