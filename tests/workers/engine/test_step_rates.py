"""Prefill and decode rates from a replica's steps, each over the time attributed to it."""

import pytest

from workers.engine.step_rates import Step, rates, split


def test_decode_steps_do_not_dilute_the_prefill_rate():
    # Nine decode-only steps of 32 sequences at 10 ms, one step of a 512-token chunk and 32
    # decodes at 54 ms: tokens per busy second would read 5,300; prefill runs at ~10,200.
    steps = [Step(0.010, 0, 32)] * 9 + [Step(0.054, 512, 32)]
    measured = rates(steps)
    assert measured.prefill_tokens_per_busy_s == pytest.approx(512 / (0.054 * 512 / 544))
    assert measured.decode_tokens_per_busy_s == pytest.approx(320 / (0.09 + 0.054 * 32 / 544))
    assert (512 + 320) / sum(s.duration_s for s in steps) < 0.6 * measured.prefill_tokens_per_busy_s


def test_a_step_splits_its_time_by_tokens_and_an_empty_window_measures_nothing():
    assert split(Step(0.1, 30, 10)) == pytest.approx((0.075, 0.025))
    assert split(Step(0.1, 0, 0)) == (0.0, 0.0)
    assert rates([]).prefill_tokens_per_busy_s == 0.0 and rates([]).decode_tokens_per_busy_s == 0.0
