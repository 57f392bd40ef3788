"""CLI edge cases: runs whose every image is bad write nothing (an earlier run's report and
maps in a reused --out are kept), text models and black boxes on the image commands and
`layers`, torch.export files fixed to one image size, a ViT's default CAM layer in `layers`,
empty and malformed targets, tables that give unused room to the columns that need it, the
shared-pass note on one line, and "class 3" for a model without class names."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch
from conftest import CNN_FACTORY
from PIL import Image
from rich.console import Console
from rich.table import Table

from saliencelab import cli_common
from saliencelab.cli import app, list_methods

FACTORY = CNN_FACTORY + textwrap.dedent(
    """

    import saliencelab as sl


    def labelled():
        return sl.Model(build(), labels=["cat", "dog", "bird"], name="labelled")


    def box():
        net = build()
        return sl.blackbox(lambda a: net(a))
    """
)


@pytest.fixture
def factory(tmp_path) -> str:
    path = tmp_path / "net.py"
    path.write_text(FACTORY)
    return str(path)


def photo(path, size=(40, 30)):
    rng = np.random.default_rng(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return str(path)


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error:")]


def one_line(text: str) -> str:
    return " ".join(text.split())


# -- runs whose every image is bad ---------------------------------------------------------------


def test_a_run_with_no_readable_image_keeps_the_earlier_report_and_maps(runner, factory, tmp_path):
    """`explain missing.png --out OUT` over an earlier run used to replace OUT/index.html by a
    page of error cards and delete OUT/maps.npz; now it stops before writing anything."""
    out = tmp_path / "out"
    common = ["--model", f"{factory}:build", "--input-size", "16", "-m", "saliency", "-o", str(out)]
    first = runner.invoke(app, ["explain", photo(tmp_path / "in" / "a.png"), *common])
    assert first.exit_code == 0, first.output
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert {"index.html", "maps.npz"} <= set(before)

    missing = runner.invoke(app, ["explain", str(tmp_path / "missing.png"), *common])
    assert missing.exit_code == 2
    assert len(error_lines(missing.output)) == 1 and "Nothing was written" in missing.output
    assert "Traceback" not in missing.output

    (tmp_path / "empty").mkdir()
    (tmp_path / "fake.png").write_text("not a png")
    several = [str(tmp_path / "fake.png"), str(tmp_path / "empty")]
    bad = runner.invoke(app, ["explain", *several, *common])
    assert bad.exit_code == 2
    errors = error_lines(bad.output)
    assert len(errors) == 3 and "fake.png" in errors[0] and "empty" in errors[1]
    assert "None of the 2 images could be read" in errors[2]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing lost


def test_a_demo_with_no_readable_image_writes_nothing(runner, tmp_path):
    """It used to write an index.html linking an evaluation page that was never written."""
    out = tmp_path / "demo"
    result = runner.invoke(
        app, ["demo", "--images", "no-such-photo", "--methods", "gradcam", "--out", str(out)]
    )
    assert result.exit_code == 2 and len(error_lines(result.output)) == 1, result.output
    assert "no-such-photo" in result.output and not out.exists()


def test_a_bad_image_among_good_ones_still_runs(runner, factory, tmp_path):
    (tmp_path / "fake.png").write_text("not a png")
    good = photo(tmp_path / "in" / "a.png")
    out = tmp_path / "out"
    args = ["explain", str(tmp_path / "fake.png"), good, "--model", f"{factory}:build"]
    result = runner.invoke(app, [*args, "--input-size", "16", "-m", "saliency", "-o", str(out)])
    assert result.exit_code == 2 and (out / "a_saliency.png").exists(), result.output


# -- model kinds -------------------------------------------------------------------------------


def _text_model_dir(root):
    """A tiny BERT classifier directory with its tokenizer (as tests/test_text.py builds)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    words = "[PAD] [UNK] [CLS] [SEP] [MASK] a man is playing guitar .".split()
    tk = Tokenizer(models.WordPiece({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tk.normalizer = normalizers.BertNormalizer(lowercase=True)
    tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tk.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=16,
    )
    config = BertConfig(
        vocab_size=len(words),
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=16,
        id2label={0: "negative", 1: "positive"},
    )
    torch.manual_seed(0)
    BertForSequenceClassification(config).eval().save_pretrained(root)
    tokenizer.save_pretrained(root)
    return f"hf:{root}"


@pytest.fixture
def text_model(tmp_path) -> str:
    pytest.importorskip("transformers")
    return _text_model_dir(tmp_path / "bert")


def test_a_text_model_on_an_image_command_points_to_explain_text(runner, text_model, tmp_path):
    """It said "Text 1 is a Image, not a string; pass strings."."""
    img = photo(tmp_path / "a.png")
    for command in (["explain", img], ["neurons", img, "--layer", "x"]):
        result = runner.invoke(app, [*command, "--model", text_model, "-o", str(tmp_path / "o")])
        assert result.exit_code == 2, result.output
        assert error_lines(result.output) == [result.output.strip()]
        assert "is a text model" in result.output and "explain-text" in result.output


def test_layers_of_a_text_model_are_probed_with_a_sentence(runner, text_model):
    """`layers minilm` failed with "Text 1 is a Image"."""
    result = runner.invoke(app, ["layers", text_model])
    assert result.exit_code == 0, result.output
    assert "hf.classifier" in result.output and "not called" not in result.output.split("hf.")[1]
    assert "CAM methods do not apply" in one_line(result.output)
    with_image = runner.invoke(app, ["layers", text_model, "--image", "chelsea"])
    assert with_image.exit_code == 2 and "text model" in with_image.output


def test_layers_of_a_black_box_is_one_sentence(runner, factory):
    """It printed an empty table and exit code 0."""
    result = runner.invoke(app, ["layers", f"{factory}:box"])
    assert result.exit_code == 2
    assert error_lines(result.output) == [result.output.strip()]
    assert "black-box" in result.output and "occlusion" in result.output


def test_layers_of_a_vision_transformer_names_the_engines_default(runner):
    """The engine's default CAM layer of a ViT is the last block's first norm (a token layer);
    `layers` named the patch embedding, and --spatial hid the default's row."""
    result = runner.invoke(app, ["layers", "tiny_vit"])
    assert result.exit_code == 0, result.output
    assert "CAM methods use blocks.1.norm1 unless" in result.output
    spatial = runner.invoke(app, ["layers", "tiny_vit", "--spatial"])
    row = next(line for line in spatial.output.splitlines() if "blocks.1.norm1 " in line)
    assert "default" in row and "blocks.0.attn" not in spatial.output


@pytest.fixture
def exported(tmp_path, factory) -> str:
    """A .pt2 file exported with a dynamic batch but a fixed 32 x 32 image size."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("review_net", factory)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    ep = torch.export.export(
        module.build(),
        (torch.randn(2, 3, 32, 32),),
        dynamic_shapes=({0: torch.export.Dim("batch")},),
    )
    path = tmp_path / "net.pt2"
    torch.export.save(ep, path)
    return str(path)


def test_an_exported_model_of_one_image_size_says_which_size(runner, exported, tmp_path):
    """--input-size 64 on a .pt2 exported at 32 x 32 ended in torch's traceback (exit code 1)."""
    img = photo(tmp_path / "a.png")
    common = ["explain", img, "--model", exported, "-m", "saliency", "-o", str(tmp_path / "o")]
    wrong = runner.invoke(app, [*common, "--input-size", "64"])
    assert wrong.exit_code == 2, wrong.output
    assert error_lines(wrong.output) == [wrong.output.strip()]
    assert "exported for 32 x 32 images" in wrong.output and "--input-size 32" in wrong.output
    bare = runner.invoke(app, common)
    assert bare.exit_code == 2 and "the side it takes: 32" in bare.output
    assert repr(exported) in one_line(bare.output)  # the spec, not the factory's name
    right = runner.invoke(app, [*common, "--input-size", "32"])
    assert right.exit_code == 0, right.output


def test_layers_probes_an_exported_model_at_its_exported_size(runner, exported):
    """It probed with zeros of 224 x 224, which the exported model refuses."""
    result = runner.invoke(app, ["layers", exported])
    assert result.exit_code == 0, result.output
    assert "(1, 4, 32, 32)" in result.output


def test_exported_input_shape_reads_dynamic_dimensions_as_none(exported):
    import saliencelab as sl

    assert cli_common.exported_input_shape(sl.load_model(exported).module) == (None, 3, 32, 32)
    assert cli_common.exported_image_size(sl.load_model(exported).module) == (32, 32)
    assert cli_common.exported_input_shape(torch.nn.Linear(2, 2)) is None


# -- targets ------------------------------------------------------------------------------------


def test_an_empty_target_is_one_sentence(runner, factory, tmp_path):
    """--target "" asked for a class named '' ("Did you mean: tench, ...")."""
    args = ["explain", photo(tmp_path / "a.png"), "--model", f"{factory}:labelled"]
    result = runner.invoke(
        app, [*args, "--input-size", "16", "--target", " ", "-o", str(tmp_path / "o")]
    )
    assert result.exit_code == 2
    assert error_lines(result.output) == [result.output.strip()]
    assert "--target is empty" in result.output


# -- output --------------------------------------------------------------------------------------


def test_a_model_without_class_names_predicts_class_n(runner, factory, tmp_path):
    """The table said "0 0.27" (two bare numbers)."""
    args = ["explain", photo(tmp_path / "a.png"), "--model", f"{factory}:build"]
    result = runner.invoke(
        app, [*args, "--input-size", "16", "-m", "saliency", "-o", str(tmp_path / "o")]
    )
    assert result.exit_code == 0, result.output
    assert "class 0 " in result.output or "class 1 " in result.output or "class 2 " in result.output


def test_the_shared_pass_note_is_one_line(runner, factory, tmp_path):
    """As the table's caption it wrapped at the table's width, "each" alone on a second line."""
    args = ["explain", photo(tmp_path / "a.png"), "--model", f"{factory}:build"]
    result = runner.invoke(
        app, [*args, "--input-size", "16", "-m", "saliency,gradcam", "-o", str(tmp_path / "o")]
    )
    assert result.exit_code == 0, result.output
    note = "* one forward+backward pass shared by the methods marked *, counted for each"
    assert note in result.output.splitlines()


def test_tables_give_the_room_a_short_column_leaves_to_the_long_ones():
    """`visualize` folded its file names ("featurevis_00_class_log / it_0.png") in a 120-column
    pipe while the table was 90 wide: each column got an equal share, used or not."""
    table = Table()
    for name in ("image", "objective", "objective value", "model sees", "file"):
        table.add_column(name, overflow="fold")
    file = "v1/featurevis_00_class_logit_0.png"
    table.add_row("0", "class_logit(0)", "14.05", "square (1.00)", file)
    console = Console(width=120, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    console.print(cli_common.keep_words(table, width=120))
    assert file in console.export_text()


def test_the_room_is_shared_by_ratio_up_to_what_each_column_wants():
    share = cli_common._share
    assert share(60, {0: 5, 1: 100}, {0: 1, 1: 1}) == {0: 5, 1: 55}
    assert share(40, {0: 100, 1: 100}, {0: 1, 1: 3}) == {0: 10, 1: 30}
    assert share(40, {0: 3, 1: 4}, {0: 1, 1: 1}) == {0: 3, 1: 4}
    assert share(0, {0: 3}, {0: 1}) == {0: 0}


def test_the_methods_command_summary_is_one_line():
    """`saliencelab --help` broke the summary after "options with their"."""
    first = list_methods.__doc__.split("\n\n")[0]
    assert "\n" not in first
