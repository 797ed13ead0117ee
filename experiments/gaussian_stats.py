#!/usr/bin/env python
"""What an encoder's Gaussians look like: opacity, size and placement on Imagenette val images.

    python experiments/gaussian_stats.py runs/imagenette/encoder-k64/export runs/imagenette/encoder-k128/export

Encodes every --every-th validation image (centre crops, eval mode) with each trainer export and
prints one row per encoder: the median opacity and the share under 0.1, the 10th/50th/90th
percentiles of sigma (in units of the half image width), the share of centres inside the image,
and the standard deviation of the colours.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import timm
import torch
from timm.data import create_transform, resolve_model_data_config
from torchvision.datasets import ImageFolder

import timm_gvit  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("exports", nargs="+", help="train_gvit.py export folders")
    parser.add_argument("--data", default=str(ROOT / "runs" / "data" / "imagenette-80"), help="output of prepare_imagenette.py")
    parser.add_argument("--every", type=int, default=16, help="use every n-th validation image")
    args = parser.parse_args()
    print("| encoder | k | images | opacity median | opacity < 0.1 | sigma p10 / p50 / p90 | centres inside | colour sd |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for export in args.exports:
        model = timm.create_model(f"local-dir:{Path(export).resolve()}", pretrained=True).eval()
        folder = ImageFolder(str(Path(args.data) / "val"), transform=create_transform(**resolve_model_data_config(model)))
        images = torch.stack([folder[i][0] for i in range(0, len(folder), args.every)])
        g = model.encode(images)
        sigma, opacity = g[..., 2:4], g[..., 8]
        p10, p50, p90 = (sigma.quantile(q).item() for q in (0.1, 0.5, 0.9))
        inside = (g[..., 0:2].abs() <= 1).all(-1).float().mean().item()
        print(f"| `{Path(export).resolve().parent.name}` | {model.num_gaussians} | {len(images)} | {opacity.median():.2f} | "
              f"{(opacity < 0.1).float().mean():.1%} | {p10:.3f} / {p50:.3f} / {p90:.3f} | {inside:.1%} | {g[..., 5:8].std():.3f} |")


if __name__ == "__main__":
    main()
