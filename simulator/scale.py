"""`pavana sim scale`: how fast the simulator runs a big cluster — one hour of the Azure code
trace on 128 colocated replicas (A100, Llama-2-7B profiles) with the stage autoscaler running
every 5 s, at the trace's own rate, and the whole trace 16× faster (a fleet that is busy).

Reported: simulated seconds per wall second, events per second, and the process's peak
resident memory (getrusage; tracing allocations would slow the run it measures).
"""

from __future__ import annotations

import resource
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.common import command_line, machine_info, write_json
from cluster.spec import ClusterSpec
from simulator.cluster import SimOptions
from simulator.cost_model import GpuCostModel
from simulator.scenario import run_scenario
from simulator.workload import assign_classes, azure_trace, rescale_rate

console = Console()
REPLICAS = 128


def fleet_spec(replicas: int = REPLICAS) -> ClusterSpec:
    return ClusterSpec.parse({
        "topology": "colocated",
        "pools": {"colocated": {"min_replicas": replicas, "max_replicas": replicas, "initial_replicas": replicas}},
        "sites": [{"name": "dc", "max_replicas": replicas}],
        # An A100-80GB holds about 130k tokens of Llama-2-7B KV beside the weights; in blocks of
        # 64 tokens, since building a block manager costs one object per block.
        "engine": {"chunk_size": 512, "max_num_seqs": 128, "block_size": 64, "num_kv_blocks": 2048,
                   "enable_prefix_caching": False},
        "qos_classes": [{"name": "interactive", "slo": {"ttft_s": 2.0, "tbt_s": 0.2}}],
    })


def main(quick: bool = False, json_path: Path | None = None) -> dict[str, Any]:
    seconds = 600.0 if quick else 3600.0
    cost = GpuCostModel.from_profiles("a100", "llama2-7b")
    spec = fleet_spec()
    points = []
    for rate in (1.0, 16.0):
        trace = azure_trace("code", duration_s=seconds) if rate == 1.0 else azure_trace("code")
        trace = assign_classes(rescale_rate(trace, rate), {"interactive": 1.0}, 0)
        result = run_scenario(spec, trace, cost, SimOptions(max_model_len=8192 * 16), progress=True)
        sim_s = result.cluster["simulated_s"]
        points.append({
            "rate": rate, "requests": len(trace), "trace_seconds": trace[-1].arrival_s * rate, "simulated_s": sim_s, "wall_s": result.wall_s,
            "simulated_s_per_wall_s": sim_s / result.wall_s, "events": result.cluster["events"],
            "events_per_wall_s": result.cluster["events"] / result.wall_s,
            "ttft_p99_s": result.summary["ttft_s"]["p99"], "tbt_p99_s": result.summary["tbt_s"]["p99"],
            "slo_attainment": result.summary["slo_attainment"],
        })
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = {"benchmark": "sim_scale", "quick": quick, "replicas": REPLICAS, "cost_model": cost.name, "trace": "azure:code",
           "points": points, "peak_rss_mb": peak_mb, "machine": machine_info(), "command": command_line()}
    table = Table(title=f"Simulating azure:code on {REPLICAS} replicas ({cost.name})")
    for col in ("rate ×", "trace h", "requests", "wall (s)", "simulated s / wall s", "events / wall s", "TTFT p99 (s)", "TBT p99 (s)"):
        table.add_column(col, justify="right")
    for p in points:
        table.add_row(f"{p['rate']:g}", f"{p['trace_seconds'] / 3600:.2f}", f"{p['requests']:,}", f"{p['wall_s']:.1f}", f"{p['simulated_s_per_wall_s']:,.0f}",
                      f"{p['events_per_wall_s']:,.0f}", f"{p['ttft_p99_s']:.3f}", f"{p['tbt_p99_s']:.4f}")
    console.print(table)
    console.print(f"peak resident memory of the process: {peak_mb:,.0f} MB")
    write_json(json_path, out)
    return out
