"""MAE, masked autoencoders (He et al. 2022), for timm ViT backbones (`vit_*`, any patch and image size).

Each image's patches are shuffled at random and `mask_ratio` of them (75%) dropped; the encoder (the backbone's
own patch embedding, position embeddings, blocks and norm) sees only the visible ones, plus its class or register
tokens. A light decoder (a linear map to `decoder_dim`, a learned mask token at every dropped patch, fixed 2-D
sine-cosine positions, `decoder_depth` transformer blocks) predicts the pixels of every patch, and the loss is the
mean squared error on the masked patches, each target patch standardised by its own mean and variance
(`norm_pix_loss`, pretrain/methods/losses.py: mae_loss).

The model dir stores the backbone alone, which embeds with all patches as any timm ViT does, so export and
serving treat it as every other backbone. At 32 px: `--backbone vit_tiny_patch16_224 --backbone-arg img_size=32
--backbone-arg patch_size=4` (64 patches).

Under torchrun each process draws the masks of the whole global batch and keeps its own rows, so the masks do not
depend on how a batch is split (and every image's mask is its own draw).
"""
from __future__ import annotations

import torch
from torch import nn

from pretrain.ground import distributed
from pretrain.methods.base import Method
from pretrain.methods.losses import mae_loss
from pretrain.methods.recipe import MAE_VIEWS, Recipe


def sincos_2d(h: int, w: int, dim: int, device: torch.device | None = None) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embeddings [1, h*w, dim] (MAE's decoder): half the channels encode the row,
    half the column, each as sin and cos at frequencies 1 / 10000^(k / (dim/4))."""
    if dim % 4:
        raise ValueError(f"decoder_dim must be a multiple of 4 (got {dim})")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float32, device=device) / (dim // 4))
    rows, cols = torch.meshgrid(torch.arange(h, dtype=torch.float32, device=device),
                                torch.arange(w, dtype=torch.float32, device=device), indexing="ij")
    parts = [f(pos.reshape(-1, 1) * omega) for pos in (rows, cols) for f in (torch.sin, torch.cos)]
    return torch.cat(parts, dim=1)[None]


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """Images [B, C, H, W] -> patches [B, (H/p)*(W/p), p*p*C], row-major, as a ViT's patch embedding orders them."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // p, p, w // p, p)
    return torch.einsum("bchpwq->bhwpqc", x).reshape(b, (h // p) * (w // p), p * p * c)


def random_masking(batch: int, patches: int, mask_ratio: float, device: torch.device
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(visible patch indices [B, K], the order that undoes the shuffle [B, L], mask [B, L] with 1 = dropped). The
    noise is drawn for the global batch and this process keeps its rows."""
    world, rank = distributed.world_size(), distributed.rank()
    noise = torch.rand(world * batch, patches, device=device)[rank * batch:(rank + 1) * batch]
    shuffle = noise.argsort(dim=1)
    restore = shuffle.argsort(dim=1)
    keep = max(1, int(patches * (1 - mask_ratio)))
    mask = torch.ones(batch, patches, device=device)
    mask[:, :keep] = 0
    return shuffle[:, :keep], restore, mask.gather(1, restore)


class MAE(Method):
    name = "mae"
    default_recipe = Recipe("adamw", 1.5e-3, 0.05, transform_args=MAE_VIEWS,
                            source="AdamW with MAE's weight decay 0.05 and 10x its base lr for short runs; one crop "
                                   "(scale >= 0.2) and a flip (docs/pretrained.md)")
    paper_recipe = Recipe("adamw", 1.5e-4, 0.05, transform_args=MAE_VIEWS,
                          source="He et al. 2022, sec. A.1 (batch 4096, 800-1600 epochs, 40 warm-up)")

    def __init__(self, backbone: nn.Module, feature_dim: int, mask_ratio: float = 0.75, decoder_dim: int = 128,
                 decoder_depth: int = 2, decoder_heads: int = 4, norm_pix_loss: bool = True):
        super().__init__(backbone, feature_dim)
        from timm.models.vision_transformer import Block, VisionTransformer

        if not isinstance(backbone, VisionTransformer):
            raise ValueError(f"needs a timm ViT backbone (vit_*), not {type(backbone).__name__}: e.g. --backbone "
                             f"vit_tiny_patch16_224 --backbone-arg img_size=32 --backbone-arg patch_size=4")
        if not 0 < mask_ratio < 1:
            raise ValueError(f"mask_ratio must be in (0, 1) (got {mask_ratio})")
        p = backbone.patch_embed.patch_size
        if p[0] != p[1]:
            raise ValueError(f"mae needs square patches (got {p})")
        self.patch_size, self.mask_ratio, self.norm_pix_loss = p[0], mask_ratio, norm_pix_loss
        # a ViT pooling by average normalises after pooling (fc_norm); MAE's encoder normalises every token with it
        self.encoder_norm = "norm" if not isinstance(backbone.norm, nn.Identity) else "fc_norm"
        self.skips_parameters = getattr(backbone, "attn_pool", None) is not None  # attention pooling: unused here
        embed_dim = backbone.embed_dim
        self.decoder_embed = nn.Linear(embed_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        nn.init.normal_(self.mask_token, std=0.02)
        self.decoder_blocks = nn.Sequential(*[Block(decoder_dim, decoder_heads, qkv_bias=True)
                                              for _ in range(decoder_depth)])
        self.decoder_norm = nn.LayerNorm(decoder_dim)
        self.decoder_pred = nn.Linear(decoder_dim, self.patch_size ** 2 * 3)
        sincos_2d(1, 1, decoder_dim)  # checks the width

    def encode_visible(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """The backbone over the visible patches `keep` [B, K] only (after its position embeddings), prefix tokens
        (class, registers) first: [B, prefix + K, D]."""
        vit = self.backbone
        tokens = vit._pos_embed(vit.patch_embed(x))  # position embeddings as the backbone adds them
        prefix = vit.num_prefix_tokens
        patches = tokens[:, prefix:]
        visible = patches.gather(1, keep[..., None].expand(-1, -1, patches.shape[-1]))
        tokens = vit.norm_pre(torch.cat([tokens[:, :prefix], visible], dim=1))
        return getattr(vit, self.encoder_norm)(vit.blocks(tokens))

    def reconstruct(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Predicted pixels of every patch [B, L, p*p*3] and the mask [B, L] (1 = dropped)."""
        b, _, h, w = x.shape
        gh, gw = h // self.patch_size, w // self.patch_size
        keep, restore, mask = random_masking(b, gh * gw, self.mask_ratio, x.device)
        encoded = self.decoder_embed(self.encode_visible(x, keep))
        prefix = self.backbone.num_prefix_tokens
        visible = encoded[:, prefix:]
        tokens = torch.cat([visible, self.mask_token.expand(b, gh * gw - visible.shape[1], -1).to(visible.dtype)],
                           dim=1)
        tokens = tokens.gather(1, restore[..., None].expand(-1, -1, tokens.shape[-1]))  # back to patch order
        tokens = tokens + sincos_2d(gh, gw, tokens.shape[-1], x.device).to(tokens.dtype)
        tokens = self.decoder_norm(self.decoder_blocks(torch.cat([encoded[:, :prefix], tokens], dim=1)))
        return self.decoder_pred(tokens[:, prefix:]), mask

    def forward(self, views: list[torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        losses = []
        for x in views:
            pred, mask = self.reconstruct(x)
            losses.append(mae_loss(pred, patchify(x, self.patch_size), mask, self.norm_pix_loss))
        return sum(losses) / len(losses), {}
