"""The Gaussian classifier: a ViT whose tokens are k decoded Gaussians (docs/method.md section 4)."""

from __future__ import annotations

from typing import Callable, List, Optional, Tuple, Union

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint
from timm.layers import LayerType, Mlp, PatchDropout, trunc_normal_
from timm.models import checkpoint_seq
from timm.models._features import feature_take_indices
from timm.models.vision_transformer import Block

from .encoder import position_features
from .gaussians import NUM_PARAMS
from .layers import WEIGHT_INITS, resolve_layers, transformer_blocks, xavier_init_linears

GLOBAL_POOLS = ("token", "avg", "")
POS_EMBEDS = ("learn", "none")


def shape_features(gaussians: Tensor) -> Tensor:
    """Decoded Gaussians ``[..., 9]`` -> ``[..., 9]`` features that each Gaussian has exactly one of.

    mu_x, mu_y; log sqrt(sigma_x sigma_y) (size); e cos 2phi, e sin 2phi with
    e = (sigma_x^2 - sigma_y^2) / (sigma_x^2 + sigma_y^2) (the covariance's anisotropy and
    orientation, continuous in the covariance); r, g, b, opacity.
    """
    sigma, phi = gaussians[..., 2:4], gaussians[..., 4:5]
    var = sigma.square()
    anisotropy = (var[..., 0:1] - var[..., 1:2]) / (var[..., 0:1] + var[..., 1:2])
    size = sigma.log().mean(dim=-1, keepdim=True)
    return torch.cat([gaussians[..., 0:2], size, anisotropy * torch.cos(2 * phi), anisotropy * torch.sin(2 * phi), gaussians[..., 5:9]], dim=-1)


class GaussianClassifier(nn.Module):
    """Decoded Gaussians ``[B, k, 9]`` -> logits ``[B, num_classes]``.

    Each Gaussian's 9-vector is embedded linearly; a class token and learned position
    embeddings (Gaussians are index-ordered slots) go in front; pre-norm transformer blocks,
    a final norm, and a linear head on the class token (``global_pool='token'``) or on the mean
    of the Gaussian tokens (``'avg'``).

    With ``centre_features=True`` (GViT's default) a Gaussian token also gets the sine-cosine
    features of its centre (:func:`~timm_gvit.encoder.position_features`, as the encoder's
    tokens do): a linear embedding of mu alone cannot tell the classifier where things are
    (MODEL_CARD.md, the ablation). ``False``, this class's default, is the paper's plain linear
    embedding, which the paper-recipe study (experiments/gaussian_study.py) used.

    With ``shape_features=True`` the 9 numbers are first mapped by :func:`shape_features`, which
    replaces (sigma_x, sigma_y, phi) by a log size and a double-angle anisotropy: the same Gaussian
    always gives the same features, where phi is periodic and (sigma_x, sigma_y, phi) equals
    (sigma_y, sigma_x, phi + pi/2).

    With ``mlp_embed=True`` a Gaussian's numbers are embedded by a two-layer MLP (hidden width
    ``embed_dim``) instead of one linear map.

    ``num_slots`` (default ``num_gaussians``) sizes the position embeddings: a set of k Gaussians
    takes the first k, for any k up to ``num_slots`` (the budgets of a flex GViT, docs/flex.md).

    ``pos_embed='none'`` (timm ViT's option of that name) drops the learned per-slot position
    embeddings: the tokens are then a set, located only by their centre features.

    ``patch_drop_rate`` is timm's ViT option of that name (:class:`timm.layers.PatchDropout`): in
    training, each image keeps a random ``1 - patch_drop_rate`` of its Gaussian tokens.

    ``qkv_bias``, ``norm_layer``, ``act_layer`` (also the MLP embedding's), ``block_fn`` and
    ``weight_init`` are timm ViT's arguments (see :class:`~timm_gvit.GViT`).
    """

    def __init__(
        self,
        num_gaussians: int = 256,
        num_classes: int = 1000,
        global_pool: str = "token",
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        drop_rate: float = 0.0,
        pos_drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        patch_drop_rate: float = 0.0,
        pos_embed: str = "learn",
        centre_features: bool = False,
        shape_features: bool = False,
        mlp_embed: bool = False,
        qkv_bias: bool = True,
        norm_layer: Optional[LayerType] = None,
        act_layer: Optional[LayerType] = None,
        block_fn: Callable[..., nn.Module] = Block,
        weight_init: str = "",
        num_slots: Optional[int] = None,
    ):
        super().__init__()
        if weight_init not in WEIGHT_INITS:
            raise ValueError(f"weight_init must be one of {WEIGHT_INITS}, got {weight_init!r}")
        num_slots = num_gaussians if num_slots is None else num_slots
        if num_slots < num_gaussians:
            raise ValueError(f"num_slots ({num_slots}) must be at least num_gaussians ({num_gaussians})")
        if global_pool not in GLOBAL_POOLS:
            raise ValueError(f"global_pool must be one of {GLOBAL_POOLS}, got {global_pool!r}")
        if pos_embed not in POS_EMBEDS:
            raise ValueError(f"pos_embed must be one of {POS_EMBEDS}, got {pos_embed!r}")
        if not 0 <= patch_drop_rate < 1:
            raise ValueError(f"patch_drop_rate must be a number in [0, 1), got {patch_drop_rate!r}")
        self.num_gaussians = num_gaussians
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.grad_checkpointing = False
        self.centre_features = centre_features
        self.shape_features = shape_features
        block_norm, final_norm, act = resolve_layers(norm_layer, act_layer)
        self.gaussian_embed = Mlp(NUM_PARAMS, embed_dim, embed_dim, act_layer=act) if mlp_embed else nn.Linear(NUM_PARAMS, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_slots + 1, embed_dim)) if pos_embed == "learn" else None
        self.pos_drop = nn.Dropout(pos_drop_rate)
        self.patch_drop = PatchDropout(patch_drop_rate, num_prefix_tokens=1) if patch_drop_rate > 0 else nn.Identity()
        self.blocks = transformer_blocks(embed_dim, depth, num_heads, mlp_ratio, qkv_bias, proj_drop_rate, attn_drop_rate,
                                         drop_path_rate, norm_layer=block_norm, act_layer=act, block_fn=block_fn)
        self.norm = final_norm(embed_dim)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        if weight_init != "skip":
            if self.pos_embed is not None:
                trunc_normal_(self.pos_embed, std=0.02)
            nn.init.normal_(self.cls_token, std=1e-6)
            xavier_init_linears(self)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool is not None:
            if global_pool not in GLOBAL_POOLS:
                raise ValueError(f"global_pool must be one of {GLOBAL_POOLS}, got {global_pool!r}")
            self.global_pool = global_pool
        self.num_classes = num_classes
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def embed_tokens(self, gaussians: Tensor) -> Tensor:
        """``[B, k, 9]`` -> the blocks' input tokens ``[B, 1 + k, D]`` (class token first)."""
        x = self.gaussian_embed(shape_features(gaussians) if self.shape_features else gaussians)
        if self.centre_features:
            x = x + position_features(gaussians[..., 0:2], x.shape[-1])
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        if self.pos_embed is not None:
            x = x + self.pos_embed[:, : x.shape[1]]
        return self.patch_drop(self.pos_drop(x))

    def forward_features(self, gaussians: Tensor) -> Tensor:
        """``[B, k, 9]`` -> normalised tokens ``[B, 1 + k, D]`` (class token first)."""
        x = self.embed_tokens(gaussians)
        x = checkpoint_seq(self.blocks, x) if self.grad_checkpointing and not torch.jit.is_scripting() else self.blocks(x)
        return self.norm(x)

    def forward_intermediates(
        self,
        gaussians: Tensor,
        indices: Optional[Union[int, List[int]]] = None,
        return_prefix_tokens: bool = False,
        norm: bool = False,
        stop_early: bool = False,
        intermediates_only: bool = False,
    ) -> Union[List[Tensor], Tuple[Tensor, List[Tensor]], List[Tuple[Tensor, Tensor]], Tuple[Tensor, List[Tuple[Tensor, Tensor]]]]:
        """The Gaussian tokens after the blocks picked by ``indices``, as timm's ViT in format 'NLC'.

        Args:
            gaussians: ``[B, k, 9]`` float, decoded.
            indices: the last n blocks if an int, all if None, else the block indices listed.
            return_prefix_tokens: pair each intermediate with its class token ``[B, 1, D]``.
            norm: pass each intermediate through the final norm.
            stop_early: skip the blocks after the last one picked.
            intermediates_only: return the intermediates alone.

        Returns:
            ``(forward_features(gaussians) [B, 1 + k, D], intermediates)``, or the intermediates
            alone; each intermediate ``[B, k, D]`` (or a ``([B, k, D], [B, 1, D])`` pair).
        """
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        x = self.embed_tokens(gaussians)
        blocks = self.blocks if torch.jit.is_scripting() or not stop_early else self.blocks[: max_index + 1]
        intermediates = []
        for i, block in enumerate(blocks):
            x = checkpoint(block, x, use_reentrant=False) if self.grad_checkpointing and not torch.jit.is_scripting() else block(x)
            if i in take_indices:
                intermediates.append(self.norm(x) if norm else x)
        prefix_tokens = [y[:, :1] for y in intermediates]
        intermediates = [y[:, 1:] for y in intermediates]
        if return_prefix_tokens:
            intermediates = list(zip(intermediates, prefix_tokens))
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Tokens ``[B, 1 + k, D]`` -> logits ``[B, num_classes]`` (or pooled ``[B, D]``)."""
        if self.global_pool == "avg":
            x = x[:, 1:].mean(dim=1)
        elif self.global_pool == "token":
            x = x[:, 0]
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, gaussians: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(gaussians))
