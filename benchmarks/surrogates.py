"""LIME and KernelSHAP: saliencelab vs Captum on EfficientNet-Lite0, same samples per image.

    .venv/bin/python benchmarks/surrogates.py [--images 8] [--samples 1000] [--segments 64]
        [--repeats 1] [--device cpu] [--clock wall|cpu] [--chunk-size N] [--models lite0,cheap]
        [--self-check]

Settings (the same for both libraries): 224×224 images, the predicted class as target, a grid
of `--segments` cells (8×8 = 64 by default, saliencelab's default mask) as features, baseline
0, `--samples` coalitions per image.

- KernelSHAP: ours (exact efficiency by elimination, kernel-proportional paired sampling) vs
  Captum's `KernelShap` as documented (its own sampler, weight 1e6 on the empty/full coalition).
- LIME: ours (weights exp(−d²/0.25²), d = cosine distance of the coalition to all-ones, ridge
  α = 1) vs Captum's `Lime` configured to the same surrogate: that kernel as `similarity_func`
  and `SkLearnRidge(alpha=1.0)`, with Captum's own Bernoulli(½) sampler.

Captum runs at its best `perturbations_per_eval` (swept over 1–64 on one image first) and, when
that is not 1, also at its documented default of 1 (Captum explains a batch one example at a
time either way). Every contender is warmed up untimed first: ours by `harness.settle` (until
the engine's chunk-size search is closed and two calls ran the same passes) and one plain call,
Captum by one call, the floor by its own untimed forward. Timings are interleaved per repeat
(harness.measure) and reported as ratios (median over repeats of the per-repeat ratio,
`harness.paired`); on a shared CPU wall times are noisy, `--clock cpu` is the robust choice.
The default `--repeats` stays 1: at the default settings (8 images × 1000 samples on
EfficientNet-Lite0) one repeat runs about 4 × 8000 forwards, well over ten minutes on 2 CPU
cores; give `--repeats 3` where there is time.
`--models cheap` replaces the network by an almost free one (pool + linear): what remains is each
library's own machinery per sample (sampling, building inputs, weights, the fit), the part that
dominates when forwards are fast (a GPU). `--models shapes` runs the bundled shapes CNN on
`sl.data.shapes` images at 64×64 (a quick check).
FLOOR = the forwards ours runs (the distinct coalitions per image: a coalition drawn twice is
run once) as plain forwards of the model at the chunk size our engine settled on (or
`--chunk-size`), in the memory layout ours ran them in (channels-last on CPU where the engine
picks it; recorded by a forward pre-hook).

Agreement. Exact agreement is checked where both libraries are deterministic, on each model
compared: LIME with our coalitions fed to Captum's Lime, and KernelSHAP on a 2×2 grid, where
ours enumerates (exact Shapley values) and Captum's KernelShap is fed every coalition repeated in
proportion to the Shapley kernel (which makes it exact too). Each is a `harness.Agreement`: max
|ours − Captum| / max |Captum| per image ≤ 1e-4 (float32 forwards and two least-squares
solvers; measured 2e-6 – 6e-6). A method's ratios on a model are given only where its check
holds on that model (else None), and the script exits 1 when any check fails. The timed outputs
are not a gate: both libraries sample, with different samplers (Captum's KernelShap draws
coalitions uniformly by size; LIME's are Bernoulli(½) on both sides but different draws), so
their correlation (mean over images of the Pearson correlation of the per-feature values) only
says how close two random estimates are at this many samples (at 64 samples on 64 features
KernelSHAP's is about 0). It is recorded as `corr_with_captum`; `--self-check` adds ours with
another seed, the correlation two independent runs of the same estimator reach.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import clock_env  # noqa: E402, F401  (before torch: OMP_WAIT_POLICY for --clock cpu)
import harness  # noqa: E402
import torch  # noqa: E402
from harness import (  # noqa: E402
    IMAGES,
    Agreement,
    Contender,
    Stopwatch,
    compare,
    exit_status,
    make_sync,
    mean_corr,
    measure,
    paired,
    settle,
    valid_ratio,
)

import saliencelab as sl  # noqa: E402
from saliencelab.methods.perturbation import kernelshap as _ks  # noqa: E402, F401
from saliencelab.methods.perturbation import lime as _lime  # noqa: E402, F401
from saliencelab.methods.perturbation.features import default_feature_mask  # noqa: E402
from saliencelab.methods.perturbation.kernelshap import sampled_coalitions  # noqa: E402
from saliencelab.methods.perturbation.lime import lime_coalitions, lime_weights  # noqa: E402

MODEL = "efficientnet_lite0"
KERNEL_WIDTH, ALPHA = 0.25, 1.0
EXACT_TOL = 1e-4  # deterministic checks: max |ours − Captum| / max |Captum| per image


def log(msg: str) -> None:
    print(msg, flush=True)


def lime_similarity(n_feat: int):
    def similarity(original, perturbed, interpretable, **kwargs) -> float:
        return float(lime_weights(interpretable.bool().cpu(), torch.tensor([n_feat]), KERNEL_WIDTH))

    return similarity


def captum_lime(module, perturb=None):
    from captum._utils.models.linear_model import SkLearnRidge
    from captum.attr import Lime

    def make(n_feat: int):
        kw = {"perturb_func": perturb} if perturb is not None else {}
        similarity = lime_similarity(n_feat)
        return Lime(module, SkLearnRidge(alpha=ALPHA), similarity_func=similarity, **kw)

    return make


def best_ppe(module, x, target, mask, candidates=(1, 2, 4, 8, 16, 32, 64), n: int = 64) -> dict:
    """Captum KernelShap seconds per sample at each perturbations_per_eval, on one image."""
    from captum.attr import KernelShap

    kw = {"baselines": 0.0, "target": target[:1], "feature_mask": mask}
    KernelShap(module).attribute(x[:1], n_samples=16, perturbations_per_eval=16, **kw)  # warm-up
    out = {}
    for ppe in candidates:
        with Stopwatch(lambda: None) as sw:
            KernelShap(module).attribute(x[:1], n_samples=n, perturbations_per_eval=ppe, **kw)
        out[ppe] = sw.seconds / n
    return out


def forward_floor(
    module, x, rows: int, chunk: int, sync, nhwc: bool = False
) -> tuple[float, float]:
    """(wall, cpu) seconds of `rows` plain forwards of x's images in batches of `chunk`: up to 3
    batches timed, the median scaled to the number of batches, plus the last partial one.
    `nhwc`: the batch in channels-last layout (the layout ours ran in, where it did)."""
    batch = x.repeat((chunk + x.shape[0] - 1) // x.shape[0], 1, 1, 1)[:chunk].contiguous()
    if nhwc:
        batch = batch.contiguous(memory_format=torch.channels_last)
    full, rest = divmod(rows, chunk)
    wall = cpu = 0.0
    with torch.inference_mode():
        module(batch)
        timed = []
        for _ in range(min(3, full)):
            with Stopwatch(sync) as sw:
                module(batch)
            timed.append(sw)
        if timed:
            wall = full * statistics.median(t.wall for t in timed)
            cpu = full * statistics.median(t.cpu for t in timed)
        if rest:
            with Stopwatch(sync) as sw:
                module(batch[:rest])
            wall, cpu = wall + sw.wall, cpu + sw.cpu
    return wall, cpu


def exact_checks(model, x, target) -> dict[str, Agreement]:
    """Both libraries deterministic: the same LIME coalitions; KernelSHAP exact on 4 features."""
    from captum.attr import KernelShap

    module = model.module
    one, t = x[:1], int(target[0])
    n, n_feat = 200, 64
    ours = sl.explain(model, one, "lime", target=t, n_samples=n)["lime"].attributions
    z = lime_coalitions(n, n_feat, seed=0)

    def perturb(original, **kwargs):
        for row in z:
            yield row[None].long().to(original.device)

    mask = default_feature_mask(one, "grid", n_feat)[:, None]
    theirs = captum_lime(module, perturb)(n_feat).attribute(
        one, baselines=0.0, target=t, feature_mask=mask, n_samples=n, perturbations_per_eval=50
    )
    lime_agree = compare(ours, theirs)

    m = 4
    ours = sl.explain(model, one, "kernelshap", target=t, n_segments=m)["kernelshap"]
    proper = [c for c in itertools.product([0, 1], repeat=m) if 0 < sum(c) < m]
    rows = [[1] * m, [0] * m] + [c for c in proper for _ in range(1 if sum(c) == 2 else 2)]

    def kernel_rows(original, **kwargs):
        for row in rows:
            yield torch.tensor([row], device=original.device)

    ks = KernelShap(module)
    ks.perturb_func = kernel_rows
    mask = default_feature_mask(one, "grid", m)[:, None]
    theirs = ks.attribute(one, baselines=0.0, target=t, feature_mask=mask, n_samples=len(rows))
    ks_agree = compare(ours.attributions, theirs)
    return {
        "lime": Agreement(
            "lime, same coalitions: max rel err", lime_agree["max_rel_err"], EXACT_TOL
        ),
        "kernelshap": Agreement(
            "kernelshap, exact on 2x2: max rel err", ks_agree["max_rel_err"], EXACT_TOL
        ),
    }


def per_feature(attr: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, F) value of each feature: the attribution at its first pixel (values are constant)."""
    b, f = mask.shape[0], int(mask.max()) + 1
    flat = mask.flatten(1)
    first = torch.full((b, f), flat.shape[1], dtype=torch.long).scatter_reduce(
        1, flat, torch.arange(flat.shape[1]).expand(b, -1), reduce="amin"
    )
    return attr[:, 0].flatten(1).gather(1, first).double()


def cheap_model() -> torch.nn.Module:
    """An almost free classifier on the same inputs: what is left of a run is the method's own
    machinery (sampling, building inputs, weights, the fit), i.e. its overhead per sample."""
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(), torch.nn.Linear(48, 1000)
    ).eval()


def compare_methods(label, model, x, target, mask, args, sync) -> tuple[dict, list[Agreement]]:
    """Time ours, Captum (best perturbations_per_eval) and the forward floor for both methods;
    the deterministic agreement checks on this model gate each method's ratios."""
    from captum.attr import KernelShap

    module = model.module
    n, b = args.samples, x.shape[0]
    n_feat = int(mask.max()) + 1
    exact = exact_checks(model, x, target)
    for a in exact.values():
        log(f"[{label}] deterministic agreement, {a.text()}")
    sweep = best_ppe(module, x, target, mask)
    ppe = min(sweep, key=sweep.get)
    log(
        f"[{label}] captum perturbations_per_eval sweep (s/sample): "
        + ", ".join(f"{k}: {v * 1e3:.2f} ms" for k, v in sweep.items())
        + f" -> {ppe}"
    )
    opts = {"n_samples": n, "n_segments": args.segments}

    def ours(method):
        def run():
            return sl.explain(model, x, method, target=target, chunk_size=args.chunk_size, **opts)[
                method
            ]

        return run

    common = {"baselines": 0.0, "target": target, "feature_mask": mask, "n_samples": n}
    peers = {
        "kernelshap": lambda: KernelShap(module).attribute(x, perturbations_per_eval=ppe, **common),
        "lime": lambda: captum_lime(module)(n_feat).attribute(
            x, perturbations_per_eval=ppe, **common
        ),
    }
    defaults = {  # Captum as documented: perturbations_per_eval=1 (its default)
        "kernelshap": lambda: KernelShap(module).attribute(x, **common),
        "lime": lambda: captum_lime(module)(n_feat).attribute(x, **common),
    }
    results = {"captum_ppe_sweep_s_per_sample": sweep, "captum_ppe": ppe}
    full_mask = mask.expand(b, -1, -1, -1)[:, 0].cpu()
    for method, peer in peers.items():
        # Untimed warm-up of ours until the chunk search is closed; its passes give the chunk
        # size (the batch size most rows ran at) and the layout for the floor.
        passes, _ = settle(ours(method), module)
        sizes = Counter(k for k, _ in passes.calls)
        chunk = max(sizes, key=lambda k: k * sizes[k])
        nhwc = passes.ran_channels_last()
        # The forwards ours runs: the distinct coalitions per image (every image has the same
        # features and seed, so the same coalitions); Captum runs every drawn one.
        z = (
            sampled_coalitions(n, n_feat, seed=0)
            if method == "kernelshap"
            else lime_coalitions(n, n_feat, seed=0)
        )
        distinct = len(torch.unique(z, dim=0)) + (2 if method == "kernelshap" else 0)
        rows = b * distinct
        cs = [
            Contender("ours", ours(method)),  # + one plain call after settle's hooked ones
            Contender("captum", peer),
            Contender(
                "floor",  # warms itself up (one untimed forward per call)
                lambda r=rows, c=chunk, cl=nhwc: forward_floor(module, x, r, c, sync, nhwc=cl),
                self_timed=True,
                warmup=0,
            ),
        ]
        if ppe != 1 and args.captum_default:
            cs.insert(2, Contender("captum default", defaults[method]))
        log(f"[{label}] {method}:")
        measure(cs, args.repeats, sync, log)
        t = {c.name: c.median for c in cs}
        ours_f = per_feature(cs[0].last.attributions.cpu(), full_mask)
        corr = mean_corr(ours_f, per_feature(cs[1].last.cpu(), full_mask))
        by = {c.name: c for c in cs}
        gate = [exact[method]]
        res = {
            "clock": harness.CLOCK,
            "seconds": t,
            "captum_ppe": ppe,
            "speedup_vs_captum": valid_ratio(paired(cs[1], cs[0]), gate),
            "speedup_vs_captum_default": valid_ratio(
                paired(by.get("captum default", cs[1]), cs[0]), gate
            ),
            "ours_over_floor": valid_ratio(paired(cs[0], by["floor"]), gate),
            "floor_channels_last": nhwc,
            "forwards_per_image": cs[0].last.forwards,
            "captum_forwards_per_image": n + (2 if method == "kernelshap" else 0),
            "engine_chunk": chunk,
            "corr_with_captum": corr,
            "agreement": exact[method].as_dict(),
        }

        def x_(v):
            return "None" if v is None else f"{v:.2f}x"

        line = (
            f"  captum(ppe {ppe})/ours {x_(res['speedup_vs_captum'])}, captum(default ppe 1)/"
            f"ours {x_(res['speedup_vs_captum_default'])}, ours/floor "
            f"{x_(res['ours_over_floor'])} (floor {'channels-last' if nhwc else 'NCHW'}), "
            f"forwards/image ours {res['forwards_per_image']:.0f} vs captum "
            f"{res['captum_forwards_per_image']}, corr with captum {corr:.3f} (not a gate); "
            f"{exact[method].text()}"
        )
        if args.self_check:
            again = sl.explain(model, x, method, target=target, seed=1, **opts)[method]
            res["corr_ours_seed0_vs_seed1"] = mean_corr(
                ours_f, per_feature(again.attributions.cpu(), full_mask)
            )
            line += f", ours seed 0 vs seed 1 {res['corr_ours_seed0_vs_seed1']:.3f}"
        log(line)
        results[method] = res
    return results, list(exact.values())


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--segments", type=int, default=64, help="grid cells (features)")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--chunk-size", type=int, default=None, help="our rows per forward (default: measured)"
    )
    p.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall time, or process CPU time for a shared machine (sets OMP_WAIT_POLICY=PASSIVE)",
    )
    p.add_argument(
        "--models", default="lite0,cheap", help="lite0, cheap (overhead only) and/or shapes"
    )
    p.add_argument("--self-check", action="store_true", help="ours with seed 1 vs seed 0")
    p.add_argument(
        "--no-captum-default",
        dest="captum_default",
        action="store_false",
        help="skip Captum at its default perturbations_per_eval=1 (when that is not its best)",
    )
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "out"))
    harness.add_malloc_option(p)
    args = p.parse_args(argv)
    harness.use_clock(args.clock)
    print(harness.use_malloc(args), flush=True)

    start = time.perf_counter()
    device = torch.device(args.device)
    sync = make_sync(device)
    wanted = args.models.split(",")
    unknown = set(wanted) - {"lite0", "cheap", "shapes"}
    if unknown:
        p.error(f"unknown --models {', '.join(sorted(unknown))}; choose lite0, cheap, shapes")
    names = [IMAGES[i % len(IMAGES)] for i in range(args.images)]
    cases = []  # (label, model, inputs)
    if "lite0" in wanted or "cheap" in wanted:
        model = sl.load_model(MODEL).to(device)
        x = torch.cat([model.preprocess(sl.sample_image(n)) for n in names]).to(device)
        if "lite0" in wanted:
            cases.append((MODEL, model, x))
        if "cheap" in wanted:
            cases.append(("cheap", sl.Model(cheap_model().to(device)), x))
    if "shapes" in wanted:
        shapes, xs, _ = harness.benchmark_inputs("shapes_cnn", args.images)
        cases.append(("shapes_cnn", shapes.to(device), xs.to(device)))
    results, agreements = {}, []
    for label, m, x in cases:
        with torch.no_grad():  # not inference_mode: Captum runs autograd-tracked ops on the target
            target = m.module.eval()(x).argmax(1)
        mask = default_feature_mask(x[:1], "grid", args.segments)[:, None]
        log(
            f"[{label}] {x.shape[0]} images {tuple(x.shape[1:])}, {int(mask.max()) + 1} grid "
            f"features, {args.samples} samples, {device}, {torch.get_num_threads()} threads, "
            f"{args.clock} clock"
        )
        results[label], checks = compare_methods(label, m, x, target, mask, args, sync)
        agreements += checks
    out = {
        "settings": {
            **vars(args),
            "images_used": names,
            "torch_threads": torch.get_num_threads(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
        },
        "results": results,
        "agreements": [a.as_dict() for a in agreements],
        "wall_s": time.perf_counter() - start,
    }
    out["exit_status"] = exit_status(agreements)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "surrogates.json").write_text(json.dumps(out, indent=2))
    log(f"wrote {Path(args.out) / 'surrogates.json'} in {out['wall_s']:.0f} s")
    return out


if __name__ == "__main__":
    sys.exit(main()["exit_status"])
