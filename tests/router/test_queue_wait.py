"""Each class's measured wait for a first token, and admission refusing a class that waits longer
than its `max_queue_s` — before the answered requests show the queue, by the waiting ones' age."""

from __future__ import annotations

import pytest

from router.admission import AdmissionControl, ClassPolicy, Overloaded
from router.queue_wait import MIN_SAMPLES, QueueWaits


def answered(waits: QueueWaits, qos_class: str, started: float, first: float, n: int = 1, tag: str = "") -> None:
    for i in range(n):
        rid = f"{qos_class}-{started}-{i}-{tag}"
        waits.started(rid, qos_class, started)
        waits.first_token(rid, first)
        waits.ended(rid)


def test_the_wait_is_the_90th_percentile_of_recent_first_tokens():
    waits = QueueWaits(window_s=10.0)
    assert waits.wait_s("batch", 0.0) == 0.0
    answered(waits, "batch", 0.0, 1.0, n=MIN_SAMPLES - 1)
    assert waits.wait_s("batch", 1.0) == 0.0  # too few to say anything
    for k in range(10):
        answered(waits, "batch", 1.0, 1.0 + k, tag=str(k))  # waits 0..9 s
    assert waits.wait_s("batch", 10.0) == pytest.approx(8.0, abs=1.0)
    assert waits.wait_s("interactive", 10.0) == 0.0  # classes are apart
    assert waits.wait_s("batch", 100.0) == 0.0  # answered long ago: out of the window


def test_a_request_still_waiting_shows_the_queue_at_once():
    waits = QueueWaits()
    waits.started("r1", "standard", 0.0)
    waits.started("r2", "standard", 3.0)
    assert waits.wait_s("standard", 5.0) == 5.0
    waits.first_token("r1", 5.5)
    assert waits.wait_s("standard", 6.0) == 3.0
    waits.ended("r2")  # cancelled before its first token: no longer waiting
    assert waits.wait_s("standard", 7.0) == 0.0


def test_admission_refuses_a_class_waiting_longer_than_its_max_queue():
    control = AdmissionControl.from_classes(
        [ClassPolicy("interactive", 0), ClassPolicy("batch", 2, max_queue_s=20.0)], max_in_flight=100
    )
    control.admit("batch", waited_s=19.0)
    with pytest.raises(Overloaded) as refused:
        control.admit("batch", waited_s=25.0)
    assert refused.value.status == 429 and refused.value.headers["Retry-After"] == "5"
    assert "25.0 s" in refused.value.message and "20 s" in refused.value.message
    control.admit("interactive", waited_s=1_000.0)  # a class without max_queue_s is never refused for waiting
    assert control.refused == {"batch": 1} and control.in_flight == {"batch": 1, "interactive": 1}
