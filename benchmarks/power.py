"""`pavana bench power`: goodput of power-aware serving (Heron) against power-oblivious
least-loaded serving, over a week of wind power at three sites, with the same replica budget.

A harness over the pure policies, hour by hour (the simulator will replace it):
- Power: three sites fed by wind farms 1–3 (normalised output × each site's rated power) of
  the GEFCom2012 series, one week from its first full week, where that file is found
  (`PAVANA_WIND_CSV`, or the shared data folder beside the working directory; it has no open
  licence, so Pavana does not carry it); elsewhere of Pavana's built-in wind model
  (`cluster/wind.py`, calibrated to those farms, seed 0). The result names which.
- Demand: the Azure traces' request mix (carried in `pavana_data`) (code and conversation; tokens per request give
  each class's cost in replica-seconds) at a rate that would keep half the replica budget 80%
  busy, shaped by the traces' own per-minute arrival pattern, cycled over the week.
- Power-aware: each hour, place the replica budget where last hour's power (persistence)
  affords the most and plan modes and shares with `autoscaler.site_planner`; within the hour
  each site runs the best mix of full and capped clocks its actual power affords on the
  replicas placed there (`fit_to_power` does this every reconcile round).
- Power-oblivious: the budget split evenly across sites at full clock, traffic spread over the
  replicas that are up; a site without power for a replica loses that replica.
Goodput: requests served within capacity in each hour (work beyond capacity misses its SLO).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from autoscaler.site_planner import ClassDemand, SiteInput, best_mode_mix, plan_power
from cluster.power_modes import Mode
from cluster.wind import GEFCOM_LIKE
from bench.common import command_line, machine_info, run_from_command_line, write_json
from pavana_data import external_wind_csv, trace_path

console = Console()
MODES = (Mode("full", 400.0, 1.0), Mode("capped", 250.0, 0.7))
RATED_W = 6000.0  # each site's power at full wind
BUDGET = 12  # replicas the fleet may run across all sites, for both policies
MAX_PER_SITE = 8  # accelerators installed at each site
# Replica throughput (stated assumptions, full clock): prefill and decode tokens per second.
PREFILL_TOKENS_PER_S = 8000.0
DECODE_TOKENS_PER_S = 400.0


def wind_week(columns: tuple[str, ...], hours: int) -> tuple[np.ndarray, str]:
    """[hours, sites] normalised output and where it came from: GEFCom2012's first `hours`
    rows where the file is found, else the built-in model's first `hours` (seed 0)."""
    path = external_wind_csv()
    if path is not None and path.is_file():
        with path.open() as f:
            rows = [(r["date"], [float(r[c]) for c in columns]) for r in csv.DictReader(f) if all(r[c] for c in columns)]
        return np.array([v for _, v in rows[:hours]]), f"GEFCom2012 ({path.name}), farms {', '.join(columns)}"
    series = GEFCOM_LIKE.sample(hours, seed=0)[:, [GEFCOM_LIKE.farm_index(c) for c in columns]]
    return series, f"Pavana's built-in wind model (calibrated to GEFCom2012), seed 0, farms {', '.join(columns)}"


def trace_classes() -> list[tuple[str, float, np.ndarray]]:
    """(class, cost in replica-seconds per request, per-minute arrival shape normalised to mean 1)."""
    out = []
    for name in ("code", "conv"):
        with trace_path(name).open() as f:
            rows = list(csv.DictReader(f))
        prompt = np.array([float(r["ContextTokens"]) for r in rows])
        output = np.array([float(r["GeneratedTokens"]) for r in rows])
        cost = float(np.mean(prompt / PREFILL_TOKENS_PER_S + output / DECODE_TOKENS_PER_S))
        minutes = np.array([int(r["TIMESTAMP"][14:16]) for r in rows])
        shape = np.bincount(minutes, minlength=60).astype(float)
        out.append((name, cost, shape / shape.mean()))
    return out


def forecast_errors(power: np.ndarray) -> dict[str, float]:
    """Mean absolute error, as a share of the rated power, of one-hour-ahead forecasts over
    the week: persistence (what the planner uses) and exponential smoothing (alpha 0.5)."""
    persistence = np.abs(power[1:] - power[:-1]).mean() / RATED_W
    smoothed, errors = power[0].copy(), []
    for h in range(1, len(power)):
        errors.append(np.abs(power[h] - smoothed))
        smoothed = 0.5 * power[h] + 0.5 * smoothed
    return {"persistence_mae_share_of_rated": float(persistence), "ewma_0.5_mae_share_of_rated": float(np.mean(errors) / RATED_W)}


def place_budget(power_w: np.ndarray, budget: int) -> list[int]:
    """Replicas per site for the next hour: fill the sites whose (forecast) power affords the
    most, up to each site's hardware and the fleet's budget."""
    affordable = [sum(best_mode_mix(SiteInput(str(i), p, MODES, MAX_PER_SITE))[0].values()) for i, p in enumerate(power_w)]
    caps, left = [0] * len(power_w), budget
    for i in sorted(range(len(power_w)), key=lambda i: -affordable[i]):
        caps[i] = min(affordable[i], left)
        left -= caps[i]
    return caps


def simulate(hours: int = 168) -> dict[str, Any]:
    wind, wind_source = wind_week(("wp1", "wp2", "wp3"), hours)
    power = wind * RATED_W
    classes = trace_classes()
    mean_cost = float(np.mean([c for _, c, _ in classes]))
    # Demand that would keep half the budget 80% busy at full clock, shaped by the traces.
    scale = 0.8 * (BUDGET / 2) / mean_cost / len(classes)
    even = BUDGET // len(power[0])
    aware = oblivious = offered = planned = 0.0
    per_hour = []
    for h in range(hours):
        demands = [ClassDemand(name, scale * shape[h % 60], cost) for name, cost, shape in classes]
        rate = sum(d.rate_rps for d in demands)
        work = sum(d.rate_rps * d.cost_replica_s for d in demands)  # replica-units needed
        # Slow timescale: place the budget and plan modes and shares on last hour's power
        # (persistence: the forecast whose error `pavana bench forecast` measures).
        expected = power[h - 1] if h else power[h]
        caps = place_budget(expected, BUDGET)
        plan = plan_power([SiteInput(f"s{i}", expected[i], MODES, caps[i]) for i in range(len(caps))], demands)
        planned += plan.goodput_rps * 3600
        # Fast timescale, within the hour: each site runs the best mode mix its actual power
        # affords, on the replicas placed there (a drop sheds at once; cold starts wait).
        capacity = sum(
            sum(m.throughput_fraction * n for m, n in zip(MODES, best_mode_mix(SiteInput(f"s{i}", power[h][i], MODES, caps[i]))[0].values()))
            for i in range(len(caps))
        )
        served_aware = min(rate, rate * capacity / work)
        up = sum(min(even, int(p // MODES[0].power_w)) for p in power[h])  # full clock, fixed placement
        served_oblivious = min(rate, rate * up / work)
        aware += served_aware * 3600
        oblivious += served_oblivious * 3600
        offered += rate * 3600
        per_hour.append((h, rate, served_aware, served_oblivious, float(power[h].sum())))
    return {
        "hours": hours,
        "wind": wind_source,
        "forecast_error_1h": forecast_errors(power),
        "offered_requests": offered,
        "goodput_power_aware": aware,
        "goodput_power_oblivious": oblivious,
        "goodput_planned_by_forecast": planned,
        "goodput_ratio_power_aware_vs_oblivious": aware / oblivious if oblivious else math.inf,
        "served_fraction_power_aware": aware / offered,
        "served_fraction_power_oblivious": oblivious / offered,
        "per_hour": per_hour,
    }


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h, rate, aware, oblivious, watts = zip(*result["per_hour"])
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 5), sharex=True)
    top.plot(h, np.array(watts) / 1000, color="tab:green")
    top.set_ylabel("wind power, 3 sites (kW)")
    bottom.plot(h, rate, color="grey", label="offered")
    bottom.plot(h, aware, label="power-aware (Pavana)")
    bottom.plot(h, oblivious, label="power-oblivious least-loaded")
    bottom.set_ylabel("requests/s within SLO")
    bottom.set_xlabel("hour of the week")
    bottom.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(quick: bool = False, json_path: Path | None = None) -> dict[str, Any]:
    result = simulate(hours=48 if quick else 168)
    result.update(benchmark="power", quick=quick, machine=machine_info(), command=command_line(),
                  budget_replicas=BUDGET, rated_w_per_site=RATED_W)
    table = Table(title=f"Goodput over {result['hours']} hours of wind at 3 sites, budget {BUDGET} replicas")
    for col in ("policy", "requests within SLO", "share of offered"):
        table.add_column(col, justify="left" if col == "policy" else "right")
    table.add_row("power-aware (planner + site router)", f"{result['goodput_power_aware']:,.0f}", f"{result['served_fraction_power_aware']:.1%}")
    table.add_row("power-oblivious least-loaded", f"{result['goodput_power_oblivious']:,.0f}", f"{result['served_fraction_power_oblivious']:.1%}")
    table.add_row("[bold]ratio[/bold]", f"[bold]{result['goodput_ratio_power_aware_vs_oblivious']:.2f}×[/bold]", "")
    console.print(table)
    console.print(f"Wind: {result['wind']}")
    errors = result["forecast_error_1h"]
    console.print(
        f"One-hour-ahead forecast error (mean absolute, share of rated power): persistence "
        f"{errors['persistence_mae_share_of_rated']:.1%}, exponential smoothing {errors['ewma_0.5_mae_share_of_rated']:.1%}"
    )
    if json_path is not None:
        plot(result, Path(json_path).with_suffix(".png"))
    write_json(json_path, {k: v for k, v in result.items() if k != "per_hour"})
    return result


if __name__ == "__main__":
    run_from_command_line(main, __doc__)
