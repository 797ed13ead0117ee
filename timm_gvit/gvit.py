"""GViT: image classifiers that see an image as a few hundred 2D Gaussians (arXiv:2506.23532).

The timm model family: ``GViT`` (Gaussian encoder + Gaussian classifier), its pretrained cfgs and
the registered entrypoints ``gvit_nano``, ``gvit_tiny``, ``gvit_small`` and ``gvit_base``. ``import timm_gvit``
registers them, after which they behave like any timm model::

    model = timm.create_model('gvit_small', num_classes=10)
    logits = model(images)                  # images normalised with model.pretrained_cfg mean/std
    gaussians = model.encode(images)        # [B, k, 9] decoded Gaussians
    picture = model.render(gaussians)       # [B, 3, H, W] in [0, 1]

The pretrained cfgs are static: the pretrained tags, ``gvit_nano.imagenette_64_v2`` and the flex
``gvit_nano.imagenette_64_flex`` (any k from 8 to 64), load the weights that ship in
``timm_gvit/weights/``; ``timm.list_pretrained('gvit*')`` lists exactly those.
Weights you trained and pushed load through timm's own ``hf-hub:ORG/NAME`` (or ``local-dir:PATH``).
"""

import math
import warnings
from pathlib import Path
from typing import Callable, List, NamedTuple, Optional, Tuple, Union

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import LayerType, Mlp, register_notrace_function, resample_abs_pos_embed, to_2tuple
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import FeatureGetterNet, feature_take_indices
from timm.models._builder import resolve_pretrained_cfg
from timm.models.vision_transformer import Block

from .classifier import GaussianClassifier
from .data_utils import rgb_targets  # noqa: F401  (timm_gvit.gvit.rgb_targets, as before)
from .encoder import GaussianEncoder
from .gaussians import G0_LAYOUTS, NESTED_LAYOUTS, decode_gaussians
from .rendering import BACKENDS, render_gaussians

__all__ = ["GViT", "GViTOutput"]

#: Input channels GViT takes: RGB, or greyscale (reconstructed as grey RGB).
IN_CHANS = (3, 1)


class GViTOutput(NamedTuple):
    """Everything one training step needs, from one pass."""

    logits: Tensor  # [B, num_classes]
    gaussians: Tensor  # [B, k, 9] decoded
    reconstruction: Tensor  # [B, 3, H, W] rendering of the Gaussians at the input's size


#: Generous upper bounds on the sizes a config.json may ask for, checked before anything is
#: allocated (ViT-22B is 6144 wide and 48 deep): a folder from a stranger cannot exhaust memory.
MAX_WIDTH, MAX_DEPTH, MAX_TOKENS, MAX_CLASSES, MAX_MLP_RATIO = 8192, 64, 65536, 100_000, 16


def _check_int(name: str, value, minimum: int = 1, maximum: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be at most {maximum}, got {value!r}")


#: The nested layout a flex model (``budgets``) gets unless it names one: the best prefixes of
#: those measured (docs/flex.md, benchmarks/reference/flex_layouts.json).
DEFAULT_NESTED_LAYOUT = "morton"
#: Which of overlapping Gaussians is seen (docs/flex.md, "Level of detail"): 'first_in_front', slot
#: 0 in front as the paper composites; 'last_in_front', later slots painted over earlier ones, so
#: that a flex model's first slots can be the coarse background its later slots refine.
RENDER_ORDERS = ("first_in_front", "last_in_front")


def _check_budgets(budgets, num_gaussians: int, g0_layout: Optional[str]) -> Tuple[Optional[Tuple[int, ...]], str]:
    """The budgets, sorted, as a tuple (None: a fixed-k model) and the g0 layout they get."""
    if g0_layout is not None and g0_layout not in G0_LAYOUTS:
        raise ValueError(f"g0_layout must be one of {G0_LAYOUTS}, got {g0_layout!r}")
    if budgets is None:
        return None, g0_layout or "grid"
    if isinstance(budgets, (str, bytes)) or not isinstance(budgets, (list, tuple)) or not budgets:
        raise ValueError(f"budgets must be a non-empty list of Gaussian counts, e.g. [8, 16, 32, 64], got {budgets!r}")
    for value in budgets:
        _check_int("each of budgets", value, maximum=MAX_TOKENS)
    budgets = tuple(sorted(set(budgets)))
    if not budgets[0] <= num_gaussians <= budgets[-1]:
        raise ValueError(f"num_gaussians={num_gaussians} is outside the budgets {list(budgets)}: a flex model serves "
                         f"{budgets[0]} to {budgets[-1]} Gaussians")
    if g0_layout == "grid":
        raise ValueError("budgets need a nested g0_layout (one of " + ", ".join(NESTED_LAYOUTS) + "): 'grid' fills the "
                         "image row by row, so a prefix of its slots covers only the top rows")
    return budgets, g0_layout or DEFAULT_NESTED_LAYOUT


def _check_arguments(img_size, patch_size, in_chans, num_classes, num_gaussians, scale_bound, widths_and_heads,
                     depths, mlp_ratio, rates, dynamic_img_size, render_backend) -> Tuple[int, int]:
    """Reject constructor arguments that would fail later with a raw error or give a silently
    wrong model; returns ``img_size`` as an (H, W) pair."""
    _check_int("patch_size", patch_size)
    size = tuple(img_size) if isinstance(img_size, (tuple, list)) else (img_size, img_size)
    if len(size) != 2:
        raise ValueError(f"img_size must be an integer or an (H, W) pair, got {img_size!r}")
    for value in size:
        _check_int("img_size", value)
    if (size[0] // patch_size) * (size[1] // patch_size) > MAX_TOKENS:
        raise ValueError(f"img_size {size[0]}x{size[1]} with patch_size {patch_size} gives "
                         f"{(size[0] // patch_size) * (size[1] // patch_size)} patches, more than {MAX_TOKENS}")
    if size[0] % patch_size or size[1] % patch_size:
        raise ValueError(f"img_size {size[0]}x{size[1]} is not a multiple of patch_size {patch_size}: the encoder "
                         f"would silently drop the border; use a size divisible by {patch_size}")
    if in_chans not in IN_CHANS:
        raise ValueError(f"in_chans must be 3 (RGB) or 1 (greyscale, reconstructed as grey RGB), got {in_chans!r}")
    _check_int("num_classes", num_classes, minimum=0, maximum=MAX_CLASSES)
    _check_int("num_gaussians", num_gaussians, maximum=MAX_TOKENS)
    if isinstance(scale_bound, bool) or not isinstance(scale_bound, (int, float)) or not 0 < scale_bound < math.inf:
        raise ValueError(f"scale_bound must be a number > 0 and finite, got {scale_bound!r}")
    for (width_name, width), (heads_name, heads) in widths_and_heads:
        _check_int(width_name, width, maximum=MAX_WIDTH)
        _check_int(heads_name, heads)
        if width % heads:
            raise ValueError(f"{width_name}={width} is not divisible by {heads_name}={heads}")
    for name, depth in depths:
        _check_int(name, depth, maximum=MAX_DEPTH)
    if isinstance(mlp_ratio, bool) or not isinstance(mlp_ratio, (int, float)) or not 0 < mlp_ratio <= MAX_MLP_RATIO:
        raise ValueError(f"mlp_ratio must be a number > 0 and at most {MAX_MLP_RATIO}, got {mlp_ratio!r}")
    for name, rate in rates:
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < 1:
            raise ValueError(f"{name} must be a number in [0, 1), got {rate!r}")
    if not isinstance(dynamic_img_size, bool):
        raise ValueError(f"dynamic_img_size must be True or False, got {dynamic_img_size!r}")
    if render_backend not in BACKENDS:
        raise ValueError(f"unknown render_backend {render_backend!r}; choose one of {', '.join(BACKENDS)}")
    return size


@register_notrace_function  # torch.fx keeps this as one call instead of tracing into it
def check_image_shape(images: Tensor, in_chans: int, patch_size: int, img_size: Tuple[int, int],
                      dynamic_img_size: bool) -> Tensor:
    """``images``, after raising a ValueError naming the problem unless they are a
    ``[B, in_chans, H, W]`` batch the model takes: ``img_size`` or, with ``dynamic_img_size``, any
    multiple of ``patch_size``.

    Shapes only, never values, so that it costs no host-device sync and torch.compile,
    torch.export, torch.fx and TorchScript all keep it (returning its input keeps it in fx
    graphs that drop unused calls).
    """
    if images.dim() != 4:
        raise ValueError(f"images must be a [B, C, H, W] tensor, got shape {list(images.shape)}")
    C, H, W = images.shape[1], images.shape[2], images.shape[3]
    if C != in_chans:
        raise ValueError(f"images must have {in_chans} channel(s), got {C} (shape {list(images.shape)})")
    if H < patch_size or W < patch_size:
        raise ValueError(f"images of {H}x{W} are smaller than one {patch_size}x{patch_size} patch")
    if dynamic_img_size:
        if H % patch_size != 0 or W % patch_size != 0:
            raise ValueError(f"images of {H}x{W} are not a multiple of the {patch_size} px patch: the encoder would "
                             f"drop the border; resize or pad them to a multiple of {patch_size}")
    elif H != img_size[0] or W != img_size[1]:
        raise ValueError(f"images are {H}x{W} but the model takes {img_size[0]}x{img_size[1]}; "
                         "resize them or create the model with dynamic_img_size=True")
    return images


@torch.jit.unused
def _check_is_tensor(images: Tensor) -> None:
    if not isinstance(images, (Tensor, torch.fx.Proxy)):  # a Proxy while torch.fx traces
        raise ValueError(f"images must be a [B, C, H, W] tensor, got {type(images).__name__}")


def check_gaussian_values(gaussians: Tensor) -> None:
    """Raise a ValueError unless every decoded Gaussian is finite with sigma > 0: what the
    renderer requires, checked the same way before classification. One host-device sync."""
    if not torch.isfinite(gaussians).all():
        bad = (~torch.isfinite(gaussians)).nonzero()[0].tolist()
        raise ValueError(f"gaussians contain non-finite values (first at [batch, gaussian, param] = {bad})")
    if (gaussians[..., 2:4] <= 0).any():
        bad = (gaussians[..., 2:4] <= 0).nonzero()[0].tolist()
        raise ValueError(f"sigma_x/sigma_y (params 2, 3) must be > 0; the first that is not is at [batch, gaussian] = {bad[:2]}")


class GViT(nn.Module):
    """Images -> Gaussian encoder -> k decoded Gaussians -> Gaussian classifier -> logits.

    Args:
        img_size: int or (H, W); the encoder's input size, a multiple of ``patch_size``.
        patch_size: int; the encoder's square patch, in pixels.
        in_chans: 3 (RGB) or 1 (greyscale: the Gaussians stay RGB and reconstruct the grey image
            as grey RGB, see :func:`rgb_targets`; pretrained RGB stems adapt as in any timm model).
        num_classes: int; the head's outputs (0: no head, ``forward`` returns pooled features).
        global_pool: 'token' (the class token), 'avg' (the mean Gaussian token) or '' (no pooling).
        num_gaussians: int; k, Gaussians per image (for a flex model: the budget it serves,
            changed with :meth:`set_num_gaussians`).
        budgets: None (a model of one k) or the Gaussian counts a flex model is trained for, e.g.
            ``[8, 16, 32, 64]`` (docs/flex.md): its tables hold ``max(budgets)`` slots, and it
            serves any k from ``min(budgets)`` to ``max(budgets)``, the encoder over the patches
            and k Gaussian tokens, the classifier over k Gaussians. Every prefix of its Gaussians
            is an image: ``model.render(gaussians[:, :k])``.
        g0_layout: where the denoising encoder's g0 sit: 'grid' (row by row, the paper's; the
            default without budgets) or a nested order, 'morton', 'r2' or 'halton' (with budgets,
            default 'morton'); see :func:`timm_gvit.gaussians.nested_layout`.
        scale_bound: float; c, the largest sigma (sigma = c * sigmoid(raw)).
        gaussian_init: 'denoise' (a residual over random g0, the default) or 'queries'.
        freeze_encoder: bool; no gradients into the encoder, which stays in eval mode (the
            paper's transfer recipe trains only the classifier).
        encoder_embed_dim: int; the encoder's width.
        encoder_depth: int; the encoder's blocks.
        encoder_num_heads: int; the encoder's attention heads.
        encoder_stem: 'patch' (a linear patch projection, as the paper) or 'conv' (timm's
            ConvStem of 3x3 stride-2 convolutions; ``patch_size`` a power of 2).
        encoder_refine_steps: int; passes of the encoder, each taking the last one's Gaussians
            as its g0 (1: the paper's single pass).
        encoder_centre_scale: float; multiplies the predicted residual of the Gaussians' centres
            (1: the paper's; larger lets centres move further from their g0 per image, MODEL_CARD.md
            section 8).
        embed_dim: int; the classifier's width.
        depth: int; the classifier's blocks.
        num_heads: int; the classifier's attention heads.
        mlp_ratio: float; the MLP hidden width over the embedding width, in both networks.
        qkv_bias: bool; biases in the attention's qkv projection (timm's ViT), in both networks.
        drop_rate: float; dropout before the head (timm's ViT).
        pos_drop_rate: float; dropout after the position embeddings (timm's ViT).
        proj_drop_rate: float; dropout after attention and MLP projections (timm's ViT).
        attn_drop_rate: float; attention dropout (timm's ViT).
        drop_path_rate: float; the last block's stochastic depth, ramped linearly (timm's ViT).
        patch_drop_rate: float; in training each image keeps a random ``1 - patch_drop_rate`` of
            the classifier's Gaussian tokens (timm's ViT; the encoder sees every patch).
        dynamic_img_size: bool; accept any image size that is a multiple of ``patch_size``; the
            encoder resamples its position embeddings, reconstructions are rendered at the input's size.
        render_backend: str; the backend of :meth:`render` (see :func:`timm_gvit.render_gaussians`).
        render_order: 'first_in_front' (slot 0 composited in front, the paper's) or
            'last_in_front' (each slot painted over those before it: a flex model trained with the
            prefix loss then refines its coarse first slots with later ones, docs/flex.md).
        centre_features: bool; add the sine-cosine features of each Gaussian's centre to its
            classifier token (the default; False is the paper's plain linear embedding, MODEL_CARD.md).
        pos_embed: 'learn' (a learned embedding per Gaussian slot) or 'none' (the classifier's
            tokens are a set, located by their centre features); timm ViT's option of that name.
        shape_features: bool; embed each Gaussian's log size and double-angle anisotropy instead
            of (sigma_x, sigma_y, phi), see :func:`timm_gvit.classifier.shape_features`.
        mlp_embed: bool; embed each Gaussian with a two-layer MLP instead of one linear map.
        norm_layer: a timm norm layer name ('layernorm', 'rmsnorm', ...) or class, for every norm;
            None: what GViTs were trained with (LayerNorm, eps 1e-6).
        act_layer: a timm activation name ('gelu', 'silu', ...) or class for every MLP; None: GELU.
        block_fn: the transformer block class, called with timm ``Block``'s keyword arguments.
        weight_init: '' (the paper's: Xavier-uniform linears, small normal tokens) or 'skip'
            (each layer's PyTorch default, as timm's ViT).

    ``forward`` (= ``forward_head(forward_features(x))``) checks shapes, never values, so that it
    compiles with ``fullgraph=True``, exports, traces and scripts; :meth:`encode` and
    :meth:`classify`, the Gaussian-level API, also reject non-finite inputs (and sigma <= 0), as
    :meth:`render` does.

    Feature maps (``features_only=True``, :meth:`forward_intermediates`, ``feature_info``) are the
    encoder's patch tokens on the patch grid: ``encoder_embed_dim`` channels at stride ``patch_size``.
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "token",
        num_gaussians: int = 256,
        budgets: Optional[List[int]] = None,
        g0_layout: Optional[str] = None,
        scale_bound: float = 1.0,
        gaussian_init: str = "denoise",
        freeze_encoder: bool = False,
        encoder_embed_dim: int = 384,
        encoder_depth: int = 12,
        encoder_num_heads: int = 6,
        encoder_stem: str = "patch",
        encoder_refine_steps: int = 1,
        encoder_centre_scale: float = 1.0,
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        pos_drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        patch_drop_rate: float = 0.0,
        dynamic_img_size: bool = False,
        render_backend: str = "auto",
        render_order: str = "first_in_front",
        centre_features: bool = True,
        pos_embed: str = "learn",
        shape_features: bool = False,
        mlp_embed: bool = False,
        norm_layer: Optional[LayerType] = None,
        act_layer: Optional[LayerType] = None,
        block_fn: Callable[..., nn.Module] = Block,
        weight_init: str = "",
    ):
        super().__init__()
        img_size = _check_arguments(
            img_size, patch_size, in_chans, num_classes, num_gaussians, scale_bound,
            widths_and_heads=[(("encoder_embed_dim", encoder_embed_dim), ("encoder_num_heads", encoder_num_heads)),
                              (("embed_dim", embed_dim), ("num_heads", num_heads))],
            depths=[("encoder_depth", encoder_depth), ("depth", depth)], mlp_ratio=mlp_ratio,
            rates=[("drop_rate", drop_rate), ("pos_drop_rate", pos_drop_rate), ("proj_drop_rate", proj_drop_rate),
                   ("attn_drop_rate", attn_drop_rate), ("drop_path_rate", drop_path_rate), ("patch_drop_rate", patch_drop_rate)],
            dynamic_img_size=dynamic_img_size, render_backend=render_backend,
        )
        self.budgets, g0_layout = _check_budgets(budgets, num_gaussians, g0_layout)
        if render_order not in RENDER_ORDERS:
            raise ValueError(f"render_order must be one of {RENDER_ORDERS}, got {render_order!r}")
        self.render_order = render_order
        num_slots = self.budgets[-1] if self.budgets else num_gaussians
        self.img_size = img_size
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.mlp_ratio = mlp_ratio
        self.num_gaussians = num_gaussians
        self.scale_bound = float(scale_bound)
        self.dynamic_img_size = dynamic_img_size
        self.render_backend = render_backend
        layers = dict(qkv_bias=qkv_bias, norm_layer=norm_layer, act_layer=act_layer, block_fn=block_fn, weight_init=weight_init)
        self._layer_args = dict(norm_layer=norm_layer, act_layer=act_layer, block_fn=block_fn)
        self.encoder = GaussianEncoder(
            img_size=img_size,
            patch_size=patch_size,
            in_chans=in_chans,
            num_gaussians=num_gaussians,
            num_slots=num_slots,
            g0_layout=g0_layout,
            embed_dim=encoder_embed_dim,
            depth=encoder_depth,
            num_heads=encoder_num_heads,
            mlp_ratio=mlp_ratio,
            gaussian_init=gaussian_init,
            scale_bound=self.scale_bound,
            dynamic_img_size=dynamic_img_size,
            pos_drop_rate=pos_drop_rate,
            proj_drop_rate=proj_drop_rate,
            attn_drop_rate=attn_drop_rate,
            drop_path_rate=drop_path_rate,
            stem=encoder_stem,
            refine_steps=encoder_refine_steps,
            centre_scale=encoder_centre_scale,
            **layers,
        )
        self.classifier = GaussianClassifier(
            num_gaussians=num_gaussians,
            num_slots=num_slots,
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
            patch_drop_rate=patch_drop_rate,
            centre_features=centre_features,
            pos_embed=pos_embed,
            shape_features=shape_features,
            mlp_embed=mlp_embed,
            **layers,
        )
        self.feature_info = [dict(module=f"encoder.blocks.{i}", num_chs=encoder_embed_dim, reduction=patch_size)
                             for i in range(encoder_depth)]
        self.freeze_encoder = False
        self.set_encoder_frozen(freeze_encoder)
        self._warned_end_to_end = False  # forward's once-per-model warning (_warn_end_to_end)

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

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.classifier.head

    def architecture_args(self) -> dict:
        """The constructor arguments that define the weights' shapes and meaning, JSON-ready: an
        export records them so that the weights load whatever the variant's defaults become.

        Returns:
            a dict of JSON values; ``norm_layer`` and ``act_layer`` only when set, as names.

        Raises a ValueError when a layer was given as a class or ``block_fn`` is not timm's
        ``Block``: a config file cannot name them.
        """
        enc, clf = self.encoder, self.classifier
        args = dict(img_size=list(self.img_size), patch_size=self.patch_size, in_chans=self.in_chans,
                    num_gaussians=self.num_gaussians, scale_bound=self.scale_bound, gaussian_init=enc.gaussian_init,
                    centre_features=clf.centre_features, encoder_embed_dim=enc.pos_embed.shape[-1],
                    encoder_depth=len(enc.blocks), encoder_num_heads=enc.blocks[0].attn.num_heads, encoder_stem=enc.stem,
                    encoder_refine_steps=enc.refine_steps, encoder_centre_scale=enc.centre_scale, embed_dim=clf.embed_dim, depth=len(clf.blocks),
                    num_heads=clf.blocks[0].attn.num_heads, mlp_ratio=self.mlp_ratio,
                    qkv_bias=enc.blocks[0].attn.qkv.bias is not None, pos_embed="learn" if clf.pos_embed is not None else "none",
                    shape_features=clf.shape_features, mlp_embed=isinstance(clf.gaussian_embed, Mlp))
        if self.budgets or enc.g0_layout != "grid":  # a fixed-k grid model's config stays as it was
            args.update(budgets=list(self.budgets) if self.budgets else None, g0_layout=enc.g0_layout)
        if self.render_order != "first_in_front":  # as above: the configs of models in the paper's order stay as they were
            args["render_order"] = self.render_order
        for name in ("norm_layer", "act_layer"):
            value = self._layer_args[name]
            if value is not None and not isinstance(value, str):
                raise ValueError(f"{name}={value!r} cannot be written to a config file: pass it by name (e.g. "
                                 f"{'rmsnorm' if name == 'norm_layer' else 'silu'!r}) to export this model")
            if value is not None:
                args[name] = value
        if self._layer_args["block_fn"] is not Block:
            raise ValueError(f"block_fn={self._layer_args['block_fn']!r} cannot be written to a config file: export "
                             "the weights with save_for_hf and build the model with the same block_fn to load them")
        return args

    def set_num_gaussians(self, num_gaussians: int) -> None:
        """Serve ``num_gaussians`` Gaussians per image from now on, as timm's ``set_input_size``
        serves another image size: the encoder reads the patches with the first k slots, the
        classifier takes k Gaussians. The weights do not change.

        Raises a ValueError for a k the model was not trained for: outside ``[min(budgets),
        max(budgets)]`` for a flex model, any other than its own for a model without budgets.
        """
        self._check_budget("num_gaussians", num_gaussians)
        self.num_gaussians = self.encoder.num_gaussians = self.classifier.num_gaussians = num_gaussians

    def _check_budget(self, name: str, k) -> None:
        _check_int(name, k, maximum=MAX_TOKENS)
        if self.budgets is None and k != self.encoder.num_slots:
            raise ValueError(f"{name}={k}: this model was trained for {self.encoder.num_slots} Gaussians only, not for "
                             "other budgets; a flex model (GViT(budgets=...), train_gvit.py --budgets) serves several")
        if self.budgets is not None and not self.budgets[0] <= k <= self.budgets[-1]:
            raise ValueError(f"{name}={k} is outside the budgets this model was trained for: it serves {self.budgets[0]} "
                             f"to {self.budgets[-1]} Gaussians (trained at {', '.join(map(str, self.budgets))})")

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        _check_int("num_classes", num_classes, minimum=0, maximum=MAX_CLASSES)
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
    def _check_images(self, images: Tensor) -> Tensor:
        if not torch.jit.is_scripting():
            _check_is_tensor(images)
        return check_image_shape(images, self.in_chans, self.patch_size, self.img_size, self.dynamic_img_size)

    def _encode(self, images: Tensor) -> Tensor:
        """:meth:`encode` with shape checks only: the traced path."""
        return decode_gaussians(self.encoder(self._check_images(images)), self.scale_bound)

    @torch.jit.ignore
    def encode(self, images: Tensor, check_values: bool = True) -> Tensor:
        """The Gaussians the encoder sees in images.

        Args:
            images: ``[B, in_chans, H, W]`` float, normalised with ``pretrained_cfg`` mean/std.
            check_values: reject non-finite images with a ValueError (one host-device sync;
                skipped while torch.compile or torch.export traces the call).

        Returns:
            ``[B, k, 9]`` decoded Gaussians, images' dtype: (mu_x, mu_y) in [-1, 1], (sigma_x,
            sigma_y) in (0, scale_bound), phi, (r, g, b) and opacity in [0, 1].
        """
        self._check_images(images)
        if check_values and not torch.compiler.is_compiling() and not torch.isfinite(images).all():
            raise ValueError("images contain non-finite values (NaN or inf)")
        return self._encode(images)

    @torch.jit.ignore
    def classify(self, gaussians: Tensor, check_values: bool = True) -> Tensor:
        """Classify Gaussians from any source (:meth:`encode`, :func:`timm_gvit.fit_gaussians`).

        Args:
            gaussians: ``[B, k, 9]`` float, decoded, with this model's k (a flex model: any k
                from ``min(budgets)`` to ``max(budgets)``, e.g. a prefix of its Gaussians).
            check_values: reject non-finite Gaussians and sigma <= 0 with a ValueError, as
                :meth:`render` does (one host-device sync; skipped while torch.compile or
                torch.export traces the call). The trainer passes False: it skips steps whose
                loss is not finite instead.

        Returns:
            ``[B, num_classes]`` logits (``[B, embed_dim]`` pooled features when num_classes is 0).
        """
        if not isinstance(gaussians, Tensor) or gaussians.dim() != 3 or gaussians.shape[-1] != 9 or not (
                gaussians.shape[1] == self.num_gaussians if self.budgets is None else self.budgets[0] <= gaussians.shape[1] <= self.budgets[-1]):
            shape = tuple(gaussians.shape) if isinstance(gaussians, Tensor) else type(gaussians).__name__
            expected = (f"[B, {self.num_gaussians}, 9]" if self.budgets is None
                        else f"[B, k, 9] with k from {self.budgets[0]} to {self.budgets[-1]}")
            raise ValueError(f"gaussians must be {expected} for this model, got {shape}")
        if not gaussians.is_floating_point():
            raise ValueError(f"gaussians must be floating point, got {gaussians.dtype}")
        if check_values and not torch.compiler.is_compiling():
            check_gaussian_values(gaussians)
        return self.classifier(gaussians)

    @torch.jit.ignore
    def render(self, gaussians: Tensor, size: int | tuple[int, int] | None = None, background=None) -> Tensor:
        """Draw Gaussians, with the model's ``render_backend``, composited in its ``render_order``.

        Args:
            gaussians: ``[B, k, 9]`` float, decoded (float16/bfloat16 are rendered in float32).
            size: int or (H, W); default the model's ``img_size``.
            background: in [0, 1]: None (black), a float, 3 floats, or a ``[B, 3]`` float tensor.

        Returns:
            ``[B, 3, H, W]`` float32 images in [0, 1].
        """
        H, W = to_2tuple(size) if size is not None else self.img_size
        with torch.autocast(gaussians.device.type, enabled=False):  # the renderers work in float32
            half = gaussians.dtype in (torch.float16, torch.bfloat16)
            return render_gaussians(self.in_drawing_order(gaussians.float() if half else gaussians), H, W, background,
                                    backend=self.render_backend)

    def in_drawing_order(self, gaussians: Tensor) -> Tensor:
        """``[B, k, 9]`` Gaussians reordered for the renderers, which composite slot 0 in front: as
        given for ``render_order='first_in_front'``, reversed for ``'last_in_front'``."""
        return gaussians.flip(1) if self.render_order == "last_in_front" else gaussians

    @torch.jit.ignore
    def forward_train(self, images: Tensor, detach_gaussians: bool = False) -> GViTOutput:
        """Logits, Gaussians and their rendering at the input's size, in one pass.

        Args:
            images: ``[B, in_chans, H, W]`` float, normalised.
            detach_gaussians: stop the classification loss from reaching the encoder
                (docs/method.md section 6: in normal joint steps the encoder learns from
                reconstruction only).

        Returns:
            :class:`GViTOutput`: logits ``[B, num_classes]``, decoded Gaussians ``[B, k, 9]`` and
            their rendering ``[B, 3, H, W]`` float32 in [0, 1].
        """
        gaussians = self.encode(images)
        logits = self.classifier(gaussians.detach() if detach_gaussians else gaussians)
        return GViTOutput(logits, gaussians, self.render(gaussians, tuple(images.shape[-2:])))

    @torch.jit.ignore
    def compile_networks(self, **compile_kwargs) -> "GViT":
        """``torch.compile`` the encoder and the classifier in place (``nn.Module.compile``), for
        every path that runs them (forward, encode, classify, forward_train); the renderer, a
        custom kernel, stays eager. ``compile_kwargs`` go to ``torch.compile``. No process-wide
        setting changes (the trainer compiles its own regions: ``GViTObjective.compile_regions``).
        """
        self.encoder.compile(**compile_kwargs)
        self.classifier.compile(**compile_kwargs)
        return self

    # ----------------------------------------------------------------- forward
    def forward_features(self, images: Tensor) -> Tensor:
        """The classifier's final tokens.

        Args:
            images: ``[B, in_chans, H, W]`` float, normalised.

        Returns:
            ``[B, 1 + k, embed_dim]`` normalised tokens, the class token first.
        """
        return self.classifier.forward_features(self._encode(images))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Pool the classifier's tokens and apply the head.

        Args:
            x: ``[B, 1 + k, embed_dim]`` float, from :meth:`forward_features`.
            pre_logits: return the pooled features instead of the logits.

        Returns:
            ``[B, num_classes]`` logits, or ``[B, embed_dim]`` pooled features.
        """
        return self.classifier.forward_head(x, pre_logits=pre_logits)

    def forward(self, images: Tensor) -> Tensor:
        """Classify images.

        Args:
            images: ``[B, in_chans, H, W]`` float, normalised with ``pretrained_cfg`` mean/std.

        Returns:
            ``[B, num_classes]`` logits (``[B, embed_dim]`` pooled features when num_classes is 0).
        """
        if self.training and not torch.jit.is_scripting():
            self._warn_end_to_end()
        return self.forward_head(self.forward_features(images))

    @torch.jit.unused
    def _warn_end_to_end(self) -> None:
        """Warn once per model when ``forward`` runs in training mode with gradients into a trainable encoder: a loss
        on these logits alone (timm's train.py, a plain training loop) trains the encoder end to end on the
        classifier's loss, with no reconstruction, and the Gaussians stop being fits of the image."""
        if (self._warned_end_to_end or not torch.is_grad_enabled() or torch.compiler.is_compiling()
                or torch.fx._symbolic_trace.is_fx_tracing() or not any(p.requires_grad for p in self.encoder.parameters())):
            return
        self._warned_end_to_end = True
        warnings.warn("GViT.forward in training mode sends the classifier's loss into a trainable encoder, with no "
                      "reconstruction loss: trained this way (timm's train.py, or a plain loop), the Gaussians stop being "
                      "fits of the image. Train from scratch with gvit-train; to fine-tune, pass freeze_encoder=True "
                      "(README.md, 'Fine-tune with timm's scripts').", UserWarning, stacklevel=3)

    def forward_intermediates(
        self,
        images: Tensor,
        indices: Optional[Union[int, List[int]]] = None,
        return_prefix_tokens: bool = False,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> Union[List[Tensor], Tuple[Tensor, List[Tensor]], List[Tuple[Tensor, Tensor]],
               Tuple[Tensor, List[Tuple[Tensor, Tensor]]]]:
        """The encoder's patch tokens after the blocks picked by ``indices``, as timm's ViT
        (what ``features_only=True`` returns). For the classifier's Gaussian tokens, call
        ``model.classifier.forward_intermediates(model.encode(images))``.

        Args:
            images: ``[B, in_chans, H, W]`` float, normalised.
            indices: the last n encoder blocks if an int, all if None, else the block indices listed.
            return_prefix_tokens: pair each feature map with the k Gaussian tokens ``[B, k, D]``
                that share the encoder's blocks with the patches (ViT's class-token slot).
            norm: pass each intermediate through the encoder's final norm.
            stop_early: with ``intermediates_only``, skip the encoder blocks after the last one picked.
            output_fmt: 'NCHW' (feature maps ``[B, D, H / patch, W / patch]``) or 'NLC'
                (``[B, N, D]``, the patches in row-major order).
            intermediates_only: return the intermediates alone.

        Returns:
            ``(forward_features(images) [B, 1 + k, embed_dim], intermediates)``, or the
            intermediates alone; D is ``encoder_embed_dim``.
        """
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' (feature maps on the patch grid) or 'NLC' (patch tokens), got {output_fmt!r}")
        images = self._check_images(images)
        raw, tokens = self.encoder.forward_intermediates(images, indices, norm=norm, stop_early=stop_early and intermediates_only)
        k = self.num_gaussians
        intermediates = [t[:, :-k] for t in tokens]
        if output_fmt == "NCHW":
            B, rows, cols = images.shape[0], images.shape[-2] // self.patch_size, images.shape[-1] // self.patch_size
            intermediates = [t.reshape(B, rows, cols, -1).permute(0, 3, 1, 2).contiguous() for t in intermediates]
        if return_prefix_tokens:
            intermediates = list(zip(intermediates, [t[:, -k:] for t in tokens]))
        if intermediates_only:
            return intermediates
        assert raw is not None
        return self.classifier.forward_features(decode_gaussians(raw, self.scale_bound)), intermediates

    @torch.jit.ignore
    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        """Keep what the feature maps at ``indices`` need, as timm's ViT: the encoder's blocks up to
        the last index; ``prune_norm`` drops the encoder's final norm, ``prune_head`` the
        classifier's blocks and head. Afterwards the model serves feature maps: its Gaussians and
        logits are no longer the trained ones.

        Returns:
            the kept indices, non-negative.
        """
        take_indices, max_index = feature_take_indices(len(self.encoder.blocks), indices)
        self.encoder.blocks = self.encoder.blocks[: max_index + 1]
        if prune_norm:
            self.encoder.norm = nn.Identity()
        if prune_head:
            self.classifier.blocks = self.classifier.blocks[:0]
            self.reset_classifier(0, "")
        return take_indices


def checkpoint_grid(num_tokens: int, model: GViT) -> Tuple[int, int]:
    """The (rows, cols) patch grid of a checkpoint's encoder position embeddings ``[1, N, D]``.

    Taken from the size the weights were trained at, ``model.pretrained_cfg['input_size']``
    (what timm reads from the checkpoint's config.json or the tag's cfg) when it has N patches;
    else the model's own grid when that has N patches; else a square grid. A checkpoint that
    fits none of them is refused: its layout cannot be known.
    """
    patch = model.patch_size
    input_size = (getattr(model, "pretrained_cfg", None) or {}).get("input_size")
    candidates = [(input_size[-2] // patch, input_size[-1] // patch)] if input_size else []
    candidates.append(tuple(model.encoder.patch_embed.grid_size))
    side = math.isqrt(num_tokens)
    candidates.append((side, side))
    for rows, cols in candidates:
        if rows * cols == num_tokens:
            return rows, cols
    raise ValueError(
        f"the checkpoint's encoder position embeddings hold {num_tokens} patches, which fits neither the size in its "
        f"pretrained_cfg ({input_size}), nor the model's {model.encoder.patch_embed.grid_size} grid, nor a square grid; "
        "give the size it was trained at, e.g. pretrained_cfg_overlay=dict(input_size=(3, H, W))"
    )


def checkpoint_filter_fn(state_dict: dict, model: GViT) -> dict:
    """Adapt a checkpoint to ``model``: unwrap trainer checkpoints and resample the encoder's
    position embeddings when the checkpoint was trained at another image size or aspect ratio
    (its grid from :func:`checkpoint_grid`). A checkpoint whose Gaussian tables hold another
    number of slots than the model's is refused with the budgets it can serve."""
    state_dict = state_dict.get("model", state_dict.get("state_dict", state_dict))
    slots = state_dict.get("encoder.slot_embed")
    if slots is not None and slots.shape[1] != model.encoder.num_slots:
        asked = model.num_gaussians if model.budgets is None else f"budgets up to {model.budgets[-1]}"
        raise ValueError(
            f"the checkpoint's Gaussian tables hold {slots.shape[1]} slots and the model asks for {asked}: "
            + (f"a checkpoint trained for one budget serves num_gaussians={slots.shape[1]} only, not other budgets "
               "(a flex model, trained with train_gvit.py --budgets, serves several)" if model.budgets is None else
               f"build the model with the checkpoint's budgets (at most {slots.shape[1]})"))
    out = {}
    for name, value in state_dict.items():
        if name == "encoder.pos_embed":
            old_grid, new_grid = checkpoint_grid(value.shape[1], model), tuple(model.encoder.patch_embed.grid_size)
            if old_grid != new_grid:
                value = resample_abs_pos_embed(value, new_grid, old_grid, num_prefix_tokens=0)
        out[name] = value
    return out


def _cfg(**kwargs) -> dict:
    return {
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
#: ``gvit-publish`` can upload a folder as it is.
WEIGHTS_DIR = Path(__file__).parent / "weights"

#: Model arguments a tag's weights were trained with beyond its architecture's defaults (a flex
#: tag's budgets): ``create_model(tag)`` builds the model with them unless the call gives others.
TAG_MODEL_ARGS = {"gvit_nano.imagenette_64_flex": dict(budgets=[8, 16, 32, 64], g0_layout="morton")}

default_cfgs = generate_default_cfgs({
    # trained on Imagenette's images (an ImageNet subset): the weights come under ImageNet's
    # terms of access (non-commercial research and education), hence license 'other'
    "gvit_nano.imagenette_64_v2": _cfg(
        file=str(WEIGHTS_DIR / "gvit_nano.imagenette_64_v2" / "model.safetensors"), num_classes=10,
        input_size=(3, 64, 64), crop_mode="center", label_names=IMAGENETTE_CLASSES, license="other",
    ),
    # one model for k = 8 to 64 Gaussians (docs/flex.md): create_model(..., num_gaussians=k) chooses k
    "gvit_nano.imagenette_64_flex": _cfg(
        file=str(WEIGHTS_DIR / "gvit_nano.imagenette_64_flex" / "model.safetensors"), num_classes=10,
        input_size=(3, 64, 64), crop_mode="center", label_names=IMAGENETTE_CLASSES, license="other",
    ),
    # no weights published: create_model(..., pretrained=True) says how to get some
    "gvit_tiny": _cfg(),
    "gvit_small": _cfg(),
    "gvit_base": _cfg(),
})


def _has_weights_source(variant: str, kwargs: dict) -> bool:
    """Whether pretrained weights for this call can exist: a file, a URL, a state dict or a Hub
    id, from the tag's cfg or given by the caller (local-dir:, hf-hub:, --pretrained-path, an
    overlay)."""
    cfg = resolve_pretrained_cfg(
        variant, pretrained_cfg=kwargs.get("pretrained_cfg"), pretrained_cfg_overlay=kwargs.get("pretrained_cfg_overlay")
    )
    if cfg is None:
        return False
    return bool(cfg.file or cfg.url or cfg.state_dict is not None or cfg.hf_hub_id or cfg.source in ("hf-hub", "local-dir"))


def _create_gvit(variant: str, pretrained: bool = False, **kwargs) -> GViT:
    if isinstance(kwargs.get("pretrained_cfg"), str):  # a tag: the model arguments its weights need
        for key, value in TAG_MODEL_ARGS.get(f"{variant}.{kwargs['pretrained_cfg']}", {}).items():
            kwargs.setdefault(key, value)
    if isinstance(kwargs.get("pretrained_cfg"), dict):  # an export's: its budgets are the model's (model_args), not a timm field
        kwargs["pretrained_cfg"] = {k: v for k, v in kwargs["pretrained_cfg"].items() if k != "budgets"}
    if pretrained and not _has_weights_source(variant, kwargs):
        raise RuntimeError(
            f"no pretrained weights are published for '{variant}' (none ship with the package). Train them "
            f"with `accelerate launch train_gvit.py --model {variant.split('.')[0]} ...`, then load the exported "
            "folder with timm.create_model('local-dir:PATH'), or the Hub repository you pushed it to with "
            "timm.create_model('hf-hub:ORG/NAME'), or pass a weights file with "
            "pretrained_cfg_overlay=dict(file='PATH/model.safetensors') (timm's train.py: "
            "--pretrained --pretrained-path PATH)."
        )
    overlay = kwargs.get("pretrained_cfg_overlay") or {}
    file_classes = _weights_file_classes(variant, kwargs) if pretrained else None
    if file_classes is not None:  # the head in the file decides; timm replaces it only for another class count
        kwargs.setdefault("num_classes", file_classes)
        kwargs["pretrained_cfg_overlay"] = {**overlay, "num_classes": file_classes}
    out_indices = kwargs.pop("out_indices", 3)
    model = build_model_with_cfg(GViT, variant, pretrained, pretrained_filter_fn=_pretrained_filter_fn,
                                 feature_cfg=dict(out_indices=out_indices, feature_cls="getter"), **kwargs)
    # The data config must match the input the model was built for, which timm cannot do from
    # a cfg: its size, and its channels (a greyscale model normalises with the mean of the RGB
    # statistics). After the build, because loading reads the trained size from the cfg.
    gvit = model.model if isinstance(model, FeatureGetterNet) else model
    cfg = dict(model.pretrained_cfg, input_size=(gvit.in_chans, *gvit.img_size))
    for key in ("mean", "std"):
        values = cfg[key]
        if not (isinstance(values, (list, tuple)) and values and all(_is_number(v) and math.isfinite(v) for v in values)
                and (key == "mean" or min(values) > 0)):
            raise ValueError(f"the pretrained config's {key} must be a list of finite numbers{' > 0' if key == 'std' else ''}, got {values!r}")
    if gvit.budgets:  # the Gaussian counts the weights were trained for
        cfg["budgets"] = list(gvit.budgets)
    if gvit.in_chans != len(cfg["mean"]):
        cfg.update(mean=(sum(cfg["mean"]) / len(cfg["mean"]),), std=(sum(cfg["std"]) / len(cfg["std"]),))
    if pretrained and gvit.num_classes and gvit.num_classes != cfg["num_classes"]:
        warnings.warn(f"{variant}: the pretrained classifier head has {cfg['num_classes']} classes and num_classes="
                      f"{gvit.num_classes} was asked for, so the head starts from random weights (for fine-tuning)", stacklevel=3)
    if cfg.get("label_names") and (not pretrained or len(cfg["label_names"]) != gvit.num_classes
                                   or (overlay.get("file") and "label_names" not in overlay)):
        del cfg["label_names"]  # they name the classes of a head this model does not have
    model.pretrained_cfg = model.default_cfg = cfg
    return model


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _weights_file_classes(variant: str, kwargs: dict) -> Optional[int]:
    """The class count of the head in the local safetensors file this call loads (a packaged tag,
    a ``file`` overlay, a ``local-dir:`` folder), read from its header; None when there is none."""
    from safetensors import SafetensorError, safe_open

    cfg = resolve_pretrained_cfg(variant, pretrained_cfg=kwargs.get("pretrained_cfg"),
                                 pretrained_cfg_overlay=kwargs.get("pretrained_cfg_overlay"))
    path = Path(cfg.file) if cfg is not None and cfg.file else None
    if path is not None and path.is_dir():
        path = path / "model.safetensors"
    if path is None or path.suffix != ".safetensors" or not path.is_file():
        return None
    try:
        with safe_open(str(path), "pt") as f:
            return f.get_slice("classifier.head.weight").get_shape()[0] if "classifier.head.weight" in f.keys() else None
    except (SafetensorError, OSError):
        return None  # timm's load names the unreadable file


def _pretrained_filter_fn(state_dict: dict, model: GViT) -> dict:
    """:func:`checkpoint_filter_fn`, refusing weights whose head timm would load or drop wrongly:
    timm keeps the head when the model's class count equals the config's ``num_classes``, so the
    file's head must have that many classes exactly when the model does."""
    state_dict = checkpoint_filter_fn(state_dict, model)
    head, said = state_dict.get("classifier.head.weight"), model.pretrained_cfg.get("num_classes")
    if head is not None and model.num_classes and (head.shape[0] == model.num_classes) != (said == model.num_classes):
        raise ValueError(f"the pretrained weights' classifier head has {head.shape[0]} classes but their config says "
                         f"num_classes={said}: correct the config's num_classes (and model_args), or pass "
                         f"num_classes={head.shape[0]} to load the head, or pretrained_cfg_overlay=dict(num_classes={head.shape[0]})")
    return state_dict


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
