"""Helpers for the vision tests (imported by name: `from vision_fixtures import ...`).

Tiny random LLaVA checkpoints (CLIP tower, projector, Llama) built by `transformers` itself,
offline, saved with `save_pretrained` as safetensors beside a `CLIPImageProcessor` config.

Weights are re-drawn larger than transformers' init (std 0.02, zero biases, unit norms): with
those, attention is near-uniform and embeddings are ~1e-3, so an all-close at atol 1e-5 would
prove little. Here every weight, bias and norm is random and embeddings are O(1).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

TEXT_HIDDEN = 48  # differs from the vision width (64), so a transposed projector cannot pass


def build_llava(path: Path, *, strategy: str = "default", feature_layer=-2, image_size: int = 32,
                shortest_edge: int | None = None, seed: int = 0) -> Path:
    from transformers import CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    vision = CLIPVisionConfig(image_size=image_size, patch_size=8, hidden_size=64, intermediate_size=128,
                              num_hidden_layers=2, num_attention_heads=4, projection_dim=32)
    text = LlamaConfig(vocab_size=256, hidden_size=TEXT_HIDDEN, intermediate_size=96, num_hidden_layers=1,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=7,
                         vision_feature_select_strategy=strategy, vision_feature_layer=feature_layer)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "language_model" in name or name.startswith("lm_head"):
                continue
            if "norm" in name:
                param.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * torch.randn_like(param))
            elif "embedding" in name:
                param.normal_(0, 0.5)
            else:
                param.normal_(0, 0.1)
    model.save_pretrained(path, safe_serialization=True)
    edge = shortest_edge or image_size
    CLIPImageProcessor(size={"shortest_edge": edge}, crop_size={"height": image_size, "width": image_size}).save_pretrained(path)
    return path


def encode_image(width: int, height: int, fmt: str = "PNG", seed: int = 0, mode: str = "RGB") -> bytes:
    """Smooth random pictures (noise would make every resize look alike), in any mode/format."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    channels = [np.sin(xs / rng.uniform(2, 9) + rng.uniform(0, 6)) + np.cos(ys / rng.uniform(2, 9)) for _ in range(4)]
    pixels = np.clip(np.stack(channels, -1) * 60 + 128 + rng.normal(0, 12, (height, width, 4)), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGBA")
    buf = io.BytesIO()
    if fmt == "GIF":  # two frames: the first must be the one used
        frames = [image.convert("RGB").quantize(64), Image.new("RGB", (width, height), (255, 0, 0)).quantize(4)]
        frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    else:
        image.convert(mode).save(buf, format=fmt)
    return buf.getvalue()
