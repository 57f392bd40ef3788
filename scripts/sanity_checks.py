"""Reproduce the sanity-check finding of Adebayo et al. 2018 on EfficientNet-Lite0.

    .venv/bin/python scripts/sanity_checks.py [--photos chelsea,coffee] [--size 224]
        [--methods saliency,gradcam,guided_backprop] [--threads 1] [--doc docs/sanity_checks.md]
        [--figure docs/images/sanity_checks.png]
    .venv/bin/python scripts/sanity_checks.py --doc /tmp/s.md --figure /tmp/s.png  # compare

`--threads` sets torch's thread count (default 1: steady timings; 0 keeps torch's default);
`--doc` and `--figure` are where the page and the figure are written (default: over docs/; the
second line writes them to /tmp to compare with docs/ without overwriting it; the page links
the figure by its file name).

For each photograph and method: the method's map on the trained model, then the maps after
cascading randomisation of the model's blocks from the output down to the stem
(`sl.metrics.get("model_randomisation")(order="cascading", granularity="block")`, 19 steps on
EfficientNet-Lite0, `reset_parameters()` seeded, the explanation recomputed for the originally
predicted class after every step). The metric gives the Spearman rank correlation of every step
with the original map; the maps it recomputes are recorded (an `Explainer` subclass) to compute
|Spearman| and SSIM too and to draw the figure. Writes the Markdown page (table: randomised down
to which block × method, mean over the photographs) and the figure (rows = methods, columns =
the original then each randomisation step, first photograph).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

import saliencelab as sl
from saliencelab.metrics.base import Explainer
from saliencelab.metrics.randomisation import similarity as S
from saliencelab.viz import heatmap
from saliencelab.viz.overlay import crop_to_aspect

ROOT = Path(__file__).resolve().parents[1]
TITLES = {"saliency": "Gradient", "gradcam": "Grad-CAM", "guided_backprop": "Guided backprop"}


class Recording(Explainer):
    """An Explainer that keeps the maps it recomputes, one (B, H, W) block per step: a call may
    explain several steps at once (the batch repeated once per step, in step order)."""

    def __init__(self, method: str, batch: int) -> None:
        super().__init__(method)
        self.batch = batch
        self.recorded: list[torch.Tensor] = []

    def __call__(self, model, x, target):
        out = super().__call__(model, x, target)
        self.recorded.extend(out.maps.detach().cpu().split(self.batch))
        return out


def run(args: argparse.Namespace) -> dict:
    model = sl.load_model("efficientnet_lite0")
    photos = args.photos.split(",")
    images = [sl.sample_image(p) for p in photos]
    x = model.preprocess(images)
    if args.size != x.shape[-1]:
        x = torch.nn.functional.interpolate(x, size=(args.size, args.size), mode="bilinear")
    methods = args.methods.split(",")
    ex = sl.explain(model, x, methods)
    with torch.no_grad():
        target = model(x).argmax(1)
    out: dict = {"photos": photos, "target": target, "methods": {}}
    for method in methods:
        start = time.perf_counter()
        rec = Recording(method, x.shape[0])
        metric = sl.metrics.get("model_randomisation")(order="cascading", similarity="spearman")
        res = metric(ex[method].maps, x=x, model=model, target=target, explainer=rec)
        maps = torch.stack(rec.recorded, dim=1)  # (B, steps, H, W)
        original = ex[method].maps.cpu()
        steps = maps.shape[1]
        flat = maps.flatten(0, 1)
        again = original.repeat_interleave(steps, dim=0)
        out["methods"][method] = {
            "stages": res.params["randomised"],
            "spearman": res.curves,  # (B, steps)
            "spearman_abs": S.spearman_abs(again, flat).view(-1, steps),
            "ssim": S.ssim(again, flat).view(-1, steps),
            "original": original,
            "maps": maps,
        }
        print(f"{method}: {steps} steps in {time.perf_counter() - start:.0f} s", flush=True)
    out["images"] = images
    return out


def _label(draw: ImageDraw.ImageDraw, xy: tuple[int, int], text: str, width: int, font) -> None:
    w = draw.textlength(text, font=font)
    while w > width - 2 and len(text) > 3:
        text = text[:-2] + "…"
        w = draw.textlength(text, font=font)
    draw.text((xy[0] + (width - w) / 2, xy[1]), text, fill=(0, 0, 0), font=font)


def figure(res: dict, path: Path, tile: int = 88) -> None:
    methods = list(res["methods"])
    stages = res["methods"][methods[0]]["stages"]
    cols = 2 + len(stages)  # photo, original, each step
    left, top, gap = 110, 38, 4
    width = left + cols * (tile + gap)
    height = top + len(methods) * (tile + gap) + 8
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    try:
        font = ImageFont.load_default(size=12)
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    photo = crop_to_aspect(res["images"][0], 1, 1).resize((tile, tile))
    heads = ["photo", "original"] + [s.replace("_blocks.", "block ").strip("_") for s in stages]
    draw.text((left + 2 * (tile + gap), 2), "randomised down to (cascading) ->", (0, 0, 0), font)
    for c, head in enumerate(heads):
        _label(draw, (left + c * (tile + gap), 20), head, tile, font)
    for r, method in enumerate(methods):
        y = top + r * (tile + gap)
        _label(draw, (4, y + tile // 2 - 6), TITLES.get(method, method), left - 8, font)
        canvas.paste(photo, (left, y))
        m = res["methods"][method]
        tiles = [m["original"][0]] + list(m["maps"][0].unbind(0))
        for c, t in enumerate(tiles):
            img = heatmap(t.abs(), size=(tile, tile), cmap="heat")
            canvas.paste(img, (left + (c + 1) * (tile + gap), y))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


def finding(res: dict, stages: list[str], keep: float = 0.9) -> str:
    """The finding in words, computed from this run's numbers (ρ: the Spearman correlation with
    the original map, mean over the photographs, after each step). A method's maps count as
    similar while ρ ≥ `keep`; it passes the check when they are no longer similar once the
    classifier is random."""
    names = {"saliency": "gradient", "gradcam": "Grad-CAM", "guided_backprop": "guided backprop"}
    rhos = {}
    for method in names:
        if method in res["methods"]:
            rhos[method] = res["methods"][method]["spearman"].double().nanmean(0).tolist()

    def similar(values: list[float]) -> int:
        """How many steps, from the classifier down, keep ρ ≥ `keep` (NaN: not similar)."""
        return next((i for i, v in enumerate(values) if not v >= keep), len(values))

    text = "**Finding.** As in Adebayo et al.: "
    g, c, gb = rhos.get("saliency"), rhos.get("gradcam"), rhos.get("guided_backprop")
    if g:
        # the plateau: the steps after the first whose ρ stays within 0.1 of the first's
        end = 1 + next((i for i, v in enumerate(g[1:]) if not v >= g[0] - 0.1), len(g) - 1)
        first = "drop to" if not g[0] >= keep else "are still at"
        text += (
            f"the gradient's maps {first} ρ = {g[0]:.2f} as soon as the classifier is random "
            f"(`{stages[0]}`), stay at ρ = {min(g[:end]):.2f} to {max(g[:end]):.2f} while the "
            f"blocks down to `{stages[end - 1]}` are random too, and reach ρ = {g[-1]:.2f} "
            "fully randomised; "
        )
    if c:
        defined = [v for v in c if v == v]
        text += f"Grad-CAM's maps are at ρ = {c[0]:.2f} once the classifier is random"
        if defined:
            text += (
                f" and vary between ρ = {min(defined):.2f} and {max(defined):.2f} over the "
                f"{len(c)} steps"
            )
        if len(defined) < len(c):
            text += f" (undefined at {len(c) - len(defined)}, where every map is constant)"
        text += "; "
    if gb:
        k = similar(gb)
        if k:
            text += (
                f"guided backprop's maps stay similar (ρ ≥ {keep}) while the top {k} of "
                f"{len(stages)} blocks, down to `{stages[k - 1]}`, are random, and only change "
                "when the early blocks that compute the image's edges are re-initialised too "
                f"(ρ = {gb[-1]:.2f} fully randomised): guided backprop mostly reconstructs the "
                "image rather than showing what the trained top of the network uses; "
            )
        else:
            text += (
                f"guided backprop's maps are at ρ = {gb[0]:.2f} once the classifier is random "
                f"and at {gb[-1]:.2f} fully randomised; "
            )
    passes = [names[m] for m, v in rhos.items() if not similar(v)]
    fails = [names[m] for m, v in rhos.items() if similar(v)]
    verdict, check = [], "the sanity check"
    if passes:
        verdict.append(f"{' and '.join(passes)} pass{'' if len(passes) > 1 else 'es'} {check}")
    if fails:
        it = "it" if passes else check
        verdict.append(f"{' and '.join(fails)} fail{'' if len(fails) > 1 else 's'} {it}")
    text = text.removesuffix("; ") + "."
    if verdict:
        text += f" Taking ρ ≥ {keep} as similar, {' and '.join(verdict)}."
    return text


def document(res: dict, path: Path, figure_path: Path, args: argparse.Namespace) -> None:
    methods = list(res["methods"])
    stages = res["methods"][methods[0]]["stages"]
    lines = [
        "# Sanity checks: model-parameter randomisation on EfficientNet-Lite0",
        "",
        "Adebayo et al. 2018 (*Sanity Checks for Saliency Maps*) ask whether a saliency map "
        "depends on what the model learned: re-initialise the model's weights, from the output "
        "layer down (cascading), recompute the map after each step and compare it with the "
        "original. A map that stays the same explains the input (edges), not the model.",
        "",
        f"Here: EfficientNet-Lite0, the photographs {', '.join(res['photos'])} "
        f"({args.size}×{args.size}), each explained for the class the trained model predicts; "
        "the 19 blocks (stem, `_blocks.0` … `_blocks.15`, head, classifier) re-initialised one "
        "after another from the classifier down with their own `reset_parameters()` (seeded). "
        "Values are means over the photographs: Spearman rank correlation (ρ) of the maps, ρ of "
        "their absolute values, and SSIM (Gaussian window 11, σ 1.5, maps min-max normalised). "
        "1 = unchanged; near 0 = unrelated.",
        "",
        "![Maps under cascading randomisation](images/" + figure_path.name + ")",
        "",
        "*Rows: methods; columns: the photo, the original map, then the map after randomising "
        "down to that block (first photograph, |map|, each tile scaled on its own).*",
        "",
    ]
    head = "| randomised down to |"
    rule = "|---|"
    for m in methods:
        t = TITLES.get(m, m)
        head += f" {t} ρ | {t} ρ abs | {t} SSIM |"
        rule += "---:|---:|---:|"
    lines += [head, rule]
    for k, stage in enumerate(stages):
        row = f"| `{stage}` |"
        for m in methods:
            r = res["methods"][m]
            vals = [r[key][:, k].double().nanmean().item() for key in ("spearman", "spearman_abs")]
            vals.append(r["ssim"][:, k].double().nanmean().item())
            row += "".join(f" {v:.2f} |" if v == v else " – |" for v in vals)
        lines.append(row)
    last = {m: res["methods"][m]["spearman"][:, -1].double().nanmean().item() for m in methods}
    summary = ", ".join(f"{TITLES.get(m, m)} ρ = {v:.2f}" for m, v in last.items())
    lines += [
        "",
        f"Fully randomised ({stages[-1]}): {summary}.",
        "",
        finding(res, stages),
        "",
        "Reproduce with:",
        "",
        "```bash",
        ".venv/bin/python scripts/sanity_checks.py --photos " + ",".join(res["photos"]),
        "```",
        "",
        "The same test on any model and method:",
        "",
        "```python",
        "m = sl.metrics.get('model_randomisation')(order='cascading', similarity='ssim')",
        "r = m(maps, x=x, model=model, explainer='guided_backprop')",
        "r.values            # (B,) similarity after the last step (lower = passes)",
        "r.curves            # (B, steps) similarity after each step",
        "r.params['randomised']  # the blocks, in the order they were re-initialised",
        "```",
        "",
        "Definitions and options (block / layer granularity, `layers=k` for the top k blocks, "
        "`order='independent'`, `init='normal'`, `value='mean'`) are in "
        "`src/saliencelab/metrics/randomisation/parameter.py`; the random-logit test (Sixt et "
        "al. 2020) is `sl.metrics.get('random_logit')`.",
        "",
    ]
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", default="chelsea,coffee")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--methods", default="saliency,gradcam,guided_backprop")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steady)")
    parser.add_argument("--doc", default=str(ROOT / "docs" / "sanity_checks.md"))
    parser.add_argument("--figure", default=str(ROOT / "docs" / "images" / "sanity_checks.png"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    res = run(args)
    fig = Path(args.figure)
    figure(res, fig)
    document(res, Path(args.doc), fig, args)
    print(f"wrote {args.doc} and {fig}")


if __name__ == "__main__":
    main()
