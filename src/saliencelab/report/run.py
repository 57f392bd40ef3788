"""The explain pipeline shared by `saliencelab explain` and `saliencelab demo`.

`explain_images(model, images, methods, out_dir)` reads images (files, folders, or names of the
bundled sample photos), explains them, and writes into `out_dir`:

- `<stem>_<method>.png`: one overlay per image and method, on the image as the model sees it;
- `<stem>_gallery.png`: the photo and every method side by side;
- `maps.npz`: the raw maps of the run, arrays `<stem>/<method>` (float32, H x W, as the method
  returns them: not normalised) and `<stem>/target` (the explained class index, int64; -1 for a
  callable target);
- `index.html`: one card per image (error cards for images that could not be read).

A bad image (missing, not an image, too many pixels, ...) is recorded with its one-sentence
error and skipped; the rest go on. If explaining a batch fails, its images are retried one by
one: an error every image gives alike is about the request (unknown layer, target out of range)
and is raised; otherwise only the images that fail are recorded. Method names and options are
checked before any image is read.

How methods are run: methods that declare a shared pass (saliency, input x gradient, the CAM
family, ...) go to `sl.explain` together in ONE call, so their common forward+backward pass runs
once; every other method (integrated gradients, SmoothGrad, occlusion, ...) gets its own call.
Sharing is kept where it exists, and the progress callback still advances after each expensive
method. Images are explained together, in batches of `batch_images` (so memory stays bounded on
a folder of thousands of photos; `sl.explain` chunks each batch further); files are written and
`index.html` rewritten after each batch, so an interrupted run keeps what it did.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import time
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch import nn

import saliencelab as sl
from saliencelab.core.files import (
    FolderInTheWay,
    check_outputs,
    make_folder,
    temporary_beside,
)
from saliencelab.core.requests import named_requests, split_dotted
from saliencelab.data.images import to_rgb
from saliencelab.data.samples import is_sample_image
from saliencelab.models.model import displayed, preprocessed
from saliencelab.report.html import report_rows

ImageArg = str | os.PathLike | Image.Image
#: `progress(completed, total, description)`: work units done so far, units in all, current step.
ProgressFn = Callable[[float, float, str], None]

#: Images preprocessed and explained together (one `sl.explain` batch, chunked inside).
BATCH_IMAGES = 32

#: The longest side of the photo overlays are drawn on, for models without a `display`.
MAX_DRAWN_SIDE = 1024

_LOAD_UNITS = 1.0  # progress units for reading one image ...
_WRITE_UNITS = 1.0  # ... and for writing its overlays and gallery; one pass per image is 1 unit


@dataclass
class RunResult:
    """What `explain_images` did.

    Attributes:
        out_dir: the output folder.
        index_path: `out_dir/index.html`.
        maps_path: `out_dir/maps.npz`, or None when no image was explained.
        methods: the methods run, in order.
        rows: one dict per (image, method) in input order, with keys image, stem (its output
            files are named {stem}_{method}.png), predicted, probability, method, target,
            target_value, passes, forwards, seconds (per image), layer, shared_with (methods of
            the run that reused this method's pass); for a channel or neuron target predicted
            and probability are None, target names the channel ("channel 26 of features.3") and
            target_value is its reading (else None); an image that failed has one row with keys
            image and error.
        errors: (image, sentence) for every image that could not be explained.
        files: every file written.
        n_images: images explained.
        seconds: wall time of the run.
    """

    out_dir: Path
    index_path: Path
    maps_path: Path | None
    methods: list[str]
    rows: list[dict[str, Any]] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    n_images: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.errors


@dataclass
class ImageEntry:
    """One input image: its name in tables, unique file stem, source, and state."""

    name: str
    stem: str
    path: Path | None = None
    sample: str | None = None
    image: Image.Image | None = None
    error: str | None = None
    entry: sl.ReportEntry | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    max_pixels: int = 50_000_000


# -- the request ----------------------------------------------------------------------------------


def _did_you_mean(name: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=3, cutoff=0.5)
    return f" Did you mean: {', '.join(close)}?" if close else ""


def method_requests(
    methods: str | Sequence[str] | Mapping[str, Mapping[str, Any]],
    layer: Any = None,
    options: Mapping[str, Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """`{method: options}` for `sl.explain`, validated before any model work.

    `options` keys are either `key` (given to every requested method that takes it) or
    `method.key` (that method only). `layer` goes to every method that takes a layer.

    Raises:
        SaliencelabError: unknown method, an option no requested method takes, a per-method
            option for a method not requested, or a layer with no layer method.
    """
    specs = {s.name: s for s in sl.methods()}
    per_method = named_requests(
        methods, "method", "--methods saliency,gradcam (see `saliencelab methods`)"
    )
    for name in per_method:
        if name not in specs:
            raise sl.SaliencelabError(
                f"Unknown method {name!r}.{_did_you_mean(name, specs)} "
                "Run `saliencelab methods` to list them."
            )
    shared = split_dotted(options, per_method, "method", "the methods", known=list(specs))
    if layer is not None:
        shared["layer"] = layer
    for name, own in per_method.items():
        for key in own:
            if key not in specs[name].options:
                known = ", ".join(specs[name].options) or "none"
                raise sl.SaliencelabError(
                    f"{name} has no option {key!r}.{_did_you_mean(key, specs[name].options)} "
                    f"Its options: {known}."
                )
    for key in shared:
        if not any(key in specs[name].options for name in per_method):
            if key == "layer":
                raise sl.SaliencelabError(
                    f"A layer was given, but none of the methods {', '.join(per_method)} uses one; "
                    "add a layer method such as gradcam, or drop the layer."
                )
            known = {k for name in per_method for k in specs[name].options}
            raise sl.SaliencelabError(
                f"No requested method takes the option {key!r}.{_did_you_mean(key, known)} "
                "Check the methods' options with `saliencelab methods`."
            )
    return {
        name: {**{k: v for k, v in shared.items() if k in specs[name].options}, **own}
        for name, own in per_method.items()
    }


def _groups(requests: Mapping[str, Mapping[str, Any]]) -> list[list[str]]:
    """Methods sharing passes together in one call first, then one call per other method."""
    specs = {s.name: s for s in sl.methods()}
    sharing = [n for n in requests if specs[n].shared_passes]
    alone = [[n] for n in requests if not specs[n].shared_passes]
    return ([sharing] if sharing else []) + alone


def estimated_passes(method: str, options: Mapping[str, Any] | None = None) -> float:
    """Rough passes per sample a method will cost, for progress bars.

    From its declared cost: a number ("1"), an option name ("n_steps"), a product of those
    ("n_samples × base"), or free text naming options ("1 + K forwards (K = ... max_channels)");
    what cannot be read counts as 1.
    """
    spec = {s.name: s for s in sl.methods()}[method]
    values = {**spec.options, **(options or {})}

    def number(token: str) -> float | None:
        value = values.get(token, token)
        if isinstance(value, bool):
            return None
        try:
            value = float(value)
        except (TypeError, ValueError):
            return None
        return value if math.isfinite(value) and value > 0 else None

    cost = str(spec.cost)
    tokens = [t.strip() for t in cost.replace("\u00d7", "*").split("*")]
    if all(re.fullmatch(r"[\w.]+", t) for t in tokens):
        factors = [number(t) for t in tokens]
    else:
        factors = [number(w) for w in re.findall(r"[A-Za-z_]\w*", cost) if w in values]
    total = 1.0
    for f in factors:
        total *= f or 1.0
    return total


# -- inputs ---------------------------------------------------------------------------------------


def _stem(text: str, used: set[str]) -> str:
    stem = re.sub(r"[^\w.-]+", "_", text).strip("._") or "image"
    unique, n = stem, 2
    while unique.lower() in used:
        unique, n = f"{stem}-{n}", n + 1
    used.add(unique.lower())
    return unique


def output_folder(path: str | os.PathLike) -> Path:
    """Create the output folder (and parents); one sentence if that is not possible."""
    return make_folder(path, "output folder")


def collect_entries(
    images: Iterable[ImageArg], max_pixels: int = 50_000_000, repeats: list[str] | None = None
) -> list[ImageEntry]:
    """One item per image: files as given, folders expanded, names of sample photos; files with
    more than `max_pixels` pixels are refused when read (see `sl.load_image`). A file or sample
    given again (also inside a folder given too) is used once: the repeats are dropped, and
    their names appended to `repeats` when given (a repeated image counted twice in a mean)."""
    items = _entries(images)
    kept: list[ImageEntry] = []
    seen: set[object] = set()
    for item in items:
        key = _identity(item)
        if key is not None and key in seen:
            if repeats is not None:
                repeats.append(item.name)
            continue
        seen.add(key)
        kept.append(item)
    for item in kept:
        item.max_pixels = max_pixels
    return kept


def _identity(item: ImageEntry) -> object:
    """What makes two entries the same image: the resolved file, or the sample's name (None for
    an entry that is neither, e.g. a PIL image or an error)."""
    if item.error is None and item.path is not None and item.path.is_file():
        return item.path.resolve()
    return ("sample", item.sample) if item.sample is not None else None


def _entries(images: Iterable[ImageArg]) -> list[ImageEntry]:
    items: list[ImageEntry] = []
    used: set[str] = set()
    samples = set(sl.sample_images())
    for i, arg in enumerate(images):
        if isinstance(arg, Image.Image):
            name = f"image-{i + 1}"
            items.append(ImageEntry(name, _stem(name, used), image=to_rgb(arg)))
            continue
        text = os.fspath(arg)
        p = Path(text)
        if p.is_dir():
            try:
                found = sl.image_paths(p)
            except sl.SaliencelabError as e:
                items.append(ImageEntry(text, _stem(p.name, used), path=p, error=str(e)))
                continue
            items.extend(ImageEntry(str(f), _stem(f.stem, used), path=f) for f in found)
        elif is_sample_image(text) and not p.exists():
            items.append(ImageEntry(text, _stem(text, used), sample=text))
        elif p.exists() or p.suffix or "/" in text or os.sep in text:
            items.append(ImageEntry(text, _stem(p.stem, used), path=p))
        else:
            error = (
                f"{text!r} is neither an image file nor a sample photo; check the path, or use a "
                f"sample name ({', '.join(sorted(samples))}).{_did_you_mean(text, samples)}"
            )
            items.append(ImageEntry(text, _stem(text, used), error=error))
    return items


def load_entry(item: ImageEntry) -> None:
    try:
        if item.sample is not None:
            item.image = sl.sample_image(item.sample)
        elif item.path is not None:
            item.image = sl.load_image(item.path, max_pixels=item.max_pixels)
    except sl.SaliencelabError as e:
        item.error = _sentence(e)
        quoted = f"{str(item.path)!r} " if item.path is not None else None
        if quoted is not None and item.error.startswith(quoted):  # shown after its name anyway
            item.error = "The file " + item.error[len(quoted) :]


def _sentence(e: BaseException) -> str:
    return " ".join(str(e).split())


# -- outputs --------------------------------------------------------------------------------------


class _MapsWriter:
    """Writes arrays into one standard .npz file as they come (np.load reads it).

    They go to a temporary file beside `path`, moved over it by `close()`: `path` is always a
    whole file (an interrupted run used to leave half a zip there), and `discard()` drops the
    temporary file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._tmp = temporary_beside(path)
        self._zip: zipfile.ZipFile | None = None

    def add(self, key: str, array: np.ndarray) -> None:
        if self._zip is None:
            self._zip = zipfile.ZipFile(self._tmp, "x", allowZip64=True)
        with self._zip.open(key + ".npy", "w", force_zip64=True) as f:
            np.lib.format.write_array(f, np.asarray(array, order="C"), allow_pickle=False)

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()
            try:
                os.replace(self._tmp, self.path)
            except OSError as e:  # e.g. a folder made in its place during the run
                self._tmp.unlink(missing_ok=True)
                if self.path.is_dir():
                    raise FolderInTheWay(self.path, "the raw maps") from e
                raise sl.SaliencelabError(
                    f"Cannot write the raw maps {str(self.path)!r} ({e.strerror or e}); choose "
                    "another output folder."
                ) from e

    def discard(self) -> None:
        """The run stopped: no maps of it. The temporary file goes, and so does an earlier
        run's `path` once this run had written maps (its page, written batch by batch, would
        pass them off as its own); a run stopped before any map keeps the folder as it was."""
        if self._zip is None:
            return
        self._zip.close()
        self._zip = None
        self._tmp.unlink(missing_ok=True)
        self.path.unlink(missing_ok=True)

    @property
    def written(self) -> bool:
        return self._zip is not None


class _Progress:
    """Turns steps into `progress(completed, total, description)` calls (units ~ passes)."""

    def __init__(self, fn: ProgressFn | None, total: float) -> None:
        self.fn, self.total, self.done, self.description = fn, max(total, 1.0), 0.0, ""

    def step(self, description: str = "", units: float = 0.0) -> None:
        self.done = min(self.done + units, self.total)
        self.description = description or self.description
        if self.fn is not None:
            self.fn(self.done, self.total, self.description)

    def at_least(self, position: float, description: str = "") -> None:
        self.step(description, max(0.0, position - self.done))


# -- the pipeline ---------------------------------------------------------------------------------


def explain_images(
    model: sl.Model | nn.Module | str,
    images: ImageArg | Iterable[ImageArg],
    methods: str | Sequence[str] | Mapping[str, Mapping[str, Any]],
    out_dir: str | os.PathLike,
    target: Any = None,
    layer: Any = None,
    options: Mapping[str, Any] | None = None,
    progress: ProgressFn | None = None,
    embed: bool = False,
    *,
    chunk_size: int | None = None,
    batch_images: int = BATCH_IMAGES,
    title: str = "saliencelab",
    max_pixels: int = 50_000_000,
    links: Sequence[tuple[str, str | os.PathLike]] = (),
) -> RunResult:
    """Explain images with several methods and write overlays, galleries, maps and index.html.

    Args:
        model: an `sl.Model` (or anything `sl.load_model` takes).
        images: file paths, folders (their image files, sorted), names of sample photos
            (`sl.sample_images()`), or PIL images.
        methods: names (list or comma-separated) or `{name: {option: value}}`.
        out_dir: output folder (created).
        target: None (each image's predicted class), a class index, a class name, or a
            channel or neuron (`sl.channel(layer, c)`, `sl.neuron(layer, c, y, x)`).
        layer: layer for the layer methods (default: the model's, or found automatically).
        options: method options; `key` goes to every method taking it, `method.key` to one.
        progress: called as `progress(completed, total, description)` after each step (an image
            read, a method run on a batch, an image written); units are roughly passes.
        embed: inline the images in index.html as data URIs.
        chunk_size: rows per chunk inside `sl.explain` (default: measured).
        batch_images: images explained together per `sl.explain` call.
        title: the report's title.
        max_pixels: image files with more pixels are recorded as errors (`sl.load_image`).
        links: (text, path) pairs linked from the top of index.html (e.g. an evaluation page).

    Returns:
        A :class:`RunResult` with the table rows and the errors of the images that failed.

    Raises:
        SaliencelabError: a mistake in the request (unknown method, option, layer or target),
            or a model that cannot take images; per-image problems are recorded instead.
    """
    start = time.perf_counter()
    if not isinstance(model, sl.Model):
        model = sl.load_model(model)
    if model.preprocess is None:
        raise sl.SaliencelabError(
            f"The model {model.name!r} has no preprocessing, so it cannot read images; pass "
            "preprocess=fn (a list of PIL images → the input batch) to sl.load_model or "
            "sl.Model, or on the command line add --input-size N and --normalize "
            "imagenet|none|MEAN,STD."
        )
    requests = method_requests(methods, layer=layer, options=options)
    names = list(requests)
    groups = _groups(requests)
    if isinstance(images, (str, os.PathLike, Image.Image)):
        images = [images]
    items = collect_entries(images, max_pixels=max_pixels)
    if not items:
        raise sl.SaliencelabError("No images given; pass image files, folders or sample names.")

    check_outputs(run_outputs(Path(out_dir), items, names))  # before any work or file
    out = output_folder(out_dir)
    result = RunResult(out, out / "index.html", None, names)
    per_image = sum(max(estimated_passes(n, requests[n]) for n in g) for g in groups)
    prog = _Progress(progress, len(items) * (_LOAD_UNITS + per_image + _WRITE_UNITS))
    maps = _MapsWriter(out / "maps.npz")
    try:
        step = max(1, batch_images)
        for first in range(0, len(items), step):
            batch = items[first : first + step]
            for item in batch:
                if item.error is None:
                    prog.step(f"reading {item.name}")
                    load_entry(item)
                units = _LOAD_UNITS + (per_image + _WRITE_UNITS if item.error else 0.0)
                prog.step(f"read {item.name}", units)
            good = [it for it in batch if it.error is None]
            if good:
                explained = _explain_batch(
                    model, good, requests, groups, target, chunk_size, prog, result.n_images == 0
                )
                for item, ex, i in explained:
                    prog.step(f"writing {item.name}")
                    _write(model, item, ex, i, names, out, maps, result)
                    result.n_images += 1
                    prog.step(f"wrote {item.name}", _WRITE_UNITS)
            for item in batch:
                item.image = None  # free this batch's pixels
            prog.at_least(prog.total * (first + len(batch)) / len(items))
            result.index_path = _write_index(items, out, title, embed, links)
    except BaseException:  # (KeyboardInterrupt too)
        maps.discard()
        raise
    maps.close()
    if maps.written:
        result.maps_path = maps.path
        result.files.append(maps.path)
    elif maps.path.is_file():  # an earlier run's maps: they would pass for this run's
        maps.path.unlink()
    result.files.append(result.index_path)
    for item in items:
        if item.error is not None:
            result.errors.append((item.name, item.error))
            result.rows.append({"image": item.name, "error": item.error})
        else:
            result.rows.extend(item.rows)
    prog.at_least(prog.total, "done")
    result.seconds = time.perf_counter() - start
    return result


def run_outputs(out: Path, items: list[ImageEntry], names: list[str]) -> list[tuple[Path, str]]:
    """(path, what it is) of every file `explain_images` writes into `out` for `items`."""
    files = [(out / "index.html", "the report"), (out / "maps.npz", "the raw maps")]
    for item in items:
        files += [(out / f"{item.stem}_{name}.png", "an overlay") for name in names]
        files.append((out / f"{item.stem}_gallery.png", "a gallery"))
    return files


def _explain_batch(
    model: sl.Model,
    good: list[ImageEntry],
    requests: dict[str, dict[str, Any]],
    groups: list[list[str]],
    target: Any,
    chunk_size: int | None,
    prog: _Progress,
    first_batch: bool,
) -> list[tuple[ImageEntry, sl.Explanation, int]]:
    """Explain the images together; if that fails, one by one to find which image is bad.

    An error that every image gives alike is about the request (or the model), not an image:
    raised when nothing has been explained yet, else recorded on each image.
    """
    position = prog.done
    try:
        ex = _explain(model, [it.image for it in good], requests, groups, target, chunk_size, prog)
        return [(item, ex, i) for i, item in enumerate(good)]
    except sl.SaliencelabError as e:
        if len(good) == 1:
            if first_batch:
                raise
            good[0].error = _sentence(e)
            return []
        batch_error = e
    prog.at_least(position, "retrying image by image")
    done: list[tuple[ImageEntry, sl.Explanation, int]] = []
    errors: list[sl.SaliencelabError] = []
    for item in good:
        try:
            ex = _explain(model, [item.image], requests, groups, target, chunk_size, None)
            done.append((item, ex, 0))
        except sl.SaliencelabError as e:
            errors.append(e)
            item.error = _sentence(e)
    if not done and first_batch and len({str(e) for e in errors}) == 1:
        raise batch_error
    return done


def _explain(
    model: sl.Model,
    images: list[Image.Image],
    requests: dict[str, dict[str, Any]],
    groups: list[list[str]],
    target: Any,
    chunk_size: int | None,
    prog: _Progress | None,
) -> sl.Explanation:
    x = preprocessed(model, images)
    n = len(images)
    parts: list[sl.Explanation] = []
    for group in groups:
        label = ", ".join(group)
        units = max(estimated_passes(m, requests[m]) for m in group) * n
        if prog is not None:
            prog.step(f"{label} on {n} image{'s' if n != 1 else ''}")
        parts.append(
            sl.explain(
                model,
                x,
                methods={m: requests[m] for m in group},
                target=target,
                chunk_size=chunk_size,
            )
        )
        if prog is not None:
            prog.step(f"{label} done", units)
    attributions = {}
    for part in parts:
        attributions.update(part.attributions)
    first = parts[0]
    return sl.Explanation(
        attributions={m: attributions[m] for m in requests},
        inputs=first.inputs,
        logits=first.logits,
        labels=first.labels,
        total_passes=sum(p.total_passes for p in parts),
        total_forwards=sum(p.total_forwards for p in parts),
        seconds=sum(p.seconds for p in parts),
        layer_target=first.layer_target,
        score_target=first.score_target,
    )


def _write(
    model: sl.Model,
    item: ImageEntry,
    ex: sl.Explanation,
    i: int,
    names: list[str],
    out: Path,
    maps: _MapsWriter,
    result: RunResult,
) -> None:
    shown = displayed(model, item.image)
    if shown is None:
        shown = drawable_size(item.image)
    probs, values = ex.probabilities, ex.target_values
    label: str | None = None
    prob: float | None = None
    if probs is not None:  # a class prediction (not a channel or neuron target's readings)
        pred = int(probs[i].argmax())
        label, prob = ex.label(pred), float(probs[i, pred])
    value = None if values is None else float(values[i])
    batch = ex.logits.shape[0]

    overlays: dict[str, str] = {}
    rows: list[dict[str, Any]] = []
    for name in names:
        a = ex[name]
        path = sl.save_overlay(shown, a, out / f"{item.stem}_{name}.png", sample=i)
        result.files.append(path)
        overlays[name] = path.name
        maps.add(f"{item.stem}/{name}", a.maps[i].detach().float().cpu().numpy())
        rows.append(
            {
                "image": item.name,
                "stem": item.stem,  # its output files' names: {stem}_{method}.png
                "predicted": label,
                "probability": prob,
                "method": name,
                "target": ex.target_label(a, i),
                "target_value": value,
                "passes": a.passes,
                "forwards": a.forwards,
                "seconds": a.seconds / batch,
                "layer": a.layer,
                "shared_with": a.shared_with,
            }
        )
    maps.add(f"{item.stem}/target", np.asarray(int(ex[names[0]].target[i]), dtype=np.int64))
    maps.add(f"{item.stem}/image", np.asarray(item.name))  # which file (stems may be renamed)
    gallery = sl.save_gallery(
        shown,
        _one_image(ex, i),
        out / f"{item.stem}_gallery.png",
        title=f"{item.name}: {ex.target_text(i)}",
        original_size=item.image.size,
    )
    result.files.append(gallery)
    item.rows = rows
    # The report shows the target only when some method explained another class than predicted
    # (a channel or neuron target is named in the card's head instead).
    headline = label if probs is not None else (ex.explained_name or ex.target_text(i))
    item.entry = sl.ReportEntry(
        name=item.name,
        image_path=item.path.resolve() if item.path is not None else None,
        gallery_path=gallery.name,
        overlays=overlays,
        predicted=label,
        probability=prob,
        explained=None if probs is not None else ex.target_text(i),
        rows=report_rows(rows, headline),
        maps_path=maps.path.name,
    )


def drawable_size(image: Image.Image) -> Image.Image:
    """`image`, shrunk to at most `MAX_DRAWN_SIDE` pixels on its longer side: a model without a
    `display` (the image as it sees it) gets its overlays drawn on the photo itself, and a
    4000 x 3000 photo under a 64 x 64 map made 3000 x 3000 overlays of 5-6 MB each."""
    return shrunk(image, MAX_DRAWN_SIDE)


def shrunk(image: Image.Image, side: int) -> Image.Image:
    """`image` (itself when it fits), or a copy shrunk to at most `side` pixels on its longer
    side, its proportions kept (Lanczos)."""
    if max(image.size) <= side:
        return image
    small = image.copy()
    small.thumbnail((side, side), Image.Resampling.LANCZOS)
    return small


def _one_image(ex: sl.Explanation, i: int) -> sl.Explanation:
    """Sample `i` of `ex` alone, with each method's seconds as this image's share of the batch."""
    batch = ex.logits.shape[0]
    attributions = {
        name: dataclasses.replace(
            a,
            maps=a.maps[i : i + 1],
            attributions=a.attributions[i : i + 1],
            target=a.target[i : i + 1],
            seconds=a.seconds / batch,
        )
        for name, a in ex.attributions.items()
    }
    return dataclasses.replace(
        ex,
        attributions=attributions,
        inputs=ex.inputs[i : i + 1],
        logits=ex.logits[i : i + 1],
        seconds=ex.seconds / batch,
    )


def _write_index(
    items: list[ImageEntry],
    out: Path,
    title: str,
    embed: bool,
    links: Sequence[tuple[str, str | os.PathLike]] = (),
) -> Path:
    entries = []
    for item in items:
        if item.entry is not None:
            entries.append(item.entry)
        elif item.error is not None:
            entries.append(sl.ReportEntry(name=item.name, image_path=item.path, error=item.error))
    return sl.write_index(out, entries, title=title, embed=embed, links=links)
