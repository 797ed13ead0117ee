"""The Gaussian encoder: a ViT over an image's patches plus k Gaussian tokens -> k Gaussians.

docs/method.md section 2. The k Gaussian tokens are, by default, embeddings of random initial
Gaussians g0 whose residual the network predicts (the paper's "denoising" encoder); with
``gaussian_init='queries'`` they are k learned queries and the network predicts the Gaussians
outright (the paper's ablation). Patch latents are discarded after the last block.

Two options go beyond the paper (MODEL_CARD.md section 0 measures them): ``stem='conv'`` embeds
the patches with a small convolutional stem (timm's ``ConvStem``: 3x3 stride-2 convolutions, one per
halving of the patch) instead of one linear patch projection, and ``refine_steps > 1`` applies the
network again with its own output as g0 (iterative refinement; each pass costs a full forward).
"""

from __future__ import annotations

import math
from typing import Callable, List, Optional, Tuple, Union

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint
from timm.layers import HybridEmbed, LayerType, Mlp, PatchEmbed, resample_abs_pos_embed, trunc_normal_
from timm.models import checkpoint_seq
from timm.models._features import feature_take_indices
from timm.models.vision_transformer import Block
from timm.models.vision_transformer_hybrid import ConvStem

from .gaussians import G0_LAYOUTS, NUM_PARAMS, nested_layout, rescale_initial_sigma, sample_initial_gaussians
from .layers import WEIGHT_INITS, resolve_layers, transformer_blocks, xavier_init_linears

GAUSSIAN_INITS = ("denoise", "queries")
STEMS = ("patch", "conv")


def position_features(xy: Tensor, dim: int) -> Tensor:
    """Sine-cosine features ``[..., dim]`` of normalised positions ``xy`` ``[..., 2]`` in [-1, 1].

    Patches (at their centres) and Gaussian tokens (at their g0 centres) share these features,
    so that a Gaussian slot can find the patches it sits on from the first step: measured on
    digits, reconstructions 2-4 dB better after 100-150 steps than with position embeddings
    learned from a random start.
    """
    n = dim // 4
    omega = (2.0 ** torch.linspace(0, 4, n, device=xy.device, dtype=xy.dtype)) * math.pi / 2
    x, y = xy[..., 0:1] * omega, xy[..., 1:2] * omega
    out = torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], dim=-1)
    return torch.nn.functional.pad(out, (0, dim - 4 * n))


class GaussianEncoder(nn.Module):
    """Normalised images ``[B, C, H, W]`` -> raw (pre-activation) Gaussians ``[B, k, 9]``.

    A denoising Gaussian token is its slot's learned embedding plus a linear embedding of its g0
    and the position features of g0's centre (:func:`position_features`, shared with the patches).

    The denoising encoder's g0 are random Gaussians around a layout
    (:func:`~timm_gvit.gaussians.sample_initial_gaussians`): a fresh draw for every image and step
    in training mode, and in eval mode the fixed draw stored in the ``eval_g0`` buffer, so that an
    image always gives the same Gaussians (and saved models keep that draw).

    ``num_slots`` (default ``num_gaussians``) sizes the tables: the slot embeddings and
    ``eval_g0`` hold that many slots, of which the encoder uses the first ``num_gaussians`` (set
    it for another budget). With a nested ``g0_layout`` (docs/flex.md) the first k slots of g0
    cover the image as a k-slot layout would, with sigmas sized for k.

    ``qkv_bias``, ``norm_layer``, ``act_layer``, ``block_fn`` and ``weight_init`` are timm ViT's
    arguments (see :class:`~timm_gvit.GViT`).
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_gaussians: int = 256,
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        gaussian_init: str = "denoise",
        scale_bound: float = 1.0,
        dynamic_img_size: bool = False,
        pos_drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        eval_seed: int = 0,
        num_slots: Optional[int] = None,
        g0_layout: str = "grid",
        stem: str = "patch",
        refine_steps: int = 1,
        centre_scale: float = 1.0,
        qkv_bias: bool = True,
        norm_layer: Optional[LayerType] = None,
        act_layer: Optional[LayerType] = None,
        block_fn: Callable[..., nn.Module] = Block,
        weight_init: str = "",
    ):
        super().__init__()
        if weight_init not in WEIGHT_INITS:
            raise ValueError(f"weight_init must be one of {WEIGHT_INITS}, got {weight_init!r}")
        if gaussian_init not in GAUSSIAN_INITS:
            raise ValueError(f"gaussian_init must be one of {GAUSSIAN_INITS}, got {gaussian_init!r}")
        if g0_layout not in G0_LAYOUTS:
            raise ValueError(f"g0_layout must be one of {G0_LAYOUTS}, got {g0_layout!r}")
        num_slots = num_gaussians if num_slots is None else num_slots
        if num_slots < num_gaussians:
            raise ValueError(f"num_slots ({num_slots}) must be at least num_gaussians ({num_gaussians})")
        if stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")
        if stem == "conv" and (patch_size < 2 or patch_size & (patch_size - 1)):
            raise ValueError(f"stem='conv' halves the image once per stride-2 convolution, so patch_size must be a power "
                             f"of 2 (>= 2), got {patch_size}")
        if isinstance(refine_steps, bool) or not isinstance(refine_steps, int) or refine_steps < 1:
            raise ValueError(f"refine_steps must be an integer >= 1, got {refine_steps!r}")
        if refine_steps > 1 and gaussian_init != "denoise":
            raise ValueError("refine_steps > 1 feeds the output back as g0, which needs gaussian_init='denoise'")
        self.num_gaussians = num_gaussians
        self.g0_layout = g0_layout
        self.scale_bound = scale_bound
        self.gaussian_init = gaussian_init
        self.dynamic_img_size = dynamic_img_size
        self.stem = stem
        self.refine_steps = refine_steps
        if isinstance(centre_scale, bool) or not isinstance(centre_scale, (int, float)) or not 0 < centre_scale <= 100:
            raise ValueError(f"centre_scale must be a number in (0, 100], got {centre_scale!r}")
        self.centre_scale = float(centre_scale)
        self.grad_checkpointing = False
        embed_kwargs = dict(img_size=img_size, in_chans=in_chans, embed_dim=embed_dim, strict_img_size=not dynamic_img_size,
                            output_fmt="NHWC" if dynamic_img_size else None)  # None: flattened [B, N, D]
        if stem == "conv":
            halvings = patch_size.bit_length() - 1
            widths = tuple(min(embed_dim, 16 * 2**i) for i in range(halvings))
            backbone = ConvStem(in_chans, depth=halvings, channels=widths, stride=(2,) * halvings)
            self.patch_embed = HybridEmbed(backbone, patch_size=1, feature_ratio=patch_size, **embed_kwargs)
        else:
            self.patch_embed = PatchEmbed(patch_size=patch_size, **embed_kwargs)
        # learned, starting from the sine-cosine features of the patch centres
        self.pos_embed = nn.Parameter(position_features(self._patch_centres(), embed_dim)[None])
        # Gaussian tokens: a learned embedding per slot, plus the embedded g0 when denoising.
        self.slot_embed = nn.Parameter(torch.zeros(1, num_slots, embed_dim))
        self.g0_embed = nn.Linear(NUM_PARAMS, embed_dim) if gaussian_init == "denoise" else None
        # a nested layout's centres, made from its name: not saved with the weights
        centres = None if g0_layout == "grid" else nested_layout(num_slots, g0_layout)
        self.register_buffer("g0_centres", centres, persistent=False)
        generator = torch.Generator().manual_seed(eval_seed)
        self.register_buffer("eval_g0", sample_initial_gaussians(1, num_slots, scale_bound, generator, centres=centres))
        self.pos_drop = nn.Dropout(pos_drop_rate)
        block_norm, final_norm, act = resolve_layers(norm_layer, act_layer)
        self.blocks = transformer_blocks(embed_dim, depth, num_heads, mlp_ratio, qkv_bias, proj_drop_rate, attn_drop_rate,
                                         drop_path_rate, norm_layer=block_norm, act_layer=act, block_fn=block_fn)
        self.norm = final_norm(embed_dim)
        self.gaussian_head = Mlp(embed_dim, embed_dim, NUM_PARAMS, act_layer=act)
        if weight_init != "skip":
            self._init_weights()

    def _patch_centres(self) -> Tensor:
        gh, gw = self.patch_embed.grid_size
        ys, xs = torch.meshgrid((torch.arange(gh) + 0.5) / gh * 2 - 1, (torch.arange(gw) + 0.5) / gw * 2 - 1, indexing="ij")
        return torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=-1)

    def _init_weights(self) -> None:
        trunc_normal_(self.slot_embed, std=0.02)
        xavier_init_linears(self)
        # The residual starts at zero: an untrained denoising encoder returns g0 itself.
        nn.init.zeros_(self.gaussian_head.fc2.weight)

    def _patch_tokens(self, images: Tensor) -> Tensor:
        x = self.patch_embed(images)
        if self.dynamic_img_size:
            B, H, W, C = x.shape
            pos = resample_abs_pos_embed(self.pos_embed, (H, W), self.patch_embed.grid_size, num_prefix_tokens=0)
            return x.reshape(B, H * W, C) + pos
        return x + self.pos_embed

    @property
    def num_slots(self) -> int:
        """The slots the tables hold: the largest k the encoder serves."""
        return self.slot_embed.shape[1]

    def initial_gaussians(self, batch: int) -> Tensor:
        """Raw g0 ``[batch, k, 9]``: random in training, the stored draw (its first k) in eval."""
        k = self.num_gaussians
        if self.training:
            return sample_initial_gaussians(batch, k, self.scale_bound, device=self.eval_g0.device,
                                            centres=self.g0_centres).to(self.eval_g0.dtype)
        g0 = self.eval_g0
        if k != g0.shape[1]:  # drawn for all the slots: its first k, sized for k
            g0 = rescale_initial_sigma(g0[:, :k], math.sqrt(g0.shape[1] / k), self.scale_bound)
        return g0.expand([batch, -1, -1])  # a list: torch.fx traces a buffer's expand only so

    def _tokens(self, patches: Tensor, g0: Optional[Tensor]) -> Tensor:
        """The blocks' input: patch tokens ``[B, N, D]`` then the k Gaussian tokens -> ``[B, N + k, D]``."""
        tokens = self.slot_embed[:, : self.num_gaussians].expand(patches.shape[0], -1, -1)
        if g0 is not None and self.g0_embed is not None:
            tokens = tokens + self.g0_embed(g0) + position_features(torch.tanh(g0[..., 0:2]), tokens.shape[-1])
        return self.pos_drop(torch.cat([patches, tokens], dim=1))

    def _gaussians(self, x: Tensor, g0: Optional[Tensor]) -> Tensor:
        """The last block's tokens ``[B, N + k, D]`` -> raw Gaussians ``[B, k, 9]`` (a residual over g0)."""
        out = self.gaussian_head(self.norm(x[:, -self.num_gaussians :]))
        if self.centre_scale != 1.0:  # a larger step for the centres: Gaussians that move further per image
            out = torch.cat([out[..., 0:2] * self.centre_scale, out[..., 2:]], dim=-1)
        return out + g0 if g0 is not None else out

    def _predict(self, patches: Tensor, g0: Optional[Tensor]) -> Tensor:
        """One pass: patch tokens ``[B, N, D]`` and raw g0 ``[B, k, 9]`` (None for queries) -> raw Gaussians."""
        x = self._tokens(patches, g0)
        x = checkpoint_seq(self.blocks, x) if self.grad_checkpointing and not torch.jit.is_scripting() else self.blocks(x)
        return self._gaussians(x, g0)

    def _last_g0(self, patches: Tensor) -> Optional[Tensor]:
        """The g0 of the last pass: the initial Gaussians refined by all passes but one."""
        g: Optional[Tensor] = None
        if self.g0_embed is not None:
            g = self.initial_gaussians(patches.shape[0]).to(patches.dtype)
        for _ in range(self.refine_steps - 1):
            g = self._predict(patches, g)
        return g

    def forward(self, images: Tensor) -> Tensor:
        """Raw Gaussians of normalised images.

        Args:
            images: ``[B, C, H, W]`` float, normalised with the data config's mean/std.

        Returns:
            ``[B, k, 9]`` raw (pre-activation) Gaussians, same dtype as the tokens;
            :func:`~timm_gvit.gaussians.decode_gaussians` maps them to (mu, sigma, phi, rgb, opacity).
        """
        patches = self._patch_tokens(images)
        return self._predict(patches, self._last_g0(patches))

    def forward_intermediates(self, images: Tensor, indices: Optional[Union[int, List[int]]] = None, norm: bool = False,
                              stop_early: bool = False) -> Tuple[Optional[Tensor], List[Tensor]]:
        """The tokens after the blocks picked by ``indices``, from the last pass, as timm's ViT.

        Args:
            images: ``[B, C, H, W]`` float, normalised.
            indices: the last n blocks if an int, all if None, else the block indices listed.
            norm: pass each intermediate through the final norm.
            stop_early: skip the blocks after the last one picked (no Gaussians are made).

        Returns:
            raw Gaussians ``[B, k, 9]`` (None when stopped early) and the intermediates, each
            ``[B, N + k, D]``: the N patch tokens in row-major grid order, then the k Gaussian tokens.
        """
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        patches = self._patch_tokens(images)
        g0 = self._last_g0(patches)
        x = self._tokens(patches, g0)
        stop = stop_early and not torch.jit.is_scripting() and max_index + 1 < len(self.blocks)
        blocks = self.blocks[: max_index + 1] if stop else self.blocks
        intermediates = []
        for i, block in enumerate(blocks):
            x = checkpoint(block, x, use_reentrant=False) if self.grad_checkpointing and not torch.jit.is_scripting() else block(x)
            if i in take_indices:
                intermediates.append(self.norm(x) if norm else x)
        return (None if stop else self._gaussians(x, g0)), intermediates
