"""`pavana bench overload`'s per-level summary: the interactive class's attainment with QoS,
and every class's goodput together, with QoS and without, against the goals."""

from __future__ import annotations

from benchmarks.overload import INTERACTIVE_ATTAINMENT_GOAL, level_summary


def report(interactive_attainment: float, goodputs: dict[str, float], refused: dict[str, int] | None = None):
    classes = {name: {"goodput_rps": g, "slo_attainment": interactive_attainment if name == "interactive" else 0.5, "ttft_p99_s": 0.4}
               for name, g in goodputs.items()}
    return {"classes": classes, "refused_by_class": refused or {name: 0 for name in goodputs}}


def test_goals_met_when_interactive_holds_and_qos_serves_at_least_as_much():
    qos = report(0.995, {"interactive": 3.0, "standard": 2.0, "batch": 1.0}, {"interactive": 0, "standard": 4, "batch": 40})
    base = report(0.90, {"interactive": 2.5, "standard": 2.0, "batch": 1.2})
    s = level_summary(2.0, 5.0, qos, base)
    assert s["offered_rps"] == 10.0
    assert s["goodput_rps_qos"] == 6.0 and abs(s["goodput_rps_no_qos"] - 5.7) < 1e-9
    assert s["interactive_goal_met"] and s["goodput_goal_met"]
    assert s["refused_by_class"]["batch"] == 40


def test_each_goal_can_fail_on_its_own():
    below = level_summary(3.0, 5.0, report(INTERACTIVE_ATTAINMENT_GOAL - 0.01, {"interactive": 5.0}), report(0.5, {"interactive": 1.0}))
    assert not below["interactive_goal_met"] and below["goodput_goal_met"]
    less = level_summary(3.0, 5.0, report(1.0, {"interactive": 1.0, "batch": 0.0}), report(0.5, {"interactive": 1.0, "batch": 2.0}))
    assert less["interactive_goal_met"] and not less["goodput_goal_met"]


def test_a_class_with_no_requests_counts_as_unattained():
    s = level_summary(1.5, 4.0, report(1.0, {"batch": 1.0}), report(1.0, {"batch": 1.0}))
    assert s["interactive_slo_attainment"] == 0.0 and not s["interactive_goal_met"]
