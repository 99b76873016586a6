"""`pavana sim fidelity`: how close the simulator comes to the real engine on this machine.

The same trace slice (the Azure conversation trace's first seconds, sped up to about six
requests per second, prompts and outputs capped to fit the bundled model) is replayed twice:
- real: one `LLMEngine` driven in-process, each request added when the wall clock reaches its
  trace time, every token stamped by the wall clock as `step` returns it;
- simulated: one colocated replica with the same engine settings and a cost model fitted, just
  before, to profiles of that same engine (`simulator.profile`): forward passes over a grid of
  batch shapes, and whole engine steps over a calibration workload from the other Azure
  trace (code), so that what a step costs beyond its forward pass is in the model too.
Reported: the relative errors of TTFT and TBT at the median and P99. The machine is shared, so
the profile takes each shape's median of five runs (the speed the machine gives the engine
now, contention included) right before the replay; run it twice before trusting a figure.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from bench.common import command_line, machine_info, percentile, write_json
from cluster.spec import ClusterSpec
from simulator.cluster import SimCluster, SimOptions
from simulator.cost_model import CPU_NETWORK, LinearCostModel
from simulator.profile import FULL_GRID, MEDIUM_GRID, drive, kv_bytes_per_token, make_engine, random_prompts, time_shape, time_steps
from simulator.workload import TraceRequest, azure_trace, rescale_rate

console = Console()
CHUNK, MAX_SEQS, KV_BLOCKS = 256, 64, 4096


def trace_slice(seconds: float, max_prompt: int, max_output: int, speedup: float) -> list[TraceRequest]:
    """The first `seconds` of the trace, arriving `speedup` times faster: loaded enough that
    prompts regularly share iterations with running decodes, as they do in service."""
    return [replace(r, prompt_tokens=min(r.prompt_tokens, max_prompt), output_tokens=min(r.output_tokens, max_output))
            for r in rescale_rate(azure_trace("conv", duration_s=seconds), speedup)]


def calibration_workload(seconds: float, max_prompt: int, max_output: int, speedup: float) -> list[TraceRequest]:
    """Requests to calibrate on that are not the replayed ones: the Azure *code* trace's first
    seconds, capped and sped up like the replay."""
    return [replace(r, request_id=f"calibration-{r.request_id}", prompt_tokens=min(r.prompt_tokens, max_prompt),
                    output_tokens=min(r.output_tokens, max_output))
            for r in rescale_rate(azure_trace("code", duration_s=seconds), speedup)]


def fit_on(engine, quick: bool, calibration: list[TraceRequest] = ()) -> LinearCostModel:
    """Forward passes over a grid of shapes, plus whole engine steps over a calibration
    workload (`time_steps`), in one least-squares fit."""
    grid = MEDIUM_GRID if quick else FULL_GRID
    rng = np.random.default_rng(0)
    shapes, seconds = [], []
    for p, s, d, c in itertools.product(grid["prefill"], grid["start"], grid["decodes"], grid["context"]):
        if not (p or d) or (p == 0 and s) or (d == 0 and c != grid["context"][0]):
            continue
        shape, t = time_shape(engine, p, s, d, c, 5, rng, statistic="median")
        shapes.append(shape)
        seconds.append(t)
    if calibration:
        step_shapes, step_seconds = time_steps(engine, calibration)
        shapes += step_shapes
        seconds += step_seconds
    return LinearCostModel.fit(shapes, seconds, kv_bytes_per_token=kv_bytes_per_token(engine))


def replay_real(engine, requests: list[TraceRequest]) -> dict[str, tuple[float, list[float]]]:
    """Per request: TTFT and its gaps between tokens, by wall clock as each step returns."""
    times: dict[str, list[float]] = {r.request_id: [] for r in requests}

    def on_step(outputs, started_s: float, ended_s: float) -> None:
        for out in outputs:
            times[out.request_id].append(ended_s)

    drive(engine, requests, random_prompts(engine, requests, seed=1), on_step)
    arrival = {r.request_id: r.arrival_s for r in requests}
    return {rid: (ts[0] - arrival[rid], list(np.diff(ts))) for rid, ts in times.items() if ts}


def replay_sim(requests: list[TraceRequest], cost: LinearCostModel, max_model_len: int) -> dict[str, tuple[float, list[float]]]:
    spec = ClusterSpec.parse({
        "topology": "colocated",
        "pools": {"colocated": {"min_replicas": 1, "max_replicas": 1, "initial_replicas": 1}},
        "engine": {"chunk_size": CHUNK, "max_num_seqs": MAX_SEQS, "num_kv_blocks": KV_BLOCKS, "enable_prefix_caching": False,
                   "tbt_budget": False},  # as the engine replayed in-process, which keeps its chunk size
    })
    sim = SimCluster(spec, cost, CPU_NETWORK, SimOptions(autoscale=False, max_model_len=max_model_len))
    done = sim.run(requests)
    return {r.request_id: (r.ttft_s, list(r.gaps)) for r in done if r.outcome == "ok"}


def contention(engine, runs: int = 30) -> float:
    """How busy the machine is: the median over the fastest of 30 runs of one small batch
    (1.0 on a quiet machine; 3 means the engine got a third of a core)."""
    rng = np.random.default_rng(2)
    times = [time_shape(engine, 0, 0, 4, 128, 1, rng)[1] for _ in range(runs)]
    return float(np.median(times) / min(times))


def errors(real: dict, sim: dict) -> dict[str, Any]:
    ttft_real = [v[0] for v in real.values()]
    ttft_sim = [v[0] for v in sim.values()]
    tbt_real = [g for v in real.values() for g in v[1]]
    tbt_sim = [g for v in sim.values() for g in v[1]]
    out: dict[str, Any] = {}
    for name, a, b in (("ttft", ttft_real, ttft_sim), ("tbt", tbt_real, tbt_sim)):
        for q in (50, 99):
            r, s = percentile(a, q), percentile(b, q)
            out[f"{name}_p{q}_real_s"] = r
            out[f"{name}_p{q}_sim_s"] = s
            out[f"{name}_p{q}_error"] = abs(s - r) / r if r else None
    return out


def main(quick: bool = False, json_path: Path | None = None) -> dict[str, Any]:
    # About 6 requests/s either way: loaded, not saturated (a saturated replica's queue turns
    # small per-step errors into large TTFT errors).
    seconds, speedup, max_prompt, max_output = (40.0, 4.0, 512, 32) if quick else (120.0, 2.0, 512, 48)
    requests = trace_slice(seconds, max_prompt, max_output, speedup)
    engine = make_engine(num_threads=1, num_kv_blocks=KV_BLOCKS, chunk_size=CHUNK)
    fit_started = time.perf_counter()
    grid_only = fit_on(engine, quick)
    cost = fit_on(engine, quick, calibration_workload(seconds / 2, max_prompt, max_output, speedup))
    fit_s = time.perf_counter() - fit_started
    before = contention(engine)
    real = replay_real(engine, requests)
    after = contention(engine)
    result = errors(real, replay_sim(requests, cost, engine.max_model_len))
    # The same replay against a fit on the forward-pass grid alone, side by side: what the
    # whole-step calibration adds.
    baseline = errors(real, replay_sim(requests, grid_only, engine.max_model_len))
    result.update(benchmark="sim_fidelity", quick=quick, machine=machine_info(), command=command_line(),
                  requests=len(requests), trace="azure:conv", trace_seconds=seconds, speedup=speedup, max_prompt_tokens=max_prompt,
                  max_output_tokens=max_output, cost_model=cost.to_dict(), profile_seconds=fit_s,
                  grid_only={"cost_model": grid_only.to_dict(), **baseline},
                  contention_before=before, contention_after=after, engine={"chunk_size": CHUNK, "max_num_seqs": MAX_SEQS, "num_kv_blocks": KV_BLOCKS, "threads": 1})
    table = Table(title=f"Simulator against the real engine: {len(requests)} requests of azure:conv "
                        f"({seconds:g} s at {speedup:g}×)")
    for col in ("measure", "real (s)", "simulated (s)", "relative error", "grid-only fit: error"):
        table.add_column(col, justify="left" if col == "measure" else "right")
    for name in ("ttft_p50", "ttft_p99", "tbt_p50", "tbt_p99"):
        err, base = result[f"{name}_error"], baseline[f"{name}_error"]
        table.add_row(name.replace("_", " ").upper(), f"{result[f'{name}_real_s']:.4f}", f"{result[f'{name}_sim_s']:.4f}",
                      f"{err:.1%}" if err is not None else "n/a", f"{base:.1%}" if base is not None else "n/a")
    console.print(table)
    console.print(f"machine contention (median / fastest of one small batch): {before:.2f} before the real replay, "
                  f"{after:.2f} after")
    write_json(json_path, result)
    return result
