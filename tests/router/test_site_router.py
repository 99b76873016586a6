"""Per-request site choice: planned shares, power drops, fail-over, no power at all."""

from collections import Counter

from router.site_router import SITE_LOSS_MEMORY_S, SiteLoss, SitePower, choose_site, failover_site

SHARES = {"chat": {"a": 0.75, "b": 0.25}}


def powered(latency=0.0):
    return SitePower(available_w=2000.0, drawn_w=1000.0, latency_ms=latency)


def test_requests_follow_the_planned_shares():
    power = {"a": powered(), "b": powered()}
    picks = Counter(choose_site("chat", SHARES, power, u / 1000).site for u in range(1000))
    assert picks == {"a": 750, "b": 250}


def test_a_site_whose_power_drops_below_its_draw_gets_no_new_work_at_once():
    power = {"a": SitePower(available_w=600.0, drawn_w=1000.0), "b": powered()}
    choices = {choose_site("chat", SHARES, power, u / 10).site for u in range(10)}
    assert choices == {"b"}
    assert "a skipped" in choose_site("chat", SHARES, power, 0.0).reason


def test_fail_over_to_the_nearest_powered_site_when_the_plan_has_none():
    power = {"a": SitePower(0.0, 0.0), "b": SitePower(0.0, 0.0), "c": powered(latency=30.0), "d": powered(latency=10.0)}
    choice = choose_site("chat", SHARES, power, 0.5)
    assert choice.site == "d" and "fail-over" in choice.reason
    assert choose_site("unplanned-class", SHARES, power, 0.5).site == "d"


def test_no_power_anywhere_means_no_site():
    power = {"a": SitePower(0.0, 0.0), "b": SitePower(100.0, 400.0)}
    choice = choose_site("chat", SHARES, power, 0.2)
    assert choice.site is None and "no site" in choice.reason


def test_with_live_load_the_less_loaded_of_a_planned_and_a_powered_candidate_wins():
    from router.site_router import SiteLoad

    power = {"a": powered(), "b": powered()}
    load = {"a": SiteLoad(wait_s=2.0), "b": SiteLoad(wait_s=0.1)}
    # Candidates drawn a then b: b is waited on less, so b takes it, and the reason says why.
    choice = choose_site("chat", SHARES, power, 0.1, load=load, second=0.9)
    assert choice.site == "b" and "b instead of a" in choice.reason
    # Both draws landing on a keep a: the plan's proportions still hold most of the traffic.
    assert choose_site("chat", SHARES, power, 0.1, load=load, second=0.2).site == "a"
    picks = Counter(choose_site("chat", SHARES, power, u / 40, load=load, second=v / 40).site
                    for u in range(40) for v in range(40))
    # b wins whenever either draw is b: the planned one (25%) or the powered one (half of them).
    assert picks["b"] / sum(picks.values()) == 1 - 0.75 * 0.5


def test_a_site_out_of_kv_room_loses_to_one_with_a_longer_queue():
    from router.site_router import SiteLoad

    power = {"a": powered(), "b": powered()}
    load = {"a": SiteLoad(wait_s=0.2, kv_occupancy=0.99), "b": SiteLoad(wait_s=0.5, kv_occupancy=0.5)}
    assert choose_site("chat", SHARES, power, 0.1, load=load, second=0.9).site == "b"


def test_when_every_planned_candidate_is_saturated_work_spills_to_a_powered_site_with_room():
    from router.site_router import SiteLoad

    shares = {"chat": {"a": 1.0, "b": 0.0, "c": 0.0}}
    power = {"a": powered(), "b": powered(latency=5.0), "c": SitePower(available_w=0.0, drawn_w=0.0)}
    load = {"a": SiteLoad(wait_s=4.0), "b": SiteLoad(wait_s=0.3), "c": SiteLoad(wait_s=0.0)}
    # Both draws land on a (the second among the powered a and b): a would wait 4 s, so spill.
    choice = choose_site("chat", shares, power, 0.3, load=load, second=0.2, spill_wait_s=1.0)
    assert choice.site == "b" and "spill-over" in choice.reason  # c has no power
    assert choose_site("chat", shares, power, 0.3, load=load, second=0.2, spill_wait_s=5.0).site == "a"


# -- fail-over from a lost site (the orchestrator's fast reaction) --------------------------------------
SITES = ["a", "b", "c"]


def test_a_site_without_a_recent_loss_keeps_its_request():
    assert failover_site("b", SITES, {}, now_s=100.0).site == "b"
    old = {"b": SiteLoss(at_s=100.0 - SITE_LOSS_MEMORY_S, cause="decode: ActorDiedError")}
    assert failover_site("b", SITES, old, now_s=100.0).site == "b"  # forgotten: tried again


def test_a_lost_site_hands_its_request_to_the_first_site_in_order_without_a_loss():
    losses = {"a": SiteLoss(95.0, "prefill: ActorDiedError"), "b": SiteLoss(98.0, "prefill: PoolUnreachable")}
    choice = failover_site("b", SITES, losses, now_s=100.0)
    assert choice.site == "c"
    assert "b lost a replica 2.0 s ago (prefill: PoolUnreachable)" in choice.reason


def test_when_every_site_is_lost_the_request_stays_where_it_is():
    losses = {s: SiteLoss(99.0, "prefill: ActorDiedError") for s in SITES}
    choice = failover_site("b", SITES, losses, now_s=100.0)
    assert choice.site == "b" and "every site" in choice.reason


def test_one_site_has_nowhere_else_to_go():
    assert failover_site("a", ["a"], {"a": SiteLoss(99.0, "x")}, now_s=100.0).site == "a"
