"""`pavana bench gpu-engines`: Pavana's engine and vLLM side by side on one GPU machine and one
model — TTFT, TBT (p50/p99) and output tokens/s at a few batch sizes.

Both run behind the backend contract (`workers/backends/`), driven the same way: a batch of
requests submitted at once, every token's arrival time recorded. Pavana's engine runs on the
machine's CPU (it has no GPU path); vLLM runs on the GPU. The model is the checkpoint folder
in PAVANA_VLLM_TEST_MODEL, else the bundled SmolLM2-135M-Instruct converted to safetensors
(the same weights for both). Refuses, saying why, where there is no GPU or no vLLM.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.common import command_line, machine_info, percentile, run_from_command_line, write_json
from workers.backends.contract import make_backend
from workers.engine.sampling import SamplingParams
from workers.requests import GenerateRequest

console = Console()
BATCH_SIZES = (1, 8, 32)
QUICK_BATCH_SIZES = (1, 8)
PROMPT_TOKENS, OUTPUT_TOKENS = 256, 64
ENGINE = dict(policy="sarathi", chunk_size=2048, max_num_seqs=64, block_size=16, num_kv_blocks=4096, enable_prefix_caching=False, dtype="bfloat16")


class NoGpu(SystemExit):
    pass


def require_gpu() -> None:
    try:
        import torch
    except ImportError as e:
        raise NoGpu(f"gpu-engines: torch is missing ({e})") from e
    if not torch.cuda.is_available():
        raise NoGpu("gpu-engines: no GPU on this machine; this benchmark compares Pavana's engine with vLLM on a GPU node")
    try:
        import vllm  # noqa: F401
    except ImportError as e:
        raise NoGpu(f"gpu-engines: vLLM is not installed ({e}); install Pavana's 'gpu' extra") from e


def model_dir() -> str:
    path = os.environ.get("PAVANA_VLLM_TEST_MODEL")
    if path:
        return path
    from workers.engine.bundled import model_dir as bundled_dir

    return str(bundled_dir(None, "smollm2-135m-instruct"))


def requests(batch: int, seed: int) -> list[GenerateRequest]:
    rng = random.Random(seed)
    return [
        GenerateRequest(f"b{batch}-{seed}-{i}", [rng.randrange(100, 20000) for _ in range(PROMPT_TOKENS)], SamplingParams(max_tokens=OUTPUT_TOKENS, ignore_eos=True))
        for i in range(batch)
    ]


async def run_batch(backend, batch: list[GenerateRequest]) -> dict[str, Any]:
    start = time.perf_counter()

    async def one(request: GenerateRequest) -> list[float]:
        times = []
        async for chunk in backend.generate(request):
            times += [time.perf_counter()] * len(chunk.token_ids)
        return times

    arrivals = await asyncio.gather(*(one(r) for r in batch))
    end = time.perf_counter()
    ttft = [t[0] - start for t in arrivals if t]
    tbt = [b - a for t in arrivals for a, b in zip(t, t[1:])]
    tokens = sum(len(t) for t in arrivals)
    return {
        "batch_size": len(batch), "output_tokens": tokens, "seconds": end - start, "output_tokens_per_s": tokens / (end - start),
        "ttft_p50_s": percentile(ttft, 50), "ttft_p99_s": percentile(ttft, 99), "tbt_p50_s": percentile(tbt, 50), "tbt_p99_s": percentile(tbt, 99),
    }


async def measure(name: str, path: str, batch_sizes: tuple[int, ...]) -> list[dict[str, Any]]:
    config = {**ENGINE, "gpu_memory_utilization": 0.5} if name == "vllm" else dict(ENGINE, dtype="float32")
    if name == "vllm":
        config.pop("num_kv_blocks")
    backend = make_backend(name, model_path=path, bundled="smollm2-135m-instruct", engine_config=config, stage="colocated", replica_id=f"bench-{name}")
    try:
        await run_batch(backend, requests(2, seed=999))  # warm-up, excluded
        return [{"backend": name, **await run_batch(backend, requests(b, seed=b))} for b in batch_sizes]
    finally:
        await backend.shutdown()


def report(result: dict[str, Any]) -> None:
    table = Table(title=f"Pavana's engine (CPU) and vLLM (GPU): {PROMPT_TOKENS}-token prompts, {OUTPUT_TOKENS} tokens out")
    for col in ("backend", "batch", "TTFT p50 (ms)", "TTFT p99 (ms)", "TBT p50 (ms)", "TBT p99 (ms)", "output tokens/s"):
        table.add_column(col, justify="left" if col == "backend" else "right")
    for run in result["runs"]:
        table.add_row(
            run["backend"], str(run["batch_size"]), f"{run['ttft_p50_s'] * 1e3:.1f}", f"{run['ttft_p99_s'] * 1e3:.1f}",
            f"{run['tbt_p50_s'] * 1e3:.2f}", f"{run['tbt_p99_s'] * 1e3:.2f}", f"{run['output_tokens_per_s']:.1f}",
        )
    console.print(table)


def main(quick: bool = False, json_path: Path | None = None) -> dict[str, Any]:
    require_gpu()
    import torch

    path = model_dir()
    batch_sizes = QUICK_BATCH_SIZES if quick else BATCH_SIZES
    runs = asyncio.run(measure("pavana", path, batch_sizes)) + asyncio.run(measure("vllm", path, batch_sizes))
    result = {
        "benchmark": "gpu_engines", "quick": quick, "command": command_line(),
        "machine": {**machine_info(), "gpu": torch.cuda.get_device_name(0)}, "model": path,
        "prompt_tokens": PROMPT_TOKENS, "output_tokens": OUTPUT_TOKENS, "runs": runs,
    }
    report(result)
    write_json(json_path, result)
    return result


if __name__ == "__main__":
    run_from_command_line(main, __doc__)
