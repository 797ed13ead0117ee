"""Pictures of Gaussians: 2-sigma ellipse overlays and side-by-side PNG panels."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor


def to_pil(image: Tensor) -> Image.Image:
    """``[3, H, W]`` image in [0, 1] -> PIL RGB image."""
    array = (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round()
    return Image.fromarray(array.astype(np.uint8), mode="RGB")


def draw_ellipses(image: Tensor, gaussians: Tensor, num_sigmas: float = 2.0, scale: int = 4) -> Image.Image:
    """Draw each Gaussian of ``gaussians`` ``[k, 9]`` as its ``num_sigmas`` ellipse over ``image``
    ``[3, H, W]``, upsampled ``scale`` times so that thin outlines stay visible. Outline colour is
    the Gaussian's own colour; more opaque Gaussians are drawn with stronger outlines."""
    base = to_pil(image)
    base = base.resize((base.width * scale, base.height * scale), Image.Resampling.NEAREST).convert("RGBA")
    overlay = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    half_w, half_h = base.width / 2, base.height / 2
    angles = torch.linspace(0, 2 * math.pi, 33, dtype=torch.float64)[:, None]
    for g in gaussians.detach().double().cpu():
        mx, my, sx, sy, phi = g[:5].tolist()
        u, v = num_sigmas * sx * torch.cos(angles), num_sigmas * sy * torch.sin(angles)
        x = (mx + u * math.cos(phi) - v * math.sin(phi) + 1) * half_w
        y = (my + u * math.sin(phi) + v * math.cos(phi) + 1) * half_h
        colour = tuple(int(c * 255) for c in g[5:8].clamp(0, 1).tolist())
        draw.line(list(zip(x[:, 0].tolist(), y[:, 0].tolist())), fill=(*colour, int(80 + 175 * float(g[8]))), width=1)
    return Image.alpha_composite(base, overlay).convert("RGB")


def output_problem(path: str | Path) -> str | None:
    """Why ``path`` cannot take a figure (a folder, an extension PIL does not write), or None."""
    path = Path(path)
    if path.is_dir():
        return f"--out {path} is a folder; give a file name, e.g. {path / 'figure.png'}"
    if path.suffix.lower() not in Image.registered_extensions():
        return f"--out {path}: unknown image file extension {path.suffix!r}; use .png"
    return None


def save_panels(panels: list[tuple[str, Image.Image]], path: str | Path, height: int = 256) -> Path:
    """Save titled images side by side, each resized to ``height`` pixels high, as one PNG."""
    resized = [(t, im.resize((max(1, round(im.width * height / im.height)), height), Image.Resampling.NEAREST)) for t, im in panels]
    title_h, gap = 18, 6
    canvas = Image.new("RGB", (sum(im.width for _, im in resized) + gap * (len(resized) - 1), height + title_h), "white")
    draw = ImageDraw.Draw(canvas)
    x = 0
    for title, im in resized:
        canvas.paste(im, (x, title_h))
        draw.text((x + 2, 3), title, fill="black")
        x += im.width + gap
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


def save_reconstruction_grid(originals: Tensor, reconstructions: Tensor, gaussians: Tensor, path: str | Path, max_images: int = 4, cell: int = 160) -> Path:
    """One row per image (up to ``max_images``): original, reconstruction, 2-sigma ellipses.
    Images ``[B, 3, H, W]`` in [0, 1], Gaussians ``[B, k, 9]``."""
    rows = range(min(max_images, originals.shape[0]))
    return save_columns([("original", [to_pil(originals[i]) for i in rows]), ("reconstruction", [to_pil(reconstructions[i]) for i in rows]),
                         ("2-sigma ellipses", [draw_ellipses(originals[i], gaussians[i]) for i in rows])], [], path, cell)


def save_columns(columns: list[tuple[str, list[Image.Image | None]]], row_names: list[str], path: str | Path, cell: int = 160) -> Path:
    """Titled columns of images, top to bottom, each resized to ``cell`` x ``cell`` (None: left
    blank), with ``row_names`` (if any) down the left, as one PNG."""
    title_h, gap = 18, 4
    name_w = 8 * max(len(name) for name in row_names) + 8 if row_names else 0
    rows = max(len(images) for _, images in columns)
    canvas = Image.new("RGB", (name_w + len(columns) * (cell + gap) - gap, title_h + rows * (cell + gap)), "white")
    draw = ImageDraw.Draw(canvas)
    for row, name in enumerate(row_names):
        draw.text((2, title_h + row * (cell + gap) + cell // 2), name, fill="black")
    for col, (title, images) in enumerate(columns):
        x = name_w + col * (cell + gap)
        draw.text((x + 2, 3), title, fill="black")
        for row, image in enumerate(images):
            if image is not None:
                canvas.paste(image.resize((cell, cell), Image.Resampling.NEAREST), (x, title_h + row * (cell + gap)))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path
