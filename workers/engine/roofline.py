"""The roofline of one decode step: the work a Llama decode step must do, as FLOPs and bytes.

A decode step computes one token for each of `batch` sequences. Its floor in time is set by
whichever of the machine's two limits binds: arithmetic (FLOPs ÷ peak FLOP/s) or memory
traffic (bytes ÷ peak bytes/s). `pavana bench engine` measures both peaks on the machine it
runs on and reports the engine's decode tokens/s as a fraction of the tokens/s that floor
allows. The model here is pure arithmetic over the checkpoint's shape, so it is tested alone.

What is counted, per step:
- FLOPs: 2 per weight per token for every matrix product (q|k|v, o, gate|up, down, the LM
  head), plus attention: q·kᵀ and p·v, 2 · head_dim FLOPs per query head, context position
  and product, for each sequence's whole context.
- Bytes: every weight read once (the batch shares it), each sequence's keys and values read
  once and the new token's written, and the activations each layer writes and reads again
  (its inputs and outputs of every product, the step's logits in float32). The embedding
  table is read only at the batch's rows (a lookup), unless the LM head shares it, in which
  case it is read whole as the head.
"""

from __future__ import annotations

from dataclasses import dataclass

from workers.engine.model_config import ModelConfig


@dataclass(frozen=True, slots=True)
class StepCost:
    matmul_flops: float
    attention_flops: float
    weight_bytes: float
    kv_bytes: float
    activation_bytes: float

    @property
    def flops(self) -> float:
        return self.matmul_flops + self.attention_flops

    @property
    def bytes(self) -> float:
        return self.weight_bytes + self.kv_bytes + self.activation_bytes


@dataclass(frozen=True, slots=True)
class Roofline:
    """Tokens/s each limit allows for one decode step of `batch` tokens."""

    batch: int
    compute_tokens_per_s: float
    bandwidth_tokens_per_s: float

    @property
    def tokens_per_s(self) -> float:
        return min(self.compute_tokens_per_s, self.bandwidth_tokens_per_s)

    @property
    def bound(self) -> str:
        return "compute" if self.compute_tokens_per_s <= self.bandwidth_tokens_per_s else "bandwidth"

    def fraction(self, achieved_tokens_per_s: float) -> float:
        return achieved_tokens_per_s / self.tokens_per_s


def matmul_parameters(cfg: ModelConfig) -> int:
    """Weights that take part in a matrix product for every token (the LM head included)."""
    q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    per_layer = cfg.hidden_size * (q + 2 * kv) + q * cfg.hidden_size + 3 * cfg.hidden_size * cfg.intermediate_size
    return cfg.num_layers * per_layer + cfg.hidden_size * cfg.vocab_size


def decode_step_cost(cfg: ModelConfig, context_lengths: list[int], dtype_bytes: int) -> StepCost:
    """The work of one decode step for sequences whose contexts (the new token included) are
    `context_lengths`, with weights, KV and activations in `dtype_bytes`-byte elements."""
    batch = len(context_lengths)
    contexts = sum(context_lengths)
    hidden, inter = cfg.hidden_size, cfg.intermediate_size
    q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    params = matmul_parameters(cfg)
    matmul_flops = 2.0 * params * batch
    attention_flops = 4.0 * cfg.num_layers * q * contexts
    norms = (2 * cfg.num_layers + 1) * hidden
    embedding_rows = 0 if cfg.tie_word_embeddings else batch * hidden  # a separate table is read only at the batch's rows
    weight_bytes = float(params + norms + embedding_rows) * dtype_bytes
    kv_bytes = float(cfg.num_layers * 2 * kv * (contexts + batch)) * dtype_bytes
    # written once, read once: the layer's input, q|k|v, attention output, o, gate|up, the gated product, down
    per_token_layer = hidden + (q + 2 * kv) + q + hidden + 2 * inter + inter + hidden
    activation_bytes = 2.0 * cfg.num_layers * per_token_layer * batch * dtype_bytes + 2.0 * batch * cfg.vocab_size * 4
    return StepCost(matmul_flops, attention_flops, weight_bytes, kv_bytes, activation_bytes)


def roofline(cost: StepCost, batch: int, peak_flops: float, peak_bytes_per_s: float) -> Roofline:
    return Roofline(batch, batch / (cost.flops / peak_flops), batch / (cost.bytes / peak_bytes_per_s))
