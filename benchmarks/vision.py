"""`pavana bench vision`: the vision encoder's throughput by batch size, and what one image
costs the language model (its placeholder tokens, and the time to prefill them).

Measured on the bundled default model's vision tower, the one the quick start serves.
"""

from __future__ import annotations

import io
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from rich.console import Console
from rich.table import Table

from benchmarks.common import run_from_command_line, command_line, machine_info, write_json
from workers.engine.default_model import ensure_default_model
from workers.engine.llm_engine import LLMEngine
from workers.engine.sampling import SamplingParams
from workers.engine.sequence import MultimodalSpan
from workers.vision.encoder import VisionEncoder

console = Console()
BATCH_SIZES = (1, 4, 16)


def distinct_images(n: int, seed: int = 0) -> list[bytes]:
    """Different PNGs (the encoder caches by content, so repeats would not be encoded)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def images_per_s(encoder: VisionEncoder, batch_size: int, rounds: int) -> float:
    images = distinct_images(batch_size * (rounds + 1), seed=batch_size)
    for _ in range(3):  # warm-up, excluded (the encoder caches nothing: cache_size=0)
        encoder.encode(images[:batch_size])
    start = time.perf_counter()
    for r in range(1, rounds + 1):
        encoder.encode(images[r * batch_size : (r + 1) * batch_size])
    return batch_size * rounds / (time.perf_counter() - start)


def image_prefill_s(model_dir: Path, encoder: VisionEncoder, rounds: int) -> tuple[float, float]:
    """Time to prefill a short prompt with and without one image's tokens."""
    engine = LLMEngine(model_dir)
    tokens = encoder.num_image_tokens
    image_token = engine.model_config.image_token_id
    embeds = encoder.encode(distinct_images(1, seed=7))[0]
    text = [1] + [10] * 8
    with_image = [1] + [image_token] * tokens + [10] * 8

    def timed(prompt: list[int], spans) -> float:
        start = time.perf_counter()
        for i in range(rounds):
            engine.add_request(f"p{i}-{len(prompt)}", prompt, SamplingParams(max_tokens=1), spans)
            while engine.has_unfinished():
                engine.step()
        return (time.perf_counter() - start) / rounds

    timed(text, [])
    return timed(text, []), timed(with_image, [MultimodalSpan(1, tokens, f"bench-{i}", embeds) for i in range(1)])


def main(quick: bool = False, json_path: Path | None = None) -> dict[str, Any]:
    rounds = 10 if quick else 40
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = ensure_default_model(Path(tmp))
        encoder = VisionEncoder.from_pretrained(model_dir, cache_size=0)
        rates = {str(b): images_per_s(encoder, b, rounds) for b in BATCH_SIZES}
        text_s, image_s = image_prefill_s(model_dir, encoder, rounds * 5)
    result = {
        "benchmark": "vision",
        "quick": quick,
        "machine": machine_info(),
        "command": command_line(),
        "model": "bundled pavana-tiny (LLaVA: CLIP 56px/14px patches, 2 layers, hidden 128)",
        "images_per_s": rates,
        "prefill_tokens_per_image": encoder.num_image_tokens,
        "prefill_s_text_only": text_s,
        "prefill_s_with_one_image": image_s,
    }
    table = Table(title="Vision encoder (bundled model)")
    table.add_column("batch size", justify="right")
    table.add_column("images/s", justify="right")
    for b, rate in rates.items():
        table.add_row(b, f"{rate:.1f}")
    console.print(table)
    console.print(
        f"One image = {encoder.num_image_tokens} prefill tokens; a 9-token prompt prefills in "
        f"{text_s * 1e3:.1f} ms, with one image in {image_s * 1e3:.1f} ms."
    )
    write_json(json_path, result)
    return result


if __name__ == "__main__":
    run_from_command_line(main, __doc__)
