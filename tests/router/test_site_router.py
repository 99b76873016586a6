"""Per-request site choice: planned shares, power drops, fail-over, no power at all."""

from collections import Counter

from router.site_router import SitePower, choose_site

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
