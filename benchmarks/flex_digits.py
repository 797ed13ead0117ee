"""The measurements behind the flex GViT's choices (docs/flex.md), on scikit-learn's digits with the
trainer's built-in preset (gvit_nano, 16 px, patch 4; budgets 2, 4, 8 and 16 Gaussians):

    OMP_NUM_THREADS=1 python benchmarks/flex_digits.py layouts    # -> benchmarks/reference/flex_layouts.json
    OMP_NUM_THREADS=1 python benchmarks/flex_digits.py training   # -> benchmarks/reference/flex_training.json
    OMP_NUM_THREADS=1 python benchmarks/flex_digits.py order      # -> benchmarks/reference/flex_order.json

- ``layouts``: which nested g0 order reconstructs best. First how evenly each order's first k
  slots cover the image (no training: the largest and the mean distance from a pixel to its
  nearest centre, over those of a k-slot grid, on a 64-slot table); then the reconstruction
  warm-up alone (4 epochs, 200 steps, D-SSIM in the last) of a flex model per order and seed, and
  the validation PSNR at each budget (the encoder serving k) and of each prefix of the
  16-Gaussian encoding. The same warm-up then compares the step's budget drawn uniformly or in
  proportion to k (--budget-sampling), with and without the prefix loss (--prefix-loss), and the
  fixed-k models of the old way (grid g0, one k each) beside them.
- ``training``: the full preset schedule (reconstruction, classifier, joint with guidance) of a
  flex model with and without the prefix reconstruction loss (--prefix-loss), beside the fixed-k
  models the old way (grid g0, one k each) with the same steps: top-1, PSNR and prefix PSNR at each k.
- ``order``: the level of detail. The reconstruction warm-up with every budget at every step, with
  and without the prefix loss, compositing slot 0 in front (the paper's order) or each slot over
  those before it (``render_order=last_in_front``): does a prefix become a coarse image without
  flattening the full one?

Each run is the trainer in this process, one after another, in a scratch folder; the JSON keeps
the commands, the figures, the wall time and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BUDGETS = (2, 4, 8, 16)
COMMON = ["--report-to", "none", "--eval-every", "1000", "--checkpoint-every", "100000", "--image-every", "100000",
          "--log-every", "1000"]
RECON_ONLY = ["--recon-epochs", "4", "--dssim-from", "3", "--classifier-epochs", "0", "--joint-epochs", "0", "--guidance-epochs", "0"]


def train(args: list[str]) -> dict:
    """The final validation metrics of a trainer run with ``args`` (and the wall time)."""
    import train_gvit

    with tempfile.TemporaryDirectory() as scratch:
        started = time.perf_counter()
        assert train_gvit.main([*COMMON, *args, "--output-dir", str(Path(scratch) / "run")]) == 0
        final = json.loads((Path(scratch) / "run" / "metrics.json").read_text())["final"]
    return {"args": " ".join(args), "wall_s": round(time.perf_counter() - started, 1),
            **{key: round(value, 3) for key, value in final.items() if key.startswith(("top1", "psnr", "prefix_psnr"))}}


def coverage(num_slots: int = 64, prefixes=(4, 8, 16, 32, 64), resolution: int = 128) -> dict:
    """For each layout and prefix k: the largest and the mean pixel-to-nearest-centre distance of
    its first k centres, over those of grid_layout(k) (1: as even as a k-slot grid; lower is better)."""
    from timm_gvit.gaussians import G0_LAYOUTS, grid_layout, nested_layout

    axis = (torch.arange(resolution) + 0.5) / resolution * 2 - 1
    ys, xs = torch.meshgrid(axis, axis, indexing="ij")
    pixels = torch.stack([xs.flatten(), ys.flatten()], dim=-1)

    def distances(centres):
        d = torch.cdist(pixels, centres).min(dim=1).values
        return d.max().item(), d.mean().item()

    out = {}
    for layout in G0_LAYOUTS:
        table = grid_layout(num_slots)[0] if layout == "grid" else nested_layout(num_slots, layout)
        rows = {}
        for k in prefixes:
            (worst, mean), (grid_worst, grid_mean) = distances(table[:k]), distances(grid_layout(k)[0])
            rows[str(k)] = {"max": round(worst / grid_worst, 3), "mean": round(mean / grid_mean, 3)}
        rows["mean_over_k"] = {name: round(sum(r[name] for r in rows.values()) / len(prefixes), 3) for name in ("max", "mean")}
        out[layout] = rows
    return out


def layouts(seeds) -> dict:
    from timm_gvit.gaussians import NESTED_LAYOUTS

    flex = ["--budgets", ",".join(map(str, BUDGETS)), "--budget-sampling", "linear"]  # as measured, before 'all' was the default
    runs = {layout: [train([*RECON_ONLY, *flex, "--seed", str(seed), "--model-kwargs", f"g0_layout={layout}"]) for seed in seeds]
            for layout in NESTED_LAYOUTS}
    summary = {layout: {f"{metric}@{k}": round(sum(r[f"{metric}@{k}"] for r in rows) / len(rows), 2)
                        for metric in ("psnr", "prefix_psnr") for k in BUDGETS} for layout, rows in runs.items()}
    for layout, row in summary.items():
        row["psnr_mean_over_k"] = round(sum(row[f"psnr@{k}"] for k in BUDGETS) / len(BUDGETS), 2)
        row["prefix_psnr_mean_over_k"] = round(sum(row[f"prefix_psnr@{k}"] for k in BUDGETS) / len(BUDGETS), 2)
    choices = {f"{sampling}, {'prefix loss' if prefix else 'no prefix loss'}":
               [train([*RECON_ONLY, *flex, "--budget-sampling", sampling, f"--{'' if prefix else 'no-'}prefix-loss", "--seed", str(seed)])
                for seed in seeds] for sampling in ("linear", "uniform") for prefix in (True, False)}
    choices.update({f"fixed k={k}": [train([*RECON_ONLY, "--num-gaussians", str(k), "--seed", str(seed)]) for seed in seeds] for k in BUDGETS})
    return {"coverage_64_slots": coverage(), "reconstruction_warmup": {"seeds": list(seeds), "runs": runs, "mean": summary},
            "warmup_choices": {"runs": choices, "mean": mean_of(choices)}}


def mean_of(runs: dict) -> dict:
    """Each setting's metrics averaged over its seeds."""
    summary = {}
    for name, rows in runs.items():
        keys = [key for key in rows[0] if key not in ("args", "wall_s")]
        summary[name] = {key: round(sum(r[key] for r in rows) / len(rows), 2) for key in keys}
        summary[name]["wall_s"] = round(sum(r["wall_s"] for r in rows) / len(rows), 1)
    return summary


def training(seeds) -> dict:
    flex = ["--budgets", ",".join(map(str, BUDGETS)), "--budget-sampling", "linear"]  # as measured, before 'all' was the default
    runs = {"flex, prefix loss": [train([*flex, "--prefix-loss", "--seed", str(s)]) for s in seeds],
            "flex, no prefix loss": [train([*flex, "--no-prefix-loss", "--seed", str(s)]) for s in seeds]}
    for k in BUDGETS:
        runs[f"fixed k={k}"] = [train(["--num-gaussians", str(k), "--seed", str(s)]) for s in seeds]
    return {"seeds": list(seeds), "runs": runs, "mean": mean_of(runs)}


def order(seeds) -> dict:
    flex = ["--budgets", ",".join(map(str, BUDGETS)), "--budget-sampling", "all"]
    runs = {f"{render_order}, {'prefix loss' if prefix else 'no prefix loss'}":
            [train([*RECON_ONLY, *flex, f"--{'' if prefix else 'no-'}prefix-loss", "--seed", str(seed), "--model-kwargs", f"render_order={render_order}"])
             for seed in seeds] for render_order in ("first_in_front", "last_in_front") for prefix in (False, True)}
    return {"seeds": list(seeds), "runs": runs, "mean": mean_of(runs)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", choices=("layouts", "training", "order"))
    parser.add_argument("--seeds", default="0,1", help="comma-separated seeds (default 0,1)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "reference")
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    seeds = [int(s) for s in args.seeds.split(",")]
    load_before, started = os.getloadavg(), time.perf_counter()
    result = {"layouts": layouts, "training": training, "order": order}[args.study](seeds)
    record = {"command": f"OMP_NUM_THREADS={torch.get_num_threads()} python benchmarks/flex_digits.py {args.study} --seeds {args.seeds}",
              "preset": "train_gvit.py's built-in digits run (gvit_nano, 16 px, patch 4, batch 32)", "budgets": list(BUDGETS),
              **result, "wall_s": round(time.perf_counter() - started, 1), "cpu_count": os.cpu_count(),
              "load_average_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
              "torch": torch.__version__}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"flex_{args.study}.json"
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(result["mean"] if "mean" in result else {name: result[name]["mean"] for name in ("reconstruction_warmup", "warmup_choices")}, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
