"""A run's report: JSON, a markdown summary, and plots (matplotlib, Agg).

The report guards against the anti-patterns of evaluation Etalon names: warm-up requests
are left out and their number is stated; the workload (trace or arrival process, rate) is
named; every percentile carries its sample count; TBT is reported over every gap of every
request (its P99 and max), never as a per-request mean that would hide a stall; failures
count against SLO attainment instead of vanishing from the latency figures; and how late
the client sent requests is reported, so a saturated load generator cannot pass for a slow
server.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.metrics import RequestMetrics, SLOTarget, Summary, by_class, percentiles, request_metrics, summarize
from bench.records import RequestRecord


def measure(records: Sequence[RequestRecord], targets: Mapping[str, SLOTarget]) -> list[RequestMetrics]:
    """Metrics of each record against its class's targets. Token times are the arrival times
    of the streamed chunks that carried text; token counts are the server's (usage chunk)."""
    unknown = sorted({r.qos_class for r in records} - targets.keys())
    if unknown:
        raise ValueError(f"no SLO targets for QoS classes {unknown} (targets exist for {sorted(targets)})")
    return [
        request_metrics(
            index=r.index, qos_class=r.qos_class, arrival_s=r.arrival_s, token_times_s=r.chunk_times_s, ok=r.ok,
            target=targets[r.qos_class], num_output_tokens=max(r.usage_completion_tokens or 0, len(r.chunk_times_s)),
        )
        for r in records
    ]


def _finite(value: float | None) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def _summary_dict(s: Summary) -> dict[str, Any]:
    out: dict[str, Any] = {
        "num_requests": s.num_requests,
        "num_failed": s.num_failed,
        **s.ttft.as_dict("ttft"),
        **s.tbt.as_dict("tbt"),
        **s.tpot.as_dict("tpot"),
        **s.e2e.as_dict("e2e"),
        **s.normalized_latency.as_dict("normalized_latency"),
        "fluidity_index": s.fluidity_index,
        "fluidity_index_p1": s.fluidity_index_p1,
        "fluidity_share_ge_0_9": s.fluidity_share_ge_0_9,
        "slo_attainment": s.slo_attainment,
        "goodput_rps": s.goodput_rps,
        "throughput_rps": s.throughput_rps,
        "output_tokens_per_s": s.output_tokens_per_s,
        "window_s": s.window_s,
    }
    return {k: _finite(v) if isinstance(v, float) else v for k, v in out.items()}


def build_report(
    records: Sequence[RequestRecord],
    targets: Mapping[str, SLOTarget],
    *,
    workload: Mapping[str, Any],
) -> dict[str, Any]:
    """The JSON report. `workload` names what was offered (trace file or arrival process,
    rate, slice, clamping) and is copied in as it is."""
    measured_records = [r for r in records if not r.warmup]
    if not measured_records:
        raise ValueError(f"all {len(records)} requests are warm-up: nothing left to measure")
    metrics = measure(measured_records, targets)
    lag = percentiles(r.sent_s - r.arrival_s for r in measured_records if r.sent_s is not None)
    failures: dict[str, int] = {}
    for r in measured_records:
        if not r.ok:
            key = f"{r.outcome}" + (f" {r.status}" if r.status and r.status != 200 else "")
            failures[key] = failures.get(key, 0) + 1
    usage_tokens = sum(r.usage_completion_tokens or 0 for r in measured_records)
    overall = summarize(metrics)
    report: dict[str, Any] = {
        "workload": dict(workload),
        "warmup_requests_excluded": len(records) - len(measured_records),
        **_summary_dict(overall),
        "classes": {
            name: {"slo_ttft_s": targets[name].ttft_s, "slo_tbt_s": targets[name].tbt_s, **_summary_dict(summarize(group, overall.window_s))}
            for name, group in by_class(metrics).items()
        },
        "failures": failures,
        "first_error": next((r.error for r in measured_records if r.error), None),
        "send_lag_p99_s": _finite(lag.p99),
        "send_lag_max_s": _finite(lag.max),
        "streamed_chunks": sum(len(r.chunk_times_s) for r in measured_records),
        "usage_completion_tokens": usage_tokens,
    }
    return report


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def to_markdown(report: Mapping[str, Any]) -> str:
    w = report["workload"]
    lines = [
        "# Serving benchmark",
        "",
        "Workload: " + ", ".join(f"{k} = {v}" for k, v in w.items()),
        "",
        f"Measured {report['num_requests']} requests ({report['num_failed']} failed); "
        f"{report['warmup_requests_excluded']} warm-up requests excluded. Window {report['window_s']:.1f} s.",
        f"Client send lag: P99 {_fmt(report['send_lag_p99_s'], 4)} s, max {_fmt(report['send_lag_max_s'], 4)} s. "
        f"Tokens: {report['usage_completion_tokens']} by the usage chunks, {report['streamed_chunks']} streamed chunks with text.",
        "",
        "| class | SLO (TTFT / TBT s) | n | TTFT p50 / p99 (s) | TBT p50 / p99 / max (s), n gaps | TPOT p50 (s) | fluidity mean / p1 | SLO attainment | goodput (req/s) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    rows = [("all", None, report)] + [(name, c, c) for name, c in report["classes"].items()]
    for name, cls, r in rows:
        slo = f"{cls['slo_ttft_s']:g} / {cls['slo_tbt_s']:g}" if cls else "per class"
        lines.append(
            f"| {name} | {slo} | {r['num_requests']} | {_fmt(r['ttft_p50_s'])} / {_fmt(r['ttft_p99_s'])} (n={r['ttft_count']}) "
            f"| {_fmt(r['tbt_p50_s'])} / {_fmt(r['tbt_p99_s'])} / {_fmt(r['tbt_max_s'])}, n={r['tbt_count']} "
            f"| {_fmt(r['tpot_p50_s'])} (n={r['tpot_count']}) | {_fmt(r['fluidity_index'])} / {_fmt(r['fluidity_index_p1'])} "
            f"| {_fmt(r['slo_attainment'])} | {_fmt(r['goodput_rps'])} |"
        )
    if report["failures"]:
        lines += ["", "Failures: " + ", ".join(f"{k}: {v}" for k, v in report["failures"].items()), f"First error: `{report['first_error']}`"]
    lines += [
        "",
        "TTFT and every TBT gap count from each request's scheduled arrival and the arrival of each streamed chunk at the client. "
        "The fluidity-index is Etalon's: the share of per-token deadlines (TTFT target, then one TBT target per token, slack "
        "carried forward, re-based after a miss) that were met. A request meets its SLO when it succeeded, its TTFT and the P99 "
        "of its own gaps are within its class's targets.",
        "",
    ]
    return "\n".join(lines)


def write_plots(metrics: Sequence[RequestMetrics], out_dir: str | Path, *, title: str = "") -> list[Path]:
    """CDFs of TTFT and of every TBT gap, latency and fluidity over the run, one PNG each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    classes = by_class(metrics)
    paths: list[Path] = []

    def save(fig, name: str) -> None:
        fig.tight_layout()
        path = out / name
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)

    for key, label, name in (("ttft", "TTFT (s)", "ttft_cdf.png"), ("tbt", "time between tokens (s)", "tbt_cdf.png")):
        fig, ax = plt.subplots(figsize=(6, 4))
        for cls, group in classes.items():
            values = np.sort([r.ttft_s for r in group if r.ttft_s is not None] if key == "ttft" else [g for r in group for g in r.tbt_s])
            if values.size:
                ax.step(values, np.arange(1, values.size + 1) / values.size, where="post", label=f"{cls} (n={values.size})")
        ax.set_xlabel(label)
        ax.set_ylabel("share ≤ x")
        ax.set_title(f"{label.split(' (')[0]} CDF {title}".strip())
        ax.grid(alpha=0.3)
        ax.legend()
        save(fig, name)

    fig, ax = plt.subplots(figsize=(7, 4))
    for cls, group in classes.items():
        ax.scatter([r.arrival_s for r in group if r.e2e_s is not None], [r.e2e_s for r in group if r.e2e_s is not None], s=10, label=f"{cls} end-to-end")
        ax.scatter([r.arrival_s for r in group if r.ttft_s is not None], [r.ttft_s for r in group if r.ttft_s is not None], s=10, marker="x", label=f"{cls} TTFT")
    failed = [r.arrival_s for r in metrics if not r.ok]
    if failed:
        ax.scatter(failed, [0] * len(failed), marker="|", color="red", s=80, label=f"failed (n={len(failed)})")
    ax.set_xlabel("arrival (s from start)")
    ax.set_ylabel("latency (s)")
    ax.set_title(f"Latency over time {title}".strip())
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save(fig, "latency_over_time.png")

    fig, ax = plt.subplots(figsize=(7, 4))
    for cls, group in classes.items():
        ax.scatter([r.arrival_s for r in group], [r.fluidity_index for r in group], s=10, label=cls)
    ordered = sorted(metrics, key=lambda r: r.arrival_s)
    if ordered:
        window = max(1, len(ordered) // 10)
        values = np.array([r.fluidity_index for r in ordered], dtype=float)
        rolling = np.convolve(np.nan_to_num(values), np.ones(window) / window, mode="valid")
        ax.plot([r.arrival_s for r in ordered][window - 1 :], rolling, color="black", label=f"rolling mean of {window}")
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("arrival (s from start)")
    ax.set_ylabel("fluidity-index")
    ax.set_title(f"Fluidity over time {title}".strip())
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save(fig, "fluidity_over_time.png")
    return paths


def write_report(
    out_dir: str | Path,
    records: Sequence[RequestRecord],
    targets: Mapping[str, SLOTarget],
    *,
    workload: Mapping[str, Any],
    json_path: str | Path | None = None,
) -> dict[str, Any]:
    """report.json, report.md and the plots in `out_dir` (and the JSON at `json_path` too);
    returns the report with the plots' paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = build_report(records, targets, workload=workload)
    plots = write_plots(measure([r for r in records if not r.warmup], targets), out)
    report["plots"] = [str(p) for p in plots]
    text = json.dumps(report, indent=2) + "\n"
    (out / "report.json").write_text(text)
    if json_path is not None:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(text)
    (out / "report.md").write_text(to_markdown(report))
    return report


def summary_table(report: Mapping[str, Any], title: str | None = None):
    """The report's headline figures per class, as a `rich` table for the terminal."""
    from rich.table import Table

    w = report["workload"]
    offered = w.get("trace") or f"{w.get('arrivals')} at {w.get('rate_rps')} req/s"
    table = Table(title=title or f"{offered}: {report['num_requests']} requests measured, {report['warmup_requests_excluded']} warm-up excluded")
    for col in ("class", "n", "failed", "TTFT p50/p99 (s)", "TBT p99/max (s)", "gaps", "fluidity", "SLO att.", "goodput (req/s)"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for name, r in [("all", report), *report["classes"].items()]:
        table.add_row(
            name, str(r["num_requests"]), str(r["num_failed"]), f"{_fmt(r['ttft_p50_s'])} / {_fmt(r['ttft_p99_s'])}",
            f"{_fmt(r['tbt_p99_s'])} / {_fmt(r['tbt_max_s'])}", str(r["tbt_count"]), _fmt(r["fluidity_index"]),
            _fmt(r["slo_attainment"]), _fmt(r["goodput_rps"]),
        )
    return table
