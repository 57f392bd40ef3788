"""Seeds per sample, from the sample itself: draws that do not depend on the batching.

A draw made for "row i of this batch" changes when the same image sits at another position or
in a batch of another size, so a dataset scored in batches of 4 and in one call would give other
values. Seeding each sample's draw with (seed, a hash of the sample's values) instead gives every
image its own draw wherever it is: the same image, the same draw.

Used by SmoothGrad / SmoothGrad² / VarGrad (the noise), integrated gradients and DeepLIFT with
"uniform" baselines, expected gradients (α's, reference indices, uniform references and input
noise), DeepLIFT-SHAP's "uniform" references and the `random` reference map. The draws change
with any change of the sample's values: an input perturbed by less than its float rounding keeps
its draws, any larger change gets new ones (the robustness metrics' noisy copies included).

Floating values are hashed as float32, whatever their dtype: a float32 image cast to float64
for a model of that dtype gets the float32 model's seed, and so, with the draws made in float32
and then cast, its noise (a float32 sample hashes its own bytes, as it always has). A float16 or
bfloat16 model rounds the image first, so it gets other seeds (other values, other draws).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import torch

F = TypeVar("F", bound=Callable[..., Any])


def own_global_rng(fn: F) -> F:
    """`fn` run on a fork of torch's global CPU generator: what it seeds and draws there (a
    training run's `torch.manual_seed`, a module's default initialisation) leaves the caller's
    stream, and `torch.initial_seed()`, as they were."""

    @functools.wraps(fn)
    def forked(*args: Any, **kwargs: Any) -> Any:
        with torch.random.fork_rng(devices=[]):
            return fn(*args, **kwargs)

    return forked  # type: ignore[return-value]


def sample_seeds(x: torch.Tensor, seed: int) -> list[int]:
    """One 63-bit seed per row of `x`: SHA-1 of `seed` and the row's bytes (on the CPU; SHA-1
    runs on the CPU's hash instructions: ~40 µs for a 3 × 64² float32 row here, where BLAKE2b
    took ~95 µs; a seed needs no cryptographic strength). Floating rows are hashed as float32
    values, so a sample's seed does not depend on the model's dtype."""
    rows = x.detach().cpu()
    if rows.is_floating_point() and rows.dtype != torch.float32:
        rows = rows.float()  # float64: rounded as the float32 input was; halves: exact
    rows = rows.contiguous()
    flat = rows.reshape(rows.shape[0], -1).numpy()
    prefix = int(seed).to_bytes(8, "little", signed=True)
    seeds = []
    for row in flat:
        h = hashlib.sha1(prefix)
        h.update(memoryview(np.ascontiguousarray(row)))
        seeds.append(int.from_bytes(h.digest()[:8], "little") >> 1)
    return seeds


def sample_generators(x: torch.Tensor, seed: int) -> list[torch.Generator]:
    """A CPU generator per row of `x`, seeded by `sample_seeds` (torch's CPU generator keeps the
    seed's low 32 bits)."""
    return [torch.Generator().manual_seed(s) for s in sample_seeds(x, seed)]
