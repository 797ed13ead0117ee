"""Time GViT's training step: images/s, model-FLOP utilisation, peak memory, and the share of the step spent rendering.

    python benchmarks/train_step.py [--model gvit_small] [--batch 256] [--steps 20] [--out PATH]
    python benchmarks/train_step.py --modes eager compiled --vit-baseline --profile   # issue 18's GPU run

The step is the trainer's: :class:`timm_gvit.training.objective.GViTObjective` (each phase's
losses, D-SSIM on), AdamW from timm's ``create_optimizer_v2`` with the trainer's settings,
autocast in ``--precision`` (what ``train_gvit.py --mixed-precision bf16`` does through
Accelerate), backward and the optimiser step, on random images. It leaves out what the trainer
adds around the step (data loading, the per-step ``.item()`` of the losses for logging): this is
the model's ceiling, and ``train_gvit.py``'s own images/s includes the rest.

For each phase (reconstruction, classifier, joint; guidance steps are left out):

- images/s over ``--steps`` steps after ``--warmup`` steps, timed as a whole (one
  synchronisation at each end), and the peak memory over them (``max_memory_allocated`` on CUDA);
- where a step's time goes, from ``--steps`` more steps with timestamps on the device's stream
  (CUDA events; ``perf_counter`` on the CPU): the encoder's and the classifier's forward passes
  (module hooks), the render forward (around ``GViT.render``), the render backward (from the
  gradient reaching the rendered image to the gradient reaching the Gaussians, hooks on those
  tensors), and the whole step. Render share = (render forward + backward) / step.

Schedule-weighted figures weight the phases by the trainer's default phase lengths (the paper's
200 / 50 / 150 epochs).

Model-FLOP utilisation (MFU) = training FLOPs per image (forward and backward of one eager step,
counted by ``torch.utils.flop_counter``; the rasteriser's own kernels count nothing) x images/s /
the chip's dense bf16 peak (:data:`PEAK_BF16_TFLOPS`, by device name, or ``--peak-tflops``).

``--modes eager compiled`` times the step eagerly and with ``train_gvit.py --compile``'s regions
(``GViTObjective.compile_regions``: encoder, decode, classifier and losses; the rasteriser eager),
each compiled region's first steps timed apart as compile time, and checks that nothing compiles
during the timed steps. ``--vit-baseline`` measures timm's ``vit_small_patch16_224`` training
step (cross-entropy, the same AdamW) at the same batch, size and precision in the same modes, and
reports GViT's schedule MFU as a ratio to compiled ViT-S's. ``--profile`` runs torch.profiler over
a few steps of each phase: the top 15 kernels (CPU: operators) by time with their share, and the
host-device syncs per step (``aten::_local_scalar_dense``, every ``.item()``/``bool()`` of a
device tensor, and explicit synchronisations), into the JSON and ``<out>.profile.txt``.

Issue 18's targets (one H100 or H200, gvit_small, 224 px, k = 256, bf16, batch 256): at least
3,000 images/s over the schedule, render share at most 15 %, and MFU at least 0.9x compiled ViT-S's.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

import timm
import torch
import torch._dynamo
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import timm_gvit  # noqa: F401  (registers the models)
from timm_gvit.rendering import gsplat_error, resolve_backend
from timm_gvit.training.config import TrainConfig
from timm_gvit.training.objective import GViTObjective
from timm_gvit.training.optim import create_adamw

PHASES = ("reconstruction", "classifier", "joint")
MIN_IMAGES_PER_S, MAX_RENDER_SHARE, MIN_MFU_RATIO = 3000.0, 0.15, 0.9
#: Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s, by a substring of the CUDA device name; first match wins.
PEAK_BF16_TFLOPS = (("H100 PCIe", 756.0), ("H100", 989.0), ("H200", 989.0), ("A100", 312.0), ("L40S", 362.0), ("L4", 121.0))
#: Profiler events that make the host wait for the device.
SYNC_EVENTS = ("aten::_local_scalar_dense", "cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class Timeline:
    """Named regions timed on the device's stream: ``start(name)`` / ``end(name)`` pairs, which
    may repeat; ``totals()`` gives the milliseconds per name, summed."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks: list[tuple[str, bool, object]] = []

    def _now(self):
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def start(self, name: str) -> None:
        self.marks.append((name, True, self._now()))

    def end(self, name: str) -> None:
        self.marks.append((name, False, self._now()))

    def totals(self) -> dict[str, float]:
        if self.cuda:
            torch.cuda.synchronize()
        open_at, totals = {}, defaultdict(float)
        for name, is_start, stamp in self.marks:
            if is_start:
                open_at[name] = stamp
            else:
                begin = open_at.pop(name)
                totals[name] += begin.elapsed_time(stamp) if self.cuda else 1000 * (stamp - begin)
        self.marks.clear()
        return dict(totals)


def instrument(model, timeline: Timeline, modules: bool = True) -> None:
    """Mark the encoder's and classifier's forward passes (with ``modules``: hooks would break a
    compiled graph) and the render's forward and backward."""
    for name in ("encoder", "classifier") if modules else ():
        module = getattr(model, name)
        module.register_forward_pre_hook(lambda *_, n=name: timeline.start(f"{n}_fwd"))
        module.register_forward_hook(lambda *_, n=name: timeline.end(f"{n}_fwd"))
    render = model.render

    def timed_render(gaussians, size=None, background=None):
        timeline.start("render_fwd")
        images = render(gaussians, size, background)
        timeline.end("render_fwd")
        if images.requires_grad:
            images.register_hook(lambda grad: timeline.start("render_bwd"))
            gaussians.register_hook(lambda grad: timeline.end("render_bwd"))
        return images

    model.render = timed_render


def make_batch(batch: int, size: int, num_classes: int, device: torch.device, seed: int = 0):
    """Normalised random images ``[B, 3, size, size]``, the same in [0, 1], and labels."""
    gen = torch.Generator().manual_seed(seed)
    targets = torch.rand(batch, 3, size, size, generator=gen)
    images = (targets - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    labels = torch.randint(0, num_classes, (batch,), generator=gen)
    return images.to(device), targets.to(device), labels.to(device)


def phase_step(objective, optimizer, batch, phase: str, precision: str, device: torch.device, update: bool = True):
    """One training step of ``phase`` as the trainer takes it (autocast in ``precision``, D-SSIM on),
    as a function; without ``update``, forward and backward only."""
    images, targets, labels = batch
    dtype = autocast_dtype(precision)

    def step():
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss, _ = objective(images, targets, labels, phase, True)
        loss.backward()
        if update:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def warm_up(step, calls: int, device: torch.device) -> float:
    """``calls`` untimed calls of ``step`` (a compiled step compiles in them); their seconds."""
    started = time.perf_counter()
    for _ in range(calls):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def time_steps(step, calls: int, device: torch.device) -> tuple[float, float | None]:
    """``calls`` calls of ``step`` timed as a whole (one synchronisation at each end): (seconds,
    peak GiB allocated meanwhile on CUDA, else None)."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(calls):
        step()
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start, torch.cuda.max_memory_allocated() / 2**30 if cuda else None


def measure_phase(objective, optimizer, batch, phase: str, args, device: torch.device, timeline: Timeline) -> dict:
    step = phase_step(objective, optimizer, batch, phase, args.precision, device)
    warmup_s = warm_up(step, args.warmup, device)
    timeline.totals()  # drop the warm-up's marks
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    seconds, peak = time_steps(step, args.steps, device)
    timeline.totals()
    parts = defaultdict(float)
    for _ in range(args.steps):  # instrumented: one synchronisation per step to read the timestamps
        timeline.start("step")
        step()
        timeline.end("step")
        for name, ms in timeline.totals().items():
            parts[name] += ms / args.steps
    render_ms = parts.get("render_fwd", 0.0) + parts.get("render_bwd", 0.0)
    return {
        "warmup_s": round(warmup_s, 2),  # compiled: mostly compile time
        "compiled_during_timing": torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs,
        "images_per_s": args.batch * args.steps / seconds,
        "step_ms": 1000 * seconds / args.steps,
        "peak_gib": peak,
        "instrumented_ms": {name: round(ms, 3) for name, ms in sorted(parts.items())},
        "render_ms": render_ms,
        "render_share": render_ms / parts["step"],
    }


def autocast_dtype(precision: str):
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


def training_flops(step, batch: int) -> float:
    """FLOPs per image of ``step()`` (a forward and backward), counted by torch's flop counter."""
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops() / batch


def peak_tflops(device: torch.device, override: float | None) -> tuple[float | None, str]:
    """The chip's dense bf16 peak (TFLOP/s) and where it came from."""
    if override is not None:
        return override, "--peak-tflops"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, tflops in PEAK_BF16_TFLOPS:
            if key in name:
                return tflops, f"PEAK_BF16_TFLOPS['{key}'] for {name}"
        return None, f"{name} is not in PEAK_BF16_TFLOPS (give --peak-tflops)"
    return None, "no peak for a CPU (give --peak-tflops)"


def mfu(flops_per_image: float, images_per_s: float, peak: float | None) -> float | None:
    return flops_per_image * images_per_s / (peak * 1e12) if peak else None


def schedule_weighted(phases: dict[str, dict]) -> dict:
    """Whole-schedule figures, each phase weighted by the trainer's default length in epochs."""
    defaults = TrainConfig()
    epochs = {"reconstruction": defaults.recon_epochs, "classifier": defaults.classifier_epochs, "joint": defaults.joint_epochs}
    used = {p: epochs[p] for p in phases}
    seconds_per_image = sum(w / phases[p]["images_per_s"] for p, w in used.items()) / sum(used.values())
    render = sum(w * phases[p]["render_share"] / phases[p]["images_per_s"] for p, w in used.items())
    flops = sum(w * phases[p]["flops_per_image"] for p, w in used.items()) / sum(used.values())
    return {"phase_epochs": used, "images_per_s": 1 / seconds_per_image, "flops_per_image": flops,
            "render_share": render / sum(w / phases[p]["images_per_s"] for p, w in used.items())}


def profile_phase(objective, optimizer, batch, phase: str, args, device: torch.device, steps: int = 3) -> dict:
    """torch.profiler over ``steps`` steps of a phase (after one untimed): the top 15 kernels (on a
    CPU, operators) by self time with their share, and the host-device syncs per step."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    step = phase_step(objective, optimizer, batch, phase, args.precision, device)
    step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        if cuda:
            torch.cuda.synchronize()
    events = prof.key_averages()
    if cuda:
        kernels = [e for e in events if e.device_type.name == "CUDA" and e.self_device_time_total > 0]
        timed = [(e.key, e.self_device_time_total / 1000 / steps, e.count / steps) for e in kernels]
    else:
        timed = [(e.key, e.self_cpu_time_total / 1000 / steps, e.count / steps) for e in events if e.self_cpu_time_total > 0]
    total = sum(ms for _, ms, _ in timed) or 1.0
    top = sorted(timed, key=lambda t: -t[1])[:15]
    syncs = {e.key: e.count / steps for e in events if e.key in SYNC_EVENTS}
    return {"steps": steps, "kernel_ms_per_step": round(total, 3),
            "top": [{"name": name[:120], "ms_per_step": round(ms, 3), "share": round(ms / total, 4), "calls_per_step": calls}
                    for name, ms, calls in top],
            "syncs_per_step": syncs, "item_calls_per_step": syncs.get("aten::_local_scalar_dense", 0.0)}


def profile_table(profiles: dict[str, dict], device: torch.device) -> str:
    what = "CUDA kernels" if device.type == "cuda" else "CPU operators"
    lines = []
    for label, prof in profiles.items():
        lines.append(f"== {label}: top {len(prof['top'])} {what} by self time ({prof['kernel_ms_per_step']:.1f} ms of "
                     f"{what} per step); syncs per step: {prof['syncs_per_step'] or 'none'}")
        lines += [f"  {100 * t['share']:5.1f}%  {t['ms_per_step']:9.3f} ms  x{t['calls_per_step']:<6g} {t['name']}" for t in prof["top"]]
    return "\n".join(lines) + "\n"


def vit_baseline(args, device: torch.device, compiled: bool) -> dict:
    """timm's vit_small_patch16_224 training step (cross-entropy, the trainer's AdamW) at the same
    batch, size and precision: images/s, FLOPs per image and peak memory."""
    torch.manual_seed(0)
    model = timm.create_model("vit_small_patch16_224", num_classes=args.num_classes, img_size=args.img_size).to(device).train()
    defaults = TrainConfig()
    optimizer = create_adamw(model, defaults.base_lr, defaults.weight_decay, defaults.betas)
    images, _, labels = make_batch(args.batch, args.img_size, args.num_classes, device)
    dtype = autocast_dtype(args.precision)
    forward = torch.compile(model) if compiled else model

    def step(fwd=forward, update=True):
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = F.cross_entropy(fwd(images).float(), labels)
        loss.backward()
        if update:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    flops = training_flops(lambda: step(model, update=False), args.batch)
    warmup_s = warm_up(step, max(args.warmup, 2 if compiled else 0), device)
    seconds, peak = time_steps(step, args.steps, device)
    return {"images_per_s": args.batch * args.steps / seconds, "step_ms": 1000 * seconds / args.steps, "warmup_s": round(warmup_s, 2),
            "flops_per_image": flops, "peak_gib": peak}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--model", default="gvit_small", help="timm model name (default gvit_small)")
    parser.add_argument("--img-size", type=int, default=224, help="image size in pixels (default 224)")
    parser.add_argument("--num-gaussians", type=int, default=256, help="Gaussians per image, k (default 256)")
    parser.add_argument("--num-classes", type=int, default=1000, help="classifier outputs (default 1000)")
    parser.add_argument("--batch", type=int, default=256, help="images per step (default 256, the trainer's)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per phase, and as many instrumented (default 20)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps before each phase (default 5; compiled: compile time)")
    parser.add_argument("--phases", nargs="+", choices=PHASES, default=list(PHASES), help="phases to time (default all)")
    parser.add_argument("--precision", choices=("bf16", "fp16", "fp32"), default="bf16", help="autocast dtype (default bf16)")
    parser.add_argument("--modes", nargs="+", choices=("eager", "compiled"), default=["eager"],
                        help="eager, and/or compiled as train_gvit.py --compile (default eager)")
    parser.add_argument("--compile", action="store_true", help="shorthand for --modes eager compiled")
    parser.add_argument("--vit-baseline", action="store_true", help="also time timm's vit_small_patch16_224 step in the same modes")
    parser.add_argument("--profile", action="store_true", help="profile a few steps of each phase (top kernels, syncs per step)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the chip's dense bf16 peak, where the built-in table lacks it")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if there is one, else cpu)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "train_step.json", help="JSON output")
    args = parser.parse_args(argv)
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    for name in ("batch", "steps", "img_size", "num_gaussians", "num_classes"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.compile and "compiled" not in args.modes:
        args.modes = [*args.modes, "compiled"]
    if args.peak_tflops is not None and not args.peak_tflops > 0:
        parser.error("--peak-tflops must be > 0")
    return args


def measure_gvit(args, device: torch.device, mode: str, peak: float | None, profiles: dict) -> dict:
    """Every phase of the GViT step in one mode, with FLOPs and MFU; profiles land in ``profiles``."""
    torch.manual_seed(0)
    model = timm.create_model(args.model, num_classes=args.num_classes, img_size=args.img_size,
                              num_gaussians=args.num_gaussians).to(device)
    model.train()
    defaults = TrainConfig()
    optimizer = create_adamw(model, defaults.base_lr, defaults.weight_decay, defaults.betas)
    objective = GViTObjective(model, defaults.pixel_loss, defaults.lambda_perc, defaults.cls_into_encoder)
    batch = make_batch(args.batch, args.img_size, args.num_classes, device)
    counting = GViTObjective(model, defaults.pixel_loss, defaults.lambda_perc, defaults.cls_into_encoder)  # always eager
    flops = {phase: training_flops(phase_step(counting, optimizer, batch, phase, args.precision, device, update=False), args.batch)
             for phase in args.phases}
    if mode == "compiled":
        objective.compile_regions()
    timeline = Timeline(device)
    instrument(model, timeline, modules=mode == "eager")
    phases = {}
    for phase in args.phases:
        p = phases[phase] = measure_phase(objective, optimizer, batch, phase, args, device, timeline)
        p["flops_per_image"] = flops[phase]
        p["mfu"] = mfu(flops[phase], p["images_per_s"], peak)
        extra = f", peak {p['peak_gib']:.1f} GiB" if p["peak_gib"] is not None else ""
        extra += f", MFU {100 * p['mfu']:.1f}%" if p["mfu"] is not None else ""
        print(f"{mode:<8} {phase:<15} {p['images_per_s']:9.1f} img/s  {p['step_ms']:8.1f} ms/step  render "
              f"{100 * p['render_share']:5.1f}% of the step, {flops[phase] / 1e9:.2f} GFLOP/image{extra}, warm-up "
              f"{p['warmup_s']:.1f} s, {p['compiled_during_timing']} graphs compiled while timed  {p['instrumented_ms']}", flush=True)
        if args.profile:
            profiles[f"{mode} {phase}"] = profile_phase(objective, optimizer, batch, phase, args, device)
    overall = schedule_weighted(phases)
    overall["mfu"] = mfu(overall["flops_per_image"], overall["images_per_s"], peak)
    return {"phases": phases, "schedule": overall,
            "peak_gib": max((p["peak_gib"] for p in phases.values() if p["peak_gib"] is not None), default=None)}


def check_targets(gvit: dict, vit: dict) -> list[str]:
    """PASS/FAIL lines of issue 18's targets for the best GViT mode."""
    best_mode = max(gvit, key=lambda m: gvit[m]["schedule"]["images_per_s"])
    overall = gvit[best_mode]["schedule"]
    lines = [
        f"{'PASS' if overall['images_per_s'] >= MIN_IMAGES_PER_S else 'FAIL'}  {overall['images_per_s']:.0f} img/s over the "
        f"schedule, {best_mode} (target >= {MIN_IMAGES_PER_S:.0f} on one H100/H200, gvit_small, 224 px, k=256, bf16, batch 256)",
        f"{'PASS' if overall['render_share'] <= MAX_RENDER_SHARE else 'FAIL'}  rendering takes {100 * overall['render_share']:.1f}% "
        f"of the step, {best_mode} (target <= {100 * MAX_RENDER_SHARE:.0f}%)",
    ]
    reference = vit.get("compiled") or vit.get("eager")
    if reference and overall.get("mfu") and reference.get("mfu"):
        ratio = overall["mfu"] / reference["mfu"]
        lines.append(f"{'PASS' if ratio >= MIN_MFU_RATIO else 'FAIL'}  GViT's schedule MFU ({best_mode}) is {ratio:.2f}x "
                     f"{'compiled' if vit.get('compiled') else 'eager'} ViT-S's ({100 * overall['mfu']:.1f}% vs "
                     f"{100 * reference['mfu']:.1f}%; target >= {MIN_MFU_RATIO}x compiled)")
    return lines


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    peak, peak_source = peak_tflops(device, args.peak_tflops)
    print(f"peak: {f'{peak:g} TFLOP/s' if peak else 'unknown'} ({peak_source})")
    profiles: dict[str, dict] = {}
    gvit = {mode: measure_gvit(args, device, mode, peak, profiles) for mode in args.modes}
    for mode, result in gvit.items():
        overall = result["schedule"]
        print(f"{mode}: schedule-weighted ({overall['phase_epochs']}): {overall['images_per_s']:.1f} img/s, render "
              f"{100 * overall['render_share']:.1f}%" + (f", MFU {100 * overall['mfu']:.1f}%" if overall["mfu"] is not None else ""))
    vit = {}
    if args.vit_baseline:
        for mode in args.modes:
            v = vit[mode] = vit_baseline(args, device, compiled=mode == "compiled")
            v["mfu"] = mfu(v["flops_per_image"], v["images_per_s"], peak)
            print(f"vit_small_patch16_224 {mode}: {v['images_per_s']:.1f} img/s, {v['flops_per_image'] / 1e9:.2f} GFLOP/image"
                  + (f", MFU {100 * v['mfu']:.1f}%" if v["mfu"] is not None else ""), flush=True)
    targets = check_targets(gvit, vit)
    print("\n".join(targets))
    first = gvit[args.modes[0]]
    report = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
                    "torch": torch.__version__, "renderer": resolve_backend("auto", device),
                    "gsplat": (gsplat_error() or "available") if device.type == "cuda" else "not used",
                    "peak_bf16_tflops": peak, "peak_source": peak_source},
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        # the first mode's figures at the top level, as before --modes existed
        "phases": first["phases"], "schedule": first["schedule"], "peak_gib": first["peak_gib"],
        "modes": gvit, "vit_small": vit, "targets": targets,
    }
    if profiles:
        report["profile"] = profiles
        table = profile_table(profiles, device)
        print(table)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".profile.txt").write_text(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
