"""How fast the trainer's data loader delivers training batches, against the step's ceiling.

    python benchmarks/loader.py --dataset DIR [--model gvit_small] [--batch 256] [--workers N] [--out PATH]

The loader is ``train_gvit.py``'s own: the same splits, dataset class (per-item seeded
augmentation), training transform (random-resized crop, flip, normalisation) and DataLoader
settings (pinned memory where there is a GPU). It reports images/s over ``--batches`` batches
once the workers' start-up and their prefetch queues are behind it (the first ``workers x 2 + 1``
batches arrive in a burst: timing those measured a queue being drained, not the workers), and the
cost per image of each stage in one process (file read,
JPEG decode, transform), so that a trainer slower than ``benchmarks/train_step.py``'s images/s can
be told apart: loader-bound when this figure is below the step's.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import time
from pathlib import Path

import timm
import torch
from PIL import Image
from timm.data import resolve_model_data_config
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

import timm_gvit  # noqa: F401  (registers the models)
from timm_gvit.training.config import parse_config
from timm_gvit.training.data import ImageClassificationDataset, load_splits, to_rgb, training_transform


def stage_costs(files: list[Path], transform, count: int) -> dict[str, float]:
    """Milliseconds per image to read, decode and transform ``count`` files in this process."""
    read = decode = trans = 0.0
    for path in files[:count]:
        t0 = time.perf_counter()
        data = path.read_bytes()
        t1 = time.perf_counter()
        image = to_rgb(Image.open(io.BytesIO(data)))
        image.load()
        t2 = time.perf_counter()
        transform(image)
        t3 = time.perf_counter()
        read, decode, trans = read + t1 - t0, decode + t2 - t1, trans + t3 - t2
    n = max(1, min(count, len(files)))
    return {"read_ms": 1000 * read / n, "decode_ms": 1000 * decode / n, "transform_ms": 1000 * trans / n}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--dataset", required=True, help="imagefolder (or any dataset train_gvit.py takes)")
    parser.add_argument("--model", default="gvit_small", help="model whose data config sets size and normalisation")
    parser.add_argument("--img-size", type=int, default=224, help="training resolution (default 224)")
    parser.add_argument("--batch", type=int, default=256, help="images per batch (default 256)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="loader worker processes (default: one per core)")
    parser.add_argument("--batches", type=int, default=20, help="timed batches (default 20)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "loader.json", help="JSON output")
    args = parser.parse_args(argv)
    if args.batch < 1 or args.batches < 1 or args.workers < 0:
        parser.error("--batch and --batches must be >= 1, --workers >= 0")

    config = parse_config(["--dataset", args.dataset, "--model", args.model, "--img-size", str(args.img_size),
                           "--batch-size", str(args.batch), "--workers", str(args.workers)])
    train_data, _, info = load_splits(config)
    model = timm.create_model(args.model, num_classes=info.num_classes, img_size=args.img_size, pretrained=False)
    transform = training_transform(resolve_model_data_config(model), config.hflip)
    dataset = ImageClassificationDataset(train_data, info.name, config.image_column, config.label_column, info.num_classes,
                                         transform, seed=0)
    pin = torch.cuda.is_available()
    loader = DataLoader(dataset, batch_size=args.batch, shuffle=True, drop_last=True, num_workers=args.workers, pin_memory=pin,
                        generator=torch.Generator().manual_seed(0))
    ready = args.workers * loader.prefetch_factor + 1 if args.workers else 1  # what start-up leaves in the queues
    if len(loader) < ready + args.batches:
        parser.error(f"the dataset gives {len(loader)} batches of {args.batch}; timing {args.batches} after the {ready} that "
                     f"{args.workers} workers have ready at start-up needs {ready + args.batches}: use more images, or fewer "
                     "--workers or --batches")
    batches = iter(loader)
    started = time.perf_counter()
    for _ in range(ready):
        next(batches)
    startup = time.perf_counter() - started
    timed = args.batches
    start = time.perf_counter()
    for _ in tqdm(range(timed), desc="batches"):
        next(batches)
    seconds = time.perf_counter() - start
    folder = Path(args.dataset)
    files = sorted(folder.rglob("*.jp*g")) if folder.is_dir() else []
    report = {"dataset": args.dataset, "images": len(dataset), "batch": args.batch, "workers": args.workers, "pin_memory": pin,
              "cores": os.cpu_count(), "images_per_s": args.batch * timed / seconds, "timed_batches": timed,
              "startup_batches": ready, "startup_s": startup,
              "per_image_in_one_process": stage_costs(files, transform, 50) if files else None,
              "mean_file_kib": sum(f.stat().st_size for f in files[:200]) / max(1, len(files[:200])) / 1024 if files else None}
    costs = report["per_image_in_one_process"]
    print(f"loader: {report['images_per_s']:.0f} img/s with {args.workers} workers (batch {args.batch}, pinned {pin})"
          + (f"; per image in one process: read {costs['read_ms']:.2f} ms, decode {costs['decode_ms']:.2f} ms, "
             f"transform {costs['transform_ms']:.2f} ms" if costs else ""))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
