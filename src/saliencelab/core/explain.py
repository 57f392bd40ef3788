"""`sl.explain`: run several methods on one batch, sharing passes, and count what each cost."""

from __future__ import annotations

import dataclasses
import itertools
import numbers
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from ..models.blackbox import gradients_message, is_blackbox
from ..models.model import Model, as_model, as_model_input, preprocessed
from .backward import BACKWARD_MODES
from .context import Capture, Context, autograd_allowed, method_output, upsample
from .engine import Cost, Engine
from .errors import SaliencelabError, closest
from .registry import MethodSpec, get_method
from .requests import named_requests
from .result import Attribution, Explanation
from .state import attribution_mode
from .targets import PendingTarget, TargetSpec, layer_target

MethodsArg = str | Sequence[str] | Mapping[str, Mapping[str, Any]]


def _requests(methods: MethodsArg, options: dict[str, Any]) -> list[tuple[MethodSpec, dict]]:
    """(spec, options) per requested method; keyword options go to every method taking them."""
    per_method = named_requests(methods, "method", "methods=['saliency', 'gradcam']")
    requests = []
    used: set[str] = set()
    for name, own in per_method.items():
        spec = get_method(name)
        for key in own:
            if key not in spec.options:
                raise SaliencelabError(
                    f"{name} has no option {key!r}.{closest(key, spec.options)} Its options: "
                    f"{', '.join(spec.options) or 'none'}."
                )
        opts = {k: v for k, v in options.items() if k in spec.options}
        used.update(opts)
        opts.update(own)
        requests.append((spec, {**spec.options, **opts}))
    unused = set(options) - used
    if unused:
        key = sorted(unused)[0]
        raise SaliencelabError(
            f"No requested method takes the option {key!r}; check its spelling or the methods' "
            "options with `saliencelab methods`."
        )
    return requests


def _as_batch(model: Model, x: Any) -> torch.Tensor:
    """The inputs as a batch on the model's device, in its parameters' floating dtype."""
    if not isinstance(x, torch.Tensor):
        x = preprocessed(model, x)
    if x.dim() < 2 or (x.dim() == 3 and model.input_size is not None):
        raise SaliencelabError(
            f"Inputs need a batch axis, but got a tensor of shape {tuple(x.shape)}; use "
            "x.unsqueeze(0) for a single input."
        )
    # Integer inputs pass as they are (token ids for an embedding); a model that cannot take
    # them fails in its forward, and `_input_error` says so in one sentence.
    if x.shape[0] == 0:
        raise SaliencelabError(f"The batch is empty (inputs of shape {tuple(x.shape)}).")
    x = as_model_input(model, x).detach()  # (the caller's graph is not kept in the result)
    if x.is_inference():  # made under torch.inference_mode(): a copy autograd can use
        x = x.clone()
    return x


def _check_sizes(chunk_size: Any, memory_budget: Any) -> None:
    for name, value, example in (
        ("chunk_size", chunk_size, "chunk_size=16"),
        ("memory_budget", memory_budget, "memory_budget=2 * 1024**3 (2 GiB)"),
    ):
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool) and value > 0
        if value is not None and not ok:
            raise SaliencelabError(
                f"{name} must be None or a positive int, not {type(value).__name__} "
                f"{value!r}; pass e.g. {example}."
            )


def _needs_input_gradient(spec: MethodSpec) -> bool:
    """Whether the method differentiates the score with respect to the inputs (gradient and
    relevance methods, and any method sharing an input-gradient pass, e.g. guided Grad-CAM);
    CAMs, rollouts, perturbation and reference maps do not, so they also take integer inputs."""
    if spec.family in ("gradient", "relevance"):
        return True
    return any(p.input_grad for p in spec.shared_passes)


@contextmanager
def input_errors_explained(model: Model, x: torch.Tensor) -> Iterator[None]:
    """A failure in the block that the inputs caused (`_input_error`) re-raised as one sentence
    about them; any other error propagates as it is."""
    try:
        yield
    except (RuntimeError, ValueError, TypeError, IndexError) as err:
        if isinstance(err, SaliencelabError):
            raise
        wrapped = _input_error(model, x, err)
        if wrapped is None:
            raise
        raise wrapped from None


def _input_error(model: Model, x: torch.Tensor, err: Exception) -> SaliencelabError | None:
    """One sentence for `err` when the inputs are at fault, keeping the key part of `err`'s
    message; None when they may not be (`err` then propagates as it is).

    The inputs are blamed only when a plain forward of one row of `x` fails inside the model's
    first layer (a wrong shape, channel count or dtype for it: `err` of the built-in type, not
    a subclass the user raised). A failure further in, or before any layer, may be the model's
    own bug and is left alone, as is anything a black box raises. Only run after a call
    failed, so a good call costs nothing.
    """
    if type(err) not in (RuntimeError, ValueError, TypeError, IndexError) or is_blackbox(model):
        return None
    weights = itertools.chain(model.module.parameters(), model.module.buffers())
    if "nference tensor" in str(err) and any(t.is_inference() for t in weights):
        return SaliencelabError(
            "The model's weights were made under torch.inference_mode() (inference tensors), "
            "which gradients and weight randomisation cannot use; build or load the model "
            "outside it (torch.no_grad() is fine), or explain it with a perturbation method "
            "such as occlusion."
        )
    if "leaf Variable that requires grad is being used in an in-place operation" in str(err):
        return SaliencelabError(
            "The model changes its input in place (e.g. `x -= mean` in its forward), which "
            "autograd refuses for the input whose gradient a method takes; write it out of place "
            "(`x = x - mean`), or explain it with a perturbation method such as occlusion."
        )
    entered: list[nn.Module] = []

    def note(module: nn.Module, args: tuple) -> None:
        entered.append(module)

    leaves = [m for m in model.module.modules() if next(m.children(), None) is None]
    handles = [m.register_forward_pre_hook(note) for m in leaves]
    try:
        # eval mode (restored after): a model in train mode must not update its BatchNorm
        # statistics from a diagnostic forward
        with attribution_mode(model.module), torch.inference_mode():
            model.module(x[:1].clone())  # (a copy: a model may change its input)
        return None  # one row runs: the failure was elsewhere
    except Exception:  # noqa: BLE001  (where it failed is what matters, not what)
        if len(entered) != 1:  # before any layer, or past the first one: maybe the model's bug
            return None
    finally:
        for h in handles:
            h.remove()
    first = str(err).strip().split("\n")[0][:300]
    single = " (a single image (C, H, W) needs x.unsqueeze(0))" if x.dim() == 3 else ""
    source = "e.g. from model.preprocess(images)"
    if not (x.is_floating_point() or x.is_complex()):
        single += f"; {x.dtype} inputs such as uint8 images need preprocessing first"
        source = "e.g. model.preprocess(images), or x.float() / 255 with the model's normalisation"
    # One row of a (C, H, W) image is one channel: its first layer's failure says little of
    # the layer that failed on the whole input (a Linear after the convolutions, say).
    who = "The model" if x.dim() == 3 else "The model's first layer"
    return SaliencelabError(
        f"{who} cannot take inputs of shape {tuple(x.shape)} and dtype "
        f"{x.dtype} ({type(err).__name__}: {first}); give a batch (B, ...) with the layout, "
        f"channels and size the model expects{single}, {source}."
    )


def _prefetch(ctx: Context, requests: list[tuple[MethodSpec, dict]]) -> Capture | None:
    """Run each backward mode's shared pass once, with every layer the methods asked for."""
    wanted: dict[str, tuple[dict[str, nn.Module], bool]] = {}
    for spec, opts in requests:
        for sp in spec.shared_passes:
            layers, grad = wanted.get(sp.backward, ({}, False))
            if sp.layer:
                layers = {**layers, **ctx.layers(opts.get("layer"))}
            wanted[sp.backward] = (layers, grad or sp.input_grad)
    first = None
    for backward in sorted(wanted, key=lambda b: b != "plain"):
        layers, grad = wanted[backward]
        cap = ctx.capture(layers, grad, backward)
        first = first or cap
    return first


def explain(
    model: Model | nn.Module,
    x: Any,
    methods: MethodsArg = "saliency",
    target: TargetSpec = None,
    *,
    chunk_size: int | None = None,
    memory_budget: int | None = None,
    **options: Any,
) -> Explanation:
    """Explain a batch with one or several methods.

    Args:
        model: an `sl.Model` or a plain `nn.Module`.
        x: input batch (B, C, H, W), or tabular (B, F), or anything `model.preprocess`
            accepts. Floating inputs are cast to the model's parameter dtype (e.g. float64 →
            float32); integer inputs (token ids) are passed as they are, and a model that
            cannot take them (uint8 images) fails with one sentence: preprocess them first.
        methods: a name, a list or comma-separated string of names, or a dict
            `{name: {option: value}}` for per-method options.
        target: None (predicted class), an int, a class name, one per sample, a callable
            `logits -> (N,)` scores, or a channel / neuron (`sl.channel("_blocks.12", 42)`),
            whose score is read from its layer (the forward stops there; `logits` then hold
            the layer's readings).
        chunk_size: rows per chunk in multi-pass methods (default: measured).
        memory_budget: bytes a pass may use (default: half the free GPU memory / a quarter of RAM).
        **options: options given to every requested method that takes them (e.g. `n_steps=32`).

    Works inside `torch.no_grad()` and `torch.inference_mode()`: the call turns autograd on
    for itself and restores the caller's modes. Maps are (B, H, W) for images, (B, F) for
    tabular inputs (one value per feature, no reduction).
    """
    start = time.perf_counter()
    _check_sizes(chunk_size, memory_budget)
    with autograd_allowed():  # also inside a caller's no_grad / inference_mode
        model = as_model(model)
        requests = _requests(methods, options)
        check = model.extra.get("check_method")  # e.g. text: CAMs need a spatial layer
        if check is not None:
            for spec, _ in requests:
                check(spec.name, spec.family)
        prepare = model.extra.get("prepare")  # per call, e.g. text: tokenise, embed, bind target
        if prepare is not None:
            model, x, target = prepare(x, target)
        x = _as_batch(model, x)
        if is_blackbox(model):  # only forwards: perturbation methods, and the reference maps
            for spec, _ in requests:  # (which need nothing of the model)
                if spec.family not in ("perturbation", "reference"):
                    raise SaliencelabError(gradients_message(spec.name, spec.family))
        if not (x.is_floating_point() or x.is_complex()):
            for spec, _ in requests:
                if _needs_input_gradient(spec):
                    raise SaliencelabError(
                        f"{spec.name} needs gradients with respect to the inputs, which {x.dtype} "
                        "inputs do not have: preprocess images first (model.preprocess(image), "
                        "or x.float() / 255 with the model's normalisation); token ids need a "
                        "text model (sl.TextModel, which explains the embeddings) or a "
                        "perturbation method."
                    )
        engine = Engine(model, chunk_size=chunk_size, memory_budget=memory_budget)
        # One session for the call: the passes' own sessions then cost nothing.
        with engine.session(), input_errors_explained(model, x):
            return _explain(model, engine, x, requests, target, start)


def _explain(
    model: Model,
    engine: Engine,
    x: torch.Tensor,
    requests: list[tuple[MethodSpec, dict]],
    target: TargetSpec,
    start: float,
) -> Explanation:
    if layer_target(target) is None:  # a layer target's forward stops early: no full probe
        engine.probe_layout(x)  # before any method hooks the model
    ctx = Context(model, engine, x, PendingTarget(target, x.shape[0], model.labels))
    first = _prefetch(ctx, requests)
    if first is not None and first.backward in BACKWARD_MODES:
        logits = first.logits  # plain, guided and deconv passes run the model's own forward
    else:
        logits = engine.logits(x, layer_target(target))
    ctx.resolve(target, logits)

    results: dict[str, Attribution] = {}
    own: dict[str, Cost] = {}
    for spec, opts in requests:
        ctx.method = spec.name
        n_captures = len(ctx.captures)
        before = engine.cost.copy()
        t0 = time.perf_counter()
        out = spec.fn(ctx, **opts)
        cost = engine.cost.since(before)
        cost.seconds = time.perf_counter() - t0
        for cap in ctx.captures[n_captures:]:  # captures first run inside this method
            cost.grad_rows -= cap.cost.grad_rows
            cost.forward_rows -= cap.cost.forward_rows
            cost.seconds -= cap.cost.seconds
        own[spec.name] = cost
        results[spec.name] = _attribution(spec, opts, out, ctx)

    for name, a in results.items():
        caps = [c for c in ctx.captures if name in c.users]
        c = own[name]
        a.passes = (c.grad_rows + sum(k.cost.grad_rows for k in caps)) / ctx.batch
        a.forwards = (c.forward_rows + sum(k.cost.forward_rows for k in caps)) / ctx.batch
        a.seconds = c.seconds + sum(k.cost.seconds / len(k.users) for k in caps)
        a.shared_with = tuple(sorted({u for k in caps for u in k.users} - {name}))
    # Everything the engine ran for this call, shared passes once, plus the forward that found
    # the predicted class when no shared pass did.
    total = engine.cost
    reading = layer_target(target)  # a channel / neuron: the logits are its layer's readings
    # a model whose outputs are no classes (a text model's sentence embedding or next-token
    # logits): its function target is what was explained, and there is no predicted class
    score = None
    # the same for a function of an output that holds no class scores to choose from: one score
    # per sample (B, 1), or not (B, classes) at all (a segmentation map (B, K, H, W))
    no_classes = logits.dim() != 2 or logits.shape[-1] == 1
    outputs_are_classes = model.extra.get("outputs_are_classes", True) and not no_classes
    if reading is None and not outputs_are_classes and callable(target):
        score = target
    return Explanation(
        attributions=results,
        inputs=x,
        logits=logits.detach(),
        labels=None if reading is not None or score is not None else model.labels,
        total_passes=total.grad_rows / ctx.batch,
        total_forwards=total.forward_rows / ctx.batch,
        seconds=time.perf_counter() - start,
        layer_target=reading,
        score_target=score,
    )


def _attribution(spec: MethodSpec, opts: dict, out: Any, ctx: Context) -> Attribution:
    out = method_output(spec.name, out, ctx.x)
    if out.signed is None:  # the registered default, also for `reduce` (text: signed sums)
        out = dataclasses.replace(out, signed=spec.signed)
    reduce = ctx.model.extra.get("reduce")  # e.g. text: (B, T, D) embedding attributions → words
    if reduce is not None:
        out = reduce(out)
    attr = out.attributions
    reduction = spec.reduction
    if out.maps is not None:
        maps = out.maps
    elif attr.dim() == ctx.x.dim() and attr.dim() > 2:  # (B, C, ...): sum over channels
        maps = attr.sum(dim=1)
    else:  # tabular (B, F) inputs have no channel axis: one value per feature
        maps = attr
        if reduce is None and ctx.x.dim() == 2 and attr.shape == ctx.x.shape:
            reduction = "none (one value per feature)"
    if ctx.x.dim() == 4 and maps.dim() == 3:
        maps = upsample(maps, ctx.x.shape[-2:])
    signed = bool(out.signed)
    if not signed and reduction.startswith("signed "):  # e.g. SmoothGrad of |grad|
        reduction = reduction.removeprefix("signed ")
    if attr.dim() == 3 and ctx.x.dim() != 3:  # a layer map (B, h, w), not token embeddings
        attr = maps[:, None]
    return Attribution(
        method=spec.name,
        maps=maps.detach(),
        attributions=attr.detach(),
        target=ctx.target.indices.detach().clone(),
        signed=signed,
        reduction=reduction,
        layer=out.layer,
        params={k: v for k, v in opts.items() if not isinstance(v, torch.Tensor)},
        extras=out.extras,
        tensor_params={k: v for k, v in opts.items() if isinstance(v, torch.Tensor)},
    )
