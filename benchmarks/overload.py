"""`pavana bench overload`: QoS classes at 1.5×, 2× and 3× the capacity of a local cluster
(after Niyama).

1. Capacity. Interactive-only Poisson traffic at rising rates against one colocated replica,
   admission wide open; the capacity is the highest rate at which the interactive class meets
   its SLO (TTFT and TBT targets, as attainment counts them) for ≥ 99% of requests, none failing.
2. Overload, at each of `LEVELS` × that rate: Poisson traffic, a mix of interactive, standard
   and batch requests, replayed twice with the same arrivals: once without QoS (one priority
   for every class and no admission limit; the engine still orders its queue by each
   request's TTFT deadline, so batch requests wait behind the others) and once with Pavana's
   QoS (class priorities in the engine's scheduler, lower classes refused at admission with
   429 + Retry-After as the ingress fills, and while their measured wait for a first token
   exceeds their TTFT target: `max_queue_s`, `router/queue_wait.py`). The ingress's
   `max_in_flight` comes from Little's law at capacity (capacity × mean end-to-end latency
   there, × 1.5 headroom).

Goodput counts the requests of every class that met their class's TTFT and TBT targets, per
second. Goal at every level: interactive SLO attainment ≥ 0.99 with QoS, and goodput with QoS
≥ without. JSON: `levels.<x>.interactive_slo_attainment`, `levels.<x>.goodput_rps_qos`,
`levels.<x>.goodput_rps_no_qos` (and more per level), and at 1.5× as before
`interactive_ttft_p99_s`, `interactive_ttft_slo_s`, `refused_by_class` (the QoS run) and
`baseline` (the run without QoS).
"""

from __future__ import annotations

import math
import time
import uuid
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.common import command_line, machine_info, run_from_command_line, write_json
from benchmarks.local_serving import API_KEY, deployed, local_serve, poisson_requests, replay

console = Console()
PROMPT_TOKENS, OUTPUT_TOKENS = 256, 64
MIX = {"interactive": 0.3, "standard": 0.3, "batch": 0.4}
CLASSES = [  # name, priority, TTFT SLO, TBT SLO, admit below this share of max_in_flight
    ("interactive", 0, 1.5, 0.5, 1.0),
    ("standard", 1, 6.0, 1.0, 0.8),
    ("batch", 2, 30.0, 2.0, 0.6),
]
LEVELS = (1.5, 2.0, 3.0)  # offered load over the measured capacity
HEADLINE = 1.5  # the level whose figures keep their top-level JSON keys
INTERACTIVE_ATTAINMENT_GOAL = 0.99
OPEN = 100_000  # max_in_flight that never refuses


def spec_for(ports, *, qos: bool, max_in_flight: int = OPEN):
    from cluster.spec import ClusterSpec

    classes = [
        {"name": n, "priority": p if qos else 0, "slo": {"ttft_s": t, "tbt_s": b}, "admit_below_load": a if qos else 1.0,
         # Relegation by measured wait: a lower class waiting past its TTFT target is refused.
         "max_queue_s": t if qos and p > 0 else None}
        for n, p, t, b, a in CLASSES
    ]
    return ClusterSpec.parse({
        "topology": "colocated",
        "pools": {"colocated": {"min_replicas": 1, "max_replicas": 1, "initial_replicas": 1}},
        "engine": {"num_threads": 2},
        "qos_classes": classes,
        "max_in_flight": max_in_flight,
        "api_keys": [API_KEY],
        "telemetry_prefix": f"bench-overload:{uuid.uuid4().hex}",
        "http_port": ports.http_port,
        "grpc_port": ports.grpc_port,
    })


def report_of(records: list, spec) -> dict[str, Any]:
    from bench.report import build_report
    from bench.serve import targets_from_spec

    report = build_report(records, targets_from_spec(spec), workload={})
    refused: dict[str, int] = {name: 0 for name in MIX}
    for r in records:
        if not r.warmup and r.status == 429:
            refused[r.qos_class] += 1
    report["refused_by_class"] = refused
    return report


def probe(url: str, tokenizer, spec, rate: float, duration_s: float, seed: int) -> dict[str, Any]:
    """Interactive-only Poisson traffic at `rate`: do ≥ 99% of requests meet both targets, none failing?"""
    slo = spec.qos_class("interactive").slo
    requests = poisson_requests(url, tokenizer, rate=rate, duration_s=duration_s, classes={"interactive": 1.0},
                                prompt_tokens=PROMPT_TOKENS, output_tokens=OUTPUT_TOKENS, seed=seed)
    report = report_of(replay(url, requests, warmup=2), spec)
    attainment = report["classes"].get("interactive", {}).get("slo_attainment", 0.0)
    ok = report["num_failed"] == 0 and attainment >= INTERACTIVE_ATTAINMENT_GOAL
    def seconds(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    console.print(f"probe {rate:.2f} req/s: interactive attainment {attainment:.2f} (TTFT p99 {seconds(report['ttft_p99_s'])} s of "
                  f"{slo.ttft_s} s, TBT p99 {seconds(report['tbt_p99_s'])} s of {slo.tbt_s} s) -> {'ok' if ok else 'over'}")
    return {"rate_rps": rate, "slo_attainment": attainment, "ttft_p99_s": report["ttft_p99_s"], "tbt_p99_s": report["tbt_p99_s"],
            "e2e_p50_s": report["e2e_p50_s"], "num_requests": report["num_requests"], "num_failed": report["num_failed"], "within_slo": ok}


def find_capacity(url: str, tokenizer, spec, duration_s: float, *, start: float = 0.5, growth: float = 1.5,
                  most: float = 64.0, refine: int = 2) -> tuple[float, float, list[dict[str, Any]]]:
    """The highest probed rate meeting the interactive SLO, and the median end-to-end
    latency there: rates grow by `growth` from `start` until one fails, then `refine`
    bisection steps between the last good and the first bad rate."""
    capacity, e2e, probes, failed_at = 0.0, 0.0, [], None
    rate, seed = start, 100
    while rate <= most:
        probes.append(probe(url, tokenizer, spec, rate, duration_s, seed))
        if not probes[-1]["within_slo"]:
            failed_at = rate
            break
        capacity, e2e = rate, probes[-1]["e2e_p50_s"]
        rate, seed = rate * growth, seed + 1
    if capacity == 0.0:  # not even `start` meets the SLO: the caller reports the probes
        return 0.0, 0.0, probes
    for k in range(refine if failed_at is not None else 0):
        rate = (capacity + failed_at) / 2
        probes.append(probe(url, tokenizer, spec, rate, duration_s, 200 + k))
        if probes[-1]["within_slo"]:
            capacity, e2e = rate, probes[-1]["e2e_p50_s"]
        else:
            failed_at = rate
    return capacity, e2e, probes


def level_summary(level: float, capacity: float, qos: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """One overload level's figures against its goals: the interactive class's SLO attainment
    with QoS, and the goodput of every class together with QoS and without."""

    def attainment(report: dict[str, Any]) -> float:
        return report["classes"].get("interactive", {}).get("slo_attainment", 0.0)

    def goodput(report: dict[str, Any]) -> float:
        return sum(c["goodput_rps"] for c in report["classes"].values())

    summary = {
        "offered_rps": level * capacity,
        "interactive_slo_attainment": attainment(qos),
        "interactive_slo_attainment_no_qos": attainment(base),
        "interactive_ttft_p99_s": qos["classes"].get("interactive", {}).get("ttft_p99_s"),
        "interactive_ttft_p99_s_no_qos": base["classes"].get("interactive", {}).get("ttft_p99_s"),
        "goodput_rps_qos": goodput(qos),
        "goodput_rps_no_qos": goodput(base),
        "goodput_by_class_qos": {name: c["goodput_rps"] for name, c in qos["classes"].items()},
        "goodput_by_class_no_qos": {name: c["goodput_rps"] for name, c in base["classes"].items()},
        "refused_by_class": qos["refused_by_class"],
    }
    summary["interactive_goal_met"] = summary["interactive_slo_attainment"] >= INTERACTIVE_ATTAINMENT_GOAL
    summary["goodput_goal_met"] = summary["goodput_rps_qos"] >= summary["goodput_rps_no_qos"]
    return summary


def main(quick: bool = False, json_path: Path | None = None) -> dict[str, Any]:
    from workers.engine.default_model import ensure_default_model
    from workers.engine.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_dir(ensure_default_model())
    probe_s, overload_s = (15.0, 30.0) if quick else (40.0, 120.0)
    started = time.perf_counter()
    with local_serve() as ports:
        open_spec = spec_for(ports, qos=False)
        with deployed(open_spec, "overload", ports) as url:
            capacity, e2e_at_capacity, probes = find_capacity(url, tokenizer, open_spec, probe_s)
        if capacity == 0.0:
            console.print(f"[red]not even {probes[0]['rate_rps']:g} req/s meets the interactive SLO on this machine: no capacity, no overload levels[/red]")
            result = {"benchmark": "overload", "quick": quick, "machine": machine_info(), "command": command_line(),
                      "wall_s": time.perf_counter() - started, "capacity_rps": 0.0, "capacity_probes": probes, "levels": {},
                      "goals_met": False, "interactive_attainment_goal": INTERACTIVE_ATTAINMENT_GOAL}
            write_json(json_path, result)
            return result
        max_in_flight = max(2, math.ceil(capacity * e2e_at_capacity * 1.5))
        console.print(f"capacity {capacity:.2f} req/s; QoS max_in_flight {max_in_flight}; levels {', '.join(f'{x:g}x' for x in LEVELS)}")
        runs: dict[float, dict[str, dict[str, Any]]] = {}
        for level in LEVELS:
            offered = level * capacity
            runs[level] = {}
            for name, spec in (("without QoS", spec_for(ports, qos=False)), ("with QoS", spec_for(ports, qos=True, max_in_flight=max_in_flight))):
                with deployed(spec, "overload", ports) as url:
                    requests = poisson_requests(url, tokenizer, rate=offered, duration_s=overload_s, classes=MIX,
                                                prompt_tokens=PROMPT_TOKENS, output_tokens=OUTPUT_TOKENS, seed=7)
                    runs[level][name] = report_of(replay(url, requests, warmup=3), spec)
    slo = dict((n, t) for n, _, t, _, _ in CLASSES)
    levels = {f"{level:g}": level_summary(level, capacity, r["with QoS"], r["without QoS"]) for level, r in runs.items()}
    qos, base = runs[HEADLINE]["with QoS"], runs[HEADLINE]["without QoS"]
    result = {
        "benchmark": "overload",
        "quick": quick,
        "machine": machine_info(),
        "command": command_line(),
        "wall_s": time.perf_counter() - started,
        "prompt_tokens": PROMPT_TOKENS,
        "output_tokens": OUTPUT_TOKENS,
        "class_mix": MIX,
        "capacity_rps": capacity,
        "capacity_probes": probes,
        "offered_rps": HEADLINE * capacity,
        "overload_factor": HEADLINE,
        "max_in_flight": max_in_flight,
        "interactive_attainment_goal": INTERACTIVE_ATTAINMENT_GOAL,
        "levels": levels,
        "goals_met": all(v["interactive_goal_met"] and v["goodput_goal_met"] for v in levels.values()),
        "interactive_ttft_p99_s": qos["classes"].get("interactive", {}).get("ttft_p99_s"),
        "interactive_ttft_slo_s": slo["interactive"],
        "refused_by_class": qos["refused_by_class"],
        "classes": qos["classes"],
        "baseline": {
            "interactive_ttft_p99_s": base["classes"].get("interactive", {}).get("ttft_p99_s"),
            "refused_by_class": base["refused_by_class"],
            "classes": base["classes"],
        },
    }
    table = Table(title=f"QoS at {', '.join(f'{x:g}x' for x in LEVELS)} the capacity ({capacity:.2f} req/s), {PROMPT_TOKENS}+{OUTPUT_TOKENS} tokens")
    for col in ("load", "run", "class", "TTFT p50 / p99 (s)", "SLO (s)", "served", "refused 429", "SLO attainment", "goodput (req/s)"):
        table.add_column(col, justify="left" if col in ("load", "run", "class") else "right")
    for level, level_runs in runs.items():
        for run_name, report in level_runs.items():
            for cls in MIX:
                c = report["classes"].get(cls)
                if c is None:
                    continue
                p50, p99 = c.get("ttft_p50_s"), c.get("ttft_p99_s")
                table.add_row(f"{level:g}x", run_name, cls, f"{p50:.2f} / {p99:.2f}" if p99 is not None else "–", f"{slo[cls]}",
                              str(c["num_requests"] - c["num_failed"]), str(report["refused_by_class"][cls]),
                              f"{c['slo_attainment']:.2f}", f"{c['goodput_rps']:.2f}")
    console.print(table)
    summary = Table(title="Per level: the goals")
    for col in ("load", "interactive attainment (QoS / none)", "goodput req/s (QoS / none)", "goals"):
        summary.add_column(col, justify="left" if col == "load" else "right")
    for key, v in levels.items():
        summary.add_row(f"{key}x", f"{v['interactive_slo_attainment']:.3f} / {v['interactive_slo_attainment_no_qos']:.3f}",
                        f"{v['goodput_rps_qos']:.2f} / {v['goodput_rps_no_qos']:.2f}",
                        "met" if v["interactive_goal_met"] and v["goodput_goal_met"] else "not met")
    console.print(table)
    console.print(summary)
    write_json(json_path, result)
    return result


if __name__ == "__main__":
    run_from_command_line(main, __doc__)
