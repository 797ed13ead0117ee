"""Verify the CUDA path on a fresh GPU machine in one call; run it through ``benchmarks/device_check.sh``.

    bash benchmarks/device_check.sh [--dry-run] [--quick] [--only STEP ...] [--trainer {short,steady,phases}] [--out DIR] ...

Steps, each under its own time limit inside an overall deadline (a failed step is recorded and
the next one still runs; the exit status is 0 when every step passed):

1. ``wheels``: install the carried wheels (``benchmarks/device_wheels.txt``: gsplat and what the
   machine's image lacks) with ``pip install --no-index --no-deps --target /tmp/site``, offline.
2. ``build``: build gsplat's CUDA kernels for this GPU only (``TORCH_CUDA_ARCH_LIST`` from its
   compute capability, ``MAX_JOBS`` = its CPU cores), timed, and save the build to OUT as
   ``gsplat-build.tgz.part-*``. Given those parts (``--gsplat-build``, default ``.gsplat-build``
   where it exists) from an earlier run on the same kind of machine, load that build instead.
3. ``pytest``: ``tests/test_gsplat.py``.
4. ``render``: the gsplat rows of ``benchmarks/render.py`` (speed against gsplat-direct,
   accuracy against the CPU kernel at k = 16, 64, 256, 1024); ``render_batch``: the same speed
   comparison at the training batch (256, k = 256, 224 px).
5. ``train_step``: ``benchmarks/train_step.py``, gvit_small at 224 px, k = 256, bf16, batch 256,
   eager and compiled, beside timm's vit_small_patch16_224 eager and compiled, with a profile:
   images/s, MFU, peak GPU memory, the share of the step spent rendering, the top kernels and the
   host-device syncs per step. Its compile caches (``TORCHINDUCTOR_CACHE_DIR``) are saved to OUT as
   ``inductor-cache.tgz.part-*`` and, given back (``--inductor-cache``, default ``.inductor-cache``
   where it exists), loaded by the next run, which then skips most of the compiling.
6. ``loader``: ``benchmarks/loader.py`` on a generated imagefolder of ImageNet-sized JPEGs
   (500 x 375, about 100 KiB), both loader paths of the trainer on the same files, with images/s,
   CPU-ms per image (training process and workers) and the cores a GPU needs to feed the compiled
   step: the CPU path (decode, crop and resize in the workers) at 4, 8 and 16 workers, each beside
   timm's own loader (``--compare-timm``), and the device-decode path (``--decode-on-device``: the
   workers read bytes and draw crops, nvJPEG decodes, :mod:`timm_gvit.training.device_decode`) at
   4 workers.
7. ``train_gvit``: a bf16 ``train_gvit.py --compile`` run of gvit_small at 224 px, k = 256, a worker
   per core, on the same imagefolder: that the trainer runs end to end on the GPU, its own images/s,
   and whether the loader or the step limits it. ``--trainer short``: 50 steps, every phase runs.
   ``--trainer steady``: 8 epochs of 50 steps on 12,800 training images (3 reconstruction, 2
   classifier, 3 joint, guided in the last). ``--trainer phases``: 6 such epochs, 2 per phase (no
   guidance), the shortest run with a steady epoch (neither compiling nor changing phase) in each.
8. ``train_gvit_device``: the same run with ``--decode-on-device`` (skipped, and said so, while
   ``train_gvit.py`` does not take that flag).

Each trainer run's steady images/s per phase (the last epoch of the phase, timed from its first
batch) is set beside the compiled step's for that phase (``train_step`` of this run, else the
reference ``benchmarks/reference/device_check_h200_2026-11-27.json``, which names its GPU), with
the target >= 0.9x in every phase (``trainer_vs_step`` in the JSON, and the summary's PASS/FAIL lines).

``--only`` runs the named steps of 3-8 (``wheels`` and ``build`` always run): a second call that
reuses a saved build needs only the steps it re-measures. Without it every step but
``train_gvit_device`` runs. Whether the trainer feeds its step, both paths, in one call (about 8
minutes with a fresh build, less with a saved build and compile cache)::

    run  command="bash benchmarks/device_check.sh --only loader train_gvit train_gvit_device --trainer phases --deadline 570"  carry=[".whl"]  timeout_s=600

Everything lands in OUT (``$OUT`` on a lent machine, else ``benchmarks/results/device_check``):
``device_check.json`` (rewritten after every step, so a cut-off run still leaves one),
``device_check.log`` and the build's parts: at most 8 files, as the device tool returns.

``--dry-run`` prints the plan and checks that everything the run needs is here (the wheels, the
scripts and their flags, the Python packages the machine's image provides); it needs no GPU.

With the device tool (about 8 minutes on an H100 with a fresh build, less with a saved one)::

    benchmarks/fetch_device_wheels.sh                      # once, here: .whl/
    run  command="bash benchmarks/device_check.sh"  carry=[".whl"]  timeout_s=600
    # to reuse the build and the compile caches: copy the returned gsplat-build.tgz.part-* into
    # .gsplat-build/ and inductor-cache.tgz.part-* into .inductor-cache/, and carry both
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WHEEL_LIST = ROOT / "benchmarks" / "device_wheels.txt"
SITE = Path("/tmp/site")  # pip --target, as the device tool's README does
EXTENSIONS = Path("/tmp/torch_extensions")  # TORCH_EXTENSIONS_DIR: gsplat's and the CPU kernel's builds
RESTORED = Path("/tmp/gsplat_build")
BUILD_PARTS = "gsplat-build.tgz.part-"
INDUCTOR = Path("/tmp/inductor_cache")  # TORCHINDUCTOR_CACHE_DIR
CACHE_PARTS = "inductor-cache.tgz.part-"
MAX_CACHE_BYTES = 2 * 15 * 2**20  # two parts at most: the device tool returns 8 files
PART_BYTES = 15 * 2**20  # the device tool returns files of at most 16 MiB
SCRIPTS = ("tests/test_gsplat.py", "tests/test_rendering.py", "tests/conftest.py", "benchmarks/render.py",
           "benchmarks/train_step.py", "benchmarks/loader.py", "train_gvit.py", "timm_gvit/training/device_decode.py")
#: Modules the machine's image provides (the device tool's KINDS.md); carried wheels add the rest.
IMAGE_MODULES = ("torch", "torchvision", "timm", "accelerate", "huggingface_hub", "safetensors", "numpy", "PIL", "yaml",
                 "tqdm", "sklearn", "packaging", "jaxtyping", "rich", "ninja", "pytest", "pyarrow", "pandas", "xxhash",
                 "filelock", "psutil")
#: Seconds each step may take at most (the overall --deadline cuts them shorter).
BUDGET = {"wheels": 60, "build": 420, "pytest": 240, "render": 150, "render_batch": 60, "train_step": 330, "loader": 150,
          "train_gvit": 200, "train_gvit_device": 200}
STEPS = tuple(BUDGET)
#: What runs without --only: every step but the device-decode trainer run, which a call asks for by name.
DEFAULT_ONLY = [s for s in STEPS[2:] if s != "train_gvit_device"]
#: The loader's CPU path is timed at these worker counts (beside timm's loader), the device-decode path at the first.
LOADER_WORKERS = (4, 8, 16)
#: The trainer's flag for the device-decode path.
DEVICE_FLAG = "--decode-on-device"
STEP_REFERENCE = ROOT / "benchmarks" / "reference" / "device_check_h200_2026-11-27.json"
#: A trainer run reaches its step when its steady images/s are at least this share of the compiled step's, in every phase.
TRAINER_TARGET = 0.9
PHASES = ("reconstruction", "classifier", "joint")
#: The loader's and the trainer's runs use a generated imagefolder of IMAGES ImageNet-sized JPEGs (10 % held out for
#: validation): 50 batches of 256; the loader lists them twice (--repeat 2), enough to time 20 after 16 workers' start-up batches (33).
#: The trainer's "short" run checks that every phase runs (50 steps); "steady" measures each epoch's images/s
#: (8 epochs of 50 steps at batch 256).
IMAGES, CLASSES, IMAGE_SIZE = 14400, 10, (500, 375)
#: (train samples, recon, dssim from, classifier, joint, guidance) steps; "steady": epochs 0-2 reconstruction,
#: 3-4 classifier, 5-7 joint with a guidance step after every 5th step of epoch 7
#: "phases": epochs 0-1 reconstruction (D-SSIM from step 25), 2-3 classifier, 4-5 joint, no guidance.
TRAINER_STEPS = {"short": (None, 20, 10, 10, 20, 10), "steady": (12800, 150, 75, 100, 150, 50),
                 "phases": (12800, 100, 25, 100, 100, 0)}
TRAINER_BUDGET = {"short": 200, "steady": 330, "phases": 230}


def wheel_requirements() -> list[tuple[str, str]]:
    """(name, version) pairs of ``device_wheels.txt``."""
    pairs = []
    for line in WHEEL_LIST.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            pairs.append((name.strip(), version.strip()))
    return pairs


def module_of(distribution: str) -> str:
    return {"pytorch-msssim": "pytorch_msssim"}.get(distribution, distribution.replace("-", "_"))


def wheel_files(wheels: Path) -> tuple[list[Path], list[str]]:
    """The wheel of each requirement in ``wheels``, and what is missing or doubled."""
    found, problems = [], []
    files = sorted(wheels.glob("*.whl")) if wheels.is_dir() else []
    for name, version in wheel_requirements():
        stem = re.sub(r"[-_.]+", "_", name).lower()
        ours = [f for f in files if re.sub(r"[-_.]+", "_", f.name.split("-")[0]).lower() == stem]
        match = [f for f in ours if f.name.split("-")[1] == version]
        if not match:
            problems.append(f"no wheel of {name}=={version} in {wheels}/ (run benchmarks/fetch_device_wheels.sh)")
        elif len(ours) > 1:
            problems.append(f"{len(ours)} wheels of {name} in {wheels}/ ({', '.join(f.name for f in ours)}): keep only {version}")
        else:
            found.append(match[0])
    return found, problems


def commands(work: Path, quick: bool, trainer: str = "short") -> dict[str, list[str]]:
    """Each step's command line (``python`` stands for the interpreter)."""
    train_samples, recon, dssim_from, classifier, joint, guidance = (None, 5, 2, 3, 4, 2) if quick else TRAINER_STEPS[trainer]
    ks, sizes, repeats = (["16", "256"], ["64"], "2") if quick else (["16", "64", "256", "1024"], ["64", "224"], "5")
    steps, warmup, batch = ("3", "1", "64") if quick else ("20", "5", "256")
    cmds = {
        "pytest": ["python", "-m", "pytest", "tests/test_gsplat.py", "-q", "-rs", "-p", "no:cacheprovider",
                   "--junitxml", str(work / "junit.xml")],
        "render": ["python", "benchmarks/render.py", "--backends", "gsplat", "gsplat-direct", "--ks", *ks, "--sizes", *sizes,
                   "--batch", "8", "--repeats", repeats, "--out", str(work / "render.json")],
        "render_batch": ["python", "benchmarks/render.py", "--backends", "gsplat", "gsplat-direct", "--ks", "256", "--sizes", "224",
                         "--scenes", "grid", "--batch", "64" if quick else "256", "--repeats", "2" if quick else "3",
                         "--out", str(work / "render_batch.json")],
        "train_step": ["python", "benchmarks/train_step.py", "--model", "gvit_small", "--img-size", "224", "--num-gaussians",
                       "256", "--batch", batch, "--steps", steps, "--warmup", warmup, "--precision", "bf16",
                       "--modes", "eager", "compiled", "--vit-baseline", "--profile", "--out", str(work / "train_step.json")],
        **{name: ["python", "benchmarks/loader.py", "--dataset", str(work / "images"), "--model", "gvit_small", "--img-size", "224",
                  "--batch", batch, "--workers", str(workers), "--batches", "5" if quick else "20", "--repeat", "2",
                  "--decode-seconds", "1" if quick else "2", *flags, "--out", str(work / f"{name}.json")]
           for name, workers, flags in loader_runs(quick)},
        "train_gvit": ["python", "train_gvit.py", "--compile", "--dataset", str(work / "images"), "--model", "gvit_small", "--img-size", "224",
                       "--num-gaussians", "256", "--mixed-precision", "bf16", "--phase-unit", "steps",
                       "--recon-epochs", str(recon), "--dssim-from", str(dssim_from), "--classifier-epochs", str(classifier),
                       "--joint-epochs", str(joint), "--guidance-epochs", str(guidance), "--guidance-every", "2" if quick else "5",
                       "--warmup-epochs", "2", *(["--max-train-samples", str(train_samples)] if train_samples else []), "--batch-size", batch, "--workers", str(os.cpu_count() or 1),
                       "--report-to", "none", "--checkpoint-every", "100000", "--image-every", "100000", "--log-every", "10",
                       "--eval-every", "1000", "--max-val-samples", "256", "--output-dir", str(work / "train")],
    }
    cmds["train_gvit_device"] = [*cmds["train_gvit"][:-2], DEVICE_FLAG, "--output-dir", str(work / "train_device")]
    return cmds


def loader_runs(quick: bool) -> list[tuple[str, int, list[str]]]:
    """(name, workers, extra flags) of the loader step's runs of benchmarks/loader.py: the CPU path at each of
    LOADER_WORKERS beside timm's loader, the device-decode path at the first."""
    counts = (2, 4) if quick else LOADER_WORKERS
    return [*((f"loader_w{w}", w, ["--compare-timm"]) for w in counts), ("loader_device", counts[0], ["--decode-on-device"])]


def step_reference(work: Path) -> Path:
    """The compiled step's images/s per phase: this run's train_step where it ran, else the reference."""
    return work / "train_step.json" if (work / "train_step.json").is_file() else STEP_REFERENCE


# ---------------------------------------------------------------- preflight
def preflight(args, work: Path, installed: bool) -> list[str]:
    """What is missing for the run: wheels, scripts, modules, and flags the scripts reject."""
    _, problems = wheel_files(args.wheels)
    problems += [f"missing script {s}" for s in SCRIPTS if not (ROOT / s).is_file()]
    carried = [module_of(name) for name, _ in wheel_requirements()] if installed else []
    if installed:
        sys.path.insert(0, str(SITE))
    problems += [f"Python module {m} is not importable with {sys.executable}"
                 for m in (*IMAGE_MODULES, *carried) if importlib.util.find_spec(m) is None]
    if problems:  # the flag checks below import the scripts
        return problems
    sys.path.insert(0, str(ROOT))
    try:
        from benchmarks import loader, render, train_step
        from timm_gvit.training import device_decode  # noqa: F401  (the device-decode path imports)
        from timm_gvit.training.config import parse_config
    except Exception as exc:  # a module the scripts import is missing or broken
        return [f"cannot import the benchmark scripts: {type(exc).__name__}: {exc}"]
    for quick, trainer in ((False, "short"), (False, "steady"), (False, "phases"), (True, "short")):  # every plan, whichever runs
        cmds = commands(work, quick, trainer)
        try:
            render.build_parser().parse_args(cmds["render"][2:])
            render.build_parser().parse_args(cmds["render_batch"][2:])
            train_step.parse_args(cmds["train_step"][2:])
            for name, _, _ in loader_runs(quick):
                loader.build_parser().parse_args([*cmds[name][2:], "--step-reference", str(STEP_REFERENCE)])
            parse_config(cmds["train_gvit"][2:])
        except SystemExit as exc:
            problems.append(f"a step's flags were rejected ({'--quick plan' if quick else trainer + ' plan'}: exit {exc})")
    if not STEP_REFERENCE.is_file():
        problems.append(f"missing {STEP_REFERENCE.relative_to(ROOT)} (the compiled step's images/s where train_step does not run)")
    return problems


def device_flag_missing(cmd: list[str]) -> str | None:
    """Why ``train_gvit.py`` cannot run the device-decode command ``cmd`` (it does not take the flag yet), or None."""
    sys.path.insert(0, str(ROOT))
    from timm_gvit.training.config import parse_config

    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            parse_config(cmd[2:])
    except SystemExit:
        return f"train_gvit.py does not take {DEVICE_FLAG} yet ({stderr.getvalue().strip().splitlines()[-1:]})"
    return None


# ---------------------------------------------------------------- running steps
class Run:
    """The run's state: its log, its deadline, its results, and the JSON it keeps up to date."""

    def __init__(self, args, work: Path):
        self.args, self.work = args, work
        self.out: Path = args.out
        self.out.mkdir(parents=True, exist_ok=True)
        self.log = open(self.out / "device_check.log", "a", buffering=1)
        self.started = time.monotonic()
        self.report = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                       "settings": {"quick": args.quick, "deadline_s": args.deadline, "only": args.only, "trainer": args.trainer},
                       "steps": {}, "targets": []}
        self.env = {**os.environ, "PYTHONPATH": f"{SITE}{os.pathsep}{ROOT}", "PYTHONUNBUFFERED": "1",
                    "TORCH_EXTENSIONS_DIR": str(EXTENSIONS), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                    "HF_HOME": str(work / "hf"), "TOKENIZERS_PARALLELISM": "false", "TORCHINDUCTOR_CACHE_DIR": str(INDUCTOR)}

    def say(self, text: str) -> None:
        print(text, flush=True)
        self.log.write(text + "\n")

    def remaining(self) -> float:
        return self.args.deadline - (time.monotonic() - self.started)

    def execute(self, name: str, cmd: list[str], limit: float) -> tuple[int | None, str]:
        """Run ``cmd`` for at most ``limit`` s, its output to the console and the log; (rc or None
        on timeout, its output)."""
        cmd = [sys.executable if c == "python" else c for c in cmd]
        self.say(f"$ {' '.join(cmd)}")
        proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, errors="replace", start_new_session=True)
        lines: list[str] = []

        def pump():
            for line in proc.stdout:
                sys.stdout.write(line)
                self.log.write(line)
                lines.append(line)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            rc = proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = None
        reader.join(timeout=10)
        return rc, "".join(lines)

    def step(self, name: str, action) -> bool:
        """Run ``action(limit) -> (rc, tail, extra)`` as step ``name``; record and save the result."""
        if name in STEPS[2:] and name not in self.args.only:  # wheels and build always run
            self.report["steps"][name] = {"status": "skipped", "why": "not in --only"}
            self.save()
            return True
        limit = min(TRAINER_BUDGET[self.args.trainer] if name.startswith("train_gvit") else BUDGET[name], self.remaining() - 15)
        if limit < 20:
            self.report["steps"][name] = {"status": "skipped", "why": "out of time (--deadline)"}
            self.save()
            return False
        self.say(f"\n==== {name} (at most {limit:.0f} s, {self.remaining():.0f} s left)")
        start = time.monotonic()
        rc, tail, extra = action(limit)
        status = "timeout" if rc is None else ("passed" if rc == 0 else "failed")
        record = {"status": status, "rc": rc, "seconds": round(time.monotonic() - start, 1), **extra}
        if status != "passed":
            record["output_tail"] = tail[-3000:]
        self.report["steps"][name] = record
        self.say(f"==== {name}: {status} in {record['seconds']} s")
        self.save()
        return status == "passed"

    def save(self) -> None:
        (self.out / "device_check.json").write_text(json.dumps(self.report, indent=2, default=str) + "\n")


def machine_info(run: Run) -> dict:
    code = (
        "import importlib.metadata as m, json, os, torch\n"
        "def v(n):\n"
        "    try: return m.version(n)\n"
        "    except m.PackageNotFoundError: return None\n"
        "cuda = torch.cuda.is_available()\n"
        "print(json.dumps({'gpu': torch.cuda.get_device_name() if cuda else None,\n"
        "  'capability': '%d.%d' % torch.cuda.get_device_capability() if cuda else None,\n"
        "  'gpu_memory_gib': torch.cuda.get_device_properties(0).total_memory / 2**30 if cuda else None,\n"
        "  'cpu_count': os.cpu_count(), 'torch': torch.__version__, 'cuda': torch.version.cuda,\n"
        "  'packages': {n: v(n) for n in ('gsplat', 'timm', 'accelerate', 'datasets', 'fsspec', 'pyarrow', 'huggingface_hub',\n"
        "               'dill', 'multiprocess', 'pytorch_msssim', 'numpy', 'ninja')}}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], env=run.env, capture_output=True, text=True)
    info = json.loads(result.stdout) if result.returncode == 0 else {"error": result.stderr[-2000:]}
    nvcc = shutil.which("nvcc") or (Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "bin" / "nvcc")
    info["nvcc"] = str(nvcc) if Path(nvcc).exists() else None
    return info


# ---------------------------------------------------------------- the gsplat build
SHIM = '''# Written by benchmarks/device_check.py: gsplat's _backend imports gsplat.csrc before it JIT-builds,
# so this loads the build that an earlier run saved instead of building again.
import importlib.util

import torch  # noqa: F401  (the extension links against torch's libraries)

_spec = importlib.util.spec_from_file_location("gsplat_cuda", {path!r})
_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_module)
globals().update({{k: v for k, v in vars(_module).items() if not k.startswith("__")}})
'''
LOAD_GSPLAT = ("import time; t = time.time(); from gsplat.cuda._backend import _C; "
               "assert _C is not None, 'gsplat found no CUDA toolkit'; print(f'gsplat kernels loaded in {time.time() - t:.1f} s')")


def build_manifest(info: dict, arch: str) -> dict:
    return {"gsplat": info["packages"]["gsplat"], "torch": info["torch"], "cuda": info["cuda"], "arch": arch,
            "python": f"{sys.version_info.major}.{sys.version_info.minor}"}


def restore_build(parts_dir: Path, manifest: dict) -> str | None:
    """Unpack a saved build into RESTORED and point gsplat at it; None when that worked, else why not."""
    parts = sorted(parts_dir.glob(BUILD_PARTS + "*")) if parts_dir and parts_dir.is_dir() else []
    if not parts:
        return f"no {BUILD_PARTS}* in {parts_dir}"
    data = b"".join(p.read_bytes() for p in parts)
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            saved = json.load(tar.extractfile("gsplat-build.json"))
            if saved != manifest:
                return f"the saved build is for {saved}, this machine needs {manifest}"
            RESTORED.mkdir(parents=True, exist_ok=True)
            tar.extract("gsplat_cuda.so", RESTORED, filter="data")
    except (tarfile.TarError, KeyError, OSError, ValueError) as exc:
        return f"cannot read the saved build ({type(exc).__name__}: {exc})"
    (SITE / "gsplat" / "csrc.py").write_text(SHIM.format(path=str(RESTORED / "gsplat_cuda.so")))
    return None


def save_build(manifest: dict, out: Path) -> list[str]:
    """The JIT build's library and manifest as ``gsplat-build.tgz.part-NN`` files in ``out``."""
    # torch puts a JIT build in TORCH_EXTENSIONS_DIR/<name>/ (in a version folder when the variable is unset)
    library = next(EXTENSIONS.rglob("gsplat_cuda.so"), None)
    if library is None:
        raise FileNotFoundError(f"no gsplat_cuda.so under {EXTENSIONS}")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(library, arcname="gsplat_cuda.so")
        blob = json.dumps(manifest).encode()
        entry = tarfile.TarInfo("gsplat-build.json")
        entry.size = len(blob)
        tar.addfile(entry, io.BytesIO(blob))
    return write_parts(buffer.getvalue(), out, BUILD_PARTS)


def write_parts(data: bytes, out: Path, prefix: str) -> list[str]:
    """``data`` as ``prefix00``, ``prefix01``, ... files of at most PART_BYTES in ``out``."""
    for old in out.glob(prefix + "*"):
        old.unlink()
    names = []
    for i in range(0, len(data), PART_BYTES):
        names.append(f"{prefix}{i // PART_BYTES:02d}")
        (out / names[-1]).write_bytes(data[i:i + PART_BYTES])
    return names


def save_compile_cache(out: Path) -> str:
    """TORCHINDUCTOR_CACHE_DIR as ``inductor-cache.tgz.part-*`` in ``out``; what was saved, or why not."""
    if not INDUCTOR.is_dir():
        return f"no compile cache at {INDUCTOR}"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(INDUCTOR, arcname="inductor_cache")
    data = buffer.getvalue()
    if len(data) > MAX_CACHE_BYTES:
        return f"not saved: the compile cache is {len(data) / 2**20:.0f} MiB, more than {MAX_CACHE_BYTES / 2**20:.0f}"
    return f"saved {len(data) / 2**20:.1f} MiB as {', '.join(write_parts(data, out, CACHE_PARTS))}"


def restore_compile_cache(parts_dir: Path | None) -> str:
    """Unpack saved ``inductor-cache.tgz.part-*`` into TORCHINDUCTOR_CACHE_DIR; what happened."""
    parts = sorted(parts_dir.glob(CACHE_PARTS + "*")) if parts_dir and parts_dir.is_dir() else []
    if not parts:
        return f"no {CACHE_PARTS}* in {parts_dir}: compiling from scratch"
    try:
        with tarfile.open(fileobj=io.BytesIO(b"".join(p.read_bytes() for p in parts)), mode="r:gz") as tar:
            tar.extractall(INDUCTOR.parent, filter="data")
    except (tarfile.TarError, OSError, ValueError) as exc:
        return f"cannot read the saved compile cache ({type(exc).__name__}: {exc}): compiling from scratch"
    return f"restored the compile cache from {len(parts)} part(s) in {parts_dir}"


def build_step(run: Run, info: dict):
    def action(limit):
        arch = run.env["TORCH_CUDA_ARCH_LIST"] = info["capability"]  # this GPU only, whatever the image sets
        run.env["MAX_JOBS"] = str(os.cpu_count() or 8)
        manifest = build_manifest(info, arch)
        extra = {"arch": arch, "max_jobs": run.env["MAX_JOBS"]}
        why = restore_build(run.args.gsplat_build, manifest) if run.args.gsplat_build else "no saved build given"
        if why is None:
            rc, tail = run.execute("build", ["python", "-c", LOAD_GSPLAT], limit)
            if rc == 0:
                return rc, tail, {**extra, "source": f"restored from {run.args.gsplat_build}"}
            why = f"the restored build did not load: {tail[-300:]}"
            (SITE / "gsplat" / "csrc.py").unlink(missing_ok=True)
        run.say(f"building gsplat for sm_{arch.replace('.', '')} ({why})")
        rc, tail = run.execute("build", ["python", "-c", LOAD_GSPLAT], limit)
        extra["source"] = f"built here ({why})"
        if rc == 0:
            try:
                extra["saved_as"] = save_build(manifest, run.out)
            except (OSError, tarfile.TarError) as exc:  # the build works: the later steps still run
                extra["saved_as"] = f"not saved ({type(exc).__name__}: {exc})"
        return rc, tail, extra

    return action


# ---------------------------------------------------------------- the other steps
def pytest_summary(junit: Path) -> dict:
    if not junit.is_file():
        return {}
    suite = ET.parse(junit).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    problems = []
    for case in suite.iter("testcase"):
        for kind in ("failure", "error", "skipped"):
            found = case.find(kind)
            if found is not None:
                problems.append(f"{kind}: {case.get('name')}: {(found.get('message') or '')[:300]}")
    return {**counts, "not_passed": problems}


def _write_image(args: tuple[Path, int, int, int, int]) -> None:
    import numpy as np
    from PIL import Image

    folder, i, classes, width, height = args
    rng = np.random.default_rng(i)
    label = i % classes
    low = rng.random((12, 16, 3)) * 0.6 + np.array([label / classes, 0.3, 1 - label / classes]) * 0.4
    base = np.asarray(Image.fromarray((low * 255).astype(np.uint8)).resize((width, height), Image.BICUBIC), dtype=np.float32)
    pixels = (base + rng.normal(0, 18, base.shape)).clip(0, 255).astype(np.uint8)  # texture: ~100 KiB files, as ImageNet's
    path = folder / f"class_{label}" / f"{i:05d}.jpg"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, quality=90)


def write_images(folder: Path, count: int, classes: int, size: tuple[int, int]) -> None:
    """An imagefolder of ``count`` seeded JPEGs the size of ImageNet's (``size`` = (W, H), about
    100 KiB each, so that decoding costs what real photos cost), in ``classes`` sub-folders,
    written by a process per core."""
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(_write_image, [(folder, i, classes, *size) for i in range(count)], chunksize=32))


def trainer_summary(output: str, run_dir: Path) -> dict:
    """The trainer's images/s (the last and the highest it logged, and each epoch's last with its phase), its metrics
    and run_info."""
    rates = [int(r) for r in re.findall(r"img_s=(\d+)", output)]
    epochs = {int(epoch): {"images_per_s": int(rate), "phase": phase}  # later lines of an epoch overwrite earlier ones
              for epoch, rate, phase in re.findall(r"epoch (\d+):[^\n]*?img_s=(\d+)[^\n]*?phase=(\w+)", output)}
    for epoch, rate, wait in re.findall(r"epoch (\d+): (\d+) img/s from its first batch on \(which took ([\d.]+) s", output):
        epochs.setdefault(int(epoch), {}).update(images_per_s_after_first_batch=int(rate), first_batch_s=float(wait))
    summary = {"images_per_s_last": rates[-1] if rates else None, "images_per_s_max": max(rates) if rates else None,
               "epochs": [{"epoch": e, **epochs[e]} for e in sorted(epochs)]}
    for name in ("metrics.json", "run_info.json"):
        if (run_dir / name).is_file():
            summary[name.removesuffix(".json")] = json.loads((run_dir / name).read_text())
    return summary


LOADER_KEYS = ("path", "workers", "ours_images_per_s", "timm_images_per_s", "ratio", "ours_cpu_ms_per_image", "timm_cpu_ms_per_image",
               "ours_images_per_core_s", "decode_only_images_per_core_s", "decode_only_torchvision_images_per_core_s", "checks",
               "mean_file_kib", "device")


def loader_summary(record: dict) -> dict:
    """What the device check keeps of a benchmarks/loader.py JSON."""
    ours = record.get("ours") or {}
    return {**{k: record.get(k) for k in LOADER_KEYS}, "status": "passed",
            "ours_cpu_ms_per_image_main": ours.get("cpu_ms_per_image_main"),
            "ours_cpu_ms_per_image_workers": ours.get("cpu_ms_per_image_workers"),
            "cores_per_gpu": (record.get("compiled_step") or {}).get("cores_per_gpu"),
            "step_gpu": (record.get("compiled_step") or {}).get("gpu")}


def loader_lines(runs: dict) -> list[str]:
    """One line per loader run: both loaders' images/s and CPU cost, and the cores per GPU."""
    def f(value, spec):
        return format(value, spec) if isinstance(value, (int, float)) else "n/a"

    lines = []
    for name, r in runs.items():
        if r.get("status") != "passed":
            lines.append(f"{name}: {r.get('status')} {r.get('why', '')}".rstrip())
            continue
        main, workers = r.get("ours_cpu_ms_per_image_main"), r.get("ours_cpu_ms_per_image_workers")
        lines.append(f"{name}: {r['path']} path, {r['workers']} workers: ours {f(r['ours_images_per_s'], '.0f')} img/s "
                     f"({f(r['ours_cpu_ms_per_image'], '.2f')} CPU-ms/img: training process {f(main, '.2f')}, workers "
                     f"{f(workers, '.2f')}), timm {f(r['timm_images_per_s'], '.0f')} img/s ({f(r['timm_cpu_ms_per_image'], '.2f')} "
                     f"CPU-ms/img), ratio {f(r['ratio'], '.2f')}; cores per GPU for the compiled step: "
                     + ", ".join(f"{p} {f(c, '.1f')}" for p, c in (r.get("cores_per_gpu") or {}).items()))
    return lines


def compiled_step(report: dict, reference: Path) -> tuple[dict[str, float], str]:
    """The compiled step's images/s per phase: this run's train_step, else ``reference``; and where they come from."""
    def rates(step):
        phases = (step or {}).get("modes", {}).get("compiled", {}).get("phases", {})
        return {p: phases[p]["images_per_s"] for p in PHASES if p in phases}

    here = rates(report.get("train_step"))
    if here:
        return here, f"this run's train_step on {report.get('machine', {}).get('gpu')}"
    if reference.is_file():
        record = json.loads(reference.read_text())
        return rates(record.get("train_step", record)), f"{reference.name} on {record.get('machine', {}).get('gpu')}"
    return {}, "none"


def steady_rates(summary: dict) -> dict[str, dict]:
    """Each phase's steady images/s in a trainer run: its last epoch (timed from its first batch), where the
    phase has more than one (the first compiles and may start mid-way through a phase change)."""
    by_phase: dict[str, list[dict]] = {}
    for epoch in summary.get("epochs", []):
        if epoch.get("phase") and epoch.get("images_per_s_after_first_batch") is not None:
            by_phase.setdefault(epoch["phase"], []).append(epoch)
    return {phase: {"images_per_s": epochs[-1]["images_per_s_after_first_batch"], "epoch": epochs[-1]["epoch"],
                    "epochs": len(epochs), "first_batch_s": epochs[-1].get("first_batch_s")}
            for phase, epochs in by_phase.items() if len(epochs) > 1}


def trainer_vs_step(report: dict, reference: Path) -> dict:
    """Each trainer run's steady images/s per phase beside the compiled step's, and PASS/FAIL lines (>= TRAINER_TARGET x)."""
    step, source = compiled_step(report, reference)
    result = {"step_images_per_s": step, "step_source": source, "target": TRAINER_TARGET, "runs": {}, "targets": []}
    for name, path in (("train_gvit", "cpu"), ("train_gvit_device", "device-decode")):
        if name not in report:
            continue
        steady = steady_rates(report[name])
        rows = {}
        for phase in PHASES:
            rate, ceiling = steady.get(phase, {}).get("images_per_s"), step.get(phase)
            ratio = rate / ceiling if rate is not None and ceiling else None
            rows[phase] = {**steady.get(phase, {}), "step_images_per_s": ceiling, "ratio": ratio}
            if ratio is None:
                result["targets"].append(f"FAIL  trainer ({path} path) {phase}: no steady epoch or no step figure "
                                         f"(trainer {rate}, step {ceiling})")
            else:
                result["targets"].append(f"{'PASS' if ratio >= TRAINER_TARGET else 'FAIL'}  trainer ({path} path) {phase}: "
                                         f"{rate:.0f} img/s = {ratio:.2f}x the compiled step's {ceiling:.0f} ({source}; "
                                         f"target >= {TRAINER_TARGET}x)")
        result["runs"][path] = rows
    return result


def targets(report: dict) -> list[str]:
    lines = [line for key in ("render", "render_batch", "train_step", "trainer_vs_step")
             for line in report.get(key, {}).get("targets", [])]
    tests = report.get("tests") or {}
    if tests:
        ok = tests["failures"] == tests["errors"] == 0 and tests["skipped"] == 0
        lines.append(f"{'PASS' if ok else 'FAIL'}  tests/test_gsplat.py: {tests['tests']} tests, {tests['failures']} failed, "
                     f"{tests['errors']} errors, {tests['skipped']} skipped")
    return lines


# ---------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="benchmarks/device_check.sh", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--dry-run", action="store_true", help="print the plan and check what the run needs; no GPU needed")
    parser.add_argument("--quick", action="store_true", help="fewer steps and sizes: a smoke test of this script")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or ROOT / "benchmarks" / "results" / "device_check"),
                        help="results folder (default: $OUT, else benchmarks/results/device_check)")
    parser.add_argument("--wheels", type=Path, default=ROOT / ".whl", help="carried wheels (default .whl)")
    parser.add_argument("--gsplat-build", type=Path, default=ROOT / ".gsplat-build" if (ROOT / ".gsplat-build").is_dir() else None,
                        help=f"folder of {BUILD_PARTS}* from an earlier run, to load instead of building (default .gsplat-build if present)")
    parser.add_argument("--inductor-cache", type=Path, default=ROOT / ".inductor-cache" if (ROOT / ".inductor-cache").is_dir() else None,
                        help=f"folder of {CACHE_PARTS}* from an earlier run, to start compiling from (default .inductor-cache if present)")
    parser.add_argument("--deadline", type=float, default=560.0, help="seconds for the whole run (default 560)")
    parser.add_argument("--only", nargs="+", choices=STEPS[2:], default=list(DEFAULT_ONLY), metavar="STEP",
                        help=f"run only these of {', '.join(STEPS[2:])} (wheels and build always run; default: all but "
                             "train_gvit_device)")
    parser.add_argument("--trainer", choices=tuple(TRAINER_STEPS), default="short",
                        help="train_gvit's run: short (50 steps, every phase runs), steady (8 epochs of 50 steps, "
                             "each epoch's images/s) or phases (6 such epochs, 2 per phase, no guidance)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="device_check."))
    plan = commands(work, args.quick, args.trainer)
    print(f"plan ({'quick, ' if args.quick else ''}{args.trainer} trainer run, deadline {args.deadline:.0f} s; results in {args.out}):")
    print(f"  {'wheels':<17} install {', '.join(f'{n}=={v}' for n, v in wheel_requirements())} from {args.wheels}/ into {SITE}")
    print(f"  {'build':<17} gsplat's kernels for this GPU ({'reuse ' + str(args.gsplat_build) + ' if it matches, else ' if args.gsplat_build else ''}"
          f"build with TORCH_CUDA_ARCH_LIST=<its capability>, MAX_JOBS=<its cores>), saved as {BUILD_PARTS}*")
    for step, names in (("pytest", ["pytest"]), ("render", ["render"]), ("render_batch", ["render_batch"]), ("train_step", ["train_step"]),
                        ("loader", [name for name, _, _ in loader_runs(args.quick)]), ("train_gvit", ["train_gvit"]),
                        ("train_gvit_device", ["train_gvit_device"])):
        chosen = step in args.only
        for k, name in enumerate(names):
            label = step if k == 0 else ""
            print(f"  {label:<17} {'' if chosen else 'not run (--only): '}{' '.join(plan[name])}")
        if step == "loader":
            print(f"  {'':<17} {'' if chosen else 'not run (--only): '}each with --step-reference <this run's train_step.json, "
                  f"else {STEP_REFERENCE.relative_to(ROOT)}>; the JPEGs: {IMAGES // (4 if args.quick else 1)} generated "
                  f"{IMAGE_SIZE[0]} x {IMAGE_SIZE[1]}, shared with the trainer's runs")
    print(f"  {'compare':<17} " + (f"each trainer run's steady img/s per phase against the compiled step's (target >= {TRAINER_TARGET}x)"
                                    if args.trainer != "short" and not args.quick else "nothing (a short trainer run has no steady epochs)"))
    print(f"  {'cache':<17} compile caches in {INDUCTOR} ({'from ' + str(args.inductor_cache) + ', ' if args.inductor_cache else ''}"
          f"saved as {CACHE_PARTS}* after train_step)")
    print(f"  {'report':<17} {args.out / 'device_check.json'} (and device_check.log)")
    if args.dry_run:
        problems = preflight(args, work, installed=False)
        note = None
        if not problems:
            note = device_flag_missing(plan["train_gvit_device"])
            if note:
                print(f"NOTE     {note}: " + ("train_gvit_device will be skipped" if "train_gvit_device" in args.only
                                                  else "train_gvit_device, if asked for, would be skipped"))
        shutil.rmtree(work, ignore_errors=True)
        for problem in problems:
            print(f"MISSING  {problem}")
        print("dry run: everything the run needs is here" if not problems else f"dry run: {len(problems)} problem(s)")
        return 1 if problems else 0

    run = Run(args, work)
    wheels, problems = wheel_files(args.wheels)
    run.report["machine"] = machine_info(run)
    if problems or not run.report["machine"].get("gpu"):
        run.report["steps"]["preflight"] = {"status": "failed", "problems": problems or ["no CUDA GPU"]}
        run.save()
        run.say("\n".join(run.report["steps"]["preflight"]["problems"]))
        return 1
    passed = [run.step("wheels", lambda limit: (*run.execute("wheels", [
        "python", "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir", "--upgrade",
        "--target", str(SITE), *map(str, wheels)], limit), {"wheels": [w.name for w in wheels]}))]
    run.report["machine"] = machine_info(run)  # now with the carried packages' versions
    problems = preflight(args, work, installed=True)
    if problems:
        run.report["steps"]["preflight"] = {"status": "failed", "problems": problems}
        run.save()
        run.say("\n".join(problems))
        return 1
    passed.append(run.step("build", build_step(run, run.report["machine"])))
    if not passed[-1]:  # every later step would try to build gsplat again
        for name in STEPS[2:]:
            run.report["steps"][name] = {"status": "skipped", "why": "gsplat's kernels did not build or load"}
        run.save()
        run.say("gsplat's kernels did not build or load: the other steps are skipped (see steps.build in the JSON)")
        return 1

    def pytest_action(limit):
        rc, tail = run.execute("pytest", plan["pytest"], limit)
        run.report["tests"] = pytest_summary(work / "junit.xml")
        return rc, tail, {}

    def json_action(name, key):
        def action(limit):
            rc, tail = run.execute(name, plan[name], limit)
            path = work / f"{key}.json"
            if path.is_file():
                run.report[key] = json.loads(path.read_text())
            return rc, tail, {}
        return action

    def ensure_images() -> float:
        """The generated imagefolder the loader and the trainer read (written once); seconds it took."""
        if (work / "images").is_dir():
            return 0.0
        started, images = time.monotonic(), IMAGES // (4 if args.quick else 1)
        write_images(work / "images", images, CLASSES, IMAGE_SIZE)
        run.say(f"wrote {images} images in {time.monotonic() - started:.1f} s")
        return time.monotonic() - started

    def loader_action(limit):
        started = time.monotonic()
        ensure_images()
        runs, rcs, tails = {}, [], []
        names = [name for name, _, _ in loader_runs(args.quick)]
        for k, name in enumerate(names):
            left = limit - (time.monotonic() - started)
            if left < 15:
                runs[name] = {"status": "skipped", "why": "out of the step's time"}
                rcs.append(None)
                continue
            cmd = [*plan[name], "--step-reference", str(step_reference(work))]
            rc, tail = run.execute(name, cmd, left / (len(names) - k) * 1.5 if k < len(names) - 1 else left)
            rcs.append(rc)
            tails.append(tail[-1500:])
            path = work / f"{name}.json"
            runs[name] = loader_summary(json.loads(path.read_text())) if rc == 0 and path.is_file() else {"status": "failed", "rc": rc}
        run.report["loader"] = {"runs": runs, "lines": loader_lines(runs)}
        for line in run.report["loader"]["lines"]:
            run.say(line)
        rc = 0 if all(r == 0 for r in rcs) else (None if None in rcs else 1)
        return rc, "\n".join(tails), {}

    def train_gvit_action(name):
        def action(limit):
            started = time.monotonic()
            ensure_images()
            rc, output = run.execute(name, plan[name], limit - (time.monotonic() - started))
            run.report[name] = trainer_summary(output, work / ("train" if name == "train_gvit" else "train_device"))
            run.say(f"{name}: the trainer's img/s per epoch (from its first batch on): " + ", ".join(
                f"{e['epoch']} {e.get('phase')} {e.get('images_per_s')} ({e.get('images_per_s_after_first_batch')})"
                for e in run.report[name]["epochs"]))
            return rc, output, {}
        return action

    passed.append(run.step("pytest", pytest_action))
    passed.append(run.step("render", json_action("render", "render")))
    passed.append(run.step("render_batch", json_action("render_batch", "render_batch")))
    def keep_compile_cache():
        run.report["compile_cache"] = save_compile_cache(run.out)
        run.say(run.report["compile_cache"])

    run.say(restore_compile_cache(args.inductor_cache))
    passed.append(run.step("train_step", json_action("train_step", "train_step")))
    if "train_step" in args.only:
        keep_compile_cache()
    passed.append(run.step("loader", loader_action))
    passed.append(run.step("train_gvit", train_gvit_action("train_gvit")))
    missing = device_flag_missing(plan["train_gvit_device"]) if "train_gvit_device" in args.only else None
    if missing:  # not the machine's failure: the trainer is not there yet
        run.report["steps"]["train_gvit_device"] = {"status": "skipped", "why": missing}
        run.say(f"train_gvit_device skipped: {missing}")
    else:
        passed.append(run.step("train_gvit_device", train_gvit_action("train_gvit_device")))
    if {"train_gvit", "train_gvit_device"} & set(args.only) and "train_step" not in args.only:  # the trainer's compiled graphs, for the next call
        keep_compile_cache()
    if args.trainer != "short" and not args.quick:  # a short run's epochs change phase and compile: nothing steady to compare
        run.report["trainer_vs_step"] = trainer_vs_step(run.report, step_reference(work))
    run.report["targets"] = targets(run.report)
    run.report["seconds"] = round(time.monotonic() - run.started, 1)
    run.save()
    run.say("\n==== summary")
    for name, record in run.report["steps"].items():
        run.say(f"  {name:<17} {record['status']:<8} {record.get('seconds', '')}")
    for line in run.report["targets"]:
        run.say(f"  {line}")
    run.say(f"wrote {run.out / 'device_check.json'} in {run.report['seconds']} s")
    shutil.rmtree(work, ignore_errors=True)
    return 0 if all(passed) else 1


if __name__ == "__main__":
    sys.exit(main())
