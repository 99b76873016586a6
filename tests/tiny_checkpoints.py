"""Tiny random checkpoints built by `transformers` itself, and test images.

Test modules import these directly (`from tiny_checkpoints import ...`); fixtures that share
them across a session live in `conftest.py`.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image


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


def build_tiny_llava(path: Path, *, seed: int = 0, strategy: str = "default", feature_layer=-2, image_size: int = 32) -> Path:
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    vision = CLIPVisionConfig(
        image_size=image_size, patch_size=8, hidden_size=48, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4, projection_dim=32
    )
    text = LlamaConfig(
        vocab_size=384, hidden_size=64, intermediate_size=172, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=1024, bos_token_id=1, eos_token_id=2,
    )
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_id=3,
        vision_feature_select_strategy=strategy, vision_feature_layer=feature_layer,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    with torch.no_grad():  # clear-cut greedy choices, as for the text checkpoints
        model.model.language_model.embed_tokens.weight.normal_(0, 1.0)
        model.lm_head.weight.normal_(0, 0.5)
        model.model.multi_modal_projector.linear_2.weight.normal_(0, 0.5)
    model.save_pretrained(path, safe_serialization=True)
    CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    ).save_pretrained(path)
    return path


def image_bytes(width: int, height: int, fmt: str = "PNG", seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue()
