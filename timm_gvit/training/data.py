"""Datasets for the trainer, through Hugging Face ``datasets``.

A dataset is a Hub id, a local imagefolder directory (one sub-folder per class), a folder
written by ``save_to_disk``, or, by default, scikit-learn's 8x8 digits (1,797 real scans of
handwritten digits, shipped inside scikit-learn) turned into RGB images. Items are checked as
they are read: an unreadable image or a label out of range raises a ``ValueError`` that names
the dataset and the item.

The training augmentation of an item is a function of (seed, epoch, item) alone, so that a run
resumed in the middle of an epoch, or run with another number of loader workers, sees the same
crops and flips.
"""

from __future__ import annotations

import contextlib
import random
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
    """(transformed image, label) pairs from a ``datasets.Dataset``, validated item by item.

    With ``seed``, item ``i`` of epoch ``e`` (:meth:`set_epoch`) is transformed with the random
    generators seeded from ``(seed, e, i)``. Images are read as 8-bit RGB, or greyscale with
    ``in_chans=1`` (a model with ``in_chans=1``).
    """

    def __init__(self, data, name: str, image_column: str, label_column: str, num_classes: int, transform=None, seed: int | None = None,
                 in_chans: int = 3):
        if in_chans not in (1, 3):
            raise ValueError(f"in_chans must be 3 (RGB) or 1 (greyscale), got {in_chans!r}")
        self.in_chans = in_chans
        self.data, self.name = data, name
        self.image_column, self.label_column = image_column, label_column
        self.num_classes, self.transform = num_classes, transform
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int):
        where = f"dataset '{self.name}', item {index}"
        try:
            item = self.data[index]
            image = to_channels(_to_pil(item[self.image_column]), self.in_chans)
        except Exception as exc:
            raise ValueError(f"{where}: cannot read the image in column '{self.image_column}': {exc}") from exc
        label = item[self.label_column]
        if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or not 0 <= label < self.num_classes:
            raise ValueError(f"{where}: label {label!r} in column '{self.label_column}' is not an integer in 0..{self.num_classes - 1}")
        if self.transform is None:
            return image, int(label)
        if self.seed is None:
            return self.transform(image), int(label)
        with seeded_rng(int(np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1)[0])):
            return self.transform(image), int(label)


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
    feature = train.features.get(config.label_column)
    if hasattr(feature, "names"):
        class_names = list(feature.names)
    else:
        class_names = [str(i) for i in range(int(max(train[config.label_column])) + 1)]
    if len(class_names) < 2:
        raise ValueError(f"dataset '{name}' has {len(class_names)} class ({class_names}) in column '{config.label_column}': "
                         "a classifier needs at least two")
    return train, val, DataInfo(name, len(class_names), class_names, len(train), len(val))


def training_transform(data_config: dict, hflip: float):
    """The paper's training augmentation for a model's timm data config: random-resized crops
    (scale 0.5-1) and horizontal flips with probability ``hflip``; no colour jitter, no
    auto-augment, no random erasing."""
    from timm.data import create_transform

    return create_transform(**{k: v for k, v in data_config.items() if k not in ("crop_pct", "crop_mode")},
                            is_training=True, scale=CROP_SCALE, hflip=hflip, color_jitter=None, auto_augment=None, re_prob=0.0)
