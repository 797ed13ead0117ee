"""Issue 20: wrong answers nobody sees, and inputs from strangers. Each test runs the real command
(train_gvit.main, the explain and fitting commands, gvit-publish, timm.create_model) on small
generated data."""

import json
import os
import re
import resource
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import yaml
from PIL import Image
from timm.data import create_transform, resolve_model_data_config
from timm.models import save_for_hf

import timm_gvit  # noqa: F401
import train_gvit
from timm_gvit.hub import publish
from timm_gvit import explain, fitting
from timm_gvit.training.config import parse_config, save_config

from test_training import TINY, make_imagefolder, start_paused

SMALL = dict(img_size=16, patch_size=8, num_gaussians=8, encoder_depth=1, depth=1)
SMALL_FLAGS = [f"{k}={v}" for k, v in SMALL.items()]


def two_class_export(folder: Path, **kwargs) -> torch.nn.Module:
    """A trained-looking gvit_nano with a 2-class head (not the shipped tag's 10), saved as an export folder."""
    torch.manual_seed(1)
    model = timm.create_model("gvit_nano", num_classes=2, **{**SMALL, **kwargs}).eval()
    torch.nn.init.normal_(model.classifier.head.weight, std=1.0)
    save_for_hf(model, folder, safe_serialization=True)
    return model


def photo(path: Path) -> Path:
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(path)
    return path


def run_explain(capsys, *args: str) -> str:
    explain.main(list(args))
    return next(line for line in capsys.readouterr().out.splitlines() if line.startswith("top classes:"))


def top_line(model, image: Path) -> str:
    """explain's "top classes" line for ``model``, computed here from the model itself."""
    config = resolve_model_data_config(model)
    with torch.no_grad():
        probs = model(create_transform(**config)(explain.read_image(image))[None]).softmax(-1)[0]
    top = probs.topk(2)
    return "top classes: " + ", ".join(f"{i} ({p:.1%})" for p, i in zip(top.values.tolist(), top.indices.tolist()))


# ------------------------------------------------------------------ 1. the head in the file is the head that loads
def test_weights_in_a_file_load_with_their_head_by_every_route(tmp_path, capsys):
    model = two_class_export(tmp_path / "export")
    weights = str(tmp_path / "export" / "model.safetensors")
    x = torch.randn(2, 3, 16, 16)
    for extra in (dict(num_classes=2), {}):  # the overlay our own error message recommends; class count given or not
        loaded = timm.create_model("gvit_nano", pretrained=True, pretrained_cfg_overlay=dict(file=weights), **SMALL, **extra)
        assert torch.equal(loaded.eval()(x), model(x)) and "label_names" not in loaded.pretrained_cfg  # not Imagenette's
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    config["num_classes"] = 10  # disagrees with model_args and with the file
    (tmp_path / "export" / "config.json").write_text(json.dumps(config))
    assert torch.equal(timm.create_model(f"local-dir:{tmp_path / 'export'}", pretrained=True).eval()(x), model(x))
    # another class count is asked for: the head is new, and it says so
    with pytest.warns(UserWarning, match="head has 2 classes and num_classes=3 was asked for, so the head starts from random"):
        timm.create_model("gvit_nano", pretrained=True, num_classes=3, pretrained_cfg_overlay=dict(file=weights), **SMALL)
    # the command: the prediction is the file's model's, the same on every run
    image = photo(tmp_path / "photo.png")
    args = [str(image), "--model", "gvit_nano", "--checkpoint", weights, "--out", str(tmp_path / "fig.png"),
            "--model-kwargs", "num_classes=2", *SMALL_FLAGS]
    assert run_explain(capsys, *args) == run_explain(capsys, *args) == top_line(model, image)


# ------------------------------------------------------------------ 2. explain's --model-kwargs are Python literals
def test_explain_model_kwargs_read_booleans_and_floats(tmp_path, capsys):
    model = two_class_export(tmp_path / "export", centre_features=False, scale_bound=0.75)
    image = photo(tmp_path / "photo.png")
    line = run_explain(capsys, str(image), "--model", "gvit_nano", "--checkpoint", str(tmp_path / "export" / "model.safetensors"),
                       "--out", str(tmp_path / "fig.png"), "--model-kwargs", "centre_features=False", "scale_bound=0.75", *SMALL_FLAGS)
    assert line == top_line(model, image)


# ------------------------------------------------------------------ 4. the trainer's own options stay out of --model-kwargs
@pytest.mark.parametrize("item, message", [
    ("pretrained=True", "--model-kwargs pretrained: .*--init-from or --init-encoder-from"),
    ("checkpoint_path=/etc/passwd", "--model-kwargs checkpoint_path: .*--init-from"),
    ("num_classes=5", "--model-kwargs num_classes: .*the dataset's labels set the class count"),
    ("depth", "--model-kwargs: expected KEY=VALUE, got 'depth'"),
    ("scale_bond=0.5", "--model-kwargs scale_bond: gvit_nano has no such option; did you mean scale_bound\\?"),
    ("num_gausians=4", "--model-kwargs num_gausians: .*did you mean num_gaussians\\?"),
    ("gaussian_init=noise", "--model gvit_nano cannot be built with .*gaussian_init='noise': ValueError: gaussian_init must be one of"),
])
def test_trainer_owned_model_kwargs_are_refused_by_name(tmp_path, item, message):
    with pytest.raises(SystemExit, match=f"train_gvit.py: error: {message}"):
        train_gvit.main(["--output-dir", str(tmp_path / "run"), "--model-kwargs", item])
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------ 8. a checkpoint's file list stays inside its folder
def fake_checkpoint(run: Path, files) -> Path:
    """A run folder whose one checkpoint lists ``files`` in its trainer_state.json."""
    run.mkdir(parents=True)
    save_config(parse_config(["--output-dir", str(run)]), run / "config.yaml")
    folder = run / "checkpoints" / "step-00000001"
    folder.mkdir(parents=True)
    for name in ("model.safetensors", "optimizer.safetensors"):
        (folder / name).write_bytes(b"x")
    (folder / "trainer_state.json").write_text(json.dumps({"step": 1, "history": [], "files": files}))
    return folder


@pytest.mark.parametrize("files, message", [
    ({"model.safetensors": 1, "optimizer.safetensors": 1, "/etc/passwd": Path("/etc/passwd").stat().st_size},
     "lists '/etc/passwd', which is not a plain file name inside the checkpoint folder"),
    ({"model.safetensors": 1, "optimizer.safetensors": 1, "../../../../../../etc/hostname": 1}, "not a plain file name"),
    ({"model.safetensors": 1, "optimizer.safetensors": 1, "/etc/shadow": 1}, r"lists '/etc/shadow', which is not"),
    (["model.safetensors", "optimizer.safetensors"], "file list is a list, expected a mapping of file names to sizes"),
    ({"model.safetensors": "1", "optimizer.safetensors": 1}, "gives model.safetensors the size '1'"),
    ({"optimizer.safetensors": 1}, "lacks model.safetensors"),
])
def test_a_hostile_trainer_state_file_list_is_refused(tmp_path, files, message):
    folder = fake_checkpoint(tmp_path / "run", files)
    with pytest.raises(SystemExit, match=r"an incomplete checkpoint \(.*" + message) as info:
        publish.main([str(folder), "--hub-model-id", "me/x", "--dry-run"])
    assert not re.search(r"has \d+ bytes", str(info.value))  # no size of a file outside the folder
    with pytest.raises(SystemExit, match="neither an export folder, a run folder with a complete checkpoint"):
        publish.main([str(tmp_path / "run"), "--hub-model-id", "me/x", "--dry-run"])


def test_a_link_in_a_checkpoint_is_refused(tmp_path):
    folder = fake_checkpoint(tmp_path / "run", {"model.safetensors": 1, "optimizer.safetensors": 1})
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors").symlink_to("/etc/hostname")
    with pytest.raises(SystemExit, match="model.safetensors is a symbolic link"):
        train_gvit.main(["--output-dir", str(tmp_path / "run"), "--resume", str(folder)])


# ------------------------------------------------------------------ 9. a config.json cannot ask for unbounded memory
@pytest.mark.parametrize("key, value, message", [
    ("encoder_depth", 100000, "encoder_depth must be at most 64, got 100000"),
    ("img_size", [65536, 65536], "img_size 65536x65536 with patch_size 8 gives 67108864 patches, more than 65536"),
    ("num_gaussians", 10**9, "num_gaussians must be at most 65536"),
    ("embed_dim", 10**6, "embed_dim must be at most 8192"),
    ("mlp_ratio", 1e6, "mlp_ratio must be a number > 0 and at most 16"),
    ("scale_bound", float("inf"), "scale_bound must be a number > 0 and finite, got inf"),
    ("scale_bound", float("nan"), "scale_bound must be a number > 0 and finite, got nan"),
    ("scale_bound", -1.0, "scale_bound must be a number > 0"),
])
def test_hostile_config_json_sizes_are_refused_before_allocating(tmp_path, capsys, key, value, message):
    two_class_export(tmp_path / "export")
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    config["model_args"][key] = value
    (tmp_path / "export" / "config.json").write_text(json.dumps(config))  # Infinity and NaN as json.dumps writes them
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ValueError, match=re.escape(message)):
        timm.create_model(f"local-dir:{tmp_path / 'export'}", pretrained=True)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 500_000  # KiB: nothing large was allocated
    with pytest.raises(SystemExit):  # explain says the same in one line
        explain.main([str(photo(tmp_path / "p.png")), "--checkpoint", str(tmp_path / "export"), "--out", str(tmp_path / "f.png")])
    assert message in capsys.readouterr().err.strip().splitlines()[-1]


# ------------------------------------------------------------------ 10. the commands check their inputs
def bomb(path: Path) -> Path:
    """An 8x8 PNG whose header claims 100000 x 100000 pixels."""
    Image.new("RGB", (8, 8)).save(path)
    data = bytearray(path.read_bytes())
    data[16:24] = struct.pack(">II", 100000, 100000)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("case, message", [
    ("missing", "no such image file"), ("empty", r"empty\.png: not a readable image"), ("truncated", "image file is truncated"),
    ("directory", "is not a file"), ("size 0", "--size must be >= 1, got 0"), ("k 0", "--num-gaussians must be >= 1, got 0"),
    ("steps -1", "--steps must be >= 0"), ("lr 0", "--lr must be a finite number > 0"), ("out folder", "--out .* is a folder"),
    ("bomb", "DecompressionBombError"),
])
def test_fitting_command_refuses_bad_input_in_one_line(tmp_path, capsys, case, message):
    good = photo(tmp_path / "good.png")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "cut.png").write_bytes(fitting.ASSETS.joinpath("astronaut.png").read_bytes()[:400])
    args = {"missing": [str(tmp_path / "nope.png")], "empty": [str(tmp_path / "empty.png")], "truncated": [str(tmp_path / "cut.png")],
            "directory": [str(tmp_path)], "size 0": [str(good), "--size", "0"], "k 0": [str(good), "-k", "0"],
            "steps -1": [str(good), "--steps", "-1"], "lr 0": [str(good), "--lr", "0"], "out folder": [str(good), "--out", str(tmp_path)],
            "bomb": [str(bomb(tmp_path / "bomb.png"))]}[case]
    with pytest.raises(SystemExit) as info:
        fitting.main([*args, "--steps", "1"] if case != "steps -1" else args)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert re.search(message, err.strip().splitlines()[-1]) and "Traceback" not in err


@pytest.mark.parametrize("case, message", [
    ("out folder", "--out .* is a folder"), ("bomb", "DecompressionBombError"),
    ("zero std", "the pretrained config's std must be a list of finite numbers > 0, got \\[0, 0, 0\\]"),
])
def test_explain_refuses_bad_input_in_one_line(tmp_path, capsys, case, message):
    two_class_export(tmp_path / "export")
    if case == "zero std":
        config = json.loads((tmp_path / "export" / "config.json").read_text())
        config["pretrained_cfg"]["std"] = [0, 0, 0]
        (tmp_path / "export" / "config.json").write_text(json.dumps(config))
    image = bomb(tmp_path / "bomb.png") if case == "bomb" else photo(tmp_path / "p.png")
    out = tmp_path if case == "out folder" else tmp_path / "f.png"
    with pytest.raises(SystemExit):
        explain.main([str(image), "--checkpoint", str(tmp_path / "export"), "--out", str(out)])
    assert re.search(message, capsys.readouterr().err.strip().splitlines()[-1])


def test_explain_ignores_label_names_that_do_not_fit_the_head(tmp_path, capsys):
    model = two_class_export(tmp_path / "export")
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    config["label_names"] = ["only one"]
    (tmp_path / "export" / "config.json").write_text(json.dumps(config))
    image = photo(tmp_path / "p.png")
    assert run_explain(capsys, str(image), "--checkpoint", str(tmp_path / "export"), "--out", str(tmp_path / "f.png")) == top_line(model, image)


# ------------------------------------------------------------------ 6. one trainer per run folder
def test_a_second_trainer_on_a_run_folder_is_refused_naming_the_first(tmp_path):
    run = tmp_path / "run"
    first = start_paused("before-metrics", *TINY, "--output-dir", str(run))  # in the middle of its run, after a checkpoint
    try:
        saved = (run / "config.yaml").read_text()
        for args in ([*TINY, "--output-dir", str(run), "--gamma", "0.5"], ["--output-dir", str(run), "--resume", "latest"]):
            with pytest.raises(SystemExit, match=rf"error: {run} is in use by another trainer \(pid {first.pid} on .*train_gvit.py"):
                train_gvit.main(args)
        assert (run / "config.yaml").read_text() == saved
    finally:
        first.kill()
        first.wait()
    # the OS released the dead trainer's lock: the folder's own rules apply again
    with pytest.raises(SystemExit, match="holds a run already: continue it with --resume latest"):
        train_gvit.main([*TINY, "--output-dir", str(run)])


# ------------------------------------------------------------------ 3. labels the data does not support
def labelled(folder: Path, train_labels: list, val_labels: list, feature=None) -> Path:
    """A save_to_disk dataset of 8x8 images with these labels in its train and validation splits."""
    import datasets

    features = datasets.Features({"image": datasets.Image(), "label": feature or datasets.Value("int64")})
    split = lambda labels: datasets.Dataset.from_dict({"image": [Image.new("RGB", (8, 8))] * len(labels), "label": labels},  # noqa: E731
                                                      features=features)
    datasets.DatasetDict({"train": split(train_labels), "validation": split(val_labels)}).save_to_disk(str(folder))
    return folder


@pytest.mark.parametrize("train_labels, val_labels, names, message", [
    (["cat", "dog"] * 8, ["cat", "dog"], None, r"split 'train': the labels in column 'label' must be integer class ids 0, 1, "
     r"\.\.\., found 'cat' \(16 such\): convert them to class ids with datasets' class_encode_column"),
    ([0, 7] * 8, [0, 7], None, r"split 'train': the labels in column 'label' are \[0, 7\], so classes \[1, 2, 3, 4, 5, 6\] have no "
     "training image and the model would have outputs it never learns"),
    ([0, 1] * 8, [0, 1, 2], ["a", "b", "c"], r"split 'validation' has classes \['c'\] that the training split 'train' has no image "
     "of: the model could never predict them"),
    ([0, 1] * 8, [0, 1, 2], None, r"split 'validation': labels \[2\] in column 'label' are outside 0\.\.1"),
    ([0, 1] * 8, [0, -1], ["a", "b"], r"split 'validation': labels \[-1\] .* outside 0\.\.1, the classes its ClassLabel names give; "
     "-1 marks an unlabelled image"),
])
def test_labels_the_data_does_not_support_are_refused_before_training(tmp_path, train_labels, val_labels, names, message):
    import datasets

    feature = datasets.ClassLabel(names=names) if names else (datasets.Value("string") if isinstance(train_labels[0], str) else None)
    data = labelled(tmp_path / "data", train_labels, val_labels, feature)
    with pytest.raises(ValueError, match=message):
        train_gvit.main([*TINY, "--dataset", str(data), "--output-dir", str(tmp_path / "run"), "--batch-size", "4"])
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_float_tiffs_in_0_to_255_keep_their_grey_levels(tmp_path):
    from timm_gvit.training.data import ImageClassificationDataset, load_splits

    levels = np.linspace(0, 255, 64, dtype=np.float32).reshape(8, 8)
    for name in ("a", "b"):
        (tmp_path / "tiffs" / name).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(levels, mode="F").save(tmp_path / "tiffs" / name / f"{i}.tif")
    train, _, info = load_splits(parse_config(["--dataset", str(tmp_path / "tiffs"), "--val-fraction", "0.3"]))
    image, _, _ = ImageClassificationDataset(train, info.name, info.num_classes)[0]
    assert np.array_equal(np.asarray(image)[..., 0], np.round(levels).astype(np.uint8))  # not 99 % white
    Image.fromarray(levels * 1000, mode="F").save(tmp_path / "hot.tif")
    with pytest.raises(SystemExit):
        explain.main([str(tmp_path / "hot.tif")])


# ------------------------------------------------------------------ 11. an export describes its own run
def test_an_export_has_its_own_tag_the_users_licence_and_no_local_paths(tmp_path):
    data = make_imagefolder(tmp_path / "private-photos", per_class=8)
    run = tmp_path / "my-run"
    assert train_gvit.main([*TINY, "--dataset", str(data), "--output-dir", str(run), "--batch-size", "8",
                            "--joint-epochs", "1", "--guidance-epochs", "0"]) == 0
    export = run / "export"

    def check(licence):
        config = json.loads((export / "config.json").read_text())
        assert config["pretrained_cfg"]["tag"] == "my_run" and config["pretrained_cfg"].get("license") == licence
        card = (export / "README.md").read_text()
        front = card.split("---")[1]
        assert (f"license: {licence}" in front) if licence else ("license:" not in front)
        assert "datasets:" not in front and "private-photos (a local folder)" in card
        for name in ("config.json", "README.md", "train_config.yaml"):
            assert str(tmp_path) not in (export / name).read_text()  # nothing --push-to-hub would publish about this machine
        assert yaml.safe_load((export / "train_config.yaml").read_text())["dataset"] == "private-photos"
        timm.create_model(f"local-dir:{export}", pretrained=True)

    check(None)  # no licence stated unless the user states one
    with pytest.raises(SystemExit, match="--license must be a Hub licence id"):
        train_gvit.main(["--output-dir", str(run), "--resume", "latest", "--license", "mit\nfoo: bar"])
    assert train_gvit.main(["--output-dir", str(run), "--resume", "latest", "--license", "mit"]) == 0  # the finished run, exported again
    check("mit")


# ------------------------------------------------------------------ 5. unreadable images: named, checked early, skippable
def shapes_with_broken_files(root: Path, where: tuple[str, ...]) -> Path:
    """train/ and val/ imagefolders of generated shapes, with a broken disc/broken.png in the splits ``where``."""
    for split in ("train", "val"):
        make_imagefolder(root / split, per_class=8 if split == "train" else 3, bad="broken" if split in where else None)
    return root


def test_unreadable_images_cost_those_images_not_the_run(tmp_path, capsys):
    data = shapes_with_broken_files(tmp_path / "shapes", ("train", "val"))
    run = tmp_path / "run"
    assert train_gvit.main([*TINY, "--dataset", str(data), "--output-dir", str(run), "--batch-size", "8", "--workers", "0",
                            "--max-bad-images", "2"]) == 0
    err = capsys.readouterr().err
    for split, folder in (("train", "train"), ("validation", "val")):
        assert re.search(rf"skipping an unreadable image: dataset .*, split '{split}', .*{folder}/disc/broken\.png: not a readable image", err)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["bad_images"]["count"] == 2 and len(metrics["bad_images"]["images"]) == 2
    info = json.loads((run / "run_info.json").read_text())
    assert (info["train_size"], info["steps_per_epoch"]) == (25, 3)  # the training split kept its length: the schedule did not change
    # the broken validation image counts nowhere: top-1 is over the 9 readable ones, a multiple of 1/9
    hits = metrics["final"]["top1"] * 9 / 100
    assert abs(hits - round(hits)) < 1e-6


def test_more_unreadable_images_than_max_bad_images_stop_the_run_in_one_line(tmp_path, capsys):
    data = shapes_with_broken_files(tmp_path / "shapes", ("train", "val"))
    with pytest.raises(SystemExit, match=r"^train_gvit.py: error: 2 unreadable images, more than --max-bad-images 1 allows") as info:
        train_gvit.main([*TINY, "--dataset", str(data), "--output-dir", str(tmp_path / "run"), "--batch-size", "8", "--workers", "0",
                         "--max-bad-images", "1"])
    assert info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == str(info.value)


def test_skip_bad_images_checks_every_image_first_and_limits_the_skipped_files(tmp_path, capsys):
    data = shapes_with_broken_files(tmp_path / "shapes", ("train", "val"))
    args = [*TINY, "--dataset", str(data), "--batch-size", "8", "--joint-epochs", "1", "--guidance-epochs", "0"]
    with pytest.raises(ValueError, match=r"2 unreadable images, more than --skip-bad-images 1 allows: .*val/disc/broken\.png.*train/disc/broken\.png"):
        train_gvit.main([*args, "--output-dir", str(tmp_path / "over"), "--skip-bad-images", "1"])
    run = tmp_path / "run"
    assert train_gvit.main([*args, "--output-dir", str(run), "--skip-bad-images", "2"]) == 0
    out = capsys.readouterr().out
    for split, folder in (("train", "train"), ("validation", "val")):
        assert re.search(rf"skipping an unreadable image: .*split '{split}', .*{folder}/disc/broken\.png", out)
    assert json.loads((run / "metrics.json").read_text())["bad_images"]["count"] == 2
    info = json.loads((run / "run_info.json").read_text())
    assert (info["train_size"], info["val_size"]) == (25, 9)  # the training split keeps its length: the schedule does not change
    # the bounds may change on resume
    assert parse_config(["--output-dir", str(run), "--resume", "latest", "--skip-bad-images", "3"]).skip_bad_images == 3
    assert parse_config(["--output-dir", str(run), "--resume", "latest", "--max-bad-images", "0.5"]).max_bad_images == 0.5


# ------------------------------------------------------------------ 7. a full disk during a checkpoint
@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs mounted at tmp_path/disk, resized by calling the fixture's value with a size in MB."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(disk)], capture_output=True, text=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs to fill a disk here: {mounted.stderr.strip()}")

    def resize(megabytes: int) -> Path:
        subprocess.run(["mount", "-o", f"remount,size={megabytes}m", str(disk)], check=True)
        return disk

    try:
        yield resize
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_a_full_disk_says_what_a_checkpoint_needs_and_the_run_resumes_once_space_is_freed(small_disk):
    run = small_disk(16) / "run"  # a checkpoint of TINY's model with all of its optimiser state takes 10.1 MB: two do not fit
    with pytest.raises(SystemExit, match=r"train_gvit.py: error: no space left on the disk of .* for checkpoint step-\d+: one "
                                         r"checkpoint of this run takes about 10\.\d MB, and with --keep-checkpoints 1 the run folder "
                                         r"holds up to 2 while the next is written .* continue with --resume latest \(from (step-\d+)\)") as info:
        train_gvit.main([*TINY, "--output-dir", str(run), "--keep-checkpoints", "1"])
    complete = re.search(r"from (step-\d+)", str(info.value)).group(1)
    assert [p.name for p in (run / "checkpoints").iterdir()] == [complete]  # the half-written one is gone
    with pytest.raises(SystemExit, match="holds a run already: continue it with --resume latest"):
        train_gvit.main([*TINY, "--output-dir", str(run)])
    small_disk(40)  # space freed
    assert train_gvit.main(["--output-dir", str(run), "--resume", "latest"]) == 0
    assert json.loads((run / "metrics.json").read_text())["total_steps"] == 16


def test_checkpoints_that_keep_checkpoints_prunes_go_before_the_next_is_written(small_disk):
    run = small_disk(26) / "run"  # two checkpoints and the export fit, three checkpoints do not
    assert train_gvit.main([*TINY, "--output-dir", str(run), "--keep-checkpoints", "2"]) == 0
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000015", "step-00000016"]


def test_a_run_resumed_after_an_image_went_bad_skips_it(tmp_path):
    data = shapes_with_broken_files(tmp_path / "shapes", ())
    run = tmp_path / "run"
    args = [*TINY, "--dataset", str(data), "--output-dir", str(run), "--batch-size", "8", "--workers", "0"]
    stopped = start_paused("before-metrics", *args)  # killed after epoch 0's checkpoint
    stopped.kill()
    stopped.wait()
    (data / "train" / "bar" / "0.png").write_bytes(b"a file that went bad since")
    assert train_gvit.main(["--output-dir", str(run), "--resume", "latest"]) == 0
    bad = json.loads((run / "metrics.json").read_text())["bad_images"]
    assert bad["count"] == 1 and "train/bar/0.png" in bad["images"][0]


@pytest.mark.parametrize("case", ["hostile checkpoint", "bad option", "timm flag", "one class"])
def test_every_refusal_at_start_is_one_line_and_exit_status_2(tmp_path, case):
    """As a user meets it on the command line: one line on stderr, status 2, no traceback."""
    if case == "hostile checkpoint":
        folder = fake_checkpoint(tmp_path / "run", {"model.safetensors": 1, "optimizer.safetensors": 1, "/etc/passwd": 1})
        args, message = ["--output-dir", str(tmp_path / "run"), "--resume", str(folder)], "lists '/etc/passwd', which is not a plain"
    elif case == "bad option":
        args, message = ["--output-dir", str(tmp_path / "run"), "--max-bad-images", "2.5"], "--max-bad-images must be a count"
    elif case == "timm flag":  # as argparse's would be, but naming ours
        args, message = ["--output-dir", str(tmp_path / "run"), "--sched", "step"], "this trainer has only --sched cosine"
    else:
        make_imagefolder(tmp_path / "shapes", per_class=2)
        for name in ("bar", "noise"):
            shutil.rmtree(tmp_path / "shapes" / name)
        args, message = ["--dataset", str(tmp_path / "shapes"), "--output-dir", str(tmp_path / "run")], "needs at least two"
    result = subprocess.run([sys.executable, str(Path(train_gvit.__file__)), *args], capture_output=True, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("train_gvit.py: error: ") and message in last
