"""Admission control and class resolution on plain counts: lower classes are refused first as
load rises, each refusal is a 429 with Retry-After, and a key's class cannot be promoted."""

from __future__ import annotations

import pytest

from router.admission import QOS_HEADER, AdmissionControl, ClassPolicy, Overloaded, resolve_class
from router.errors import APIError, to_error_response

CLASSES = [
    ClassPolicy("interactive", 0),
    ClassPolicy("standard", 1, admit_below_load=0.8),
    ClassPolicy("batch", 2, max_in_flight=3, admit_below_load=0.5),
]


def control(capacity: int = 10) -> AdmissionControl:
    return AdmissionControl.from_classes(CLASSES, capacity)


def test_lower_classes_are_refused_first_as_load_rises():
    ac = control(10)
    for _ in range(5):
        ac.admit("interactive")
    with pytest.raises(Overloaded, match="'batch' requests are admitted while fewer than 5"):
        ac.admit("batch")  # 5 in flight: batch's ceiling (50 %) is reached
    for _ in range(3):
        ac.admit("standard")  # 8 in flight
    with pytest.raises(Overloaded):
        ac.admit("standard")  # standard's ceiling (80 %)
    ac.admit("interactive")
    ac.admit("interactive")  # interactive keeps the last 20 % to itself
    with pytest.raises(Overloaded):
        ac.admit("interactive")  # full
    assert ac.refused == {"batch": 1, "standard": 1, "interactive": 1}
    assert ac.in_flight == {"interactive": 7, "standard": 3}
    ac.release("interactive")
    ac.admit("interactive")


def test_a_class_cap_holds_even_when_the_ingress_is_idle():
    ac = control(100)
    for _ in range(3):
        ac.admit("batch")
    with pytest.raises(Overloaded, match="Too many 'batch' requests in flight"):
        ac.admit("batch")
    ac.release("batch")
    ac.admit("batch")
    with pytest.raises(RuntimeError, match="without an admitted request"):
        ac.release("standard")


def test_a_refusal_is_a_429_with_a_longer_retry_after_for_lower_classes():
    ac = control(1)
    ac.admit("interactive")
    with pytest.raises(Overloaded) as batch:
        ac.admit("batch")
    with pytest.raises(Overloaded) as interactive:
        ac.admit("interactive")
    err = to_error_response(batch.value)
    assert err.status == 429 and err.body["error"]["code"] == "rate_limit_exceeded"
    assert int(err.headers["Retry-After"]) > int(to_error_response(interactive.value).headers["Retry-After"])


def test_a_request_may_demote_itself_but_not_promote_its_key():
    policies = {c.name: c for c in CLASSES}
    assert resolve_class(None, None, policies, "interactive") == "interactive"
    assert resolve_class("batch", None, policies, "interactive") == "batch"
    assert resolve_class(None, "standard", policies, "interactive") == "standard"
    assert resolve_class("batch", "standard", policies, "interactive") == "batch"
    with pytest.raises(APIError, match="more important than 'standard'") as promoted:
        resolve_class("interactive", "standard", policies, "interactive")
    assert promoted.value.status == 400 and promoted.value.param == QOS_HEADER
    with pytest.raises(APIError, match="unknown QoS class 'gold'"):
        resolve_class("gold", None, policies, "interactive")


def test_capacity_must_be_positive():
    with pytest.raises(ValueError, match="max_in_flight"):
        AdmissionControl.from_classes(CLASSES, 0)
