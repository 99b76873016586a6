"""A CLIP vision transformer in plain torch, with the parameter names of `transformers`'
`CLIPVisionModel`, so a checkpoint's tensors load under their own names.

Numerics follow `transformers`: patch convolution, class token, learned positions,
pre-layernorm, then pre-norm encoder layers (LayerNorm ▸ attention ▸ residual, LayerNorm ▸
MLP ▸ residual). LLaVA reads an intermediate layer's output, never the pooled output, so
there is no post-layernorm, and layers deeper than the deepest feature layer are not even
built (llava-1.5 reads layer -2: its last CLIP layer is dead weight for serving).
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

_ACTIVATIONS = {
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
    "gelu": F.gelu,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_fast": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
}


def activation(name: str):
    """The activation `transformers` calls `name` (its ACT2FN)."""
    try:
        return _ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"hidden_act: {name!r} is not supported; choose one of {sorted(_ACTIVATIONS)}") from None


@dataclass(frozen=True, slots=True)
class VisionConfig:
    image_size: int
    patch_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    layer_norm_eps: float
    hidden_act: str
    num_channels: int = 3

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"vision_config: hidden_size {self.hidden_size} is not divisible by num_attention_heads {self.num_heads}")
        if self.image_size < self.patch_size:
            raise ValueError(f"vision_config: image_size {self.image_size} is smaller than patch_size {self.patch_size}")
        activation(self.hidden_act)

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> VisionConfig:
        """From a `vision_config`; absent fields take `CLIPVisionConfig`'s defaults, as transformers does."""
        return cls(
            image_size=int(raw.get("image_size", 224)),
            patch_size=int(raw.get("patch_size", 32)),
            hidden_size=int(raw.get("hidden_size", 768)),
            intermediate_size=int(raw.get("intermediate_size", 3072)),
            num_layers=int(raw.get("num_hidden_layers", 12)),
            num_heads=int(raw.get("num_attention_heads", 12)),
            layer_norm_eps=float(raw.get("layer_norm_eps", 1e-5)),
            hidden_act=raw.get("hidden_act", "quick_gelu"),
            num_channels=int(raw.get("num_channels", 3)),
        )


class Embeddings(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.patch_embedding = nn.Conv2d(cfg.num_channels, cfg.hidden_size, cfg.patch_size, cfg.patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(cfg.hidden_size))
        self.position_embedding = nn.Embedding(cfg.num_patches + 1, cfg.hidden_size)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embedding(pixels).flatten(2).transpose(1, 2)  # [B, patches, D]
        cls = self.class_embedding.expand(pixels.shape[0], 1, -1)
        return torch.cat([cls, patches], dim=1) + self.position_embedding.weight


class Attention(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        d = cfg.hidden_size
        self.num_heads = cfg.num_heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = (p(x).view(b, n, self.num_heads, -1).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        # Every patch sees every patch (no mask); scale 1/sqrt(head_dim), as CLIP.
        return self.out_proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d))


class MLP(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.act = activation(cfg.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class EncoderLayer(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.self_attn = Attention(cfg)
        self.layer_norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = h + self.self_attn(self.layer_norm1(h))
        return h + self.mlp(self.layer_norm2(h))


class VisionTower(nn.Module):
    """CLIP's vision transformer, built `num_layers` deep (default: the config's depth)."""

    def __init__(self, cfg: VisionConfig, num_layers: int | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.embeddings = Embeddings(cfg)
        self.pre_layrnorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)  # sic: CLIP's name
        self.encoder = nn.Module()
        self.encoder.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.num_layers if num_layers is None else num_layers))

    def hidden_states(self, pixels: torch.Tensor, indices: Sequence[int]) -> list[torch.Tensor]:
        """`transformers`' `hidden_states[i]` for each i in `indices` (0 is the embeddings after
        the pre-layernorm, i the output of layer i; no negative indices). Only those are kept,
        so a deep tower at a large batch does not hold every layer's activations at once."""
        expected = (self.cfg.num_channels, self.cfg.image_size, self.cfg.image_size)
        if pixels.dim() != 4 or tuple(pixels.shape[1:]) != expected:
            raise ValueError(f"pixels: expected [batch, {', '.join(map(str, expected))}], got {list(pixels.shape)}")
        if any(not 0 <= i <= len(self.encoder.layers) for i in indices):
            raise ValueError(f"indices: {list(indices)} outside 0..{len(self.encoder.layers)} (the layers this tower has)")
        h = self.pre_layrnorm(self.embeddings(pixels))
        kept = {0: h} if 0 in indices else {}
        for i, layer in enumerate(self.encoder.layers[: max(indices)], start=1):
            h = layer(h)
            if i in indices:
                kept[i] = h
        return [kept[i] for i in indices]
