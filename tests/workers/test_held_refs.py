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
