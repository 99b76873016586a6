import time

from workers.deployments import HeldRefs


def test_refs_are_held_for_their_time_to_live_then_released():
    held = HeldRefs(ttl_s=0.05)
    held.hold("a")
    held.hold("b")
    assert len(held) == 2
    time.sleep(0.06)
    held.hold("c")  # holding prunes what expired
    assert len(held) == 1


async def test_drain_waits_for_the_last_hand_off_to_age_then_returns():
    held = HeldRefs()
    held.hold("kv")
    started = time.monotonic()
    await held.drain(grace_s=0.3, max_wait_s=5.0)
    assert 0.25 <= time.monotonic() - started < 2.0
    started = time.monotonic()
    await held.drain(grace_s=0.3, max_wait_s=5.0)  # nothing young left: returns at once
    assert time.monotonic() - started < 0.1
