#!/usr/bin/env python
"""Shrink Imagenette to a small imagefolder copy for the CPU-scale study (once, about a minute).

    python experiments/prepare_imagenette.py                 # ../shared/data/imagenette -> runs/data/imagenette-80

Every image is resized (bicubic, antialiased) to --size x --size and stored as a quality-95 JPEG
in the same train/<wnid>/ and val/<wnid>/ layout. The trainer then random-resized-crops 64 px
training images from 80 px ones instead of 224 px ones: the same crops at a fraction of the
decoding cost. Imagenette is an ImageNet subset: research and educational use only.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image
from tqdm import tqdm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", default="../shared/data/imagenette", help="Imagenette folder with train/ and val/")
    parser.add_argument("--out", default="runs/data/imagenette-80", help="output folder")
    parser.add_argument("--size", type=int, default=80, help="side of the stored square images, px")
    args = parser.parse_args()
    src, out = Path(args.src), Path(args.out)
    files = sorted(p for p in src.glob("*/*/*") if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
    if not files:
        raise SystemExit(f"no images under {src}/<split>/<class>/ (expected Imagenette's train/ and val/ folders)")
    for path in tqdm(files, desc=f"resizing to {args.size} px"):
        target = out / path.relative_to(src).with_suffix(".jpg")
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        image = Image.open(path).convert("RGB").resize((args.size, args.size), Image.Resampling.BICUBIC, reducing_gap=None)
        image.save(target, quality=95)
    print(f"{len(files)} images in {out}")


if __name__ == "__main__":
    main()
