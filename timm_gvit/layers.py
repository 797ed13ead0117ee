"""Building blocks shared by the Gaussian encoder and the Gaussian classifier."""

from __future__ import annotations

from functools import partial
from typing import Callable

import torch
from torch import nn
from timm.layers import LayerNorm, get_act_layer, get_norm_layer
from timm.models.vision_transformer import Block

#: ``weight_init`` values: '' is the paper's init (:func:`xavier_init_linears`), 'skip' keeps each
#: layer's PyTorch default (as timm's ViT's 'skip').
WEIGHT_INITS = ("", "skip")


def resolve_layers(norm_layer, act_layer) -> tuple[Callable[..., nn.Module], Callable[..., nn.Module], Callable[..., nn.Module]]:
    """The (blocks' norm, final norm, activation) classes for ``norm_layer`` and ``act_layer``,
    given as timm layer names (e.g. 'layernorm', 'rmsnorm', 'gelu') or classes.

    ``None`` keeps what every GViT so far was trained with: LayerNorm with eps 1e-6 (timm's
    ``LayerNorm`` inside the blocks, timm ``Block``'s default, and ``nn.LayerNorm`` for the final
    norms, as timm's ViT) and ``nn.GELU``. A given ``norm_layer`` is used for both.
    """
    norm = get_norm_layer(norm_layer) if norm_layer is not None else None
    act = get_act_layer(act_layer) if act_layer is not None else nn.GELU
    return norm or LayerNorm, norm or partial(nn.LayerNorm, eps=1e-6), act


def transformer_blocks(embed_dim: int, depth: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                       proj_drop: float = 0.0, attn_drop: float = 0.0, drop_path_rate: float = 0.0,
                       norm_layer: Callable[..., nn.Module] = LayerNorm, act_layer: Callable[..., nn.Module] = nn.GELU,
                       block_fn: Callable[..., nn.Module] = Block) -> nn.Sequential:
    """``depth`` pre-norm ViT blocks with a linear stochastic-depth ramp: ``block_fn`` (timm's
    ``Block`` by default) called with ``Block``'s keyword arguments."""
    rates = torch.linspace(0, drop_path_rate, depth).tolist()
    return nn.Sequential(*[
        block_fn(dim=embed_dim, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, proj_drop=proj_drop,
                 attn_drop=attn_drop, drop_path=r, norm_layer=norm_layer, act_layer=act_layer)
        for r in rates
    ])


def xavier_init_linears(module: nn.Module) -> None:
    """Xavier-uniform weights and zero biases for every ``nn.Linear``: the paper's init for its
    transformer layers."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
