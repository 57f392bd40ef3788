"""The method registry: every saliency method registered by name, with its family and cost.

A method is a function `fn(ctx: Context, **options) -> MethodOutput | Tensor` (see
`core/context.py`). Methods whose work is one gradient pass plus cheap maths declare that pass in
`shared_passes`, so `sl.explain` runs it once for all of them.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .backward import Backward
from .errors import SaliencelabError, closest


@dataclass(frozen=True)
class SharedPass:
    """One forward+backward pass a method can share: backward mode, input grad, layer grads."""

    backward: Backward = "plain"
    input_grad: bool = True
    layer: bool = False


@dataclass(frozen=True)
class MethodSpec:
    name: str
    family: str
    cost: str
    fn: Callable[..., Any]
    shared_passes: tuple[SharedPass, ...] = ()
    signed: bool = True
    reduction: str = "sum"
    summary: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    rowwise: bool | Callable[[dict[str, Any]], bool] = False
    choices: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def needs_layer(self) -> bool:
        return "layer" in self.options

    def __repr__(self) -> str:
        """One line a person can read: name, family, cost and options with their defaults (the
        dataclass repr printed the function and every field)."""
        options = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return (
            f"<method {self.name} ({self.family}): passes per sample {self.cost}; "
            f"{options or 'no options'}>"
        )

    def is_rowwise(self, options: dict[str, Any]) -> bool:
        """Whether, with these options, the method reads the model only through the engine's
        passes and explains each sample from its own rows alone (no draws that depend on the
        sample's position in the batch): then several weight versions can share one call
        (`core/row_versions.py`)."""
        rowwise = self.rowwise
        return bool(rowwise({**self.options, **options}) if callable(rowwise) else rowwise)


_REGISTRY: dict[str, MethodSpec] = {}


def quoted(names: Iterable[str]) -> tuple[str, ...]:
    """("'mean'", "'max'") for ("mean", "max"): option names as `choices` lists them."""
    return tuple(repr(name) for name in names)


def register(
    name: str,
    *,
    family: str,
    cost: str,
    shared_passes: tuple[SharedPass, ...] = (),
    signed: bool = True,
    reduction: str = "sum",
    rowwise: bool | Callable[[dict[str, Any]], bool] = False,
    choices: dict[str, tuple[str, ...]] | None = None,
    replace: bool = False,
) -> Callable:
    """Register a method under `name`. `cost` says its passes per sample, e.g. "n_steps";
    `rowwise` see `MethodSpec.is_rowwise` (a bool, or a function of the options); `choices` maps
    an option to the values it accepts, in words for `saliencelab methods`: the names quoted
    (`quoted(NAMES)`, from the constant the method checks against), then the other kinds of
    value, e.g. {"fusion": quoted(FUSIONS)} or {"baseline": (*quoted(BASELINES), "a number")}.

    The method is `fn(ctx, *, option=default, ...)`: the context, then its options, keyword-only
    and each with a default. A name already taken by another function is refused unless
    `replace=True` (the same function defined again, e.g. a notebook cell run twice, replaces
    its earlier self)."""
    for what, value in (("name", name), ("family", family), ("cost", cost)):
        if not isinstance(value, str) or not value.strip():
            raise SaliencelabError(
                f"register(...): the {what} must be a non-empty string, not "
                f"{type(value).__name__} {value!r}."
            )
    choices = dict(choices or {})
    for option, values in choices.items():
        if isinstance(values, str) or not all(isinstance(v, str) for v in values):
            raise SaliencelabError(
                f"register({name!r}, choices=...): {option!r} must map to a tuple of strings "
                f"(the values in words), not {values!r}."
            )
    choices = {k: tuple(v) for k, v in choices.items()}

    def wrap(fn: Callable) -> Callable:
        options = _options(name, fn)
        _check_free(name, fn, replace)
        for option in choices:
            if option not in options:
                raise SaliencelabError(
                    f"register({name!r}, choices=...) names {option!r}, which is not an option "
                    f"of {fn.__qualname__}.{closest(option, options)} "
                    f"Its options: {', '.join(options) or 'none'}."
                )
        # The summary is the docstring's first paragraph, a sentence that may wrap over lines.
        doc = inspect.getdoc(fn) or ""
        _REGISTRY[name] = MethodSpec(
            name=name,
            family=family,
            cost=cost,
            fn=fn,
            shared_passes=shared_passes,
            signed=signed,
            reduction=reduction,
            summary=" ".join(doc.split("\n\n")[0].split()),
            options=options,
            rowwise=rowwise,
            choices=choices,
        )
        return fn

    return wrap


def _options(name: str, fn: Callable) -> dict[str, Any]:
    """The options of method `fn` with their defaults: its keyword-only parameters after the
    context; one sentence where `fn` cannot be called as `fn(ctx, **options)`."""
    if not callable(fn):
        raise SaliencelabError(
            f"register({name!r}) decorates a function, not a {type(fn).__name__}."
        )
    title = getattr(fn, "__qualname__", name)
    params = list(inspect.signature(fn).parameters.values())
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if not positional and not any(p.kind is p.VAR_POSITIONAL for p in params):
        raise SaliencelabError(
            f"The method {title} takes no context; a method is fn(ctx, *, option=default, ...)."
        )
    for p in positional[1:]:  # sl.explain passes options by keyword, never by position
        default = "..." if p.default is p.empty else repr(p.default)
        raise SaliencelabError(
            f"The method {title} takes {p.name!r} by position, which sl.explain never gives; "
            f"make it an option after a `*`: def {title.rsplit('.', 1)[-1]}(ctx, *, "
            f"{p.name}={default})."
        )
    options = {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY}
    for option, default in options.items():
        if default is inspect.Parameter.empty:
            raise SaliencelabError(
                f"The option {option!r} of method {title} has no default; give it one "
                f"(`*, {option}=...`): sl.explain passes only the options a user names."
            )
    return options


def same_definition(a: object, b: object) -> bool:
    """Whether `a` and `b` are one function or class defined again (same module and qualified
    name: a notebook cell run twice, a module reloaded), which may replace its earlier self."""
    return (getattr(a, "__module__", None), getattr(a, "__qualname__", None)) == (
        getattr(b, "__module__", None),
        getattr(b, "__qualname__", None),
    )


def _check_free(name: str, fn: Callable, replace: bool) -> None:
    """One sentence where `name` is taken by another method (a built-in included), unless
    `replace`; the same function defined again (same module and name) replaces itself."""
    _load_builtin_methods()
    taken = _REGISTRY.get(name)
    if taken is None or replace:
        return
    if same_definition(fn, taken.fn):
        return
    raise SaliencelabError(
        f"A method named {name!r} is already registered ({taken.fn.__module__}."
        f"{taken.fn.__qualname__}); pick another name, or pass replace=True to replace it."
    )


def _load_builtin_methods() -> None:
    # By module path: the package attribute `saliencelab.methods` is the `methods()` function.
    importlib.import_module("saliencelab.methods")


def get_method(name: str) -> MethodSpec:
    _load_builtin_methods()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise SaliencelabError(
            f"Unknown method {name!r}.{closest(name, _REGISTRY)} "
            "Run `saliencelab methods` to list them."
        ) from None


def methods() -> list[MethodSpec]:
    """Every registered method, with its family and its cost in passes."""
    _load_builtin_methods()
    return sorted(_REGISTRY.values(), key=lambda s: (s.family, s.name))
