"""``--streaming``: training data read as a stream, for data too large to convert (ImageNet from
the Hub, a folder of tar shards) or a start that must not wait for a full pass over the files.

Every source the trainer takes streams:

- a Hub dataset: ``datasets.load_dataset(ID, streaming=True)``, its shards in the Hub's order;
- a folder of webdataset tar shards: ``datasets``' webdataset reader, the shards in a new seeded
  order every epoch;
- an imagefolder, a ``save_to_disk`` folder or the digits: the same items as without
  ``--streaming`` (:func:`timm_gvit.training.data.load_splits`), streamed in a new seeded
  permutation every epoch, cut into shards.

Shards are divided between processes (``split_dataset_by_node``; a shard count that does not divide
by the number of processes is refused: datasets would have every process read every shard) and,
within a process, between loader workers; no item is read twice in an epoch. Each worker shuffles
through a buffer of ``--shuffle-buffer`` items (sources that are already permuted need none).

Resume: a :class:`torchdata.stateful_dataloader.StatefulDataLoader` saves, per worker, the shard
and the position in it; a resumed run goes on from there. Exact where there is no buffer (the
imagefolder, saved and digits sources, or ``--shuffle-buffer 0``): the run is the uninterrupted
one. With a buffer, the items in the buffer at the checkpoint are not seen again that epoch
(datasets documents the same of its own buffer), and the order after the resume differs.

An epoch has the length :func:`nominal_batches` gives (the items over the global batch, less the
partial batch each loader worker drops), or ends earlier when the first process runs out of
items (the processes agree on it every step): shards of unequal length can do that.
"""

from __future__ import annotations

import hashlib
import os
import random
import sys
import tarfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from ..images import UnreadableImage
from .data import (SHARD_IMAGE_KEYS, SHARD_LABEL_KEY, VAL_SPLIT_NAMES, blank_image, decode_item, example_image, is_saved_dataset,
                   load_splits, resolve_columns, seeded_rng, shard_class_names, shard_files)
from .folder_index import cache_dir

warnings.filterwarnings("ignore", message="'set_vital' is deprecated")  # torchdata 0.11's StatefulDataLoader, every iterator


@dataclass
class StreamSource:
    """One split as a stream: ``make(epoch)`` gives a ``datasets.IterableDataset`` of that epoch's
    order, ``read(example)`` an example's ``(encoded image, name, label, identity)``; ``length`` is
    the item count."""

    make: Callable[[int], object]
    read: Callable[[dict], tuple]
    length: int
    shuffled: bool  # whether make() already permutes the items (no buffer needed)


def _gen_rows(chunks):
    for chunk in chunks:
        for row in chunk:
            yield {"row": int(row)}


def records_source(records, seed: int, num_shards: int, shuffle: bool) -> StreamSource:
    """A stream of records (:class:`FolderRecords`, :class:`ArrowRecords`) in a permutation seeded
    by (seed, epoch), cut into ``num_shards`` shards."""
    import datasets

    def make(epoch: int):
        rows = np.random.default_rng([seed, epoch]).permutation(len(records)) if shuffle else np.arange(len(records))
        return datasets.IterableDataset.from_generator(_gen_rows, gen_kwargs={"chunks": np.array_split(rows, num_shards)})

    def read(example: dict):
        source, name, label = records.load(example["row"])
        return source, name, label, example["row"]

    return StreamSource(make, read, len(records), shuffled=shuffle)


def count_shard_samples(files: list[str]) -> tuple[int, int]:
    """The samples (keys with an image) in webdataset tar shards and one more than their largest
    ``.cls`` label, from the headers and the label files alone; cached under the shards' sizes and
    modification times."""
    from tqdm.auto import tqdm

    stamp = hashlib.sha256(repr([(os.path.realpath(f), os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in files]).encode()).hexdigest()[:24]
    cached = cache_dir() / "shard_counts" / f"{stamp}.txt"
    try:
        total, classes = (int(v) for v in cached.read_text().split())
        return total, classes
    except (OSError, ValueError):
        pass
    total, classes = 0, 0
    for file in tqdm(files, desc="counting the samples in the shards", disable=len(files) < 20, mininterval=1.0):
        try:
            with tarfile.open(file, "r:") as tar:
                keys = set()
                for member in tar:
                    ending = member.name.rsplit(".", 1)[-1].lower() if member.isfile() else ""
                    if ending in SHARD_IMAGE_KEYS:
                        keys.add(member.name.split(".", 1)[0])
                    elif ending == SHARD_LABEL_KEY:
                        text = tar.extractfile(member).read(32).strip()
                        classes = max(classes, int(text) + 1) if text.isdigit() else classes
        except (OSError, tarfile.TarError) as exc:
            raise ValueError(f"{file}: not a readable tar shard ({exc})") from exc
        total += len(keys)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        cached.write_text(f"{total} {classes}")
    except OSError:
        pass
    return total, classes


def _example_reader(image_column: str, label_column: str):
    """``example -> (encoded image, name, label, identity)``; a named sample's name is its identity."""
    def read(example: dict):
        value, name = example_image(example, image_column)
        return value, name or "an example without a name", example[label_column], name

    return read


def _undecoded(ids, image_column: str):
    import datasets

    feature = (ids.features or {}).get(image_column)
    return ids.cast_column(image_column, datasets.Image(decode=False)) if isinstance(feature, datasets.Image) else ids


def stream_splits(config, num_shards: int, write_cache: bool = True) -> tuple[StreamSource, StreamSource, list[str], tuple[str, str]]:
    """The training and validation streams of ``config``, the class names and the splits' names."""
    import datasets

    source = config.dataset
    path = Path(source) if source else None
    if source is None or (path.is_dir() and (is_saved_dataset(path) or not shard_files(path))) or (path.exists() and not path.is_dir()):
        # what load_splits reads item by item streams as a permutation of the same items
        train, val, info = load_splits(config, write_cache)
        return (records_source(train, config.seed, num_shards, shuffle=True), records_source(val, config.seed, num_shards, shuffle=False),
                info.class_names, info.splits)
    if config.max_train_samples or config.max_val_samples:
        raise ValueError(f"dataset '{source}': --max-train-samples / --max-val-samples draw a random subset, which a stream of tar "
                         "shards or of a Hub dataset cannot: leave them out, or train without --streaming")
    if path is not None and path.is_dir():  # tar shards
        files = shard_files(path)
        if config.train_split not in files:
            raise ValueError(f"dataset '{source}' has no split '{config.train_split}'; its shards have {sorted(files)}")
        val_name = config.val_split or next((s for s in VAL_SPLIT_NAMES if s in files and s != config.train_split), None)
        if val_name is None or val_name not in files:
            raise ValueError(f"dataset '{source}': --streaming needs a validation split of its own (validation-*.tar), found {sorted(files)}")
        probe = datasets.load_dataset("webdataset", data_files={"train": files[config.train_split][:1]}, streaming=True, split="train")
        image_column, label_column = resolve_columns(list(probe.features), config, source)
        names = shard_class_names(path)

        def shards(split: str, shuffle: bool):
            def make(epoch: int):
                order = files[split] if not shuffle else [files[split][i] for i in np.random.default_rng([config.seed, epoch]).permutation(len(files[split]))]
                return _undecoded(datasets.load_dataset("webdataset", data_files={"train": order}, streaming=True, split="train"), image_column)

            return StreamSource(make, _example_reader(image_column, label_column), count_shard_samples(files[split])[0], shuffled=False)

        names = names.names if names else [str(i) for i in range(count_shard_samples(files[config.train_split])[1])]
        return shards(config.train_split, True), shards(val_name, False), names, (config.train_split, val_name)
    # a Hub dataset
    try:
        streams = datasets.load_dataset(source, streaming=True)
    except Exception as exc:
        raise ValueError(f"dataset '{source}': not a local folder, and streaming it from the Hugging Face Hub failed: {exc}") from exc
    if config.train_split not in streams:
        raise ValueError(f"dataset '{source}' has no split '{config.train_split}'; it has {sorted(streams)}")
    val_name = config.val_split or next((s for s in VAL_SPLIT_NAMES if s in streams and s != config.train_split), None)
    if val_name is None or val_name not in streams:
        raise ValueError(f"dataset '{source}': --streaming needs a validation split of its own, it has {sorted(streams)}")
    train = streams[config.train_split]
    image_column, label_column = resolve_columns(list(train.features or {}), config, source)
    splits_info = train.info.splits or {}
    lengths = {s: getattr(splits_info.get(s), "num_examples", None) for s in (config.train_split, val_name)}
    if not all(lengths.values()):
        raise ValueError(f"dataset '{source}': its card states no example counts for {[s for s, n in lengths.items() if not n]}, which "
                         "--streaming needs for the schedule; train without --streaming")
    feature = train.features.get(label_column)
    if not hasattr(feature, "names"):
        raise ValueError(f"dataset '{source}': its column '{label_column}' is not a ClassLabel, so a stream cannot tell the classes "
                         "before reading it all; train without --streaming")
    names = list(feature.names)
    read = _example_reader(image_column, label_column)
    return (StreamSource(lambda epoch: _undecoded(streams[config.train_split], image_column), read, lengths[config.train_split], False),
            StreamSource(lambda epoch: _undecoded(streams[val_name], image_column), read, lengths[val_name], False),
            names, (config.train_split, val_name))


class StreamingImageDataset(torch.utils.data.IterableDataset):
    """``(transformed image, label, unreadable)`` triples from a :class:`StreamSource`, for this
    process's share of the shards (and, in a loader worker, the worker's share of that).

    Unreadable images: in training the stream goes on (the next item takes the place) and the
    next item carries the reason; in validation the item comes as a blank image with label -1.
    Augmentation of an item is seeded by (seed, epoch, the item's identity): the same crops after
    a resume. :meth:`state_dict` / :meth:`load_state_dict` serve ``StatefulDataLoader``.
    """

    def __init__(self, source: StreamSource, name: str, split: str, num_classes: int, transform, *, seed: int, rank: int = 0,
                 world_size: int = 1, shuffle_buffer: int = 0, in_chans: int = 3, min_size: int | None = None, train: bool = True):
        self.source, self.name, self.split, self.num_classes, self.transform = source, name, split, num_classes, transform
        self.seed, self.rank, self.world_size, self.in_chans, self.min_size, self.train = seed, rank, world_size, in_chans, min_size, train
        self.buffer_size = 0 if source.shuffled or not train else shuffle_buffer
        self.epoch, self.count, self._state = 0, 0, None
        self._stream = None

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self._state = None
        self.epoch = epoch

    def stream(self):
        """This process's share of this epoch's stream (a ``datasets.IterableDataset``)."""
        from datasets.distributed import split_dataset_by_node

        stream = self.source.make(self.epoch)
        if self.world_size > 1:
            if stream.n_shards % self.world_size:
                raise ValueError(f"dataset '{self.name}', split {self.split!r}: {stream.n_shards} shards do not divide among "
                                 f"{self.world_size} processes, and datasets would have every process read every shard: use a "
                                 f"shard count that is a multiple of {self.world_size} (python -m timm_gvit.tools.make_shards --per-shard)")
            stream = split_dataset_by_node(stream, rank=self.rank, world_size=self.world_size)
        return stream

    def _decode(self, example: dict):
        source, name, label, identity = self.source.read(example)
        where = f"dataset '{self.name}', split {self.split!r}, {name}"
        return (*decode_item(source, label, where, self.num_classes, self.in_chans, self.min_size), identity)

    def _transformed(self, image, identity) -> torch.Tensor:
        key = identity if identity is not None else f"{self.rank}/{self.count}"
        digest = int.from_bytes(hashlib.blake2b(f"{self.seed}/{self.epoch}/{key}".encode(), digest_size=8).digest(), "little")
        with seeded_rng(digest % 2**63):
            return self.transform(image)

    def _examples(self) -> Iterator[dict]:
        self._stream = self.stream()
        if self._state is not None:
            self._stream.load_state_dict(self._state)
        if not self.buffer_size:
            yield from self._stream
            return
        rng = random.Random(f"{self.seed}/{self.epoch}/{self.rank}/{self.count}")
        buffer = []
        for example in self._stream:
            if len(buffer) < self.buffer_size:
                buffer.append(example)
                continue
            i = rng.randrange(len(buffer))
            buffer[i], example = example, buffer[i]
            yield example
        rng.shuffle(buffer)
        yield from buffer

    def __iter__(self):
        unreadable = []
        for example in self._examples():
            self.count += 1
            try:
                image, label, identity = self._decode(example)
            except UnreadableImage as exc:
                print(f"skipping an unreadable image: {exc}", file=sys.stderr, flush=True)
                if self.train:
                    unreadable.append(str(exc))
                    continue
                image, label, identity = blank_image(self.in_chans), -1, None
                unreadable.append(str(exc))
            yield self._transformed(image, identity), label, "\n".join(unreadable)
            unreadable = []

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "count": self.count, "stream": self._stream.state_dict() if self._stream is not None else None}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.count, self._state = state["epoch"], state["count"], state["stream"]


def agreed_batches(loader, accelerator, stop_at_first: bool) -> Iterator:
    """The batches of a loader of this process's share of a stream, while every process has one
    (``stop_at_first``: training) or while any has one (validation: a process that has run out
    yields None, so that every process takes part in every collective)."""
    batches = iter(loader)
    while True:
        batch = next(batches, None)
        if accelerator.num_processes == 1:
            if batch is None:
                return
            yield batch
            continue
        have = torch.tensor([batch is not None], device=accelerator.device, dtype=torch.int32)
        have = accelerator.reduce(have, reduction="sum").item()
        if have == 0 or (stop_at_first and have < accelerator.num_processes):
            return
        yield batch


def nominal_batches(length: int, batch: int, world_size: int, workers: int) -> int:
    """A process's batches in an epoch of a stream of ``length`` items: each loader worker batches
    its own items and drops its last partial batch, so a process's ``length / world_size`` items
    give at least ``(length / world_size - workers * (batch - 1)) / batch`` full batches."""
    per_process = length // world_size - max(workers, 1) * (batch - 1)
    return max(per_process // batch, 0)


def stream_shards(world_size: int, workers: int) -> int:
    """The shard count of a permuted-records stream: several per worker of every process."""
    return world_size * max(workers, 1) * 8

