"""`pavana bench router`: what the HTTP path costs over calling the pool directly, per ingress.

A 1-token generation, so the engine's work is tiny and the path dominates: (a) through the
OpenAI HTTP API (ingress: auth, validation, tokenization ▸ colocated pool), against (b) the
colocated pool's deployment handle called from the driver, on the same cluster and replica.
Each ingress mode (`controller/ingress_mode.py`: Ray Serve's proxy actors, or HAProxy in front
of the ingress replicas) runs on a cluster of its own, started fresh in a child process since
the mode is fixed when Ray starts; modes alternate, `repeats` times each.

Reported per mode, each the median over its repeats with the spread:
- `http_overhead_p50_ms_c1`: HTTP p50 minus handle p50 at concurrency 1 (goal ≤ 5 ms);
- `http_overhead_p50_ms`: the same at concurrency 16;
- `http_vs_direct_throughput`: HTTP requests/s over handle requests/s at 16 (goal ≥ 0.8).
The top-level keys are the fastest mode's (by throughput at 16).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.common import command_line, machine_info, run_from_command_line, write_json
from controller.ingress_mode import INGRESS_MODES, IngressUnavailable, check

console = Console()
KEYS = ("http_overhead_p50_ms_c1", "http_overhead_p50_ms", "http_vs_direct_throughput")
GOALS = {"http_overhead_p50_ms_c1": ("≤", 5.0), "http_vs_direct_throughput": ("≥", 0.8)}


def run_mode(mode: str, *, requests_c1: int, requests_c16: int) -> dict[str, Any]:
    """One fresh cluster in a child process (`benchmarks/router_mode.py`) with `mode` set."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "mode.json"
        command = [sys.executable, "-m", "benchmarks.router_mode", mode, str(requests_c1), str(requests_c16), str(out)]
        done = subprocess.run(command, cwd=Path(__file__).resolve().parent.parent, env=os.environ.copy(), capture_output=True, text=True)
        if done.returncode != 0 or not out.exists():
            raise RuntimeError(f"ingress {mode}: the measuring process failed ({done.returncode}):\n{done.stderr[-3000:]}")
        return json.loads(out.read_text())


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median of each key over the repeats, with min and max."""
    out: dict[str, Any] = {"repeats": len(runs), "runs": runs}
    for key in (*KEYS, "http_p50_ms_c1", "direct_p50_ms_c1", "http_requests_per_s", "direct_requests_per_s", "http_p50_ms", "direct_p50_ms"):
        values = [r[key] for r in runs]
        out[key] = statistics.median(values)
        out[f"{key}_spread"] = [min(values), max(values)]
    return out


def main(quick: bool = False, json_path: Path | None = None) -> dict[str, Any]:
    repeats = 1 if quick else 3
    requests_c1, requests_c16 = (60, 200) if quick else (200, 800)
    modes, skipped = [], {}
    for mode in INGRESS_MODES:
        try:
            check(mode)
            modes.append(mode)
        except IngressUnavailable as exc:
            skipped[mode] = str(exc)
            console.print(f"[yellow]{exc}: not measured[/yellow]")
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    for r in range(repeats):
        for mode in modes if r % 2 == 0 else reversed(modes):  # alternate which mode runs first
            console.print(f"repeat {r + 1}/{repeats}: ingress {mode}")
            runs[mode].append(run_mode(mode, requests_c1=requests_c1, requests_c16=requests_c16))
    per_mode = {m: summarise(rs) for m, rs in runs.items()}
    best = max(per_mode, key=lambda m: per_mode[m]["http_requests_per_s"])
    result: dict[str, Any] = {
        "benchmark": "router", "quick": quick, "machine": machine_info(), "command": command_line(),
        "requests_c1": requests_c1, "requests_c16": requests_c16, "concurrency": 16, "repeats": repeats,
        "modes": per_mode, "not_measured": skipped, "fastest_mode": best,
        **{k: per_mode[best][k] for k in KEYS},
        "http_requests_per_s": per_mode[best]["http_requests_per_s"], "direct_requests_per_s": per_mode[best]["direct_requests_per_s"],
    }
    table = Table(title=f"1-token generations: HTTP against the pool's handle, median of {repeats} (min–max)")
    for col in ("ingress", "overhead p50 c=1 (ms)", "overhead p50 c=16 (ms)", "HTTP req/s c=16", "handle req/s c=16", "HTTP / handle"):
        table.add_column(col, justify="left" if col == "ingress" else "right")
    for mode, s in per_mode.items():
        def cell(key: str, fmt: str) -> str:
            lo, hi = s[f"{key}_spread"]
            return f"{s[key]:{fmt}} ({lo:{fmt}}–{hi:{fmt}})"

        table.add_row(mode, cell("http_overhead_p50_ms_c1", ".1f"), cell("http_overhead_p50_ms", ".1f"), cell("http_requests_per_s", ".0f"),
                      cell("direct_requests_per_s", ".0f"), cell("http_vs_direct_throughput", ".2f"))
    console.print(table)
    for key, (op, goal) in GOALS.items():
        value = result[key]
        met = value <= goal if op == "≤" else value >= goal
        console.print(f"{key} ({best}): {value:.2f} (goal {op} {goal}: {'met' if met else 'not met'})")
    write_json(json_path, result)
    return result


if __name__ == "__main__":
    run_from_command_line(main, __doc__)
