"""The event loop runs events by time, then by kind, then in the order they were scheduled."""

import pytest

from simulator.events import EventLoop, Kind


def test_events_run_in_time_then_kind_then_insertion_order():
    loop = EventLoop()
    seen = []
    loop.at(2.0, Kind.ARRIVAL, seen.append, "arrival@2")
    loop.at(1.0, Kind.CONTROL, seen.append, "control@1")
    loop.at(1.0, Kind.ARRIVAL, seen.append, "arrival@1-first")
    loop.at(1.0, Kind.POWER, seen.append, "power@1")
    loop.at(1.0, Kind.ARRIVAL, seen.append, "arrival@1-second")
    loop.at(1.0, Kind.COMPLETION, seen.append, "completion@1")
    loop.run()
    assert seen == ["power@1", "completion@1", "arrival@1-first", "arrival@1-second", "control@1", "arrival@2"]
    assert loop.now == 2.0 and loop.events_run == 6


def test_events_scheduled_while_running_and_horizon():
    loop = EventLoop()
    times = []

    def tick():
        times.append(loop.now)
        loop.after(1.5, Kind.CONTROL, tick)

    loop.at(0.0, Kind.CONTROL, tick)
    loop.run(until_s=5.0)
    assert times == [0.0, 1.5, 3.0, 4.5]
    assert loop.now == 5.0  # stopped by the horizon with an event still pending
    assert len(loop) == 1


def test_event_in_the_past_is_refused():
    loop = EventLoop()
    loop.at(3.0, Kind.ARRIVAL, lambda: None)
    loop.run()
    with pytest.raises(ValueError, match="before the current time"):
        loop.at(1.0, Kind.ARRIVAL, lambda: None)
    with pytest.raises(ValueError, match="finite"):
        loop.at(float("nan"), Kind.ARRIVAL, lambda: None)
