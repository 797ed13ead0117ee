"""Datasets for the trainer.

A dataset is a local imagefolder (class sub-folders, optionally inside split folders: indexed
once and cached, :mod:`.folder_index`), a local folder of webdataset tar shards
(``train-*.tar``, ``validation-*.tar``, ...: samples ``KEY.jpg`` + ``KEY.cls``), a folder written by
``save_to_disk``, a Hugging Face Hub id, or, by default, scikit-learn's 8x8 digits (1,797 real
scans of handwritten digits, shipped inside scikit-learn) turned into RGB images. Tar shards,
Hub datasets and saved folders are read through Hugging Face ``datasets``.

The labels of both splits are checked when they load (:func:`check_labels`). An unreadable image
costs that image (:class:`ImageClassificationDataset`); ``--skip-bad-images`` reads every image
before training instead (:func:`check_images`).

The training augmentation of an item is a function of (seed, epoch, item) alone, so that a run
resumed in the middle of an epoch, or run with another number of loader workers, sees the same
crops and flips.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import math
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..images import UnreadableImage, decode_image, to_channels
from .folder_index import FolderSplit, index_imagefolder

VAL_SPLIT_NAMES = ("validation", "val", "test")
#: Random-resized-crop scale range of the paper's training augmentation.
CROP_SCALE = (0.5, 1.0)
DIGITS = "sklearn-digits"
#: Webdataset shard names: a split's shards are ``SPLIT-*.tar`` (or ``SPLIT_*``), as timm's and webdataset's writers name them.
SHARD_SPLITS = {"train": "train", "validation": "validation", "val": "validation", "test": "test"}
#: Sample parts of a webdataset shard that hold the image, in the order they are looked for, and the label.
SHARD_IMAGE_KEYS, SHARD_LABEL_KEY = ("jpg", "jpeg", "png", "webp"), "cls"


@dataclass
class DataInfo:
    name: str
    num_classes: int
    class_names: list[str]
    train_size: int
    val_size: int
    splits: tuple[str, str]  # the names errors give the training and validation data


@contextlib.contextmanager
def seeded_rng(seed: int):
    """Run the block with Python's and torch's (CPU) generators seeded by ``seed``, then put them back."""
    python_state, torch_state = random.getstate(), torch.get_rng_state()
    random.seed(seed)
    torch.random.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(python_state)
        torch.set_rng_state(torch_state)


class FolderRecords:
    """The items of an imagefolder split, by index: ``(file path, label)``; rows of a
    :class:`FolderSplit`, as arrays."""

    def __init__(self, split: FolderSplit, rows: np.ndarray | None = None):
        self.split = split
        self.rows = np.arange(len(split), dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def labels(self) -> np.ndarray:
        return self.split.labels[self.rows]

    def select(self, indices) -> "FolderRecords":
        return FolderRecords(self.split, self.rows[np.asarray(indices, dtype=np.int64)])

    def load(self, index: int) -> tuple[str, str, int]:
        """``(encoded image: a path, its name, label)``."""
        row = int(self.rows[index])
        path = self.split.path(row)
        return path, path, int(self.split.labels[row])


class ArrowRecords:
    """The items of a ``datasets.Dataset`` (a Hub dataset, a ``save_to_disk`` folder, tar shards)
    by index: ``(encoded image, its name, label)``; images are decoded by the caller, where the
    item's name is known."""

    def __init__(self, data, image_column: str, label_column: str):
        import datasets

        feature = data.features.get(image_column)
        if isinstance(feature, datasets.Image) and feature.decode:
            data = data.cast_column(image_column, datasets.Image(decode=False))
        self.data, self.image_column, self.label_column = data, image_column, label_column

    def __len__(self) -> int:
        return len(self.data)

    def labels(self) -> np.ndarray:
        return self.data.select_columns([self.label_column]).with_format("numpy")[:][self.label_column]

    def select(self, indices) -> "ArrowRecords":
        return ArrowRecords(self.data.select(indices), self.image_column, self.label_column)

    def load(self, index: int):
        item = self.data[index]
        value, name = example_image(item, self.image_column)
        return value, name or f"item {index}", item[self.label_column]


def example_image(example: dict, image_column: str) -> tuple[object, str | None]:
    """A ``datasets`` example's encoded image (bytes, a path, or a decoded image) and its name:
    ``SHARD:KEY`` for a tar shard's sample, else its key or path; None where it has none."""
    value, key, url = example[image_column], example.get("__key__"), example.get("__url__")
    name = f"{url}:{key}" if url and key else key
    if isinstance(value, dict):
        name = name or value.get("path")
        value = value.get("bytes") or value.get("path")
    return value, name


def blank_image(in_chans: int) -> Image.Image:
    """What an unreadable validation item becomes (with label -1): a blank image of the model's channels."""
    return Image.new("L" if in_chans == 1 else "RGB", (8, 8))


def decode_item(source, label, where: str, num_classes: int, in_chans: int = 3, min_size: int | None = None) -> tuple[Image.Image, int]:
    """An item's encoded image (bytes, a path, a PIL image or an array) and label as ``(image,
    label)``. :class:`UnreadableImage` names an image that cannot be decoded (``where`` says which);
    a ``ValueError`` a label outside the classes."""
    if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or not 0 <= label < num_classes:
        raise ValueError(f"{where}: label {label!r} is not an integer in 0..{num_classes - 1}")
    if source is None:
        raise UnreadableImage(f"{where}: no image")
    if isinstance(source, (Image.Image, np.ndarray)):
        try:
            return to_channels(source if isinstance(source, Image.Image) else Image.fromarray(source), in_chans), int(label)
        except (OSError, ValueError, TypeError) as exc:
            raise UnreadableImage(f"{where}: not a readable image ({exc})") from exc
    return decode_image(source, where, in_chans=in_chans, min_size=min_size), int(label)


class ImageClassificationDataset(torch.utils.data.Dataset):
    """``(transformed image, label, unreadable)`` triples from records (:class:`FolderRecords`,
    :class:`ArrowRecords`).

    An unreadable image costs that image, not the run: in training (``replace_bad=True``) the
    next readable item takes its place, so that the epoch keeps its length; in validation the item
    comes back as a blank image with label -1, which the metrics leave out. Either way
    ``unreadable`` names the image and why ("" when there was none), and a line on stderr says so.

    With ``seed``, item ``i`` of epoch ``e`` (:meth:`set_epoch`) is transformed with the random
    generators seeded from ``(seed, e, i)``: the same crops whatever the workers or a resume.
    Images are read as 8-bit RGB, or greyscale with ``in_chans=1``; ``min_size`` lets JPEGs be
    decoded at a reduced size whose shorter side is at least that (see :func:`decode_sizes`).
    """

    def __init__(self, records, name: str, num_classes: int, transform=None, seed: int | None = None, split: str | None = None,
                 in_chans: int = 3, min_size: int | None = None, replace_bad: bool = True):
        if in_chans not in (1, 3):
            raise ValueError(f"in_chans must be 3 (RGB) or 1 (greyscale), got {in_chans!r}")
        self.records, self.name, self.split = records, name, split
        self.num_classes, self.transform, self.in_chans, self.min_size = num_classes, transform, in_chans, min_size
        self.seed, self.epoch, self.replace_bad = seed, 0, replace_bad

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def where(self, name: str) -> str:
        return f"dataset '{self.name}'{f', split {self.split!r}' if self.split else ''}, {name}"

    def read(self, index: int) -> tuple[Image.Image, int]:
        """Item ``index`` as (image, label), untransformed. :class:`UnreadableImage` names an image
        that cannot be decoded; a ``ValueError`` a label outside the classes."""
        source, name, label = self.records.load(index)
        return decode_item(source, label, self.where(name), self.num_classes, self.in_chans, self.min_size)

    def problem(self, index: int) -> str | None:
        """Why item ``index`` cannot be read, or None."""
        try:
            self.read(index)
        except UnreadableImage as exc:
            return str(exc)
        return None

    def skip(self, bad: set[int], replace: bool) -> None:
        """Leave out the items ``bad``; with ``replace``, each one's place goes to the next readable
        item instead, so that the dataset keeps its length (and a run its schedule)."""
        good = [i for i in range(len(self.records)) if i not in bad]
        if not good:
            raise ValueError(f"dataset '{self.name}', split {self.split!r}: no readable image")
        if bad:
            self.records = self.records.select([good[bisect.bisect(good, i) % len(good)] if i in bad else i
                                                for i in range(len(self.records))] if replace else good)

    def _transform(self, image: Image.Image, index: int):
        if self.transform is None:
            return image
        if self.seed is None:
            return self.transform(image)
        with seeded_rng(int(np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1)[0])):
            return self.transform(image)

    def __getitem__(self, index: int):
        unreadable = []
        for attempt in range(min(MAX_BAD_IN_A_ROW, len(self))):
            item = (index + attempt) % len(self)
            try:
                image, label = self.read(item)
                return self._transform(image, index), label, "\n".join(unreadable)
            except UnreadableImage as exc:
                print(f"skipping an unreadable image: {exc}", file=sys.stderr, flush=True)
                unreadable.append(str(exc))
                if not self.replace_bad:
                    return self._transform(blank_image(self.in_chans), index), -1, unreadable[0]
        raise TooManyUnreadable(f"{self.where(f'item {index}')} and the {len(unreadable) - 1} after it are unreadable images, the "
                                f"first: {unreadable[0]}. Is this the dataset you meant?")


#: An item and this many after it unreadable: the dataset is not what it seems, and the run stops.
MAX_BAD_IN_A_ROW = 64


class TooManyUnreadable(ValueError):
    """So many unreadable images in a row that the data cannot be what was meant."""


class _Problems(torch.utils.data.Dataset):
    def __init__(self, dataset: ImageClassificationDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[int, str | None]:
        return index, self.dataset.problem(index)


def find_unreadable(dataset: ImageClassificationDataset, workers: int = 0) -> dict[int, str]:
    """Read every item of ``dataset`` (with ``workers`` loader processes): ``{index: why}`` of those that fail."""
    from tqdm.auto import tqdm

    loader = torch.utils.data.DataLoader(_Problems(dataset), batch_size=64, num_workers=workers, collate_fn=list)
    return {index: why for batch in tqdm(loader, desc=f"checking {dataset.split or 'the'} images", mininterval=2.0,
                                         disable=len(loader) < 20) for index, why in batch if why}


def check_images(train: ImageClassificationDataset, val: ImageClassificationDataset, limit: int, workers: int = 0,
                 log=print) -> list[str]:
    """``--skip-bad-images``: read every image of both splits before training and skip up to
    ``limit`` unreadable ones, each logged: a training item gives its place to the next readable
    one (the schedule keeps its length), a validation item is left out. More are a ``ValueError``
    that lists them. Returns the reasons, one per skipped image."""
    found = {val.split: find_unreadable(val, workers), train.split: find_unreadable(train, workers)}
    reasons = [why for problems in found.values() for why in problems.values()]
    if len(reasons) > limit:
        raise ValueError(f"{len(reasons)} unreadable images, more than --skip-bad-images {limit} allows: {'; '.join(reasons[:3])}")
    for why in reasons:
        log(f"skipping an unreadable image: {why}")
    train.skip(set(found[train.split]), replace=True)
    val.skip(set(found[val.split]), replace=False)
    return reasons


def _digits():
    import datasets
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = [Image.fromarray((x * 255 / 16).clip(0, 255).astype(np.uint8)).convert("RGB") for x in digits.images]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=[str(d) for d in range(10)])})
    return datasets.DatasetDict({"train": datasets.Dataset.from_dict({"image": images, "label": digits.target.tolist()}, features=features)})


def is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_dict.json").exists() or (path / "state.json").exists()


def shard_files(folder: Path) -> dict[str, list[str]]:
    """``{split: sorted tar shards}`` of a folder of webdataset shards (empty where there are none)."""
    found: dict[str, list[str]] = {}
    for path in sorted(folder.glob("*.tar")):
        prefix = path.name.split("-")[0].split("_")[0]
        if prefix in SHARD_SPLITS:
            found.setdefault(SHARD_SPLITS[prefix], []).append(str(path))
    return found


def shard_class_names(folder: Path):
    """The ``ClassLabel`` of ``class_names.json`` beside tar shards (:mod:`timm_gvit.tools.make_shards`
    writes it), or None where there is none; a ``ValueError`` for one that is not a list of names."""
    import datasets

    file = folder / "class_names.json"
    if not file.is_file():
        return None
    try:
        names = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{file}: not readable as JSON ({exc})") from exc
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
        raise ValueError(f"{file}: expected a JSON list of distinct class names, got {str(names)[:80]}")
    return datasets.ClassLabel(names=names)


def resolve_columns(columns: list[str], config, name: str) -> tuple[str, str]:
    """The image and label columns of ``config`` among a dataset's ``columns``: webdataset shards
    name them by file ending (``jpg``, ``cls``), which the defaults ``image`` and ``label`` find."""
    image_column, label_column = config.image_column, config.label_column
    if image_column == "image" and "image" not in columns:
        image_column = next((key for key in SHARD_IMAGE_KEYS if key in columns), image_column)
    if label_column == "label" and "label" not in columns and SHARD_LABEL_KEY in columns:
        label_column = SHARD_LABEL_KEY
    for column in (image_column, label_column):
        if column not in columns:
            raise ValueError(f"dataset '{name}' has no column '{column}'; its columns are {columns} (see --image-column / --label-column)")
    return image_column, label_column


def _datasets_records(loaded, name: str, config) -> dict:
    """``{split: ArrowRecords}`` of what ``datasets`` loaded, after checking its columns."""
    import datasets

    splits = loaded if isinstance(loaded, datasets.DatasetDict) else datasets.DatasetDict({"train": loaded})
    if config.train_split not in splits:
        raise ValueError(f"dataset '{name}' has no split '{config.train_split}'; it has {sorted(splits)}")
    image_column, label_column = resolve_columns(splits[config.train_split].column_names, config, name)
    records = {split: ArrowRecords(data, image_column, label_column) for split, data in splits.items()}
    return records, splits[config.train_split].features.get(label_column)


def _load(config, write_cache: bool) -> tuple[dict, object]:
    """``({split: records}, the label column's feature)`` of the config's dataset."""
    import datasets

    source = config.dataset
    if source is None:
        return _datasets_records(_digits(), DIGITS, config)
    path = Path(source)
    if not path.exists():
        try:
            loaded = datasets.load_dataset(source)
        except Exception as exc:
            raise ValueError(f"dataset '{source}': not a local folder, and loading it from the Hugging Face Hub failed: {exc}") from exc
        return _datasets_records(loaded, source, config)
    if not path.is_dir():
        raise ValueError(f"dataset '{source}': a file, expected an imagefolder, a folder of tar shards or a save_to_disk folder")
    if is_saved_dataset(path):
        return _datasets_records(datasets.load_from_disk(str(path)), source, config)
    shards = shard_files(path)
    if shards:
        if "train" not in shards and config.train_split == "train":
            raise ValueError(f"dataset '{source}': tar shards {sorted(shards)} but none named train-*.tar")
        records, feature = _datasets_records(datasets.load_dataset("webdataset", data_files=shards), source, config)
        return records, shard_class_names(path) or feature
    indexed = index_imagefolder(path, progress=True, write_cache=write_cache)
    if indexed is None:  # a metadata table: datasets reads it
        return _datasets_records(datasets.load_dataset("imagefolder", data_dir=str(path)), source, config)
    splits, class_names = indexed
    if len(class_names) < 2:
        raise ValueError(f"dataset '{source}' has no column 'label': an imagefolder takes its labels from its class sub-folders, "
                         "and needs at least two of them (a classifier needs two classes or more)")
    for column in (config.image_column, config.label_column):
        if column not in ("image", "label"):
            raise ValueError(f"dataset '{source}' has no column '{column}'; its columns are ['image', 'label'] (an imagefolder: "
                             "leave out --image-column / --label-column)")
    if config.train_split not in splits:
        raise ValueError(f"dataset '{source}' has no split '{config.train_split}'; it has {sorted(splits)}")
    return {split: FolderRecords(data) for split, data in splits.items()}, datasets.ClassLabel(names=class_names)


def _permutation(n: int, seed: int) -> np.ndarray:
    """The permutation ``datasets``' ``shuffle(seed=seed)`` and ``train_test_split(seed=seed)`` draw."""
    return np.random.default_rng(seed).permutation(n)


def load_splits(config, write_cache: bool = True) -> tuple[object, object, DataInfo]:
    """The training and validation records of ``config`` (:class:`FolderRecords` or
    :class:`ArrowRecords`) and what they hold. ``write_cache``: whether this process may write the
    imagefolder index's cache (under several processes, the local main one does, first)."""
    name = config.dataset or DIGITS
    splits, feature = _load(config, write_cache)
    train = splits[config.train_split]
    val_name = config.val_split or next((s for s in VAL_SPLIT_NAMES if s in splits and s != config.train_split), None)
    if config.val_split and config.val_split not in splits:
        raise ValueError(f"dataset '{name}' has no split '{config.val_split}'; it has {sorted(splits)}")
    if val_name is None:  # as datasets' train_test_split(test_size, seed) splits
        n_test = math.ceil(config.val_fraction * len(train))
        order = _permutation(len(train), config.seed)
        train, val = train.select(order[n_test:]), train.select(order[:n_test])
    else:
        val = splits[val_name]
    # subsets are random (seeded, as datasets' shuffle(seed).select): splits are often sorted by class, and a prefix would hold few classes
    if config.max_train_samples:
        train = train.select(_permutation(len(train), config.seed)[:config.max_train_samples])
    if config.max_val_samples:
        val = val.select(_permutation(len(val), config.seed)[:config.max_val_samples])
    val_desc = val_name or f"{config.train_split}, its --val-fraction part"
    label_column = getattr(train, "label_column", "label")
    class_names = check_labels(name, label_column, feature, {config.train_split: train.labels(), val_desc: val.labels()})
    if len(class_names) < 2:
        raise ValueError(f"dataset '{name}' has {len(class_names)} class ({class_names}) in column '{label_column}': "
                         "a classifier needs at least two")
    return train, val, DataInfo(name, len(class_names), class_names, len(train), len(val), (config.train_split, val_desc))


def check_labels(name: str, column: str, feature, labels: dict[str, list]) -> list[str]:
    """The class names of labels ``{split: [label, ...]}`` (training split first), after refusing,
    with a ``ValueError`` that says what was found, labels the model could not learn from: labels
    that are not integer class ids or are out of range, classes without a training image where
    the labels are bare integers (``{0, 7}``), and validation classes the training split lacks."""
    labels = {split: _label_array(values) for split, values in labels.items()}
    (train_split, train_labels), *others = labels.items()
    for split, values in labels.items():
        wrong = [] if values.dtype.kind in "iu" else [v for v in values.tolist() if isinstance(v, bool) or not isinstance(v, int)]
        if wrong:
            hint = (": convert them to class ids with datasets' class_encode_column, or use an imagefolder (one "
                    "sub-folder per class)") if isinstance(wrong[0], str) else ""
            raise ValueError(f"dataset '{name}', split '{split}': the labels in column '{column}' must be integer "
                             f"class ids 0, 1, ..., found {wrong[0]!r} ({len(wrong)} such){hint}")
    names = list(feature.names) if hasattr(feature, "names") else [str(i) for i in range(int(train_labels.max(initial=-1)) + 1)]
    for split, values in labels.items():
        outside = np.unique(values[(values < 0) | (values >= len(names))]).tolist()
        if outside:
            raise ValueError(f"dataset '{name}', split '{split}': labels {outside[:10]} in column '{column}' are outside "
                             f"0..{len(names) - 1}, the classes {'its ClassLabel names' if hasattr(feature, 'names') else 'the training labels'} give"
                             + ("; -1 marks an unlabelled image: choose another --val-split, or --val-fraction" if -1 in outside else ""))
    trained = set(np.unique(train_labels).tolist())
    missing = [i for i in range(len(names)) if i not in trained]
    if missing and not hasattr(feature, "names"):
        raise ValueError(f"dataset '{name}', split '{train_split}': the labels in column '{column}' are {sorted(trained)[:10]}, so "
                         f"classes {missing[:10]} have no training image and the model would have outputs it never learns; "
                         "number the classes 0..N-1 (with --max-train-samples, a larger sample may hold every class)")
    for split, values in others:
        unseen = sorted(set(np.unique(values).tolist()) - trained)
        if unseen:
            raise ValueError(f"dataset '{name}', split '{split}' has classes {[names[i] for i in unseen][:10]} that the training "
                             f"split '{train_split}' has no image of: the model could never predict them (with "
                             "--max-train-samples, a larger sample may hold them)")
    if missing:
        print(f"dataset '{name}': classes {[names[i] for i in missing][:10]} have no image in split '{train_split}' or the "
              f"validation split; the model keeps an output for each of the {len(names)} named classes", file=sys.stderr)
    return names


def _label_array(values) -> np.ndarray:
    """Labels as a numpy array: integer where they all are (bools are not), else objects."""
    if isinstance(values, np.ndarray) and values.dtype.kind in "iu":
        return values
    values = list(values.tolist() if isinstance(values, np.ndarray) else values)
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) for v in values):
        return np.asarray(values, dtype=np.int64)
    return np.asarray(values, dtype=object)


class ResizedCropFlip:
    """timm's random-resized crop and horizontal flip for 8-bit output, with the crop resized by
    torch's antialiased uint8 kernel instead of PIL's (a quarter less CPU per image in a loader
    worker, where PIL's resize was 42 % of the time): the same random draws as timm's transform
    (the box from the crop's ``get_params``, then ``torch.rand(1) < hflip``), pixels within a few
    levels of PIL's. Image in, ``[C, H, W]`` uint8 tensor out."""

    uint8 = True  # what timm_gvit.training.device_decode reads: it draws the same box and flip

    def __init__(self, crop, hflip: float):
        self.crop, self.hflip = crop, hflip
        self.mode = crop.interpolation.value if hasattr(crop.interpolation, "value") else str(crop.interpolation)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        top, left, height, width = self.crop.get_params(image, self.crop.scale, self.crop.ratio)
        pixels = torch.from_numpy(np.array(image.crop((left, top, left + width, top + height))))
        pixels = (pixels if pixels.ndim == 3 else pixels[:, :, None]).permute(2, 0, 1)[None]  # channels-last memory, as the kernel wants
        out = torch.nn.functional.interpolate(pixels, size=tuple(self.crop.size), mode=self.mode, antialias=True)[0]
        return out.flip(-1).contiguous() if self.hflip > 0 and torch.rand(1) < self.hflip else out.contiguous()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(crop={self.crop}, hflip={self.hflip})"


def training_transform(data_config: dict, hflip: float, uint8: bool = False):
    """The paper's training augmentation for a model's timm data config: random-resized crops
    (scale 0.5-1) and horizontal flips with probability ``hflip``; no colour jitter, no
    auto-augment, no random erasing. ``uint8``: images come out as ``[C, H, W]`` uint8 tensors, to
    be normalised on the device (:func:`timm_gvit.data_utils.normalize`), as timm's prefetcher does,
    resized by torch's kernel where the interpolation is bilinear or bicubic (:class:`ResizedCropFlip`);
    else as normalised float tensors."""
    from timm.data import create_transform

    transform = create_transform(**{k: v for k, v in data_config.items() if k not in ("crop_pct", "crop_mode")},
                                 is_training=True, scale=CROP_SCALE, hflip=hflip, color_jitter=None, auto_augment=None, re_prob=0.0,
                                 use_prefetcher=uint8)
    crop = transform.transforms[0]
    if uint8 and getattr(crop.interpolation, "value", None) in ("bilinear", "bicubic"):
        return ResizedCropFlip(crop, hflip)
    return transform


def eval_transform(data_config: dict, crop_pct: float | None = None, uint8: bool = False):
    """The model's evaluation transform (resize, centre crop), with ``crop_pct`` in place of the
    data config's where given; ``uint8`` as in :func:`training_transform`."""
    from timm.data import create_transform

    return create_transform(**{**data_config, "crop_pct": crop_pct or data_config["crop_pct"]}, use_prefetcher=uint8)


def decode_sizes(data_config: dict, crop_pct: float | None = None) -> tuple[int, int]:
    """The shorter side a JPEG may be decoded down to (:func:`timm_gvit.images.decode_image`'s
    ``min_size``) for training and for evaluation, so that no crop is upsampled that would not be
    from the full image: a random-resized crop of scale >= 0.5 and aspect 3/4..4/3 keeps a shorter
    side of at least sqrt(0.5 * 3/4) of the image's; evaluation resizes the shorter side to
    size / crop_pct."""
    size = max(data_config["input_size"][-2:])
    return (math.ceil(size / math.sqrt(CROP_SCALE[0] * 3 / 4)), math.ceil(size / (crop_pct or data_config["crop_pct"])))
