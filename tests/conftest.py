"""Fixtures shared across the suite: tiny random checkpoints built by `transformers` itself."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def build_tiny_llama(path: Path, *, seed: int = 0, **overrides) -> Path:
    """A random `LlamaForCausalLM` saved as safetensors; small enough to run in milliseconds."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = dict(
        vocab_size=384,
        hidden_size=64,
        intermediate_size=172,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        rms_norm_eps=1e-5,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    config.update(overrides)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**config)).eval()
    # Random init gives near-uniform logits, where argmax is decided by rounding noise; a
    # wider embedding makes greedy choices clear-cut, so token-exact comparisons are meaningful.
    with torch.no_grad():
        model.model.embed_tokens.weight.normal_(0, 1.0)
        model.lm_head.weight.normal_(0, 0.5)
    model.save_pretrained(path, safe_serialization=True)
    return path


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))
