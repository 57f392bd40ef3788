"""The `saliencelab evaluate` command: score methods' maps with metrics over a folder of images.

    saliencelab evaluate photos/ --model efficientnet_lite0 --methods gradcam,saliency \\
        --metrics deletion,insertion --steps 20 --out eval/
    saliencelab evaluate photos/ --metrics pointing_game --masks masks/ --out eval/

Images are read, explained (`sl.explain`) and scored (`sl.evaluate`) in batches of
--batch-size, and the per-batch results are merged (`MetricResult.merge`), so a folder of many
images runs in flat memory. Writes `metrics.csv`, `metrics.json` (the table plus per-image values
and mean curves), `curves/<metric>.png` for curve-based metrics and `bars/<metric>.png` (mean ±
95% CI) for every metric; metrics.json's `params` record the settings the numbers depend on
and the class explained per image (the reference maps are scored on that class too). A bad image
(or one without a mask, with two, or with a mask of another size) is reported and skipped; the
run then exits with code 2 after writing what it scored. An empty mask gets a warning (localisation
metrics are undefined there) and the run goes on; --masks is ignored, with a note, when no
requested metric reads masks. Added to the app by `register(app)`.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

import saliencelab as sl

from ..cli_common import (
    DEFAULT_MODEL,
    MAX_PIXELS,
    ChunkSizeOption,
    DebugOption,
    DeviceOption,
    ImageItem,
    InputSizeOption,
    LayerOption,
    MaxPixelsOption,
    ModelOption,
    NormalizeOption,
    OutOption,
    TargetOption,
    TrustPickleOption,
    WeightsOption,
    collect_images,
    keep_words,
    load_model,
    note_older_files,
    out_console,
    parse_explain_target,
    parse_options,
    print_catalogue,
    progress_bar,
    require_an_image,
    session,
    split,
)
from ..core.files import check_outputs, write_whole
from ..core.requests import split_dotted
from ..models.model import displayed, preprocessed
from .base import MetricResult, check_class_target, get_metric, metric_classes
from .evaluate import (
    EmptyMaskWarning,
    EvalReport,
    format_ci,
    format_value,
    json_safe,
    metric_requests,
    plain,
)

DEFAULT_METHODS = "gradcam,saliency"
DEFAULT_METRICS = "deletion,insertion"
#: Images explained and scored together (`sl.explain` and the metrics chunk each batch further).
BATCH_IMAGES = 16
#: Mask file suffixes, matched in any case (cat.png, cat.PNG, cat.Tif).
MASK_SUFFIXES = (".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


# -- the request ----------------------------------------------------------------------------------


def metric_options(
    names: list[str], options: dict[str, Any]
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Split `{"steps": 20, "deletion.baseline": 0.5}` into per-metric and shared options.

    `metric.key` goes to that metric only (it must be requested); a plain `key` goes to every
    requested metric that takes it. Both are checked (`metric_requests`) before any model work.
    """
    per: dict[str, dict[str, Any]] = {name: {} for name in names}
    shared = split_dotted(options, per, "metric", "--metrics", known=list(metric_classes()))
    metric_requests(per, shared)  # unknown metric or option: one sentence
    return per, shared


def _mask_paths(folder: Path) -> dict[str, list[Path]]:
    """The mask files of `folder` by stem (cat.png, cat.TIF → "cat"), suffixes in any case; a
    stem with more than one file is refused when an image needs it (`mask_path`)."""
    if not folder.is_dir():
        raise sl.SaliencelabError(
            f"--masks {str(folder)!r} is not a folder; give a folder of PNG masks named like the "
            "images (cat.jpg → cat.png)."
        )
    found: dict[str, list[Path]] = {}
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() in MASK_SUFFIXES and p.is_file():
            found.setdefault(p.stem, []).append(p)
    if not found:
        raise sl.SaliencelabError(
            f"The mask folder {str(folder)!r} holds no masks ({_suffixes()}, in any case); give "
            "masks named like the images (cat.jpg → cat.png), nonzero pixels marking the object."
        )
    return found


def _suffixes() -> str:
    """ ".png, .bmp, .gif, .tif, .tiff or .webp"."""
    return ", ".join(MASK_SUFFIXES[:-1]) + f" or {MASK_SUFFIXES[-1]}"


def mask_path(masks: dict[str, list[Path]], image_name: str) -> Path:
    """The one mask file of an image (cat.jpg → cat.png, cat.TIF, ...), else one sentence: none,
    or two (cat.png and cat.bmp) that would have one win unseen."""
    stem = Path(image_name).stem
    paths = masks.get(stem, [])
    if not paths:
        raise sl.SaliencelabError(
            f"There is no mask {stem}.png in the mask folder (a mask named {stem} with the suffix "
            f"{_suffixes()}, in any case); add it or leave the image out."
        )
    if len(paths) > 1:
        names = " and ".join(p.name for p in paths)
        raise sl.SaliencelabError(
            f"The mask folder holds {len(paths)} masks for {stem} ({names}); keep one of them."
        )
    return paths[0]


def load_mask(
    path: Path,
    model: sl.Model,
    size: tuple[int, int],
    image_size: tuple[int, int] | None = None,
):
    """(H, W) bool mask of a mask file: nonzero = object, mapped to the model's input.

    Nonzero means a nonzero value for gray and palette (label) images, and any nonzero colour
    channel for colour images.
    The mask goes through the model's `display` geometry when it has one (the crop and resize
    the photo gets), then is resized (nearest) to the input size `size`. With `image_size`
    (W, H), the size of the image the mask belongs to, a mask of another size is refused: it
    would be stretched onto the photo and mark the wrong pixels.
    """
    import numpy as np
    import torch
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("1", "L", "P", "I", "I;16", "F"):  # labels or gray: nonzero value
                on = np.asarray(im) != 0
            else:  # colour: any nonzero channel (alpha ignored)
                on = np.asarray(im.convert("RGB")).any(axis=-1)
    except (OSError, ValueError, SyntaxError) as e:
        raise sl.SaliencelabError(
            f"The mask {str(path)!r} is not an image Pillow can read ({e}); save it as a PNG."
        ) from e
    if image_size is not None and (on.shape[1], on.shape[0]) != tuple(image_size):
        raise sl.SaliencelabError(
            f"The mask {str(path)!r} is {on.shape[1]}×{on.shape[0]} pixels but its image is "
            f"{image_size[0]}×{image_size[1]}; give a mask of the image's own size (nonzero = "
            "object)."
        )
    binary = Image.fromarray(np.where(on, 255, 0).astype(np.uint8), "L")
    shown = displayed(model, binary.convert("RGB"))
    if shown is not None:
        binary = shown.convert("L")
    h, w = size
    if binary.size != (w, h):
        binary = binary.resize((w, h), Image.Resampling.NEAREST)
    return torch.from_numpy(np.asarray(binary) >= 128)


# -- the run --------------------------------------------------------------------------------------


class _Run:
    """Accumulates the per-batch reports of one run and merges them at the end."""

    def __init__(self) -> None:
        self.parts: dict[str, dict[str, list[MetricResult]]] = {}
        self.references: tuple[str, ...] = ()
        self.scored: list[ImageItem] = []
        self.explained: list[dict[str, Any]] = []  # per scored image: the class explained
        self.method_params: dict[str, dict[str, Any]] = {}  # what each method ran with

    def add(self, report: EvalReport, items: list[ImageItem], ex: Any = None) -> None:
        self.references = report.references
        for method, per in report.items():
            slot = self.parts.setdefault(method, {})
            for metric, result in per.items():
                slot.setdefault(metric, []).append(result)
        self.scored.extend(items)
        if ex is not None:
            self.explained += _explained(ex, items)
            if not self.method_params:
                self.method_params = {
                    name: {**plain(a.params), **({"layer": plain(a.layer)} if a.layer else {})}
                    for name, a in ex.items()
                }

    def report(self, params: dict[str, Any]) -> EvalReport:
        results = {
            method: {metric: MetricResult.merge(parts) for metric, parts in per.items()}
            for method, per in self.parts.items()
        }
        return EvalReport(results, references=self.references, params=params)


def _explained(ex: Any, items: list[ImageItem]) -> list[dict[str, Any]]:
    """Per image of a batch, the class its maps explain: {"image", "class", "label"}.

    The methods of one `sl.explain` call explain the same class; should they not, "class" and
    "label" are per method. A channel, neuron or score target has "class" None and names
    itself in "label" ("channel 28 of features.10"), as `Explanation.target_label` does.
    """

    def one(a: Any, i: int) -> tuple[int | None, str]:
        target = int(a.target[i])
        return (target if target >= 0 else None), ex.target_label(a, i)

    rows = []
    for i, item in enumerate(items):
        per = {name: one(a, i) for name, a in ex.items()}
        if len(set(per.values())) <= 1:
            index, label = next(iter(per.values()), (None, "custom"))
            rows.append({"image": item.name, "class": index, "label": label})
        else:
            rows.append(
                {
                    "image": item.name,
                    "class": {name: c for name, (c, _) in per.items()},
                    "label": {name: lab for name, (_, lab) in per.items()},
                }
            )
    return rows


def _prepare(
    items: list[ImageItem],
    model: sl.Model,
    masks: dict[str, list[Path]] | None,
    shape: list[Any],
    empty: list[str] | None = None,
):
    """Read and preprocess a batch; items that fail get their error set. Returns (good, x, m).

    The names of images whose mask is empty at the model's input are appended to `empty`.
    """
    import torch

    good, xs, ms = [], [], []
    for item in items:
        image = item.load()
        if image is None:
            continue
        try:
            x = preprocessed(model, [image])
            if not shape:
                shape.append(tuple(x.shape[1:]))
            if tuple(x.shape[1:]) != shape[0]:
                raise sl.SaliencelabError(
                    f"It became an input of shape {tuple(x.shape[1:])}, but the first image one of "
                    f"{shape[0]}; the model's preprocessing must give every image the same size."
                )
            mask = None
            if masks is not None:
                path = mask_path(masks, item.name)
                mask = load_mask(path, model, tuple(x.shape[-2:]), image_size=image.size)
        except sl.SaliencelabError as e:
            item.error = " ".join(str(e).split())
            item.release()
            continue
        good.append(item)
        xs.append(x)
        if mask is not None:
            ms.append(mask)
            if empty is not None and not bool(mask.any()):
                empty.append(item.name)
    if not good:
        return good, None, None
    return good, torch.cat(xs), (torch.stack(ms) if ms else None)


def evaluate_images(
    model: sl.Model,
    items: list[ImageItem],
    methods: dict[str, dict[str, Any]],
    metrics: dict[str, dict[str, Any]],
    shared: dict[str, Any],
    *,
    masks: dict[str, list[Path]] | None = None,
    target: Any = None,
    references: bool = True,
    batch_images: int = BATCH_IMAGES,
    chunk_size: int | None = None,
    progress: Callable[[int, str], None] | None = None,
    settings: dict[str, Any] | None = None,
) -> tuple[EvalReport | None, list[ImageItem]]:
    """Explain and score `items` batch by batch; (merged report or None, items scored).

    `masks` (from `_mask_paths`) are read only when a requested metric needs them. An image that
    cannot be read, preprocessed or given its mask gets its `error` set and is skipped. The
    reference maps are scored on the class the methods explain (`target`, else the predicted
    class). If scoring a batch fails, its images are scored one by one to find the bad ones;
    an error every image of the first batch gives alike is about the request and is raised.

    The report's `params` record what changes the numbers, so that a run can be repeated:
    the model, methods and metrics with their options, the target, the batch size and, per
    scored image, the class explained (`explained`); `settings` (e.g. the command's
    --input-size) are added as given. With masks, `empty_masks` names the scored images whose
    mask is empty at the model's input (localisation metrics are undefined for them).
    """
    requested = metric_requests(metrics, shared)
    if callable(target):  # a channel or neuron target: refused before any image is explained
        for metric in requested:
            check_class_target(metric)
    if not any("masks" in metric.needs for metric in requested):
        masks = None  # as sl.evaluate: masks no metric reads drop no image
    run = _Run()
    shape: list[Any] = []
    empty: list[str] = []

    def score(x, m, done: int, note: str = "") -> tuple[EvalReport, Any]:
        n = x.shape[0]
        what = _count(n, "image") + note
        if progress is not None:
            progress(done, f"explaining {what}")
        x = x.to(model.device)
        ex = sl.explain(model, x, methods=methods, target=target, chunk_size=chunk_size)
        if progress is not None:
            progress(done, f"scoring {what}")
        with warnings.catch_warnings():  # empty masks: the command names the images itself
            warnings.simplefilter("ignore", EmptyMaskWarning)
            report = sl.evaluate(
                model,
                x,
                ex,
                metrics=metrics,
                masks=m,
                target=target,
                references=references,
                chunk_size=chunk_size,
                **shared,
            )
        return report, ex

    for first in range(0, len(items), max(1, batch_images)):
        batch = items[first : first + batch_images]
        good, x, m = _prepare(batch, model, masks, shape, empty)
        if good:
            try:
                report, ex = score(x, m, first)
                run.add(report, good, ex)
            except sl.SaliencelabError as e:
                if len(good) == 1 and not run.scored:
                    raise
                sentences = []
                for i, item in enumerate(good):
                    mi = None if m is None else m[i : i + 1]
                    try:
                        report, ex = score(x[i : i + 1], mi, first + i, " one by one")
                        run.add(report, [item], ex)
                    except sl.SaliencelabError as one:
                        item.error = " ".join(str(one).split())
                        sentences.append(item.error)
                if not run.scored and len(set(sentences)) == 1:
                    raise e from None
        for item in batch:
            item.release()
        if progress is not None:
            progress(first + len(batch), "")
    if not run.scored:
        return None, []
    params: dict[str, Any] = {
        "metrics": list(metrics),
        "methods": list(methods),
        "model": model.name,
        "target": target if isinstance(target, (int, str)) or target is None else repr(target),
        "method_options": plain(methods),
        "method_params": run.method_params,
        "metric_options": plain(metrics),
        "shared_metric_options": plain(shared),
        "references": references,
        "batch_size": batch_images,
        "chunk_size": chunk_size,
        **plain(settings or {}),
        "explained": run.explained,
    }
    if masks is not None:
        scored = {item.name for item in run.scored}
        params["empty_masks"] = [name for name in empty if name in scored]
    return run.report(params), run.scored


# -- output ---------------------------------------------------------------------------------------


def results_table(report: EvalReport) -> Table:
    """method, metric, mean, 95% CI, n, better; grouped by metric, best method in bold."""
    caption = "(ref): a reference map" if report.references else None
    table = Table(header_style="bold", caption=caption, caption_justify="left")
    for name, justify in (
        ("metric", "left"),
        ("method", "left"),
        ("mean", "right"),
        ("95% CI", "right"),
        ("n", "right"),
        ("better", "left"),
    ):
        table.add_column(name, justify=justify, no_wrap=name != "method", overflow="fold")
    for i, metric in enumerate(report.metrics):
        try:
            best = report.best(metric)
        except sl.SaliencelabError:
            best = None
        rows = [(method, per[metric]) for method, per in report.items() if metric in per]
        for j, (method, r) in enumerate(rows):
            first = j == 0
            lo, hi = r.ci
            is_ref = method in report.references
            style = "dim" if is_ref else ("bold" if method == best else None)
            ci = format_ci(lo, hi)
            table.add_row(
                metric if first else "",
                method + (" (ref)" if is_ref else ""),
                format_value(r.mean),
                ci,
                str(r.n),
                r.direction if first else "",
                style=style,
                end_section=j == len(rows) - 1 and i < len(report.metrics) - 1,
            )
    return keep_words(table)


def evaluation_outputs(
    out: Path, metrics: Iterable[str], report: bool = False
) -> list[tuple[Path, str]]:
    """(path, what it is) of each file `write_evaluation` may write for `metrics` into `out`
    (with `report`, also the demo's page, index.html), for `check_outputs` before any work: a
    folder in the way then stops the run before it starts, not halfway through its files."""
    from ..viz.curves import chart_stem

    files = [(out / "metrics.csv", "the metrics table"), (out / "metrics.json", "the metrics")]
    for metric in metrics:
        files.append((out / "curves" / f"{chart_stem(metric)}.png", "a curve chart"))
        files.append((out / "bars" / f"{chart_stem(metric)}.png", "a bar chart"))
    if report:
        files.append((out / "index.html", "the report"))
    return files


def write_evaluation(
    report: EvalReport, scored: list[ImageItem], errors: list[ImageItem], out: Path
) -> list[Path]:
    """Write metrics.csv, metrics.json (with per-image values and errors), curves/ and bars/.

    Every path is checked first (`evaluation_outputs`), and each file is written whole, so a
    folder in the way leaves no table written without the rest."""
    from ..report.run import output_folder
    from ..viz.curves import save_metric_bars

    check_outputs(evaluation_outputs(out, report.metrics))
    out = output_folder(out)
    data = {
        "images": [item.name for item in scored],
        "errors": [{"image": item.name, "error": item.error} for item in errors],
        "params": report.params,
        **report.to_dict(),
    }
    page = json.dumps(json_safe(data), indent=1, allow_nan=False).encode("utf-8")
    files = [
        report.to_csv(out / "metrics.csv"),
        write_whole(out / "metrics.json", lambda f: f.write(page), "the metrics"),
    ]
    files += report.save_curves(out / "curves")
    files += save_metric_bars(report, out / "bars")
    return files


# -- messages -------------------------------------------------------------------------------------


def _count(n: int, noun: str) -> str:
    """ "1 image", "3 images"."""
    return f"{n} {noun}{'s' if n != 1 else ''}"


def unreadable(n: int) -> str:
    """The sentence when none of the `n` images given could be scored (they were readable:
    `require_an_image` stops a run where none is, before the model loads)."""
    if n == 1:
        return "The image could not be scored; see the error above."
    return f"None of the {n} images could be scored; see the errors above."


def empty_mask_warning(names: list[str], metrics: list[str]) -> str:
    """One line naming the images whose mask is empty, and the metrics undefined for them."""
    these = "this image" if len(names) == 1 else "these images"
    return (
        f"warning: empty mask (no object pixel at the model's input) for "
        f"{_count(len(names), 'image')}: {', '.join(names)}; {', '.join(metrics)} "
        f"{'is' if len(metrics) == 1 else 'are'} undefined for {these} (left out of n)."
    )


# -- the command ----------------------------------------------------------------------------------


def evaluate_command(
    images: Annotated[
        list[str],
        typer.Argument(
            help="Image files, folders of images, or sample photo names (e.g. chelsea).",
            show_default=False,
        ),
    ],
    model: ModelOption = DEFAULT_MODEL,
    methods: Annotated[
        str,
        typer.Option(
            "--methods", "-m", help="Comma-separated methods to score (see `saliencelab methods`)."
        ),
    ] = DEFAULT_METHODS,
    metrics: Annotated[
        str,
        typer.Option(
            "--metrics",
            help="Comma-separated metrics (see `saliencelab metrics`), e.g. "
            "deletion,insertion,pointing_game.",
        ),
    ] = DEFAULT_METRICS,
    masks: Annotated[
        Path | None,
        typer.Option(
            "--masks",
            help="Folder of ground-truth masks named like the images (cat.jpg → cat.png), "
            "nonzero = object; needed by localisation metrics.",
            show_default=False,
        ),
    ] = None,
    out: OutOption = Path("evaluation"),
    steps: Annotated[
        int | None,
        typer.Option(
            "--steps",
            min=1,
            help="Steps of the curve-based metrics (the option steps=N of every metric taking it).",
            show_default=False,
        ),
    ] = None,
    option: Annotated[
        list[str] | None,
        typer.Option(
            "--option",
            help="Metric option key=value, repeatable, e.g. baseline=0.5 or deletion.steps=50.",
            show_default=False,
        ),
    ] = None,
    method_option: Annotated[
        list[str] | None,
        typer.Option(
            "--method-option",
            help="Method option key=value, repeatable, e.g. n_steps=16 or "
            "integrated_gradients.n_steps=16.",
            show_default=False,
        ),
    ] = None,
    references: Annotated[
        bool,
        typer.Option(
            "--references/--no-references",
            help="Also score the random, centred-Gaussian and Sobel reference maps.",
        ),
    ] = True,
    target: TargetOption = None,
    layer: LayerOption = None,
    batch_size: Annotated[
        int, typer.Option("--batch-size", min=1, help="Images explained and scored together.")
    ] = BATCH_IMAGES,
    chunk_size: ChunkSizeOption = None,
    device: DeviceOption = "auto",
    input_size: InputSizeOption = None,
    normalize: NormalizeOption = None,
    weights: WeightsOption = None,
    trust_pickle: TrustPickleOption = False,
    max_pixels: MaxPixelsOption = MAX_PIXELS,
    debug: DebugOption = False,
) -> None:
    """Score methods' maps with metrics over images: table, metrics.csv/.json, curve charts."""
    from ..report.run import method_requests

    start = time.perf_counter()
    errors: list[ImageItem] = []
    with session(debug, out) as err:
        requests = method_requests(
            split(methods),
            layer=layer,
            options=parse_options(
                method_option,
                flag="--method-option",
                examples=("n_steps=16", "integrated_gradients.n_steps=16"),
            ),
        )
        names = split(metrics)
        if not names:
            raise sl.SaliencelabError(
                "No metric given; pass e.g. --metrics deletion,insertion (see "
                "`saliencelab metrics`)."
            )
        options = parse_options(option, examples=("steps=20", "deletion.steps=20"))
        if steps is not None:
            if "steps" in options:
                raise sl.SaliencelabError(
                    "Give the steps once: --steps N or --option steps=N, not both."
                )
            options["steps"] = steps
        per_metric, shared = metric_options(names, options)
        needing = [n for n in per_metric if "masks" in get_metric(n).needs]
        if needing and masks is None:
            raise sl.SaliencelabError(
                f"The metric {needing[0]} needs ground-truth masks; pass --masks FOLDER (PNG "
                "masks named like the images, nonzero = object)."
            )
        mask_files = _mask_paths(masks) if masks is not None else None  # a folder of masks
        if mask_files is not None and not needing:  # as sl.evaluate: no image dropped for them
            note = (
                f"note: no requested metric reads masks ({', '.join(per_metric)}), so --masks is "
                "ignored."
            )
            err.print(Text(note, style="yellow"), soft_wrap=True)
            mask_files = None
        check_outputs(evaluation_outputs(out, per_metric))  # a folder in the way: before work
        require_an_image(images, err, max_pixels)  # none readable: stop before the model loads
        loaded = load_model(
            model, device, input_size, normalize, weights, trust_pickle, reads_images=True
        )
        items = collect_images(images, max_pixels=max_pixels)
        if not items:
            raise sl.SaliencelabError("No images given; pass image files, folders or sample names.")

        with progress_bar(err) as bar:
            task = bar.add_task("reading", total=len(items))

            def advance(done: int, description: str) -> None:
                bar.update(task, completed=done, description=description or "next batch")

            report, scored = evaluate_images(
                loaded,
                items,
                requests,
                per_metric,
                shared,
                masks=mask_files,
                target=parse_explain_target(target),
                references=references,
                batch_images=batch_size,
                chunk_size=chunk_size,
                progress=advance,
                settings={
                    "layer": layer,
                    "input_size": input_size,
                    "normalize": normalize,
                    "weights": None if weights is None else str(weights),
                    "device": str(loaded.device),
                },
            )
        errors = [item for item in items if item.error is not None]
        console = out_console()

        def report_errors() -> None:
            for item in errors:
                line = f"error: {item.name}: {item.error}"
                err.print(Text(line, style="bold red"), soft_wrap=True)

        if report is None:
            report_errors()
            raise sl.SaliencelabError(unreadable(len(items)))
        empty = report.params.get("empty_masks") or []
        if empty and needing:
            err.print(Text(empty_mask_warning(empty, needing), style="yellow"), soft_wrap=True)
        files = write_evaluation(report, scored, errors, out)
        console.print(results_table(report))
        summary = (
            f"Scored {_count(len(scored), 'image')} with {_count(len(requests), 'method')} and "
            f"{_count(len(per_metric), 'metric')} in {time.perf_counter() - start:.1f} s"
        )
        if errors:
            summary += f"; {len(errors)} failed"
        console.print(summary + ".")
        console.print(
            f"Table: [bold]{out / 'metrics.csv'}[/bold], {out / 'metrics.json'}", soft_wrap=True
        )
        charts = [p for p in files if p.parent.name == "curves"]
        if charts:
            console.print(f"Curves: [bold]{out / 'curves'}[/bold]", soft_wrap=True)
        console.print(f"Bar charts: {out / 'bars'}", soft_wrap=True)
        for folder in (out, out / "curves", out / "bars"):  # a reused --out: charts not ours
            note_older_files(err, folder, files)
        report_errors()
    if errors:
        raise typer.Exit(code=2)


def option_defaults(cls: type) -> dict[str, Any]:
    """{option: default} of a metric class (its constructor's keyword options)."""
    import inspect

    params = inspect.signature(cls.__init__).parameters
    return {
        k: p.default
        for k, p in params.items()
        if k != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }


def metric_summary(cls: type) -> str:
    """The first paragraph of a metric's docstring, on one line."""
    import inspect

    return " ".join((inspect.getdoc(cls) or "").split("\n\n")[0].split())


def list_metrics(
    names: Annotated[
        list[str] | None,
        typer.Argument(
            help="Metric names to show in detail: the formula, paper and every option.",
            show_default=False,
        ),
    ] = None,
    debug: DebugOption = False,
) -> None:
    """List the registered metrics (family, better, needs, summary, options), or NAMES in detail.

    "needs" says what `evaluate` must be given: masks for the localisation metrics; the model
    (always given by the command) for the metrics that run it.
    """
    with session(debug):
        if names:
            console = out_console()
            for name in names:
                cls = get_metric(name)  # an unknown name: one sentence with the closest
                _metric_detail(console, cls)
            return
        table = Table(header_style="bold", show_lines=True)
        table.add_column("metric", style="bold", no_wrap=True)
        table.add_column("family", no_wrap=True)
        table.add_column("better", no_wrap=True)
        table.add_column("needs", ratio=1, overflow="fold")
        table.add_column("summary and options (defaults)", ratio=4, overflow="fold")
        heads = []
        for name in sl.metrics.available():
            cls = get_metric(name)
            about = Text(metric_summary(cls))
            options = option_defaults(cls)
            if options:
                about.append("\n" + ", ".join(f"{k}={v!r}" for k, v in options.items()), "dim")
            needs = ", ".join(n for n in cls.needs) or "maps only"
            table.add_row(name, cls.family, cls.direction, needs, about)
            heads.append(
                Text.assemble(
                    (name, "bold"), f"  {cls.family}, {cls.direction} is better, needs: {needs}"
                )
            )
        print_catalogue(table, heads)
        out_console().print(
            "[dim]`saliencelab metrics NAME` shows one metric's formula, paper and options; use "
            "them with `saliencelab evaluate IMAGES --metrics NAME --option KEY=VALUE`.[/dim]"
        )


def _metric_detail(console: Any, cls: type) -> None:
    import inspect

    low, high = cls.value_range
    console.print(
        Text.assemble(
            (cls.name, "bold"),
            f"  {cls.family}, {cls.direction} is better, values in [{low:g}, {high:g}]",
        ),
        soft_wrap=True,
    )
    console.print(Text(inspect.getdoc(cls) or ""), soft_wrap=True)
    if cls.reference:
        console.print(Text(f"Paper: {cls.reference}"), soft_wrap=True)
    options = option_defaults(cls)
    if not options:
        console.print(Text("No options.", style="dim"))
    for k, v in options.items():
        console.print(Text(f"  {k} = {v!r}"), soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add the `evaluate` and `metrics` commands to the app."""
    app.command("evaluate")(evaluate_command)
    app.command("metrics")(list_metrics)
