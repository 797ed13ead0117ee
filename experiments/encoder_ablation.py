#!/usr/bin/env python
"""Why the Gaussian encoder reconstructs poorly: one row per change, a fixed CPU budget each.

    python experiments/prepare_imagenette.py                 # once: runs/data/imagenette-80
    python experiments/encoder_ablation.py                   # every row (resumable; ~5 min a row on 2 cores)
    python experiments/encoder_ablation.py --only patch8 lr1e-3-clip   # some rows
    python experiments/encoder_ablation.py --device cuda --backend reference --only cur-b16 --results gpu.json   # on a GPU

Each row trains gvit_nano's encoder (k = 64, 64 px) on reconstruction only, for --epochs epochs of
Imagenette's 6,000 training images (batch 64 unless the row sets its own batch or epochs;
random-resized crops 0.5-1 and flips, BCE, D-SSIM
from half-way, AdamW with the trainer's parameter groups, warm-up then cosine), then measures the
PSNR of its eval-mode Gaussians on the full 3,925-image validation split (centre crops, the
trainer's eval transform) and its training throughput. Rows differ from the ``paper`` row (the
paper's recipe) or, the ``cur-*`` rows, from ``patch8-lr1e-3-clip`` in the settings they name. The data is decoded once into memory, so the rows time
the model, not JPEG decoding. Results go to experiments/results/encoder_ablation.json, each row's
encoder weights to runs/encoder_ablation/.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import timm
import torch
import torchvision.transforms.v2.functional as TF
from safetensors.torch import save_file
from timm.optim import create_optimizer_v2
from torchvision.datasets import ImageFolder
from tqdm import tqdm

import timm_gvit  # noqa: F401  (registers the models)
from timm_gvit.fitting import psnr
from timm_gvit.training.data import CROP_SCALE
from timm_gvit.training.losses import reconstruction_loss

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "experiments" / "results" / "encoder_ablation.json"
#: each row's trained encoder (a state dict of GViT.encoder), for the classifier rows
ENCODERS = ROOT / "runs" / "encoder_ablation"
PAPER = dict(lr=3e-4, clip=None, warmup=0.5, betas=(0.9, 0.95), loss="bce", batch=64, model=dict(patch_size=16))
#: the current recipe (patch 8, lr 1e-3, clip 1), which the rows below it change one or two things of
CURRENT = dict(lr=1e-3, clip=1.0, model=dict(patch_size=8))


def current(**changes) -> dict:
    """CURRENT with ``changes`` (a ``model`` dict is merged into CURRENT's)."""
    return {**CURRENT, **changes, "model": {**CURRENT["model"], **changes.get("model", {})}}


#: name -> (what it changes, settings over PAPER)
ROWS = {
    "paper": ("the study's recipe: patch 16, lr 3e-4, no clipping", {}),
    "lr1e-3": ("lr 1e-3", dict(lr=1e-3)),
    "lr1e-3-clip": ("lr 1e-3, gradient norm clipped at 1", dict(lr=1e-3, clip=1.0)),
    "patch8": ("patch 8 (64 patch tokens)", dict(model=dict(patch_size=8))),
    "patch8-lr1e-3-clip": ("patch 8, lr 1e-3, clip 1", dict(lr=1e-3, clip=1.0, model=dict(patch_size=8))),
    "patch8-mse": ("patch 8, MSE instead of BCE", dict(loss="mse", model=dict(patch_size=8))),
    "patch8-lr3e-3-clip": ("patch 8, lr 3e-3, clip 1", dict(lr=3e-3, clip=1.0, model=dict(patch_size=8))),
    "patch8-lr1e-3-clip-mse": ("patch 8, lr 1e-3, clip 1, MSE instead of BCE", dict(lr=1e-3, clip=1.0, loss="mse", model=dict(patch_size=8))),
    "patch8-c0.5": ("patch 8, scale bound c = 0.5", dict(model=dict(patch_size=8, scale_bound=0.5))),
    # one or two changes over the current recipe (patch 8, lr 1e-3, clip 1)
    "cur-conv": ("current + convolutional stem", current(model=dict(encoder_stem="conv"))),
    "cur-refine2": ("current + a second encoder pass (iterative refinement)", current(model=dict(encoder_refine_steps=2))),
    "cur-b32": ("current, batch 32 (twice the steps)", current(batch=32)),
    "cur-b16": ("current, batch 16 (four times the steps)", current(batch=16)),
    "cur-lr2e-3": ("current, lr 2e-3", current(lr=2e-3)),
    "cur-c0.5": ("current, scale bound c = 0.5", current(model=dict(scale_bound=0.5))),
    "cur-mse": ("current, MSE instead of BCE", current(loss="mse")),
    "cur-beta0.99": ("current, Adam beta2 0.99", current(betas=(0.9, 0.99))),
    "cur-conv-b32": ("current + conv stem, batch 32", current(batch=32, model=dict(encoder_stem="conv"))),
    "cur-conv-refine2": ("current + conv stem + refinement", current(model=dict(encoder_stem="conv", encoder_refine_steps=2))),
    "cur-conv-b16": ("current + conv stem, batch 16", current(batch=16, model=dict(encoder_stem="conv"))),
    "cur-conv-b32-refine2": ("current + conv stem + refinement, batch 32", current(batch=32, model=dict(encoder_stem="conv", encoder_refine_steps=2))),
    "cur-conv-b32-lr2e-3": ("current + conv stem, batch 32, lr 2e-3", current(batch=32, lr=2e-3, model=dict(encoder_stem="conv"))),
    "cur-w192": ("current, encoder width 192 (6 heads)", current(model=dict(encoder_embed_dim=192, encoder_num_heads=6))),
    "cur-8ep": ("current, 8 epochs instead of 4 (the budget's worth)", current(epochs=8.0)),
    "cur-b16-lr5e-4": ("current, batch 16, lr 5e-4", current(batch=16, lr=5e-4)),
    "cur-b16-lr2e-3": ("current, batch 16, lr 2e-3", current(batch=16, lr=2e-3)),
    "cur-b16-mse": ("current, batch 16, MSE instead of BCE", current(batch=16, loss="mse")),
    "cur-b16-refine2": ("current, batch 16, refinement", current(batch=16, model=dict(encoder_refine_steps=2))),
    "cur-conv-b32-8ep": ("current + conv stem, batch 32, 8 epochs", current(batch=32, epochs=8.0, model=dict(encoder_stem="conv"))),
}


def load_split(folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images ``[N, 3, S, S]`` and labels ``[N]`` of an imagefolder of equal-sized images."""
    data = ImageFolder(str(folder))
    images = torch.stack([TF.pil_to_tensor(data.loader(path).convert("RGB")) for path, _ in tqdm(data.samples, desc=f"reading {folder}", mininterval=5)])
    return images, torch.tensor(data.targets)


def eval_crops(images: torch.Tensor, size: int, crop_pct: float = 0.9) -> torch.Tensor:
    """The trainer's eval transform on a uint8 batch: resize to size / crop_pct, centre crop, [0, 1]."""
    resized = TF.resize(images, [math.floor(size / crop_pct)], interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
    return TF.center_crop(resized, [size, size]).float().div(255).clamp(0, 1)


def train_crops(images: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """Random-resized crops (scale CROP_SCALE, ratio 3/4-4/3) and flips of a uint8 batch, in [0, 1]."""
    out = []
    S = images.shape[-1]
    for image in images:
        for _ in range(10):
            area = S * S * (CROP_SCALE[0] + (CROP_SCALE[1] - CROP_SCALE[0]) * torch.rand(1, generator=generator).item())
            ratio = math.exp(math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * torch.rand(1, generator=generator).item())
            w, h = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
            if w <= S and h <= S:
                break
        top = int(torch.randint(0, S - h + 1, (1,), generator=generator))
        left = int(torch.randint(0, S - w + 1, (1,), generator=generator))
        crop = TF.resized_crop(image, top, left, h, w, [size, size], interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
        out.append(TF.horizontal_flip(crop) if torch.rand(1, generator=generator).item() < 0.5 else crop)
    return torch.stack(out).float().div(255).clamp(0, 1)


def run_row(name: str, settings: dict, train: torch.Tensor, val: torch.Tensor, epochs: float, seed: int, save_dir: Path,
            device: str = "cpu", backend: str = "auto") -> dict:
    s = {**PAPER, **settings}
    epochs, batch = s.pop("epochs", epochs), s["batch"]
    torch.manual_seed(seed)
    model = timm.create_model("gvit_nano", num_classes=10, render_backend=backend, **s["model"]).to(device)
    size = model.img_size[0]
    mean = torch.tensor(model.pretrained_cfg["mean"], device=device).view(1, 3, 1, 1)
    std = torch.tensor(model.pretrained_cfg["std"], device=device).view(1, 3, 1, 1)
    model.classifier.requires_grad_(False)
    optimizer = create_optimizer_v2(model, "adamw", lr=s["lr"], weight_decay=0.05, betas=s["betas"])
    steps_per_epoch = len(train) // batch
    total, warmup = round(epochs * steps_per_epoch), round(s["warmup"] * steps_per_epoch)
    lr_at = lambda t: s["lr"] * ((t + 1) / warmup if t < warmup else 0.5 * (1 + math.cos(math.pi * (t - warmup) / max(1, total - warmup))))  # noqa: E731
    generator = torch.Generator().manual_seed(seed)
    model.train()
    grad_norms, losses, seen, train_time = [], [], 0, 0.0
    bar = tqdm(range(total), desc=name, mininterval=10)
    for t in bar:
        if t % steps_per_epoch == 0:
            order = torch.randperm(len(train), generator=generator)
        idx = order[(t % steps_per_epoch) * batch:(t % steps_per_epoch + 1) * batch]
        targets = train_crops(train[idx], size, generator).to(device)
        started = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = lr_at(t)
        loss = reconstruction_loss(model.render(model.encode((targets - mean) / std)), targets, s["loss"], 0.1, with_dssim=t >= total // 2)
        optimizer.zero_grad(set_to_none=True)
        if torch.isfinite(loss):
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(model.encoder.parameters(), s["clip"] or float("inf"))
            grad_norms.append(norm.item())
            optimizer.step()
        if device != "cpu":
            torch.cuda.synchronize()
        train_time += time.perf_counter() - started
        seen += len(idx)
        losses.append(loss.item())
        bar.set_postfix(loss=f"{loss.item():.4f}", img_s=f"{seen / train_time:.0f}", refresh=False)
    model.eval()
    save_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.encoder.state_dict().items()}, save_dir / f"{name}.safetensors")
    with torch.no_grad():
        scores = torch.cat([psnr(model.render(model.encode((x - mean) / std)), x) for x in val.to(device).split(256)])
    finite = [g for g in grad_norms if math.isfinite(g)]
    return {
        "about": ROWS[name][0] if name in ROWS else name, "settings": {**s, "betas": list(s["betas"])}, "epochs": epochs, "seed": seed,
        "val_psnr": scores.mean().item(), "train_img_s": seen / train_time, "final_train_loss": sum(losses[-20:]) / len(losses[-20:]),
        "grad_norm_median": sorted(finite)[len(finite) // 2] if finite else None, "grad_norm_max": max(finite) if finite else None,
        "nonfinite_steps": len(grad_norms) - len(finite) + sum(not math.isfinite(v) for v in losses),
        "params": sum(p.numel() for p in model.encoder.parameters()),
        "device": torch.cuda.get_device_name() if device != "cpu" else "cpu", "render_backend": backend,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(ROOT / "runs" / "data" / "imagenette-80"), help="output of prepare_imagenette.py")
    parser.add_argument("--only", nargs="*", help="rows to run (default: all not yet in the results)")
    parser.add_argument("--epochs", type=float, default=4.0, help="training epochs per row")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rerun", action="store_true", help="run rows that already have results")
    parser.add_argument("--results", default=str(RESULTS), help="JSON file of results (rows are added as they finish)")
    parser.add_argument("--device", default="cpu", help="where to train (cuda: a GPU; rows then time the GPU)")
    parser.add_argument("--backend", default="auto", help="render backend (see timm_gvit.render_gaussians)")
    args = parser.parse_args()
    names = args.only or list(ROWS)
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; rows are {list(ROWS)}")
    results_path = Path(args.results)
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    todo = [n for n in names if args.rerun or n not in results]
    if not todo:
        print("nothing to do")
        return
    data = Path(args.data)
    train, _ = load_split(data / "train")
    val = eval_crops(load_split(data / "val")[0], 64)
    for name in todo:
        row = run_row(name, ROWS[name][1], train, val, args.epochs, args.seed, ENCODERS, args.device, args.backend)
        print(f"{name}: val PSNR {row['val_psnr']:.2f} dB, {row['train_img_s']:.0f} img/s, grad norm median {row['grad_norm_median']}")
        results = json.loads(results_path.read_text()) if results_path.is_file() else {}
        results[name] = row
        results_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = results_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=2))
        tmp.replace(results_path)


if __name__ == "__main__":
    main()
