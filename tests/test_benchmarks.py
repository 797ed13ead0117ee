"""The benchmark and device-check scripts, run for real on the CPU: their plans, checks and
bookkeeping (the GPU numbers themselves come from a lent GPU machine)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import device_check, train_step
from benchmarks.render import gsplat_camera_scene
from timm_gvit.rendering.projection import to_pixel_space

from conftest import random_gaussians

ROOT = Path(__file__).resolve().parent.parent


def _dry_run(*args):
    env = {**os.environ, "PYTHON": sys.executable}
    env.pop("OUT", None)
    return subprocess.run(["bash", str(ROOT / "benchmarks" / "device_check.sh"), "--dry-run", *args],
                          env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture
def wheels(tmp_path):
    """A folder with a file named as each pinned wheel (the dry run checks names, not contents)."""
    for name, version in device_check.wheel_requirements():
        (tmp_path / f"{name.replace('-', '_')}-{version}-py3-none-any.whl").write_bytes(b"")
    return tmp_path


def test_device_check_dry_run_passes_with_everything_present(wheels):
    """The plan names every step, and the scripts accept the flags it will pass them (with and
    without --quick)."""
    result = _dry_run("--wheels", str(wheels))
    assert result.returncode == 0, result.stdout + result.stderr
    for step in ("wheels", "build", "pytest", "render", "train_step", "train_gvit", "report"):
        assert f"\n  {step} " in result.stdout
    assert "benchmarks/render.py --backends gsplat gsplat-direct" in result.stdout
    assert "dry run: everything the run needs is here" in result.stdout


def test_device_check_dry_run_names_what_is_missing(wheels):
    gsplat = next(wheels.glob("gsplat-*.whl"))
    gsplat.rename(wheels / "gsplat-1.6.0-py3-none-any.whl")
    (wheels / "dill-0.3.8-py3-none-any.whl").write_bytes(b"")
    result = _dry_run("--wheels", str(wheels))
    assert result.returncode == 1
    assert "MISSING  no wheel of gsplat==1.5.3" in result.stdout
    assert "MISSING  2 wheels of dill" in result.stdout and "keep only 0.4.1" in result.stdout


def test_pinned_gsplat_wheel_matches_the_package_pin():
    from timm_gvit.rendering import GSPLAT_VERSIONS
    from packaging.specifiers import SpecifierSet

    pins = dict(device_check.wheel_requirements())
    assert SpecifierSet(GSPLAT_VERSIONS).contains(pins["gsplat"])
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'"gsplat{GSPLAT_VERSIONS}"' in pyproject


def test_saved_gsplat_build_restores_only_on_a_matching_machine(tmp_path, monkeypatch):
    """Save splits the library into parts of at most 15 MiB; restore checks the manifest and
    points gsplat at the library through gsplat.csrc (what its loader imports before building)."""
    for name in ("SITE", "EXTENSIONS", "RESTORED"):
        monkeypatch.setattr(device_check, name, tmp_path / name.lower())
    library = device_check.EXTENSIONS / "py312_cu130" / "gsplat_cuda" / "gsplat_cuda.so"
    library.parent.mkdir(parents=True)
    library.write_bytes(os.urandom(20 * 2**20))  # incompressible: two parts
    (device_check.SITE / "gsplat").mkdir(parents=True)
    manifest = {"gsplat": "1.5.3", "torch": "2.11.0+cu130", "cuda": "13.0", "arch": "9.0", "python": "3.12"}
    out = tmp_path / "out"
    out.mkdir()
    names = device_check.save_build(manifest, out)
    assert names == ["gsplat-build.tgz.part-00", "gsplat-build.tgz.part-01"]
    assert all((out / n).stat().st_size <= 15 * 2**20 for n in names)
    assert "arch" in device_check.restore_build(out, {**manifest, "arch": "10.0"})
    assert not (device_check.SITE / "gsplat" / "csrc.py").exists()
    assert device_check.restore_build(out, manifest) is None
    assert (device_check.RESTORED / "gsplat_cuda.so").read_bytes() == library.read_bytes()
    assert str(device_check.RESTORED / "gsplat_cuda.so") in (device_check.SITE / "gsplat" / "csrc.py").read_text()
    assert "no gsplat-build.tgz.part-*" in device_check.restore_build(tmp_path / "empty", manifest)


def test_pytest_summary_and_targets(tmp_path):
    junit = tmp_path / "junit.xml"
    junit.write_text('<testsuites><testsuite tests="3" failures="1" errors="0" skipped="1">'
                     '<testcase name="a"/><testcase name="b"><failure message="boom"/></testcase>'
                     '<testcase name="c"><skipped message="no GPU"/></testcase></testsuite></testsuites>')
    summary = device_check.pytest_summary(junit)
    assert summary["tests"] == 3 and summary["failures"] == 1 and summary["skipped"] == 1
    assert summary["not_passed"] == ["failure: b: boom", "skipped: c: no GPU"]
    lines = device_check.targets({"tests": summary, "render": {"targets": ["PASS  x"]}, "train_step": {"targets": ["FAIL  y"]}})
    assert lines == ["PASS  x", "FAIL  y", "FAIL  tests/test_gsplat.py: 3 tests, 1 failed, 0 errors, 1 skipped"]


def test_render_benchmark_help_does_not_load_gsplat():
    code = ("import runpy, sys\nsys.argv = ['render.py', '--help']\ntry:\n    runpy.run_path('benchmarks/render.py', run_name='__main__')\n"
            "except SystemExit:\n    pass\nprint('loaded' if 'gsplat.cuda._backend' in sys.modules or 'gsplat' in sys.modules else 'not loaded')")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.stdout.strip().endswith("not loaded"), result.stdout + result.stderr


def test_loader_benchmark_times_batches_after_the_start_up_burst(tmp_path, capsys):
    """loader.py times only batches the workers made after their start-up ones (2 workers x 2 prefetched + 1 = 5), and
    refuses a dataset too small for that with a message that says why."""
    from benchmarks import loader

    device_check.write_images(tmp_path / "images", 40, 2, (64, 48))  # 36 training images: 9 batches of 4
    report = loader.main(["--dataset", str(tmp_path / "images"), "--model", "gvit_nano", "--img-size", "32", "--batch", "4",
                          "--workers", "2", "--batches", "4", "--out", str(tmp_path / "loader.json")])
    assert report["startup_batches"] == 5 and report["timed_batches"] == 4 and report["images_per_s"] > 0
    assert json.loads((tmp_path / "loader.json").read_text())["timed_batches"] == 4
    assert set(report["per_image_in_one_process"]) == {"read_ms", "decode_ms", "transform_ms"}
    with pytest.raises(SystemExit):
        loader.main(["--dataset", str(tmp_path / "images"), "--model", "gvit_nano", "--img-size", "32", "--batch", "4",
                     "--workers", "2", "--batches", "5", "--out", str(tmp_path / "loader.json")])
    assert "the dataset gives 9 batches of 4; timing 5 after the 5 that 2 workers have ready at start-up needs 10" in capsys.readouterr().err


@pytest.mark.parametrize("size", [(32, 32), (24, 57)])
def test_gsplat_direct_baseline_renders_our_scene(size):
    """The benchmark's baseline (gsplat's own projection of a flat 3D scene) puts our Gaussians
    where we do: gsplat's plain-PyTorch projection gives our centres and conics."""
    gsplat_torch = pytest.importorskip("gsplat.cuda._torch_impl", reason="gsplat is not installed")
    H, W = size
    g = random_gaussians(3, 20, seed=4)
    scene = gsplat_camera_scene(g, H, W)
    covars, _ = gsplat_torch._quat_scale_to_covar_preci(scene["quats"], scene["scales"], compute_preci=False)
    _, means2d, depths, conics, _ = gsplat_torch._fully_fused_projection(
        scene["means"], covars, scene["viewmats"], scene["Ks"], W, H, eps2d=0.0
    )
    ours = to_pixel_space(g, H, W)
    torch.testing.assert_close(means2d[:, 0], ours.means, rtol=0, atol=1e-9)
    torch.testing.assert_close(depths[:, 0], torch.ones_like(depths[:, 0]))
    torch.testing.assert_close(conics[:, 0], ours.conics, rtol=1e-6, atol=1e-9)


def test_train_step_benchmark_times_the_phases(tmp_path):
    """A tiny model on the CPU: every phase timed and its FLOPs counted, the render's forward and
    backward found inside the step, the classifier phase renders nothing, the ViT-S baseline and
    the profile come out, and MFU follows from the given peak."""
    out = tmp_path / "train_step.json"
    report = train_step.main(["--model", "gvit_nano", "--img-size", "32", "--num-gaussians", "16", "--num-classes", "5",
                              "--batch", "2", "--steps", "1", "--warmup", "0", "--precision", "fp32", "--device", "cpu",
                              "--vit-baseline", "--profile", "--peak-tflops", "0.5", "--out", str(out)])
    assert json.loads(out.read_text())["phases"].keys() == {"reconstruction", "classifier", "joint"}
    for phase in ("reconstruction", "joint"):
        p = report["phases"][phase]
        parts = p["instrumented_ms"]
        assert parts["render_fwd"] > 0 and parts["render_bwd"] > 0 and parts["encoder_fwd"] > 0
        assert parts["render_fwd"] + parts["render_bwd"] + parts["encoder_fwd"] < parts["step"]
        assert 0 < p["render_share"] < 1 and p["images_per_s"] > 0
    assert "render_fwd" not in report["phases"]["classifier"]["instrumented_ms"]
    assert report["phases"]["classifier"]["render_share"] == 0
    assert 0 < report["schedule"]["render_share"] < 1
    # the joint phase runs the encoder twice (training and test mode) and the classifier: the most FLOPs
    flops = {phase: p["flops_per_image"] for phase, p in report["phases"].items()}
    assert 0 < flops["classifier"] < flops["joint"] and 0 < flops["reconstruction"] < flops["joint"]
    p = report["phases"]["joint"]
    assert p["mfu"] == pytest.approx(p["flops_per_image"] * p["images_per_s"] / 0.5e12)
    vit = report["vit_small"]["eager"]
    assert vit["flops_per_image"] > 0 and vit["images_per_s"] > 0 and vit["mfu"] > 0
    assert len(report["targets"]) == 3 and "ViT-S" in report["targets"][2]
    assert set(report["profile"]) == {f"eager {phase}" for phase in flops}
    assert report["profile"]["eager joint"]["top"] and "eager joint" in out.with_suffix(".profile.txt").read_text()


def test_compile_cache_round_trip(tmp_path, monkeypatch):
    """The compile cache goes out as parts and comes back where TORCHINDUCTOR_CACHE_DIR points."""
    monkeypatch.setattr(device_check, "INDUCTOR", tmp_path / "cache" / "inductor_cache")
    (device_check.INDUCTOR / "fxgraph").mkdir(parents=True)
    (device_check.INDUCTOR / "fxgraph" / "entry").write_bytes(b"graph")
    out = tmp_path / "out"
    out.mkdir()
    assert "saved" in device_check.save_compile_cache(out)
    shutil.rmtree(tmp_path / "cache")
    assert "restored" in device_check.restore_compile_cache(out)
    assert (device_check.INDUCTOR / "fxgraph" / "entry").read_bytes() == b"graph"
    assert "compiling from scratch" in device_check.restore_compile_cache(tmp_path / "nothing")


def test_timm_model_tests_list_gvit_as_timm_lists_its_vits_and_the_readme_quotes_the_record():
    """benchmarks/timm_model_tests.py puts gvit in the two lists of timm's test_models.py that
    hold its ViTs, refuses a test file without them, and the README quotes the recorded count."""
    from benchmarks.timm_model_tests import patched_test_models, summary

    source = "X = 1\nFEAT_INTER_FILTERS = [\n    'vision_transformer',\n]\nNON_STD_FILTERS = [\n    'vit_*',\n]\n"
    patched = patched_test_models(source)
    assert "FEAT_INTER_FILTERS = [\n    'gvit',\n    'vision_transformer'," in patched
    assert "NON_STD_FILTERS = [\n    'gvit_*',\n    'vit_*'," in patched
    with pytest.raises(ValueError, match="has no 'NON_STD_FILTERS = \\[' list"):
        patched_test_models("FEAT_INTER_FILTERS = [\n]\n")
    assert summary("...\n37 passed, 2 skipped, 16036 deselected, 64 warnings in 366.94s\n") == {"passed": 37, "skipped": 2, "deselected": 16036}
    record = json.loads((ROOT / "benchmarks" / "reference" / "timm_test_models.json").read_text())
    assert record["returncode"] == 0 and "failed" not in record
    assert f"all {record['passed']} selected tests pass" in " ".join((ROOT / "README.md").read_text().split())


def test_imagenet_layout_benchmark_times_the_trainer_to_its_first_step(tmp_path, monkeypatch):
    """benchmarks/imagenet_layout.py on 10 classes x 20 images: it lays out ImageNet's folders with
    real JPEGs (reused once its marker is there), times timm's folder reader, and launches the
    trainer three times (cold cache, warm cache, a few steps with PSS), each stopped at the step
    its progress bar shows, with the times and memory in the JSON."""
    from PIL import Image

    from benchmarks import imagenet_layout

    monkeypatch.setenv("TIMM_GVIT_NO_EXTENSION", "1")  # the chunked renderer: no C++ build inside a timing
    monkeypatch.delenv("TIMM_GVIT_REQUIRE_CPU_KERNEL", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out, layouts = tmp_path / "imagenet_layout.json", tmp_path / "layouts"
    report = imagenet_layout.main(["--root", str(layouts), "--sizes", "200", "--classes", "10", "--val-per-class", "2",
                                   "--workers", "1", "--batch-size", "16", "--pss-steps", "3", "--pss-workers", "2", "--no-warmup",
                                   "--no-progress", "--timeout", "120", "--work-dir", str(tmp_path), "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    classes = sorted((layouts / "200" / "train").iterdir())
    assert len(classes) == 10 and classes[0].name == "n01440764"
    assert sorted(p.name for p in classes[0].iterdir())[:2] == ["n01440764_1.JPEG", "n01440764_10.JPEG"]
    assert sum(1 for _ in (layouts / "200" / "train").rglob("*.JPEG")) == 200
    assert sum(1 for _ in (layouts / "200" / "val").rglob("ILSVRC2012_val_*.JPEG")) == 20
    with Image.open(classes[0] / "n01440764_1.JPEG") as image:
        assert image.format == "JPEG" and 8 <= min(image.size) <= max(image.size) <= 16
    assert imagenet_layout.make_layout(layouts, 200, 10, 2, progress=False)["created"] is False  # the marker: reused

    assert not report["failed"] and len(report["sizes"]) == 1
    entry = report["sizes"][0]
    assert entry["train_images"] == 200 and entry["val_images"] == 20
    assert entry["timm"]["ok"] and entry["timm"]["images"] == 200 and entry["timm"]["classes"] == 10 and entry["timm"]["index_s"] >= 0
    first, second, pss = (entry["launches"][k] for k in ("first", "second", "pss"))
    assert first["cache_dir"] == second["cache_dir"] == pss["cache_dir"]
    for launch in (first, second, pss):
        assert launch["ok"] and launch["failure"] is None
        assert 0 < launch["announced_s"] <= launch["first_step_s"] == launch["seconds_to_first_step"] < 120
        assert launch["first_step_seen_at"] >= 1 and 0 < launch["longest_silence_s"] <= launch["seconds_to_first_step"]
        assert 0.1 < launch["peak_rss_gb"] < 8
        times = [t for t, _ in launch["lines"]]
        assert times == sorted(times) and any("1/" in text for _, text in launch["lines"])
    assert first["step_seen"] == second["step_seen"] == 1 and first["pss_gb"] is None
    assert pss["step_seen"] >= 3 and pss["workers"] == 2 and 0.1 < pss["pss_gb"] < 8 and pss["pss_processes"] >= 2
    assert entry["checks"] == {"first_launch_s": True, "second_launch_s": True, "peak_rss_gb": True, "pss_gb": True}
    rows = imagenet_layout.table(report).splitlines()
    assert rows[0].split() == ["train", "images", "timm", "index", "s", "first", "launch", "s", "second", "launch", "s",
                               "peak", "RSS", "GB", "PSS", "GB"]
    assert rows[2].split()[0] == "200" and rows[2].count("pass") == 4
