"""Timing, the floor, pass recording and agreement metrics shared by the benchmarks.

- `measure` times several contenders (ours, each peer, the floor) interleaved: after warm-up,
  each repeat runs every contender once, in an order rotated per repeat, so slow drift or a
  noisy neighbour on the machine hits all of them alike. The median over repeats is reported.
- `Floor` is the cost a gradient method cannot go below on this machine: its number of
  forward+backward passes times the measured cost of one plain pass (model forward + one
  `torch.autograd.grad` to the input, parameters frozen) at the chunk size the engine used.
- `record_passes` lists the batch size of every forward the model runs (to find the chunk size
  and the number of rows a method really ran), optionally keeping the inputs themselves.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from saliencelab.core.cpu_memory import reuse_freed_memory
from saliencelab.core.state import frozen_parameters as frozen  # noqa: F401  (re-exported)

# On CUDA every contender computes in true float32: PyTorch's default TF32 convolutions round each
# layer to ~1e-3 in a way that depends on the batch size, which would hide real disagreements
# between contenders that chunk differently. (No effect on the CPU.)
torch.backends.cudnn.allow_tf32 = False
torch.backends.cuda.matmul.allow_tf32 = False

# Which clock the ratios use: "wall" (perf_counter) or "cpu" (process CPU time, all threads).
# On a machine shared with other jobs, wall time of a 2-thread OpenMP program is inflated many
# times over and erratically (a thread waits at every barrier for its descheduled partner); CPU
# time with OMP_WAIT_POLICY=PASSIVE (no spinning at barriers) stays within a few percent.
CLOCK = "wall"


def use_clock(name: str) -> None:
    global CLOCK
    if name not in ("wall", "cpu"):
        raise ValueError(f"unknown clock {name!r}")
    CLOCK = name


@dataclass
class Stopwatch:
    """Wall and process CPU time of a block (after `sync`)."""

    sync: Callable[[], None]
    wall: float = 0.0
    cpu: float = 0.0

    def __enter__(self) -> Stopwatch:
        self.sync()
        self._w, self._c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.sync()
        self.wall = time.perf_counter() - self._w
        self.cpu = time.process_time() - self._c

    @property
    def seconds(self) -> float:
        return self.cpu if CLOCK == "cpu" else self.wall


def add_device_options(parser: argparse.ArgumentParser) -> None:
    """`--device`, `--clock`, `--threads` and `--malloc`, as `setup_device` reads them."""
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument(
        "--clock", default=None, choices=["cpu", "wall"], help="default: cpu on CPU, wall on CUDA"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default: 1 on CPU, torch's on CUDA)",
    )
    add_malloc_option(parser)


def add_malloc_option(parser: argparse.ArgumentParser) -> None:
    """`--malloc`, as `use_malloc` reads it."""
    parser.add_argument(
        "--malloc",
        default="reuse",
        choices=["reuse", "default"],
        help="reuse: glibc keeps freed memory (sl.reuse_freed_memory, as the CLI); default: as is",
    )


def use_malloc(args: argparse.Namespace) -> str:
    """Apply `--malloc` (core/cpu_memory.py) and say what it did. All contenders share the
    process and so the allocator: ratios stay fair either way; absolute times are lower with
    "reuse" (no page faults from memory given back and mapped again)."""
    reused = getattr(args, "malloc", "default") == "reuse" and reuse_freed_memory()
    return "freed memory reused" if reused else "malloc as is"


def add_metric_inputs(parser: argparse.ArgumentParser, methods: str | None = None) -> None:
    """`--models`, `--methods` (when `methods` gives its default), `--images` (EfficientNet
    photos) and `--shapes-images`: the inputs of the metric benchmarks (`benchmark_inputs`)."""
    parser.add_argument("--models", default="efficientnet_lite0,shapes_cnn")
    if methods is not None:
        parser.add_argument("--methods", default=methods)
    parser.add_argument("--images", type=int, default=2, help="EfficientNet photos")
    parser.add_argument("--shapes-images", type=int, default=8)


def setup_device(args: argparse.Namespace) -> torch.device:
    """`--device`, checked; the clock (cpu on CPU, wall on CUDA) and threads (1 on CPU) set and
    printed."""
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device")
    if args.clock is None:
        args.clock = "wall" if cuda else "cpu"
    elif cuda and args.clock == "cpu":
        print("warning: --clock cpu on CUDA counts host CPU time only, not GPU time", flush=True)
    if args.threads is None and not cuda:
        args.threads = 1
    use_clock(args.clock)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"device {device_name(device)}, {args.clock} clock, {use_malloc(args)}", flush=True)
    return device


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


def make_sync(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


@dataclass
class Contender:
    """One thing to time. A `self_timed` function returns its own (wall, cpu) estimate."""

    name: str
    fn: Callable[[], Any]
    self_timed: bool = False
    warmup: int = 1
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    last: Any = None
    passes: PassLog | None = None  # the forwards its first call ran, if recorded

    @property
    def times(self) -> list[float]:
        return self.cpu if CLOCK == "cpu" else self.wall

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    def summary(self) -> dict[str, Any]:
        return {
            "clock": CLOCK,
            "median_s": self.median,
            "min_s": min(self.times),
            "max_s": max(self.times),
            "wall_s": self.wall,
            "cpu_s": self.cpu,
        }


def _once(c: Contender, sync: Callable[[], None]) -> tuple[float, float]:
    gc.collect()
    with Stopwatch(sync) as sw:
        out = c.fn()
    c.last = out
    return tuple(out) if c.self_timed else (sw.wall, sw.cpu)


def measure(
    contenders: list[Contender],
    repeats: int,
    sync: Callable[[], None],
    log: Callable[[str], None] = print,
) -> None:
    """Warm up (`c.warmup` runs each), then time every contender `repeats` times, interleaved
    and in an order rotated per repeat."""
    for c in contenders:
        for _ in range(c.warmup):
            _once(c, sync)
    for r in range(repeats):
        k = r % len(contenders)
        for c in contenders[k:] + contenders[:k]:
            wall, cpu = _once(c, sync)
            c.wall.append(wall)
            c.cpu.append(cpu)
        log(
            f"    repeat {r + 1}/{repeats} ({CLOCK}): "
            + ", ".join(f"{c.name} {c.times[-1]:.3f}s" for c in contenders)
        )


def paired(a: Contender, b: Contender) -> float:
    """Median over repeats of a's time / b's time in the same repeat (robust to slow drift)."""
    return statistics.median(x / y for x, y in zip(a.times, b.times, strict=True))


def alternated(
    ways: dict[str, Callable[[], None]],
    call: Callable[[], Any],
    repeats: int,
    warmup: int = 8,
    per_round: int = 3,
) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """The same `call` under several ways of the library (`ways[name]()` switches to one: e.g.
    a module attribute swapped), alternated: `warmup` calls per way, then `repeats` rounds that
    time `per_round` calls of each way (process CPU time, the order reversed every other round).
    Returns the seconds per call of each way per round and each way's last value. The caller
    switches back to its own way afterwards."""
    times: dict[str, list[float]] = {k: [] for k in ways}
    values: dict[str, Any] = {}
    for switch in ways.values():
        switch()
        for _ in range(warmup):  # chunk searches settle, the allocator warms up
            call()
    for r in range(repeats):
        order = list(ways.items()) if r % 2 == 0 else list(reversed(ways.items()))
        for name, switch in order:
            switch()
            start = time.process_time()
            for _ in range(per_round):
                values[name] = call()
            times[name].append((time.process_time() - start) / per_round)
    return times, values


def ab_summary(
    times: dict[str, list[float]], values: dict[str, Any], new: str, old: str
) -> dict[str, float]:
    """`alternated`'s result for two ways: the median milliseconds of each, the median of the
    per-round ratios new / old, and the largest difference of their values."""
    diff = float((values[new].double() - values[old].double()).abs().max())
    ratio = statistics.median(a / b for a, b in zip(times[new], times[old], strict=True))
    return {
        "new_ms": statistics.median(times[new]) * 1e3,
        "old_ms": statistics.median(times[old]) * 1e3,
        "ratio": ratio,
        "max_diff": diff,
    }


def ab_swapped(
    owner: Any,
    attr: str,
    ways: dict[str, Any],
    call: Callable[[], Any],
    repeats: int,
    new: str,
    old: str,
    **options: Any,
) -> dict[str, float]:
    """`ab_summary` of `alternated` over versions of `owner.attr` (`ways`: name -> the object
    put there for that way, e.g. a library function and its stand-in); `owner.attr` is put
    back afterwards, also on an error. `options`: `alternated`'s."""
    real = getattr(owner, attr)
    switches = {name: (lambda v=v: setattr(owner, attr, v)) for name, v in ways.items()}
    try:
        times, values = alternated(switches, call, repeats, **options)
    finally:
        setattr(owner, attr, real)
    return ab_summary(times, values, new, old)


class Floor:
    """Plain forward+backward passes of `module`, parameters frozen, at a given chunk size.

    `channels_last=True` feeds the rows in that memory layout: the layout our passes ran in
    (`PassLog.ran_channels_last`; the engine picks channels-last on CPU where it is the same
    function, 1.25-1.35x faster on EfficientNet-Lite0), so that the ratio measures overhead,
    not layout."""

    def __init__(
        self,
        module: nn.Module,
        x: torch.Tensor,
        targets: torch.Tensor,
        sync: Callable[[], None],
        channels_last: bool = False,
    ) -> None:
        self.module, self.x, self.targets, self.sync = module, x, targets, sync
        self.channels_last = channels_last and x.dim() == 4
        self._inputs: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def _batch(self, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        if rows not in self._inputs:
            reps = math.ceil(rows / self.x.shape[0])
            layout = torch.channels_last if self.channels_last else torch.contiguous_format
            x = self.x.repeat(reps, 1, 1, 1)[:rows].contiguous(memory_format=layout)
            t = self.targets.repeat(reps)[:rows]
            self._inputs[rows] = (x, t)
        return self._inputs[rows]

    def one_pass(self, rows: int) -> Stopwatch:
        """One forward + autograd.grad(input) over `rows` rows, timed."""
        x, t = self._batch(rows)
        with frozen(self.module), torch.enable_grad(), Stopwatch(self.sync) as sw:
            xi = x.detach().requires_grad_(True)
            logits = self.module(xi)
            score = logits.gather(1, t[:, None]).sum()
            (grad,) = torch.autograd.grad(score, xi)
        return sw

    def contender(self, total_rows: int, chunk: int, max_timed: int = 3) -> Contender:
        """Estimated (wall, cpu) seconds for `total_rows` rows in chunks of `chunk`: a plain loop
        of up to `max_timed` passes at the chunk size, scaled to the number of chunks, plus the
        last partial chunk if there is one."""
        chunk = max(1, min(chunk, total_rows))
        full, rest = divmod(total_rows, chunk)
        timed = min(full, max_timed)

        def run() -> tuple[float, float]:
            per = [self.one_pass(chunk) for _ in range(timed)]
            wall = full * statistics.median(p.wall for p in per)
            cpu = full * statistics.median(p.cpu for p in per)
            if rest:
                last = self.one_pass(rest)
                wall, cpu = wall + last.wall, cpu + last.cpu
            return wall, cpu

        return Contender("floor", run, self_timed=True)

    def per_row(self, sizes: list[int], reps: int = 3) -> dict[int, float]:
        """Seconds per row of one pass at each chunk size (median of `reps`, after a warm-up)."""
        out = {}
        for size in sizes:
            self.one_pass(size)
            out[size] = statistics.median(self.one_pass(size).seconds for _ in range(reps)) / size
        return out


@dataclass
class PassLog:
    """Every forward the model ran: (rows, "grad" or "forward"), and the inputs if kept."""

    calls: list[tuple[int, str]] = field(default_factory=list)
    inputs: list[torch.Tensor] = field(default_factory=list)
    layouts: list[bool] = field(default_factory=list)  # per forward: channels-last rows

    def ran_channels_last(self) -> bool:
        """Whether the model's passes got channels-last rows (the layout a floor should use)."""
        return any(self.layouts)

    def rows(self, kind: str) -> int:
        return sum(n for n, k in self.calls if k == kind)

    def chunk(self) -> int | None:
        """The most common batch size of the gradient passes (the settled chunk size)."""
        sizes = Counter(n for n, k in self.calls if k == "grad")
        if not sizes:
            return None
        top = max(sizes.values())
        return max(n for n, c in sizes.items() if c == top)

    def searching(self) -> bool:
        """Whether the chunk size was still being searched (several full sizes seen)."""
        sizes = [n for n, k in self.calls if k == "grad"]
        return len(set(sizes[:-1])) > 1


@contextmanager
def record_passes(module: nn.Module, keep_inputs: bool = False) -> Iterator[PassLog]:
    log = PassLog()

    def pre(mod: nn.Module, args: tuple) -> None:
        x = args[0]
        kind = "forward" if torch.is_inference_mode_enabled() else "grad"
        log.calls.append((int(x.shape[0]), kind))
        nhwc = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
        log.layouts.append(nhwc and not x.is_contiguous())
        if keep_inputs and kind == "grad":
            log.inputs.append(x.detach().clone())

    handle = module.register_forward_pre_hook(pre)
    try:
        yield log
    finally:
        handle.remove()


def recorded(name: str, fn: Callable[[], Any], module: nn.Module, warmup: int = 1) -> Contender:
    """A contender whose first call also records the model's forwards (a cheap pre-hook)."""
    c = Contender(name, fn, warmup=warmup, passes=PassLog())

    def first() -> Any:
        with record_passes(module) as log:
            out = fn()
        c.passes.calls.extend(log.calls)
        c.fn = fn
        return out

    c.fn = first
    return c


def settle(
    fn: Callable[[], Any], module: nn.Module, keep_inputs: bool = False, tries: int = 16
) -> tuple[PassLog, Any]:
    """Call `fn` until the engine's chunk-size search is settled: no search left open in
    `core.batching` (one that a single call cannot show: a pass that fits one chunk still tries
    other sizes on later calls) and two calls in a row ran the same passes. Returns the last
    call's passes (inputs kept with `keep_inputs`) and output: what every timed call then runs."""
    from saliencelab.core import batching

    last: list[tuple[int, str]] | None = None
    for _ in range(tries):
        with record_passes(module, keep_inputs) as log:
            out = fn()
        if log.calls == last and not batching._PARTIAL:
            break
        last = log.calls
    return log, out


# -- agreement -------------------------------------------------------------------------------


@dataclass
class Agreement:
    """Whether ours agrees with a peer on the same inputs: `diff` (e.g. max |ours − peer|, or
    1 − correlation) at most `tol`, and NaN in the same places (`nan_mismatches` = 0; both sides
    all-NaN is flagged too: a metric that is NaN everywhere agrees with nothing). A ratio is
    reported only where its agreement holds (`valid_ratio`), and a script exits non-zero when
    any does not (`exit_status`)."""

    what: str
    diff: float
    tol: float
    nan_mismatches: int = 0
    all_nan: bool = False

    @property
    def ok(self) -> bool:
        return (
            self.nan_mismatches == 0
            and not self.all_nan
            and math.isfinite(self.diff)
            and self.diff <= self.tol
        )

    def text(self) -> str:
        nan = f", {self.nan_mismatches} NaN mismatches" if self.nan_mismatches else ""
        nan += ", all NaN" if self.all_nan else ""
        verdict = "agree" if self.ok else "**DISAGREE**"
        return f"{self.what} {self.diff:.3g} (tol {self.tol:.3g}{nan}): {verdict}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "what": self.what,
            "diff": self.diff,
            "tol": self.tol,
            "nan_mismatches": self.nan_mismatches,
            "all_nan": self.all_nan,
            "ok": self.ok,
        }


def max_abs_agreement(ours: Any, peer: Any, tol: float, what: str = "max |diff|") -> Agreement:
    """Max |ours − peer| over the entries finite on both sides, with the entries NaN (or
    infinite) on one side only counted as mismatches; shapes must match."""
    a = torch.as_tensor(ours).detach().to("cpu", torch.float64)
    b = torch.as_tensor(peer).detach().to("cpu", torch.float64)
    if a.shape != b.shape:
        raise ValueError(f"{what}: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")
    fa, fb = a.isfinite(), b.isfinite()
    both = fa & fb
    same_special = (~fa & ~fb) & ((a.isnan() & b.isnan()) | (a == b))
    mismatches = int((~both & ~same_special).sum())
    diff = float((a - b)[both].abs().max()) if both.any() else 0.0
    return Agreement(what, diff, tol, mismatches, all_nan=bool(a.numel()) and not both.any())


def valid_ratio(ratio: float, agreements: list[Agreement]) -> float | None:
    """`ratio`, or None where an agreement behind it fails (a time of a wrong answer is no
    result)."""
    return ratio if all(a.ok for a in agreements) else None


def exit_status(agreements: list[Agreement]) -> int:
    """0 when every agreement holds, else 1 (after printing the ones that fail)."""
    failed = [a for a in agreements if not a.ok]
    for a in failed:
        print(f"DISAGREEMENT: {a.text()}")
    return 1 if failed else 0


def _flat(t: Any) -> torch.Tensor:
    t = torch.as_tensor(t).detach().to("cpu", torch.float64)
    return t.reshape(t.shape[0], -1)


def compare(ours: Any, ref: Any) -> dict[str, float]:
    """Per-sample max relative error (max |ours - ref| / max |ref|) and Pearson correlation;
    the worst sample of each is reported."""
    o, r = _flat(ours), _flat(ref)
    if o.shape != r.shape:
        raise ValueError(f"shapes differ: {tuple(o.shape)} vs {tuple(r.shape)}")
    err = (o - r).abs().amax(1) / r.abs().amax(1).clamp_min(1e-30)
    oc, rc = o - o.mean(1, keepdim=True), r - r.mean(1, keepdim=True)
    corr = (oc * rc).sum(1) / (oc.norm(dim=1) * rc.norm(dim=1)).clamp_min(1e-30)
    return {"max_rel_err": float(err.max()), "min_corr": float(corr.min())}


def relative_l2(a: Any, b: Any) -> float:
    """Mean over samples of ||a - b|| / ||b||."""
    fa, fb = _flat(a), _flat(b)
    return float(((fa - fb).norm(dim=1) / fb.norm(dim=1).clamp_min(1e-30)).mean())


def mean_corr(a: Any, b: Any) -> float:
    fa, fb = _flat(a), _flat(b)
    fa, fb = fa - fa.mean(1, keepdim=True), fb - fb.mean(1, keepdim=True)
    return float(((fa * fb).sum(1) / (fa.norm(dim=1) * fb.norm(dim=1)).clamp_min(1e-30)).mean())


def minmax(maps: Any) -> torch.Tensor:
    """Each map scaled to [0, 1] (as pytorch-grad-cam's `scale_cam_image` does)."""
    m = torch.as_tensor(maps).detach().to("cpu", torch.float64)
    m = m.reshape(m.shape[0], *m.shape[-2:])
    lo = m.flatten(1).amin(1)[:, None, None]
    m = m - lo
    return m / (1e-7 + m.flatten(1).amax(1)[:, None, None])


# Sample photographs, RGB ones first (the gray ones are converted to RGB by sample_image).
IMAGES = (
    "chelsea",
    "astronaut",
    "coffee",
    "motorcycle",
    "rocket",
    "retina",
    "hubble_deep_field",
    "immunohistochemistry",
)


def write_json(path: str | Path, result: Any) -> None:
    """Write a benchmark's results (folders made as needed; objects JSON lacks as str)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    print(f"wrote {out}")


def tie_free(maps: torch.Tensor) -> torch.Tensor:
    """float64 maps minus a tiny increasing raster ramp (1e-6 of their range over the image): no
    two pixels (or patch sums) tie, so every library ranks the pixels the same way."""
    m = maps.double()
    span = float(m.max() - m.min()) or 1.0
    n = m[0].numel()
    ramp = torch.arange(n, dtype=torch.float64, device=m.device).view(m.shape[1:]) / n
    return m - 1e-6 * span * ramp


def benchmark_inputs(name: str, images: int) -> tuple[Any, torch.Tensor, str]:
    """(model, inputs, label) for the metric benchmarks: EfficientNet-Lite0 on sample photos at
    224×224, or a bundled shapes model on `sl.data.shapes.make(images, seed=0)` at 64×64."""
    import saliencelab as sl

    model = sl.load_model(name)
    if name.startswith("shapes"):
        return model, model.preprocess(sl.data.shapes.make(images, seed=0)), name
    photos = [sl.sample_image(IMAGES[i % len(IMAGES)]) for i in range(images)]
    return model, model.preprocess(photos), name
