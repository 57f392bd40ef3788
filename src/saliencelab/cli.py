"""The `saliencelab` command line: explain images, list methods, models and layers, run a demo.

Every mistake a user can make ends with one red sentence on stderr and exit code 2 (`--debug` or
SALIENCELAB_DEBUG=1 adds the traceback); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import logging
import re
import sys
import time
import traceback
from collections.abc import Iterator
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

import saliencelab as sl
from saliencelab.featurevis.commands import register as register_featurevis
from saliencelab.neurons.commands import register as register_neurons
from saliencelab.report.run import RunResult, explain_images, method_requests
from saliencelab.text.commands import register as register_text

app = typer.Typer(
    name="saliencelab",
    help="See what a deep learning model looks at.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)

DEFAULT_MODEL = "efficientnet_lite0"
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
DEMO_OPTIONS = {
    "integrated_gradients": {"n_steps": 32},
    "smoothgrad": {"n_samples": 16},
    "scorecam": {"max_channels": 32},
}

_state = {"debug": False}

DebugOption = Annotated[
    bool,
    typer.Option(
        "--debug",
        envvar="SALIENCELAB_DEBUG",
        help="Show tracebacks and debug logs (or set SALIENCELAB_DEBUG=1).",
    ),
]


def _out() -> Console:
    return Console(highlight=False)


def _err() -> Console:
    return Console(stderr=True, highlight=False)


@app.callback()
def main(debug: DebugOption = False) -> None:
    """See what a deep learning model looks at: saliency maps, CAMs, reports."""
    _state["debug"] = debug


# -- errors, logging, progress ----------------------------------------------------------------


def _fail(message: str, debug: bool) -> None:
    err = _err()
    if debug:
        err.print(Text(traceback.format_exc().rstrip()), soft_wrap=True)
    err.print(Text("error: " + " ".join(message.split()), style="bold red"), soft_wrap=True)


@contextmanager
def _session(debug: bool) -> Iterator[Console]:
    """Stderr console with the library's log shown on it; user errors → one sentence, exit 2."""
    debug = debug or _state["debug"]
    err = _err()
    logger = logging.getLogger("saliencelab")
    handler = _ConsoleHandler(err, show_level=debug)
    handler.addFilter(_Once())
    saved = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if debug else logging.INFO)
    logger.propagate = False
    try:
        yield err
    except sl.SaliencelabError as e:
        _fail(str(e), debug)
        raise typer.Exit(code=2) from None
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


class _ConsoleHandler(logging.Handler):
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


class _Once(logging.Filter):
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


def _progress(err: Console) -> Progress:
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


# -- parsing --------------------------------------------------------------------------------------


def parse_value(text: str) -> Any:
    """ "32" → 32, "0.5" → 0.5, "true"/"false"/"yes"/"no" → bool, "none" → None, else the text."""
    lowered = text.strip().lower()
    if lowered in ("true", "yes", "on"):
        return True
    if lowered in ("false", "no", "off"):
        return False
    if lowered in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_options(pairs: list[str] | None) -> dict[str, Any]:
    """`["n_steps=32", "smoothgrad.noise=0.1"]` → `{"n_steps": 32, "smoothgrad.noise": 0.1}`."""
    options: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_]\w*)?", key):
            raise sl.SaliencelabError(
                f"The option {pair!r} is not of the form key=value; write e.g. --option n_steps=32 "
                "or --option integrated_gradients.n_steps=32."
            )
        options[key] = parse_value(value)
    return options


def parse_target(text: str | None) -> int | str | None:
    if text is None:
        return None
    return int(text) if re.fullmatch(r"[+-]?\d+", text.strip()) else text


def _split(text: str | None) -> list[str]:
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def _registered() -> dict[str, sl.MethodSpec]:
    return {spec.name: spec for spec in sl.methods()}


def _default_methods() -> list[str]:
    names = [m for m in DEFAULT_METHODS if m in _registered()]
    return names or ["saliency"]


def _load_model(spec: str, device: str) -> sl.Model:
    import torch

    model = sl.load_model(spec)
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
    return model.to(dev)


# -- output ---------------------------------------------------------------------------------------


def _seconds(s: float) -> str:
    return f"{s * 1000:.0f} ms" if s < 1 else f"{s:.2f} s"


def _results_table(result: RunResult, show_target: bool) -> Table:
    shared = any(row.get("shared_with") for row in result.rows)
    caption = (
        "* one forward+backward pass shared by the methods marked *, counted for each"
        if shared
        else None
    )
    table = Table(header_style="bold", caption=caption, caption_justify="left")
    table.add_column("image", overflow="fold", ratio=1)
    table.add_column("prediction", overflow="fold", ratio=1)
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
        prediction = Text(row["predicted"])
        prediction.append(f" {row['probability']:.2f}", style="dim")
        cells = [row["image"] if first else "", prediction if first else "", row["method"]]
        cells += [row["target"]] if show_target else []
        table.add_row(*cells, passes, _seconds(row["seconds"]))
    return table


def _report(result: RunResult, out: Console, err: Console, show_target: bool) -> None:
    out.print(_results_table(result, show_target))
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


def _run(
    model: sl.Model,
    images: list[str],
    methods: Any,
    out_dir: Path,
    err: Console,
    **kw: Any,
) -> RunResult:
    with _progress(err) as progress:
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
    model: Annotated[
        str,
        typer.Option(
            "--model",
            help="A model name (see `saliencelab models`), 'path/to/file.py:build', "
            "'package.module:build', a .pt2 or a TorchScript file.",
        ),
    ] = DEFAULT_MODEL,
    target: Annotated[
        str | None,
        typer.Option(
            "--target",
            "-t",
            help="Class to explain, an index or a class name (default: the predicted class).",
            show_default=False,
        ),
    ] = None,
    layer: Annotated[
        str | None,
        typer.Option(
            "--layer",
            "-l",
            help="Layer for CAM methods (see `saliencelab layers MODEL`) (default: the model's).",
            show_default=False,
        ),
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("results"),
    option: Annotated[
        list[str] | None,
        typer.Option(
            "--option",
            help="Method option key=value, repeatable, e.g. n_steps=32 or "
            "integrated_gradients.n_steps=32.",
            show_default=False,
        ),
    ] = None,
    chunk_size: Annotated[
        int | None,
        typer.Option(
            "--chunk-size", min=1, help="Rows per pass (default: measured).", show_default=False
        ),
    ] = None,
    device: Annotated[
        str, typer.Option("--device", help="cpu, cuda, cuda:N, or auto (cuda if available).")
    ] = "auto",
    embed: Annotated[
        bool, typer.Option("--embed", help="Inline the images in index.html (one portable file).")
    ] = False,
    debug: DebugOption = False,
) -> None:
    """Explain images: overlays, galleries, raw maps (maps.npz) and index.html in --out."""
    with _session(debug) as err:
        requested = _split(methods) if methods is not None else _default_methods()
        options = parse_options(option)
        # Check the request before loading the model (the engine checks it again).
        method_requests(requested, layer=layer, options=options)
        loaded = _load_model(model, device)
        result = _run(
            loaded,
            images,
            requested,
            out,
            err,
            target=parse_target(target),
            layer=layer,
            options=options,
            embed=embed,
            chunk_size=chunk_size,
            title=f"saliencelab: {loaded.name}",
        )
        _report(result, _out(), err, show_target=target is not None)
    if result.errors:
        raise typer.Exit(code=2)


@app.command("methods")
def list_methods() -> None:
    """List the registered methods: family, cost in passes per sample, options, summary."""
    table = Table(header_style="bold", show_lines=True)
    table.add_column("method", style="bold", no_wrap=True)
    table.add_column("family", no_wrap=True)
    table.add_column("passes per sample", ratio=1, overflow="fold")
    table.add_column("summary and options (defaults)", ratio=3, overflow="fold")
    for spec in sl.methods():
        cost = str(spec.cost)
        if cost in spec.options:
            cost = f"{cost} ({spec.options[cost]!r})"
        options = ", ".join(
            f"{k}={'auto' if k == 'layer' and v is None else repr(v)}"
            for k, v in spec.options.items()
        )
        about = Text(spec.summary)
        if options:
            about.append("\n" + options, style="dim")
        table.add_row(spec.name, spec.family, cost, about)
    _out().print(table)


@app.command("models")
def list_models() -> None:
    """List the model names `--model` accepts (besides your own files)."""
    out = _out()
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
    debug: DebugOption = False,
) -> None:
    """List a model's layers and their output shapes; marks the default CAM layer."""
    with _session(debug):
        loaded = sl.load_model(model)
        rows, default = _probe_layers(loaded, image)
        table = Table(header_style="bold")
        table.add_column("layer", overflow="fold")
        table.add_column("type", overflow="fold")
        table.add_column("output shape", overflow="fold")
        table.add_column("CAM", no_wrap=True)
        for name, kind, shape, is_spatial in rows:
            if spatial and not is_spatial:
                continue
            mark = Text("default", style="bold green") if name == default else ""
            if not mark and is_spatial:
                mark = Text("yes", style="dim")
            style = "bold" if name == default else None
            table.add_row(name, kind, shape, mark, style=style)
        out = _out()
        out.print(table)
        called = [shape != "not called" for _, _, shape, _ in rows]
        if rows and not any(sp for *_, sp in rows) and not all(called):
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


def _probe_input(model: sl.Model, image: str | None):
    import torch

    if image is None and model.preprocess is not None:
        return model.preprocess([sl.sample_image("chelsea")])
    if image is not None:
        if model.preprocess is None:
            raise sl.SaliencelabError(
                f"The model {model.name!r} has no preprocessing, so it cannot read --image; leave "
                "--image out to probe it with zeros."
            )
        p = Path(image)
        if not p.exists() and image in sl.sample_images():
            return model.preprocess([sl.sample_image(image)])
        return model.preprocess([sl.load_image(p)])
    shape = _exported_input_shape(model.module)
    if shape is not None:
        return torch.zeros(shape)
    h, w = model.input_size or (224, 224)
    return torch.zeros(1, 3, h, w)


def _exported_input_shape(module: Any) -> tuple[int, ...] | None:
    """The example input shape a torch.export module was traced with, if it is one."""
    import torch.fx

    if not isinstance(module, torch.fx.GraphModule):
        return None
    for node in module.graph.nodes:
        if node.op == "placeholder":
            val = node.meta.get("val")
            try:
                return tuple(int(d) for d in val.shape)
            except (AttributeError, TypeError, ValueError):
                return None  # symbolic sizes: fall back to input_size
    return None


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
    model: sl.Model, image: str | None
) -> tuple[list[tuple[str, str, str, bool]], str | None]:
    """(name, type, output shape, spatial) per named submodule, and the default CAM layer.

    One forward under no_grad with a hook on every submodule. The default CAM layer is the
    model's `default_layer`, else, as the engine finds it, the last module to produce a
    (B, C, H, W) output with H*W > 1 (the outer one of modules sharing that output).
    """
    import torch

    x = _probe_input(model, image).to(model.device)
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
    default = model.default_layer or (order[-1] if order else None)
    rows = [
        (name, type(m).__name__, shapes.get(name, "not called"), spatial.get(name, False))
        for name, m in modules
    ]
    return rows, default


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path(
        "saliencelab-demo"
    ),
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
    embed: Annotated[
        bool, typer.Option("--embed", help="Inline the images in index.html (one portable file).")
    ] = False,
    debug: DebugOption = False,
) -> None:
    """Explain bundled sample photos with EfficientNet-Lite0 and many methods; write a report."""
    with _session(debug) as err:
        registered = _registered()
        names = (
            _split(methods) if methods is not None else [m for m in DEMO_METHODS if m in registered]
        )
        pictures = (
            _split(images)
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
        start = time.perf_counter()
        model = sl.load_model(DEFAULT_MODEL)
        result = _run(
            model,
            pictures,
            names,
            out,
            err,
            options=options,
            embed=embed,
            title="saliencelab demo: EfficientNet-Lite0 on sample photos",
        )
        result.seconds = time.perf_counter() - start
        _report(result, _out(), err, show_target=False)
        _out().print(
            f"Open [bold]{result.index_path.resolve().as_uri()}[/bold] in a browser.",
            soft_wrap=True,
        )
    if result.errors:
        raise typer.Exit(code=2)


register_neurons(app)
register_text(app)
register_featurevis(app)

if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
