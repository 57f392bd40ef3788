"""What galleries, reports and the CLI say about an explanation: for a channel or neuron target
the layer reading that was explained (checked against a forward hook), never a softmax over the
layer's channels presented as class probabilities; and the input tile's caption, the same from
Python and from the CLI.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from rich.console import Console

import saliencelab as sl
from saliencelab.cli import _results_table
from saliencelab.models.square import SquarePreprocess
from saliencelab.report.run import explain_images

LAYER = "features.3"
#: Grad-CAM at a layer before the target's (the forward stops at the target's layer).
METHODS = {"saliency": {}, "gradcam": {"layer": "features.1"}}


@pytest.fixture
def model(tiny_cnn) -> sl.Model:
    """The tiny CNN reading 16 x 16 central squares, as the bundled models do (with a display)."""
    pre = SquarePreprocess(16, divisor=255.0)
    labels = ["cat", "dog", "bird", "fish", "frog"]
    return sl.Model(
        tiny_cnn, preprocess=pre, labels=labels, input_size=(16, 16), extra={"display": pre.display}
    )


@pytest.fixture
def photo() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8))  # 40 x 30


def _layer_output(model: sl.Model, x: torch.Tensor) -> torch.Tensor:
    """The layer's output by a plain forward with a hook: the reference reading."""
    seen = []
    handle = model.module.get_submodule(LAYER).register_forward_hook(lambda m, i, o: seen.append(o))
    try:
        with torch.no_grad():
            model.module(x)
    finally:
        handle.remove()
    return seen[0]


def _drawn_texts(monkeypatch) -> list[str]:
    """Every text drawn on a picture from now on (titles and captions)."""
    texts: list[str] = []
    real = ImageDraw.ImageDraw.text

    def spy(self, xy, text, *args, **kwargs):
        texts.append(text)
        return real(self, xy, text, *args, **kwargs)

    monkeypatch.setattr(ImageDraw.ImageDraw, "text", spy)
    return texts


def test_channel_target_records_its_reading_and_no_probabilities(model, photo):
    x = model.preprocess([photo, photo.rotate(90)])
    target = sl.channel(LAYER, 4)
    ex = sl.explain(model, x, methods=METHODS, target=target)
    reading = _layer_output(model, x)[:, 4].mean(dim=(1, 2))
    assert ex.probabilities is None and ex.layer_target is target
    torch.testing.assert_close(ex.target_values, reading)
    assert ex.target_text(1) == f"channel 4 of {LAYER}: {float(reading[1]):.3g}"
    rows = ex.table()
    assert {r["predicted"] for r in rows} == {None} and {r["probability"] for r in rows} == {None}
    assert {r["target"] for r in rows} == {f"channel 4 of {LAYER}"}
    assert [r["target_value"] for r in rows] == pytest.approx(
        [float(v) for v in reading for _ in range(2)]
    )
    assert "predicted" not in repr(ex) and f"channel 4 of {LAYER}" in repr(ex)
    # a class target keeps its probabilities and has no reading
    plain = sl.explain(model, x, methods="saliency")
    assert plain.probabilities.shape == (2, 5) and plain.target_values is None


def test_neuron_target_names_its_unit_row_then_column(model, photo):
    x = model.preprocess(photo)
    a = _layer_output(model, x)
    given = sl.explain(model, x, methods="saliency", target=sl.neuron(LAYER, 2, y=3, x=7))
    centre = sl.explain(model, x, methods="saliency", target=sl.neuron(LAYER, 2))
    torch.testing.assert_close(given.target_values, a[:, 2, 3, 7])
    torch.testing.assert_close(centre.target_values, a[:, 2, 8, 8])  # (h // 2, w // 2)
    assert given.target_text() == f"channel 2 of {LAYER} at (y=3, x=7): {float(a[0, 2, 3, 7]):.3g}"
    assert str(centre.layer_target) == f"channel 2 of {LAYER} at (y=8, x=8)"


def test_gallery_titles_the_channel_and_its_reading_not_a_class(model, photo, monkeypatch):
    x = model.preprocess(photo)
    ex = sl.explain(model, x, methods=METHODS, target=sl.channel(LAYER, 4))
    value = float(_layer_output(model, x)[0, 4].mean())
    texts = _drawn_texts(monkeypatch)
    sl.gallery(photo, ex, legend=False)
    assert texts[0] == f"channel 4 of {LAYER}: {value:.3g}"
    assert not any(t.startswith("target:") for t in texts)  # (each tile said "target: custom")
    assert not any(re.fullmatch(r"\d+ \(\d\.\d\d\)", t) for t in texts)  # no "4 (0.51)"


def test_report_and_cli_table_show_the_reading(model, photo, tmp_path):
    target = sl.channel(LAYER, 4)
    result = explain_images(
        model, [photo], "saliency,gradcam", tmp_path, target=target, layer="features.1"
    )
    value = float(_layer_output(model, model.preprocess(photo))[0, 4].mean())
    shown = f"channel 4 of {LAYER}: {value:.3g}"
    for row in result.rows:
        assert row["predicted"] is None and row["probability"] is None
        assert row["target"] == f"channel 4 of {LAYER}"
        assert row["target_value"] == pytest.approx(value)
    page = (tmp_path / "index.html").read_text()
    assert f"explained: <b>{shown}</b>" in page
    assert 'class="bar"' not in page and 'class="prob"' not in page  # no probability bar
    console = Console(width=200, record=True)
    console.print(_results_table(result, show_target=False))
    text = console.export_text()
    assert "explained" in text and "prediction" not in text
    assert shown in text
    entry = sl.ReportEntry.from_explanation(
        "a", sl.explain(model, model.preprocess(photo), methods="saliency", target=target)
    )
    assert entry.explained == shown and entry.predicted is None and entry.probability is None


def test_contributions_to_a_channel_say_which_channel(model, photo):
    am = sl.activations(
        model, model.preprocess(photo), "features.1", by="contribution", target=sl.channel(LAYER, 4)
    )
    assert am.target_label() == f"channel 4 of {LAYER}"  # (was "custom")


def test_input_caption_is_the_same_from_python_and_the_cli(model, photo, tmp_path, monkeypatch):
    """The input tile says what the model saw and the original size, whether the gallery is
    drawn on the original photo (Python) or on the model's view of it (the CLI's run)."""
    texts = _drawn_texts(monkeypatch)
    sl.gallery(photo, sl.explain(model, model.preprocess(photo), methods="saliency"))
    python = texts[texts.index("input") : texts.index("input") + 3]
    texts.clear()
    explain_images(model, [photo], "saliency", tmp_path)
    cli = texts[texts.index("input") : texts.index("input") + 3]
    assert python == cli == ["input", "model saw 16 x 16", "original 40 x 30"]
