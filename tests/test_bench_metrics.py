"""The metric benchmarks (benchmarks/metrics_*.py) time our metrics against Quantus and Captum on
the same inputs; a time is a result only where the values agree. Each script runs `main(argv)`
here at its smallest settings on the shapes CNN (outputs under tmp_path): its JSON must show
every agreement ok and every ratio present. A second run with one peer value made wrong (a
forced disagreement, or NaN on one side only) must drop the ratios that check gates (None) and
give a non-zero exit status."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from test_benchmark_scripts import _script, _torch_threads  # noqa: E402, F401 (autouse)


@pytest.fixture(autouse=True)
def _no_collect_between_calls(monkeypatch):
    """`harness.measure` runs `gc.collect()` before every call (untimed): 0.1-0.2 s each with
    Quantus and its imports on the heap, most of a small run's time. These tests check the
    agreements and the bookkeeping, not the times, so it is skipped here."""
    import gc

    monkeypatch.setattr(gc, "collect", lambda *args: 0)


def _ratio_ok(v) -> bool:
    return v is not None and math.isfinite(v) and v > 0


def _read(path: Path) -> dict:
    assert path.exists()
    return json.loads(path.read_text())


def _with_nan(values):
    """A copy of `values` (tensor or array) with its first entry NaN: NaN on one side only."""
    t = torch.as_tensor(values).detach().double().contiguous().clone()
    t.view(-1)[0] = float("nan")
    return t


# -- faithfulness: deletion, aopc_morf, faithfulness_correlation vs Quantus ---------------------

FAITH = ["--models", "shapes_cnn", "--shapes-images", "2", "--methods", "saliency"]
FAITH += ["--steps", "4", "--patch", "16", "--regions", "4", "--runs", "4", "--subset", "32"]
FAITH += ["--repeats", "1", "--malloc", "default"]


def test_faithfulness_agrees_with_quantus_and_reports_ratios(tmp_path):
    pytest.importorskip("quantus")
    script = _script("metrics_faithfulness")
    out = tmp_path / "faith.json"
    result = script.main([*FAITH, "--out", str(out)])
    rows = _read(out)["rows"]
    assert result["exit_status"] == 0 and len(rows) == 3
    for r in rows:
        assert r["agreement"]["ok"] and r["agreement"]["nan_mismatches"] == 0, r
        assert _ratio_ok(r["ours_over_floor"]) and _ratio_ok(r["quantus_over_ours"])
        assert isinstance(r["channels_last"], bool)  # the layout the floor ran in: ours


def test_faithfulness_one_sided_nan_drops_the_ratios(tmp_path, monkeypatch):
    pytest.importorskip("quantus")
    script = _script("metrics_faithfulness")
    agree = script.agree
    # Quantus' deletion curve NaN at one point: max |diff| over the rest still reads tiny.
    monkeypatch.setattr(
        script,
        "agree",
        lambda ours, q, key: agree(ours, _with_nan(q) if key == "curve" else q, key),
    )
    result = script.main([*FAITH, "--out", str(tmp_path / "faith.json")])
    by = {r["metric"].split("(")[0]: r for r in result["rows"]}
    bad = [by["deletion"], by["aopc_morf"]]
    assert all(r["agreement"]["nan_mismatches"] == 1 and not r["agreement"]["ok"] for r in bad)
    assert all(r["ours_over_floor"] is None and r["quantus_over_ours"] is None for r in bad)
    assert _ratio_ok(by["faithfulness_correlation"]["quantus_over_ours"])
    assert result["exit_status"] == 1


# -- localisation and complexity metrics vs Quantus ----------------------------------------------

MAPS = ["--maps", "4", "--sizes", "32", "--repeats", "1", "--malloc", "default"]


def test_maps_agree_with_quantus_and_report_ratios(tmp_path):
    pytest.importorskip("quantus")
    script = _script("metrics_maps")
    out = tmp_path / "maps.json"
    result = script.main([*MAPS, "--out", str(out)])
    rows = _read(out)["results"]["32x32"]
    assert result["exit_status"] == 0 and set(rows) == {c[0] for c in script.CASES}
    for name, r in rows.items():
        assert r["ok"] and all(a["ok"] for a in r["agreements"]), name
        assert _ratio_ok(r["quantus_over_ours"]) and _ratio_ok(r["quantus_core_over_ours_core"])


def test_maps_forced_disagreement_drops_the_ratios(tmp_path, monkeypatch):
    pytest.importorskip("quantus")
    script = _script("metrics_maps")
    agreements_of = script.agreements_of
    calls = {"n": 0}

    def wrong_first(ours, others):  # the first metric (pointing game): Quantus off by 1
        calls["n"] += 1
        if calls["n"] == 1:
            others = {**others, "quantus": others["quantus"] + 1.0}
        return agreements_of(ours, others)

    monkeypatch.setattr(script, "agreements_of", wrong_first)
    result = script.main([*MAPS, "--out", str(tmp_path / "maps.json")])
    rows = result["results"]["32x32"]
    assert not rows["pointing_game"]["ok"]
    assert rows["pointing_game"]["quantus_over_ours"] is None
    assert rows["pointing_game"]["quantus_core_over_ours_core"] is None
    assert _ratio_ok(rows["entropy"]["quantus_over_ours"])
    assert result["exit_status"] == 1


# -- ROAD: imputation, road_morf vs Quantus' ROAD, road vs its floor -----------------------------

# 1 % and 50 %: on these 2 images some predictions stand at 1 % and flip by 50 %, so the accuracy
# check is informative (at 25,50 every prediction has flipped: accuracy [0, 0] on both sides).
ROAD = ["--models", "shapes_cnn", "--methods", "saliency", "--shapes-images", "2"]
ROAD += ["--percentages", "1,50", "--repeats", "1", "--malloc", "default"]


def test_road_checks_our_curves_and_reports_ratios(tmp_path):
    pytest.importorskip("quantus")
    script = _script("metrics_road")
    out = tmp_path / "road.json"
    result = script.main([*ROAD, "--out", str(out)])
    (row,) = _read(out)["rows"]
    assert result["exit_status"] == 0
    checks = {a["what"]: a for part in row["agreements"].values() for a in part}
    assert all(a["ok"] for a in checks.values()), checks
    # our metric's own output is checked, not only numbers recomputed from hooked logits
    assert "road_morf: max |curves − softmax(its logits)|" in checks
    assert "road_morf: max |curves − softmax(quantus logits)|" in checks
    assert row["metric_vs_quantus"]["accuracy_informative"]
    ratios = [
        row["imputation"]["quantus_over_ours"],
        row["imputation"]["cg_over_ours"],
        row["metric_vs_quantus"]["quantus_over_ours"],
        row["floor"]["ours_over_floor"],
        row["floor"]["ours_over_floor_plus_imputation"],
        row["floor"]["ours_cg_over_floor"],
    ]
    assert all(_ratio_ok(v) for v in ratios), ratios


def test_road_wrong_curves_drop_the_ratios(tmp_path, monkeypatch):
    """A road_morf whose returned curves are off (here: the check fed a curve + 0.01) fails
    (b) and every ratio of our metric ((b) and (c)), not the imputation's."""
    pytest.importorskip("quantus")
    script = _script("metrics_road")
    check = script.max_abs_agreement

    def off(ours, peer, tol, what):
        if what == "road_morf: max |curves − softmax(its logits)|":
            ours = torch.as_tensor(ours) + 0.01
        return check(ours, peer, tol, what)

    monkeypatch.setattr(script, "max_abs_agreement", off)
    result = script.main([*ROAD, "--out", str(tmp_path / "road.json")])
    (row,) = result["rows"]
    assert row["metric_vs_quantus"]["quantus_over_ours"] is None
    assert row["floor"]["ours_over_floor"] is None
    assert row["floor"]["ours_over_floor_plus_imputation"] is None
    assert _ratio_ok(row["imputation"]["quantus_over_ours"])
    assert result["exit_status"] == 1


# -- max-sensitivity vs Quantus and Captum -------------------------------------------------------

ROBUST = ["--configs", "shapes_cnn:2x4", "--small-repeats", "1", "--malloc", "default"]


def test_robustness_agrees_with_quantus_and_captum_and_reports_ratios(tmp_path):
    pytest.importorskip("quantus")
    pytest.importorskip("captum")
    script = _script("metrics_robustness")
    out = tmp_path / "robust.json"
    result = script.main([*ROBUST, "--out", str(out)])
    (m,) = _read(out)["models"]
    assert result["exit_status"] == 0
    assert all(a["ok"] for a in m["agreements"].values()), m["agreements"]
    assert all(_ratio_ok(v) for v in m["ratios"].values()), m["ratios"]
    assert m["channels_last"] and m["grad_rows_ours"] == 8  # 8 rows: channels-last on CPU


def test_robustness_forced_disagreement_drops_the_ratios(tmp_path, monkeypatch):
    pytest.importorskip("quantus")
    pytest.importorskip("captum")
    script = _script("metrics_robustness")
    relative = script.relative_agreement

    def captum_off(ours, peer, what):  # Captum's values 10 % off
        return relative(ours, peer * 1.1 if "captum" in what else peer, what)

    monkeypatch.setattr(script, "relative_agreement", captum_off)
    result = script.main([*ROBUST, "--out", str(tmp_path / "robust.json")])
    (m,) = result["models"]
    assert not m["agreements"]["captum"]["ok"] and m["agreements"]["quantus"]["ok"]
    assert m["ratios"]["captum_over_ours"] is None and m["ratios"]["ours_over_floor"] is None
    assert _ratio_ok(m["ratios"]["quantus_over_ours"])
    assert result["exit_status"] == 1


# -- model-parameter randomisation vs Quantus ----------------------------------------------------

RANDOM = ["--models", "shapes_cnn", "--images", "shapes_cnn=2", "--layers", "shapes_cnn=2"]
RANDOM += ["--repeats", "1", "--malloc", "default"]


def test_randomisation_agrees_with_quantus_and_reports_ratios(tmp_path):
    pytest.importorskip("quantus")
    pytest.importorskip("captum")
    script = _script("metrics_randomisation")
    out = tmp_path / "random.json"
    result = script.main([*RANDOM, "--out", str(out)])
    (m,) = _read(out)["models"]
    assert result["exit_status"] == 0
    assert all(a["ok"] for a in m["agreements"].values()), m["agreements"]
    assert all(_ratio_ok(v) for v in m["ratios"].values()), m["ratios"]
    assert isinstance(m["channels_last"], bool)


def test_randomisation_one_sided_nan_drops_the_ratios(tmp_path, monkeypatch):
    pytest.importorskip("quantus")
    pytest.importorskip("captum")
    script = _script("metrics_randomisation")
    check = script.max_abs_agreement

    def nan_in_quantus(ours, peer, tol, what):
        return check(ours, _with_nan(peer) if "|quantus −" in what else peer, tol, what)

    monkeypatch.setattr(script, "max_abs_agreement", nan_in_quantus)
    result = script.main([*RANDOM, "--out", str(tmp_path / "random.json")])
    (m,) = result["models"]
    assert m["agreements"]["quantus"]["nan_mismatches"] == 1
    assert m["ratios"]["quantus_over_ours"] is None and m["ratios"]["ours_over_floor"] is None
    assert _ratio_ok(m["ratios"]["quantus_sl_over_ours"])
    assert _ratio_ok(m["ratios"]["stepwise_over_ours"])
    assert result["exit_status"] == 1
