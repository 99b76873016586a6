"""`pavana bench engine`, decode at batch 32 on the bundled SmolLM2-135M: the engine's decode
tokens/s in float32 and bfloat16 side by side, as a fraction of the machine's roofline, and
llama.cpp (llama-cpp-python, where it is installed) on the same GGUF file.

- Decode tokens/s. A decode-mode engine receives 32 hand-offs whose contexts are 128–512
  tokens (seeded random KV: a step's cost does not depend on the values), so the measurement
  is decode steps alone, the engine's whole loop included (scheduler, runner, sampler,
  postprocessing). The first step, which imports the KV, is not timed. The two dtypes
  alternate, best of the repeats each.
- Roofline. `workers.engine.roofline` counts the step's FLOPs and bytes; the peaks are measured
  in the same run with the engine's thread count: a large matrix product in the engine's
  dtype (FLOP/s), a large tensor copy (bytes/s, read plus write). The fraction is achieved
  tokens/s over the lower of the two bounds.
- llama.cpp. The same GGUF file the engine is built from (Q4_1, embeddings Q8_0) run as it
  ships, greedy, on the same chat prompt: tokens/s at batch 1, where the engine runs its
  float32 dequantisation of those weights. llama-cpp-python's `Llama` object decodes one
  sequence per context, so batch 1 is the batch it offers.
"""

from __future__ import annotations

import math
import random
import time
from typing import Any

import torch
import torch.nn.functional as F

from workers.engine.config import EngineConfig
from workers.engine.llm_engine import LLMEngine
from workers.engine.outputs import KVHandoff
from workers.engine.roofline import decode_step_cost, roofline
from workers.engine.sampling import SamplingParams
from workers.engine.smollm2 import GGUF_NAME, ensure_smollm2, gguf_path

BATCH = 32
DTYPE_BYTES = {"float32": 4, "bfloat16": 2}


# -- the machine's peaks ----------------------------------------------------------------------------
def peak_flops(dtype: torch.dtype, rows: int = 1024, width: int = 2048, repeats: int = 3) -> float:
    """FLOP/s of a large `F.linear` in `dtype`, the operator the engine's projections run (in
    bfloat16 without AVX-512 a plain `a @ b` takes a far slower path than `linear` does)."""
    x, w = torch.randn(rows, width).to(dtype), torch.randn(width, width).to(dtype)
    F.linear(x, w)
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        F.linear(x, w)
        best = min(best, time.perf_counter() - start)
    return 2 * rows * width * width / best


def peak_bytes_per_s(megabytes: int = 256, repeats: int = 5) -> float:
    src = torch.ones(megabytes << 18)  # float32: megabytes MiB
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - start)
    return 2 * src.numel() * 4 / best


def cpu_features() -> dict[str, Any]:
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    return {
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "avx512_bf16": "avx512_bf16" in flags,
        "amx_bf16": "amx_bf16" in flags,
        "avx512f": "avx512f" in flags,
    }


# -- decode at batch 32 ------------------------------------------------------------------------------
def contexts(seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(128, 512) for _ in range(BATCH)]


def decode_run(engine: LLMEngine, lengths: list[int], steps: int, seed: int = 0) -> float:
    """Seconds for `steps` decode steps of the whole batch, after the step that imports the KV."""
    cfg = engine.model_config
    g = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    for i, n in enumerate(lengths):
        tokens = [rng.randrange(4, cfg.vocab_size - 1) for _ in range(n)]
        kv = torch.randn(cfg.num_layers, 2, n - 1, cfg.num_kv_heads, cfg.head_dim, generator=g)
        params = SamplingParams(max_tokens=steps + 2, ignore_eos=True)
        engine.add_handoff(KVHandoff(f"d{seed}-{i}", tokens, n - 1, kv, params))
    engine.step()
    start = time.perf_counter()
    for _ in range(steps):
        engine.step()
    elapsed = time.perf_counter() - start
    while engine.has_unfinished():
        engine.step()
    return elapsed


def decode_batch32(steps: int, repeats: int, dtypes: tuple[str, ...]) -> dict[str, Any]:
    model_dir = ensure_smollm2()
    lengths = contexts()
    engines = {d: LLMEngine(model_dir, EngineConfig(mode="decode", max_num_seqs=64, num_kv_blocks=2048, dtype=d)) for d in dtypes}
    best = {d: math.inf for d in dtypes}
    runs: dict[str, list[float]] = {d: [] for d in dtypes}
    for r in range(repeats):  # alternated: a busy moment slows one run, not one side
        for d in dtypes:
            s = decode_run(engines[d], lengths, steps, seed=r)
            runs[d].append(BATCH * steps / s)
            best[d] = min(best[d], s)
    threads = torch.get_num_threads()
    memory_bw = peak_bytes_per_s()
    cfg = engines[dtypes[0]].model_config
    mid_context = [n + steps // 2 for n in lengths]  # the contexts halfway through the timed steps
    out: dict[str, Any] = {
        "model": "SmolLM2-135M-Instruct (bundled, float32 dequantised from Q4_1)",
        "batch": BATCH,
        "context_tokens": {"min": min(lengths), "max": max(lengths), "mean": sum(lengths) / BATCH},
        "timed_steps": steps,
        "repeats": repeats,
        "threads": threads,
        "cpu": cpu_features(),
        "peak_bytes_per_s": memory_bw,
        "by_dtype": {},
    }
    for d in dtypes:
        flops = peak_flops(getattr(torch, d))
        cost = decode_step_cost(cfg, mid_context, DTYPE_BYTES[d])
        line = roofline(cost, BATCH, flops, memory_bw)
        achieved = BATCH * steps / best[d]
        out["by_dtype"][d] = {
            "decode_tokens_per_s": achieved,
            "decode_tokens_per_s_runs": runs[d],
            "step_ms": best[d] / steps * 1e3,
            "peak_flops": flops,
            "step_gflop": cost.flops / 1e9,
            "step_mbytes": cost.bytes / 1e6,
            "step_mbytes_parts": {"weights": cost.weight_bytes / 1e6, "kv": cost.kv_bytes / 1e6, "activations": cost.activation_bytes / 1e6},
            "compute_bound_tokens_per_s": line.compute_tokens_per_s,
            "bandwidth_bound_tokens_per_s": line.bandwidth_tokens_per_s,
            "bound": line.bound,
            "decode_roofline_fraction": line.fraction(achieved),
        }
    if "bfloat16" in dtypes and "float32" in dtypes:
        out["bf16_vs_float32_decode"] = out["by_dtype"]["bfloat16"]["decode_tokens_per_s"] / out["by_dtype"]["float32"]["decode_tokens_per_s"]
    return out


# -- llama.cpp on the same GGUF file -----------------------------------------------------------------
def llama_cpp_batch1(max_tokens: int) -> dict[str, Any]:
    try:
        from llama_cpp import Llama
    except ImportError as exc:
        return {"skipped": f"llama-cpp-python is not installed ({exc}); `pip install llama-cpp-python` (it compiles llama.cpp)"}
    threads = torch.get_num_threads()
    engine = LLMEngine(ensure_smollm2(), EngineConfig(max_num_seqs=4, num_kv_blocks=256))
    prompt = engine.tokenizer.encode_chat([{"role": "user", "content": "Explain in detail how a wind turbine turns wind into electricity."}])
    llm = Llama(model_path=str(gguf_path()), n_ctx=1024, n_threads=threads, n_threads_batch=threads, verbose=False)

    def run_llama() -> tuple[float, list[int]]:
        llm.reset()
        out: list[int] = []
        start = None
        for token in llm.generate(prompt, top_k=1, temp=0.0, repeat_penalty=1.0, reset=True):
            if start is None:  # the prompt is processed before the first token: decode only from here
                start = time.perf_counter()
            out.append(token)
            if len(out) == max_tokens + 1:
                break
        return time.perf_counter() - start, out[1:]

    def run_engine() -> tuple[float, list[int]]:
        engine.add_request("b1", prompt, SamplingParams(max_tokens=max_tokens + 1, ignore_eos=True))
        engine.step()  # the prefill and the first token
        out: list[int] = []
        start = time.perf_counter()
        while engine.has_unfinished():
            for o in engine.step():
                out += o.new_token_ids
        return time.perf_counter() - start, out

    run_llama(), run_engine()  # warm-up
    llama_s = engine_s = math.inf
    for _ in range(2):
        s, llama_tokens = run_llama()
        llama_s = min(llama_s, s)
        s, engine_tokens = run_engine()
        engine_s = min(engine_s, s)
    same = sum(a == b for a, b in zip(llama_tokens, engine_tokens))
    return {
        "llama_cpp_precision": f"{GGUF_NAME}: Q4_1 weights, Q8_0 embeddings, as shipped",
        "engine_precision": "float32, dequantised from the same Q4_1/Q8_0 weights",
        "batch": 1,
        "why_batch_1": "llama-cpp-python's Llama decodes one sequence per context",
        "threads": threads,
        "prompt_tokens": len(prompt),
        "decode_tokens": max_tokens,
        "llama_cpp_tokens_per_s": max_tokens / llama_s,
        "engine_tokens_per_s": max_tokens / engine_s,
        "engine_vs_llama_cpp": llama_s / engine_s,
        "greedy_tokens_equal_before_first_difference": next((i for i, (a, b) in enumerate(zip(llama_tokens, engine_tokens)) if a != b), same),
    }
