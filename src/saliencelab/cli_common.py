"""What every `saliencelab` command shares: option declarations, the error session, parsing,
model and image loading, consoles and progress bars.

`cli.py` and the command modules (`neurons`, `explain-text`, `visualize`, `evaluate`) import
from here, so an option is declared once and behaves the same in every command. Every mistake a
user can make ends with one red sentence on stderr and exit code 2 (`--debug` or
SALIENCELAB_DEBUG=1 adds the traceback).
"""

from __future__ import annotations

import ast
import json
import logging
import math
import os
import re
import traceback
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup

try:  # newer typers parse with their own copy of click, whose errors these are
    from typer._click import exceptions as click_errors
except ImportError:  # typer < 0.2x: the click package
    from click import exceptions as click_errors

import saliencelab as sl
from saliencelab.core.files import FolderInTheWay, new_folder, remove_if_empty
from saliencelab.data.images import MAX_PIXELS
from saliencelab.data.samples import is_sample_image
from saliencelab.models.square import SquarePreprocess

DEFAULT_MODEL = "efficientnet_lite0"

#: Set by the app's callback (`saliencelab --debug COMMAND`); each command's own --debug adds to it.
STATE = {"debug": False}

# -- shared option declarations ------------------------------------------------------------------

DebugOption = Annotated[
    bool,
    typer.Option(
        "--debug",
        envvar="SALIENCELAB_DEBUG",
        help="Show tracebacks and debug logs (or set SALIENCELAB_DEBUG=1).",
    ),
]
DeviceOption = Annotated[
    str, typer.Option("--device", help="cpu, cuda, cuda:N, or auto (cuda if available).")
]
OutOption = Annotated[Path, typer.Option("--out", "-o", help="Output folder.")]
#: `--model` for the commands that read images (the full list of what it accepts).
ModelOption = Annotated[
    str,
    typer.Option(
        "--model",
        help="A model name (see `saliencelab models`), 'path/to/file.py:build', "
        "'package.module:build', a .pt2 or a TorchScript file.",
    ),
]
#: `--model` for the other commands (points to `explain --model`).
ModelSpecOption = Annotated[
    str, typer.Option("--model", help="A model name or spec, as for `explain --model`.")
]
#: How a model without preprocessing (a plain nn.Module, TorchScript, .pt2) reads images.
InputSizeOption = Annotated[
    int | None,
    typer.Option(
        "--input-size",
        min=1,
        help="Give the model a preprocessing: the central square of each image resized to N x N, "
        "pixels in [0, 1], then --normalize (for a plain nn.Module, TorchScript or .pt2 model; "
        "replaces a model's own preprocessing).",
        show_default=False,
    ),
]
NormalizeOption = Annotated[
    str | None,
    typer.Option(
        "--normalize",
        help="With --input-size: 'imagenet' ((x - mean) / std with the ImageNet mean and std), "
        "'none' (x in [0, 1], the default), 'MEAN,STD' (one value each) or 'M1,M2,M3,S1,S2,S3' "
        "(per RGB channel).",
        show_default=False,
    ),
]
WeightsOption = Annotated[
    Path | None,
    typer.Option(
        "--weights",
        help="A state dict (or checkpoint holding one) to load into a --model factory or file.",
        show_default=False,
    ),
]
TrustPickleOption = Annotated[
    bool,
    typer.Option(
        "--trust-pickle",
        help="Allow pickled whole models / checkpoints (torch.save(model)); they can run "
        "arbitrary code when loaded, so only for files you trust.",
    ),
]
MaxPixelsOption = Annotated[
    int,
    typer.Option(
        "--max-pixels",
        min=1,
        help="Refuse image files with more pixels than this (read from the header first).",
    ),
]
TargetOption = Annotated[
    str | None,
    typer.Option(
        "--target",
        "-t",
        help="Class to explain, an index or a class name (default: the predicted class); or a "
        "channel's mean activation, channel:LAYER:C, or one unit, neuron:LAYER:C[:Y:X].",
        show_default=False,
    ),
]
LayerOption = Annotated[
    str | None,
    typer.Option(
        "--layer",
        "-l",
        help="Layer for CAM methods (see `saliencelab layers MODEL`) (default: the model's).",
        show_default=False,
    ),
]
ChunkSizeOption = Annotated[
    int | None,
    typer.Option(
        "--chunk-size", min=1, help="Rows per pass (default: measured).", show_default=False
    ),
]
EmbedOption = Annotated[
    bool,
    typer.Option(
        "--embed", help="Inline the images in the HTML pages (each page one portable file)."
    ),
]


# -- consoles, errors, logging, progress ---------------------------------------------------------


# Result tables written to a file or a pipe (no terminal, no COLUMNS) are laid out this wide:
# rich's default of 80 columns wrapped names such as "center_gaussian (ref)" in the logs.
PIPED_WIDTH = 120


def out_console() -> Console:
    """The console for results (stdout): the terminal's width, or `PIPED_WIDTH` columns when
    stdout is a file or a pipe and COLUMNS is not set."""
    console = Console(highlight=False)
    if not console.is_terminal and not os.environ.get("COLUMNS"):
        console = Console(highlight=False, width=PIPED_WIDTH)
    return console


def err_console() -> Console:
    """The console for logs, progress and errors (stderr)."""
    return Console(stderr=True, highlight=False)


#: What the commands write into --out; other files there are the user's own business.
OUTPUT_SUFFIXES = (".png", ".npz", ".html")


def older_files(folder: Path, written: Iterable[Path]) -> list[Path]:
    """The PNG, NPZ and HTML files directly in `folder` that this run did not write (an
    earlier run's, in a reused --out folder), sorted by name."""
    if not folder.is_dir():
        return []
    mine = {Path(p).resolve() for p in written}
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in OUTPUT_SUFFIXES and p.resolve() not in mine
    )


def note_older_files(err: Console, folder: Path, written: Iterable[Path]) -> list[Path]:
    """One line naming the files of an earlier run left in `folder` (nothing is deleted: they
    may be results the user wants), so they are not taken for this run's; returns them."""
    older = older_files(folder, written)
    if older:
        shown = ", ".join(p.name for p in older[:3]) + (", ..." if len(older) > 3 else "")
        n = len(older)
        err.print(
            Text(
                f"note: {folder} also holds {n} file{'s' if n != 1 else ''} this run did not "
                f"write ({shown}): an earlier run's, not part of this one.",
                style="yellow",
            ),
            soft_wrap=True,
        )
    return older


def fail(message: str, debug: bool) -> None:
    """Print `message` as one red `error:` line (after the traceback when debugging)."""
    err = err_console()
    if debug:
        err.print(Text(traceback.format_exc().rstrip()), soft_wrap=True)
    err.print(Text("error: " + " ".join(message.split()), style="bold red"), soft_wrap=True)


#: Python wordings in library sentences, and what a command-line user writes instead.
CLI_WORDS = {
    "or target=None for each input's predicted class": (
        "or leave --target out to explain each input's predicted class"
    ),
}


def command_line_words(message: str) -> str:
    """`message` with its Python wordings (`CLI_WORDS`) put as the command line's."""
    for python, cli in CLI_WORDS.items():
        message = message.replace(python, cli)
    return message


@contextmanager
def session(debug: bool, out: Path | None = None) -> Iterator[Console]:
    """Stderr console with the library's log shown on it; user errors → one sentence, exit 2.

    `out`, the command's output folder, is created first (a file in its place stops the command
    before any work) and removed again if the command fails before writing into it, so a
    refused request leaves no empty folder behind.
    """
    debug = debug or STATE["debug"]
    err = err_console()
    logger = logging.getLogger("saliencelab")
    handler = ConsoleHandler(err, show_level=debug)
    handler.addFilter(Once())
    saved = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if debug else logging.INFO)
    logger.propagate = False
    created: list[Path] = []
    done = False
    try:
        if out is not None:
            created = new_folder(out)
        yield err
        done = True
    except FolderInTheWay as e:  # the command named the file itself: move the folder, or --out
        fail(e.advice("another --out"), debug)
        raise typer.Exit(code=2) from None
    except sl.SaliencelabError as e:
        fail(command_line_words(str(e)), debug)
        raise typer.Exit(code=2) from None
    finally:
        if not done:
            remove_if_empty(created)
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


class OneLineErrors(TyperGroup):
    """The app's command group: a usage mistake (a bad option value, a missing argument, an
    unknown command) is one red `error:` line and a "Try '... --help'" hint on stderr, exit
    code 2, as every other mistake is, instead of a boxed panel; `--help` is left as it is."""

    def make_context(self, info_name: str | None, args: list[str], parent=None, **extra: Any):
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click_errors.ClickException as e:
            if type(e).__name__ == "NoArgsIsHelpError":  # `saliencelab` alone: the help
                raise
            usage_error(e)

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except click_errors.ClickException as e:
            usage_error(e)


def usage_error(e: Any) -> None:
    """Print `e` as one `error:` line (and the help hint of a usage error); exit with its code."""
    fail(e.format_message(), debug=False)
    ctx = getattr(e, "ctx", None)
    if ctx is not None and ctx.command.get_help_option(ctx) is not None:
        help_name = ctx.help_option_names[0]
        err_console().print(
            Text(f"Try '{ctx.command_path} {help_name}' for help.", style="dim"), soft_wrap=True
        )
    raise typer.Exit(code=e.exit_code)


class ConsoleHandler(logging.Handler):
    """Log records as single lines on a Rich console (above a running progress bar)."""

    _STYLES = {logging.WARNING: "yellow", logging.ERROR: "red", logging.CRITICAL: "bold red"}

    def __init__(self, console: Console, show_level: bool = False) -> None:
        super().__init__()
        self.console, self.show_level = console, show_level

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if self.show_level or record.levelno >= logging.WARNING:
                message = f"{record.levelname.lower()}: {message}"
            style = self._STYLES.get(record.levelno, "")
            self.console.print(Text(message, style=style), soft_wrap=True)
        except Exception:
            self.handleError(record)


class Once(logging.Filter):
    """Show each distinct message once per command ("using layer X" comes once per method)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message in self.seen:
            return False
        self.seen.add(message)
        return True


def progress_bar(err: Console) -> Progress:
    """A transient Rich progress bar on `err` (hidden when it is not a terminal)."""
    return Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    )


def keep_words(table: Table, longest: int = 10, width: int | None = None) -> Table:
    """Give each wrapping column room for its header's words and its cells' longest word (up to
    `longest` characters), so a narrow terminal or a pipe (80 columns) wraps between words, never
    inside "prediction"; cell words give way when they would not fit in `width` (the console's).

    Rich crops a table whose pinned columns leave too little room instead of narrowing the
    others, so the widths are budgeted here: ratios are dropped, and the wrapping columns that
    want more than their minimum share what is left of `width` (their `max_width`).
    """
    width = width or out_console().width
    heads, words, longs, fixed = [], [], [], 0
    for column in table.columns:
        texts = [str(column.header)] + [
            cell.plain if isinstance(cell, Text) else str(cell) for cell in column.cells
        ]
        if column.no_wrap:
            fixed += max(len(line) for t in texts for line in t.splitlines() or [""])
            heads.append(0), words.append(0), longs.append(0)
            continue
        heads.append(max((len(w) for w in str(column.header).split()), default=0))
        words.append(max((len(w) for t in texts[1:] for w in t.split()), default=0))
        longs.append(max((len(line) for t in texts for line in t.splitlines()), default=0))
    room = width - (3 * len(table.columns) + 1) - fixed
    pins = [max(h, min(w, longest)) for h, w in zip(heads, words, strict=True)]
    if sum(pins) > room:
        pins = heads
    if sum(pins) > room:
        return table  # too narrow for any promise: leave it to Rich
    wrapping = [c for c in table.columns if not c.no_wrap]
    stretchy = [i for i, c in enumerate(table.columns) if not c.no_wrap and longs[i] > pins[i]]
    extra = _share(
        room - sum(pins),
        {i: longs[i] - pins[i] for i in stretchy},
        {i: table.columns[i].ratio or 1 for i in stretchy},
    )
    for i, column in enumerate(table.columns):
        column.ratio = None
        if column in wrapping:
            column.min_width = pins[i]
            if i in stretchy:
                column.max_width = pins[i] + extra[i]
    return table


#: The fewest characters a catalogue's summary column (`methods`, `metrics`) is drawn in; a
#: narrower terminal gets each entry as a heading line with its summary under it instead (the
#: table wrapped the summary a word or a few letters a line: 4,431 lines at 60 columns).
MIN_SUMMARY_WIDTH = 40


def print_catalogue(table: Table, heads: list[Text], width: int | None = None) -> None:
    """Print `table`, whose last column is a long summary, if `width` (the console's) leaves
    that column `MIN_SUMMARY_WIDTH` characters next to the others; else, row by row, the
    heading `heads[i]` with the row's summary indented under it and a blank line after."""
    console = out_console()
    width = width or console.width
    *others, summary = table.columns
    used = 3 * len(table.columns) + 1  # borders and padding
    for column in others:
        texts = [cell.plain if isinstance(cell, Text) else str(cell) for cell in column.cells]
        words = [len(w) for w in str(column.header).split()]
        lines = [len(line) for text in texts for line in text.splitlines()]
        used += max(words + lines, default=0)
    if width - used >= MIN_SUMMARY_WIDTH:
        console.print(keep_words(table, width=width))
        return
    for head, about in zip(heads, summary.cells, strict=True):
        console.print(head)
        about = about if isinstance(about, Text) else Text(str(about))
        for line in about.wrap(console, max(width - 2, 20)):
            line.rstrip()
            console.print(Text("  ").append_text(line))
        console.print()


def _share(room: int, wants: dict[int, int], weights: dict[int, int]) -> dict[int, int]:
    """Split `room` columns among the columns `wants` (what each needs to show its longest
    line), in proportion to their `weights` (a column's ratio): a column wanting less than its
    part gets what it wants, and the rest goes to the others (so a short column does not leave
    room unused while a long one folds its file names)."""
    given = {i: 0 for i in wants}
    open_ = set(wants)
    while open_ and room > 0:
        total = sum(weights[i] for i in open_)
        parts = {i: room * weights[i] // total for i in open_}
        done = {i for i in open_ if wants[i] <= parts[i]}
        if not done:  # every column wants more than its part: give the parts and stop
            for i in open_:
                given[i] += parts[i]
            break
        for i in done:
            given[i] += wants[i]
            room -= wants[i]
        open_ -= done
    return given


# -- parsing --------------------------------------------------------------------------------------


def _number(text: str) -> int | float | None:
    """ "32" → 32, "0.5" → 0.5, else None."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return None


def _literal(text: str) -> Any:
    """A Python literal ("(8, 8)", "{'absolute': False}") or else a JSON value
    ('{"absolute": false}'), read without running code (`ast.literal_eval`, `json.loads`); a
    list becomes a tuple ("[8, 8]" → (8, 8)). Text that is neither: one sentence."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        try:
            value = json.loads(text)
        except (ValueError, RecursionError):
            raise sl.SaliencelabError(
                f"The option value {text!r} is neither a Python nor a JSON literal; write e.g. "
                "window=(8,8), window=8,8 or base_options=\"{'absolute': False}\" (quoted "
                "for the shell)."
            ) from None
    return tuple(value) if isinstance(value, list) else value


def parse_value(text: str) -> Any:
    """ "32" → 32, "0.5" → 0.5, "true"/"false"/"yes"/"no" → bool, "none" → None, "8,8" → (8, 8)
    (numbers separated by commas), "(8, 8)" / "[8, 8]" → (8, 8), "{'absolute': False}" (or
    JSON) → a dict, else the text."""
    stripped = text.strip()
    lowered = stripped.lower()
    if lowered in ("true", "yes", "on"):
        return True
    if lowered in ("false", "no", "off"):
        return False
    if lowered in ("none", "null"):
        return None
    number = _number(text)
    if number is not None:
        return number
    if stripped[:1] in ("(", "[", "{"):
        return _literal(stripped)
    if "," in stripped:
        parts = [_number(part) for part in stripped.split(",")]
        if all(part is not None for part in parts):
            return tuple(parts)
    return text


def parse_options(
    pairs: list[str] | None,
    flag: str = "--option",
    examples: tuple[str, str] = ("n_steps=32", "integrated_gradients.n_steps=32"),
) -> dict[str, Any]:
    """`["n_steps=32", "smoothgrad.noise=0.1"]` → `{"n_steps": 32, "smoothgrad.noise": 0.1}`.

    `flag` and `examples` (a plain and a scoped key=value) make the error sentence fit the
    command option the pairs came from.
    """
    options: dict[str, Any] = {}
    plain, scoped = (f"{flag} {example}".strip() for example in examples)  # flag may be ""
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_]\w*)?", key):
            raise sl.SaliencelabError(
                f"The option {pair!r} is not of the form key=value; write e.g. {plain} or {scoped}."
            )
        value = parse_value(value)
        if key in options and options[key] != value:  # the last one used to win, silently
            who = f"{flag} {key}" if flag else f"The option {key}"
            raise sl.SaliencelabError(
                f"{who} is given twice ({options[key]!r} and {value!r}); give it once."
            )
        options[key] = value
    return options


def parse_target(text: str | None) -> int | str | None:
    """ "3" → 3 (a class index), "tabby cat" → "tabby cat" (a class name), None → None."""
    if text is None:
        return None
    if not text.strip():
        raise sl.SaliencelabError(
            "--target is empty; give a class index or name, or leave --target out to explain "
            "the predicted class."
        )
    return int(text) if re.fullmatch(r"[+-]?\d+", text.strip()) else text


def parse_explain_target(text: str | None) -> Any:
    """`parse_target`, and a layer reading: "channel:LAYER:C" → `sl.channel(LAYER, C)` (the
    channel's mean activation), "neuron:LAYER:C" or "neuron:LAYER:C:Y:X" → `sl.neuron(...)`
    (the unit at row Y, column X; the map's centre when left out)."""
    kind, sep, rest = (text or "").partition(":")
    kind = kind.strip().lower()
    if not sep or kind not in ("channel", "neuron"):
        return parse_target(text)
    layer, *numbers = (p.strip() for p in rest.split(":"))
    counts = (1, 3) if kind == "neuron" else (1,)
    if not layer or len(numbers) not in counts or not all(n.isdigit() for n in numbers):
        if kind == "neuron":
            form = "neuron:LAYER:C or neuron:LAYER:C:Y:X"
            example = "neuron:_blocks.12:7 or neuron:_blocks.12:7:3:4"
            numbers_are = "C the channel, Y and X the row and column"
        else:
            form, example, numbers_are = "channel:LAYER:C", "channel:_blocks.12:7", "C the channel"
        raise sl.SaliencelabError(
            f"--target {text!r} is not {form} (LAYER a name from `saliencelab layers MODEL`; "
            f"{numbers_are}: whole numbers), e.g. {example}."
        )
    ints = [int(n) for n in numbers]
    return sl.channel(layer, ints[0]) if kind == "channel" else sl.neuron(layer, *ints)


def split(text: str | None) -> list[str]:
    """ "a, b,,c" → ["a", "b", "c"]."""
    return [part.strip() for part in (text or "").split(",") if part.strip()]


# -- models and images ----------------------------------------------------------------------------


#: `--normalize imagenet`: the ImageNet RGB mean and standard deviation (of pixels in [0, 1]).
IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def parse_normalize(text: str | None) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """ "imagenet" → the ImageNet (mean, std); "none" / None → None; "0.5,0.5" → ((0.5,), (0.5,));
    six numbers → per-channel (mean, std)."""
    if text is None or text.strip().lower() == "none":
        return None
    if text.strip().lower() == "imagenet":
        return IMAGENET_MEAN_STD
    try:
        values = tuple(float(v) for v in split(text))
    except ValueError:
        values = ()
    if (
        len(values) not in (2, 6)
        or not all(math.isfinite(v) for v in values)  # nan passed `v <= 0` and made NaN inputs
        or any(v <= 0 for v in values[len(values) // 2 :])
    ):
        raise sl.SaliencelabError(
            f"--normalize {text!r} is not understood; use imagenet, none, MEAN,STD (e.g. 0.5,0.5) "
            "or six numbers M1,M2,M3,S1,S2,S3 (finite, with positive standard deviations)."
        )
    half = len(values) // 2
    return values[:half], values[half:]


def load_model(
    spec: str,
    device: str = "auto",
    input_size: int | None = None,
    normalize: str | None = None,
    weights: Path | None = None,
    trust_pickle: bool = False,
    *,
    reads_images: bool = False,
) -> sl.Model:
    """`sl.load_model(spec, weights=..., trust_pickle=...)` moved to `device` ("auto": CUDA when
    there is one), with a :class:`SquarePreprocess` when `input_size` is given.

    `reads_images`: the command feeds the model images, so a model without preprocessing is
    refused here with the options that give it one.
    """
    import dataclasses

    import torch

    if normalize is not None and input_size is None:
        raise sl.SaliencelabError(
            "--normalize goes with --input-size N, the size the model reads images at; add "
            "--input-size."
        )
    mean_std = parse_normalize(normalize)  # check it before the (slow) load
    kwargs: dict[str, Any] = {}
    if weights is not None:
        kwargs["weights"] = weights
    if trust_pickle:
        kwargs["trust_pickle"] = True
    model = sl.load_model(spec, **kwargs)
    if reads_images and isinstance(model, sl.TextModel):
        raise sl.SaliencelabError(
            f"{spec!r} is a text model, which reads texts, not images; explain texts with "
            f"`saliencelab explain-text TEXT --model {spec}`."
        )
    exported = exported_image_size(model.module)
    if input_size is not None and exported is not None and exported != (input_size, input_size):
        h, w = exported
        fix = f"use --input-size {h}" if h == w else "export it for square inputs"
        raise sl.SaliencelabError(
            f"{spec!r} was exported for {h} x {w} images (torch.export fixes the example "
            f"input's height and width unless told otherwise), so it cannot read --input-size "
            f"{input_size}; {fix}, or export it with dynamic height and width."
        )
    if input_size is not None:
        mean, std = mean_std if mean_std is not None else (None, None)
        pre = SquarePreprocess(input_size, mean, std, divisor=255.0)  # pixels in [0, 1] first
        extra = {**model.extra, "display": pre.display, "normalize": pre.normalize}
        model = dataclasses.replace(
            model, preprocess=pre, input_size=(input_size, input_size), extra=extra
        )
    if reads_images and model.preprocess is None:
        size = exported or model.input_size
        side = (
            f"the side it takes: {size[0]}"
            if size is not None and size[0] == size[1]
            else "the side it takes, e.g. 224"
        )
        raise sl.SaliencelabError(
            f"The model {spec!r} has no preprocessing, so it cannot read images; add "
            f"--input-size N ({side}) and --normalize imagenet|none|MEAN,STD to give it one."
        )
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise sl.SaliencelabError(
            f"Unknown device {device!r}; use cpu, cuda, cuda:N or auto."
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise sl.SaliencelabError(
            f"--device {device} was asked for, but this PyTorch ({torch.__version__}) sees no CUDA "
            "GPU; use --device cpu."
        )
    count = torch.cuda.device_count() if dev.type == "cuda" else 0
    if dev.type == "cuda" and dev.index is not None and dev.index >= count:
        raise sl.SaliencelabError(
            f"--device {device} was asked for, but this machine has {count} CUDA GPU(s), "
            f"cuda:0 to cuda:{count - 1}; pick one of them, or use --device cuda."
        )
    if dev.type == "meta":
        raise sl.SaliencelabError(
            "--device meta holds no values, so nothing can be explained on it; use cpu, cuda, "
            "cuda:N or auto."
        )
    try:
        return model.to(dev)
    except (RuntimeError, AssertionError) as e:  # e.g. mps on a PyTorch built without it
        raise sl.SaliencelabError(
            f"--device {device} cannot be used with this PyTorch ({torch.__version__}): "
            f"{' '.join(str(e).split())[:160]}; use cpu, cuda, cuda:N or auto."
        ) from e


def exported_input_shape(module: Any) -> tuple[int | None, ...] | None:
    """The input shape a torch.export model was traced with (None for a dynamic dimension,
    such as an exported dynamic batch), or None when `module` is not an exported model."""
    import torch
    import torch.fx

    graph = getattr(module, "graph", None)
    if isinstance(module, torch.jit.ScriptModule) or not isinstance(graph, torch.fx.Graph):
        return None
    for node in graph.nodes:
        if node.op == "placeholder":
            shape = getattr(node.meta.get("val"), "shape", None)
            if shape is None:
                return None
            return tuple(d if isinstance(d, int) else None for d in shape)
    return None


def exported_image_size(module: Any) -> tuple[int, int] | None:
    """(height, width) a torch.export image model was fixed to at export, else None."""
    shape = exported_input_shape(module)
    if shape is None or len(shape) != 4 or shape[2] is None or shape[3] is None:
        return None
    return shape[2], shape[3]


def read_image(text: str, max_pixels: int = MAX_PIXELS):
    """(PIL image, name stem) of an image file or a bundled sample photo's name."""
    p = Path(text)
    if not p.exists() and is_sample_image(text):
        return sl.sample_image(text), text
    if not p.exists():
        raise sl.SaliencelabError(
            f"{text!r} is neither an image file nor a sample photo; check the path, or use a "
            f"sample name such as chelsea."
        )
    return sl.load_image(p, max_pixels=max_pixels), p.stem


class ImageItem:
    """One image a command was given: `name` (as typed or found), a unique file `stem`, its
    `path` (None for a sample photo), and `error`, the sentence why it cannot be used, if so."""

    def __init__(self, item: Any) -> None:
        self._item = item

    @property
    def name(self) -> str:
        return self._item.name

    @property
    def stem(self) -> str:
        return self._item.stem

    @property
    def path(self) -> Path | None:
        return self._item.path

    @property
    def error(self) -> str | None:
        return self._item.error

    @error.setter
    def error(self, sentence: str | None) -> None:
        self._item.error = sentence

    def load(self):
        """The RGB PIL image, or None (and `error` set) when it cannot be read."""
        from .report.run import load_entry

        if self._item.image is None and self._item.error is None:
            load_entry(self._item)
        return self._item.image

    def release(self) -> None:
        """Forget the pixels (keep memory flat over a large folder)."""
        self._item.image = None


def collect_images(
    images: Iterable[str], max_pixels: int = MAX_PIXELS, repeats: list[str] | None = None
) -> list[ImageItem]:
    """One item per image: files as given, folders expanded (sorted), names of sample photos.

    The same rules as `saliencelab explain` (`report.run`): a missing file or a folder without
    images becomes an item with its `error` set rather than stopping the others; an image given
    twice is used once (its repeats' names appended to `repeats`).
    """
    from .report.run import collect_entries

    entries = collect_entries(images, max_pixels=max_pixels, repeats=repeats)
    return [ImageItem(item) for item in entries]


def require_an_image(images: Iterable[str], err: Console, max_pixels: int = MAX_PIXELS) -> None:
    """Stop before anything is written when none of `images` can be read; note each image given
    more than once (it is used once).

    A run whose every image is bad (a missing file, an empty folder, a file that is not an
    image) would otherwise write an index.html of error cards over an earlier run's report in a
    reused --out folder. Reads images only until one loads (usually the first). Each bad image is
    named on `err`; one sentence ends the command (exit code 2).
    """
    repeats: list[str] = []
    items = collect_images(images, max_pixels=max_pixels, repeats=repeats)
    if not items:
        raise sl.SaliencelabError("No images given; pass image files, folders or sample names.")
    for name in dict.fromkeys(repeats):
        note = f"note: {name} was given more than once; it is used once."
        err.print(Text(note, style="yellow"), soft_wrap=True)
    for item in items:
        if item.error is None and item.load() is not None:
            item.release()
            return
    if len(items) == 1:
        raise sl.SaliencelabError(f"{items[0].name}: {items[0].error} Nothing was written.")
    for item in items:
        err.print(Text(f"error: {item.name}: {item.error}", style="bold red"), soft_wrap=True)
    raise sl.SaliencelabError(
        f"None of the {len(items)} images could be read (see above); nothing was written."
    )
