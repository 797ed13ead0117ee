"""Run the README's quick-start training and keep what the README quotes from it.

``train_gvit.py`` with no arguments trains gvit_nano on scikit-learn's digits (the preset in
``timm_gvit/training/config.py``). This script runs exactly that, with only ``--output-dir``
pointing into a scratch folder, times it, and writes ``OUT/default_digits_run.json`` (the final
metrics, the wall time, the resolved config, the machine and its load) and
``OUT/default_digits_run.log`` (the trainer's output):

    python benchmarks/default_run.py --out benchmarks/reference

The time depends on the machine and on what else runs on it: the JSON records the core count
and the load average before and after, so that a time measured on a busy machine reads as such.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "reference")
    args = parser.parse_args(argv)
    import timm
    import torch

    with tempfile.TemporaryDirectory() as scratch:
        run_dir = Path(scratch) / "gvit-digits"
        load_before, start = os.getloadavg(), time.perf_counter()
        result = subprocess.run([sys.executable, "train_gvit.py", "--output-dir", str(run_dir)], cwd=ROOT,
                                capture_output=True, text=True)
        wall_s, load_after = time.perf_counter() - start, os.getloadavg()
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "default_digits_run.log").write_text(result.stdout + result.stderr)
        if result.returncode != 0:
            print(result.stderr[-3000:], file=sys.stderr)
            return result.returncode
        metrics = json.loads((run_dir / "metrics.json").read_text())
        info = json.loads((run_dir / "run_info.json").read_text())
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
    config.pop("output_dir")  # the scratch folder; the default is runs/gvit-digits
    record = dict(
        command="python train_gvit.py",
        wall_s=round(wall_s, 1),
        top1=round(metrics["final"]["top1"], 2),
        top5=round(metrics["final"]["top5"], 2),
        psnr_db=round(metrics["final"]["psnr"], 2),
        total_steps=metrics["total_steps"],
        train_size=info["train_size"],
        val_size=info["val_size"],
        cpu_count=os.cpu_count(),
        load_average_before=[round(x, 2) for x in load_before],
        load_average_after=[round(x, 2) for x in load_after],
        machine=f"{platform.machine()} {platform.processor() or ''}".strip(),
        python=platform.python_version(),
        torch_version=torch.__version__,
        timm_version=timm.__version__,
        date=time.strftime("%Y-%m-%d", time.gmtime()),
        config=config,
    )
    (args.out / "default_digits_run.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({k: v for k, v in record.items() if k != "config"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
