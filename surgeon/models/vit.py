"""ViT-Ti/16 (Dosovitskiy et al., 2021; DeiT-Tiny widths) for 224x224 inputs.

Attention is written out explicitly (one fused ``qkv`` linear, head split by reshape and
permute, scaled dot product, softmax) rather than with ``nn.MultiheadAttention``, so every
op is visible to ``torch.fx``. Dropout and stochastic depth are omitted (identity at eval).
"""

from __future__ import annotations

import torch
from torch import nn

from surgeon.models.blocks import init_weights

__all__ = ["Attention", "EncoderBlock", "VisionTransformer", "vit_tiny"]


class Attention(nn.Module):
    """Multi-head self-attention with a single ``qkv`` projection and an output projection."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attend over the ``N`` tokens of a ``(B, N, dim)`` sequence."""
        B, N, _ = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = q @ k.transpose(-2, -1) * self.scale
        attn = attn.softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(B, N, self.num_heads * self.head_dim)
        return self.proj(x)


class EncoderBlock(nn.Module):
    """Pre-LN transformer block: ``x + attn(ln(x))`` then ``x + mlp(ln(x))`` (GELU MLP)."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(
            nn.Linear(dim, mlp_dim),
            nn.GELU(),
            nn.Linear(mlp_dim, dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block."""
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """ViT: conv patch embedding, class token, learned position embedding, encoder, LN, head."""

    def __init__(
        self,
        image_size: int = 224,
        patch_size: int = 16,
        dim: int = 192,
        depth: int = 12,
        num_heads: int = 3,
        mlp_dim: int = 768,
        num_classes: int = 1000,
    ) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError("image_size must be a multiple of patch_size")
        num_patches = (image_size // patch_size) ** 2
        self.patch_embed = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, dim))
        self.blocks = nn.Sequential(*(EncoderBlock(dim, num_heads, mlp_dim) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)
        init_weights(self, scheme="trunc_normal")
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map a ``(B, 3, image_size, image_size)`` batch to ``(B, num_classes)`` logits."""
        B = x.shape[0]
        x = self.patch_embed(x)
        x = x.flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(B, -1, -1)
        x = torch.cat([cls, x], dim=1)
        x = x + self.pos_embed
        x = self.blocks(x)
        x = self.norm(x)
        return self.head(x[:, 0])


def vit_tiny(num_classes: int = 1000) -> VisionTransformer:
    """Build ViT-Ti/16 at 224x224 (5,717,416 parameters at 1000 classes)."""
    return VisionTransformer(224, 16, 192, 12, 3, 768, num_classes=num_classes)
