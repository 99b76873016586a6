"""One simulated scenario end to end: a cluster spec, a workload, a cost model and options in;
the cluster run with a progress bar over simulated time; a summary, per-site accounting and
plots out. The command line and the experiments all go through `run_scenario`."""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cluster.spec import ClusterSpec
from simulator.cluster import SimCluster, SimOptions
from simulator.cost_model import CPU_NETWORK, CostModel, GpuCostModel, Network, load_cost_model
from simulator.metrics import cluster_report, plot_run, summarize
from simulator.workload import TraceRequest, WorkloadError, azure_trace, load_trace


@dataclass
class ScenarioResult:
    summary: dict[str, Any]
    cluster: dict[str, Any]
    wall_s: float
    peak_memory_mb: float | None
    sim: SimCluster

    def to_dict(self) -> dict[str, Any]:
        return {**self.summary, "cluster": self.cluster, "wall_s": self.wall_s, "peak_memory_mb": self.peak_memory_mb,
                "simulated_s_per_wall_s": self.cluster["simulated_s"] / self.wall_s if self.wall_s else None}


def read_workload(text: str, *, duration_s: float | None = None, limit: int | None = None) -> list[TraceRequest]:
    """'azure:code', 'azure:conv', or a path to an Azure- or BurstGPT-format CSV."""
    if text.startswith("azure:"):
        return azure_trace(text.split(":", 1)[1], duration_s=duration_s, limit=limit)
    if not Path(text).is_file():
        raise WorkloadError(f"trace: no file at {text} (or name one Pavana carries: azure:code, azure:conv)")
    return load_trace(text, duration_s=duration_s, limit=limit)


def network_for(cost: CostModel) -> Network:
    if isinstance(cost, GpuCostModel):
        return Network.from_profile(cost.gpu.name)
    return CPU_NETWORK


def options_for(cost: CostModel, options: SimOptions) -> SimOptions:
    """Tokens per image follow the model: LLaVA-1.5's 576 on GPU profiles, the bundled model's 16."""
    tokens = cost.tokens_per_image if isinstance(cost, GpuCostModel) else 16
    return replace(options, tokens_per_image=tokens)


def run_scenario(
    spec: ClusterSpec,
    trace: Sequence[TraceRequest],
    cost: CostModel | str,
    options: SimOptions = SimOptions(),
    *,
    progress: bool = False,
    measure_memory: bool = False,
    plot: Path | None = None,
    title: str = "",
    drain_s: float = 900.0,
) -> ScenarioResult:
    cost = load_cost_model(cost) if isinstance(cost, str) else cost
    options = options_for(cost, options)
    if measure_memory:
        tracemalloc.start()
    started = time.perf_counter()
    sim = SimCluster(spec, cost, network_for(cost), options)
    end = (trace[-1].arrival_s if trace else 0.0) + drain_s
    if progress:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(TextColumn("simulating"), BarColumn(), TextColumn("{task.completed:,.0f} / {task.total:,.0f} s simulated"),
                      TimeElapsedColumn(), transient=True) as bar:
            task = bar.add_task("sim", total=trace[-1].arrival_s if trace else 1.0)
            requests = sim.run(trace, drain_s=drain_s, on_advance=lambda t: bar.update(task, completed=min(t, end)))
    else:
        requests = sim.run(trace, drain_s=drain_s)
    wall = time.perf_counter() - started
    peak = None
    if measure_memory:
        peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    duration = trace[-1].arrival_s if trace else 0.0
    summary = summarize(requests, spec, duration_s=duration or None)
    report = cluster_report(sim)
    if plot is not None:
        plot_run(requests, sim.samples, list(sim.sites), Path(plot), title)
    return ScenarioResult(summary, report, wall, peak, sim)


def check_no_leaks(sim: SimCluster) -> list[str]:
    """Replicas still holding KV blocks or requests after the run (should be none)."""
    problems = []
    for r in sim.all_replicas():
        bm = getattr(r, "block_manager", None)
        if bm is not None and bm.num_free_blocks != bm.num_blocks:
            problems.append(f"{r.replica_id}: {bm.num_blocks - bm.num_free_blocks} blocks still held")
        if r.num_requests:
            problems.append(f"{r.replica_id}: {r.num_requests} requests still held")
    return problems
