"""Model-parameter randomisation test (MPRT): Adebayo et al. 2018, Sanity Checks for Saliency Maps.

An explanation that depends on what the model learned must change when the learned weights are
destroyed. The test re-initialises the model's parameterised layers step by step — cascading
from the output layer down to the input, or each layer on its own (independent) — recomputes the
explanation after every step and measures its similarity to the original explanation. A method
passes when the similarity falls (direction "lower"); a method whose maps stay the same (an edge
detector, guided backprop) fails.

Layers and stages. A *layer* is a module that owns parameters (or has `reset_parameters` and owns
buffers, e.g. BatchNorm's running statistics). `granularity="layer"` randomises one layer per
step, in `named_modules` order reversed (Quantus' MPRT does the same): the order in which the
model registers its modules stands for their depth, which holds for models that define their
layers in the order they run (torchvision's, timm's, EfficientNet's, `nn.Sequential`). A model
that registers its head before its body is cascaded in that registration order, and `layers=k`
then picks its last-registered stages (a list of names chooses stages, not their order).
Parameters of the root module itself (a ViT's class token and position embeddings) are one
stage, `<root>`, on the input side. `granularity="block"`
(default) groups layers into *stages*: each top-level child of the model is a stage, a container
(`nn.Sequential`, `nn.ModuleList`, `nn.ModuleDict`, and a `DataParallel` wrapper) is split
into its children, and a normalisation layer that is a stage of its own joins the stage before
it. EfficientNet-Lite0 so has 19 stages: `_conv_stem` (+ `_bn0`), `_blocks.0` … `_blocks.15`,
`_conv_head` (+ `_bn1`), `_fc`. `layers` restricts the stages: an int k keeps the k stages
nearest the output, a list of names picks stages or modules (a module = all layers inside it).
A layer parametrized with `torch.nn.utils.parametrize` (`weight_norm`, `spectral_norm`) is one
step at either granularity, together with the module that holds its originals
(`conv.parametrizations.weight`).

Randomisation. `init="reset"` (default) calls each layer's own `reset_parameters()` (PyTorch's
default initialisation of that layer type; BatchNorm gets weight 1, bias 0 and fresh running
statistics). `init="normal"` draws every parameter of a layer from N(mean, std) of that
parameter's original values (a scale-preserving alternative to the layer's default init;
buffers are kept; a parameter of equal values, such as a single scale, draws from
N(mean, mean²), and an all-zero one stays 0). A layer with parameters but no
`reset_parameters`, or with parameterised children, always gets the normal draw of its own
parameters. Every draw comes from the CPU's
global RNG inside `torch.random.fork_rng` (the caller's RNG state is untouched; the same weights
on every device), seeded as `seeding` says:

- `seeding="per_layer"` (default): before each layer, with `layer_seed(seed, name)` = the first
  63 bits of SHA-1 of the text f"{seed}:{name}" (`name` the layer's module name, "" for the
  root), so every layer gets its own independent draw, as Adebayo et al. 2018 re-initialise
  each layer. A layer's weights depend only on `seed` and its name: the same in cascading and
  independent order, at either granularity, whichever other layers are chosen.
- `seeding="same"`: `seed` itself before each stage (then the stage's layers draw in turn), as
  Quantus' MPRT does (it seeds `s + 1` before each layer): with `granularity="layer"`,
  `seed=s + 1, seeding="same"` reproduces `quantus.MPRT(seed=s)`'s randomisation exactly, which
  is what it is for (comparisons with Quantus). Stages whose layers have the same shapes then get
  identical "random" weights (on EfficientNet-Lite0 `_blocks.6`/`7`, `9`/`10`, `12`/`13`/`14`),
  which are not independent re-initialisations.

Batched steps (below) leave the model's tensors alone: each layer draws into copies of its own
parameters and buffers (swapped in for the draw, swapped back in `finally`). One call per step
randomises the model in place and restores it in `finally` (parameters and buffers copied back
into the same tensor objects); training flags and `requires_grad` are reset either way, also
when the explainer raises; so do not use the model from another thread meanwhile.

Value per sample: `value="last"` is the similarity after the last step (fully randomised, for
cascading; Quantus' `return_last_correlation=True`), `value="mean"` the mean over steps (Quantus'
`return_average_correlation=True` averages the steps *and* its "original" entry, the similarity
of the given maps to the recomputed unrandomised ones; ours averages the randomised steps only).
With `order="independent"`, "last" is the step that randomised only the lowest stage chosen;
"mean" is usually the value wanted there.
`curves` (B, steps) hold the per-step similarities, the stage names are in
`result.params["randomised"]`.

Cost: one explanation of the batch per step, and by default (`batched=True`) several steps share
one explanation call: the batch is repeated once per step and every randomised layer computes
each row with its step's weights (`core/row_versions.py`), so the K randomised models run as one
model on K·B rows, in chunks as large as memory allows, instead of K calls of B rows. This needs
a method that explains each sample from its own rows through the engine's passes
(`MethodSpec.is_rowwise`: the gradient, CAM and forward-only perturbation methods without
position-dependent draws) and randomised layers whose rows are independent (convolutions, linear
layers, embeddings, normalisation layers); otherwise, or with `batched=False`, the steps run one
call each. Both give the same values up to float rounding. `result.params["calls"]` says how many
explanation calls ran.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn
from torch.nn.utils.parametrize import is_parametrized

from ...core.errors import SaliencelabError, closest
from ...core.registry import get_method
from ...core.row_versions import NotRowwise, is_rowwise, weight_versions
from ...core.state import submodules
from ...models.blackbox import is_blackbox
from ...models.model import Model
from ..base import EvalBatch, Metric, Scores, register_metric
from ..checks import check_choice, refuse_compiled_model
from .similarity import check_image_maps, check_similarity, check_similarity_fits, similarity_to

_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)  # split into their children
# Hold the model as `module`: its stages are the model's.
_WRAPPERS = (nn.DataParallel, nn.parallel.DistributedDataParallel)

# Steps share an explanation call while the repeated inputs take at most this many bytes.
BATCHED_INPUT_BYTES = 64 * 2**20
_NORMS: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())


@dataclass
class Stage:
    """One randomisation step: a name and the layers (module names) it re-initialises."""

    name: str
    layers: list[str] = field(default_factory=list)


def _owns_state(m: nn.Module) -> bool:
    # the module's own dicts (m.parameters(recurse=False) is a generator chain: ~5 µs a module)
    if any(p is not None for p in m._parameters.values()):
        return True
    return callable(getattr(m, "reset_parameters", None)) and any(
        b is not None for b in m._buffers.values()
    )


def parameterised_layers(module: nn.Module) -> list[str]:
    """Names of the modules that own parameters (or resettable buffers), in module order."""
    return [name for name, m in module.named_modules() if _owns_state(m)]


def _parametrized_owner(root: nn.Module, name: str) -> str:
    """The layer whose parametrization the module `name` holds (`torch.nn.utils.parametrize`:
    the originals of `conv.weight` live in `conv.parametrizations.weight`), else `name`."""
    parts = name.split(".")
    if "parametrizations" not in parts:
        return name
    owner = ".".join(parts[: parts.index("parametrizations")])
    return owner if is_parametrized(root.get_submodule(owner)) else name


def _stage_key(root: nn.Module, name: str) -> str:
    if not name:
        return ""
    key: list[str] = []
    mod = root
    for part in name.split("."):
        key.append(part)
        wrapped = isinstance(mod, _WRAPPERS)
        mod = mod._modules[part]
        if not (wrapped or isinstance(mod, _CONTAINERS)):
            break
    return ".".join(key)


def stages(module: nn.Module, granularity: Literal["block", "layer"] = "block") -> list[Stage]:
    """The model's randomisation stages, input side first (see the module docstring)."""
    layers = parameterised_layers(module)
    if granularity == "layer":
        out_layers: list[Stage] = []
        for name in layers:
            owner = _parametrized_owner(module, name)
            if out_layers and out_layers[-1].name == (owner or "<root>"):
                out_layers[-1].layers.append(name)  # a parametrization joins its layer
            else:
                out_layers.append(Stage(owner or "<root>", [name]))
        return out_layers
    if granularity != "block":
        raise SaliencelabError(
            f"Unknown granularity {granularity!r}; use 'block' (top-level blocks) or 'layer'."
        )
    out: list[Stage] = []
    for name in layers:
        key = _stage_key(module, name)
        if out and out[-1].name == (key or "<root>"):
            out[-1].layers.append(name)
            continue
        top = module.get_submodule(key) if key else module
        if out and isinstance(top, _NORMS) and key:
            out[-1].layers.append(name)  # a norm layer joins the stage before it
            continue
        out.append(Stage(key or "<root>", [name]))
    return out


def _ties(module: nn.Module, layers: list[nn.Module]) -> bool:
    """Whether a parameter or buffer of `layers` is also held elsewhere in `module` (tied
    weights, e.g. an embedding shared with the output layer). Batched steps give each module
    its own draws, which would untie them: then the steps run one call each, on the model
    randomised in place, where a tied tensor changes for every module that uses it."""
    held: dict[int, int] = {}
    for m in submodules(module):
        for t in (*m._parameters.values(), *m._buffers.values()):
            if t is not None:
                held[id(t)] = held.get(id(t), 0) + 1
    return any(
        held[id(t)] > 1
        for m in layers
        for t in (*m._parameters.values(), *m._buffers.values())
        if t is not None
    )


def check_layers(layers: object) -> None:
    """One sentence unless `layers` is None, a positive int, a name or a list of names (what
    can be checked without the model; `select_stages` checks the names against it)."""
    if layers is None or isinstance(layers, str):
        return
    if isinstance(layers, int) and not isinstance(layers, bool):
        if layers < 1:
            raise SaliencelabError(f"layers must be a positive number of stages, got {layers!r}.")
        return
    if not isinstance(layers, Sequence) or not all(isinstance(n, str) for n in layers):
        raise SaliencelabError(
            f"layers must be None, a number of stages or layer / block names, got {layers!r}."
        )
    if not layers:
        raise SaliencelabError("layers is an empty list; name at least one layer or block.")


def select_stages(
    module: nn.Module,
    layers: int | str | Sequence[str] | None,
    granularity: Literal["block", "layer"] = "block",
) -> list[Stage]:
    """The stages to randomise, output side first (the cascading order)."""
    if is_blackbox(module):
        raise SaliencelabError(
            "model_randomisation re-initialises the model's layers, which a black-box function "
            "does not expose; it needs the model itself (an nn.Module with parameters)."
        )
    refuse_compiled_model(
        "model_randomisation", module, "re-initialises the model's layers", ("TorchScript",)
    )
    all_stages = stages(module, granularity)
    if not all_stages:
        raise SaliencelabError("The model has no parameterised layers to randomise.")
    check_layers(layers)
    if layers is None:
        chosen = all_stages
    elif isinstance(layers, int):
        if layers > len(all_stages):
            raise SaliencelabError(
                f"layers={layers} asks for more stages than the model's {len(all_stages)} at "
                f"granularity {granularity!r}; pass at most {len(all_stages)} or None for all."
            )
        chosen = all_stages[-layers:]
    else:
        names = [layers] if isinstance(layers, str) else list(layers)
        by_name = {s.name: s for s in all_stages}
        modules = dict(module.named_modules())
        every = parameterised_layers(module)
        position = {n: i for i, n in enumerate(every)}
        chosen = []
        for n in names:
            if n in by_name:
                chosen.append(by_name[n])
            elif n in modules and n:
                inside = [m for m in every if m == n or m.startswith(n + ".")]
                if not inside:
                    raise SaliencelabError(
                        f"The module {n!r} has no parameters to randomise; name a layer or block "
                        "that has weights."
                    )
                chosen.append(Stage(n, inside))
            else:
                raise SaliencelabError(
                    f"The model has no layer or block named {n!r}.{closest(n, list(by_name))} "
                    f"Its blocks: {', '.join(by_name)}."
                )
        chosen.sort(key=lambda s: position[s.layers[0]])
        seen: set[str] = set()
        for s in chosen:
            if seen & set(s.layers):
                raise SaliencelabError(
                    f"The layers asked for overlap at {s.name!r}; name each layer or block once."
                )
            seen.update(s.layers)
    return list(reversed(chosen))


# -- randomise and restore ---------------------------------------------------------------------


class _Snapshot:
    """Saved parameters and buffers of some layers; `restore` puts them back in place."""

    def __init__(self, module: nn.Module, layer_names: Sequence[str]) -> None:
        self.items: list[tuple[dict, str, torch.Tensor, torch.Tensor]] = []
        for name in layer_names:
            m = module.get_submodule(name) if name else module
            for store in (m._parameters, m._buffers):
                for key, t in store.items():
                    if t is not None:
                        self.items.append((store, key, t, t.detach().clone()))

    def restore(self) -> None:
        with torch.no_grad():
            for store, key, original, saved in self.items:
                if store.get(key) is not original:
                    store[key] = original
                original.copy_(saved)


@contextmanager
def _flags_kept(module: nn.Module) -> Iterator[None]:
    training, grads = [], []
    for m in module.modules():  # one walk (modules() and parameters() walk twice)
        training.append((m, m.training))
        grads.extend((p, p.requires_grad) for p in m._parameters.values() if p is not None)
    try:
        yield
    finally:
        for m, t in training:
            m.training = t
        for p, g in grads:
            p.requires_grad_(g)


def _normal_(m: nn.Module) -> None:
    """Each parameter of `m` drawn from N(mean, std²) of its values; a parameter of equal
    values (one value, or a constant) has no spread and draws from N(mean, mean²) instead (an
    all-zero one stays 0), so that it changes, as the step says it does."""
    with torch.no_grad():
        for p in m.parameters(recurse=False):
            values = p.float()
            mean = values.mean()
            std = values.std() if p.numel() > 1 else torch.zeros((), device=p.device)
            scale = torch.where(std > 0, std, mean.abs())  # (NaN std: NaN values, kept NaN)
            p.copy_(torch.randn_like(p, dtype=torch.float) * scale + mean)


SEEDINGS = ("per_layer", "same")


def layer_seed(seed: int, name: str) -> int:
    """The seed of the layer `name` (its module name, "" for the root) under
    `seeding="per_layer"`: the first 63 bits of SHA-1 of the text f"{seed}:{name}" (stable
    across runs and platforms, unlike Python's `hash`)."""
    digest = hashlib.sha1(f"{int(seed)}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def randomise_stage(
    module: nn.Module,
    stage: Stage,
    seed: int,
    init: Literal["reset", "normal"] = "reset",
    in_place: bool = True,
    seeding: Literal["per_layer", "same"] = "per_layer",
) -> dict[str, dict[str, torch.Tensor]]:
    """Re-initialise the stage's layers from the CPU's global RNG (forked, so the caller's RNG
    state is untouched), seeded to `layer_seed(seed, name)` before each layer (`seeding=
    "per_layer"`) or to `seed` once before the stage (`"same"`, Quantus' scheme; module
    docstring); the new parameters and buffers of each layer by name.

    Each layer draws into CPU float32 copies of its own parameters and buffers, swapped into the
    layer for the draw (so the same seed gives the same weights on every device and in every
    floating dtype, and `init="normal"` sees the current values); `in_place` then copies them
    into the layer's tensors, otherwise the layer is left as it was.
    """
    if seeding not in SEEDINGS:
        raise SaliencelabError(f"Unknown seeding {seeding!r}; use 'per_layer' or 'same'.")
    draws: dict[str, dict[str, torch.Tensor]] = {}
    with torch.random.fork_rng(devices=[]):
        if seeding == "same":
            torch.default_generator.manual_seed(seed)
        for name in stage.layers:
            if seeding != "same":
                torch.default_generator.manual_seed(layer_seed(seed, name))
            m = module.get_submodule(name) if name else module
            own = [
                (store, key, t)
                for store in (m._parameters, m._buffers)
                for key, t in store.items()
                if t is not None
            ]
            for store, key, t in own:
                # float32 copies for every floating dtype: a float64 or float16 model gets the
                # float32 model's weights (rounded to its dtype), not other draws
                dtype = torch.float32 if t.is_floating_point() else t.dtype
                own_copy = t.detach().to("cpu", dtype, copy=True)
                is_param = store is m._parameters
                store[key] = nn.Parameter(own_copy, t.requires_grad) if is_param else own_copy
            try:
                reset = getattr(m, "reset_parameters", None) or getattr(
                    m, "_reset_parameters", None
                )
                leaf = not any(_owns_state(c) for c in m.modules() if c is not m)
                if init == "reset" and callable(reset) and leaf:
                    reset()
                else:
                    _normal_(m)
                drawn = {key: store[key].detach().to(t.device, t.dtype) for store, key, t in own}
            finally:
                for store, key, t in own:
                    store[key] = t
            if in_place:
                with torch.no_grad():
                    for _store, key, t in own:
                        t.copy_(drawn[key])
            draws[name] = drawn
    return draws


@register_metric
class ModelRandomisation(Metric):
    """Model-parameter randomisation test (Adebayo et al. 2018); similarity after randomising.

    value = sim(E(f, x), E(f̃_k, x)) for the model f̃_k with stages 1..k re-initialised
    (cascading, top down) or stage k alone (independent), at the last step or averaged over the
    steps; each re-initialised layer ℓ gets init(ℓ) drawn from the CPU RNG seeded to
    layer_seed(seed, ℓ) (its own independent draw, the same at every step; `seeding`). sim is
    "spearman", "spearman_abs", "ssim" or "hog" (see `similarity`). Lower = the
    explanation depends on the learned weights (the method passes the sanity check). A map that
    is constant on one side only (e.g. Grad-CAM gone flat once the top blocks are random) has
    similarity 0, on both sides 1 (`similarity`'s convention), so every sample counts.

    Args:
        order: "cascading" (top layer first, randomisations accumulate) or "independent".
        similarity: "spearman", "spearman_abs" (Quantus' default, abs=True), "ssim", "hog".
        layers: None (all stages), k (the k stages nearest the output) or names of blocks /
            modules.
        granularity: "block" (top-level blocks, default) or "layer" (every parameterised layer).
        value: "last" (the fully randomised step) or "mean" (mean over steps).
        init: "reset" (each layer's `reset_parameters()`) or "normal" (N(mean, std) per tensor).
        seed: the RNG seed from which every layer's re-initialisation is drawn.
        seeding: "per_layer" (default): each layer draws from its own seed, `layer_seed(seed,
            name)` (SHA-1 of f"{seed}:{name}"), so every layer gets an independent draw (as in
            Adebayo et al.) and the same weights in either order. "same": the RNG is seeded to
            `seed` before every stage, Quantus' MPRT scheme, kept only to reproduce Quantus
            (`granularity="layer", seed=s + 1, seeding="same"` = `quantus.MPRT(seed=s)`): stages
            with same-shaped layers then get identical weights (see the module docstring).
        similarity_options: keyword options of the similarity function (e.g. SSIM `window`).
        batched: several steps in one explanation call where the method and layers allow it
            (the same values up to float rounding; see the module docstring).
    """

    name = "model_randomisation"
    direction = "lower"
    value_range = (-1.0, 1.0)
    needs = ("model", "explainer")
    family = "randomisation"
    reference = "Adebayo et al. 2018, Sanity Checks for Saliency Maps"

    def __init__(
        self,
        order: Literal["cascading", "independent"] = "cascading",
        similarity: str = "spearman",
        layers: int | str | Sequence[str] | None = None,
        granularity: Literal["block", "layer"] = "block",
        value: Literal["last", "mean"] = "last",
        init: Literal["reset", "normal"] = "reset",
        seed: int = 42,
        similarity_options: dict[str, Any] | None = None,
        batched: bool = True,
        seeding: Literal["per_layer", "same"] = "per_layer",
    ) -> None:
        check_choice(self.name, "order", order, ("cascading", "independent"))
        check_similarity(similarity, similarity_options)
        check_layers(layers)
        check_choice(self.name, "granularity", granularity, ("block", "layer"))
        check_choice(self.name, "value", value, ("last", "mean"))
        check_choice(self.name, "init", init, ("reset", "normal"))
        check_choice(self.name, "seeding", seeding, SEEDINGS)
        super().__init__(
            order=order,
            similarity=similarity,
            layers=layers,
            granularity=granularity,
            value=value,
            init=init,
            seed=seed,
            similarity_options=similarity_options,
            batched=batched,
            seeding=seeding,
        )

    def check_inputs(
        self, x: torch.Tensor, maps: torch.Tensor, masks: torch.Tensor | None = None
    ) -> None:
        check_similarity_fits(self.name, self.similarity, self.similarity_options, maps)

    def check_model(self, model: Model) -> None:
        select_stages(model.module, self.layers, self.granularity)  # the layers asked for exist

    def score(self, batch: EvalBatch) -> Scores:
        assert batch.model is not None and batch.explainer is not None
        module = batch.model.module
        check_image_maps(self.name, batch.maps)
        plan = select_stages(module, self.layers, self.granularity)
        compare = similarity_to(self.similarity, batch.maps, self.similarity_options)
        self.params["randomised"] = [s.name for s in plan]
        with _flags_kept(module):
            maps = None
            if self._can_batch(batch, plan):
                maps = self._batched(batch, plan)
            if maps is None:
                maps = self._one_call_per_step(batch, plan)
        # one comparison per block of steps (an explanation call's output, whose size the
        # batching bounds): (steps·B,) → (B, steps)
        curve = torch.cat([compare(m) for m in maps]).view(len(plan), -1).T.contiguous()
        values = curve[:, -1] if self.value == "last" else curve.nanmean(dim=1)
        steps = torch.arange(1, len(plan) + 1, dtype=torch.float)
        return Scores(values=values, curves=curve, curve_x=steps)

    def _randomised(self, step: int, stage_index: int) -> bool:
        """Whether step `step` runs stage `stage_index` randomised (both counted from the top)."""
        if self.order == "cascading":
            return stage_index <= step
        return stage_index == step

    def _one_call_per_step(self, batch: EvalBatch, plan: list[Stage]) -> list[torch.Tensor]:
        """The maps of every step, one explanation call per step on the model randomised in
        place (restored after): a list of (B, H, W) batches in step order."""
        assert batch.model is not None and batch.explainer is not None
        module = batch.model.module
        snapshot = _Snapshot(module, [n for s in plan for n in s.layers])
        maps = []
        try:
            for stage in plan:
                if self.order == "independent":
                    snapshot.restore()
                randomise_stage(module, stage, self.seed, self.init, seeding=self.seeding)
                maps.append(batch.explainer.maps(batch.model, batch.x, batch.target))
        finally:
            snapshot.restore()
        self.params["calls"] = len(plan)
        return maps

    def _can_batch(self, batch: EvalBatch, plan: list[Stage]) -> bool:
        assert batch.model is not None and batch.explainer is not None
        if not self.batched or len(plan) < 2:
            return False
        spec = get_method(batch.explainer.method)
        if not spec.is_rowwise(batch.explainer.options):
            return False
        module = batch.model.module
        layers = [module.get_submodule(n) if n else module for s in plan for n in s.layers]
        distinct = len({id(m) for m in layers}) == len(layers)
        return distinct and all(map(is_rowwise, layers)) and not _ties(module, layers)

    def _batched(self, batch: EvalBatch, plan: list[Stage]) -> list[torch.Tensor] | None:
        """The maps of every step from explanation calls of several steps each: a list of
        (k·B, H, W) blocks in step order (None when a layer turns out not to see the chunk's
        rows: then the caller runs one call per step)."""
        assert batch.model is not None and batch.explainer is not None
        module, n = batch.model.module, batch.batch
        others: dict[str, dict[str, torch.Tensor]] = {}
        stage_of: dict[str, int] = {}
        for j, stage in enumerate(plan):  # the same draws as one call per step makes
            draws = randomise_stage(
                module, stage, self.seed, self.init, in_place=False, seeding=self.seeding
            )
            others.update(draws)
            stage_of.update((name, j) for name in stage.layers)
        steps = len(plan)
        uses_other = {
            name: [self._randomised(k, j) for k in range(steps)] for name, j in stage_of.items()
        }
        per_call = max(1, min(steps, BATCHED_INPUT_BYTES // max(1, batch.x.nbytes)))
        maps: list[torch.Tensor] = []
        calls = 0
        for first in range(0, steps, per_call):
            k = min(per_call, steps - first)

            def step_of(samples: torch.Tensor, first: int = first) -> list[int]:
                return [first + s // n for s in samples.tolist()]

            x = batch.x.repeat(k, *([1] * (batch.x.dim() - 1)))
            try:
                with weight_versions(module, others, step_of, uses_other):
                    out = batch.explainer.maps(batch.model, x, batch.target.repeat(k))
            except NotRowwise:
                if maps:
                    raise
                return None
            calls += 1
            maps.append(out)
        self.params["calls"] = calls
        return maps
