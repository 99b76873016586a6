"""`pavana bench vision`: the vision encoder's throughput by batch size (images/s, bytes in,
embeddings out), its forward pass alone, and what one image costs the language model in
prefill tokens.

The model is a random LLaVA vision half — CLIP at 224 px in 14 px patches (256 patches),
hidden 256, 4 layers, projector into a 512-wide language model — written straight to
safetensors in the layout `transformers` 5 saves, so this needs no `transformers`. Images are
distinct 640x480 JPEGs (photo-sized), so decoding and resizing are part of the figure; the
cache is off, so every image is encoded.
"""

from __future__ import annotations

import io
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from rich.console import Console
from rich.table import Table
from safetensors.torch import save_file

from bench.common import command_line, machine_info, run_from_command_line, write_json
from workers.vision.encoder import VisionEncoder

console = Console()
BATCH_SIZES = (1, 4, 16)
MODEL = dict(image_size=224, patch_size=14, hidden_size=256, num_layers=4, num_heads=4, text_hidden_size=512)


def write_random_llava_vision(
    path: Path, *, image_size: int, patch_size: int, hidden_size: int, num_layers: int, num_heads: int,
    text_hidden_size: int, seed: int = 0,
) -> Path:
    """A LLaVA checkpoint with only its vision tower and projector (random weights), its
    `config.json` and a CLIP `preprocessor_config.json` — what the vision pool loads."""
    path.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    d, ff, patches = hidden_size, 4 * hidden_size, (image_size // patch_size) ** 2

    def normal(*shape: int, std: float = 0.02) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * std

    w = {
        "vision_tower.embeddings.class_embedding": normal(d),
        "vision_tower.embeddings.patch_embedding.weight": normal(d, 3, patch_size, patch_size),
        "vision_tower.embeddings.position_embedding.weight": normal(patches + 1, d),
        "multi_modal_projector.linear_1.weight": normal(text_hidden_size, d),
        "multi_modal_projector.linear_1.bias": torch.zeros(text_hidden_size),
        "multi_modal_projector.linear_2.weight": normal(text_hidden_size, text_hidden_size),
        "multi_modal_projector.linear_2.bias": torch.zeros(text_hidden_size),
    }
    norms = ["vision_tower.pre_layrnorm", "vision_tower.post_layernorm"]
    for i in range(num_layers):
        p = f"vision_tower.encoder.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            w[p + f"self_attn.{proj}.weight"], w[p + f"self_attn.{proj}.bias"] = normal(d, d), torch.zeros(d)
        w[p + "mlp.fc1.weight"], w[p + "mlp.fc1.bias"] = normal(ff, d), torch.zeros(ff)
        w[p + "mlp.fc2.weight"], w[p + "mlp.fc2.bias"] = normal(d, ff), torch.zeros(d)
        norms += [p + "layer_norm1", p + "layer_norm2"]
    for norm in norms:
        w[norm + ".weight"], w[norm + ".bias"] = torch.ones(d), torch.zeros(d)
    save_file(w, str(path / "model.safetensors"), metadata={"format": "pt"})
    config = {
        "architectures": ["LlavaForConditionalGeneration"], "model_type": "llava", "image_token_index": 32000,
        "image_seq_length": patches, "projector_hidden_act": "gelu", "multimodal_projector_bias": True,
        "vision_feature_layer": -2, "vision_feature_select_strategy": "default",
        "text_config": {"model_type": "llama", "hidden_size": text_hidden_size},
        "vision_config": {
            "model_type": "clip_vision_model", "image_size": image_size, "patch_size": patch_size, "hidden_size": d,
            "intermediate_size": ff, "num_hidden_layers": num_layers, "num_attention_heads": num_heads,
            "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
        },
    }
    (path / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (path / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "CLIPImageProcessor", "size": {"shortest_edge": image_size},
        "crop_size": {"height": image_size, "width": image_size}, "resample": 3,
    }, indent=2) + "\n")
    return path


def photo_jpegs(n: int, width: int = 640, height: int = 480, seed: int = 0) -> list[bytes]:
    """Distinct smooth pictures with some grain, as JPEG: closer to photos than pure noise."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    out = []
    for _ in range(n):
        rgb = [np.sin(xs / rng.uniform(20, 90) + rng.uniform(0, 6)) + np.cos(ys / rng.uniform(20, 90)) for _ in range(3)]
        pixels = np.clip(np.stack(rgb, -1) * 60 + 128 + rng.normal(0, 8, (height, width, 3)), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def timed_rate(fn, batches: list, batch_size: int) -> float:
    """Images/s of the median call over `batches`, after one warm-up call (excluded): the
    median, because on a shared CPU one preempted call would otherwise skew the figure."""
    fn(batches[0])
    seconds = []
    for batch in batches:
        start = time.perf_counter()
        fn(batch)
        seconds.append(time.perf_counter() - start)
    return batch_size / float(np.median(seconds))


def main(quick: bool = False, json_path: Path | None = None) -> dict[str, Any]:
    rounds = 3 if quick else 15
    images = photo_jpegs(32)
    with tempfile.TemporaryDirectory() as tmp:
        encoder = VisionEncoder.from_pretrained(write_random_llava_vision(Path(tmp) / "llava", **MODEL), cache_size=0, max_batch=max(BATCH_SIZES))
    end_to_end, forward, preprocess_ms = {}, {}, {}
    for b in BATCH_SIZES:
        batches = [[images[(r * b + i) % len(images)] for i in range(b)] for r in range(rounds)]
        end_to_end[str(b)] = timed_rate(encoder.encode, batches, b)
        pixels = [torch.stack(encoder.preprocess(batch)) for batch in batches]
        forward[str(b)] = timed_rate(encoder.encode_pixels, pixels, b)
        preprocess_ms[str(b)] = 1e3 / timed_rate(encoder.preprocess, batches, b)
    result = {
        "benchmark": "vision",
        "quick": quick,
        "machine": machine_info(),
        "command": command_line(),
        "model": "random LLaVA vision half: CLIP 224 px / 14 px patches, hidden 256, 4 layers (3 run: feature layer -2), projector 256->512",
        "images": "distinct 640x480 JPEG, cache off",
        "images_per_s": end_to_end,
        "forward_images_per_s": forward,
        "preprocess_ms_per_image": preprocess_ms,
        "prefill_tokens_per_image": encoder.num_image_tokens,
    }
    table = Table(title="Vision encoder (CLIP 224/14, hidden 256, 4 layers; 640x480 JPEGs)")
    for column in ("batch size", "images/s (bytes in)", "images/s (forward only)", "preprocess ms/image"):
        table.add_column(column, justify="right")
    for b in end_to_end:
        table.add_row(b, f"{end_to_end[b]:.1f}", f"{forward[b]:.1f}", f"{preprocess_ms[b]:.2f}")
    console.print(table)
    console.print(f"One image = {encoder.num_image_tokens} prefill tokens for the language model.")
    write_json(json_path, result)
    return result


if __name__ == "__main__":
    run_from_command_line(main, __doc__)
