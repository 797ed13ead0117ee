"""One GViT for several Gaussian budgets (issue 30, docs/flex.md): the model, the trainer's --budgets,
loading a flex checkpoint at a chosen k, and the explain command's budget figure."""

import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import load_file

import timm_gvit  # noqa: F401
import train_gvit
from timm_gvit.gaussians import NESTED_LAYOUTS, decode_gaussians, grid_layout, nested_layout
from timm_gvit.training.budgets import budget_loss_weights, draw_budget, parse_budget_weights, eval_budgets, guidance_budgets, parse_budgets, step_budgets
from timm_gvit.training.config import parse_config
from timm_gvit.training.guidance import guidance_step
from timm_gvit.training.objective import GViTObjective

from test_training import SHORT, TINY, assert_same_run, one_thread, resume

ROOT = Path(__file__).resolve().parents[1]
FLEX = dict(img_size=32, patch_size=8, num_classes=5, num_gaussians=64, budgets=[8, 16, 32, 64])


def flex(**kwargs):
    return timm.create_model("gvit_nano", **{**FLEX, **kwargs})


def digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().contiguous().numpy().tobytes()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------------ off: nothing changes
def _float_platform() -> dict:
    """This CPU's name and a digest of a seeded init, matmul and softmax: float kernels differ between
    CPUs (AVX2, AVX-512, vendors), so recorded digests hold only on a CPU whose probe matches."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "") if Path("/proc/cpuinfo").is_file() else ""
    torch.manual_seed(0)
    w = torch.empty(256, 256)
    timm.layers.trunc_normal_(w, std=0.02)
    x = torch.randn(64, 256)
    return {"cpu": cpu, "probe": digest(torch.cat([w.flatten(), torch.softmax(x @ w, -1).exp().flatten()]))}


def test_a_model_without_budgets_is_bit_identical_to_before_budgets_existed(tmp_path):
    """tests/data/flex_reference_before_budgets.json holds these digests as the code before this
    feature computed them: a fixed-seed gvit_nano's weights, its outputs in eval and training mode,
    and a short trainer run's exported weights and final metrics."""
    references = json.loads((ROOT / "tests" / "data" / "flex_reference_before_budgets.json").read_text())["references"]
    with one_thread():
        platform = _float_platform()
        reference = next((r for r in references if r["platform"].get("probe") == platform["probe"]
                          or ("probe" not in r["platform"] and r["platform"]["cpu"] == platform["cpu"])), None)
        if reference is None:
            pytest.skip(f"no digests recorded for this CPU's float kernels ({platform}): bit identity holds per CPU; run "
                        "this test's computation with the code before budgets (commit a61a5bf) and add its entry")
        reference = {k: v for k, v in reference.items() if k != "platform"}
        torch.manual_seed(0)
        model = timm.create_model("gvit_nano", num_classes=10)
        got = {"state_dict": hashlib.sha256(b"".join(v.numpy().tobytes() for v in model.state_dict().values())).hexdigest()[:16]}
        x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
        model.eval()
        with torch.no_grad():
            got.update(eval_logits=digest(model(x)), eval_gaussians=digest(model.encode(x)),
                       features=digest(model.forward_intermediates(x, indices=2)[1][0]))
            torch.manual_seed(2)
            model.train()
            out = model.forward_train(x)
            got.update(train_logits=digest(out.logits), train_gaussians=digest(out.gaussians), train_render=digest(out.reconstruction))
        assert train_gvit.main([*TINY, "--output-dir", str(tmp_path / "run")]) == 0
    weights = load_file(str(tmp_path / "run" / "export" / "model.safetensors"))
    got["trained"] = hashlib.sha256(b"".join(weights[k].numpy().tobytes() for k in sorted(weights))).hexdigest()[:16]
    got["final"] = json.loads((tmp_path / "run" / "metrics.json").read_text())["final"]
    assert got == reference
    assert "budgets" not in json.loads((tmp_path / "run" / "export" / "config.json").read_text())["model_args"]


# ------------------------------------------------------------------------------------------------ nested layouts
@pytest.mark.parametrize("layout", NESTED_LAYOUTS)
def test_every_prefix_of_a_nested_layout_covers_the_image(layout):
    """The mean and the largest distance from a pixel to the nearest of the first k centres,
    against a k-slot grid's: near 1 for every k (the row-by-row grid's first 16 of 64 leave the
    bottom 3/4 bare)."""
    axis = (torch.arange(64) + 0.5) / 64 * 2 - 1
    pixels = torch.stack(torch.meshgrid(axis, axis, indexing="xy"), dim=-1).reshape(-1, 2)

    def reach(centres):
        d = torch.cdist(pixels, centres).min(dim=1).values
        return torch.stack([d.mean(), d.max()])

    table = nested_layout(64, layout)
    assert table.shape == (64, 2) and table.abs().max() < 1 and len(set(map(tuple, table.tolist()))) == 64
    ratios = torch.stack([reach(table[:k]) / reach(grid_layout(k)[0]) for k in (4, 16, 32, 64)])
    assert (ratios[:, 0] < 1.45).all() and (ratios[:, 1] < 2.5).all(), ratios
    assert (reach(grid_layout(64)[0][:16]) / reach(grid_layout(16)[0]) > 3.5).all()
    if layout == "morton":  # the grid's cells, one per quadrant first
        assert sorted(map(tuple, table.tolist())) == sorted(map(tuple, grid_layout(64)[0].tolist()))
        assert {(x > 0, y > 0) for x, y in table[:4].tolist()} == {(False, False), (False, True), (True, False), (True, True)}
    assert torch.equal(nested_layout(256, layout)[:64], table) == (layout != "morton")  # the sequences do not depend on the table


def test_flex_g0_is_a_prefix_of_one_table_sized_for_each_budget():
    model = flex().eval()
    encoder, table = model.encoder, nested_layout(64, "morton")
    assert model.encoder.g0_layout == "morton" and encoder.slot_embed.shape[1] == 64 and model.classifier.pos_embed.shape[1] == 65
    full = decode_gaussians(encoder.initial_gaussians(1))[0]
    assert torch.equal(encoder.initial_gaussians(1), encoder.eval_g0)  # at the largest budget: the stored draw
    assert ((full[:, :2] - table).abs() <= 0.125 + 1e-6).all()  # jittered by at most half of a 64-slot spacing
    for k in (8, 16, 32):
        model.set_num_gaussians(k)
        g0 = decode_gaussians(encoder.initial_gaussians(2))
        assert g0.shape == (2, k, 9) and torch.allclose(g0[0, :, :2], full[:k, :2])  # the same slots, the same places
        ratio = (g0[0, :, 2:4] / full[:k, 2:4]).mean().item()
        assert ratio == pytest.approx((64 / k) ** 0.5, rel=0.02)  # sized for k
        model.train()
        drawn = decode_gaussians(encoder.initial_gaussians(500))
        assert ((drawn[..., :2] - table[:k]).abs() <= 1 / k**0.5 + 1e-4).all()  # half a k-slot spacing, 2 / sqrt(k) / 2
        assert drawn[..., 2:4].log().mean().exp().item() == pytest.approx(1 / k**0.5, rel=0.05)  # sigma about half the spacing
        model.eval()


# ------------------------------------------------------------------------------------------------ the interface
def test_set_num_gaussians_serves_each_budget_with_every_forward_path():
    model, x = flex().eval(), torch.randn(2, 3, 32, 32)
    for k in (8, 20, 64):
        model.set_num_gaussians(k)
        gaussians = model.encode(x)
        assert gaussians.shape == (2, k, 9) and model.num_gaussians == model.encoder.num_gaussians == model.classifier.num_gaussians == k
        torch.testing.assert_close(model(x), model.classify(gaussians))
        assert model.forward_features(x).shape == (2, 1 + k, 128)
        final, maps = model.forward_intermediates(x, indices=2, return_prefix_tokens=True)
        assert final.shape == (2, 1 + k, 128) and [(m.shape, t.shape) for m, t in maps] == [((2, 128, 4, 4), (2, k, 128))] * 2
        out = model.forward_train(x)
        assert out.gaussians.shape == (2, k, 9) and out.reconstruction.shape == (2, 3, 32, 32)
    features = timm.create_model("gvit_nano", features_only=True, **{**FLEX, "num_gaussians": 16}).eval()
    assert features.model.num_gaussians == 16 and [f.shape for f in features(x)] == [(2, 128, 4, 4)] * 3


def test_a_prefix_of_one_encoding_renders_and_classifies():
    model, x = flex().eval(), torch.randn(2, 3, 32, 32)
    gaussians = model.encode(x)
    for k in (8, 16, 40):
        assert model.render(gaussians[:, :k]).shape == (2, 3, 32, 32)
        assert model.classify(gaussians[:, :k]).shape == (2, 5)
    with pytest.raises(ValueError, match=r"\[B, k, 9\] with k from 8 to 64"):
        model.classify(gaussians[:, :4])
    fixed = timm.create_model("gvit_nano", img_size=32, num_classes=5).eval()
    with pytest.raises(ValueError, match=r"\[B, 64, 9\]"):
        fixed.classify(fixed.encode(x)[:, :16])


def test_render_order_decides_which_of_overlapping_gaussians_is_seen():
    """Eight opaque discs in one place, slot i coloured i/7 in red: the paper's order shows slot 0,
    last_in_front slot 7, and a prefix of last_in_front shows its own last slot."""
    gaussians = torch.zeros(1, 8, 9)
    gaussians[..., 2:4] = 0.5  # sigma: a disc over the centre
    gaussians[..., 5] = torch.arange(8) / 7  # red
    gaussians[..., 8] = 0.99  # opacity
    paper, painter = flex(render_order="first_in_front"), flex(render_order="last_in_front")
    centre = lambda image: image[0, 0, 16, 16].item()  # noqa: E731
    assert centre(paper.render(gaussians)) == pytest.approx(0.99 * 0 / 7 + 0.01 * 0.99 * 1 / 7, abs=2e-3)
    assert centre(painter.render(gaussians)) == pytest.approx(0.99 * 7 / 7 + 0.01 * 0.99 * 6 / 7, abs=2e-3)
    assert centre(painter.render(gaussians[:, :3])) == pytest.approx(0.99 * 2 / 7 + 0.01 * 0.99 * 1 / 7, abs=2e-3)
    assert torch.equal(painter.render(gaussians), paper.render(gaussians.flip(1)))
    with pytest.raises(ValueError, match="render_order must be one of"):
        flex(render_order="back_to_front")


def test_render_order_travels_with_the_weights_and_init_from_refuses_the_other_order(tmp_path):
    from timm.models import save_for_hf

    from timm_gvit.training.checkpoints import load_encoder_weights, load_model_weights

    painter = flex(render_order="last_in_front").eval()
    save_for_hf(painter, tmp_path, safe_serialization=True)
    assert json.loads((tmp_path / "config.json").read_text())["model_args"]["render_order"] == "last_in_front"
    loaded = timm.create_model(f"local-dir:{tmp_path}", pretrained=True).eval()
    x = torch.randn(2, 3, 32, 32)
    assert loaded.render_order == "last_in_front" and torch.equal(loaded.forward_train(x).reconstruction, painter.forward_train(x).reconstruction)
    assert "render_order" not in flex().architecture_args()  # a model in the paper's order writes the config it always did
    for load in (load_encoder_weights, load_model_weights):
        with pytest.raises(ValueError, match=r"render_order='last_in_front'.*--model-kwargs render_order=last_in_front"):
            load(flex(), tmp_path)
        assert load(flex(render_order="last_in_front"), tmp_path) > 0


def test_budgets_the_model_was_not_trained_for_are_refused_with_the_reason():
    model = flex()
    for k in (4, 65):
        with pytest.raises(ValueError, match="outside the budgets this model was trained for: it serves 8 to 64"):
            model.set_num_gaussians(k)
    fixed = timm.create_model("gvit_nano", img_size=32, num_classes=5)
    with pytest.raises(ValueError, match="trained for 64 Gaussians only, not for other budgets"):
        fixed.set_num_gaussians(32)
    fixed.set_num_gaussians(64)  # its own k
    with pytest.raises(ValueError, match="num_gaussians=128 is outside the budgets"):
        flex(num_gaussians=128)
    with pytest.raises(ValueError, match="need a nested g0_layout"):
        flex(g0_layout="grid")
    with pytest.raises(ValueError, match="budgets must be a non-empty list"):
        flex(budgets="8,16")
    with pytest.raises(ValueError, match="g0_layout must be one of"):
        flex(g0_layout="spiral")


def test_compile_and_export_at_a_chosen_budget():
    model, x = flex().eval(), torch.randn(2, 3, 32, 32)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    for k in (16, 64):
        model.set_num_gaussians(k)
        torch.testing.assert_close(compiled(x), model(x), rtol=0, atol=1e-5)
    model.set_num_gaussians(16)
    program = torch.export.export(model, (x,))
    torch.testing.assert_close(program.module()(x), model(x), rtol=0, atol=1e-5)


def test_guidance_descends_cross_entropy_at_the_step_budget():
    torch.manual_seed(0)
    model = flex(encoder_depth=2, depth=2, num_classes=4)
    torch.nn.init.normal_(model.encoder.gaussian_head.fc2.weight, std=0.05)
    model.set_num_gaussians(16)
    model.eval()  # fixed g0
    images, labels = torch.randn(8, 3, 32, 32), torch.randint(0, 4, (8,))

    def cross_entropy():
        with torch.no_grad():
            return torch.nn.functional.cross_entropy(model(images), labels).item()

    before = cross_entropy()
    losses = guidance_step(model, torch.optim.SGD(model.parameters(), lr=0.05), images, (images * 0.2 + 0.5).clamp(0, 1), labels,
                           gamma=1.0, lambda_perc=0.0, with_dssim=False)
    assert losses["guidance/ce_loss"].item() == pytest.approx(before, rel=1e-5)
    assert cross_entropy() < before and model.num_gaussians == 16


def test_guidance_over_several_budgets_steps_the_encoder_by_the_mean_of_each_budgets_gradient():
    """--guidance-budgets all: one SGD step on the mean loss moves the encoder by the mean of the steps each budget takes alone."""
    with one_thread():
        torch.manual_seed(0)
        model = flex(encoder_depth=2, depth=2, num_classes=4).eval()  # fixed g0: each budget's loss is deterministic
        torch.nn.init.normal_(model.encoder.gaussian_head.fc2.weight, std=0.05)
        start = {n: p.detach().clone() for n, p in model.named_parameters()}
        images, labels = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1, 2, 3])
        targets = (images * 0.2 + 0.5).clamp(0, 1)

        def guide(budgets):
            model.load_state_dict(start, strict=False)
            losses = guidance_step(model, torch.optim.SGD(model.parameters(), lr=0.1), images, targets, labels, gamma=1.0,
                                   lambda_perc=0.0, with_dssim=False, budgets=budgets)
            return losses, {n: p.detach() - start[n] for n, p in model.named_parameters()}

        alone = [guide([k]) for k in (8, 16, 64)]
        together, moved = guide([8, 16, 64])
    assert model.num_gaussians == 64  # left at the last budget; the trainer restores the one it serves
    for name in ("guidance/rec_loss", "guidance/ce_loss"):
        assert together[name].item() == pytest.approx(sum(a[0][name].item() for a in alone) / 3, rel=1e-5)
    assert len({round(a[0]["guidance/ce_loss"].item(), 4) for a in alone}) == 3  # the budgets' losses differ
    for name, delta in moved.items():
        if name.startswith("encoder."):
            torch.testing.assert_close(delta, sum(a[1][name] for a in alone) / 3, atol=1e-6, rtol=1e-4)
        else:
            assert not delta.any(), name  # the classifier is frozen
    assert any(moved[n].any() for n in moved if n.startswith("encoder."))


# ------------------------------------------------------------------------------------------------ the trainer
def test_budgets_parse_as_lists_and_ranges_and_are_drawn_per_step_from_the_seed():
    assert parse_budgets("8,16,32,64") == [8, 16, 32, 64] and parse_budgets("64, 8,16") == [8, 16, 64]
    assert parse_budgets("8-12") == [8, 9, 10, 11, 12] and parse_budgets("4,8-9") == [4, 8, 9]
    for bad in ("8,x", "16-8", "0,4", ""):
        with pytest.raises(ValueError, match="--budgets"):
            parse_budgets(bad)
    budgets = [8, 16, 32, 64]
    draws = [draw_budget(budgets, 0, step, prefix=True) for step in range(1200)]
    assert draws == [draw_budget(budgets, 0, step, prefix=True) for step in range(1200)]  # a function of (seed, step)
    assert draws != [draw_budget(budgets, 1, step, prefix=True) for step in range(1200)]
    counts = [sum(d[0] == k for d in draws) for k in budgets]
    assert all(abs(n - 1200 * k / 120) < 60 for n, k in zip(counts, budgets)), counts  # in proportion to k (the default)
    uniform = [draw_budget(budgets, 0, step, prefix=True, sampling="uniform")[0] for step in range(1200)]
    assert all(abs(uniform.count(k) - 300) < 60 for k in budgets)
    assert all(p is None if k == 8 else p in budgets and p < k for k, p in draws)
    assert all(p is None for _, p in (draw_budget(budgets, 0, step, prefix=False) for step in range(50)))


def test_the_guidance_step_guides_the_drawn_budget_the_largest_or_every_budget():
    budgets = [8, 16, 32, 64]
    for step in range(30):
        assert guidance_budgets(budgets, "drawn", 0, step, "all") == [draw_budget(budgets, 0, step, False, "linear")[0]]
        assert guidance_budgets(budgets, "drawn", 0, step, "uniform") == [draw_budget(budgets, 0, step, False, "uniform")[0]]
        assert guidance_budgets(budgets, "largest", 0, step) == [64] and guidance_budgets(budgets, "all", 0, step) == budgets
    assert len({guidance_budgets(budgets, "drawn", 0, step)[0] for step in range(30)}) > 1
    for step in range(30):  # unset (the default): the budgets the normal steps train
        assert guidance_budgets(budgets, None, 0, step, "all") == budgets
        assert guidance_budgets(budgets, None, 0, step, "linear") == guidance_budgets(budgets, "drawn", 0, step, "linear")
    assert parse_config(["--budgets", "8,16"]).guidance_budgets is None
    assert parse_config(["--budgets", "8-64", "--budget-sampling", "linear"]).guidance_budgets is None  # drawn: no refusal
    with pytest.raises(ValueError, match="guidance budgets must be one of"):
        guidance_budgets(budgets, "every", 0, 0)


def test_every_budget_every_step_trains_each_budget_with_its_own_prefix():
    budgets = [8, 16, 32, 64]
    for step in range(20):
        assert step_budgets(budgets, 0, step, prefix=False) == [draw_budget(budgets, 0, step, prefix=False)]  # one drawn
        everything = step_budgets(budgets, 0, step, prefix=True, sampling="all")
        assert [k for k, _ in everything] == budgets and everything == step_budgets(budgets, 0, step, prefix=True, sampling="all")
        assert everything[0][1] is None and all(p in budgets and p < k for k, p in everything[1:])
        assert step_budgets(budgets, 0, step, prefix=False, sampling="all") == [(k, None) for k in budgets]
    prefixes = [tuple(p for _, p in step_budgets(budgets, 0, step, prefix=True, sampling="all")) for step in range(30)]
    assert len(set(prefixes)) > 5  # drawn per step, not fixed


@pytest.mark.parametrize("phase,weights", [("reconstruction", "equal"), ("classifier", "equal"), ("joint", "equal"),
                                           ("reconstruction", "linear"), ("joint", "sqrt"), ("classifier", "inverse"),
                                           ("joint", "inverse-sqrt")])
def test_a_step_over_several_budgets_is_the_weighted_mean_of_each_budgets_loss_and_gradient(phase, weights):
    """The objective over (k, prefix) pairs against the same model stepped at each k on its own:
    the mean (--budget-weights equal), or weighted in proportion to k, sqrt(k), 1/k or 1/sqrt(k); the
    logged parts stay the plain mean."""
    w = {"equal": [1 / 3] * 3, "linear": [8 / 88, 16 / 88, 64 / 88], "sqrt": [v / (2 ** 1.5 + 4 + 8) for v in (2 ** 1.5, 4, 8)],
         "inverse": [8 / 13, 4 / 13, 1 / 13],  # 1/8 : 1/16 : 1/64 = 8 : 4 : 1
         "inverse-sqrt": [v / (2 ** -1.5 + 1 / 4 + 1 / 8) for v in (2 ** -1.5, 1 / 4, 1 / 8)]}[weights]
    assert budget_loss_weights([8, 16, 64], weights) == pytest.approx(w)
    with one_thread():
        torch.manual_seed(0)
        model = flex().train()
        objective = GViTObjective(model, budget_weights=weights)
        images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        targets, labels = (images * 0.2 + 0.5).clamp(0, 1), torch.tensor([1, 3])
        pairs = [(8, None), (16, 8), (64, 32)]

        def run(pairs):
            model.zero_grad()
            torch.manual_seed(1)  # the denoising g0 of each budget, drawn in the same order
            loss, parts = objective(images, targets, labels, phase, True, pairs)
            loss.backward()
            return loss.detach(), parts, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

        together, parts, grads = run(pairs)
        torch.manual_seed(1)
        alone = []
        for pair in pairs:
            model.zero_grad()
            loss, part = objective(images, targets, labels, phase, True, [pair])
            loss.backward()
            alone.append((loss.detach(), part, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    assert model.num_gaussians == 64  # left at the last budget; the trainer restores the one it serves
    assert torch.allclose(together, sum(wi * a[0] for wi, a in zip(w, alone)), atol=1e-6)
    assert len({round(a[0].item(), 4) for a in alone}) == 3  # the budgets' losses differ: the weights are not trivial
    for name in parts:
        assert torch.allclose(parts[name], torch.stack([a[1][name] for a in alone]).mean(), atol=1e-6)
    assert grads.keys() == alone[0][2].keys()
    for name, grad in grads.items():
        assert torch.allclose(grad, sum(wi * a[2][name] for wi, a in zip(w, alone)), atol=1e-5, rtol=1e-4), name
    with pytest.raises(ValueError, match="budget weights must be one of"):
        GViTObjective(model, budget_weights="cubic")


def test_two_schemes_weight_each_budgets_reconstruction_and_classification_loss_each_its_own():
    """--budget-weights linear,equal: in a joint step the reconstruction losses weighted in proportion
    to k and the classification losses their mean; in phase 1 it is 'linear', in the classifier phase
    'equal' (so one run weights phase 1 and not the classifier phase)."""
    assert parse_budget_weights("linear,equal") == ("linear", "equal") and parse_budget_weights("sqrt") == ("sqrt", "sqrt")
    pairs, w = [(8, None), (16, 8), (64, 32)], [8 / 88, 16 / 88, 64 / 88]
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    targets, labels = (images * 0.2 + 0.5).clamp(0, 1), torch.tensor([1, 3])
    with one_thread():
        torch.manual_seed(0)
        model = flex().train()
        objective = GViTObjective(model, budget_weights="linear,equal")

        def gradients(loss):
            model.zero_grad()
            loss.backward()
            return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

        torch.manual_seed(1)
        loss, _ = objective(images, targets, labels, "joint", True, pairs)
        grads = gradients(loss)
        torch.manual_seed(1)  # each budget's losses with their graphs, the denoising g0 drawn in the same order
        recs, ces = [], []
        for k, prefix in pairs:
            model.set_num_gaussians(k)
            rec, ce, _, _ = objective._step(images, targets, labels, "joint", True, prefix)
            recs.append(rec)
            ces.append(ce)
        expected = sum(wi * rec for wi, rec in zip(w, recs)) + torch.stack(ces).mean()
        assert torch.allclose(loss.detach(), expected.detach(), atol=1e-6)
        assert not torch.allclose(loss.detach(), sum(wi * (r + c) for wi, r, c in zip(w, recs, ces)).detach(), atol=1e-4)  # not 'linear'
        for name, grad in gradients(expected).items():
            assert torch.allclose(grads[name], grad, atol=1e-5, rtol=1e-4), name
        for phase, same_as in (("reconstruction", "linear"), ("classifier", "equal")):
            losses = []
            for weights in ("linear,equal", same_as):
                torch.manual_seed(1)
                losses.append(GViTObjective(model, budget_weights=weights)(images, targets, labels, phase, True, pairs)[0].detach())
            assert torch.equal(*losses), phase


def classification_batch():
    """A flex model (seed 0, training mode) and a batch of four: images, targets in [0, 1], labels."""
    torch.manual_seed(0)
    model = flex().train()
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    return model, images, (images * 0.2 + 0.5).clamp(0, 1), torch.tensor([1, 3, 0, 4])


@pytest.mark.parametrize("phase", ["classifier", "joint"])
def test_in_place_distillation_teaches_the_smaller_budgets_the_largest_ones_predictions(phase):
    """--budget-distill W: the largest budget's cross-entropy, each smaller budget's (1 - W) CE + W KL
    from the largest's detached predictions; the step's loss and gradient their mean."""
    w = 0.5
    with one_thread():
        model, images, targets, labels = classification_batch()
        pairs = [(8, None), (16, None), (64, None)]

        def step(objective):
            model.zero_grad()
            torch.manual_seed(1)
            loss, parts = objective(images, targets, labels, phase, True, pairs)
            loss.backward()
            return loss.detach(), parts, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

        distilled, parts, grads = step(GViTObjective(model, budget_distill=w))
        plain, plain_parts, plain_grads = step(GViTObjective(model))
        # by hand, from the test-time Gaussians at each k (the classifier's input in both phases)
        model.zero_grad()
        logits = {}
        for k, _ in pairs:
            model.set_num_gaussians(k)
            model.encoder.eval()
            with torch.no_grad():
                gaussians = model.encode(images)
            model.encoder.train()
            logits[k] = model.classify(gaussians).float()
        teacher = torch.log_softmax(logits[64].detach(), -1)
        ce = {k: torch.nn.functional.cross_entropy(logits[k], labels) for k in logits}
        kl = {k: (teacher.exp() * (teacher - torch.log_softmax(logits[k], -1))).sum(-1).mean() for k in (8, 16)}
        by_hand = (ce[64] + sum((1 - w) * ce[k] + w * kl[k] for k in (8, 16))) / 3
        by_hand.backward()
    assert torch.allclose(parts["cls_loss"], by_hand.detach(), atol=1e-6)  # the classification loss, in both phases
    for logged in (parts, plain_parts):  # ce_loss: the labels' cross-entropy, taught or not
        assert torch.allclose(logged["ce_loss"], sum(ce.values()).detach() / 3, atol=1e-6)
    assert "cls_loss" not in plain_parts
    if phase == "classifier":  # the joint phase adds each budget's reconstruction loss, from its random (denoising) g0
        assert torch.allclose(distilled, by_hand.detach(), atol=1e-6)
        for name, grad in grads.items():
            assert torch.allclose(grad, model.get_parameter(name).grad, atol=1e-5, rtol=1e-4), name
    assert kl[8] > 1e-3 and kl[16] > 1e-3  # the budgets disagree: the term is not trivially zero
    assert not torch.allclose(distilled, plain)
    classifier_grads = [n for n in grads if n.startswith("classifier.")]
    assert classifier_grads and any(not torch.allclose(grads[n], plain_grads[n]) for n in classifier_grads)
    assert parts["train_acc"].shape == ()


def test_a_trained_teachers_predictions_teach_every_budget():
    """--distill-from: each budget's classification loss (the largest's too) is (1 - W) CE + W KL from
    the teacher's logits, the step's loss their mean; a model of one k the same; phase 1 ignores them."""
    w = 0.7
    with one_thread():
        model, images, targets, labels = classification_batch()
        teacher = torch.randn(4, model.num_classes, generator=torch.Generator().manual_seed(2)) * 3
        pairs = [(8, None), (16, None), (64, None)]
        objective = GViTObjective(model, teacher_weight=w)
        loss, parts = objective(images, targets, labels, "classifier", True, pairs, teacher)
        single, _ = objective(images, targets, labels, "classifier", True, None, teacher)  # left at k = 64
        torch.manual_seed(1)
        phase1 = objective(images, targets, labels, "reconstruction", True, pairs, teacher)[0]
        torch.manual_seed(1)
        untaught = GViTObjective(model)(images, targets, labels, "reconstruction", True, pairs)[0]
        by_hand, ce = {}, {}
        with torch.no_grad():
            for k, _ in pairs:
                model.set_num_gaussians(k)
                model.encoder.eval()
                logits = model.classify(model.encode(images)).float()
                kl = (teacher.softmax(-1) * (teacher.log_softmax(-1) - logits.log_softmax(-1))).sum(-1).mean()
                ce[k] = torch.nn.functional.cross_entropy(logits, labels)
                by_hand[k] = (1 - w) * ce[k] + w * kl
    assert torch.allclose(loss, sum(by_hand.values()) / 3, atol=1e-5)
    assert torch.allclose(parts["cls_loss"], loss, atol=1e-6)  # logged: the loss optimised, and the labels' cross-entropy
    assert torch.allclose(parts["ce_loss"], sum(ce.values()) / 3, atol=1e-5) and not torch.allclose(parts["ce_loss"], loss)
    assert torch.allclose(single, by_hand[64], atol=1e-5)
    assert torch.equal(phase1, untaught)
    with pytest.raises(ValueError, match="teacher_weight is the weight of the distillation term"):
        GViTObjective(model, teacher_weight=1.5)


def test_budgets_options_build_the_flex_model_and_refuse_what_contradicts_them():
    config = parse_config(["--budgets", "2,4,8,16"])  # the digits preset: its k=16 gives way to the budgets'
    assert config.num_gaussians is None and config.model_create_kwargs()["budgets"] == [2, 4, 8, 16]
    assert config.model_create_kwargs()["num_gaussians"] == 16
    assert parse_config(["--budgets", "2-16", "--num-gaussians", "8", "--budget-sampling", "linear"]).model_create_kwargs()["num_gaussians"] == 8
    assert parse_config(["--budgets", "8-64", "--budget-sampling", "uniform"]).budget_sampling == "uniform"  # a range: drawn per step
    study = parse_config(["--config", str(ROOT / "experiments" / "configs" / "imagenette_nano.yaml"), "--budgets", "8,16,32,64"])
    assert study.model_create_kwargs() == {"budgets": [8, 16, 32, 64], "num_gaussians": 64}
    for flags, message in ((["--budgets", "4,8", "--num-gaussians", "16"], "--num-gaussians must be within --budgets"),
                           (["--budgets", "8,x"], "'x' is not a Gaussian count"),
                           (["--model-kwargs", "budgets=(4,8)"], "give --budgets"),
                           (["--budgets", "8-64"], "57 budgets, and --budget-sampling all (the default) would train every one"),
                           (["--budgets", "8-64", "--budget-sampling", "linear", "--eval-budgets", "4,8"], "[4] outside --budgets, which serve 8 to 64"),
                           (["--eval-budgets", "8"], "--eval-budgets 8 needs --budgets"),
                           (["--prefix-loss"], "--prefix-loss needs --budgets"),
                           (["--guidance-budgets", "all"], "--guidance-budgets all needs --budgets"),
                           (["--budget-distill", "0.5"], "--budget-distill 0.5 needs --budgets with --budget-sampling all"),
                           (["--budgets", "8,16", "--budget-sampling", "linear", "--budget-distill", "0.5"],
                            "--budget-distill 0.5 needs --budgets with --budget-sampling all"),
                           (["--budgets", "8,16", "--budget-distill", "1.5"], "--budget-distill must be in [0, 1]"),
                           (["--budget-weights", "linear"], "--budget-weights linear needs --budgets with --budget-sampling all"),
                           (["--budgets", "8,16", "--budget-sampling", "uniform", "--budget-weights", "sqrt"],
                            "--budget-weights sqrt needs --budgets with --budget-sampling all"),
                           (["--budget-weights", "linear,equal"], "--budget-weights linear,equal needs --budgets with --budget-sampling all"),
                           (["--budgets", "8,16", "--budget-weights", "linear,cubic"], "--budget-weights: budget weights must be one of"),
                           (["--budgets", "8,16", "--budget-weights", "linear,equal,sqrt"], "two of them as RECONSTRUCTION,CLASSIFICATION"),
                           (["--budgets", "8-64", "--budget-sampling", "linear", "--guidance-budgets", "all"],
                            "--guidance-budgets all would guide every one")):
        with pytest.raises(ValueError, match=re.escape(message)):  # the trainer's Refusal, one line on stderr
            parse_config(flags)


def test_validation_reports_a_few_budgets_of_a_range():
    """Every budget of a list; of a range (57 budgets: 57 validation passes), 8 spread in log k, or those --eval-budgets names."""
    assert eval_budgets([8, 16, 32, 64]) == [8, 16, 32, 64]
    assert eval_budgets(list(range(8, 65))) == [8, 11, 15, 20, 26, 35, 48, 64]
    assert eval_budgets(list(range(8, 65)), "12,16-18") == [12, 16, 17, 18]
    assert eval_budgets([8, 16, 32, 64], "24") == [24]  # any k the model serves, trained at or not


def test_a_flex_run_over_a_range_validates_the_budgets_it_is_told(tmp_path):
    with one_thread():
        assert train_gvit.main([*TINY, "--budgets", "2-8", "--budget-sampling", "linear", "--eval-budgets", "3,8", "--output-dir", str(tmp_path),
                                "--recon-epochs", "1", "--classifier-epochs", "1", "--joint-epochs", "0", "--guidance-epochs", "0"]) == 0
    final = json.loads((tmp_path / "metrics.json").read_text())["final"]
    assert sorted(k for k in final if k.startswith("top1@")) == ["top1@3", "top1@8"]
    card = (tmp_path / "export" / "README.md").read_text()
    assert "trained at every k from 2 to 8" in card and re.search(r"^\| 3 \| [\d.]+ % \|", card, re.M) and not re.search(r"^\| 5 \|", card, re.M)


@pytest.fixture(scope="module")
def flex_run(tmp_path_factory):
    """TINY (digits, 16 steps through every phase, guidance included) as a flex model of budgets 2, 4 and 8."""
    out = tmp_path_factory.mktemp("flex")
    with one_thread():
        assert train_gvit.main([*TINY, "--budgets", "2,4,8", "--output-dir", str(out)]) == 0
    return out


def test_a_flex_run_reports_every_budget_and_exports_a_checkpoint_that_serves_each(flex_run):
    metrics = json.loads((flex_run / "metrics.json").read_text())
    assert [e["phase"] for e in metrics["epochs"]] == ["reconstruction", "classifier", "joint", "guidance"] and metrics["guidance_steps"] == 2
    for record in (*metrics["epochs"], metrics["final"]):
        for k in (2, 4, 8):
            assert 0 <= record[f"top1@{k}"] <= 100 and 5 < record[f"psnr@{k}"] < 40 and 5 < record[f"prefix_psnr@{k}"] < 40
        assert record["top1@8"] == record["top1"] and record["psnr@8"] == record["prefix_psnr@8"] == record["psnr"]
    exported = json.loads((flex_run / "export" / "config.json").read_text())
    assert exported["model_args"]["budgets"] == [2, 4, 8] and exported["model_args"]["num_gaussians"] == 8
    assert exported["model_args"]["g0_layout"] == "morton" and exported["pretrained_cfg"]["budgets"] == [2, 4, 8]
    card = (flex_run / "export" / "README.md").read_text()  # the card lists each budget's accuracy, as validation measured it
    assert "## Gaussian budgets" in card and "num_gaussians=k" in card
    for k in (2, 4, 8):
        assert re.search(rf"\| {k} \| {metrics['final'][f'top1@{k}']:.2f} % \| {metrics['final'][f'psnr@{k}']:.2f} dB \| 0\.\d+ \|", card), k

    full = timm.create_model(f"local-dir:{flex_run / 'export'}", pretrained=True).eval()
    assert full.num_gaussians == 8 and full.pretrained_cfg["budgets"] == [2, 4, 8]
    x = torch.randn(3, 3, 16, 16)
    served = {}
    for k in (2, 4, 8):
        model = timm.create_model(f"local-dir:{flex_run / 'export'}", pretrained=True, num_gaussians=k).eval()
        full.set_num_gaussians(k)
        assert model.num_gaussians == k and torch.equal(model(x), full(x))
        served[k] = model(x)
    assert not torch.equal(served[2], served[8])  # k changes what the model computes
    # the weights file alone, as timm's --pretrained-path or pretrained_cfg_overlay take it
    args = {k: v for k, v in exported["model_args"].items() if k != "num_classes"}
    model = timm.create_model("gvit_nano", pretrained=True, num_classes=10, **{**args, "num_gaussians": 4},
                              pretrained_cfg_overlay=dict(file=str(flex_run / "export" / "model.safetensors"))).eval()
    assert torch.equal(model(x), served[4])
    for k, message in ((16, "outside the budgets"), (1, "outside the budgets")):
        with pytest.raises(ValueError, match=message):
            timm.create_model(f"local-dir:{flex_run / 'export'}", pretrained=True, num_gaussians=k)


def test_a_fixed_k_checkpoint_refuses_another_k_when_loaded():
    with pytest.raises(ValueError, match="serves num_gaussians=64 only, not other budgets"):
        timm.create_model("gvit_nano.imagenette_64_v2", pretrained=True, num_gaussians=16)


@pytest.mark.parametrize("sampling,guided", [("linear", "drawn"), ("all", "all")])
def test_a_resumed_flex_run_draws_the_same_budgets_and_ends_bit_exact(tmp_path, sampling, guided):
    args = [*SHORT, "--workers", "0", "--budgets", "2,4,8", "--budget-sampling", sampling, "--guidance-budgets", guided, "--report-to", "none"]
    reference, run = tmp_path / "reference", tmp_path / "run"
    with one_thread():
        assert train_gvit.main([*args, "--output-dir", str(reference), "--checkpoint-every", "3", "--keep-checkpoints", "0"]) == 0
    shutil.copytree(reference, run, ignore=shutil.ignore_patterns("export", "logs", "figures", "metrics.json"))
    for folder in (run / "checkpoints").iterdir():
        if int(folder.name.removeprefix("step-")) > 6:
            shutil.rmtree(folder)
    assert resume(run) == 0  # from step 6, in the middle of epoch 1
    assert_same_run(run, reference)


# ------------------------------------------------------------------------------------------------ explain
def test_explain_shows_one_column_per_budget(flex_run, tmp_path, capsys):
    from timm_gvit import explain

    photo = tmp_path / "photo.png"
    Image.new("RGB", (40, 40), (200, 40, 40)).save(photo)
    out = tmp_path / "budgets.png"
    explain.main([str(photo), "--model", f"local-dir:{flex_run / 'export'}", "--num-gaussians", "2,4,8", "--out", str(out)])
    printed = capsys.readouterr().out
    assert [line.split(":")[0] for line in printed.splitlines() if line.startswith("k=")] == ["k=2", "k=4", "k=8"]
    figure = Image.open(out)
    assert figure.width > 4 * 160 and figure.height > 3 * 160  # the input and three budgets, three rows each
    explain.main([str(photo), "--model", f"local-dir:{flex_run / 'export'}", "--num-gaussians", "4", "--out", str(tmp_path / "one.png")])
    assert "top classes" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        explain.main([str(photo), "--num-gaussians", "16,64", "--out", str(tmp_path / "no.png")])
    assert "trained for 64 Gaussians only, not for other budgets" in capsys.readouterr().err
