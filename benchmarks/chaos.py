"""`pavana bench chaos`: faults of every kind under traffic at 70% of capacity, nothing lost.

A local Ray cluster serves an E/P/D application (one vision, two prefill and two decode
replicas, each pool pinned to its size) reporting to a private `redis-server` this run starts
on a free port (never the shared one on 6379), with the reconcile actor running. Capacity is
measured first as in `pavana bench overload` (`find_capacity`: the highest probed rate at
which ≥ 99% of requests are served within `CAPACITY_SLO`, TTFT and TBT); then Poisson
traffic at `LOAD` × that rate runs greedy streams of fixed prompts (text, and some with an
image, so every pool works), while a schedule drawn from `random.Random(seed)`
(`benchmarks/chaos_schedule.py`) strikes, one at a time and each into a whole cluster: a replica of each pool killed (the busiest), the reconcile actor killed, Redis
restarted. Quick: one fault of each kind (5) in about 3 minutes of traffic; full: 20 in about
15 minutes.

Definitions (`benchmarks/chaos_traffic.py`). The client retries a 429 or 503 that carries
`Retry-After` after that delay, as a well-behaved client does, and counts the retries.
- A request *failed* when it got no 200 in the end (an HTTP error other than a retried
  429/503, a transport error), or never ended (`NEVER_ENDED_S`).
- A stream is *broken* when it ended without its final chunk or `[DONE]`, carried an error
  event, delivered other than the tokens asked for, differs from the non-streamed greedy
  answer to the same prompt computed before the first fault (so a repeated or skipped token
  shows), or hung (`STALL_S` without a chunk).
- `kv_blocks_leaked`: KV blocks not free on any live LLM replica once the traffic has
  drained (waited for, bounded), summed over replicas, each asked directly for its stats.

Goal: zero failed, zero broken, zero leaked. JSON: `requests`, `failed`, `broken_streams`,
`faults_injected`, `kv_blocks_leaked`, `faults_by_kind`, `faults` (each: kind, planned and
actual time, its target, streams in flight, seconds until whole again, the requests it touched
by outcome), `capacity_rps`, `rate_rps`, `seed`, `bad_requests`.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.common import command_line, machine_info, run_from_command_line, write_json
from benchmarks.local_serving import API_KEY, deployed, local_serve

console = Console()
LOAD = 0.7
SEED = 19
OUTPUT_TOKENS = 64
TEXT_PROMPTS, IMAGE_PROMPTS = 12, 4
# Probes long enough that a low rate still sends more requests than the probe's warm-up.
QUICK = {"faults": 5, "window_s": 180.0, "probe_s": 45.0, "refine": 1}
FULL = {"faults": 20, "window_s": 900.0, "probe_s": 60.0, "refine": 2}
POOLS = {"vision": 1, "prefill": 2, "decode": 2}
CAPACITY_SLO = (3.0, 1.0)  # TTFT, TBT seconds within which the capacity probe's requests must be served


def spec_for(ports, redis_url: str):
    from cluster.spec import ClusterSpec

    return ClusterSpec.parse({
        "pools": {pool: {"min_replicas": n, "initial_replicas": n, "max_replicas": n} for pool, n in POOLS.items()},
        "engine": {"num_threads": 1},
        # Targets that an E/P/D SmolLM2 meets on a 2-core machine at some load: the capacity
        # is the rate the cluster serves within them, whatever they are.
        "qos_classes": [{"name": "interactive", "slo": {"ttft_s": CAPACITY_SLO[0], "tbt_s": CAPACITY_SLO[1]}}],
        "api_keys": [API_KEY],
        "redis_url": redis_url,
        "telemetry_prefix": f"bench-chaos:{uuid.uuid4().hex}",
        "http_port": ports.http_port,
        "grpc_port": ports.grpc_port,
    })


def fixed_prompts(tokenizer, model: str) -> list:
    """Text prompts of the capacity probe's length, and chat prompts with an image."""
    from bench.prompts import PromptFactory, png_data_url
    from benchmarks.chaos_traffic import completion_prompt, image_prompt
    from benchmarks.overload import PROMPT_TOKENS

    factory = PromptFactory(tokenizer, seed=SEED)
    texts = [completion_prompt(i, model, factory.text(i, PROMPT_TOKENS), OUTPUT_TOKENS) for i in range(TEXT_PROMPTS)]
    images = [image_prompt(TEXT_PROMPTS + k, model, factory.text(TEXT_PROMPTS + k, PROMPT_TOKENS // 2), png_data_url(SEED + k), OUTPUT_TOKENS)
              for k in range(IMAGE_PROMPTS)]
    return texts + images


async def known_answers(url: str, prompts: list) -> list:
    from benchmarks.chaos_traffic import http_client, references

    async with http_client(url, API_KEY) as client:
        return await references(client, prompts)


def print_fault(fault: dict[str, Any]) -> None:
    whole = f"whole after {fault['whole_after_s']:.1f} s" if "whole_after_s" in fault else fault["not_whole"]
    console.print(f"fault {fault['index']} at {fault['at_s']:.1f} s: {fault['kind']} {fault.get('target', '')} "
                  f"({fault['streams_in_flight']} requests in flight); {whole}")


def print_result(result: dict[str, Any]) -> None:
    table = Table(title=f"Chaos: {result['faults_injected']} faults at {result['rate_rps']:.2f} req/s "
                        f"({LOAD:.0%} of {result['capacity_rps']:.2f}), seed {result['seed']}")
    for col in ("requests", "failed", "broken", "faults", "KV leaked", "retries"):
        table.add_column(col, justify="right", no_wrap=True)
    table.add_row(str(result["requests"]), str(result["failed"]), str(result["broken_streams"]), str(result["faults_injected"]),
                  str(result["kv_blocks_leaked"]), str(result["client_retries"]))
    console.print(table)
    faults = Table(title="Faults (touched: requests in flight from the strike until whole again)")
    for col in ("kind", "at s", "replica", "in flight", "whole s", "touched", "failed", "broken"):
        faults.add_column(col, justify="left" if col in ("kind", "replica") else "right", no_wrap=True)
    for f in result["faults"]:
        replica = str(f.get("target", "")).split("#")[-1] if "#" in str(f.get("target", "")) else "-"
        faults.add_row(f["kind"].split(":")[1], f"{f['at_s']:.0f}", replica if "not_injected" not in f else "NOT STRUCK",
                       str(f["streams_in_flight"]), f"{f['whole_after_s']:.1f}" if "whole_after_s" in f else "NOT WHOLE",
                       str(f["requests_touched"]), str(f["touched_failed"]), str(f["touched_broken"]))
    console.print(faults)
    for bad in result["bad_requests"][:10]:
        console.print(f"  request {bad['index']} ({bad['outcome']}): {bad['why']}")


def main(quick: bool = False, json_path: Path | None = None) -> dict[str, Any]:
    from benchmarks.chaos_faults import PrivateRedis
    from benchmarks.chaos_run import ChaosTarget, run_chaos
    from benchmarks.chaos_schedule import fault_kinds, fault_schedule
    from benchmarks.overload import find_capacity
    from controller.reconcile import start_reconciler, stop_reconciler
    from workers.engine.default_model import ensure_default_model
    from workers.engine.tokenizer import Tokenizer

    mode = QUICK if quick else FULL
    tokenizer = Tokenizer.from_dir(ensure_default_model())
    started = time.perf_counter()
    load_before = os.getloadavg()
    redis = PrivateRedis.start_new()
    try:
        with local_serve(num_cpus=8) as ports:
            spec = spec_for(ports, redis.url)
            with deployed(spec, "chaos", ports) as url:
                start_reconciler(spec, app_name="chaos", interval_s=2.0)
                try:
                    capacity, _, probes = find_capacity(url, tokenizer, spec, mode["probe_s"], start=0.2, refine=mode["refine"])
                    rate = LOAD * capacity
                    prompts = asyncio.run(known_answers(url, fixed_prompts(tokenizer, spec.model.name)))
                    kinds = fault_kinds(list(spec.pools))
                    schedule = fault_schedule(SEED, kinds, mode["faults"], mode["window_s"], lead_s=10.0, tail_s=10.0)
                    console.print(f"capacity {capacity:.2f} req/s; chaos at {rate:.2f} req/s: {len(schedule)} faults over "
                                  f"{mode['window_s']:.0f} s ({', '.join(f.kind for f in schedule)})")
                    target = ChaosTarget("chaos", spec, url, API_KEY, redis)
                    outcome = asyncio.run(run_chaos(target, prompts, rate_rps=rate, schedule=schedule, seed=SEED, on_fault=print_fault))
                finally:
                    stop_reconciler()
    finally:
        redis.stop()
    result = {
        "benchmark": "chaos",
        "quick": quick,
        "machine": machine_info(),
        "command": command_line(),
        "wall_s": time.perf_counter() - started,
        # Other work on the machine slows replicas' restarts and the traffic alike.
        "load_average_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "goal": "zero failed, zero broken streams, zero KV blocks leaked",
        "goal_met": outcome["failed"] == 0 and outcome["broken_streams"] == 0 and outcome["kv_blocks_leaked"] == 0,
        **{k: outcome[k] for k in ("requests", "failed", "broken_streams", "faults_injected", "kv_blocks_leaked")},
        "capacity_rps": capacity,
        "capacity_slo_s": {"ttft": CAPACITY_SLO[0], "tbt": CAPACITY_SLO[1]},
        "load": LOAD,
        "capacity_probes": probes,
        "pools": POOLS,
        "prompts": {"text": TEXT_PROMPTS, "image": IMAGE_PROMPTS, "output_tokens": OUTPUT_TOKENS},
        "window_s": mode["window_s"],
        **{k: v for k, v in outcome.items() if k not in ("requests", "failed", "broken_streams", "faults_injected", "kv_blocks_leaked")},
    }
    print_result(result)
    write_json(json_path, result)
    return result


if __name__ == "__main__":
    run_from_command_line(main, __doc__)
