"""The decode-step roofline model, on SmolLM2-135M's shape (whose parameter count is published)."""

from __future__ import annotations

import pytest

from workers.engine.model_config import ModelConfig
from workers.engine.roofline import decode_step_cost, matmul_parameters, roofline

SMOLLM2 = ModelConfig(
    architecture="LlamaForCausalLM", vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30,
    num_heads=9, num_kv_heads=3, head_dim=64, rms_norm_eps=1e-5, rope_theta=1e5, max_position_embeddings=8192,
    tie_word_embeddings=True, attention_bias=False, mlp_bias=False, bos_token_id=1, eos_token_ids=(2,),
)


def test_matmul_parameters_plus_norms_are_smollm2s_published_count():
    norms = (2 * SMOLLM2.num_layers + 1) * SMOLLM2.hidden_size
    assert matmul_parameters(SMOLLM2) + norms == 134_515_008


def test_flops_are_two_per_weight_per_token_plus_attention_over_each_context():
    cost = decode_step_cost(SMOLLM2, [100, 300], dtype_bytes=4)
    assert cost.matmul_flops == 2 * matmul_parameters(SMOLLM2) * 2
    assert cost.attention_flops == 4 * 30 * 9 * 64 * 400


def test_weights_are_read_once_whatever_the_batch_and_kv_grows_with_context():
    one = decode_step_cost(SMOLLM2, [256], dtype_bytes=4)
    many = decode_step_cost(SMOLLM2, [256] * 32, dtype_bytes=4)
    assert one.weight_bytes == many.weight_bytes == 134_515_008 * 4
    assert many.kv_bytes == pytest.approx(32 * one.kv_bytes)
    assert decode_step_cost(SMOLLM2, [256], dtype_bytes=2).weight_bytes == one.weight_bytes / 2


def test_an_untied_embedding_table_is_read_only_at_the_batchs_rows():
    untied = ModelConfig(**{**{f: getattr(SMOLLM2, f) for f in SMOLLM2.__dataclass_fields__}, "tie_word_embeddings": False})
    assert decode_step_cost(untied, [10, 10], 4).weight_bytes - decode_step_cost(SMOLLM2, [10, 10], 4).weight_bytes == 2 * 576 * 4


def test_the_binding_limit_sets_the_roofline():
    cost = decode_step_cost(SMOLLM2, [256] * 32, dtype_bytes=4)
    line = roofline(cost, 32, peak_flops=1e11, peak_bytes_per_s=1e10)
    assert line.compute_tokens_per_s == pytest.approx(32 * 1e11 / cost.flops)
    assert line.bandwidth_tokens_per_s == pytest.approx(32 * 1e10 / cost.bytes)
    assert line.tokens_per_s == min(line.compute_tokens_per_s, line.bandwidth_tokens_per_s)
    assert line.bound == ("compute" if line.compute_tokens_per_s < line.bandwidth_tokens_per_s else "bandwidth")
    assert line.fraction(line.tokens_per_s / 2) == pytest.approx(0.5)
    # batch 1 reads every weight for one token: bandwidth binds
    assert roofline(decode_step_cost(SMOLLM2, [256], 4), 1, 1e11, 1e10).bound == "bandwidth"
