"""Heron's comparison, in the simulator: power-aware against power-oblivious serving across
three wind-powered sites over days of GEFCom2012 wind (farms 1–3), with requests replayed
request by request on A100 Llama-2-7B replicas (Vidur's operator profiles).

- Sites: from 2009-09-30 00:00, each with 6 kW of rated wind, room for 8 replicas, two power modes (400 W full clock,
  250 W capped at 70% throughput), 10/20/30 ms from the users. Power is physical: a site whose
  replicas draw more than its wind gives rides on its battery for a few seconds, then
  replicas go dark and their requests are lost.
- Time: the wind is replayed `speed` times faster than requests (a trace hour passes in
  3600/speed simulated seconds) so that days of wind fit in a run; cold starts and the
  battery's ride-through are shortened in proportion and stated.
- Power-aware (Pavana): the live controller's round (`autoscaler.round.plan_round`) every
  twelfth of a trace hour: the stage autoscaler sizes each site's pool (0 to 8 replicas),
  `fit_to_power` caps it by the power now, and every trace hour (or at once on a power swing)
  the power planner re-divides each class's traffic between the sites by its LP and sets each
  site's mode mix (the clock knob); per request the site router (`choose_site`) follows the
  shares and skips a site whose power has fallen below its draw.
- Power-aware, fixed size (an ablation): the same round with autoscaling off: 4 replicas per
  site, fitted under power, routed and clocked by the plan.
- Power-oblivious: 4 replicas per site, at full clock, each request to the least-loaded
  replica anywhere.
Goodput: requests within their class's TTFT and P99 TBT targets per second of the run, at two\noffered loads; the headline is the higher one, where placement binds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from bench.common import command_line, machine_info, write_json
from cluster.spec import ClusterSpec
from simulator.cluster import SimOptions
from simulator.cost_model import GpuCostModel
from simulator.experiments import plot_path
from simulator.metrics import meets_slo
from simulator.scenario import run_scenario
from simulator.workload import AZURE_TRACES, SHARED_DATA, TraceRequest, azure_trace, poisson_arrivals

console = Console()
WIND = SHARED_DATA / "power" / "gefcom2012_wind_5farms_hourly.csv"
BUDGET = 12
RATES = (10.0, 20.0)  # offered requests/s, half code and half conversation
RATED_W = 6000.0
START = "2009093000"  # a week of moderate, partly complementary wind at farms 1-3 (mean 26-33% of rated)
CLASSES = {"code": {"ttft_s": 2.0, "tbt_s": 0.2}, "conv": {"ttft_s": 2.0, "tbt_s": 0.2}}


def heron_spec(speed: float) -> ClusterSpec:
    modes = [{"name": "full", "power_w": 400, "throughput_fraction": 1.0},
             {"name": "capped", "power_w": 250, "throughput_fraction": 0.7}]
    sites = [{"name": f"farm{i}", "latency_ms": 10 * i, "max_replicas": 8, "power_modes": modes,
              "power": {"kind": "trace", "path": str(WIND), "column": f"wp{i}", "scale_w": RATED_W, "speed": speed,
                        "start": START}}
             for i in (1, 2, 3)]
    return ClusterSpec.parse({
        "topology": "colocated", "sites": sites,
        "pools": {"colocated": {"min_replicas": 0, "max_replicas": 8, "initial_replicas": BUDGET // 3}},
        "engine": {"chunk_size": 512, "max_num_seqs": 128, "block_size": 32, "num_kv_blocks": 4096, "enable_prefix_caching": False},
        "qos_classes": [{"name": n, "slo": slo} for n, slo in CLASSES.items()], "default_qos_class": "code",
    })


def workload(rate: float, seconds: float, seed: int = 0) -> list[TraceRequest]:
    """Poisson arrivals, half code and half conversation, each with its own trace's lengths."""
    pools = {name: [r for r in azure_trace(name) if r.prompt_tokens + r.output_tokens <= 4096] for name in AZURE_TRACES}
    rng = np.random.default_rng(seed)
    out = []
    for i, t in enumerate(poisson_arrivals(rate, seconds, seed)):
        name = "code" if rng.random() < 0.5 else "conv"
        src = pools[name][int(rng.integers(len(pools[name])))]
        out.append(TraceRequest(f"r{i}", float(t), src.prompt_tokens, src.output_tokens, 0, name))
    return out


def main(quick: bool = False, json_path: Path | None = None) -> dict[str, Any]:
    cost = GpuCostModel.from_profiles("a100", "llama2-7b")
    hours, speed = (48, 240.0) if quick else (168, 120.0)
    hour_s = 3600.0 / speed
    seconds = hours * hour_s
    spec = heron_spec(speed)
    # The controller's clocks scaled with the wind: plan sites every trace hour, judge demand
    # over the last half hour, let a new replica's effect show before shrinking again.
    common = dict(cold_start_s=hour_s / 6, ride_through_s=hour_s / 12, power_interval_s=hour_s / 6, control_interval_s=hour_s / 12,
                  max_model_len=4096,
                  planner_overrides={"interval_s": hour_s, "request_window_s": hour_s / 2},
                  autoscaler_overrides={"request_window_s": hour_s / 2, "cooldown_s": hour_s / 2, "reactive_cooldown_s": hour_s / 4})
    policies = {
        "power-aware": SimOptions(power_aware=True, routing="planned", autoscale=True, **common),
        "power-oblivious": SimOptions(power_aware=False, routing="least_loaded", autoscale=False, **common),
        "power-aware, fixed size": SimOptions(power_aware=True, routing="planned", autoscale=False, **common),
    }
    rows, by_rate = [], {}
    # Two offered loads: one the wind can mostly carry, and one where the replicas' placement
    # binds (the headline: where a router's choices can matter).
    for rate in RATES:
        trace = workload(rate, seconds)
        for name, options in policies.items():
            result = run_scenario(spec, trace, cost, options, drain_s=hour_s)
            by_rate[(rate, name)] = result
            s = result.summary
            rows.append({"rate": rate, "requests": len(trace), "policy": name, "goodput_rps": s["goodput_rps"],
                         "slo_attainment": s["slo_attainment"], "outcomes": s["outcomes"], "ttft_p99_s": s["ttft_s"]["p99"],
                         "tbt_p99_s": s["tbt_s"]["p99"], "power_cuts": result.cluster["power_cuts"],
                         "replica_seconds": result.cluster["replica_seconds"], "energy_kwh": result.cluster["energy_kwh"],
                         "classes": s["classes"], "wall_s": result.wall_s})
    ratios, untrimmed = {}, {}
    for rate in RATES:
        goodput = {r["policy"]: r["goodput_rps"] for r in rows if r["rate"] == rate}
        oblivious = goodput["power-oblivious"]
        ratios[str(rate)] = goodput["power-aware"] / oblivious if oblivious else None
        untrimmed[str(rate)] = goodput["power-aware, fixed size"] / oblivious if oblivious else None
    out = {"experiment": "heron", "quick": quick, "hours_of_wind": hours, "wind_speedup": speed, "wind_start": START,
           "offered_rps": list(RATES), "budget_replicas": BUDGET, "rated_w_per_site": RATED_W, "cost_model": cost.describe(),
           "time_scaling": {"trace_hour_s": hour_s, **{k: v for k, v in common.items() if k.endswith("_s")}},
           "rows": rows, "ratio_by_rate": ratios, "ratio": ratios[str(RATES[-1])], "ratio_fixed_size_by_rate": untrimmed,
           "headline": f"goodput, power-aware (the controller's round, up to 8 replicas a site under its power) / power-oblivious (4 a site at full clock, least-loaded routing), at {RATES[-1]:g} req/s",
           "machine": machine_info(), "command": command_line()}
    table = Table(title=f"{hours} h of wind at 3 sites, {BUDGET // 3} replicas each to start, up to 8")
    for col in ("req/s", "policy", "goodput (req/s)", "SLO attainment", "lost to power cuts", "no power anywhere", "TTFT p99 (s)"):
        table.add_column(col, justify="left" if col == "policy" else "right")
    for r in rows:
        table.add_row(f"{r['rate']:g}", r["policy"], f"{r['goodput_rps']:.2f}", f"{r['slo_attainment']:.1%}",
                      f"{r['outcomes'].get('failed', 0):,}", f"{r['outcomes'].get('rejected', 0):,}", f"{r['ttft_p99_s'] or 0:.2f}")
    for rate in RATES:
        ratio, other = ratios[str(rate)], untrimmed[str(rate)]
        table.add_row(f"{rate:g}", "[bold]aware / oblivious[/bold]", f"[bold]{ratio:.2f}×[/bold]" if ratio else "n/a",
                      f"fixed size {other:.2f}×" if other else "", "", "", "")
    console.print(table)
    _plot({name: by_rate[(RATES[-1], name)] for name in policies}, spec, hour_s, plot_path(json_path, "sim_heron"))
    write_json(json_path, out)
    return out


def _plot(results, spec: ClusterSpec, hour_s: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b, c) = plt.subplots(3, 1, figsize=(10, 9), sharex=True)
    aware = results["power-aware"].sim
    t = [s["t"] / hour_s for s in aware.samples]
    for site in aware.sites:
        a.plot(t, [(s[site]["available_w"] or 0) / 1e3 for s in aware.samples], label=site)
        b.plot(t, [sum(s[site]["replicas"].values()) for s in aware.samples], label=f"{site} (power-aware)")
    a.set_ylabel("wind power (kW)")
    a.legend(loc="upper right", fontsize=7)
    b.set_ylabel("replicas")
    b.legend(loc="upper right", fontsize=7)
    slos = {c.name: c.slo for c in spec.qos_classes}
    for name, result in results.items():
        reqs = result.sim.requests
        hours = int(max(r.arrival_s for r in reqs) // hour_s) + 1
        good = np.zeros(hours)
        for r in reqs:
            slo = slos[r.trace.qos_class]
            if meets_slo(r, slo.ttft_s, slo.tbt_s):
                good[int(r.arrival_s // hour_s)] += 1
        c.plot(np.arange(hours), good / hour_s, label=name)
    c.set_ylabel("goodput (req/s)")
    c.set_xlabel("hour of wind")
    c.legend(loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
