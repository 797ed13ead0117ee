"""Building blocks shared by the Gaussian encoder and the Gaussian classifier."""

from __future__ import annotations

import torch
from torch import nn
from timm.models.vision_transformer import Block


def transformer_blocks(embed_dim: int, depth: int, num_heads: int, mlp_ratio: float = 4.0, proj_drop: float = 0.0,
                       attn_drop: float = 0.0, drop_path_rate: float = 0.0) -> nn.Sequential:
    """``depth`` pre-norm ViT blocks (timm's ``Block``) with a linear stochastic-depth ramp."""
    rates = torch.linspace(0, drop_path_rate, depth).tolist()
    return nn.Sequential(
        *[Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, proj_drop=proj_drop, attn_drop=attn_drop, drop_path=r) for r in rates]
    )


def xavier_init_linears(module: nn.Module) -> None:
    """Xavier-uniform weights and zero biases for every ``nn.Linear``: the paper's init for its
    transformer layers."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
