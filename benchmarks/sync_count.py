"""Host-device synchronisations of one metric or method call, per call and per chunk: what
would make the host wait for a GPU, counted on the CPU.

    .venv/bin/python benchmarks/sync_count.py [--metrics deletion,insertion,...|all]
        [--methods occlusion,lime,...|all] [--images 8] [--chunks 4,8] [--where]
        [--device cpu|cuda]

With `--device cuda` the same calls run on a GPU and the real waits are counted instead
(`CudaSyncs`: PyTorch's sync debug mode warns at each, counted per library line): the check of
the counts below on the hardware they are about (benchmarks/all_cuda.sh, part `syncs`).

Metrics (`--metrics`, and the default without `--methods`): the call is op_count.py's:
metrics_floor.py's `ours` on the shapes CNN (`sl.data.shapes.make(8, seed=0)`, the saliency maps
of the predicted classes, the metric's small settings from metrics_floor.py; the explainer is
saliency at the same fixed chunk size). Methods (`--methods`): `sl.explain(model, x, {method:
options}, target=..., chunk_size=...)` on the same images and predicted classes, for each entry
of `METHODS` (every method registered for CNN images, with settings that give several
chunks, some also with other options: occlusion and feature ablation without incremental
inference, `_full`; not the attention rollouts, which need a transformer, nor text's
leave_one_out). Each call runs
after two warm-up calls, with every engine's chunk size fixed, once per chunk size of
`--chunks` (default 4 and 8 rows): a site whose count differs between them runs per chunk
(`per chunk` = its extra syncs over the extra chunks), the others per call. A chunk is one row
range the engine hands out (`ChunkPlan.chunks`), every pass of the call included.

On a GPU the host waits for the device (everything queued before) when it reads a value of a
device tensor or copies between host and device memory. Counted (a `TorchDispatchMode` for the
ATen operators, `torch.Tensor` methods swapped for the call for the rest), each with the line
of the library that caused it (the innermost frame in `saliencelab/`, and the metric's frame
that led there when that one is outside `metrics/`):

- `item`: `aten._local_scalar_dense` and, under `torch.inference_mode()` (where it reaches
  the mode undecomposed), `aten.item` (`item()`, `bool(t)`, `int(t)`, `float(t)`, `if t:`),
  `nonzero` (also `torch.where(cond)`), `masked_select`, `equal`, `unique`, `bincount`,
  `repeat_interleave` with tensor repeats, indexing with a boolean mask (`t[mask]`; a mask
  assignment of more than one value: `t[mask] = values`);
- `to host`: `.cpu()`, `.to("cpu")`, `.tolist()` of a device tensor, or an in-place copy into
  a host tensor from one (`.numpy()` of a device tensor fails on CUDA: where the library calls
  it on one, it is in a branch only the CPU takes, and is not counted);
- `to device`: a host tensor copied to the device: `.to(dev)` of it, `torch.tensor(...)` with
  `device=`, or a host tensor (not a 0-D scalar) used with device tensors (e.g. a device tensor
  indexed by it). From pageable host memory such a copy waits for the work queued on the
  stream (`cudaMemcpy` semantics; PyTorch's blocking copy synchronises the stream). Not
  counted: `.to(dev, non_blocking=True)` of a host tensor made by `.pin_memory()` (queued
  behind the device's work; without a GPU, `pin_memory` is swapped for a host copy that the
  counter remembers as pinned).

Only device tensors count. On the CPU every tensor is on one device, so each tensor is tagged
as the host or device tensor it would be with the model on CUDA: the engine's chunk rows
(CPU ranges, `core/batching.py`), tensors a factory call in the library makes without a
`device=` in its call expression (`torch.arange(n)`, `torch.tensor(list)`, seeded draws on a
CPU generator) and what is computed from host tensors only are host tensors; a `.to(...)`
moves a tensor to the host when its call names "cpu" (or the target is a host tensor), else to
the model's device. Everything else is on the device: x, maps, targets, the model and its
outputs, metric state made before the counter ran, and `torch.from_numpy` results (the
library's NumPy fast paths on the CPU compute what on CUDA stays on the device). The tags are
a reading of the code, made automatic; `--where` lists each site for a check by eye. One
pattern they miss: a move made only where the devices differ (`if t.device != dev: t =
t.to(dev)`) does not run on the CPU, so a host tensor moved that way (once) stays a host tensor
and is counted where it meets device tensors; the call therefore gets x, maps and targets made
outside the counter.

Code paths that differ by device run as on CUDA: the engine's finiteness checks are deferred to
the end of each pass (`core/engine.py`, `DEFERRED_CHECK_DEVICES`); reads are not free
(`FREE_READ_DEVICES` there), so ROAD's conjugate gradients (its CUDA path; on the CPU it solves
with SciPy) read their convergence every `CONVERGENCE_CHECK_EVERY` iterations, DeepLIFT's
rescale rule always takes the derivative and LRP's z⁺ the signed path; and the seeded draws of
expected gradients and DeepLIFT-SHAP go to the device from pinned memory (`queued_copy`,
`PINNED_COPY_DEVICES` in methods/gradient/baselines.py). Other CPU-only branches
(`metrics/stats.py`'s NumPy sorts) run as on the CPU.

`count_syncs` counts any call this way (tests/metrics/test_device_syncs.py and
tests/test_method_syncs.py use it).
"""

from __future__ import annotations

import argparse
import linecache
import sys
import warnings
import weakref
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

import saliencelab as sl
import saliencelab.core.engine as engine_module
from saliencelab.core.batching import ChunkPlan
from saliencelab.methods.gradient import baselines as baselines_module
from saliencelab.metrics import Explainer
from saliencelab.metrics.faithfulness import road as road_module

aten = torch.ops.aten

# ATen operators that read a device tensor's values on the host (their output size or value).
READS = {
    aten._local_scalar_dense.default: "item",
    aten.item.default: "item",  # (under inference mode `item()` reaches the mode undecomposed)
    aten.is_nonzero.default: "item",
    aten.nonzero.default: "nonzero",
    aten.masked_select.default: "masked_select",
    aten.equal.default: "equal",
    aten._unique2.default: "unique",
    aten.unique_consecutive.default: "unique",
    aten.unique_dim.default: "unique",
    aten.bincount.default: "bincount",
    aten.repeat_interleave.Tensor: "repeat_interleave",
    aten.repeat_interleave.self_Tensor: "repeat_interleave",
}
INDEX = {aten.index.Tensor}
INDEX_PUT = {aten.index_put_.default, aten.index_put.default, aten._index_put_impl_.default}
# Frames between an operator's caller and `__torch_dispatch__`.
MACHINERY = ("torch/_dynamo/", "torch/_compile.py", "torch/utils/_python_dispatch.py")
SCRIPT = {str(Path(__file__).resolve())}  # frames of the counter itself
_MISSING = object()


def _caller():
    """The frame that called the torch operator or method being counted (the first outside this
    script and the dispatch machinery)."""
    f = sys._getframe(1)
    while f is not None and (f.f_code.co_filename in SCRIPT or _machinery(f.f_code.co_filename)):
        f = f.f_back
    return f


def _machinery(filename: str) -> bool:
    return any(part in filename for part in MACHINERY)


def _call_text(frame) -> str:
    """The source of the call expression the frame is executing (its line where positions are
    not known)."""
    code = frame.f_code
    lines = None
    if hasattr(code, "co_positions"):
        positions = list(code.co_positions())
        i = frame.f_lasti // 2
        if i < len(positions) and positions[i][0] is not None and positions[i][1] is not None:
            first, last, col, end_col = positions[i]
            lines = [linecache.getline(code.co_filename, n) for n in range(first, last + 1)]
            if col is not None and end_col is not None:
                lines[-1] = lines[-1][:end_col]
                lines[0] = lines[0][col:]
    if lines is None:
        lines = [linecache.getline(code.co_filename, frame.f_lineno)]
    return "".join(lines)


def _sites(frame) -> tuple[str, str]:
    """(innermost library line, the metrics line that led there or "") above `frame`."""
    inner = via = ""
    while frame is not None:
        name = frame.f_code.co_filename
        if "/saliencelab/" in name:
            where = f"{name.split('saliencelab/', 1)[-1]}:{frame.f_lineno} {frame.f_code.co_name}"
            if not inner:
                inner = where
            elif not via and "metrics/" not in inner and "/metrics/" in name:
                via = where
        frame = frame.f_back
    return inner or "?", via


class SyncCounter(TorchDispatchMode):
    """Tags tensors as host or device tensors (see the docstring) and counts, while `counting`,
    the reads of device tensors and the copies between host and device, per site."""

    def __init__(self) -> None:
        super().__init__()
        self._host: dict[int, weakref.ref] = {}
        self.counting = False
        self.sites: Counter[tuple[str, str, str]] = Counter()

    # -- tags ----------------------------------------------------------------------------------

    def is_host(self, t: torch.Tensor) -> bool:
        ref = self._host.get(id(t))
        return ref is not None and ref() is t

    def tag(self, t: torch.Tensor, host: bool) -> None:
        if host:
            self._host[id(t)] = weakref.ref(t, lambda _, i=id(t): self._host.pop(i, None))
        elif self.is_host(t):
            del self._host[id(t)]

    def note(self, kind: str) -> None:
        if self.counting:
            inner, via = _sites(_caller())
            self.sites[(kind, inner, via)] += 1

    # -- operators -----------------------------------------------------------------------------

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = [t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        host_in = [self.is_host(t) for t in inputs]
        device_in = [not h for h in host_in]
        if func in READS and any(device_in) and not _output_size_given(func, kwargs):
            self.note(READS[func])
        elif func in INDEX and _mask_index(args[1]) and not self.is_host(args[0]):
            self.note("mask index")
        elif func in INDEX_PUT and _mask_index(args[1]) and not self.is_host(args[0]):
            if args[2].numel() > 1:  # one value: a masked_fill, no read
                self.note("mask assignment")
        out = func(*args, **kwargs)
        if func is aten.lift_fresh.default or not inputs:  # a factory call
            frame = _caller()
            text = _call_text(frame) if frame is not None else ""
            in_library = frame is not None and "/saliencelab/" in frame.f_code.co_filename
            # torch.from_numpy: the library's NumPy fast paths on the CPU (sorts, ROAD's solve)
            # compute what on CUDA stays on the device
            host = in_library and "device" not in text and "from_numpy" not in text
            if func is aten.lift_fresh.default and "device" in text and args[0].dim() > 0:
                self.note("to device")  # torch.tensor(data, device=...)
            for t in pytree.tree_leaves(out):
                if isinstance(t, torch.Tensor):
                    self.tag(t, host)
            return out
        mixed = any(device_in) and any(
            h and t.dim() > 0 for h, t in zip(host_in, inputs, strict=True)
        )
        if mixed:  # host data moved to the device (or an error there)
            # an in-place copy into a host tensor reads the device instead
            if func is aten.copy_.default and self.is_host(args[0]):
                self.note("to host")
            else:
                self.note("to device")
        mutated = func._schema.is_mutable
        for t in pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and not (mutated and any(t is a for a in inputs)):
                self.tag(t, all(host_in))
        return out


def _mask_index(indices) -> bool:
    return any(i is not None and i.dtype in (torch.bool, torch.uint8) for i in indices)


def _output_size_given(func, kwargs) -> bool:
    return "repeat_interleave" in str(func) and kwargs.get("output_size") is not None


@contextmanager
def counted_methods(counter: SyncCounter) -> Iterator[None]:
    """`Tensor.to`, `.cpu` and `.tolist` swapped for versions that count copies between host and
    device and tag their results. (`.numpy()` of a device tensor fails on CUDA: where the library
    calls it on one, it is in a branch only the CPU takes, and is not counted.)"""
    T = torch.Tensor
    names = ("to", "cpu", "tolist", "pin_memory")
    own = {name: T.__dict__[name] for name in names if name in T.__dict__}  # else the C base's
    saved = {name: getattr(T, name) for name in names}
    pinned: dict[int, weakref.ref] = {}  # host copies made by `pin_memory`, by id

    def is_pinned(t: torch.Tensor) -> bool:
        ref = pinned.get(id(t))
        return ref is not None and ref() is t

    def moved(t: torch.Tensor, out: torch.Tensor, host: bool) -> torch.Tensor:
        # the copy a GPU would make: a new tensor with the new tag
        if out is t:
            out = t.clone()
        counter.tag(out, host)
        return out

    def to(self, *args: Any, **kwargs: Any):
        out = saved["to"](self, *args, **kwargs)
        dest = kwargs.get("device", kwargs.get("other"))
        for a in args:
            if isinstance(a, (torch.Tensor, torch.device, str, int)) and dest is None:
                dest = a
        if dest is None:  # a dtype only: the tensor stays where it is
            return out
        if isinstance(dest, torch.Tensor):
            to_host = counter.is_host(dest)
        else:
            frame = _caller()
            to_host = "cpu" in (str(dest) if isinstance(dest, str) else _call_text(frame))
        if counter.is_host(self) and not to_host:
            if not (is_pinned(self) and kwargs.get("non_blocking")):  # else queued: no wait
                counter.note("to device")
            return moved(self, out, False)
        if not counter.is_host(self) and to_host:
            counter.note("to host")
            return moved(self, out, True)
        return out

    def cpu(self, *args: Any, **kwargs: Any):
        out = saved["cpu"](self, *args, **kwargs)
        if counter.is_host(self):
            return out
        counter.note("to host")
        return moved(self, out, True)

    def reader(name: str) -> Callable:
        def read(self, *args: Any, **kwargs: Any):
            if not counter.is_host(self):
                counter.note("to host")
            return saved[name](self, *args, **kwargs)

        return read

    def pin_memory(self, *args: Any, **kwargs: Any):
        # (no pinned memory without a GPU: a host copy, remembered as pinned)
        out = self.clone()
        pinned[id(out)] = weakref.ref(out, lambda _, i=id(out): pinned.pop(i, None))
        return out

    T.to, T.cpu, T.pin_memory = to, cpu, pin_memory  # type: ignore[method-assign]
    T.tolist = reader("tolist")  # type: ignore[method-assign]
    try:
        yield
    finally:
        for name in names:
            if name in own:
                setattr(T, name, own[name])
            else:
                delattr(T, name)


@contextmanager
def as_on_cuda(chunk: int, simulate: bool = True) -> Iterator[list[int]]:
    """Every engine at `chunk` rows a chunk, the code paths CUDA takes (see the docstring; with
    `simulate=False`, on a real GPU, only the chunk size), and a count of the chunks handed out
    (a list of one int)."""
    chunks = [0]
    plain = ChunkPlan.chunks

    def counted(self):
        for rows in plain(self):
            chunks[0] += 1
            yield rows

    # (object, attribute, value as on CUDA); an attribute the library lacks (a version before
    # the switch) is added for the call and removed after
    patches = [
        (engine_module.Engine.__init__, "__defaults__", (chunk, None)),
        (engine_module, "DEFERRED_CHECK_DEVICES", ("cuda", "cpu")),
        (road_module, "_scipy", lambda: None),  # ROAD's conjugate gradients
        # reads are not free: ROAD's convergence read every 8 iterations, DeepLIFT's derivative
        # and LRP z+'s signed path without their checks
        (engine_module, "FREE_READ_DEVICES", ()),
        (baselines_module, "PINNED_COPY_DEVICES", ("cuda", "cpu")),  # seeded draws: pinned
    ]
    if not simulate:
        patches = patches[:1]
    saved = [(obj, name, getattr(obj, name, _MISSING)) for obj, name, _ in patches]
    for obj, name, value in patches:
        setattr(obj, name, value)
    ChunkPlan.chunks = counted  # type: ignore[method-assign]
    try:
        yield chunks
    finally:
        ChunkPlan.chunks = plain  # type: ignore[method-assign]
        for obj, name, value in saved:
            if value is _MISSING:
                delattr(obj, name)
            else:
                setattr(obj, name, value)


def inputs(images: int, device: str = "cpu"):
    """(model, x, target, saliency explanation): op_count.py's call set-up, on `device`."""
    model = sl.load_model("shapes_cnn").to(device)
    x = sl.data.shapes.make(images, seed=0).images.contiguous().to(device)
    with torch.no_grad():
        target = model.module.eval()(x).argmax(1)
    ex = sl.explain(model, x, methods=["saliency"], target=target)["saliency"]
    return model, x, target, ex


class CudaSyncs:
    """The waits of a call on a real GPU, per site (as `SyncCounter.sites`): PyTorch's sync
    debug mode (`torch.cuda.set_sync_debug_mode("warn")`) warns at every call that waits for
    the device (a read of a device value, a blocking copy), each warning counted at the library
    line that caused it."""

    def __init__(self) -> None:
        self.sites: Counter[tuple[str, str, str]] = Counter()

    @contextmanager
    def counting(self) -> Iterator[None]:
        def show(*args: Any, **kwargs: Any) -> None:
            inner, via = _sites(sys._getframe(1))
            self.sites[("cuda sync", inner, via)] += 1

        torch.cuda.synchronize()
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = show
            torch.cuda.set_sync_debug_mode("warn")
            try:
                yield
            finally:
                torch.cuda.set_sync_debug_mode("default")


def count_syncs(
    call: Callable[[], object], chunk: int, warmup: int = 2, real: bool = False
) -> tuple[SyncCounter | CudaSyncs, int]:
    """The syncs of one `call()`, after `warmup` calls, with every engine at `chunk` rows a
    chunk (`as_on_cuda`), and the chunks it ran. `real`: the call runs on a GPU, whose waits
    are counted by PyTorch (`CudaSyncs`) instead of simulated."""
    if real:
        cuda = CudaSyncs()
        with as_on_cuda(chunk, simulate=False) as chunks:
            for _ in range(warmup):
                call()
            chunks[0] = 0
            with cuda.counting():
                call()
        return cuda, chunks[0]
    counter = SyncCounter()
    with as_on_cuda(chunk) as chunks, counter, counted_methods(counter):
        for _ in range(warmup):
            call()
        chunks[0] = 0
        counter.counting = True
        call()
        counter.counting = False
    return counter, chunks[0]


def syncs_per_chunk(call_at: Callable[[int], Callable[[], object]], few: int = 7, many: int = 2):
    """The sites whose syncs grow with the chunks: `call_at(chunk)` is the call to count with
    every engine at `chunk` rows a chunk, counted at `few` and at `many` rows (several times
    the chunks). {site: (syncs at few, syncs at many)}, empty when no chunk waits. Raises if
    `many` did not run twice the chunks of `few` (the comparison would say little)."""
    a, a_chunks = count_syncs(call_at(few), chunk=few, warmup=1)
    b, b_chunks = count_syncs(call_at(many), chunk=many, warmup=1)
    if not b_chunks >= 2 * a_chunks > 0:
        raise AssertionError(f"chunks {a_chunks} at {few} rows, {b_chunks} at {many}")
    return {k: (a.sites[k], b.sites[k]) for k in b.sites if b.sites[k] > a.sites[k]}


def _metrics_floor():
    """benchmarks/metrics_floor.py (imported here, not at import: the tests load this file)."""
    here = str(Path(__file__).resolve().parent)
    if here not in sys.path:
        sys.path.insert(0, here)
    import metrics_floor

    return metrics_floor


def count(name: str, setup, chunk: int) -> tuple[SyncCounter | CudaSyncs, int]:
    """The syncs of one call of metric `name` on `setup` (`inputs`) and its chunks."""
    floor = _metrics_floor()
    model, x, target, ex = setup
    metric = floor.metric_classes()[name](**floor.settings_for(name, tuple(x.shape), False))
    explainer = Explainer("saliency", chunk_size=chunk)

    def call():
        metric.reset()
        metric.update(
            ex.maps, x=x, model=model, target=target, attributions=ex.attributions,
            explainer=explainer,
        )  # fmt: skip
        return metric.compute()

    return count_syncs(call, chunk, real=x.is_cuda)


# The methods' calls (`--methods`): each registered method that runs on the shapes CNN, with
# settings that give several chunks at 4 and 8 rows on 8 images. A name here is a method, or a
# method and options (occlusion and feature ablation run with and without incremental inference).
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "saliency": ("saliency", {}),
    "input_x_gradient": ("input_x_gradient", {}),
    "guided_backprop": ("guided_backprop", {}),
    "deconvnet": ("deconvnet", {}),
    "integrated_gradients": ("integrated_gradients", {"n_steps": 4}),
    "smoothgrad": ("smoothgrad", {"n_samples": 4}),
    "smoothgrad_sq": ("smoothgrad_sq", {"n_samples": 4}),
    "vargrad": ("vargrad", {"n_samples": 4}),
    "smoothgrad_ig": (
        "smoothgrad",
        {"n_samples": 2, "base": "integrated_gradients", "base_options": {"n_steps": 2}},
    ),
    "expected_gradients": ("expected_gradients", {"n_samples": 4}),
    "expected_gradients_batch": ("expected_gradients", {"n_samples": 4, "baselines": "batch"}),
    "deeplift": ("deeplift", {}),
    "deeplift_shap": ("deeplift_shap", {"n_baselines": 4}),
    "deeplift_shap_batch": ("deeplift_shap", {"baselines": "batch"}),
    "lrp": ("lrp", {}),
    "lrp_box": ("lrp", {"composite": "epsilon_gamma_box"}),
    "lrp_alpha_beta": ("lrp", {"composite": "epsilon_alpha2_beta1"}),
    "cam": ("cam", {}),
    "gradcam": ("gradcam", {}),
    "gradcam_plus_plus": ("gradcam_plus_plus", {}),
    "xgradcam": ("xgradcam", {}),
    "hirescam": ("hirescam", {}),
    "layercam": ("layercam", {}),
    "guided_gradcam": ("guided_gradcam", {}),
    "eigencam": ("eigencam", {}),
    "scorecam": ("scorecam", {"max_channels": 8}),
    "scorecam_probability": ("scorecam", {"max_channels": 8, "weighting": "probability"}),
    "ablationcam": ("ablationcam", {"max_channels": 8}),
    "occlusion": ("occlusion", {"window": 16, "stride": 8}),
    "occlusion_full": ("occlusion", {"window": 16, "stride": 8, "incremental": False}),
    "feature_ablation": ("feature_ablation", {"n_segments": 16}),
    "feature_ablation_full": ("feature_ablation", {"n_segments": 16, "incremental": False}),
    "rise": ("rise", {"n_masks": 8, "cell": 4}),
    "lime": ("lime", {"n_segments": 16, "n_samples": 16}),
    "kernelshap": ("kernelshap", {"n_segments": 16, "n_samples": 40}),
    "kernelshap_exact": ("kernelshap", {"n_segments": 4}),
    "random": ("random", {}),
    "center_gaussian": ("center_gaussian", {}),
    "sobel": ("sobel", {}),
}


def count_method(name: str, setup, chunk: int) -> tuple[SyncCounter | CudaSyncs, int]:
    """The syncs of one `sl.explain` call of `METHODS[name]` on `setup` (`inputs`) at `chunk`
    rows a chunk, and its chunks."""
    model, x, target, _ = setup
    method, options = METHODS[name]

    def call():
        return sl.explain(model, x, {method: options}, target=target, chunk_size=chunk)

    return count_syncs(call, chunk, real=x.is_cuda)


def report(names: list[str], count_one, small: int, large: int, where: bool) -> dict:
    """Count each of `names` (`count_one(name, chunk)`) at both chunk sizes and print its row."""
    result = {}
    for name in names:
        (a, n_a), (b, n_b) = count_one(name, small), count_one(name, large)
        keys = sorted(set(a.sites) | set(b.sites))
        per_chunk = {k: (a.sites[k], b.sites[k]) for k in keys if a.sites[k] != b.sites[k]}
        per_call = {k: a.sites[k] for k in keys if a.sites[k] == b.sites[k]}
        extra = sum(x - y for x, y in per_chunk.values())
        rate = extra / (n_a - n_b) if n_a != n_b else 0.0
        total_a, total_b = sum(a.sites.values()), sum(b.sites.values())
        print(
            f"{name:26s} {n_a:4d}/{n_b:<4d} {total_a:5d}/{total_b:<5d} {rate:9.2f} "
            f"{sum(per_call.values()):8d}"
        )
        if where:
            for (kind, inner, via), (x, y) in per_chunk.items():
                print(f"    chunk {x:4d}/{y:<4d} {kind:13s} {inner}" + (f" <- {via}" * bool(via)))
            for (kind, inner, via), x in per_call.items():
                print(f"    call  {x:9d} {kind:13s} {inner}" + (f" <- {via}" * bool(via)))
        result[name] = {
            "chunks": [n_a, n_b],
            "syncs": [total_a, total_b],
            "per_chunk": rate,
            "per_chunk_sites": {" ".join(k).strip(): v for k, v in per_chunk.items()},
            "per_call_sites": {" ".join(k).strip(): v for k, v in per_call.items()},
        }
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--metrics", default=None, help="comma-separated, or all (the default without --methods)"
    )
    parser.add_argument(
        "--methods", default=None, help=f"comma-separated, or all: {', '.join(METHODS)}"
    )
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--chunks", default="4,8", help="two chunk sizes (rows)")
    parser.add_argument("--where", action="store_true", help="list the sites")
    parser.add_argument(
        "--device", default="cpu", help="cpu (simulated, the default) or cuda (real waits)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    small, large = (int(c) for c in args.chunks.split(","))
    metrics = args.metrics if args.metrics is not None or args.methods is not None else "all"
    setup = inputs(args.images, args.device)
    print(f"shapes CNN, {args.images} images on {args.device}; chunks of {small} and {large} rows")
    print(f"{'call':26s} {'chunks':>9s} {'syncs':>11s} {'per chunk':>9s} {'per call':>8s}")
    result = {}
    if metrics is not None:
        names = _metrics_floor().model_metrics() if metrics == "all" else metrics.split(",")
        result.update(report(names, lambda n, c: count(n, setup, c), small, large, args.where))
    if args.methods is not None:
        names = list(METHODS) if args.methods == "all" else args.methods.split(",")
        result.update(
            report(names, lambda n, c: count_method(n, setup, c), small, large, args.where)
        )
    return result


if __name__ == "__main__":
    main()
