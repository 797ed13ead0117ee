#!/usr/bin/env python
"""The Imagenette study's classifier-only experiments: offline SGD Gaussians, the leakage
controls, the cross-training 2x2 and timm's ViT on patches (paper sections 3.1-3.2).

    python experiments/gaussian_study.py          # after experiments/study.py has made runs/imagenette/encoder-k64
    python experiments/gaussian_study.py --baseline-only --baseline-epochs 14   # only the ViT/8 baseline

Every training and validation image is centre-cropped to 64 px (the models' eval transform) once.
Two Gaussian sets are made for all of them, k = 64 each:
- learned: the phase-1 encoder of the study (runs/imagenette/encoder-k64, reconstruction only,
  never trained on labels), in eval mode (fixed g0);
- sgd: ``timm_gvit.fitting.fit_gaussians`` on every image (grid init, --fit-steps Adam steps).
Classifiers, all 128 wide and 6 deep with 4 heads like gvit_nano's, trained the same way
(--epochs, batch 64, AdamW lr 3e-4, cosine, horizontal flips; a flip of a Gaussian set negates mu_x
and phi and mirrors the slots, ``timm_gvit.gaussians.hflip_gaussians``):
- the Gaussian classifier on each set, evaluated on both sets (the cross-training 2x2);
- timm's ViT (patch 8: 64 tokens, as many as Gaussians) on each set's renderings (leakage control);
- timm's ViT/8 on the photographs themselves (the patch baseline), on the same fixed crops, and
  for --baseline-epochs epochs with the trainer's random-resized crops.
Caches go to runs/imagenette/cache, results to experiments/results/gaussian_study.json.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from timm.data import create_transform, resolve_model_data_config
from torch import Tensor, nn
from torchvision.datasets import ImageFolder
from tqdm import tqdm

import timm_gvit  # noqa: F401
from timm_gvit import render_gaussians
from timm_gvit.classifier import GaussianClassifier
from timm_gvit.fitting import fit_gaussians, psnr
from timm_gvit.gaussians import hflip_gaussians
from timm_gvit.training.data import training_transform

ROOT = Path(__file__).resolve().parent.parent
RUNS = ROOT / "runs" / "imagenette"
CACHE = RUNS / "cache"
RESULTS = ROOT / "experiments" / "results" / "gaussian_study.json"
WIDTH = dict(embed_dim=128, depth=6, num_heads=4)


def cached(name: str, make):
    path = CACHE / f"{name}.pt"
    if path.is_file():
        return torch.load(path)
    value = make()
    CACHE.mkdir(parents=True, exist_ok=True)
    torch.save(value, path)
    return value


def load_crops(data: Path, split: str, transform) -> dict:
    folder = ImageFolder(str(data / split), transform=transform)
    images = torch.stack([folder[i][0] for i in tqdm(range(len(folder)), desc=f"{split}: crops")])
    return {"images": images, "labels": torch.tensor(folder.targets), "classes": folder.classes}


@torch.no_grad()
def encode_all(model, images: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    model.eval()
    return torch.cat([model.encode((chunk - mean) / std) for chunk in tqdm(images.split(256), desc="encoder Gaussians")])


def fit_all(images: Tensor, steps: int, name: str) -> Tensor:
    """SGD Gaussians for every image, 64 at a time; partial progress survives an interruption."""
    parts_dir = CACHE / f"{name}-parts"
    parts_dir.mkdir(parents=True, exist_ok=True)
    chunks = images.split(64)
    out = []
    for i, chunk in enumerate(tqdm(chunks, desc=f"SGD Gaussians ({steps} steps)")):
        path = parts_dir / f"{i:05d}.pt"
        if not path.is_file():
            torch.save(fit_gaussians(chunk, 64, steps, "grid", backend="cpu", seed=i, progress=False), path)
        out.append(torch.load(path))
    return torch.cat(out)


@torch.no_grad()
def render_all(gaussians: Tensor) -> Tensor:
    return torch.cat([render_gaussians(g, 64, 64, backend="cpu") for g in gaussians.split(256)])


def optimise(model: nn.Module, batches, total: int, warmup: int, param_groups: list[dict], desc: str, lr: float = 3e-4) -> None:
    """Cross-entropy with AdamW (lr 3e-4 unless given, betas 0.9/0.95), linear warm-up then cosine to 1%,
    over ``total`` steps of ``batches`` (an iterable of ``(inputs, labels)``)."""
    opt = torch.optim.AdamW(param_groups, lr=lr, betas=(0.9, 0.95))
    cosine = lambda s: (s + 1) / warmup if s < warmup else 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, total - warmup)))  # noqa: E731
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine)
    model.train()
    with tqdm(total=total, desc=desc, mininterval=10) as bar:
        for x, y in batches:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    model.eval()


def train_classifier(model: nn.Module, inputs: Tensor, labels: Tensor, epochs: int, flip, desc: str,
                     seed: int = 0, batch: int = 64, lr: float = 3e-4) -> nn.Module:
    """Half-epoch warm-up, random flips, no weight decay on norms, biases and position
    embeddings; on an in-memory tensor dataset."""
    gen = torch.Generator().manual_seed(seed)
    steps_per_epoch = len(inputs) // batch

    def batches():
        for _ in range(epochs):
            order = torch.randperm(len(inputs), generator=gen)
            for i in range(steps_per_epoch):
                idx = order[i * batch:(i + 1) * batch]
                x = inputs[idx]
                flips = torch.rand(len(idx), generator=gen) < 0.5
                yield torch.where(flips.view(-1, *[1] * (x.dim() - 1)), flip(x), x), labels[idx]

    decayed = lambda n, p: p.ndim > 1 and "pos_embed" not in n  # noqa: E731
    groups = [{"params": [p for n, p in model.named_parameters() if decayed(n, p)], "weight_decay": 0.05},
              {"params": [p for n, p in model.named_parameters() if not decayed(n, p)], "weight_decay": 0.0}]
    optimise(model, batches(), epochs * steps_per_epoch, steps_per_epoch // 2, groups, desc, lr)
    return model


@torch.no_grad()
def accuracy(model: nn.Module, inputs: Tensor, labels: Tensor) -> float:
    model.eval()
    correct = sum((model(x).argmax(1) == y).sum().item() for x, y in zip(inputs.split(256), labels.split(256)))
    return 100.0 * correct / len(labels)


def vit(patch: int, **kwargs) -> nn.Module:
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, patch_size=patch, num_classes=10, **WIDTH, **kwargs)


def train_vit_augmented(data: Path, patch: int, epochs: int, seed: int, val: dict, normalise) -> float:
    """timm's ViT with the trainer's training transform (random-resized crop 0.5-1, flips)."""
    model = vit(patch)
    config = resolve_model_data_config(timm.create_model("gvit_nano"))
    folder = ImageFolder(str(data / "train"), transform=training_transform(config, hflip=0.5))
    loader = torch.utils.data.DataLoader(folder, batch_size=64, shuffle=True, drop_last=True,
                                         generator=torch.Generator().manual_seed(seed))
    optimise(model, (b for _ in range(epochs) for b in loader), epochs * len(loader), len(loader) // 2,
             [{"params": list(model.parameters()), "weight_decay": 0.05}], f"ViT patch {patch}, random-resized crops")
    return accuracy(model, normalise(val["images"]), val["labels"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT / "runs" / "data" / "imagenette-80"), help="the prepared imagefolder")
    parser.add_argument("--encoder", default=str(RUNS / "encoder-k64" / "export"), help="export folder of the phase-1 encoder")
    parser.add_argument("--fit-steps", type=int, default=25, help="Adam steps per image for the SGD Gaussians")
    parser.add_argument("--epochs", type=int, default=6, help="epochs of every classifier on the fixed crops")
    parser.add_argument("--baseline-epochs", type=int, default=10, help="epochs of the ViT patch baseline with random-resized crops")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--baseline-only", action="store_true", help="run only the ViT/8 baseline with random-resized crops")
    args = parser.parse_args()
    data = Path(args.data)
    torch.manual_seed(args.seed)
    started = time.time()
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}

    def record(key, value):
        results[key] = value
        results["config"] = {**vars(args), "wall_seconds_so_far": round(time.time() - started)}
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=2))
        print(f"{key}: {value}", flush=True)

    encoder_model = timm.create_model(f"local-dir:{args.encoder}", pretrained=True)
    config = resolve_model_data_config(encoder_model)
    mean, std = torch.tensor(config["mean"]).view(1, 3, 1, 1), torch.tensor(config["std"]).view(1, 3, 1, 1)
    raw = create_transform(**{**config, "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)})  # resize 71, crop 64, [0, 1]
    split = {s: cached(f"crops-{s}", lambda s=s: load_crops(data, s, raw)) for s in ("train", "val")}
    for s in split.values():
        s["images"] = s["images"].clamp(0, 1)
    normalise = lambda x: (x - mean) / std  # noqa: E731
    if args.baseline_only:
        record(f"photos_vit8_rrc{args.baseline_epochs}", {"val": train_vit_augmented(data, 8, args.baseline_epochs, args.seed, split["val"], normalise)})
        return
    gaussians = {
        "learned": {s: cached(f"learned-{s}", lambda s=s: encode_all(encoder_model, split[s]["images"], mean, std)) for s in split},
        "sgd": {s: cached(f"sgd{args.fit_steps}-{s}", lambda s=s: fit_all(split[s]["images"], args.fit_steps, f"sgd{args.fit_steps}-{s}")) for s in split},
    }
    renders = {name: {s: cached(f"render-{name}{args.fit_steps if name == 'sgd' else ''}-{s}", lambda g=g[s]: render_all(g)) for s in g}
               for name, g in gaussians.items()}
    for name in gaussians:
        record(f"psnr_{name}_val", psnr(renders[name]["val"], split["val"]["images"]).mean().item())
    labels = {s: split[s]["labels"] for s in split}
    flip_image = lambda x: x.flip(-1)  # noqa: E731

    # the Gaussian classifier on each set; evaluated on both (cross-training 2x2)
    for name in gaussians:
        model = train_classifier(GaussianClassifier(num_gaussians=64, num_classes=10, **WIDTH), gaussians[name]["train"],
                                 labels["train"], args.epochs, hflip_gaussians, f"Gaussian classifier on {name}", args.seed)
        record(f"gaussians_{name}", {f"val_{other}": accuracy(model, gaussians[other]["val"], labels["val"]) for other in gaussians})
    # leakage control: the same data as pictures, timm's ViT on the renderings
    for name in gaussians:
        model = train_classifier(vit(8), normalise(renders[name]["train"]), labels["train"], args.epochs, flip_image,
                                 f"ViT on renderings of {name}", args.seed)
        record(f"renderings_{name}", {"val": accuracy(model, normalise(renders[name]["val"]), labels["val"])})
    # patch baselines: the photographs, the same fixed crops; then the trainer's augmentation
    model = train_classifier(vit(8), normalise(split["train"]["images"]), labels["train"], args.epochs, flip_image,
                             "ViT/8 on photographs", args.seed)
    record("photos_vit8", {"val": accuracy(model, normalise(split["val"]["images"]), labels["val"])})
    record(f"photos_vit8_rrc{args.baseline_epochs}",
           {"val": train_vit_augmented(data, 8, args.baseline_epochs, args.seed, split["val"], normalise)})
    record("done", True)


if __name__ == "__main__":
    main()
