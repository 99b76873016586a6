"""An asyncio front for one engine: a stepping loop, per-request token streams, abort and
back-pressure — what a Ray Serve replica wraps.

The forward pass runs on one worker thread so the event loop stays free to accept requests
and stream tokens. The engine's queues are only touched between steps: new requests and
aborts wait in small lists that the loop applies before each step; validation happens at once,
on the caller's side, so bad input fails the caller and nothing else.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
from collections.abc import AsyncIterator, Sequence as Seq
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from workers.engine.llm_engine import LLMEngine
from workers.engine.outputs import KVHandoff, RequestOutput
from workers.engine.token_budget import BUDGET_STEPS, token_budget
from workers.engine.sampling import SamplingParams
from workers.engine.sequence import MultimodalSpan, Sequence
from workers.engine.step_rates import Step, rates

log = logging.getLogger(__name__)


class EngineOverloaded(RuntimeError):
    """The replica's queue is full; the caller should retry after `retry_after_s`."""

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class EngineDead(RuntimeError):
    """The stepping loop failed; the replica must be replaced."""


class RequestFailed(RuntimeError):
    """One request failed inside the engine (its grammar refused a token); the engine goes on."""


@dataclass(frozen=True, slots=True)
class EngineStats:
    """What a replica reports for routing and telemetry."""

    running: int
    waiting: int
    queued_prefill_tokens: int
    free_kv_blocks: int
    total_kv_blocks: int
    tokens_per_s: float  # output tokens
    busy_fraction: float
    prefix_hashes: frozenset[int]
    prefill_tokens_per_busy_s: float = 0.0  # `step_rates`: 0.0 when not measured in the window
    decode_tokens_per_busy_s: float = 0.0


class AsyncEngine:
    def __init__(self, engine: LLMEngine, *, stats_window_s: float = 10.0) -> None:
        self.engine = engine
        self._streams: dict[str, asyncio.Queue[RequestOutput | BaseException]] = {}
        self._to_add: list[Sequence] = []
        self._to_abort: list[str] = []
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pavana-engine")
        self._dead: BaseException | None = None
        self._window_s = stats_window_s
        self._busy: list[tuple[float, float, int, Step]] = []  # (end time, busy seconds, output tokens, step)
        self._throughput_fraction = 1.0

    def set_throughput_fraction(self, fraction: float) -> None:
        """Run at this share of full speed (a power mode): after each step the loop idles for
        as long as the step took × (1/fraction − 1). On a GPU a mode is a clock cap; on the
        CPU, pacing the step loop keeps the mode's throughput and lowers its duty cycle."""
        if not 0 < fraction <= 1:
            raise ValueError(f"throughput fraction must be in (0, 1], got {fraction}")
        self._throughput_fraction = fraction

    # -- public API -----------------------------------------------------------------------------
    async def generate(
        self,
        request_id: str,
        prompt_token_ids: Seq[int],
        params: SamplingParams | None = None,
        mm_spans: Seq[MultimodalSpan] = (),
        *,
        priority: int = 0,
        deadline_s: float = math.inf,
        resume_token_ids: Seq[int] = (),
        resume_text_chars: int = 0,
    ) -> AsyncIterator[RequestOutput]:
        """Stream a request's outputs; leaving the iteration early aborts the request. A resumed
        request (`LLMEngine.prepare`) streams only what follows its resumed output."""
        seq = self._check_admission(
            lambda: self.engine.prepare(
                request_id, prompt_token_ids, params, mm_spans, priority=priority, deadline_s=deadline_s,
                resume_token_ids=resume_token_ids, resume_text_chars=resume_text_chars,
            ),
            request_id,
        )
        async for out in self._stream(seq):
            yield out

    async def generate_from_handoff(
        self, handoff: KVHandoff, *, priority: int = 0, deadline_s: float = math.inf
    ) -> AsyncIterator[RequestOutput]:
        seq = self._check_admission(
            lambda: self.engine.prepare_handoff(handoff, priority=priority, deadline_s=deadline_s), handoff.request_id
        )
        async for out in self._stream(seq):
            yield out

    async def abort(self, request_id: str) -> None:
        if request_id in self._streams:
            self._to_abort.append(request_id)
            self._kick()

    def stats(self) -> EngineStats:
        now = time.monotonic()
        self._busy = [b for b in self._busy if now - b[0] <= self._window_s]
        busy_s = sum(b[1] for b in self._busy)
        tokens = sum(b[2] for b in self._busy)
        sched = self.engine.scheduler
        measured = rates(b[3] for b in self._busy)
        return EngineStats(
            running=len(sched.running),
            waiting=len(sched.waiting) + len(self._to_add),
            queued_prefill_tokens=sched.queued_prefill_tokens + sum(s.num_uncomputed_tokens for s in self._to_add),
            free_kv_blocks=self.engine.block_manager.num_free_blocks,
            total_kv_blocks=self.engine.block_manager.num_blocks,
            tokens_per_s=tokens / self._window_s,
            busy_fraction=min(1.0, busy_s / self._window_s),
            prefix_hashes=self.engine.block_manager.cached_block_hashes(),
            prefill_tokens_per_busy_s=measured.prefill_tokens_per_busy_s,
            decode_tokens_per_busy_s=measured.decode_tokens_per_busy_s,
        )

    @property
    def failure(self) -> BaseException | None:
        """What stopped the step loop, or None while it runs."""
        return self._dead

    @property
    def num_active(self) -> int:
        return len(self._streams)

    async def shutdown(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- internals ------------------------------------------------------------------------------
    def _check_admission(self, prepare, request_id: str) -> Sequence:
        if self._dead is not None:
            raise EngineDead(f"engine loop failed: {self._dead!r}")
        if request_id in self._streams:
            raise ValueError(f"request_id: {request_id!r} is already running")
        limit = self.engine.config.max_queued_requests
        if len(self._streams) >= limit:
            raise EngineOverloaded(f"engine: {len(self._streams)} requests in flight, the limit is {limit}")
        return prepare()

    async def _stream(self, seq: Sequence) -> AsyncIterator[RequestOutput]:
        queue: asyncio.Queue[RequestOutput | BaseException] = asyncio.Queue()
        self._streams[seq.request_id] = queue
        self._to_add.append(seq)
        self._ensure_loop()
        self._kick()
        finished = False
        try:
            while not finished:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                finished = item.finished
                yield item
        finally:
            if not finished:
                await self.abort(seq.request_id)

    def _ensure_loop(self) -> None:
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run(), name="pavana-engine-loop")

    def _kick(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def _apply_pending(self) -> None:
        for request_id in self._to_abort:
            waiting = [s for s in self._to_add if s.request_id == request_id]
            seq = self.engine.seq(request_id) or (waiting[0] if waiting else None)
            self.engine.abort(request_id)
            self._to_add = [s for s in self._to_add if s.request_id != request_id]
            queue = self._streams.pop(request_id, None)
            if queue is not None and seq is not None:  # a stream still read by someone ends, not hangs
                queue.put_nowait(RequestOutput(
                    request_id, [], "", True, "abort", seq.num_prompt_tokens, seq.num_output_tokens,
                ))
        self._to_abort.clear()
        for seq in self._to_add:
            try:
                self.engine.add(seq)
            except ValueError as exc:  # e.g. a request id that raced another
                self._deliver_error(seq.request_id, exc)
        self._to_add.clear()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._wake is not None
        try:
            while True:
                self._apply_pending()
                if not self.engine.has_unfinished():
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                started = time.monotonic()
                outputs = await loop.run_in_executor(self._executor, self.engine.step)
                ended = time.monotonic()
                self._busy.append((ended, ended - started, len(outputs), Step(ended - started, *self.engine.last_step_tokens)))
                self._follow_tbt_target()
                for out in outputs:
                    if out.error is not None:
                        self._deliver_error(out.request_id, RequestFailed(out.error))
                        continue
                    queue = self._streams.get(out.request_id)
                    if queue is not None:
                        queue.put_nowait(out)
                        if out.finished:
                            del self._streams[out.request_id]
                pause = (ended - started) * (1 / self._throughput_fraction - 1)
                await asyncio.sleep(pause)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # the engine is broken: fail every stream, loudly
            log.exception("engine loop failed")
            self._dead = exc
            for request_id in list(self._streams):
                self._deliver_error(request_id, EngineDead(f"engine loop failed: {exc!r}"))

    def _follow_tbt_target(self) -> None:
        """With a TBT target, size the next step's token budget from the recent steps."""
        target = self.engine.config.tbt_target_s
        if target is None:
            return
        sched = self.engine.scheduler
        recent = list(itertools.islice((b[3] for b in reversed(self._busy) if b[3].prefill_tokens > 0), BUDGET_STEPS))[::-1]
        # A paced replica (a power mode) idles after each step: its steps must be shorter.
        budget = token_budget(recent, tbt_target_s=target * self._throughput_fraction, chunk_size=sched.chunk_size,
                              running_decodes=len(sched.running))
        if budget is not None:
            sched.token_budget = budget

    def _deliver_error(self, request_id: str, exc: BaseException) -> None:
        queue = self._streams.pop(request_id, None)
        if queue is not None:
            queue.put_nowait(exc)
