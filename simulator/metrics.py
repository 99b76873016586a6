"""What a simulation reports: per-request TTFT, TBT and end-to-end latency, SLO attainment and
goodput per QoS class, replica-seconds and energy per site, and the cluster over time; as
plain data for JSON and as matplotlib plots (Agg, no display)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cluster.spec import ClusterSpec
from simulator.percentile import percentile
from simulator.request import SimRequest


def pct(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(np.asarray(values, dtype=float), q)) if len(values) else None


def meets_slo(req: SimRequest, ttft_s: float, tbt_s: float) -> bool:
    """Served, first token within the TTFT target, and the request's P99 gap within the TBT target."""
    if req.outcome != "ok" or req.ttft_s is None or req.ttft_s > ttft_s:
        return False
    return not req.gaps or percentile(req.gaps, 99) <= tbt_s


def summarize(requests: Sequence[SimRequest], spec: ClusterSpec, duration_s: float | None = None) -> dict[str, Any]:
    ok = [r for r in requests if r.outcome == "ok"]
    ttft = [r.ttft_s for r in ok]
    e2e = [r.e2e_s for r in ok]
    gaps = np.concatenate([np.asarray(r.gaps) for r in ok if r.gaps]) if any(r.gaps for r in ok) else np.array([])
    if duration_s is None:
        duration_s = max((r.arrival_s for r in requests), default=0.0) or 1.0
    classes = {}
    good_total = 0
    for c in spec.qos_classes:
        mine = [r for r in requests if r.trace.qos_class == c.name]
        if not mine:
            continue
        good = sum(meets_slo(r, c.slo.ttft_s, c.slo.tbt_s) for r in mine)
        good_total += good
        classes[c.name] = {
            "requests": len(mine), "within_slo": good, "slo_attainment": good / len(mine),
            "goodput_rps": good / duration_s, "ttft_slo_s": c.slo.ttft_s, "tbt_slo_s": c.slo.tbt_s,
        }
    return {
        "requests": len(requests),
        "outcomes": dict(Counter(r.outcome for r in requests)),
        "duration_s": duration_s,
        "ttft_s": {"p50": pct(ttft, 50), "p90": pct(ttft, 90), "p99": pct(ttft, 99), "mean": float(np.mean(ttft)) if ttft else None},
        "tbt_s": {"p50": pct(gaps, 50), "p90": pct(gaps, 90), "p99": pct(gaps, 99), "max": float(gaps.max()) if len(gaps) else None},
        "e2e_s": {"p50": pct(e2e, 50), "p99": pct(e2e, 99)},
        "slo_attainment": good_total / len(requests) if requests else None,
        "goodput_rps": good_total / duration_s,
        "throughput_rps": len(ok) / duration_s,
        "classes": classes,
    }


def cluster_report(cluster) -> dict[str, Any]:
    """Replica-seconds and energy per site, power cuts, and the decisions the policies took."""
    return {
        "replica_seconds": dict(cluster.replica_seconds),
        "energy_kwh": {k: v / 3.6e6 for k, v in cluster.energy_j.items()},
        "power_cuts": cluster.power_cuts,
        "scaling_decisions": sum(1 for d in cluster.decisions if d["kind"] in ("scale_up", "scale_down")),
        "routing_decisions": sum(1 for d in cluster.decisions if d["kind"] in ("reroute", "power_mode")),
        "events": cluster.loop.events_run,
        "simulated_s": cluster.loop.now,
    }


def per_request_rows(requests: Sequence[SimRequest]) -> list[dict[str, Any]]:
    return [
        {"id": r.request_id, "class": r.trace.qos_class, "site": r.site, "arrival_s": r.arrival_s, "outcome": r.outcome,
         "ttft_s": r.ttft_s, "tbt_p99_s": percentile(r.gaps, 99) if r.gaps else None, "e2e_s": r.e2e_s,
         "prompt_tokens": r.prompt_tokens, "output_tokens": r.tokens, "images": r.trace.num_images}
        for r in requests
    ]


def plot_run(requests: Sequence[SimRequest], samples: list[dict], sites: Sequence[str], path: Path, title: str = "") -> None:
    """Three panels: replicas per site over time, power available/drawn per site, latency CDFs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b, c) = plt.subplots(3, 1, figsize=(10, 9))
    t = [s["t"] / 3600 for s in samples]
    for site in sites:
        a.plot(t, [sum(s[site]["replicas"].values()) for s in samples], label=site)
        avail = [s[site]["available_w"] for s in samples]
        if any(v is not None for v in avail):
            b.plot(t, [(v or 0) / 1e3 for v in avail], label=f"{site} available")
        b.plot(t, [s[site]["drawn_w"] / 1e3 for s in samples], "--", label=f"{site} drawn")
    a.set_ylabel("replicas")
    a.legend(loc="upper right", fontsize=7)
    b.set_ylabel("power (kW)")
    b.set_xlabel("simulated hours")
    b.legend(loc="upper right", fontsize=7)
    ok = [r for r in requests if r.outcome == "ok"]
    for label, values in (("TTFT", [r.ttft_s for r in ok]), ("P99 TBT per request", [percentile(r.gaps, 99) for r in ok if r.gaps])):
        if values:
            v = np.sort(values)
            c.plot(v, np.arange(1, len(v) + 1) / len(v), label=label)
    c.set_xscale("log")
    c.set_xlabel("seconds")
    c.set_ylabel("share of requests")
    c.legend(loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
