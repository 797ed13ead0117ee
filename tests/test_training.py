"""train_gvit.py and its pieces, on bundled (digits) and generated data."""

import contextlib
import dataclasses
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

import timm_gvit  # noqa: F401
from timm_gvit.training.checkpoints import load_encoder_weights, load_model_weights, read_safetensors
from timm_gvit.training.config import parse_config
from timm_gvit.images import to_rgb
from timm_gvit.training.data import ImageClassificationDataset, load_splits
from timm_gvit.training.guidance import guidance_step
from timm_gvit.training.schedule import Schedule
from timm_gvit.training.teacher import load_teacher

import train_gvit
from timm_gvit.hub import publish

ROOT = Path(__file__).resolve().parents[1]

# a small gvit_tiny and a short schedule: 4 steps per epoch, one epoch per phase, guidance in the last
TINY = ["--model-kwargs", "encoder_depth=2", "depth=2", "--img-size", "16", "--patch-size", "8", "--num-gaussians", "8",
        "--max-train-samples", "64", "--max-val-samples", "32", "--batch-size", "16", "--report-to", "none",
        "--recon-epochs", "1", "--dssim-from", "0.5", "--classifier-epochs", "1", "--joint-epochs", "2", "--guidance-epochs", "1",
        "--guidance-every", "2", "--warmup-epochs", "0.5", "--checkpoint-every", "3", "--image-every", "5", "--log-every", "2"]


def train(out: Path, *args: str) -> int:
    return train_gvit.main([*TINY, "--output-dir", str(out), *args])


def make_imagefolder(root: Path, per_class: int = 12, bad: str | None = None) -> Path:
    """Generated photos of three classes: red discs, green bars, blue noise."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(["disc", "bar", "noise"]):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            a = rng.integers(0, 60, (20, 20, 3), dtype=np.uint8)
            yy, xx = np.mgrid[:20, :20]
            if c == 0:
                a[(yy - 10) ** 2 + (xx - 10) ** 2 < 30 + i] = (220, 30, 30)
            elif c == 1:
                a[:, 8 + i % 4 : 12 + i % 4] = (30, 220, 30)
            else:
                a[..., 2] = rng.integers(100, 255, (20, 20))
            Image.fromarray(a).save(root / name / f"{i}.png")
    if bad:
        (root / "disc" / "broken.png").write_bytes(b"not a png")
    return root


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert train(out) == 0
    return out


def test_end_to_end_on_digits_walks_all_phases_and_exports(digits_run):
    metrics = json.loads((digits_run / "metrics.json").read_text())
    phases = [e["phase"] for e in metrics["epochs"]]
    assert phases == ["reconstruction", "classifier", "joint", "guidance"]
    assert metrics["total_steps"] == 16 and metrics["guidance_steps"] == 2  # steps 13..16, every 2nd
    assert {"top1", "top5", "psnr"} <= metrics["final"].keys()
    assert sorted(p.name for p in (digits_run / "checkpoints").iterdir()) == ["step-00000015", "step-00000016"]
    assert yaml.safe_load((digits_run / "config.yaml").read_text())["num_gaussians"] == 8
    assert list((digits_run / "figures").glob("step-*.png"))
    export = digits_run / "export"
    assert {p.name for p in export.iterdir()} == {"config.json", "model.safetensors", "README.md", "train_config.yaml"}
    assert "sklearn-digits" in (export / "README.md").read_text()
    # the export loads with timm and gives the logits of the final checkpoint's weights
    loaded = timm.create_model(f"local-dir:{export}", pretrained=True).eval()
    state = {k.removeprefix("model."): v for k, v in load_file(digits_run / "checkpoints" / "step-00000016" / "model.safetensors").items()}
    model_name = yaml.safe_load((digits_run / "config.yaml").read_text())["model"]  # the built-in run's
    reference = timm.create_model(model_name, num_classes=10, img_size=16, patch_size=8, num_gaussians=8, encoder_depth=2, depth=2)
    reference.load_state_dict(state)
    x = torch.randn(3, 3, 16, 16)
    assert torch.equal(loaded(x), reference.eval()(x))
    assert json.loads((export / "config.json").read_text())["label_names"] == [str(d) for d in range(10)]


def test_a_short_run_learns_far_above_chance(tmp_path):
    """Three classes that colour alone tells apart (chance 33%), 18 validation images: two
    reconstruction epochs raise the PSNR, and after four classifier epochs the top-1 is at least
    75% (94% measured, 100% during the classifier phase). A classifier that learns nothing, or
    Gaussians that do not depend on the image, stay near 33%: 14 of 18 right by chance is p < 0.001."""
    folder = make_imagefolder(tmp_path / "shapes", per_class=24)
    with warnings.catch_warnings():  # the trainer trains the encoder on reconstruction: forward's end-to-end warning is not for it
        warnings.filterwarnings("error", message=".*Gaussians stop being fits of the image")
        assert train(tmp_path / "run", "--dataset", str(folder), "--val-fraction", "0.25", "--recon-epochs", "2", "--classifier-epochs", "4",
                     "--joint-epochs", "1", "--guidance-epochs", "0", "--batch-size", "9", "--base-lr", "0.03", "--clip-grad", "1") == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert json.loads((tmp_path / "run" / "run_info.json").read_text())["val_size"] == 18
    assert metrics["epochs"][1]["psnr"] > metrics["epochs"][0]["psnr"] + 1
    assert metrics["final"]["top1"] >= 75


def test_greyscale_model_trains_on_one_channel_and_exports(tmp_path):
    """--model-kwargs in_chans=1: the images stay one channel from the dataset to the model, the
    reconstruction target is grey RGB, and the export reloads as a greyscale model."""
    from timm.data import create_transform, resolve_model_data_config

    assert train(tmp_path, "--model-kwargs", "encoder_depth=2", "depth=2", "in_chans=1") == 0
    final = json.loads((tmp_path / "metrics.json").read_text())["final"]
    assert np.isfinite([final["top1"], final["psnr"]]).all()
    loaded = timm.create_model(f"local-dir:{tmp_path / 'export'}", pretrained=True).eval()
    assert loaded.in_chans == 1 and loaded.encoder.patch_embed.proj.weight.shape[1] == 1
    config = resolve_model_data_config(loaded)
    assert config["input_size"] == (1, 16, 16) and len(config["mean"]) == 1
    train_data, _, info = load_splits(parse_config([]))
    grey = ImageClassificationDataset(train_data, info.name, info.num_classes, create_transform(**config), in_chans=1)
    assert grey[0][0].shape == (1, 16, 16) and loaded(grey[0][0][None]).shape == (1, 10)


def test_gamma_zero_gives_no_guidance_steps_and_eval_every_skips_epochs(tmp_path):
    assert train(tmp_path, "--gamma", "0", "--eval-every", "3") == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["guidance_steps"] == 0 and metrics["total_steps"] == 16
    assert [e["phase"] for e in metrics["epochs"]][-1] == "joint"
    # validated after the 3rd epoch and the last (4th) one only
    assert ["top1" in e for e in metrics["epochs"]] == [False, False, True, True]
    assert metrics["final"]["top1"] == metrics["epochs"][-1]["top1"]


def test_guidance_step_descends_cross_entropy_and_moves_only_the_encoder():
    torch.manual_seed(0)
    model = timm.create_model("gvit_tiny", num_classes=4, img_size=16, patch_size=8, num_gaussians=8, encoder_depth=2, depth=2)
    # a classifier that depends on the Gaussians, and an encoder with a non-zero residual head
    torch.nn.init.normal_(model.encoder.gaussian_head.fc2.weight, std=0.05)
    images, labels = torch.randn(8, 3, 16, 16), torch.randint(0, 4, (8,))
    targets = (images * 0.2 + 0.5).clamp(0, 1)

    def cross_entropy(m):
        m.eval()
        with torch.no_grad():
            return torch.nn.functional.cross_entropy(m(images), labels).item()

    results = {}
    for gamma in (0.0, 1.0):
        m = timm.create_model("gvit_tiny", num_classes=4, img_size=16, patch_size=8, num_gaussians=8, encoder_depth=2, depth=2)
        m.load_state_dict(model.state_dict())
        before = {k: v.clone() for k, v in m.state_dict().items()}
        m.eval()  # fixed g0, so that before and after see the same Gaussians' starting point
        optimizer = torch.optim.SGD(m.parameters(), lr=0.05)
        losses = guidance_step(m, optimizer, images, targets, labels, gamma=gamma, lambda_perc=0.0, with_dssim=False)
        assert losses["guidance/ce_loss"].item() == pytest.approx(cross_entropy(model), rel=1e-5) and bool(losses["guidance/finite"])
        changed = {k for k, v in m.state_dict().items() if not torch.equal(v, before[k])}
        assert changed and all(k.startswith("encoder.") for k in changed)
        results[gamma] = cross_entropy(m)
    assert results[1.0] < cross_entropy(model)  # descent on the batch's cross-entropy
    assert results[1.0] < results[0.0]  # ... because of the classifier's gradient, not the reconstruction's


def test_schedule_phases_in_steps():
    config_args = ["--dataset", "x", "--recon-epochs", "2", "--dssim-from", "1", "--classifier-epochs", "1",
                   "--joint-epochs", "3", "--guidance-epochs", "1", "--guidance-every", "2"]
    s = Schedule.from_config(parse_config(config_args), steps_per_epoch=10)
    assert (s.recon_steps, s.classifier_steps, s.joint_steps, s.guidance_steps, s.total_steps) == (20, 10, 30, 10, 60)
    assert [s.phase(i) for i in (0, 19, 20, 29, 30, 49, 50, 59)] == ["reconstruction"] * 2 + ["classifier"] * 2 + ["joint"] * 2 + ["guidance"] * 2
    assert not s.dssim_on(9) and s.dssim_on(10)
    assert [i for i in range(60) if s.guidance_due(i)] == [51, 53, 55, 57, 59]
    # gamma 0 is "no guidance", decided once by the schedule: no guidance phase, no guidance steps
    off = Schedule.from_config(parse_config([*config_args, "--gamma", "0"]), steps_per_epoch=10)
    assert off.guidance_steps == 0 and "guidance" not in {off.phase(i) for i in range(60)}
    assert not any(off.guidance_due(i) for i in range(60))
    with pytest.raises(SystemExit, match=r"--guidance-epochs must be <= --joint-epochs \(1.0\), got 2.0"):
        parse_config(["--dataset", "x", "--joint-epochs", "1", "--guidance-epochs", "2"])


def test_config_file_flags_override_and_resolved_config_is_saved(tmp_path):
    (tmp_path / "c.yaml").write_text("gamma: 0.05\nbatch_size: 8\nmodel: gvit_small\n")
    config = parse_config(["--config", str(tmp_path / "c.yaml"), "--batch-size", "4"])
    assert (config.gamma, config.batch_size, config.model) == (0.05, 4, "gvit_small")
    assert config.img_size == 16  # the built-in digits preset fills what neither gives
    (tmp_path / "bad.yaml").write_text("gama: 0.1\n")
    with pytest.raises(SystemExit, match="unknown option"):
        parse_config(["--config", str(tmp_path / "bad.yaml")])


def test_help_explains_every_flag():
    result = subprocess.run([sys.executable, str(ROOT / "train_gvit.py"), "--help"], capture_output=True, text=True, check=True)
    for flag in ("--dataset", "--gamma", "--guidance-every", "--resume", "--push-to-hub", "--init-encoder-from", "--config",
                 "--data-dir", "--epochs", "--lr", "--torchcompile", "--model-ema"):
        assert flag in result.stdout
    assert "(default: 0.1)" in result.stdout
    help_text = " ".join(result.stdout.split())  # argparse wraps lines anywhere
    assert "(default: None)" not in help_text and "224) (default" not in help_text
    assert "built-in run sets some options to other values than the defaults below" in help_text


def test_help_gives_each_default_once_and_names_every_gvit_model():
    from timm_gvit.training.config import TrainConfig, build_parser, gvit_models

    actions = {action.dest: action for action in build_parser()._actions}
    for name in (f.name for f in dataclasses.fields(TrainConfig)):
        assert actions[name].help.count("default") == 1, (name, actions[name].help)
    assert set(gvit_models()) == {"gvit_nano", "gvit_tiny", "gvit_small", "gvit_base"}
    assert all(model in actions["model"].help for model in gvit_models())


def test_the_digits_preset_is_announced_and_explicit_flags_win(capsys):
    config = parse_config(["--model", "gvit_small"])
    # the user's model; the preset's sizes stay, as they fit the 8x8 scans whatever the model
    assert (config.model, config.img_size, config.patch_size, config.num_gaussians, config.output_dir) == (
        "gvit_small", 16, 4, 16, "runs/gvit-digits")
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "built-in run on scikit-learn's 8x8 digits sets --img-size 16 --patch-size 4" in lines[0]
    assert "--model gvit_nano" not in lines[0] and "(yours: --model gvit_small)" in lines[0]
    assert lines[0].endswith("flags and --config win over these") and "--output-dir runs/gvit-digits" in lines[0]
    config = parse_config(["--img-size", "32", "--batch-size", "8", "--epochs", "24"])
    assert (config.model, config.img_size, config.batch_size, config.base_lr) == ("gvit_nano", 32, 8, 8e-3)
    assert "(yours: --img-size 32 --epochs 24 --batch-size 8)" in capsys.readouterr().err
    parse_config(["--dataset", "x"])  # a dataset: no preset, nothing to announce
    assert capsys.readouterr().err == ""
    with pytest.raises(SystemExit):  # a refusal is the only line
        parse_config(["--batch-size", "0"])
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("timm_flags, ours", [
    ("--data-dir x", "--dataset x"), ("-b 8 -j 3", "--batch-size 8 --workers 3"), ("--smoothing 0.1", "--label-smoothing 0.1"),
    ("--model-ema-decay 0.99", "--ema-decay 0.99"), ("--model-ema", "--ema-decay 0.9998"),
    ("--model-ema --model-ema-decay 0.99", "--ema-decay 0.99"), ("--torchcompile", "--compile"),
    ("--torchcompile inductor", "--compile"), ("--output runs/x", "--output-dir runs/x"), ("--opt-betas 0.9 0.99", "--betas 0.9 0.99"),
    ("--crop-pct 0.95", "--eval-crop-pct 0.95"), ("--initial-checkpoint w.pth", "--init-from w.pth"),
    ("--input-key img --target-key y", "--image-column img --label-column y"), ("--log-interval 5", "--log-every 5"),
    ("--lr-base 1e-3", "--base-lr 1e-3"), ("--log-wandb", "--report-to wandb"),
    ("--opt adamw --sched cosine --clip-mode norm --sched-on-updates", ""),  # what this trainer always does
    ("--opt AdamW", ""),
])
def test_timm_train_flags_that_mean_ours_are_taken(timm_flags, ours):
    base = [] if "--data-dir" in timm_flags else ["--dataset", "x"]
    assert parse_config([*base, *timm_flags.split()]) == parse_config(["--dataset", "x", *ours.split()])


def test_timm_epochs_scales_the_paper_schedule_and_lr_sets_the_learning_rate(tmp_path):
    config = parse_config(["--dataset", "x", "--epochs", "100"])  # the paper's 200/50/150 of 400, scaled by 1/4
    lengths = (config.recon_epochs, config.dssim_from, config.classifier_epochs, config.joint_epochs, config.guidance_epochs)
    assert lengths == (50, 37.5, 12.5, 37.5, 12.5) and config.warmup_epochs == 2.5 and config.phase_unit == "epochs"
    assert Schedule.from_config(config, steps_per_epoch=8).total_steps == 800
    assert parse_config(["--dataset", "x", "--epochs", "100", "--warmup-epochs", "5"]).warmup_epochs == 5  # given: kept
    digits = parse_config(["--epochs", "24"])  # the built-in run scales its own 3/5/4 schedule
    assert (digits.recon_epochs, digits.dssim_from, digits.classifier_epochs, digits.joint_epochs, digits.guidance_epochs,
            digits.warmup_epochs) == (6, 4, 10, 8, 2, 1)
    # flags override the file: --epochs replaces a file's phase lengths (and its unit)
    (tmp_path / "c.yaml").write_text("recon_epochs: 3\nphase_unit: steps\nwarmup_epochs: 1\n")
    config = parse_config(["--dataset", "x", "--config", str(tmp_path / "c.yaml"), "--epochs", "100"])
    assert (config.recon_epochs, config.phase_unit, config.warmup_epochs) == (50, "epochs", 1)
    # --lr is the learning rate itself: the trainer's base_lr x global batch / 256 gives it back (one process here)
    config = parse_config(["--dataset", "x", "--lr", "1e-3", "-b", "48", "--grad-accum-steps", "2"])
    assert config.base_lr * 48 * 2 / 256 == pytest.approx(1e-3, rel=1e-12)
    assert parse_config(["--lr", "1e-3"]).base_lr == pytest.approx(1e-3 * 256 / 32)  # the preset's batch of 32


@pytest.mark.parametrize("flags, message", [
    ("--epochs 10 --recon-epochs 3", "--epochs 10 sets --recon-epochs, which is given too: give one of them"),
    ("--epochs 10 --dssim-from 1", "--epochs 10 sets --dssim-from"), ("--epochs 10 --guidance-epochs 1", "sets --guidance-epochs"),
    ("--epochs 10 --phase-unit steps", "--epochs counts epochs: leave out --phase-unit steps"), ("--epochs 0", "--epochs must be > 0"),
    ("--lr 1e-3 --base-lr 1e-4", "--lr 0.001 sets --base-lr, which is given too"),
    ("--lr 1e-3 --lr-base 1e-4", "--lr 0.001 and --lr-base 0.0001 both set --base-lr"), ("--lr 0", "--lr must be > 0"),
    ("--smoothing 0.1 --label-smoothing 0.2", "--smoothing 0.1 sets --label-smoothing"),
    ("--data-dir a --dataset b", "--data-dir a sets --dataset"), ("--output r --output-dir s", "--output r sets --output-dir"),
    ("--model-ema-decay 0.9 --ema-decay 0.9", "sets --ema-decay"), ("--torchcompile --no-compile", "--torchcompile sets --compile"),
    ("--torchcompile eager", "--torchcompile eager: this trainer has only --torchcompile inductor"),
    ("--opt sgd", "--opt sgd: this trainer has only --opt adamw: .*--weight-decay and --betas"),
    ("--sched step", "only --sched cosine: the learning rate follows one cosine schedule"),
    ("--clip-mode agc", "only --clip-mode norm"),
    ("--aa rand-m9-mstd0.5", "--aa is a timm train.py flag that this trainer does not take: .*horizontal flips \\(--hflip\\) only"),
    ("--mixup 0.8 --cutmix 1.0", "--mixup is a timm train.py flag"), ("--reprob 0.25", "--reprob is a timm"),
    ("--no-aug", "--hflip 0"), ("--amp", "--mixed-precision"), ("--amp-dtype bfloat16", "--mixed-precision bf16"),
    ("--drop-path 0.1", "--model-kwargs drop_path_rate=P"), ("--pretrained", "--init-from"), ("--num-classes 10", "the dataset's labels"),
    ("--input-size 3 64 64", "--img-size N"), ("--experiment e", "--output-dir PARENT/NAME"),
    ("--checkpoint-hist 3", "--keep-checkpoints N, which keeps the newest"), ("--device cpu", "accelerate launch"),
    ("--warmup-lr 1e-6", "the warm-up starts at --min-lr"), ("--opt-eps 1e-8", "AdamW"), ("-vb 8", "validation uses --batch-size"),
    ("--seeed 3", "unrecognized argument --seeed: did you mean --seed\\?"),
    ("--lr-warmup 3", "unrecognized argument --lr-warmup: it is not an option of this trainer"),
    ("DATA", "unrecognized argument 'DATA': this trainer takes no positional arguments; the data is --dataset DATA"),
    ("--dataset hfds/imagenet-1k", "hfds/ is a timm dataset type; .*--dataset NAME"),
    ("--dataset hfids/imagenet-1k", "--dataset NAME --streaming"),
])
def test_timm_train_flags_are_refused_with_what_to_use_instead(flags, message):
    with pytest.raises(SystemExit) as refusal:
        parse_config(["--output-dir", "unused", *flags.split()])
    assert str(refusal.value).startswith("train_gvit.py: error: ") and re.search(message, str(refusal.value)), str(refusal.value)


def test_model_kwargs_are_checked_against_the_constructor_and_good_ones_pass():
    from timm_gvit.training.config import model_options

    assert "scale_bound" in model_options() and "num_classes" not in model_options()  # the trainer sets the class count
    # good options pass, a conv stem too (it runs its convolutions while it is built, so the check builds it whole)
    for kwargs in (["encoder_stem=conv"], ["norm_layer=rmsnorm", "in_chans=1"], ["pos_embed=none", "global_pool=avg"]):
        assert parse_config(["--dataset", "x", "--img-size", "32", "--model-kwargs", *kwargs]).model_kwargs


def test_timm_names_in_a_config_file_are_refused_with_ours(tmp_path):
    path = tmp_path / "c.yaml"
    for text, message in [("lr: 1.0e-3\n", r"unknown option\(s\) \['lr'\] \(lr is timm's; a file gives base_lr"),
                          ("smoothing: 0.1\n", "smoothing is timm's name for label_smoothing, the name a file takes"),
                          ("mixup: 0.8\n", "mixup is timm's, not taken here: the paper trains with"),
                          ("gama: 0.1\n", "gama: did you mean gamma\\?")]:
        path.write_text(text)
        with pytest.raises(SystemExit, match=message):
            parse_config(["--config", str(path)])


def test_timm_flags_on_resume_must_keep_the_run_as_it_is(tmp_path):
    from timm_gvit.training.config import save_config

    run = tmp_path / "run"
    run.mkdir()
    save_config(parse_config(["--dataset", "x", "--epochs", "100", "--lr", "1e-3", "-b", "64", "--output-dir", str(run)]), run / "config.yaml")
    again = parse_config(["--output", str(run), "--resume", "latest", "--dataset", "x", "--epochs", "100", "--lr", "1e-3", "-j", "1"])
    assert (again.recon_epochs, again.base_lr, again.workers, again.batch_size) == (50, 4e-3, 1, 64)
    with pytest.raises(SystemExit, match=r"--resume: --recon-epochs 25.0 \(from --epochs 50; the run has 50.0\)"):
        parse_config(["--output-dir", str(run), "--resume", "latest", "--epochs", "50"])
    with pytest.raises(SystemExit, match=r"--resume: --ema-decay 0.9998 \(from --model-ema; the run has None\)"):
        parse_config(["--output-dir", str(run), "--resume", "latest", "--model-ema"])


def test_imagefolder_and_save_to_disk_datasets(tmp_path):
    import datasets

    folder = make_imagefolder(tmp_path / "shapes")
    assert train(tmp_path / "a", "--dataset", str(folder), "--max-train-samples", "32", "--batch-size", "8") == 0
    info = json.loads((tmp_path / "a" / "run_info.json").read_text())
    assert info["class_names"] == ["bar", "disc", "noise"] and info["train_size"] + info["val_size"] == 36
    disk = tmp_path / "disk"
    datasets.load_dataset("imagefolder", data_dir=str(folder)).save_to_disk(str(disk))
    assert train(tmp_path / "b", "--dataset", str(disk), "--batch-size", "8") == 0


def test_run_info_lists_every_machine_the_run_trained_on_in_order(tmp_path):
    """Trainings of one recipe on two CPUs (AVX2, AVX-512) differed by up to 3.5 points of top-1, so a run says what it
    trained on, and a run resumed on another machine names both; what a checkpoint says about it is checked, not trusted."""
    run = tmp_path / "run"
    assert train(run) == 0
    here = {"device": "cpu", "cpu_capability": torch.backends.cpu.get_cpu_capability(), "processes": 1, "torch": torch.__version__}
    assert json.loads((run / "run_info.json").read_text())["hardware"] == [here]
    state_file = max((run / "checkpoints").iterdir()) / "trainer_state.json"
    elsewhere = {"device": "NVIDIA H200", "cpu_capability": "AVX512", "processes": 8, "torch": "2.11.0"}
    # resumed (the finished run exports again) after it trained elsewhere, here, with a checkpoint of an earlier version
    # that has no list, and with a list that is not one
    for saved, listed in (([elsewhere], [elsewhere, here]), ([here], [here]), (None, [here]), ("AVX512", [here]), ([1, here], [here])):
        state = json.loads(state_file.read_text())
        state.pop("hardware")
        state_file.write_text(json.dumps(state if saved is None else {**state, "hardware": saved}))
        assert train_gvit.main(["--output-dir", str(run), "--resume", "latest"]) == 0
        assert json.loads((run / "run_info.json").read_text())["hardware"] == listed


def test_bad_dataset_input_gives_clear_errors(tmp_path):
    import datasets

    folder = make_imagefolder(tmp_path / "shapes", per_class=4)
    with pytest.raises(ValueError, match=r"dataset '.*shapes' has no column 'img'; its columns are \['image', 'label'\]"):
        train(tmp_path / "r1", "--dataset", str(folder), "--image-column", "img")
    with pytest.raises(ValueError, match="has no split 'training'"):
        train(tmp_path / "r2", "--dataset", str(folder), "--train-split", "training")
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    images = [Image.new("RGB", (8, 8))] * 20
    data = datasets.Dataset.from_dict({"image": images, "label": [0, 1] * 9 + [0, 7]}, features=features)
    data.save_to_disk(str(tmp_path / "labels"))
    with pytest.raises(ValueError, match=r"dataset '.*labels', split '.*': (labels \[7\] .* are outside 0\.\.1|.* classes \[2, 3, 4, 5, 6\] have no training image)"):
        train(tmp_path / "r3", "--dataset", str(tmp_path / "labels"), "--num-gaussians", "4", "--val-fraction", "0.5",
              "--max-train-samples", "10", "--batch-size", "4", "--max-val-samples", "10", "--label-column", "label")
    broken = datasets.Dataset.from_dict({"image": [{"bytes": b"garbage", "path": None}] * 8, "label": [0, 1] * 4},
                                        features=datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")}))
    broken.save_to_disk(str(tmp_path / "broken"))
    with pytest.raises(SystemExit, match=r"^train_gvit.py: error: dataset '.*broken', split 'train', item \d+ and the 6 after it are "
                                         r"unreadable images, the first: .*: not a readable image"):
        train(tmp_path / "r4", "--dataset", str(tmp_path / "broken"), "--batch-size", "2")


def test_push_without_credentials_fails_cleanly_and_keeps_the_export(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    status = train(tmp_path / "run", "--push-to-hub", "--hub-model-id", "someone/gvit-test", "--joint-epochs", "1", "--guidance-epochs", "0")
    assert status == 1
    assert "no Hugging Face token" in capsys.readouterr().err
    export = tmp_path / "run" / "export"
    assert (export / "model.safetensors").is_file()
    timm.create_model(f"local-dir:{export}", pretrained=True)


def test_init_encoder_from_another_run(digits_run, tmp_path):
    assert train(tmp_path, "--init-encoder-from", str(digits_run / "export"), "--recon-epochs", "0", "--classifier-epochs", "1",
                 "--joint-epochs", "0", "--guidance-epochs", "0", "--dssim-from", "0") == 0
    source = load_file(digits_run / "export" / "model.safetensors")
    trained = load_file(tmp_path / "export" / "model.safetensors")
    encoder_keys = [k for k in source if k.startswith("encoder.")]
    assert encoder_keys and all(torch.equal(source[k], trained[k]) for k in encoder_keys)  # frozen in the classifier phase
    assert not torch.equal(source["classifier.head.weight"], trained["classifier.head.weight"])
    # the export names the run its encoder came from, not just 'export', and no local path
    origin = f"`{digits_run.name}/export` (`--init-encoder-from`)"
    assert origin in (tmp_path / "export" / "README.md").read_text() and str(digits_run.parent) not in (tmp_path / "export" / "README.md").read_text()
    assert yaml.safe_load((tmp_path / "export" / "train_config.yaml").read_text())["init_encoder_from"] == f"{digits_run.name}/export"


def test_init_from_takes_the_whole_model_of_another_run(digits_run, tmp_path):
    # a joint-phase run from another run's end state: the classifier starts from its weights too
    source = load_file(digits_run / "export" / "model.safetensors")
    model = timm.create_model("gvit_nano", num_classes=10, encoder_depth=2, depth=2, img_size=16, patch_size=8, num_gaussians=8)
    assert load_model_weights(model, digits_run / "export") == len(source)
    assert all(torch.equal(source[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="--init-from .* does not fit"):
        load_model_weights(timm.create_model("gvit_nano", num_classes=3, encoder_depth=2, depth=2, img_size=16, patch_size=8,
                                             num_gaussians=8), digits_run / "export")


def test_distill_from_a_trained_teacher_changes_the_classifier_and_is_on_the_card(digits_run, tmp_path):
    """--distill-from local-dir:EXPORT: the classifier phase learns from the teacher's predictions as well as
    the labels, from the same start and data order as a run without it; the card names the teacher, not its path."""
    start = ["--init-encoder-from", str(digits_run / "export"), "--recon-epochs", "0", "--classifier-epochs", "1", "--joint-epochs", "0",
             "--guidance-epochs", "0", "--dssim-from", "0"]
    assert train(tmp_path / "plain", *start) == 0
    assert train(tmp_path / "taught", *start, "--distill-from", f"local-dir:{digits_run / 'export'}", "--distill-weight", "0.7") == 0
    plain, taught = (load_file(tmp_path / run / "export" / "model.safetensors") for run in ("plain", "taught"))
    assert torch.equal(plain["encoder.patch_embed.proj.weight"], taught["encoder.patch_embed.proj.weight"])  # frozen in both
    assert (plain["classifier.head.weight"] - taught["classifier.head.weight"]).abs().max() > 1e-4  # the teacher's term moved it
    plain_log, taught_log = (json.loads((tmp_path / run / "metrics.json").read_text())["epochs"][-1] for run in ("plain", "taught"))
    assert "train_cls_loss" not in plain_log  # logged: the labels' cross-entropy in both, the optimised loss beside it when taught
    assert abs(taught_log["train_cls_loss"] - taught_log["train_ce_loss"]) > 1e-3
    card = (tmp_path / "taught" / "export" / "README.md").read_text()
    assert f"`local-dir:{digits_run.name}/export`'s predictions" in card and "weight 0.7" in card and str(digits_run.parent) not in card
    public = yaml.safe_load((tmp_path / "taught" / "export" / "train_config.yaml").read_text())
    assert public["distill_from"] == f"local-dir:{digits_run.name}/export"


def test_a_teacher_must_take_the_models_input_and_predict_the_datasets_classes(digits_run):
    teacher = f"local-dir:{digits_run / 'export'}"
    student = timm.create_model("gvit_nano", num_classes=10, encoder_depth=2, depth=2, img_size=16, patch_size=8, num_gaussians=8)
    assert not load_teacher(teacher, student, 10).training
    with pytest.raises(ValueError, match=re.escape("input_size (3, 16, 16) where the model's is (3, 24, 24)")):
        load_teacher(teacher, timm.create_model("gvit_nano", num_classes=10, img_size=24, patch_size=8, num_gaussians=8), 10)
    with pytest.raises(ValueError, match="10 classes where the dataset has 3"):
        load_teacher(teacher, student, 3)
    with pytest.raises(ValueError, match=re.escape("--distill-from local-dir:/nowhere: timm.create_model('local-dir:/nowhere', pretrained=True) failed")):
        load_teacher("local-dir:/nowhere", student, 10)
    for flags, message in ((["--distill-from", teacher, "--distill-weight", "0"], "--distill-weight must be in (0, 1]"),
                           (["--distill-from", teacher, "--budgets", "4,8", "--budget-distill", "0.5"], "--distill-from and --budget-distill 0.5")):
        with pytest.raises(ValueError, match=re.escape(message)):
            parse_config(flags)


def test_publish_dry_run_builds_an_export_from_a_checkpoint(digits_run, tmp_path, capsys):
    out = tmp_path / "export"
    assert publish.main([str(digits_run / "checkpoints" / "step-00000015"), "--hub-model-id", "me/gvit", "--out", str(out), "--dry-run"]) == 0
    assert "dry run" in capsys.readouterr().out
    assert (out / "README.md").read_text().startswith("---") and (out / "model.safetensors").is_file()


def test_persistent_non_finite_losses_are_skipped_then_stop_the_run(tmp_path, capsys):
    with pytest.raises(RuntimeError, match="3 non-finite losses in a row"):
        train(tmp_path, "--base-lr", "1e38", "--warmup-epochs", "0", "--max-nonfinite", "3")
    assert "skipped for non-finite losses since the last report" in capsys.readouterr().out


def test_sample_limits_draw_from_every_class_of_a_sorted_split(tmp_path):
    make_imagefolder(tmp_path / "shapes" / "train", per_class=12)  # imagefolder splits come sorted by class
    make_imagefolder(tmp_path / "shapes" / "val", per_class=6)
    config = parse_config(["--dataset", str(tmp_path / "shapes"), "--max-train-samples", "9", "--max-val-samples", "6"])
    train_split, val_split, info = load_splits(config)
    assert len(train_split) == 9 and len(val_split) == 6 and info.num_classes == 3
    assert len(set(train_split.labels())) == 3 and len(set(val_split.labels())) > 1


# ------------------------------------------------------------------------------------------------
# Crash safety and resume (README "What survives a crash"). SHORT: 10 steps of 4 per epoch, with the
# phase changing in the middle of epochs 0 and 1 and a partial last epoch; two loader workers and an
# EMA, so that resume has to restore every kind of state. A narrower model than TINY's keeps the runs short.
SHORT = [*TINY, "--model-kwargs", "encoder_depth=1", "depth=1", "encoder_embed_dim=48", "embed_dim=48", "encoder_num_heads=2",
         "num_heads=2", "--phase-unit", "steps", "--recon-epochs", "3", "--dssim-from", "1", "--classifier-epochs", "3",
         "--joint-epochs", "4", "--guidance-epochs", "2", "--guidance-every", "1", "--warmup-epochs", "1",
         "--workers", "2", "--ema-decay", "0.9"]


@contextlib.contextmanager
def one_thread():
    """Runs to compare bit for bit use one thread count, and one thread makes these tiny models
    several times faster on a busy machine (as do the subprocesses' OMP_NUM_THREADS=1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def train_short(*args: str) -> int:
    with one_thread():
        return train_gvit.main([*SHORT, *args])


def resume(run: Path, *args: str) -> int:
    """Continue a run with no flags but its folder (and ``args``): the rest comes from its config.yaml."""
    with one_thread():
        return train_gvit.main(["--output-dir", str(run), "--resume", "latest", *args])


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    """The uninterrupted run the interrupted ones must reproduce bit for bit; every checkpoint kept."""
    out = tmp_path_factory.mktemp("short")
    assert train_short("--output-dir", str(out), "--checkpoint-every", "3", "--keep-checkpoints", "0",
                       "--report-to", "tensorboard", "--log-every", "1") == 0
    return out


def assert_same_run(run: Path, reference: Path):
    assert json.loads((run / "metrics.json").read_text()) == json.loads((reference / "metrics.json").read_text())
    a, b = load_file(run / "export" / "model.safetensors"), load_file(reference / "export" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class RunsOnUnpickle:
    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return open, (str(self.path), "w")


def start_paused(point: str, *args: str) -> subprocess.Popen:
    """train_gvit.py in a subprocess, returned once it waits at the pause point ``point``."""
    env = {**os.environ, "GVIT_PAUSE_AT": point, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(ROOT / "train_gvit.py"), *args], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    output = []
    for line in proc.stderr:
        output.append(line)
        if f"paused at {point}" in line:
            return proc
    proc.wait()
    raise AssertionError("".join(output)[-3000:])


def run_until_paused(point: str, *args: str) -> None:
    """Start train_gvit.py with GVIT_PAUSE_AT=point, wait until it pauses there, then SIGKILL it."""
    proc = start_paused(point, *args)
    proc.kill()
    proc.wait()


def test_kills_in_the_epoch_end_resave_and_before_the_metrics_write_lose_nothing(short_run, tmp_path):
    run = tmp_path / "run"
    args = [*SHORT, "--report-to", "none", "--checkpoint-every", "4", "--keep-checkpoints", "1", "--output-dir", str(run)]
    # 1. killed while the end-of-epoch save replaces step 4, which --checkpoint-every saved moments before
    run_until_paused("checkpoint-swap", *args)
    assert not (run / "checkpoints" / "step-00000004").exists()  # the old copy set aside, the new one not renamed in yet
    assert publish.main([str(run), "--hub-model-id", "me/gvit", "--out", str(tmp_path / "published"), "--dry-run"]) == 0
    # 2. resumed with no flags but the run folder; killed after epoch 1's checkpoint, before its metrics row is written
    run_until_paused("before-metrics", "--output-dir", str(run), "--resume", "latest")
    assert [e["epoch"] for e in json.loads((run / "metrics.json").read_text())["epochs"]] == [0]
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-00000008"]
    # 3. a torn metrics.json does not matter either: the history lives in the checkpoints
    (run / "metrics.json").write_text('{"epochs": [{"epo')
    assert resume(run) == 0
    assert_same_run(run, short_run)


def test_resume_mid_epoch_is_bit_exact_and_skips_an_incomplete_checkpoint(short_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(short_run, run, ignore=shutil.ignore_patterns("export", "logs", "figures", "metrics.json"))
    root = run / "checkpoints"
    for folder in root.iterdir():
        if int(folder.name.removeprefix("step-")) > 6:
            shutil.rmtree(folder)
    # a newer checkpoint that lost the end of a file (a disk filled up, a copy cut short)
    shutil.copytree(root / "step-00000006", root / "step-00000007")
    (root / "step-00000007" / "model.safetensors").write_bytes(b"\0" * 100)
    # nothing in a checkpoint is unpickled: pickles planted under the names Accelerate's checkpoints use never run
    assert {p.suffix for p in (root / "step-00000006").iterdir()} == {".json", ".safetensors"}
    marker = tmp_path / "pickle-ran"
    for name in ("random_states_0.pkl", "custom_checkpoint_0.pkl", "optimizer.bin", "scheduler.bin", "pytorch_model.bin"):
        (root / "step-00000006" / name).write_bytes(pickle.dumps(RunsOnUnpickle(marker)))
    pickle.loads((root / "step-00000006" / "optimizer.bin").read_bytes()).close()  # the payload works when unpickled
    assert marker.exists()
    marker.unlink()
    assert resume(run, "--workers", "0") == 0  # from step 6 (epoch 1, classifier phase); augmentation does not depend on the workers
    printed = capsys.readouterr()
    assert "skipping incomplete checkpoint" in printed.err
    assert not marker.exists()
    assert_same_run(run, short_run)
    # each epoch's training rate, as the GPU device check reads it from the trainer's output (epochs 1 and 2 ran here)
    from benchmarks.device_check import trainer_summary

    rates = {e["epoch"]: e for e in trainer_summary(printed.out + printed.err, run)["epochs"] if "first_batch_s" in e}
    assert sorted(rates) == [1, 2] and all(e["images_per_s_after_first_batch"] > 0 and e["first_batch_s"] >= 0 for e in rates.values())


def test_epoch_training_metrics_average_over_the_batches_that_made_them(short_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next((short_run / "logs").rglob("events.out.tfevents*")))).Reload()
    logged = {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in ("rec_loss", "ce_loss", "train_acc")}
    epochs = json.loads((short_run / "metrics.json").read_text())["epochs"]
    assert [e["phase"] for e in epochs] == ["classifier", "joint", "guidance"]
    for record, steps in zip(epochs, ([1, 2, 3, 4], [5, 6, 7, 8], [9, 10]), strict=True):
        for tag, by_step in logged.items():
            values = [by_step[s] for s in steps if s in by_step]
            key = tag if tag.startswith("train") else f"train_{tag}"
            assert record[key] == pytest.approx(np.mean(values), rel=1e-5) if values else key not in record


def test_resume_takes_the_run_config_and_refuses_changes_that_break_it(short_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(short_run, run, ignore=shutil.ignore_patterns("export", "logs", "figures"))
    saved = (run / "config.yaml").read_text()
    for flags, message in [(["--batch-size", "8"], r"--batch-size 8 \(the run has 16\)"),
                           (["--model-kwargs", "depth=3"], r"--model-kwargs \{'depth': 3\}"),
                           (["--joint-epochs", "6"], r"--joint-epochs 6.0 \(the run has 4.0\)"),
                           (["--dataset", "other"], "--dataset other")]:
        with pytest.raises(SystemExit, match=message + ".*cannot change in the middle"):
            train_gvit.main(["--output-dir", str(run), "--resume", "latest", *flags])
    assert (run / "config.yaml").read_text() == saved
    config = parse_config(["--output-dir", str(run), "--resume", "latest", "--keep-checkpoints", "5", "--workers", "0", "--batch-size", "16"])
    assert (config.batch_size, config.num_gaussians, config.keep_checkpoints, config.workers, config.ema_decay) == (16, 8, 5, 0, 0.9)
    with pytest.raises(SystemExit, match="holds a run already"):  # a new run would prune the old one's checkpoints
        train_gvit.main([*SHORT, "--output-dir", str(run)])
    with pytest.raises(SystemExit, match=r"newer checkpoints \['step-00000004', .*'step-00000010'\]"):  # two histories in one run
        train_gvit.main(["--resume", str(run / "checkpoints" / "step-00000003")])
    assert (run / "config.yaml").read_text() == saved
    with pytest.raises(SystemExit, match=r"--resume: no such file: .*nothing.config\.yaml"):
        parse_config(["--output-dir", str(tmp_path / "nothing"), "--resume", "latest"])


def test_resume_accepts_another_path_to_the_same_init_folder(short_run, tmp_path):
    """A run started from a worktree resumes from another one whose folders link to the same place."""
    run = tmp_path / "run"
    shutil.copytree(short_run, run, ignore=shutil.ignore_patterns("export", "logs", "figures"))
    (tmp_path / "weights").mkdir()
    (tmp_path / "other").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "weights")
    with open(run / "config.yaml", "a") as f:
        f.write(f"init_from: {tmp_path / 'weights'}\n")
    resume = ["--output-dir", str(run), "--resume", "latest", "--init-from"]
    assert parse_config([*resume, str(tmp_path / "link")]).init_from == str(tmp_path / "link")
    with pytest.raises(SystemExit, match=r"--init-from .*other \(the run has .*weights\)"):
        parse_config([*resume, str(tmp_path / "other")])
    with pytest.raises(SystemExit, match=r"--init-from .*gone \(the run has .*weights\)"):  # a missing path is never the same
        parse_config([*resume, str(tmp_path / "gone")])


def test_config_file_values_are_checked_like_flags(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("base_lr: 1e-3\nbetas: [0.9, 0.99]\nphase_unit: steps\nmodel_kwargs: {depth: 2}\n")  # YAML reads 1e-3 as a string
    config = parse_config(["--config", str(path)])
    assert (config.base_lr, config.betas, config.phase_unit, config.model_kwargs) == (1e-3, (0.9, 0.99), "steps", {"depth": 2})
    for text, message in [("phase_unit: weeks\n", "phase_unit must be one of epochs, steps, got 'weeks'"),
                          ("report_to: mlflow\n", "report_to must be one of tensorboard, wandb, none"),
                          ("batch_size: 8.5\n", "batch_size must be an integer, got 8.5"),
                          ("base_lr: fast\n", "base_lr must be a number, got 'fast'"),
                          ("hflip: yes\n", "hflip must be a number, got True"),
                          ("batch_size: [1\nseed: 2\n", "not valid YAML.*c\\.yaml\", line 2"),
                          ("- 1\n", "expected a mapping")]:
        path.write_text(text)
        with pytest.raises(SystemExit, match=r"(?s)--config \S*c\.yaml: " + message):
            parse_config(["--config", str(path)])


@pytest.mark.parametrize("flags, message", [
    ("--checkpoint-every 0", "--checkpoint-every must be >= 1, got 0"), ("--log-every 0", "--log-every must be >= 1"),
    ("--image-every 0", "--image-every must be >= 1"), ("--grad-accum-steps 0", "--grad-accum-steps must be >= 1"),
    ("--eval-every -1", "--eval-every must be >= 1"), ("--batch-size 0", "--batch-size must be >= 1"),
    ("--max-train-samples 0", "--max-train-samples must be >= 1"), ("--max-train-samples -5", "--max-train-samples must be >= 1"),
    ("--keep-checkpoints -1", "--keep-checkpoints must be >= 0"), ("--val-fraction 1.5", "--val-fraction must be between 0 and 1"),
    ("--push-to-hub", "--push-to-hub needs --hub-model-id ORG/NAME"),
    ("--model local-dir:runs/x/export", "does not load weights.*--init-encoder-from runs/x/export"),
    ("--model gvit_huge", "no such timm model; GViT models: gvit_base, gvit_nano"),
    ("--model vit_small_patch16_224", "--model vit_small_patch16_224: not a GViT model; .*gvit_base, gvit_nano, gvit_small, gvit_tiny"),
    ("--model-kwargs scale_bond=0.5", "--model-kwargs scale_bond: gvit_tiny has no such option; did you mean scale_bound\\?"),
    ("--model-kwargs scale_bound=-1", "--model gvit_tiny cannot be built with scale_bound=-1: ValueError: scale_bound must be"),
    ("--img-size 30 --patch-size 4", "cannot be built with img_size=30 patch_size=4: .*not a multiple of patch_size 4"),
    ("--model-kwargs gaussian_init=random", "gaussian_init must be one of"),
])
def test_bad_numbers_and_models_are_refused_before_any_data_loads(tmp_path, flags, message):
    with pytest.raises(SystemExit, match=message):  # not the missing dataset's error: that would come later
        train_gvit.main(["--dataset", str(tmp_path / "missing"), "--output-dir", str(tmp_path / "run"), *flags.split()])
    assert not (tmp_path / "run").exists()  # no config.yaml written for a run that never validated


def test_16_bit_pngs_keep_their_grey_levels(tmp_path):
    from timm_gvit.explain import read_image

    levels = np.linspace(0, 65535, 64).astype(np.uint16).reshape(8, 8)
    for name in ("a", "b"):
        (tmp_path / "greys" / name).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(levels).save(tmp_path / "greys" / name / f"{i}.png")
    expected = np.round(levels / 257).astype(np.uint8)
    assert np.array_equal(np.asarray(to_rgb(Image.open(tmp_path / "greys" / "a" / "0.png")))[..., 1], expected)
    train, _, info = load_splits(parse_config(["--dataset", str(tmp_path / "greys"), "--val-fraction", "0.25"]))
    image, _, _ = ImageClassificationDataset(train, info.name, info.num_classes)[0]
    assert image.mode == "RGB" and np.array_equal(np.asarray(image)[..., 0], expected)  # PIL's convert: 255 from level 1 on
    assert np.array_equal(np.asarray(read_image(tmp_path / "greys" / "b" / "1.png"))[..., 2], expected)


def test_one_class_imagefolder_is_refused_with_the_reason(tmp_path):
    make_imagefolder(tmp_path / "shapes", per_class=2)
    shutil.rmtree(tmp_path / "shapes" / "bar")
    shutil.rmtree(tmp_path / "shapes" / "noise")
    with pytest.raises(ValueError, match="takes its labels from its class sub-folders, and needs at least two"):
        load_splits(parse_config(["--dataset", str(tmp_path / "shapes")]))


def test_corrupt_safetensors_errors_name_the_file(tmp_path):
    bad = tmp_path / "weights.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(ValueError, match=r"weights\.safetensors: not a readable safetensors file"):
        read_safetensors(bad)
    model = timm.create_model("gvit_tiny", num_classes=4, img_size=16, patch_size=8, num_gaussians=8, encoder_depth=2, depth=2)
    with pytest.raises(ValueError, match=r"weights\.safetensors: not a readable safetensors file"):
        load_encoder_weights(model, bad)


@pytest.mark.parametrize("case, message", [
    ("missing", "no such image file"), ("directory", "is not a file"), ("text", "not a readable image"),
    ("truncated", "not a readable image"), ("class -1", "--class must be a class index >= 0, got -1"),
    ("random", "has no trained weights here.*--random-weights"), ("corrupt weights", r"w\.safetensors: not a readable safetensors file"),
    ("class 10", r"--class 10: the model has 10 classes \(0\.\.9\)"),
])
def test_explain_refuses_bad_input_with_a_message(tmp_path, capsys, case, message):
    from timm_gvit.explain import main

    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(photo)
    args = {"missing": [str(tmp_path / "nope.png")], "directory": [str(tmp_path)], "text": [str(tmp_path / "t.png")],
            "truncated": [str(tmp_path / "cut.png")], "class -1": [str(photo), "--class", "-1"],
            "random": [str(photo), "--model", "gvit_nano"], "corrupt weights": [str(photo), "--checkpoint", str(tmp_path / "w.safetensors")],
            "class 10": [str(photo), "--class", "10"]}[case]
    (tmp_path / "t.png").write_text("not an image")
    (tmp_path / "cut.png").write_bytes(photo.read_bytes()[:200])
    (tmp_path / "w.safetensors").write_bytes(b"junk")
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--out", str(tmp_path / "fig.png")])
    assert exit_info.value.code == 2
    assert __import__("re").search(message, capsys.readouterr().err)
    assert not (tmp_path / "fig.png").exists()


@pytest.mark.parametrize("size", [(16, 16), (7, 9)])
def test_dssim_with_its_window_made_on_the_device_is_pytorch_msssims(size):
    from pytorch_msssim import ssim

    from timm_gvit.training.losses import dssim

    a, b = torch.rand(2, 3, *size), torch.rand(2, 3, *size)
    window = max(min(11, min(size) // 2 * 2 - 1), 1)
    assert torch.equal(dssim(a, b), (1 - ssim(a, b, data_range=1.0, size_average=True, win_size=window)) / 2)
