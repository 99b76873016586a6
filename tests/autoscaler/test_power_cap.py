from cluster.records import Plan, PoolTarget
from autoscaler.power_cap import affordable_replicas, fit_to_power
from autoscaler.site_planner import SiteInput
from cluster.power_modes import Mode

FULL = Mode("full", 300.0, 1.0)
REQUIRED = frozenset({"prefill", "decode"})


def plan(**desired):
    targets = tuple(PoolTarget(pool=p, site=s, current=1, desired=n, reason="demand") for (p, s), n in
                    ((tuple(k.split("_")), v) for k, v in desired.items()))
    return Plan(targets=targets, timestamp_s=0.0)


def site(name, watts):
    return SiteInput(name, watts, (FULL,), max_replicas=8)


def test_a_site_with_enough_power_keeps_its_plan():
    p = plan(prefill_a=2, decode_a=2)
    assert fit_to_power(p, {"a": site("a", 1200.0)}, REQUIRED) == p


def test_the_largest_pool_sheds_first():
    capped = fit_to_power(plan(prefill_a=3, decode_a=1, vision_a=1), {"a": site("a", 1000.0)}, REQUIRED | {"vision"})
    assert affordable_replicas(site("a", 1000.0)) == 3
    assert {t.pool: t.desired for t in capped.targets} == {"prefill": 1, "decode": 1, "vision": 1}
    assert all("power cap" in t.reason for t in capped.targets)


def test_a_site_that_cannot_run_a_whole_pipeline_goes_dark():
    capped = fit_to_power(plan(prefill_a=1, decode_a=1, prefill_b=1, decode_b=1), {"a": site("a", 400.0), "b": site("b", 900.0)}, REQUIRED)
    desired = {t.key: t.desired for t in capped.targets}
    assert desired == {"prefill@a": 0, "decode@a": 0, "prefill@b": 1, "decode@b": 1}
    assert "goes dark" in next(t.reason for t in capped.targets if t.site == "a")


def test_zero_power_means_zero_replicas():
    capped = fit_to_power(plan(prefill_a=2, decode_a=2), {"a": site("a", 0.0)}, REQUIRED)
    assert all(t.desired == 0 for t in capped.targets)


def test_the_cap_goes_to_the_pool_with_the_most_unmet_need():
    """Six GPUs, prefill asking 6 (needs 5.5) and decode asking 4 (needs 2.2): after one
    replica each, whole replicas of need come before decode's 0.2 of its third."""
    demand = plan(prefill_a=6, decode_a=4)
    needs = {"prefill@a": 5.5, "decode@a": 2.2}
    capped = fit_to_power(demand, {"a": SiteInput("a", 1e9, (FULL,), max_replicas=6)}, REQUIRED, needs)
    assert {t.pool: t.desired for t in capped.targets} == {"prefill": 4, "decode": 2}
    assert all("allocated jointly" in t.reason for t in capped.targets)


def test_a_warm_replica_is_kept_against_a_slightly_larger_cold_need():
    from cluster.records import PoolTarget

    warm = Plan((PoolTarget("prefill", "a", 2, 3, "demand"), PoolTarget("decode", "a", 3, 3, "demand")), 0.0)
    needs = {"prefill@a": 2.9, "decode@a": 2.8}  # prefill's third replica would be cold; decode's third is running
    capped = fit_to_power(warm, {"a": SiteInput("a", 1e9, (FULL,), max_replicas=5)}, REQUIRED, needs)
    assert {t.pool: t.desired for t in capped.targets} == {"prefill": 2, "decode": 3}


def test_the_same_loads_give_the_same_allocation_next_round():
    from cluster.records import PoolTarget

    needs = {"prefill@a": 4.6, "decode@a": 3.7, "vision@a": 1.2}
    site_a = {"a": SiteInput("a", 1e9, (FULL,), max_replicas=7)}
    first = fit_to_power(plan(prefill_a=5, decode_a=4, vision_a=2), site_a, REQUIRED | {"vision"}, needs)
    sizes = {t.pool: t.desired for t in first.targets}
    assert sum(sizes.values()) == 7
    # Next round the autoscaler asks again from the allocated sizes; nothing moves.
    again = Plan(tuple(PoolTarget(t.pool, "a", t.desired, {"prefill": 5, "decode": 4, "vision": 2}[t.pool], "demand")
                       for t in first.targets), 1.0)
    assert {t.pool: t.desired for t in fit_to_power(again, site_a, REQUIRED | {"vision"}, needs).targets} == sizes


def test_an_encoder_pool_with_work_keeps_its_first_replica_against_a_larger_ask():
    """E + PD under a 6-GPU cap: colocated asks for 8 (needs 7.5), vision for 1 (needs 0.4);
    images waiting are served only by the encoder pool, so it keeps one."""
    demand = plan(colocated_a=8, vision_a=1)
    capped = fit_to_power(demand, {"a": SiteInput("a", 1e9, (FULL,), max_replicas=6)}, frozenset({"colocated"}),
                          {"colocated@a": 7.5, "vision@a": 0.4})
    assert {t.pool: t.desired for t in capped.targets} == {"colocated": 5, "vision": 1}


def test_a_pool_in_its_cool_down_does_not_give_replicas_to_another_pools_ask_but_does_to_power():
    from cluster.records import PoolTarget

    asks = Plan((PoolTarget("prefill", "a", 4, 4, "demand"), PoolTarget("decode", "a", 2, 4, "demand")), 0.0)
    needs = {"prefill@a": 2.5, "decode@a": 3.9}
    site = {"a": SiteInput("a", 1e9, (FULL,), max_replicas=6)}
    assert {t.pool: t.desired for t in fit_to_power(asks, site, REQUIRED, needs).targets} == {"prefill": 2, "decode": 4}
    held = fit_to_power(asks, site, REQUIRED, needs, protected={"prefill@a": 4})
    assert {t.pool: t.desired for t in held.targets} == {"prefill": 4, "decode": 2}
    dim = fit_to_power(asks, {"a": SiteInput("a", 1200.0, (FULL,), max_replicas=6)}, REQUIRED, needs, protected={"prefill@a": 4})
    assert sum(t.desired for t in dim.targets) == 4  # 1,200 W: the power cap still binds
