"""train_gvit.py and its pieces, on bundled (digits) and generated data."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

import timm_gvit  # noqa: F401
from timm_gvit.training.config import parse_config
from timm_gvit.training.guidance import guidance_step
from timm_gvit.training.schedule import Schedule

import train_gvit
from hub import publish

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
    reference = timm.create_model("gvit_tiny", num_classes=10, img_size=16, patch_size=8, num_gaussians=8, encoder_depth=2, depth=2)
    reference.load_state_dict(state)
    x = torch.randn(3, 3, 16, 16)
    assert torch.equal(loaded(x), reference.eval()(x))
    assert json.loads((export / "config.json").read_text())["label_names"] == [str(d) for d in range(10)]


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
        assert losses["guidance/ce_loss"] == pytest.approx(cross_entropy(model), rel=1e-5)
        changed = {k for k, v in m.state_dict().items() if not torch.equal(v, before[k])}
        assert changed and all(k.startswith("encoder.") for k in changed)
        results[gamma] = cross_entropy(m)
    assert results[1.0] < cross_entropy(model)  # descent on the batch's cross-entropy
    assert results[1.0] < results[0.0]  # ... because of the classifier's gradient, not the reconstruction's


def test_schedule_phases_in_steps():
    config = parse_config(["--dataset", "x", "--recon-epochs", "2", "--dssim-from", "1", "--classifier-epochs", "1",
                           "--joint-epochs", "3", "--guidance-epochs", "1", "--guidance-every", "2"])
    s = Schedule.from_config(config, steps_per_epoch=10)
    assert (s.recon_steps, s.classifier_steps, s.joint_steps, s.guidance_steps, s.total_steps) == (20, 10, 30, 10, 60)
    assert [s.phase(i) for i in (0, 19, 20, 29, 30, 49, 50, 59)] == ["reconstruction"] * 2 + ["classifier"] * 2 + ["joint"] * 2 + ["guidance"] * 2
    assert not s.dssim_on(9) and s.dssim_on(10)
    assert [i for i in range(60) if s.guidance_due(i)] == [51, 53, 55, 57, 59]
    with pytest.raises(ValueError, match="cannot exceed"):
        Schedule.from_config(parse_config(["--dataset", "x", "--joint-epochs", "1", "--guidance-epochs", "2"]), 10)


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
    for flag in ("--dataset", "--gamma", "--guidance-every", "--resume", "--push-to-hub", "--init-encoder-from", "--config"):
        assert flag in result.stdout
    assert "(default: 0.1)" in result.stdout


def test_imagefolder_and_save_to_disk_datasets(tmp_path):
    import datasets

    folder = make_imagefolder(tmp_path / "shapes")
    assert train(tmp_path / "a", "--dataset", str(folder), "--max-train-samples", "32", "--batch-size", "8") == 0
    info = json.loads((tmp_path / "a" / "run_info.json").read_text())
    assert info["class_names"] == ["bar", "disc", "noise"] and info["train_size"] + info["val_size"] == 36
    disk = tmp_path / "disk"
    datasets.load_dataset("imagefolder", data_dir=str(folder)).save_to_disk(str(disk))
    assert train(tmp_path / "b", "--dataset", str(disk), "--batch-size", "8") == 0


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
    with pytest.raises(ValueError, match=r"dataset '.*labels', item \d+: label 7 .* not an integer in 0\.\.1"):
        train(tmp_path / "r3", "--dataset", str(tmp_path / "labels"), "--num-gaussians", "4", "--val-fraction", "0.5",
              "--max-train-samples", "10", "--batch-size", "4", "--max-val-samples", "10", "--label-column", "label")
    broken = datasets.Dataset.from_dict({"image": [{"bytes": b"garbage", "path": None}] * 8, "label": [0, 1] * 4},
                                        features=datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")}))
    broken.save_to_disk(str(tmp_path / "broken"))
    with pytest.raises(ValueError, match=r"dataset '.*broken', item \d+: cannot read the image in column 'image'"):
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


def test_publish_dry_run_builds_an_export_from_a_checkpoint(digits_run, tmp_path, capsys):
    out = tmp_path / "export"
    assert publish.main([str(digits_run / "checkpoints" / "step-00000015"), "--hub-model-id", "me/gvit", "--out", str(out), "--dry-run"]) == 0
    assert "dry run" in capsys.readouterr().out
    assert (out / "README.md").read_text().startswith("---") and (out / "model.safetensors").is_file()


def test_killed_run_resumes_to_the_same_step_count(tmp_path):
    """SIGKILL after the first checkpoint, then --resume latest: same steps, phases and schedule."""
    args = [sys.executable, str(ROOT / "train_gvit.py"), *TINY, "--checkpoint-every", "2"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    subprocess.run([*args, "--output-dir", str(tmp_path / "full")], check=True, env=env, capture_output=True)
    killed = subprocess.Popen([*args, "--output-dir", str(tmp_path / "cut")], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not list((tmp_path / "cut" / "checkpoints").glob("step-0000000[4-9]")) and killed.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    subprocess.run([*args, "--output-dir", str(tmp_path / "cut"), "--resume", "latest"], check=True, env=env, capture_output=True)
    full = json.loads((tmp_path / "full" / "metrics.json").read_text())
    cut = json.loads((tmp_path / "cut" / "metrics.json").read_text())
    assert cut["total_steps"] == full["total_steps"] == 16
    assert cut["guidance_steps"] == full["guidance_steps"]
    assert [(e["epoch"], e["step"], e["phase"]) for e in cut["epochs"]] == [(e["epoch"], e["step"], e["phase"]) for e in full["epochs"]]


def test_persistent_non_finite_losses_are_skipped_then_stop_the_run(tmp_path, capsys):
    with pytest.raises(RuntimeError, match="3 non-finite losses in a row"):
        train(tmp_path, "--base-lr", "1e38", "--warmup-epochs", "0", "--max-nonfinite", "3")
    assert "non-finite loss, step skipped (1 in a row)" in capsys.readouterr().out


def test_sample_limits_draw_from_every_class_of_a_sorted_split(tmp_path):
    from timm_gvit.training.data import load_splits

    make_imagefolder(tmp_path / "shapes" / "train", per_class=12)  # imagefolder splits come sorted by class
    make_imagefolder(tmp_path / "shapes" / "val", per_class=6)
    config = parse_config(["--dataset", str(tmp_path / "shapes"), "--max-train-samples", "9", "--max-val-samples", "6"])
    train_split, val_split, info = load_splits(config)
    assert len(train_split) == 9 and len(val_split) == 6 and info.num_classes == 3
    assert len(set(train_split["label"])) == 3 and len(set(val_split["label"])) > 1
