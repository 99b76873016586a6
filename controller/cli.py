"""The `pavana` command line: run a cluster, check a spec, run the benchmarks."""

from __future__ import annotations

from pathlib import Path
from typing import Optional


import typer
from rich.console import Console
from rich.markup import escape

from cluster.spec import ClusterSpec, SpecError
from controller.ingress_mode import DEFAULT as INGRESS_DEFAULT

app = typer.Typer(help="Pavana: serve LLMs and multimodal models across a Ray cluster and across sites.", no_args_is_help=True)
spec_app = typer.Typer(help="Check and show cluster specs.", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks: each prints a table and writes JSON.", no_args_is_help=True)
app.add_typer(spec_app, name="spec")
app.add_typer(bench_app, name="bench")
from simulator.cli import profile_command, sim_app  # noqa: E402

app.add_typer(sim_app, name="sim")
app.command("profile")(profile_command)
console = Console()

SpecOption = typer.Option(None, "--spec", help="cluster spec (YAML); the embedded defaults when omitted")
QuickOption = typer.Option(False, "--quick", help="a shorter run with the same shape")
JsonOption = typer.Option(None, "--json", help="write the results as JSON to this file")


def load_spec(path: Optional[Path]) -> ClusterSpec:
    try:
        return ClusterSpec.load(path)
    except SpecError as exc:
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
    record: Optional[Path] = typer.Option(None, "--record", help="append every control round (observation, memory, decisions) to this JSON-lines file"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="show Ray's and Serve's INFO lines and the replicas' output too"),
    host: str = typer.Option("127.0.0.1", "--host", help="interface the HTTP and gRPC APIs listen on (0.0.0.0: all; needs API keys)"),
    ingress: str = typer.Option(INGRESS_DEFAULT, "--ingress", help="how requests reach the router: proxy (Ray Serve's), haproxy, haproxy-optimized, or auto (HAProxy where found); local clusters only"),
) -> None:
    """Start Ray (local unless --address), deploy the spec's pools and router, serve until Ctrl-C."""
    from controller.logs import configure, ray_logs_dir
    from controller.ingress_mode import IngressUnavailable, choose
    from controller.up import check_exposure, state_dir
    from controller.up import up as run_up

    log_file = configure(state_dir() / "up.log", verbose=verbose)
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
        console.print(f"  Ingress     {endpoints.ingress}")
        console.print(f"  Logs        {log_file} (Pavana), {ray_logs_dir()} (Ray and the replicas)")
        console.print("Stop with Ctrl-C or `pavana down`.")

    if redis:
        cluster_spec = cluster_spec.model_copy(update={"redis_url": redis})
    try:
        check_exposure(host, insecure=insecure)
        if not address:
            choose(ingress)
    except (ValueError, IngressUnavailable) as exc:
        console.print(f"[red]{escape(str(exc))}[/red]", soft_wrap=True)
        raise typer.Exit(1) from None
    run_up(
        cluster_spec, address=address, insecure=insecure, on_ready=ready, record_path=record.resolve() if record else None,
        verbose=verbose, host=host, ingress=ingress,
    )


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


@bench_app.command("chaos")
def bench_chaos(quick: bool = QuickOption, json_path: Optional[Path] = JsonOption) -> None:
    """Replicas of every pool, the reconcile actor and Redis killed under traffic at 70% of capacity: failed, broken, leaked."""
    from benchmarks.chaos import main

    main(quick=quick, json_path=json_path)


@bench_app.command("engine")
def bench_engine(quick: bool = QuickOption, json_path: Optional[Path] = JsonOption) -> None:
    """Engine throughput against transformers, and stall-free batching against prefill-first."""
    from benchmarks.engine import main

    main(quick=quick, json_path=json_path)


@bench_app.command("gpu-engines")
def bench_gpu_engines(quick: bool = QuickOption, json_path: Optional[Path] = JsonOption) -> None:
    """Pavana's engine and vLLM side by side on one GPU: TTFT, TBT and tokens/s (needs a GPU and vllm)."""
    from benchmarks.gpu_engines import main

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


@bench_app.command("overload")
def bench_overload(quick: bool = QuickOption, json_path: Optional[Path] = JsonOption) -> None:
    """QoS at 1.5× the local cluster's capacity: interactive TTFT against its SLO, refusals per class."""
    from benchmarks.overload import main

    main(quick=quick, json_path=json_path)


@bench_app.command("soak")
def bench_soak(
    quick: bool = QuickOption,
    json_path: Optional[Path] = JsonOption,
    minutes: Optional[float] = typer.Option(None, help="how long to soak (default 10, 2 with --quick)"),
) -> None:
    """A bounded soak at 80% of capacity: lost requests, memory per Ray process, leaked KV blocks."""
    from benchmarks.soak import main

    main(quick=quick, json_path=json_path, minutes=minutes)


@bench_app.command("vision")
def bench_vision(quick: bool = QuickOption, json_path: Optional[Path] = JsonOption) -> None:
    """Vision encoder images/s by batch size (bytes in, and forward only) and the prefill tokens of one image."""
    from benchmarks.vision import main

    main(quick=quick, json_path=json_path)


@bench_app.command("serve")
def bench_serve(
    url: str = typer.Option("http://127.0.0.1:8000/v1", help="the OpenAI API's base URL"),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="PAVANA_API_KEY"),
    trace: Optional[Path] = typer.Option(None, help="an Azure LLM inference trace (TIMESTAMP, ContextTokens, GeneratedTokens)"),
    trace_start: int = typer.Option(0, help="first row of the trace to replay"),
    rate: Optional[float] = typer.Option(None, help="requests/s of synthetic arrivals (with --trace: its lengths at these arrivals)"),
    rate_scale: float = typer.Option(1.0, help="replay the trace's own arrivals this many times as fast"),
    arrivals: str = typer.Option("poisson", help="poisson | gamma"),
    cv: float = typer.Option(2.0, help="coefficient of variation of gamma arrivals"),
    duration: Optional[float] = typer.Option(None, help="seconds of arrivals"),
    num_requests: Optional[int] = typer.Option(None, help="number of requests (a trace: rows from --trace-start)"),
    warmup: int = typer.Option(0, help="first requests left out of the report"),
    classes: str = typer.Option("interactive=1", help="QoS class shares, e.g. interactive=0.7,batch=0.3"),
    slo: Optional[str] = typer.Option(None, help="targets per class overriding the spec's, e.g. interactive=1.0:0.1 (TTFT:TBT s)"),
    images_share: float = typer.Option(0.0, help="share of requests that carry images"),
    images_per_request: int = typer.Option(1, help="images in such a request"),
    prompt_tokens: int = typer.Option(256, help="prompt length without a trace"),
    output_tokens: int = typer.Option(64, help="output length without a trace"),
    max_prompt_tokens: Optional[int] = typer.Option(None, help="cap on prompt lengths"),
    max_output_tokens: Optional[int] = typer.Option(None, help="cap on output lengths"),
    seed: int = typer.Option(0),
    spec: Optional[Path] = SpecOption,
    tokenizer: Optional[Path] = typer.Option(None, help="model directory whose tokenizer builds the prompts (default: the bundled model)"),
    json_path: Optional[Path] = JsonOption,
    out: Path = typer.Option(Path("bench-results"), "--out", help="folder for requests.jsonl, report.json/.md and plots"),
) -> None:
    """Replay a trace or synthetic arrivals against a live API: TTFT, TBT, fluidity-index, SLO attainment, goodput."""
    import httpx

    from bench.report import summary_table
    from bench.serve import ServeOptions, parse_slo_overrides, run_serve, targets_from_spec
    from bench.trace import TraceError
    from bench.workload import WorkloadError
    from workers.engine.default_model import ensure_default_model
    from workers.engine.tokenizer import Tokenizer

    try:
        targets = {**targets_from_spec(load_spec(spec)), **(parse_slo_overrides(slo) if slo else {})}
        options = ServeOptions(
            url=url, api_key=api_key, trace=trace, trace_start=trace_start, rate=rate, rate_scale=rate_scale, arrivals=arrivals,
            cv=cv, duration_s=duration, num_requests=num_requests, warmup=warmup, classes=classes, images_share=images_share,
            images_per_request=images_per_request, prompt_tokens=prompt_tokens, output_tokens=output_tokens,
            max_prompt_tokens=max_prompt_tokens, max_output_tokens=max_output_tokens, seed=seed, targets=targets,
            out_dir=out, json_path=json_path,
        )
        report = run_serve(options, Tokenizer.from_dir(tokenizer or ensure_default_model()))
    except (WorkloadError, TraceError, ValueError, httpx.HTTPError) as exc:
        console.print(f"[red]{escape(str(exc))}[/red]", soft_wrap=True)
        raise typer.Exit(1) from None
    console.print(summary_table(report))
    console.print(f"Report, plots and per-request records in {escape(str(out))}")


@bench_app.command("topologies")
def bench_topologies(quick: bool = QuickOption, json_path: Optional[Path] = JsonOption) -> None:
    """One trace slice against colocated vs disaggregated pools and sarathi vs prefill_first (plots beside the JSON)."""
    from benchmarks.serve_topologies import main

    main(quick=quick, json_path=json_path)


if __name__ == "__main__":
    app()
