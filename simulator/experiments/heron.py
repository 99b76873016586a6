"""Heron's comparison (AI Greenferencing, 2025) in the simulator, in Heron's own setup: three
wind-powered sites with a fixed number of GPUs each, a week of real wind, Azure code and
conversation requests in real time, and the per-site baselines Heron compares against.

Sites. The three GEFCom2012 farms whose largest pairwise correlation over the contiguous part
of the series is lowest (`heron_sites.least_correlated`), at the same hours (no time offset);
the hours simulated are the first week-aligned stretch of the run's length whose every
pairwise correlation is below 0.3 and whose mean output is within 0.05 of the long-run mean
(`typical_window`). Each site has 20 kW of rated wind (quick: 10 kW) and installs what its
90th-percentile wind affords at full clock, in replicas of a Llama-3-70B-class model at
tensor parallelism 4 (four A100-80GB, 1.6 kW at full clock); those GPUs are the site's for
the whole run. Client round trips 10/30/50 ms.

Time. A week of 15-minute planning intervals (quick: 48 h, at half the traffic and half the
site size). Interval k is simulated as a window of W = 60 s of real-time traffic at the
interval's power (the hourly wind interpolated at its midpoint), the cluster carried over
from one window to the next; arrivals in window k are the Azure traces' own arrivals, read on
from where window k-1 stopped. Cold starts (30 s), the battery's ride-through (5 s), the
controller's round (5 s) and every SLO are real time; the power planner replans once per
interval (interval_s = W) and on a power swing. Goodput per interval = requests within SLO in
its window × 900 / W.

Knobs. Power modes per GPU: full clock 400 W, or capped at 280 W with 94% of the throughput
(sources in `heron_model`); replicas per site (up to the installed count, under the power);
routing between sites. Tensor parallelism is fixed at 4 (the model needs at least 2; the
simulator prices every replica with one cost model).

Policies (all through the controller's own `plan_round`, all capped by each site's power now):
- per-site capping (Heron's baseline): each site serves a fixed share of the traffic, in
  proportion to its installed replicas, with no fail-over (routing "static"), and runs what
  its power affords in the best mix of full and capped modes;
- per-site idling: the same with full clock only (GPUs beyond the power idle);
- least-loaded: every request to the least-loaded replica of any site, power-capped like the
  others with the same mode mix (the comparison isolates routing);
- Pavana: the power planner's shares per class across sites, routed "blended" (with live
  load) and "planned" (shares and power only); `PAVANA` lists the variants, and any the
  simulator does not route yet is skipped and named.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from bench.common import command_line, machine_info, write_json
from cluster.spec import ClusterSpec
from simulator.cluster import SimOptions
from simulator.cost_model import BatchShape, CostModel
from simulator.experiments import plot_path
from simulator.experiments.heron_model import GPU_FULL_W, MODE_SOURCES, llama70b_cost_model, power_modes
from simulator.experiments.heron_sim import PolicyRun, breakdown, cluster_routes, loss_kind, per_interval, run_policy
from simulator.experiments.heron_sites import (
    HOUR_S,
    INTERVAL_S,
    WindDataMissing,
    correlation,
    installed_replicas,
    interval_power,
    least_correlated,
    load_wind,
    wind_path,
    step_power,
    typical_window,
    window_arrivals,
)
from simulator.workload import TraceRequest, azure_trace

console = Console()

NUM_SITES = 3
SIZING_PERCENTILE = 90.0
TP = 4
LATENCY_MS = (5.0, 15.0, 25.0)  # one way; the client's round trip is twice
BATCH_SHARE_OF_CONV = 0.3  # conversation requests marked batch (summaries, offline jobs)
MAX_MODEL_LEN = 8192
CLASSES = (  # name, priority, TTFT SLO, TBT SLO, admitted below this share of the ingress's in-flight limit
    ("code", 0, 3.0, 0.2, 1.0),  # interactive code completion
    ("conv", 1, 4.0, 0.25, 0.85),  # conversation
    ("batch", 2, 30.0, 1.0, 0.7),  # batch: loose
)


@dataclass(frozen=True)
class Scale:
    """How big a run is. `load` multiplies the Azure traces' recorded rate (code ≈ 2.5 req/s +
    conversation ≈ 5.5 req/s); `rated_w` is each site's wind farm (its share of one) at rated
    output. Quick halves both, so the sites are half as large for half the traffic."""

    hours: int
    window_s: float
    drain_s: float
    load: float
    rated_w: float

    @property
    def intervals(self) -> int:
        return int(self.hours * HOUR_S / INTERVAL_S)


FULL = Scale(hours=168, window_s=60.0, drain_s=120.0, load=1.0, rated_w=20_000.0)
QUICK = Scale(hours=48, window_s=60.0, drain_s=120.0, load=0.5, rated_w=10_000.0)


@dataclass(frozen=True)
class Policy:
    name: str
    routing: str
    capped_mode: bool = True  # False: full clock only (idling)
    role: str = "baseline"


BASELINES = (
    Policy("per-site capping", "static"),
    Policy("per-site idling", "static", capped_mode=False),
    Policy("least-loaded", "least_loaded"),
)
# Pavana's variants, newest first: the headline ratio is the first one the simulator has.
PAVANA = (
    Policy("pavana (blended)", "blended", role="pavana"),
    Policy("pavana (planned)", "planned", role="pavana"),
)


@dataclass
class Setup:
    farms: tuple[str, ...]
    start_stamp: str
    start_hour: int
    week_correlation: np.ndarray
    long_run_correlation: np.ndarray
    installed: dict[str, int]
    interval_w: dict[str, np.ndarray]  # site -> watts per interval
    sizing_w: dict[str, float]  # site -> the sizing percentile of its power over the contiguous part
    wind_csv: Path  # the GEFCom2012 file read


def site_setup(scale: Scale, wind_csv: Path | None = None) -> Setup:
    """`wind_csv`: GEFCom2012's file; None looks for it as `heron_sites.wind_path` does."""
    wind_csv = wind_path(wind_csv)
    wind = load_wind(wind_csv)
    farms = least_correlated(wind.values, wind.farms, NUM_SITES)
    series = np.column_stack([wind.column(f) for f in farms])
    start = typical_window(series, hours=scale.hours)
    installed, interval_w, sizing_w = {}, {}, {}
    for i, farm in enumerate(farms):
        name = f"farm{farm[2:]}"
        installed[name] = installed_replicas(series[:, i], percentile=SIZING_PERCENTILE, rated_w=scale.rated_w,
                                             replica_w=GPU_FULL_W * TP)
        interval_w[name] = interval_power(series[:, i], start, scale.intervals) * scale.rated_w
        sizing_w[name] = float(np.percentile(series[:, i], SIZING_PERCENTILE)) * scale.rated_w
    return Setup(farms, wind.stamps[start], start, correlation(series[start:start + scale.hours]), correlation(series),
                 installed, interval_w, sizing_w, wind_csv)


def heron_spec(setup: Setup, scale: Scale, *, capped_mode: bool) -> ClusterSpec:
    """The cluster: one colocated pool per site, every installed replica wanted (min = max);
    the round's fit under power decides how many run. The spec's trace power describes the
    same wind (one trace hour per 4 windows); the run replaces it by the exact step function."""
    most = max(setup.installed.values())
    sites = []
    for (name, n), farm, latency in zip(setup.installed.items(), setup.farms, LATENCY_MS):
        sites.append({"name": name, "latency_ms": latency, "max_replicas": n, "power_modes": power_modes(TP, capped=capped_mode),
                      "power": {"kind": "trace", "path": str(setup.wind_csv), "column": farm, "scale_w": scale.rated_w,
                                "speed": INTERVAL_S / scale.window_s, "start": setup.start_stamp}})
    return ClusterSpec.parse({
        "topology": "colocated", "sites": sites,
        "pools": {"colocated": {"min_replicas": most, "max_replicas": most, "initial_replicas": most}},
        "engine": {"chunk_size": 512, "max_num_seqs": 128, "block_size": 32, "num_kv_blocks": 8192, "enable_prefix_caching": False,
                   "tbt_budget": False},  # the paper's fixed token budget
        "qos_classes": [{"name": n, "priority": p, "slo": {"ttft_s": ttft, "tbt_s": tbt}, "admit_below_load": admit}
                        for n, p, ttft, tbt, admit in CLASSES],
        "default_qos_class": "code",
    })


def workload(scale: Scale, seed: int = 0) -> list[TraceRequest]:
    """Each window's arrivals from both Azure traces, in real time (`window_arrivals`); code
    requests are class code, conversation requests conv or (a fixed 30%) batch."""
    rng = np.random.default_rng(seed)
    out: list[TraceRequest] = []
    for trace_name in ("code", "conv"):
        reqs = [r for r in azure_trace(trace_name) if r.prompt_tokens + r.output_tokens <= MAX_MODEL_LEN]
        times = np.array([r.arrival_s for r in reqs])
        period = float(times[-1] + (times[-1] - times[0]) / max(1, len(times) - 1))
        classes = ["code"] * len(reqs) if trace_name == "code" else [
            "batch" if u < BATCH_SHARE_OF_CONV else "conv" for u in rng.random(len(reqs))]
        for k in range(scale.intervals):
            idx, at = window_arrivals(times, period, k, scale.window_s, scale.load)
            for i, t in zip(idx, at):
                r = reqs[int(i)]
                out.append(TraceRequest(f"{k}:{trace_name}:{int(i)}", float(t), r.prompt_tokens, r.output_tokens, 0, classes[int(i)]))
    out.sort(key=lambda r: (r.arrival_s, r.request_id))
    return out


def profiled_rates(cost: CostModel) -> dict[str, float]:
    """The planner's profiled defaults for this model, until heartbeats have measured them:
    prompt tokens per second of prefilling (a full 512-token chunk at 1K context) and output
    tokens per second of decoding (a batch of 32 at 1.5K context)."""
    chunk, batch = 512, 32
    prefill = chunk / cost.batch_time(BatchShape(chunk, 0, chunk * 1024 + chunk * (chunk + 1) / 2, 0, 1))
    decode = batch / cost.batch_time(BatchShape(0, batch, 0, batch * 1536.0, batch))
    return {"prefill_tokens_per_s": prefill, "decode_tokens_per_s": decode}


def sim_options(scale: Scale, routing: str, rates: dict[str, float]) -> SimOptions:
    planner = {"interval_s": scale.window_s, "request_window_s": 30.0, **rates}
    return SimOptions(
        cold_start_s=30.0, ride_through_s=5.0, control_interval_s=5.0, power_interval_s=5.0, sample_interval_s=10.0,
        autoscale=True, power_aware=True, routing=routing, max_model_len=MAX_MODEL_LEN,
        planner_overrides=planner,
    )


def policies_to_run() -> tuple[list[Policy], list[str]]:
    """The baselines and every Pavana variant the simulator routes; notes on those skipped."""
    run, skipped = [], []
    for p in (*BASELINES, *PAVANA):
        if p.role == "pavana" and not cluster_routes(p.routing):
            skipped.append(f"{p.name}: simulator.cluster has no routing {p.routing!r} yet")
            continue
        run.append(p)
    return run, skipped


def main(quick: bool = False, json_path: Path | None = None, wind_csv: Path | None = None) -> dict[str, Any]:
    """`wind_csv`: the GEFCom2012 series (not carried by Pavana; see `heron_sites.wind_path`)."""
    scale = QUICK if quick else FULL
    try:
        setup = site_setup(scale, wind_csv)
    except WindDataMissing as exc:
        raise SystemExit(f"pavana sim experiment heron: {exc}") from None
    cost = llama70b_cost_model(TP)
    rates = profiled_rates(cost)
    trace = workload(scale)
    duration = scale.intervals * scale.window_s
    policies, skipped = policies_to_run()
    runs: dict[str, PolicyRun] = {}
    specs: dict[str, ClusterSpec] = {}
    for p in policies:
        spec = heron_spec(setup, scale, capped_mode=p.capped_mode)
        power = {name: step_power(watts, scale.window_s) for name, watts in setup.interval_w.items()}
        console.print(f"[dim]{p.name}: {len(trace):,} requests over {scale.intervals} windows of {scale.window_s:g} s ...[/dim]")
        runs[p.name] = run_policy(p.name, spec, trace, cost, sim_options(scale, p.routing, rates), power,
                                  duration_s=duration, drain_s=scale.drain_s)
        specs[p.name] = spec
    rows = [_row(p, runs[p.name], specs[p.name], scale) for p in policies]
    planner = sim_options(scale, "planned", rates).planner_overrides
    out = _results(quick, scale, setup, cost, planner, trace, policies, skipped, runs, specs, rows)
    _print(out, setup, scale)
    _plot(out, setup, scale, plot_path(json_path, "sim_heron"))
    write_json(json_path, out)
    return out


# -- reporting -----------------------------------------------------------------------------------------
def _row(p: Policy, run: PolicyRun, spec: ClusterSpec, scale: Scale) -> dict[str, Any]:
    s, c = run.summary, run.cluster
    stretch = INTERVAL_S / scale.window_s  # a window stands for an interval
    losses: dict[str, int] = {}
    for req in run.requests:
        kind = loss_kind(req)
        if kind:
            losses[kind] = losses.get(kind, 0) + 1
    return {
        "policy": p.name, "role": p.role, "routing": p.routing,
        "modes": [m.name for m in spec.sites[0].power_modes],
        "requests": s["requests"], "goodput_rps": s["goodput_rps"], "slo_attainment": s["slo_attainment"],
        "classes": {name: {"requests": v["requests"], "slo_attainment": v["slo_attainment"], "goodput_rps": v["goodput_rps"]}
                    for name, v in s["classes"].items()},
        "ttft_p99_s": s["ttft_s"]["p99"], "ttft_p50_s": s["ttft_s"]["p50"], "tbt_p99_s": s["tbt_s"]["p99"],
        "ttft_p99_by_class_s": _ttft_p99_by_class(run),
        "outcomes": s["outcomes"], "losses": losses, "lost_to_power": losses.get("power_cut", 0) + losses.get("no_power", 0),
        "power_cuts": c["power_cuts"],
        "energy_kwh_simulated": sum(c["energy_kwh"].values()),
        "energy_kwh_scaled": sum(c["energy_kwh"].values()) * stretch,
        "replica_seconds_simulated": sum(c["replica_seconds"].values()),
        "replica_hours_scaled": sum(c["replica_seconds"].values()) * stretch / 3600,
        "replica_seconds_by_site": c["replica_seconds"], "energy_kwh_by_site": c["energy_kwh"],
        "scaling_decisions": c["scaling_decisions"], "routing_decisions": c["routing_decisions"],
        "breakdown": breakdown(run, spec), "per_interval": per_interval(run, spec, scale.intervals, scale.window_s),
        "wall_s": run.wall_s, "events": c["events"],
    }


def _ttft_p99_by_class(run: PolicyRun) -> dict[str, float | None]:
    by: dict[str, list[float]] = {}
    for r in run.requests:
        if r.outcome == "ok" and r.ttft_s is not None:
            by.setdefault(r.trace.qos_class, []).append(r.ttft_s)
    return {c: float(np.percentile(v, 99)) for c, v in sorted(by.items())}


def _results(quick, scale, setup, cost, planner, trace, policies, skipped, runs, specs, rows) -> dict[str, Any]:
    by = {r["policy"]: r for r in rows}
    capping, least = by["per-site capping"], by["least-loaded"]
    variants = [p.name for p in policies if p.role == "pavana"]
    headline = variants[0] if variants else None

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    per_variant = {v: {"ratio": ratio(by[v]["goodput_rps"], capping["goodput_rps"]),
                       "ratio_vs_idling": ratio(by[v]["goodput_rps"], by["per-site idling"]["goodput_rps"]),
                       "ratio_vs_least_loaded": ratio(by[v]["goodput_rps"], least["goodput_rps"]),
                       "ttft_p99_ratio_vs_least_loaded": ratio(by[v]["ttft_p99_s"], least["ttft_p99_s"])} for v in variants}
    farms = [f"farm{f[2:]}" for f in setup.farms]
    first = specs[policies[0].name]
    return {
        "experiment": "heron", "quick": quick,
        "headline": (f"goodput of {headline} over per-site capping (Heron's baseline: fixed shares per site, replicas "
                     f"capped by each site's power); Heron reports up to 1.8x") if headline else "no Pavana variant ran",
        "headline_variant": headline,
        "ratio": per_variant[headline]["ratio"] if headline else None,
        "ratio_vs_least_loaded": per_variant[headline]["ratio_vs_least_loaded"] if headline else None,
        "ttft_p99_ratio_vs_least_loaded": per_variant[headline]["ttft_p99_ratio_vs_least_loaded"] if headline else None,
        "ratios_by_variant": per_variant, "variants_skipped": skipped,
        "correlation": {"sites": farms, "farms": list(setup.farms), "over_simulated_hours": np.round(setup.week_correlation, 3).tolist(),
                        "over_contiguous_series": np.round(setup.long_run_correlation, 3).tolist()},
        "setup": {
            "wind": {"file": setup.wind_csv.name, "contiguous_part": "2009-07-01 00:00 to 2011-01-01 00:00", "start": setup.start_stamp,
                     "hours": scale.hours, "farms": list(setup.farms), "time_offset": "none: the farms at the same hours",
                     "farm_choice": "the 3 of 5 farms whose largest pairwise correlation over the contiguous part is lowest",
                     "window_choice": f"the first {scale.hours} h (starting in 7-day steps from 2009-07-01) with every pairwise "
                                      "correlation < 0.3 and mean output within 0.05 of the long-run mean",
                     "interval_power": "hourly series linearly interpolated at each 15-minute interval's midpoint"},
            "sites": [{"name": s.name, "farm": f, "rated_w": scale.rated_w, "installed_replicas": s.max_replicas,
                       "installed_gpus": s.max_replicas * TP, "latency_ms_one_way": s.latency_ms,
                       "mean_power_w": float(np.mean(setup.interval_w[s.name])),
                       "sizing_power_w": setup.sizing_w[s.name]}
                      for s, f in zip(first.sites, setup.farms)],
            "sizing": f"installed replicas = floor(P{SIZING_PERCENTILE:g} of the farm's normalised output over the contiguous part "
                      f"x {scale.rated_w:g} W / {GPU_FULL_W * TP:g} W per TP{TP} replica at full clock)",
            "model": {"cost_model": cost.describe(), "tensor_parallel": TP, "gpus_per_replica": TP, "max_model_len": MAX_MODEL_LEN,
                      "tp_note": "TP is fixed for the run: the simulator prices every replica with one cost model"},
            "modes": {m["name"]: {**m, "per_gpu_w": m["power_w"] / TP, "source": MODE_SOURCES[m["name"]]}
                      for m in power_modes(TP)},
            "classes": [{"name": n, "priority": p, "ttft_s": ttft, "tbt_s": tbt, "admit_below_load": a,
                         "source": "azure code trace" if n == "code" else "azure conv trace"} for n, p, ttft, tbt, a in CLASSES],
            "batch_share_of_conv": BATCH_SHARE_OF_CONV, "load": scale.load,
            "time": {"interval_s": INTERVAL_S, "window_s": scale.window_s, "intervals": scale.intervals, "drain_s": scale.drain_s,
                     "design": "interval k simulated as [k*W, (k+1)*W) at its power, state carried over; arrivals in real time; "
                               "goodput per interval = within-SLO requests of its window x 900 / W",
                     "cold_start_s": 30.0, "ride_through_s": 5.0, "control_interval_s": 5.0,
                     "planner_overrides": planner},
            "requests": len(trace),
        },
        "rows": rows,
        "machine": machine_info(), "command": command_line(),
    }


def _print(out: dict[str, Any], setup: Setup, scale: Scale) -> None:
    corr = out["correlation"]
    t = Table(title=f"wind correlation over the {scale.hours} simulated hours from {setup.start_stamp} (contiguous part in brackets)")
    t.add_column("")
    for s in corr["sites"]:
        t.add_column(s, justify="right")
    for i, s in enumerate(corr["sites"]):
        t.add_row(s, *[f"{corr['over_simulated_hours'][i][j]:+.2f} ({corr['over_contiguous_series'][i][j]:+.2f})"
                       for j in range(len(corr["sites"]))])
    wide = Console(width=max(console.width, 190))  # the table is wide; rich wraps at 80 when not on a terminal
    wide.print(t)
    sites = ", ".join(f"{s['name']} ({s['farm']}): {s['installed_replicas']} x TP{TP} installed, mean {s['mean_power_w'] / 1e3:.1f} kW"
                      for s in out["setup"]["sites"])
    wide.print(f"sites: {sites}; {out['setup']['requests']:,} requests, {scale.intervals} intervals of 15 min "
                  f"as {scale.window_s:g} s windows")
    classes = [c["name"] for c in out["setup"]["classes"]]
    table = Table(title="Heron: goodput under wind (requests within SLO per second of simulated traffic)")
    for col in ("policy", "goodput", "vs capping", *[f"SLO {c}" for c in classes], "TTFT p99", "TBT p99",
                "lost to power", "429s", "energy kWh*", "replica-h*", "wall s"):
        table.add_column(col, justify="left" if col == "policy" else "right")
    capping = next(r for r in out["rows"] if r["policy"] == "per-site capping")["goodput_rps"]
    for r in out["rows"]:
        table.add_row(r["policy"], f"{r['goodput_rps']:.2f}", f"{r['goodput_rps'] / capping:.2f}x" if capping else "n/a",
                      *[f"{r['classes'].get(c, {}).get('slo_attainment', 0):.1%}" for c in classes],
                      f"{r['ttft_p99_s'] or 0:.2f}", f"{r['tbt_p99_s'] or 0:.3f}", f"{r['lost_to_power']:,}",
                      f"{r['losses'].get('admission', 0):,}", f"{r['energy_kwh_scaled']:.0f}", f"{r['replica_hours_scaled']:.0f}",
                      f"{r['wall_s']:.0f}")
    wide.print(table)
    wide.print("[dim]* scaled from the windows to the 15-minute intervals they stand for[/dim]")
    if out["headline_variant"]:
        wide.print(f"[bold]{out['headline_variant']}[/bold]: {out['ratio']:.2f}x per-site capping, "
                      f"{out['ratio_vs_least_loaded']:.2f}x least-loaded goodput, TTFT p99 {out['ttft_p99_ratio_vs_least_loaded']:.2f}x "
                      "least-loaded's")
    for note in out["variants_skipped"]:
        wide.print(f"[dim]skipped {note}[/dim]")


def _plot(out: dict[str, Any], setup: Setup, scale: Scale, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hours = np.arange(scale.intervals) * INTERVAL_S / HOUR_S
    fig, (a, b, c) = plt.subplots(3, 1, figsize=(11, 10), sharex=True)
    colour = {name: f"C{i}" for i, name in enumerate(setup.interval_w)}
    for name, watts in setup.interval_w.items():
        a.plot(hours, watts / 1e3, color=colour[name], label=name)
    a.set_ylabel("wind power (kW)")
    a.legend(loc="upper right", fontsize=7)
    rows = {r["policy"]: r for r in out["rows"]}
    shown = [n for n in (out["headline_variant"], "per-site capping") if n in rows]
    for style, name in zip(("-", ":"), shown):
        for site, series in rows[name]["per_interval"]["replicas"].items():
            b.plot(hours, series, style, color=colour[site], label=f"{site} ({name})")
    b.set_ylabel("replicas running (TP4)")
    b.legend(loc="upper right", fontsize=6, ncol=2)
    for name, r in rows.items():
        good = np.asarray(r["per_interval"]["within_slo"]) / scale.window_s
        c.plot(hours, good, label=name, linewidth=1.4 if r["role"] == "pavana" else 0.9)
    offered = np.asarray(next(iter(rows.values()))["per_interval"]["offered"]) / scale.window_s
    c.plot(hours, offered, "k--", linewidth=0.6, label="offered")
    c.set_ylabel(f"goodput, req/s (x{INTERVAL_S:g} s: per interval)")
    c.set_xlabel(f"hours of wind from {setup.start_stamp}")
    c.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
