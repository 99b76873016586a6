"""`pavana bench serve`: build a workload, replay it against a live OpenAI-compatible API,
write the raw records and the report.

The tokenizer comes in from the caller (the command line loads the served model's), so this
package needs nothing of the engine.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.client import run_load
from bench.metrics import SLOTarget
from bench.prompts import PromptFactory, TextTokenizer
from bench.records import write_records
from bench.report import write_report
from bench.trace import read_azure_trace
from bench.workload import HTTPRequest, WorkloadError, from_trace, http_requests, parse_class_mix, plan, synthetic_arrivals



@dataclass(frozen=True)
class ServeOptions:
    url: str
    api_key: str | None = None
    model: str | None = None  # None: the first model of GET /models
    trace: Path | None = None
    trace_start: int = 0
    rate: float | None = None  # with a trace: its lengths at synthetic arrivals of this rate
    rate_scale: float = 1.0  # a trace's own arrivals, this many times as fast
    arrivals: str = "poisson"
    cv: float = 2.0  # gamma arrivals' coefficient of variation
    duration_s: float | None = None
    num_requests: int | None = None
    warmup: int = 0
    classes: str = "interactive=1"
    images_share: float = 0.0
    images_per_request: int = 1
    prompt_tokens: int = 256  # synthetic lengths, without a trace
    output_tokens: int = 64
    max_prompt_tokens: int | None = None
    max_output_tokens: int | None = None
    ignore_eos: bool = True
    seed: int = 0
    timeout_s: float = 300.0
    targets: dict[str, SLOTarget] = field(default_factory=dict)
    out_dir: Path = Path("bench-results")
    json_path: Path | None = None
    progress: bool = True


def validate(options: ServeOptions) -> dict[str, float]:
    """Everything about the options that can be checked before the server is asked anything;
    returns the class mix."""
    if options.trace is None and options.rate is None:
        raise WorkloadError("give --trace FILE or --rate R (or both: the trace's lengths at synthetic arrivals)")
    if options.duration_s is None and options.num_requests is None and options.trace is None:
        raise WorkloadError("give --duration S or --num-requests N for synthetic arrivals")
    if options.trace is None and options.duration_s is not None and options.num_requests is not None:
        raise WorkloadError("give either --duration S or --num-requests N for synthetic arrivals, not both")
    if options.arrivals not in ("poisson", "gamma"):
        raise WorkloadError(f"arrivals: must be 'poisson' or 'gamma', got {options.arrivals!r}")
    if options.warmup < 0:
        raise WorkloadError(f"warmup: must be >= 0, got {options.warmup}")
    if options.prompt_tokens < 1 or options.output_tokens < 1:
        raise WorkloadError("prompt_tokens and output_tokens: must be >= 1")
    mix = parse_class_mix(options.classes)
    missing = sorted(set(mix) - options.targets.keys())
    if missing:
        raise WorkloadError(f"classes: no SLO targets for {missing}; known classes {sorted(options.targets)}")
    return mix


def served_model(url: str, api_key: str | None, timeout_s: float = 30.0) -> tuple[str, int | None]:
    """The first model the API lists and its context length (`max_model_len`, when given)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    response = httpx.get(url.rstrip("/") + "/models", headers=headers, timeout=timeout_s)
    response.raise_for_status()
    models = response.json().get("data") or []
    if not models:
        raise WorkloadError(f"{url}/models lists no model")
    return models[0]["id"], models[0].get("max_model_len")


def build_requests(options: ServeOptions, tokenizer: TextTokenizer, model: str, max_context: int | None) -> tuple[list[HTTPRequest], dict[str, Any]]:
    """The run's requests and the description of its workload that the report carries."""
    mix = validate(options)
    count = None if options.duration_s is not None else options.num_requests
    workload: dict[str, Any] = {"url": options.url, "model": model, "classes": options.classes, "seed": options.seed}
    trace_images = None
    if options.trace is not None:
        rows = read_azure_trace(options.trace, start=options.trace_start, limit=options.num_requests)
        workload.update(trace=Path(options.trace).name, trace_start=options.trace_start, trace_rows=len(rows))
        lengths = [(r.context_tokens, r.generated_tokens) for r in rows]
        if options.rate is None:
            rows = from_trace(rows, rate_scale=options.rate_scale, duration_s=options.duration_s)
            arrivals = [r.arrival_s for r in rows]
            if any(r.num_images for r in rows):
                trace_images = [r.num_images for r in rows]
            span = arrivals[-1] if len(arrivals) > 1 else 0.0
            workload.update(arrivals="trace", rate_scale=options.rate_scale,
                            offered_rate_rps=(len(arrivals) - 1) / span if span > 0 else None)
        else:
            # The trace's lengths (cycled) at synthetic arrivals: as many as its rows, unless a
            # duration or a number of requests says otherwise.
            synthetic_count = None if options.duration_s is not None else (count or len(rows))
            arrivals = synthetic_arrivals(options.arrivals, options.rate, count=synthetic_count, duration_s=options.duration_s, cv=options.cv, seed=options.seed)
    else:
        lengths = [(options.prompt_tokens, options.output_tokens)]
        arrivals = synthetic_arrivals(options.arrivals, options.rate, count=count, duration_s=options.duration_s, cv=options.cv, seed=options.seed)
        workload.update(prompt_tokens=options.prompt_tokens, output_tokens=options.output_tokens)
    if options.rate is not None:
        workload.update(arrivals=options.arrivals, rate_rps=options.rate, **({"cv": options.cv} if options.arrivals == "gamma" else {}))
    planned, clamped = plan(
        arrivals, lengths, class_mix=mix, images_share=options.images_share, images_per_request=options.images_per_request,
        trace_images=trace_images, max_context_tokens=max_context, max_prompt_tokens=options.max_prompt_tokens,
        max_output_tokens=options.max_output_tokens, seed=options.seed,
    )
    workload.update(
        num_requests=len(planned), duration_s=options.duration_s, images_share=options.images_share,
        max_prompt_tokens=options.max_prompt_tokens, max_output_tokens=options.max_output_tokens,
        max_context_tokens=max_context, clamped_requests=clamped, ignore_eos=options.ignore_eos,
        mean_prompt_tokens=sum(p.prompt_tokens for p in planned) / len(planned),
        mean_output_tokens=sum(p.output_tokens for p in planned) / len(planned),
    )
    requests = http_requests(planned, PromptFactory(tokenizer, seed=options.seed), model=model, ignore_eos=options.ignore_eos, seed=options.seed)
    return requests, workload


def run_serve(options: ServeOptions, tokenizer: TextTokenizer) -> dict[str, Any]:
    """Build, send, record, report. Returns the report (also in `out_dir`)."""
    validate(options)
    model, max_context = served_model(options.url, options.api_key)
    if options.model is not None:
        model = options.model
    requests, workload = build_requests(options, tokenizer, model, max_context)
    if options.warmup >= len(requests):
        raise WorkloadError(f"warmup: {options.warmup} would leave none of the {len(requests)} requests to measure")
    records = asyncio.run(run_load(options.url, requests, api_key=options.api_key, warmup=options.warmup, timeout_s=options.timeout_s, progress=options.progress))
    out = Path(options.out_dir)
    write_records(out / "requests.jsonl", records)
    return write_report(out, records, options.targets, workload=workload, json_path=options.json_path)


def targets_from_spec(spec: Any) -> dict[str, SLOTarget]:
    """The SLO targets of a `ClusterSpec`'s QoS classes."""
    return {c.name: SLOTarget(ttft_s=c.slo.ttft_s, tbt_s=c.slo.tbt_s) for c in spec.qos_classes}


def parse_slo_overrides(text: str) -> dict[str, SLOTarget]:
    """`"interactive=1.0:0.1,batch=30:1"` → targets (TTFT s : TBT s) per class."""
    targets: dict[str, SLOTarget] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        ttft_s, colon, tbt_s = value.partition(":")
        if not (sep and colon and name.strip()):
            raise WorkloadError(f"slo: expected class=TTFT:TBT like 'interactive=1.0:0.1', got {part!r}")
        try:
            targets[name.strip()] = SLOTarget(ttft_s=float(ttft_s), tbt_s=float(tbt_s))
        except ValueError as exc:
            raise WorkloadError(f"slo: {part!r}: {exc}") from None
    return targets
