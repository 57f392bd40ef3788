"""Model state during attribution: eval mode, frozen parameters, hooks — always restored.

Freezing parameters (`requires_grad_(False)`) means backward computes only input (and hooked
activation) gradients. Measured on a 2-core CPU with EfficientNet-Lite0 (benchmarks/README.md):
`loss.backward()` with weights unfrozen costs 1.86x a frozen pass (what pytorch-grad-cam does);
`torch.autograd.grad` on the input alone already skips weight gradients (1.13x).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from .errors import SaliencelabError


def submodules(module: nn.Module) -> list[nn.Module]:
    """`list(module.modules())`, in the same order (depth first, each module once), about 2×
    faster: it builds no dotted names. Every attribution call walks the model to set and
    restore its state (`attribution_mode`)."""
    out: list[nn.Module] = []
    seen: set[int] = set()

    def visit(m: nn.Module) -> None:
        if id(m) in seen:
            return
        seen.add(id(m))
        out.append(m)
        for child in m._modules.values():
            if child is not None:
                visit(child)

    visit(module)
    return out


def _parameters(modules: list[nn.Module]) -> list[nn.Parameter]:
    """The parameters of `modules` (a `submodules` list), each once: `module.parameters()`."""
    seen: set[int] = set()
    out = []
    for m in modules:
        for p in m._parameters.values():
            if p is not None and id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return out


@contextmanager
def frozen_parameters(module: nn.Module, modules: list[nn.Module] | None = None) -> Iterator[None]:
    """Set `requires_grad=False` on every parameter; restore each flag afterwards.

    Only the parameters that require gradients are touched (none, for a model already frozen):
    on a GPU, where a small batch is bound by Python and kernel launches, a per-call loop over
    every parameter showed up in the profile (benchmarks/profile_call.py). `modules`: the
    model's `submodules`, where the caller has them.
    """
    mods = submodules(module) if modules is None else modules
    trainable = [p for p in _parameters(mods) if p.requires_grad]
    try:
        for p in trainable:
            p.requires_grad_(False)
        yield
    finally:
        for p in trainable:
            try:
                p.requires_grad_(True)
            except RuntimeError:  # a parameter made under torch.inference_mode(): only there
                with torch.inference_mode():  # may an inference tensor require grad again
                    p.requires_grad_(True)


@contextmanager
def eval_mode(module: nn.Module, modules: list[nn.Module] | None = None) -> Iterator[None]:
    """Put every submodule in eval mode; restore each one's `training` flag afterwards.

    A model already in eval mode (the usual case) is not touched: `module.eval()` and the
    restore loop cost ~2 ms per call on EfficientNet-Lite0's ~300 modules. `modules`: the
    model's `submodules`, where the caller has them.
    """
    modes = [(m, m.training) for m in (submodules(module) if modules is None else modules)]
    if not any(training for _, training in modes):
        yield
        return
    try:
        try:
            module.eval()
        except NotImplementedError:  # torch.export modules refuse .eval(); set the flags directly
            for m, _ in modes:
                m.training = False
        yield
    finally:
        for m, training in modes:
            if m.training != training:
                m.training = training


class Hooks:
    """A set of hook handles removed together, also when the code inside raises.

    >>> with Hooks() as hooks:
    ...     hooks.add(layer.register_forward_hook(fn))
    """

    def __init__(self) -> None:
        self.handles: list[RemovableHandle | Callable[[], object]] = []

    def add(self, handle: RemovableHandle) -> RemovableHandle:
        self.handles.append(handle)
        return handle

    def on_exit(self, undo: Callable[[], object]) -> None:
        """Run `undo()` when the hooks are removed (model surgery that must be reverted)."""
        self.handles.append(undo)

    def remove(self) -> None:
        """Remove hooks and run undo callbacks, last first; all run even if one fails."""
        errors = []
        while self.handles:
            h = self.handles.pop()
            try:
                h.remove() if isinstance(h, RemovableHandle) else h()
            except Exception as e:  # noqa: BLE001  (keep restoring, re-raise after)
                errors.append(e)
        if errors:
            raise errors[0]

    def __enter__(self) -> Hooks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


@dataclass
class _Session:
    depth: int
    undo: ExitStack


_SESSIONS: weakref.WeakKeyDictionary[nn.Module, _Session] = weakref.WeakKeyDictionary()
_LOCKS: weakref.WeakKeyDictionary[nn.Module, threading.RLock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def model_lock(module: nn.Module) -> threading.RLock:
    """The lock of `module`'s attribution sessions: one thread at a time (re-entrant)."""
    with _LOCKS_GUARD:
        lock = _LOCKS.get(module)
        if lock is None:
            lock = _LOCKS[module] = threading.RLock()
        return lock


_THREAD = threading.local()  # per thread: {id(module): chunks of passes running on it}


@contextmanager
def running_pass(module: nn.Module) -> Iterator[None]:
    """Marks a chunk of passes running on `module` in this thread: the model's forward, its
    hooks and the target's function run inside, with the model in the call's state."""
    running = _THREAD.__dict__.setdefault("passes", {})
    key = id(module)
    running[key] = running.get(key, 0) + 1
    try:
        yield
    finally:
        running[key] -= 1
        if not running[key]:
            del running[key]


def _refuse_nested(module: nn.Module) -> None:
    """One sentence where a call on `module` starts inside a chunk of another call's passes on
    it (from a target function or a hook): that call has the model hooked and changed (LRP's
    rules, guided backprop's, folded BatchNorms), so the inner call's maps would be wrong."""
    if _THREAD.__dict__.get("passes", {}).get(id(module)):
        raise SaliencelabError(
            "A saliencelab call on this model was started from inside another call's pass on "
            "it (in a target function or a hook), where the model is hooked and changed for "
            "that call; compute it before or after the outer call."
        )


@contextmanager
def attribution_mode(module: nn.Module) -> Iterator[None]:
    """Eval mode and frozen parameters for the duration of an attribution call.

    Nested calls on the same module (every pass of `sl.explain` opens one) cost nothing: the
    first sets the state, and it is restored when the last one open ends, in whatever order
    they end (passes are generators).

    A call changes the model while it runs (hooks, BatchNorm folded in place, LRP's merged
    layers, randomised weights), so calls on the same module from several threads take turns:
    the session holds the module's lock (`model_lock`) from its first entry to its last exit.
    Without it a second thread saved the first one's folded weights as the originals and put
    them back for good, and got maps of the other thread's hooked model.
    """
    _refuse_nested(module)
    lock = model_lock(module)
    lock.acquire()
    try:
        session = _SESSIONS.get(module)
        if session is None:
            modules = submodules(module)  # one walk for both
            with ExitStack() as stack:
                stack.enter_context(eval_mode(module, modules))
                stack.enter_context(frozen_parameters(module, modules))
                session = _SESSIONS[module] = _Session(0, stack.pop_all())
        session.depth += 1
    except BaseException:
        lock.release()
        raise
    try:
        yield
    finally:
        try:
            session.depth -= 1
            if session.depth == 0:
                del _SESSIONS[module]
                session.undo.close()
        finally:
            lock.release()


def usable_input(x: torch.Tensor) -> torch.Tensor:
    """A detached copy usable in autograd, also if `x` was made under `torch.inference_mode()`."""
    if x.is_inference():
        with torch.inference_mode(False):
            return x.clone()
    return x.detach()
