"""Write an imagefolder as webdataset tar shards, the layout ``train_gvit.py --dataset DIR`` reads
as it is (map-style, or with ``--streaming``).

    python -m timm_gvit.tools.make_shards IMAGEFOLDER OUT [--per-shard 1000] [--seed 0]

Each split folder (``train``, ``val``, ...) becomes ``OUT/SPLIT-00000.tar``, ``SPLIT-00001.tar``, ...
(``validation`` for val), each sample two files: ``KEY.jpg`` (the image's bytes as they are, under
their own ending: ``.jpg``, ``.png``, ``.webp``) and ``KEY.cls`` (the class index as text), as
webdataset's ``ShardWriter`` and timm's ``wds`` reader name them. Samples are shuffled (seeded) before
they are cut into shards, so that every shard mixes the classes: a stream reads shards one after
another. ``OUT/class_names.json`` keeps the class names, which tar shards have no place for.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tarfile
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..training.folder_index import index_imagefolder

#: What a sample's image part is called, by the image file's ending.
PART_NAMES = {".jpg": "jpg", ".jpeg": "jpg", ".jfif": "jpg", ".png": "png", ".webp": "webp"}


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    tar.addfile(info, io.BytesIO(data))


def write_shards(folder: str | Path, out: str | Path, per_shard: int = 1000, seed: int = 0, progress: bool = True) -> dict[str, list[Path]]:
    """Write the imagefolder ``folder`` as tar shards into ``out``: ``{split: shard paths}``.

    Images whose ending has no webdataset part name (``.bmp``, ``.tif``, ...) are refused with a
    ``ValueError``: convert them first."""
    if per_shard < 1:
        raise ValueError(f"--per-shard must be >= 1, got {per_shard}")
    indexed = index_imagefolder(folder, progress=progress)
    if indexed is None:
        raise ValueError(f"{folder}: not a plain imagefolder (it has a metadata table); write its shards with datasets or webdataset")
    splits, class_names = indexed
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, list[Path]] = {}
    for split, data in splits.items():
        order = np.random.default_rng(seed).permutation(len(data))
        paths = []
        for start in tqdm(range(0, len(order), per_shard), desc=f"writing {split} shards", disable=not progress):
            path = out / f"{split}-{start // per_shard:05d}.tar"
            with tarfile.open(path.with_suffix(".tar.tmp"), "w") as tar:
                for row in order[start:start + per_shard]:
                    image = data.path(int(row))
                    part = PART_NAMES.get(os.path.splitext(image)[1].lower())
                    if part is None:
                        raise ValueError(f"{image}: webdataset shards hold .jpg, .png and .webp images; convert this one first")
                    key = f"{int(row):09d}"
                    _add(tar, f"{key}.{part}", Path(image).read_bytes())
                    _add(tar, f"{key}.cls", str(int(data.labels[row])).encode())
            os.replace(path.with_suffix(".tar.tmp"), path)
            paths.append(path)
        written[split] = paths
    (out / "class_names.json").write_text(json.dumps(class_names) + "\n")
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m timm_gvit.tools.make_shards", description=__doc__.strip().splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("folder", help="imagefolder: CLASS/IMAGE, or SPLIT/CLASS/IMAGE")
    parser.add_argument("out", help="folder for the shards")
    parser.add_argument("--per-shard", type=int, default=1000, help="samples per shard (default 1000; ImageNet: 1281 shards of 1000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the order in which samples are cut into shards")
    args = parser.parse_args(argv)
    try:
        written = write_shards(args.folder, args.out, args.per_shard, args.seed)
    except (OSError, ValueError) as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    for split, paths in written.items():
        print(f"{split}: {len(paths)} shards in {args.out}")


if __name__ == "__main__":
    main()
