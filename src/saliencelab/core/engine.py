"""The engine: runs forward and backward passes for the methods, in chunks, and counts them.

Methods never touch autograd or hooks themselves. They describe the rows they need — a function
from row indices to a batch of inputs, and which original sample each row belongs to — and get
back, chunk by chunk, what the pass captured: logits, target scores, the input gradient, and the
activations and gradients of the layers they asked for.

During every pass the model is in eval mode with frozen parameters (restored afterwards), hooks
are removed in `finally`, and gradient passes work also inside a caller's `torch.no_grad()`.
A user's own hooks on the model stay registered and run in every pass, on the rows the pass
feeds (chunks, perturbed copies); BatchNorm is then not folded (core/fused.py). The model must
return one row of scores per input row; a layer read by a pass must run once per forward.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, closing, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import CheckpointError

from ..models.model import Model, check_labels_fit, logits_of
from .backward import Backward, install_backward_mode
from .batching import ChunkPlan, batch_rows, default_budget
from .errors import SaliencelabError
from .fused import folded, has_hooks
from .inplace import inplace_activations
from .layers import get_layer, module_name, refuse_unhookable
from .layout import channels_last_known, probe_channels_last, probed
from .row_versions import chunk_samples
from .state import Hooks, attribution_mode, running_pass, submodules, usable_input
from .targets import LayerTarget, Target, layer_target
from .tokens import token_layout

# Passes of at least this many rows feed channels-last rows on CPU (core/layout.py); shorter
# ones are not worth the one-off probe.
NHWC_MIN_ROWS = 8

# Forward passes of at least this many rows look for BatchNorm layers to fold (core/fused.py) if
# the model's are not known yet. The probe costs about two one-row forwards once per model
# structure (its answer is kept), and folding saves 12-28 % of every row of every later pass:
# worth it from the first pass of two rows (at 16, the shapes CNN's metrics on 8 images never
# folded, and their forwards ran 1.13x slower than they could).
FOLD_MIN_ROWS = 2

# The largest chunk the search tries, per device type and pass kind. On a CPU large chunks are
# not faster per row (64 was slower than 8; Lite0 forwards are cheapest at 2-4 rows) and cost
# memory. On a GPU forward-only passes keep no activations for backward: Captum's best occlusion
# batch on an H100 was 1024 rows, where our chunks stopped at 256. A chunk that runs out of
# device memory runs again at half the size (`_out_of_memory`).
MAX_CHUNK_ROWS = {
    ("cpu", "forward"): 32,
    ("cpu", "grad"): 32,
    ("cuda", "forward"): 1024,
    ("cuda", "grad"): 256,
}

# Devices where, once the chunk size is settled, a pass does not wait for each chunk: the
# finiteness of the scores is gathered on the device and checked (one wait) after the last chunk.
DEFERRED_CHECK_DEVICES = ("cuda",)

# Devices where reading a tensor's value on the host costs no wait (the host is the device).
# Elsewhere (a GPU) a read waits for all the work queued there, so an optional check or shortcut
# that reads a value (DeepLIFT's small-difference test, LRP z⁺'s sign test, ROAD's convergence
# test) is skipped or spaced out (`free_reads`).
FREE_READ_DEVICES = ("cpu",)


def free_reads(device: torch.device) -> bool:
    """Whether reading a value of a tensor on `device` costs the host no wait."""
    return device.type in FREE_READ_DEVICES


MakeInputs = Callable[[torch.Tensor], torch.Tensor]
LayerEdit = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class PassChunk:
    """What one chunk of a pass captured (all detached)."""

    rows: torch.Tensor  # (n,) row indices of this chunk
    samples: torch.Tensor  # (n,) original sample index of each row
    inputs: torch.Tensor  # the rows as fed to the model (channels-last where the engine used it)
    logits: torch.Tensor
    scores: torch.Tensor  # (n,) target score of each row
    input_grad: torch.Tensor | None = None
    activations: dict[str, torch.Tensor] = field(default_factory=dict)
    gradients: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class Cost:
    """Rows run through the model: with a backward pass, forward only; and the seconds."""

    grad_rows: int = 0
    forward_rows: int = 0
    seconds: float = 0.0

    def copy(self) -> Cost:
        return Cost(self.grad_rows, self.forward_rows, self.seconds)

    def since(self, before: Cost) -> Cost:
        return Cost(
            self.grad_rows - before.grad_rows,
            self.forward_rows - before.forward_rows,
            self.seconds - before.seconds,
        )


def captured_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype gradient passes hand their gradients and activations to methods in, and that
    methods accumulate them in: float32 for a float16 / bfloat16 model, else the model's own."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def captured_tensor(t: torch.Tensor) -> torch.Tensor:
    """A gradient or activation as methods receive it: contiguous, and float32 where the model
    runs in float16 / bfloat16, so that what a method computes from it (Grad-CAM++'s cubed
    gradients, SmoothGrad²'s squares, sums over IG's steps) neither underflows nor rounds at
    half precision (a gradient of 1e-3 cubed is below float16's smallest number)."""
    return t.to(captured_dtype(t.dtype), memory_format=torch.contiguous_format)


def _first_tensor(out):
    return out if isinstance(out, torch.Tensor) else out[0]


def _replace_first(out, new):
    if isinstance(out, torch.Tensor):
        return new
    return (new, *out[1:])


class _StopForward(Exception):
    """Raised by a layer target's hook to end the forward right after its layer."""


class Engine:
    """Runs passes of one model. `chunk_size=None` picks chunk sizes by measurement."""

    def __init__(
        self,
        model: Model,
        chunk_size: int | None = None,
        memory_budget: int | None = None,
    ) -> None:
        self.model = model
        self.module: nn.Module = model.module
        self.chunk_size = chunk_size
        self.memory_budget = memory_budget
        self.cost = Cost()

    @property
    def device(self) -> torch.device:
        return self.model.device

    def _plan(
        self, kind: str, n_rows: int, example: torch.Tensor, device: torch.device
    ) -> ChunkPlan:
        key = (id(self.module), kind, tuple(example.shape[1:]), example.dtype, device.type)
        max_rows = MAX_CHUNK_ROWS.get((device.type, kind), MAX_CHUNK_ROWS[("cpu", kind)])
        # The budget caps chunks by the bytes a row keeps for backward: gradient passes only.
        budget = self.memory_budget
        if budget is None and kind == "grad":
            budget = default_budget(device)
        return ChunkPlan(key, n_rows, fixed=self.chunk_size, max_rows=max_rows, budget=budget)

    def _folding(
        self, fold: bool, example: torch.Tensor, n_rows: int, inplace: bool = False
    ) -> AbstractContextManager:
        """BatchNorm folded in place for a plain pass of a model without hooks (core/fused.py)
        and, with `inplace` (passes that add no hook of their own), its activations run in
        place (core/inplace.py); the probes run for passes of at least `FOLD_MIN_ROWS` rows."""
        if not fold:
            return nullcontext()
        modules = submodules(self.module)  # one walk for the hook check, the fold and in place
        if has_hooks(self.module, modules):
            return nullcontext()
        probe = n_rows >= FOLD_MIN_ROWS
        if not inplace:
            return folded(self.module, example, probe=probe, modules=modules)
        return self._folded_inplace(example, probe, modules)

    @contextmanager
    def _folded_inplace(
        self, example: torch.Tensor, probe: bool, modules: list[nn.Module]
    ) -> Iterator[bool]:
        with folded(self.module, example, probe=probe, modules=modules) as did:
            with inplace_activations(self.module, example, probe=probe, modules=modules):
                yield did

    def probe_layout(self, x: torch.Tensor) -> bool:
        """Find out once whether inputs like `x` may run channels-last (core/layout.py).

        Call before any method hooks the model (`sl.explain` and the metrics do); passes of at
        least `NHWC_MIN_ROWS` rows then use channels-last where the probe said so.
        """
        x = x.to(self.device)
        if probed(self.module, x):  # no session (eval mode, frozen weights) needed
            return channels_last_known(self.module, x)
        with self.session():
            return probe_channels_last(self.module, x)

    @contextmanager
    def session(self) -> Iterator[None]:
        """Eval mode and frozen parameters for several passes (nested sessions are cheap)."""
        with attribution_mode(self.module):
            yield

    @contextmanager
    def folded_session(self, example: torch.Tensor) -> Iterator[bool]:
        """A session with BatchNorm folded in place (core/fused.py) for forward-only work that
        hooks the model itself, which `forwards` would then run unfolded: e.g. incremental
        occlusion, whose hook pastes activations at an early layer. Enter it before installing
        any hook. Yields whether anything was folded. Not for gradients (see core/fused.py).
        `example`: inputs like the passes' (its first row runs the probe that finds the pairs).
        """
        with self.session(), self._folding(True, example.to(self.device), FOLD_MIN_ROWS) as f:
            yield bool(f)

    # -- passes -------------------------------------------------------------------------------

    def gradients(
        self,
        n_rows: int,
        make_inputs: MakeInputs,
        sample_of: Callable[[torch.Tensor], torch.Tensor],
        target: Target,
        layers: dict[str, nn.Module] | None = None,
        input_grad: bool = True,
        backward: Backward = "plain",
        example: torch.Tensor | None = None,
    ) -> Iterator[PassChunk]:
        """Forward+backward passes over `n_rows` rows, yielding one :class:`PassChunk` per chunk.

        Gradients are of the target score of each row. `layers` maps names to modules whose
        outputs (activations) and their gradients are captured. With `input_grad=False` the
        forward below the first hooked layer builds no graph, so backward stops at the layers.
        `example`: rows like the pass's (see `forwards`).
        """
        layers = layers or {}
        if not input_grad and not layers:
            raise ValueError("a gradient pass needs input_grad or at least one layer")
        with self.session(), Hooks() as hooks:
            # Channels-last rows on CPU where the model gives the same output (core/layout.py);
            # probed before any hook is installed. Gradients and activations are handed back
            # contiguous, so attributions are plain tensors for the user (a copy of ~0.1 ms per
            # 8×3×64² chunk); the inputs as they were fed.
            dev = self.device
            example = _example(make_inputs, example, dev)
            nhwc = n_rows >= NHWC_MIN_ROWS and channels_last_known(self.module, example)
            captured: dict[str, torch.Tensor] = {}
            # Inside the chunk's forward (a checkpoint's recomputation in backward: no 2nd call).
            forwarding = [False]

            def capture(name):
                def hook(module, inputs, out):
                    if forwarding[0] and name in captured:
                        raise SaliencelabError(
                            f"The layer {name} runs more than once in one forward (a module used "
                            "twice, e.g. shared or weight-tied), so it has no single output to "
                            "read; pick a layer that runs once."
                        )
                    act = _first_tensor(out)
                    if not isinstance(act, torch.Tensor):
                        raise SaliencelabError(
                            f"The layer {name} returns {type(act).__name__}, not a tensor; pick a "
                            "layer whose output is a tensor."
                        )
                    if not act.requires_grad:
                        torch.set_grad_enabled(True)
                        act = act.detach().requires_grad_(True)
                    captured[name] = act
                    # The model goes on with a copy: an in-place operation after the layer
                    # (F.relu_, x += ...) then neither changes the captured activations nor
                    # hits the leaf made above (one copy of the layer's output per chunk).
                    return _replace_first(out, act.clone())

                return hook

            for name, module in layers.items():
                refuse_unhookable(module)
                hooks.add(module.register_forward_hook(capture(name)))
            # Modes acting through hooks check, after the first forward, that their hooks ran.
            check = install_backward_mode(self.module, backward, hooks)
            reached_output = layer_target(target) is None

            plan = self._plan("grad", n_rows, example, dev)
            checks = _FiniteChecks(plan, dev)
            clock = chunk_clock(dev)
            for rows in plan.chunks():
                start = time.perf_counter()
                try:
                    with running_pass(self.module):  # user code inside: hooks, targets
                        x = usable_input(_rows_like(make_inputs(rows), example))
                        if nhwc:
                            x = x.contiguous(memory_format=torch.channels_last)
                        learning = not plan.settled
                        built = clock() if learning else 0.0
                        captured.clear()
                        samples = sample_of(rows)
                        with (
                            torch.enable_grad() if input_grad else torch.no_grad(),
                            _count_saved_bytes(plan, len(rows)),
                            chunk_samples(samples),
                        ):
                            if input_grad:
                                x.requires_grad_(True)
                            forwarding[0] = True
                            try:
                                if check is None:
                                    logits = self._output(x, target)
                                else:
                                    with check.watch():
                                        logits = self._output(x, target)
                                    check.after_forward(reached_output)
                            finally:
                                forwarding[0] = False
                            if reached_output:
                                _check_rows(logits, len(rows), self.model.labels)
                        with torch.enable_grad():
                            scores = target.scores(logits, samples)
                            checks.add(scores, samples)
                            missing = [n for n in layers if n not in captured]
                            if missing:
                                raise SaliencelabError(_not_reached(missing[0], reached_output))
                            wrt = ([x] if input_grad else []) + [captured[n] for n in layers]
                            names = ["the input"] if input_grad else []
                            names += [f"the layer {n}" for n in layers]
                            if not scores.requires_grad:
                                wanted = " or ".join(names)
                                raise SaliencelabError(_no_gradient(wanted, bool(layers)))
                            grads = _input_gradients(scores.sum(), wrt)
                            unused = [n for n, g in zip(names, grads, strict=True) if g is None]
                            if unused:
                                raise SaliencelabError(_no_gradient(unused[0], bool(layers)))
                        checks.wait()
                except torch.OutOfMemoryError:
                    captured.clear()
                    _out_of_memory(plan, len(rows), dev)
                    continue
                if learning:  # a settled plan learns nothing: no clock read
                    plan.record(len(rows), clock() - built)
                self.cost.grad_rows += len(rows)
                self.cost.seconds += time.perf_counter() - start
                offset = 1 if input_grad else 0
                yield PassChunk(
                    rows=rows,
                    samples=samples,
                    inputs=x.detach(),  # as fed (channels-last on CPU), as `forwards` does
                    logits=logits.detach(),
                    scores=scores.detach(),
                    input_grad=captured_tensor(grads[0]) if input_grad else None,
                    activations={n: captured_tensor(captured[n].detach()) for n in layers},
                    gradients={n: captured_tensor(grads[offset + i]) for i, n in enumerate(layers)},
                )
            self.cost.seconds += checks.finish()

    def forwards(
        self,
        n_rows: int,
        make_inputs: MakeInputs,
        sample_of: Callable[[torch.Tensor], torch.Tensor],
        target: Target | None = None,
        edit: tuple[nn.Module, LayerEdit] | None = None,
        fold: bool = True,
        example: torch.Tensor | None = None,
    ) -> Iterator[PassChunk]:
        """Forward-only passes under `torch.inference_mode()`, chunked; channels-last on CPU.

        `edit=(layer, fn)` replaces the layer's output by `fn(output, rows)` (e.g. to ablate
        channels). Scores are the target's when a target is given. Plain passes (no edit, no
        layer target, no hook on the model) run with BatchNorm folded in place (core/fused.py),
        the same function up to float rounding, and activations in place where nothing else
        reads their inputs (core/inplace.py); `fold=False` runs the model as it is.
        `example`: rows like the pass's (shape, dtype; a fold probe may run its first row),
        where the caller has them at hand (e.g. the inputs `x[:1]`); else `make_inputs` builds
        one row for it. The first chunk must match it.
        """
        with self.session(), Hooks() as hooks, torch.inference_mode(), ExitStack() as stack:
            dev = self.device
            example = _example(make_inputs, example, dev)
            # A plain pass runs with BatchNorm folded (core/fused.py).
            reached_output = layer_target(target) is None
            plain = fold and edit is None and reached_output
            # Channels-last rows on CPU where the model gives the same output (core/layout.py).
            nhwc = n_rows >= NHWC_MIN_ROWS and channels_last_known(self.module, example)
            # The probes run a row in the pass's layout: an op may return a copy in one layout
            # and a view in the other (`.contiguous()`, `reshape`), so which activations may
            # overwrite their input depends on it (core/inplace.py).
            probe_row = example.contiguous(memory_format=torch.channels_last) if nhwc else example
            stack.enter_context(self._folding(plain, probe_row, n_rows, inplace=True))
            current_rows: list[torch.Tensor] = []
            if edit is not None:
                layer, fn = edit

                def hook(module, inputs, out):
                    return _replace_first(out, fn(_first_tensor(out), current_rows[0]))

                refuse_unhookable(layer)
                hooks.add(layer.register_forward_hook(hook))
            plan = self._plan("forward", n_rows, example, dev)
            checks = _FiniteChecks(plan, dev)
            clock = chunk_clock(dev)
            for rows in plan.chunks():
                start = time.perf_counter()
                try:
                    with running_pass(self.module):  # user code inside: hooks, targets
                        x = _rows_like(make_inputs(rows), example)
                        if nhwc:
                            x = x.contiguous(memory_format=torch.channels_last)
                        learning = not plan.settled
                        built = clock() if learning else 0.0
                        current_rows[:] = [rows]
                        samples = sample_of(rows)
                        with chunk_samples(samples):
                            logits = self._output(x, target)
                        if reached_output:
                            _check_rows(logits, len(rows), self.model.labels)
                        scores = (
                            target.scores(logits, samples) if target is not None else logits[:, 0]
                        )
                        checks.add(scores, samples)
                        checks.wait()
                except torch.OutOfMemoryError:
                    _out_of_memory(plan, len(rows), dev)
                    continue
                if learning:  # a settled plan learns nothing: no clock read
                    plan.record(len(rows), clock() - built)
                self.cost.forward_rows += len(rows)
                self.cost.seconds += time.perf_counter() - start
                yield PassChunk(rows, samples, x, logits, scores)
            self.cost.seconds += checks.finish()

    # -- conveniences --------------------------------------------------------------------------

    def scores(
        self,
        n_rows: int,
        make_inputs: MakeInputs,
        sample_of: Callable[[torch.Tensor], torch.Tensor],
        target: Target,
        **options: Any,
    ) -> torch.Tensor:
        """(n_rows,) the target's scores of all rows (`forwards`, `options` its own), the passes
        closed when done or failing: a caller's frame kept by a traceback (Jupyter keeps the
        last) then keeps no suspended pass, whose model would stay folded."""
        with closing(self.forwards(n_rows, make_inputs, sample_of, target, **options)) as chunks:
            return torch.cat([c.scores for c in chunks])

    def logits(self, x: torch.Tensor, target: LayerTarget | None = None) -> torch.Tensor:
        """The model's logits for a batch (forward only, chunked); a layer target's readings.

        Run without BatchNorm folding (core/fused.py), so they equal `model(x)` up to the
        rounding of the channels-last layout on CPU (core/layout.py).
        """
        n = x.shape[0]
        with closing(self.forwards(n, *batch_rows(x), target, fold=False)) as chunks:
            return torch.cat([c.logits for c in chunks])

    def _output(self, x: torch.Tensor, target) -> torch.Tensor:
        """The logits of `x`, or for a layer target the readings of its layer.

        A layer target's layer is hooked for this forward, which ends right after the layer's
        first call (`_StopForward`): the rest of the network is not run.
        """
        reader = layer_target(target)
        if reader is None:
            return logits_of(self.module(x))
        layer = reader.layer
        name = layer if isinstance(layer, str) else module_name(self.module, layer)
        module = get_layer(self.module, layer) if isinstance(layer, str) else layer
        seen: list[torch.Tensor] = []

        def stop(mod, inputs, out):
            seen.append(_first_tensor(out))
            raise _StopForward

        refuse_unhookable(module)
        handle = module.register_forward_hook(stop)
        try:
            self.module(x)
        except _StopForward:
            pass
        finally:
            handle.remove()
        if not seen or not isinstance(seen[0], torch.Tensor):
            raise SaliencelabError(
                f"The target's layer {name} was not run by the model's forward, or returned no "
                "tensor; pick a layer the forward uses (see `saliencelab layers MODEL`)."
            )
        with token_layout(self.model, x):  # a ViT's tokens read on the patch grid
            readings = reader.read(seen[0])
        if readings.shape[0] != x.shape[0]:
            raise SaliencelabError(
                f"The target's layer {name} saw {readings.shape[0]} rows for a batch of "
                f"{x.shape[0]}; this method changes the batch inside the model, which a neuron or "
                "channel target cannot follow: use another method."
            )
        return readings


def _not_reached(name: str, reached_output: bool) -> str:
    """Why a layer captured in a gradient pass has no output: the forward did not run it, or
    stopped at a neuron or channel target's layer before it."""
    if reached_output:
        return (
            f"The layer {name} was not run by the model's forward; pick a layer the forward "
            "uses (see `saliencelab layers MODEL`)."
        )
    return (
        f"The layer {name} was not reached by the forward pass (a neuron or channel target "
        "stops it at its own layer); pick a layer that runs before the target's layer."
    )


def _example(
    make_inputs: MakeInputs, example: torch.Tensor | None, device: torch.device
) -> torch.Tensor:
    """Rows like a pass's: the caller's `example`, else one row built by `make_inputs`."""
    if example is None:
        return make_inputs(torch.arange(1)).to(device)
    return example if example.device == device else example.to(device)


def _rows_like(x: torch.Tensor, example: torch.Tensor) -> torch.Tensor:
    """`x`, a chunk of rows, on the example's device, after checking it is like the pass's
    example (the chunk plan and the layout were chosen for rows of its shape and dtype)."""
    if x.device != example.device:
        x = x.to(example.device)
    if x.shape[1:] != example.shape[1:] or x.dtype != example.dtype:
        raise RuntimeError(
            f"a pass's rows are {tuple(x.shape[1:])} {x.dtype} but its example is "
            f"{tuple(example.shape[1:])} {example.dtype}"
        )
    return x


def _input_gradients(score: torch.Tensor, wrt: list[torch.Tensor]) -> tuple:
    """`torch.autograd.grad(score, wrt)`; a reentrant checkpoint in the model's forward (which
    autograd.grad cannot go through) is one sentence instead of autograd's RuntimeError."""
    try:
        return torch.autograd.grad(score, wrt, allow_unused=True)
    except RuntimeError as error:
        if isinstance(error, CheckpointError):
            raise SaliencelabError(
                "The model's forward runs torch.utils.checkpoint, whose recomputation in the "
                "backward did not repeat the forward (the forward differs between calls, or "
                "the method's hooks change it); explain the model without checkpointing, or "
                "use a perturbation method such as occlusion."
            ) from None
        if "use_reentrant=True" not in str(error):
            raise
        raise SaliencelabError(
            "The model's forward runs torch.utils.checkpoint with use_reentrant=True, which "
            "gradients to the input or a layer cannot go through; call it with "
            "use_reentrant=False (the same memory saving), or use a perturbation method such as "
            "occlusion."
        ) from None


def _no_gradient(what: str, layers: bool) -> str:
    """The sentence for a target score with no gradient to `what` (the input, a layer)."""
    layer = ", or the layer does not lead to the score" if layers else ""
    pick = " (or pick a layer the score is computed from)" if layers else ""
    return (
        f"The target score has no gradient to {what} (the model's output is integer, detached, "
        f"or computed under torch.no_grad() or a reentrant torch.utils.checkpoint in its "
        f"forward{layer}); make the forward "
        f"differentiable{pick}, or use a perturbation method such as occlusion."
    )


def _check_rows(logits: torch.Tensor, n: int, labels: Sequence[str] | None = None) -> None:
    """One sentence unless the model's output has one row per input row (`n`): a forward that
    changes the batch (or returns one number) would give each input another row's scores; and
    unless the model's `labels` name its outputs one for one (`check_labels_fit`)."""
    if logits.dim() and logits.shape[0] == n:
        check_labels_fit(labels, logits)
        return
    rows = logits.shape[0] if logits.dim() else 0
    got = f"{rows} row{'s' * (rows != 1)} of scores" if logits.dim() else "a single number"
    raise SaliencelabError(
        f"The model returned {got} for a batch of {n} input{'s' * (n != 1)}; its forward must "
        "return one row of scores per input, in the inputs' order."
    )


def _out_of_memory(plan: ChunkPlan, rows: int, device: torch.device) -> None:
    """A chunk ran out of device memory: its rows come again in chunks of half the size (and
    every later pass of the kind stays below it, core/batching.py); one clear sentence when a
    single row does not fit."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if not plan.out_of_memory(rows):
        raise SaliencelabError(
            f"The {device.type} device ran out of memory for a single row of this pass; free "
            "memory on it, use smaller inputs, or run the model on the CPU."
        ) from None


def chunk_clock(device: torch.device) -> Callable[[], float]:
    """The clock chunk sizes are chosen by (core/batching.py): on a CPU with one torch thread,
    the process's CPU time, which other jobs on a shared machine do not inflate (a chunk that
    waited for the core looked slow, and a 2-core machine under load settled Lite0 forwards on
    8-row chunks where 2-4 rows are 25 % cheaper per row); else wall time (several threads: the
    wall time is what they save; a GPU: the host's CPU time says nothing of the device).

    The passes read it only while their plan is still searching: reading the CPU time is a
    system call, and on this project's 2-core VM under load one read right after a convolution
    took 0.5-0.8 ms (4-10 µs when idle), two per chunk."""
    if device.type == "cpu" and torch.get_num_threads() == 1:
        return time.process_time
    return time.perf_counter


@contextmanager
def _count_saved_bytes(plan: ChunkPlan, rows: int) -> Iterator[None]:
    """Measure the bytes autograd keeps for backward per row, once per model, pass kind and
    input shape (caps chunk sizes)."""
    if plan.bytes_per_row is not None or plan.fixed is not None:
        yield
        return
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield
    plan.remember_bytes(total // rows)


class _FiniteChecks:
    """The finiteness check of each chunk's scores, and the wait for the device.

    While the chunk size is being measured, and on the CPU, every chunk is checked and (on a
    GPU) waited for, so its time is real. Once the size is settled, on `DEFERRED_CHECK_DEVICES`
    the chunks' checks are gathered on the device and read once after the last chunk: the host
    queues the next chunk while the device works, and no chunk waits (`finish` waits once, and
    returns the seconds it waited, which the pass's cost counts).
    """

    def __init__(self, plan: ChunkPlan, device: torch.device) -> None:
        self.plan, self.device = plan, device
        self.all_finite: torch.Tensor | None = None

    def _deferred(self) -> bool:
        return self.plan.settled and self.device.type in DEFERRED_CHECK_DEVICES

    def add(self, scores: torch.Tensor, samples: torch.Tensor | None = None) -> None:
        """Check a chunk's scores (`samples`: the sample of each row, named on failure)."""
        if not self._deferred():
            if not all_finite(scores):
                _check_finite(False, _bad_samples(scores, samples))
            return
        finite = torch.isfinite(scores).all()
        self.all_finite = finite if self.all_finite is None else self.all_finite & finite

    def wait(self) -> None:
        """Wait for the device, unless the checks are deferred."""
        if self.device.type == "cuda" and not self._deferred():
            torch.cuda.synchronize(self.device)

    def finish(self) -> float:
        """Check the gathered chunks (waiting for the device once); the seconds it waited."""
        if self.all_finite is None:
            return 0.0
        start = time.perf_counter()
        _check_finite(self.all_finite)
        self.all_finite = None
        return time.perf_counter() - start


def all_finite(t: torch.Tensor) -> bool:
    """Whether every value of `t` is finite. For floats one `aminmax` reduction (it propagates
    NaN, so a NaN, +inf or -inf makes an end non-finite): ~10× faster than `isfinite(t).all()`
    on the CPU (90 µs for 8 × 64² values). On the CPU the two ends are read as Python floats
    (4-5 µs for a chunk's scores, where comparing them as tensors took 24 µs); elsewhere
    compared on the device and read once (one synchronisation)."""
    if t.numel() == 0 or not (t.is_floating_point() or t.is_complex()):
        return True
    if t.is_complex():
        return bool(torch.isfinite(t).all())
    lo, hi = torch.aminmax(t.detach() if t.requires_grad else t)  # (no autograd node)
    if t.device.type == "cpu":
        return math.isfinite(lo.item()) and math.isfinite(hi.item())
    return bool((lo > -math.inf) & (hi < math.inf))


def _bad_samples(scores: torch.Tensor, samples: torch.Tensor | None) -> list[int]:
    """The samples (batch indices) of the rows whose scores are not all finite."""
    bad = ~torch.isfinite(scores.detach().reshape(scores.shape[0], -1)).all(1)
    rows = bad.nonzero()[:, 0].cpu()
    return sorted(set((samples.cpu()[rows] if samples is not None else rows).tolist()))


def _check_finite(finite: torch.Tensor | bool, samples: list[int] | None = None) -> None:
    if not bool(finite):
        which = ""
        if samples:
            shown = ", ".join(map(str, samples[:5])) + (", ..." if len(samples) > 5 else "")
            which = f" (for the rows of sample{'s' * (len(samples) > 1)} {shown})"
        raise SaliencelabError(
            f"The model returned NaN or infinite scores{which}; check those inputs' range and "
            "the model's weights."
        )
