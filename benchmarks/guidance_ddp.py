"""Time the guidance step under DDP: each encoder gradient all-reduced on its own (the old way)
against one bucketed all-reduce (:func:`timm_gvit.training.guidance.average_across_processes`).

    python benchmarks/guidance_ddp.py [--processes 2] [--model gvit_nano] [--img-size 32] [--num-gaussians 16]
                                      [--batch-size 16] [--steps 30] [--out PATH]

Started as a plain script, it starts itself again under ``accelerate launch --multi_gpu
--num_processes N`` with ``ACCELERATE_USE_CPU=true`` (gloo, one thread per process): Accelerate 1.16's
``--cpu`` starts more than one process only through ``mpirun``, and without it runs one. Every process builds the same model (same seed) and draws its own
batch, as DDP's shards do; the model is in training mode and the optimizer is the trainer's
(``create_adamw``, prepared by Accelerate), as in ``train_gvit.py``.

Measured, in one run, alternating the two ways round by round (both processes start each timed
call together, after a barrier; a call's time is the slower process's):

- ``step``: the whole guidance step (forward, backward, averaging, optimiser step);
- ``averaging``: the averaging alone, on one set of real gradients: per parameter, the old
  ``accelerator.gather`` of the finite flag plus one ``accelerator.reduce(grad, "mean")`` per
  tensor; bucketed, one call of ``average_across_processes``.

It also checks that the two ways give bit-identical weights after a step from the same state (SGD,
so that the weights show the gradients), and that the processes end with identical weights.
The per-parameter path lives only here, for this comparison. Output: a table on stdout and the JSON
``--out`` (default ``benchmarks/results/guidance_ddp.json``, git-ignored; the reference run is
``benchmarks/reference/guidance_ddp_cpu.json``).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--processes", type=int, default=2, help="processes (gloo, CPU)")
    parser.add_argument("--model", default="gvit_nano")
    parser.add_argument("--img-size", type=int, default=32)
    parser.add_argument("--num-gaussians", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=16, help="images per process")
    parser.add_argument("--steps", type=int, default=30, help="timed guidance steps per way (after --warmup)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--averaging-repeats", type=int, default=200, help="timed averaging calls per way")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "guidance_ddp.json")
    return parser.parse_args(argv)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CHILD = "GVIT_GUIDANCE_DDP_CHILD"  # set in the launched processes, which must never launch again


def launch(argv: list[str], args: argparse.Namespace) -> int:
    """This script again, under ``accelerate launch`` with ``args.processes`` CPU processes."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true", CHILD: "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(args.processes),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
               __file__, *argv]
    print("$ OMP_NUM_THREADS=1 ACCELERATE_USE_CPU=true python " + " ".join(command[1:]), flush=True)
    return subprocess.run(command, env=env, cwd=ROOT).returncode


def per_parameter_guidance_step(model, optimizer, images, targets, labels, *, gamma, accelerator, lambda_perc=0.1, with_dssim=True):
    """The guidance step as it was before the bucketed averaging: the flag gathered before the
    backward pass, then one ``accelerator.reduce`` per encoder gradient."""
    import torch
    import torch.nn.functional as F

    from timm_gvit.training.losses import reconstruction_loss
    from timm_gvit.training.optim import step_if_finite

    params = [p for p in model.encoder.parameters() if p.requires_grad]
    with accelerator.autocast():
        gaussians = model.encode(images, check_values=False)
        rec = reconstruction_loss(model.render(gaussians, tuple(images.shape[-2:])), targets, "bce", lambda_perc, with_dssim)
        cls = F.cross_entropy(model.classify(gaussians, check_values=False).float(), labels)
    finite = torch.isfinite(rec.detach()) & torch.isfinite(cls.detach())
    finite = accelerator.gather(finite[None]).all()
    grads = torch.autograd.grad(rec + gamma * cls, params, allow_unused=True)
    optimizer.zero_grad(set_to_none=True)
    scale = accelerator.scaler.get_scale() if accelerator.scaler is not None else 1.0
    for p, grad in zip(params, grads):
        grad = torch.zeros_like(p) if grad is None else grad
        grad = accelerator.reduce(grad, reduction="mean")
        p.grad = grad * scale
    step_if_finite(optimizer, finite)
    optimizer.zero_grad(set_to_none=True)
    return {"guidance/rec_loss": rec.detach(), "guidance/ce_loss": cls.detach(), "guidance/finite": finite}


def worker(args: argparse.Namespace) -> None:
    import timm
    import torch
    import torch.distributed as dist
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    import timm_gvit  # noqa: F401
    from timm_gvit.training.guidance import average_across_processes, guidance_step
    from timm_gvit.training.optim import create_adamw

    load_before = list(os.getloadavg())
    accelerator = Accelerator(cpu=True)
    rank, world = accelerator.process_index, accelerator.num_processes
    if world != args.processes:
        raise SystemExit(f"started {world} process(es), not {args.processes}")
    set_seed(0)
    model = timm.create_model(args.model, num_classes=10, img_size=args.img_size, num_gaussians=args.num_gaussians).train()
    gen = torch.Generator().manual_seed(1000 + rank)  # each process its own batch
    images = torch.randn(args.batch_size, 3, args.img_size, args.img_size, generator=gen)
    targets = torch.rand(args.batch_size, 3, args.img_size, args.img_size, generator=gen)
    labels = torch.randint(0, 10, (args.batch_size,), generator=gen)
    params = [p for p in model.encoder.parameters() if p.requires_grad]
    bucketed = lambda m, o: guidance_step(m, o, images, targets, labels, gamma=0.1, accelerator=accelerator)  # noqa: E731
    per_param = lambda m, o: per_parameter_guidance_step(m, o, images, targets, labels, gamma=0.1, accelerator=accelerator)  # noqa: E731

    def slowest(seconds: float) -> float:
        t = torch.tensor([seconds], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t.item()

    # 1. the two ways agree bit for bit, from the same state (eval: the same starting Gaussians in both)
    results = {}
    for name, step in (("per_parameter", per_param), ("bucketed", bucketed)):
        m = copy.deepcopy(model).eval()
        torch.manual_seed(0)
        step(m, torch.optim.SGD(m.parameters(), lr=0.5))
        results[name] = torch.cat([p.detach().reshape(-1) for p in m.encoder.parameters()])
    same_ways = torch.equal(results["per_parameter"], results["bucketed"])

    # 2. the guidance step, the two ways alternating (each its own model copy and optimizer)
    ways = {}
    for name, step in (("per_parameter", per_param), ("bucketed", bucketed)):
        m = copy.deepcopy(model).train()
        ways[name] = (m, accelerator.prepare(create_adamw(m, 1e-3, 0.05, (0.9, 0.95))), step)
    times = {name: [] for name in ways}
    for round_ in range(args.warmup + args.steps):
        order = list(ways) if round_ % 2 == 0 else list(ways)[::-1]
        for name in order:
            m, optimizer, step = ways[name]
            dist.barrier()
            start = time.perf_counter()
            step(m, optimizer)
            elapsed = slowest(time.perf_counter() - start)
            if round_ >= args.warmup:
                times[name].append(elapsed)
    weights = torch.cat([p.detach().reshape(-1) for name in ways for p in ways[name][0].encoder.parameters()])
    gathered = accelerator.gather(weights[None])
    same_ranks = all(torch.equal(gathered[0], gathered[i]) for i in range(world))

    # 3. the averaging alone, on one set of real gradients
    m = ways["bucketed"][0]
    with accelerator.autocast():
        gaussians = m.encode(images, check_values=False)
        loss = torch.nn.functional.cross_entropy(m.classify(gaussians, check_values=False).float(), labels)
    trained = [p for p in m.encoder.parameters() if p.requires_grad]
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(trained, torch.autograd.grad(loss, trained, allow_unused=True))]
    finite = torch.isfinite(loss.detach())

    def old_average():
        flag = accelerator.gather(finite[None]).all()
        return [accelerator.reduce(g, reduction="mean") for g in grads], flag

    averaging = {"per_parameter": old_average, "bucketed": lambda: average_across_processes(grads, finite, accelerator)}
    avg_times = {name: [] for name in averaging}
    for round_ in range(10 + args.averaging_repeats):
        for name in (list(averaging) if round_ % 2 == 0 else list(averaging)[::-1]):
            dist.barrier()
            start = time.perf_counter()
            averaging[name]()
            elapsed = slowest(time.perf_counter() - start)
            if round_ >= 10:
                avg_times[name].append(elapsed)
    same_average = all(torch.equal(a, b) for a, b in zip(old_average()[0], averaging["bucketed"]()[0]))

    if accelerator.is_main_process:
        def summary(values):
            return {"median_ms": 1e3 * statistics.median(values), "mean_ms": 1e3 * statistics.fmean(values),
                    "min_ms": 1e3 * min(values), "n": len(values)}

        record = {
            "command": " ".join(["python benchmarks/guidance_ddp.py", *sys.argv[1:]]),
            "processes": world, "backend": dist.get_backend(), "threads_per_process": torch.get_num_threads(),
            "model": args.model, "img_size": args.img_size, "num_gaussians": args.num_gaussians, "batch_size_per_process": args.batch_size,
            "encoder_tensors": len(params), "encoder_parameters": sum(p.numel() for p in params),
            "collectives_per_step": {"per_parameter": len(params) + 1, "bucketed": 1},
            "guidance_step": {name: summary(v) for name, v in times.items()},
            "averaging_only": {name: summary(v) for name, v in avg_times.items()},
            "bitwise_same_step_both_ways": same_ways, "bitwise_same_average_both_ways": same_average,
            "processes_bitwise_identical_after_steps": same_ranks,
            "cpu_count": os.cpu_count(), "load_average_before": load_before, "load_average_after": list(os.getloadavg()), "machine": platform.machine(),
            "python": platform.python_version(), "torch_version": torch.__version__, "timm_version": timm.__version__,
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        }
        print(f"\n{args.model}, {args.img_size} px, k = {args.num_gaussians}, batch {args.batch_size} per process, "
              f"{world} processes (gloo, {torch.get_num_threads()} thread each); {len(params)} encoder tensors, "
              f"{record['encoder_parameters'] / 1e6:.2f} M parameters")
        print(f"{'':24}{'per parameter':>16}{'bucketed':>12}{'saved':>10}")
        for title, table in (("guidance step (ms)", record["guidance_step"]), ("averaging only (ms)", record["averaging_only"])):
            old, new = table["per_parameter"]["median_ms"], table["bucketed"]["median_ms"]
            print(f"{title:24}{old:16.2f}{new:12.2f}{old - new:10.2f}")
        print(f"collectives per step: {len(params) + 1} -> 1; bit-identical: step {same_ways}, averaging {same_average}, "
              f"processes {same_ranks}")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote {args.out}")
        if not (same_ways and same_average and same_ranks):
            raise SystemExit("the bucketed averaging does not reproduce the per-parameter one")
    accelerator.wait_for_everyone()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if os.environ.get(CHILD) != "1":
        return launch(argv, args)
    with contextlib.suppress(BrokenPipeError):
        worker(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
