"""The GViT models through timm's own interfaces."""

import pytest
import timm
import torch
from timm.data import create_transform, resolve_model_data_config
from timm.models import save_for_hf
from timm.optim import create_optimizer_v2

import timm_gvit
from timm_gvit import GViT, fit_gaussians

SMALL = dict(img_size=32, patch_size=8, num_gaussians=16, num_classes=5)


def tiny(**kwargs):
    return timm.create_model("gvit_tiny", **{**SMALL, **kwargs})


@pytest.mark.parametrize("name, width", [("gvit_tiny", 192), ("gvit_small", 384), ("gvit_base", 768)])
def test_registered_models_forward_and_backward(name, width):
    assert name in timm.list_models("gvit_*")
    model = timm.create_model(name, img_size=64, num_gaussians=32, num_classes=7)
    assert isinstance(model, GViT) and model.num_features == width and model.encoder.pos_embed.shape[-1] == (192 if name == "gvit_tiny" else 384)
    logits = model(torch.randn(2, 3, 64, 64))
    assert logits.shape == (2, 7)
    logits.logsumexp(1).sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_default_configuration_is_the_paper_s():
    model = timm.create_model("gvit_small")
    assert model.img_size == (224, 224) and model.num_gaussians == 256 and model.scale_bound == 1.0
    assert model.num_classes == 1000 and model.encoder.gaussian_init == "denoise"
    cfg = model.pretrained_cfg
    assert cfg["hf_hub_id"] == f"{timm_gvit.gvit.HUB_ORG}/gvit_small.in1k"
    for key in ("num_classes", "input_size", "crop_pct", "interpolation", "mean", "std", "license", "paper_ids", "first_conv", "classifier"):
        assert key in cfg
    assert cfg["classifier"] == "classifier.head" and cfg["first_conv"] == "encoder.patch_embed.proj"
    assert model.get_submodule(cfg["first_conv"]).in_channels == 3


def test_eval_is_deterministic_training_is_not():
    model, x = tiny(), torch.randn(3, 3, 32, 32)
    model.eval()
    assert torch.equal(model(x), model(x))
    assert torch.equal(model.encode(x), model.encode(x))
    model.train()
    assert not torch.equal(model.encode(x), model.encode(x))  # fresh random g0 each step


def test_forward_is_classify_of_encode_and_forward_train_agrees():
    model, x = tiny().eval(), torch.randn(2, 3, 32, 32)
    gaussians = model.encode(x)
    assert gaussians.shape == (2, 16, 9)
    torch.testing.assert_close(model(x), model.classify(gaussians))
    out = model.forward_train(x)
    torch.testing.assert_close(out.logits, model(x))
    torch.testing.assert_close(out.gaussians, gaussians)
    torch.testing.assert_close(out.reconstruction, model.render(gaussians))
    assert out.reconstruction.shape == (2, 3, 32, 32) and model.render(gaussians, 48).shape == (2, 3, 48, 48)
    features = model.forward_features(x)
    assert features.shape == (2, 17, 192)
    assert model.forward_head(features, pre_logits=True).shape == (2, 192)


def test_detached_gaussians_keep_classification_out_of_the_encoder():
    model = tiny()
    out = model.forward_train(torch.randn(2, 3, 32, 32), detach_gaussians=True)
    out.logits.sum().backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    assert model.classifier.head.weight.grad is not None


def test_untrained_denoising_encoder_returns_its_initial_gaussians():
    from timm_gvit.gaussians import decode_gaussians

    model = tiny().eval()
    torch.testing.assert_close(model.encode(torch.randn(1, 3, 32, 32)), decode_gaussians(model.encoder.eval_g0))


def test_learned_queries_variant():
    model = tiny(gaussian_init="queries")
    assert model.encoder.g0_embed is None
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 5)
    with pytest.raises(ValueError, match="gaussian_init must be one of"):
        tiny(gaussian_init="noise")


def test_scale_bound_caps_sigma():
    model = tiny(scale_bound=0.25).eval()
    with torch.no_grad():
        model.encoder.eval_g0[..., 2:4] = 30.0  # saturate the sigmoid
    assert model.encode(torch.randn(1, 3, 32, 32))[..., 2:4].max() <= 0.25


def test_reset_classifier_and_global_pool():
    model = tiny()
    model.reset_classifier(3)
    assert model.num_classes == 3 and model.get_classifier().out_features == 3
    model.reset_classifier(0, global_pool="avg")
    assert model.global_pool == "avg" and model(torch.randn(1, 3, 32, 32)).shape == (1, 192)
    assert tiny(global_pool="avg", num_classes=0)(torch.randn(1, 3, 32, 32)).shape == (1, 192)


def test_timm_train_py_kwargs_are_accepted():
    """What timm's train.py passes to create_model, plus grad checkpointing."""
    model = timm.create_model("gvit_tiny", pretrained=False, in_chans=3, num_classes=4, drop_rate=0.1, drop_path_rate=0.1, global_pool="token", **{k: v for k, v in SMALL.items() if k != "num_classes"})
    model.set_grad_checkpointing(True)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert model.classifier.blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)
    with pytest.raises(ValueError, match="in_chans must be 3"):
        timm.create_model("gvit_tiny", in_chans=1)


def test_data_config_and_transform_behave_as_for_a_vit():
    model = tiny()
    config = resolve_model_data_config(model)
    assert config["input_size"] == (3, 32, 32) and config["interpolation"] == "bicubic"
    vit_config = resolve_model_data_config(timm.create_model("deit_tiny_patch16_224", pretrained=False))
    assert config.keys() == vit_config.keys()
    assert {k: config[k] for k in ("mean", "std", "crop_pct")} == {k: vit_config[k] for k in ("mean", "std", "crop_pct")}
    from PIL import Image

    image = create_transform(**config)(Image.new("RGB", (50, 40), "red"))
    assert image.shape == (3, 32, 32)
    assert create_transform(**config, is_training=True)(Image.new("RGB", (50, 40))).shape == (3, 32, 32)


def test_layer_decay_builds_per_layer_groups():
    model = tiny()
    optimizer = create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.65)
    scales = sorted({round(g["lr_scale"], 8) for g in optimizer.param_groups})
    # encoder stem + 12 blocks, classifier stem + 12 blocks, head: 27 layers
    assert len(scales) == 27 and scales[-1] == 1.0 and scales[-2] == pytest.approx(0.65)

    def group_of(param):
        return next(g for g in optimizer.param_groups if any(p is param for p in g["params"]))

    assert group_of(model.classifier.head.weight)["lr_scale"] == 1.0
    assert group_of(model.classifier.blocks[11].mlp.fc1.weight)["lr_scale"] == pytest.approx(0.65)
    assert group_of(model.classifier.pos_embed)["weight_decay"] == 0  # no_weight_decay()
    assert group_of(model.encoder.slot_embed)["weight_decay"] == 0
    assert group_of(model.classifier.blocks[0].attn.qkv.weight)["weight_decay"] == 0.05


def test_freeze_encoder():
    model = tiny(freeze_encoder=True).train()
    assert not model.encoder.training and model.classifier.training
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert all(p.grad is None and not p.requires_grad for p in model.encoder.parameters())
    assert all(p.grad is not None for p in model.classifier.parameters())
    optimizer = create_optimizer_v2(model, "adamw", lr=1e-3)
    trainable = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert not trainable & {id(p) for p in model.encoder.parameters()}


def test_save_for_hf_round_trip(tmp_path):
    model = tiny(num_gaussians=12).eval()
    save_for_hf(model, tmp_path, safe_serialization=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    loaded = timm.create_model(f"local-dir:{tmp_path}", pretrained=True).eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model(x), loaded(x))
    assert loaded.num_gaussians == 12 and loaded.pretrained_cfg["input_size"] == (3, 32, 32)


def test_weights_file_via_pretrained_cfg_overlay(tmp_path):
    """timm's --pretrained --pretrained-path FILE, and reloading at another image size."""
    model = tiny().eval()
    save_for_hf(model, tmp_path, safe_serialization=True)
    weights = dict(file=str(tmp_path / "model.safetensors"), num_classes=5)  # else timm resets the head
    loaded = tiny(pretrained=True, pretrained_cfg_overlay=weights).eval()
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(model(x), loaded(x))
    larger = tiny(img_size=48, pretrained=True, pretrained_cfg_overlay=weights)
    assert larger.encoder.pos_embed.shape[1] == 36 and larger(torch.randn(1, 3, 48, 48)).shape == (1, 5)


def test_pretrained_head_adapts_to_num_classes(tmp_path):
    model = tiny().eval()
    save_for_hf(model, tmp_path, safe_serialization=True)
    adapted = tiny(num_classes=3, pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / "model.safetensors"))).eval()
    assert adapted.num_classes == 3
    torch.testing.assert_close(adapted.encode(torch.ones(1, 3, 32, 32)), model.encode(torch.ones(1, 3, 32, 32)))


def test_pretrained_without_published_weights_says_so(monkeypatch):
    monkeypatch.delenv("TIMM_GVIT_HUB_ORG", raising=False)
    with pytest.raises(RuntimeError, match="no pretrained weights are published for 'gvit_small'.*local-dir"):
        timm.create_model("gvit_small", pretrained=True)


def test_dynamic_img_size():
    model = tiny(dynamic_img_size=True).eval()
    for shape in [(32, 32), (40, 64), (16, 24)]:
        out = model.forward_train(torch.randn(1, 3, *shape))
        assert out.logits.shape == (1, 5) and out.reconstruction.shape[-2:] == shape


def test_classify_gaussians_from_fit_gaussians():
    model = tiny().eval()
    images = torch.rand(2, 3, 24, 24)
    logits = model.classify(fit_gaussians(images, 16, steps=3, progress=False))
    assert logits.shape == (2, 5) and torch.isfinite(logits).all()
    with pytest.raises(ValueError, match=r"gaussians must be \[B, 16, 9\]"):
        model.classify(torch.rand(2, 8, 9))


@pytest.mark.parametrize(
    "images, match",
    [
        (torch.randn(3, 32, 32), r"\[B, C, H, W\]"),
        (torch.randn(1, 1, 32, 32), "must have 3 channels"),
        (torch.randn(1, 3, 32, 32).index_fill_(2, torch.tensor([3]), float("nan")), "non-finite"),
        (torch.randn(1, 3, 4, 32), "smaller than one 8x8 patch"),
        (torch.randn(1, 3, 48, 48), "the model takes 32x32.*dynamic_img_size=True"),
    ],
)
def test_bad_images_raise_value_error(images, match):
    with pytest.raises(ValueError, match=match):
        tiny()(images)


def test_explain_command_writes_png(tmp_path, capsys):
    from PIL import Image

    from timm_gvit.explain import main

    Image.new("RGB", (40, 30), "orange").save(tmp_path / "photo.png")
    out = tmp_path / "fig.png"
    main([str(tmp_path / "photo.png"), "--model", "gvit_tiny", "--model-kwargs", "num_classes=5", "img_size=32", "patch_size=8", "num_gaussians=16", "--class", "2", "--random-weights", "--out", str(out)])
    assert Image.open(out).width > 5 * 256
    assert "top classes" in capsys.readouterr().out


def test_cdam_grid_places_scores_by_centre():
    from timm_gvit.explain import cdam_grid, cdam_scores

    g = torch.zeros(1, 3, 9)
    g[0, :, 0:2] = torch.tensor([[-0.99, -0.99], [0.99, 0.99], [0.99, 0.99]])
    grid = cdam_grid(g, torch.tensor([[1.0, 2.0, 3.0]]), grid=4)
    assert grid[0, 0, 0] == 1 and grid[0, 3, 3] == 5 and grid.sum() == 6
    model = tiny().eval()
    gaussians = model.encode(torch.randn(2, 3, 32, 32))
    scores, target = cdam_scores(model, gaussians)
    assert scores.shape == (2, 16) and torch.equal(target, model.classify(gaussians).argmax(1))


def test_launcher_runs_a_timm_script_with_the_models_registered(tmp_path):
    import subprocess
    import sys

    script = tmp_path / "list_models.py"
    script.write_text("import sys, timm\nprint(sys.argv[1:], timm.list_models('gvit_*'))\n")
    out = subprocess.run([sys.executable, "-m", "timm_gvit.run", str(script), "--model", "gvit_tiny"], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['--model', 'gvit_tiny'] ['gvit_base', 'gvit_nano', 'gvit_small', 'gvit_tiny']"
    missing = subprocess.run([sys.executable, "-m", "timm_gvit.run", str(tmp_path / "nope.py")], capture_output=True, text=True)
    assert missing.returncode != 0 and "no such script" in missing.stderr
