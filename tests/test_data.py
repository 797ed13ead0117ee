"""The data layer on real files: the cached imagefolder index (against datasets' own reader), odd
and unreadable images, reduced JPEG decoding, 8-bit batches, tar shards and streaming with resume."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import create_transform

import train_gvit
from timm_gvit.data_utils import normalize
from timm_gvit.images import UnreadableImage, decode_image
from timm_gvit.tools.make_shards import write_shards
from timm_gvit.training import folder_index
from timm_gvit.training.config import parse_config
from timm_gvit.training.data import ImageClassificationDataset, decode_sizes, eval_transform, load_splits
from timm_gvit.training.streaming import StreamingImageDataset, stream_splits

from test_training import TINY, assert_same_run, make_imagefolder, one_thread

PHOTOS = Path(__file__).parent / "data" / "imagenette-val"


@pytest.fixture
def photo_folder(tmp_path) -> Path:
    """Real photos as an imagefolder with train/ and val/ split folders (ImageNet's layout)."""
    root = tmp_path / "photos"
    shutil.copytree(PHOTOS, root / "train")
    shutil.copytree(PHOTOS, root / "val")
    return root


def test_folder_index_gives_datasets_imagefolder_classes_and_order(photo_folder):
    import datasets

    splits, class_names = folder_index.index_imagefolder(photo_folder, progress=False)
    theirs = datasets.load_dataset("imagefolder", data_dir=str(photo_folder)).cast_column("image", datasets.Image(decode=False))
    assert sorted(splits) == sorted(theirs) == ["train", "validation"]
    assert class_names == theirs["train"].features["label"].names
    for split, data in splits.items():
        assert [data.path(i) for i in range(len(data))] == [item["image"]["path"] for item in theirs[split]]
        assert data.labels.tolist() == theirs[split]["label"]
    assert data.labels.dtype == np.int32 and data.blob.dtype == np.uint8  # arrays, no Python object per image


def test_folder_index_is_cached_and_a_changed_folder_is_indexed_again(photo_folder):
    first = folder_index.list_folder(photo_folder / "train", progress=False)
    cache = folder_index._cache_file(photo_folder / "train")
    assert cache.is_file() and folder_index._read_cache(cache, photo_folder / "train") is not None
    assert len(first[2]) - 1 == 20
    shutil.copy(PHOTOS / "n01440764" / "ILSVRC2012_val_00009111.jpg", photo_folder / "train" / "n01440764" / "new.jpg")
    assert folder_index._read_cache(cache, photo_folder / "train") is None  # the class folder changed
    second = folder_index.list_folder(photo_folder / "train", progress=False)
    assert len(second[2]) - 1 == 21 and b"n01440764/new.jpg" in second[1].tobytes()
    shutil.rmtree(photo_folder / "train" / "n03888257")  # a class goes: the split folder changed
    classes, *_ = folder_index.list_folder(photo_folder / "train", progress=False)
    assert "n03888257" not in classes and len(classes) == 9
    cache.write_bytes(b"not a cache")  # a damaged cache is indexed again, not trusted
    assert len(folder_index.list_folder(photo_folder / "train", progress=False)[2]) - 1 == 19


def test_a_folder_with_a_metadata_table_is_left_to_datasets(tmp_path):
    make_imagefolder(tmp_path / "shapes", per_class=2)
    (tmp_path / "shapes" / "metadata.csv").write_text("file_name,label\n")
    assert folder_index.split_folders(tmp_path / "shapes") is None


def odd_images(root: Path) -> dict[str, tuple[int, int]]:
    """Readable but odd image files, and the (width, height) each must decode to."""
    photo = Image.open(PHOTOS / "n01440764" / "ILSVRC2012_val_00009111.jpg").convert("RGB").resize((40, 30))
    root.mkdir(parents=True, exist_ok=True)
    photo.convert("CMYK").save(root / "cmyk.jpg")
    photo.convert("L").save(root / "grey.jpg")
    palette = photo.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.info["transparency"] = 0
    palette.save(root / "palette.png", transparency=0)
    photo.convert("RGBA").save(root / "alpha.png")
    Image.fromarray((np.asarray(photo.convert("L"), dtype=np.uint16) * 257)).save(root / "sixteen.png")
    photo.save(root / "png_named.JPEG", format="PNG")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored on its side: shown rotated by 90 degrees
    photo.save(root / "rotated.jpg", exif=exif)
    sizes = dict.fromkeys(["cmyk.jpg", "grey.jpg", "palette.png", "alpha.png", "sixteen.png", "png_named.JPEG"], (40, 30))
    return {**sizes, "rotated.jpg": (30, 40)}


def test_odd_but_readable_images_decode_as_rgb_and_bad_ones_name_themselves(tmp_path):
    for name, size in odd_images(tmp_path).items():
        image = decode_image(tmp_path / name)
        assert image.mode == "RGB" and image.size == size, name
    good = (PHOTOS / "n01440764" / "ILSVRC2012_val_00009111.jpg").read_bytes()
    bad = {"truncated.jpg": good[: len(good) // 2], "empty.jpg": b"", "text.jpg": b"hello, not an image", "header.png": good[:20]}
    for name, data in bad.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(UnreadableImage, match=rf"{name}: not a readable image"):
            decode_image(tmp_path / name)
    with pytest.raises(UnreadableImage, match="from a shard: not a readable image"):
        decode_image(good[:300], "from a shard")


def test_jpegs_decode_at_reduced_size_only_where_the_crop_keeps_its_resolution(tmp_path):
    photo = Image.open(PHOTOS / "n01440764" / "ILSVRC2012_val_00009111.jpg").convert("RGB").resize((500, 375))
    buffer = io.BytesIO()
    photo.save(buffer, format="JPEG", quality=90)
    data = buffer.getvalue()
    train_min, val_min = decode_sizes({"input_size": (3, 64, 64), "crop_pct": 0.9})
    assert (train_min, val_min) == (105, 72)  # 64 / sqrt(0.5 * 3/4), 64 / 0.9
    assert decode_image(data, min_size=train_min).size == (250, 188)  # 1/2: the shorter side stays >= 105
    assert decode_image(data, min_size=val_min).size == (125, 94)  # 1/4
    assert decode_image(data, min_size=366).size == (500, 375)  # 224 px training: no reduction
    full = np.asarray(decode_image(data).resize((125, 94), Image.BILINEAR, reducing_gap=None), dtype=np.float64)
    reduced = np.asarray(decode_image(data, min_size=val_min), dtype=np.float64)
    assert np.abs(full - reduced).mean() < 4  # the DCT's own downscaling: the same picture


def test_uint8_batches_normalised_on_the_device_equal_the_float_transform():
    config = {"input_size": (3, 32, 32), "interpolation": "bicubic", "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
              "crop_pct": 0.875, "crop_mode": "center"}
    image = decode_image(PHOTOS / "n02102040" / "ILSVRC2012_val_00004650.jpg")
    as_float = create_transform(**config)(image)
    as_uint8 = eval_transform(config, uint8=True)(image)
    assert as_uint8.dtype == torch.uint8 and as_uint8.shape == as_float.shape
    torch.testing.assert_close(normalize(as_uint8[None], config["mean"], config["std"])[0], as_float, atol=1e-5, rtol=0)


def test_tar_shards_are_a_dataset_as_they_are(photo_folder, tmp_path):
    written = write_shards(photo_folder, tmp_path / "shards", per_shard=6, progress=False)
    assert [p.name for p in written["train"]] == [f"train-{i:05d}.tar" for i in range(4)]
    assert [p.name for p in written["validation"]] == [f"validation-{i:05d}.tar" for i in range(4)]
    train, val, info = load_splits(parse_config(["--dataset", str(tmp_path / "shards")]))
    folder_train, _, folder_info = load_splits(parse_config(["--dataset", str(photo_folder)]))
    assert info.class_names == folder_info.class_names and (info.train_size, info.val_size) == (20, 20)
    assert sorted(train.labels().tolist()) == sorted(folder_train.labels().tolist())
    image, label, problem = ImageClassificationDataset(train, info.name, info.num_classes)[0]
    assert image.mode == "RGB" and 0 <= label < 10 and problem == ""
    (tmp_path / "shards" / "class_names.json").write_text('{"not": "a list"}')
    with pytest.raises(ValueError, match="class_names.json: expected a JSON list of distinct class names"):
        load_splits(parse_config(["--dataset", str(tmp_path / "shards")]))


def test_a_stream_splits_shards_between_processes_without_overlap(photo_folder, tmp_path):
    write_shards(photo_folder, tmp_path / "shards", per_shard=5, progress=False)
    config = parse_config(["--dataset", str(tmp_path / "shards"), "--streaming", "--shuffle-buffer", "4"])
    train, _, names, splits = stream_splits(config, num_shards=8)
    assert train.length == 20 and len(names) == 10
    seen = []
    for rank in range(2):
        stream = StreamingImageDataset(train, "shards", splits[0], 10, lambda image: image.size, seed=0, rank=rank, world_size=2,
                                       shuffle_buffer=4)
        seen.append([label for _, label, _ in stream])
    assert len(seen[0]) == len(seen[1]) == 10
    assert sorted(seen[0] + seen[1]) == sorted(load_splits(parse_config(["--dataset", str(photo_folder)]))[0].labels().tolist())
    three = StreamingImageDataset(train, "shards", "train", 10, None, seed=0, rank=0, world_size=3)
    with pytest.raises(ValueError, match="4 shards do not divide among 3 processes"):
        next(iter(three))


STREAM = [a for i, a in enumerate(TINY) if not (a.startswith("--max-") or TINY[i - 1].startswith("--max-"))]
STREAM += ["--streaming", "--workers", "2", "--checkpoint-every", "1", "--keep-checkpoints", "0", "--log-every", "1"]


@pytest.mark.parametrize("source", ["imagefolder", "shards"])
def test_a_streamed_run_resumed_mid_epoch_is_the_uninterrupted_run(photo_folder, tmp_path, source):
    """Without a shuffle buffer (an imagefolder streams as a permutation; shards with --shuffle-buffer 0)
    the README promises an exact resume: the same weights and metrics, bit for bit."""
    data = photo_folder if source == "imagefolder" else tmp_path / "shards"
    if source == "shards":
        write_shards(photo_folder, data, per_shard=4, progress=False)
    args = [*STREAM, "--dataset", str(data), "--shuffle-buffer", "0", "--batch-size", "4"]
    reference = tmp_path / "reference"
    with one_thread():
        assert train_gvit.main([*args, "--output-dir", str(reference)]) == 0
    steps = json.loads((reference / "run_info.json").read_text())["steps_per_epoch"]
    assert steps == 3  # (20 images - 2 workers x 3 left in a partial batch) // 4
    run = tmp_path / "run"
    shutil.copytree(reference, run, ignore=shutil.ignore_patterns("export", "logs", "figures", "metrics.json"))
    for folder in (run / "checkpoints").iterdir():
        if int(folder.name.removeprefix("step-")) > steps + 1:  # keep up to the middle of epoch 1
            shutil.rmtree(folder)
    with one_thread():
        assert train_gvit.main(["--output-dir", str(run), "--resume", "latest"]) == 0
    assert_same_run(run, reference)


def test_a_stream_skips_an_unreadable_image_where_it_meets_it(photo_folder, tmp_path):
    for split in ("train", "val"):
        cut = photo_folder / split / "n01440764" / "ILSVRC2012_val_00009111.jpg"
        cut.write_bytes(cut.read_bytes()[:1500])
    write_shards(photo_folder, tmp_path / "shards", per_shard=5, progress=False)
    config = parse_config(["--dataset", str(tmp_path / "shards"), "--streaming", "--shuffle-buffer", "0"])
    train, val, _, splits = stream_splits(config, num_shards=4)
    items = list(StreamingImageDataset(train, "shards", splits[0], 10, lambda image: image.size, seed=0, train=True))
    assert len(items) == 19  # training: the stream goes on, the next item carries the reason
    reasons = [why for _, _, why in items if why]
    assert len(reasons) == 1 and "train-0000" in reasons[0] and "not a readable image" in reasons[0]
    items = list(StreamingImageDataset(val, "shards", splits[1], 10, lambda image: image.size, seed=0, train=False))
    assert len(items) == 20 and [label for _, label, _ in items].count(-1) == 1  # validation: left out of the metrics
