"""The simulator's one-sort mode ranking gives every replica the mode the live
`cluster.power_modes.assign_modes` gives it."""

from __future__ import annotations

import random

import autoscaler.round as live_round
from cluster.power_modes import Mode
from cluster.power_modes import assign_modes as live_assign_modes
from simulator.mode_ranking import assign_modes, fast_mode_assignment


def test_same_modes_as_the_live_ranking():
    rng = random.Random(3)
    for _ in range(300):
        modes = [Mode(f"m{i}", rng.choice((200.0, 300.0, 400.0)), rng.choice((0.5, 0.75, 1.0))) for i in range(rng.randint(1, 4))]
        ids = [f"colocated@s{rng.randint(0, 2)}:colocated@s#{rng.randint(0, 60)}" for _ in range(rng.randint(0, 40))]
        counts = {m.name: rng.randint(-2, 15) for m in modes if rng.random() < 0.8}
        assert assign_modes(ids, modes, counts) == live_assign_modes(ids, modes, counts)


def test_lent_to_the_round_only_while_it_runs():
    with fast_mode_assignment():
        assert live_round.assign_modes is assign_modes
    assert live_round.assign_modes is live_assign_modes
