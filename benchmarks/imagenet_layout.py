"""Start-up of the trainer on ImageNet's folder layout: seconds to the first optimiser step, peak RSS, and PSS with workers.

    python benchmarks/imagenet_layout.py [--root /tmp/imagenet_layout] [--sizes 50000,250000,1281000] [--out PATH]
    python benchmarks/imagenet_layout.py --sizes 1281000 --skip-trainer            # timm's anchor only
    python benchmarks/imagenet_layout.py --sizes 2000 --classes 10 --val-per-class 5 --pss-steps 0   # seconds, for a smoke test
    python benchmarks/imagenet_layout.py --dry-run                                 # the plan: layouts and commands
    python benchmarks/imagenet_layout.py --trainer /tmp/gvit-OLD/train_gvit.py      # another commit's trainer (git archive)

For each size N (training images over ``--classes`` class folders, plus ``--val-per-class`` each
for validation) it lays out ``ROOT/N/train/nXXXXXXXX/nXXXXXXXX_i.JPEG`` and
``ROOT/N/val/nXXXXXXXX/ILSVRC2012_val_XXXXXXXX.JPEG`` with tiny real JPEGs (a handful of 8-16 px
images encoded once and written as bytes: the file count is the work, not decoding). A layout is
reused when its marker ``ROOT/N.layout.json`` (written last) matches; making one is not timed.

Before the sizes, one untimed warm-up launch of the trainer on a tiny layout of its own (``--no-warmup``
leaves it out): a machine's first run pays once for the CPU kernel's C++ build (some 20 s), .pyc files
and the libraries' first read, none of which is the data layer's. The launches build that kernel in
their own ``TORCH_EXTENSIONS_DIR`` (``ROOT/torch_extensions/<trainer checkout>``): in torch's shared
one, a build made from another checkout's path (another engineer's tests) is rebuilt inside the
first step. Then, each in a fresh process (the page cache is the only state they share, and the
first of them warms it for the folder):

1. the anchor: timm's own folder reader, ``timm.data.create_dataset('', root=ROOT/N/train)``,
   its seconds and the process's peak RSS;
2. ``train_gvit.py --dataset ROOT/N`` with a tiny model (gvit_nano at 16 px, so the step is
   negligible) from a cold start of the trainer's caches: ``TIMM_GVIT_CACHE_DIR`` (the data layer's
   per-dataset index) and ``HF_DATASETS_CACHE`` point into a fresh temporary folder. Timed from
   launch to its first optimiser step, read off the trainer's own progress bar on stderr
   (``epoch 0: ... | 1/N``; ``--log-every 1`` makes the trainer read its loss after every step,
   but it prints only skipped steps, the loss goes into the bar);
3. the same command again with the same cache folder (a new ``--output-dir``): the warm start;
4. with ``--pss-steps K`` (default 200; 0 leaves it out), a third launch with
   ``--pss-workers`` (default 8) loader workers, stopped once its bar shows step K, and the
   proportional set size (``/proc/PID/smaps_rollup``) of the trainer and its workers summed at that
   moment: what the machine really spends on them (RSS counts the pages the workers share with the
   trainer once per process).

Every launch is stopped (its whole process group) once it got where it should; a launch that does
not get there within ``--timeout`` seconds, or ends first, is recorded as a failure with its last
lines. The trainer's output, each line (and each progress-bar refresh, thinned to one a second) with
its offset from the launch in seconds, goes into the JSON, so that a silent start shows as a gap
(``longest_silence_s``). The peak RSS of a launch is the largest ``VmHWM`` of the trainer and of
any of its child processes, polled every 0.1 s (the trainer's own is read just before it is
stopped, so it is exact).

Targets (for ImageNet's 1.28 M training + 50 k validation images; at smaller sizes the same
numbers are a lower bar): first step <= 90 s, peak RSS <= 4 GB per process, second launch
<= 30 s, PSS of the trainer with 8 workers after 200 steps <= 6 GB.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import queue
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRAINER = ROOT / "train_gvit.py"
GB = 1e9
TARGETS = {"first_launch_s": 90.0, "peak_rss_gb": 4.0, "second_launch_s": 30.0, "pss_gb": 6.0}
# the trainer's epoch bar (tqdm on stderr): "epoch 0:   0%|          | 1/1562 [00:01<..., ...]"
BAR = re.compile(r"^epoch (\d+):.*?\|\s*(\d+)/(\d+) \[")
LOSS_LINE = re.compile(r"^step (\d+)\b.*\bloss\b")  # a per-step loss line, should the trainer print one (it does not yet)
ANNOUNCE = re.compile(r" train / \d+ val images, \d+ classes\)")  # the trainer's line once data and model are ready
FIRST_BATCH = re.compile(r"step 0: phase '")  # printed when the first batch has arrived, before the first step
TIMM_ANCHOR = r"""
import json, resource, sys, time
t0 = time.perf_counter()
import timm.data
t1 = time.perf_counter()
def rss_kb():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS:'):
            return int(line.split()[1])
before = rss_kb()
dataset = timm.data.create_dataset('', root=sys.argv[1])
t2 = time.perf_counter()
classes = len(getattr(dataset.reader, 'class_to_idx', {}) or {})
print(json.dumps({'index_s': t2 - t1, 'import_s': t1 - t0, 'images': len(dataset), 'classes': classes,
                  'rss_before_gb': before * 1024 / 1e9, 'peak_rss_gb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9,
                  'rss_after_gb': rss_kb() * 1024 / 1e9}))
"""


# ---------------------------------------------------------------------------------------------- layout

def parse_size(text: str) -> int:
    """``50000``, ``50k``, ``1.281M`` -> images."""
    text = text.strip().lower().replace("_", "")
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1:], 1)
    number = float(text[:-1] if scale > 1 else text)
    if number * scale < 1 or number * scale != int(number * scale):
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number of images >= 1")
    return int(number * scale)


def class_names(classes: int) -> list[str]:
    """ImageNet-like WordNet ids, n01440764 on (distinct, sorted)."""
    return [f"n{1440764 + 1000 * i:08d}" for i in range(classes)]


def per_class(total: int, classes: int) -> list[int]:
    """``total`` images over ``classes`` folders, the remainder one each to the first folders."""
    base, extra = divmod(total, classes)
    return [base + (i < extra) for i in range(classes)]


def tiny_jpegs(count: int = 16, seed: int = 0) -> list[bytes]:
    """``count`` distinct small JPEGs (8-16 px a side, noise), encoded once."""
    from PIL import Image

    rng = random.Random(seed)
    out = []
    for _ in range(count):
        w, h = rng.randint(8, 16), rng.randint(8, 16)
        image = Image.frombytes("RGB", (w, h), bytes(rng.randrange(256) for _ in range(w * h * 3)))
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def layout_plan(root: Path, size: int, classes: int, val_per_class: int) -> dict:
    return {"dataset": str(root / str(size)), "train_images": size, "val_images": val_per_class * classes, "classes": classes,
            "val_per_class": val_per_class, "marker": str(root / f"{size}.layout.json")}


def _write_folder(folder: Path, names: list[str], jpegs: list[bytes], start: int) -> int:
    """Write ``names`` into ``folder`` unless all are there already (non-empty); returns files written."""
    folder.mkdir(parents=True, exist_ok=True)
    with os.scandir(folder) as entries:
        present = {e.name for e in entries if e.stat().st_size > 0}
    if present.issuperset(names):
        return 0
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    base = str(folder) + os.sep
    for i, name in enumerate(names):
        fd = os.open(base + name, flags, 0o644)
        try:
            os.write(fd, jpegs[(start + i) % len(jpegs)])
        finally:
            os.close(fd)
    return len(names)


def make_layout(root: Path, size: int, classes: int, val_per_class: int, threads: int = 4, progress: bool = True) -> dict:
    """The layout of ``size`` training images, made (or completed) unless its marker says it is there."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    plan = layout_plan(root, size, classes, val_per_class)
    marker = Path(plan["marker"])
    params = {k: plan[k] for k in ("train_images", "val_images", "classes", "val_per_class")}
    if marker.exists():
        recorded = json.loads(marker.read_text())
        if {k: recorded.get(k) for k in params} != params:
            raise SystemExit(f"{marker} records {recorded}, not {params}: use another --root (or delete {plan['dataset']} and the marker)")
        return {**plan, "created": False, "files_written": 0, "seconds": 0.0}
    dataset = Path(plan["dataset"])
    names = class_names(classes)
    jobs = []  # (folder, file names, offset into the JPEGs)
    offset = 0
    for name, count in zip(names, per_class(size, classes)):
        jobs.append((dataset / "train" / name, [f"{name}_{i}.JPEG" for i in range(1, count + 1)], offset))
        offset += count
    for c, name in enumerate(names):
        jobs.append((dataset / "val" / name, [f"ILSVRC2012_val_{c * val_per_class + i + 1:08d}.JPEG" for i in range(val_per_class)], offset))
        offset += val_per_class
    jpegs = tiny_jpegs()
    started = time.perf_counter()
    written = 0
    with tqdm(total=offset, unit="file", unit_scale=True, desc=f"layout {size}", disable=not progress, mininterval=1) as bar:
        with ThreadPoolExecutor(max(1, threads)) as pool:  # creating files is system calls: threads overlap them
            futures = [pool.submit(_write_folder, folder, files, jpegs, start) for folder, files, start in jobs]
            for future, (_, files, _) in zip(futures, jobs):
                written += future.result()
                bar.update(len(files))
    seconds = time.perf_counter() - started
    marker.write_text(json.dumps({**params, "files": offset, "seconds_to_make": seconds}, indent=2) + "\n")
    return {**plan, "created": True, "files_written": written, "seconds": seconds}


# ---------------------------------------------------------------------------------------------- processes

def _proc_kb(pid: int, name: str, key: str) -> int | None:
    """``key:`` of ``/proc/PID/name`` in kB (None once the process is gone)."""
    try:
        with open(f"/proc/{pid}/{name}") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError, ValueError):
        return None
    return None


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants."""
    import psutil

    try:
        return [pid] + [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def tree_pss_gb(pid: int) -> tuple[float, int]:
    """PSS summed over ``pid`` and its descendants (GB), and how many processes that is."""
    pids = process_tree(pid)
    values = [v for v in (_proc_kb(p, "smaps_rollup", "Pss") for p in pids) if v is not None]
    return sum(values) * 1024 / GB, len(values)


def stop_group(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """SIGTERM to the process group of ``proc`` (its session), SIGKILL after ``grace`` s."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(grace)
            # workers may outlive the trainer briefly; the group is gone when killpg fails
            os.killpg(proc.pid, 0)
        except subprocess.TimeoutExpired:
            continue
        except ProcessLookupError:
            break
        time.sleep(0.2)
    proc.wait()


def _reader(stream, out: queue.Queue, started: float) -> None:
    """Output segments with the time (since ``started``) their text arrived, ``(t, text, kind)``:
    kind "line" (ended by a newline), "refresh" (ended by a carriage return: tqdm writes each
    refresh as ``\\r`` + bar, so a bar ends only when the next write comes) or "partial" (the text so
    far of a segment not ended yet, sent at once so that a bar is seen when it is written)."""
    pending, pending_t = b"", 0.0
    fd = stream.fileno()
    while True:
        chunk = os.read(fd, 65536)
        now = time.perf_counter() - started
        if not chunk:
            break
        parts = re.split(rb"(\r\n|\r|\n)", chunk)
        tail = parts.pop()
        for i, (text, end) in enumerate(zip(parts[0::2], parts[1::2])):
            t = now if text or not pending else pending_t  # a segment's time is that of its last text
            if i == 0:
                text, pending = pending + text, b""
            out.put((t, text.decode("utf-8", "replace"), "refresh" if end == b"\r" else "line"))
        if tail:
            pending, pending_t = pending + tail, now
            out.put((now, pending.decode("utf-8", "replace"), "partial"))
    if pending:
        out.put((pending_t, pending.decode("utf-8", "replace"), "line"))
    out.put(None)


class Transcript:
    """The lines of a launch with their offsets; progress-bar refreshes (carriage returns) of the
    same bar are kept at most once a second (the count of those left out is kept)."""

    def __init__(self):
        self.lines: list[list] = []
        self.thinned = 0
        self._last_bar = (None, -1.0)

    def add(self, t: float, text: str, kind: str) -> None:
        text = text.rstrip()
        if not text or kind == "partial":
            return
        if kind == "refresh":
            label = text.split(":", 1)[0][:40]
            if label == self._last_bar[0] and t - self._last_bar[1] < 1.0:
                self.thinned += 1
                return
            self._last_bar = (label, t)
        self.lines.append([round(t, 3), text])

    def longest_silence(self, until: float) -> tuple[float, float]:
        """The longest gap (s) between output lines from the launch (0) to ``until``, and where it began."""
        times = [0.0] + [t for t, _ in self.lines if t <= until] + [until]
        gaps = [(b - a, a) for a, b in zip(times, times[1:])]
        return max(gaps) if gaps else (0.0, 0.0)


def trainer_command(dataset: str, output_dir: str, workers: int, steps: int, batch_size: int, extra: list[str],
                    trainer: Path = TRAINER) -> list[str]:
    return [sys.executable, "-u", str(trainer), "--dataset", dataset, "--model", "gvit_nano", "--img-size", "16", "--patch-size", "4",
            "--num-gaussians", "16", "--batch-size", str(batch_size), "--workers", str(workers), "--phase-unit", "steps",
            "--recon-epochs", str(steps), "--classifier-epochs", "0", "--joint-epochs", "0", "--guidance-epochs", "0",
            "--log-every", "1", "--report-to", "none", "--checkpoint-every", "1000000", "--image-every", "1000000",
            "--output-dir", output_dir, *extra]


def launch_plan(workers: int, pss_steps: int, pss_workers: int) -> list[tuple[str, int, int, int]]:
    """The launches of one size: (name, loader workers, step to stop at, steps the schedule has)."""
    plan = [("first", workers, 1, 3), ("second", workers, 1, 3)]
    return plan + ([("pss", pss_workers, pss_steps, 2 * pss_steps + 10)] if pss_steps else [])


def _follow(proc: subprocess.Popen, lines: queue.Queue, transcript: Transcript, milestones: dict, hwm: dict[int, int],
            stop_at_step: int, timeout: float, started: float) -> tuple[int | None, str | None, bool]:
    """Read the launch's output until its step ``stop_at_step`` shows, it ends, or ``timeout``
    passes, noting its milestones and (every 0.1 s) the VmHWM of each of its processes; returns the
    step seen, the failure, and whether it ended."""
    last_poll, tree_rss_peak = -1.0, 0
    while True:
        items = []
        try:  # everything the reader has queued (a burst of progress bars must not lag behind), waiting 0.1 s for the first
            items.append(lines.get(timeout=0.1))
            while items[-1] is not None:
                items.append(lines.get_nowait())
        except queue.Empty:
            pass
        now = time.perf_counter() - started
        if now - last_poll >= 0.1:
            last_poll, rss = now, 0
            for pid in process_tree(proc.pid):
                peak = _proc_kb(pid, "status", "VmHWM")
                if peak is not None:
                    hwm[pid] = max(hwm.get(pid, 0), peak)
                rss += _proc_kb(pid, "status", "VmRSS") or 0
            tree_rss_peak = milestones["tree_rss_peak_kb"] = max(tree_rss_peak, rss)
        for item in items:
            if item is None:
                return None, f"the trainer ended (exit code {proc.wait()}) before step {stop_at_step}", True
            t, text, kind = item
            transcript.add(t, text, kind)
            milestones.setdefault("first_output_s", t)
            if ANNOUNCE.search(text):
                milestones.setdefault("announced_s", t)
            if FIRST_BATCH.search(text):
                milestones.setdefault("first_batch_s", t)
            bar, loss_line = BAR.match(text.strip()), LOSS_LINE.match(text.strip())
            if bar:
                epoch, n, per_epoch = (int(g) for g in bar.groups())
                step = epoch * per_epoch + n  # one optimiser step per batch (no accumulation)
            elif loss_line:
                step = int(loss_line.group(1))
            else:
                continue
            if step >= 1:
                milestones.setdefault("first_step_s", t)
                milestones.setdefault("first_step_seen_at", step)
            if step >= stop_at_step:
                milestones["stopped_at_step_s"] = t
                return step, None, False
        if now > timeout:
            return None, f"timeout: no step {stop_at_step} within {timeout:.0f} s", False


def launch_trainer(command: list[str], cache_dir: Path, stop_at_step: int, timeout: float, measure_pss: bool,
                   env: dict[str, str] | None = None) -> dict:
    """Run ``command`` until its progress bar shows optimiser step ``stop_at_step`` (or it ends, or
    ``timeout`` passes); the times of its milestones, its memory, and its output. The trainer's
    caches (``TIMM_GVIT_CACHE_DIR``, ``HF_DATASETS_CACHE``) are in ``cache_dir``; ``env`` adds to
    its environment."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TIMM_GVIT_CACHE_DIR": str(cache_dir),
           "HF_DATASETS_CACHE": str(cache_dir / "hf_datasets"), **(env or {})}
    lines: queue.Queue = queue.Queue()
    transcript = Transcript()
    started = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                            cwd=Path(command[2]).parent, start_new_session=True)
    reader = threading.Thread(target=_reader, args=(proc.stdout, lines, started), daemon=True)
    reader.start()
    hwm: dict[int, int] = {}  # kB, per pid
    milestones: dict = {}
    pss = None
    try:
        step_seen, failure, ended = _follow(proc, lines, transcript, milestones, hwm, stop_at_step, timeout, started)
    except BaseException:  # interrupted: leave no trainer behind
        stop_group(proc)
        raise
    tree_rss_peak = milestones.pop("tree_rss_peak_kb", 0)  # kB, the largest sum of VmRSS over the tree at one poll
    if not ended:
        hwm[proc.pid] = max(hwm.get(proc.pid, 0), _proc_kb(proc.pid, "status", "VmHWM") or 0)
        if measure_pss and failure is None:
            pss, processes = tree_pss_gb(proc.pid)
            milestones["pss_processes"] = processes
        stop_group(proc)
    reader.join(timeout=5)
    while True:  # what it printed while being stopped
        try:
            item = lines.get_nowait()
        except queue.Empty:
            break
        if item:
            transcript.add(*item)
    first_step = milestones.get("first_step_s")
    silence, silence_from = transcript.longest_silence(first_step if first_step is not None else time.perf_counter() - started)
    return {"ok": failure is None, "failure": failure, "command": command, "cache_dir": str(cache_dir),
            "seconds_to_first_step": first_step, "step_seen": step_seen, **milestones,
            "longest_silence_s": round(silence, 3), "longest_silence_from_s": round(silence_from, 3),
            "peak_rss_gb": max(hwm.values(), default=0) * 1024 / GB,
            "trainer_peak_rss_gb": hwm.get(proc.pid, 0) * 1024 / GB,
            "processes_seen": len(hwm), "tree_rss_peak_gb": tree_rss_peak * 1024 / GB,
            "pss_gb": pss, "exit_code": proc.returncode, "lines": transcript.lines, "progress_refreshes_thinned": transcript.thinned,
            "last_lines": [text for _, text in transcript.lines[-15:]] if failure else None}


def extensions_dir(root: Path, trainer: Path) -> Path:
    """The launches' own ``TORCH_EXTENSIONS_DIR``, one per trainer checkout, kept beside the layouts.

    torch's shared default (``~/.cache/torch_extensions``) holds one build of the CPU kernel, whose
    ninja file names the source's path: a launch from another checkout than the last one there
    (another engineer's tests, a ``git archive``) rebuilds it, 15-40 s inside the first step."""
    import hashlib

    return root / "torch_extensions" / hashlib.sha256(str(trainer.resolve().parent).encode()).hexdigest()[:12]


def timm_anchor(train_dir: str, timeout: float) -> dict:
    """timm's folder reader on ``train_dir`` in a fresh process."""
    started = time.perf_counter()
    try:
        result = subprocess.run([sys.executable, "-c", TIMM_ANCHOR, train_dir], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"ok": False, "failure": f"timeout after {timeout:.0f} s"}
    wall = time.perf_counter() - started
    if result.returncode != 0:
        return {"ok": False, "failure": f"exit code {result.returncode}", "last_lines": result.stderr.splitlines()[-15:]}
    return {"ok": True, "process_s": wall, **json.loads(result.stdout.strip().splitlines()[-1])}


def data_layer_version(trainer: Path = TRAINER) -> dict:
    """Which trainer and data layer were measured: the commit of the trainer's checkout, which of its
    files differ from it in the working tree, and a hash of the trainer's and the data layer's
    sources (so that a checkout without git, e.g. ``git archive``, can be told apart too)."""
    import hashlib

    folder = trainer.resolve().parent

    def git(*args):
        try:
            result = subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return result.stdout.strip() if result.returncode == 0 else None
    status = git("status", "--porcelain", "--", "train_gvit.py", "timm_gvit")
    digest = hashlib.sha256()
    for path in [trainer, *sorted((folder / "timm_gvit" / "training").glob("*.py"))]:
        digest.update(path.name.encode() + (path.read_bytes() if path.exists() else b""))
    return {"trainer": str(trainer), "commit": git("rev-parse", "HEAD"), "uncommitted": status.splitlines() if status else [],
            "sources_sha256": digest.hexdigest()[:16]}


# ---------------------------------------------------------------------------------------------- report

def checks(entry: dict) -> dict:
    """Each figure of a size against its target: True (pass), False (fail) or None (not measured)."""
    def against(value, target):
        return None if value is None else value <= target

    def launch(entry, target):  # a launch that timed out or crashed before its first step fails its target
        if not entry:
            return None
        seconds = entry.get("seconds_to_first_step")
        return False if seconds is None else seconds <= target

    launches = entry.get("launches", {})
    first, second, pss = (launches.get(k) or {} for k in ("first", "second", "pss"))
    peaks = [run["peak_rss_gb"] for run in (first, second, pss) if run.get("peak_rss_gb")]
    return {"first_launch_s": launch(first, TARGETS["first_launch_s"]),
            "second_launch_s": launch(second, TARGETS["second_launch_s"]),
            "peak_rss_gb": against(max(peaks) if peaks else None, TARGETS["peak_rss_gb"]),
            "pss_gb": (against(pss.get("pss_gb"), TARGETS["pss_gb"]) if pss["ok"] else False) if pss else None}


def table(report: dict) -> str:
    def cell(value, ok=None, fmt="{:.1f}"):
        if value is None:
            return "-"
        return fmt.format(value) + {True: " pass", False: " FAIL", None: ""}[ok]

    def launch_cell(launch, ok):
        if not launch:
            return "-"
        if not launch["ok"] and launch.get("seconds_to_first_step") is None:
            return "failed" if "timeout" not in (launch["failure"] or "") else "timeout"
        return cell(launch.get("seconds_to_first_step"), ok)

    header = ["train images", "timm index s", "first launch s", "second launch s", "peak RSS GB", "PSS GB"]
    rows = [header]
    for entry in report["sizes"]:
        launches, ok = entry.get("launches", {}), entry.get("checks", {})
        anchor = entry.get("timm") or {}
        peaks = [launch["peak_rss_gb"] for launch in launches.values() if launch and launch.get("peak_rss_gb")]
        rows.append([f"{entry['train_images']:,}",
                     cell(anchor.get("index_s")) if anchor.get("ok") else ("failed" if anchor else "-"),
                     launch_cell(launches.get("first"), ok.get("first_launch_s")),
                     launch_cell(launches.get("second"), ok.get("second_launch_s")),
                     cell(max(peaks) if peaks else None, ok.get("peak_rss_gb"), "{:.2f}"),
                     cell((launches.get("pss") or {}).get("pss_gb"), ok.get("pss_gb"), "{:.2f}")])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append(f"targets (ImageNet, 1.28 M + 50 k): first step <= {TARGETS['first_launch_s']:.0f} s, second launch <= "
                 f"{TARGETS['second_launch_s']:.0f} s, peak RSS <= {TARGETS['peak_rss_gb']:.0f} GB per process, PSS with "
                 f"8 workers after 200 steps <= {TARGETS['pss_gb']:.0f} GB"
                 + ("" if (report["pss_workers"], report["pss_steps"]) == (8, 200) else
                    f" (this run: {report['pss_workers']} workers after {report['pss_steps']} steps)" if report["pss_steps"] else
                    " (this run: no PSS launch)"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--root", type=Path, default=Path("/tmp/imagenet_layout"),
                        help="where the layouts live, one folder per size (default /tmp/imagenet_layout)")
    parser.add_argument("--sizes", type=lambda s: [parse_size(x) for x in s.split(",") if x.strip()], default="50000,250000,1281000",
                        help="training images in total, comma-separated; k and M suffixes allowed (default 50000,250000,1281000)")
    parser.add_argument("--classes", type=int, default=1000, help="class folders (default 1000)")
    parser.add_argument("--val-per-class", type=int, default=50, help="validation images per class (default 50)")
    parser.add_argument("--layout-threads", type=int, default=4, help="threads that write the layout's files (default 4)")
    parser.add_argument("--layout-only", action="store_true", help="make the layouts and stop")
    parser.add_argument("--skip-timm", action="store_true", help="leave out timm's anchor")
    parser.add_argument("--skip-trainer", action="store_true", help="leave out the trainer's launches (timm's anchor only)")
    parser.add_argument("--workers", type=int, default=2, help="loader workers of the first and second launch (default 2)")
    parser.add_argument("--batch-size", type=int, default=32, help="the trainer's --batch-size (default 32)")
    parser.add_argument("--pss-steps", type=int, default=200,
                        help="a third launch runs this many steps and then measures PSS; 0 leaves it out (default 200)")
    parser.add_argument("--pss-workers", type=int, default=8, help="loader workers of the PSS launch (default 8)")
    parser.add_argument("--trainer-arg", action="append", default=[], metavar="ARG",
                        help="one more argument for train_gvit.py (repeat the flag; e.g. --trainer-arg=--mixed-precision --trainer-arg=no)")
    parser.add_argument("--trainer", type=Path, default=TRAINER,
                        help="the train_gvit.py to launch, e.g. one of a `git archive` of another commit "
                             "(its folder comes first on its sys.path, so its timm_gvit is the one measured; default: this checkout's)")
    parser.add_argument("--warmup", action=argparse.BooleanOptionalAction, default=True,
                        help="first launch the trainer once on a tiny layout of its own (4 classes, own cache), untimed, so that "
                             "what any first run on a machine pays once (the CPU kernel's C++ build, .pyc files, the libraries in "
                             "the page cache) is not put on the data layer (default: on)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per launch before it counts as failed (default 1800)")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="where the launches' caches and run folders go, removed afterwards (default: a temporary folder)")
    parser.add_argument("--dry-run", action="store_true", help="print the layouts and commands, make and run nothing")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar while making layouts")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "imagenet_layout.json", help="JSON output")
    args = parser.parse_args(argv)
    if isinstance(args.sizes, str):
        args.sizes = [parse_size(x) for x in args.sizes.split(",")]
    if args.classes < 1 or args.val_per_class < 0 or args.workers < 0 or args.pss_steps < 0 or args.pss_workers < 0 or args.batch_size < 1:
        parser.error("--classes and --batch-size must be >= 1; --val-per-class, --workers, --pss-steps, --pss-workers >= 0")
    if any(size < args.classes for size in args.sizes):
        parser.error(f"every size needs at least one image per class ({args.classes} classes)")
    if args.pss_steps and args.pss_steps < 1:
        parser.error("--pss-steps must be >= 1, or 0")

    report = {"benchmark": "imagenet_layout", "argv": sys.argv[1:] if argv is None else list(argv), "root": str(args.root),
              "classes": args.classes, "val_per_class": args.val_per_class, "workers": args.workers, "batch_size": args.batch_size,
              "pss_steps": args.pss_steps, "pss_workers": args.pss_workers, "timeout_s": args.timeout, "targets": TARGETS,
              "cores": os.cpu_count(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "data_layer": data_layer_version(args.trainer),
              "started": time.strftime("%Y-%m-%d %H:%M:%S"), "sizes": []}
    if args.dry_run:
        if args.warmup and not args.skip_trainer:
            print(f"warm-up launch (untimed) on {layout_plan(args.root / 'warmup', 64, 4, 2)['dataset']} (64 train images in 4 classes)")
        if not args.skip_trainer:
            print(f"launches: TORCH_EXTENSIONS_DIR={extensions_dir(args.root, args.trainer)}, TIMM_GVIT_CACHE_DIR and "
                  "HF_DATASETS_CACHE in a fresh folder per size")
        for size in args.sizes:
            plan = layout_plan(args.root, size, args.classes, args.val_per_class)
            print(f"layout {size}: {plan['dataset']} ({size} train + {plan['val_images']} val in {args.classes} classes), "
                  f"{'there' if Path(plan['marker']).exists() else 'to make'}")
            if not args.skip_timm:
                print(f"  timm: create_dataset('', root='{plan['dataset']}/train')")
            if not args.skip_trainer:
                for name, workers, stop_at, steps in launch_plan(args.workers, args.pss_steps, args.pss_workers):
                    command = trainer_command(plan["dataset"], "RUN_DIR", workers, steps, args.batch_size, args.trainer_arg, args.trainer)
                    print(f"  {name} launch, stopped at step {stop_at}: " + " ".join(command[1:]))
        return report

    work = Path(tempfile.mkdtemp(prefix="imagenet_layout-", dir=args.work_dir))
    env = {"TORCH_EXTENSIONS_DIR": str(extensions_dir(args.root, args.trainer))}
    report["torch_extensions_dir"] = env["TORCH_EXTENSIONS_DIR"]
    failed = False
    try:
        if args.warmup and not args.skip_trainer and not args.layout_only:
            tiny = make_layout(args.root / "warmup", 64, 4, 2, progress=False)
            (work / "cache-warmup").mkdir()
            command = trainer_command(tiny["dataset"], str(work / "run-warmup"), args.workers, 3, 8, args.trainer_arg, args.trainer)
            report["warmup"] = warm = launch_trainer(command, work / "cache-warmup", 1, args.timeout, measure_pss=False, env=env)
            print(f"warm-up launch on {tiny['dataset']}: " + (f"first step at {warm['seconds_to_first_step']:.1f} s" if warm["ok"]
                                                               else f"FAILED: {warm['failure']}"), flush=True)
            if not warm["ok"] and warm["last_lines"]:
                print("    " + "\n    ".join(warm["last_lines"]), flush=True)
        for size in args.sizes:
            layout = make_layout(args.root, size, args.classes, args.val_per_class, args.layout_threads, not args.no_progress)
            print(f"layout {size}: {layout['dataset']} " + (f"made in {layout['seconds']:.0f} s ({layout['files_written']} files written)"
                                                          if layout["created"] else "(already there)"), flush=True)
            entry = {"train_images": size, "val_images": layout["val_images"], "layout": layout, "launches": {}}
            report["sizes"].append(entry)
            if args.layout_only:
                continue
            if not args.skip_timm:
                entry["timm"] = anchor = timm_anchor(str(Path(layout["dataset"]) / "train"), args.timeout)
                print("  timm create_dataset: " + (f"{anchor['index_s']:.1f} s, {anchor['images']} images, peak RSS {anchor['peak_rss_gb']:.2f} GB"
                                                    if anchor["ok"] else anchor["failure"]), flush=True)
                failed |= not anchor["ok"]
            if not args.skip_trainer:
                cache = work / f"cache-{size}"
                cache.mkdir()
                for name, workers, stop_at, steps in launch_plan(args.workers, args.pss_steps, args.pss_workers):
                    if name != "first" and not entry["launches"]["first"]["ok"]:
                        entry["launches"][name] = None  # no warm cache to time
                        continue
                    command = trainer_command(layout["dataset"], str(work / f"run-{size}-{name}"), workers, steps, args.batch_size,
                                              args.trainer_arg, args.trainer)
                    launch = launch_trainer(command, cache, stop_at, args.timeout, measure_pss=name == "pss", env=env)
                    launch["workers"] = workers
                    if name == "first":
                        launch["cache_bytes"] = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file())
                    entry["launches"][name] = launch
                    failed |= not launch["ok"]
                    summary = (f"first step at {launch['seconds_to_first_step']:.1f} s" if launch.get("seconds_to_first_step") is not None
                               else "no first step")
                    print(f"  {name} launch ({workers} workers): {summary}, longest silence {launch['longest_silence_s']:.1f} s, "
                          f"peak RSS {launch['peak_rss_gb']:.2f} GB" + (f", PSS {launch['pss_gb']:.2f} GB over "
                                                                        f"{launch.get('pss_processes')} processes at step {launch['step_seen']}"
                                                                        if launch.get("pss_gb") is not None else "")
                          + ("" if launch["ok"] else f"; FAILED: {launch['failure']}"), flush=True)
                    if not launch["ok"] and launch["last_lines"]:
                        print("    " + "\n    ".join(launch["last_lines"]), flush=True)
            entry["checks"] = checks(entry)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    report["failed"] = failed
    print(table(report))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    sys.exit(1 if main().get("failed") else 0)
