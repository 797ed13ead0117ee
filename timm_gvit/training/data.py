"""Datasets for the trainer, through Hugging Face ``datasets``.

A dataset is a Hub id, a local imagefolder directory (one sub-folder per class), a folder
written by ``save_to_disk``, or, by default, scikit-learn's 8x8 digits (1,797 real scans of
handwritten digits, shipped inside scikit-learn) turned into RGB images. The labels of both
splits are checked when they load (:func:`check_labels`), every validation image before training
(:func:`check_images`; every training image too with ``--skip-bad-images``), and each item as it
is read: an unreadable image raises a ``ValueError`` that names the dataset, the split and the file.

The training augmentation of an item is a function of (seed, epoch, item) alone, so that a run
resumed in the middle of an epoch, or run with another number of loader workers, sees the same
crops and flips.
"""

from __future__ import annotations

import bisect
import contextlib
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..data_utils import to_channels, to_rgb  # noqa: F401  (to_rgb: also timm_gvit.training.data.to_rgb, as before)

VAL_SPLIT_NAMES = ("validation", "val", "test")
#: Random-resized-crop scale range of the paper's training augmentation.
CROP_SCALE = (0.5, 1.0)
DIGITS = "sklearn-digits"


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


class ImageClassificationDataset(torch.utils.data.Dataset):
    """(transformed image, label) pairs from a ``datasets.Dataset``, validated item by item; an
    unreadable image's error names the split and the file.

    With ``seed``, item ``i`` of epoch ``e`` (:meth:`set_epoch`) is transformed with the random
    generators seeded from ``(seed, e, i)``. Images are read as 8-bit RGB, or greyscale with
    ``in_chans=1`` (a model with ``in_chans=1``).
    """

    def __init__(self, data, name: str, image_column: str, label_column: str, num_classes: int, transform=None, seed: int | None = None,
                 split: str | None = None, in_chans: int = 3):
        import datasets

        if in_chans not in (1, 3):
            raise ValueError(f"in_chans must be 3 (RGB) or 1 (greyscale), got {in_chans!r}")
        self.in_chans = in_chans
        self.decoder = getattr(data, "features", {}).get(image_column)
        if isinstance(self.decoder, datasets.Image) and self.decoder.decode:  # decoded here, where the file's path is known
            data = data.cast_column(image_column, datasets.Image(decode=False))
        else:
            self.decoder = None
        self.data, self.name, self.split = data, name, split
        self.image_column, self.label_column = image_column, label_column
        self.num_classes, self.transform = num_classes, transform
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.data)

    def read(self, index: int) -> tuple[Image.Image, int]:
        """Item ``index`` as (RGB image, label), untransformed; a ``ValueError`` naming it if unreadable."""
        where = f"dataset '{self.name}'{f', split {self.split!r}' if self.split else ''}, item {index}"
        try:
            item = self.data[index]
            value = item[self.image_column]
            if isinstance(value, dict) and value.get("path"):
                where += f" ({value['path']})"
            image = to_channels(self.decoder.decode_example(value) if self.decoder else _to_pil(value), self.in_chans)
        except Exception as exc:
            raise ValueError(f"{where}: cannot read the image in column '{self.image_column}': {exc}") from exc
        label = item[self.label_column]
        if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or not 0 <= label < self.num_classes:
            raise ValueError(f"{where}: label {label!r} in column '{self.label_column}' is not an integer in 0..{self.num_classes - 1}")
        return image, int(label)

    def problem(self, index: int) -> str | None:
        """Why item ``index`` cannot be read, or None."""
        try:
            self.read(index)
        except ValueError as exc:
            return str(exc)
        return None

    def skip(self, bad: set[int], replace: bool) -> None:
        """Leave out the items ``bad``; with ``replace``, each one's place goes to the next readable
        item instead, so that the dataset keeps its length (and a run its schedule)."""
        good = [i for i in range(len(self.data)) if i not in bad]
        if not good:
            raise ValueError(f"dataset '{self.name}', split {self.split!r}: no readable image")
        if bad:
            self.data = self.data.select([good[bisect.bisect(good, i) % len(good)] if i in bad else i for i in range(len(self.data))]
                                         if replace else good)

    def __getitem__(self, index: int):
        try:
            image, label = self.read(index)
        except ValueError as exc:
            raise ValueError(f"{exc} (the trainer's --skip-bad-images N checks every image before training and skips up "
                             "to N unreadable ones)") from exc
        if self.transform is None:
            return image, int(label)
        if self.seed is None:
            return self.transform(image), int(label)
        with seeded_rng(int(np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1)[0])):
            return self.transform(image), int(label)


class _Problems(torch.utils.data.Dataset):
    def __init__(self, dataset: ImageClassificationDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[int, str | None]:
        return index, self.dataset.problem(index)


def find_unreadable(dataset: ImageClassificationDataset, workers: int = 0) -> dict[int, str]:
    """Read every item of ``dataset`` (with ``workers`` loader processes): ``{index: why}`` of those that fail."""
    loader = torch.utils.data.DataLoader(_Problems(dataset), batch_size=64, num_workers=workers, collate_fn=list)
    return {index: why for batch in loader for index, why in batch if why}


def check_images(train: ImageClassificationDataset, val: ImageClassificationDataset, limit: int | None, workers: int = 0,
                 log=print) -> dict[str, int]:
    """Read every validation image before training, and with ``limit`` (``--skip-bad-images``)
    every training image too; returns the number skipped per checked split.

    Without ``limit`` an unreadable validation image is a ``ValueError``. With it, up to ``limit``
    unreadable images are skipped, each logged: a training item gives its place to the next
    readable one (the schedule keeps its length), a validation item is left out. More are a
    ``ValueError`` that lists them.
    """
    found = {val.split: find_unreadable(val, workers)}
    if limit is not None:
        found[train.split] = find_unreadable(train, workers)
    total = sum(len(problems) for problems in found.values())
    listed = "; ".join(why for problems in found.values() for why in list(problems.values())[:3])
    if total and limit is None:
        raise ValueError(f"{total} unreadable validation image(s), found before training: {listed}. Fix or remove them, "
                         "or skip up to N unreadable images with --skip-bad-images N")
    if total > (limit or 0):
        raise ValueError(f"{total} unreadable images, more than --skip-bad-images {limit} allows: {listed}")
    for problems in found.values():
        for why in problems.values():
            log(f"skipping an unreadable image: {why}")
    if limit is not None:
        train.skip(set(found[train.split]), replace=True)
    val.skip(set(found[val.split]), replace=False)
    return {split: len(problems) for split, problems in found.items()}


def _to_pil(value) -> Image.Image:
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, dict) and (value.get("bytes") or value.get("path")):
        import io

        return Image.open(io.BytesIO(value["bytes"])) if value.get("bytes") else Image.open(value["path"])
    if isinstance(value, (str, Path)):
        return Image.open(value)
    if isinstance(value, np.ndarray):
        return Image.fromarray(value)
    raise TypeError(f"unsupported image value of type {type(value).__name__}")


def _digits():
    import datasets
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = [Image.fromarray((x * 255 / 16).clip(0, 255).astype(np.uint8)).convert("RGB") for x in digits.images]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=[str(d) for d in range(10)])})
    return datasets.DatasetDict({"train": datasets.Dataset.from_dict({"image": images, "label": digits.target.tolist()}, features=features)})


def _is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_dict.json").exists() or (path / "state.json").exists()


def _is_imagefolder(source: str | None) -> bool:
    return source is not None and Path(source).is_dir() and not _is_saved_dataset(Path(source))


def _load(source: str):
    import datasets

    path = Path(source)
    if path.exists():
        if _is_saved_dataset(path):
            loaded = datasets.load_from_disk(str(path))
        elif path.is_dir():
            loaded = datasets.load_dataset("imagefolder", data_dir=str(path))
        else:
            raise ValueError(f"dataset '{source}': a file, expected an imagefolder or save_to_disk directory")
    else:
        try:
            loaded = datasets.load_dataset(source)
        except Exception as exc:
            raise ValueError(f"dataset '{source}': not a local folder, and loading it from the Hugging Face Hub failed: {exc}") from exc
    return loaded if isinstance(loaded, datasets.DatasetDict) else datasets.DatasetDict({"train": loaded})


def load_splits(config) -> tuple[object, object, DataInfo]:
    """The training and validation ``datasets.Dataset`` of ``config`` and what they hold."""
    name = config.dataset or DIGITS
    splits = _digits() if config.dataset is None else _load(config.dataset)
    if config.train_split not in splits:
        raise ValueError(f"dataset '{name}' has no split '{config.train_split}'; it has {sorted(splits)}")
    train = splits[config.train_split]
    if config.label_column not in train.column_names and config.label_column == "label" and _is_imagefolder(config.dataset):
        raise ValueError(f"dataset '{name}' has no column 'label': an imagefolder takes its labels from its class sub-folders, "
                         "and needs at least two of them (a classifier needs two classes or more)")
    for column in (config.image_column, config.label_column):
        if column not in train.column_names:
            raise ValueError(f"dataset '{name}' has no column '{column}'; its columns are {train.column_names} (see --image-column / --label-column)")
    val_name = config.val_split or next((s for s in VAL_SPLIT_NAMES if s in splits and s != config.train_split), None)
    if config.val_split and config.val_split not in splits:
        raise ValueError(f"dataset '{name}' has no split '{config.val_split}'; it has {sorted(splits)}")
    if val_name is None:
        parts = train.train_test_split(test_size=config.val_fraction, seed=config.seed)
        train, val = parts["train"], parts["test"]
    else:
        val = splits[val_name]
    # subsets are random (seeded): splits are often sorted by class, and a prefix would hold few classes
    if config.max_train_samples:
        train = train.shuffle(seed=config.seed).select(range(min(config.max_train_samples, len(train))))
    if config.max_val_samples:
        val = val.shuffle(seed=config.seed).select(range(min(config.max_val_samples, len(val))))
    val_desc = val_name or f"{config.train_split}, its --val-fraction part"
    class_names = check_labels(name, config.label_column, train.features.get(config.label_column),
                               {config.train_split: train[config.label_column], val_desc: val[config.label_column]})
    if len(class_names) < 2:
        raise ValueError(f"dataset '{name}' has {len(class_names)} class ({class_names}) in column '{config.label_column}': "
                         "a classifier needs at least two")
    return train, val, DataInfo(name, len(class_names), class_names, len(train), len(val), (config.train_split, val_desc))


def check_labels(name: str, column: str, feature, labels: dict[str, list]) -> list[str]:
    """The class names of labels ``{split: [label, ...]}`` (training split first), after refusing,
    with a ``ValueError`` that says what was found, labels the model could not learn from: labels
    that are not integer class ids or are out of range, classes without a training image where
    the labels are bare integers (``{0, 7}``), and validation classes the training split lacks."""
    (train_split, train_labels), *others = labels.items()
    for split, values in labels.items():
        wrong = [v for v in values if isinstance(v, bool) or not isinstance(v, (int, np.integer))]
        if wrong:
            hint = (": convert them to class ids with datasets' class_encode_column, or use an imagefolder (one "
                    "sub-folder per class)") if isinstance(wrong[0], str) else ""
            raise ValueError(f"dataset '{name}', split '{split}': the labels in column '{column}' must be integer "
                             f"class ids 0, 1, ..., found {wrong[0]!r} ({len(wrong)} such){hint}")
    names = list(feature.names) if hasattr(feature, "names") else [str(i) for i in range(max(train_labels, default=-1) + 1)]
    for split, values in labels.items():
        outside = sorted({int(v) for v in values if not 0 <= v < len(names)})
        if outside:
            raise ValueError(f"dataset '{name}', split '{split}': labels {outside[:10]} in column '{column}' are outside "
                             f"0..{len(names) - 1}, the classes {'its ClassLabel names' if hasattr(feature, 'names') else 'the training labels'} give"
                             + ("; -1 marks an unlabelled image: choose another --val-split, or --val-fraction" if -1 in outside else ""))
    trained = {int(v) for v in train_labels}
    missing = [i for i in range(len(names)) if i not in trained]
    if missing and not hasattr(feature, "names"):
        raise ValueError(f"dataset '{name}', split '{train_split}': the labels in column '{column}' are {sorted(trained)[:10]}, so "
                         f"classes {missing[:10]} have no training image and the model would have outputs it never learns; "
                         "number the classes 0..N-1 (with --max-train-samples, a larger sample may hold every class)")
    for split, values in others:
        unseen = sorted({int(v) for v in values} - trained)
        if unseen:
            raise ValueError(f"dataset '{name}', split '{split}' has classes {[names[i] for i in unseen][:10]} that the training "
                             f"split '{train_split}' has no image of: the model could never predict them (with "
                             "--max-train-samples, a larger sample may hold them)")
    if missing:
        print(f"dataset '{name}': classes {[names[i] for i in missing][:10]} have no image in split '{train_split}' or the "
              f"validation split; the model keeps an output for each of the {len(names)} named classes", file=sys.stderr)
    return names


def training_transform(data_config: dict, hflip: float):
    """The paper's training augmentation for a model's timm data config: random-resized crops
    (scale 0.5-1) and horizontal flips with probability ``hflip``; no colour jitter, no
    auto-augment, no random erasing."""
    from timm.data import create_transform

    return create_transform(**{k: v for k, v in data_config.items() if k not in ("crop_pct", "crop_mode")},
                            is_training=True, scale=CROP_SCALE, hflip=hflip, color_jitter=None, auto_augment=None, re_prob=0.0)
