"""Metric functions against hand-computed examples (times chosen as binary fractions, so the
expected values are exact)."""

from __future__ import annotations

import math

import pytest

from bench.metrics import (
    Fluidity,
    SLOTarget,
    capacity_search,
    end_to_end_latency,
    fluidity,
    goodput,
    measured_window_s,
    normalized_latency,
    percentile,
    percentiles,
    request_metrics,
    slo_attainment,
    summarize,
    tbt,
    tpot,
    ttft,
)


def test_latencies_of_one_request():
    arrival, times = 1.0, [1.5, 1.75, 2.0, 3.0]
    assert ttft(arrival, times) == 0.5
    assert tbt(times) == [0.25, 0.25, 1.0]
    assert tpot(times) == 0.5  # (3.0 - 1.5) / 3
    assert end_to_end_latency(arrival, times) == 2.0
    assert normalized_latency(arrival, times) == 0.5  # 2.0 s / 4 tokens


def test_no_tokens_and_one_token():
    assert ttft(0.0, []) is None and tpot([]) is None and end_to_end_latency(0.0, []) is None
    assert tbt([2.0]) == [] and tpot([2.0]) is None


def test_times_before_arrival_or_going_back_are_refused():
    with pytest.raises(ValueError, match=r"token_times_s\[0\]"):
        ttft(1.0, [0.5])
    with pytest.raises(ValueError, match=r"token_times_s\[2\]"):
        fluidity(0.0, [0.1, 0.2, 0.15], SLOTarget(1.0, 0.1))


def test_bad_targets_are_refused():
    with pytest.raises(ValueError, match="tbt_s"):
        SLOTarget(ttft_s=1.0, tbt_s=0)
    with pytest.raises(ValueError, match="ttft_s"):
        SLOTarget(ttft_s=float("nan"), tbt_s=0.1)


def test_every_deadline_met_exactly_on_time():
    # Token i due at 0.5 + i * 0.25; meeting a deadline exactly counts as met.
    assert fluidity(0.0, [0.5, 0.75, 1.0, 1.25], SLOTarget(0.5, 0.25)) == Fluidity(4, 0)


def test_slack_from_early_tokens_carries_forward():
    # First token 0.75 s early: the next gap of 1.0 s (twice the TBT target) still meets its
    # deadline at 1.5; the third token, at 2.25, is 0.25 s past its deadline of 2.0 and misses;
    # the fourth comes one period after it and meets its re-based deadline (2.75, where the
    # original one was 2.5).
    target = SLOTarget(ttft_s=1.0, tbt_s=0.5)
    assert fluidity(0.0, [0.25, 1.25, 2.0], target) == Fluidity(3, 0)  # exactly on the deadline
    result = fluidity(0.0, [0.25, 1.25, 2.25, 2.75], target)
    assert result == Fluidity(3, 1)
    assert result.index == 0.75


def test_deadlines_are_rebased_after_a_miss_and_a_long_stall_costs_each_period():
    # A stall of 1 s after the first token, with a TBT target of 0.25 s, lets four deadlines
    # pass (1.0 - 0.25 = 0.75 s late = three more periods). The tokens after it keep the
    # 0.25 s pace: against the original deadlines (0.75, 1.0, 1.25 …) every one would miss;
    # re-based from the late token, every one meets.
    target = SLOTarget(ttft_s=0.5, tbt_s=0.25)
    result = fluidity(0.0, [0.5, 1.5, 1.75, 2.0, 2.25], target)
    assert result == Fluidity(deadlines_met=4, deadlines_missed=4)
    assert result.index == 0.5


def test_a_stall_that_tpot_hides_the_fluidity_index_exposes():
    # 22 tokens: TTFT exactly on target, a 1 s stall, then 20 quick tokens (1/32 s apart).
    target = SLOTarget(ttft_s=0.5, tbt_s=0.125)
    times = [0.5, 1.5] + [1.5 + k / 32 for k in range(1, 21)]
    # TPOT, the mean gap, is well inside the 0.125 s target …
    assert tpot(times) == pytest.approx(1.625 / 21)
    assert tpot(times) < target.tbt_s
    # … while the stall let 1 + (1.0 - 0.125) / 0.125 = 8 deadlines pass: 21 met, 8 missed.
    result = fluidity(0.0, times, target)
    assert result == Fluidity(21, 8)
    assert result.index == pytest.approx(21 / 29)
    m = request_metrics(index=0, qos_class="interactive", arrival_s=0.0, token_times_s=times, ok=True, target=target)
    assert m.tbt_p99_s > target.tbt_s and not m.meets_slo
    assert max(m.tbt_s) == 1.0  # every gap is kept


def test_failed_request_never_meets_its_slo():
    target = SLOTarget(1.0, 0.5)
    m = request_metrics(index=3, qos_class="batch", arrival_s=0.0, token_times_s=[0.1], ok=False, target=target)
    assert not m.meets_slo and m.fluidity_index == 0.0 and m.ttft_s == 0.1
    nothing = request_metrics(index=4, qos_class="batch", arrival_s=0.0, token_times_s=[], ok=False, target=target)
    assert nothing.ttft_s is None and not nothing.meets_slo


def test_single_token_request_is_judged_on_ttft():
    target = SLOTarget(1.0, 0.1)
    assert request_metrics(index=0, qos_class="c", arrival_s=0.0, token_times_s=[0.9], ok=True, target=target).meets_slo
    assert not request_metrics(index=0, qos_class="c", arrival_s=0.0, token_times_s=[1.1], ok=True, target=target).meets_slo


def test_percentiles_carry_their_count():
    p = percentiles(range(1, 101))
    assert p.count == 100 and p.p50 == 50.5 and p.p99 == pytest.approx(99.01) and p.max == 100 and p.mean == 50.5
    empty = percentiles([])
    assert empty.count == 0 and math.isnan(empty.p99)
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    with pytest.raises(ValueError, match="q"):
        percentile([1.0], 101)


def _requests(target: SLOTarget):
    # arrival, token times, ok: two meet the SLO, one is slow to start, one failed.
    specs = [(0.0, [0.5, 0.75], True), (1.0, [1.25, 1.5, 1.75], True), (2.0, [4.0, 4.25], True), (3.0, [], False)]
    return [request_metrics(index=i, qos_class="interactive", arrival_s=a, token_times_s=t, ok=ok, target=target) for i, (a, t, ok) in enumerate(specs)]


def test_slo_attainment_and_goodput():
    requests = _requests(SLOTarget(ttft_s=1.0, tbt_s=0.25))
    assert [r.meets_slo for r in requests] == [True, True, False, False]
    assert slo_attainment(requests) == 0.5
    assert measured_window_s(requests) == 4.25  # first arrival 0 to last token at 4.25
    assert goodput(requests, 4.25) == pytest.approx(2 / 4.25)
    with pytest.raises(ValueError, match="duration_s"):
        goodput(requests, 0)


def test_summary_pools_every_gap():
    requests = _requests(SLOTarget(ttft_s=1.0, tbt_s=0.25))
    s = summarize(requests)
    assert s.num_requests == 4 and s.num_failed == 1
    assert s.tbt.count == 1 + 2 + 1  # every gap of every request
    assert s.ttft.count == 3
    assert s.goodput_rps == pytest.approx(2 / 4.25) and s.slo_attainment == 0.5
    assert s.throughput_rps == pytest.approx(3 / 4.25)


def test_capacity_search_finds_the_knee_of_a_step():
    calls = []

    def attainment(rate: float) -> float:
        calls.append(rate)
        return 1.0 if rate <= 7.3 else 0.5

    result = capacity_search(attainment, target_attainment=0.9, start_rate=1.0, relative_tolerance=0.02)
    assert 7.3 * 0.98 <= result.rate <= 7.3
    assert result.probes[:4] == [(1.0, 1.0), (2.0, 1.0), (4.0, 1.0), (8.0, 0.5)]  # bracketing by doubling
    assert len(calls) == len(result.probes) < 15


def test_capacity_search_on_a_smooth_monotone_curve_and_from_above():
    result = capacity_search(lambda r: max(0.0, 1 - r / 100), target_attainment=0.9, start_rate=64.0, relative_tolerance=0.01)
    assert 10 * 0.99 <= result.rate <= 10.0  # attainment 0.9 exactly at 10 req/s
    assert result.probes[0][0] == 64.0 and result.probes[1][0] == 32.0  # halving down to a bracket


def test_capacity_search_when_nothing_passes_and_bad_arguments():
    result = capacity_search(lambda r: 0.0, start_rate=1.0, min_rate=0.1)
    assert result.rate is None and [r for r, _ in result.probes] == [1.0, 0.5, 0.25, 0.125]
    with pytest.raises(ValueError, match="target_attainment"):
        capacity_search(lambda r: 1.0, target_attainment=1.5)
    with pytest.raises(ValueError, match="rates"):
        capacity_search(lambda r: 1.0, start_rate=0)


def test_held_back_tokens_count_for_tpot_but_not_as_gaps():
    # 5 tokens by the server's count, 4 pieces of text (one token was held back and sent with
    # the next): TPOT and normalised latency divide by tokens, TBT keeps the 3 gaps seen.
    target = SLOTarget(1.0, 0.5)
    m = request_metrics(index=0, qos_class="c", arrival_s=0.0, token_times_s=[0.5, 1.0, 1.5, 2.5], ok=True, target=target, num_output_tokens=5)
    assert m.tpot_s == 0.5 and m.normalized_latency_s == 0.5 and m.tbt_s == [0.5, 0.5, 1.0] and m.num_output_tokens == 5
    with pytest.raises(ValueError, match="num_output_tokens"):
        request_metrics(index=0, qos_class="c", arrival_s=0.0, token_times_s=[0.5, 1.0], ok=True, target=target, num_output_tokens=1)
