"""The engine: targets, layers, hooks and state restored, chunking, shared passes."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import saliencelab as sl
from saliencelab.core import batching
from saliencelab.core.batching import ChunkPlan
from saliencelab.core.engine import Engine
from saliencelab.core.errors import SaliencelabError
from saliencelab.core.targets import Target
from saliencelab.models.model import as_model


def _grad(model, x, target):
    x = x.clone().requires_grad_(True)
    out = model(x)
    out.gather(1, target[:, None]).sum().backward()
    return x.grad


def test_saliency_is_the_gradient_of_the_predicted_class(tiny_cnn, images):
    ex = sl.explain(tiny_cnn, images, methods="saliency", absolute=False)
    pred = tiny_cnn(images).argmax(1)
    torch.testing.assert_close(ex["saliency"].attributions, _grad(tiny_cnn, images, pred))
    assert torch.equal(ex["saliency"].target, pred)


@pytest.mark.parametrize(
    "target",
    [3, [0, 1, 2, 3], torch.tensor([4, 3, 2, 1]), "c2", lambda out: out[:, 1] - out[:, 0]],
)
def test_every_target_form(tiny_cnn, images, target):
    model = sl.Model(tiny_cnn, labels=["c0", "c1", "c2", "c3", "c4"])
    ex = sl.explain(model, images, methods="saliency", target=target, absolute=False)
    x = images.clone().requires_grad_(True)
    out = tiny_cnn(x)
    if callable(target) and not isinstance(target, torch.Tensor):
        target(out).sum().backward()
        assert (ex["saliency"].target == -1).all()
    else:
        idx = {"c2": 2}.get(target, target) if isinstance(target, (str, int)) else target
        idx = torch.as_tensor(idx).expand(4)
        out.gather(1, idx[:, None]).sum().backward()
        assert torch.equal(ex["saliency"].target, idx)
    torch.testing.assert_close(ex["saliency"].attributions, x.grad)


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ([0, 1], "2 targets for a batch of 4"),
        (7, "out of range"),
        (torch.tensor([0, 9, 1, -2]), "target class 9 is out of range"),  # the first bad one
        (torch.tensor([0, 1, -2, 9]), "target class -2 is out of range"),
        (torch.tensor([0, 1, 2]), "3 targets for a batch of 4"),
        ("dog", "no class named 'dog'"),
        (2.5, "must be None"),
    ],
)
def test_bad_targets_are_one_clear_sentence(tiny_cnn, images, target, message):
    model = sl.Model(tiny_cnn, labels=["c0", "c1", "c2", "c3", "c4"])
    with pytest.raises(SaliencelabError, match=message):
        sl.explain(model, images, methods="saliency", target=target)


def test_unknown_method_layer_and_option_suggest_names(tiny_cnn, images):
    with pytest.raises(SaliencelabError, match="Did you mean: saliency"):
        sl.explain(tiny_cnn, images, methods="salency")
    with pytest.raises(SaliencelabError, match="Did you mean: .*features.1"):
        sl.explain(tiny_cnn, images, methods="gradcam", layer="features.l")
    with pytest.raises(SaliencelabError, match="option 'n_step'"):
        sl.explain(tiny_cnn, images, methods="saliency", n_step=3)
    # nothing close: a small model's layers are all listed
    names = ", ".join(n for n, _ in tiny_cnn.named_modules() if n)
    with pytest.raises(SaliencelabError, match=f"Its layers: {names}\\. Run") as err:
        sl.explain(tiny_cnn, images, methods="gradcam", layer="backbone")
    assert "Did you mean" not in str(err.value)


def test_layer_found_automatically_is_the_last_spatial_one(tiny_cnn, images):
    ex = sl.explain(tiny_cnn, images, methods="gradcam")
    assert ex["gradcam"].layer == "features"
    assert ex["gradcam"].maps.shape == (4, 12, 12)


def test_model_without_spatial_layer_fails_clearly():
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    with pytest.raises(SaliencelabError, match="no layer with a spatial"):
        sl.explain(mlp, torch.randn(2, 3, 2, 2), methods="gradcam")


def test_state_and_hooks_restored_also_when_a_method_raises(tiny_cnn, images):
    tiny_cnn.train()
    tiny_cnn.fc.weight.requires_grad_(False)

    def bad_target(out):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        sl.explain(tiny_cnn, images, methods=["saliency", "gradcam"], target=bad_target)
    assert tiny_cnn.training and all(m.training for m in tiny_cnn.modules())
    assert not tiny_cnn.fc.weight.requires_grad
    assert tiny_cnn.features[0].weight.requires_grad
    for m in tiny_cnn.modules():
        assert not m._forward_hooks and not m._backward_hooks and not m._forward_pre_hooks


def test_nested_sessions_restore_when_the_last_ends_in_any_order(tiny_cnn):
    """Passes are generators: an outer session may end before an inner one. The state stays
    eval/frozen until the last session of the module ends, then comes back exactly."""
    from saliencelab.core.state import attribution_mode

    tiny_cnn.train()
    tiny_cnn.fc.weight.requires_grad_(False)

    def state():
        return (
            [m.training for m in tiny_cnn.modules()],
            [p.requires_grad for p in tiny_cnn.parameters()],
        )

    before = state()
    outer, inner = attribution_mode(tiny_cnn), attribution_mode(tiny_cnn)
    outer.__enter__()
    inner.__enter__()
    outer.__exit__(None, None, None)  # the outer one ends first
    modes, grads = state()
    assert not any(modes) and not any(grads)
    inner.__exit__(None, None, None)
    assert state() == before
    with attribution_mode(tiny_cnn):  # a fresh session after all ended sets the state again
        assert not any(state()[1])
    assert state() == before


def test_the_session_walk_is_torchs_modules_and_parameters():
    """`submodules` / `_parameters` (the session's one walk) give exactly `module.modules()` and
    `module.parameters()`, in order: a module and a parameter shared by two branches counted
    once, a `None` child skipped, a shared module met first deep in an earlier branch."""
    from saliencelab.core.state import _parameters, attribution_mode, submodules

    shared = nn.Linear(2, 2)
    net = nn.Sequential(
        nn.Sequential(nn.ReLU(), nn.Sequential(shared)), shared, nn.Sequential(nn.Tanh(), shared)
    )
    net.add_module("absent", None)
    tied = nn.Linear(2, 2)
    tied.weight = shared.weight  # one parameter in two modules
    net.add_module("tied", tied)
    for model in (net, sl.load_model("shapes_cnn").module):
        assert [id(m) for m in submodules(model)] == [id(m) for m in model.modules()]
        params = _parameters(submodules(model))
        assert [id(p) for p in params] == [id(p) for p in model.parameters()]
    net.train()
    with attribution_mode(net):
        assert not any(m.training for m in net.modules())
        assert not any(p.requires_grad for p in net.parameters())
    assert all(m.training for m in net.modules())
    assert all(p.requires_grad for p in net.parameters())


def test_mixed_training_flags_come_back_exactly(tiny_cnn, images):
    """Some submodules training, some not (e.g. a frozen backbone): each flag is restored."""
    tiny_cnn.train()
    tiny_cnn.features[0].eval()
    before = {name: m.training for name, m in tiny_cnn.named_modules()}
    seen = []
    tiny_cnn.features[0].register_forward_pre_hook(lambda m, a: seen.append(m.training))
    sl.explain(tiny_cnn, images, methods="saliency")
    assert seen and not any(seen)  # eval mode inside the call
    assert {name: m.training for name, m in tiny_cnn.named_modules()} == before


def test_works_inside_no_grad_and_inference_mode(tiny_cnn, images):
    ref = sl.explain(tiny_cnn, images, methods="saliency")["saliency"].maps
    with torch.no_grad():
        a = sl.explain(tiny_cnn, images, methods="saliency")["saliency"].maps
    with torch.inference_mode():
        x = images.clone()
    b = sl.explain(tiny_cnn, x, methods="saliency")["saliency"].maps
    torch.testing.assert_close(a, ref)
    torch.testing.assert_close(b, ref)


def test_shared_pass_runs_once_and_is_counted_once(tiny_cnn, images):
    sl.explain(tiny_cnn, images, methods="gradcam")  # finds (and remembers) the layer
    calls = []
    tiny_cnn.register_forward_hook(lambda *a: calls.append(1))
    ex = sl.explain(tiny_cnn, images, methods=["saliency", "input_x_gradient", "gradcam"])
    assert len(calls) == 1  # one forward (one chunk): the shared pass also found the prediction
    assert ex.total_passes == 1
    assert ex["gradcam"].passes == 1
    assert set(ex["saliency"].shared_with) == {"input_x_gradient", "gradcam"}


def test_chunked_pass_equals_one_chunk(tiny_cnn, images):
    one = sl.explain(tiny_cnn, images, methods="saliency", chunk_size=64)["saliency"].maps
    small = sl.explain(tiny_cnn, images, methods="saliency", chunk_size=3)["saliency"].maps
    torch.testing.assert_close(one, small)


def test_a_given_example_saves_building_a_row_and_must_match_the_rows(tiny_cnn, images):
    """`example=` replaces the one-row probe built by `make_inputs` (called only for the
    chunks), and rows unlike it are refused (the plan and layout were chosen for it)."""
    engine = Engine(as_model(tiny_cnn), chunk_size=2)
    asked: list[int] = []

    def make(rows: torch.Tensor) -> torch.Tensor:
        asked.append(len(rows))
        return images[rows]

    n = images.shape[0]
    target = Target(torch.zeros(n, dtype=torch.long))
    with_example = engine.forwards(n, make, lambda r: r, target, example=images[:1])
    got = torch.cat([c.logits for c in with_example])
    assert asked == [2] * (n // 2) + [1] * (n % 2)  # no extra one-row call for the example
    torch.testing.assert_close(got, tiny_cnn.eval()(images), rtol=1e-5, atol=1e-5)
    grads = engine.gradients(n, make, lambda r: r, target, example=images[:1])
    assert sum(len(c.rows) for c in grads) == n
    unlike = images[:1, :, :4]  # rows of another shape
    with pytest.raises(RuntimeError, match="example"):
        list(engine.forwards(n, make, lambda r: r, target, example=unlike))
    with pytest.raises(RuntimeError, match="example"):
        list(engine.gradients(n, make, lambda r: r, target, example=images[:1].double()))


def test_chunk_plan_tries_the_ladder_and_settles_on_the_fastest():
    plan = ChunkPlan(key=("test", object()), n_rows=1000, max_rows=64, start=8)
    sizes = []
    per_row = {8: 1.0, 16: 0.8, 32: 0.9, 64: 0.5}  # not monotonic: 32 is slower than 16
    for rows in plan.chunks():
        sizes.append(len(rows))
        plan.record(len(rows), per_row.get(len(rows), 1.0) * len(rows))
    # warm-up chunk, then up the ladder to the cap, then down from the start to one row
    assert sizes[:8] == [8, 8, 16, 32, 64, 4, 2, 1]
    assert plan.size == 64
    _assert_balanced(sizes[8:], 64, cap=64)
    assert sum(sizes) == 1000


def _assert_balanced(sizes: list[int], size: int, cap: int) -> None:
    """The rows after the search settled: near-equal chunks (at most one row apart), about as
    many as `size` gives (k = round(rows / size), more only where the cap needs them)."""
    rows = sum(sizes)
    k = max(-(-rows // cap), math.floor(rows / size + 0.5), 1)
    assert len(sizes) == k and max(sizes) - min(sizes) <= 1 and max(sizes) <= cap


@pytest.mark.parametrize(
    ("rows", "size", "cap", "fixed", "expected"),
    [
        (9, 8, 32, None, [9]),  # not 8 and a lone row
        (12, 8, 32, None, [6, 6]),
        (20, 8, 32, None, [7, 7, 6]),
        (9, 8, 8, None, [5, 4]),  # never above the cap
        (7, 8, 32, None, [7]),
        (9, 8, 32, 8, [8, 1]),  # the user's chunk size is kept exactly
    ],
)
def test_a_settled_plan_cuts_its_rows_into_near_equal_chunks(rows, size, cap, fixed, expected):
    key = ("balanced", object())
    if fixed is None:
        batching._BEST[(*key, min(cap, 1 << (rows.bit_length() - 1)))] = size
    plan = ChunkPlan(key=key, n_rows=rows, fixed=fixed, max_rows=cap, start=8)
    assert plan.settled
    assert [len(r) for r in plan.chunks()] == expected


def test_chunk_plan_ignores_the_warm_up_chunk():
    plan = ChunkPlan(key=("warm", object()), n_rows=200, max_rows=64, start=8)
    calls = []
    per_row = {8: 1.0, 16: 1.5, 4: 1.2}
    for rows in plan.chunks():
        n = len(rows)
        calls.append(n)
        slow = 20.0 if len(calls) == 1 else 1.0  # the first chunk pays warm-up
        plan.record(n, slow * per_row.get(n, 2.0) * n)
    # Had the warm-up chunk counted, 16 rows would have looked faster and been kept.
    # 16 looks slower: it gets a second chunk before the search turns down.
    # Then 4 (within 1.5× of the best, run once) gets a second chunk before settling on 8.
    assert calls[:8] == [8, 8, 16, 16, 4, 2, 1, 4] and plan.size == 8
    _assert_balanced(calls[8:], 8, cap=64)


def test_chunk_plan_retries_a_new_size_that_paid_one_off_costs():
    """On a GPU the first chunk of each new size loads its kernels: that must not end the climb."""
    plan = ChunkPlan(key=("one-off", object()), n_rows=2000, max_rows=256, start=8)
    seen: set[int] = set()
    sizes = []
    for rows in plan.chunks():
        n = len(rows)
        sizes.append(n)
        one_off = 0.05 if n not in seen else 0.0
        seen.add(n)
        plan.record(n, 0.008 + 0.0003 * n + one_off)  # launch-bound: bigger is faster per row
    assert sizes[:12] == [8, 8, 16, 16, 32, 32, 64, 64, 128, 128, 256, 256]
    # down to 1 row, then the rivals within 1.5× of 256 that ran as often meet it once more
    assert sizes[12:17] == [4, 2, 1, 64, 128] and plan.size == 256
    _assert_balanced(sizes[17:], 256, cap=256)


def test_chunk_plan_is_not_misled_by_one_slow_chunk():
    """Other work on the machine slows one chunk of the best size: it gets another chance."""
    plan = ChunkPlan(key=("noisy", object()), n_rows=400, max_rows=32, start=8)
    per_row = {8: 1.0, 16: 1.1, 32: 1.3, 4: 1.2, 2: 1.4, 1: 2.0}
    eights = 0
    for rows in plan.chunks():
        n = len(rows)
        eights += n == 8
        slow = 1.4 if n == 8 and eights == 2 else 1.0  # the first timed chunk (after warm-up)
        plan.record(n, slow * per_row.get(n, 2.0) * n)
    assert plan.size == 8  # one chunk alone would have made 16 look best


def test_a_best_that_won_by_one_lucky_chunk_meets_its_rivals_again():
    """8-row passes (one chunk each at 8): the machine slows down while 8 is measured and
    speeds up again for 4's second chunk. Settling on that sample kept chunks of 4, whose true
    cost per row is 1.2× that of 8 (the shapes CNN's gradient passes: 2.07 against 1.76 ms):
    8 runs again in the present state first, and wins."""
    key = ("lucky", object())
    per_row = {8: 1.0, 4: 1.2, 2: 1.6, 1: 2.2}
    state = iter([1.0, 1.3, 1.3, 1.3, 1.3, 1.3, 1.3, 0.85])  # the machine's slowdown per chunk
    sizes = []
    for _ in range(12):
        plan = ChunkPlan(key=key, n_rows=8, max_rows=32, start=8)
        for rows in plan.chunks():
            n = len(rows)
            sizes.append(n)
            plan.record(n, next(state, 0.85) * per_row[n] * n)
    assert sizes[:10] == [8, 8, 8, 4, 2, 1, 1, 4, 4, 8]  # 4's lucky chunk, then 8 again
    assert ChunkPlan(key=key, n_rows=8, max_rows=32, start=8).size == 8


@pytest.mark.parametrize("best", [2, 8])
def test_chunk_search_learns_from_passes_of_one_chunk(best):
    """Calls of 8 rows (one chunk each; the first only warms up) still find the fastest size
    up to the pass length: per-row cost on a CPU can fall with smaller chunks."""
    key = ("one-chunk passes", object())
    per_row = {8: 1.0 if best == 2 else 0.5, 4: 0.9, 2: 0.8, 1: 1.2}
    sizes = []
    for _ in range(10):
        plan = ChunkPlan(key=key, n_rows=8, max_rows=32, start=8)
        for rows in plan.chunks():
            sizes.append(len(rows))
            plan.record(len(rows), per_row[len(rows)] * len(rows))
    assert ChunkPlan(key=key, n_rows=8, max_rows=32, start=8).size == best
    assert sizes.count(8) >= 2  # the warm-up pass, then a measured one


def test_a_pass_shorter_than_the_start_size_teaches_nothing():
    """An 8-row pass (warm-up), then 1-row passes (e.g. `Engine.logits` of one image): the
    search must not settle on 1 row, which would cut later long passes into 1-row chunks."""
    key = ("tiny passes", object())
    for n in (8, 1, 1, 1):
        plan = ChunkPlan(key=key, n_rows=n, max_rows=32, start=8)
        for rows in plan.chunks():
            plan.record(len(rows), 0.001 * len(rows))
    long_pass = ChunkPlan(key=key, n_rows=100, max_rows=32, start=8)
    assert long_pass.size >= 8


def test_short_passes_do_not_end_the_climb_of_long_ones():
    """8-row passes of a model (its clean scores, say) end their own climb at 8; a pass of 2000
    rows of the same model and shape must still climb to the ceiling where larger chunks are
    cheaper per row (a GPU, launch-bound: the time of a chunk barely grows with its rows). It
    settled on 8-row chunks and ran LIME on Lite0 at a quarter of the speed."""
    key = ("lengths", object())
    for _ in range(6):
        plan = ChunkPlan(key=key, n_rows=8, max_rows=256, start=8)
        for rows in plan.chunks():
            plan.record(len(rows), 0.003)
    assert ChunkPlan(key=key, n_rows=8, max_rows=256, start=8).settled
    sizes = []
    plan = ChunkPlan(key=key, n_rows=2000, max_rows=256, start=8)
    for rows in plan.chunks():
        sizes.append(len(rows))
        plan.record(len(rows), 0.003 + 1e-5 * len(rows))
    assert max(sizes) == 256 and ChunkPlan(key=key, n_rows=2000, max_rows=256).size == 256


def test_chunk_plan_respects_the_memory_budget():
    plan = ChunkPlan(key=("t2", object()), n_rows=100, max_rows=64, bytes_per_row=10, budget=35)
    assert max(len(r) for r in plan.chunks()) == 3


def test_chunk_sizes_are_chosen_by_cpu_time_on_one_cpu_thread():
    """Time spent waiting for the core (other jobs, here a sleep inside the model) does not
    count on one CPU thread, so it cannot steer the search; with several threads wall time
    does (it is what they save)."""
    import time

    from saliencelab.core import batching
    from saliencelab.core.engine import Engine, chunk_clock

    class Sleepy(nn.Module):
        """Each call burns 3 ms of CPU (so on CPU time larger chunks are clearly cheaper per
        row, whatever the noise of a shared machine), and chunks of 8+ rows also wait 2 ms a
        row (so on a wall clock they are clearly slower per row)."""

        def forward(self, x):
            start = time.process_time()
            while time.process_time() - start < 0.003:
                pass
            if x.shape[0] >= 8:
                time.sleep(0.002 * x.shape[0])
            return x.flatten(1)[:, :3]

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert chunk_clock(torch.device("cpu")) is time.perf_counter
        torch.set_num_threads(1)
        assert chunk_clock(torch.device("cpu")) is time.process_time
        engine, x = Engine(sl.Model(Sleepy())), torch.randn(4, 3, 2, 2)
        for _ in range(3):
            for _ in engine.forwards(64, lambda r: x[r % 4], lambda r: r % 4):
                pass
        plan = engine._plan("forward", 64, x[:1], torch.device("cpu"))
        assert plan.settled and plan.size >= 8  # a wall clock would settle below 8 rows
    finally:
        torch.set_num_threads(threads)
        batching.forget_chunk_sizes()


def test_settled_plans_do_not_read_the_chunk_clock(monkeypatch, tiny_cnn, images):
    """The chunk clock (CPU time: a system call, 0.5-0.8 ms a read right after a convolution on a
    loaded VM) is read only while the search learns: a settled plan, the user's chunk size or a
    size found earlier, runs its chunks without reading it, in both kinds of pass."""
    import itertools

    from saliencelab.core import batching, engine
    from saliencelab.core.targets import Target

    reads = []
    ticks = itertools.count()

    def clock(device):
        def read():
            reads.append(1)
            return 0.001 * next(ticks)

        return read

    monkeypatch.setattr(engine, "chunk_clock", clock)
    x, t = images[:4], Target(torch.zeros(4, dtype=torch.long))
    fixed = engine.Engine(sl.Model(tiny_cnn), chunk_size=2)
    assert len(list(fixed.forwards(12, lambda r: x[r % 4], lambda r: r % 4, t))) == 6
    assert len(list(fixed.gradients(12, lambda r: x[r % 4], lambda r: r % 4, t))) == 6
    assert reads == []
    searching = engine.Engine(sl.Model(tiny_cnn))
    try:
        for _ in range(20):  # until the search settles
            list(searching.forwards(64, lambda r: x[r % 4], lambda r: r % 4, t))
        assert reads
        assert searching._plan("forward", 64, x[:1], torch.device("cpu")).settled
        reads.clear()
        list(searching.forwards(64, lambda r: x[r % 4], lambda r: r % 4, t))
        assert reads == []
    finally:
        batching.forget_chunk_sizes()


class _SmallMemory(nn.Module):
    """Raises the out-of-memory error a GPU would for batches above `limit` rows."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit, self.batches = limit, []
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 5)

    def forward(self, x):
        if x.shape[0] > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        self.batches.append(x.shape[0])
        return self.fc(self.conv(x).relu().mean(dim=(2, 3)))


@pytest.mark.parametrize("method", ["integrated_gradients", "occlusion"])
def test_a_chunk_out_of_device_memory_is_run_again_in_halves(method):
    """A chunk that runs out of device memory comes again at half the size (gradient and
    forward passes), later passes stay below it, and the result is the same."""
    from saliencelab.core import batching

    torch.manual_seed(0)
    small, roomy = _SmallMemory(limit=5), _SmallMemory(limit=10**6)
    roomy.load_state_dict(small.state_dict())
    x = torch.randn(3, 3, 8, 8)
    opts = {"n_steps": 16} if method == "integrated_gradients" else {"window": 4, "stride": 2}
    try:
        ours = sl.explain(small, x, method, target=1, **opts)[method].attributions
        assert max(small.batches) <= 5
        again = len(small.batches)
        sl.explain(small, x, method, target=1, **opts)  # no chunk above the halved size
        assert max(small.batches[again:]) <= 5
        ref = sl.explain(roomy, x, method, target=1, chunk_size=2, **opts)[method].attributions
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    finally:
        batching.forget_chunk_sizes()
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in small.modules())


def test_chunk_search_ceilings_per_device_and_pass_kind():
    """GPU forward-only passes may climb to 1024-row chunks (no activations kept for backward;
    out-of-memory chunks are halved), gradient passes to 256, a CPU's to 32."""
    from saliencelab.core.engine import Engine

    engine, x = Engine(sl.Model(_SmallMemory(limit=10))), torch.randn(1, 3, 8, 8)
    assert engine._plan("forward", 5000, x, torch.device("cuda")).cap == 1024
    assert engine._plan("forward", 5000, x, torch.device("cpu")).cap == 32
    engine.memory_budget = 10**12  # (the default budget would ask the GPU for its free memory)
    assert engine._plan("grad", 5000, x, torch.device("cuda")).cap == 256
    assert engine._plan("grad", 5000, x, torch.device("cpu")).cap == 32


def test_a_single_row_out_of_device_memory_is_a_clear_error():
    model = _SmallMemory(limit=0)
    with pytest.raises(SaliencelabError, match="ran out of memory for a single row"):
        sl.explain(model, torch.randn(2, 3, 8, 8), "saliency", target=0)
    assert all(p.requires_grad for p in model.parameters())  # the state came back


def test_nan_model_is_a_clear_error():
    class NaNNet(nn.Module):
        def forward(self, x):
            return x.flatten(1)[:, :3] * float("nan")

    with pytest.raises(SaliencelabError, match="NaN"):
        sl.explain(NaNNet(), torch.randn(2, 3, 4, 4), methods="saliency")


@pytest.mark.parametrize("deferred", [False, True])
@pytest.mark.parametrize("method", ["integrated_gradients", "occlusion"])
def test_a_nan_in_any_chunk_is_found_also_with_deferred_checks(monkeypatch, deferred, method):
    """Once the chunk size is settled, GPU passes gather the chunks' finiteness checks on the
    device and read them once after the last chunk (`engine.DEFERRED_CHECK_DEVICES`); here the
    CPU stands in. A NaN in the last chunk only is still a clear error, and finite passes give
    the same maps."""
    from saliencelab.core import engine

    if deferred:
        monkeypatch.setattr(engine, "DEFERRED_CHECK_DEVICES", ("cpu", "cuda"))

    class NaNForLargeRows(nn.Module):  # NaN for the IG rows nearest the input only
        def forward(self, x):
            s = x.flatten(1)[:, :3]
            return torch.where(s.abs().sum(1, keepdim=True) > 2.9, s * float("nan"), s)

    x = torch.ones(2, 3, 8, 8)
    opts = {"integrated_gradients": {"n_steps": 16}, "occlusion": {"window": 2, "stride": 2}}
    with pytest.raises(SaliencelabError, match="NaN"):
        sl.explain(NaNForLargeRows(), x, {method: opts[method]}, target=0, chunk_size=4)
    net = nn.Sequential(nn.Flatten(), nn.Linear(192, 3))
    maps = sl.explain(net, x, {method: opts[method]}, target=0, chunk_size=4)[method].maps
    monkeypatch.setattr(engine, "DEFERRED_CHECK_DEVICES", ())
    ref = sl.explain(net, x, {method: opts[method]}, target=0, chunk_size=4)[method].maps
    torch.testing.assert_close(maps, ref, atol=0, rtol=0)


def test_methods_lists_family_and_cost():
    specs = {m.name: m for m in sl.methods()}
    assert specs["saliency"].family == "gradient" and specs["saliency"].cost == "1"
    assert specs["gradcam"].family == "cam"


def test_total_forwards_counts_the_forward_that_found_the_prediction(tiny_cnn, images):
    # integrated_gradients shares no pass: one forward finds the predicted class first.
    ex = sl.explain(tiny_cnn, images, methods="integrated_gradients", n_steps=4)
    assert ex.total_passes == 4
    assert ex.total_forwards >= 1  # the prediction forward (+ IG's baseline forward)
    assert ex["integrated_gradients"].passes == 4


@pytest.mark.parametrize("method", ["guided_backprop", "deconvnet"])
def test_guided_passes_find_the_prediction_without_a_forward(tiny_cnn, images, method):
    """Guided backprop and deconvnet change only the backward: their pass's logits are the
    model's, so no separate forward runs to find the predicted class."""
    ex = sl.explain(tiny_cnn, images, methods=method)
    assert ex.total_passes == 1 and ex.total_forwards == 0
    with torch.no_grad():
        logits = tiny_cnn(images)
    torch.testing.assert_close(ex.logits, logits, atol=1e-5, rtol=1e-5)
    assert torch.equal(ex[method].target, logits.argmax(1))


def test_chunk_plan_shrinks_when_smaller_chunks_are_faster_per_row():
    plan = ChunkPlan(key=("shrink", object()), n_rows=200, max_rows=64, start=8)
    per_row = {8: 1.0, 16: 1.2, 32: 2.0, 4: 0.8, 2: 0.7, 1: 0.9}
    sizes = []
    for rows in plan.chunks():
        sizes.append(len(rows))
        plan.record(len(rows), per_row[len(rows)] * len(rows))
    assert sizes[:8] == [8, 8, 16, 32, 32, 4, 2, 1]  # 32 is 2x the best, twice: stop growing
    assert sizes[8:11] == [8, 4, 1]  # within 1.5× of the best and run once: a second chunk each
    assert set(sizes[11:-1]) == {2}  # 1 was slower per row than 2: settle on 2 (tail aside)
    assert sum(sizes) == 200


def test_chunk_search_goes_on_across_short_passes():
    key = ("resume", object())
    per_row = {8: 1.0, 16: 1.5, 4: 0.8, 2: 0.6, 1: 0.9}
    sizes = []
    for _ in range(6):  # passes of 20 rows each: too short to finish the search alone
        plan = ChunkPlan(key=key, n_rows=20, max_rows=64, start=8)
        for rows in plan.chunks():
            sizes.append(len(rows))
            plan.record(len(rows), per_row[len(rows)] * len(rows))
    settled = ChunkPlan(key=key, n_rows=20, max_rows=64, start=8)
    assert settled.size == 2  # found over several passes
    assert 16 in sizes and 1 in sizes


def test_chunk_search_learns_from_passes_shorter_than_the_next_size():
    """Passes of 30 rows: once the ladder reaches 32, each pass is one chunk of 30. That chunk
    counts as a size of its own; the search goes on down and settles (it used to stay at one
    30-row chunk forever)."""
    key = ("short passes", object())
    per_row = {8: 0.5, 16: 0.6, 30: 2.0, 4: 0.45, 2: 0.4, 1: 0.9}
    for _ in range(12):
        plan = ChunkPlan(key=key, n_rows=30, max_rows=32, start=8)
        for rows in plan.chunks():
            plan.record(len(rows), per_row.get(len(rows), 1.0) * len(rows))
    settled = ChunkPlan(key=key, n_rows=30, max_rows=32, start=8)
    assert settled.size == 2


def test_attributions_of_channels_last_rows_come_back_contiguous():
    """The engine runs image rows channels-last on the CPU; the attributions it hands back are
    plain contiguous tensors (a user's `.view` works), their maps the channel sums."""
    model = sl.load_model("shapes_cnn")  # runs channels-last on the CPU (core/layout.py)
    x = model.preprocess(sl.data.shapes.make(8, seed=0)).contiguous()
    a = sl.explain(model, x, ["saliency", "deeplift", "input_x_gradient"], target=0)
    attr = a["saliency"].attributions
    assert attr.is_contiguous() and attr.view(8, -1).shape == (8, 3 * 64 * 64)
    torch.testing.assert_close(a["saliency"].maps, attr.sum(dim=1), rtol=0, atol=0)
    # also where a method computes with the rows as fed (channels-last `PassChunk.inputs`)
    assert a["deeplift"].attributions.is_contiguous()
    assert a["input_x_gradient"].attributions.is_contiguous()


def test_lime_climbs_to_large_chunks_where_a_chunk_costs_the_same_whatever_its_rows(monkeypatch):
    """A GPU at small batches is launch-bound: a chunk of 256 rows takes as long as one of 8.
    After a short call (one image, 16 samples: the search left open at 16), LIME's 8-row pass
    of clean scores ended the climb at 8 for every pass of the model, and its coalitions ran in
    8-row chunks from then on (1.3x Captum on an H100 instead of 5x)."""
    import itertools

    from saliencelab.core import batching, engine

    ticks = itertools.count()
    monkeypatch.setattr(engine, "chunk_clock", lambda device: lambda: 0.003 * next(ticks))
    monkeypatch.setitem(engine.MAX_CHUNK_ROWS, ("cpu", "forward"), 256)
    batches = []
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(3))
    model(torch.zeros(1, 3, 8, 8))
    model.register_forward_pre_hook(lambda m, args: batches.append(args[0].shape[0]))
    x = torch.randn(8, 3, 8, 8)  # 8 images: the clean-score pass is one 8-row chunk
    try:
        sl.explain(model, x[:1], "lime", target=0, n_samples=16)
        for _ in range(3):
            sl.explain(model, x, "lime", target=0, n_samples=300)
    finally:
        batching.forget_chunk_sizes()
    assert max(batches) == 256


def test_a_failed_probe_forward_is_not_remembered_as_no_channels_last():
    """The layout probe's plain forward failing (bad rows, a transient error) teaches nothing
    about the layout: the next probe runs again and finds channels-last safe."""
    from saliencelab.core.layout import channels_last_known, probe_channels_last

    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten()).eval()
    calls = []

    def flaky(module, args):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("transient")

    handle = net[0].register_forward_pre_hook(flaky)
    x = torch.randn(2, 3, 8, 8)
    try:
        assert not probe_channels_last(net, x) and not channels_last_known(net, x)
        assert probe_channels_last(net, x) and channels_last_known(net, x)
    finally:
        handle.remove()


def test_engine_counts_each_row_once_and_maps_rows_to_their_samples(tiny_cnn, images):
    """Chunks cover the rows 0..n-1 once, in order; each row's score is its own sample's target
    logit (reference: the model on that sample); rows are counted once per pass kind."""
    import time

    from saliencelab.core.engine import Engine
    from saliencelab.core.targets import Target

    engine = Engine(sl.Model(tiny_cnn), chunk_size=3)
    t = Target(torch.tensor([4, 0, 2, 1]))
    with torch.no_grad():
        ref = tiny_cnn(images)
    start = time.perf_counter()
    chunks = list(engine.forwards(7, lambda r: images[r % 4], lambda r: r % 4, t))
    assert [c.rows.tolist() for c in chunks] == [[0, 1, 2], [3, 4, 5], [6]]
    for c in chunks:
        assert torch.equal(c.samples, c.rows % 4)
        torch.testing.assert_close(c.scores, ref[c.rows % 4, t.indices[c.rows % 4]])
    assert (engine.cost.forward_rows, engine.cost.grad_rows) == (7, 0)
    grads = list(engine.gradients(5, lambda r: images[r % 4], lambda r: r % 4, t))
    wall = time.perf_counter() - start
    assert torch.equal(torch.cat([c.rows for c in grads]), torch.arange(5))
    assert (engine.cost.forward_rows, engine.cost.grad_rows) == (7, 5)
    assert 0 < engine.cost.seconds <= wall
    before = engine.cost.copy()
    list(engine.gradients(2, lambda r: images[r], lambda r: r, t))
    spent = engine.cost.since(before)
    assert (spent.forward_rows, spent.grad_rows) == (0, 2) and spent.seconds > 0


def test_a_layer_target_stops_the_forward_after_its_layer(tiny_cnn, images):
    """The readings are the layer's channel means (reference: the layer run by hand) and no
    layer after it runs, in forward and in gradient passes."""
    from saliencelab.core.engine import Engine

    later = []
    for m in (tiny_cnn.features[2], tiny_cnn.fc):
        m.register_forward_hook(lambda m, i, o: later.append(m))
    target = sl.channel("features.0", 2)
    engine = Engine(sl.Model(tiny_cnn))
    readings = engine.logits(images, target)
    with torch.no_grad():
        expected = tiny_cnn.features[0](images).mean(dim=(2, 3))
    torch.testing.assert_close(readings, expected)
    chunks = list(engine.gradients(4, lambda r: images[r], lambda r: r, target))
    torch.testing.assert_close(torch.cat([c.scores for c in chunks]), expected[:, 2])
    assert later == []


class _Branchy(nn.Module):
    """Runs `extra` only for batches whose first value is positive."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.extra = nn.Conv2d(4, 4, 1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        y = self.conv(x)
        if x[0, 0, 0, 0] > 0:
            y = self.extra(y)
        return self.fc(y.mean(dim=(2, 3)))


def test_a_layer_skipped_by_a_later_chunk_is_a_clear_error():
    """The activations captured by one chunk never stand in for a later chunk's."""
    from saliencelab.core.engine import Engine
    from saliencelab.core.targets import Target

    torch.manual_seed(0)
    model = _Branchy().eval()
    x = torch.randn(2, 3, 6, 6)
    x[0, 0, 0, 0], x[1, 0, 0, 0] = 1.0, -1.0  # row 0 runs `extra`, row 1 does not
    engine = Engine(sl.Model(model), chunk_size=1)
    passes = engine.gradients(
        2, lambda r: x[r], lambda r: r, Target(torch.tensor([0, 1])), {"extra": model.extra}
    )
    first = next(passes)
    assert first.activations["extra"].shape == (1, 4, 6, 6)
    with pytest.raises(
        SaliencelabError, match="The layer extra was not run by the model.s forward"
    ):
        next(passes)


def test_an_out_of_memory_cap_holds_at_half_for_later_plans_of_any_length():
    from saliencelab.core import batching

    key = ("oom-cap-test",)
    try:
        plan = ChunkPlan(key=key, n_rows=100, max_rows=32)
        assert plan.out_of_memory(8)
        assert plan.size == 4
        for n_rows in (100, 5000):  # another length class: not the settled search
            assert ChunkPlan(key=key, n_rows=n_rows, max_rows=32).cap == 4
    finally:
        batching.forget_chunk_sizes()


def test_gradient_passes_feed_channels_last_rows_where_the_probe_allows():
    from saliencelab.core.engine import NHWC_MIN_ROWS, Engine
    from saliencelab.core.layout import channels_last_known
    from saliencelab.core.targets import Target

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 2)).eval()
    x = torch.randn(NHWC_MIN_ROWS, 3, 8, 8)
    engine = Engine(sl.Model(net), chunk_size=NHWC_MIN_ROWS)
    assert engine.probe_layout(x) and channels_last_known(net, x)
    t = Target(torch.zeros(len(x), dtype=torch.long))
    for n, nhwc in ((NHWC_MIN_ROWS, True), (NHWC_MIN_ROWS - 1, False)):
        (chunk,) = engine.gradients(n, lambda r: x[r], lambda r: r, t)
        assert chunk.inputs.is_contiguous(memory_format=torch.channels_last) == nhwc
        assert chunk.inputs.is_contiguous() != nhwc
        assert chunk.input_grad.is_contiguous()


@pytest.mark.parametrize(
    ("target", "index"), [(4, 4), ("c4", 4), ("C1", 1), (["c0", "C3"], [0, 3]), ([4, 0], [4, 0])]
)
def test_targets_resolve_to_class_indices_up_to_the_last_class(target, index):
    """Class names match exactly, else case-insensitively; the last class (n - 1) is valid."""
    from saliencelab.core.targets import resolve_target

    t = resolve_target(target, torch.zeros(2, 5), ["c0", "c1", "c2", "c3", "c4"])
    assert t.indices.tolist() == torch.as_tensor(index).expand(2).tolist()


@pytest.mark.parametrize("target", [5, [0, 5], torch.tensor([0, 5]), -1])
def test_a_class_index_equal_to_the_number_of_classes_is_refused_when_resolved(target):
    from saliencelab.core.targets import resolve_target

    with pytest.raises(SaliencelabError, match=r"target class (5|-1) is out of range"):
        resolve_target(target, torch.zeros(2, 5))


def test_a_tensor_target_one_past_the_last_class_is_one_sentence(tiny_cnn, images):
    with pytest.raises(SaliencelabError, match="target class 5 is out of range: the model has 5"):
        sl.explain(tiny_cnn, images, methods="saliency", target=torch.tensor([0, 1, 5, 2]))


def test_tensor_targets_are_checked_and_copied_when_resolved():
    from saliencelab.core.targets import resolve_target

    user = torch.tensor([1, 2])
    t = resolve_target(user, torch.zeros(2, 5))
    user[0] = 3  # the caller's tensor changed afterwards: the resolved target keeps its own
    assert t.indices.tolist() == [1, 2]
    for bad in (torch.tensor([True, False]), torch.tensor([0.0, 1.0]), torch.zeros(2, 1).long()):
        with pytest.raises(SaliencelabError, match="must hold integer class indices"):
            resolve_target(bad, torch.zeros(2, 5))


def test_maps_are_upsampled_bilinearly_with_half_pixel_centres():
    """2×2 → 4×4: output pixel centres (i + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25 (clamped),
    so each axis is interpolated with weights 0, 1/4, 3/4, 1 (hand-computed)."""
    from saliencelab.core.context import upsample

    maps = torch.tensor([[[0.0, 1.0], [2.0, 3.0]]])
    w = torch.tensor([0.0, 0.25, 0.75, 1.0])
    rows = maps[0, 0][None, :] * (1 - w)[:, None] + maps[0, 1][None, :] * w[:, None]  # (4, 2)
    expected = rows[:, :1] * (1 - w)[None, :] + rows[:, 1:] * w[None, :]
    torch.testing.assert_close(upsample(maps, (4, 4))[0], expected)
    assert upsample(maps, (2, 2)) is maps


def test_a_capture_without_the_input_gradient_is_not_reused_for_one_with_it(tiny_cnn, images):
    """A layer-only pass cannot stand in for one that needs the input gradient; each capture's
    cost is its own pass (reference: the rows of the batch, and autograd on the model)."""
    from saliencelab.core.context import Context
    from saliencelab.core.engine import Engine
    from saliencelab.core.targets import Target

    engine = Engine(sl.Model(tiny_cnn))
    target = Target(torch.tensor([0, 1, 2, 3]))
    list(engine.gradients(3, lambda r: images[r], lambda r: r, target))  # earlier work
    ctx = Context(sl.Model(tiny_cnn), engine, images, target)
    layer_only = ctx.capture({"features": tiny_cnn.features}, input_grad=False)
    assert layer_only.input_grad is None
    assert (layer_only.cost.grad_rows, layer_only.cost.forward_rows) == (4, 0)
    full = ctx.capture({}, input_grad=True)
    assert full is not layer_only and len(ctx.captures) == 2
    assert (full.cost.grad_rows, full.cost.forward_rows) == (4, 0)
    torch.testing.assert_close(full.input_grad, _grad(tiny_cnn, images, target.indices))
    assert ctx.capture({}, input_grad=False) is layer_only  # covers it: reused
    assert engine.cost.grad_rows == 3 + 4 + 4


@pytest.mark.parametrize("flags", [[False, True, False, True, False, True], [True, True, False]])
def test_rows_use_their_own_weight_version_in_row_order(flags):
    """Rows interleaved between two weight versions (gathered per version, or split into
    stretches) come back in row order, each computed with its version (reference: F.linear)."""
    from saliencelab.core.row_versions import chunk_samples, weight_versions

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 2))
    w2, b2 = torch.randn(2, 3), torch.randn(2)
    x = torch.randn(len(flags), 3)
    samples = torch.arange(len(flags))
    with (
        torch.no_grad(),
        weight_versions(net, {"0": {"weight": w2, "bias": b2}}, lambda s: s.tolist(), {"0": flags}),
    ):
        with chunk_samples(samples):
            out = net(x)
    for i, f in enumerate(flags):
        w, b = (w2, b2) if f else (net[0].weight, net[0].bias)
        torch.testing.assert_close(out[i], nn.functional.linear(x[i], w, b))
    assert "forward" not in net[0].__dict__
