"""Attention weights of transformers, for attention rollout and gradient-weighted rollout.

Fused attention kernels (PyTorch's `scaled_dot_product_attention`, FlashAttention) never form the
attention matrix A = softmax(Q Kᵀ / √d). For the duration of a pass :class:`AttentionRecorder`
switches each attention layer it finds to an implementation that does, records A (B, heads, T, T)
of every self-attention layer in the order they run (cross-attention, whose A is not square, is
left out) and, in gradient passes, ∂S/∂A of the target score S; then it restores everything,
also when the pass raises (`Hooks.on_exit`):

- `nn.MultiheadAttention` (torchvision's ViT, `nn.TransformerEncoderLayer`): called with
  `need_weights=True, average_attn_weights=False` (the caller still gets what it asked for), with
  PyTorch's fused encoder "fast path" off (`torch.backends.mha.set_fastpath_enabled`);
- Hugging Face models: `config._attn_implementation = "eager"` on every config of the model; the
  layers named in the model's `_can_record_outputs["attentions"]` (their class, and their layer
  name where one is given, e.g. GPT-2's `.attn`) (or, for older models, classes
  named `*SelfAttention`, with `output_attentions=True`) return A as their second output;
- timm-style attention (timm's `Attention` and this project's :class:`~saliencelab.models.vit.
  Attention`): `fused_attn = False`; A is the output of its `attn_drop` module.

The recorder is a backward rule (`install(model, hooks)`), so the engine installs and removes it
around gradient passes; :func:`attention_forwards` and :func:`attention_gradients` run the chunked
passes and yield each chunk's weights.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .batching import batch_rows
from .engine import Engine, PassChunk
from .errors import SaliencelabError
from .state import Hooks
from .targets import Target

NO_ATTENTION = (
    "The model has no attention layer saliencelab can read (nn.MultiheadAttention, Hugging Face "
    "attention, or timm-style attention with `fused_attn` and `attn_drop`), so {method} cannot "
    "run on it; use a gradient or CAM method instead."
)

_MHA_ARGS = (
    "query",
    "key",
    "value",
    "key_padding_mask",
    "need_weights",
    "attn_mask",
    "average_attn_weights",
    "is_causal",
)


@dataclass
class AttentionLayer:
    """One attention layer: `module` runs the attention; `kind` says how its weights are read."""

    name: str
    module: nn.Module
    kind: str  # "mha" | "hf" | "timm"
    index: int = 1  # Hugging Face: position of the weights in the module's output tuple


# -- finding attention layers -------------------------------------------------------------------


def _hf_attention_specs(model: nn.Module) -> list[tuple[Any, int, str | None]]:
    """(class or class-name suffix, output index, layer name or None) of the attention layers
    of HF sub-models."""
    specs: list[tuple[Any, int, str | None]] = []
    for m in model.modules():
        record = getattr(type(m), "_can_record_outputs", None)
        if not isinstance(record, dict) or "attentions" not in record:
            continue
        entries = record["attentions"]
        for entry in entries if isinstance(entries, list) else [entries]:
            if isinstance(entry, (type, str)):
                specs.append((entry, 1, None))
            else:  # transformers' OutputRecorder(target_class, index, layer_name, class_name)
                target = getattr(entry, "target_class", None) or getattr(entry, "class_name", None)
                if target is not None:
                    index = int(getattr(entry, "index", 1))
                    specs.append((target, index, getattr(entry, "layer_name", None)))
    return specs


def _hf_match(name: str, m: nn.Module, target: Any, layer_name: str | None) -> bool:
    """Whether module `m` called `name` is the layer a spec names: its class (or a name suffix)
    and, when the spec gives one, its layer name as a dotted part of `name` (as transformers
    matches it: GPT-2's self-attention `.attn`, not its cross-attention `.crossattention`)."""
    hit = isinstance(m, target) if isinstance(target, type) else name.endswith(target)
    if hit and layer_name is not None:
        hit = f".{layer_name.strip('.')}." in f".{name}."
    return hit


def _is_hf(model: nn.Module) -> bool:
    return any(_hf_config(m) is not None for m in model.modules())


def _hf_config(m: nn.Module) -> Any:
    config = getattr(m, "config", None)
    return config if hasattr(config, "_attn_implementation_internal") else None


def attention_layers(model: nn.Module) -> list[AttentionLayer]:
    """Every attention layer of `model` that can give its weights, in module order."""
    specs = _hf_attention_specs(model)
    hf = _is_hf(model)
    found: list[AttentionLayer] = []
    for name, m in model.named_modules():
        if isinstance(m, nn.MultiheadAttention):
            found.append(AttentionLayer(name, m, "mha"))
        elif isinstance(getattr(m, "fused_attn", None), bool) and isinstance(
            getattr(m, "attn_drop", None), nn.Module
        ):
            found.append(AttentionLayer(name, m, "timm"))
        elif specs:
            for target, index, layer_name in specs:
                if _hf_match(name, m, target, layer_name):
                    found.append(AttentionLayer(name, m, "hf", index))
                    break
        elif hf and type(m).__name__.endswith("SelfAttention"):  # transformers 4.x models
            found.append(AttentionLayer(name, m, "hf", 1))
    return found


# -- switching implementations (reversible) ------------------------------------------------------


def mha_fastpath_off(hooks: Hooks) -> None:
    """Turn off PyTorch's fused encoder fast path (it skips nn.MultiheadAttention.forward)."""
    fastpath = getattr(torch.backends, "mha", None)
    if fastpath is None or not hasattr(fastpath, "set_fastpath_enabled"):
        return
    before = fastpath.get_fastpath_enabled()
    fastpath.set_fastpath_enabled(False)
    hooks.on_exit(lambda: fastpath.set_fastpath_enabled(before))


def _eager_hf(model: nn.Module, hooks: Hooks, legacy: bool) -> None:
    """Every Hugging Face config of the model on the eager (weight-producing) implementation."""
    configs = {id(c): c for c in (_hf_config(m) for m in model.modules()) if c is not None}
    for config in configs.values():
        before = config._attn_implementation_internal
        config._attn_implementation_internal = "eager"
        hooks.on_exit(lambda c=config, v=before: setattr(c, "_attn_implementation_internal", v))
        if legacy and hasattr(config, "output_attentions"):
            flag = config.output_attentions
            config.output_attentions = True
            hooks.on_exit(lambda c=config, v=flag: setattr(c, "output_attentions", v))


def _unfused_timm(module: nn.Module, hooks: Hooks) -> None:
    before = module.fused_attn
    module.fused_attn = False
    hooks.on_exit(lambda: setattr(module, "fused_attn", before))


# -- recording ----------------------------------------------------------------------------------


class AttentionRecorder:
    """Records the attention weights (and with `gradients=True` their gradients) of each pass.

    A backward rule: `install(model, hooks)` switches the model's attention layers to weight-
    producing implementations and hooks them; everything is undone when `hooks` are removed.
    After each forward (and backward) :meth:`take` returns the weights A_l (n, heads, T, T) in
    call order, and their gradients ∂S/∂A_l (zeros where S does not depend on a layer).
    """

    def __init__(self, gradients: bool = False, method: str = "attention rollout") -> None:
        self.gradients = gradients
        self.method = method
        self.layers: list[AttentionLayer] = []
        self._weights: list[torch.Tensor] = []
        self._grads: dict[int, torch.Tensor] = {}
        self._mha_calls: dict[int, list[tuple[bool, bool]]] = {}

    def install(self, model: nn.Module, hooks: Hooks) -> None:
        if any(getattr(_hf_config(m), "is_encoder_decoder", False) for m in model.modules()):
            raise SaliencelabError(
                f"{self.method} chains the self-attention of one stack of layers, and this "
                "model is an encoder-decoder (its encoder's and decoder's attentions are over "
                "different tokens); use a gradient method such as integrated_gradients."
            )
        self.layers = attention_layers(model)
        if not self.layers:
            raise SaliencelabError(NO_ATTENTION.format(method=self.method))
        kinds = {layer.kind for layer in self.layers}
        if "mha" in kinds:
            mha_fastpath_off(hooks)
        if "hf" in kinds:
            legacy = not _hf_attention_specs(model)
            _eager_hf(model, hooks, legacy)
        for layer in self.layers:
            if layer.kind == "mha":
                self._hook_mha(layer, hooks)
            elif layer.kind == "timm":
                _unfused_timm(layer.module, hooks)
                hooks.add(layer.module.attn_drop.register_forward_hook(self._timm_hook(layer)))
            else:
                hooks.add(layer.module.register_forward_hook(self._hf_hook(layer)))

    # Each hook hands the tensor actually used to weight the values to `_record`.

    def _timm_hook(self, layer: AttentionLayer):
        def hook(module, inputs, out):
            self._record(layer, out, out)

        return hook

    def _hf_hook(self, layer: AttentionLayer):
        def hook(module, inputs, out):
            weights = out[layer.index] if isinstance(out, (tuple, list)) else None
            if not isinstance(weights, torch.Tensor):
                raise SaliencelabError(
                    f"The attention layer {layer.name} returned no attention weights even with "
                    "attn_implementation='eager', so its attention cannot be read; update "
                    "transformers or use a gradient or CAM method."
                )
            self._record(layer, weights, weights)

        return hook

    def _hook_mha(self, layer: AttentionLayer, hooks: Hooks) -> None:
        calls = self._mha_calls.setdefault(id(layer.module), [])

        def pre(module, args, kwargs):
            kwargs = {**dict(zip(_MHA_ARGS[3:], args[3:], strict=False)), **kwargs}
            calls.append(
                (kwargs.get("need_weights", True), kwargs.get("average_attn_weights", True))
            )
            kwargs["need_weights"], kwargs["average_attn_weights"] = True, False
            return args[:3], kwargs

        def post(module, args, kwargs, out):
            wanted, average = calls.pop()
            weights = out[1]
            # The returned weights are a view of the softmax output used in the product with V.
            used = weights._base if weights._base is not None else weights
            self._record(layer, weights, used)
            shown = (weights.mean(dim=-3) if average else weights) if wanted else None
            return out[0], shown

        hooks.add(layer.module.register_forward_pre_hook(pre, with_kwargs=True))
        hooks.add(layer.module.register_forward_hook(post, with_kwargs=True))

    def _record(self, layer: AttentionLayer, weights: torch.Tensor, used: torch.Tensor) -> None:
        if weights.dim() == 3:  # an unbatched call
            weights = weights[None]
        if weights.dim() != 4 or weights.shape[-1] != weights.shape[-2]:
            return  # cross-attention (e.g. an attention-pooling head): not part of the chain
        slot = len(self._weights)
        self._weights.append(weights.detach())
        if self.gradients and used.requires_grad:
            shape = weights.shape

            def keep(grad: torch.Tensor) -> None:
                self._grads[slot] = grad.detach().reshape(shape)

            used.register_hook(keep)

    def take(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The weights recorded since the last call, and their gradients (gradient passes)."""
        weights, grads = self._weights, self._grads
        self._weights, self._grads = [], {}
        if not weights:
            raise SaliencelabError(
                f"No attention layer ran in the forward pass, so {self.method} has nothing to "
                "roll out; check that the model's attention layers are used in its forward."
            )
        sizes = {w.shape[-1] for w in weights}
        if len(sizes) > 1:
            raise SaliencelabError(
                f"The attention layers attend over different token counts {sorted(sizes)} "
                f"(e.g. windows or pooling between stages), which {self.method} cannot chain; "
                "use a gradient or CAM method instead."
            )
        gradients = [grads.get(i, torch.zeros_like(w)) for i, w in enumerate(weights)]
        return weights, gradients


# -- passes -------------------------------------------------------------------------------------


def attention_forwards(
    engine: Engine, x: torch.Tensor, target: Target, method: str = "attention rollout"
) -> Iterator[tuple[PassChunk, list[torch.Tensor]]]:
    """Forward passes over the samples of `x` (chunked), yielding each chunk's weights A_l."""
    recorder = AttentionRecorder(gradients=False, method=method)
    with Hooks() as hooks:
        recorder.install(engine.module, hooks)
        passes = engine.forwards(x.shape[0], *batch_rows(x), target)
        with closing(passes):
            for chunk in passes:
                yield chunk, recorder.take()[0]


def attention_gradients(
    engine: Engine, x: torch.Tensor, target: Target, method: str = "gradient rollout"
) -> Iterator[tuple[PassChunk, list[torch.Tensor], list[torch.Tensor]]]:
    """Forward+backward passes over `x`, yielding each chunk's weights A_l and ∂S/∂A_l.

    The backward runs to the input (float inputs) or to the first embedding layer (token ids),
    so it reaches every attention layer.
    """
    recorder = AttentionRecorder(gradients=True, method=method)
    layers = None
    if not x.is_floating_point():
        layers = dict([_first_embedding(engine.module, method)])
    passes = engine.gradients(
        x.shape[0],
        *batch_rows(x),
        target,
        layers=layers,
        input_grad=layers is None,
        backward=recorder,
    )
    with closing(passes):  # the engine restores the model when its generator closes
        for chunk in passes:
            weights, grads = recorder.take()
            yield chunk, weights, grads


def _first_embedding(model: nn.Module, method: str) -> tuple[str, nn.Module]:
    get = getattr(model, "get_input_embeddings", None)
    emb = get() if callable(get) else None
    for name, m in model.named_modules():
        if (emb is not None and m is emb) or (emb is None and isinstance(m, nn.Embedding)):
            return name, m
    raise SaliencelabError(
        f"{method} on integer inputs needs an embedding layer (nn.Embedding) to differentiate "
        "from, and this model has none; pass float inputs (e.g. embeddings) instead."
    )
