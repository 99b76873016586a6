"""ModServe's comparison, in the simulator: stage-disaggregated pools (vision, prefill, decode)
sized by Pavana's stage-aware autoscaler against one monolithic colocated pool, at the same
number of GPUs, on bursty multimodal traffic.

- GPUs: H100s serving a LLaVA-style 7B model — Llama-2-7B operator profiles for the language
  model, 576 tokens per image, and a stated encode cost per image (`cost_model.GPUS`).
- Traffic: gamma-burst arrivals (coefficient of variation 3), half the requests with images,
  image counts heavy-tailed (1 to 16), prompt and output lengths from the Azure conversation
  trace. The same requests go to both deployments.
- Disaggregated: the site caps the pools at `gpus` replicas together (`fit_to_power` sheds
  over the cap), and the autoscaler moves GPUs between stages as the load shifts; new replicas
  start cold. Monolithic: `gpus` colocated replicas, each running its requests' image
  encoding inside its own iterations, so an image burst stalls decodes.
Goodput is requests within both the TTFT and P99 TBT targets per second, over the requests
arriving after a warm-up; the headline is the ratio of the best goodput each deployment
reaches over the rates tried.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.common import command_line, machine_info, write_json
from cluster.spec import ClusterSpec
from simulator.cluster import SimOptions
from simulator.cost_model import GpuCostModel
from simulator.experiments import plot_path
from simulator.metrics import summarize
from simulator.scenario import run_scenario
from simulator.workload import assign_classes, attach_images, azure_trace, gamma_arrivals, synthetic

console = Console()
MAX_MODEL_LEN = 16384
WARMUP_S = 120.0  # traffic before this is not measured: pools start from the spec's sizes, not warm
SLO = {"ttft_s": 2.0, "tbt_s": 0.15}


def specs(gpus: int) -> dict[str, ClusterSpec]:
    engine = {"chunk_size": 512, "max_num_seqs": 128, "block_size": 32, "num_kv_blocks": 4096, "enable_prefix_caching": False}
    classes = [{"name": "interactive", "slo": SLO}]
    site = [{"name": "dc", "max_replicas": gpus}]
    third = max(1, gpus // 3)
    disaggregated = ClusterSpec.parse({
        "topology": "disaggregated", "engine": engine, "qos_classes": classes, "sites": site,
        "pools": {"vision": {"min_replicas": 1, "max_replicas": gpus, "initial_replicas": max(1, gpus - 2 * third)},
                  "prefill": {"min_replicas": 1, "max_replicas": gpus, "initial_replicas": third},
                  "decode": {"min_replicas": 1, "max_replicas": gpus, "initial_replicas": third}},
    })
    monolithic = ClusterSpec.parse({
        "topology": "colocated", "engine": engine, "qos_classes": classes, "sites": site,
        "pools": {"colocated": {"min_replicas": gpus, "max_replicas": gpus, "initial_replicas": gpus}},
    })
    return {"disaggregated": disaggregated, "monolithic": monolithic}


def workload(rate: float, seconds: float, seed: int = 0):
    lengths = [r for r in azure_trace("conv") if r.prompt_tokens + r.output_tokens <= 4096]
    reqs = synthetic(gamma_arrivals(rate, seconds, cv=3.0, seed=seed), lengths, seed)
    return assign_classes(attach_images(reqs, 0.5, None, seed), {"interactive": 1.0}, seed)


def main(quick: bool = False, json_path: Path | None = None) -> dict[str, Any]:
    cost = GpuCostModel.from_profiles("h100", "llama2-7b")
    gpus = 8 if quick else 16
    rates = (6.0, 12.0, 24.0) if quick else (6.0, 12.0, 24.0, 36.0, 48.0)
    seconds = 240.0 if quick else 600.0
    per_token = cost.linear_time(512) / 512  # prefill seconds per token in a full chunk
    options = SimOptions(cold_start_s=30.0, max_model_len=MAX_MODEL_LEN, autoscaler_overrides={
        "encode_s_per_image": cost.gpu.encode_s_per_image, "prefill_tokens_per_s": 1.0 / per_token,
        "cooldown_s": 60.0, "request_window_s": 30.0})
    rows = []
    runs = {}
    for rate in rates:
        trace = workload(rate, WARMUP_S + seconds)
        for name, spec in specs(gpus).items():
            result = run_scenario(spec, trace, cost, options, drain_s=600.0)
            measured = [r for r in result.sim.requests if r.arrival_s >= WARMUP_S]
            s = summarize(measured, spec, duration_s=seconds)
            rows.append({"deployment": name, "rate": rate, "requests": len(measured), "goodput_rps": s["goodput_rps"],
                         "slo_attainment": s["slo_attainment"], "ttft_p99_s": s["ttft_s"]["p99"], "tbt_p99_s": s["tbt_s"]["p99"],
                         "gpu_seconds": sum(result.cluster["replica_seconds"].values()), "outcomes": s["outcomes"],
                         "scaling_decisions": result.cluster["scaling_decisions"],
                         "images": sum(r.trace.num_images for r in measured)})
            runs[(name, rate)] = result
    best = {name: max(r["goodput_rps"] for r in rows if r["deployment"] == name) for name in ("disaggregated", "monolithic")}
    ratio = best["disaggregated"] / best["monolithic"] if best["monolithic"] else None
    out = {"experiment": "modserve", "quick": quick, "gpus": gpus, "cost_model": cost.describe(), "slo": SLO,
           "arrivals": "gamma cv 3", "image_share": 0.5, "seconds_per_rate": seconds, "warmup_s": WARMUP_S, "rows": rows,
           "best_goodput_rps": best, "ratio": ratio,
           "headline": "best goodput, stage-disaggregated with the autoscaler / monolithic colocated, equal GPUs",
           "machine": machine_info(), "command": command_line()}
    table = Table(title=f"{gpus} H100s, bursty multimodal traffic ({seconds:g} s per rate)")
    for col in ("rate (req/s)", "deployment", "SLO attainment", "goodput (req/s)", "TTFT p99 (s)", "TBT p99 (s)", "GPU-s"):
        table.add_column(col, justify="left" if col == "deployment" else "right")
    for r in rows:
        table.add_row(f"{r['rate']:g}", r["deployment"], f"{r['slo_attainment']:.1%}", f"{r['goodput_rps']:.2f}",
                      f"{r['ttft_p99_s'] or 0:.2f}", f"{r['tbt_p99_s'] or 0:.3f}", f"{r['gpu_seconds']:,.0f}")
    table.add_row("[bold]best[/bold]", "disaggregated / monolithic", "", f"[bold]{ratio:.2f}×[/bold]" if ratio else "n/a", "", "", "")
    console.print(table)
    top = rates[-1]
    _plot(runs, top, plot_path(json_path, "sim_modserve"))
    write_json(json_path, out)
    return out


def _plot(runs, rate: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(2, 1, figsize=(9, 7))
    dis = runs[("disaggregated", rate)].sim
    t = [s["t"] / 60 for s in dis.samples]
    for pool in ("vision", "prefill", "decode"):
        a.plot(t, [s["dc"]["replicas"].get(pool, 0) for s in dis.samples], label=f"{pool} replicas")
    a.set_xlabel("minutes")
    a.set_ylabel("replicas (disaggregated)")
    a.set_title(f"Stage pools under bursty multimodal traffic at {rate:g} req/s")
    a.legend()
    import numpy as np

    for name in ("disaggregated", "monolithic"):
        ok = [r.ttft_s for r in runs[(name, rate)].sim.requests if r.outcome == "ok"]
        v = np.sort(ok)
        b.plot(v, np.arange(1, len(v) + 1) / max(1, len(v)), label=name)
    b.axvline(SLO["ttft_s"], color="grey", linestyle=":")
    b.set_xscale("log")
    b.set_xlabel("TTFT (s)")
    b.set_ylabel("share of requests")
    b.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
