"""`pavana profile`: time Pavana's real engine over a grid of batch shapes on this machine, so
the simulator's fitted cost model speaks for this hardware and this model.

Each shape is built directly in a real `LLMEngine`: sequences with their KV blocks allocated
by its block manager (decodes at a given context, one prompt chunk at a given start), run as
one `ScheduledBatch` through the engine's model runner — the forward pass `LLMEngine.step`
runs. Cache contents are zeros: the time of a step does not depend on the values.
"""

from __future__ import annotations

import csv
import itertools
import time
from pathlib import Path

import numpy as np

from simulator.cost_model import PROFILE_COLUMNS, BatchShape, shape_of

# Prompt chunks at two starts, so that attended context does not move in step with prefill tokens.
QUICK_GRID = dict(prefill=(0, 64, 256), start=(0, 256), decodes=(0, 8), context=(64, 512))
MEDIUM_GRID = dict(prefill=(0, 64, 256, 512), start=(0, 256), decodes=(0, 1, 4, 16), context=(64, 512))
FULL_GRID = dict(prefill=(0, 16, 64, 128, 256, 512), start=(0, 384, 1024), decodes=(0, 1, 4, 16, 32), context=(32, 256, 768))


def make_engine(model_path: str | Path | None = None, *, num_threads: int = 1, num_kv_blocks: int = 4096, chunk_size: int = 256):
    from workers.engine.config import EngineConfig
    from workers.engine.llm_engine import LLMEngine

    config = EngineConfig(num_kv_blocks=num_kv_blocks, chunk_size=chunk_size, max_num_seqs=64, num_threads=num_threads,
                          enable_prefix_caching=False)
    return LLMEngine(model_path, config)


def kv_bytes_per_token(engine) -> float:
    mc = engine.model_config
    itemsize = np.dtype(engine.config.dtype.replace("bfloat16", "float16")).itemsize
    return 2.0 * mc.num_layers * mc.num_kv_heads * mc.head_dim * itemsize


def time_shape(engine, prefill: int, start: int, decodes: int, context: int, repeats: int, rng: np.random.Generator,
               statistic: str = "min"):
    """Seconds of one forward pass of this shape, and the shape as the cost model sees it.

    `min` of the repeats is the engine's own speed (on a shared machine anything above it is
    other processes' time); `median` is the speed the machine gives it now, contention
    included, which is what a replay right afterwards will meet."""
    from workers.engine.sampling import SamplingParams
    from workers.engine.scheduler import ScheduledBatch, ScheduledChunk
    from workers.engine.sequence import Sequence, SequenceStatus

    bm, vocab = engine.block_manager, engine.model_config.vocab_size
    params = SamplingParams(max_tokens=1, ignore_eos=True)
    seqs, chunks = [], []
    for i in range(decodes):
        # Contexts spread from a quarter to 1.75 times `context`, as running requests' are: the
        # runner groups decodes by context length, and that grouping is part of a step's cost.
        ctx = context if decodes == 1 else max(8, int(context * (0.25 + 1.5 * i / (decodes - 1))))
        seq = Sequence(f"d{i}", rng.integers(4, vocab, ctx + 1).tolist(), params, i, num_prompt_tokens=ctx,
                       num_computed_tokens=ctx, status=SequenceStatus.RUNNING)
        seqs.append(seq)
        chunks.append((seq, 1))
    if prefill:
        seq = Sequence("p", rng.integers(4, vocab, start + prefill).tolist(), params, decodes, num_computed_tokens=start,
                       status=SequenceStatus.RUNNING)
        seqs.append(seq)
        chunks.append((seq, prefill))
    try:
        for seq, n in chunks:
            if not bm.allocate(seq, n):
                raise RuntimeError(f"profile: KV cache too small for {decodes} decodes at {context} tokens")
        batch = ScheduledBatch(tuple(ScheduledChunk.of(seq, n) for seq, n in chunks))
        times = []
        for _ in range(repeats + 1):  # the first run warms caches and allocators
            t0 = time.perf_counter()
            engine.runner.execute(batch)
            times.append(time.perf_counter() - t0)
        return shape_of(batch), (min(times[1:]) if statistic == "min" else float(np.median(times[1:])))
    finally:
        for seq in seqs:
            bm.free(seq)


def drive(engine, requests, prompts: dict[str, list[int]], on_step) -> None:
    """Add each request (`TraceRequest`) when the wall clock reaches its arrival time and step
    the engine until every one has finished; after each step call `on_step(outputs, started_s,
    ended_s)`, times in seconds from the start."""
    from workers.engine.sampling import SamplingParams

    pending = sorted(requests, key=lambda r: r.arrival_s)
    t0 = time.perf_counter()
    i = 0
    while i < len(pending) or engine.has_unfinished():
        now = time.perf_counter() - t0
        while i < len(pending) and pending[i].arrival_s <= now:
            r = pending[i]
            engine.add_request(r.request_id, prompts[r.request_id], SamplingParams(max_tokens=r.output_tokens, ignore_eos=True))
            i += 1
        if not engine.has_unfinished():
            time.sleep(max(0.0, pending[i].arrival_s - (time.perf_counter() - t0)))
            continue
        started = time.perf_counter() - t0
        outputs = engine.step()
        on_step(outputs, started, time.perf_counter() - t0)


def random_prompts(engine, requests, seed: int) -> dict[str, list[int]]:
    rng = np.random.default_rng(seed)
    vocab = engine.model_config.vocab_size
    return {r.request_id: rng.integers(4, vocab, r.prompt_tokens).tolist() for r in requests}


def time_steps(engine, requests, *, seed: int = 3) -> tuple[list[BatchShape], list[float]]:
    """Real `LLMEngine.step` calls over a workload (`TraceRequest`s, added at their arrival
    times): each step's batch shape and wall time, with everything a step does besides the
    forward pass — scheduling, sampling, detokenizing, emitting outputs — which the grid of
    forward passes alone leaves out. The engine's scheduler is wrapped only to read each
    step's batch."""
    batches: list = []
    schedule = engine.scheduler.schedule

    def recording():
        batch = schedule()
        batches.append(batch)
        return batch

    shapes, seconds = [], []

    def on_step(outputs, started_s: float, ended_s: float) -> None:
        if batches and batches[-1]:
            shapes.append(shape_of(batches[-1]))
            seconds.append(ended_s - started_s)

    engine.scheduler.schedule = recording
    try:
        drive(engine, requests, random_prompts(engine, requests, seed), on_step)
    finally:
        del engine.scheduler.schedule  # the class's own method again
    return shapes, seconds


def profile(model_path: str | Path | None = None, *, quick: bool = False, repeats: int | None = None, num_threads: int = 1,
            seed: int = 0, progress=None) -> tuple[list[BatchShape], list[float], dict[str, float]]:
    engine = make_engine(model_path, num_threads=num_threads)
    grid = QUICK_GRID if quick else FULL_GRID
    repeats = repeats or (3 if quick else 5)
    rng = np.random.default_rng(seed)
    combos = [c for c in itertools.product(grid["prefill"], grid["start"], grid["decodes"], grid["context"])
              if (c[0] or c[2]) and not (c[0] == 0 and c[1] > 0)
              and not (c[2] == 0 and c[3] != grid["context"][0])]  # without decodes the context is moot
    shapes, seconds = [], []
    for i, (p, s, d, c) in enumerate(combos):
        shape, t = time_shape(engine, p, s, d, c, repeats, rng)
        shapes.append(shape)
        seconds.append(t)
        if progress:
            progress(i + 1, len(combos))
    meta = {"kv_bytes_per_token": kv_bytes_per_token(engine), "num_threads": float(num_threads),
            "hidden_size": float(engine.model_config.hidden_size), "num_layers": float(engine.model_config.num_layers)}
    return shapes, seconds, meta


def write_profile_csv(path: str | Path, shapes: list[BatchShape], seconds: list[float], meta: dict[str, float]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        f.write("# " + " ".join(f"{k}={v:g}" for k, v in meta.items()) + "\n")
        w = csv.writer(f)
        w.writerow(PROFILE_COLUMNS)
        for s, t in zip(shapes, seconds):
            w.writerow([s.prefill_tokens, s.decode_tokens, f"{s.prefill_attended:g}", f"{s.decode_context:g}", s.num_seqs, f"{t:.6g}"])
    return path
