"""Feature visualization on EfficientNet-Lite0: its cost over the floor, and batching.

    .venv/bin/python benchmarks/featurevis.py [--steps 256] [--segment 32] [--size 224]
                                              [--batch-steps 64] [--threads N] [--device cpu]
    .venv/bin/python benchmarks/featurevis.py --gallery docs/images/featurevis_gallery.png

1. One class visualization (batch 1, `--steps` steps, `--size` pixels, param "fft", the default
   transforms) against its floor: `--steps` plain forward + `torch.autograd.grad` passes of the
   same model on a batch of the same shape, parameters frozen. Target (issue 5): <= 1.2x.
2. A batch of 8 objectives (8 classes, one image each) against one objective, `--batch-steps`
   steps each: the cost per image must be lower with the batch. Each is also compared with its
   own floor (plain passes of the whole batch at once). `visualize` times its first steps to pick
   how many images go through the model at once (`chunk`); the size it settles on is reported.

On a shared, loaded machine the load drifts by tens of percent within a minute, so the runs are
cut into segments of `--segment` steps, and the contenders take turns segment by segment (order
rotated): each visualize segment continues the same images (`param=` an ImageParam), so the
segments add up to one run of `--steps` steps, each paying the call's setup again (which makes
the ratio slightly pessimistic). Reported: total time over total time, and the median of the
per-segment ratios; wall time and this process's CPU time (with one thread, CPU time is the
steadier). Compare ratios from one run, not seconds across runs.
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
from saliencelab.featurevis.param import make_param
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


class Run:
    """Segments of one visualization: each call optimises the same images `segment` more steps."""

    def __init__(self, model: sl.Model, classes, size: int, param: str, segment: int) -> None:
        self.model, self.segment, self.size = model, segment, size
        self.objs = [O.class_logit(c) for c in classes]
        self.param = make_param(param, len(classes), size).to(model.device)
        self.chunk: int | None = None
        self.last = None

    def __call__(self):
        self.last = visualize(
            self.model,
            self.objs,
            steps=self.segment,
            size=self.size,
            param=self.param,
            chunk=self.chunk,
            progress=False,
        )
        self.chunk = self.last.chunk  # found in the first (untimed) segment, kept after
        return self.last


def timed(fn: Callable[[], object], sync: Callable[[], None]) -> tuple[float, float]:
    gc.collect()
    sync()
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    sync()
    return time.perf_counter() - wall, time.process_time() - cpu


def take_turns(
    contenders: dict[str, Callable[[], object]], segments: int, sync: Callable[[], None]
) -> dict[str, dict[str, list[float]]]:
    """One untimed warm-up segment each, then `segments` timed ones, contenders taking turns."""
    names = list(contenders)
    for name in names:
        contenders[name]()
    times = {n: {"wall": [], "cpu": []} for n in names}
    for r in range(segments):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            wall, cpu = timed(contenders[name], sync)
            times[name]["wall"].append(wall)
            times[name]["cpu"].append(cpu)
        print(
            f"  segment {r + 1}/{segments}: "
            + ", ".join(f"{n} {times[n]['wall'][-1]:.2f}s" for n in names),
            flush=True,
        )
    return times


def ratios(times, a: str, b: str, scale: float = 1.0) -> dict[str, float]:
    """a / (scale * b): total over total, and the median of per-segment ratios; wall and CPU."""
    out = {}
    for kind in ("wall", "cpu"):
        xs, ys = times[a][kind], times[b][kind]
        out[f"total_{kind}"] = sum(xs) / (scale * sum(ys))
        out[f"median_{kind}"] = statistics.median(
            x / (scale * y) for x, y in zip(xs, ys, strict=True)
        )
    return out


def _show(r: dict[str, float]) -> str:
    return (
        f"{r['total_wall']:.3f} wall, {r['total_cpu']:.3f} CPU (totals); "
        f"{r['median_wall']:.3f} wall, {r['median_cpu']:.3f} CPU (median of segments)"
    )


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
    ap.add_argument("--segment", type=int, default=32)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch-steps", type=int, default=64)
    ap.add_argument("--batch-segment", type=int, default=8)
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
    report: dict = {"device": where, "size": args.size, "param": args.param}
    report["torch"] = torch.__version__

    # 1. One class, against its floor.
    seg = args.segment
    n_seg = max(1, args.steps // seg)
    print(f"1. one class visualization, {n_seg * seg} steps in segments of {seg}, vs plain passes")
    one = Run(model, CLASSES[:1], args.size, args.param, seg)
    t1 = take_turns(
        {"visualize": one, "floor": floor_passes(model, 1, args.size, seg, sync)}, n_seg, sync
    )
    with torch.no_grad():
        p = float(model(norm(one.last.images)).softmax(1)[0, labels.index(CLASSES[0])])
    r1 = ratios(t1, "visualize", "floor")
    report["one_class"] = {"steps": n_seg * seg, "segment": seg, "ratio": r1, "times": t1}
    report["one_class"]["probability_of_class"] = p
    print(f"   visualize / floor: {_show(r1)}; target <= {TARGET_RATIO}")
    print(f"   P({CLASSES[0]}) = {p:.3f} after {(n_seg + 1) * seg} steps")

    # 2. A batch of 8 objectives against one.
    seg = args.batch_segment
    n_seg = max(1, args.batch_steps // seg)
    print(
        f"2. 8 objectives in one batch vs one objective, {n_seg * seg} steps in segments of {seg}"
    )
    b1 = Run(model, CLASSES[:1], args.size, args.param, seg)
    b8 = Run(model, CLASSES, args.size, args.param, seg)
    t2 = take_turns(
        {
            "batch1": b1,
            "batch8": b8,
            "floor1": floor_passes(model, 1, args.size, seg, sync),
            "floor8": floor_passes(model, 8, args.size, seg, sync),
        },
        n_seg,
        sync,
    )
    with torch.no_grad():
        top = model(norm(b8.last.images)).argmax(1).tolist()
    hits = sum(labels[t] == c for t, c in zip(top, CLASSES, strict=True))
    batch = {
        "steps": n_seg * seg,
        "segment": seg,
        "per_image_8_over_1": ratios(t2, "batch8", "batch1", scale=8.0),
        "batch1_over_floor1": ratios(t2, "batch1", "floor1"),
        "batch8_over_floor8": ratios(t2, "batch8", "floor8"),
        "floor8_per_image_over_floor1": ratios(t2, "floor8", "floor1", scale=8.0),
        "chunk": b8.chunk,
        "batch8_top1_is_requested": hits,
        "times": t2,
    }
    report["batch_of_8"] = batch
    print(f"   per image, batch of 8 / batch of 1: {_show(batch['per_image_8_over_1'])}")
    print(f"   batch 1 / its floor: {_show(batch['batch1_over_floor1'])}")
    print(f"   batch 8 / its floor: {_show(batch['batch8_over_floor8'])}")
    print(f"   floor per image, 8 / 1: {_show(batch['floor8_per_image_over_floor1'])}")
    print(f"   chunk found for the batch of 8: {b8.chunk}; top-1 = requested class for {hits}/8")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
