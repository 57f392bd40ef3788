"""Faithfulness metrics against slow loop-based formulas, Quantus 0.6.0 and Captum 0.9.0."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import saliencelab as sl
from saliencelab.core.errors import SaliencelabError
from saliencelab.metrics.faithfulness import linear_imputation
from saliencelab.metrics.faithfulness.infidelity import gaussian_perturbations
from saliencelab.metrics.faithfulness.perturbation import (
    LastDraw,
    as_01,
    gaussian_blur,
    patch_ids,
    random_subsets,
    replaced,
)
from saliencelab.metrics.stats import pixel_order

H = W = 6


@pytest.fixture
def net(tiny_cnn):
    """The tiny CNN with a 10× sharper last layer, so perturbations move the probabilities."""
    with torch.no_grad():
        tiny_cnn.fc.weight.mul_(10)
    return tiny_cnn


@pytest.fixture
def x() -> torch.Tensor:
    torch.manual_seed(3)
    return torch.randn(2, 3, H, W)


@pytest.fixture
def maps() -> torch.Tensor:
    torch.manual_seed(4)
    return torch.randn(2, H, W)  # distinct values: no ties, so every order is unambiguous


@pytest.fixture
def target(net, x) -> torch.Tensor:
    with torch.no_grad():
        return net(x).argmax(1)


@pytest.fixture(scope="module")
def quantus():
    return pytest.importorskip("quantus")


# -- slow references -----------------------------------------------------------------------------


def prob(net, x: torch.Tensor, t: int, score: str = "probability") -> float:
    with torch.no_grad():
        out = net(x[None].double().float())[0].double()
    return float(out.softmax(0)[t] if score == "probability" else out[t])


def trapz(y: list[float], xs: list[float] | None = None) -> float:
    xs = xs or [i / (len(y) - 1) for i in range(len(y))]
    return sum((y[i] + y[i + 1]) / 2 * (xs[i + 1] - xs[i]) for i in range(len(y) - 1))


def order_desc(m: torch.Tensor) -> list[int]:
    flat = m.flatten().tolist()
    return sorted(range(len(flat)), key=lambda i: (-flat[i], i))


def order_asc(m: torch.Tensor) -> list[int]:
    flat = m.flatten().tolist()
    return sorted(range(len(flat)), key=lambda i: (flat[i], i))


def set_pixel(img: torch.Tensor, i: int, value) -> None:
    img[:, i // img.shape[2], i % img.shape[2]] = value


class record_inputs:
    """Context manager keeping a copy of every batch `net` is called with (a forward pre-hook)."""

    def __init__(self, net: torch.nn.Module) -> None:
        self.net, self.seen = net, []

    def __enter__(self) -> list[torch.Tensor]:
        self.hook = self.net.register_forward_pre_hook(
            lambda mod, args: self.seen.append(args[0].detach().clone())
        )
        return self.seen

    def __exit__(self, *exc) -> None:
        self.hook.remove()


def ref_deletion(net, x, maps, target, steps, baseline):
    base = torch.as_tensor(baseline, dtype=x.dtype).expand(x.shape[1:])
    curves, values = [], []
    for b in range(len(x)):
        order, ys = order_desc(maps[b]), []
        for k in range(steps + 1):
            img = x[b].clone()
            for i in order[: round(k * H * W / steps)]:
                set_pixel(img, i, base[:, i // W, i % W])
            ys.append(prob(net, img, int(target[b])))
        curves.append(ys)
        values.append(trapz(ys))
    return torch.tensor(values), torch.tensor(curves)


# Quantus options every comparison here uses: raw maps, no warnings.
PLAIN = {"normalise": False, "abs": False, "disable_warnings": True}


def run_quantus(metric, model, x, target, a, softmax: bool) -> np.ndarray:
    """A Quantus metric called as its documentation shows, on CPU numpy copies of the batch."""
    return metric(
        model=model,
        x_batch=x.numpy(),
        y_batch=target.numpy(),
        a_batch=a.numpy(),
        device="cpu",
        softmax=softmax,
    )


# -- deletion and insertion ----------------------------------------------------------------------


@pytest.mark.parametrize("baseline", [0.0, 0.5, torch.tensor([0.1, -0.2, 0.3]).view(3, 1, 1)])
def test_deletion_equals_loop(net, x, maps, target, baseline):
    r = sl.metrics.get("deletion")(steps=7, baseline=baseline)(maps, x=x, model=net)
    values, curves = ref_deletion(net, x, maps, target, 7, baseline)
    torch.testing.assert_close(r.curves, curves.double(), atol=1e-6, rtol=0)
    torch.testing.assert_close(r.values, values.double(), atol=1e-6, rtol=0)
    # Steps 1..6 run per sample; step 0 (the input) was run resolving the predicted class and
    # step 7 (all baseline, the same image for every sample) runs once for the batch.
    assert r.forwards == 6 + 1 / len(x) and r.direction == "lower"
    torch.testing.assert_close(r.curve_x[[0, -1]], torch.tensor([0.0, 1.0], dtype=torch.double))


def test_deletion_with_more_steps_than_pixels_runs_each_image_once(net, x, maps, target):
    """Steps past H·W repeat images (round(k·H·W/steps) takes a count twice): the curve is the
    loop's, step for step, and each distinct image is scored once (steps=10**4 on a 64×64
    image ran 9,999 forwards a sample, now 4,095)."""
    steps = 3 * H * W + 1
    r = sl.metrics.get("deletion")(steps=steps)(maps, x=x, model=net)
    values, curves = ref_deletion(net, x, maps, target, steps, 0.0)
    torch.testing.assert_close(r.curves, curves.double(), atol=1e-6, rtol=0)
    torch.testing.assert_close(r.values, values.double(), atol=1e-6, rtol=0)
    assert r.curves.shape == (len(x), steps + 1)
    assert r.forwards == H * W - 1 + 1 / len(x)  # as steps = H·W: the counts 1..H·W - 1


def test_blur_equals_scipy(x):
    from scipy.ndimage import gaussian_filter

    for sigma in (0.8, 1.3, 5.0):
        ref = gaussian_filter(
            x.double().numpy(), sigma=(0, 0, sigma, sigma), mode="nearest", truncate=3.0
        )
        torch.testing.assert_close(gaussian_blur(x.double(), sigma), torch.from_numpy(ref))


def test_insertion_equals_loop(net, x, maps, target):
    r = sl.metrics.get("insertion")(steps=4, blur_sigma=1.0)(maps, x=x, model=net)
    blurred = gaussian_blur(x, 1.0)
    for b in range(len(x)):
        order, ys = order_desc(maps[b]), []
        for k in range(5):
            img = blurred[b].clone()
            for i in order[: round(k * H * W / 4)]:
                set_pixel(img, i, x[b, :, i // W, i % W])
            ys.append(prob(net, img, int(target[b])))
        torch.testing.assert_close(
            r.curves[b], torch.tensor(ys, dtype=torch.double), atol=1e-6, rtol=0
        )
        assert r.values[b] == pytest.approx(trapz(ys), abs=1e-6)
    assert r.direction == "higher"


def test_insertion_default_starts_from_a_sigma_5_blur(net, x, maps, target):
    """The documented default blur_sigma=5: step 0 is scipy's Gaussian filter with sigma 5."""
    from scipy.ndimage import gaussian_filter

    m = sl.metrics.get("insertion")(steps=2)
    assert m.params["blur_sigma"] == 5.0
    r = m(maps, x=x, model=net)
    ref = gaussian_filter(x.double().numpy(), sigma=(0, 0, 5, 5), mode="nearest", truncate=3.0)
    start = [prob(net, torch.from_numpy(ref[b]).float(), int(target[b])) for b in range(len(x))]
    torch.testing.assert_close(r.curves[:, 0], torch.tensor(start, dtype=torch.double))


def test_deletion_matches_quantus_pixel_flipping(quantus, net, x, maps, target):
    steps = 6  # 6 pixels per step = 18 channel values
    q = run_quantus(
        quantus.PixelFlipping(
            features_in_step=3 * H * W // steps,
            perturb_baseline=0.0,
            **PLAIN,
        ),
        net,
        x,
        target,
        maps[:, None],
        softmax=True,
    )
    r = sl.metrics.get("deletion")(steps=steps)(maps, x=x, model=net, target=target)
    torch.testing.assert_close(
        r.curves[:, 1:], torch.tensor(q, dtype=torch.double), atol=1e-6, rtol=0
    )


def test_logit_score(net, x, maps, target):
    r = sl.metrics.get("deletion")(steps=3, score="logit")(maps, x=x, model=net)
    with torch.no_grad():
        logit = net(x).gather(1, target[:, None])[:, 0]
    torch.testing.assert_close(r.curves[:, 0], logit.double(), atol=1e-6, rtol=0)


# -- region perturbation -------------------------------------------------------------------------


def ref_region(net, x, maps, target, patch, regions, descending, fill):
    ph, pw = (-H) % patch, (-W) % patch
    pid = [[((i + ph // 2) // patch) * ((W + pw) // patch) + (j + pw // 2) // patch
            for j in range(W)] for i in range(H)]  # fmt: skip
    n_p = max(max(r) for r in pid) + 1
    out = []
    for b in range(len(x)):
        sums = [0.0] * n_p
        for i in range(H):
            for j in range(W):
                sums[pid[i][j]] += float(maps[b, i, j])
        order = sorted(range(n_p), key=lambda p: (-sums[p] if descending else sums[p], p))
        img = x[b].clone()
        f0 = prob(net, img, int(target[b]))
        drops = [0.0]
        for p in order[:regions]:
            for i in range(H):
                for j in range(W):
                    if pid[i][j] == p:
                        img[:, i, j] = fill[:, i, j]
            drops.append(f0 - prob(net, img, int(target[b])))
        out.append(drops)
    return torch.tensor(out, dtype=torch.double)


@pytest.mark.parametrize("name,patch,regions", [("aopc_morf", 2, 5), ("aopc_lerf", 4, None)])
def test_aopc_equals_loop(net, x, maps, target, name, patch, regions):
    r = sl.metrics.get(name)(patch_size=patch, regions=regions)(maps, x=x, model=net)
    fill = torch.zeros(3, H, W)
    drops = ref_region(net, x, maps, target, patch, regions, name == "aopc_morf", fill)
    torch.testing.assert_close(r.curves, drops, atol=1e-6, rtol=0)
    torch.testing.assert_close(r.values, drops.mean(1), atol=1e-6, rtol=0)


def test_aopc_uniform_noise_equals_loop(net, x, maps, target):
    m = sl.metrics.get("aopc_morf")(patch_size=3, perturbation="uniform", seed=5)
    r = m(maps, x=x, model=net)
    noise = torch.rand(3, H, W, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    drops = ref_region(net, x, maps, target, 3, None, True, noise.float())
    torch.testing.assert_close(r.curves, drops, atol=1e-6, rtol=0)


def test_patch_ids_centre_the_grid_with_floor_padding_first():
    """Hand-made layouts: the missing pixels pad floor(pad/2) before and ceil(pad/2) after."""
    ids, n = patch_ids(7, 7, 4, torch.device("cpu"))  # pad 1: 0 before, 1 after
    side = torch.tensor([0, 0, 0, 0, 1, 1, 1])
    assert n == 4
    assert ids.view(7, 7).tolist() == (side[:, None] * 2 + side[None, :]).tolist()
    ids, n = patch_ids(5, 6, 4, torch.device("cpu"))  # rows pad 3: 1 + 2; cols pad 2: 1 + 1
    assert n == 4
    assert ids.view(5, 6).tolist() == [
        [0, 0, 0, 1, 1, 1],
        [0, 0, 0, 1, 1, 1],
        [0, 0, 0, 1, 1, 1],
        [2, 2, 2, 3, 3, 3],
        [2, 2, 2, 3, 3, 3],
    ]


def test_aopc_matches_quantus_on_an_odd_padding(quantus, net):
    """7×7 inputs, patch 4 (one pixel of padding): Quantus pads it after the image."""
    torch.manual_seed(12)
    x7, maps7 = torch.randn(2, 3, 7, 7), torch.randn(2, 7, 7)
    with torch.no_grad():
        target = net(x7).argmax(1)
    q = run_quantus(
        quantus.RegionPerturbation(
            patch_size=4, order="morf", regions_evaluation=4, perturb_baseline=0.0, **PLAIN
        ),
        net,
        x7,
        target,
        maps7[:, None],
        softmax=True,
    )
    r = sl.metrics.get("aopc_morf")(patch_size=4, regions=None)(
        maps7, x=x7, model=net, target=target
    )
    torch.testing.assert_close(
        r.curves[:, 1:], torch.tensor(np.asarray(q), dtype=torch.double), atol=1e-6, rtol=0
    )


@pytest.mark.parametrize("order,patch", [("morf", 2), ("lerf", 4)])
def test_aopc_matches_quantus_region_perturbation(quantus, net, x, maps, target, order, patch):
    n_patches = math.ceil(H / patch) ** 2
    q = run_quantus(
        quantus.RegionPerturbation(
            patch_size=patch,
            order=order,
            regions_evaluation=n_patches,
            perturb_baseline=0.0,
            **PLAIN,
        ),
        net,
        x,
        target,
        maps[:, None],
        softmax=True,
    )
    q = torch.tensor(q, dtype=torch.double)
    r = sl.metrics.get(f"aopc_{order}")(patch_size=patch, regions=None)(maps, x=x, model=net)
    torch.testing.assert_close(r.curves[:, 1:], q, atol=1e-6, rtol=0)
    torch.testing.assert_close(r.values, q.sum(1) / (n_patches + 1), atol=1e-6, rtol=0)


# -- faithfulness correlation and sensitivity-n --------------------------------------------------


def ref_subset_corr(net, x, maps_or_attr, target, masks, unit, score="probability"):
    """Pearson over draws of Σ_S a and f(x) − f(x_S) (baseline 0); masks (B, D, units)."""
    out = []
    for b in range(len(x)):
        f0 = prob(net, x[b], int(target[b]), score)
        a = maps_or_attr[b].flatten().double()
        sums, drops = [], []
        for mask in masks[b]:
            img = x[b].clone()
            if unit == "pixel":
                for i in mask.nonzero()[:, 0].tolist():
                    set_pixel(img, i, 0.0)
            else:
                flat = img.view(-1)
                for i in mask.nonzero()[:, 0].tolist():
                    flat[i] = 0.0
            sums.append(float(a[mask].sum()))
            drops.append(f0 - prob(net, img, int(target[b]), score))
        out.append(np.corrcoef(sums, drops)[0, 1])
    return torch.tensor(out, dtype=torch.double)


def test_faithfulness_correlation_equals_loop(net, x, maps, target):
    g = torch.Generator().manual_seed(0)
    subsets = torch.stack([torch.randperm(H * W, generator=g)[:5] for _ in range(2 * 8)])
    subsets = subsets.view(2, 8, 5)
    m = sl.metrics.get("faithfulness_correlation")(subset_size=5, n_samples=8, subsets=subsets)
    r = m(maps, x=x, model=net)
    masks = torch.zeros(2, 8, H * W, dtype=torch.bool).scatter_(2, subsets, True)
    ref = ref_subset_corr(net, x, maps, target, masks, "pixel", "logit")
    torch.testing.assert_close(r.values, ref, atol=1e-5, rtol=0)
    assert r.forwards == 8  # the input's row came with the predicted class


def test_faithfulness_correlation_drawn_subsets(net, x, maps, target):
    m = sl.metrics.get("faithfulness_correlation")(
        subset_size=4, n_samples=6, seed=3, score="probability"
    )
    r = m(maps, x=x, model=net)
    keys = torch.rand(6, H * W, generator=torch.Generator().manual_seed(3))
    masks = torch.zeros(6, H * W, dtype=torch.bool).scatter_(1, keys.topk(4).indices, True)
    assert (masks.sum(1) == 4).all()
    ref = ref_subset_corr(net, x, maps, target, masks.expand(2, -1, -1), "pixel")
    torch.testing.assert_close(r.values, ref, atol=1e-5, rtol=0)
    other = sl.metrics.get("faithfulness_correlation")(subset_size=4, n_samples=6, seed=4)
    assert not torch.allclose(other(maps, x=x, model=net).values, r.values)


def test_faithfulness_correlation_default_subset_size(net):
    """The documented default subset_size=224: every perturbed image the model sees has exactly
    224 of its 16×16 pixels set to the baseline 0 (the input has no zero)."""
    m = sl.metrics.get("faithfulness_correlation")()
    assert m.params["subset_size"] == 224
    torch.manual_seed(13)
    x16, maps16 = torch.randn(1, 3, 16, 16), torch.randn(1, 16, 16)
    with record_inputs(net) as seen:
        m(maps16, x=x16, model=net, target=[0])
    zeroed = (torch.cat(seen) == 0).all(dim=1).flatten(1).sum(1)
    assert sorted(zeroed.tolist()) == [0] + [224] * 100  # the input, then the draws


def test_faithfulness_correlation_matches_quantus(quantus, net, x, maps, target):
    runs, size, n_features = 10, 20, 3 * H * W
    np.random.seed(7)
    q = run_quantus(
        quantus.FaithfulnessCorrelation(
            nr_runs=runs,
            subset_size=size,
            perturb_baseline=0.0,
            return_aggregate=False,
            **PLAIN,
        ),
        net,
        x,
        target,
        maps[:, None],
        softmax=False,
    )
    np.random.seed(7)  # replay Quantus' draws: run-major, one subset per sample
    draws = [
        [np.random.choice(n_features, size, replace=False) for _ in range(2)] for _ in range(runs)
    ]
    subsets = torch.from_numpy(np.array(draws)).transpose(0, 1)  # (B, runs, size)
    m = sl.metrics.get("faithfulness_correlation")(
        subset_size=size, n_samples=runs, unit="element", subsets=subsets
    )
    r = m(maps, x=x, model=net, target=target)
    torch.testing.assert_close(r.values, torch.tensor(q, dtype=torch.double), atol=1e-5, rtol=0)


def test_sensitivity_n_equals_loop(net, x, maps, target):
    fractions, draws = (0.1, 0.5), 5
    r = sl.metrics.get("sensitivity_n")(fractions=fractions, n_samples=draws, seed=2)(
        maps, x=x, model=net
    )
    ns = [round(f * H * W) for f in fractions]
    sizes = torch.tensor(ns).repeat_interleave(draws)
    masks = random_subsets(H * W, sizes, 2)
    assert masks.sum(1).tolist() == sizes.tolist()
    curves = [
        ref_subset_corr(
            net, x, maps, target, masks[i * draws : (i + 1) * draws].expand(2, -1, -1), "pixel"
        )
        for i in range(len(ns))
    ]
    curves = torch.stack(curves, 1)
    torch.testing.assert_close(r.curves, curves, atol=1e-5, rtol=0)
    torch.testing.assert_close(r.values, curves.mean(1), atol=1e-5, rtol=0)
    assert r.forwards == len(ns) * draws  # + the input's row, run resolving the target


def test_sensitivity_n_skips_nan_entries(net, x, maps, target):
    """Fraction 1.0 replaces every pixel in every draw (constant sums: a NaN correlation); the
    value is the mean of the finite entries, here the one at n = 18 against the slow loop."""
    draws = 5
    r = sl.metrics.get("sensitivity_n")(fractions=(0.5, 1.0), n_samples=draws, seed=2)(
        maps, x=x, model=net
    )
    assert torch.isnan(r.curves[:, 1]).all()
    keys = torch.rand(2 * draws, H * W, generator=torch.Generator().manual_seed(2))
    smallest = keys[:draws].topk(H * W // 2, largest=False).indices  # the 18 smallest keys
    masks = torch.zeros(draws, H * W, dtype=torch.bool).scatter_(1, smallest, True)
    ref = ref_subset_corr(net, x, maps, target, masks.expand(2, -1, -1), "pixel")
    assert torch.isfinite(ref).all()
    torch.testing.assert_close(r.curves[:, 0], ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(r.values, ref, atol=1e-5, rtol=0)


# -- infidelity ----------------------------------------------------------------------------------


def ref_infidelity(net, x, attr, target, noise, normalize, score="logit"):
    out = []
    for b in range(len(x)):
        f0 = prob(net, x[b], int(target[b]), score)
        dots = [float((attr[b].double() * i).sum()) for i in noise]
        drops = [f0 - prob(net, x[b] - i.float(), int(target[b]), score) for i in noise]
        beta = 1.0
        if normalize:
            beta = sum(d * f for d, f in zip(dots, drops, strict=True)) / sum(d * d for d in dots)
        out.append(sum((beta * d - f) ** 2 for d, f in zip(dots, drops, strict=True)) / len(noise))
    return torch.tensor(out, dtype=torch.double)


@pytest.mark.parametrize("normalize", [False, True])
def test_infidelity_equals_loop_and_captum(net, x, target, normalize):
    from captum.metrics import infidelity

    torch.manual_seed(8)
    attr = torch.randn(2, 3, H, W)
    n, std = 6, 0.3
    m = sl.metrics.get("infidelity")(n_perturbations=n, std=std, normalize=normalize, seed=1)
    r = m(attr.sum(1), x=x, model=net, attributions=attr)
    noise = gaussian_perturbations(n, (3, H, W), std, 1)
    torch.testing.assert_close(r.values, ref_infidelity(net, x, attr, target, noise, normalize))

    flat = noise.float().repeat(2, 1, 1, 1)  # Captum repeats each sample n times (interleaved)

    def perturb(inputs):
        return flat, inputs - flat

    cap = infidelity(
        net, perturb, x, attr, target=target,
        n_perturb_samples=n, max_examples_per_batch=2 * n, normalize=normalize,
    )  # fmt: skip
    torch.testing.assert_close(r.values, cap.double(), atol=1e-6, rtol=1e-4)


def test_infidelity_without_attributions_broadcasts_maps(net, x, maps, target):
    m = sl.metrics.get("infidelity")(n_perturbations=4, std=0.2, score="probability")
    r = m(maps, x=x, model=net)
    noise = gaussian_perturbations(4, (3, H, W), 0.2, 0)
    ref = ref_infidelity(net, x, maps[:, None].expand(x.shape), target, noise, False, "probability")
    torch.testing.assert_close(r.values, ref)


def test_infidelity_matches_quantus(quantus, net, x, target):
    """Quantus' Infidelity with one whole-image patch and a Gaussian perturb_func is Yeh's."""
    torch.manual_seed(8)
    attr = torch.randn(2, 3, H, W)
    n = 5
    noise = gaussian_perturbations(n, (3, H, W), 0.25, 2)
    calls = iter(range(n))

    def perturb(arr, indices, **kwargs):  # x_perturbed = x − I
        return arr - noise[next(calls)].float().numpy().reshape(1, -1)

    q = run_quantus(
        quantus.Infidelity(
        perturb_func=perturb, perturb_patch_sizes=[H], n_perturb_samples=n,
        **PLAIN,
    ),
        net, x, target, attr, softmax=False,
    )  # fmt: skip
    m = sl.metrics.get("infidelity")(n_perturbations=n, std=0.25, seed=2)
    r = m(attr.sum(1), x=x, model=net, attributions=attr, target=target)
    torch.testing.assert_close(r.values, torch.tensor(q, dtype=torch.double), atol=1e-6, rtol=1e-4)


# -- monotonicity --------------------------------------------------------------------------------


def ref_monotonicity_curves(net, x, maps, target, steps, baseline=0.0):
    out = []
    for b in range(len(x)):
        order, ys = order_asc(maps[b].abs()), []
        for k in range(steps + 1):
            img = torch.full_like(x[b], baseline)
            for i in order[: round(k * H * W / steps)]:
                set_pixel(img, i, x[b, :, i // W, i % W])
            ys.append(prob(net, img, int(target[b])))
        out.append(ys)
    return torch.tensor(out, dtype=torch.double)


def test_monotonicity_equals_loop(net, x, maps, target):
    r = sl.metrics.get("monotonicity")(steps=9, baseline=0.2)(maps, x=x, model=net)
    curves = ref_monotonicity_curves(net, x, maps, target, 9, 0.2)
    torch.testing.assert_close(r.curves, curves, atol=1e-6, rtol=0)
    diffs = curves[:, 2:] - curves[:, 1:-1]  # after each addition: the baseline alone is no step
    torch.testing.assert_close(r.values, (diffs >= 0).double().mean(1))
    torch.testing.assert_close(r.extras["monotonic"], (diffs >= 0).all(1).double())


def test_monotonicity_does_not_count_the_step_from_the_baseline_alone():
    """Arya et al. (AIX360) and Quantus read the predictions after each addition: a curve that
    falls from the baseline alone to the first group and then rises is monotonic (the step from
    the baseline was counted: 0.75 and not monotonic, against Quantus' True)."""
    x1 = torch.tensor([[[[0.9, 0.7], [0.6, 0.0]]]])
    maps1 = torch.tensor([[[4.0, 3.0], [2.0, 1.0]]])  # ascending: pixels 3, 2, 1, 0
    r = sl.metrics.get("monotonicity")(steps=4, baseline=0.5, absolute=False)
    got = r(maps1, x=x1, model=_SumModel(), target=[0])  # sigmoid(Σ), Σ = 2.0 (baseline alone),
    sums = torch.tensor([2.0, 1.5, 1.6, 1.8, 2.2], dtype=torch.double)  # then rising
    torch.testing.assert_close(got.curves[0], torch.sigmoid(sums), atol=1e-6, rtol=0)
    assert got.values.tolist() == [1.0] and got.extras["monotonic"].tolist() == [1.0]
    with pytest.raises(SaliencelabError, match="steps must be at least 2"):
        sl.metrics.get("monotonicity")(steps=1)


class _SumModel(torch.nn.Module):
    """Logits (Σ x, 0): class 0's probability sigmoid(Σ x) grows as positive pixels come in."""

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        s = t.sum(dim=(1, 2, 3))
        return torch.stack([s, torch.zeros_like(s)], 1)


def test_monotonicity_counts_flat_steps_as_monotone():
    """4 steps over 4 pixels, one pixel equal to the baseline: restoring it changes nothing. A
    flat step does not decrease: the value is 1 (hand-computed curve). (More steps than pixels,
    which added steps of no pixel at all, are refused: test_early_refusals.py.)"""
    x1 = torch.tensor([[[[0.1, 0.2], [0.0, 0.4]]]])
    maps1 = torch.tensor([[[0.1, 0.4], [0.3, 0.2]]])  # ascending: pixels 0, 3, 2, 1
    r = sl.metrics.get("monotonicity")(steps=4)(maps1, x=x1, model=_SumModel(), target=[0])
    sums = torch.tensor([0.0, 0.1, 0.5, 0.5, 0.7], dtype=torch.double)
    torch.testing.assert_close(r.curves[0], torch.sigmoid(sums), atol=1e-6, rtol=0)
    assert r.values.tolist() == [1.0] and r.extras["monotonic"].tolist() == [1.0]


class _Recorder(torch.nn.Module):
    """Records the softmax outputs of every forward (to read curves Quantus does not return)."""

    def __init__(self, net):
        super().__init__()
        self.net, self.seen = net, []

    def forward(self, t):
        out = self.net(t)
        self.seen.append(out.detach().softmax(1))
        return out


def test_monotonicity_matches_quantus(quantus, net, x, maps, target):
    steps = 6
    flat_x = x.numpy().reshape(2, -1)

    def insert_from_x(arr, indices, **kwargs):  # add the features of x (Quantus' default
        out = arr.copy()  # perturb_func would put the baseline back onto the baseline)
        rows = np.arange(len(arr))[:, None]
        out[rows, indices] = flat_x[rows, indices]
        return out

    rec = _Recorder(net).eval()
    q = run_quantus(
        quantus.Monotonicity(
        features_in_step=3 * H * W // steps, perturb_func=insert_from_x, perturb_baseline=0.0,
        abs=True, normalise=False, disable_warnings=True,
    ),
        rec, x, target, maps[:, None], softmax=True,
    )  # fmt: skip
    q_curves = torch.stack(rec.seen[-steps:], 1)[torch.arange(2), :, target].double()
    r = sl.metrics.get("monotonicity")(steps=steps)(maps, x=x, model=net, target=target)
    torch.testing.assert_close(r.curves[:, 1:], q_curves, atol=1e-6, rtol=0)
    assert r.extras["monotonic"].tolist() == [float(v) for v in q]


def ref_monotonicity_correlation(net, x, maps, target, steps, fills, eps=1e-5):
    """fills: (steps, draws) replacement values."""
    from scipy.stats import spearmanr

    out = []
    for b in range(len(x)):
        order = order_asc(maps[b].abs())
        y = prob(net, x[b], int(target[b]))
        atts, vars_ = [], []
        for g in range(steps):
            group = order[round(g * H * W / steps) : round((g + 1) * H * W / steps)]
            atts.append(sum(float(maps[b].abs().flatten()[i]) for i in group))
            sq = []
            for v in fills[g]:
                img = x[b].clone()
                for i in group:
                    set_pixel(img, i, float(v))
                sq.append((prob(net, img, int(target[b])) - y) ** 2)
            vars_.append(np.mean(sq) / (y * y if abs(y) >= eps else 1.0))
        out.append(spearmanr(atts, vars_).statistic)
    return torch.tensor(out, dtype=torch.double)


def test_monotonicity_correlation_equals_loop(net, x, maps, target):
    steps, draws = 6, 3
    m = sl.metrics.get("monotonicity_correlation")(steps=steps, n_samples=draws, seed=9)
    r = m(maps, x=x, model=net)
    u = torch.rand(steps, draws, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    ref = ref_monotonicity_correlation(net, x, maps, target, steps, u.float())
    torch.testing.assert_close(r.values, ref, atol=1e-6, rtol=0)
    assert r.forwards == steps * draws  # + the input's row, run resolving the target


def test_monotonicity_correlation_matches_quantus(quantus, net, x, maps, target):
    steps = 12
    q = run_quantus(
        quantus.MonotonicityCorrelation(
        features_in_step=3 * H * W // steps, nr_samples=2, perturb_baseline=0.0,
        abs=True, normalise=False, disable_warnings=True,
    ),
        net, x, target, maps[:, None], softmax=True,
    )  # fmt: skip
    m = sl.metrics.get("monotonicity_correlation")(steps=steps, perturbation="baseline")
    r = m(maps, x=x, model=net, target=target)
    torch.testing.assert_close(r.values, torch.tensor(q, dtype=torch.double), atol=1e-6, rtol=0)
    assert r.forwards == steps + 1


# -- ROAD ----------------------------------------------------------------------------------------


def test_road_equals_loop(net, x, maps, target):
    pct = (20, 50, 80)
    r = sl.metrics.get("road")(percentages=pct, noise=0.0)(maps, x=x, model=net)
    curves = {"morf": [], "lerf": []}
    for b in range(len(x)):
        for name, order in (("morf", order_desc(maps[b])), ("lerf", order_asc(maps[b]))):
            ys = []
            for p in pct:
                removed = np.zeros((H, W), dtype=bool)
                for i in order[: int(H * W * p / 100)]:
                    removed[i // W, i % W] = True
                # (linear_imputation itself is checked against a dense and a sparse solve and
                # against Quantus in tests/test_road_imputation.py)
                img = linear_imputation(x[b : b + 1].double(), torch.from_numpy(removed)[None])[0]
                ys.append(prob(net, img.float(), int(target[b])))
            curves[name].append(ys)
    xs = [p / 100 for p in pct]
    for name in curves:
        c = torch.tensor(curves[name], dtype=torch.double)
        torch.testing.assert_close(r.extras[f"{name}_curve"], c, atol=1e-6, rtol=0)
        area = torch.tensor([trapz(ys, xs) for ys in curves[name]], dtype=torch.double)
        torch.testing.assert_close(r.extras[f"{name}_area"], area, atol=1e-6, rtol=0)
    torch.testing.assert_close(r.values, r.extras["lerf_area"] - r.extras["morf_area"])
    one = sl.metrics.get("road_morf")(percentages=pct, noise=0.0)(maps, x=x, model=net)
    torch.testing.assert_close(one.values, r.extras["morf_area"])
    assert one.forwards == 3 and r.forwards == 6


def road_rows(net, x, maps, target, **options) -> torch.Tensor:
    """The (B·P, C, H, W) images ROAD-MoRF runs, as the model sees them (sample-major)."""
    with record_inputs(net) as seen:
        sl.metrics.get("road_morf")(**options)(maps, x=x, model=net, target=target)
    return torch.cat(seen)


def test_road_noise_only_touches_removed_pixels(net, x, maps, target):
    """The images the model sees: kept pixels are the input exactly, every removed pixel
    (the top floor(p·H·W/100) by map, by hand) differs from its noise-free imputation."""
    r0 = sl.metrics.get("road_lerf")(percentages=(30, 60), noise=0.0)(maps, x=x, model=net)
    r1 = sl.metrics.get("road_lerf")(percentages=(30, 60), noise=0.5, seed=1)
    assert not torch.allclose(r0.values, r1(maps, x=x, model=net).values)
    pct = (30, 60)
    plain = road_rows(net, x, maps, target, percentages=pct, noise=0.0)
    noisy = road_rows(net, x, maps, target, percentages=pct, noise=0.5, seed=1)
    assert noisy.shape == (len(x) * len(pct), 3, H, W)
    for b in range(len(x)):
        for j, p in enumerate(pct):
            removed = torch.zeros(H * W, dtype=torch.bool)
            removed[order_desc(maps[b])[: H * W * p // 100]] = True
            removed = removed.view(H, W)
            row, row0 = noisy[b * len(pct) + j], plain[b * len(pct) + j]
            assert torch.equal(row[:, ~removed], x[b][:, ~removed])
            assert torch.equal(row0[:, ~removed], x[b][:, ~removed])
            assert (row[:, removed] != row0[:, removed]).all()


def test_road_default_noise_is_small(net, x, maps, target):
    """The default noise std is 0.01: the noisy minus noise-free removed pixels have a sample
    std near 0.01 (21 pixels × 3 channels per sample, of one seeded noise image)."""
    assert sl.metrics.get("road")().params["noise"] == 0.01
    pct = (30, 60)
    plain = road_rows(net, x, maps, target, percentages=pct, noise=0.0)
    noisy = road_rows(net, x, maps, target, percentages=pct)
    diff = (noisy - plain)[1::2]  # the 60 % rows: 21 removed pixels × 3 channels each
    values = diff[diff != 0].double()
    assert values.numel() == len(x) * 21 * 3
    assert 0.006 < float(values.std()) < 0.016


# -- the contract: batches, errors, sl.evaluate --------------------------------------------------

SMALL = {
    "deletion": {"steps": 4},
    "insertion": {"steps": 4, "blur_sigma": 1.0},
    "aopc_morf": {"patch_size": 2, "regions": 4},
    "aopc_lerf": {"patch_size": 3},
    "road": {"percentages": (30, 60)},
    "road_morf": {"percentages": (30, 60)},
    "road_lerf": {"percentages": (30, 60)},
    "faithfulness_correlation": {"subset_size": 6, "n_samples": 5},
    "infidelity": {"n_perturbations": 3},
    "sensitivity_n": {"fractions": (0.2, 0.5), "n_samples": 4},
    "monotonicity": {"steps": 4},
    "monotonicity_correlation": {"steps": 4, "n_samples": 2},
}


def test_all_registered():
    assert set(SMALL) <= set(sl.metrics.available("faithfulness"))


@pytest.mark.parametrize("name", sorted(SMALL))
def test_two_batches_equal_one_call(net, name):
    torch.manual_seed(11)
    x4, maps4 = torch.randn(4, 3, H, W), torch.randn(4, H, W)
    m = sl.metrics.get(name)(**SMALL[name])
    whole = m(maps4, x=x4, model=net)
    m.reset()
    m.update(maps4[:1], x=x4[:1], model=net)
    m.update(maps4[1:], x=x4[1:], model=net)
    parts = m.compute()
    # float32 forwards of other chunk compositions round differently: compare to ~1e-6
    tol = {"atol": 1e-6, "rtol": 1e-4, "equal_nan": True}
    torch.testing.assert_close(parts.values, whole.values, **tol)
    if whole.curves is not None:
        torch.testing.assert_close(parts.curves, whole.curves, **tol)
    # A row shared by all samples (the all-baseline image) runs once per batch.
    assert whole.forwards <= parts.forwards <= whole.forwards + 1 and whole.forwards > 0


def test_input_and_shared_rows_run_once(net, x, maps, target):
    """The input's scores are run once per batch for all metrics; the all-baseline image once."""
    batch = sl.metrics.make_batch(maps, x=x, model=net, target=target)
    assert batch.input_logits is None  # a given target needs no forward
    deletion = sl.metrics.get("deletion")(steps=4)
    deletion.update(batch=batch)
    assert deletion.compute().forwards == 1 + 3 + 1 / len(x)  # input, steps 1-3, shared step 4
    assert batch.input_logits is not None
    torch.testing.assert_close(batch.input_logits, net(x))
    corr = sl.metrics.get("faithfulness_correlation")(subset_size=5, n_samples=3)
    corr.update(batch=batch)
    assert corr.compute().forwards == 3  # the input's row is reused
    # A per-sample baseline is no shared image: its last step runs per sample.
    per_sample = sl.metrics.get("deletion")(steps=4, baseline=torch.rand(len(x), 3, 1, 1))
    per_sample.update(batch=batch)
    assert per_sample.compute().forwards == 4


@pytest.mark.parametrize("name", sorted(SMALL))
def test_non_contiguous_inputs(net, name):
    """Inputs laid out any way (here a permuted HWC array) score like contiguous ones."""
    torch.manual_seed(5)
    hwc, maps2 = torch.randn(2, H, W, 3), torch.randn(2, H, W)
    x_perm = hwc.permute(0, 3, 1, 2)
    assert not x_perm.is_contiguous()
    m = sl.metrics.get(name)(**SMALL[name])
    a = m(maps2, x=x_perm, model=net)
    b = m(maps2, x=x_perm.contiguous(), model=net)
    torch.testing.assert_close(a.values, b.values, atol=1e-6, rtol=1e-4, equal_nan=True)


@pytest.mark.parametrize(
    "name,options,words",
    [
        ("deletion", {"steps": 0}, "steps"),
        ("insertion", {"steps": -2}, "steps"),
        ("monotonicity", {"steps": 2.5}, "steps"),
        ("aopc_morf", {"patch_size": 7}, "patch_size"),
        ("deletion", {"baseline": torch.zeros(2, 5)}, "baseline"),
        ("faithfulness_correlation", {"subset_size": 999}, "subset_size"),
        ("deletion", {"score": "prob"}, "score"),
        ("road", {"percentages": (0, 100)}, "percentages"),
        ("sensitivity_n", {"fractions": (0.0,)}, "fractions"),
        ("aopc_lerf", {"patch_size": 2, "perturbation": "blur"}, "perturbation"),
        ("road_morf", {"percentages": (50,)}, "percentages"),
    ],
)
def test_bad_options_give_one_sentence(net, x, maps, name, options, words):
    with pytest.raises(SaliencelabError) as err:
        sl.metrics.get(name)(**options)(maps, x=x, model=net)
    msg = str(err.value)
    assert words in msg and "\n" not in msg and msg.endswith(".")


@pytest.mark.parametrize(
    "name,options,words",
    [
        ("deletion", {"steps": 0}, "steps"),
        ("deletion", {"score": "prob"}, "score"),
        ("deletion", {"baseline": "black"}, "baseline"),
        ("insertion", {"blur_sigma": 0.0}, "blur_sigma"),
        ("aopc_morf", {"patch_size": 0}, "patch_size"),
        ("aopc_morf", {"regions": 0}, "regions"),
        ("aopc_lerf", {"perturbation": "blur"}, "perturbation"),
        ("monotonicity", {"steps": 2.5}, "steps"),
        ("monotonicity_correlation", {"n_samples": 0}, "n_samples"),
        ("monotonicity_correlation", {"perturbation": "blur"}, "perturbation"),
        ("monotonicity_correlation", {"eps": -1.0}, "eps"),
        ("infidelity", {"n_perturbations": 0}, "n_perturbations"),
        ("infidelity", {"std": 0.0}, "std"),
        ("sensitivity_n", {"fractions": (0.0,)}, "fractions"),
        ("sensitivity_n", {"fractions": "0.5"}, "fractions"),
        ("sensitivity_n", {"n_samples": 0}, "n_samples"),
        ("faithfulness_correlation", {"unit": "channel"}, "unit"),
        ("faithfulness_correlation", {"subset_size": 0}, "subset_size"),
        ("road", {"percentages": (50,)}, "percentages"),
        ("road_lerf", {"percentages": 50}, "percentages"),
        ("road_morf", {"noise": -0.1}, "noise"),
        ("road", {"noise": math.nan}, "noise must be a finite number"),
        ("deletion", {"baseline": math.nan}, "baseline of deletion must be finite"),
        ("monotonicity", {"baseline": torch.tensor([0.0, math.inf])}, "must be finite"),
    ],
)
def test_bad_option_values_fail_when_the_metric_is_built(name, options, words):
    """Options are checked by the constructor, so sl.evaluate and the CLI (which build the
    metrics first) fail before any model work."""
    with pytest.raises(SaliencelabError) as err:
        sl.metrics.get(name)(**options)
    msg = str(err.value)
    assert words in msg and "\n" not in msg and msg.endswith(".")


def test_option_sequences_may_be_arrays(net, x, maps):
    import numpy as np

    pct = np.array([30, 60])
    a = sl.metrics.get("road")(percentages=pct)(maps, x=x, model=net)
    b = sl.metrics.get("road")(percentages=(30, 60))(maps, x=x, model=net)
    torch.testing.assert_close(a.values, b.values, atol=1e-6, rtol=1e-4)  # chunking rounds
    assert a.params["percentages"] == (30, 60)
    fr = torch.tensor([0.2, 0.5])
    c = sl.metrics.get("sensitivity_n")(fractions=fr, n_samples=4)(maps, x=x, model=net)
    d = sl.metrics.get("sensitivity_n")(fractions=(0.2, 0.5), n_samples=4)(maps, x=x, model=net)
    torch.testing.assert_close(c.values, d.values, atol=1e-6, rtol=1e-4, equal_nan=True)
    assert c.params["fractions"] == pytest.approx((0.2, 0.5))


def test_model_needed(x, maps):
    with pytest.raises(SaliencelabError, match="needs model"):
        sl.metrics.get("deletion")()(maps, x=x)


def test_evaluate_end_to_end(net, x):
    ex = sl.explain(net, x, methods=["saliency"])
    rep = sl.evaluate(net, x, ex, metrics=SMALL, references=False)
    assert set(rep["saliency"]) == set(SMALL)
    for name, result in rep["saliency"].items():
        assert result.values.shape == (2,)
        assert result.forwards > 0, name
    # infidelity uses the full attributions sl.explain keeps
    a = ex["saliency"]
    direct = sl.metrics.get("infidelity")(n_perturbations=3)(
        a.maps, x=x, model=net, attributions=a.attributions, target=a.target
    )
    torch.testing.assert_close(rep["saliency"]["infidelity"].values, direct.values)
    assert rep["saliency"]["deletion"].curves.shape == (2, 5)


# -- row building --------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_replaced_equals_torch_where(dtype):
    """Rows built by arithmetic with 0/1 masks are torch.where's rows, for every kind of fill."""
    torch.manual_seed(6)
    n, c, h, w = 5, 3, 4, 7
    outside = torch.randn(n, c, h, w).to(dtype)
    outside[0, 0, 0] = 0.0
    for mask_shape in [(n, 1, h, w), (n, c, h, w)]:
        keep = (torch.rand(mask_shape) < 0.5).to(dtype)
        insides = [
            0.0,
            -1.5,
            torch.randn(n, c, h, w),
            torch.randn(n, 1, 1, 1),
            torch.randn(1, c, 1, 1),
        ]
        for inside in insides:
            inside = inside if isinstance(inside, float) else inside.to(dtype)
            expected = torch.where(keep == 0, inside, outside)
            assert torch.equal(replaced(outside, keep, inside), expected)
        # one image for every row (an expanded baseline) broadcasts
        one = outside[:1]
        assert torch.equal(replaced(one, keep, 0.5), torch.where(keep == 0, 0.5, one))


def test_as_01_is_the_comparison():
    torch.manual_seed(7)
    a, b = torch.randint(0, 5, (4, 9)).float(), torch.randint(0, 5, (4, 1)).float()
    for compare in (torch.lt, torch.ge, torch.ne, torch.eq):
        for dtype in (torch.float32, torch.float64, torch.bfloat16):
            out = as_01(compare, a, b, dtype)
            assert out.dtype == dtype and torch.equal(out, compare(a, b).to(dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("descending", [True, False])
def test_pixel_order_is_a_stable_sort(dtype, descending):
    """NumPy's keyed sort on the CPU gives torch's stable order: ties by position, -0.0 = 0.0."""
    torch.manual_seed(8)
    m = (torch.randn(3, 9, 11) * 3).round()  # many ties
    m[0, 0, :4] = -0.0
    m[0, 1, :4] = 0.0
    m[1, 2, 3] = -1e-30  # a negative number close to zero
    m = m.to(dtype)
    stable = torch.sort(m.flatten(1), dim=1, descending=descending, stable=True).indices
    assert torch.equal(pixel_order(m, descending), stable)
    m[2, 0, 0] = float("nan")  # not finite: torch.sort decides
    stable = torch.sort(m.flatten(1), dim=1, descending=descending, stable=True).indices
    assert torch.equal(pixel_order(m, descending), stable)


def test_last_draw_is_kept_per_key():
    draws = []

    def draw(size):
        draws.append(size)
        return torch.rand(size)

    kept = LastDraw()
    a = kept.get((3,), lambda: draw(3))
    assert kept.get((3,), lambda: draw(3)) is a and draws == [3]
    b = kept.get((4,), lambda: draw(4))
    assert b.shape == (4,) and draws == [3, 4]
    assert kept.get((3,), lambda: draw(3)) is not a and draws == [3, 4, 3]  # only the last
    kept.MAX_VALUES = 2
    kept.get((5,), lambda: draw(5))
    kept.get((5,), lambda: draw(5))
    assert draws == [3, 4, 3, 5, 5]  # too large to keep


@pytest.mark.parametrize(
    "name,options,drawn",
    [
        ("infidelity", {"n_perturbations": 3}, "gaussian_perturbations"),
        ("sensitivity_n", {"fractions": (0.2, 0.5), "n_samples": 3}, "random_subsets"),
        ("faithfulness_correlation", {"n_samples": 3, "subset_size": 5}, "subset_indices"),
    ],
)
def test_seeded_draws_are_drawn_once_per_shape(net, monkeypatch, name, options, drawn):
    """A metric keeps its seeded draws for the next batch of the same shape: the same values as
    a fresh metric, drawn once; another shape draws again."""
    module = {
        "infidelity": "saliencelab.metrics.faithfulness.infidelity",
        "sensitivity_n": "saliencelab.metrics.faithfulness.sensitivity_n",
        "faithfulness_correlation": "saliencelab.metrics.faithfulness.correlation",
    }[name]
    calls = []
    original = getattr(__import__(module, fromlist=[drawn]), drawn)

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(f"{module}.{drawn}", counted)
    torch.manual_seed(9)
    xa, ma = torch.randn(3, 3, H, W), torch.randn(3, H, W)
    xb, mb = torch.randn(2, 3, H + 2, W), torch.randn(2, H + 2, W)
    m = sl.metrics.get(name)(**options)
    first = m(ma, x=xa, model=net).values
    again = m(ma[:2], x=xa[:2], model=net).values  # another batch size, same shape per sample
    assert len(calls) == 1
    m(mb, x=xb, model=net)
    assert len(calls) == 2
    fresh = sl.metrics.get(name)(**options)(ma[:2], x=xa[:2], model=net).values
    # the same draws; forwards in other chunks round differently
    tol = {"atol": 1e-6, "rtol": 1e-5, "equal_nan": True}
    torch.testing.assert_close(again, fresh, **tol)
    torch.testing.assert_close(first[:2], again, **tol)


def test_shared_image_is_a_row_of_the_main_pass(net, x, maps, target, monkeypatch):
    """The all-baseline image (the same for every sample) runs once, as one more row of the pass
    of the perturbed rows, not as a one-row pass of its own."""
    from saliencelab.core.engine import Engine

    passes = []
    forwards = Engine.forwards

    def recorded(self, n_rows, *args, **kwargs):
        passes.append(n_rows)
        return forwards(self, n_rows, *args, **kwargs)

    monkeypatch.setattr(Engine, "forwards", recorded)
    r = sl.metrics.get("deletion")(steps=4)(maps, x=x, model=net, target=target)
    assert passes == [len(x), 3 * len(x) + 1]  # the inputs; steps 1-3 of each sample and step 4
    assert r.forwards == 1 + 3 + 1 / len(x)
    passes.clear()
    m = sl.metrics.get("monotonicity")(steps=3, baseline=0.25)  # step 0 is the shared image
    m(maps, x=x, model=net, target=target)
    assert passes == [len(x), 2 * len(x) + 1]
