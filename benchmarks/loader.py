"""How fast the trainer's data loader delivers training batches: against timm's own loader on the
same files, against decoding alone, and against the compiled step it must feed.

    python benchmarks/loader.py --dataset DIR [--compare-timm] [--workers N] [--batch B] [--img-size S] [--out PATH]
    python benchmarks/loader.py --make-jpegs DIR --compare-timm --workers 2     # ImageNet-sized JPEGs, then the comparison
    python benchmarks/loader.py --dataset DIR --decode-on-device ...            # the device-decode path
    python benchmarks/loader.py --dataset DIR --py-spy 10 ...                  # where a worker's time goes

``--make-jpegs DIR`` first writes ImageNet-sized JPEGs (500 x 375, quality 90, the size of most
ImageNet photos) made from Imagenette's photos (``--photos``, default
``/work/shared/data/imagenette``: 224 x 224 photos of 10 ImageNet classes; each one's central 4:3
part, upscaled): ``--jpegs`` (default 600) of them over the classes as ``DIR/train/CLASS/x.JPEG``,
and 2 per class in ``DIR/val`` so that the trainer's training split is all of ``DIR/train``.
A folder whose marker (``DIR/jpegs.json``) matches is reused. Without ``--dataset``, that is the dataset.
Upscaled photos compress well (about 36 KiB each, where ImageNet's average about 110 KiB), so
decoding them costs less than decoding ImageNet's (0.7 ms against 1.3 ms for the device check's
92 KiB JPEGs of the same size, on one core here), and the resize weighs more beside it.

Measured, on the same files, in one run:

1. ours: the trainer's loader as ``train_gvit.py``'s ``setup()`` builds it: its splits
   (``load_splits``, the imagefolder index), :class:`ImageClassificationDataset` with per-item
   seeded augmentation, JPEGs decoded at reduced size where the crop allows (``decode_sizes``), the
   uint8 training transform (random-resized crop scale 0.5-1, flip, the model's size) and the same
   DataLoader (pinned where there is a GPU; there, each batch also goes to the device and is
   normalised, as the trainer does). ``--decode-on-device``: the same dataset wrapped in
   :class:`timm_gvit.training.device_decode.DeviceDecodeDataset`, each batch decoded, cropped and
   resized on the device (the GPU, else the CPU for a check of the code path).
2. ``--compare-timm``: timm's own ``create_dataset('', root=...)`` + ``create_loader`` with the same
   crop, flip, size, batch and workers (no colour jitter, no random erasing; its prefetcher where
   there is a GPU, as timm's train.py uses it; without one timm normalises to float32 in the workers).
3. decode-only: the same files decoded completely with PIL (no draft) in this process: what one
   core can do at most; and torchvision's ``decode_jpeg`` on the CPU beside it (alternating turns,
   each one's best: a shared machine's PIL rate was seen to swing by a third from turn to turn).

A loader's images/s is timed over ``--batches`` batches once its workers' start-up is behind it
(the first ``workers x prefetch + 1`` batches arrive in a burst: timing those measured a queue being
drained, not the workers). Its CPU cost per image is the CPU time (user + system) of the
training process and all its workers over the same window, over the images delivered: its
images per CPU-second are what one core gives ("per core"). ``--repeat K`` lists every file K
times (a longer epoch over the same files) where the dataset is too small for the timing.
``--rounds N`` times ours and timm N times, alternating, and reports each one's median round: on a
machine shared with other work, both then see much the same load.

Targets, printed with PASS/FAIL: ours >= timm (ratio >= 1.0); ours per core >= 0.5x the
decode-only rate. Also printed: the cores a GPU needs to feed the compiled training step, per
phase: the step's images/s (``--step-reference``: a device_check or train_step JSON, by default
the H200 reference of 2026-11-27) over ours per core (this machine's cores, not the GPU machine's).
The JSON (``--out``, default ``benchmarks/results/loader.json``) has ``ours_images_per_s``,
``timm_images_per_s`` and ``decode_only_images_per_s`` at its top level; the last line printed is
``loader: ours X img/s, timm Y img/s, ratio R``.

``--py-spy SECONDS`` records one worker of ours with py-spy (``pip install py-spy``) during the
timed window and prints where its time goes (the functions its samples end in, and the share of
samples inside decode and resize); the raw stacks go beside ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import psutil
import timm
import torch
from PIL import Image
from timm.data import resolve_model_data_config
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import timm_gvit  # noqa: E402,F401  (registers the models)
from timm_gvit.data_utils import normalize  # noqa: E402
from timm_gvit.images import decode_image, is_image_name  # noqa: E402
from timm_gvit.training.config import parse_config  # noqa: E402
from timm_gvit.training.data import (CROP_SCALE, ImageClassificationDataset, decode_sizes, load_splits,  # noqa: E402
                                     training_transform)

PHOTOS = Path("/work/shared/data/imagenette")
JPEG_SIZE, JPEG_QUALITY, VAL_PER_CLASS = (500, 375), 90, 2
STEP_REFERENCE = ROOT / "benchmarks" / "reference" / "device_check_h200_2026-11-27.json"
PHASES = ("reconstruction", "classifier", "joint")


# ---------------------------------------------------------------- the JPEGs
def make_jpegs(folder: Path, count: int, photos: Path = PHOTOS, size: tuple[int, int] = JPEG_SIZE,
               quality: int = JPEG_QUALITY) -> dict:
    """``count`` JPEGs of ``size`` (W, H) from the photos of ``photos/train`` (evenly over its
    classes and through each class's sorted files; each photo's central part of the size's aspect,
    upscaled with bicubic), as ``folder/train/CLASS/NAME.JPEG``, and ``VAL_PER_CLASS`` per class
    from ``photos/val`` in ``folder/val``. Reused where ``folder/jpegs.json`` records the same
    request; returns that record."""
    request = {"photos": str(photos), "count": count, "size": list(size), "quality": quality, "val_per_class": VAL_PER_CLASS}
    marker = folder / "jpegs.json"
    if marker.is_file() and json.loads(marker.read_text()).get("request") == request:
        return json.loads(marker.read_text())
    if not (photos / "train").is_dir():
        raise SystemExit(f"loader.py: error: --make-jpegs needs photos in {photos}/train/CLASS/ (see --photos)")
    for split in ("train", "val"):
        shutil.rmtree(folder / split, ignore_errors=True)
    classes = sorted(p.name for p in (photos / "train").iterdir() if p.is_dir())
    written = {"train": 0, "val": 0}
    sizes = []
    for c, name in enumerate(classes):
        for split, wanted in (("train", count // len(classes) + (c < count % len(classes))), ("val", VAL_PER_CLASS)):
            source = photos / split / name
            files = sorted(p for p in source.iterdir() if is_image_name(p.name)) if source.is_dir() else []
            if len(files) < wanted:
                raise SystemExit(f"loader.py: error: {source} has {len(files)} photos, {wanted} are needed")
            for k in range(wanted):
                path = files[k * len(files) // wanted]
                with Image.open(path) as photo:
                    photo = photo.convert("RGB") if photo.mode not in ("RGB", "L") else photo
                    w, h = photo.size
                    cw, ch = min(w, round(h * size[0] / size[1])), min(h, round(w * size[1] / size[0]))
                    box = ((w - cw) // 2, (h - ch) // 2, (w - cw) // 2 + cw, (h - ch) // 2 + ch)
                    image = photo.resize(size, Image.BICUBIC, box=box)
                out = folder / split / name / f"{path.stem}.JPEG"
                out.parent.mkdir(parents=True, exist_ok=True)
                image.save(out, quality=quality)
                written[split] += 1
                sizes.append(out.stat().st_size)
    record = {"request": request, "written": written, "mean_kib": sum(sizes) / len(sizes) / 1024, "classes": len(classes)}
    marker.write_text(json.dumps(record, indent=2) + "\n")
    return record


def image_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and is_image_name(p.name))


# ---------------------------------------------------------------- timing a loader
#: Child processes that are not the loaders' (py-spy): their CPU time is not the loaders'.
NOT_LOADERS: set[int] = set()


def cpu_seconds(exclude: set[int] = frozenset()) -> dict[int, float]:
    """User + system CPU seconds of this process and of each of its descendants (the loader's workers)."""
    me = psutil.Process()
    found = {}
    for proc in [me, *me.children(recursive=True)]:
        if proc.pid in exclude or proc.pid in NOT_LOADERS:
            continue
        try:
            times = proc.cpu_times()
            found[proc.pid] = times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return found


def time_loader(loader, batch: int, batches: int, consume, on_timed_start=None) -> dict:
    """Images/s and CPU-ms per image of ``loader`` over ``batches`` batches after its start-up burst."""
    workers = loader.num_workers if isinstance(loader, DataLoader) else getattr(loader, "loader", loader).num_workers
    prefetch = (loader if isinstance(loader, DataLoader) else getattr(loader, "loader", loader)).prefetch_factor or 0
    ready = workers * prefetch + 1 if workers else 1
    batches_iter = iter(loader)
    started = time.perf_counter()
    for _ in range(ready):
        consume(next(batches_iter))
    startup = time.perf_counter() - started
    exclude = on_timed_start() if on_timed_start else set()
    cpu0, start = cpu_seconds(exclude), time.perf_counter()
    for _ in range(batches):
        consume(next(batches_iter))
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    cpu1 = cpu_seconds(exclude)
    del batches_iter  # the workers stop
    cpu = sum(t - cpu0.get(pid, 0.0) for pid, t in cpu1.items())
    main = cpu1.get(os.getpid(), 0.0) - cpu0.get(os.getpid(), 0.0)
    images = batch * batches
    return {"images_per_s": images / seconds, "cpu_ms_per_image": 1000 * cpu / images,
            "cpu_ms_per_image_main": 1000 * main / images, "cpu_ms_per_image_workers": 1000 * (cpu - main) / images,
            "images_per_cpu_s": images / cpu if cpu > 0 else None, "seconds": seconds, "cpu_seconds": cpu,
            "startup_batches": ready, "startup_s": startup, "timed_batches": batches, "workers": workers}


def median_round(rounds: list[dict]) -> dict:
    """The round of median images/s (its CPU figures with it), with every round's images/s and CPU-ms per image."""
    chosen = dict(sorted(rounds, key=lambda r: r["images_per_s"])[(len(rounds) - 1) // 2])
    chosen["rounds"] = [{"images_per_s": r["images_per_s"], "cpu_ms_per_image": r["cpu_ms_per_image"]} for r in rounds]
    return chosen


def report_rate(name: str, result: dict, round_: int, rounds: int) -> None:
    print(f"{name}{f' (round {round_ + 1} of {rounds})' if rounds > 1 else ''}: {result['images_per_s']:.0f} img/s, "
          f"{result['cpu_ms_per_image']:.2f} CPU-ms per image (training process {result['cpu_ms_per_image_main']:.2f}, workers "
          f"{result['cpu_ms_per_image_workers']:.2f}; {fmt(result['images_per_cpu_s'], '.0f')} img per CPU-second)", flush=True)


def fmt(value, spec: str) -> str:
    return format(value, spec) if value is not None else "n/a"


def loader_batches(length: int, batch: int) -> int:
    return length // batch  # drop_last, as the trainer's


# ---------------------------------------------------------------- ours
def ours_loader(args, config, device):
    """The trainer's training dataset and DataLoader (``train_gvit.py``'s ``setup()``), and its data config."""
    train_data, _, info = load_splits(config)
    if args.repeat > 1:
        train_data = train_data.select(np.tile(np.arange(len(train_data)), args.repeat))
    model = timm.create_model(config.model, num_classes=info.num_classes, **config.model_create_kwargs())
    data_config = resolve_model_data_config(model)
    transform = training_transform(data_config, config.hflip, uint8=True)
    train_min, _ = decode_sizes(data_config, config.eval_crop_pct) if config.decode_reduced else (None, None)
    dataset = ImageClassificationDataset(train_data, info.name, info.num_classes, transform, config.seed, info.splits[0],
                                         model.in_chans, train_min, replace_bad=True)
    collate = None
    if args.decode_on_device:
        from timm_gvit.training.device_decode import DeviceDecodeDataset

        dataset = DeviceDecodeDataset(dataset)
        collate = dataset.collate
    pin = torch.cuda.is_available()
    loader = DataLoader(dataset, batch_size=config.batch_size, shuffle=True, drop_last=True, num_workers=config.workers,
                        pin_memory=pin, generator=torch.Generator().manual_seed(config.seed), collate_fn=collate)
    return dataset, loader, data_config, train_min


def ours_consumer(dataset, data_config, device, decode_on_device: bool):
    mean, std = torch.tensor(data_config["mean"], device=device), torch.tensor(data_config["std"], device=device)

    def consume(batch):
        images, labels, bad = batch
        if decode_on_device:
            images = images.to(device, non_blocking=True)
            images, labels, bad = dataset.decode(images, labels.to(device, non_blocking=True), bad, device)
        elif device.type == "cuda":  # what accelerate's prepared loader and the trainer's first line do
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        if device.type == "cuda" or decode_on_device:
            normalize(images, mean, std)
    return consume


def stage_costs(files: list[Path], transform, min_size: int | None, count: int) -> dict[str, float]:
    """CPU milliseconds per image to read, decode (as the trainer decodes: ``decode_image``, with its
    reduced size) and transform ``count`` files in this process."""
    read = decode = trans = 0.0
    for path in files[:count]:
        t0 = time.process_time()
        data = path.read_bytes()
        t1 = time.process_time()
        image = decode_image(data, str(path), min_size=min_size)
        t2 = time.process_time()
        transform(image)
        t3 = time.process_time()
        read, decode, trans = read + t1 - t0, decode + t2 - t1, trans + t3 - t2
    n = max(1, min(count, len(files)))
    return {"read_ms": 1000 * read / n, "decode_ms": 1000 * decode / n, "transform_ms": 1000 * trans / n}


# ---------------------------------------------------------------- timm
def timm_loader(args, root: Path, data_config: dict, hflip: float, device):
    from timm.data import create_dataset, create_loader

    dataset = create_dataset("", root=str(root))
    if args.repeat > 1:
        dataset.reader.samples = list(dataset.reader.samples) * args.repeat
    cuda = device.type == "cuda"
    loader = create_loader(dataset, input_size=data_config["input_size"], batch_size=args.batch, is_training=True, no_aug=False,
                           re_prob=0.0, scale=CROP_SCALE, hflip=hflip, color_jitter=None, interpolation=data_config["interpolation"],
                           mean=data_config["mean"], std=data_config["std"], num_workers=args.workers, pin_memory=cuda,
                           use_prefetcher=cuda, device=device, persistent_workers=False)
    return dataset, loader


# ---------------------------------------------------------------- decode only
def decode_only(files: list[Path], seconds: float, rounds: int | None = None) -> dict:
    """Full PIL decodes (no draft) and torchvision ``decode_jpeg`` decodes of ``files`` in this
    process, in ``rounds`` (default: one per 0.75 s, at least 3) alternating turns of about
    ``seconds / rounds`` each (at least one pass over the files in all): images per CPU-second,
    i.e. per core, of each one's best turn (what a core can do at most: a shared machine only ever
    slows a turn down), with the median turn's beside it."""
    import statistics
    import warnings

    from torchvision.io import ImageReadMode, decode_jpeg

    def pil(path):
        with Image.open(path) as image:
            image.load()

    def tv(path):
        decode_jpeg(torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8), mode=ImageReadMode.RGB)

    rounds = rounds or max(3, round(seconds / 0.75))
    turns: dict[str, list[tuple[int, float, float]]] = {"pil": [], "torchvision": []}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    position = 0
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            for _ in range(rounds):
                for name, decode in (("pil", pil), ("torchvision", tv)):
                    decode(files[0])
                    n, cpu0, wall0 = 0, time.process_time(), time.perf_counter()
                    while n < len(files) / rounds or time.perf_counter() - wall0 < seconds / rounds:
                        decode(files[(position + n) % len(files)])
                        n += 1
                    turns[name].append((n, time.process_time() - cpu0, time.perf_counter() - wall0))
                position += n
    finally:
        torch.set_num_threads(threads)
    results = {}
    for name, runs in turns.items():
        per_cpu_s = [n / cpu for n, cpu, _ in runs]
        results[name] = {"images": sum(n for n, _, _ in runs), "images_per_cpu_s": max(per_cpu_s),
                         "median_images_per_cpu_s": statistics.median(per_cpu_s),
                         "images_per_s": max(n / wall for n, _, wall in runs),
                         "ms_per_image": 1000 / max(per_cpu_s), "turns_images_per_cpu_s": per_cpu_s}
    return results


# ---------------------------------------------------------------- the step it feeds
def compiled_step_rates(path: Path) -> tuple[dict[str, float], str]:
    """Images/s of the compiled training step per phase from a device_check JSON (its
    ``train_step``) or a train_step JSON, and the GPU it was measured on."""
    record = json.loads(path.read_text())
    step = record.get("train_step", record)
    phases = step.get("modes", {}).get("compiled", {}).get("phases", {})
    gpu = step.get("machine", {}).get("device") or record.get("machine", {}).get("gpu") or "?"
    return {p: phases[p]["images_per_s"] for p in PHASES if p in phases}, gpu


# ---------------------------------------------------------------- py-spy
def start_py_spy(seconds: float, out: Path):
    """py-spy recording the first loader worker for ``seconds``; (process, output path) or (None, why)."""
    spy = shutil.which("py-spy") or (Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        return None, "py-spy is not installed (pip install py-spy)"
    workers = sorted(psutil.Process().children(), key=lambda p: p.pid)
    if not workers:
        return None, "no loader worker (--workers 0)"
    raw = out.with_suffix(".py-spy.txt")
    proc = subprocess.Popen([str(spy), "record", "--pid", str(workers[0].pid), "--duration", str(max(1, int(seconds))), "--rate", "250",
                             "--format", "raw", "--output", str(raw), "--nonblocking"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return proc, raw


#: Where a sample's stack says it is: the first of these whose substrings one of its frames holds, innermost frame first.
PROFILE_STAGES = (
    ("decode", ("ImageFile.py", "JpegImagePlugin.py", "decode_image")),
    ("crop + resize", ("resize (PIL", "resized_crop", "_crop (PIL", "crop (PIL")),
    ("exif_transpose (a copy)", ("exif_transpose",)),
    ("to tensor", ("pil_to_tensor", "MaybePILToTensor")),
    ("flip", ("RandomHorizontalFlip", "hflip", "transpose (PIL")),
    ("collate", ("collate",)),
    ("seeding", ("seeded_rng", "SeedSequence", "manual_seed", "get_rng_state", "set_rng_state")),
    ("crop params", ("get_params",)),
    ("file name / open / read", ("open (PIL", "getsize", "read_bytes", "FolderSplit.path", "FolderRecords.load")),
    ("sending batches", ("put (multiprocessing", "reduce_storage", "ForkingPickler", "send_bytes", "_send (")),
    ("dataset (rest)", ("ImageClassificationDataset", "Compose.__call__", "fetch (torch")),
)


def py_spy_summary(raw: Path, top: int = 12) -> dict:
    """The stage (PROFILE_STAGES) and the innermost function of each sample in py-spy's raw output."""
    stages, leaves, total = Counter(), Counter(), 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames, n = stack.split(";"), int(count)
        total += n
        leaves[frames[-1]] += n
        for frame in reversed(frames):
            stage = next((name for name, keys in PROFILE_STAGES if any(k in frame for k in keys)), None)
            if stage:
                stages[stage] += n
                break
        else:
            stages["other"] += n
    return {"samples": total, "stages": {k: v / max(total, 1) for k, v in stages.most_common()},
            "innermost": [(frame, n / max(total, 1)) for frame, n in leaves.most_common(top)]}


# ---------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--dataset", help="imagefolder (or any dataset train_gvit.py takes); default: --make-jpegs' folder")
    parser.add_argument("--make-jpegs", type=Path, metavar="DIR", help="write ImageNet-sized JPEGs from --photos into DIR first")
    parser.add_argument("--jpegs", type=int, default=600, help="training JPEGs --make-jpegs writes (default 600)")
    parser.add_argument("--photos", type=Path, default=PHOTOS, help=f"photos for --make-jpegs (default {PHOTOS})")
    parser.add_argument("--model", default="gvit_small", help="model whose data config sets size, interpolation and normalisation")
    parser.add_argument("--img-size", type=int, default=224, help="training resolution (default 224)")
    parser.add_argument("--batch", type=int, default=256, help="images per batch (default 256)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="loader worker processes (default: one per core)")
    parser.add_argument("--batches", type=int, default=20, help="timed batches (default 20)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="time ours (and timm) this many times, alternating, and report the median round (default 1)")
    parser.add_argument("--repeat", type=int, default=1, help="list every file this many times (a longer epoch of the same files)")
    parser.add_argument("--compare-timm", action="store_true", help="also time timm's create_dataset + create_loader on the same files")
    parser.add_argument("--decode-on-device", action="store_true",
                        help="ours with JPEGs decoded on the device (timm_gvit.training.device_decode; the CPU without a GPU)")
    parser.add_argument("--decode-seconds", type=float, default=3.0, help="seconds of each decode-only measurement (default 3)")
    parser.add_argument("--step-reference", type=Path, default=STEP_REFERENCE,
                        help="device_check or train_step JSON with the compiled step's images/s per phase")
    parser.add_argument("--py-spy", type=float, default=0.0, metavar="SECONDS", help="profile one worker of ours for SECONDS")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "loader.json", help="JSON output")
    return parser


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    if min(args.batch, args.batches, args.repeat, args.rounds) < 1 or args.workers < 0:
        parser.error("--batch, --batches, --repeat and --rounds must be >= 1, --workers >= 0")
    jpegs = None
    if args.make_jpegs:
        jpegs = make_jpegs(args.make_jpegs, args.jpegs, args.photos)
        print(f"JPEGs: {jpegs['written']} in {args.make_jpegs} ({JPEG_SIZE[0]} x {JPEG_SIZE[1]}, quality {JPEG_QUALITY}, "
              f"{jpegs['mean_kib']:.0f} KiB on average)")
        args.dataset = args.dataset or str(args.make_jpegs)
    if not args.dataset:
        parser.error("give --dataset DIR or --make-jpegs DIR")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    config = parse_config(["--dataset", args.dataset, "--model", args.model, "--img-size", str(args.img_size),
                           "--batch-size", str(args.batch), "--workers", str(args.workers)])
    dataset, loader, data_config, train_min = ours_loader(args, config, device)
    ready = args.workers * (loader.prefetch_factor or 0) + 1 if args.workers else 1  # what start-up leaves in the queues
    if len(loader) < ready + args.batches:
        parser.error(f"the dataset gives {len(loader)} batches of {args.batch}; timing {args.batches} after the {ready} that "
                     f"{args.workers} workers have ready at start-up needs {ready + args.batches}: use more images, --repeat, "
                     "or fewer --workers or --batches")
    folder = Path(args.dataset)
    root = folder / "train" if (folder / "train").is_dir() else folder
    files = image_files(root) if root.is_dir() else []
    path_name = "device-decode" if args.decode_on_device else "cpu"
    print(f"ours ({path_name} path): {len(dataset)} images, batch {args.batch}, {args.workers} workers, {args.img_size} px, "
          f"decoded at >= {train_min} px where the JPEG allows, pinned {torch.cuda.is_available()}")

    spy = {}

    def start_spy():
        if args.py_spy <= 0:
            return set()
        proc, raw = start_py_spy(args.py_spy, args.out)
        spy.update(proc=proc, raw=raw)
        if proc is not None:
            NOT_LOADERS.add(proc.pid)
        return set()

    timm_dataset = timm_load = None
    if args.compare_timm:
        timm_dataset, timm_load = timm_loader(args, root, data_config, config.hflip, device)
        if loader_batches(len(timm_dataset), args.batch) < ready + args.batches:
            parser.error(f"timm's dataset of {root} gives {loader_batches(len(timm_dataset), args.batch)} batches of {args.batch}; "
                         f"{ready + args.batches} are needed: use more images or --repeat")
    consume = ours_consumer(dataset, data_config, device, args.decode_on_device)
    ours_rounds, timm_rounds = [], []
    for round_ in range(args.rounds):  # alternating, so that a machine shared with other work slows both alike
        ours_rounds.append(time_loader(loader, args.batch, args.batches, consume, start_spy if round_ == 0 else None))
        report_rate("ours", ours_rounds[-1], round_, args.rounds)
        if timm_load is not None:
            timm_rounds.append(time_loader(timm_load, args.batch, args.batches, lambda batch: None))
            report_rate("timm", timm_rounds[-1], round_, args.rounds)
    ours, timm_result = median_round(ours_rounds), median_round(timm_rounds) if timm_rounds else None
    if timm_result:
        timm_result["images"] = len(timm_dataset)
    profile = None
    if spy.get("proc") is not None:
        _, err = spy["proc"].communicate(timeout=args.py_spy + 60)
        if spy["proc"].returncode == 0 and Path(spy["raw"]).is_file():
            profile = {"raw": str(spy["raw"]), **py_spy_summary(Path(spy["raw"]))}
            print(f"py-spy, one worker, {profile['samples']} samples: " + ", ".join(f"{k} {v:.0%}" for k, v in profile["stages"].items()))
            for frame, share in profile["innermost"]:
                print(f"  {share:6.1%}  {frame}")
        else:
            profile = {"error": err[-2000:]}
            print(f"py-spy failed: {err[-500:]}")
    elif args.py_spy > 0:
        profile = {"error": spy.get("raw")}
        print(f"py-spy: {spy.get('raw')}")

    decoded = decode_only(files, args.decode_seconds) if files else {}
    costs = stage_costs(files, dataset.transform if not args.decode_on_device else dataset.dataset.transform, train_min, 50) if files else None
    limit = decoded.get("pil", {}).get("images_per_cpu_s")
    if decoded:
        print(f"decode only, one process, best of {len(decoded['pil']['turns_images_per_cpu_s'])} turns (median): PIL "
              f"{limit:.0f} ({decoded['pil']['median_images_per_cpu_s']:.0f}) img/s, torchvision decode_jpeg (CPU) "
              f"{decoded['torchvision']['images_per_cpu_s']:.0f} ({decoded['torchvision']['median_images_per_cpu_s']:.0f}) img/s")
    if costs:
        print(f"per image in one process: read {costs['read_ms']:.2f} ms, decode (as the trainer) {costs['decode_ms']:.2f} ms, "
              f"transform {costs['transform_ms']:.2f} ms")

    step_rates, step_gpu = compiled_step_rates(args.step_reference) if args.step_reference and args.step_reference.is_file() else ({}, None)
    per_core = ours["images_per_cpu_s"]
    cores = {phase: rate / per_core for phase, rate in step_rates.items()} if per_core else {}
    if cores:
        print(f"cores per GPU needed to feed the compiled step ({step_gpu}, {args.step_reference.name}) at ours' "
              f"{per_core:.0f} img per CPU-second: " + ", ".join(f"{p} {step_rates[p]:.0f} img/s -> {c:.1f}" for p, c in cores.items()))

    ratio = ours["images_per_s"] / timm_result["images_per_s"] if timm_result else None
    checks = {}
    if ratio is not None:
        checks["ours_vs_timm"] = ratio >= 1.0
        print(f"{'PASS' if checks['ours_vs_timm'] else 'FAIL'}  ours / timm = {ratio:.2f} (target >= 1.0)")
    if limit and per_core:
        checks["ours_vs_decode_only"] = per_core >= 0.5 * limit
        print(f"{'PASS' if checks['ours_vs_decode_only'] else 'FAIL'}  ours per core {per_core:.0f} img/s = "
              f"{per_core / limit:.2f}x the decode-only rate per core {limit:.0f} img/s (target >= 0.5x)")

    report = {
        "ours_images_per_s": ours["images_per_s"],
        "timm_images_per_s": timm_result["images_per_s"] if timm_result else None,
        "decode_only_images_per_s": limit,
        "ratio": ratio,
        "ours_images_per_core_s": per_core,
        "timm_images_per_core_s": timm_result["images_per_cpu_s"] if timm_result else None,
        "decode_only_images_per_core_s": limit,
        "decode_only_torchvision_images_per_core_s": decoded.get("torchvision", {}).get("images_per_cpu_s"),
        "ours_cpu_ms_per_image": ours["cpu_ms_per_image"],
        "timm_cpu_ms_per_image": timm_result["cpu_ms_per_image"] if timm_result else None,
        "checks": checks,
        "path": path_name,
        "dataset": args.dataset, "images": len(dataset), "files": len(files), "repeat": args.repeat,
        "mean_file_kib": sum(f.stat().st_size for f in files[:500]) / max(1, len(files[:500])) / 1024 if files else None,
        "batch": args.batch, "workers": args.workers, "img_size": args.img_size, "model": args.model,
        "decode_min_size": train_min, "device": str(device), "pin_memory": torch.cuda.is_available(),
        "cores": os.cpu_count(), "cpu_affinity": len(psutil.Process().cpu_affinity() or []),
        "versions": {"torch": torch.__version__, "timm": timm.__version__, "pil": Image.__version__},
        # the keys of earlier versions, kept for their readers
        "images_per_s": ours["images_per_s"], "timed_batches": ours["timed_batches"], "startup_batches": ours["startup_batches"],
        "startup_s": ours["startup_s"], "per_image_in_one_process": costs,
        "ours": ours, "timm": timm_result, "decode_only": decoded, "jpegs": jpegs,
        "compiled_step": {"source": str(args.step_reference), "gpu": step_gpu, "images_per_s": step_rates,
                          "cores_per_gpu": cores},
        "profile": profile,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"loader: ours {ours['images_per_s']:.0f} img/s, timm {fmt(report['timm_images_per_s'], '.0f')} img/s, "
          f"ratio {fmt(ratio, '.2f')}")
    return report


if __name__ == "__main__":
    main()
