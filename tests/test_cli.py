"""The `saliencelab` command line and the explain pipeline behind it (`report/run.py`).

A tiny CNN from a factory file keeps these fast; one test runs the real EfficientNet-Lite0 demo
on one sample photo.
"""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

import saliencelab as sl
from saliencelab.cli import app, parse_options, parse_target, parse_value
from saliencelab.report.run import estimated_passes, explain_images, method_requests

LABELS = ["cat", "dog", "bird", "fish", "frog"]

FACTORY = textwrap.dedent(
    """
    import numpy as np
    import torch
    from torch import nn

    import saliencelab as sl

    LABELS = ["cat", "dog", "bird", "fish", "frog"]


    class TinyCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1), nn.ReLU()
            )
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(6, len(LABELS))

        def forward(self, x):
            return self.fc(self.pool(self.features(x)).flatten(1))


    def preprocess(images):
        images = images if isinstance(images, (list, tuple)) else [images]
        if any(im.width == 13 for im in images):
            raise sl.SaliencelabError("Images 13 pixels wide are unlucky; resize them.")
        arrays = [np.asarray(im.convert("RGB").resize((32, 32)), np.float32) / 255 for im in images]
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


    def build():
        torch.manual_seed(0)
        return sl.Model(TinyCNN().eval(), preprocess=preprocess, labels=LABELS, name="tiny")
    """
)


@pytest.fixture
def tiny(tmp_path) -> str:
    path = tmp_path / "tiny.py"
    path.write_text(FACTORY)
    return f"{path}:build"


def photo(path, size=(40, 30), seed=0):
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def flat(text: str) -> str:
    """Table text without whitespace and box lines (cells may wrap)."""
    return "".join(ch for ch in text if not ch.isspace() and ch not in "│┃")


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error:")]


def test_explain_writes_overlays_gallery_maps_and_index(runner, tiny, tmp_path):
    a, b = photo(tmp_path / "in" / "a.png"), photo(tmp_path / "in" / "b.jpg", seed=1)
    out = tmp_path / "out"
    args = ["explain", str(a), str(b), "--model", tiny, "-m", "saliency,gradcam", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    for stem in ("a", "b"):
        for name in ("saliency", "gradcam", "gallery"):
            assert Image.open(out / f"{stem}_{name}.png").size[0] > 0
    with np.load(out / "maps.npz") as maps:
        assert sorted(maps.files) == sorted(
            f"{s}/{k}" for s in ("a", "b") for k in ("saliency", "gradcam", "target", "image")
        )
        assert str(maps["b/image"]) == str(b)
        assert maps["a/saliency"].shape == (32, 32) and maps["a/saliency"].dtype == np.float32
        assert maps["b/gradcam"].shape == (32, 32)
        assert maps["a/target"].dtype == np.int64 and 0 <= int(maps["a/target"]) < len(LABELS)
    html = (out / "index.html").read_text(encoding="utf-8")
    assert "a.png" in html and "b.jpg" in html and 'src="a_gallery.png"' in html
    assert "maps.npz" in html
    # The table: images, predictions, methods, passes; and where the report is.
    assert "saliency" in result.stdout and "gradcam" in result.stdout
    assert any(label in result.stdout for label in LABELS)
    assert "passes" in result.stdout and str(out / "index.html") in result.stdout
    assert "using layer features" in result.stderr  # the engine's INFO log, shown once
    assert result.stderr.count("using layer") == 1


def test_explain_expands_folders_and_passes_options(runner, tiny, tmp_path):
    photo(tmp_path / "in" / "x.png")
    photo(tmp_path / "in" / "y.png", seed=2)
    (tmp_path / "in" / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    args = ["explain", str(tmp_path / "in"), "--model", tiny, "--out", str(out)]
    args += ["-m", "saliency,integrated_gradients", "--option", "n_steps=4", "--chunk-size", "3"]
    args += ["--target", "dog", "--embed"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (out / "x_integrated_gradients.png").exists() and (out / "y_gallery.png").exists()
    assert not (out / "notes_saliency.png").exists()
    assert "target" in result.stdout and "dog" in result.stdout
    html = (out / "index.html").read_text(encoding="utf-8")
    assert "data:image/png;base64," in html  # --embed
    with np.load(out / "maps.npz") as maps:
        assert int(maps["x/target"]) == LABELS.index("dog")


def test_bad_image_among_good_ones_is_reported_and_the_rest_written(runner, tiny, tmp_path):
    good = photo(tmp_path / "good.png")
    broken = tmp_path / "broken.png"
    broken.write_text("this is not a PNG")
    out = tmp_path / "out"
    args = ["explain", str(good), str(tmp_path / "missing.jpg"), str(broken), "--model", tiny]
    result = runner.invoke(app, args + ["-m", "saliency", "--out", str(out)])
    assert result.exit_code == 2
    assert (out / "good_saliency.png").exists() and (out / "good_gallery.png").exists()
    assert "Traceback" not in result.output
    errors = error_lines(result.stderr)
    assert len(errors) == 2
    assert "missing.jpg" in errors[0] and "does not exist" in errors[0]
    assert "broken.png" in errors[1] and "not an image" in errors[1]
    assert "missing.jpg" in flat(result.stdout) and "failed" in result.stdout  # in the table
    html = (out / "index.html").read_text(encoding="utf-8")
    assert html.count('class="card error"') == 2 and "good.png" in html
    with np.load(out / "maps.npz") as maps:
        assert sorted(maps.files) == ["good/image", "good/saliency", "good/target"]


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["-m", "gradcm"], "Unknown method 'gradcm'. Did you mean: gradcam"),
        (["-m", "gradcam", "--layer", "features.9"], "has no layer named 'features.9'"),
        (["-m", "saliency", "--target", "7"], "out of range"),
        (["-m", "saliency", "--target", "zebra"], "no class named 'zebra'"),
        (["-m", "saliency", "--option", "n_stepz=3"], "No requested method takes the option"),
        (["-m", "saliency", "--option", "n_steps"], "is not of the form key=value"),
        (["-m", "saliency", "--layer", "features"], "none of the methods saliency uses one"),
        (["-m", "saliency", "--device", "tpu9"], "Unknown device"),
        (["-m", "saliency", "--out", "{tmp}/a.png"], "Cannot create the output folder"),
    ],
)
def test_request_errors_are_one_sentence_and_exit_2(runner, tiny, tmp_path, extra, needle):
    a, b = photo(tmp_path / "a.png"), photo(tmp_path / "b.png", seed=1)
    out = tmp_path / "out"
    extra = [arg.replace("{tmp}", str(tmp_path)) for arg in extra]
    result = runner.invoke(
        app, ["explain", str(a), str(b), "--model", tiny, "--out", str(out), *extra]
    )
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = error_lines(result.stderr)
    assert len(errors) == 1 and needle in errors[0], result.stderr
    assert not (out / "a_gallery.png").exists()


def test_layer_error_points_to_the_layers_command(runner, tiny, tmp_path):
    args = ["explain", str(photo(tmp_path / "a.png")), "--model", tiny, "-m", "gradcam"]
    result = runner.invoke(app, args + ["--layer", "nope", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "saliencelab layers" in result.stderr


def test_unknown_model_and_unknown_sample_name(runner, tmp_path):
    result = runner.invoke(app, ["explain", "chelsea", "--model", "resnet9000", "-m", "saliency"])
    assert result.exit_code == 2 and "Unknown model 'resnet9000'" in error_lines(result.stderr)[0]
    result = runner.invoke(app, ["layers", "--image", "chelsaa"])
    assert result.exit_code == 2


def test_debug_shows_the_traceback(runner, tiny, tmp_path):
    args = ["explain", str(photo(tmp_path / "a.png")), "--model", tiny, "-m", "saliency"]
    args += ["--target", "7", "--out", str(tmp_path / "o")]
    for result in (
        runner.invoke(app, ["--debug", *args]),
        runner.invoke(app, [*args, "--debug"]),
        runner.invoke(app, args, env={"SALIENCELAB_DEBUG": "1"}),
    ):
        assert result.exit_code == 2
        assert "Traceback (most recent call last)" in result.stderr
        assert "SaliencelabError" in result.stderr
        assert len(error_lines(result.stderr)) == 1


def test_usage_errors_keep_typer_exit_code(runner):
    result = runner.invoke(app, ["explain"])
    assert result.exit_code == 2
    result = runner.invoke(app, ["explain", "x.png", "--chunk-size", "0"])
    assert result.exit_code == 2


def test_methods_lists_registered_methods(runner):
    result = runner.invoke(app, ["methods"])
    assert result.exit_code == 0
    for spec in sl.methods():
        assert spec.name in result.stdout
    assert "gradient" in result.stdout and "cam" in result.stdout and "layer=auto" in result.stdout


def test_methods_shows_the_allowed_values_from_the_methods_constants(runner):
    from saliencelab.methods.cam.common import FUSIONS
    from saliencelab.methods.perturbation.features import BASELINES, FEATURE_KINDS
    from saliencelab.methods.relevance.lrp import PRESETS

    result = runner.invoke(app, ["methods"])
    assert result.exit_code == 0, result.output
    text = flat(result.stdout)
    assert flat("composite: " + " | ".join(map(repr, PRESETS))) in text
    assert flat(f"fusion: {' | '.join(map(repr, FUSIONS))}") in text
    assert flat(" | ".join(map(repr, BASELINES)) + " | a number | a tensor") in text
    assert flat(" | ".join(map(repr, FEATURE_KINDS))) in text
    assert "composite='epsilon_plus'" in text and "layer=auto" in text  # the defaults stay


def test_methods_name_shows_one_method_in_detail(runner):
    from saliencelab.methods.relevance.lrp import PRESETS

    result = runner.invoke(app, ["methods", "lrp", "occlusion"])
    assert result.exit_code == 0, result.output
    text = flat(result.stdout)
    assert "allowedvalues" in text and all(repr(p) in text for p in PRESETS)
    assert flat("'zero' | 'blur' | 'mean' | a number") in text  # occlusion's baseline
    assert flat("Layer-wise relevance propagation") in text and "Occlusion" in text
    result = runner.invoke(app, ["methods", "lpr"])
    assert result.exit_code == 2 and result.stdout == ""
    assert error_lines(result.stderr) == [
        "error: Unknown method 'lpr'. Did you mean: lrp? Run `saliencelab methods` to list them."
    ]


def test_every_option_named_by_a_string_lists_its_allowed_values():
    """An option whose default is a name gets its allowed values declared (`register(choices=...)`)
    and shown, the default among them."""
    from saliencelab.cli import accepted_values

    for spec in sl.methods():
        assert set(spec.choices) <= set(spec.options), spec.name
        for option, default in spec.options.items():
            allowed = accepted_values(spec, option)
            assert allowed == " | ".join(spec.choices.get(option, ())), f"{spec.name}.{option}"
            if isinstance(default, str):
                assert allowed, f"{spec.name}.{option}"
                assert repr(default) in spec.choices[option] or option == "base", (
                    f"{spec.name}.{option}"
                )


def test_models_lists_the_zoo(runner):
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0
    assert "efficientnet_lite0" in result.stdout and "file.py:build" in result.stdout


def test_layers_lists_names_shapes_and_the_default(runner, tiny, tmp_path):
    result = runner.invoke(app, ["layers", tiny])
    assert result.exit_code == 0, result.output
    for name in ("features.0", "features.3", "pool", "fc"):
        assert name in result.stdout
    assert "(1, 6, 32, 32)" in result.stdout and "(1, 5)" in result.stdout
    assert "default" in result.stdout and "CAM methods use features" in result.stdout
    result = runner.invoke(
        app, ["layers", tiny, "--spatial", "--image", str(photo(tmp_path / "p.png"))]
    )
    assert result.exit_code == 0 and "fc" not in result.stdout.replace("features", "")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_layers_of_a_torchscript_file_explains_why_no_shapes(runner, tmp_path, tiny_cnn):
    import torch

    path = tmp_path / "tiny.ts"
    torch.jit.trace(tiny_cnn, torch.zeros(1, 3, 16, 16)).save(str(path))
    result = runner.invoke(app, ["layers", str(path)])
    assert result.exit_code == 0, result.output
    assert "features.0" in result.stdout and "compiledgraph" in flat(result.stdout)


def test_demo_with_efficientnet_on_one_sample(runner, tmp_path):
    out = tmp_path / "demo"
    result = runner.invoke(
        app,
        [
            "demo",
            "--out",
            str(out),
            "--methods",
            "saliency,gradcam",
            "--images",
            "chelsea",
            "--no-evaluate",
        ],
    )
    assert result.exit_code == 0, result.output
    assert not (out / "evaluation").exists()
    for name in ("chelsea_gallery.png", "chelsea_saliency.png", "chelsea_gradcam.png"):
        assert (out / name).exists()
    assert "Egyptian cat" in result.stdout or "tabby" in result.stdout
    assert "using layer _head_act" in result.stderr
    with np.load(out / "maps.npz") as maps:
        assert maps["chelsea/gradcam"].shape == (224, 224)
    assert "index.html" in result.stdout


def test_demo_evaluation_scores_methods_and_references(runner, tmp_path, monkeypatch):
    import json

    import saliencelab.cli as cli

    monkeypatch.setattr(cli, "DEMO_EVAL_METHODS", {"gradcam": {}})
    monkeypatch.setattr(cli, "DEMO_EVAL_METRICS", {"deletion": {"steps": 2}, "sparseness": {}})
    out = tmp_path / "demo"
    result = runner.invoke(
        app, ["demo", "--out", str(out), "--methods", "gradcam", "--images", "chelsea"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads((out / "evaluation" / "metrics.json").read_text())
    assert set(data["results"]) == {"gradcam", "random", "center_gaussian", "sobel"}
    assert set(data["results"]["gradcam"]) == {"deletion", "sparseness"}
    assert (out / "evaluation" / "curves" / "deletion.png").exists()
    assert "deletion" in result.stdout and "sparseness" in result.stdout


def test_demo_without_evaluation_names_an_earlier_evaluation(runner, tmp_path):
    out = tmp_path / "demo"
    (out / "evaluation").mkdir(parents=True)
    (out / "evaluation" / "metrics.csv").write_text("method,metric\n")
    args = ["demo", "--out", str(out), "--methods", "saliency", "--images", "chelsea"]
    result = runner.invoke(app, [*args, "--no-evaluate"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.stderr.split())
    assert f"note: {out / 'evaluation'} holds an earlier run's evaluation; this run scored" in text
    assert "evaluation/index.html" not in (out / "index.html").read_text()


# -- the pipeline as a library ------------------------------------------------------------------


def _tiny_model(tmp_path, tiny):
    return sl.load_model(tiny)


def test_explain_images_rows_progress_and_errors(tmp_path, tiny):
    model = _tiny_model(tmp_path, tiny)
    calls = []
    result = explain_images(
        model,
        [photo(tmp_path / "a.png"), tmp_path / "nope.png", Image.new("RGB", (20, 20), "red")],
        "saliency,gradcam",
        tmp_path / "out",
        progress=lambda done, total, what: calls.append((done, total, what)),
    )
    assert result.n_images == 2 and not result.ok
    assert [name for name, _ in result.errors] == [str(tmp_path / "nope.png")]
    assert [r["method"] for r in result.rows if "method" in r] == ["saliency", "gradcam"] * 2
    assert {"image", "predicted", "probability", "passes", "seconds"} <= set(result.rows[0])
    assert result.rows[2] == {"image": str(tmp_path / "nope.png"), "error": result.errors[0][1]}
    assert (tmp_path / "out" / "image-3_gallery.png").exists()
    done = [c[0] for c in calls]
    assert done == sorted(done) and calls[-1][0] == calls[-1][1]


def test_a_run_that_explains_nothing_leaves_no_earlier_maps_behind(tmp_path, tiny):
    """The folder's maps.npz is this run's: a later failed run into the same folder removes the
    earlier run's, which its report would not mention (was left, as if this run wrote it)."""
    model = _tiny_model(tmp_path, tiny)
    out = tmp_path / "out"
    first = explain_images(model, [photo(tmp_path / "a.png")], "saliency", out)
    assert first.maps_path == out / "maps.npz" and first.maps_path.is_file()
    again = explain_images(model, [tmp_path / "nope.png"], "saliency", out)
    assert again.n_images == 0 and again.maps_path is None
    assert not (out / "maps.npz").exists()


def test_maps_npz_is_always_a_whole_file(tmp_path, tiny):
    """maps.npz was written in place: an interrupted run left half a zip (np.load failed on
    it). The arrays now go to a temporary file moved over it when the run ends; a run stopped
    after writing maps leaves neither that nor the earlier run's file (its page would pass them
    off as its own), and one stopped before any map leaves the folder as it was."""
    model = _tiny_model(tmp_path, tiny)
    out = tmp_path / "out"
    images = [photo(tmp_path / f"{i}.png", seed=i) for i in range(3)]
    explain_images(model, images[:1], "saliency", out)
    with np.load(out / "maps.npz") as maps:
        assert sorted(maps.files) == ["0/image", "0/saliency", "0/target"]

    def stop(done, total, what):  # the user presses Ctrl-C while image 2 is written
        if what.startswith("writing") and what.endswith("2.png"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        explain_images(model, images, "saliency", out, progress=stop, batch_images=1)
    assert not (out / "maps.npz").exists()
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]

    explain_images(model, images[:1], "saliency", out)
    with pytest.raises(sl.SaliencelabError):  # refused before any map: the folder is kept
        explain_images(model, images, "no_such_method", out)
    with np.load(out / "maps.npz") as maps:
        assert sorted(maps.files) == ["0/image", "0/saliency", "0/target"]


def test_a_reused_out_folder_names_the_files_an_earlier_run_left(runner, tiny, tmp_path):
    """Nothing is deleted (they may be wanted), but the earlier run's overlays are named so they
    are not taken for this run's; a user's own files (a .txt) are not listed."""
    a = photo(tmp_path / "in" / "a.png")
    out = tmp_path / "out"
    common = ["explain", str(a), "--model", tiny, "--out", str(out)]
    first = runner.invoke(app, [*common, "-m", "saliency,gradcam"])
    assert first.exit_code == 0 and "note:" not in first.output, first.output
    (out / "notes.txt").write_text("mine")
    second = runner.invoke(app, [*common, "-m", "saliency"])
    assert second.exit_code == 0, second.output
    note = [line for line in second.output.splitlines() if line.startswith("note:")]
    assert len(note) == 1 and "1 file this run did not write (a_gradcam.png)" in note[0]
    assert (out / "a_gradcam.png").exists()  # kept
    again = runner.invoke(app, [*common, "-m", "saliency,gradcam"])
    assert again.exit_code == 0 and "note:" not in again.output, again.output


def test_an_image_failing_inside_the_batch_is_isolated(tmp_path, tiny):
    model = _tiny_model(tmp_path, tiny)
    images = [photo(tmp_path / "a.png"), photo(tmp_path / "odd.png", size=(13, 20))]
    images.append(photo(tmp_path / "c.png", seed=5))
    result = explain_images(model, images, "saliency", tmp_path / "out")
    assert result.n_images == 2
    assert result.errors == [(str(images[1]), "Images 13 pixels wide are unlucky; resize them.")]
    assert (tmp_path / "out" / "c_gallery.png").exists()
    assert not (tmp_path / "out" / "odd_gallery.png").exists()


def test_explain_images_raises_request_errors(tmp_path, tiny):
    model = _tiny_model(tmp_path, tiny)
    images = [photo(tmp_path / "a.png"), photo(tmp_path / "b.png", seed=3)]
    with pytest.raises(sl.SaliencelabError, match="out of range"):
        explain_images(model, images, ["saliency"], tmp_path / "out", target=11)
    with pytest.raises(sl.SaliencelabError, match="Unknown method"):
        explain_images(model, images, ["nope"], tmp_path / "out")


def test_explain_images_same_stem_twice(tmp_path, tiny):
    model = _tiny_model(tmp_path, tiny)
    images = [photo(tmp_path / "a" / "x.png"), photo(tmp_path / "b" / "x.png", seed=4)]
    result = explain_images(model, images, "saliency", tmp_path / "out")
    assert result.ok
    with np.load(tmp_path / "out" / "maps.npz") as maps:
        assert {"x/saliency", "x-2/saliency"} <= set(maps.files)


def test_option_parsing():
    assert parse_value("32") == 32 and parse_value("0.5") == 0.5
    assert parse_value("true") is True and parse_value("No") is False
    assert parse_value("none") is None and parse_value("_head_act") == "_head_act"
    assert parse_options(["n_steps=32", "smoothgrad.noise_level=0.1"]) == {
        "n_steps": 32,
        "smoothgrad.noise_level": 0.1,
    }
    assert parse_target("3") == 3 and parse_target("tabby cat") == "tabby cat"
    assert parse_target(None) is None


def test_method_requests_routes_options():
    req = method_requests(["saliency", "gradcam"], layer="x", options={"absolute": False})
    assert req == {"saliency": {"absolute": False}, "gradcam": {"layer": "x"}}
    req = method_requests("saliency,gradcam", options={"gradcam.relu": False})
    assert req == {"saliency": {}, "gradcam": {"relu": False}}
    with pytest.raises(sl.SaliencelabError, match="not requested"):
        method_requests(["saliency"], options={"gradcam.relu": False})
    with pytest.raises(sl.SaliencelabError, match="has no option"):
        method_requests(["saliency"], options={"saliency.relu": False})
    assert estimated_passes("saliency") == 1


# -- the shared command plumbing (cli_common) ------------------------------------------------------

COMMANDS = ("explain", "neurons", "explain-text", "visualize", "evaluate")


def _command_functions():
    from saliencelab.featurevis.commands import visualize_command
    from saliencelab.metrics.commands import evaluate_command
    from saliencelab.neurons.commands import neurons
    from saliencelab.text.commands import explain_text

    return [cli_explain(), neurons, explain_text, visualize_command, evaluate_command]


def cli_explain():
    from saliencelab import cli

    return cli.explain


def test_commands_declare_the_shared_options_once():
    """--debug and --device come from cli_common in every command (one declaration)."""
    import typing

    from saliencelab import cli_common

    for fn in _command_functions():
        hints = typing.get_type_hints(fn, include_extras=True)
        assert hints["debug"] == cli_common.DebugOption, fn.__name__
        assert hints["device"] == cli_common.DeviceOption, fn.__name__
    hints = typing.get_type_hints(cli_explain(), include_extras=True)
    assert hints["model"] == cli_common.ModelOption and hints["out"] == cli_common.OutOption


def test_command_modules_use_cli_common_not_cli():
    import inspect

    from saliencelab.featurevis import commands as featurevis
    from saliencelab.metrics import commands as metrics
    from saliencelab.neurons import commands as neurons
    from saliencelab.text import commands as text

    for module in (featurevis, metrics, neurons, text):
        source = inspect.getsource(module)
        assert "from ..cli import" not in source and "saliencelab.cli " not in source
        assert "from ..cli_common import" in source


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_the_shared_options(runner, command):
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0, result.output
    for flag in ("--debug", "--device"):
        assert flag in result.stdout


def test_evaluate_is_registered_with_its_options(runner):
    result = runner.invoke(app, ["evaluate", "--help"])
    assert result.exit_code == 0
    for flag in ("--metrics", "--masks", "--steps", "--option", "--method-option"):
        assert flag in result.stdout
    assert "--no-references" in result.stdout and "--batch-size" in result.stdout


@pytest.mark.parametrize(
    "extra,words",
    [
        (["--option", "deletion.steps=0"], "steps must be a positive integer for deletion"),
        (["--option", "steps=0"], "steps must be a positive integer"),
        (["--option", "deletion.baseline=gray"], "baseline"),
        (["--option", "deletion.stpes=5"], "has no option 'stpes'"),
        (["--metrics", "deletoin"], "No metric named 'deletoin'"),
        (["--metrics", "deletion", "--option", "window=3"], "No requested metric takes"),
        (["--metrics", "pointing_game"], "needs ground-truth masks"),
        (["--methods", "gradcma"], "Unknown method 'gradcma'"),
    ],
)
def test_evaluate_checks_metrics_before_loading_or_explaining(
    runner, tiny, tmp_path, monkeypatch, extra, words
):
    """A bad metric request fails in one sentence before the model is loaded or explained
    (`using layer ...` was printed, the explanation having run, before the error)."""
    from saliencelab import cli_common
    from saliencelab.metrics import commands

    calls: list[str] = []

    def record(name, fn):
        def wrapper(*args, **kwargs):
            calls.append(name)
            return fn(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(commands, "load_model", record("load_model", cli_common.load_model))
    monkeypatch.setattr(sl, "explain", record("explain", sl.explain))
    image = photo(tmp_path / "in" / "a.png")
    args = ["evaluate", str(image), "--model", tiny, "--methods", "gradcam", "--metrics"]
    args += ["deletion", "--out", str(tmp_path / "eval"), "--no-references", *extra]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and words in lines[0], result.stderr
    assert "using layer" not in result.stderr and calls == []
    assert not (tmp_path / "eval").exists()


def test_global_debug_reaches_the_registered_commands(runner, tiny, tmp_path):
    args = ["neurons", str(tmp_path / "nothing.png"), "--model", tiny, "--out", str(tmp_path)]
    result = runner.invoke(app, ["--debug", *args])
    assert result.exit_code == 2
    assert "Traceback (most recent call last)" in result.stderr
    assert len(error_lines(result.stderr)) == 1 and "neither an image" in result.stderr
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "Traceback" not in result.stderr


def test_option_errors_name_the_flag_they_came_from():
    from saliencelab.cli_common import parse_options

    with pytest.raises(sl.SaliencelabError, match="--option n_steps=32 or --option"):
        parse_options(["n_steps"])
    with pytest.raises(sl.SaliencelabError, match="write e.g. --method-option a=1 or"):
        parse_options(["x"], flag="--method-option", examples=("a=1", "m.a=1"))


def test_option_values_keep_their_types():
    from saliencelab.cli_common import split

    for text, expected in [
        ("32", 32),
        ("-4", -4),
        ("0.5", 0.5),
        ("1e-3", 1e-3),
        ("2E3", 2000.0),
        ("TRUE", True),
        (" yes ", True),
        ("on", True),
        ("off", False),
        ("None", None),
        ("null", None),
        ("tabby cat", "tabby cat"),
    ]:
        got = parse_value(text)
        assert got == expected and type(got) is type(expected), (text, got)
    assert parse_options([" n_steps = 8 ", "gradcam.relu=false", "name=a=b"]) == {
        "n_steps": 8,
        "gradcam.relu": False,
        "name": "a=b",
    }
    assert split(" saliency, gradcam,,  ig ") == ["saliency", "gradcam", "ig"]


def test_targets_are_indices_only_when_they_are_integers():
    for text, expected in [("3", 3), ("-1", -1), ("+2", 2), (" 7 ", 7)]:
        got = parse_target(text)
        assert got == expected and type(got) is int, (text, got)
    for text in ["tabby cat", "3.5", "7 up", "n01440764"]:
        assert parse_target(text) == text


def test_collect_images_reads_folders_by_suffix_sorted_skipping_hidden(tmp_path):
    from saliencelab.cli_common import collect_images

    folder = tmp_path / "imgs"
    for name in ["b.PNG", "a.jpg", "c.Jpeg", ".hidden.png", "notes.txt"]:
        photo(folder / name) if name != "notes.txt" else (folder / name).write_text("x")
    photo(folder / "sub" / "deep.png")
    items = collect_images([str(folder), str(tmp_path / "missing.png")])
    assert [i.name for i in items[:3]] == [str(folder / n) for n in ["a.jpg", "b.PNG", "c.Jpeg"]]
    assert len(items) == 4 and items[3].load() is None and "does not exist" in items[3].error
    deep = sl.image_paths(folder, recursive=True)
    assert folder / "sub" / "deep.png" in deep and len(deep) == 4


def test_loaded_images_are_upright_rgb_with_transparency_on_white(tmp_path):
    from saliencelab.cli_common import collect_images

    # EXIF orientation 6: the camera was turned, the stored 4x2 pixels are shown rotated 90° CW.
    stored = np.zeros((2, 4, 3), np.uint8)
    stored[0, 0] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "turned.png", exif=exif)
    # 20% opaque red over white: (255, 0.8 * 255, 0.8 * 255); gray 77 stays gray.
    Image.new("RGBA", (3, 3), (255, 0, 0, 51)).save(tmp_path / "glass.png")
    Image.new("L", (3, 3), 77).save(tmp_path / "gray.png")
    # 16-bit gray is stretched from its own min..max: (v - 1000) * 255 / 1000.
    deep = np.array([[1000, 1200], [1600, 2000]], np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    names = ["turned.png", "glass.png", "gray.png", "deep.png"]
    items = collect_images([str(tmp_path / n) for n in names])
    turned, glass, gray, deep_rgb = (np.asarray(item.load()) for item in items)
    assert (deep_rgb == np.array([[0, 51], [153, 255]])[..., None]).all()
    np.testing.assert_array_equal(turned, np.rot90(stored, k=-1))  # 90° clockwise
    assert glass.shape == (3, 3, 3) and (glass == (255, 204, 204)).all()
    assert gray.shape == (3, 3, 3) and (gray == 77).all()


def test_results_written_to_a_pipe_are_laid_out_120_columns_wide(monkeypatch, capsys):
    """rich lays out a non-terminal at 80 columns, which wrapped "center_gaussian (ref)" in the
    evaluation table of a piped run; COLUMNS, when set, still wins."""
    from rich.table import Table

    from saliencelab.cli_common import PIPED_WIDTH, out_console

    def printed(columns: str | None) -> list[str]:
        if columns is None:
            monkeypatch.delenv("COLUMNS", raising=False)
        else:
            monkeypatch.setenv("COLUMNS", columns)
        table = Table()
        for name in ("metric", "method", "mean", "95% CI", "n", "direction"):
            table.add_column(name, no_wrap=name != "method", overflow="fold")
        table.add_row(
            "faithfulness_correlation",
            "center_gaussian (ref)",
            "0.3993",
            "[0.3993, 0.3993]",
            "5",
            "higher",
        )
        out_console().print(table)
        return capsys.readouterr().out.splitlines()

    assert PIPED_WIDTH == 120
    assert any("center_gaussian (ref)" in line for line in printed(None))
    narrow = printed("60")
    assert max(map(len, narrow)) <= 60
    assert not any("center_gaussian (ref)" in line for line in narrow)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("3", 3),
        ("tabby cat", "tabby cat"),
        ("channel:features.2:4", ("channel", "features.2", 4, None, None)),
        ("Channel: _blocks.12 : 7", ("channel", "_blocks.12", 7, None, None)),
        ("neuron:features.2:4", ("neuron", "features.2", 4, None, None)),
        ("neuron:features.2:4:5:6", ("neuron", "features.2", 4, 5, 6)),
    ],
)
def test_explain_targets_parse_classes_channels_and_neurons(text, expected):
    from saliencelab.cli_common import parse_explain_target
    from saliencelab.neurons import ChannelTarget, NeuronTarget

    got = parse_explain_target(text)
    if isinstance(expected, tuple):
        kind, layer, c, y, x = expected
        assert isinstance(got, ChannelTarget if kind == "channel" else NeuronTarget)
        assert (got.layer, got.channel) == (layer, c)
        assert kind == "channel" or (got.y, got.x) == (y, x)
    else:
        assert got == expected


@pytest.mark.parametrize(
    "text", ["channel:features.2", "channel::4", "channel:features.2:a", "neuron:f:1:2"]
)
def test_malformed_channel_and_neuron_targets_are_one_sentence(runner, tiny, tmp_path, text):
    args = ["explain", str(photo(tmp_path / "a.png")), "--model", tiny, "--target", text]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert error_lines(result.output) == [
        next(line for line in result.output.splitlines() if line.startswith("error: --target"))
    ]
    # the example is of the form asked for (a neuron's message used to show a channel's)
    example = "e.g. neuron:_blocks.12:7" if text.startswith("neuron") else "e.g. channel:_blocks."
    assert example in result.output


def test_explain_a_channel_from_the_shell(runner, tiny, tmp_path):
    """--target channel:LAYER:C explains the channel's mean activation: the table gives its
    reading (checked against a forward hook), and Grad-CAM runs at the target's own layer."""
    a = photo(tmp_path / "a.png")
    args = ["explain", str(a), "--model", tiny, "-m", "saliency,gradcam", "--out", str(tmp_path)]
    result = runner.invoke(app, [*args, "--target", "channel:features.2:4"])
    assert result.exit_code == 0, result.output
    model = sl.load_model(tiny)
    seen = {}
    handle = model.module.features[2].register_forward_hook(lambda m, i, o: seen.setdefault("a", o))
    with torch.no_grad():
        model.module(model.preprocess(Image.open(a)))
    handle.remove()
    reading = float(seen["a"][0, 4].mean())
    assert f"channel 4 of features.2: {reading:.3g}" in result.output
    with np.load(tmp_path / "maps.npz") as maps:
        assert maps["a/gradcam"].shape == (32, 32)


@pytest.mark.parametrize(
    ("command", "shown"),
    [
        ("visualize", "[default: the model's input size, else 224]"),
        ("visualize", "[default: per --param]"),
        ("neurons", "[default: the model's]"),
        ("neurons", "[default: the predicted class]"),
    ],
)
def test_defaults_written_in_an_options_help_are_shown(runner, command, shown):
    """Rich read "[default: ...]" in a help text as markup and dropped it ("(16-1024) .")."""
    result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "300"})
    assert result.exit_code == 0 and shown in " ".join(result.output.split())
