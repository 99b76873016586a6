"""A CLIP vision transformer and the LLaVA projector in plain torch.

Numerics follow `transformers`: pre-layernorm, encoder layers (LayerNorm ▸ attention ▸
LayerNorm ▸ MLP, each with a residual), features taken from `vision_feature_layer` (an index
into [embeddings, layer 1 output, ...], so -2 is the second-to-last layer's output), the class
token dropped for the "default" strategy, then linear ▸ activation ▸ linear.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

_ACTIVATIONS = {
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
    "gelu": F.gelu,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
}


def activation(name: str):
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

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @classmethod
    def from_dict(cls, raw: dict) -> VisionConfig:
        return cls(
            image_size=raw.get("image_size", 224),
            patch_size=raw.get("patch_size", 32),
            hidden_size=raw.get("hidden_size", 768),
            intermediate_size=raw.get("intermediate_size", 3072),
            num_layers=raw.get("num_hidden_layers", 12),
            num_heads=raw.get("num_attention_heads", 12),
            layer_norm_eps=raw.get("layer_norm_eps", 1e-5),
            hidden_act=raw.get("hidden_act", "quick_gelu"),
            num_channels=raw.get("num_channels", 3),
        )


class EncoderLayer(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        d = cfg.hidden_size
        self.layer_norm1 = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(d, d) for _ in range(4))
        self.layer_norm2 = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.fc1 = nn.Linear(d, cfg.intermediate_size)
        self.fc2 = nn.Linear(cfg.intermediate_size, d)
        self.num_heads = cfg.num_heads
        self.act = activation(cfg.hidden_act)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        b, n, d = h.shape
        x = self.layer_norm1(h)
        q, k, v = (p(x).view(b, n, self.num_heads, -1).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        attn = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)
        h = h + self.out_proj(attn)
        return h + self.fc2(self.act(self.fc1(self.layer_norm2(h))))


class VisionTower(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.patch_embedding = nn.Conv2d(cfg.num_channels, cfg.hidden_size, cfg.patch_size, cfg.patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(cfg.hidden_size))
        self.position_embedding = nn.Embedding(cfg.num_patches + 1, cfg.hidden_size)
        self.pre_layrnorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.num_layers))

    def hidden_states(self, pixels: torch.Tensor, up_to: int) -> list[torch.Tensor]:
        """[embeddings, layer 1 output, ..., layer `up_to` output] — later layers are not run."""
        patches = self.patch_embedding(pixels).flatten(2).transpose(1, 2)
        cls = self.class_embedding.expand(pixels.shape[0], 1, -1)
        h = self.pre_layrnorm(torch.cat([cls, patches], dim=1) + self.position_embedding.weight)
        states = [h]
        for layer in self.layers[:up_to]:
            h = layer(h)
            states.append(h)
        return states


class Projector(nn.Module):
    def __init__(self, in_features: int, out_features: int, act: str, bias: bool = True) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_features, out_features, bias=bias)
        self.linear_2 = nn.Linear(out_features, out_features, bias=bias)
        self.act = activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(x)))
