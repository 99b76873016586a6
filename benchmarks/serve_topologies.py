"""`pavana bench topologies`: one trace slice, replayed against serving configurations side by side.

(a) colocated against disaggregated pools at equal replica count (two colocated replicas
against one prefill and one decode replica), both with the stall-free `sarathi` policy;
(b) the `sarathi` engine policy against `prefill_first`, both colocated on two replicas.

Every configuration gets the same requests at the same times: the Azure conversation trace
(carried in pavana_data) from a fixed row, its arrivals sped up by a fixed factor, lengths
capped so that a 2-core machine can serve them. Each is deployed alone on a local Ray cluster, measured
through the OpenAI HTTP API by the open-loop client in `bench/`, and deleted before the next,
so they never compete for the CPUs. Prints a table, writes JSON, and beside the JSON a
markdown table and CDF plots (`<name>_ttft_cdf.png`, `<name>_tbt_cdf.png`, `<name>_fluidity.png`).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.common import command_line, machine_info, run_from_command_line, write_json
from benchmarks.local_serving import API_KEY, deployed, local_serve
from pavana_data import trace_path

console = Console()
CLASSES = "interactive=0.7,batch=0.3"
CONFIGS = (  # name, topology, policy
    ("colocated-sarathi", "colocated", "sarathi"),
    ("disaggregated-sarathi", "disaggregated", "sarathi"),
    ("colocated-prefill_first", "colocated", "prefill_first"),
)
COMPARISONS = (  # (a) and (b): what changes, against what
    ("disaggregated vs colocated (sarathi, 2 replicas)", "disaggregated-sarathi", "colocated-sarathi"),
    ("prefill_first vs sarathi (colocated, 2 replicas)", "colocated-prefill_first", "colocated-sarathi"),
)
HEADLINE = ("ttft_p50_s", "ttft_p99_s", "tbt_p50_s", "tbt_p99_s", "tbt_max_s", "fluidity_index", "slo_attainment", "goodput_rps", "output_tokens_per_s")


def _settings(quick: bool) -> dict[str, Any]:
    return {
        "trace": trace_path("conv").name,
        "trace_start": 1000,
        "num_requests": 60 if quick else 200,
        "rate_scale": 1.0,
        "max_prompt_tokens": 1536,
        "max_output_tokens": 24 if quick else 48,
        "warmup": 4,
        "classes": CLASSES,
        "seed": 0,
    }


def _spec(topology: str, policy: str, http_port: int, grpc_port: int):
    from cluster.spec import ClusterSpec

    one = {"min_replicas": 1, "max_replicas": 1, "initial_replicas": 1}
    two = {"min_replicas": 2, "max_replicas": 2, "initial_replicas": 2}
    pools = {"colocated": two} if topology == "colocated" else {"prefill": one, "decode": one}
    return ClusterSpec.parse({
        "topology": topology,
        "pools": pools,
        "engine": {"policy": policy, "num_threads": 1},
        "api_keys": [API_KEY],
        "telemetry_prefix": f"bench-topologies:{uuid.uuid4().hex}",
        "http_port": http_port,
        "grpc_port": grpc_port,
    })


def _run_one(name: str, spec, ports, settings: dict[str, Any], tokenizer) -> tuple[dict[str, Any], list]:
    from bench.client import run_load
    from bench.prompts import PromptFactory
    from bench.report import build_report, measure
    from bench.serve import served_model, targets_from_spec
    from bench.trace import read_azure_trace
    from bench.workload import from_trace, http_requests, parse_class_mix, plan

    with deployed(spec, name, ports) as url:
        model, max_context = served_model(url, API_KEY)
        rows = from_trace(read_azure_trace(trace_path("conv"), start=settings["trace_start"], limit=settings["num_requests"]), rate_scale=settings["rate_scale"])
        planned, clamped = plan(
            [r.arrival_s for r in rows], [(r.context_tokens, r.generated_tokens) for r in rows], class_mix=parse_class_mix(settings["classes"]),
            max_context_tokens=max_context, max_prompt_tokens=settings["max_prompt_tokens"], max_output_tokens=settings["max_output_tokens"],
            seed=settings["seed"],
        )
        requests = http_requests(planned, PromptFactory(tokenizer, seed=settings["seed"]), model=model, seed=settings["seed"])
        console.print(f"[bold]{name}[/bold]: {len(requests)} requests over {rows[-1].arrival_s:.1f} s")
        records = asyncio.run(run_load(url, requests, api_key=API_KEY, warmup=settings["warmup"]))
        workload = {**settings, "topology": spec.topology, "policy": spec.engine.policy, "clamped_requests": clamped,
                    "arrival_span_s": rows[-1].arrival_s, "mean_prompt_tokens": sum(p.prompt_tokens for p in planned) / len(planned),
                    "mean_output_tokens": sum(p.output_tokens for p in planned) / len(planned)}
        targets = targets_from_spec(spec)
        report = build_report(records, targets, workload=workload)
        return report, measure([r for r in records if not r.warmup], targets)


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b not in (None, 0) else None


def _plots(metrics: dict[str, list], base: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    written = []
    for key, label, suffix in (("ttft", "TTFT (s)", "ttft_cdf"), ("tbt", "time between tokens (s)", "tbt_cdf"), ("fluidity", "fluidity-index per request", "fluidity")):
        fig, ax = plt.subplots(figsize=(6.5, 4))
        for name, ms in metrics.items():
            if key == "ttft":
                values = [m.ttft_s for m in ms if m.ttft_s is not None]
            elif key == "tbt":
                values = [g for m in ms for g in m.tbt_s]
            else:
                values = [m.fluidity_index for m in ms]
            values = np.sort(np.asarray(values, dtype=float))
            if values.size:
                ax.step(values, np.arange(1, values.size + 1) / values.size, where="post", label=f"{name} (n={values.size})")
        if key == "tbt":
            ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("share ≤ x")
        ax.set_title(f"{label.split(' (')[0]} CDF, same trace slice")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = base.with_name(f"{base.stem}_{suffix}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(str(path))
    return written


def _markdown(result: dict[str, Any]) -> str:
    s = result["settings"]
    lines = [
        "# Serving topologies and engine policies, one trace slice",
        "",
        f"`{result['command']}` on {result['machine']['cpu_count']} CPUs, {result['machine']['date']}. Trace {s['trace']} rows "
        f"{s['trace_start']}–{s['trace_start'] + s['num_requests'] - 1}, arrivals ×{s['rate_scale']}, prompts ≤ {s['max_prompt_tokens']}, "
        f"outputs ≤ {s['max_output_tokens']} tokens, classes {s['classes']}, {s['warmup']} warm-up requests excluded from each.",
        "",
        "| configuration | n | failed | TTFT p50 / p99 (s) | TBT p50 / p99 / max (s) (gaps) | fluidity | SLO attainment | goodput (req/s) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in result["configs"].items():
        lines.append(
            f"| {name} | {r['num_requests']} | {r['num_failed']} | {r['ttft_p50_s']:.3f} / {r['ttft_p99_s']:.3f} | "
            f"{r['tbt_p50_s']:.3f} / {r['tbt_p99_s']:.3f} / {r['tbt_max_s']:.3f} ({r['tbt_count']}) | {r['fluidity_index']:.3f} | "
            f"{r['slo_attainment']:.3f} | {r['goodput_rps']:.3f} |"
        )
    lines += ["", "| comparison | TTFT p99 | TBT p99 | fluidity | SLO attainment | goodput |", "| --- | --- | --- | --- | --- | --- |"]
    for label, ratios in result["ratios"].items():
        fmt = lambda k: f"{ratios[k]:.2f}×" if ratios.get(k) is not None else "–"  # noqa: E731
        lines.append(f"| {label} | {fmt('ttft_p99_s')} | {fmt('tbt_p99_s')} | {fmt('fluidity_index')} | {fmt('slo_attainment')} | {fmt('goodput_rps')} |")
    return "\n".join(lines) + "\n"


def main(quick: bool = False, json_path: Path | None = None) -> dict[str, Any]:
    from workers.engine.default_model import ensure_default_model
    from workers.engine.tokenizer import Tokenizer

    settings = _settings(quick)
    tokenizer = Tokenizer.from_dir(ensure_default_model())
    reports: dict[str, dict[str, Any]] = {}
    metrics: dict[str, list] = {}
    started = time.perf_counter()
    with local_serve() as ports:
        for name, topology, policy in CONFIGS:
            reports[name], metrics[name] = _run_one(name, _spec(topology, policy, ports.http_port, ports.grpc_port), ports, settings, tokenizer)
    result: dict[str, Any] = {
        "benchmark": "serve_topologies",
        "quick": quick,
        "machine": machine_info(),
        "command": command_line(),
        "settings": settings,
        "wall_s": time.perf_counter() - started,
        "configs": reports,
        "ratios": {label: {k: _ratio(reports[a][k], reports[b][k]) for k in HEADLINE} for label, a, b in COMPARISONS},
    }
    table = Table(title=f"{settings['trace']} rows from {settings['trace_start']}, {settings['num_requests']} requests ({settings['warmup']} warm-up excluded)")
    for col in ("configuration", "TTFT p50/p99 (s)", "TBT p99/max (s)", "gaps", "fluidity", "SLO att.", "goodput (req/s)", "failed"):
        table.add_column(col, justify="left" if col == "configuration" else "right")
    for name, r in reports.items():
        table.add_row(name, f"{r['ttft_p50_s']:.3f} / {r['ttft_p99_s']:.3f}", f"{r['tbt_p99_s']:.3f} / {r['tbt_max_s']:.3f}", str(r["tbt_count"]),
                      f"{r['fluidity_index']:.3f}", f"{r['slo_attainment']:.3f}", f"{r['goodput_rps']:.3f}", str(r["num_failed"]))
    console.print(table)
    for label, ratios in result["ratios"].items():
        shown = ", ".join(f"{k} {v:.2f}×" for k, v in ratios.items() if v is not None and k in ("ttft_p99_s", "tbt_p99_s", "fluidity_index", "goodput_rps"))
        console.print(f"{label}: {shown}")
    if json_path is not None:
        base = Path(json_path)
        base.parent.mkdir(parents=True, exist_ok=True)
        result["plots"] = _plots(metrics, base)
        base.with_suffix(".md").write_text(_markdown(result))
    write_json(json_path, result)
    return result


if __name__ == "__main__":
    run_from_command_line(main, __doc__)
