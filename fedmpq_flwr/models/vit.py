"""ViT-Small (Dosovitskiy et al., 2021; the "S" size of Touvron et al., 2021) for 32x32 inputs.

4x4 patches (64 patches + a class token), width 384, 12 pre-norm blocks with 6 heads and an MLP of
1536 (GELU), a final LayerNorm and a linear `head` on the class token: 21,342,346 parameters with 10
classes. No dropout. Attention is written with plain `nn.Linear` layers (`qkv`, `proj`), so each is
quantizable (`nn.MultiheadAttention` reads `out_proj.weight` itself and could not use a quantized
layer); the code uses no shape unpacking, so torch.fx can trace it.

Quantization rules (`VisionTransformer.quant_rules`): every Linear (`qkv`, `proj`, `fc1`, `fc2` of each
block, `head`) and the patch embedding (a 4x4 stride-4 Conv2d: a linear map of each patch, the
counterpart of ResNet's quantized stem) are quantized; the LayerNorms, the class token and the
position embedding stay float (they are not Conv2d/Linear weights, and they are 0.2 % of the
parameters). The model is weight-only: no activation is quantized. The activation quantizer of
this package is an unsigned ReLU6 clip, which GELU's negative outputs and the unbounded residual
stream do not fit; and quantizing GELU's output alone would quantize the input of `fc2` only, while
the inputs of `qkv`, `proj` and `fc1` (LayerNorm and attention outputs) stay float: it would cost
accuracy without making any layer integer-only. Mixed-precision weights are what FedMPQ allocates.
"""

from __future__ import annotations

import torch
from torch import nn

from fedmpq_flwr.models.common import rules_by_module
from fedmpq_flwr.quant import QuantRules


class Attention(nn.Module):
    """Multi-head self-attention from two Linear layers: `qkv` (width -> 3 x width) and `proj`."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not a multiple of heads {heads}")
        self.heads, self.head_dim = heads, width // heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # [B, N, 3 * width] -> [3, B, heads, N, head_dim]
        qkv = self.qkv(x).unflatten(-1, (3, self.heads, self.head_dim)).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        weights = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj((weights @ v).transpose(1, 2).flatten(2))


class MLP(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, width: int, heads: int, mlp_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = MLP(width, mlp_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """Patch embedding, class token, learned position embedding, `blocks`, `norm`, `head`."""

    def __init__(
        self,
        num_classes: int = 10,
        depth: int = 12,
        width: int = 384,
        heads: int = 6,
        mlp_dim: int = 1536,
        patch: int = 4,
        image_size: int = 32,
    ) -> None:
        super().__init__()
        if image_size % patch:
            raise ValueError(f"image_size {image_size} is not a multiple of patch {patch}")
        self.patch_embed = nn.Conv2d(3, width, kernel_size=patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, (image_size // patch) ** 2 + 1, width))
        self.blocks = nn.Sequential(*(Block(width, heads, mlp_dim) for _ in range(depth)))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_classes)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def quant_rules(self) -> QuantRules:
        """Patch embedding, every Linear and `head` quantized; weight-only (no activation quantizer)."""
        linears = [m for b in self.blocks for m in (b.attn.qkv, b.attn.proj, b.mlp.fc1, b.mlp.fc2)]
        return rules_by_module(self, layers=[self.patch_embed, *linears, self.head])

    def penultimate(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features [B, width]: the normalised class token, the input of `head`."""
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # [B, patches, width]
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos_embed
        return self.norm(self.blocks(x))[:, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.penultimate(x))


def vit_small(
    num_classes: int = 10,
    depth: int = 12,
    width: int = 384,
    heads: int = 6,
    mlp_dim: int = 1536,
    patch: int = 4,
) -> VisionTransformer:
    """ViT-Small for 32x32 images: 21,342,346 parameters at the defaults with 10 classes."""
    return VisionTransformer(num_classes, depth, width, heads, mlp_dim, patch)
