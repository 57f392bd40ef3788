"""Fixes from a sweep of the command line: output paths checked before any work (a folder where a
file goes, a file where the output folder goes) with advice a shell user can act on, no empty
output folder left by a refused request, a folder given as --weights, --diversity without a
batch, `metrics` and `methods` readable at 60-80 columns, usage mistakes as one `error:` line,
command-line wording of library sentences, `demo --embed` inlining the evaluation's charts, and
bfloat16 image tensors."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from conftest import CNN_FACTORY
from PIL import Image

import saliencelab as sl
from saliencelab.cli import app
from saliencelab.core.errors import SaliencelabError
from saliencelab.viz.io import save_image

MODEL = "shapes_cnn"  # small and bundled: no download


@pytest.fixture
def photo(tmp_path) -> str:
    path = tmp_path / "photo.png"
    image = sl.data.shapes.make(1).images[0]  # (3, 64, 64) in [0, 1]
    Image.fromarray((image.permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(path)
    return str(path)


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error:")]


def one_error(result) -> str:
    """The single `error:` line of a refused command (exit code 2, no traceback)."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = error_lines(result.stderr)
    assert len(errors) == 1, result.stderr
    return errors[0]


def never_called(*args, **kwargs):
    raise AssertionError("the work started before the output paths were checked")


# -- 1. explain: a folder named maps.npz ---------------------------------------------------------


def test_a_folder_in_place_of_maps_npz_is_one_sentence_before_any_work(runner, photo, tmp_path):
    out = tmp_path / "o5"
    (out / "maps.npz").mkdir(parents=True)
    args = ["explain", photo, "--model", MODEL, "-m", "saliency", "--out", str(out)]
    line = one_error(runner.invoke(app, args))
    assert "maps.npz' is a folder" in line
    assert "remove or rename that folder, or choose another --out" in line
    assert sorted(p.name for p in out.iterdir()) == ["maps.npz"]  # no temporary file, no overlay


def test_the_maps_writer_leaves_no_temporary_file_when_its_path_is_taken(tmp_path):
    from saliencelab.report.run import _MapsWriter

    maps = _MapsWriter(tmp_path / "maps.npz")
    maps.add("a/saliency", np.zeros((2, 2), np.float32))
    (tmp_path / "maps.npz").mkdir()  # made while the run went on
    with pytest.raises(SaliencelabError, match="maps.npz' is a folder"):
        maps.close()
    assert [p.name for p in tmp_path.iterdir()] == ["maps.npz"]


# -- 2. visualize: --out is a file ------------------------------------------------------------


def test_visualize_refuses_a_file_as_out_before_the_optimisation(runner, tmp_path, monkeypatch):
    monkeypatch.setattr("saliencelab.featurevis.commands.visualize", never_called)
    out = tmp_path / "outfile_is_file"
    out.write_text("mine")
    args = ["visualize", "--model", MODEL, "--class", "disk", "--steps", "2", "--out", str(out)]
    line = one_error(runner.invoke(app, args))
    assert "Cannot create the output folder" in line and "choose another output folder" in line
    assert out.read_text() == "mine"


# -- 3. evaluate: a folder where a table goes ---------------------------------------------------


@pytest.mark.parametrize(
    "taken, kind, needle",
    [
        ("metrics.csv", "folder", "metrics.csv' is a folder"),
        ("metrics.json", "folder", "metrics.json' is a folder"),
        ("bars/sparseness.png", "folder", "sparseness.png' is a folder"),
        ("bars", "file", "bars' is a file"),
    ],
)
def test_evaluate_checks_every_output_path_before_any_work(
    runner, photo, tmp_path, monkeypatch, taken, kind, needle
):
    monkeypatch.setattr("saliencelab.metrics.commands.evaluate_images", never_called)
    out = tmp_path / "ec"
    path = out / taken
    if kind == "folder":
        path.mkdir(parents=True)
    else:
        path.parent.mkdir(parents=True)
        path.write_text("x")
    args = ["evaluate", photo, "--model", MODEL, "-m", "saliency", "--metrics", "sparseness"]
    line = one_error(runner.invoke(app, [*args, "--out", str(out)]))
    assert needle in line and ("choose another --out" in line or "output folder" in line)
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    assert written == sorted({taken, *(str(p) for p in path.relative_to(out).parents)} - {"."})


def test_write_evaluation_writes_nothing_when_one_path_is_taken(tmp_path):
    from saliencelab.metrics.commands import write_evaluation
    from saliencelab.metrics.evaluate import EvalReport

    data = sl.data.shapes.make(2)
    model = sl.load_model(MODEL)
    ex = sl.explain(model, data.images, methods="saliency")
    report = sl.evaluate(model, data.images, ex, metrics="sparseness", references=False)
    assert isinstance(report, EvalReport)
    (tmp_path / "metrics.json").mkdir()
    with pytest.raises(SaliencelabError, match="metrics.json' is a folder"):
        write_evaluation(report, [], [], tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # metrics.csv not written
    (tmp_path / "metrics.json").rmdir()
    files = write_evaluation(report, [], [], tmp_path)
    assert (tmp_path / "metrics.csv").read_text().startswith("method,")
    assert tmp_path / "metrics.json" in files
    assert not list(tmp_path.glob(".*.tmp"))


def test_demo_checks_its_evaluation_paths_before_any_work(runner, tmp_path, monkeypatch):
    import saliencelab.cli as cli

    monkeypatch.setattr(cli, "load_model", never_called)
    out = tmp_path / "demo"
    (out / "evaluation" / "metrics.csv").mkdir(parents=True)
    args = ["demo", "--out", str(out), "--methods", "saliency", "--images", "chelsea"]
    line = one_error(runner.invoke(app, args))
    assert "metrics.csv' is a folder" in line and "choose another --out" in line


# -- 4. a refused request leaves no output folder -----------------------------------------------


@pytest.mark.parametrize(
    "extra",
    [
        ["-m", "saliency", "--target", "diskk"],
        ["-m", "saliency", "--target", "7"],
        ["-m", "gradcam", "--layer", "featurs"],
    ],
)
def test_an_unknown_class_or_layer_leaves_no_output_folder(runner, photo, tmp_path, extra):
    out = tmp_path / "new" / "out"
    one_error(runner.invoke(app, ["explain", photo, "--model", MODEL, *extra, "--out", str(out)]))
    assert not (tmp_path / "new").exists()


def test_visualize_and_evaluate_refusals_leave_no_output_folder(runner, photo, tmp_path):
    out = tmp_path / "v"
    args = ["visualize", "--model", MODEL, "--class", "diskk", "--steps", "1", "--out", str(out)]
    assert "no class named 'diskk'" in one_error(runner.invoke(app, args))
    assert not out.exists()
    args = ["evaluate", photo, "--model", MODEL, "-m", "gradcam", "--layer", "featurs"]
    one_error(runner.invoke(app, [*args, "--metrics", "sparseness", "--out", str(out)]))
    assert not out.exists()


def test_an_output_folder_that_cannot_be_made_leaves_no_parent_behind(runner, photo, tmp_path):
    """`--out new/<a name too long for the file system>`: `new` is made, the name fails; the
    refusal takes `new` back (it was made by this call and is empty)."""
    out = tmp_path / "new" / ("x" * 300)
    args = ["explain", photo, "--model", MODEL, "-m", "saliency", "--out", str(out)]
    assert "Cannot create the output folder" in one_error(runner.invoke(app, args))
    assert not (tmp_path / "new").exists()


def test_a_refusal_keeps_an_output_folder_that_was_there(runner, photo, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    args = ["explain", photo, "--model", MODEL, "-m", "saliency", "--target", "diskk"]
    one_error(runner.invoke(app, [*args, "--out", str(out)]))
    assert out.is_dir()


# -- 5. --weights a folder --------------------------------------------------------------------


def test_a_folder_given_as_weights_is_named_a_folder(runner, photo, tmp_path):
    factory = tmp_path / "net.py"
    factory.write_text(CNN_FACTORY)
    (tmp_path / "photos").mkdir()
    with pytest.raises(SaliencelabError, match="'.*photos' is a folder, not a weights file"):
        sl.load_model(f"{factory}:build", weights=tmp_path / "photos")
    args = ["explain", photo, "--model", f"{factory}:build", "--input-size", "16"]
    args += ["-m", "saliency", "--weights", str(tmp_path / "photos")]
    line = one_error(runner.invoke(app, [*args, "--out", str(tmp_path / "o")]))
    assert "is a folder, not a weights file" in line and "does not exist" not in line


# -- 6. --diversity with one image per objective --------------------------------------------


def test_diversity_without_a_batch_is_refused(runner, tmp_path, monkeypatch):
    monkeypatch.setattr("saliencelab.featurevis.commands.visualize", never_called)
    args = ["visualize", "--model", MODEL, "--class", "disk", "--diversity", "5"]
    line = one_error(runner.invoke(app, [*args, "--steps", "2", "--out", str(tmp_path / "v1")]))
    assert "--batch 2 or more" in line
    assert not (tmp_path / "v1").exists()


# -- 7. advice for a folder where the tool names the file -----------------------------------


def test_a_folder_where_visualize_writes_a_picture_is_refused_before_the_work(
    runner, tmp_path, monkeypatch
):
    monkeypatch.setattr("saliencelab.featurevis.commands.visualize", never_called)
    out = tmp_path / "vc"
    (out / "featurevis_00_class_logit_disk.png").mkdir(parents=True)
    args = ["visualize", "--model", MODEL, "--class", "disk", "--steps", "2", "--out", str(out)]
    line = one_error(runner.invoke(app, args))
    assert "featurevis_00_class_logit_disk.png' is a folder" in line
    assert "remove or rename that folder, or choose another --out" in line
    assert "/out'" not in line and "give a file name" not in line


def test_a_folder_where_a_command_writes_is_cli_advice_even_without_a_check(
    runner, photo, tmp_path
):
    out = tmp_path / "nn"
    (out / "photo_features_activation.png").mkdir(parents=True)
    args = ["neurons", photo, "--model", MODEL, "--layer", "features", "--out", str(out)]
    line = one_error(runner.invoke(app, args))
    assert "photo_features_activation.png' is a folder" in line
    assert "remove or rename that folder, or choose another --out" in line


def test_the_python_api_keeps_its_advice_for_a_path_the_user_gave(tmp_path):
    (tmp_path / "pic.png").mkdir()
    with pytest.raises(SaliencelabError, match="give a file name for the picture"):
        save_image(Image.new("RGB", (4, 4)), tmp_path / "pic.png")


# -- 8. `metrics` and `methods` at 60 and 80 columns ----------------------------------------


@pytest.mark.parametrize("command", ["metrics", "methods"])
@pytest.mark.parametrize("columns", [60, 80])
def test_catalogues_are_readable_on_a_narrow_terminal(runner, command, columns):
    result = runner.invoke(app, [command], env={"COLUMNS": str(columns)})
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    names = sl.metrics.available() if command == "metrics" else [s.name for s in sl.methods()]
    assert len(lines) < 12 * len(names)  # 4,431 lines at 60 columns for `metrics` before
    assert all(len(line) <= columns for line in lines)
    starts = {line.split()[0] for line in lines if line and not line.startswith(" ")}
    assert set(names) <= starts  # each entry's name heads its summary, whole
    # no summary is cut into slivers: every wrapped line but an entry's last is well filled
    summary = [line for line in lines if line.startswith("  ")]
    assert sum(len(line) for line in summary) / len(summary) > columns / 2


@pytest.mark.parametrize("command", ["metrics", "methods"])
def test_catalogues_keep_their_table_on_a_wide_terminal(runner, command):
    result = runner.invoke(app, [command], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "┃ metric" in result.stdout or "┃ method" in result.stdout


# -- 9. usage mistakes: one line ----------------------------------------------------------------


@pytest.mark.parametrize(
    "args, needle, command",
    [
        (["explain", "x.png", "--chunk-size", "0"], "Invalid value for '--chunk-size'", "explain"),
        (["visualize", "--steps", "0"], "Invalid value for '--steps'", "visualize"),
        (["visualize", "--seed", "abc"], "Invalid value for '--seed'", "visualize"),
        (["explain"], "Missing argument", "explain"),
        (["dashboard"], "No such command 'dashboard'", ""),
        (["models", "foo"], "unexpected extra argument", "models"),
        (["--bogus"], "No such option: --bogus", ""),
    ],
)
def test_usage_mistakes_are_one_error_line_and_a_hint(runner, args, needle, command):
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[0].startswith("error: ") and needle in lines[0], result.stderr
    hint = f"Try 'saliencelab{' ' + command if command else ''} --help' for help."
    assert lines[1:] == [hint], result.stderr
    assert not re.search("[╭╰│]", result.stderr)


def test_help_is_left_as_it_was(runner):
    for args in (["--help"], ["explain", "--help"], []):
        result = runner.invoke(app, args)
        assert "Usage: saliencelab" in result.stdout and "╭" in result.stdout
    assert runner.invoke(app, ["--help"]).exit_code == 0


# -- cosmetic ---------------------------------------------------------------------------------


def test_the_command_line_says_how_to_explain_the_predicted_class(runner, photo, tmp_path):
    args = ["explain", photo, "--model", MODEL, "-m", "saliency", "--target", "7"]
    line = one_error(runner.invoke(app, [*args, "--out", str(tmp_path / "o")]))
    assert "out of range" in line and "leave --target out" in line and "target=None" not in line
    args = ["visualize", "--model", MODEL, "--class", "7", "--out", str(tmp_path / "o")]
    line = one_error(runner.invoke(app, args))
    assert "--class 7 is out of range" in line and "target=None" not in line


def test_a_text_file_as_model_names_no_python_exception(runner, photo, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    args = ["explain", photo, "--model", str(notes), "-m", "saliency"]
    line = one_error(runner.invoke(app, [*args, "--out", str(tmp_path / "o")]))
    assert "is not a PyTorch model file" in line and "Error)" not in line


def test_demo_embed_inlines_the_evaluation_charts(runner, photo, tmp_path, monkeypatch):
    import saliencelab.cli as cli

    monkeypatch.setattr(cli, "DEFAULT_MODEL", MODEL)
    monkeypatch.setattr(cli, "DEMO_EVAL_METRICS", {"sparseness": {}})
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--methods", "saliency", "--images", photo, "--embed"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    page = (out / "evaluation" / "index.html").read_text()
    assert "data:image/png;base64," in page
    assert not re.search(r'<img[^>]+src="(?!data:)', page)
    # the scores as a table on the page (the README lists it), not only in the terminal
    scores = json.loads((out / "evaluation" / "metrics.json").read_text())
    assert "<h2>Scores</h2>" in page and "sparseness ↑" in page
    for results in scores["results"].values():
        assert f"{results['sparseness']['mean']:.3f}" in page


# -- bfloat16 images ------------------------------------------------------------------------


def test_a_bfloat16_image_tensor_is_preprocessed_as_its_float32_values():
    model = sl.load_model(MODEL)
    image = sl.data.shapes.make(1).images[0].to(torch.bfloat16)
    x = model.preprocess(image)
    assert torch.equal(x, model.preprocess(image.float()))
    assert sl.data.images.as_rgb_image(image).size == (64, 64)
