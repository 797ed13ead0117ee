"""Speed per FLOP of GViT against timm's own ViT, on the CPU, in one run.

    python benchmarks/model.py [--batch 8] [--repeats 5] [--out benchmarks/results/model.json]

For ``gvit_small`` and ``vit_small_patch16_224`` (both 224 px) it measures inference images/s
(``torch.inference_mode``) and training-step images/s, and counts FLOPs per image with
``torch.utils.flop_counter``. The GViT training step is the real one: ``forward_train``
(logits, Gaussians, rendering), cross-entropy + BCE reconstruction, backward and an AdamW step.
FLOP counting sees matmuls and attention only, not the renderer's custom op, so any time the
renderer takes shows up as lower training efficiency.

Efficiency ratio = GViT images/s divided by what ViT-S's images/s per FLOP predicts for
GViT's FLOPs, i.e. (ips_gvit * flops_gvit) / (ips_vit * flops_vit). Target (issue 3): >= 0.9.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

import timm_gvit  # noqa: F401  (registers the models)

MODELS = ("gvit_small", "vit_small_patch16_224")


def train_step(model, optimizer, images, labels):
    if isinstance(model, timm_gvit.GViT):
        out = model.forward_train(images)
        target = (images * 0.25 + 0.5).clamp(0, 1)  # stand-in for the un-normalised image
        loss = F.cross_entropy(out.logits, labels) + F.binary_cross_entropy(out.reconstruction.clamp(1e-6, 1 - 1e-6), target)
    else:
        loss = F.cross_entropy(model(images), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def count_flops(fn) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


def timed(fn, repeats: int) -> float:
    """Median seconds of ``repeats`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(name: str, batch: int, repeats: int, num_classes: int) -> dict:
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=num_classes)
    images, labels = torch.randn(batch, 3, 224, 224), torch.randint(0, num_classes, (batch,))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.eval()
    with torch.inference_mode():
        infer_flops = count_flops(lambda: model(images[:1]))
        infer_s = timed(lambda: model(images), repeats)
    model.train()
    step_flops = count_flops(lambda: train_step(model, optimizer, images[:1], labels[:1]))
    step_s = timed(lambda: train_step(model, optimizer, images, labels), repeats)
    return {
        "model": name,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "infer_gflops_per_img": infer_flops / 1e9,
        "infer_img_per_s": batch / infer_s,
        "train_gflops_per_img": step_flops / 1e9,
        "train_img_per_s": batch / step_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--batch", type=int, default=8, help="images per timed call (default 8)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per measurement, median reported (default 5)")
    parser.add_argument("--num-classes", type=int, default=1000, help="classifier outputs (default 1000)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", default="benchmarks/results/model.json", help="JSON output path")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    rows = [measure(name, args.batch, args.repeats, args.num_classes) for name in tqdm(MODELS, desc="models")]
    gvit, vit = rows
    ratios = {
        mode: (gvit[f"{mode}_img_per_s"] * gvit[f"{mode}_gflops_per_img"]) / (vit[f"{mode}_img_per_s"] * vit[f"{mode}_gflops_per_img"])
        for mode in ("infer", "train")
    }
    header = f"{'model':<24}{'params M':>10}{'GFLOPs/img':>12}{'infer img/s':>13}{'train GFLOPs/img':>18}{'train img/s':>13}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['model']:<24}{r['params_m']:>10.1f}{r['infer_gflops_per_img']:>12.2f}{r['infer_img_per_s']:>13.2f}{r['train_gflops_per_img']:>18.2f}{r['train_img_per_s']:>13.2f}")
    for mode, ratio in ratios.items():
        verdict = "PASS" if ratio >= 0.9 else "FAIL"
        print(f"efficiency ratio ({mode}): {ratio:.2f}  [target >= 0.9: {verdict}]")
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine()},
        "settings": vars(args),
        "rows": rows,
        "efficiency_ratio": ratios,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
