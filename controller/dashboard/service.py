"""The dashboard's glue inside the ingress: read telemetry, check the operator token, answer.

The ingress mounts three thin routes (`/dashboard`, `/dashboard/{path}`, `/metrics`) that
call this class, so the serving code carries no dashboard logic. The page itself is a static
shell; every figure comes from `dashboard/api/state`, built by the pure `build_state`.
Plotly's JavaScript is served from the `plotly` package on disk: the page charts with no
internet.
"""

from __future__ import annotations

import json
import logging
import time
from importlib import resources
from pathlib import Path

from fastapi.responses import JSONResponse, RedirectResponse, Response

from cluster.records import Decision, Plan, RecordError, RoutingPlan, TelemetrySnapshot
from cluster.spec import ClusterSpec
from cluster.telemetry import TelemetryStore, TelemetryUnavailable
from controller.dashboard.auth import OperatorToken
from controller.dashboard.state import build_state
from controller.metrics import CONTENT_TYPE, RequestMetrics
from router.errors import APIError, error_body, to_error_response

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
_STATIC_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}
DECISIONS_SHOWN = 20
# Several open dashboards and a Prometheus scrape share one Redis read within this age.
READ_CACHE_S = 0.5


def _static_files() -> dict[str, Path]:
    """The only files `/dashboard/static/<name>` serves: a fixed map, so no path reaches the disk
    that is not listed here."""
    files = {p.name: p for p in STATIC_DIR.iterdir() if p.suffix in _STATIC_TYPES and p.name != "index.html"}
    files["plotly.min.js"] = Path(str(resources.files("plotly") / "package_data" / "plotly.min.js"))
    return files


def _error(exc: APIError) -> JSONResponse:
    err = to_error_response(exc)
    return JSONResponse(err.body, status_code=err.status, headers=err.headers)


class Dashboard:
    def __init__(self, spec: ClusterSpec, store: TelemetryStore) -> None:
        self.spec = spec
        self.store = store
        self.token = OperatorToken(spec.operator_token)
        self.metrics = RequestMetrics(spec)
        self._files = _static_files()
        self._cache: dict[str, bytes] = {}
        self._read_at = -1.0
        self._read: tuple[TelemetrySnapshot, Plan | None, list[Decision], RoutingPlan | None] | None = None

    # -- reading telemetry ----------------------------------------------------------------------
    async def read(self) -> tuple[TelemetrySnapshot, Plan | None, list[Decision], RoutingPlan | None]:
        """Snapshot, plan, decisions and routing plan; with Redis away, the last snapshot
        (marked stale), no plans and no decisions rather than an error."""
        now = time.monotonic()
        if self._read is not None and now - self._read_at < READ_CACHE_S:
            return self._read
        snapshot = await self.store.snapshot()
        plan: Plan | None = None
        decisions: list[Decision] = []
        routing: RoutingPlan | None = None
        if not snapshot.stale:
            try:
                plan = await self.store.read_plan()
                decisions = await self.store.recent_decisions(DECISIONS_SHOWN)
                routing = await self.store.read_routing()
            except (TelemetryUnavailable, RecordError) as exc:
                log.warning("dashboard: plan or decisions unreadable: %s", exc)
        self._read, self._read_at = (snapshot, plan, decisions, routing), now
        return self._read

    # -- routes -----------------------------------------------------------------------------------
    def page(self) -> Response:
        return Response(self._bytes(STATIC_DIR / "index.html"), media_type=_STATIC_TYPES[".html"], headers={"Cache-Control": "no-cache"})

    async def route(self, path: str, authorization: str | None) -> Response:
        """Everything under `/dashboard/`: the JSON API and the static files."""
        if path in ("", "/"):
            # Relative links on the page resolve against `.../dashboard`, not `.../dashboard/`.
            return RedirectResponse("../dashboard", status_code=307)
        if path == "api/state":
            return await self.state(authorization)
        if path.startswith("static/") and (file := self._files.get(path.removeprefix("static/"))) is not None:
            media_type = _STATIC_TYPES.get(file.suffix, "text/javascript; charset=utf-8")
            return Response(self._bytes(file), media_type=media_type, headers={"Cache-Control": "public, max-age=3600"})
        return JSONResponse(error_body(f"No dashboard resource at {path!r}.", "not_found_error"), status_code=404)

    async def state(self, authorization: str | None) -> Response:
        try:
            self.token.check_http(authorization)
        except APIError as exc:
            return _error(exc)
        snapshot, plan, decisions, routing = await self.read()
        state = build_state(snapshot, plan, decisions, self.spec, time.time(), routing)
        return Response(json.dumps(state, allow_nan=False), media_type="application/json", headers={"Cache-Control": "no-store"})

    async def scrape(self, authorization: str | None) -> Response:
        try:
            self.token.check_http(authorization)
        except APIError as exc:
            return _error(exc)
        snapshot, plan, _, _ = await self.read()
        engines = []
        if not snapshot.stale:
            try:
                engines = await self.store.engine_metrics()
            except TelemetryUnavailable as exc:
                log.warning("metrics: the engines' metrics are unreadable: %s", exc)
        return Response(self.metrics.exposition(snapshot, plan, time.time(), engines), media_type=CONTENT_TYPE)

    def _bytes(self, path: Path) -> bytes:
        if path.name not in self._cache:
            self._cache[path.name] = path.read_bytes()
        return self._cache[path.name]
