"""`pavana sim scale`: how fast the simulator runs a big cluster.

The headline: 1,024 colocated replicas (A100, Llama-2-7B profiles) with the stage autoscaler
planning every 5 s, over the Azure code trace's hour at 8× its rate (the trace superposed on
itself, about 70,000 requests). Beside it, as before: 128 replicas at the trace's own rate, and
the whole trace 16× faster. `--quick` runs the first 600 s of each at the same fleet sizes.

Reported per point: simulated seconds per wall second, events per second, the latency the
fleet gave, and the process's peak resident memory once the point has run (getrusage; tracing
allocations would slow the run it measures). The headline point runs first, so its peak is the
process's peak up to then; its figures also sit at the top level of the JSON.
"""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.common import command_line, machine_info, write_json
from cluster.spec import ClusterSpec
from simulator.cluster import SimOptions
from simulator.cost_model import GpuCostModel
from simulator.scenario import run_scenario
from simulator.workload import TraceRequest, assign_classes, azure_trace, rescale_rate, superpose

console = Console()
HEADLINE_REPLICAS = 1024
HEADLINE_RATE = 8  # times the Azure code trace's own rate
BASELINE_REPLICAS = 128


def fleet_spec(replicas: int = BASELINE_REPLICAS) -> ClusterSpec:
    return ClusterSpec.parse({
        "topology": "colocated",
        "pools": {"colocated": {"min_replicas": replicas, "max_replicas": replicas, "initial_replicas": replicas}},
        "sites": [{"name": "dc", "max_replicas": replicas}],
        # An A100-80GB holds about 130k tokens of Llama-2-7B KV beside the weights, in blocks of 64.
        "engine": {"chunk_size": 512, "max_num_seqs": 128, "block_size": 64, "num_kv_blocks": 2048,
                   "enable_prefix_caching": False},
        "qos_classes": [{"name": "interactive", "slo": {"ttft_s": 2.0, "tbt_s": 0.2}}],
    })


def workloads(quick: bool) -> list[tuple[str, int, float, list[TraceRequest]]]:
    """(name, replicas, rate, requests) of each point, the headline first."""
    seconds = 600.0 if quick else None
    trace = azure_trace("code")
    window = [r for r in trace if seconds is None or r.arrival_s <= seconds]
    headline = [r for r in superpose(trace, HEADLINE_RATE) if seconds is None or r.arrival_s <= seconds]
    faster = rescale_rate(trace, 16.0)
    return [
        ("headline", HEADLINE_REPLICAS, float(HEADLINE_RATE), headline),
        ("own rate", BASELINE_REPLICAS, 1.0, window),
        ("16x faster", BASELINE_REPLICAS, 16.0, [r for r in faster if seconds is None or r.arrival_s <= seconds]),
    ]


def run_point(name: str, replicas: int, rate: float, trace: list[TraceRequest], cost: GpuCostModel) -> dict[str, Any]:
    trace = assign_classes(trace, {"interactive": 1.0}, 0)
    cpu = time.process_time()
    result = run_scenario(fleet_spec(replicas), trace, cost, SimOptions(max_model_len=8192 * 16), progress=True)
    cpu = time.process_time() - cpu
    sim_s = result.cluster["simulated_s"]
    return {
        "point": name, "replicas": replicas, "rate": rate, "requests": len(trace), "trace_seconds": trace[-1].arrival_s,
        "simulated_s": sim_s, "wall_s": result.wall_s, "cpu_s": cpu,
        "simulated_s_per_wall_s": sim_s / result.wall_s, "events": result.cluster["events"],
        "events_per_wall_s": result.cluster["events"] / result.wall_s,
        "peak_memory_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "ttft_p99_s": result.summary["ttft_s"]["p99"], "tbt_p99_s": result.summary["tbt_s"]["p99"],
        "slo_attainment": result.summary["slo_attainment"], "outcomes": result.summary["outcomes"],
    }


def main(quick: bool = False, json_path: Path | None = None) -> dict[str, Any]:
    cost = GpuCostModel.from_profiles("a100", "llama2-7b")
    load_before = os.getloadavg()[0]
    points = [run_point(name, replicas, rate, trace, cost) for name, replicas, rate, trace in workloads(quick)]
    head = points[0]
    out = {"benchmark": "sim_scale", "quick": quick, "replicas": head["replicas"], "requests": head["requests"],
           "simulated_s_per_wall_s": head["simulated_s_per_wall_s"], "peak_memory_mb": head["peak_memory_mb"],
           "goal": {"replicas": HEADLINE_REPLICAS, "simulated_s_per_wall_s": 100.0, "peak_memory_mb": 4096.0},
           "cost_model": cost.name, "trace": "azure:code", "points": points,
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "machine": machine_info(), "command": command_line(),
           # wall time counts other processes' turns on a shared machine; cpu_s per point does not
           "load_average_1m": {"before": load_before, "after": os.getloadavg()[0]}}
    table = Table(title=f"Simulating azure:code ({cost.name})")
    for col in ("point", "replicas", "rate ×", "requests", "wall (s)", "CPU (s)", "simulated s / wall s", "events / wall s",
                "peak MB", "TTFT p99 (s)", "TBT p99 (s)"):
        table.add_column(col, justify="right")
    for p in points:
        table.add_row(p["point"], f"{p['replicas']:,}", f"{p['rate']:g}", f"{p['requests']:,}", f"{p['wall_s']:.1f}",
                      f"{p['cpu_s']:.1f}", f"{p['simulated_s_per_wall_s']:,.0f}", f"{p['events_per_wall_s']:,.0f}",
                      f"{p['peak_memory_mb']:,.0f}", f"{p['ttft_p99_s']:.3f}", f"{p['tbt_p99_s']:.4f}")
    console.print(table)
    write_json(json_path, out)
    return out
