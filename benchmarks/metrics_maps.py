"""Localisation and complexity metrics: saliencelab against Quantus 0.6.0 on the same maps.

    .venv/bin/python benchmarks/metrics_maps.py [--maps 64] [--sizes 224,64] [--repeats 3]
        [--clock cpu] [--threads 1] [--out benchmarks/out/metrics_maps.json]

These metrics run no model (their floor is zero forwards), so the comparison is the cost of
the scoring itself: for each map size, the same (N, H, W) maps (smooth random fields, no
ties; float32 for us, float64 for Quantus so that agreement shows the formulas, not float32
round-off) and the same masks (random boxes through `boxes_to_masks`; for Focus, the quadrant
masks of `make_mosaics`) are scored by

- `ours`: the metric object as a user calls it, `sl.metrics.get(name)(**params)(maps, masks=..)`
  (input checks included);
- `quantus`: the Quantus metric called as a user calls it, with the settings that compute the
  same number (`normalise=False`, `abs=False` for localisation, `abs=True` for complexity; a
  tiny linear model and zero inputs are passed because Quantus requires them, and are not
  run). Most of its time is its input check `assert_attributions`, which builds a Python set
  of every attribution value;
- `quantus_core`: Quantus' vectorised NumPy formula alone (`metric.evaluate_batch`), without
  those checks, against `ours_core`: our formula alone (`Metric.score` on a batch built and
  checked beforehand): the comparison of the computation itself;

timed interleaved (`harness.measure`, median over repeats, each contender warmed up by the
same one untimed call) with the process CPU clock by default (the machine is shared). Reported
per metric: Quantus / ours and Quantus core / ours core (median of per-repeat ratios,
`harness.paired`) and the agreements.

Agreement gates the ratios: the per-sample values of `quantus`, `quantus_core` and `ours_core`
against `ours`, each max |diff| ≤ `TOL` (`harness.max_abs_agreement`: NaN on one side only
fails, and so does NaN everywhere; NaN on both sides, a value both leave undefined, is
allowed). Each check is printed with its verdict and kept in the JSON; both ratios of a metric
are None where any of its checks fails (`harness.valid_ratio`), and the script exits 1
(`harness.exit_status`). The pointing game is compared at tolerance 0 (Quantus has no
tolerance); ours at the paper's 15 pixels is timed too.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (  # noqa: E402
    Agreement,
    Contender,
    add_malloc_option,
    exit_status,
    make_sync,
    max_abs_agreement,
    measure,
    paired,
    use_clock,
    use_malloc,
    valid_ratio,
)

import saliencelab as sl  # noqa: E402
from saliencelab.metrics import make_batch  # noqa: E402
from saliencelab.metrics.localisation import boxes_to_masks, make_mosaics  # noqa: E402

# (our name, our params, Quantus class name, Quantus params, masks kind)
CASES = [
    ("pointing_game", {"tolerance": 0}, "PointingGame", {}, "boxes"),
    ("relevance_mass", {"part": "signed"}, "RelevanceMassAccuracy", {}, "boxes"),
    ("relevance_rank", {}, "RelevanceRankAccuracy", {}, "boxes"),
    ("top_k_intersection", {"k": 0.02}, "TopKIntersection", {"k": "2%"}, "boxes"),
    ("roc_auc", {}, "AUC", {}, "boxes"),
    ("focus", {}, "Focus", {}, "mosaic"),
    ("sparseness", {}, "Sparseness", {}, None),
    ("entropy", {}, "Complexity", {}, None),
    ("effective_complexity", {"relative": False, "eps": 0.05}, "EffectiveComplexity",
     {"eps": 0.05}, None),
]  # fmt: skip


def smooth_maps(n: int, size: int, seed: int) -> torch.Tensor:
    """Signed random fields smoothed by a box blur (tie-free, spatially coherent)."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn((n, 1, size, size), generator=g)
    k = max(3, size // 16) | 1
    return F.avg_pool2d(noise, k, stride=1, padding=k // 2, count_include_pad=False)[:, 0]


def random_boxes(n: int, size: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    wh = (torch.rand((n, 2), generator=g) * 0.4 + 0.15) * size
    xy = torch.rand((n, 2), generator=g) * (size - wh)
    return torch.cat([xy, xy + wh], dim=1)


# Max |diff| of the per-sample values: ours in float32, Quantus in float64 (the same formulas).
TOL = 1e-5


def agreements_of(ours: np.ndarray, others: dict[str, np.ndarray]) -> list[Agreement]:
    """Each other contender's per-sample values against ours (NaN-aware, see `Agreement`)."""
    return [
        max_abs_agreement(
            np.asarray(ours, dtype=np.float64),
            np.asarray(v, dtype=np.float64),
            TOL,
            f"max |{k} − ours|",
        )
        for k, v in others.items()
    ]


def fmt(ratio: float | None, spec: str) -> str:
    return "None" if ratio is None else format(ratio, spec)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--maps", type=int, default=64)
    parser.add_argument("--sizes", default="224,64")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    add_malloc_option(parser)
    parser.add_argument("--out", default="benchmarks/out/metrics_maps.json")
    args = parser.parse_args(argv)
    use_clock(args.clock)
    torch.set_num_threads(args.threads)
    print(use_malloc(args), flush=True)
    import quantus

    sync = make_sync(torch.device("cpu"))
    results: dict[str, dict] = {}
    every: list[Agreement] = []
    for size in [int(s) for s in args.sizes.split(",")]:
        n = args.maps
        maps = smooth_maps(n, size, seed=size)
        box_masks = boxes_to_masks(random_boxes(n, size, seed=size + 1), size)
        labels = torch.arange(4 * n) % 8
        mos = make_mosaics(torch.zeros(4 * n, 1, size // 2, size // 2), labels, n=n, seed=size)
        model = nn.Sequential(nn.Flatten(), nn.Linear(size * size, 4))
        x_np = np.zeros((n, 1, size, size), dtype=np.float32)
        y_np = np.zeros(n, dtype=np.int64)
        a_np = maps[:, None].numpy().astype(np.float64)  # Quantus at its most precise
        print(f"{n} maps of {size}×{size}, clock {args.clock}, threads {args.threads}", flush=True)
        rows = {}
        for name, params, qname, qparams, kind in CASES:
            qparams = dict(qparams)
            if qparams.get("k") == "2%":
                qparams["k"] = round(0.02 * size * size)
            masks = {"boxes": box_masks, "mosaic": mos.masks, None: None}[kind]
            metric = sl.metrics.get(name)(**params)
            complexity = kind is None
            qmetric = getattr(quantus, qname)(
                normalise=False, abs=complexity, disable_warnings=True, **qparams
            )
            extra: dict = {}
            core: dict = {"x_batch": x_np}
            if kind == "boxes":
                extra["s_batch"] = masks[:, None].numpy().astype(np.float32)
                core["s_batch"] = extra["s_batch"]
            if kind == "mosaic":
                extra["custom_batch"] = mos.quadrants.numpy().astype(int)
                core["c_batch"] = extra["custom_batch"]

            def ours(metric=metric, maps=maps, masks=masks):
                return metric(maps, masks=masks).values.numpy()

            def ours_core(metric=metric, batch=make_batch(maps, masks=masks)):
                # The formula alone (`Metric.score` on a checked batch), like quantus_core.
                return metric.score(batch).values.numpy()

            def peer(qmetric=qmetric, extra=extra, arrays=(model, x_np, y_np, a_np, n)):
                model, x_np, y_np, a_np, n = arrays
                out = qmetric(model=model, x_batch=x_np, y_batch=y_np, a_batch=a_np.copy(),
                              device="cpu", batch_size=n, **extra)  # fmt: skip
                return np.asarray(out, dtype=np.float64)

            def peer_core(qmetric=qmetric, core=core, a_np=a_np, complexity=complexity):
                # Quantus' vectorised formula alone, without its input checks (abs applied as
                # its preprocessing would; some of its cores write into a_batch, hence copies).
                a = np.abs(a_np) if complexity else a_np.copy()
                return np.asarray(qmetric.evaluate_batch(a_batch=a, **core), dtype=np.float64)

            contenders = [
                Contender("ours", ours),
                Contender("quantus", peer),
                Contender("quantus_core", peer_core),
                Contender("ours_core", ours_core),
            ]
            if name == "pointing_game":
                pg15 = sl.metrics.get(name)(tolerance=15)
                contenders.append(
                    Contender(
                        "ours_tol15",
                        lambda pg15=pg15, maps=maps, masks=masks: pg15(maps, masks=masks).values,
                    )
                )
            measure(contenders, args.repeats, sync, log=lambda s: None)
            o, q, qc, oc = contenders[:4]
            checks = agreements_of(
                o.last, {"quantus": q.last, "quantus_core": qc.last, "ours_core": oc.last}
            )
            every += checks
            finite = np.isfinite(np.asarray(o.last, dtype=np.float64))
            row = {
                "quantus": qname,
                "ours_s": o.median,
                "quantus_s": q.median,
                "quantus_core_s": qc.median,
                "ours_core_s": oc.median,
                "quantus_over_ours": valid_ratio(paired(q, o), checks),
                "quantus_core_over_ours_core": valid_ratio(paired(qc, oc), checks),
                "max_abs_diff": max(a.diff for a in checks),
                "agreements": [a.as_dict() for a in checks],
                "ok": all(a.ok for a in checks),
                "mean_value": float(np.asarray(o.last)[finite].mean()) if finite.any() else None,
            }
            if len(contenders) > 4:
                row["ours_tol15_s"] = contenders[4].median
            rows[name] = row
            tol15 = f"  (ours, tolerance 15: {row['ours_tol15_s'] * 1e3:.1f} ms)" if len(
                contenders) > 4 else ""  # fmt: skip
            print(
                f"  {name:21s} ours {o.median * 1e3:7.1f} ms  quantus {q.median * 1e3:7.1f} ms "
                f"| cores: ours {oc.median * 1e3:6.1f} ms quantus {qc.median * 1e3:6.1f} ms{tol15}",
                flush=True,
            )
            for a in checks:
                print(f"      {a.text()}", flush=True)
        results[f"{size}x{size}"] = rows

    print("\nQuantus / ours (CPU time ratio; higher = ours faster): whole call / formula alone,")
    print("and the max abs difference of the per-sample values (None: a check failed):")
    sizes = list(results)
    print(f"{'metric':22s}" + "".join(f"{s + ' whole / core (diff)':>34s}" for s in sizes))
    for name, *_ in CASES:
        cells = []
        for s in sizes:
            r = results[s][name]
            cells.append(
                f"{fmt(r['quantus_over_ours'], '7.1f')}× / "
                f"{fmt(r['quantus_core_over_ours_core'], '5.1f')}× "
                f"({r['max_abs_diff']:.0e}{'' if r['ok'] else ' DISAGREE'})"
            )
        print(f"{name:22s}" + "".join(f"{c:>34s}" for c in cells))
    out = {
        "settings": {
            "maps": args.maps,
            "sizes": sizes,
            "repeats": args.repeats,
            "clock": args.clock,
            "threads": args.threads,
            "quantus": quantus.__version__ if hasattr(quantus, "__version__") else "0.6.0",
            "torch": torch.__version__,
            "tol": TOL,
        },
        "results": results,
    }
    out["exit_status"] = exit_status(every)
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    print(f"wrote {path}")
    return out


if __name__ == "__main__":
    sys.exit(main()["exit_status"])
