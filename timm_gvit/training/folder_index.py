"""The files and labels of an imagefolder, indexed once and cached.

An imagefolder is ``ROOT/CLASS/IMAGE`` (one split) or ``ROOT/SPLIT/CLASS/IMAGE`` with split
folders named as datasets' imagefolder names them (``train``, ``val``/``validation``/``valid``/
``dev``, ``test``/``eval``); images may sit deeper inside a class folder. Classes are the sorted
class-folder names of all splits together, items are in sorted path order: what
``datasets.load_dataset('imagefolder')`` gives, without its per-file work (at ImageNet's 1.28 M
files that took more than 25 minutes and 3.5 GB).

An index is a handful of numpy arrays (one byte string of all paths, their offsets, the labels):
no Python object per image, so that loader workers share it instead of copying it page by page.
It is cached in ``$TIMM_GVIT_CACHE_DIR`` (default ``~/.cache/timm_gvit``), keyed by the folder's
real path, with the modification time of every folder it walked: adding, removing or renaming an
image or a class changes one of them, and the next load indexes again.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..images import is_image_name

#: Folder names of splits, and the split each names (datasets' imagefolder conventions).
SPLIT_FOLDERS = {"train": "train", "training": "train", "validation": "validation", "valid": "validation", "val": "validation",
                 "dev": "validation", "test": "test", "testing": "test", "eval": "test", "evaluation": "test"}
#: Files that make datasets' imagefolder read labels or other columns from a table: such a folder is left to datasets.
METADATA_FILES = ("metadata.csv", "metadata.jsonl", "metadata.parquet")
INDEX_VERSION = 1


def cache_dir() -> Path:
    return Path(os.environ.get("TIMM_GVIT_CACHE_DIR") or Path.home() / ".cache" / "timm_gvit")


@dataclass
class FolderSplit:
    """The images of one split: ``paths`` relative to ``root`` (one byte string with offsets),
    ``labels`` indices into the dataset's class names."""

    root: Path
    blob: np.ndarray  # uint8 [total bytes]: every relative path, '/'-separated, concatenated
    offsets: np.ndarray  # int64 [N + 1]
    labels: np.ndarray  # int32 [N]

    def __len__(self) -> int:
        return len(self.labels)

    def path(self, index: int) -> str:
        return os.path.join(self.root, self.blob[self.offsets[index]:self.offsets[index + 1]].tobytes().decode())


def split_folders(root: str | Path) -> dict[str, Path] | None:
    """``{split: folder of class folders}`` of an imagefolder ``root``, or None where datasets must
    read it (a metadata table, or images beside the class folders at the top)."""
    root = Path(root)
    entries = [e for e in os.scandir(root) if not e.name.startswith((".", "__"))]
    if any(e.name in METADATA_FILES for e in entries):
        return None
    folders = {e.name: Path(e.path) for e in entries if e.is_dir()}
    splits = {SPLIT_FOLDERS[name]: path for name, path in sorted(folders.items()) if name in SPLIT_FOLDERS}
    if splits and len(splits) == len(folders):
        if any(f.name in METADATA_FILES for path in splits.values() for f in os.scandir(path)):
            return None
        return splits
    return {"train": root}


def _walk(folder: Path) -> tuple[list[str], list[tuple[str, int]]]:
    """Sorted image paths under ``folder`` (relative, '/'-separated) and ``(relative dir, mtime_ns)`` of every folder walked."""
    images, dirs, stack = [], [], [""]
    while stack:
        rel = stack.pop()
        path = os.path.join(folder, rel) if rel else str(folder)
        dirs.append((rel, os.stat(path).st_mtime_ns))
        with os.scandir(path) as it:
            for entry in it:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir():
                    stack.append(f"{rel}/{entry.name}" if rel else entry.name)
                elif is_image_name(entry.name):
                    images.append(f"{rel}/{entry.name}" if rel else entry.name)
    images.sort()
    return images, dirs


def _pack(strings: list[str]) -> tuple[np.ndarray, np.ndarray]:
    encoded = [s.encode() for s in strings]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in encoded], out=offsets[1:])
    return np.frombuffer(b"".join(encoded), dtype=np.uint8).copy(), offsets


def _unpack(blob: np.ndarray, offsets: np.ndarray) -> list[str]:
    data = blob.tobytes()
    return [data[offsets[i]:offsets[i + 1]].decode() for i in range(len(offsets) - 1)]


def _cache_file(folder: Path) -> Path:
    return cache_dir() / "folder_index" / (hashlib.sha256(os.fsencode(os.path.realpath(folder))).hexdigest()[:24] + ".npz")


def _read_cache(file: Path, folder: Path) -> dict | None:
    """The cached listing of ``folder``, or None when there is none, it is damaged, or a folder it walked has changed."""
    try:
        with np.load(file, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
        if int(arrays["version"]) != INDEX_VERSION or arrays["folder"].tobytes() != os.fsencode(os.path.realpath(folder)):
            return None
        dirs = _unpack(arrays["dir_blob"], arrays["dir_offsets"])
        for rel, mtime in zip(dirs, arrays["dir_mtimes"]):
            if os.stat(os.path.join(folder, rel) if rel else folder).st_mtime_ns != mtime:
                return None
        if arrays["offsets"][-1] != arrays["blob"].size or np.any(np.diff(arrays["offsets"]) < 0):
            return None
        return arrays
    except (OSError, KeyError, ValueError, IndexError, UnicodeDecodeError):
        return None


def _write_cache(file: Path, arrays: dict) -> None:
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=file.parent, suffix=".tmp", delete=False) as f:
            np.savez(f, **arrays)
        os.replace(f.name, file)
    except OSError as exc:  # a read-only home: index again next time
        print(f"note: could not cache the folder index in {file.parent} ({exc}); set TIMM_GVIT_CACHE_DIR to a writable folder",
              file=sys.stderr)


def list_folder(folder: str | Path, progress: bool = True, write_cache: bool = True) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """The class folders of ``folder`` (a split) and its images: ``(class_folders, blob, offsets,
    class_index)``, the images' relative paths being ``blob`` cut at ``offsets`` and ``class_index``
    their class folder's position (-1: an image outside any class folder).
    From the cache when no folder has changed since it was written."""
    from tqdm.auto import tqdm

    folder = Path(folder)
    file = _cache_file(folder)
    cached = _read_cache(file, folder)
    if cached is not None:
        classes = _unpack(cached["class_blob"], cached["class_offsets"])
        return classes, cached["blob"], cached["offsets"], cached["class_index"]
    with os.scandir(folder) as it:
        entries = [(e.name, e.is_dir(), e.is_file()) for e in it if not e.name.startswith(".")]
    classes = sorted(name for name, is_dir, _ in entries if is_dir)
    loose = [name for name, _, is_file in entries if is_file and is_image_name(name)]
    paths, dirs, class_index = [], [("", os.stat(folder).st_mtime_ns)], []
    for c, name in enumerate(tqdm(classes, desc=f"indexing {folder}", unit="class", disable=not progress or len(classes) < 50,
                                  mininterval=1.0)):
        images, walked = _walk(folder / name)
        paths += [f"{name}/{p}" for p in images]
        class_index += [c] * len(images)
        dirs += [(f"{name}/{rel}" if rel else name, mtime) for rel, mtime in walked]
    paths += sorted(loose)  # images at the split's top level have no class: the caller refuses them
    class_index += [-1] * len(loose)
    blob, offsets = _pack(paths)
    class_blob, class_offsets = _pack(classes)
    dir_blob, dir_offsets = _pack([d for d, _ in dirs])
    arrays = dict(version=np.int64(INDEX_VERSION), folder=np.frombuffer(os.fsencode(os.path.realpath(folder)), dtype=np.uint8),
                  blob=blob, offsets=offsets, class_index=np.asarray(class_index, dtype=np.int32),
                  class_blob=class_blob, class_offsets=class_offsets,
                  dir_blob=dir_blob, dir_offsets=dir_offsets, dir_mtimes=np.asarray([m for _, m in dirs], dtype=np.int64))
    if write_cache:
        _write_cache(file, arrays)
    return classes, blob, offsets, arrays["class_index"]


def index_imagefolder(root: str | Path, progress: bool = True, write_cache: bool = True) -> tuple[dict[str, FolderSplit], list[str]] | None:
    """The splits of imagefolder ``root`` and its class names (sorted over all splits), or None where
    ``datasets`` must read the folder (see :func:`split_folders`).

    Raises ``ValueError`` for images outside any class folder (an imagefolder takes its labels from
    its class folders)."""
    folders = split_folders(root)
    if folders is None:
        return None
    listed = {split: list_folder(folder, progress, write_cache) for split, folder in folders.items()}
    class_names = sorted({c for classes, *_ in listed.values() for c in classes})
    position = {c: i for i, c in enumerate(class_names)}
    splits = {}
    for split, (classes, blob, offsets, class_index) in listed.items():
        if (class_index < 0).any():
            row = int(np.argmax(class_index < 0))
            first = blob[offsets[row]:offsets[row + 1]].tobytes().decode()
            raise ValueError(f"dataset '{root}': {int((class_index < 0).sum())} image(s) in {folders[split]} outside any class "
                             f"folder (e.g. {first}): an imagefolder takes its labels from its class sub-folders")
        remap = np.asarray([position[c] for c in classes] or [0], dtype=np.int32)
        splits[split] = FolderSplit(folders[split], blob, offsets, remap[class_index])
    return splits, class_names
