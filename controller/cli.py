"""The `pavana` command line: run a cluster, check a spec, run the benchmarks."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from cluster.spec import ClusterSpec, SpecError

app = typer.Typer(help="Pavana: serve LLMs and multimodal models across a Ray cluster and across sites.", no_args_is_help=True)
spec_app = typer.Typer(help="Check and show cluster specs.", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks: each prints a table and writes JSON.", no_args_is_help=True)
app.add_typer(spec_app, name="spec")
app.add_typer(bench_app, name="bench")
console = Console()

SpecOption = typer.Option(None, "--spec", help="cluster spec (YAML); the embedded defaults when omitted")
QuickOption = typer.Option(False, "--quick", help="a shorter run with the same shape")
JsonOption = typer.Option(None, "--json", help="write the results as JSON to this file")


def load_spec(path: Optional[Path]) -> ClusterSpec:
    try:
        return ClusterSpec.from_yaml(path) if path else ClusterSpec.default()
    except (SpecError, OSError) as exc:
        # Escaped: error messages hold brackets ("[min_replicas, max_replicas]") that rich would
        # otherwise take for markup and swallow.
        console.print(f"[red]{escape(str(exc))}[/red]", soft_wrap=True)
        raise typer.Exit(1) from None


@app.command()
def up(
    spec: Optional[Path] = SpecOption,
    address: Optional[str] = typer.Option(None, help="join this Ray cluster instead of starting a local one"),
    insecure: bool = typer.Option(False, "--insecure", help="serve inference without API keys"),
    redis: Optional[str] = typer.Option(None, "--redis", help="telemetry Redis URL (default: the spec's, else a private redis-server)"),
) -> None:
    """Start Ray (local unless --address), deploy the spec's pools and router, serve until Ctrl-C."""
    from controller.up import up as run_up

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cluster_spec = load_spec(spec)

    def ready(endpoints) -> None:
        console.print(f"[green]Pavana is serving[/green] model [bold]{cluster_spec.model.name}[/bold]")
        console.print(f"  OpenAI API  {endpoints.http_url}")
        console.print(f"  gRPC        {endpoints.grpc_address}")
        if endpoints.api_key:
            console.print(f"  API key     {endpoints.api_key}")
        else:
            console.print("  [yellow]API keys are off (--insecure)[/yellow]")
        console.print(f"  Dashboard   {endpoints.http_url.removesuffix('/v1')}/dashboard  (operator token {endpoints.operator_token})")
        console.print("Stop with Ctrl-C or `pavana down`.")

    if redis:
        cluster_spec = cluster_spec.model_copy(update={"redis_url": redis})
    run_up(cluster_spec, address=address, insecure=insecure, on_ready=ready)


@app.command()
def status(
    spec: Optional[Path] = SpecOption,
    redis: Optional[str] = typer.Option(None, "--redis", help="telemetry Redis URL (default: the running `pavana up`'s, else the spec's)"),
) -> None:
    """Pools × sites with running and desired replicas, SLO attainment, the last decisions."""
    from controller.status import status as show_status
    from controller.up import recorded_redis_url

    cluster_spec = load_spec(spec)
    url = redis or recorded_redis_url()
    if url:
        cluster_spec = cluster_spec.model_copy(update={"redis_url": url})
    show_status(cluster_spec, console)


@app.command()
def down() -> None:
    """Stop what `pavana up` started."""
    from controller.up import down as run_down

    console.print(run_down())


@spec_app.command("validate")
def spec_validate(path: Path) -> None:
    """Exit 0 when the spec is valid; otherwise print every bad field and exit 1."""
    load_spec(path)
    console.print(f"[green]OK[/green] {escape(str(path))}")


@spec_app.command("show")
def spec_show(path: Optional[Path] = typer.Argument(None)) -> None:
    """Print the resolved spec (defaults filled in) as YAML."""
    console.print(load_spec(path).to_yaml(), end="", markup=False, highlight=False)


@bench_app.command("engine")
def bench_engine(quick: bool = QuickOption, json_path: Optional[Path] = JsonOption) -> None:
    """Engine throughput against transformers, and stall-free batching against prefill-first."""
    from benchmarks.engine import main

    main(quick=quick, json_path=json_path)


@bench_app.command("router")
def bench_router(quick: bool = QuickOption, json_path: Optional[Path] = JsonOption) -> None:
    """Requests/s and latency of a 1-token generation over HTTP against the pool's handle."""
    from benchmarks.router import main

    main(quick=quick, json_path=json_path)


@bench_app.command("power")
def bench_power(quick: bool = QuickOption, json_path: Optional[Path] = JsonOption) -> None:
    """Goodput of power-aware against power-oblivious serving over a week of wind (plot beside the JSON)."""
    from benchmarks.power import main

    main(quick=quick, json_path=json_path)


@bench_app.command("vision")
def bench_vision(quick: bool = QuickOption, json_path: Optional[Path] = JsonOption) -> None:
    """Vision encoder images/s by batch size (bytes in, and forward only) and the prefill tokens of one image."""
    from benchmarks.vision import main

    main(quick=quick, json_path=json_path)


if __name__ == "__main__":
    app()
