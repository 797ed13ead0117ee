"""Speed-up of ``train_gvit.py --compile`` on the CPU: the trainer's real training step, eager
against compiled, in one run.

    python benchmarks/compile.py [--model gvit_nano] [--batch 32] [--steps 20] [--out benchmarks/results/compile.json]

Both copies start from the same weights. A step is what the trainer does per batch: the
``GViTObjective`` loss of a phase (``reconstruction``: encoder + renderer; ``joint``: encoder in
training and test mode, classifier, renderer), backward and the trainer's AdamW step. ``--compile``
is ``GViTObjective.compile_regions()``: the encoder, the Gaussian decode, the classifier and the
losses go through ``torch.compile``; the renderer stays eager. The compiled copy's first steps (compilation) are timed separately; then
eager and compiled steps alternate, so that both see the same machine load.
"""

import argparse
import copy
import json
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import timm
import torch

import timm_gvit  # noqa: F401  (registers the models)
from timm_gvit.gvit import rgb_targets
from timm_gvit.training.objective import GViTObjective
from timm_gvit.training.optim import create_adamw

PHASES = ("reconstruction", "joint")


def make_step(model, phase: str, images, targets, labels, compiled: bool):
    objective = GViTObjective(model).compile_regions() if compiled else GViTObjective(model)
    optimizer = create_adamw(model, 1e-4, 0.05, (0.9, 0.95))

    def step() -> float:
        start = time.perf_counter()
        loss, _ = objective(images, targets, labels, phase, with_dssim=False)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return time.perf_counter() - start

    return step


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gvit_nano")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per phase and variant")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (the compiled copy compiles in them)")
    parser.add_argument("--out", default="benchmarks/results/compile.json")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    eager = timm.create_model(args.model, num_classes=10).train()
    compiled = copy.deepcopy(eager)
    config = eager.pretrained_cfg
    pixels = torch.rand(args.batch, *config["input_size"])
    mean, std = torch.tensor(config["mean"]).view(1, -1, 1, 1), torch.tensor(config["std"]).view(1, -1, 1, 1)
    images = (pixels - mean) / std
    targets, labels = rgb_targets(images, config["mean"], config["std"]), torch.randint(0, 10, (args.batch,))

    results = {"model": args.model, "input_size": list(config["input_size"]), "batch": args.batch, "steps": args.steps,
               "torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
               "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "phases": {}}
    for phase in PHASES:
        eager_step, compiled_step = (make_step(m, phase, images, targets, labels, m is compiled) for m in (eager, compiled))
        first = time.perf_counter()
        for _ in range(args.warmup):
            eager_step()
            compiled_step()
        warmup_s = time.perf_counter() - first
        eager_s, compiled_s = [], []
        for _ in range(args.steps):
            eager_s.append(eager_step())
            compiled_s.append(compiled_step())
        row = {"eager_ms": 1000 * statistics.median(eager_s), "compiled_ms": 1000 * statistics.median(compiled_s),
               "warmup_s_both": warmup_s}
        row["speedup"] = row["eager_ms"] / row["compiled_ms"]
        results["phases"][phase] = row
        print(f"{phase:>14}: eager {row['eager_ms']:.1f} ms/step, compiled {row['compiled_ms']:.1f} ms/step, "
              f"speed-up {row['speedup']:.2f}x (warm-up incl. compilation {warmup_s:.0f} s)", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
