"""`pavana sim sweep`: one scenario per (engine policy, rate multiplier), side by side."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cluster.spec import ClusterSpec
from simulator.cluster import SimOptions
from simulator.scenario import read_workload, run_scenario
from simulator.workload import assign_classes, rescale_rate


def run_sweep(spec: ClusterSpec, trace: str, cost: str, rates: Sequence[float], policies: Sequence[str],
              duration_s: float, options: SimOptions = SimOptions()) -> dict[str, Any]:
    points = []
    for policy in policies:
        engine = spec.engine.model_copy(update={"policy": policy})
        policy_spec = spec.model_copy(update={"engine": engine})
        for rate in rates:
            requests = rescale_rate(read_workload(trace, duration_s=duration_s * rate), rate)
            requests = assign_classes(requests, {spec.default_qos_class: 1.0}, 0)
            result = run_scenario(policy_spec, requests, cost, options)
            points.append({"policy": policy, "rate": rate, **result.to_dict()})
    return {"trace": trace, "cost": cost, "duration_s": duration_s, "points": points}
