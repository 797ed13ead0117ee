"""Per-image Gaussian fitting: the paper's "offline" / "SGD Gaussians" baseline (section 3.1).

Each image gets its own k Gaussians, optimised for reconstruction alone with Adam through the
same renderer the models use. Run it as a command to see it work on a bundled photo::

    gvit-fit --out fit.png
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from .gaussians import decode_gaussians, encode_gaussians, grid_layout
from .rendering import render_gaussians

INITS = ("grid", "kmeans")
ASSETS = Path(__file__).parent / "assets"


def psnr(images: Tensor, targets: Tensor) -> Tensor:
    """Peak signal-to-noise ratio in dB per image of ``[B, C, H, W]`` images in [0, 1] -> ``[B]``."""
    mse = (images - targets).pow(2).flatten(1).mean(1)
    return -10 * torch.log10(mse.clamp_min(1e-12))


def _sample_colours(images: Tensor, centres: Tensor) -> Tensor:
    """Colours ``[B, k, 3]`` of ``images`` at normalised ``centres`` ``[B, k, 2]``."""
    return F.grid_sample(images, centres[:, :, None], align_corners=False)[..., 0].transpose(1, 2)


def _grid_init(images: Tensor, num_gaussians: int) -> Tensor:
    B, _, H, W = images.shape
    centres, spacing = grid_layout(num_gaussians, H, W)
    centres = centres.to(images).expand(B, -1, -1)
    g = images.new_zeros(B, num_gaussians, 9)
    g[..., 0:2] = centres
    g[..., 2:4] = spacing.to(images) * 0.5
    g[..., 5:8] = _sample_colours(images, centres)
    g[..., 8] = 0.8
    return g


def _kmeans_init(images: Tensor, num_gaussians: int, iters: int = 10, colour_weight: float = 1.0) -> Tensor:
    """Cluster pixels in (x, y, colour) space; each cluster becomes a Gaussian with the cluster's
    mean colour, centre and spatial covariance. Smaller clusters are put in front."""
    B, _, H, W = images.shape
    g = _grid_init(images, num_gaussians)
    ys, xs = torch.meshgrid(
        (torch.arange(H, dtype=images.dtype) + 0.5) / H * 2 - 1,
        (torch.arange(W, dtype=images.dtype) + 0.5) / W * 2 - 1,
        indexing="ij",
    )
    xy = torch.stack([xs, ys], -1).reshape(-1, 2).to(images.device)  # [P, 2]
    for b in range(B):
        rgb = images[b].reshape(3, -1).T  # [P, 3]
        features = torch.cat([xy, colour_weight * rgb], dim=1)
        centres = torch.cat([g[b, :, 0:2], colour_weight * g[b, :, 5:8]], dim=1)
        for _ in range(iters):
            assign = torch.cdist(features, centres).argmin(1)
            counts = torch.bincount(assign, minlength=num_gaussians).to(images.dtype)
            sums = torch.zeros_like(centres).index_add_(0, assign, features)
            centres = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], centres)
        d = xy - centres[assign, :2]
        cov = torch.zeros(num_gaussians, 3, dtype=images.dtype, device=images.device)
        cov.index_add_(0, assign, torch.stack([d[:, 0] ** 2, d[:, 0] * d[:, 1], d[:, 1] ** 2], 1))
        cov = cov / counts.clamp_min(1)[:, None]
        pixel_var = (1.0 / W) ** 2 + (1.0 / H) ** 2  # keep every cluster at least about a pixel wide
        mat = torch.stack([cov[:, 0] + pixel_var, cov[:, 1], cov[:, 1], cov[:, 2] + pixel_var], 1).reshape(-1, 2, 2)
        evals, evecs = torch.linalg.eigh(mat)  # ascending: column 1 is the major axis
        order = torch.argsort(evals.prod(1))  # small clusters in front
        g[b, :, 0:2] = centres[order, :2]
        g[b, :, 2:4] = evals[order].flip(1).sqrt()
        g[b, :, 4] = torch.atan2(evecs[order, 1, 1], evecs[order, 0, 1])
        g[b, :, 5:8] = (centres[order, 2:] / colour_weight).clamp(0, 1)
    return g


def fit_gaussians(
    images: Tensor,
    num_gaussians: int,
    steps: int = 500,
    init: str = "grid",
    lr: float = 0.05,
    scale_bound: float = 1.0,
    background: float | Tensor | None = None,
    backend: str = "auto",
    seed: int = 0,
    progress: bool | None = None,
) -> Tensor:
    """Fit ``num_gaussians`` Gaussians to each image by gradient descent on the MSE of its rendering.

    Args:
        images: ``[B, 3, H, W]`` images in [0, 1].
        num_gaussians: k, Gaussians per image.
        steps: Adam steps (0 returns the initial layout).
        init: ``"grid"`` (a regular grid coloured from the image) or ``"kmeans"`` (clusters of
            pixels in position and colour).
        lr: Adam learning rate on the raw (pre-activation) parameters.
        scale_bound: largest sigma, c in docs/method.md section 2.
        background, backend: as in :func:`timm_gvit.render_gaussians`.
        seed: seeds the small random jitter added to the initial layout.
        progress: show a progress bar (None: only when writing to a terminal).

    Returns:
        ``[B, k, 9]`` decoded Gaussians (detached), rendered by :func:`render_gaussians` at any size.
    """
    if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be a [B, 3, H, W] tensor, got {getattr(images, 'shape', type(images).__name__)}")
    if not images.is_floating_point() or images.min() < 0 or images.max() > 1:
        raise ValueError("images must be floating point with values in [0, 1]")
    if isinstance(num_gaussians, bool) or not isinstance(num_gaussians, int) or num_gaussians < 1:
        raise ValueError(f"num_gaussians must be an integer >= 1, got {num_gaussians!r}")
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    _, _, H, W = images.shape
    images = images.detach()
    with torch.no_grad():
        start = _grid_init(images, num_gaussians) if init == "grid" else _kmeans_init(images, num_gaussians)
        start[..., 2:4] = start[..., 2:4].clamp(max=scale_bound * 0.99)
        generator = torch.Generator().manual_seed(seed)
        raw = encode_gaussians(start, scale_bound)
        raw[..., 0:2] += 0.01 * torch.randn(raw[..., 0:2].shape, generator=generator).to(raw)
    raw.requires_grad_(True)
    optimizer = torch.optim.Adam([raw], lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(steps, 1), eta_min=lr * 0.1)
    bar = tqdm(range(steps), desc=f"fitting {num_gaussians} Gaussians", disable=False if progress else None if progress is None else True)
    for _ in bar:
        rendered = render_gaussians(decode_gaussians(raw, scale_bound), H, W, background, backend)
        loss = F.mse_loss(rendered, images)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        bar.set_postfix(psnr=f"{-10 * math.log10(max(loss.item(), 1e-12)):.2f} dB", refresh=False)
    return decode_gaussians(raw.detach(), scale_bound)


def load_image(path: str | Path | None, size: int) -> Tensor:
    """A ``[1, 3, size, size]`` image in [0, 1] from ``path`` (default: the bundled photo),
    centre-cropped to a square; a ``ValueError`` that names an unreadable file."""
    from torchvision.transforms.functional import center_crop, pil_to_tensor, resize

    from .images import read_image

    image = read_image(Path(path or ASSETS / "astronaut.png"))  # a ValueError naming a bad file
    tensor = pil_to_tensor(image).float() / 255
    tensor = resize(center_crop(tensor, min(tensor.shape[1:])), [size, size], antialias=True)
    return tensor.clamp(0, 1)[None]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="gvit-fit",
        description="Fit 2D Gaussians to one image by gradient descent on its rendering (the paper's "
        "offline 'SGD Gaussians') and save a PNG: the photo, its rendering, the 2-sigma ellipses, "
        "and the same Gaussians rendered at 4x the resolution.",
    )
    parser.add_argument("image", nargs="?", help="image file (default: a bundled photo, NASA's astronaut, public domain)")
    parser.add_argument("--num-gaussians", "-k", type=int, default=256, help="Gaussians per image (default 256)")
    parser.add_argument("--size", type=int, default=96, help="fit at this square resolution in pixels (default 96)")
    parser.add_argument("--steps", type=int, default=400, help="optimiser steps (default 400)")
    parser.add_argument("--init", choices=INITS, default="grid", help="initial layout (default grid)")
    parser.add_argument("--lr", type=float, default=0.05, help="Adam learning rate on raw parameters (default 0.05)")
    parser.add_argument("--backend", default="auto", help="renderer backend: auto, cpu, chunked, reference, gsplat")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--out", default="fit.png", help="output PNG (default fit.png)")
    args = parser.parse_args(argv)

    from .rendering import BACKENDS
    from .visualize import draw_ellipses, output_problem, save_panels, to_pil

    for flag, value, lowest in (("--num-gaussians", args.num_gaussians, 1), ("--size", args.size, 1), ("--steps", args.steps, 0)):
        if value < lowest:
            parser.error(f"{flag} must be >= {lowest}, got {value}")
    if not args.lr > 0 or not math.isfinite(args.lr):
        parser.error(f"--lr must be a finite number > 0, got {args.lr}")
    if args.backend not in BACKENDS:
        parser.error(f"--backend must be one of {', '.join(BACKENDS)}, got {args.backend!r}")
    if output_problem(args.out):
        parser.error(output_problem(args.out))
    try:
        image = load_image(args.image, args.size)
    except ValueError as exc:
        parser.error(str(exc))
    start = time.perf_counter()
    gaussians = fit_gaussians(image, args.num_gaussians, args.steps, args.init, args.lr, backend=args.backend, seed=args.seed, progress=True)
    seconds = time.perf_counter() - start
    rendered = render_gaussians(gaussians, args.size, args.size, backend=args.backend)
    large = render_gaussians(gaussians, 4 * args.size, 4 * args.size, backend=args.backend)
    quality = psnr(rendered, image).item()
    path = save_panels(
        [
            ("photo", to_pil(image[0])),
            (f"{args.num_gaussians} Gaussians, {quality:.1f} dB", to_pil(rendered[0])),
            ("2-sigma ellipses", draw_ellipses(image[0], gaussians[0])),
            (f"rendered at {4 * args.size} px", to_pil(large[0])),
        ],
        args.out,
        height=4 * args.size,
    )
    print(f"fitted {args.num_gaussians} Gaussians to a {args.size}x{args.size} image in {seconds:.1f} s: PSNR {quality:.2f} dB")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
