"""`pavana sim ...` and `pavana profile`: the simulator's command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cluster.spec import ClusterSpec, SpecError

sim_app = typer.Typer(help="Simulate a whole cluster with Pavana's own policies and profiled costs.", no_args_is_help=True)
console = Console()

QuickOption = typer.Option(False, "--quick", help="a shorter run with the same shape")
JsonOption = typer.Option(None, "--json", help="write the results as JSON to this file (plots beside it)")
CostOption = typer.Option("gpu:a100", "--cost", help="gpu:a100, gpu:h100[:llama3-8b], a profile CSV, or a fitted-model JSON")


def _fail(exc: Exception) -> None:
    console.print(f"[red]{escape(str(exc))}[/red]", soft_wrap=True)
    raise typer.Exit(1)


def _spec(path: Path) -> ClusterSpec:
    try:
        return ClusterSpec.load(path)
    except SpecError as exc:
        _fail(exc)


def profile_command(
    quick: bool = QuickOption,
    out: Path = typer.Option(..., "--out", help="CSV to write (one row per batch shape)"),
    model: Optional[Path] = typer.Option(None, "--model", help="a Llama safetensors directory; the bundled model when omitted"),
    threads: int = typer.Option(1, "--threads", help="torch threads, as the replica would run"),
    repeats: Optional[int] = typer.Option(None, "--repeats", help="timed runs per shape (the fastest counts)"),
) -> None:
    """Time the real engine over a grid of batch shapes, write CSV, print the fitted cost model."""
    from simulator.cost_model import LinearCostModel
    from simulator.profile import profile, write_profile_csv

    shapes, seconds, meta = profile(model, quick=quick, repeats=repeats, num_threads=threads)
    write_profile_csv(out, shapes, seconds, meta)
    fit = LinearCostModel.fit(shapes, seconds, kv_bytes_per_token=meta["kv_bytes_per_token"])
    table = Table(title=f"Fitted cost model from {len(shapes)} profiled batches ({out})")
    table.add_column("term")
    table.add_column("seconds", justify="right")
    for name, value in (("intercept", fit.intercept), ("per prefill token", fit.per_prefill_token),
                        ("per decode token", fit.per_decode_token), ("per attended token", fit.per_attended)):
        table.add_row(name, f"{value:.3e}")
    table.add_row("R²", f"{fit.r2:.3f}")
    console.print(table)


def _parse_images(spec: Optional[str]) -> dict[int, float] | None:
    if not spec:
        return None
    try:
        return {int(k): float(v) for k, v in (item.split(":") for item in spec.split(","))}
    except ValueError:
        raise typer.BadParameter(f"--image-counts: expected COUNT:WEIGHT,... (e.g. 1:0.7,4:0.3), got {spec!r}") from None


@sim_app.command("run")
def run(
    spec: Path = typer.Option(..., "--spec", help="cluster spec (YAML)"),
    trace: str = typer.Option(..., "--trace", help="azure:code, azure:conv, or an Azure/BurstGPT CSV"),
    cost: str = CostOption,
    duration: Optional[float] = typer.Option(None, "--duration", help="replay only the first seconds of the trace"),
    rate: float = typer.Option(1.0, "--rate", help="arrivals this many times as fast as the trace"),
    image_share: float = typer.Option(0.0, "--image-share", help="share of requests that carry images"),
    image_counts: Optional[str] = typer.Option(None, "--image-counts", help="images per request as COUNT:WEIGHT,... (heavy-tailed default)"),
    classes: Optional[str] = typer.Option(None, "--classes", help="QoS class shares as NAME:WEIGHT,..."),
    policy: Optional[str] = typer.Option(None, "--policy", help="override the spec's engine policy"),
    autoscale: bool = typer.Option(True, "--autoscale/--no-autoscale"),
    power_aware: bool = typer.Option(True, "--power-aware/--power-oblivious"),
    seed: int = typer.Option(0, "--seed"),
    json_path: Optional[Path] = JsonOption,
) -> None:
    """Run one scenario: per-request TTFT/TBT/latency, SLO attainment, goodput, replica-seconds and energy per site."""
    from simulator.cluster import SimOptions
    from simulator.metrics import per_request_rows
    from simulator.scenario import read_workload, run_scenario
    from simulator.workload import assign_classes, attach_images, rescale_rate

    cluster_spec = _spec(spec)
    if policy:
        cluster_spec = cluster_spec.model_copy(update={"engine": cluster_spec.engine.model_copy(update={"policy": policy})})
    try:
        requests = rescale_rate(read_workload(trace, duration_s=duration * rate if duration else None), rate)
        if image_share:
            requests = attach_images(requests, image_share, _parse_images(image_counts), seed)
        if classes:
            requests = assign_classes(requests, {k: float(v) for k, v in (i.split(":") for i in classes.split(","))}, seed)
        else:
            requests = assign_classes(requests, {cluster_spec.default_qos_class: 1.0}, seed)
        plot = json_path.with_suffix(".png") if json_path else None
        result = run_scenario(cluster_spec, requests, cost, SimOptions(autoscale=autoscale, power_aware=power_aware, seed=seed),
                              progress=True, plot=plot, title=f"{spec.name} × {trace}")
    except ValueError as exc:
        _fail(exc)
    s = result.summary
    table = Table(title=f"{len(requests):,} requests, {spec.name}, cost model {cost}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for name, value in (("TTFT p50 / p99 (s)", f"{s['ttft_s']['p50'] or 0:.3f} / {s['ttft_s']['p99'] or 0:.3f}"),
                        ("TBT p50 / p99 (s)", f"{s['tbt_s']['p50'] or 0:.4f} / {s['tbt_s']['p99'] or 0:.4f}"),
                        ("end-to-end p50 / p99 (s)", f"{s['e2e_s']['p50'] or 0:.2f} / {s['e2e_s']['p99'] or 0:.2f}"),
                        ("SLO attainment", f"{s['slo_attainment']:.1%}"), ("goodput (req/s)", f"{s['goodput_rps']:.2f}"),
                        ("outcomes", ", ".join(f"{k} {v}" for k, v in s["outcomes"].items())),
                        ("replica-seconds", ", ".join(f"{k} {v:,.0f}" for k, v in result.cluster["replica_seconds"].items())),
                        ("energy (kWh)", ", ".join(f"{k} {v:.2f}" for k, v in result.cluster["energy_kwh"].items())),
                        ("simulated s per wall s", f"{result.cluster['simulated_s'] / result.wall_s:,.0f}")):
        table.add_row(name, value)
    console.print(table)
    if json_path:
        out = result.to_dict()
        out["requests_detail"] = per_request_rows(result.sim.requests)
        out["timeline"] = result.sim.samples
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(out, indent=1) + "\n")


@sim_app.command("sweep")
def sweep(
    spec: Path = typer.Option(..., "--spec", help="cluster spec (YAML)"),
    trace: str = typer.Option(..., "--trace", help="azure:code, azure:conv, or an Azure/BurstGPT CSV"),
    cost: str = CostOption,
    rates: str = typer.Option("0.5,1,2", "--rates", help="rate multipliers of the trace, comma-separated"),
    policies: str = typer.Option("sarathi,prefill_first", "--policies", help="engine policies, comma-separated"),
    duration: float = typer.Option(600.0, "--duration", help="seconds of (rescaled) arrivals per point"),
    json_path: Optional[Path] = JsonOption,
) -> None:
    """Run a grid of rates × engine policies; one row per point."""
    from simulator.sweep import run_sweep

    try:
        result = run_sweep(_spec(spec), trace, cost, [float(r) for r in rates.split(",")], policies.split(","), duration)
    except ValueError as exc:
        _fail(exc)
    table = Table(title=f"Sweep over {spec.name} × {trace}")
    for col in ("policy", "rate ×", "TTFT p99 (s)", "TBT p99 (s)", "SLO attainment", "goodput (req/s)"):
        table.add_column(col, justify="left" if col == "policy" else "right")
    for p in result["points"]:
        table.add_row(p["policy"], f"{p['rate']:g}", f"{p['ttft_s']['p99'] or 0:.3f}", f"{p['tbt_s']['p99'] or 0:.4f}",
                      f"{p['slo_attainment']:.1%}", f"{p['goodput_rps']:.2f}")
    console.print(table)
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result, indent=1) + "\n")


@sim_app.command("fidelity")
def fidelity(quick: bool = QuickOption, json_path: Optional[Path] = JsonOption) -> None:
    """Replay a trace slice on one real engine replica and in the simulator; relative errors of TTFT and TBT."""
    from simulator.fidelity import main

    main(quick=quick, json_path=json_path)


@sim_app.command("scale")
def scale(quick: bool = QuickOption, json_path: Optional[Path] = JsonOption) -> None:
    """1,024 replicas over the Azure code trace's hour at 8x its rate (and 128 at 1x, 16x): simulated seconds per wall second, peak memory."""
    from simulator.scale import main

    main(quick=quick, json_path=json_path)


@sim_app.command("experiment")
def experiment(
    name: str = typer.Argument(..., help="sarathi | modserve | heron"),
    quick: bool = QuickOption,
    json_path: Optional[Path] = JsonOption,
    wind_csv: Optional[Path] = typer.Option(
        None, "--wind", help="heron: GEFCom2012's wind CSV, which Pavana does not carry (else $PAVANA_WIND_CSV, "
        "else ../shared/data/power/ beside the working directory)"),
) -> None:
    """Reproduce a paper's comparison with GPU profiles; prints a table, writes JSON and plots."""
    from simulator.experiments import EXPERIMENTS

    if name not in EXPERIMENTS:
        _fail(ValueError(f"experiment: unknown {name!r}; choose one of {sorted(EXPERIMENTS)}"))
    if wind_csv is not None and name != "heron":
        _fail(ValueError(f"--wind: only the heron experiment reads a wind series, not {name!r}"))
    EXPERIMENTS[name](quick=quick, json_path=json_path, **({"wind_csv": wind_csv} if wind_csv is not None else {}))
