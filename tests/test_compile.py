"""``train_gvit.py --compile`` on the CPU: the step's compiled regions trace whole (no graph
breaks), a compiled step computes what the eager one does, and nothing recompiles once every
phase (guidance included) has run."""

import copy

import pytest
import timm
import torch
import torch._dynamo
import torch._inductor.config

import timm_gvit  # noqa: F401
from timm_gvit.training.guidance import guidance_step
from timm_gvit.training.objective import GViTObjective
from timm_gvit.training.optim import create_adamw, step_if_finite

PHASES = ("reconstruction", "classifier", "joint")


def small_model():
    torch.manual_seed(0)
    model = timm.create_model("gvit_nano", num_classes=4, img_size=16, patch_size=8, num_gaussians=8, encoder_depth=1, depth=1,
                              encoder_embed_dim=32, embed_dim=32, encoder_num_heads=2, num_heads=2)
    torch.nn.init.normal_(model.encoder.gaussian_head.fc2.weight, std=0.05)  # Gaussians that depend on the image
    return model.train()


def batch():
    gen = torch.Generator().manual_seed(1)
    targets = torch.rand(4, 3, 16, 16, generator=gen)
    return (targets - 0.45) / 0.25, targets, torch.randint(0, 4, (4,), generator=gen)


def test_each_compiled_region_traces_without_graph_breaks():
    objective = GViTObjective(small_model(), label_smoothing=0.1)
    images, targets, labels = batch()
    calls = {
        "encode, training mode": lambda: (objective._encode, (images,)),
        "encode, eval mode": lambda: (objective.model.encoder.eval() and objective._encode, (images,)),
        "classification": lambda: (objective._classification, (objective._encode(images).detach(), labels)),
        "reconstruction": lambda: (objective._reconstruction_loss, (targets.flip(0), targets, False)),
        "reconstruction with D-SSIM": lambda: (objective._reconstruction_loss, (targets.flip(0), targets, True)),
    }
    for name, call in calls.items():
        fn, args = call()
        explanation = torch._dynamo.explain(fn)(*args)
        assert explanation.graph_break_count == 0, f"{name}: {explanation.break_reasons}"
        assert explanation.graph_count == 1, name


def run_steps(objective, optimizer, data, rounds: int = 1) -> list[float]:
    """One step of each phase and a guidance step, ``rounds`` times; the losses in order."""
    images, targets, labels = data
    losses = []
    for _ in range(rounds):
        for phase in PHASES:
            loss, _ = objective(images, targets, labels, phase, with_dssim=phase != "reconstruction")
            loss.backward()
            step_if_finite(optimizer, torch.isfinite(loss.detach()))
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
        out = guidance_step(objective.model, optimizer, images, targets, labels, gamma=0.1, encode=objective.encode,
                            classify=objective.classification, reconstruction=lambda r, t: objective.reconstruction(r, t, True))
        losses += [out["guidance/rec_loss"].item(), out["guidance/ce_loss"].item()]
    return losses


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_compiled_steps_match_eager_and_do_not_recompile():
    eager_model = small_model()
    compiled_model = copy.deepcopy(eager_model)
    eager = GViTObjective(eager_model)
    compiled = GViTObjective(compiled_model).compile_regions(fullgraph=True)
    data = batch()
    torch._dynamo.reset()
    # inductor draws its own random numbers unless told to fall back to eager's (the encoder's g0)
    with torch._inductor.config.patch(fallback_random=True):
        torch.manual_seed(2)
        expected = run_steps(eager, create_adamw(eager_model, 1e-3, 0.05, (0.9, 0.95)), data)
        optimizer = create_adamw(compiled_model, 1e-3, 0.05, (0.9, 0.95))
        torch.manual_seed(2)
        got = run_steps(compiled, optimizer, data)
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        assert graphs >= 4  # encode (training and eval mode), classification, reconstruction: all compiled
        with torch._dynamo.config.patch(error_on_recompile=True):  # every phase and guidance ran once: nothing new
            run_steps(compiled, optimizer, data)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs
    # four optimiser steps in a row (three phases and guidance), each on the last one's weights;
    # Adam amplifies rounding in near-zero gradients, so later rounds drift apart by design
    assert got == pytest.approx(expected, rel=1e-4, abs=1e-5)
