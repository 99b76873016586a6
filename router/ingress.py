"""The router's front door: one Ray Serve deployment serving the OpenAI HTTP API and Pavana's
gRPC API, in front of the stage pools.

HTTP routes are FastAPI under `@serve.ingress`, here; the gRPC methods (`router/grpc_service.py`)
are mixed into the same class, which Ray Serve's gRPC proxy calls by name. Response bodies and
stream chunks are built by `router/formats.py`.

Every request goes validate ▸ authenticate ▸ prepare (`router/prompt.py`) ▸ admit ▸ pick a
site ▸ orchestrate the stages (`router/orchestrator.py`), once per choice (`router/choices.py`).
Errors become OpenAI's error body over HTTP and a gRPC status code over gRPC, from the one
mapping in `router/errors.py`.

The pipeline's transport-neutral steps are methods both transports call:
`PromptBuilder.chat` / `.completion` (prepare), `Ingress._classed` (QoS class, with `priority`),
`Ingress.generate_choices` (admit and run all choices, as (index, TokenChunk) pairs), and the
formats of `router/formats.py` with `Ingress.texts` (token strings for logprobs).
"""

import asyncio
import dataclasses
import importlib
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from cluster.records import RequestRecord
from cluster.spec import ClusterSpec
from cluster.telemetry import TelemetryPublisher, TelemetryStore
from router.admission import QOS_HEADER, AdmissionControl, Overloaded, resolve_class
from router.queue_wait import QueueWaits
from router.auth import APIKeys
from router.errors import (
    INVALID_REQUEST,
    NOT_FOUND,
    APIError,
    ErrorResponse,
    error_body,
    from_validation_errors,
    validated,
    invalid_request,
    to_error_response,
)
from router.choices import copies, fan_out
from router.formats import SSE_DONE, ChatFormat, CompletionFormat, format_for, sse
from router.grpc_service import GRPCMethods
from router.limits import RequestLimitsMiddleware
from router.logprobs import TokenTexts
from router.orchestrator import Orchestrator, SitePools, within
from router.priority import class_for_priority
from router.prompt import ModelFacts, PreparedRequest, PromptBuilder, model_facts
from router.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    DetokenizeResponse,
    ModelCard,
    ModelList,
    TokenizeRequest,
    TokenizeResponse,
)
from router.request_telemetry import measured
from router.site_router import SPILL_SHARE_OF_TTFT, NoPoweredSite, choose_site
from router.site_view import SiteView, build_view
from workers.requests import TokenChunk

log = logging.getLogger(__name__)

READINESS_TIMEOUT_S = 5.0
READINESS_CACHE_S = 1.0
SITE_VIEW_REFRESH_S = 0.5

app = FastAPI(title="Pavana", description="OpenAI-compatible API of a Pavana cluster", docs_url=None, redoc_url=None)
app.add_middleware(RequestLimitsMiddleware)  # header and body size limits (router/limits.py)


def _json_error(err: ErrorResponse) -> JSONResponse:
    return JSONResponse(err.body, status_code=err.status, headers=err.headers)


@app.exception_handler(RequestValidationError)
async def _on_request_validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    # FastAPI answers 422 with its own body; OpenAI clients expect a 400 with OpenAI's body.
    return _json_error(to_error_response(from_validation_errors(list(exc.errors()))))


@app.exception_handler(StarletteHTTPException)
async def _on_http_exception(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    kind = NOT_FOUND if exc.status_code == 404 else INVALID_REQUEST
    return JSONResponse(error_body(str(exc.detail), kind), status_code=exc.status_code, headers=getattr(exc, "headers", None))


def _load_object(path: str) -> Any:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def _own_serve_request_id() -> None:
    """Give the current task a Serve request id of its own.

    Ray Serve (2.60) routes a handle call under the `internal_request_id` of the request being
    served, which every call made while serving it inherits, and keeps pending calls in a map
    by that id: two calls to one pool in flight at once from one request overwrite each other
    there, and one of them is never routed (n=3 hung: two copies' prefills at once). Each
    choice's task is a request of its own to the pools, so it gets an id of its own; the copy
    of the context a task runs in keeps the change to that task."""
    from ray.serve import context

    current = context._get_serve_request_context()
    context._serve_request_context.set(dataclasses.replace(current, _internal_request_id=uuid.uuid4().hex))


def _no_console() -> JSONResponse:
    return JSONResponse(error_body("This deployment serves no operator console.", NOT_FOUND), status_code=404)


# Everything the class uses is defined above it: `@serve.ingress` snapshots the class with
# cloudpickle when the decorator runs, so a module global defined further down is missing in
# the replica (a NameError at request time). For the same reason this module does not use
# `from __future__ import annotations`: FastAPI would resolve `request: Request` from the
# snapshot's globals, which hold only names the code uses, and take it for a query parameter.


@serve.ingress(app)
class Ingress(GRPCMethods):
    def __init__(self, spec: dict[str, Any], pools: dict[str, dict[str, Any]], console: str | None = None) -> None:
        """`console` is the import path (`module:Class`) of the operator console that serves
        `/dashboard` and `/metrics`; the controller passes its own, so the router never
        imports the controller. Without one, those routes answer 404."""
        self.spec = ClusterSpec.model_validate(spec)
        self.tokenizer, self.facts = self._load_model(self.spec)
        self.prompts = PromptBuilder(
            self.tokenizer,
            self.facts,
            allow_remote_image_urls=self.spec.allow_remote_image_urls,
            qos_class=self.spec.default_qos_class,
        )
        self.texts = TokenTexts(self.tokenizer)
        self.keys = APIKeys(self.spec.api_keys)
        self.admission = AdmissionControl.from_spec(self.spec)
        self.queue_waits = QueueWaits()  # each class's wait for a first token, for admission
        self.class_policies = self.admission.policies
        self._class_slos = {c.name: c.slo for c in self.spec.qos_classes}
        self.pools = pools
        self.orchestrator = Orchestrator({site: SitePools(**stages) for site, stages in pools.items()})
        self._site_names = [site.name for site in self.spec.sites]
        self._readiness: tuple[float, bool, dict[str, str]] | None = None
        self.telemetry = TelemetryPublisher(TelemetryStore.from_spec(self.spec))
        self.dashboard = _load_object(console)(self.spec, self.telemetry.store) if console else None
        self._site_view: SiteView | None = None
        self._site_refresher: asyncio.Task | None = None
        log.info("ingress up: model %s, context %d tokens, sites %s", self.facts.name, self.facts.max_model_len, self._site_names)

    @staticmethod
    def _load_model(spec: ClusterSpec) -> tuple[Any, ModelFacts]:
        from workers.engine.tokenizer import Tokenizer

        from workers.engine.bundled import model_dir

        path = model_dir(spec.model.path, spec.model.bundled)
        facts = model_facts(
            path,
            name=spec.model.name,
            block_size=spec.engine.block_size,
            num_kv_blocks=spec.engine.num_kv_blocks,
            max_model_len=spec.model.max_model_len,
        )
        return Tokenizer.from_dir(path), facts

    async def pick_site(self, prepared: PreparedRequest) -> str:
        """Where a request runs: with one site, there; with several, by the power-aware site
        router over the latest telemetry (`router/site_view.py`, `router/site_router.py`).
        The first request waits up to a second for the first view; without telemetry at all,
        the spec's first site."""
        if len(self._site_names) == 1:
            return self._site_names[0]
        self._ensure_site_refresher()
        for _ in range(20):
            if self._site_view is not None:
                break
            await asyncio.sleep(0.05)
        if self._site_view is None:
            return self._site_names[0]
        qos_class = prepared.request.qos_class
        view = self._site_view
        # Blended with live load (`router/site_router.py`): spill past the plan only when even the
        # less loaded candidate would spend half the class's TTFT target waiting.
        spill = SPILL_SHARE_OF_TTFT * self._class_slos[qos_class].ttft_s
        choice = choose_site(qos_class, view.shares, view.power, random.random(), load=view.load, second=random.random(),
                             spill_wait_s=spill)
        if choice.site is None:
            raise NoPoweredSite(choice.reason)
        return choice.site

    def _ensure_site_refresher(self) -> None:
        if self._site_refresher is None or self._site_refresher.done():
            self._site_refresher = asyncio.get_running_loop().create_task(self._refresh_sites())

    async def _refresh_sites(self) -> None:
        """Rebuild the site view every half second; on a Redis outage keep the last one."""
        required = frozenset({"colocated"} if self.spec.topology == "colocated" else {"prefill", "decode"})
        latencies = {site.name: site.latency_ms for site in self.spec.sites}
        classes = [c.name for c in self.spec.qos_classes]
        while True:
            try:
                snapshot = await self.telemetry.store.snapshot()
                if not snapshot.stale:
                    plan = await self.telemetry.store.read_plan()
                    routing = await self.telemetry.store.read_routing()
                    self._site_view = build_view(
                        snapshot, plan, sites=latencies, classes=classes, required_stages=required, routing=routing
                    )
            except Exception:  # telemetry never fails a request; the last view stands
                log.warning("site view: cannot refresh from telemetry", exc_info=True)
            await asyncio.sleep(SITE_VIEW_REFRESH_S)

    # -- HTTP -----------------------------------------------------------------------------------
    @app.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        """Liveness: the ingress answers."""
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(self) -> JSONResponse:
        """Readiness: every pool of every site answers."""
        ready, pools = await self._pools_ready()
        return JSONResponse({"status": "ready" if ready else "not ready", "pools": pools}, status_code=200 if ready else 503)

    # The operator dashboard and Prometheus metrics (controller/dashboard), behind the operator token.
    @app.get("/dashboard")
    async def dashboard_page(self) -> Response:
        return self.dashboard.page() if self.dashboard else _no_console()

    @app.get("/dashboard/{path:path}")
    async def dashboard_route(self, path: str, request: Request) -> Response:
        return await self.dashboard.route(path, request.headers.get("authorization")) if self.dashboard else _no_console()

    @app.get("/metrics")
    async def prometheus_metrics(self, request: Request) -> Response:
        return await self.dashboard.scrape(request.headers.get("authorization")) if self.dashboard else _no_console()

    @app.get("/v1/models")
    async def list_models(self, request: Request) -> Response:
        try:
            self.keys.check_http(request.headers.get("authorization"))
        except APIError as exc:
            return _json_error(to_error_response(exc))
        return JSONResponse(ModelList(data=[self._model_card()]).model_dump())

    @app.get("/v1/models/{model_id:path}")
    async def get_model(self, model_id: str, request: Request) -> Response:
        try:
            self.keys.check_http(request.headers.get("authorization"))
            self.prompts.check_model(model_id)
        except APIError as exc:
            return _json_error(to_error_response(exc))
        return JSONResponse(self._model_card().model_dump())

    @app.post("/v1/completions")
    async def completions(self, request: Request) -> Response:
        return await self._serve_http(request, CompletionRequest, "cmpl", self.prompts.completion, CompletionFormat)

    @app.post("/v1/chat/completions")
    async def chat_completions(self, request: Request) -> Response:
        return await self._serve_http(request, ChatCompletionRequest, "chatcmpl", self.prompts.chat, ChatFormat)

    # vLLM's tokenizer endpoints, beside /v1 as vLLM serves them.
    @app.post("/tokenize")
    async def tokenize(self, request: Request) -> Response:
        try:
            self.keys.check_http(request.headers.get("authorization"))
            body = validated(TokenizeRequest, await request.body())
            tokens = await asyncio.to_thread(self.prompts.tokenize, body)
        except Exception as exc:
            return _json_error(to_error_response(exc))
        strs = [self.texts.token_str(t) for t in tokens] if body.return_token_strs else None
        return JSONResponse(TokenizeResponse(count=len(tokens), max_model_len=self.facts.max_model_len, tokens=tokens, token_strs=strs).model_dump())

    @app.post("/detokenize")
    async def detokenize(self, request: Request) -> Response:
        try:
            self.keys.check_http(request.headers.get("authorization"))
            body = validated(DetokenizeRequest, await request.body())
            if body.model is not None:
                self.prompts.check_model(body.model)
            text = self.prompts.detokenize(body.tokens)
        except Exception as exc:
            return _json_error(to_error_response(exc))
        return JSONResponse(DetokenizeResponse(prompt=text).model_dump())

    async def _serve_http(
        self,
        request: Request,
        body_type: type[BaseModel],
        id_prefix: str,
        prepare: Callable[[Any, str], PreparedRequest],
        format_type: type[CompletionFormat],
    ) -> Response:
        stream: AsyncIterator[tuple[int, TokenChunk]] | None = None
        try:
            key = self.keys.check_http(request.headers.get("authorization"))
            qos_class = self._qos_class(request.headers.get(QOS_HEADER), key)
            body = validated(body_type, await request.body())
            # In a thread: compiling a large JSON schema or tokenizing a long prompt takes up to
            # seconds, which would stall every stream this replica serves.
            prepared = self._classed(await asyncio.to_thread(prepare, body, f"{id_prefix}-{uuid.uuid4().hex}"), qos_class)
            fmt = format_for(format_type, prepared, body.model, self.texts)
            stream = self.generate_choices(prepared)
            if not body.stream:
                async for index, chunk in stream:
                    fmt.add(index, chunk)
                return JSONResponse(fmt.response().model_dump())
            # The first chunk is awaited before the response starts, so that an error in any
            # stage up to the first token still gets its own HTTP status.
            first = await anext(stream)
        except Exception as exc:
            if stream is not None:
                await stream.aclose()
            return _json_error(to_error_response(exc))
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        return StreamingResponse(
            self._sse_stream(fmt, first, stream, include_usage),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @staticmethod
    async def _sse_stream(
        fmt: CompletionFormat,
        first: tuple[int, TokenChunk],
        rest: AsyncIterator[tuple[int, TokenChunk]],
        include_usage: bool,
    ) -> AsyncIterator[str]:
        """OpenAI's chunks, the usage chunk when the client asked for it
        (`stream_options.include_usage`), then `[DONE]`; an error after the stream began is sent
        as an SSE error event, and `[DONE]` still ends the stream."""
        try:
            for event in fmt.start():
                yield sse(event)
            item: tuple[int, TokenChunk] | None = first
            while item is not None:
                for event in fmt.chunk(*item):
                    yield sse(event)
                item = await anext(rest, None)
            if include_usage:
                yield sse(fmt.usage_chunk())
        except Exception as exc:
            err = to_error_response(exc)
            log.warning("stream %s failed after it began: %s", fmt.request_id, err.message)
            yield sse(err.body)
        finally:
            await rest.aclose()
        yield SSE_DONE

    async def generate_choices(self, prepared: PreparedRequest) -> AsyncIterator[tuple[int, TokenChunk]]:
        """Every chunk of a request's `n` choices as (choice index, chunk), for both transports.

        The request is admitted (`router/admission.py`) once per choice, all or none before
        anything runs, so that a choice is never refused after others have begun; the slots
        are held until the whole request ends. Copy 0 runs first and the others follow its
        first token, to prefill from its cached prompt (`router/choices.py`)."""
        qos_class = prepared.request.qos_class
        admitted = 0
        try:
            waited = self.queue_waits.wait_s(qos_class, time.monotonic())
            for _ in range(prepared.n):
                self.admission.admit(qos_class, waited)
                admitted += 1
        except Overloaded:  # counted: the autoscaler and the dashboard see refusals per class
            for _ in range(admitted):
                self.admission.release(qos_class)
            refused = RequestRecord(
                request_id=prepared.request.request_id, qos_class=qos_class, site="", pool_path="", ttft_s=None,
                tbt_p50_s=None, tbt_p99_s=None, prompt_tokens=prepared.request.num_prompt_tokens, output_tokens=0,
                outcome="rejected", timestamp_s=time.time(), num_images=len(prepared.images), user=prepared.user,
            )
            self._publish(refused)
            if self.dashboard is not None:
                self.dashboard.metrics.count(refused)
            raise
        requests = copies(prepared.request, prepared.n)
        choices = fan_out(lambda i: self._run_choice(dataclasses.replace(prepared, request=requests[i]), prepared.n > 1), prepared.n)
        try:
            async for item in choices:
                yield item
        finally:
            await choices.aclose()
            for _ in range(admitted):
                self.admission.release(qos_class)

    async def _generate(self, prepared: PreparedRequest) -> AsyncIterator[TokenChunk]:
        """The chunks of a request of one choice (`generate_choices` serves any `n`)."""
        if prepared.n != 1:
            raise invalid_request(f"n: this call serves one choice, got {prepared.n}", param="n")
        choices = self.generate_choices(prepared)
        try:
            async for _, chunk in choices:
                yield chunk
        finally:
            await choices.aclose()

    async def _run_choice(self, prepared: PreparedRequest, own_request_id: bool) -> AsyncIterator[TokenChunk]:
        """One choice's stages; with several choices, each in its own task
        (`router/choices.py`) under a Serve request id of its own (`_own_serve_request_id`)."""
        if own_request_id:
            _own_serve_request_id()
        waiting = uuid.uuid4().hex  # this choice, in the class's measured waits
        self.queue_waits.started(waiting, prepared.request.qos_class, time.monotonic())
        stages = self._run_stages(prepared)
        try:
            async for chunk in stages:
                if chunk.token_ids:
                    self.queue_waits.first_token(waiting, time.monotonic())
                yield chunk
        finally:
            self.queue_waits.ended(waiting)
            await stages.aclose()

    async def _run_stages(self, prepared: PreparedRequest) -> AsyncIterator[TokenChunk]:
        site = await self.pick_site(prepared)
        stages = ["vision"] if prepared.images else []
        stages += ["prefill", "decode"] if self.orchestrator.sites[site].disaggregated else ["colocated"]
        user = prepared.user
        ran_at = [site]  # the orchestrator moves a request off a lost site; its record says where it ended
        stream = measured(
            self.orchestrator.generate(prepared.request, prepared.images, site, on_site=lambda s: ran_at.__setitem__(0, s)),
            self._publish if user is None else (lambda record: self._publish(dataclasses.replace(record, user=user))),
            request_id=prepared.request.request_id,
            qos_class=prepared.request.qos_class,
            site=lambda: ran_at[0],
            pool_path=">".join(stages),
            prompt_tokens=prepared.request.num_prompt_tokens,
            num_images=len(prepared.images),
            observe=self.dashboard.metrics.observe if self.dashboard is not None else None,
        )
        try:
            async for chunk in stream:
                yield chunk
        finally:
            await stream.aclose()

    def _publish(self, record: Any) -> None:
        """Queue a telemetry record; the publisher's task starts with the first request."""
        self.telemetry.start()
        self.telemetry.publish(record)

    def _model_card(self) -> ModelCard:
        return ModelCard(id=self.facts.name, max_model_len=self.facts.max_model_len)

    async def _pools_ready(self) -> tuple[bool, dict[str, str]]:
        now = time.monotonic()
        if self._readiness is not None and now - self._readiness[0] < READINESS_CACHE_S:
            return self._readiness[1], self._readiness[2]
        names = [(site, stage) for site, stages in self.pools.items() for stage, handle in stages.items() if handle is not None]
        results = await asyncio.gather(
            *(self._ask_pool(self.pools[site][stage]) for site, stage in names), return_exceptions=True
        )
        pools = {f"{stage}-{site}": ("ok" if r is True else f"error: {r!r}"[:200]) for (site, stage), r in zip(names, results)}
        ready = all(r is True for r in results)
        self._readiness = (now, ready, pools)
        return ready, pools

    @staticmethod
    async def _ask_pool(handle: Any) -> bool:
        await within(handle.record_routing_stats.remote(), READINESS_TIMEOUT_S)
        return True

    def _qos_class(self, requested: str | None, key: str | None) -> str:
        key_class = self.spec.api_key_classes.get(key) if key else None
        return resolve_class(requested, key_class, self.class_policies, self.spec.default_qos_class)

    def _classed(self, prepared: PreparedRequest, qos_class: str) -> PreparedRequest:
        """Stamp the class (demoted by the request's own `priority`, `router/priority.py`), its
        priority and its first-token deadline on the request."""
        qos_class = class_for_priority(qos_class, prepared.priority, self.class_policies)
        slo = self.spec.qos_class(qos_class).slo
        request = dataclasses.replace(
            prepared.request, qos_class=qos_class, priority=self.class_policies[qos_class].priority, deadline_s=time.time() + slo.ttft_s
        )
        return dataclasses.replace(prepared, request=request)

