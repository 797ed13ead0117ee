#!/usr/bin/env python
"""How much the Gaussians adapt to each image: the encoder against per-image SGD fits and the g0 grid.

    python experiments/adaptivity.py runs/imagenette/encoder-k64/export [--images 128] [--out experiments/results/adaptivity.json]

For ``--images`` validation images of the prepared Imagenette copy (centre crops at the
encoder's size, every n-th image so that all classes appear), three sets of k Gaussians each:

- ``encoder``: each export's Gaussians (eval mode: its fixed g0);
- ``sgd``: ``fit_gaussians`` on the same images (grid init, so slot i starts in grid cell i as
  the encoder's slot i does; its default 500 Adam steps on the MSE);
- ``g0``: the encoder's fixed initial Gaussians, decoded: the grid the encoder starts from.

Per image, then averaged over images (with the spread over images):

- ``centre_shift_px``: mean distance of a slot's centre from that slot's mean centre over the
  images, in pixels: how far Gaussians move from image to image (0 for a fixed grid);
- ``grid_shift_px``: mean distance of a slot's centre from its g0 grid cell's centre, in pixels;
- ``logdet_sd``: standard deviation of log det(Sigma) over the image's Gaussians: do sizes vary
  within an image (small on detail, large on flat areas) or stay alike;
- ``edge_ratio``: the image's gradient magnitude at the Gaussians' centres (opacity-weighted) over
  its mean: above 1 when Gaussians gather on edges and detail;
- ``psnr``: the reconstruction's PSNR in dB.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from timm.data import create_transform, resolve_model_data_config
from torchvision.datasets import ImageFolder

import timm_gvit  # noqa: F401
from timm_gvit.fitting import fit_gaussians, psnr
from timm_gvit.gaussians import decode_gaussians
from timm_gvit.gvit import rgb_targets

ROOT = Path(__file__).resolve().parent.parent


def gradient_magnitude(images: torch.Tensor) -> torch.Tensor:
    """``[B, 3, H, W]`` in [0, 1] -> ``[B, H, W]`` Sobel gradient magnitude of the grey image."""
    grey = images.mean(1, keepdim=True)
    kx = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]]).view(1, 1, 3, 3)
    gx = F.conv2d(F.pad(grey, (1, 1, 1, 1), mode="replicate"), kx)
    gy = F.conv2d(F.pad(grey, (1, 1, 1, 1), mode="replicate"), kx.transpose(-1, -2))
    return (gx**2 + gy**2).sqrt()[:, 0]


def adaptivity(gaussians: torch.Tensor, images: torch.Tensor, rendered: torch.Tensor, grid: torch.Tensor) -> dict:
    """Decoded Gaussians ``[B, k, 9]`` of ``images`` ``[B, 3, H, W]``, their ``rendered`` images and the
    g0 grid centres ``[k, 2]`` -> each measure's mean and standard deviation over the images."""
    B, _, H, W = images.shape
    to_px = torch.tensor([W / 2, H / 2])
    centres = gaussians[..., 0:2]
    per_image = {
        "centre_shift_px": ((centres - centres.mean(0, keepdim=True)) * to_px).norm(dim=-1).mean(1),
        "grid_shift_px": ((centres - grid) * to_px).norm(dim=-1).mean(1),
        "logdet_sd": (2 * (gaussians[..., 2].log() + gaussians[..., 3].log())).std(1),
        "psnr": psnr(rendered, images),
    }
    grad = gradient_magnitude(images)
    ix = ((centres[..., 0] + 1) / 2 * W).long().clamp(0, W - 1)
    iy = ((centres[..., 1] + 1) / 2 * H).long().clamp(0, H - 1)
    at_centres = torch.stack([grad[b, iy[b], ix[b]] for b in range(B)])
    weight = gaussians[..., 8]
    per_image["edge_ratio"] = (at_centres * weight).sum(1) / weight.sum(1) / grad.mean(dim=(1, 2))
    return {name: {"mean": v.mean().item(), "sd": v.std().item()} for name, v in per_image.items()}


@torch.no_grad()
def encode(model, images: torch.Tensor, batch: int = 64) -> torch.Tensor:
    return torch.cat([model.encode(images[i:i + batch]) for i in range(0, len(images), batch)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__)
    parser.add_argument("exports", nargs="+", help="train_gvit.py export folders (the first one's k and size set the SGD fits')")
    parser.add_argument("--data", default=str(ROOT / "runs" / "data" / "imagenette-80"), help="output of prepare_imagenette.py")
    parser.add_argument("--images", type=int, default=128, help="validation images (default 128)")
    parser.add_argument("--sgd-steps", type=int, default=500, help="fit_gaussians steps (default 500)")
    parser.add_argument("--encoders-only", action="store_true", help="measure the exports only (keep the file's SGD and g0 rows)")
    parser.add_argument("--out", type=Path, default=ROOT / "experiments" / "results" / "adaptivity.json")
    args = parser.parse_args()
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    first = None
    for export in args.exports:
        model = timm.create_model(f"local-dir:{Path(export).resolve()}", pretrained=True).eval()
        config = resolve_model_data_config(model)
        folder = ImageFolder(str(Path(args.data) / "val"), transform=create_transform(**config))
        step = max(1, len(folder) // args.images)
        inputs = torch.stack([folder[i][0] for i in range(0, len(folder), step)][: args.images])
        images = rgb_targets(inputs, config["mean"], config["std"])
        gaussians = encode(model, inputs)
        size = tuple(images.shape[-2:])
        grid_g = decode_gaussians(model.encoder.eval_g0[0], model.scale_bound)
        grid = grid_g[:, 0:2]
        path = Path(export).resolve()
        name = path.parent.name if path.name == "export" else path.name
        results[name] = {"k": model.num_gaussians, "images": len(images),
                         "encoder": adaptivity(gaussians, images, model.render(gaussians, size), grid)}
        if first is None:
            first = (model, images, size, grid, grid_g, name)
        print(f"{name}: {json.dumps(results[name]['encoder'])}", flush=True)
    model, images, size, grid, grid_g, name = first
    if args.encoders_only:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.out}")
        return
    fitted = fit_gaussians(images, model.num_gaussians, steps=args.sgd_steps, scale_bound=model.scale_bound, progress=True)
    results[f"sgd-k{model.num_gaussians}"] = {"k": model.num_gaussians, "images": len(images), "steps": args.sgd_steps,
                                             "sgd": adaptivity(fitted, images, model.render(fitted, size), grid)}
    g0 = grid_g.expand(len(images), -1, -1)
    results[f"g0-k{model.num_gaussians}"] = {"k": model.num_gaussians, "images": len(images),
                                            "g0": adaptivity(g0, images, model.render(g0, size), grid)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print("| Gaussians | centre shift px | grid shift px | log det sd | edge ratio | PSNR dB |")
    print("| --- | --- | --- | --- | --- | --- |")
    for key, row in results.items():
        for kind in ("encoder", "sgd", "g0"):
            if kind in row:
                m = row[kind]
                print(f"| {key} ({kind}) | {m['centre_shift_px']['mean']:.2f} | {m['grid_shift_px']['mean']:.2f} | "
                      f"{m['logdet_sd']['mean']:.2f} | {m['edge_ratio']['mean']:.2f} | {m['psnr']['mean']:.2f} |")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
