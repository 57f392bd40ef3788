"""Feature visualization on EfficientNet-Lite0: its cost over the floor, and batching.

    .venv/bin/python benchmarks/featurevis.py [--steps 256] [--size 224] [--batch-steps 32]
                                              [--repeats 2] [--threads N] [--device cpu]
    .venv/bin/python benchmarks/featurevis.py --gallery docs/images/featurevis_gallery.png

1. One class visualization (batch 1, `--steps` steps, `--size` pixels, param "fft", the default
   transforms) against its floor: `--steps` plain forward + `torch.autograd.grad` passes of the
   same model on a batch of the same shape, parameters frozen. Target (issue 5): <= 1.2x.
2. A batch of 8 objectives (8 classes, one image each) against one objective, each for
   `--batch-steps` steps: the cost per image must be lower with the batch. Each is also compared
   with its own floor (plain passes of the whole batch at once). `visualize` times its first
   steps to pick how many images go through the model at once (`chunk`); the one it settled on
   is reported.

Contenders are timed interleaved (each repeat runs every contender once, order rotated), and the
ratio is the median over repeats of the ratio within a repeat. Wall time and this process's CPU
time are both reported: with one thread on a shared, loaded machine, CPU time is the steadier
measure. Compare ratios from one run, not seconds across runs.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

import saliencelab as sl
from saliencelab.featurevis import objectives as O
from saliencelab.featurevis import visualize
from saliencelab.featurevis.visualize import default_normalize

CLASSES = (
    "Egyptian cat",
    "espresso",
    "goldfish",
    "volcano",
    "daisy",
    "lemon",
    "pizza",
    "zebra",
)
TARGET_RATIO = 1.2
#: Channels drawn in the README gallery: one per depth, channel 7 of each.
GALLERY_CHANNELS = (
    ("_blocks.4", 7),
    ("_blocks.8", 7),
    ("_blocks.10", 7),
    ("_blocks.12", 7),
    ("_blocks.14", 7),
)


def _sync(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def floor_passes(
    model: sl.Model, n: int, size: int, steps: int, sync: Callable[[], None]
) -> Callable[[], None]:
    """`steps` forward + autograd.grad passes on an (n, 3, size, size) batch, weights frozen."""
    module = model.module
    x = torch.rand(n, 3, size, size, device=model.device) * 2 - 1
    idx = torch.arange(n, device=model.device)

    def run() -> None:
        flags = [p.requires_grad for p in module.parameters()]
        for p in module.parameters():
            p.requires_grad_(False)
        try:
            for _ in range(steps):
                xi = x.detach().requires_grad_(True)
                score = module(xi)[idx, idx].sum()
                torch.autograd.grad(score, xi)
            sync()
        finally:
            for p, f in zip(module.parameters(), flags, strict=True):
                p.requires_grad_(f)

    return run


def timed(fn: Callable[[], object], sync: Callable[[], None]) -> tuple[float, float, object]:
    gc.collect()
    sync()
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    sync()
    return time.perf_counter() - wall, time.process_time() - cpu, out


def interleaved(
    contenders: dict[str, Callable[[], object]], repeats: int, sync: Callable[[], None]
) -> dict[str, dict[str, list[float]]]:
    names = list(contenders)
    times = {n: {"wall": [], "cpu": []} for n in names}
    results = {}
    for r in range(repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            wall, cpu, out = timed(contenders[name], sync)
            times[name]["wall"].append(wall)
            times[name]["cpu"].append(cpu)
            results[name] = out
        print(
            f"  repeat {r + 1}/{repeats}: "
            + ", ".join(f"{n} {times[n]['wall'][-1]:.1f}s wall" for n in names),
            flush=True,
        )
    times["_results"] = results  # type: ignore[assignment]
    return times


def ratio(times, a: str, b: str, kind: str, scale: float = 1.0) -> float:
    pairs = zip(times[a][kind], times[b][kind], strict=True)
    return statistics.median(x / (y * scale) for x, y in pairs)


def gallery(path: str, steps: int, size: int, device: torch.device, tile: int = 150) -> None:
    """The README picture: five classes with "fft" and with "maco", and five channels."""
    from PIL import Image

    from saliencelab.neurons.grid import Tile, draw_grid

    model = sl.load_model("efficientnet_lite0").to(device)
    labels = list(model.labels)
    norm = default_normalize(model)
    classes = CLASSES[:5]
    tiles = []
    rows = [
        ("fft", [O.class_logit(c) for c in classes]),
        ("maco", [O.class_logit(c) for c in classes]),
        ("fft", [O.channel(layer, c) for layer, c in GALLERY_CHANNELS]),
    ]
    for i, (param, objs) in enumerate(rows):
        start = time.perf_counter()
        v = visualize(model, objs, steps=steps, size=size, param=param, progress=True)
        print(f"row {i + 1}: {param}, {time.perf_counter() - start:.0f} s", flush=True)
        with torch.no_grad():
            probs = model(norm(v.images)).softmax(1)
        for j in range(len(objs)):
            img = v.pil(j).resize((tile, tile), Image.Resampling.LANCZOS)
            if i < 2:
                p = float(probs[j, labels.index(classes[j])])
                lines = [classes[j], f"{param} · P = {p:.2f}"]
            else:
                layer, c = GALLERY_CHANNELS[j]
                lines = [f"{layer} ch {c}", param]
            tiles.append(Tile(img, lines))
    picture = draw_grid(
        tiles,
        columns=5,
        title="EfficientNet-Lite0: what maximises a class logit or a channel",
        subtitle=f"{size}x{size}, {steps} steps, seed 0; P = the model's probability of the class "
        "on the image",
    )
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    # A 256-colour palette keeps the README picture small (~330 KB instead of ~900 KB).
    picture = picture.quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    picture.save(out, format="PNG", optimize=True)
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KB)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=256)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch-steps", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--param", default="fft")
    ap.add_argument("--out", default=str(Path(__file__).parent / "out" / "featurevis.json"))
    ap.add_argument("--gallery", default=None, help="Render the README gallery PNG instead.")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.gallery:
        gallery(args.gallery, args.steps, args.size, device)
        return
    sync = _sync(device)
    model = sl.load_model("efficientnet_lite0").to(device)
    labels = list(model.labels)
    norm = default_normalize(model)
    where = f"{device}" + (f", {torch.get_num_threads()} threads" if device.type == "cpu" else "")
    if device.type == "cuda":
        where += f", {torch.cuda.get_device_name(device)}"
    print(f"EfficientNet-Lite0, {args.size}x{args.size}, param {args.param}, {where}")

    def vis(classes, steps):
        return lambda: visualize(
            model,
            [O.class_logit(c) for c in classes],
            steps=steps,
            size=args.size,
            param=args.param,
            progress=False,
        )

    report: dict = {
        "device": where,
        "size": args.size,
        "param": args.param,
        "torch": torch.__version__,
    }

    # 1. One class, full run, against its floor.
    print(f"1. one class visualization, {args.steps} steps, vs {args.steps} plain passes")
    t1 = interleaved(
        {
            "visualize": vis(CLASSES[:1], args.steps),
            "floor": floor_passes(model, 1, args.size, args.steps, sync),
        },
        args.repeats,
        sync,
    )
    v = t1["_results"]["visualize"]
    with torch.no_grad():
        p = model(norm(v.images)).softmax(1)[0, labels.index(CLASSES[0])]
    one = {
        "steps": args.steps,
        "visualize_wall_s": t1["visualize"]["wall"],
        "floor_wall_s": t1["floor"]["wall"],
        "visualize_cpu_s": t1["visualize"]["cpu"],
        "floor_cpu_s": t1["floor"]["cpu"],
        "ratio_wall": ratio(t1, "visualize", "floor", "wall"),
        "ratio_cpu": ratio(t1, "visualize", "floor", "cpu"),
        "probability_of_class": float(p),
    }
    report["one_class"] = one
    print(
        f"   visualize / floor: {one['ratio_wall']:.3f} wall, {one['ratio_cpu']:.3f} CPU "
        f"(target <= {TARGET_RATIO}); P({CLASSES[0]}) = {float(p):.3f}"
    )

    # 2. A batch of 8 objectives against one.
    s = args.batch_steps
    print(f"2. 8 objectives in one batch vs one objective, {s} steps each")
    t2 = interleaved(
        {
            "batch1": vis(CLASSES[:1], s),
            "batch8": vis(CLASSES, s),
            "floor1": floor_passes(model, 1, args.size, s, sync),
            "floor8": floor_passes(model, 8, args.size, s, sync),
        },
        args.repeats,
        sync,
    )
    v8 = t2["_results"]["batch8"]
    with torch.no_grad():
        top = model(norm(v8.images)).argmax(1).tolist()
    batch = {
        "steps": s,
        "per_image_8_over_1_wall": ratio(t2, "batch8", "batch1", "wall", scale=8.0),
        "per_image_8_over_1_cpu": ratio(t2, "batch8", "batch1", "cpu", scale=8.0),
        "batch1_over_floor_cpu": ratio(t2, "batch1", "floor1", "cpu"),
        "batch8_over_floor_cpu": ratio(t2, "batch8", "floor8", "cpu"),
        "batch1_over_floor_wall": ratio(t2, "batch1", "floor1", "wall"),
        "batch8_over_floor_wall": ratio(t2, "batch8", "floor8", "wall"),
        "times": {k: t2[k] for k in ("batch1", "batch8", "floor1", "floor8")},
        "batch8_top1_is_requested": [labels[t] == c for t, c in zip(top, CLASSES, strict=True)],
        "batch8_chunk": v8.chunk,
    }
    report["batch_of_8"] = batch
    print(
        f"   per image, batch of 8 / batch of 1: {batch['per_image_8_over_1_wall']:.3f} wall, "
        f"{batch['per_image_8_over_1_cpu']:.3f} CPU (target < 1)"
    )
    print(
        f"   over floor: batch 1 {batch['batch1_over_floor_cpu']:.3f}, batch 8 "
        f"{batch['batch8_over_floor_cpu']:.3f} (CPU); top-1 = requested class for "
        f"{sum(batch['batch8_top1_is_requested'])}/8 after {s} steps; chunk found: {v8.chunk}"
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
