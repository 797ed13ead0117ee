"""Two training processes on the CPU (gloo): the guidance step keeps them identical, and a 2-process
run resumed from a checkpoint of its guidance phase ends bit for bit as the uninterrupted one.

The trainer runs under ``accelerate launch --multi_gpu --num_processes 2`` with
``ACCELERATE_USE_CPU=true``: Accelerate's ``--cpu`` starts more than one process only through
``mpirun``, and without it runs one (checked below through the run's global batch).
"""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import timm
import torch
from safetensors.torch import load_file

import timm_gvit  # noqa: F401
from timm_gvit.training.guidance import average_across_processes, guidance_step

ROOT = Path(__file__).resolve().parents[1]
HALF = 6  # images per process in the guidance-step test


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------------
# the guidance step in a 2-process group


def guidance_model() -> torch.nn.Module:
    """gvit_nano, the same on every process; eval: the stored g0, so that one process and two see
    the same starting Gaussians; a non-zero residual head, so that the classifier's gradient
    reaches the encoder."""
    torch.manual_seed(0)
    model = timm.create_model("gvit_nano", num_classes=10, img_size=16, patch_size=8, num_gaussians=8)
    torch.nn.init.normal_(model.encoder.gaussian_head.fc2.weight, std=0.05)
    return model.eval()


def guidance_batch():
    """Two processes' batches, concatenated: ``[2 * HALF, ...]``."""
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(2 * HALF, 3, 16, 16, generator=gen)
    return images, (images * 0.2 + 0.5).clamp(0, 1), torch.randint(0, 10, (2 * HALF,), generator=gen)


def encoder_vector(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.encoder.parameters()]).clone()


def _guidance_worker(rank: int, port: int, out: str) -> None:
    """One of two processes: three guidance steps, each on this process's half of the batch, then
    the bucketed averaging on its own; the encoder's weights after each step and the checks'
    results into ``out/rank-<rank>.pt``."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_WORLD_SIZE="2")
    torch.set_num_threads(1)
    from accelerate import Accelerator

    from timm_gvit.training.losses import reconstruction_loss
    from timm_gvit.training.optim import create_adamw

    accelerator = Accelerator(cpu=True)
    assert accelerator.num_processes == 2
    model = guidance_model()
    images, targets, labels = (t[rank * HALF: (rank + 1) * HALF] for t in guidance_batch())
    results = {"before": encoder_vector(model)}
    # 1. SGD, so that the step shows the averaged gradient itself
    sgd = torch.optim.SGD(model.parameters(), lr=0.5)
    losses = guidance_step(model, sgd, images, targets, labels, gamma=1.0, accelerator=accelerator)
    results.update(sgd=encoder_vector(model), sgd_finite=losses["guidance/finite"])
    # 2. a non-finite loss (and gradients) on process 1 only: both skip
    def nan_on_one(rendered, target):
        return reconstruction_loss(rendered, target, "bce", 0.1, True) * (float("nan") if rank == 1 else 1.0)

    losses = guidance_step(model, sgd, images, targets, labels, gamma=1.0, accelerator=accelerator, reconstruction=nan_on_one)
    results.update(skipped=encoder_vector(model), skipped_finite=losses["guidance/finite"])
    # 3. the trainer's optimiser (fused AdamW, prepared by Accelerate)
    adamw = accelerator.prepare(create_adamw(model, 1e-3, 0.05, (0.9, 0.95)))
    losses = guidance_step(model, adamw, images, targets, labels, gamma=0.1, accelerator=accelerator)
    results.update(adamw=encoder_vector(model), adamw_finite=losses["guidance/finite"])
    # 4. several buckets (a small cap, a tensor above it, two dtypes): accelerator.reduce's values, tensor by tensor
    gen = torch.Generator().manual_seed(rank)
    tensors = [torch.randn(n, generator=gen).to(dtype) for n, dtype in
               ((3, torch.float32), (5000, torch.float32), (7, torch.bfloat16), (600, torch.float32), (2, torch.bfloat16))]
    averaged, finite = average_across_processes(tensors, torch.tensor(True), accelerator, bucket_bytes=2048)
    same = all(a.dtype == t.dtype and torch.equal(a, accelerator.reduce(t, "mean")) for a, t in zip(averaged, tensors))
    _, one_false = average_across_processes(tensors[2:3], torch.tensor(rank == 0), accelerator)  # bf16 only: the flag alone
    results.update(buckets_same=torch.tensor(same), buckets_finite=finite, one_false=one_false)
    torch.save(results, Path(out) / f"rank-{rank}.pt")
    accelerator.wait_for_everyone()
    torch.distributed.destroy_process_group()


def test_guidance_step_keeps_two_processes_identical_and_averages_their_batches(tmp_path):
    torch.multiprocessing.start_processes(_guidance_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True, start_method="spawn")
    ranks = [torch.load(tmp_path / f"rank-{r}.pt", weights_only=True) for r in (0, 1)]
    # every step leaves both processes with bit-identical encoders, and they skip together
    assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0])
    result = ranks[0]
    assert bool(result["sgd_finite"]) and not bool(result["skipped_finite"]) and bool(result["adamw_finite"])
    assert torch.equal(result["skipped"], result["sgd"])  # the skipped step moved nothing
    assert bool(result["buckets_same"]) and bool(result["buckets_finite"]) and not bool(result["one_false"])
    assert not torch.equal(result["adamw"], result["sgd"])
    # the SGD step is one process's step on both halves together (the losses are batch means):
    # the gradient is the mean of the processes' gradients
    model = guidance_model()
    assert torch.equal(encoder_vector(model), result["before"])
    images, targets, labels = guidance_batch()
    guidance_step(model, torch.optim.SGD(model.parameters(), lr=0.5), images, targets, labels, gamma=1.0)
    step_one, step_two = encoder_vector(model) - result["before"], result["sgd"] - result["before"]
    assert step_one.abs().max() > 1e-3  # a real step
    torch.testing.assert_close(step_two, step_one, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# the trainer with two processes

# 64 digits, 8 per process per step: 4 steps an epoch; reconstruction 2 steps, classifier 2, joint 4 of which the last 3
# are the guidance phase, a guidance step after each; checkpoints at steps 4 and 8 (epoch ends) and 6 (mid-epoch,
# after the guidance step of step 6)
RUN = ["--model-kwargs", "encoder_depth=1", "depth=1", "encoder_embed_dim=48", "embed_dim=48", "encoder_num_heads=2", "num_heads=2",
       "--img-size", "16", "--patch-size", "8", "--num-gaussians", "8", "--max-train-samples", "64", "--max-val-samples", "16",
       "--batch-size", "8", "--phase-unit", "steps", "--recon-epochs", "2", "--dssim-from", "1", "--classifier-epochs", "2",
       "--joint-epochs", "4", "--guidance-epochs", "3", "--guidance-every", "1", "--warmup-epochs", "1", "--ema-decay", "0.9",
       "--checkpoint-every", "6", "--keep-checkpoints", "0", "--workers", "0", "--log-every", "1", "--image-every", "1000",
       "--report-to", "none"]


def launch_two(*args: str) -> str:
    """train_gvit.py in two CPU processes; its output."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
               str(ROOT / "train_gvit.py"), *args]
    result = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    return output


def checkpoint_tensors(run: Path, step: int) -> dict[str, torch.Tensor]:
    folder = run / "checkpoints" / f"step-{step:08d}"
    return {f"{name}/{k}": v for name in ("model", "ema", "optimizer") for k, v in load_file(folder / f"{name}.safetensors").items()}


def test_two_process_run_resumed_in_its_guidance_phase_is_bit_exact(tmp_path):
    """Also a check that guidance leaves the processes identical, where only process 0's weights
    are ever saved: the resumed run starts both processes from process 0's weights at step 6
    (after a guidance step); had process 1's differed in the uninterrupted run, its gradients of
    step 7, which DDP averages into both, would differ, and so would the end."""
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    output = launch_two(*RUN, "--output-dir", str(full))
    assert json.loads((full / "run_info.json").read_text())["global_batch"] == 16, "not two processes"
    for step, phase in ((0, "reconstruction"), (2, "classifier"), (4, "joint"), (5, "guidance")):
        assert f"step {step}: phase '{phase}'" in output
    metrics = json.loads((full / "metrics.json").read_text())
    assert metrics["total_steps"] == 8 and metrics["guidance_steps"] == 3 and metrics["skipped_steps"] == 0
    assert sorted(p.name for p in (full / "checkpoints").iterdir()) == ["step-00000004", "step-00000006", "step-00000008"]
    assert json.loads((full / "checkpoints" / "step-00000006" / "trainer_state.json").read_text())["num_processes"] == 2

    # the run as a crash after step 6 left it, continued with two processes
    resumed.mkdir()
    shutil.copy(full / "config.yaml", resumed)
    shutil.copytree(full / "checkpoints" / "step-00000006", resumed / "checkpoints" / "step-00000006")
    output = launch_two("--output-dir", str(resumed), "--resume", "latest")
    assert "resumed from" in output and "step 6, epoch 1, batch 2" in output
    assert json.loads((resumed / "metrics.json").read_text()) == metrics
    a, b = checkpoint_tensors(full, 8), checkpoint_tensors(resumed, 8)
    assert a.keys() == b.keys() and [k for k in a if not torch.equal(a[k], b[k])] == []
    a, b = load_file(full / "export" / "model.safetensors"), load_file(resumed / "export" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_two_process_streamed_run_on_shards_resumed_in_its_joint_phase_is_bit_exact(tmp_path):
    """--streaming over tar shards, each process reading its half of the shards, no shuffle buffer:
    the exact case of docs/data.md. Resumed from a checkpoint in the middle of a joint-phase epoch."""
    from test_training import make_imagefolder
    from timm_gvit.tools.make_shards import write_shards

    make_imagefolder(tmp_path / "shapes" / "train", per_class=12)
    make_imagefolder(tmp_path / "shapes" / "val", per_class=4)
    written = write_shards(tmp_path / "shapes", tmp_path / "shards", per_shard=3, progress=False)
    assert len(written["train"]) == 12  # divides between the two processes
    args = [a for i, a in enumerate(RUN) if not (a.startswith("--max-") or RUN[i - 1].startswith("--max-"))]
    args += ["--dataset", str(tmp_path / "shards"), "--streaming", "--shuffle-buffer", "0", "--batch-size", "4", "--workers", "1",
             "--checkpoint-every", "4"]
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    output = launch_two(*args, "--output-dir", str(full))
    info = json.loads((full / "run_info.json").read_text())
    assert (info["global_batch"], info["steps_per_epoch"]) == (8, 3)  # (18 images per process - 3 in a partial batch) // 4
    metrics = json.loads((full / "metrics.json").read_text())
    assert metrics["total_steps"] == 8 and metrics["guidance_steps"] == 3 and "step 4: phase 'joint'" in output
    state = json.loads((full / "checkpoints" / "step-00000004" / "trainer_state.json").read_text())
    assert state["batch_in_epoch"] == 1 and len(state["loader_states"]) == 2  # where each process's stream was

    resumed.mkdir()
    shutil.copy(full / "config.yaml", resumed)
    shutil.copytree(full / "checkpoints" / "step-00000004", resumed / "checkpoints" / "step-00000004")
    output = launch_two("--output-dir", str(resumed), "--resume", "latest")
    assert "step 4, epoch 1, batch 1" in output
    assert json.loads((resumed / "metrics.json").read_text()) == metrics
    a, b = load_file(full / "export" / "model.safetensors"), load_file(resumed / "export" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
