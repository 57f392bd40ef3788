"""`sl.visualize`: optimise images until an objective (a neuron, channel, class...) is high.

Each step: images = param() in [0, 1] → random transforms → the model's input normalisation →
forward (hooks record the layers the objectives read; the forward stops right after the last one
when no objective needs the logits) → loss = -Σ_n objective_n(capture)[n] → backward → Adam step
on the parameterization. The model is in eval mode with frozen parameters, and every hook is
removed and every flag restored afterwards, also on error (core/state.py).

Olah, Mordvintsev & Schubert, "Feature Visualization", Distill 2017; Fel et al., "Unlocking
Feature Visualization for Deeper Networks with MAgnitude-Constrained Optimization", NeurIPS 2023.
"""

from __future__ import annotations

import logging
import math
import re
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..core.context import autograd_allowed
from ..core.errors import SaliencelabError
from ..core.layers import get_layer, module_name
from ..core.state import Hooks, attribution_mode
from ..models.model import Model, as_model, logits_of, parameter_dtype, size_error
from ..neurons.activations import refuse_unsupported
from ..viz.io import save_image
from . import transforms as T
from .objectives import Capture, Objective, as_objective
from .param import ImageParam, MacoParam, Size, image_size, make_param

log = logging.getLogger("saliencelab")

#: Adam learning rates per parameterization (tuned on EfficientNet-Lite0 class logits).
DEFAULT_LR = {"fft": 0.1, "decorrelated": 0.05, "pixel": 0.05, "maco": 0.2}

Normalize = Callable[[torch.Tensor], torch.Tensor]


def picture_names(objectives: Sequence[str], prefix: str = "featurevis") -> list[str]:
    """The file name of each image of a run with these objective names (one per image):
    `prefix_00_channel_blocks_12_7.png` (`Visualization.save`; the CLI checks them first)."""
    return [f"{prefix}_{i:02d}_{slug(name)}.png" for i, name in enumerate(objectives)]


@dataclass
class Visualization:
    """The result of :func:`visualize`.

    Attributes:
        images: (N, 3, H, W) float in [0, 1], detached, on the model's device.
        objectives: the objective optimised for each image (names).
        history: (steps, N) each image's objective value at each step (under that step's random
            transforms), so `history[-1]` is the final value and `history[:, n]` its curve.
        transparency: MACO only: (N, H, W) in [0, 1], the accumulated |∂objective/∂pixel| summed
            over colours and scaled per image (Fel et al. 2023); None for other parameterizations.
        param: the parameterization's name.
        seed: the seed used.
        seconds: wall-clock time of the optimisation.
        chunk: images per model pass (at the end of the run).
    """

    images: torch.Tensor
    objectives: list[str]
    history: torch.Tensor
    transparency: torch.Tensor | None = None
    param: str = "fft"
    seed: int = 0
    seconds: float = 0.0
    chunk: int = 1

    def __len__(self) -> int:
        return self.images.shape[0]

    def __repr__(self) -> str:
        n, _, h, w = self.images.shape
        return (
            f"Visualization({n} image{'s' if n != 1 else ''} {h}x{w}, param={self.param!r}, "
            f"steps={self.history.shape[0]}, objectives={self.objectives})"
        )

    @property
    def values(self) -> torch.Tensor:
        """(N,) each image's objective value at the last step."""
        return self.history[-1]

    def pil(self, index: int = 0) -> Image.Image:
        """Image `index` as an RGB PIL image."""
        x = self.images[index].detach().float().clamp(0, 1).cpu()
        arr = (x.permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)
        return Image.fromarray(arr, "RGB")

    def transparent(self, index: int = 0) -> Image.Image:
        """MACO: image `index` as RGBA with its transparency map as the alpha channel."""
        if self.transparency is None:
            raise SaliencelabError(
                "Only MACO visualizations have a transparency map; run with param='maco'."
            )
        alpha = (self.transparency[index].detach().float().cpu().numpy() * 255 + 0.5).astype(
            np.uint8
        )
        rgba = self.pil(index).convert("RGBA")
        rgba.putalpha(Image.fromarray(alpha, "L"))
        return rgba

    def file_names(self, prefix: str = "featurevis") -> list[str]:
        """`prefix_00_channel_blocks_12_7.png`, one per image."""
        return picture_names(self.objectives, prefix)

    def save(self, directory: str | Path, prefix: str = "featurevis") -> list[Path]:
        """Write each image as PNG into `directory` (created); MACO adds `*_transparent.png`."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        paths = []
        for i, name in enumerate(self.file_names(prefix)):
            path = out / name
            save_image(self.pil(i), path)
            paths.append(path)
            if self.transparency is not None:
                tpath = out / name.replace(".png", "_transparent.png")
                self.transparent(i).save(tpath, format="PNG")
                paths.append(tpath)
        return paths

    def gallery(
        self,
        tile: int = 160,
        columns: int | None = None,
        title: str | None = None,
        labels: Sequence[str] | None = None,
        note: str | None = None,
    ) -> Image.Image:
        """All images in a labelled grid (objective and final value under each); `note` is added
        to the subtitle (e.g. what else the values include)."""
        from ..neurons.grid import Tile, draw_grid, value_text

        labels = list(labels) if labels is not None else self.objectives
        tiles = []
        for i in range(len(self)):
            img = self.pil(i).resize((tile, tile), Image.Resampling.LANCZOS)
            tiles.append(Tile(img, [labels[i], f"{value_text(float(self.values[i]))}"]))
            if self.transparency is not None:
                rgba = self.transparent(i).resize((tile, tile), Image.Resampling.LANCZOS)
                white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                tiles.append(
                    Tile(Image.alpha_composite(white, rgba).convert("RGB"), ["transparency"])
                )
        steps = self.history.shape[0]
        subtitle = f"{self.param}, {steps} steps, seed {self.seed}"
        if note:
            subtitle += f"; {note}"
        return draw_grid(tiles, columns, title, subtitle)

    def save_gallery(self, path: str | Path, **kw) -> Path:
        """Write :meth:`gallery` to `path` (PNG unless its suffix names another format)."""
        return save_image(self.gallery(**kw), path)


def examples_picture(
    model: Model | nn.Module,
    vis: Visualization,
    index: int,
    examples: Sequence,
    normalize: Normalize | None = None,
    title: str | None = None,
    tile: int = 160,
    columns: int = 4,
) -> Image.Image:
    """Image `index` of `vis` next to a channel's top dataset examples (their crops), labelled.

    `examples` is what :func:`saliencelab.neurons.top_examples` returned for one layer and
    channel: the visualization shows what the channel prefers, the examples where real images
    drive it (Olah et al. 2017, "Dataset examples" next to "Optimization"). Every caption gives
    the same number: the channel's strongest unit, max_yx A[c, y, x], on that image (for the
    visualization: on the image itself, without transforms).
    """
    from ..neurons.grid import Tile, draw_grid, value_text

    if not examples:
        raise SaliencelabError("There are no dataset examples to draw; pass top_examples(...).")
    m = as_model(model)
    first = examples[0]
    norm = normalize if normalize is not None else default_normalize(m)
    seen: list[object] = []
    layer = get_layer(m.module, first.layer)
    image = vis.images[index : index + 1].to(m.device)
    with attribution_mode(m.module), Hooks() as hooks, torch.no_grad():
        hooks.add(layer.register_forward_hook(lambda mod, i, out: seen.append(out)))
        m.module(norm(image))
    a = as_map(m, seen[0], image.shape[-2:], first.layer)  # the layer's first call
    value = float(a[0, first.channel].amax())
    lead = Tile(
        vis.pil(index).resize((tile, tile), Image.Resampling.LANCZOS),
        ["visualization", value_text(value)],
    )
    tiles = [
        Tile(
            ex.crop.resize((tile, tile), Image.Resampling.LANCZOS),
            [Path(str(ex.source)).name, value_text(ex.value)],
        )
        for ex in examples
    ]
    if title is None:
        title = f"{first.layer}, channel {first.channel}: visualization and top dataset examples"
    return draw_grid(
        tiles,
        columns=min(columns, len(tiles)),
        title=title,
        subtitle="examples: receptive-field crops around each image's strongest unit; values: "
        "the channel's strongest unit on each image",
        lead=lead,
    )


def layer_output(out: object, name: str) -> torch.Tensor:
    """A hooked layer's output as a tensor: the first element of a tuple or list output."""
    if isinstance(out, (tuple, list)) and out:
        out = out[0]
    if not isinstance(out, torch.Tensor):
        raise SaliencelabError(
            f"The layer {name} returns {type(out).__name__}, not a tensor; pick a layer whose "
            "output is a tensor."
        )
    return out


def as_map(model: Model, out: object, image_size: Sequence[int], name: str) -> torch.Tensor:
    """A layer's output as the library reads it everywhere else (`sl.activations`, the CAMs): the
    first tensor of a tuple, and a vision transformer's tokens (N, T, D) laid on the patch grid
    (N, D, h, w) (class and register tokens dropped), so channel c is feature c, not token c."""
    from ..core.tokens import model_to_grid

    return model_to_grid(model, layer_output(out, name), image_size, name)


def slug(text: str) -> str:
    """A file-name-safe lower-case version of `text` ("class_logit('Egyptian cat')" -> ...)."""
    s = re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")
    return s[:80] or "objective"


# -- normalisation ------------------------------------------------------------------------------


def probe_normalize(model: Model) -> Normalize | None:
    """The model's input normalisation x ↦ a·x + b per channel, read off its `preprocess`.

    Preprocessing three constant images (black, mid-gray, white) shows where a pixel value
    v ∈ [0, 1] lands: if the outputs are spatially constant and the gray one lies on the line
    through the other two (to 1e-3), that line is the normalisation. None if the model has no
    preprocessing or it is not a per-channel affine map.
    """
    if model.preprocess is None:
        return None
    try:
        outs = []
        for v in (0, 128, 255):
            t = model.preprocess(Image.new("RGB", (64, 64), (v, v, v)))
            t = t.detach().float().cpu()
            if t.dim() != 4 or t.shape[1] != 3:
                return None
            per = t[0].flatten(1)
            if float((per.max(1).values - per.min(1).values).max()) > 1e-4:
                return None
            outs.append(per.mean(1))
    except Exception:  # noqa: BLE001 - any failure: no probe result
        return None
    lo, mid, hi = outs
    a, b = hi - lo, lo
    if not bool((a.abs() > 1e-6).all()):
        return None
    if float((mid - (a * (128 / 255) + b)).abs().max()) > 1e-3:
        return None
    a4, b4 = a.view(1, 3, 1, 1), b.view(1, 3, 1, 1)

    def normalize(x: torch.Tensor) -> torch.Tensor:
        return x * a4.to(x.device, x.dtype) + b4.to(x.device, x.dtype)

    normalize.scale, normalize.shift = a, b  # type: ignore[attr-defined]
    return normalize


def default_normalize(model: Model) -> Normalize:
    """`model.extra["normalize"]` if set, else :func:`probe_normalize`, else the identity.

    For EfficientNet-Lite0 the probe finds x ↦ (255·x - 127) / 128.
    """
    fn = model.extra.get("normalize") if isinstance(model.extra, dict) else None
    if callable(fn):
        return fn
    fn = probe_normalize(model)
    if fn is not None:
        return fn
    log.info(
        "feeding images in [0, 1] to %s unnormalised (no preprocessing to read the "
        "normalisation from); pass normalize= if the model expects another range",
        model.name,
    )
    return lambda x: x


# -- the optimisation ----------------------------------------------------------------------------


class Adam:
    """Adam (Kingma & Ba, ICLR 2015), written out: m ← β₁m + (1-β₁)g, v ← β₂v + (1-β₂)g²,
    p ← p - lr·m̂ / (√v̂ + ε) with m̂ = m/(1-β₁ᵗ), v̂ = v/(1-β₂ᵗ).

    The same update as `torch.optim.Adam` (defaults β = (0.9, 0.999), ε = 1e-8); written here
    because `torch.optim` imports TorchDynamo on first use, which costs seconds per process.
    """

    def __init__(
        self,
        params: list[torch.Tensor],
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        self.params, self.lr, self.betas, self.eps = params, float(lr), betas, float(eps)
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]
        self.t = 0

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        self.t += 1
        b1, b2 = self.betas
        c1, c2 = 1 - b1**self.t, 1 - b2**self.t
        for p, m, v in zip(self.params, self.m, self.v, strict=True):
            if p.grad is None:
                continue
            g = p.grad
            m.mul_(b1).add_(g, alpha=1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = (v / c2).sqrt_().add_(self.eps)
            p.addcdiv_(m, denom, value=-self.lr / c1)


class _Stop(Exception):
    """Raised by the last needed layer's hook: the rest of the forward is not needed."""


def _objectives(objective, batch: int | None) -> tuple[list[Objective], int]:
    """One objective per image, and the batch size."""
    if isinstance(objective, (list, tuple)):
        objs = [as_objective(o) for o in objective]
        if not objs:
            raise SaliencelabError("Got an empty list of objectives; pass at least one.")
        k = len(objs)
        n = k if batch is None else int(batch)
        if n < k or n % k:
            raise SaliencelabError(
                f"batch={n} does not split evenly over {k} objectives; use a multiple of {k} "
                "(each objective gets batch / objectives images)."
            )
        per = n // k
        return [o for o in objs for _ in range(per)], n
    obj = as_objective(objective)
    n = 1 if batch is None else int(batch)
    if n < 1:
        raise SaliencelabError(f"batch must be 1 or more, not {batch}.")
    return [obj] * n, n


def _transforms(transforms, param: str | ImageParam, size: tuple[int, int]) -> T.Transform:
    if transforms is None or transforms == "none":
        return T.none(size)
    if transforms == "standard":
        return T.standard(size)
    if transforms == "maco":
        return T.maco(size)
    if transforms == "default":
        return T.maco(size) if _param_name(param) == "maco" else T.standard(size)
    if isinstance(transforms, (list, tuple)):
        if _scale_undone(transforms):
            warnings.warn(
                "RandomScale in a list of transforms is undone by the resize to `size` that "
                "follows the list; use T.RandomAffine(scales, size=size) to vary the "
                "magnification.",
                stacklevel=4,  # visualize, its autograd_allowed wrapper, the caller
            )
        return T.compose(*transforms, T.Resize(size))
    if callable(transforms):
        return transforms
    raise SaliencelabError(
        f"transforms must be 'default', 'standard', 'maco', 'none', a callable (x, rng) -> x or "
        f"a list of them, not {transforms!r}."
    )


def _scale_undone(transforms: Sequence[T.Transform]) -> bool:
    """Whether a RandomScale in the list is followed by no crop or affine to a fixed size, so the
    resize to `size` appended to the list restores the magnification it changed."""
    fixed = False
    for t in reversed(transforms):
        if isinstance(t, (T.RandomCrop, T.RandomAffine)) and t.size is not None:
            fixed = True
        elif isinstance(t, T.RandomScale) and not fixed:
            return True
    return False


def _param_name(param: str | ImageParam) -> str:
    if isinstance(param, str):
        return param
    return "maco" if isinstance(param, MacoParam) else type(param).__name__


def _progress(enabled: bool):
    import random

    state = random.getstate()  # importing rich draws from Python's global `random` (its style
    try:  # ids): a user's seeded stream must not move
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
        )
    finally:
        random.setstate(state)

    console = Console(stderr=True)
    progress = Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not (enabled and console.is_terminal),
    )
    return progress


#: The image side when the model does not say what it takes.
DEFAULT_SIZE = 224


def default_size(model: Model) -> int | tuple[int, int]:
    """The model's `input_size` (H, W) when it has one, else :data:`DEFAULT_SIZE`."""
    if model.input_size is None:
        return DEFAULT_SIZE
    h, w = model.input_size
    return int(h), int(w)


@autograd_allowed()  # optimises the image: also inside no_grad / inference_mode
def visualize(
    model: Model | nn.Module,
    objective: Objective | int | str | Sequence[Objective | int | str],
    *,
    steps: int = 256,
    size: Size | None = None,
    param: str | ImageParam = "fft",
    batch: int | None = None,
    seed: int = 0,
    lr: float | None = None,
    transforms: str | T.Transform | Sequence[T.Transform] = "default",
    normalize: Normalize | None = None,
    decay: float = 1.0,
    valid: str = "sigmoid",
    chunk: int | None = None,
    progress: bool = True,
) -> Visualization:
    """Images that maximise `objective`, by gradient ascent from noise.

    Args:
        model: an `sl.Model` or `nn.Module` (its parameters are frozen and it is in eval mode
            during the run; both restored after).
        objective: an :class:`~saliencelab.featurevis.objectives.Objective`
            (`sl.objectives.channel("_blocks.12", 7)`), a class index or name (its logit), or a
            list of them: objective i is optimised on image(s) i, all in one batch.
        steps: optimisation steps (each one forward + backward of the batch).
        size: image size, an int or (H, W); the model sees exactly this size every step.
            Default: the model's `input_size` when it has one (64 x 64 for `shapes_cnn`), else
            224 (:func:`default_size`).
        param: "fft" (Fourier, 1/f^decay, decorrelated colour), "maco", "decorrelated",
            "pixel", or an :class:`~saliencelab.featurevis.param.ImageParam`.
        batch: images; default one per objective. With one objective, a batch gives several
            images for it (add `sl.objectives.diversity(layer)` to make them differ).
        seed: seeds the initial parameters and the random transforms. Image i starts from the
            i-th draw and gets noise from its own generator, and the transforms' parameters
            are shared by the batch, so image i does not depend on the batch size or the other
            images' objectives (up to the model's batched kernels, see `chunk`), unless an
            objective is batchwise (diversity).
        lr: Adam's learning rate (default per param, :data:`DEFAULT_LR`).
        transforms: "default" (:func:`~.transforms.standard`, or :func:`~.transforms.maco` for
            MACO), "standard", "maco", "none", a callable `(x, rng) -> x`, or a list of them
            (followed by a resize to `size`, which undoes a :class:`~.transforms.RandomScale`:
            a warning says so).
        normalize: maps images in [0, 1] to the model's input range; default
            :func:`default_normalize` (found from the model's preprocessing).
        decay: the Fourier parameterization's 1/f exponent.
        valid: "sigmoid" or "clip", how values are kept in [0, 1].
        chunk: images per model pass; default found by timing the first steps
            (:class:`ChunkSearch`), the whole batch when an objective is batchwise (diversity).
            The images are the same whatever the chunk when the model's kernels are
            batch-invariant (they are for EfficientNet-Lite0 on CPU).
        progress: show a Rich progress bar on stderr (when it is a terminal).

    Returns:
        a :class:`Visualization` (images in [0, 1], objective history, MACO transparency).
    """
    m = as_model(model)
    refuse_unsupported(m, "Feature visualization")
    module = m.module
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise SaliencelabError(f"steps must be a positive integer, not {steps!r}.")
    hw = image_size(default_size(m) if size is None else size)
    objs, n = _objectives(objective, batch)
    name = _param_name(param)
    if lr is None:
        lr = DEFAULT_LR.get(name, 0.05)
    if not lr > 0:
        raise SaliencelabError(f"lr must be positive, not {lr}.")
    device = m.device
    # The images are optimised in float32 (float64 for a float64 model); the model sees them in
    # its own dtype (a float16 model gets float16 inputs, its gradients come back as float32).
    model_dtype = parameter_dtype(m) or torch.float32
    dtype = torch.float64 if model_dtype == torch.float64 else torch.float32
    image_param = make_param(param, n, hw, seed=seed, decay=decay, valid=valid)
    image_param = image_param.to(device=device, dtype=dtype)
    transform = _transforms(transforms, param, hw)
    norm = normalize if normalize is not None else default_normalize(m)
    rng = T.Rng(seed, device)
    optimizer = Adam(list(image_param.parameters()), lr=lr)
    maco = isinstance(image_param, MacoParam)

    # The layers the objectives read, by name (a module is looked up in the model).
    distinct = list(dict.fromkeys(o for o in objs))
    names: dict[int, str] = {}
    layers: dict[str, nn.Module] = {}
    for o in distinct:
        for ref in o.layers:
            if isinstance(ref, str):
                layers[ref] = get_layer(module, ref)
            else:
                lname = module_name(module, ref)
                names[id(ref)] = lname
                layers[lname] = ref
    need_logits = any(o.logits for o in distinct)
    owner = [distinct.index(o) for o in objs]  # image i optimises distinct[owner[i]]
    batchwise = any(o.batchwise for o in distinct)
    if chunk is not None:
        if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
            raise SaliencelabError(f"chunk must be a positive integer, not {chunk!r}.")
        if batchwise and chunk < n:
            raise SaliencelabError(
                "A diversity objective compares every image with the others, so the batch must "
                f"go through the model in one chunk; leave chunk out or set chunk={n}."
            )
    search = ChunkSearch(n, fixed=n if batchwise else chunk)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)

    history = torch.zeros(steps, n, device=device, dtype=dtype)
    accumulated = torch.zeros(n, *hw, device=device, dtype=dtype) if maco else None
    start = time.perf_counter()
    with attribution_mode(module), Hooks() as hooks, _progress(progress) as bar:
        task = bar.add_task(f"visualize ({name})", total=steps)
        capture = Capture(labels=m.labels, names=names)

        seen_size: list[torch.Size] = [torch.Size(hw)]  # what the model sees this step

        def record(lname: str):
            def hook(mod, inputs, out):
                if lname in capture.activations:  # a layer called twice: its first call, as
                    return None  # the engine reads it (and the forward stops after it)
                capture.activations[lname] = as_map(m, out, seen_size[0], lname)
                if not need_logits and len(capture.activations) == len(layers):
                    raise _Stop
                return None

            return hook

        for lname, layer_module in layers.items():
            hooks.add(layer_module.register_forward_hook(record(lname)))

        def run(x: torch.Tensor, images: torch.Tensor, rows: range) -> torch.Tensor:
            """The objective values of images `rows` (model inputs x, images before transforms)."""
            capture.activations, capture.logits, capture.images = {}, None, images
            seen_size[0] = x.shape[-2:]
            try:
                capture.logits = logits_of(module(x))
            except _Stop:
                pass
            except RuntimeError as err:  # e.g. a linear head built for another image size
                if ran[0]:
                    raise
                raise size_error(x, err, "size=(H, W)") from err
            ran[0] = True
            return _values(distinct, owner, capture, rows, device)

        ran = [False]  # whether a forward went through: a failure of the first is the size's

        for step in range(steps):
            timing = not search.settled
            if timing:
                sync()
                tic = time.perf_counter()
            optimizer.zero_grad()
            images = image_param()
            if maco:
                images.retain_grad()
            x = norm(transform(images, rng)).to(model_dtype)
            size = search.size
            if size >= n:
                values = run(x, images, range(n))
                (-values.sum()).backward()
            else:
                # The model in chunks of `size` images; their input gradients are gathered and
                # sent back through the transforms and the parameterization once.
                xd = x.detach().requires_grad_(True)
                imd = images.detach().requires_grad_(True)
                parts = []
                for lo in range(0, n, size):
                    rows = range(lo, min(lo + size, n))
                    v = run(xd[lo : rows.stop], imd[lo : rows.stop], rows)
                    (-v.sum()).backward()
                    parts.append(v.detach())
                values = torch.cat(parts)
                roots, grads = [x], [xd.grad]
                if imd.grad is not None:  # an objective read the images (a regulariser)
                    roots.append(images)
                    grads.append(imd.grad)
                torch.autograd.backward(roots, grads)
            if maco:
                accumulated += images.grad.abs().sum(dim=1)
            optimizer.step()
            history[step] = values.detach()
            bar.advance(task)
            if timing:
                sync()
                search.record(time.perf_counter() - tic)
        capture.activations, capture.images = {}, None
    with torch.no_grad():
        final = image_param().detach().clamp(0, 1)
    seconds = time.perf_counter() - start
    _warn_stuck(history, objs, module, layers)
    transparency = None
    if accumulated is not None:
        from ..viz.normalize import normalize_map

        transparency = normalize_map(accumulated.cpu(), signed=False).to(device)
    return Visualization(
        images=final,
        objectives=[o.name for o in objs],
        history=history,
        transparency=transparency,
        param=name,
        seed=seed,
        seconds=seconds,
        chunk=search.size,
    )


class ChunkSearch:
    """How many images go through the model at once, found while optimising.

    Every step processes the whole batch, in chunks of `size`. Each size is used twice (the first
    use warms up, e.g. oneDNN builds its kernels for a new shape), the second is timed. Starting
    from the whole batch, the size is halved while the step gets more than 3 % faster; then the
    fastest size is kept. On a CPU a batch of 8 224x224 images can cost more per image than
    chunks of 4; on a GPU the whole batch usually wins at once. With `fixed`, no search.
    """

    def __init__(self, n: int, fixed: int | None = None) -> None:
        self.n = n
        self.size = min(fixed, n) if fixed is not None else n
        self.settled = fixed is not None or n == 1
        self.times: dict[int, float] = {}
        self._warm = False

    def record(self, seconds: float) -> None:
        """Learn from a step at the current size that took `seconds`."""
        if self.settled:
            return
        if not self._warm:
            self._warm = True
            return
        self._warm = False
        best = min(self.times.values(), default=math.inf)
        self.times[self.size] = seconds
        if seconds < 0.97 * best and self.size > 1:
            self.size = (self.size + 1) // 2
        else:
            self.size = min(self.times, key=self.times.__getitem__)
            self.settled = True


def _values(
    distinct: list[Objective],
    owner: list[int],
    capture: Capture,
    rows: range,
    device: torch.device,
) -> torch.Tensor:
    """(len(rows),) the value of each image's own objective, for images `rows` of the batch."""
    n = len(rows)
    present = sorted({owner[r] for r in rows})
    if len(present) == 1:
        obj = distinct[present[0]]
        v = obj(capture)
        _check_values(obj, v, n)
        return v
    values = None
    for k in present:
        obj = distinct[k]
        v = obj(capture)
        _check_values(obj, v, n)
        mask = torch.tensor([owner[r] == k for r in rows], device=device)
        values = torch.where(mask, v, 0.0 if values is None else values)
    return values


def _check_values(obj: Objective, v: torch.Tensor, n: int) -> None:
    if not isinstance(v, torch.Tensor) or v.shape != (n,):
        got = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
        raise SaliencelabError(
            f"The objective {obj.name} must return one value per image, shape ({n},), but "
            f"returned {got}."
        )


_RELUS = (nn.ReLU, nn.ReLU6)


def _before_relu(root: nn.Module, name: str, module: nn.Module) -> str | None:
    """The layer just before the ReLU that ends `module` (a ReLU, or a Sequential ending in one),
    when it has a name: its pre-activation, where a channel has a gradient even when it is off."""
    if isinstance(module, nn.Sequential) and len(module) > 1 and isinstance(module[-1], _RELUS):
        return f"{name}.{len(module) - 2}"
    if isinstance(module, _RELUS):
        parent_name, _, last = name.rpartition(".")
        parent = root.get_submodule(parent_name) if parent_name else root
        if isinstance(parent, nn.Sequential) and last.isdigit() and int(last) > 0:
            return f"{parent_name}.{int(last) - 1}" if parent_name else str(int(last) - 1)
    return None


def _warn_stuck(
    history: torch.Tensor, objs: list[Objective], root: nn.Module, layers: dict[str, nn.Module]
) -> None:
    """Warn when an image's objective never moved: its gradient was zero from the start (a
    channel behind a ReLU that does not fire on the starting noise), so the image is the
    starting gray, not a visualization."""
    if history.shape[0] < 2:
        return
    stuck = (history == history[0]).all(dim=0)
    for name in dict.fromkeys(objs[i].name for i in stuck.nonzero().flatten().tolist()):
        obj = next(o for o in objs if o.name == name)
        value = float(history[0][[o.name for o in objs].index(name)])
        if not obj.layers:  # the model's output (a class): every path to it is off at the start
            log.warning(
                "%s stayed at %.4g for all %d steps: its gradient was zero (every unit feeding "
                "it sits behind a ReLU or clamp that is off on the starting image), so the image "
                "is the starting one, not a visualization; start elsewhere: a larger size (the "
                "model's own input size), another param, or another seed.",
                name,
                value,
                history.shape[0],
            )
            continue
        hint = ""
        for lname in obj.layers:
            key = lname if isinstance(lname, str) else module_name(root, lname)
            before = _before_relu(root, key, layers[key]) if key in layers else None
            if before is not None:
                hint = f" (e.g. {before}, the layer before the ReLU of {key})"
                break
        log.warning(
            "%s stayed at %.4g for all %d steps: its gradient was zero (a unit behind a ReLU "
            "that never fired), so the image is the starting one, not a visualization; pick the "
            "layer before the ReLU%s, or another channel.",
            name,
            value,
            history.shape[0],
            hint,
        )
