"""Time GViT's training step: images/s, peak memory, and the share of the step spent rendering.

    python benchmarks/train_step.py [--model gvit_small] [--batch 256] [--steps 20] [--out PATH]

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
200 / 50 / 150 epochs). Issue 10's targets (one H100 or H200, gvit_small, 224 px, k = 256, bf16):
at least 3,000 images/s and a render share of at most 20 %.
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
from timm.optim import create_optimizer_v2

import timm_gvit  # noqa: F401  (registers the models)
from timm_gvit.rendering import gsplat_error
from timm_gvit.training.config import TrainConfig
from timm_gvit.training.objective import GViTObjective

PHASES = ("reconstruction", "classifier", "joint")
MIN_IMAGES_PER_S, MAX_RENDER_SHARE = 3000.0, 0.20
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


def instrument(model, timeline: Timeline) -> None:
    """Mark the encoder's and classifier's forward passes and the render's forward and backward."""
    for name in ("encoder", "classifier"):
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


def measure_phase(objective, optimizer, batch, phase: str, args, device: torch.device, timeline: Timeline) -> dict:
    images, targets, labels = batch
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.precision)

    def step():
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss, _ = objective(images, targets, labels, phase, True)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    timeline.totals()  # drop the warm-up's marks
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
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
        "images_per_s": args.batch * args.steps / seconds,
        "step_ms": 1000 * seconds / args.steps,
        "peak_gib": peak,
        "instrumented_ms": {name: round(ms, 3) for name, ms in sorted(parts.items())},
        "render_ms": render_ms,
        "render_share": render_ms / parts["step"],
    }


def schedule_weighted(phases: dict[str, dict]) -> dict:
    """Whole-schedule figures, each phase weighted by the trainer's default length in epochs."""
    defaults = TrainConfig()
    epochs = {"reconstruction": defaults.recon_epochs, "classifier": defaults.classifier_epochs, "joint": defaults.joint_epochs}
    used = {p: epochs[p] for p in phases}
    seconds_per_image = sum(w / phases[p]["images_per_s"] for p, w in used.items()) / sum(used.values())
    render = sum(w * phases[p]["render_share"] / phases[p]["images_per_s"] for p, w in used.items())
    return {"phase_epochs": used, "images_per_s": 1 / seconds_per_image,
            "render_share": render / sum(w / phases[p]["images_per_s"] for p, w in used.items())}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--model", default="gvit_small", help="timm model name (default gvit_small)")
    parser.add_argument("--img-size", type=int, default=224, help="image size in pixels (default 224)")
    parser.add_argument("--num-gaussians", type=int, default=256, help="Gaussians per image, k (default 256)")
    parser.add_argument("--num-classes", type=int, default=1000, help="classifier outputs (default 1000)")
    parser.add_argument("--batch", type=int, default=256, help="images per step (default 256, the trainer's)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per phase, and as many instrumented (default 20)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps before each phase (default 5)")
    parser.add_argument("--phases", nargs="+", choices=PHASES, default=list(PHASES), help="phases to time (default all)")
    parser.add_argument("--precision", choices=("bf16", "fp16", "fp32"), default="bf16", help="autocast dtype (default bf16)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if there is one, else cpu)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "train_step.json", help="JSON output")
    args = parser.parse_args(argv)
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    for name in ("batch", "steps", "img_size", "num_gaussians", "num_classes"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(0)
    model = timm.create_model(args.model, num_classes=args.num_classes, img_size=args.img_size,
                              num_gaussians=args.num_gaussians).to(device)
    model.train()
    defaults = TrainConfig()
    optimizer = create_optimizer_v2(model, "adamw", lr=defaults.base_lr, weight_decay=defaults.weight_decay, betas=defaults.betas)
    objective = GViTObjective(model, defaults.pixel_loss, defaults.lambda_perc, defaults.cls_into_encoder)
    timeline = Timeline(device)
    instrument(model, timeline)
    batch = make_batch(args.batch, args.img_size, args.num_classes, device)
    phases = {}
    for phase in args.phases:
        phases[phase] = measure_phase(objective, optimizer, batch, phase, args, device, timeline)
        p = phases[phase]
        peak = f", peak {p['peak_gib']:.1f} GiB" if p["peak_gib"] is not None else ""
        print(f"{phase:<15} {p['images_per_s']:9.1f} img/s  {p['step_ms']:8.1f} ms/step  render "
              f"{100 * p['render_share']:5.1f}% of the step{peak}  {p['instrumented_ms']}", flush=True)
    overall = schedule_weighted(phases)
    targets = [
        f"{'PASS' if overall['images_per_s'] >= MIN_IMAGES_PER_S else 'FAIL'}  {overall['images_per_s']:.0f} img/s over the "
        f"schedule (target >= {MIN_IMAGES_PER_S:.0f} on one H100/H200, gvit_small, 224 px, k=256, bf16, batch 256)",
        f"{'PASS' if overall['render_share'] <= MAX_RENDER_SHARE else 'FAIL'}  rendering takes {100 * overall['render_share']:.1f}% "
        f"of the step (target <= {100 * MAX_RENDER_SHARE:.0f}%)",
    ]
    print(f"schedule-weighted ({overall['phase_epochs']}): {overall['images_per_s']:.1f} img/s, render "
          f"{100 * overall['render_share']:.1f}%")
    print("\n".join(targets))
    report = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
                    "torch": torch.__version__, "renderer": model.render_backend,
                    "gsplat": (gsplat_error() or "available") if device.type == "cuda" else "not used"},
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "phases": phases,
        "schedule": overall,
        "peak_gib": max((p["peak_gib"] for p in phases.values() if p["peak_gib"] is not None), default=None),
        "targets": targets,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
