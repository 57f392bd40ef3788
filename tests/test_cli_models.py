"""Session-8 CLI fixes: models without preprocessing (--input-size, --normalize, --weights,
--trust-pickle), --max-pixels, --device on every model command, the demo's evaluation choice and
link, tables that wrap between words, and the visualize table next to the examples figure."""

from __future__ import annotations

import typing

import numpy as np
import pytest
import torch
from conftest import CNN_FACTORY
from PIL import Image
from rich.console import Console
from rich.table import Table

from saliencelab import cli_common
from saliencelab.cli import app, demo_eval_methods, layers
from saliencelab.models.square import SquarePreprocess
from saliencelab.report.html import write_figures_page, write_index

PLAIN = CNN_FACTORY


@pytest.fixture
def plain(tmp_path) -> str:
    path = tmp_path / "plain.py"
    path.write_text(PLAIN)
    return f"{path}:build"


def photo(path, size=(40, 30)):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return str(path)


def one_line(text: str) -> str:
    return " ".join(text.split())


def test_plain_module_needs_input_size_and_gets_it(runner, plain, tmp_path):
    img = photo(tmp_path / "a.png")
    bare = runner.invoke(app, ["explain", img, "--model", plain, "-m", "saliency", "-o", "x"])
    assert bare.exit_code == 2 and "--input-size N" in one_line(bare.stderr)
    out = tmp_path / "out"
    args = ["explain", img, "--model", plain, "-m", "saliency,gradcam", "-o", str(out)]
    ok = runner.invoke(app, [*args, "--input-size", "16", "--normalize", "imagenet"])
    assert ok.exit_code == 0, ok.output
    with np.load(out / "maps.npz") as maps:
        assert maps["a/saliency"].shape == (16, 16)  # the map is at the input size
    assert Image.open(out / "a_saliency.png").size == (16, 16)  # drawn on the model's view


def test_square_preprocess_crops_resizes_and_normalizes():
    mean, std = cli_common.parse_normalize("0.5,0.25")
    pre = SquarePreprocess(8, mean, std, divisor=255.0)  # as load_model builds it
    img = Image.new("RGB", (30, 10), (255, 0, 0))
    x = pre([img, img])
    assert x.shape == (2, 3, 8, 8) and x.dtype == torch.float32
    assert torch.allclose(x[:, 0], torch.full((2, 8, 8), (1.0 - 0.5) / 0.25))
    assert torch.allclose(x[:, 1], torch.full((2, 8, 8), -2.0))
    assert cli_common.parse_normalize("none") is None
    assert cli_common.parse_normalize("imagenet") == cli_common.IMAGENET_MEAN_STD
    six = cli_common.parse_normalize("0.1,0.2,0.3,1,2,3")
    assert six == ((0.1, 0.2, 0.3), (1.0, 2.0, 3.0))


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--normalize", "imagenet"], "--normalize goes with --input-size"),
        (["--input-size", "8", "--normalize", "bogus"], "--normalize 'bogus' is not understood"),
        (["--input-size", "8", "--normalize", "0.5,0"], "positive standard deviations"),
    ],
)
def test_normalize_errors_are_one_sentence(runner, plain, tmp_path, extra, needle):
    img = photo(tmp_path / "a.png")
    result = runner.invoke(app, ["explain", img, "--model", plain, "-o", str(tmp_path), *extra])
    assert result.exit_code == 2 and needle in one_line(result.stderr)


def test_weights_and_trust_pickle_reach_load_model(runner, plain, tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("plain_cnn", plain.rpartition(":")[0])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(3)
    trained = module.CNN()
    torch.save(trained.state_dict(), tmp_path / "w.pt")
    loaded = cli_common.load_model(plain, "cpu", weights=tmp_path / "w.pt")
    assert torch.equal(loaded.module.fc.weight, trained.fc.weight)

    whole = torch.nn.Sequential(
        torch.nn.Conv2d(3, 2, 3), torch.nn.Flatten(), torch.nn.LazyLinear(2)
    )
    whole(torch.zeros(1, 3, 8, 8))
    torch.save(whole, tmp_path / "whole.pt")
    img = photo(tmp_path / "a.png")
    args = ["explain", img, "--model", str(tmp_path / "whole.pt"), "-m", "saliency"]
    args += ["--input-size", "8", "-o", str(tmp_path / "o")]
    refused = runner.invoke(app, args)
    assert refused.exit_code == 2 and "trust_pickle" in one_line(refused.stderr)
    trusted = runner.invoke(app, [*args, "--trust-pickle"])
    assert trusted.exit_code == 0, trusted.output


def test_max_pixels_is_an_option_and_the_message_names_it(runner, tmp_path):
    img = photo(tmp_path / "a.png", size=(20, 20))
    args = ["explain", img, "--model", "shapes_cnn", "-m", "saliency", "-o", str(tmp_path / "o")]
    refused = runner.invoke(app, [*args, "--max-pixels", "100"])
    assert refused.exit_code == 2
    assert "--max-pixels" in one_line(refused.stderr) and "400 pixels" in one_line(refused.stderr)
    assert runner.invoke(app, [*args, "--max-pixels", "400"]).exit_code == 0


@pytest.mark.parametrize(
    "command", ["explain", "layers", "demo", "evaluate", "neurons", "visualize"]
)
def test_model_commands_take_device_and_the_model_options(runner, command):
    import saliencelab.cli as cli
    from saliencelab.featurevis.commands import visualize_command
    from saliencelab.metrics.commands import evaluate_command
    from saliencelab.neurons.commands import neurons

    fn = {
        "explain": cli.explain,
        "layers": layers,
        "demo": cli.demo,
        "evaluate": evaluate_command,
        "neurons": neurons,
        "visualize": visualize_command,
    }[command]
    hints = typing.get_type_hints(fn, include_extras=True)
    assert hints["device"] == cli_common.DeviceOption  # one declaration, shared
    if command != "demo":
        assert hints["input_size"] == cli_common.InputSizeOption
        assert hints["normalize"] == cli_common.NormalizeOption
        assert hints["weights"] == cli_common.WeightsOption
        assert hints["trust_pickle"] == cli_common.TrustPickleOption
    if command in ("explain", "layers", "demo", "evaluate", "neurons"):
        assert hints["max_pixels"] == cli_common.MaxPixelsOption
    assert "--device" in runner.invoke(app, [command, "--help"]).stdout


def test_layers_probes_a_plain_module_with_an_image_at_its_input_size(runner, plain, tmp_path):
    img = photo(tmp_path / "a.png")
    args = ["layers", plain, "--image", img, "--device", "cpu"]
    refused = runner.invoke(app, args)
    assert refused.exit_code == 2 and "--input-size N" in one_line(refused.stderr)
    ok = runner.invoke(app, [*args, "--input-size", "12"])
    assert ok.exit_code == 0, ok.output
    assert "(1, 4, 12, 12)" in ok.stdout


def test_demo_scores_only_the_chosen_methods_of_its_evaluation_set():
    assert list(demo_eval_methods(["gradcam", "saliency"])) == ["gradcam", "saliency"]
    assert demo_eval_methods(["layercam", "scorecam"]) == {}
    assert demo_eval_methods(["integrated_gradients"]) == {"integrated_gradients": {"n_steps": 16}}


def test_index_links_and_figures_page(tmp_path):
    evaluation = tmp_path / "evaluation"
    Image.new("RGB", (4, 4)).save(tmp_path / "bars.png")
    (tmp_path / "metrics.csv").write_text("a\n")
    page = write_figures_page(
        evaluation,
        [("deletion (bars)", tmp_path / "bars.png")],
        [tmp_path / "metrics.csv"],
        title="evaluation",
        back=tmp_path / "index.html",
    )
    html = page.read_text()
    assert 'href="../index.html"' in html and 'href="../metrics.csv"' in html
    assert 'src="../bars.png"' in html
    index = write_index(tmp_path, [], links=[("Evaluation", page.resolve())]).read_text()
    assert '<a href="evaluation/index.html">Evaluation</a>' in index


def test_tables_wrap_between_words_in_80_columns():
    table = Table()
    table.add_column("image", overflow="fold", ratio=1)
    table.add_column("prediction", overflow="fold", ratio=1)
    table.add_column("method", no_wrap=True)
    table.add_column("target", overflow="fold", ratio=1)
    table.add_column("passes", justify="right", no_wrap=True)
    table.add_column("time/image", justify="right", no_wrap=True)
    table.add_row("/a/long/folder/of/photos/astro.png", "Egyptian cat 0.40", "integrated_gradients")
    table.add_row("x", "", "saliency", "tabby", "4 + 1 fwd", "398 ms")
    console = Console(width=80, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    console.print(cli_common.keep_words(table, width=80))
    text = console.export_text()
    lines = text.splitlines()
    assert all(len(line) <= 80 for line in lines)
    assert all(line.rstrip().endswith(("┓", "┃", "┩", "│", "┘")) for line in lines)  # not cropped
    assert "prediction" in text and "Egyptian" in text and "tabby" in text


def test_visualize_table_shows_the_examples_figure_value(runner, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(2):
        photo(folder / f"p{i}.png", size=(24 + i, 24))
    out = tmp_path / "vis"
    args = ["visualize", "--model", "shapes_cnn", "--layer", "features", "--channel", "1"]
    args += ["--examples", str(folder), "--size", "32", "--steps", "2", "--k", "2", "-o", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "objective value" in result.stdout and "strongest unit" in result.stdout
    assert "the value the examples figure shows" in one_line(result.stdout)
    # the objective is the last step's, taken under its random transforms, not on the final
    # image (as the note said): the strongest unit is the final image's
    assert "objective at the last optimisation step" in one_line(result.stdout)
    assert "maximum over positions on the final image" in one_line(result.stdout)
