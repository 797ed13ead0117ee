"""GViT: image classifiers that see an image as a few hundred 2D Gaussians (arXiv:2506.23532).

The timm model family: ``GViT`` (Gaussian encoder + Gaussian classifier), its pretrained cfgs and
the registered entrypoints ``gvit_nano``, ``gvit_tiny``, ``gvit_small`` and ``gvit_base``. ``import timm_gvit``
registers them, after which they behave like any timm model::

    model = timm.create_model('gvit_small', num_classes=10)
    logits = model(images)                  # images normalised with model.pretrained_cfg mean/std
    gaussians = model.encode(images)        # [B, k, 9] decoded Gaussians
    picture = model.render(gaussians)       # [B, 3, H, W] in [0, 1]

Pretrained weights are looked up on the Hugging Face Hub under the organisation in
``TIMM_GVIT_HUB_ORG`` (default ``timm-gvit``); set it, before importing timm_gvit, to load weights
you trained and pushed yourself with ``pretrained=True``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor, nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import resample_abs_pos_embed, to_2tuple
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._builder import resolve_pretrained_cfg

from .classifier import GaussianClassifier
from .encoder import GaussianEncoder
from .gaussians import decode_gaussians
from .rendering import render_gaussians

__all__ = ["GViT", "GViTOutput", "HUB_ORG", "PUBLISHED_TAGS"]

#: Hub organisation that holds the pretrained weights; the one place it is set.
HUB_ORG = os.environ.get("TIMM_GVIT_HUB_ORG", "timm-gvit")
#: model.tag names whose weights have been published under the default organisation.
PUBLISHED_TAGS: frozenset[str] = frozenset()


class GViTOutput(NamedTuple):
    """Everything one training step needs, from one pass."""

    logits: Tensor  # [B, num_classes]
    gaussians: Tensor  # [B, k, 9] decoded
    reconstruction: Tensor  # [B, 3, H, W] rendering of the Gaussians at the input's size


class GViT(nn.Module):
    """Images -> Gaussian encoder -> k decoded Gaussians -> Gaussian classifier -> logits.

    Args:
        img_size, patch_size, in_chans: the encoder's input, as in timm's ViT (3 channels only:
            the Gaussians reconstruct RGB).
        num_classes, global_pool ('token' | 'avg' | ''): the classifier's head.
        num_gaussians: k, Gaussians per image.
        scale_bound: c, the largest sigma (sigma = c * sigmoid(raw)).
        gaussian_init: 'denoise' (residual over random g0, the default) or 'queries'.
        freeze_encoder: no gradients into the encoder, which stays in eval mode (the paper's
            transfer recipe trains only the classifier).
        encoder_embed_dim, encoder_depth, encoder_num_heads: encoder width, depth and heads.
        embed_dim, depth, num_heads, mlp_ratio: classifier width, depth, heads, MLP ratio.
        drop_rate, pos_drop_rate, proj_drop_rate, attn_drop_rate, drop_path_rate: as in timm's ViT.
        dynamic_img_size: accept any image size; the encoder resamples its position embeddings
            and reconstructions are rendered at the input's size.
        render_backend: backend for :meth:`render` (see :func:`timm_gvit.render_gaussians`).
        centre_features: add the sine-cosine features of each Gaussian's centre to its classifier
            token (the default; False is the paper's plain linear embedding, see MODEL_CARD.md).
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "token",
        num_gaussians: int = 256,
        scale_bound: float = 1.0,
        gaussian_init: str = "denoise",
        freeze_encoder: bool = False,
        encoder_embed_dim: int = 384,
        encoder_depth: int = 12,
        encoder_num_heads: int = 6,
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        drop_rate: float = 0.0,
        pos_drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        dynamic_img_size: bool = False,
        render_backend: str = "auto",
        centre_features: bool = True,
    ):
        super().__init__()
        if in_chans != 3:
            raise ValueError(f"GViT reconstructs RGB images, so in_chans must be 3, got {in_chans}")
        if num_gaussians < 1:
            raise ValueError(f"num_gaussians must be >= 1, got {num_gaussians}")
        if not scale_bound > 0:
            raise ValueError(f"scale_bound must be > 0, got {scale_bound}")
        self.img_size = to_2tuple(img_size)
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.num_gaussians = num_gaussians
        self.scale_bound = scale_bound
        self.dynamic_img_size = dynamic_img_size
        self.render_backend = render_backend
        self.encoder = GaussianEncoder(
            img_size=img_size,
            patch_size=patch_size,
            in_chans=in_chans,
            num_gaussians=num_gaussians,
            embed_dim=encoder_embed_dim,
            depth=encoder_depth,
            num_heads=encoder_num_heads,
            mlp_ratio=mlp_ratio,
            gaussian_init=gaussian_init,
            scale_bound=scale_bound,
            dynamic_img_size=dynamic_img_size,
            pos_drop_rate=pos_drop_rate,
            proj_drop_rate=proj_drop_rate,
            attn_drop_rate=attn_drop_rate,
            drop_path_rate=drop_path_rate,
        )
        self.classifier = GaussianClassifier(
            num_gaussians=num_gaussians,
            num_classes=num_classes,
            global_pool=global_pool,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            drop_rate=drop_rate,
            pos_drop_rate=pos_drop_rate,
            proj_drop_rate=proj_drop_rate,
            attn_drop_rate=attn_drop_rate,
            drop_path_rate=drop_path_rate,
            centre_features=centre_features,
        )
        self.freeze_encoder = False
        self.set_encoder_frozen(freeze_encoder)

    # ----------------------------------------------------------------- timm's model interface
    @property
    def num_classes(self) -> int:
        return self.classifier.num_classes

    @property
    def global_pool(self) -> str:
        return self.classifier.global_pool

    @property
    def num_features(self) -> int:
        return self.classifier.num_features

    @property
    def head_hidden_size(self) -> int:
        return self.classifier.head_hidden_size

    def get_classifier(self) -> nn.Module:
        return self.classifier.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.classifier.reset_classifier(num_classes, global_pool)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.encoder.grad_checkpointing = enable
        self.classifier.grad_checkpointing = enable

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"encoder.pos_embed", "encoder.slot_embed", "classifier.pos_embed", "classifier.cls_token"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """Parameter groups from input to output, for layer-wise lr decay: the encoder's stem, its
        blocks, then the classifier's stem, its blocks and norm; the head comes last."""
        return dict(
            encoder_stem=r"^encoder\.(?:patch_embed|pos_embed|slot_embed|g0_embed)",
            encoder_blocks=[(r"^encoder\.blocks\.(\d+)", None), (r"^encoder\.(?:norm|gaussian_head)", (99999,))]
            if not coarse
            else r"^encoder\.(?:blocks|norm|gaussian_head)",
            stem=r"^classifier\.(?:cls_token|pos_embed|gaussian_embed)",
            blocks=[(r"^classifier\.blocks\.(\d+)", None), (r"^classifier\.norm", (99999,))]
            if not coarse
            else [(r"^classifier\.blocks\.(\d+)", None)],
        )

    def set_encoder_frozen(self, frozen: bool = True) -> None:
        """Stop (or restart) training the encoder: no gradients, and eval-mode behaviour."""
        self.freeze_encoder = frozen
        self.encoder.requires_grad_(not frozen)
        self.encoder.train(self.training and not frozen)

    def train(self, mode: bool = True) -> "GViT":
        super().train(mode)
        if self.freeze_encoder:
            self.encoder.eval()
        return self

    # ----------------------------------------------------------------- Gaussian-level API
    def _check_images(self, images: Tensor) -> None:
        if not isinstance(images, Tensor) or images.dim() != 4:
            shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"images must be a [B, C, H, W] tensor, got {shape}")
        B, C, H, W = images.shape
        if C != self.in_chans:
            raise ValueError(f"images must have {self.in_chans} channels (RGB), got {C} (shape {tuple(images.shape)})")
        if H < self.patch_size or W < self.patch_size:
            raise ValueError(f"images of {H}x{W} are smaller than one {self.patch_size}x{self.patch_size} patch")
        if not self.dynamic_img_size and (H, W) != self.img_size:
            raise ValueError(
                f"images are {H}x{W} but the model takes {self.img_size[0]}x{self.img_size[1]}; "
                "resize them or create the model with dynamic_img_size=True"
            )
        if not torch.isfinite(images).all():
            raise ValueError("images contain non-finite values (NaN or inf)")

    def encode(self, images: Tensor) -> Tensor:
        """Normalised images ``[B, 3, H, W]`` -> decoded Gaussians ``[B, k, 9]``."""
        self._check_images(images)
        return decode_gaussians(self.encoder(images), self.scale_bound)

    def classify(self, gaussians: Tensor) -> Tensor:
        """Decoded Gaussians ``[B, k, 9]`` from any source -> logits ``[B, num_classes]``."""
        if not isinstance(gaussians, Tensor) or gaussians.dim() != 3 or gaussians.shape[1:] != (self.num_gaussians, 9):
            shape = tuple(gaussians.shape) if isinstance(gaussians, Tensor) else type(gaussians).__name__
            raise ValueError(f"gaussians must be [B, {self.num_gaussians}, 9] for this model, got {shape}")
        return self.classifier(gaussians)

    def render(self, gaussians: Tensor, size: int | tuple[int, int] | None = None, background=None) -> Tensor:
        """Decoded Gaussians ``[B, k, 9]`` -> images ``[B, 3, H, W]`` in [0, 1], at ``size``
        (default: the model's ``img_size``)."""
        H, W = to_2tuple(size) if size is not None else self.img_size
        with torch.autocast(gaussians.device.type, enabled=False):  # the renderers work in float32
            half = gaussians.dtype in (torch.float16, torch.bfloat16)
            return render_gaussians(gaussians.float() if half else gaussians, H, W, background, backend=self.render_backend)

    def forward_train(self, images: Tensor, detach_gaussians: bool = False) -> GViTOutput:
        """Logits, Gaussians and their rendering at the input's size, in one pass.

        ``detach_gaussians`` stops the classification loss from reaching the encoder
        (gvit-method.md section 6: in normal joint steps the encoder learns from reconstruction
        only).
        """
        gaussians = self.encode(images)
        logits = self.classifier(gaussians.detach() if detach_gaussians else gaussians)
        return GViTOutput(logits, gaussians, self.render(gaussians, tuple(images.shape[-2:])))

    # ----------------------------------------------------------------- forward
    def forward_features(self, images: Tensor) -> Tensor:
        """Normalised images ``[B, 3, H, W]`` -> classifier tokens ``[B, 1 + k, D]``."""
        return self.classifier.forward_features(self.encode(images))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        return self.classifier.forward_head(x, pre_logits=pre_logits)

    def forward(self, images: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(images))


def checkpoint_filter_fn(state_dict: dict, model: GViT) -> dict:
    """Adapt a checkpoint to ``model``: unwrap trainer checkpoints and resample the encoder's
    position embeddings when the checkpoint was trained at another image size."""
    state_dict = state_dict.get("model", state_dict.get("state_dict", state_dict))
    out = {}
    for name, value in state_dict.items():
        if name == "encoder.pos_embed" and value.shape != model.encoder.pos_embed.shape:
            old = int(value.shape[1] ** 0.5)
            value = resample_abs_pos_embed(value, model.encoder.patch_embed.grid_size, (old, old), num_prefix_tokens=0)
        out[name] = value
    return out


def _cfg(model_tag: str, **kwargs) -> dict:
    return {
        "hf_hub_id": f"{HUB_ORG}/{model_tag}",
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": None,
        "crop_pct": 0.9,
        "interpolation": "bicubic",
        "fixed_input_size": True,
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "encoder.patch_embed.proj",
        "classifier": "classifier.head",
        "license": "apache-2.0",
        "paper_ids": "arXiv:2506.23532",
        "paper_name": "GViT: Representing Images as Gaussians for Visual Recognition",
        **kwargs,
    }


#: Imagenette's classes in label order (sorted WordNet ids n01440764 ... n03888257).
IMAGENETTE_CLASSES = ("tench", "English springer", "cassette player", "chain saw", "church", "French horn",
                      "garbage truck", "gas pump", "golf ball", "parachute")
#: Weights that ship inside the package, one Hub-format folder per tag (config.json,
#: model.safetensors, README.md): ``pretrained=True`` loads them with no network, and
#: ``python -m hub.publish`` can upload a folder as it is.
WEIGHTS_DIR = Path(__file__).parent / "weights"

default_cfgs = generate_default_cfgs({
    # trained on Imagenette at 64 px (MODEL_CARD.md); research use only, as ImageNet
    "gvit_nano.imagenette_64": _cfg(
        "gvit_nano.imagenette_64", hf_hub_id=None, file=str(WEIGHTS_DIR / "gvit_nano.imagenette_64" / "model.safetensors"),
        num_classes=10, input_size=(3, 64, 64), license="other",  # ImageNet terms: research and education only
        label_names=IMAGENETTE_CLASSES,
    ),
    **{name: _cfg(name) for name in ("gvit_tiny.in1k", "gvit_small.in1k", "gvit_base.in1k")},
})


def _has_weights_source(variant: str, kwargs: dict) -> bool:
    """Whether pretrained weights for this call can exist: a file, a URL or a state dict given
    by the caller (local-dir:, --pretrained-path, an overlay), an hf-hub: source, a published
    tag, or a Hub organisation the user chose."""
    cfg = resolve_pretrained_cfg(
        variant, pretrained_cfg=kwargs.get("pretrained_cfg"), pretrained_cfg_overlay=kwargs.get("pretrained_cfg_overlay")
    )
    if cfg is None:
        return False
    if cfg.file or cfg.url or cfg.state_dict is not None or cfg.source in ("hf-hub", "local-dir"):
        return True
    name = f"{cfg.architecture}.{cfg.tag}" if cfg.tag else cfg.architecture
    return bool(cfg.hf_hub_id) and (name in PUBLISHED_TAGS or "TIMM_GVIT_HUB_ORG" in os.environ)


def _create_gvit(variant: str, pretrained: bool = False, **kwargs) -> GViT:
    if pretrained and not _has_weights_source(variant, kwargs):
        raise RuntimeError(
            f"no pretrained weights are published for '{variant}' (looked for them under the Hub "
            f"organisation '{HUB_ORG}'). Train them with `accelerate launch train_gvit.py --model "
            f"{variant.split('.')[0]} ...`, then load the exported folder with "
            "timm.create_model('local-dir:PATH'), or pass a weights file with "
            "pretrained_cfg_overlay=dict(file='PATH/model.safetensors') (timm's train.py: "
            "--pretrained --pretrained-path PATH), or set TIMM_GVIT_HUB_ORG to the Hub organisation "
            "you pushed them to."
        )
    model = build_model_with_cfg(GViT, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn, **kwargs)
    if tuple(model.pretrained_cfg["input_size"][1:]) != model.img_size:
        # the data config must match the image size the model was built for
        model.pretrained_cfg = model.default_cfg = {**model.pretrained_cfg, "input_size": (3, *model.img_size)}
    return model


@register_model
def gvit_nano(pretrained: bool = False, **kwargs) -> GViT:
    """GViT-N: 128 wide, 6 deep, 4 heads in both halves; 64 Gaussians over 8 px patches of 64 px
    images (64 patch tokens: patch 16 gave the encoder 16 tokens and 2 dB worse reconstructions,
    MODEL_CARD.md). The CPU-scale variant of the Imagenette study."""
    args = dict(patch_size=8, num_gaussians=64, encoder_embed_dim=128, encoder_depth=6, encoder_num_heads=4,
                embed_dim=128, depth=6, num_heads=4)
    return _create_gvit("gvit_nano", pretrained=pretrained, **dict(args, **kwargs))


@register_model
def gvit_tiny(pretrained: bool = False, **kwargs) -> GViT:
    """GViT-Ti: ViT-Ti-sized encoder (192 wide, 12 deep, 3 heads) and classifier; for CPU-scale work."""
    args = dict(encoder_embed_dim=192, encoder_depth=12, encoder_num_heads=3, embed_dim=192, depth=12, num_heads=3)
    return _create_gvit("gvit_tiny", pretrained=pretrained, **dict(args, **kwargs))


@register_model
def gvit_small(pretrained: bool = False, **kwargs) -> GViT:
    """GViT-S: ViT-S-sized encoder (384 wide, 12 deep, 6 heads) and a ViT-S classifier."""
    args = dict(encoder_embed_dim=384, encoder_depth=12, encoder_num_heads=6, embed_dim=384, depth=12, num_heads=6)
    return _create_gvit("gvit_small", pretrained=pretrained, **dict(args, **kwargs))


@register_model
def gvit_base(pretrained: bool = False, **kwargs) -> GViT:
    """GViT-B: the same ViT-S-sized encoder and a ViT-B classifier (768 wide, 12 deep, 12 heads)."""
    args = dict(encoder_embed_dim=384, encoder_depth=12, encoder_num_heads=6, embed_dim=768, depth=12, num_heads=12)
    return _create_gvit("gvit_base", pretrained=pretrained, **dict(args, **kwargs))
