"""The device-decode path (timm_gvit.training.device_decode) on the CPU: decode_jpeg(device='cpu')
runs the same code as on the GPU, so its crops, flips, resize and fallbacks are checked here
against the CPU path (ImageClassificationDataset with the trainer's uint8 training transform) on
real JPEGs."""

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data.transforms import RandomResizedCropAndInterpolation

from timm_gvit.training.data import CROP_SCALE, ImageClassificationDataset, ResizedCropFlip, eval_transform, training_transform
from timm_gvit.training.device_decode import DeviceDecodeDataset, collate_encoded, decode_batch, resize_weights

PHOTOS = Path(__file__).parent / "data" / "imagenette-val"
DATA_CONFIG = {"input_size": (3, 224, 224), "interpolation": "bicubic", "mean": (0.485, 0.456, 0.406),
               "std": (0.229, 0.224, 0.225), "crop_pct": 0.9, "crop_mode": "center"}


class Files:
    """Records (as FolderRecords): ``(path, name, label)`` by index."""

    def __init__(self, paths, labels):
        self.paths, self.label_list = [str(p) for p in paths], list(labels)

    def __len__(self):
        return len(self.paths)

    def load(self, index):
        return self.paths[index], self.paths[index], self.label_list[index]

    def labels(self):
        return np.asarray(self.label_list)

    def select(self, indices):
        return Files([self.paths[i] for i in indices], [self.label_list[i] for i in indices])


def photos():
    classes = sorted(p.name for p in PHOTOS.iterdir())
    paths = sorted(PHOTOS.glob("*/*.jpg"))
    return paths, [classes.index(p.parent.name) for p in paths]


def dataset_of(paths, labels, seed=0, in_chans=3, size=224, hflip=0.5):
    config = {**DATA_CONFIG, "input_size": (3, size, size)}
    return ImageClassificationDataset(Files(paths, labels), "test", 10, training_transform(config, hflip, uint8=True), seed, "train",
                                      in_chans, None, replace_bad=True)


@pytest.fixture(scope="module")
def imagenet_sized(tmp_path_factory):
    """Four of the photos as 500 x 375 JPEGs (quality 90), as benchmarks/loader.py --make-jpegs writes them: crops of them shrink."""
    folder = tmp_path_factory.mktemp("jpegs")
    paths, labels = photos()
    out = []
    for path in paths[:4]:
        target = folder / f"{path.stem}.JPEG"
        with Image.open(path) as photo:
            photo.convert("RGB").resize((500, 375), Image.BICUBIC).save(target, quality=90)
        out.append(target)
    return out, labels[:4]


def recorded_boxes(dataset, indices):
    """The crop boxes the CPU path's transform draws for ``indices``, and its images."""
    boxes, images = [], []
    original = RandomResizedCropAndInterpolation.get_params

    def recording(img, scale, ratio):
        box = original(img, scale, ratio)
        boxes.append(tuple(int(v) for v in box))
        return box

    RandomResizedCropAndInterpolation.get_params = staticmethod(recording)
    try:
        for i in indices:
            images.append(dataset[i][0])
    finally:
        RandomResizedCropAndInterpolation.get_params = staticmethod(original)
    return boxes, torch.stack(images)


def decode_all(wrapper, indices):
    batch, labels, bad = collate_encoded([wrapper[i] for i in indices])
    return wrapper.decode(batch, labels, bad, "cpu"), batch


@pytest.mark.parametrize("epoch", [0, 3])
def test_device_path_draws_the_cpu_paths_boxes_and_decodes_to_its_images(epoch, imagenet_sized):
    """Same seed, epoch and item: the same box (read off the header's size) and flip, and images
    within a fraction of a level of PIL's (measured: mean |diff| about 0.2 of 255 on the 80 px
    photos, which are upsampled, and on the 500 x 375 ones, which are shrunk with antialiasing)."""
    for paths, labels in (photos(), imagenet_sized):
        dataset = dataset_of(paths, labels)
        wrapper = DeviceDecodeDataset(dataset)
        wrapper.set_epoch(epoch)
        assert dataset.epoch == epoch  # passed on
        indices = list(range(len(paths)))
        cpu_boxes, cpu_images = recorded_boxes(dataset, indices)
        device_boxes = [wrapper[i][0][1] for i in indices]
        assert device_boxes == cpu_boxes
        (images, out_labels, bad), batch = decode_all(wrapper, indices)
        assert len(batch.decoded_at) == 0  # every one went the device's way
        assert images.dtype == torch.uint8 and images.shape == (len(paths), 3, 224, 224)
        assert out_labels.tolist() == labels and bad == ("",) * len(paths)
        diff = (images.int() - cpu_images.int()).abs().float()
        per_image = diff.mean(dim=(1, 2, 3))
        assert per_image.max() < 3.0, per_image  # a wrong flip or box would be tens of levels
        assert diff.mean() < 1.0, diff.mean()
        flips = batch.flips.tolist()
        assert any(flips) and not all(flips)


def test_other_epochs_and_items_draw_other_boxes():
    paths, labels = photos()
    wrapper = DeviceDecodeDataset(dataset_of(paths, labels))
    first = [wrapper[i][0][1] for i in range(8)]
    assert len(set(first)) == 8
    wrapper.set_epoch(1)
    assert [wrapper[i][0][1] for i in range(8)] != first


def test_one_channel_models_get_luma():
    paths, labels = photos()
    dataset = dataset_of(paths[:6], labels[:6], in_chans=1)
    (images, _, _), _ = decode_all(DeviceDecodeDataset(dataset), range(6))
    cpu = torch.stack([dataset[i][0] for i in range(6)])
    assert images.shape == cpu.shape == (6, 1, 224, 224)
    assert (images.int() - cpu.int()).abs().float().mean() < 3.0


def test_what_the_device_cannot_decode_goes_the_cpu_path(tmp_path):
    """A PNG named .jpg, a CMYK JPEG, an EXIF-rotated JPEG and a truncated JPEG are decoded by the
    CPU path in the worker (the same pixels as without the wrapper); an unreadable file is
    replaced by the next readable item with its reason, as the wrapped dataset does."""
    paths, labels = photos()
    photo = Image.open(paths[0]).convert("RGB")
    png, cmyk, rotated, truncated, garbage = (tmp_path / n for n in ("png.jpg", "cmyk.jpg", "rotated.jpg", "cut.jpg", "bad.jpg"))
    photo.save(png, format="PNG")
    photo.convert("CMYK").save(cmyk, quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6
    photo.save(rotated, quality=90, exif=exif)
    buffer = io.BytesIO()
    photo.save(buffer, format="JPEG", quality=90)
    truncated.write_bytes(buffer.getvalue()[:-300])
    garbage.write_bytes(b"not an image at all")
    files = [png, cmyk, rotated, truncated, garbage, paths[1], paths[2]]
    dataset = dataset_of(files, [0, 1, 2, 3, 4, 5, 6])
    wrapper = DeviceDecodeDataset(dataset)
    (images, out_labels, bad), batch = decode_all(wrapper, range(len(files)))
    assert batch.decoded_at.tolist() == [0, 1, 2, 3, 4]  # the truncated JPEG has no end-of-image marker
    for k in range(5):
        assert torch.equal(images[k], dataset[k][0])
    assert bad[:3] == ("", "", "") and out_labels[:3].tolist() == [0, 1, 2]
    # unreadable: the next readable item (the photo at 5) takes their place, and they say why
    assert "cut.jpg" in bad[3] and "truncated" in bad[3] and "bad.jpg" in bad[3] and out_labels[3] == 5
    assert "bad.jpg" in bad[4] and out_labels[4] == 5
    assert bad[5] == bad[6] == "" and out_labels[5:].tolist() == [5, 6]


def test_a_jpeg_the_device_fails_on_is_decoded_by_the_cpu_path_in_the_training_process(monkeypatch):
    import timm_gvit.training.device_decode as module

    paths, labels = photos()
    dataset = dataset_of(paths[:4], labels[:4])
    wrapper = DeviceDecodeDataset(dataset)
    batch, batch_labels, bad = collate_encoded([wrapper[i] for i in range(4)])
    real = module.decode_jpegs
    monkeypatch.setattr(module, "decode_jpegs", lambda data, device, channels=3: [None, *real(data[1:], device, channels)])
    images, out_labels, out_bad = wrapper.decode(batch, batch_labels, bad, "cpu")
    assert torch.equal(images[0], dataset[0][0]) and out_labels.tolist() == labels[:4] and out_bad == bad
    with pytest.raises(RuntimeError, match="could not decode"):
        decode_batch(batch, "cpu", (224, 224))


def test_batches_through_loader_workers_match_the_ones_made_here():
    """Items collated in a worker (the bytes in shared memory) decode to what this process makes of them."""
    paths, labels = photos()
    wrapper = DeviceDecodeDataset(dataset_of(paths, labels, size=64))
    loader = torch.utils.data.DataLoader(wrapper, batch_size=5, num_workers=1, collate_fn=wrapper.collate)
    for b, (batch, batch_labels, bad) in enumerate(loader):
        images, _, _ = wrapper.decode(batch.to("cpu"), batch_labels, bad, "cpu")
        (here, _, _), _ = decode_all(wrapper, range(5 * b, 5 * b + 5))
        assert torch.equal(images, here) and images.shape == (5, 3, 64, 64)


def test_only_the_training_transform_is_reproduced():
    paths, labels = photos()
    dataset = dataset_of(paths, labels)
    dataset.transform = eval_transform(DATA_CONFIG, uint8=True)
    with pytest.raises(ValueError, match="random-resized crop"):
        DeviceDecodeDataset(dataset)
    dataset.transform = training_transform(DATA_CONFIG, 0.5, uint8=False)  # float output, normalised on the CPU
    with pytest.raises(ValueError, match="uint8"):
        DeviceDecodeDataset(dataset)
    assert DeviceDecodeDataset(dataset_of(paths, labels, hflip=0.0)).flip_p == 0.0


@pytest.mark.parametrize("interpolation, resample", [("bicubic", Image.BICUBIC), ("bilinear", Image.BILINEAR)])
def test_resize_weights_are_pils(interpolation, resample):
    """The weight matrices resize as PIL does, shrinking (antialiased) and enlarging, flipped or not."""
    rng = np.random.default_rng(0)
    for length, size in ((437, 224), (61, 224), (224, 224)):
        row = rng.integers(0, 256, (1, length), dtype=np.uint8)
        expected = np.asarray(Image.fromarray(row).resize((size, 1), resample), dtype=np.float64)[0]
        weights = resize_weights(torch.tensor([length, length]), size, length + 7, interpolation, torch.tensor([False, True]))
        assert weights.shape == (2, size, length + 7) and torch.all(weights[:, :, length:] == 0)
        got = (weights.double() @ torch.from_numpy(np.pad(row[0], (0, 7))).double()).numpy()
        assert np.abs(np.clip(np.round(got[0]), 0, 255) - expected).max() <= 1
        assert np.allclose(got[1], got[0][::-1])


def test_loader_benchmark_times_the_device_path_beside_timm(tmp_path):
    """benchmarks/loader.py --decode-on-device --compare-timm (the device being the CPU here): both loaders'
    images/s and CPU cost per image in its JSON, and the last line the device check reads."""
    import json

    from benchmarks import device_check, loader

    device_check.write_images(tmp_path / "images", 40, 2, (64, 48))  # 36 training images: 9 batches of 4
    out = tmp_path / "loader.json"
    report = loader.main(["--dataset", str(tmp_path / "images"), "--model", "gvit_nano", "--img-size", "32", "--batch", "4",
                          "--workers", "1", "--batches", "3", "--decode-seconds", "0.2", "--decode-on-device", "--compare-timm",
                          "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert report["path"] == "device-decode" and report["startup_batches"] == 3 and report["timed_batches"] == 3
    for key in ("ours_images_per_s", "timm_images_per_s", "decode_only_images_per_s", "ratio"):
        assert report[key] > 0, key
    assert report["ours_cpu_ms_per_image"] >= 0  # /proc counts in 10 ms ticks: a window this short may see none
    assert report["ours"]["cpu_ms_per_image_main"] + report["ours"]["cpu_ms_per_image_workers"] == pytest.approx(
        report["ours_cpu_ms_per_image"])
    assert set(report["compiled_step"]["cores_per_gpu"]) == {"reconstruction", "classifier", "joint"}
    line = device_check.loader_lines({"loader_device": device_check.loader_summary(report)})[0]
    assert line.startswith("loader_device: device-decode path, 1 workers: ours ")


def test_device_check_sets_each_trainer_path_beside_the_compiled_step():
    """The settle question's arithmetic: a phase's steady rate is its last epoch's (the first compiles), and
    every phase must reach 0.9x the compiled step's images/s."""
    from benchmarks import device_check

    def epochs(*rows):
        return {"epochs": [{"epoch": e, "phase": p, "images_per_s_after_first_batch": r} for e, (p, r) in enumerate(rows)]}

    step = {"modes": {"compiled": {"phases": {"reconstruction": {"images_per_s": 3000.0}, "classifier": {"images_per_s": 4000.0},
                                              "joint": {"images_per_s": 2000.0}}}}}
    report = {"train_step": step, "machine": {"gpu": "GPU"},
              "train_gvit": epochs(("reconstruction", 900), ("reconstruction", 2950), ("classifier", 100), ("classifier", 3000),
                                   ("joint", 500), ("joint", 1900)),
              "train_gvit_device": epochs(("reconstruction", 900), ("reconstruction", 2990), ("classifier", 3900), ("joint", 1950))}
    result = device_check.trainer_vs_step(report, device_check.STEP_REFERENCE)
    assert result["step_source"] == "this run's train_step on GPU"
    assert [line.split("  ")[0] for line in result["targets"]] == ["PASS", "FAIL", "PASS", "PASS", "FAIL", "FAIL"]
    assert result["runs"]["cpu"]["classifier"]["ratio"] == 0.75
    assert "no steady epoch" in result["targets"][4]  # one classifier epoch: it compiled
    assert result["targets"][0] in device_check.targets({"trainer_vs_step": result})
    reference = device_check.trainer_vs_step({"train_gvit": report["train_gvit"]}, device_check.STEP_REFERENCE)
    assert "NVIDIA H200" in reference["step_source"] and reference["step_images_per_s"]["classifier"] > 4000


def test_the_8_bit_training_transform_is_timms_with_torch_resizing_and_device_decoding_reads_it():
    from timm.data import create_transform

    paths, labels = photos()
    dataset = dataset_of(paths, labels)
    assert isinstance(dataset.transform, ResizedCropFlip)
    pil = dataset_of(paths, labels)
    pil.transform = create_transform(**{k: v for k, v in DATA_CONFIG.items() if k not in ("crop_pct", "crop_mode")}, is_training=True,
                                     scale=CROP_SCALE, hflip=0.5, color_jitter=None, auto_augment=None, re_prob=0.0, use_prefetcher=True)
    torch_boxes, torch_images = recorded_boxes(dataset, range(len(paths)))
    pil_boxes, pil_images = recorded_boxes(pil, range(len(paths)))
    assert torch_boxes == pil_boxes  # the same draws
    difference = (torch_images.int() - pil_images.int()).abs()
    assert difference.float().mean() < 0.1 and difference.max() <= 4  # torch's antialiased kernel against PIL's
    wrapper = DeviceDecodeDataset(dataset)
    assert wrapper.flip_p == 0.5 and wrapper.size == (224, 224) and wrapper.interpolation == "bicubic"
    assert [wrapper[i][0][1] for i in range(len(paths))] == torch_boxes
    (images, _, _), _ = decode_all(wrapper, range(len(paths)))
    assert (images.int() - torch_images.int()).abs().float().mean() < 1.0

def test_the_trainer_decodes_on_the_device_with_a_flag(tmp_path):
    """--decode-on-device end to end (on the CPU, the device path's own code with device='cpu'):
    every phase, then an export; one file is truncated and skipped where it is met."""
    import json
    import shutil

    import train_gvit
    from test_training import TINY

    shutil.copytree(PHOTOS, tmp_path / "photos" / "train")
    shutil.copytree(PHOTOS, tmp_path / "photos" / "val")
    cut = tmp_path / "photos" / "train" / "n01440764" / "ILSVRC2012_val_00009111.jpg"
    cut.write_bytes(cut.read_bytes()[:2000])
    run = tmp_path / "run"
    assert train_gvit.main([*TINY, "--dataset", str(tmp_path / "photos"), "--decode-on-device", "--workers", "2", "--batch-size", "4",
                            "--output-dir", str(run)]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["total_steps"] > 0 and metrics["bad_images"]["count"] == 1 and "ILSVRC2012_val_00009111" in metrics["bad_images"]["images"][0]
