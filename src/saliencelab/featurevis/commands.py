"""`saliencelab visualize`: feature visualizations of classes, channels or a layer from the CLI.

    saliencelab visualize --class "Egyptian cat" --class espresso
    saliencelab visualize --layer _blocks.12 --channel 7 --param maco
    saliencelab visualize --layer _blocks.12 --channel 7 --examples photos/   # + dataset examples

One PNG per image in --out; with several images also a gallery PNG and an index.html.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

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
    note_older_files,
    out_console,
    parse_target,
    session,
)
from ..core.files import check_outputs
from ..models.model import as_model_input
from ..viz.io import save_image
from . import objectives as O
from .param import PARAMS
from .visualize import Visualization, default_size, picture_names, slug, visualize


def _objectives(
    classes: list[str], layer: str | None, channels: list[int]
) -> list[tuple[O.Objective, int | None]]:
    """(objective, channel or None) for each thing asked for, in order: classes, channels."""
    if channels and layer is None:
        raise sl.SaliencelabError(
            "--channel needs --layer NAME, the layer the channel belongs to (see `saliencelab "
            "layers MODEL --spatial`)."
        )
    if classes and layer is not None and not channels:
        raise sl.SaliencelabError(
            "--class and --layer were given without --channel, which do not go together: --layer "
            "without --channel asks for DeepDream of the whole layer, a different run from "
            "class images. Give --class NAME alone (class images), --layer NAME alone "
            "(DeepDream), or --layer NAME --channel N (channels of the layer, also next to "
            "--class)."
        )
    objs: list[tuple[O.Objective, int | None]] = [
        (O.class_logit(parse_target(c)), None) for c in classes
    ]
    objs += [(O.channel(layer, c), c) for c in channels]
    if layer is not None and not channels:
        objs.append((O.layer(layer), None))
    if not objs:
        raise sl.SaliencelabError(
            "Nothing to visualize; give --class NAME (repeatable), --layer NAME --channel N, or "
            "--layer NAME alone for DeepDream."
        )
    return objs


def _class_names(model: sl.Model, classes: list[str]) -> list[str]:
    """Each --class given as an index, as its class name where the model has one for it alone
    (a picture of class 281 is named and titled "tabby"); an index whose name is shared by
    another class ("crane" twice in ImageNet) or reads as a number stays an index."""
    labels = model.labels
    named = []
    for text in classes:
        c = parse_target(text)
        if isinstance(c, int) and labels is not None and 0 <= c < len(labels):
            name = str(labels[c])
            if labels.count(name) == 1 and name.strip() and parse_target(name) == name:
                text = name
        named.append(text)
    return named


def _check_classes(model: sl.Model, classes: list[str]) -> None:
    """One sentence, in the command's words, for a --class index the model does not have (when
    its classes are known); names are checked, with suggestions, by the objective."""
    n = len(model.labels) if model.labels is not None else None
    for text in classes:
        c = parse_target(text)
        if n is not None and isinstance(c, int) and not 0 <= c < n:
            raise sl.SaliencelabError(
                f"--class {c} is out of range: the model has {n} classes (0 to {n - 1}); give a "
                "class in that range, or a class name."
            )


def _outputs(
    out: Path,
    objs: list[O.Objective],
    batch: int,
    param: str,
    layer: str | None,
    asked: list[tuple[O.Objective, int | None]],
    examples: bool,
) -> list[tuple[Path, str]]:
    """(path, what it is) of every file the command writes into `out` (`Visualization.save`'s
    names, the gallery and page, the examples figures), checked before the optimisation."""
    names = picture_names([o.name for o in objs for _ in range(batch)])
    files = []
    for name in names:
        files.append((out / name, "the picture"))
        if param == "maco":
            files.append((out / name.replace(".png", "_transparent.png"), "the picture"))
    if len(names) > 1 or examples:
        files += [
            (out / "featurevis_gallery.png", "the gallery"),
            (out / "index.html", "the report"),
        ]
    if examples:
        files += [
            (_examples_path(out, layer, channel), "the examples figure")
            for _, channel in asked
            if channel is not None
        ]
    return files


def _examples_path(out: Path, layer: str | None, channel: int) -> Path:
    """Where the examples figure of a channel goes."""
    return out / f"featurevis_examples_{slug(layer)}_ch{channel}.png"


def _as_input(model: sl.Model, normalize):
    """`normalize`, then the cast to the model's device and dtype (the visualizations are float32
    images; a float16 model takes float16 inputs, as in the optimisation)."""
    return lambda images: as_model_input(model, normalize(images))


def _predictions(model: sl.Model, vis: Visualization, normalize) -> list[tuple[str, float] | None]:
    """The model's top class and probability on each image (None if it is not a classifier)."""
    import torch

    with torch.no_grad():
        logits = model(_as_input(model, normalize)(vis.images))
    if logits.dim() != 2 or logits.shape[1] < 2:
        return [None] * len(vis)
    probs = logits.softmax(dim=1)
    top = probs.argmax(dim=1).tolist()
    return [(model.label(t), float(probs[i, t])) for i, t in enumerate(top)]


def strongest_units(
    model: sl.Model, vis: Visualization, layer: str, channels: dict[int, int], normalize
) -> dict[int, float]:
    """{image index: max_yx A[channel, y, x] at `layer`} on each visualization itself (no
    transforms): the number the dataset-examples figure shows under the visualization."""
    import torch

    from ..core.layers import get_layer
    from ..core.state import Hooks, attribution_mode
    from .visualize import as_map

    seen: list[object] = []
    rows = sorted(channels)
    images = vis.images[rows].to(model.device)
    with attribution_mode(model.module), Hooks() as hooks, torch.no_grad():
        hooks.add(
            get_layer(model.module, layer).register_forward_hook(lambda m, i, o: seen.append(o))
        )
        model.module(_as_input(model, normalize)(images))
    a = as_map(model, seen[0], images.shape[-2:], layer)  # the layer's first call
    return {i: float(a[j, channels[i]].amax()) for j, i in enumerate(rows)}


def visualize_command(
    model: ModelSpecOption = DEFAULT_MODEL,
    classes: Annotated[
        list[str] | None,
        typer.Option(
            "--class",
            help="A class name or index whose logit to maximise (repeatable).",
            show_default=False,
        ),
    ] = None,
    layer: Annotated[
        str | None,
        typer.Option(
            "--layer",
            "-l",
            help="Layer of --channel (see `saliencelab layers MODEL`); alone: DeepDream of it.",
            show_default=False,
        ),
    ] = None,
    channels: Annotated[
        list[int] | None,
        typer.Option(
            "--channel", "-c", min=0, help="A channel of --layer (repeatable).", show_default=False
        ),
    ] = None,
    steps: Annotated[int, typer.Option("--steps", min=1, help="Optimisation steps.")] = 256,
    size: Annotated[
        int | None,
        typer.Option(
            "--size",
            min=16,
            max=1024,
            help="Image size in pixels (16-1024) \\[default: the model's input size, else 224].",
            show_default=False,
        ),
    ] = None,
    param: Annotated[
        str, typer.Option("--param", help=f"Parameterization: {', '.join(PARAMS)}.")
    ] = "fft",
    batch: Annotated[
        int, typer.Option("--batch", min=1, help="Images per objective (a diverse batch).")
    ] = 1,
    diversity: Annotated[
        float,
        typer.Option(
            "--diversity",
            min=0.0,
            help="Weight of the diversity term across the batch (with --batch > 1), at --layer "
            "or the model's default layer.",
        ),
    ] = 0.0,
    seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 0,
    lr: Annotated[
        float | None,
        typer.Option(
            "--lr", min=0.0, help="Adam learning rate \\[default: per --param].", show_default=False
        ),
    ] = None,
    examples: Annotated[
        str | None,
        typer.Option(
            "--examples",
            help="A folder of images: draw the ones that activate each --channel most next to "
            "its visualization.",
            show_default=False,
        ),
    ] = None,
    k: Annotated[int, typer.Option("--k", min=1, help="Dataset examples per channel.")] = 8,
    out: OutOption = Path("results"),
    device: DeviceOption = "auto",
    input_size: InputSizeOption = None,
    normalize: NormalizeOption = None,
    weights: WeightsOption = None,
    trust_pickle: TrustPickleOption = False,
    max_pixels: MaxPixelsOption = MAX_PIXELS,
    debug: DebugOption = False,
) -> None:
    """Synthesise images that make a class, a channel or a layer fire (feature visualization)."""
    from rich.table import Table

    from ..neurons.activations import refuse_unsupported
    from .visualize import default_normalize

    with session(debug, out) as err:
        if param not in PARAMS:
            raise sl.SaliencelabError(f"--param must be one of {', '.join(PARAMS)}, not {param!r}.")
        if diversity > 0 and batch < 2:  # (in Python, diversity of a one-image batch is 0)
            raise sl.SaliencelabError(
                "--diversity pushes the --batch images of each objective apart, so it needs "
                "--batch 2 or more; add e.g. --batch 4, or leave --diversity out."
            )
        if examples is not None and not channels:
            raise sl.SaliencelabError(
                "--examples draws dataset examples next to channel visualizations; add --layer "
                "NAME --channel N."
            )
        asked = _objectives(list(classes or []), layer, list(channels or []))
        objs = [o for o, _ in asked]
        loaded = load_model(
            model,
            device,
            input_size,
            normalize,
            weights,
            trust_pickle,
            reads_images=examples is not None,
        )
        refuse_unsupported(loaded, "Feature visualization")  # before any other note
        _check_classes(loaded, classes or [])
        if classes:  # indices named, as the pictures and their titles will be
            asked = _objectives(_class_names(loaded, list(classes)), layer, list(channels or []))
            objs = [o for o, _ in asked]
        n = len(objs) * batch
        check_outputs(_outputs(out, objs, batch, param, layer, asked, examples is not None))
        run_objs: list[O.Objective] = objs
        if diversity > 0 and batch > 1:
            div_layer = layer or loaded.default_layer
            if div_layer is None:
                raise sl.SaliencelabError(
                    "--diversity needs a layer: pass --layer NAME (the model has no default)."
                )
            run_objs = [o + diversity * O.diversity(div_layer) for o in objs]
        found = {}
        if examples is not None:  # first: a bad folder or layer fails before the optimisation
            found = _find_examples(loaded, asked, layer, examples, k, max_pixels)
        normalize = default_normalize(loaded)
        vis = visualize(
            loaded,
            run_objs,
            steps=steps,
            size=size if size is not None else default_size(loaded),  # the model's, else 224
            param=param,
            batch=n,
            seed=seed,
            lr=lr,
            normalize=normalize,
            progress=True,
        )
        names = [o.name for o in objs for _ in range(batch)]
        optimised = vis.objectives  # with the diversity term, whose weight the values include
        vis.objectives = names  # short names for the files, tiles and report
        paths = vis.save(out)
        images = [p for p in paths if not p.name.endswith("_transparent.png")]
        alphas = {p.name.replace("_transparent.png", ".png"): p for p in paths if p not in images}
        preds = _predictions(loaded, vis, normalize)

        pairings = _examples_galleries(loaded, vis, asked, batch, layer, found, out, normalize)

        console = out_console()
        table = Table(header_style="bold")
        table.add_column("image", justify="right")
        table.add_column("objective", overflow="fold")
        table.add_column("objective value", justify="right")
        units: dict[int, float] = {}
        if pairings:  # the examples figure's number: the channel's strongest unit
            table.add_column("strongest unit", justify="right")
            units = strongest_units(
                loaded, vis, layer, {i: asked[i // batch][1] for i in pairings}, normalize
            )
        table.add_column("model sees", overflow="fold")
        table.add_column(f"file (in {out})", overflow="fold")
        for i, path in enumerate(images):
            pred = preds[i]
            seen = f"{pred[0]} ({pred[1]:.2f})" if pred else ""
            cells = [str(i), optimised[i], f"{float(vis.values[i]):.4g}"]
            if pairings:
                cells.append(f"{units[i]:.4g}" if i in units else "")
            table.add_row(*cells, seen, path.name)  # (the folder once, in the header)
        console.print(keep_words(table))
        if pairings:
            console.print(
                "objective value: the objective at the last optimisation step, under that "
                "step's random transforms (a channel's mean activation over positions); "
                "strongest unit: the channel's maximum over positions on the final image, the "
                "value the examples figure shows for the visualization and each example.",
                soft_wrap=True,
            )
        height, width = vis.images.shape[-2:]
        console.print(
            f"{len(images)} image{'s' if len(images) != 1 else ''} ({param}, {steps} steps, "
            f"{width}x{height} px) in {vis.seconds:.1f} s.",
            soft_wrap=True,
        )
        if n > 1 or pairings:
            note = None
            if run_objs is not objs:  # the values are those of the objective + diversity
                note = f"values include + {diversity:g} * diversity across the batch"
            gallery = vis.save_gallery(
                out / "featurevis_gallery.png", tile=max(min(width, 192), 128), note=note
            )
            index = _write_html(out, vis, images, alphas, preds, pairings, loaded.name, steps)
            console.print(f"Gallery: [bold]{gallery}[/bold]", soft_wrap=True)
            console.print(f"Report: [bold]{index}[/bold]", soft_wrap=True)
            paths += [gallery, index]
        note_older_files(err, out, [*paths, *pairings.values()])


def _find_examples(model, asked, layer, folder, k, max_pixels: int = MAX_PIXELS) -> dict[int, list]:
    """{index in `asked`: the channel's top dataset examples} for each channel asked for."""
    from ..neurons import top_examples

    return {
        j: top_examples(model, folder, layer, channel, k=k, max_pixels=max_pixels)
        for j, (_, channel) in enumerate(asked)
        if channel is not None
    }


def _examples_galleries(
    model, vis, asked, batch, layer, examples, out, normalize
) -> dict[int, Path]:
    """For each channel asked for: its (first) visualization next to its top dataset examples."""
    from .visualize import examples_picture

    pairings: dict[int, Path] = {}
    for j, found in examples.items():
        channel = asked[j][1]
        i = j * batch
        path = _examples_path(out, layer, channel)
        save_image(examples_picture(model, vis, i, found, _as_input(model, normalize)), path)
        pairings[i] = path
    return pairings


def _write_html(out, vis, images, alphas, preds, pairings, model_name, steps) -> Path:
    from ..report.html import ReportEntry, write_index

    entries = []
    for i, path in enumerate(images):
        overlays = {}
        if path.name in alphas:
            overlays["transparency"] = alphas[path.name]
        if i in pairings:
            overlays["visualization"] = path
        pred = preds[i]
        entries.append(
            ReportEntry(
                name=f"{i}: {vis.objectives[i]}",
                gallery_path=pairings.get(i, path),
                overlays=overlays,
                predicted=pred[0] if pred else None,
                probability=pred[1] if pred else None,
                rows=[
                    {
                        "method": f"visualize ({vis.param})",
                        "passes": steps,
                        "seconds": vis.seconds / len(vis),
                    }
                ],
            )
        )
    return write_index(out, entries, title=f"saliencelab: feature visualization of {model_name}")


def register(app: typer.Typer) -> None:
    """Add the `visualize` command to the app."""
    app.command("visualize")(visualize_command)
