"""Assigning a whole site's modes at once gives every replica the mode it computes for itself
(`mode_for_replica`), on random sites: the reconcile loop, the simulator and each replica agree."""

from __future__ import annotations

import random

from cluster.power_modes import Mode, assign_modes, mode_for_replica


def test_assign_modes_equals_each_replicas_own_choice():
    rng = random.Random(3)
    for _ in range(300):
        modes = [Mode(f"m{i}", rng.choice((200.0, 300.0, 400.0)), rng.choice((0.5, 0.75, 1.0))) for i in range(rng.randint(1, 4))]
        ids = [f"colocated@s{rng.randint(0, 2)}:r{rng.randint(0, 60)}" for _ in range(rng.randint(0, 40))]
        counts = {m.name: rng.randint(-2, 15) for m in modes if rng.random() < 0.8}
        assert assign_modes(ids, modes, counts) == {r: mode_for_replica(r, ids, modes, counts) for r in set(ids)}
