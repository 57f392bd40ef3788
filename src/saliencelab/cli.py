"""The `saliencelab` command line: explain images, list methods, models and layers, run a demo.

Every mistake a user can make ends with one red sentence on stderr and exit code 2 (`--debug` or
SALIENCELAB_DEBUG=1 adds the traceback); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

import saliencelab as sl
from saliencelab.cli_common import (
    DEFAULT_MODEL,
    MAX_PIXELS,
    STATE,
    ChunkSizeOption,
    DebugOption,
    DeviceOption,
    EmbedOption,
    InputSizeOption,
    LayerOption,
    MaxPixelsOption,
    ModelOption,
    NormalizeOption,
    OneLineErrors,
    OutOption,
    TargetOption,
    TrustPickleOption,
    WeightsOption,
    collect_images,
    exported_input_shape,
    keep_words,
    load_model,
    note_older_files,
    out_console,
    parse_explain_target,
    parse_options,
    parse_target,
    parse_value,
    print_catalogue,
    progress_bar,
    require_an_image,
    session,
    split,
)
from saliencelab.core.files import check_outputs
from saliencelab.core.registry import get_method
from saliencelab.data.samples import is_sample_image
from saliencelab.featurevis.commands import register as register_featurevis
from saliencelab.metrics.commands import evaluation_outputs
from saliencelab.metrics.commands import register as register_metrics
from saliencelab.models.blackbox import is_blackbox
from saliencelab.models.model import as_model_input
from saliencelab.neurons.commands import register as register_neurons
from saliencelab.report.run import RunResult, explain_images, method_requests
from saliencelab.serve.commands import register as register_serve
from saliencelab.text.commands import register as register_text

__all__ = ["app", "parse_options", "parse_target", "parse_value"]

app = typer.Typer(
    name="saliencelab",
    cls=OneLineErrors,  # a usage mistake is one `error:` line, as every other mistake
    help="See what a deep learning model looks at.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)

#: `explain` runs the first of these that are registered when --methods is not given.
DEFAULT_METHODS = ("gradcam", "integrated_gradients")
DEMO_IMAGES = ("chelsea", "coffee", "astronaut", "rocket", "motorcycle")
DEMO_METHODS = (
    "saliency",
    "input_x_gradient",
    "integrated_gradients",
    "smoothgrad",
    "guided_backprop",
    "gradcam",
    "gradcam_plus_plus",
    "layercam",
    "scorecam",
)
# Options that keep the demo quick on a laptop CPU; each is used only if the method has it.
# What `saliencelab demo` scores after explaining (cheap settings: it is a demo).
DEMO_EVAL_METHODS = {"gradcam": {}, "saliency": {}, "integrated_gradients": {"n_steps": 16}}
DEMO_EVAL_METRICS = {"deletion": {"steps": 10}, "insertion": {"steps": 10}, "sparseness": {}}
DEMO_OPTIONS = {
    "integrated_gradients": {"n_steps": 32},
    "smoothgrad": {"n_samples": 16},
    "scorecam": {"max_channels": 32},
}


@app.callback()
def main(debug: DebugOption = False) -> None:
    """See what a deep learning model looks at: saliency maps, CAMs, reports."""
    STATE["debug"] = debug
    sl.reuse_freed_memory()  # our own process: freed CPU memory is reused (core/cpu_memory.py)


# -- requests -----------------------------------------------------------------------------------


def _registered() -> dict[str, sl.MethodSpec]:
    return {spec.name: spec for spec in sl.methods()}


def _default_methods() -> list[str]:
    names = [m for m in DEFAULT_METHODS if m in _registered()]
    return names or ["saliency"]


# -- output ---------------------------------------------------------------------------------------


def _seconds(s: float) -> str:
    return f"{s * 1000:.0f} ms" if s < 1 else f"{s:.2f} s"


#: Printed under the results table when some methods shared a pass (as a line of its own: a
#: table caption wraps at the table's width, leaving "each" alone on a second line).
SHARED_NOTE = "* one forward+backward pass shared by the methods marked *, counted for each"


def _results_table(result: RunResult, show_target: bool) -> Table:
    shared = any(row.get("shared_with") for row in result.rows)
    # A channel or neuron target has no class prediction: the column gives what was explained
    # and its reading ("channel 26 of features.3: 3.21") instead.
    layer_target = any("error" not in row and row["probability"] is None for row in result.rows)
    table = Table(header_style="bold")
    table.add_column("image", overflow="fold", ratio=1)
    table.add_column("explained" if layer_target else "prediction", overflow="fold", ratio=1)
    table.add_column("method", no_wrap=True)
    if show_target:
        table.add_column("target", overflow="fold", ratio=1)
    table.add_column("passes", justify="right", no_wrap=True)
    table.add_column("time/image", justify="right", no_wrap=True)
    previous = None
    for row in result.rows:
        first = row["image"] != previous
        previous = row["image"]
        if "error" in row:  # the sentence is printed under the table
            cells = [row["image"], Text("failed", style="bold red"), "-"]
            cells += [""] if show_target else []
            table.add_row(*cells, "", "")
            continue
        passes = f"{row['passes']:g}"
        if row.get("forwards"):
            passes += f" + {row['forwards']:g} fwd"
        passes += "*" if row.get("shared_with") else (" " if shared else "")
        if row["probability"] is None:
            prediction = Text(f"{row['target']}:")
            prediction.append(f" {row['target_value']:.3g}", style="dim")
        else:
            prediction = Text(row["predicted"])  # "tabby (0.51)", as the gallery titles
            prediction.append(f" ({row['probability']:.2f})", style="dim")
        cells = [row["image"] if first else "", prediction if first else "", row["method"]]
        cells += [row["target"]] if show_target else []
        table.add_row(*cells, passes, _seconds(row["seconds"]))
    return keep_words(table)


def _report(result: RunResult, out: Console, err: Console, show_target: bool) -> None:
    out.print(_results_table(result, show_target))
    if any(row.get("shared_with") for row in result.rows):
        out.print(SHARED_NOTE, soft_wrap=True)
    n_ok, n_bad = result.n_images, len(result.errors)
    summary = (
        f"Explained {n_ok} image{'s' if n_ok != 1 else ''} with {len(result.methods)} "
        f"method{'s' if len(result.methods) != 1 else ''} in {result.seconds:.1f} s"
    )
    if n_bad:
        summary += f"; {n_bad} failed"
    out.print(summary + ".")
    out.print(f"Report: [bold]{result.index_path}[/bold]", soft_wrap=True)
    if result.maps_path is not None:
        out.print(f"Raw maps: {result.maps_path}", soft_wrap=True)
    for image, sentence in result.errors:
        err.print(Text(f"error: {image}: {sentence}", style="bold red"), soft_wrap=True)
    note_older_files(err, result.out_dir, result.files)


def _run(
    model: sl.Model,
    images: list[str],
    methods: Any,
    out_dir: Path,
    err: Console,
    **kw: Any,
) -> RunResult:
    with progress_bar(err) as progress:
        task = progress.add_task("starting", total=None)

        def advance(done: float, total: float, description: str) -> None:
            progress.update(task, completed=done, total=total, description=description)

        return explain_images(model, images, methods, out_dir, progress=advance, **kw)


# -- commands -------------------------------------------------------------------------------------


@app.command()
def explain(
    images: Annotated[
        list[str],
        typer.Argument(
            help="Image files, folders of images, or sample photo names (e.g. chelsea).",
            show_default=False,
        ),
    ],
    methods: Annotated[
        str | None,
        typer.Option(
            "--methods",
            "-m",
            help="Comma-separated method names (see `saliencelab methods`) "
            f"(default: {' and '.join(DEFAULT_METHODS)}, those registered).",
            show_default=False,
        ),
    ] = None,
    model: ModelOption = DEFAULT_MODEL,
    target: TargetOption = None,
    layer: LayerOption = None,
    out: OutOption = Path("results"),
    option: Annotated[
        list[str] | None,
        typer.Option(
            "--option",
            help="Method option key=value, repeatable, e.g. n_steps=32 or "
            "integrated_gradients.n_steps=32.",
            show_default=False,
        ),
    ] = None,
    chunk_size: ChunkSizeOption = None,
    device: DeviceOption = "auto",
    input_size: InputSizeOption = None,
    normalize: NormalizeOption = None,
    weights: WeightsOption = None,
    trust_pickle: TrustPickleOption = False,
    max_pixels: MaxPixelsOption = MAX_PIXELS,
    embed: EmbedOption = False,
    debug: DebugOption = False,
) -> None:
    """Explain images: overlays, galleries, raw maps (maps.npz) and index.html in --out."""
    with session(debug, out) as err:
        requested = split(methods) if methods is not None else _default_methods()
        options = parse_options(option)
        # Check the request before loading the model (the engine checks it again).
        method_requests(requested, layer=layer, options=options)
        target_spec = parse_explain_target(target)
        require_an_image(images, err, max_pixels)  # none readable: stop before writing
        loaded = load_model(
            model, device, input_size, normalize, weights, trust_pickle, reads_images=True
        )
        result = _run(
            loaded,
            images,
            requested,
            out,
            err,
            target=target_spec,
            layer=layer,
            options=options,
            embed=embed,
            chunk_size=chunk_size,
            title=f"saliencelab: {loaded.name}",
            max_pixels=max_pixels,
        )
        _report(result, out_console(), err, show_target=target is not None)
    if result.errors:
        raise typer.Exit(code=2)


def accepted_values(spec: sl.MethodSpec, option: str) -> str:
    """ "'mean' | 'max'" for a method option whose accepted values the method declares
    (`register(choices=...)`), else ""."""
    return " | ".join(spec.choices.get(option, ()))


def _default(option: str, value: Any) -> str:
    return "auto" if option == "layer" and value is None else repr(value)


@app.command("methods")
def list_methods(
    names: Annotated[
        list[str] | None,
        typer.Argument(
            help="Method names to show in detail: every option, its default and the values it "
            "accepts, and the method's description.",
            show_default=False,
        ),
    ] = None,
    debug: DebugOption = False,
) -> None:
    """List the registered methods (family, cost, summary, options), or describe NAMES in detail.

    The table gives each method's family, passes per sample, summary, and its options with their
    defaults and allowed values.
    """
    with session(debug):
        if names:
            specs = [get_method(name) for name in names]  # an unknown name: one sentence
            for spec in specs:
                _method_detail(spec)
            return
        _method_table(sl.methods())


def _method_table(specs: list[sl.MethodSpec]) -> None:
    out = Table(header_style="bold", show_lines=True)
    out.add_column("method", style="bold", no_wrap=True)
    out.add_column("family", no_wrap=True)
    out.add_column("passes per sample", ratio=1, overflow="fold")
    out.add_column("summary and options (defaults, allowed values)", ratio=3, overflow="fold")
    heads = []
    for spec in specs:
        cost = str(spec.cost)
        if cost in spec.options:
            cost = f"{cost} ({spec.options[cost]!r})"
        about = Text(spec.summary)
        if spec.options:
            defaults = ", ".join(f"{k}={_default(k, v)}" for k, v in spec.options.items())
            about.append("\n" + defaults, style="dim")
        for k in spec.options:
            allowed = accepted_values(spec, k)
            if allowed:
                about.append(f"\n{k}: {allowed}", style="dim")
        out.add_row(spec.name, spec.family, cost, about)
        heads.append(
            Text.assemble((spec.name, "bold"), f"  {spec.family}, passes per sample: {cost}")
        )
    print_catalogue(out, heads)
    out_console().print(
        "[dim]`saliencelab methods NAME` shows one method's description and options.[/dim]"
    )


def _method_detail(spec: sl.MethodSpec) -> None:
    import inspect

    console = out_console()
    console.print(
        Text.assemble((spec.name, "bold"), f"  {spec.family}, passes per sample: {spec.cost}"),
        soft_wrap=True,
    )
    console.print(Text(inspect.getdoc(spec.fn) or spec.summary), soft_wrap=True)
    if not spec.options:
        console.print(Text("No options.", style="dim"))
        return
    options = Table(header_style="bold")
    options.add_column("option", style="bold", no_wrap=True)
    options.add_column("default", overflow="fold")
    options.add_column("allowed values", ratio=1, overflow="fold")
    for k, v in spec.options.items():
        options.add_row(k, _default(k, v), accepted_values(spec, k))
    console.print(keep_words(options))


@app.command("models")
def list_models() -> None:
    """List the model names `--model` accepts (besides your own files)."""
    out = out_console()
    for name in sl.list_models():
        out.print(name + ("  [dim](default)[/dim]" if name == DEFAULT_MODEL else ""))
    out.print(
        "[dim]Also: 'path/to/file.py:build' or 'package.module:build' (a function returning an "
        "nn.Module or sl.Model), a torch.export .pt2 file, or a TorchScript file.[/dim]",
        soft_wrap=True,
    )


@app.command()
def layers(
    model: Annotated[
        str,
        typer.Argument(help="A model name or spec, as for `explain --model`.", show_default=False),
    ] = DEFAULT_MODEL,
    image: Annotated[
        str | None,
        typer.Option(
            "--image",
            help="Image file or sample name for the probe forward (default: a sample photo, or "
            "zeros for models without preprocessing).",
            show_default=False,
        ),
    ] = None,
    spatial: Annotated[
        bool, typer.Option("--spatial", help="Only layers with (B, C, H, W) outputs (for CAMs).")
    ] = False,
    device: DeviceOption = "auto",
    input_size: InputSizeOption = None,
    normalize: NormalizeOption = None,
    weights: WeightsOption = None,
    trust_pickle: TrustPickleOption = False,
    max_pixels: MaxPixelsOption = MAX_PIXELS,
    debug: DebugOption = False,
) -> None:
    """List a model's layers and their output shapes; marks the default CAM layer."""
    with session(debug):
        loaded = load_model(model, device, input_size, normalize, weights, trust_pickle)
        if is_blackbox(loaded):
            raise sl.SaliencelabError(
                f"{model!r} is a black-box function (sl.blackbox): it has no layers to list, and "
                "only the perturbation methods (occlusion, rise, feature_ablation, lime, "
                "kernelshap) and the reference maps explain it."
            )
        rows, default = _probe_layers(loaded, image, max_pixels)
        table = Table(header_style="bold")
        table.add_column("layer", overflow="fold")
        table.add_column("type", overflow="fold")
        table.add_column("output shape", overflow="fold")
        table.add_column("CAM", no_wrap=True)
        for name, kind, shape, is_spatial in rows:
            if spatial and not is_spatial and name != default:  # a ViT's default: token layer
                continue
            mark = Text("default", style="bold green") if name == default else ""
            if not mark and is_spatial:
                mark = Text("yes", style="dim")
            style = "bold" if name == default else None
            table.add_row(name, kind, shape, mark, style=style)
        out = out_console()
        out.print(keep_words(table))
        called = [shape != "not called" for _, _, shape, _ in rows]
        text = isinstance(loaded, sl.TextModel)
        if text:
            out.print(
                "A text model has no spatial (B, C, H, W) layer, so CAM methods do not apply to "
                "it; explain texts with `saliencelab explain-text`.",
                soft_wrap=True,
            )
        elif rows and not any(sp for *_, sp in rows) and not all(called):
            out.print(
                "[yellow]Most layers did not report an output: a TorchScript or torch.export "
                "model runs as one compiled graph, so layer methods (CAMs) cannot hook its "
                "layers; load the Python model from 'file.py:build' to use them.[/yellow]",
                soft_wrap=True,
            )
        if default is not None:
            out.print(
                f"CAM methods use [bold]{default}[/bold] unless you pass --layer NAME.",
                soft_wrap=True,
            )


#: What `layers` feeds a text model for its probe forward.
PROBE_TEXT = "A man is playing a guitar."


def _probe_input(model: sl.Model, image: str | None, max_pixels: int = MAX_PIXELS):
    import torch

    if isinstance(model, sl.TextModel):
        if image is not None:
            raise sl.SaliencelabError(
                f"{model.name!r} is a text model, so it cannot read --image; leave --image out "
                "(its layers are probed with a sample sentence)."
            )
        return model.preprocess([PROBE_TEXT])
    if image is None and model.preprocess is not None:
        return model.preprocess([sl.sample_image("chelsea")])
    if image is not None:
        if model.preprocess is None:
            raise sl.SaliencelabError(
                f"The model {model.name!r} has no preprocessing, so it cannot read --image; add "
                "--input-size N (and --normalize) to give it one, or leave --image out to probe "
                "it with zeros."
            )
        p = Path(image)
        if not p.exists() and is_sample_image(image):
            return model.preprocess([sl.sample_image(image)])
        return model.preprocess([sl.load_image(p, max_pixels=max_pixels)])
    shape = exported_input_shape(model.module)
    if shape is not None and all(d is not None for d in shape[1:]):
        return torch.zeros((1 if shape[0] is None else shape[0], *shape[1:]))
    h, w = model.input_size or (224, 224)
    return torch.zeros(1, 3, h, w)


@contextmanager
def _eval_mode(module: Any) -> Iterator[None]:
    """Eval mode for the probe, restored after (a torch.export module keeps its fixed mode)."""
    training = module.training
    try:
        module.eval()
    except NotImplementedError:
        training = None
    try:
        yield
    finally:
        if training:
            module.train(training)


def _shape(out: Any) -> str:
    import torch

    if isinstance(out, torch.Tensor):
        return "(" + ", ".join(str(d) for d in out.shape) + ")"
    if isinstance(out, (tuple, list)):
        return "[" + ", ".join(_shape(o) for o in out) + "]"
    if isinstance(out, dict):
        return "{" + ", ".join(f"{k}: {_shape(v)}" for k, v in out.items()) + "}"
    return type(out).__name__


def _probe_layers(
    model: sl.Model, image: str | None, max_pixels: int = MAX_PIXELS
) -> tuple[list[tuple[str, str, str, bool]], str | None]:
    """(name, type, output shape, spatial) per named submodule, and the default CAM layer.

    One forward under no_grad with a hook on every submodule. The default CAM layer is the
    model's `default_layer`, else, as the engine finds it, the last module to produce a
    (B, C, H, W) output with H*W > 1 (the outer one of modules sharing that output).
    """
    import torch

    x = as_model_input(model, _probe_input(model, image, max_pixels))  # its device and dtype
    shapes: dict[str, str] = {}
    spatial: dict[str, bool] = {}
    order: list[str] = []
    handles = []
    modules = [(name, m) for name, m in model.module.named_modules() if name]

    def hook_for(name: str):
        def hook(module, inputs, out):
            if name not in shapes:
                shapes[name] = _shape(out)
                spatial[name] = (
                    isinstance(out, torch.Tensor) and out.dim() == 4 and out.shape[-2:].numel() > 1
                )
            if isinstance(out, torch.Tensor) and out.dim() == 4 and out.shape[-2:].numel() > 1:
                order.append(name)

        return hook

    try:
        for name, m in modules:
            try:
                handles.append(m.register_forward_hook(hook_for(name)))
            except (RuntimeError, AttributeError, NotImplementedError):
                pass  # e.g. TorchScript submodules take no Python hooks
        with _eval_mode(model.module), torch.no_grad():
            model(x)
    except Exception as e:
        raise sl.SaliencelabError(
            f"A probe forward of {model.name!r} on an input of shape {tuple(x.shape)} failed "
            f"({type(e).__name__}: {' '.join(str(e).split())[:200]}); pass an image the model "
            "takes with --image."
        ) from e
    finally:
        for h in handles:
            h.remove()
    default = model.default_layer or _token_layer(model, x) or (order[-1] if order else None)
    rows = [
        (name, type(m).__name__, shapes.get(name, "not called"), spatial.get(name, False))
        for name, m in modules
    ]
    return rows, default


def _token_layer(model: sl.Model, x: Any) -> str | None:
    """A vision transformer's default CAM layer, as the engine finds it (the last block's first
    norm, whose (B, T, D) output is laid on the patch grid), or None for other models."""
    from saliencelab.core.tokens import find_token_layer

    if isinstance(model, sl.TextModel):
        return None
    try:
        return find_token_layer(model.module, x, model.extra.get("reshape"))
    except sl.SaliencelabError:  # e.g. a grid it cannot lay the tokens on: the spatial layer
        return None


@app.command()
def demo(
    out: OutOption = Path("saliencelab-demo"),
    methods: Annotated[
        str | None,
        typer.Option(
            "--methods",
            "-m",
            help="Comma-separated methods "
            f"(default: those registered of {', '.join(DEMO_METHODS)}).",
            show_default=False,
        ),
    ] = None,
    images: Annotated[
        str | None,
        typer.Option(
            "--images",
            help=f"Comma-separated sample photos or files (default: {','.join(DEMO_IMAGES)}).",
            show_default=False,
        ),
    ] = None,
    embed: EmbedOption = False,
    evaluate: Annotated[
        bool,
        typer.Option(
            "--evaluate/--no-evaluate",
            help="Also score the methods of "
            f"{', '.join(DEMO_EVAL_METHODS)} that --methods includes with deletion, insertion and "
            "sparseness (against the reference maps) into OUT/evaluation/.",
        ),
    ] = True,
    device: DeviceOption = "auto",
    max_pixels: MaxPixelsOption = MAX_PIXELS,
    debug: DebugOption = False,
) -> None:
    """Explain bundled sample photos with EfficientNet-Lite0 and many methods; write a report."""
    with session(debug, out) as err:
        registered = _registered()
        names = (
            split(methods) if methods is not None else [m for m in DEMO_METHODS if m in registered]
        )
        pictures = (
            split(images)
            if images is not None
            else [name for name in DEMO_IMAGES if name in sl.sample_images()]
        )
        options = {
            f"{m}.{k}": v
            for m in names
            if m in registered
            for k, v in DEMO_OPTIONS.get(m, {}).items()
            if k in registered[m].options
        }
        scored = demo_eval_methods(names) if evaluate else {}
        method_requests(names, options=options)
        evaluation = out / "evaluation"
        if scored:  # a folder in the way of a chart: refused before any work
            check_outputs(evaluation_outputs(evaluation, DEMO_EVAL_METRICS, report=True))
        require_an_image(pictures, err, max_pixels)  # none readable: stop before writing
        start = time.perf_counter()
        model = load_model(DEFAULT_MODEL, device)
        result = _run(
            model,
            pictures,
            names,
            out,
            err,
            options=options,
            embed=embed,
            title="saliencelab demo: EfficientNet-Lite0 on sample photos",
            max_pixels=max_pixels,
            links=[
                (
                    "Evaluation: deletion, insertion, sparseness",
                    (evaluation / "index.html").resolve(),
                )
            ]
            if scored
            else [],
        )
        result.seconds = time.perf_counter() - start
        _report(result, out_console(), err, show_target=False)
        if scored:
            _demo_evaluation(model, pictures, scored, evaluation, err, max_pixels, embed)
        elif evaluate:
            err.print(
                f"No method of the demo's evaluation set ({', '.join(DEMO_EVAL_METHODS)}) was "
                "chosen, so nothing was scored.",
                soft_wrap=True,
            )
        if not scored and evaluation.is_dir() and any(evaluation.iterdir()):
            err.print(  # (this run's index.html does not link it)
                Text(
                    f"note: {evaluation} holds an earlier run's evaluation; this run scored "
                    "nothing, so it is not part of this one.",
                    style="yellow",
                ),
                soft_wrap=True,
            )
        out_console().print(
            f"Open [bold]{result.index_path.resolve().as_uri()}[/bold] in a browser; to try "
            "your own images and other methods there, run [bold]saliencelab serve[/bold].",
            soft_wrap=True,
        )
    if result.errors:
        raise typer.Exit(code=2)


def demo_eval_methods(names: list[str]) -> dict[str, dict[str, Any]]:
    """The methods `demo` scores: those of DEMO_EVAL_METHODS the user chose, with their cheap
    settings (the others can cost many passes per image and metric step)."""
    return {m: dict(DEMO_EVAL_METHODS[m]) for m in DEMO_EVAL_METHODS if m in names}


def _demo_evaluation(
    model: sl.Model,
    pictures: list[str],
    methods: dict[str, dict[str, Any]],
    out: Path,
    err: Console,
    max_pixels: int = MAX_PIXELS,
    embed: bool = False,
) -> None:
    """Score a few methods on the demo photos; print the table, write CSV/JSON, charts and a page
    showing them (out/index.html, linked from the report; `embed`: its charts inlined)."""
    from saliencelab.metrics.commands import evaluate_images, results_table, write_evaluation
    from saliencelab.report.html import write_figures_page

    items = collect_images(pictures, max_pixels=max_pixels)
    with progress_bar(err) as bar:
        task = bar.add_task("evaluating", total=len(items))
        report, scored = evaluate_images(
            model,
            items,
            methods,
            DEMO_EVAL_METRICS,
            {},
            progress=lambda done, what: bar.update(task, completed=done, description=what),
        )
        bar.update(task, completed=len(items), description="evaluated")
    if report is None:
        return
    out_console().print(results_table(report))
    errors = [item for item in items if item.error is not None]
    files = write_evaluation(report, scored, errors, out)
    pngs = [f for f in files if f.suffix == ".png"]
    figures = [(f"{f.stem} ({f.parent.name})", f) for f in pngs]
    others = [f for f in files if f.suffix != ".png"]
    write_figures_page(
        out,
        figures,
        others,
        title="saliencelab demo: evaluation",
        back=out.parent / "index.html",
        embed=embed,
        report=report,
    )
    out_console().print(f"Evaluation (table, curves, bars) written to [bold]{out}[/bold].")


register_neurons(app)
register_text(app)
register_featurevis(app)
register_metrics(app)
register_serve(app)

if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
