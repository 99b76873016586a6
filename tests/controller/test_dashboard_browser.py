"""The operator dashboard and `/metrics` on a real cluster: Ray Serve, Redis, the reconcile
loop, real completions over HTTP, and the page in headless Chromium driven by Playwright: a
`chromium` on PATH (`make chromium` installs Debian's as root), else the browser of
`playwright install chromium`; without either the page tests skip, saying so. The page must show the live pools, chart without internet, refuse a
wrong token, and `/metrics` must carry Pavana's names behind the same token.

Set `PAVANA_UPDATE_SCREENSHOT=1` to refresh `docs/dashboard.png` from this run.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cluster.spec import ClusterSpec
from cluster.telemetry import TelemetryStore
from controller.reconcile import Reconciler, running_replicas

pytestmark = [pytest.mark.ray, pytest.mark.redis]

APP = "dashboard-test"
PREFIX = "/dash"
TOKEN = f"operator-{uuid.uuid4().hex}"
API_KEY = "dashboard-test-key"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
SITE_POWER_W = 1500.0  # a site on a small supply, so the power chart has a scale to read
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "dashboard.png"
METRIC_NAMES = {
    "pavana_requests", "pavana_request_latency_seconds", "pavana_ttft_seconds", "pavana_tbt_seconds",
    "pavana_queued_requests", "pavana_queued_prefill_tokens", "pavana_kv_occupancy_ratio", "pavana_tokens_per_second",
    "pavana_replicas", "pavana_site_power_watts", "pavana_slo_attainment_ratio",
}


@dataclass(frozen=True)
class Cluster:
    spec: ClusterSpec
    url: str  # the application's root: http://host:port/dash

    def complete(self, client: httpx.Client, n: int) -> None:
        for i in range(n):
            body = {"model": self.spec.model.name, "prompt": f"the wind at site {i} is", "max_tokens": 6}
            response = client.post(f"{self.url}/v1/completions", json=body, headers={"Authorization": f"Bearer {API_KEY}"})
            assert response.status_code == 200, response.text


def dashboard_spec(ports) -> ClusterSpec:
    """The default spec without its vision pool (text traffic only), one engine thread per
    replica, an API key, an operator token, a telemetry prefix of its own, and its one site on
    a constant supply of `SITE_POWER_W`."""
    raw = ClusterSpec.default().model_dump(mode="json")
    raw["pools"].pop("vision", None)
    raw["sites"][0]["power"] = {"kind": "constant", "power_w": SITE_POWER_W}
    raw["engine"]["num_threads"] = 1
    raw.update(
        http_port=ports.http_port, grpc_port=ports.grpc_port, api_keys=[API_KEY], operator_token=TOKEN,
        telemetry_prefix=f"test:{uuid.uuid4().hex}",
    )
    return ClusterSpec.model_validate(raw)


async def _plan_when_heartbeats_arrive(spec: ClusterSpec, timeout_s: float = 60.0) -> None:
    """Reconcile once every pool has a heartbeat, so the plan names live pools, and once more
    (the second round holds: the same observation plans no change)."""
    store = TelemetryStore.from_spec(spec)
    reconciler = Reconciler(spec, app_name=APP)
    try:
        deadline = time.monotonic() + timeout_s
        while {h.pool for h in (await store.snapshot()).heartbeats} != set(spec.pools):
            assert time.monotonic() < deadline, "no heartbeat from every pool"
            await asyncio.sleep(0.5)
        await reconciler.reconcile_once()
        await reconciler.reconcile_once()
    finally:
        await store.close()
        await reconciler.store.close()


@pytest.fixture(scope="module")
def cluster(ray_cluster) -> Iterator[Cluster]:
    from ray import serve

    from controller.app import build_app

    spec = dashboard_spec(ray_cluster)
    serve.run(build_app(spec), name=APP, route_prefix=PREFIX)
    try:
        asyncio.run(_plan_when_heartbeats_arrive(spec))
        cluster = Cluster(spec, f"http://127.0.0.1:{ray_cluster.http_port}{PREFIX}")
        with httpx.Client(timeout=60) as client:
            cluster.complete(client, 4)
        yield cluster
    finally:
        serve.delete(APP)
        asyncio.run(_clear(spec))


async def _clear(spec: ClusterSpec) -> None:
    store = TelemetryStore.from_spec(spec)
    await store.clear()
    await store.close()


def chromium_on_path() -> str | None:
    return next((found for name in CHROMIUM_NAMES if (found := shutil.which(name))), None)


@pytest.fixture
def browser():
    """A headless Chromium, or a skip that says what to install: a missing browser is the
    machine's lack, not the dashboard's fault."""
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    executable = chromium_on_path()
    with sync_playwright() as playwright:
        try:
            browser = playwright.chromium.launch(executable_path=executable, headless=True)
        except PlaywrightError as exc:
            if executable is not None:
                raise  # a browser is there and fails: that is worth a failure
            pytest.skip("no Chromium: none on PATH (`make chromium`: Debian's package as root) and none from "
                        f"`playwright install chromium` ({str(exc).splitlines()[0]})")
        try:
            yield browser
        finally:
            browser.close()


def trace_points(page, chart: str) -> int:
    return page.evaluate(f"document.getElementById('{chart}').data[0].x.length")


def test_the_dashboard_shows_live_pools_and_charts_that_grow(browser, cluster, tmp_path):
    page = browser.new_page(viewport={"width": 1400, "height": 1150})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("requestfailed", lambda request: errors.append(f"{request.url}: {request.failure}"))
    page.goto(f"{cluster.url}/dashboard#token={TOKEN}")
    page.wait_for_selector("#pools tbody tr[data-key]")
    assert "token=" not in page.url  # the fragment is read, kept in the tab, and dropped
    assert page.evaluate("sessionStorage.getItem('pavana.operatorToken')") == TOKEN

    shown = page.eval_on_selector_all("#pools tbody tr", """rows => rows.map(r => ({
        pool: r.querySelector('.pool').textContent, site: r.querySelector('.site').textContent,
        running: r.querySelector('.running').textContent, desired: r.querySelector('.desired').textContent}))""")
    serving = running_replicas(cluster.spec, APP)  # what Ray Serve runs, pool@site -> replicas
    assert {(row["pool"], row["site"]) for row in shown} == {tuple(key.split("@")) for key in serving}
    for row in shown:
        assert int(row["running"]) == serving[f"{row['pool']}@{row['site']}"] >= 1, row
        assert row["desired"] != "–", row  # the reconcile loop's plan names every pool
    assert page.get_attribute("#status", "data-state") == "live"

    # Requests already sent reach the class table once their records are in Redis.
    page.wait_for_function(
        "() => Number(document.querySelector('#classes tr[data-qos-class=\"interactive\"] .requests')?.textContent) >= 4"
    )

    # The charts are drawn by the plotly served from the ingress, and grow with each poll.
    assert page.evaluate("typeof Plotly") == "object"
    before = trace_points(page, "power-chart"), trace_points(page, "rate-chart")
    with httpx.Client(timeout=60) as client:
        cluster.complete(client, 3)
    page.wait_for_function(
        "n => document.getElementById('power-chart').data[0].x.length >= n + 2", arg=before[0], timeout=15_000
    )
    after = trace_points(page, "power-chart"), trace_points(page, "rate-chart")
    assert after[0] > before[0] and after[1] > before[1]
    # The completions just sent show in the request rate once their records are in Redis.
    page.wait_for_function("() => Math.max(...document.getElementById('rate-chart').data[0].y) > 0", timeout=15_000)
    power = dict(page.evaluate("document.getElementById('power-chart').data.map(t => [t.name, t.y[t.y.length - 1]])"))
    assert set(power) == {"local available", "local drawn"}
    assert power["local available"] == SITE_POWER_W  # the spec's supply, through the reconcile loop and Redis
    assert 0 < power["local drawn"] <= SITE_POWER_W  # the two replicas' estimated draw

    update = os.environ.get("PAVANA_UPDATE_SCREENSHOT") == "1"
    if update:  # a picture for the README: half a minute of uneven traffic first
        with httpx.Client(timeout=60) as client:
            for burst in (6, 1, 4, 0, 8, 2, 5):
                cluster.complete(client, burst)
                time.sleep(2.0)
    shot = tmp_path / "dashboard.png"
    page.screenshot(path=str(shot), full_page=True)
    assert errors == []  # no script error, and every resource (plotly included) came from the ingress
    assert shot.stat().st_size > 10_000
    if update:
        shutil.copyfile(shot, SCREENSHOT)


def test_a_wrong_token_is_refused_by_the_page_and_the_api(browser, cluster):
    page = browser.new_page()
    page.goto(f"{cluster.url}/dashboard#token=not-the-operator-token")
    page.wait_for_selector("#refused", state="visible")
    assert page.text_content("#status") == "token refused"
    assert page.is_hidden("#board")
    assert page.evaluate("sessionStorage.getItem('pavana.operatorToken')") is None
    # The form then takes the right one.
    page.fill("#token-input", TOKEN)
    page.click("#token-form button[type=submit]")
    page.wait_for_selector("#pools tbody tr[data-key]")
    assert page.is_hidden("#refused")

    for headers in ({"Authorization": "Bearer not-the-operator-token"}, {}, {"Authorization": f"Bearer {API_KEY}"}):
        response = httpx.get(f"{cluster.url}/dashboard/api/state", headers=headers, timeout=30)
        assert response.status_code == 401, headers
        assert response.json()["error"]["type"] == "authentication_error"
    assert httpx.get(f"{cluster.url}/dashboard", timeout=30).status_code == 200  # the shell holds no data


def test_metrics_carry_pavanas_names_behind_the_operator_token(cluster):
    def scrape() -> dict:
        response = httpx.get(f"{cluster.url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("text/plain")
        return {f.name: f for f in text_string_to_metric_families(response.text)}

    def served(families: dict) -> float:
        return sum(
            s.value for s in families["pavana_requests"].samples
            if s.name == "pavana_requests_total" and s.labels["outcome"] == "ok" and s.labels["qos_class"] == "interactive"
        )

    first = scrape()
    assert set(first) == METRIC_NAMES
    with httpx.Client(timeout=60) as client:
        cluster.complete(client, 2)
    second = scrape()
    assert served(second) - served(first) == 2
    running = {
        (s.labels["pool"], s.labels["site"]): s.value for s in second["pavana_replicas"].samples if s.labels["state"] == "running"
    }
    assert running == {tuple(k.split("@")): float(v) for k, v in running_replicas(cluster.spec, APP).items()}
    for headers in ({"Authorization": "Bearer wrong"}, {}):
        response = httpx.get(f"{cluster.url}/metrics", headers=headers, timeout=30)
        assert response.status_code == 401, headers
        assert response.json()["error"]["code"] in ("invalid_api_key", "invalid_operator_token")
