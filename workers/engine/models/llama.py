"""A Llama decoder over the paged KV cache, loading Hugging Face `safetensors` weights.

Projections are fused (q|k|v and gate|up) so that a step makes two large matrix products per
layer instead of five. Numerics follow `transformers`' Llama: RMSNorm in float32, rotate-half
RoPE, SiLU-gated MLP.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from workers.engine.attention import AttentionMetadata, LayerKV, attention
from workers.engine.model_config import ModelConfig


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    if x.dtype == torch.float32:  # one fused kernel, bit-identical to the float32 formula below
        return F.rms_norm(x, (x.shape[-1],), weight, eps)
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def swap_halves(x: torch.Tensor) -> torch.Tensor:
    """[x1, x2] → [x2, x1] along the head dimension; with a sine whose first half is negated
    this is `transformers`' rotate-half, one operation fewer."""
    half = x.shape[-1] // 2
    return torch.cat((x[..., half:], x[..., :half]), dim=-1)


class RotaryEmbedding:
    def __init__(self, head_dim: int, theta: float) -> None:
        # explicit device: the model may be built under a meta-device context before loading
        self.inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float, device="cpu") / head_dim))

    def cos_sin(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and the signed sine, [T, 1, D]: q·cos + swap_halves(q)·sin is rotate-half RoPE."""
        freqs = positions[:, None].float() * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        sin = emb.sin()
        half = sin.shape[-1] // 2
        signed = torch.cat((-sin[:, :half], sin[:, half:]), dim=-1)
        return emb.cos().to(dtype)[:, None, :], signed.to(dtype)[:, None, :]


class LlamaLayer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        q_out = cfg.num_heads * cfg.head_dim
        kv_out = cfg.num_kv_heads * cfg.head_dim
        self.qkv = nn.Linear(cfg.hidden_size, q_out + 2 * kv_out, bias=cfg.attention_bias)
        self.o_proj = nn.Linear(q_out, cfg.hidden_size, bias=cfg.attention_bias)
        self.gate_up = nn.Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=cfg.mlp_bias)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=cfg.mlp_bias)
        self.input_norm = nn.Parameter(torch.ones(cfg.hidden_size))
        self.post_attention_norm = nn.Parameter(torch.ones(cfg.hidden_size))
        self.split = (q_out, kv_out, kv_out)
        self.scale = cfg.head_dim**-0.5

    def forward(self, h, cos, sin, meta: AttentionMetadata, kv: LayerKV):
        cfg = self.cfg
        x = rms_norm(h, self.input_norm, cfg.rms_norm_eps)
        q, k, v = self.qkv(x).split(self.split, dim=-1)
        q = q.view(-1, cfg.num_heads, cfg.head_dim)
        k = k.view(-1, cfg.num_kv_heads, cfg.head_dim)
        v = v.view(-1, cfg.num_kv_heads, cfg.head_dim)
        q = q * cos + swap_halves(q) * sin
        k = k * cos + swap_halves(k) * sin
        attn = attention(q, k, v, kv, meta, self.scale)
        h = h + self.o_proj(attn.reshape(attn.shape[0], -1))
        x = rms_norm(h, self.post_attention_norm, cfg.rms_norm_eps)
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return h + self.down_proj(F.silu(gate) * up)


class LlamaModel(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(LlamaLayer(cfg) for _ in range(cfg.num_layers))
        self.norm = nn.Parameter(torch.ones(cfg.hidden_size))
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.rotary = RotaryEmbedding(cfg.head_dim, cfg.rope_theta)

    @torch.inference_mode()
    def forward(
        self,
        hidden: torch.Tensor,  # [T, hidden] input embeddings
        positions: torch.Tensor,  # [T]
        meta: AttentionMetadata,
        kv: list[LayerKV],
    ) -> torch.Tensor:
        cos, sin = self.rotary.cos_sin(positions, hidden.dtype)
        for layer, layer_kv in zip(self.layers, kv):
            hidden = layer(hidden, cos, sin, meta, layer_kv)
        return hidden

    @torch.inference_mode()
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(rms_norm(hidden, self.norm, self.cfg.rms_norm_eps)).float()

    def load_weights(self, weights: dict[str, torch.Tensor], prefix: str, lm_head_key: str | None) -> None:
        """Copy Hugging Face Llama weights (names under `prefix`) into the fused layout."""
        cfg = self.cfg

        def take(name: str) -> torch.Tensor:
            key = prefix + name
            if key not in weights:
                raise ValueError(f"checkpoint: missing weight {key!r}")
            return weights[key]

        with torch.no_grad():
            self.embed_tokens.weight.copy_(take("embed_tokens.weight"))
            self.norm.copy_(take("norm.weight"))
            head = weights[lm_head_key] if lm_head_key else take("embed_tokens.weight")
            self.lm_head.weight.copy_(head)
            for i, layer in enumerate(self.layers):
                p = f"layers.{i}."
                layer.qkv.weight.copy_(torch.cat([take(p + f"self_attn.{n}_proj.weight") for n in "qkv"]))
                if cfg.attention_bias:
                    layer.qkv.bias.copy_(torch.cat([take(p + f"self_attn.{n}_proj.bias") for n in "qkv"]))
                    layer.o_proj.bias.copy_(take(p + "self_attn.o_proj.bias"))
                layer.o_proj.weight.copy_(take(p + "self_attn.o_proj.weight"))
                layer.gate_up.weight.copy_(torch.cat([take(p + "mlp.gate_proj.weight"), take(p + "mlp.up_proj.weight")]))
                layer.down_proj.weight.copy_(take(p + "mlp.down_proj.weight"))
                if cfg.mlp_bias:
                    layer.gate_up.bias.copy_(torch.cat([take(p + "mlp.gate_proj.bias"), take(p + "mlp.up_proj.bias")]))
                    layer.down_proj.bias.copy_(take(p + "mlp.down_proj.bias"))
                layer.input_norm.copy_(take(p + "input_layernorm.weight"))
                layer.post_attention_norm.copy_(take(p + "post_attention_layernorm.weight"))
