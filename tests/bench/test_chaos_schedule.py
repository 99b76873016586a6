"""The pure parts of `pavana bench chaos`: the seeded fault schedule and each request's verdict."""

from __future__ import annotations

import pytest

from benchmarks.chaos_schedule import REDIS_RESTART, RECONCILER_KILL, fault_kinds, fault_schedule, killed_pool
from benchmarks.chaos_traffic import BROKEN, FAILED, OK, FixedPrompt, StreamRecord, verdict

KINDS = fault_kinds(["vision", "prefill", "decode"])


def test_kinds_cover_every_pool_the_reconciler_and_redis():
    assert KINDS == ["kill:vision", "kill:prefill", "kill:decode", RECONCILER_KILL, REDIS_RESTART]
    assert [killed_pool(k) for k in KINDS] == ["vision", "prefill", "decode", None, None]


def test_a_seed_gives_one_schedule_and_another_seed_another():
    assert fault_schedule(7, KINDS, 20, 900.0) == fault_schedule(7, KINDS, 20, 900.0)
    assert fault_schedule(7, KINDS, 20, 900.0) != fault_schedule(8, KINDS, 20, 900.0)


@pytest.mark.parametrize("seed", range(10))
def test_every_kind_strikes_in_time_order_inside_the_window(seed):
    schedule = fault_schedule(seed, KINDS, 12, 300.0, lead_s=10.0, tail_s=20.0)
    assert len(schedule) == 12 and {f.kind for f in schedule} == set(KINDS)
    times = [f.at_s for f in schedule]
    assert times == sorted(times) and 10.0 < times[0] and times[-1] < 280.0
    assert all(b - a > 0 for a, b in zip(times, times[1:]))


def test_a_schedule_too_short_for_every_kind_is_refused():
    with pytest.raises(ValueError, match="count"):
        fault_schedule(1, KINDS, 4, 100.0)
    with pytest.raises(ValueError, match="window_s"):
        fault_schedule(1, KINDS, 5, 10.0, lead_s=6.0, tail_s=6.0)


PROMPT = FixedPrompt(0, "/completions", {}, max_tokens=3, reference="a b c")


def streamed(**fields) -> StreamRecord:
    record = StreamRecord(0, 0, 0.0, status=200, text="a b c", finish_reason="length", done=True, usage_tokens=3)
    for name, value in fields.items():
        setattr(record, name, value)
    return record


@pytest.mark.parametrize(("fields", "outcome", "why"), [
    ({}, OK, ""),
    ({"retries": 2}, OK, ""),  # refusals retried until served cost nothing
    ({"status": 503, "error": "overloaded"}, FAILED, "HTTP 503"),
    ({"status": None, "error": "ConnectError: refused"}, FAILED, "ConnectError"),
    ({"hung": True, "error": "no chunk for 90 s"}, BROKEN, "hung"),
    ({"error": '{"message": "replica lost"}'}, BROKEN, "error event"),
    ({"finish_reason": None}, BROKEN, "final chunk"),
    ({"done": False}, BROKEN, "[DONE]"),
    ({"usage_tokens": 2}, BROKEN, "2 tokens of 3"),
    ({"text": "a b b c"}, BROKEN, "at character 4"),  # a repeated token
    ({"text": "a c"}, BROKEN, "at character 2"),  # a skipped token
])
def test_each_request_ends_ok_failed_or_broken_with_why(fields, outcome, why):
    got, reason = verdict(streamed(**fields), PROMPT)
    assert got == outcome and why in reason
