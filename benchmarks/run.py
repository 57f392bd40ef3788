"""saliencelab vs Captum and pytorch-grad-cam on EfficientNet-Lite0, side by side in one process.

    make bench                                  # installs the peers, then runs this
    .venv/bin/python benchmarks/run.py [--quick] [--repeats N] [--methods saliency,gradcam]
                                       [--device cuda] [--batch 8] [--out benchmarks/out]
                                       [--model efficientnet_lite0|shapes_cnn]

For each method: our time, each peer's time at the same settings (same model, inputs, explicit
targets, layer), the speed-up peer/ours, our time over the FLOOR (passes x one plain
forward+backward with frozen parameters at the chunk size our engine used, in the memory layout
our passes ran in), and whether the outputs agree. Results go to `<out>/results.json` and a
Markdown table to `<out>/table.md`. See benchmarks/README.md for the method.

Ours is warmed up by `harness.settle` (until the engine's chunk-size search is closed across
calls and two calls ran the same passes), then once more without its recording hook; the chunk
size and the floor come from the settled passes. Every comparison is a `harness.Agreement` with
an explicit tolerance, stored in the JSON; a ratio stands only where every agreement of its
method holds (`harness.valid_ratio`: "DISAGREE" in the table, None in the JSON), and the script
exits 1 when any fails (`harness.exit_status`). `--model shapes_cnn` runs the bundled shapes CNN
at 64×64 (Grad-CAM on its default layer) for a quick check.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import clock_env  # noqa: E402, F401  (before torch: OMP_WAIT_POLICY for --clock cpu)
import harness  # noqa: E402
import peers  # noqa: E402
import torch  # noqa: E402
from harness import (  # noqa: E402
    IMAGES,
    Agreement,
    Contender,
    Floor,
    PassLog,
    compare,
    exit_status,
    max_abs_agreement,
    measure,
    minmax,
    paired,
    record_passes,
    recorded,
    settle,
    valid_ratio,
)

import saliencelab as sl  # noqa: E402
from saliencelab.core.registry import MethodSpec  # noqa: E402

MODEL = "efficientnet_lite0"
LAYER = "_head_act"  # EfficientNet-Lite0's Grad-CAM layer; other models use their default layer
# RGB photographs first (the gray ones are converted to RGB by sample_image).
N_STEPS = 50  # integrated gradients
N_SAMPLES = 25  # SmoothGrad
SEVEN = (
    "saliency",
    "input_x_gradient",
    "gradcam",
    "gradcam_plus_plus",
    "xgradcam",
    "hirescam",
    "layercam",
)
BENCHES = ("saliency", "integrated_gradients", "smoothgrad", "gradcam", "seven")
ALIASES = {"ig": "integrated_gradients", "sg": "smoothgrad", "together": "seven"}
# Targets from the issue (2-core CPU): speed-up peer/ours at least; ours/floor at most.
SPEEDUP_TARGET = {
    ("saliency", "captum"): 2.5,
    ("integrated_gradients", "captum"): 2.5,
    ("smoothgrad", "captum"): 2.5,
    ("gradcam", "pytorch-grad-cam"): 3.0,
}
FLOOR_TARGET = 1.2
SEVEN_TARGET = 1.3
# Agreement thresholds: exact computations / IG (Gauss-Legendre on both) / maps in [0, 1].
EXACT_REL = 1e-4  # max |ours − peer| / max |peer|, per sample
# Equal up to the model's rounding where the two sides run the same rows in other batch sizes:
# max rel err and 1 − corr.
ROUNDING_REL, ROUNDING_CORR_GAP = 1e-2, 1e-6
# pytorch-grad-cam's min-max scaled maps: max |diff| and 1 − corr.
MINMAX_ABS, MINMAX_CORR_GAP = 1e-3, 1e-4
NOISE_LEVEL = 0.15  # SmoothGrad: σ = NOISE_LEVEL × (max − min) of each image
SIGMA_STDERRS = 5  # σ check: tolerance in standard errors of a sample stdev, 1 / sqrt(2 N)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def registered() -> dict[str, MethodSpec]:
    return {m.name: m for m in sl.methods()}


def first_registered(*names: str) -> MethodSpec | None:
    specs = registered()
    return next((specs[n] for n in names if n in specs), None)


def option(spec: MethodSpec, *names: str) -> str | None:
    return next((n for n in names if n in spec.options), None)


def _flat64(t: Any) -> torch.Tensor:
    t = torch.as_tensor(t).detach().to("cpu", torch.float64)
    return t.reshape(t.shape[0], -1)


def rel_agreement(ours: Any, peer: Any, tol: float, what: str = "max rel err") -> Agreement:
    """Max |ours − peer| / max |peer| per sample (the worst sample), on the entries finite on
    both sides; entries NaN or infinite on one side only count as mismatches."""
    o, p = _flat64(ours), _flat64(peer)
    if o.shape != p.shape:
        raise ValueError(f"{what}: shapes differ, {tuple(o.shape)} vs {tuple(p.shape)}")
    scale = p.abs().where(p.isfinite(), 0.0).amax(1, keepdim=True).clamp_min(1e-30)
    return max_abs_agreement(o / scale, p / scale, tol, what)


def corr_agreement(ours: Any, peer: Any, tol: float, what: str = "1 − corr") -> Agreement:
    """1 − the lowest per-sample Pearson correlation (NaN fails; two constant maps count as
    correlated: their values are for the max-diff check to compare)."""
    o, p = _flat64(ours), _flat64(peer)
    oc, pc = o - o.mean(1, keepdim=True), p - p.mean(1, keepdim=True)
    no, np_ = oc.norm(dim=1), pc.norm(dim=1)
    corr = (oc * pc).sum(1) / (no * np_).clamp_min(1e-30)
    corr = torch.where((no == 0) & (np_ == 0), torch.ones_like(corr), corr)
    return Agreement(what, float(1 - corr.min()), tol)


def grad_sizes(log: PassLog) -> list[int]:
    """The batch sizes of a call's gradient passes, in order."""
    return [n for n, k in log.calls if k == "grad"]


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.load_start = list(os.getloadavg())
        self.n_steps, self.n_samples = args.n_steps, args.n_samples
        self.device = torch.device(args.device)
        self.sync = harness.make_sync(self.device)
        self.model_name = args.model
        self.model = sl.load_model(args.model).to(self.device)
        self.module = self.model.module.eval()
        if args.model.startswith("shapes"):
            x = self.model.preprocess(sl.data.shapes.make(args.batch, seed=0))
            self.image_names = [f"shapes {i} (seed 0)" for i in range(args.batch)]
        else:
            available = [n for n in IMAGES if n in sl.sample_images()] or sl.sample_images()
            names = [available[i % len(available)] for i in range(args.batch)]
            self.image_names = names
            x = self.model.preprocess([sl.sample_image(n) for n in names])
        self.x = x.to(self.device).detach().contiguous()
        with torch.inference_mode():
            logits = self.module(self.x)
        # Explicit targets (the predicted classes), identical for every contender.
        self.targets = logits.argmax(dim=1).clone()
        self.tlist = [int(t) for t in self.targets]
        self.layer_name = LAYER if args.model == MODEL else self.model.default_layer
        self.layer = self.module.get_submodule(self.layer_name)
        # Floors by memory layout: each method's floor runs in the layout its passes ran.
        self.floors: dict[bool, Floor] = {}
        self.multi_pass_layout: bool | None = None
        self.agreements: list[Agreement] = []
        self.captum = peers.captum_version()
        self.pgc, self.pgc_note = peers.import_grad_cam()
        self.results: dict[str, Any] = {}
        cpu = self.device.type == "cpu"
        self.sweep_sizes = [args.batch * k for k in ((1, 2, 4, 8) if cpu else (1, 4, 8, 16, 32))]

    @property
    def batch(self) -> int:
        return self.x.shape[0]

    def repeats(self, multi_pass: bool) -> int:
        if self.args.repeats:
            return self.args.repeats
        if self.args.quick:
            return 1
        return 3 if multi_pass else 7

    # -- helpers ---------------------------------------------------------------------------

    def ours(self, methods: Any) -> Callable[[], sl.Explanation]:
        return lambda: sl.explain(self.model, self.x, methods, target=self.tlist)

    def warm(self, fn: Callable, keep_inputs: bool = False) -> tuple[PassLog, Any]:
        """Warm up ours until the engine's chunk-size search is closed across calls and two calls
        ran the same passes (`harness.settle`), then once more without the recording hook (a
        model with hooks runs its forward-only passes unfolded: the first call without one
        probes the fold). Returns the settled passes, what every timed call runs, and the
        output."""

        def synced() -> Any:
            self.sync()
            out = fn()
            self.sync()
            return out

        passes, _ = settle(synced, self.module, keep_inputs)
        return passes, synced()

    def floor(self, passes: PassLog, multi_pass: bool = False) -> Floor:
        """The floor in the memory layout of the settled passes."""
        layout = passes.ran_channels_last()
        if multi_pass:
            self.multi_pass_layout = layout
        if layout not in self.floors:
            self.floors[layout] = Floor(
                self.module, self.x, self.targets, self.sync, channels_last=layout
            )
        return self.floors[layout]

    def base_record(self, spec: MethodSpec, opts: dict, passes: int, plog, ex) -> dict:
        a = ex[spec.name] if spec.name in ex else None
        return {
            "status": "ok",
            "ours": spec.name,
            "options": {k: v for k, v in opts.items() if not isinstance(v, torch.Tensor)},
            "passes_needed": passes,
            "passes_counted": a.passes if a is not None else ex.total_passes,
            "forwards_counted": a.forwards if a is not None else ex.total_forwards,
            "rows_run": {"grad": plog.rows("grad"), "forward": plog.rows("forward")},
            "chunk": plog.chunk(),
            "chunks_seen": grad_sizes(plog),
            "floor_channels_last": plog.ran_channels_last(),
            "peers": {},
        }

    def finish(
        self,
        key: str,
        rec: dict,
        ours: Contender,
        floor: Contender,
        own: list[Agreement] | None = None,
    ) -> None:
        """Timings and ratios; `own`: checks of ours alone (SmoothGrad's σ). A ratio stands only
        where the agreements behind it hold: a speed-up on ours' own checks and its peer's, ours
        / floor on all of the method's (where ours and a peer differ, either may be wrong)."""
        own = list(own or [])
        checks = {n: p.pop("_agreements", []) for n, p in rec["peers"].items()}
        every = own + [a for cs in checks.values() for a in cs]
        self.agreements.extend(every)
        rec["agreements"] = [a.as_dict() for a in own]
        rec["agreement_ok"] = all(a.ok for a in every)
        rec["timing"] = ours.summary()
        rec["floor"] = floor.summary()
        rec["ours_over_floor"] = valid_ratio(paired(ours, floor), every)
        rec["floor_target"] = FLOOR_TARGET
        of = rec["ours_over_floor"]
        rec["floor_met"] = None if of is None else of <= FLOOR_TARGET
        for name, p in rec["peers"].items():
            c = p.pop("_contender", None)
            if c is None:
                continue
            gate = own + checks[name]
            p["agreements"] = [a.as_dict() for a in checks[name]]
            p["timing"] = c.summary()
            if c.passes is not None:
                p["rows_run"] = {"grad": c.passes.rows("grad"), "forward": c.passes.rows("forward")}
                p["chunks_seen"] = [n for n, k in c.passes.calls]
            p["speedup"] = valid_ratio(paired(c, ours), gate)
            p["speedup_of_medians"] = valid_ratio(c.median / ours.median, gate)
            p["peer_over_floor"] = paired(c, floor)
            target = SPEEDUP_TARGET.get((key, name))
            p["target"] = target
            p["met"] = None if target is None or p["speedup"] is None else p["speedup"] >= target
        self.results[key] = rec
        self.log_record(key, rec)

    def log_record(self, key: str, rec: dict) -> None:
        of = rec["ours_over_floor"]
        log(
            f"  {key}: ours {rec['timing']['median_s']:.3f}s, ours/floor "
            f"{'DISAGREE' if of is None else f'{of:.2f}'} (chunk {rec['chunk']}, "
            f"{'channels-last' if rec['floor_channels_last'] else 'NCHW'})"
        )
        for a in rec["agreements"]:
            log(f"    ours: {Agreement(**{k: v for k, v in a.items() if k != 'ok'}).text()}")
        for name, p in rec["peers"].items():
            if "timing" in p:
                s = p["speedup"]
                log(f"    vs {name}: {'DISAGREE' if s is None else f'{s:.2f}x'}")
                for a in p["agreements"]:
                    log(f"      {Agreement(**{k: v for k, v in a.items() if k != 'ok'}).text()}")
            else:
                log(f"    vs {name}: {p['status']}")

    def skip(self, key: str, note: str) -> None:
        log(f"  {key}: skipped — {note}")
        self.results[key] = {"status": "skipped", "note": note}

    def peer_missing(self, name: str) -> dict:
        note = self.pgc_note if name == "pytorch-grad-cam" else peers.NOT_INSTALLED
        return {"status": note}

    # -- the benchmarks -------------------------------------------------------------------

    def saliency(self) -> None:
        spec = first_registered("saliency")
        if spec is None:
            return self.skip("saliency", "saliency is not registered yet; re-run later")
        opts = {"absolute": True} if "absolute" in spec.options else {}
        fn = self.ours({spec.name: opts})
        plog, ex = self.warm(fn)
        rec = self.base_record(spec, opts, 1, plog, ex)
        ours = Contender("saliencelab", fn, warmup=0)
        floor = self.floor(plog).contender(self.batch, rec["chunk"] or self.batch)
        contenders = [ours, floor]
        if self.captum:
            call = peers.captum_saliency(self.module, self.x, self.targets)
            cap = recorded("captum", call, self.module)
            contenders.append(cap)
            rec["peers"]["captum"] = {"status": "ok", "call": "Saliency(abs=True)"}
        else:
            rec["peers"]["captum"] = self.peer_missing("captum")
        measure(contenders, self.repeats(False), self.sync, log)
        if self.captum:
            rec["peers"]["captum"]["_contender"] = cap
            self.raw_agreement(rec["peers"]["captum"], ours.last[spec.name].attributions, cap.last)
        self.finish("saliency", rec, ours, floor)

    def raw_agreement(self, peer: dict, ours: Any, theirs: Any, compared: str = "") -> None:
        """Raw maps or attributions: max rel err ≤ EXACT_REL (relative to the peer's scale, per
        sample)."""
        checks = [rel_agreement(ours, theirs, EXACT_REL)]
        agree = compare(ours, theirs)
        agree["ok"] = all(a.ok for a in checks)
        if compared:
            agree["compared"] = compared
        peer["agreement"], peer["_agreements"] = agree, checks

    def _sweep(self, label: str, make: Callable[[int], Callable]) -> tuple[int, dict]:
        """Time a peer at each chunk size (min of 2 runs, the first also warms it up)."""
        per_row = {}
        for size in self.sweep_sizes:
            fn = make(size)
            times = []
            for _ in range(2):
                with harness.Stopwatch(self.sync) as sw:
                    fn()
                times.append(sw.seconds)
            per_row[size] = min(times) / max(self.sweep_sizes)
            log(f"    {label} sweep: {size} rows/chunk -> {per_row[size] * 1e3:.1f} ms/row")
        best = min(per_row, key=per_row.get)
        return best, {str(k): v for k, v in per_row.items()}

    def integrated_gradients(self) -> None:
        key = "integrated_gradients"
        spec = first_registered("integrated_gradients", "ig")
        if spec is None:
            return self.skip(key, "integrated_gradients is not registered yet; re-run later")
        opts: dict[str, Any] = {}
        steps = option(spec, "n_steps", "steps")
        if steps is None:
            return self.skip(key, f"{spec.name} has no n_steps option: {list(spec.options)}")
        opts[steps] = self.n_steps
        rule = option(spec, "method", "rule", "quadrature", "integration", "approximation")
        if rule is not None:
            default = "".join(ch for ch in str(spec.options[rule]).lower() if ch.isalpha())
            if default != "gausslegendre":
                opts[rule] = "gausslegendre"
        fn = self.ours({spec.name: opts})
        plog, ex = self.warm(fn)
        rec = self.base_record(spec, opts, self.n_steps, plog, ex)
        chunk = rec["chunk"] or self.batch
        ours = Contender("saliencelab", fn, warmup=0)
        floor = self.floor(plog, multi_pass=True).contender(self.batch * self.n_steps, chunk)
        contenders = [ours, floor]
        if self.captum:
            if self.args.quick:
                ibs, sweep = chunk, {}
            else:
                b = self.batch

                def make(size: int) -> Callable:
                    n = max(self.sweep_sizes) // b
                    return peers.captum_ig(self.module, self.x, self.targets, n, size)

                ibs, sweep = self._sweep("captum IG internal_batch_size", make)
            call = peers.captum_ig(self.module, self.x, self.targets, self.n_steps, ibs)
            cap = recorded("captum", call, self.module, warmup=0 if sweep else 1)
            contenders.append(cap)
            rec["peers"]["captum"] = {
                "status": "ok",
                "call": f"IntegratedGradients(n_steps={self.n_steps}, method='gausslegendre', "
                f"internal_batch_size={ibs})",
                "sweep_s_per_row": sweep,
            }
        else:
            rec["peers"]["captum"] = self.peer_missing("captum")
        measure(contenders, self.repeats(True), self.sync, log)
        if self.captum:
            rec["peers"]["captum"]["_contender"] = cap
            self.raw_agreement(rec["peers"]["captum"], ours.last[spec.name].attributions, cap.last)
        self.finish(key, rec, ours, floor)

    def smoothgrad(self) -> None:
        key = "smoothgrad"
        spec = first_registered("smoothgrad", "smooth_grad")
        if spec is None:
            return self.skip(key, "smoothgrad is not registered yet; re-run later")
        samples = option(spec, "n_samples", "samples", "nt_samples", "n")
        if samples is None:
            return self.skip(key, f"{spec.name} has no n_samples option: {list(spec.options)}")
        opts: dict[str, Any] = {samples: self.n_samples}
        if "base" in spec.options:
            opts["base"] = "saliency"  # SmoothGrad over the vanilla gradient, as Captum's
        if "noise_level" in spec.options:
            opts["noise_level"] = NOISE_LEVEL  # σ = 0.15 × (max − min) per image, checked below
        # Captum's `abs` is what we ask of ours (|∂S/∂x| averaged), not read off our output.
        absolute = True
        abs_opt = option(spec, "absolute", "abs")
        saliency = registered().get("saliency")
        if abs_opt is not None:
            opts[abs_opt] = absolute
        elif "base_options" in spec.options and saliency and "absolute" in saliency.options:
            opts["base_options"] = {"absolute": absolute}
        elif saliency is not None:  # no way to ask: its base's default
            absolute = bool(saliency.options.get("absolute", True))
        fn = self.ours({spec.name: opts})
        plog, ex = self.warm(fn, keep_inputs=True)
        rec = self.base_record(spec, opts, self.n_samples, plog, ex)
        rec["captum_abs"] = absolute
        noisy, sigma, note = self._noisy_rows(plog)
        flat = self.x.flatten(1).double().cpu()
        defined = NOISE_LEVEL * (flat.amax(1) - flat.amin(1))
        sigma_check = self._sigma_agreement(sigma, defined, note)
        rec["noise"] = {
            "stdev_per_sample": sigma.tolist() if sigma is not None else None,
            "stdev_defined": defined.tolist(),
            "noise_level": NOISE_LEVEL,
        }
        stdev = float(defined.mean())  # Captum's timing: one σ for the batch
        chunk = rec["chunk"] or self.batch
        ours = Contender("saliencelab", fn, warmup=0)
        floor = self.floor(plog, multi_pass=True).contender(self.batch * self.n_samples, chunk)
        contenders = [ours, floor]
        b = self.batch
        if self.captum:
            if self.args.quick:
                nsbs, sweep = max(1, chunk // b), {}
            else:

                def make(size: int) -> Callable:
                    n = max(self.sweep_sizes) // b
                    return peers.captum_smoothgrad(
                        self.module, self.x, self.targets, n, stdev, absolute, size // b
                    )

                best, sweep = self._sweep("captum NoiseTunnel nt_samples_batch_size", make)
                nsbs = best // b
            call = peers.captum_smoothgrad(
                self.module, self.x, self.targets, self.n_samples, stdev, absolute, nsbs
            )
            cap = recorded("captum", call, self.module, warmup=0 if sweep else 1)
            contenders.append(cap)
            rec["peers"]["captum"] = {
                "status": "ok",
                "call": f"NoiseTunnel(Saliency).attribute(nt_type='smoothgrad', "
                f"nt_samples={self.n_samples}, stdevs={stdev:.4f}, abs={absolute}, "
                f"nt_samples_batch_size={nsbs})",
                "sweep_s_per_row": {str(int(k) // b): v for k, v in sweep.items()},
            }
        else:
            rec["peers"]["captum"] = self.peer_missing("captum")
        measure(contenders, self.repeats(True), self.sync, log)
        if self.captum:
            p = rec["peers"]["captum"]
            p["_contender"] = cap
            agree, checks = self._smoothgrad_agreement(
                spec, ex, plog, noisy, defined, absolute, note
            )
            agree["noise_sigma"] = {"max_rel_dev": sigma_check.diff, "ok": sigma_check.ok}
            agree["ok"] = sigma_check.ok and all(a.ok for a in checks)
            p["agreement"], p["_agreements"] = agree, checks
        self.finish(key, rec, ours, floor, own=[sigma_check])

    def _noisy_rows(self, plog: PassLog):
        """The noisy rows our SmoothGrad ran, sample-major, and each sample's noise stdev."""
        if not plog.inputs:
            return None, None, "no inputs recorded"
        rows = torch.cat(plog.inputs).to(self.x.device)
        flat, xf = rows.flatten(1), self.x.flatten(1)
        dist = torch.cdist(flat.double(), xf.double())
        nearest = dist.argmin(dim=1)
        clean = dist.min(dim=1).values <= 1e-6 * xf.norm(dim=1).max()
        rows, nearest = rows[~clean], nearest[~clean]
        groups = [rows[nearest == i] for i in range(self.batch)]
        if any(len(g) != self.n_samples for g in groups):
            counts = [len(g) for g in groups]
            return None, None, f"could not split the noisy rows by sample ({counts})"
        sigma = torch.stack([(g - self.x[i]).double().std() for i, g in enumerate(groups)])
        return torch.cat(groups), sigma.cpu(), ""

    def _sigma_agreement(
        self, sigma: torch.Tensor | None, defined: torch.Tensor, note: str
    ) -> Agreement:
        """Our noise's stdev, measured per image from the recorded noisy rows against the clean
        input, against the option's definition NOISE_LEVEL × (max − min) of the image: the worst
        image's |measured / defined − 1|, within SIGMA_STDERRS standard errors of a sample
        stdev of n_samples × (values per image) draws."""
        values = self.n_samples * self.x[0].numel()
        tol = SIGMA_STDERRS / (2 * values) ** 0.5
        what = f"noise σ / ({NOISE_LEVEL:g} × (max − min)) − 1, worst image"
        if sigma is None:
            return Agreement(f"{what} ({note})", float("nan"), tol)
        dev = (sigma.double() - defined).abs() / defined.clamp_min(1e-30)
        return Agreement(what, float(dev.max()), tol)

    def _smoothgrad_agreement(
        self, spec, ex, plog: PassLog, noisy, sigma: torch.Tensor, absolute: bool, note: str
    ) -> tuple[dict, list[Agreement]]:
        ours = ex[spec.name].attributions
        out: dict[str, Any] = {}
        checks: list[Agreement] = []
        if noisy is not None:
            # Fixed noise: Captum's NoiseTunnel(Saliency) fed the very noisy inputs ours ran.
            with peers.captum_fixed_noise(noisy), record_passes(self.module) as theirs:
                ref = peers.captum_smoothgrad(
                    self.module, self.x, self.targets, self.n_samples, 1.0, absolute, None
                )()
            sizes = {"ours": sorted(grad_sizes(plog)), "captum": sorted(grad_sizes(theirs))}
            fixed = compare(ours, ref)
            fixed["batch_sizes"] = sizes
            if sizes["ours"] == sizes["captum"]:  # the same batches: exact
                fixed_checks = [rel_agreement(ours, ref, EXACT_REL, "fixed noise: max rel err")]
            else:
                # The same noisy rows in other batches (ours in the engine's chunks, Captum all
                # in one): the model's kernels round differently per batch size, and ReLU6's
                # clamps then flip a few gradients (EfficientNet-Lite0, chunks of 2 against one
                # batch of 200: 2.6e-3 by hand, both sides in plain torch).
                fixed_checks = [
                    rel_agreement(
                        ours, ref, ROUNDING_REL, "fixed noise: max rel err (other batch sizes)"
                    ),
                    corr_agreement(ours, ref, ROUNDING_CORR_GAP, "fixed noise: 1 − corr"),
                ]
                if fixed["max_rel_err"] > EXACT_REL:
                    fixed["rounding"] = (
                        f"ours in batches of {sorted(set(sizes['ours']))}, "
                        f"Captum in {sorted(set(sizes['captum']))}"
                    )
            fixed["ok"] = all(a.ok for a in fixed_checks)
            checks += fixed_checks
            out["fixed_noise"] = fixed
        else:
            out["fixed_noise"] = f"not possible: {note}"
        if self.args.quick:
            return out, checks
        # Statistical: Captum with its own noise (σ of each image as defined), two seeds.
        refs = []
        for seed in (1, 2):
            torch.manual_seed(seed)
            parts = []
            for i in range(self.batch):
                xi, ti = self.x[i : i + 1], self.targets[i : i + 1]
                parts.append(
                    peers.captum_smoothgrad(
                        self.module, xi, ti, self.n_samples, float(sigma[i]), absolute, None
                    )()
                )
            refs.append(torch.cat(parts))
        stat = {
            "corr_ours_captum": harness.mean_corr(ours, refs[0]),
            "corr_captum_captum": harness.mean_corr(refs[1], refs[0]),
            "rel_l2_ours_captum": harness.relative_l2(ours, refs[0]),
            "rel_l2_captum_captum": harness.relative_l2(refs[1], refs[0]),
        }
        stat_checks = [
            Agreement(
                "statistical: corr captum–captum − corr ours–captum",
                stat["corr_captum_captum"] - stat["corr_ours_captum"],
                0.02,
            ),
            Agreement(
                "statistical: rel L2 ours–captum / captum–captum",
                stat["rel_l2_ours_captum"] / max(stat["rel_l2_captum_captum"], 1e-30),
                1.15,
            ),
        ]
        stat["ok"] = all(a.ok for a in stat_checks)
        checks += stat_checks
        out["statistical"] = stat
        return out, checks

    def gradcam(self) -> None:
        key = "gradcam"
        spec = first_registered("gradcam")
        if spec is None:
            return self.skip(key, "gradcam is not registered yet; re-run later")
        opts = {"layer": self.layer_name}
        fn = self.ours({spec.name: opts})
        plog, ex = self.warm(fn)
        rec = self.base_record(spec, opts, 1, plog, ex)
        ours = Contender("saliencelab", fn, warmup=0)
        floor = self.floor(plog).contender(self.batch, rec["chunk"] or self.batch)
        contenders = [ours, floor]
        pgc = cap = None
        if self.pgc is not None:
            call = peers.grad_cam_gradcam(self.pgc, self.module, self.layer, self.x, self.targets)
            pgc = recorded("pytorch-grad-cam", call, self.module)
            contenders.append(pgc)
            rec["peers"]["pytorch-grad-cam"] = {
                "status": "ok",
                "call": f"GradCAM(target_layers=[{self.layer_name}]) with ClassifierOutputTarget",
                "version": self.pgc_note,
            }
        else:
            rec["peers"]["pytorch-grad-cam"] = self.peer_missing("pytorch-grad-cam")
        if self.captum:
            call = peers.captum_layer_gradcam(self.module, self.layer, self.x, self.targets)
            cap = recorded("captum", call, self.module)
            contenders.append(cap)
            rec["peers"]["captum"] = {
                "status": "ok",
                "call": f"LayerGradCam({self.layer_name}, relu_attributions=True) + "
                "LayerAttribution.interpolate(bilinear)",
            }
        else:
            rec["peers"]["captum"] = self.peer_missing("captum")
        measure(contenders, self.repeats(False), self.sync, log)
        maps = ours.last[spec.name].maps
        rec["layer"] = ours.last[spec.name].layer
        size = "x".join(str(n) for n in self.x.shape[-2:])
        if pgc is not None:
            p = rec["peers"]["pytorch-grad-cam"]
            p["_contender"] = pgc
            ours01, theirs = minmax(maps), torch.as_tensor(pgc.last)
            checks = [
                max_abs_agreement(ours01, theirs, MINMAX_ABS, "max |diff| of min-max maps"),
                corr_agreement(ours01, theirs, MINMAX_CORR_GAP),
            ]
            agree = compare(ours01, theirs)
            agree["max_abs_diff_01"] = checks[0].diff
            agree["ok"] = all(a.ok for a in checks)
            agree["compared"] = f"min-max normalised maps at {size}"
            p["agreement"], p["_agreements"] = agree, checks
        if cap is not None:
            rec["peers"]["captum"]["_contender"] = cap
            compared = f"raw maps, bilinear upsampling to {size}"
            self.raw_agreement(rec["peers"]["captum"], maps, cap.last, compared)
        self.finish(key, rec, ours, floor)

    def seven(self) -> None:
        key = "seven"
        specs = registered()
        names = [n for n in SEVEN if n in specs]
        missing = [n for n in SEVEN if n not in specs]
        if "saliency" not in names or len(names) < 2:
            return self.skip(key, f"needs saliency and more methods; missing {missing}")
        together = self.ours(names)
        single = self.ours("saliency")
        plog, ex = self.warm(together)
        self.warm(single)
        a = Contender("together", together, warmup=0)
        s = Contender("saliency", single, warmup=0)
        floor = self.floor(plog).contender(self.batch, plog.chunk() or self.batch)
        measure([a, s, floor], self.repeats(False), self.sync, log)
        rec = {
            "status": "ok",
            "methods": names,
            "missing": missing,
            "note": f"not registered when run: {', '.join(missing)}" if missing else "",
            "passes_counted": ex.total_passes,
            "forwards_counted": ex.total_forwards,
            "rows_run": {"grad": plog.rows("grad"), "forward": plog.rows("forward")},
            "chunk": plog.chunk(),
            "chunks_seen": grad_sizes(plog),
            "floor_channels_last": plog.ran_channels_last(),
            "timing": a.summary(),
            "saliency_timing": s.summary(),
            "floor": floor.summary(),
            "ratio_to_saliency": paired(a, s),
            "target": SEVEN_TARGET,
            "met": paired(a, s) <= SEVEN_TARGET,
            "ours_over_floor": paired(a, floor),
        }
        self.results[key] = rec
        log(
            f"  seven ({len(names)} methods): {rec['ratio_to_saliency']:.2f}x one saliency call, "
            f"{rec['ours_over_floor']:.2f}x floor, passes {ex.total_passes}"
        )

    # -- output ----------------------------------------------------------------------------

    def environment(self) -> dict:
        env = {
            "torch": torch.__version__,
            "captum": self.captum or peers.NOT_INSTALLED,
            "pytorch-grad-cam": self.pgc_note,
            "saliencelab": sl.__version__,
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "device": str(self.device),
            "loadavg_start": self.load_start,
            "loadavg_end": list(os.getloadavg()),
        }
        if self.device.type == "cuda":
            env["gpu"] = torch.cuda.get_device_name(self.device)
        return env

    def settings(self) -> dict:
        return {
            "model": self.model_name,
            "batch": self.batch,
            "input": list(self.x.shape[1:]),
            "images": self.image_names,
            "targets": self.tlist,
            "layer": self.layer_name,
            "n_steps": self.n_steps,
            "n_samples": self.n_samples,
            "repeats": {"single_pass": self.repeats(False), "multi_pass": self.repeats(True)},
            "quick": self.args.quick,
            "clock": self.args.clock,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
            "sweep_rows": self.sweep_sizes,
        }


def fmt_ratio(value: float | None, target: float | None, at_least: bool) -> str:
    if value is None:
        return "—"
    if target is None:
        return f"{value:.2f}×"
    met = value >= target if at_least else value <= target
    sign = "≥" if at_least else "≤"
    return f"{value:.2f}× ({sign}{target:g}: {'met' if met else '**missed**'})"


def fmt_checked(value: float | None, target: float | None, at_least: bool) -> str:
    """A ratio gated by agreement: None is a ratio withheld because an agreement failed."""
    if value is None:
        return "**DISAGREE** (no ratio)"
    return fmt_ratio(value, target, at_least)


def fmt_agreement(agree: Any) -> str:
    if not isinstance(agree, dict):
        return str(agree) if agree else "—"
    parts = []
    for label, a in agree.items():
        if label in ("ok", "compared", "rounding", "batch_sizes"):
            continue
        if isinstance(a, dict):
            parts.append(f"{label.replace('_', ' ')}: {fmt_agreement(a)}")
        elif isinstance(a, str):
            parts.append(f"{label.replace('_', ' ')}: {a}")
    if parts:
        return "; ".join(parts)
    bits = []
    if "max_rel_err" in agree:
        bits.append(f"max rel err {agree['max_rel_err']:.1e}")
    if "max_abs_diff_01" in agree:
        bits.append(f"max abs diff {agree['max_abs_diff_01']:.1e} (maps in [0,1])")
    if "min_corr" in agree:
        bits.append(f"corr ≥ {agree['min_corr']:.6f}")
    if "max_rel_dev" in agree:
        bits.append(f"measured / defined − 1 ≤ {agree['max_rel_dev']:.1e}")
    if "corr_ours_captum" in agree:
        bits.append(
            f"corr ours–captum {agree['corr_ours_captum']:.3f} vs captum–captum "
            f"{agree['corr_captum_captum']:.3f}; rel L2 {agree['rel_l2_ours_captum']:.3f} vs "
            f"{agree['rel_l2_captum_captum']:.3f}"
        )
    if "ok" in agree:
        bits.append("ok" if agree["ok"] else "**DISAGREE**")
        if agree["ok"] and "rounding" in agree:
            bits[-1] = f"ok up to rounding ({agree['rounding']})"
    return ", ".join(bits)


def labels(settings: dict) -> dict[str, str]:
    return {
        "saliency": "saliency",
        "integrated_gradients": f"integrated gradients ({settings['n_steps']} steps, "
        "Gauss-Legendre)",
        "smoothgrad": f"SmoothGrad ({settings['n_samples']} samples)",
        "gradcam": f"Grad-CAM ({settings['layer']})",
    }


def table(results: dict, env: dict, settings: dict) -> str:
    clock = "wall time"
    if settings["clock"] == "cpu":
        clock = f"process CPU time (OMP_WAIT_POLICY={settings['omp_wait_policy']})"
    lines = [
        f"{settings['model']}, {settings['batch']} images {settings['input'][1]}×"
        f"{settings['input'][2]}, device {env['device']}, torch {env['torch']}, "
        f"{env['torch_threads']} threads, captum {env['captum']}, "
        f"pytorch-grad-cam {env['pytorch-grad-cam']}. Median of "
        f"{settings['repeats']['single_pass']} (1-pass methods) / "
        f"{settings['repeats']['multi_pass']} (multi-pass) interleaved repeats of {clock}; "
        "ratios are medians of per-repeat ratios.",
    ]
    load = max(env["loadavg_start"][0], env["loadavg_end"][0])
    if env["device"] == "cpu" and load > (env["cpu_count"] or 1):
        lines.append(
            f"**Shared machine: load average up to {load:.1f} on {env['cpu_count']} cores "
            "during the run; absolute times are inflated"
            + (" (CPU-time ratios are the robust ones)" if settings["clock"] == "cpu" else "")
            + ".**"
        )
    lines += [
        "",
        "| method | ours | floor (chunk) | ours / floor | peer | peer time | peer / floor "
        "| speed-up (peer / ours) | agreement |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key in BENCHES:
        if key == "seven" or key not in results:
            continue
        r = results[key]
        label = labels(settings)[key]
        if r["status"] != "ok":
            lines.append(f"| {label} | skipped: {r['note']} | | | | | | | |")
            continue
        ours = f"{r['timing']['median_s']:.3f} s"
        floor = f"{r['floor']['median_s']:.3f} s ({r['chunk']})"
        of = fmt_checked(r["ours_over_floor"], FLOOR_TARGET, at_least=False)
        first = True
        for name, p in r["peers"].items():
            head = f"| {label} | {ours} | {floor} | {of} " if first else "| | | | "
            first = False
            if "timing" not in p:
                lines.append(head + f"| {name} | {p['status']} | | | |")
                continue
            speedup = fmt_checked(p["speedup"], p["target"], at_least=True)
            lines.append(
                head + f"| {name} | {p['timing']['median_s']:.3f} s | "
                f"{p['peer_over_floor']:.2f}× | {speedup} | {fmt_agreement(p.get('agreement'))} |"
            )
    per_row = results.get("floor_per_row_s")
    if per_row:
        used = sorted(
            {
                results[k]["chunk"]
                for k in ("integrated_gradients", "smoothgrad")
                if results.get(k, {}).get("status") == "ok"
            }
        )
        lines += [
            "",
            "Plain forward+backward per row (frozen parameters) by chunk size: "
            + ", ".join(f"{k} rows {v * 1e3:.1f} ms" for k, v in per_row.items())
            + f"; chunk sizes our engine chose for the multi-pass methods: {used}.",
        ]
    s = results.get("seven")
    if s is not None:
        lines += [
            "",
            "| methods asked together | together | one saliency call | ratio | "
            "together / floor | passes |",
            "|---|---|---|---|---|---|",
        ]
        if s["status"] != "ok":
            lines.append(f"| seven | skipped: {s['note']} | | | | |")
        else:
            names = ", ".join(s["methods"])
            if s["missing"]:
                names += f" (not yet registered: {', '.join(s['missing'])})"
            lines.append(
                f"| {names} | {s['timing']['median_s']:.3f} s | "
                f"{s['saliency_timing']['median_s']:.3f} s | "
                f"{fmt_ratio(s['ratio_to_saliency'], SEVEN_TARGET, at_least=False)} | "
                f"{s['ours_over_floor']:.2f}× | {s['passes_counted']:g} |"
            )
    return "\n".join(lines) + "\n"


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", default=",".join(BENCHES), help=f"any of {', '.join(BENCHES)}")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats (default 7 / 3)")
    p.add_argument("--quick", action="store_true", help="1 repeat, no peer chunk sweeps")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--batch", type=int, default=8, help="images per batch")
    p.add_argument("--n-steps", type=int, default=N_STEPS, help="IG steps (targets: 50)")
    p.add_argument("--n-samples", type=int, default=N_SAMPLES, help="SmoothGrad samples (25)")
    p.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="time the ratios use: wall (default) or process CPU time (for a shared machine; "
        "sets OMP_WAIT_POLICY=PASSIVE)",
    )
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "out"))
    p.add_argument(
        "--model",
        default=MODEL,
        help=f"bundled model (default {MODEL}, which the targets refer to; shapes_cnn: a quick "
        "check on 64×64 shapes images)",
    )
    harness.add_malloc_option(p)
    args = p.parse_args(argv)
    chosen = [ALIASES.get(m.strip(), m.strip()) for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in chosen if m not in BENCHES]
    if unknown:
        p.error(f"unknown method(s) {unknown}; choose from {', '.join(BENCHES)}")
    args.chosen = chosen
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    harness.use_clock(args.clock)
    log(harness.use_malloc(args))
    start = time.perf_counter()
    bench = Bench(args)
    log(
        f"saliencelab benchmark: {bench.batch} images, device {bench.device}, "
        f"{torch.get_num_threads()} threads"
    )
    load = os.getloadavg()[0]
    if bench.device.type == "cpu" and args.clock == "wall" and load > (os.cpu_count() or 1):
        log(
            f"warning: load average {load:.1f} on {os.cpu_count()} cores: other jobs share this "
            "machine and wall times will be erratic; consider --clock cpu"
        )
    for key in BENCHES:
        if key in args.chosen:
            log(f"- {key}")
            getattr(bench, key)()
    if not args.quick and {"integrated_gradients", "smoothgrad"} & set(args.chosen):
        log("- plain forward+backward cost per row at each chunk size")
        layout = bool(bench.multi_pass_layout)  # the layout the multi-pass methods ran in
        floor = bench.floors.get(layout) or Floor(
            bench.module, bench.x, bench.targets, bench.sync, channels_last=layout
        )
        per_row = floor.per_row(bench.sweep_sizes, reps=3)
        bench.results["floor_per_row_s"] = {str(k): v for k, v in per_row.items()}
        bench.results["floor_per_row_channels_last"] = layout
    env, settings = bench.environment(), bench.settings()
    settings["wall_s"] = time.perf_counter() - start
    md = table(bench.results, env, settings)
    status = exit_status(bench.agreements)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "environment": env,
        "settings": settings,
        "results": bench.results,
        "agreements": [a.as_dict() for a in bench.agreements],
        "exit_status": status,
    }
    (out / "results.json").write_text(json.dumps(result, indent=2))
    (out / "table.md").write_text(md)
    print(md)
    log(f"wrote {out / 'results.json'} and {out / 'table.md'} in {settings['wall_s']:.0f} s")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
