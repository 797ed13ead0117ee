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
    assert not cfg.get("tag") and not cfg.get("hf_hub_id")  # no weights published: no Hub tag claimed
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


def test_conv_stem_and_refinement_options():
    """encoder_stem='conv' gives the same token grid as the patch projection; a second encoder
    pass starts from the first pass's Gaussians (so an untrained encoder, whose residual is zero,
    still returns g0), and its gradients reach the weights through both passes."""
    images = torch.randn(2, 3, 32, 32)
    conv = tiny(encoder_stem="conv")
    assert conv.encoder.patch_embed.grid_size == tiny().encoder.patch_embed.grid_size == (4, 4)
    assert conv(images).shape == (2, 5)
    refine = tiny(encoder_refine_steps=2).eval()
    torch.testing.assert_close(refine.encode(images[:1]), refine.encode(images[1:]))  # zero residual: both g0
    torch.nn.init.normal_(refine.encoder.gaussian_head.fc2.weight, std=0.02)
    raw = refine.encoder(images)
    once = refine.encoder._predict(refine.encoder._patch_tokens(images), refine.encoder.initial_gaussians(2))
    torch.testing.assert_close(raw, refine.encoder._predict(refine.encoder._patch_tokens(images), once))
    assert not torch.allclose(raw, once)
    raw.sum().backward()
    assert refine.encoder.g0_embed.weight.grad.abs().sum() > 0
    args = refine.architecture_args()
    assert args["encoder_refine_steps"] == 2 and args["encoder_stem"] == "patch"


def test_shape_features_are_one_per_gaussian_and_mlp_embed_builds():
    """(sigma_x, sigma_y, phi), (sigma_y, sigma_x, phi + pi/2) and phi + pi are one Gaussian: its
    shape features agree; a different shape or size does not."""
    from timm_gvit.classifier import shape_features

    g = torch.tensor([0.1, -0.3, 0.05, 0.2, 0.4, 0.2, 0.5, 0.9, 0.8])
    swapped = g.clone()
    swapped[2:5] = torch.tensor([0.2, 0.05, 0.4 + torch.pi / 2])
    turned = g.clone()
    turned[4] += torch.pi
    for same in (swapped, turned):
        torch.testing.assert_close(shape_features(same), shape_features(g))
    assert not torch.allclose(shape_features(g), shape_features(torch.cat([g[:4], g[4:5] + 0.3, g[5:]])))
    torch.testing.assert_close(shape_features(g)[2], torch.tensor([0.05 * 0.2]).log()[0] / 2)
    clf = timm_gvit.classifier.GaussianClassifier(num_gaussians=4, num_classes=3, embed_dim=16, depth=1, num_heads=2,
                                                  centre_features=True, shape_features=True, mlp_embed=True)
    assert clf(torch.rand(2, 4, 9) * 0.5 + 0.1).shape == (2, 3)
    assert isinstance(clf.gaussian_embed.fc1, torch.nn.Linear) and clf.gaussian_embed.fc1.in_features == 9


def test_patch_drop_rate_drops_gaussian_tokens_in_training_only():
    """timm's ViT option: a training forward keeps 1 - rate of the Gaussian tokens (class token
    always); eval keeps all, so eval logits do not depend on the rate."""
    model = tiny(patch_drop_rate=0.5).eval()
    reference = tiny().eval()
    reference.load_state_dict(model.state_dict())
    images = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(model(images), reference(images))
    gaussians = model.encode(images)
    model.train()
    assert model.classifier.embed_tokens(gaussians).shape[1] == 1 + model.num_gaussians // 2
    assert model.eval().classifier.embed_tokens(gaussians).shape[1] == 1 + model.num_gaussians


def test_classifier_without_slot_embeddings_reads_a_set():
    """pos_embed='none': permuting the Gaussians leaves the logits unchanged; with the learned slot
    embeddings (the default) the slot order matters. A bad value names the choices."""
    from timm_gvit.classifier import GaussianClassifier

    gaussians = torch.rand(2, 8, 9) * 0.5 + 0.1
    order = torch.tensor([3, 0, 6, 1, 7, 2, 5, 4])
    for pos_embed, invariant in (("none", True), ("learn", False)):
        torch.manual_seed(0)
        clf = GaussianClassifier(num_gaussians=8, num_classes=3, embed_dim=16, depth=1, num_heads=2, centre_features=True,
                                 pos_embed=pos_embed).eval()
        assert torch.allclose(clf(gaussians), clf(gaussians[:, order]), atol=1e-5) == invariant
    with pytest.raises(ValueError, match=r"pos_embed must be one of \('learn', 'none'\), got 'sincos'"):
        GaussianClassifier(num_gaussians=8, pos_embed="sincos")
    with pytest.raises(ValueError, match=r"patch_drop_rate must be a number in \[0, 1\), got 1.0"):
        GaussianClassifier(num_gaussians=8, patch_drop_rate=1.0)


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
    with pytest.raises(ValueError, match="in_chans must be 3 .RGB. or 1"):
        timm.create_model("gvit_tiny", in_chans=2)


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
    weights = dict(file=str(tmp_path / "model.safetensors"))  # the file's head has 5 classes, as the model
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


def test_pretrained_without_published_weights_says_so():
    with pytest.raises(RuntimeError, match="no pretrained weights are published for 'gvit_small'.*local-dir.*hf-hub:ORG/NAME"):
        timm.create_model("gvit_small", pretrained=True)


def test_dynamic_img_size():
    model = tiny(dynamic_img_size=True).eval()
    for shape in [(32, 32), (40, 64), (16, 24)]:
        out = model.forward_train(torch.randn(1, 3, *shape))
        assert out.logits.shape == (1, 5) and out.reconstruction.shape[-2:] == shape
    with pytest.raises(ValueError, match="36x32 are not a multiple of the 8 px patch.*drop the border"):
        model(torch.randn(1, 3, 36, 32))


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
        ([[1.0]], r"\[B, C, H, W\] tensor, got list"),
        (torch.randn(1, 1, 32, 32), r"must have 3 channel\(s\), got 1"),
        (torch.randn(1, 3, 4, 32), "smaller than one 8x8 patch"),
        (torch.randn(1, 3, 48, 48), "the model takes 32x32.*dynamic_img_size=True"),
    ],
)
def test_bad_images_raise_value_error(images, match):
    model = tiny()
    for call in (model, model.encode, model.forward_features, model.forward_train):
        with pytest.raises(ValueError, match=match):
            call(images)


def test_values_are_checked_by_the_gaussian_level_api_not_by_forward():
    """forward checks shapes only (no host-device sync, so it compiles and exports); encode and
    classify reject what render rejects."""
    model = tiny().eval()
    nan_images = torch.randn(1, 3, 32, 32).index_fill_(2, torch.tensor([3]), float("nan"))
    assert torch.isnan(model(nan_images)).all()
    with pytest.raises(ValueError, match="images contain non-finite values"):
        model.encode(nan_images)
    gaussians = model.encode(torch.randn(2, 3, 32, 32))
    bad_sigma = gaussians.clone()
    bad_sigma[1, 3, 2] = 0.0
    nan_gaussians = gaussians.clone()
    nan_gaussians[0, 5, 7] = float("nan")
    for bad, match in ((bad_sigma, r"sigma_x/sigma_y .* > 0.*\[1, 3\]"), (nan_gaussians, r"non-finite.*\[0, 5, 7\]")):
        for call in (model.classify, model.render):
            with pytest.raises(ValueError, match=match):
                call(bad)
    assert torch.isnan(model.classify(nan_gaussians, check_values=False)[0]).all()  # the trainer's path
    with pytest.raises(ValueError, match="floating point"):
        model.classify(torch.ones(1, 16, 9, dtype=torch.long))


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


# ------------------------------------------------------------------ constructor arguments
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(img_size=36), "img_size 36x36 is not a multiple of patch_size 8.*drop the border"),
        (dict(img_size=36, dynamic_img_size=True), "img_size 36x36 is not a multiple of patch_size 8"),
        (dict(img_size=(32, 30)), "img_size 32x30 is not a multiple"),
        (dict(num_classes=-1), "num_classes must be an integer >= 0, got -1"),
        (dict(render_backend="bogus"), "unknown render_backend 'bogus'; choose one of auto, reference"),
        (dict(patch_size=0), "patch_size must be an integer >= 1, got 0"),
        (dict(num_heads=5), "embed_dim=192 is not divisible by num_heads=5"),
        (dict(encoder_num_heads=7), "encoder_embed_dim=192 is not divisible by encoder_num_heads=7"),
        (dict(num_gaussians="16"), "num_gaussians must be an integer >= 1, got '16'"),
        (dict(num_gaussians=16.0), "num_gaussians must be an integer >= 1, got 16.0"),
        (dict(depth=2.5), "depth must be an integer >= 1, got 2.5"),
        (dict(img_size="32"), "img_size must be an integer >= 1, got '32'"),
        (dict(in_chans=4), r"in_chans must be 3 \(RGB\) or 1"),
        (dict(drop_path_rate=1.5), r"drop_path_rate must be a number in \[0, 1\)"),
        (dict(patch_drop_rate=1.0), r"patch_drop_rate must be a number in \[0, 1\)"),
        (dict(scale_bound=0), "scale_bound must be a number > 0"),
        (dict(mlp_ratio="4"), "mlp_ratio must be a number > 0"),
        (dict(encoder_stem="resnet"), "stem must be one of"),
        (dict(encoder_stem="conv", patch_size=6, img_size=36), "patch_size must be a power of 2"),
        (dict(encoder_refine_steps=0), "refine_steps must be an integer >= 1, got 0"),
        (dict(encoder_refine_steps=2, gaussian_init="queries"), "needs gaussian_init='denoise'"),
    ],
)
def test_bad_constructor_arguments_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny(**kwargs)


def test_reset_classifier_rejects_negative_class_counts():
    with pytest.raises(ValueError, match="num_classes must be an integer >= 0, got -1"):
        tiny().reset_classifier(-1)


# ------------------------------------------------------------------ TorchScript, torch.fx, compile, export
def nano(**kwargs):
    """gvit_nano at its default 64 px input."""
    return timm.create_model("gvit_nano", **kwargs)


def shallow(**kwargs):
    """``tiny`` with two blocks per half: the same code paths, faster to script and compile."""
    return tiny(encoder_depth=2, depth=2, **kwargs)


def test_torchscript_matches_eager_and_keeps_the_training_path(tmp_path):
    from timm import set_scriptable

    with set_scriptable(True):
        model = shallow().eval()
    x = torch.randn(2, 3, 32, 32)
    scripted = torch.jit.script(model)
    torch.testing.assert_close(scripted(x), model(x), rtol=0, atol=1e-6)
    torch.jit.save(scripted, tmp_path / "gvit.pt")
    loaded = torch.jit.load(tmp_path / "gvit.pt")
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=1e-6)
    loaded.train()  # fresh random g0, drawn inside TorchScript
    assert not torch.equal(loaded(x), loaded(x))
    with pytest.raises(Exception, match="the model takes 32x32"):
        loaded(torch.randn(1, 3, 40, 40))


def _fx_model(model):
    from timm.models import get_notrace_functions, get_notrace_modules
    from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

    tracer_kwargs = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions(), param_shapes_constant=True)
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=tracer_kwargs)
    fx_model = create_feature_extractor(model, train_return_nodes=[train_nodes[-1]], eval_return_nodes=[eval_nodes[-1]], tracer_kwargs=tracer_kwargs)
    return fx_model, eval_nodes[-1]


def test_torch_fx_traces_forward_and_backward_and_keeps_the_shape_check():
    model = shallow().eval()
    fx_model, out = _fx_model(model)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(fx_model(x)[out], model(x))
    with pytest.raises(ValueError, match="the model takes 32x32"):
        fx_model(torch.randn(1, 3, 40, 40))
    scripted = torch.jit.script(fx_model)  # fx then TorchScript, as timm's tests do
    torch.testing.assert_close(scripted(x)[out], model(x), rtol=0, atol=1e-6)

    fx_model.train()
    logits = next(iter(fx_model(x).values()))
    logits.mean().backward()
    assert all(p.grad is not None for p in fx_model.parameters())


def test_compile_fullgraph_and_export_match_eager():
    """No data-dependent branch in forward: dynamo captures one graph and torch.export one
    program. (The inductor backend is checked by hand for every size, see README; CI uses
    aot_eager, which traces the same graph without generating C++.)"""
    model = nano().eval()
    x = torch.randn(2, 3, 64, 64)
    expected = model(x)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), expected, rtol=0, atol=1e-5)
    program = torch.export.export(model, (x,))
    torch.testing.assert_close(program.module()(x), expected, rtol=0, atol=1e-5)
    with pytest.raises(Exception, match=r"images.size\(\)\[2\] == 64"):  # torch.export's guard on the input shape
        program.module()(torch.randn(2, 3, 32, 32))


def test_onnx_export_runs_in_onnxruntime(tmp_path):
    ort = pytest.importorskip("onnxruntime", reason="the [export] extra is not installed")
    pytest.importorskip("onnxscript", reason="the [export] extra is not installed")
    model = nano().eval()
    x = torch.randn(2, 3, 64, 64)
    torch.onnx.export(model, (x,), tmp_path / "gvit.onnx", dynamo=True, verbose=False)
    session = ort.InferenceSession(str(tmp_path / "gvit.onnx"))
    (logits,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    torch.testing.assert_close(torch.from_numpy(logits), model(x), rtol=0, atol=1e-4)


def test_compile_networks_compiles_the_paths_the_trainer_uses():
    model = shallow().eval()
    x = torch.randn(2, 3, 32, 32)
    expected_gaussians, expected_logits = model.encode(x), model(x)
    model.compile_networks(backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(model.encode(x), expected_gaussians, rtol=0, atol=1e-5)
    torch.testing.assert_close(model(x), expected_logits, rtol=0, atol=1e-5)
    assert set(model.state_dict()) == set(shallow().state_dict())  # checkpoints keep their keys


# ------------------------------------------------------------------ greyscale
def test_greyscale_from_scratch_reconstructs_grey_rgb():
    from timm_gvit.gvit import rgb_targets

    model = shallow(in_chans=1)
    config = resolve_model_data_config(model)
    assert config["input_size"] == (1, 32, 32) and len(config["mean"]) == len(config["std"]) == 1
    grey = torch.rand(2, 1, 32, 32)
    images = (grey - config["mean"][0]) / config["std"][0]
    targets = rgb_targets(images, config["mean"], config["std"])
    assert targets.shape == (2, 3, 32, 32) and torch.allclose(targets, grey.expand(-1, 3, -1, -1), atol=1e-6)
    with pytest.raises(ValueError, match=r"mean has 3 value\(s\) but the images have 1 channel"):
        rgb_targets(images, (0.5, 0.5, 0.5), (0.2, 0.2, 0.2))  # an RGB data config on greyscale images
    out = model.forward_train(images)
    loss = (out.reconstruction - targets).pow(2).mean() + out.logits.logsumexp(1).mean()
    loss.backward()
    assert model.encoder.patch_embed.proj.weight.shape[1] == 1 and model.encoder.patch_embed.proj.weight.grad is not None
    from PIL import Image

    assert create_transform(**config)(Image.new("L", (40, 40), 128)).shape == (1, 32, 32)


def test_greyscale_from_rgb_weights_adapts_the_stem_as_timm_does(tmp_path):
    model = shallow().eval()
    save_for_hf(model, tmp_path, safe_serialization=True)
    grey = timm.create_model(f"local-dir:{tmp_path}", pretrained=True, in_chans=1).eval()
    rgb_weight = model.encoder.patch_embed.proj.weight
    torch.testing.assert_close(grey.encoder.patch_embed.proj.weight, rgb_weight.sum(1, keepdim=True))
    # a grey image through the adapted stem = the same grey (all channels equal) through the RGB one
    x = torch.randn(2, 1, 32, 32)
    torch.testing.assert_close(grey(x), model(x.expand(-1, 3, -1, -1)), rtol=1e-4, atol=1e-4)


def test_shipped_weights_load_for_greyscale():
    model = timm.create_model("gvit_nano.imagenette_64_v2", pretrained=True, in_chans=1, num_classes=5).eval()
    assert model(torch.randn(1, 1, 64, 64)).shape == (1, 5) and model.pretrained_cfg["input_size"] == (1, 64, 64)


# ------------------------------------------------------------------ pretrained tags
def test_list_pretrained_names_only_weights_that_exist():
    from timm_gvit.gvit import WEIGHTS_DIR

    shipped = sorted(p.name for p in WEIGHTS_DIR.iterdir() if (p / "model.safetensors").is_file())
    assert shipped and timm.list_pretrained("gvit*") == shipped
    for name in shipped:
        assert timm.models.get_pretrained_cfg(name).file.startswith(str(WEIGHTS_DIR))


def test_pretrained_cfgs_are_static():
    """No environment variable changes the tags: a fresh interpreter with TIMM_GVIT_HUB_ORG set
    (which older versions read) lists the same two tags, whose cfgs carry the shipped weights'
    data config."""
    import os
    import subprocess
    import sys

    code = "import timm, timm_gvit; print(timm.list_pretrained('gvit*'))"
    env = dict(os.environ, TIMM_GVIT_HUB_ORG="my-lab")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['gvit_nano.imagenette_64_flex', 'gvit_nano.imagenette_64_v2']"
    cfg = timm.models.get_pretrained_cfg("gvit_nano.imagenette_64_v2")
    assert cfg.num_classes == 10 and cfg.input_size == (3, 64, 64) and cfg.label_names[0] == "tench" and cfg.license == "other"
    assert not timm.models.get_pretrained_cfg("gvit_small").has_weights


# ------------------------------------------------------------------ checkpoints at other sizes
def test_non_square_checkpoint_resamples_by_its_own_grid(tmp_path):
    from timm.layers import resample_abs_pos_embed

    model = shallow(img_size=(32, 16)).eval()  # a 4 x 2 patch grid
    save_for_hf(model, tmp_path, safe_serialization=True)
    trained = model.encoder.pos_embed.detach()
    same = timm.create_model(f"local-dir:{tmp_path}", pretrained=True).eval()
    x = torch.randn(1, 3, 32, 16)
    assert same.img_size == (32, 16) and torch.equal(same(x), model(x))
    for size, grid in (((16, 32), (2, 4)), ((32, 32), (4, 4))):
        loaded = timm.create_model(f"local-dir:{tmp_path}", pretrained=True, img_size=size)
        expected = resample_abs_pos_embed(trained, grid, (4, 2), num_prefix_tokens=0)
        torch.testing.assert_close(loaded.encoder.pos_embed.detach(), expected)
        assert loaded.pretrained_cfg["input_size"] == (3, *size)


def test_checkpoint_of_unknown_grid_is_refused(tmp_path):
    model = shallow(img_size=(24, 16))  # 3 x 2 = 6 patches: not square
    save_for_hf(model, tmp_path, safe_serialization=True)
    overlay = dict(file=str(tmp_path / "model.safetensors"), num_classes=5)  # a bare file: no size saved with it
    with pytest.raises(ValueError, match="hold 6 patches.*pretrained_cfg_overlay=dict.input_size"):
        shallow(pretrained=True, pretrained_cfg_overlay=overlay)
    loaded = shallow(pretrained=True, pretrained_cfg_overlay=dict(overlay, input_size=(3, 24, 16)))
    assert loaded.encoder.pos_embed.shape[1] == 16


# ------------------------------------------------------------------ feature maps
def test_forward_intermediates_are_the_encoder_s_patch_grid():
    """As timm's ViT: NCHW maps of the encoder's patch tokens at stride patch_size (NLC: the same
    tokens in row-major order), the Gaussian tokens as prefix tokens, and the final output is
    forward_features; grad checkpointing gives the same numbers."""
    model = tiny(encoder_depth=4, depth=2, img_size=(32, 48)).eval()
    x = torch.randn(2, 3, 32, 48)
    final, maps = model.forward_intermediates(x)
    torch.testing.assert_close(final, model.forward_features(x))
    assert len(maps) == len(model.feature_info) == 4 and all(t.shape == (2, 192, 4, 6) for t in maps)
    tokens = model.forward_intermediates(x, indices=[1], output_fmt="NLC", intermediates_only=True)[0]
    assert tokens.shape == (2, 24, 192)
    torch.testing.assert_close(tokens[:, 6 + 2], maps[1][:, :, 1, 2])  # row 1, column 2 of the grid
    only = model.forward_intermediates(x, indices=2, return_prefix_tokens=True, norm=True, stop_early=True, intermediates_only=True)
    assert [(t.shape, g.shape) for t, g in only] == [((2, 192, 4, 6), (2, 16, 192))] * 2
    model.set_grad_checkpointing()
    torch.testing.assert_close(model.forward_intermediates(x)[0], final)
    with pytest.raises(ValueError, match="output_fmt must be 'NCHW'.*or 'NLC'"):
        model.forward_intermediates(x, output_fmt="NHWC")
    clf_final, clf_tokens = model.classifier.forward_intermediates(model.encode(x), indices=1)
    torch.testing.assert_close(clf_final, final)
    assert clf_tokens[0].shape == (2, 16, 192)


def test_features_only_gives_feature_maps_from_chosen_blocks():
    """features_only=True as on timm's ViT: three maps by default, out_indices picks encoder
    blocks, the maps equal forward_intermediates', and the unused layers are pruned."""
    x = torch.randn(2, 3, 32, 32)
    full = tiny(encoder_depth=4).eval()
    features = tiny(encoder_depth=4, features_only=True, out_indices=(0, 2)).eval()
    features.model.load_state_dict(full.state_dict(), strict=False)
    maps = features(x)
    assert features.feature_info.channels() == [192, 192] and features.feature_info.reduction() == [8, 8]
    expected = full.forward_intermediates(x, indices=[0, 2], intermediates_only=True)
    assert len(maps) == 2 and all(torch.equal(a, b) for a, b in zip(maps, expected))
    assert len(features.model.encoder.blocks) == 3 and len(features.model.classifier.blocks) == 0
    default = tiny(features_only=True).eval()
    assert default.feature_info.module_name() == ["encoder.blocks.9", "encoder.blocks.10", "encoder.blocks.11"]
    assert [m.shape for m in default(x)] == [(2, 192, 4, 4)] * 3
    shipped = timm.create_model("gvit_nano", pretrained=True, features_only=True)
    assert [m.shape for m in shipped(torch.randn(1, 3, 64, 64))] == [(1, 128, 8, 8)] * 3


def test_vit_constructor_arguments_reach_both_networks_and_the_export():
    """qkv_bias, norm_layer, act_layer, block_fn, weight_init and the classifier's options, named
    as on timm's ViT; architecture_args records what changes the weights' shapes or meaning."""
    from timm.layers import RmsNorm
    from timm.models.vision_transformer import Block

    class MyBlock(Block):
        pass

    model = tiny(qkv_bias=False, norm_layer="rmsnorm", act_layer="silu", mlp_ratio=2.0, in_chans=1, pos_embed="none",
                 shape_features=True, mlp_embed=True)
    for net in (model.encoder, model.classifier):
        assert net.blocks[0].attn.qkv.bias is None and isinstance(net.norm, RmsNorm) and isinstance(net.blocks[0].norm1, RmsNorm)
        assert isinstance(net.blocks[0].mlp.act, torch.nn.SiLU) and net.blocks[0].mlp.fc1.out_features == 384
    assert model.classifier.pos_embed is None and isinstance(model.classifier.gaussian_embed.act, torch.nn.SiLU)
    args = model.architecture_args()
    recorded = {k: args[k] for k in ("in_chans", "mlp_ratio", "qkv_bias", "pos_embed", "shape_features", "mlp_embed", "norm_layer", "act_layer")}
    assert recorded == dict(in_chans=1, mlp_ratio=2.0, qkv_bias=False, pos_embed="none", shape_features=True, mlp_embed=True,
                            norm_layer="rmsnorm", act_layer="silu")
    GViT(**args, num_classes=5).load_state_dict(model.state_dict())  # the recorded arguments give the same shapes
    default = tiny()
    assert isinstance(default.encoder.norm, torch.nn.LayerNorm) and default.encoder.norm.eps == 1e-6
    assert default.encoder.blocks[0].norm1.eps == 1e-6 and default.classifier.blocks[0].attn.qkv.bias is not None
    custom = tiny(block_fn=MyBlock, norm_layer=torch.nn.LayerNorm)
    assert isinstance(custom.encoder.blocks[0], MyBlock) and isinstance(custom.classifier.blocks[-1], MyBlock)
    with pytest.raises(ValueError, match="norm_layer=.*cannot be written to a config file: pass it by name"):
        custom.architecture_args()
    skip = tiny(weight_init="skip")
    assert skip.classifier.pos_embed.abs().max() == 0 and skip.encoder.gaussian_head.fc2.weight.abs().max() > 0
    with pytest.raises(ValueError, match="weight_init must be one of"):
        tiny(weight_init="jax")


def test_encoder_centre_scale_multiplies_the_centre_residual_only():
    """encoder_centre_scale (the adaptivity lever of MODEL_CARD.md section 8) scales the predicted
    change of the centres over g0 and nothing else, and an export records it."""
    base = shallow().eval()
    torch.nn.init.normal_(base.encoder.gaussian_head.fc2.weight, std=0.05)
    scaled = shallow(encoder_centre_scale=4.0).eval()
    scaled.load_state_dict(base.state_dict())
    x = torch.randn(2, 3, 32, 32)
    g0 = base.encoder.eval_g0
    with torch.no_grad():
        step_base, step_scaled = base.encoder(x) - g0, scaled.encoder(x) - g0
    torch.testing.assert_close(step_scaled[..., 0:2], 4 * step_base[..., 0:2], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(step_scaled[..., 2:], step_base[..., 2:])
    assert scaled.architecture_args()["encoder_centre_scale"] == 4.0
    with pytest.raises(ValueError, match="centre_scale must be a number in"):
        shallow(encoder_centre_scale=0)


def test_forward_in_training_mode_warns_once_that_the_gaussians_stop_fitting():
    """timm's train.py (or any loop with a loss on the logits) trains a GViT end to end on cross-entropy alone: forward
    in training mode says so, once per model, when gradients reach a trainable encoder; a frozen encoder, eval mode,
    no_grad and TorchScript stay silent."""
    import warnings

    x = torch.randn(2, 3, 32, 32)

    def warnings_of(model, grad=True):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with torch.set_grad_enabled(grad):
                model(x)
                model(x)
        return [w for w in caught if "Gaussians stop being fits of the image" in str(w.message)]

    small = dict(num_classes=3, img_size=32, num_gaussians=8, encoder_depth=1, depth=1)
    assert len(warnings_of(timm.create_model("gvit_nano", **small).train())) == 1
    assert not warnings_of(timm.create_model("gvit_nano", freeze_encoder=True, **small).train())
    assert not warnings_of(timm.create_model("gvit_nano", **small).eval())
    assert not warnings_of(timm.create_model("gvit_nano", **small).train(), grad=False)
