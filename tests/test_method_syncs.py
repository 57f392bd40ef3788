"""No method's chunk waits for the device: what would make the host wait for a GPU (a device
value read on the host, a copy between host and device) happens a few times per `sl.explain`
call, not once per chunk of rows. Counted on the CPU by benchmarks/sync_count.py's counter,
which tags each tensor as the host or device tensor it would be with the model on CUDA and
takes the code paths CUDA takes: the same call at two chunk sizes must count the same."""

from __future__ import annotations

import pytest
import torch

import saliencelab as sl

# Options that give several chunks at 2 rows on 4 images of 12 × 12 (tiny_cnn): every method
# with passes of its own, and the one-pass methods as guards.
METHODS = {
    "saliency": ("saliency", {}),
    "gradcam": ("gradcam", {}),
    "lrp": ("lrp", {}),
    "integrated_gradients": ("integrated_gradients", {"n_steps": 3}),
    "smoothgrad": ("smoothgrad", {"n_samples": 3}),
    "vargrad_ig": (
        "vargrad", {"n_samples": 2, "base": "integrated_gradients", "base_options": {"n_steps": 2}}
    ),
    "expected_gradients": ("expected_gradients", {"n_samples": 3, "stdevs": 0.1}),
    "expected_gradients_batch": ("expected_gradients", {"n_samples": 3, "baselines": "batch"}),
    "deeplift": ("deeplift", {}),
    "deeplift_shap": ("deeplift_shap", {"n_baselines": 3}),
    "deeplift_shap_batch": ("deeplift_shap", {"baselines": "batch"}),
    "scorecam": ("scorecam", {"max_channels": 3}),
    "scorecam_probability": ("scorecam", {"max_channels": 3, "weighting": "probability"}),
    "ablationcam": ("ablationcam", {"max_channels": 3}),
    "occlusion": ("occlusion", {"window": 4, "stride": 4}),
    "occlusion_full": ("occlusion", {"window": 4, "stride": 4, "incremental": False}),
    "smoothgrad_occlusion": (
        "smoothgrad",
        {"n_samples": 2, "base": "occlusion", "base_options": {"window": 6, "stride": 3}},
    ),
    "feature_ablation": ("feature_ablation", {"n_segments": 9}),
    "feature_ablation_full": ("feature_ablation", {"n_segments": 9, "incremental": False}),
    "rise": ("rise", {"n_masks": 3, "cell": 3}),
    "lime": ("lime", {"n_segments": 9, "n_samples": 12}),
    "kernelshap": ("kernelshap", {"n_segments": 9, "n_samples": 20, "exact_up_to": 0}),
    "kernelshap_exact": ("kernelshap", {"n_segments": 4}),
}  # fmt: skip


@pytest.mark.parametrize("case", list(METHODS))
def test_syncs_do_not_grow_with_the_chunks(sync_count, tiny_cnn, images, case):
    method, options = METHODS[case]
    target = torch.tensor([0, 1, 2, 3])  # made outside the counter: a device tensor there

    def call_at(chunk: int):
        return lambda: sl.explain(
            tiny_cnn, images, {method: options}, target=target, chunk_size=chunk
        )  # fmt: skip

    assert not sync_count.syncs_per_chunk(call_at)


@pytest.mark.parametrize(
    "method, options",
    [("occlusion", {"window": 8, "stride": 8}), ("feature_ablation", {"n_segments": 16})],
)
def test_incremental_inference_does_not_wait_per_chunk(sync_count, tiny_cnn, method, options):
    """On 32 × 32 images the early layers run on crops around each window or feature
    (`incremental.py`): its rows, boxes and check rows are device tensors too."""
    torch.manual_seed(1)
    x = torch.randn(4, 3, 32, 32)
    results = []

    def call_at(chunk: int):
        return lambda: results.append(sl.explain(tiny_cnn, x, {method: options}, chunk_size=chunk))

    assert not sync_count.syncs_per_chunk(call_at, few=8)
    assert results[-1][method].extras["incremental"] is not None  # the crops ran


def test_tabular_perturbations_do_not_wait_per_chunk(sync_count):
    """Tabular rows (B, F): feature ablation's plain forwards and the surrogates' coalitions,
    with one baseline value read once per call, not once per chunk."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    x = torch.randn(4, 6)
    methods = {"feature_ablation": {}, "lime": {"n_samples": 12}, "kernelshap": {}}

    def call_at(chunk: int):
        return lambda: sl.explain(model.eval(), x, methods, target=0, chunk_size=chunk)

    assert not sync_count.syncs_per_chunk(call_at)


def test_queued_copy_gives_the_tensor_on_the_device():
    from saliencelab.methods.gradient.baselines import queued_copy

    t = torch.randn(3, 4)
    out = queued_copy(t, torch.device("cpu"))
    assert out.device.type == "cpu" and torch.equal(out, t)


@pytest.mark.parametrize("method", ["attention_rollout", "grad_rollout"])
def test_rollouts_do_not_wait_per_chunk(sync_count, method):
    """The attention passes (core/attention.py) slice their rows and samples on the device."""
    model = sl.load_model("shapes_vit")
    x = sl.data.shapes.make(4, seed=0).images

    def call_at(chunk: int):
        return lambda: sl.explain(model, x, method, target=0, chunk_size=chunk)

    assert not sync_count.syncs_per_chunk(call_at, few=4, many=1)


def test_layer_readings_do_not_wait_per_chunk(sync_count, tiny_cnn, images):
    """A layer's outputs over a batch (neurons/activations.py, the channel maps of
    `sl.neurons`) slice their rows on the device."""
    from saliencelab.core.engine import Engine
    from saliencelab.neurons.activations import layer_outputs

    layer = dict(tiny_cnn.named_modules())["features.0"]

    def call_at(chunk: int):
        return lambda: layer_outputs(Engine(sl.Model(tiny_cnn), chunk_size=chunk), images, layer)

    assert not sync_count.syncs_per_chunk(call_at, few=4, many=1)


def test_real_gpu_waits_are_counted_from_the_sync_debug_mode_warnings(sync_count, monkeypatch):
    """`sync_count.py --device cuda` counts PyTorch's sync debug warnings (no GPU here: the
    mode switch and the device wait are stubbed, the warnings raised by hand)."""
    import warnings

    modes = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: None)
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", modes.append)
    before = warnings.showwarning
    cuda = sync_count.CudaSyncs()
    with cuda.counting():
        for _ in range(3):
            warnings.warn("called a synchronizing CUDA operation", UserWarning, stacklevel=1)
    assert sum(cuda.sites.values()) == 3 and modes == ["warn", "default"]
    assert warnings.showwarning is before
