"""The simulator's percentile of a request's gaps is NumPy's, bit for bit."""

from __future__ import annotations

import random

import numpy as np

from simulator.percentile import percentile


def test_equals_numpy_on_random_lists():
    rng = random.Random(7)
    for n in list(range(1, 40)) + [rng.randint(40, 3000) for _ in range(60)]:
        values = [rng.expovariate(40) if rng.random() < 0.9 else rng.choice((0.012, 0.3)) for _ in range(n)]
        for q in (0, 1, 25, 50, 90, 99, 99.9, 100):
            assert percentile(values, q) == float(np.percentile(values, q))
