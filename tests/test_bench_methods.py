"""The method benchmarks against Captum (perturbation, surrogates, lrp, text) gate their ratios on
agreement: each runs `main(argv)` at its smallest settings (the shapes CNN where the script takes
a model; MiniLM for text.py), with its outputs under tmp_path, and must report every agreement
ok and every ratio present; a forced disagreement must drop the ratio (None) and make the exit
status non-zero."""

from __future__ import annotations

import json
import math

import pytest

pytest.importorskip("captum")

from test_benchmark_scripts import _script, _torch_threads  # noqa: E402, F401 (autouse)


def _all_agree(result: dict) -> None:
    assert result["agreements"], "no agreement checked"
    assert all(a["ok"] for a in result["agreements"]), result["agreements"]
    assert result["exit_status"] == 0


def _ratio(v) -> bool:
    return v is not None and math.isfinite(v) and v > 0


PERTURBATION = ["--model", "shapes_cnn", "--images", "2", "--window", "32", "--stride", "32"]
PERTURBATION += ["--ppe", "1,2", "--repeats", "2", "--threads", "1", "--malloc", "default"]


def test_perturbation_agrees_with_captum_and_reports_paired_ratios(tmp_path):
    out = tmp_path / "perturbation.json"
    result = _script("perturbation").main([*PERTURBATION, "--out", str(out)])
    _all_agree(result)
    ratios = result["ratios"]
    for key in ("best_captum_over_ours", "best_captum_over_ours_full", "ours_over_floor"):
        assert _ratio(ratios[key]), key
    assert all(_ratio(v) for v in ratios["captum_over_ours"].values())
    assert result["floor"]["channels_last"] in (True, False)
    assert json.loads(out.read_text())["exit_status"] == 0


def test_perturbation_disagreement_drops_the_ratio_and_fails(tmp_path, monkeypatch):
    script = _script("perturbation")

    class Off(script.Occlusion):  # Captum's maps shifted: a wrong answer
        def attribute(self, *args, **kwargs):
            return super().attribute(*args, **kwargs) + 1.0

    monkeypatch.setattr(script, "Occlusion", Off)
    result = script.main([*PERTURBATION, "--repeats", "1", "--out", str(tmp_path / "p.json")])
    assert result["exit_status"] != 0
    assert result["ratios"]["best_captum_over_ours"] is None
    assert all(v is None for v in result["ratios"]["captum_over_ours"].values())
    assert result["ratios"]["ours_over_floor"] is None  # ours no longer agrees with Captum
    assert not all(a["ok"] for a in result["agreements"])


def test_surrogates_exact_checks_gate_the_ratios(tmp_path):
    argv = ["--models", "shapes", "--images", "1", "--samples", "32", "--segments", "16"]
    result = _script("surrogates").main(
        [*argv, "--repeats", "2", "--malloc", "default", "--out", str(tmp_path)]
    )
    _all_agree(result)
    for method in ("kernelshap", "lime"):
        res = result["results"]["shapes_cnn"][method]
        assert res["agreement"]["ok"]
        for key in ("speedup_vs_captum", "speedup_vs_captum_default", "ours_over_floor"):
            assert _ratio(res[key]), (method, key)
    assert (tmp_path / "surrogates.json").exists()


def test_surrogates_disagreement_drops_the_ratio_and_fails(tmp_path, monkeypatch):
    script = _script("surrogates")
    real = script.exact_checks

    def off(model, x, target):
        checks = real(model, x, target)
        checks["lime"].diff = 1.0  # as if our LIME differed from Captum's on the same coalitions
        return checks

    monkeypatch.setattr(script, "exact_checks", off)
    argv = ["--models", "shapes", "--images", "1", "--samples", "32", "--segments", "16"]
    argv += ["--repeats", "1", "--no-captum-default", "--malloc", "default"]
    result = script.main([*argv, "--out", str(tmp_path)])
    assert result["exit_status"] != 0
    lime, ks = (
        result["results"]["shapes_cnn"]["lime"],
        result["results"]["shapes_cnn"]["kernelshap"],
    )
    assert lime["speedup_vs_captum"] is None and lime["ours_over_floor"] is None
    assert _ratio(ks["speedup_vs_captum"])  # its own check still holds


def test_lrp_agrees_with_itself_and_with_captum_where_comparable(tmp_path):
    argv = ["--model", "shapes_cnn", "--batch", "2", "--repeats", "2", "--malloc", "default"]
    argv += ["--composites", "epsilon_plus,epsilon_alpha2_beta1"]
    result = _script("lrp").main([*argv, "--out", str(tmp_path / "lrp.json")])
    _all_agree(result)
    assert any("Captum LRP" in a["what"] for a in result["agreements"])  # a real peer check
    for name, row in result["contenders"].items():
        assert _ratio(row["over_floor"]), name
    assert _ratio(result["captum_over_ours_epsilon"])


def test_lrp_says_captum_is_not_comparable_on_efficientnet():
    script = _script("lrp")
    import saliencelab as sl

    missing = script.captum_incomparable(sl.load_model("efficientnet_lite0").module)
    assert "ReLU6" in missing and "Conv2dSame" in missing
    assert script.captum_incomparable(sl.load_model("shapes_cnn").module) == []


def test_lrp_disagreement_drops_the_ratio_and_fails(tmp_path, monkeypatch):
    script = _script("lrp")
    real = script.captum_lrp
    monkeypatch.setattr(script, "captum_lrp", lambda *a: 2 * real(*a))
    argv = ["--model", "shapes_cnn", "--batch", "1", "--repeats", "1", "--malloc", "default"]
    result = script.main([*argv, "--composites", "epsilon_plus"])
    assert result["exit_status"] != 0
    assert result["captum_over_ours_epsilon"] is None
    assert result["contenders"]["captum LRP"]["over_floor"] is None
    assert _ratio(result["contenders"]["lrp pass epsilon_plus"]["over_floor"])


def test_text_agrees_with_captum(tmp_path):
    argv = ["--steps", "4", "--repeats", "2", "--threads", "1", "--malloc", "default"]
    result = _script("text").main([*argv, "--out", str(tmp_path / "text.json")])
    _all_agree(result)
    assert _ratio(result["ratio_ours_over_captum"])
