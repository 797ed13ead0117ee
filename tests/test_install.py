"""``pip install .`` carries everything: the wheel, installed in a fresh virtual environment with
no checkout in sight, gives the models, the trainer (``gvit-train``), Hub publishing
(``gvit-publish``) and ``gvit-fit``, and an export of its own run loads with timm.

The fresh environment takes the dependencies (torch, timm, datasets, ...) from the test's own
environment through a ``.pth`` line naming its site-packages folder. Python reads ``.pth`` files
only in site folders, not in folders that a ``.pth`` line adds, so the editable install of
timm-gvit there (an ``__editable__*.pth`` that installs a finder for the checkout) stays off.
"""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# a gvit_nano at 16 px on the digits: two reconstruction steps, then one classifier and one guided joint step
RUN = ["--model", "gvit_nano", "--img-size", "16", "--patch-size", "4", "--num-gaussians", "8", "--phase-unit", "steps",
       "--recon-epochs", "2", "--classifier-epochs", "1", "--joint-epochs", "1", "--guidance-epochs", "1", "--batch-size", "16",
       "--max-train-samples", "64", "--max-val-samples", "32", "--report-to", "none", "--workers", "0"]

# run in the fresh environment: where everything comes from, the export loads, and the commands' own checks
CHECK = textwrap.dedent("""
    import contextlib, importlib.util, io, json, sys
    import timm, torch
    import timm_gvit, timm_gvit.train, timm_gvit.hub.publish
    from timm_gvit import fitting
    from timm_gvit.hub import publish
    from timm_gvit.rendering import cpu

    run = sys.argv[1]
    model = timm.create_model(f"local-dir:{run}/export", pretrained=True).eval()
    with torch.no_grad():
        logits = model(torch.zeros(1, *model.pretrained_cfg["input_size"]))
    help_text = io.StringIO()
    with contextlib.redirect_stdout(help_text), contextlib.suppress(SystemExit):
        fitting.main(["--help"])
    published = publish.main([run, "--hub-model-id", "me/gvit-wheel", "--out", f"{run}/published", "--dry-run"])
    print(json.dumps({
        "files": [m.__file__ for m in (timm_gvit, timm_gvit.train, timm_gvit.hub.publish)],
        "kernel_source": str(cpu._SOURCE), "kernel_source_exists": cpu._SOURCE.is_file(),
        "checkout_modules": [name for name in ("train_gvit", "hub") if importlib.util.find_spec(name) is not None],
        "logits": list(logits.shape), "finite": bool(torch.isfinite(logits).all()),
        "fit_usage": help_text.getvalue().splitlines()[0], "published": published,
    }))
""")


def test_the_wheel_installs_the_trainer_and_hub_publishing_and_runs_outside_the_checkout(tmp_path):
    # the wheel, built from the files a source distribution would hold (not the checkout itself:
    # setuptools' build/ folder there could carry files that no longer exist)
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        (source / name).write_bytes((ROOT / name).read_bytes())
    shutil.copytree(ROOT / "timm_gvit", source / "timm_gvit", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "--no-index", "-q",
                    "-w", str(tmp_path / "dist")], check=True, cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").glob("timm_gvit-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names} == {"timm_gvit", wheel.name.rsplit("-", 3)[0] + ".dist-info"}  # no top-level hub
    for packaged in ("timm_gvit/train.py", "timm_gvit/hub/publish.py", "timm_gvit/hub/model_card_template.md",
                     "timm_gvit/training/config.py", "timm_gvit/rendering/csrc/rasterize_cpu.cpp"):
        assert packaged in names

    # a fresh environment with the wheel, then the dependencies of this one on its path
    env_dir = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True)
    python, bin_dir = env_dir / "bin" / "python", env_dir / "bin"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q", str(wheel)],
                   check=True, cwd=tmp_path)
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], capture_output=True,
                          text=True, check=True).stdout.strip()
    ours = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    Path(site, "dependencies.pth").write_text("".join(f"{path}\n" for path in ours))

    work = tmp_path / "work"  # outside the checkout
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    # a private build of the CPU kernel, from the wheel's copy of its source (with TIMM_GVIT_REQUIRE_CPU_KERNEL, as CI
    # sets, a kernel that does not build fails the run); the user's cache, keyed by name, stays the checkout's
    env.update(OMP_NUM_THREADS="1", TORCH_EXTENSIONS_DIR=str(tmp_path / "torch_extensions"), HF_HUB_OFFLINE="1")

    def command(*args: str) -> subprocess.CompletedProcess:
        result = subprocess.run([*args], capture_output=True, text=True, cwd=work, env=env, timeout=300)
        assert result.returncode == 0, f"{args[0]}: {result.stderr[-3000:]}"
        return result

    assert {"gvit-train", "gvit-publish", "gvit-fit"} <= {p.name for p in bin_dir.iterdir()}
    usage = command(str(bin_dir / "gvit-train"), "--help").stdout
    assert usage.startswith("usage: gvit-train")  # the name the user typed, not the checkout's train_gvit.py
    for flag in ("--dataset", "--gamma", "--resume", "--push-to-hub", "--config"):
        assert flag in usage
    assert command(str(bin_dir / "gvit-publish"), "--help").stdout.startswith("usage: gvit-publish")

    result = command(str(bin_dir / "gvit-train"), *RUN, "--output-dir", "run")
    assert "exported run/export" in result.stdout
    assert (work / "run" / "export" / "README.md").read_text().count("gvit_nano") > 0  # the card, from the packaged template

    check = json.loads(command(str(python), "-c", CHECK, str(work / "run")).stdout.strip().splitlines()[-1])
    installed = str(Path(site).resolve())
    assert all(str(Path(f).resolve()).startswith(installed) for f in check["files"]), check["files"]
    assert str(Path(check["kernel_source"]).resolve()).startswith(installed) and check["kernel_source_exists"]
    assert check["checkout_modules"] == []  # neither train_gvit.py nor a top-level hub package in sight
    assert check["logits"] == [1, 10] and check["finite"]
    assert check["fit_usage"].startswith("usage: gvit-fit")
    assert check["published"] == 0 and (work / "run" / "published" / "model.safetensors").is_file()
