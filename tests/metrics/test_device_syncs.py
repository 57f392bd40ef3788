"""No metric chunk waits for the device: what would make the host wait for a GPU (a device
value read on the host, a copy between host and device) happens a few times per call, not once
per chunk of rows. Counted on the CPU by benchmarks/sync_count.py's counter, which tags each
tensor as the host or device tensor it would be with the model on CUDA: the same call at two
chunk sizes must count the same."""

from __future__ import annotations

import pytest
import torch

import saliencelab as sl
from saliencelab.metrics.base import Explainer, make_batch

# Options that give several chunks at 2 rows, and rows of shared images (deletion's all-baseline
# image, completeness' shared baseline) next to the samples' own rows.
METRICS = {
    "deletion": {"steps": 6},
    "insertion": {"steps": 6},
    "aopc_morf": {"patch_size": 4, "regions": 5},
    "monotonicity": {"steps": 6},
    "monotonicity_correlation": {"steps": 3, "n_samples": 2},
    "faithfulness_correlation": {"n_samples": 6, "subset_size": 20},
    "infidelity": {"n_perturbations": 6},
    "sensitivity_n": {"fractions": (0.1, 0.5), "n_samples": 3},
    "non_sensitivity": {"features_in_step": 24},
    "completeness": {},
}


@pytest.mark.parametrize("name", list(METRICS))
def test_syncs_do_not_grow_with_the_chunks(sync_count, tiny_cnn, images, name):
    model, x = tiny_cnn, images
    maps = torch.rand(4, 12, 12, generator=torch.Generator().manual_seed(2))
    target = torch.tensor([0, 1, 2, 3])  # made outside the counter: a device tensor there
    metric = sl.metrics.get(name)(**METRICS[name])

    def call_at(chunk: int):
        return lambda: metric(maps, x=x, model=model, target=target)

    assert not sync_count.syncs_per_chunk(call_at)


def test_input_scores_wait_once_per_pass(sync_count, tiny_cnn, images):
    model, x = tiny_cnn, images
    target = torch.tensor([0, 1, 2, 3])
    seen = []

    def call():
        batch = make_batch(torch.rand(4, 12, 12), x=x, model=model, target=target)
        seen.append(batch.input_scores("logit"))

    few, few_chunks = sync_count.count_syncs(call, chunk=4, warmup=1)
    many, many_chunks = sync_count.count_syncs(call, chunk=1, warmup=1)
    assert many_chunks > few_chunks
    assert sum(many.sites.values()) == sum(few.sites.values()), many.sites - few.sites
    with torch.no_grad():
        expected = model(x)[torch.arange(4), target]
    torch.testing.assert_close(seen[-1], expected)


def test_a_chunk_is_read_as_a_range():
    from saliencelab.core.batching import row_range, row_slice

    table = torch.arange(10) * 3
    assert row_range(torch.arange(4, 7)) == (4, 7)
    assert torch.equal(row_slice(table, torch.arange(4, 7)), table[4:7])


@pytest.mark.parametrize(
    "name, options",
    [("max_sensitivity", {"n_samples": 6}), ("input_invariance", {}), ("random_logit", {})],
)
def test_recomputed_explanations_do_not_wait_per_chunk(sync_count, tiny_cnn, images, name, options):
    """The explanation passes (gradients of `sl.explain`) slice their rows and samples on the
    device: no wait per chunk (the samples were host rows, copied for the target's scores)."""
    maps = torch.rand(4, 12, 12, generator=torch.Generator().manual_seed(2))
    target = torch.tensor([0, 1, 2, 3])
    metric = sl.metrics.get(name)(**options)

    def call_at(chunk: int):
        explainer = Explainer("saliency", chunk_size=chunk)  # its passes at `chunk` rows too
        return lambda: metric(maps, x=images, model=tiny_cnn, target=target, explainer=explainer)

    assert not sync_count.syncs_per_chunk(call_at, few=4, many=1)
