"""The `saliencelab neurons` command: activation maps of a layer's channels, or dataset examples.

    saliencelab neurons IMAGE --layer _blocks.12 --top 16 --by activation --out DIR
    saliencelab neurons --examples DIR --layer _blocks.12 --channel 42 --k 9 --out DIR

Added to the app by `register(app)` (cli.py calls it). Errors are SaliencelabError sentences,
printed by the app's error handling (exit code 2).
"""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

import saliencelab as sl

from ..cli_common import (
    DEFAULT_MODEL,
    MAX_PIXELS,
    DebugOption,
    DeviceOption,
    InputSizeOption,
    MaxPixelsOption,
    ModelSpecOption,
    NormalizeOption,
    OutOption,
    TrustPickleOption,
    WeightsOption,
    keep_words,
    load_model,
    out_console,
    parse_target,
    read_image,
    session,
)
from ..models.model import preprocessed
from .activations import RANKINGS, activations
from .examples import save_examples_gallery, top_examples

log = logging.getLogger("saliencelab")

#: The most channels `neurons IMAGE` draws in its grid PNG (the table lists every one asked
#: for): 64 tiles of 160 px make a ~1.6k x 1.8k px image of ~2.4 MB; 1000 made one of 7.7 MB.
MAX_GRID_CHANNELS = 64


def _slug(text: str) -> str:
    return re.sub(r"[^\w.-]+", "_", text).strip("._") or "layer"


def _grid(
    model: sl.Model,
    image: str,
    layer,
    top: int,
    by: str,
    target,
    out: Path,
    max_pixels: int = MAX_PIXELS,
) -> None:
    from .examples import model_view

    photo, stem = read_image(image, max_pixels)
    x = preprocessed(model, [photo]).to(model.device)
    maps = activations(model, x, layer, top=top, by=by, target=target)
    path = out / f"{_slug(stem)}_{_slug(maps.layer)}_{by}.png"
    drawn = maps
    ranked = maps.channels.shape[1]
    if ranked > MAX_GRID_CHANNELS:
        n = MAX_GRID_CHANNELS
        drawn = dataclasses.replace(
            maps, channels=maps.channels[:, :n], scores=maps.scores[:, :n], maps=maps.maps[:, :n]
        )
    drawn.save_grid(model_view(model, photo, x.shape[-2:]), path, original_size=photo.size)
    table = Table(header_style="bold")
    table.add_column("rank", justify="right")
    table.add_column("channel", justify="right")
    what = "mean activation" if by == "activation" else "contribution"
    table.add_column(what, justify="right")
    if by == "contribution":
        table.add_column("mean activation", justify="right")
    table.add_column("max activation", justify="right")
    for row in maps.table():
        cells = [str(row["rank"]), str(row["channel"]), f"{row['value']:.4g}"]
        if by == "contribution":
            cells.append(f"{row['mean']:.4g}")
        table.add_row(*cells, f"{row['max']:.4g}")
    console = out_console()
    about = f"{maps.layer}: {maps.activations.shape[1]} channels, top {len(maps.table())} by {what}"
    if by == "contribution":
        about += f" to {maps.target_label()}"
    console.print(about + ".", soft_wrap=True)
    console.print(keep_words(table))
    console.print(f"Grid: [bold]{path}[/bold]", soft_wrap=True)
    if ranked > MAX_GRID_CHANNELS:
        log.warning(
            "the grid draws the top %d of the %d channels ranked (at most %d, to keep the PNG "
            "small); the table lists all %d. Use sl.activations(...).save_grid(...) in Python to "
            "draw more.",
            MAX_GRID_CHANNELS,
            ranked,
            MAX_GRID_CHANNELS,
            ranked,
        )


def _examples(
    model: sl.Model,
    folder: str,
    layer,
    channel: int,
    k: int,
    batch_size: int,
    out: Path,
    max_pixels: int = MAX_PIXELS,
) -> None:
    found = top_examples(
        model, folder, layer, channel, k=k, batch_size=batch_size, max_pixels=max_pixels
    )
    first = found[0]
    path = out / f"examples_{_slug(first.layer)}_ch{channel}.png"
    save_examples_gallery(found, path)
    table = Table(header_style="bold")
    table.add_column("rank", justify="right")
    table.add_column("image", overflow="fold")
    table.add_column("max activation", justify="right")
    table.add_column("unit (y, x)", justify="right")
    table.add_column("crop (left, top, right, bottom)", justify="right")
    for rank, ex in enumerate(found, start=1):
        y, x = ex.location
        table.add_row(str(rank), ex.source, f"{ex.value:.4g}", f"{y}, {x}", str(ex.box))
    console = out_console()
    console.print(
        f"{first.layer}, channel {channel}: the {len(found)} strongest "
        f"image{'s' if len(found) != 1 else ''}; {first.field.describe()}.",
        soft_wrap=True,
    )
    console.print(keep_words(table))
    console.print(f"Examples: [bold]{path}[/bold]", soft_wrap=True)


def neurons(
    image: Annotated[
        str | None,
        typer.Argument(
            help="An image file or sample photo name (e.g. chelsea) to draw the layer's channels "
            "on; leave out with --examples.",
            show_default=False,
        ),
    ] = None,
    model: ModelSpecOption = DEFAULT_MODEL,
    layer: Annotated[
        str | None,
        typer.Option(
            "--layer",
            "-l",
            help="Layer (see `saliencelab layers MODEL --spatial`) \\[default: the model's].",
            show_default=False,
        ),
    ] = None,
    top: Annotated[
        int,
        typer.Option(
            "--top",
            min=1,
            help=f"Channels to rank and list; the grid draws at most {MAX_GRID_CHANNELS} of them.",
        ),
    ] = 16,
    by: Annotated[
        str, typer.Option("--by", help="Rank channels by 'activation' (mean) or 'contribution'.")
    ] = "activation",
    target: Annotated[
        str | None,
        typer.Option(
            "--target",
            "-t",
            help="Class the contributions are for, an index or a name (--by contribution) "
            "\\[default: the predicted class].",
            show_default=False,
        ),
    ] = None,
    examples: Annotated[
        str | None,
        typer.Option(
            "--examples",
            help="A folder of images: find those that activate --channel most.",
            show_default=False,
        ),
    ] = None,
    channel: Annotated[
        int | None,
        typer.Option("--channel", "-c", min=0, help="Channel (--examples).", show_default=False),
    ] = None,
    k: Annotated[int, typer.Option("--k", min=1, help="Examples to keep (--examples).")] = 9,
    batch_size: Annotated[
        int, typer.Option("--batch-size", min=1, help="Images per forward (--examples).")
    ] = 16,
    out: OutOption = Path("results"),
    device: DeviceOption = "auto",
    input_size: InputSizeOption = None,
    normalize: NormalizeOption = None,
    weights: WeightsOption = None,
    trust_pickle: TrustPickleOption = False,
    max_pixels: MaxPixelsOption = MAX_PIXELS,
    debug: DebugOption = False,
) -> None:
    """Draw a layer's most active channels over an image, or find a channel's top images."""

    def load() -> sl.Model:
        return load_model(
            model, device, input_size, normalize, weights, trust_pickle, reads_images=True
        )

    with session(debug, out):
        if (image is None) == (examples is None):
            raise sl.SaliencelabError(
                ("Give either" if image is None else "Give only one of")
                + " an IMAGE (to draw the layer's channels on it) or --examples FOLDER with "
                "--channel (to find the images that activate a channel most)."
            )
        if examples is not None:
            if channel is None:
                raise sl.SaliencelabError(
                    "--examples needs --channel N, the channel whose strongest images to find."
                )
            if target is not None or by != "activation":
                raise sl.SaliencelabError(
                    "--by and --target rank the channels drawn on an IMAGE; leave them out with "
                    "--examples."
                )
            _examples(load(), examples, layer, channel, k, batch_size, out, max_pixels)
            return
        if channel is not None:
            raise sl.SaliencelabError(
                "--channel picks the channel for --examples; to draw one channel's top images "
                "add --examples FOLDER, or leave --channel out to draw the top channels."
            )
        if by not in RANKINGS:
            raise sl.SaliencelabError(f"--by must be activation or contribution, not {by!r}.")
        if target is not None and by != "contribution":
            raise sl.SaliencelabError(
                "--target is used only with --by contribution; add it or drop --target."
            )
        _grid(load(), image, layer, top, by, parse_target(target), out, max_pixels)


def register(app: typer.Typer) -> None:
    """Add the `neurons` command to the app."""
    app.command("neurons")(neurons)
