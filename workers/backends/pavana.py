"""Pavana's own chunked-prefill engine behind the backend contract (`workers/backends/contract.py`).

The engine runs in this process: `AsyncEngine` steps it on a thread and streams
`RequestOutput`s, which become `TokenChunk`s here. A prefill's hand-off payload is the engine's
KV tensor (every token but the first output's); the decode side rebuilds a `KVHandoff` from it
and the request, so the first token is neither repeated nor re-sampled.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

from cluster.power_modes import Mode
from workers.backends.contract import BackendStats, Prefilled
from workers.engine.async_engine import AsyncEngine
from workers.engine.bundled import model_dir
from workers.engine.config import EngineConfig
from workers.engine.llm_engine import LLMEngine
from workers.engine.outputs import KVHandoff, RequestOutput
from workers.engine.sequence import MultimodalSpan
from workers.requests import GenerateRequest, TokenChunk

# The engine mode of each pool stage: a prefill replica stops after the first token and hands
# the KV off; a decode replica admits only hand-offs; a colocated one does both.
ENGINE_MODES = {"colocated": "colocated", "prefill": "prefill", "decode": "decode"}


class PacedSteps:
    """A power mode on the CPU: the engine's step loop is paced to the mode's throughput (a GPU
    caps its clocks instead). Every mode can be enacted, so `check` never refuses."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    def check(self, modes: Sequence[Mode]) -> None:
        for mode in modes:
            if not 0 < mode.throughput_fraction <= 1:
                raise ValueError(f"power mode {mode.name}: throughput fraction must be in (0, 1], got {mode.throughput_fraction}")

    def apply(self, mode: Mode) -> None:
        self.engine.set_throughput_fraction(mode.throughput_fraction)


def chunk_from_output(out: RequestOutput, stage: str, replica_id: str) -> TokenChunk:
    return TokenChunk(
        request_id=out.request_id,
        token_ids=list(out.new_token_ids),
        text=out.new_text,
        finished=out.finished and out.handoff is None,
        finish_reason=out.finish_reason,
        num_prompt_tokens=out.num_prompt_tokens,
        num_output_tokens=out.num_output_tokens,
        stage=stage,
        logprobs=tuple(out.logprobs),
        prompt_logprobs=tuple(out.prompt_logprobs),
        replica_id=replica_id,
    )


class PavanaBackend:
    name = "pavana"

    def __init__(self, model_path: str | None, bundled: str, engine_config: dict[str, Any], *, stage: str, replica_id: str) -> None:
        if stage not in ENGINE_MODES:
            raise ValueError(f"stage: {stage!r} has no engine (one of {', '.join(ENGINE_MODES)})")
        config = EngineConfig(**{**engine_config, "mode": ENGINE_MODES[stage]})
        self.engine = LLMEngine(model_dir(model_path, bundled), config)
        self.async_engine = AsyncEngine(self.engine)
        self.stage, self.replica_id = stage, replica_id
        self._power = PacedSteps(self.async_engine)

    @property
    def model_path(self) -> str:
        return str(self.engine.model_path)

    async def _outputs(self, request: GenerateRequest, images: Sequence[MultimodalSpan]) -> AsyncIterator[RequestOutput]:
        async for out in self.async_engine.generate(
            request.request_id, request.prompt_token_ids, request.params, images, priority=request.priority,
            deadline_s=request.deadline_s, resume_token_ids=request.resume_token_ids, resume_text_chars=request.resume_text_chars,
        ):
            yield out

    async def generate(self, request: GenerateRequest, images: Sequence[MultimodalSpan] = ()) -> AsyncIterator[TokenChunk]:
        async for out in self._outputs(request, images):
            yield chunk_from_output(out, self.stage, self.replica_id)

    async def prefill(self, request: GenerateRequest, images: Sequence[MultimodalSpan] = ()) -> Prefilled:
        last = None
        async for out in self._outputs(request, images):
            last = out
        if last is None or not last.finished:
            raise RuntimeError(f"prefill of {request.request_id} ended without its first token")
        first = chunk_from_output(last, self.stage, self.replica_id)
        if last.handoff is None:  # the first token already ended the request
            return Prefilled(first=first, handoff=None, num_prompt_tokens=last.num_prompt_tokens)
        return Prefilled(first=first, handoff=last.handoff.kv, num_prompt_tokens=last.handoff.num_prompt_tokens, mm_hashes=last.handoff.mm_hashes)

    async def decode(self, request: GenerateRequest, prefilled: Prefilled) -> AsyncIterator[TokenChunk]:
        """A resumed request's carried output sits between the prompt and the first token, as
        it does in the KV."""
        if prefilled.handoff is None:
            raise ValueError(f"decode of {request.request_id}: the prefill left no KV (its first token ended the request)")
        handoff = KVHandoff(
            request_id=request.request_id,
            token_ids=[*request.prompt_token_ids, *request.resume_token_ids, *prefilled.first.token_ids],
            num_prompt_tokens=prefilled.num_prompt_tokens,
            kv=prefilled.handoff,
            params=request.params,
            mm_hashes=prefilled.mm_hashes,
            num_text_chars_emitted=request.resume_text_chars + len(prefilled.first.text),
        )
        async for out in self.async_engine.generate_from_handoff(handoff, priority=request.priority, deadline_s=request.deadline_s):
            yield chunk_from_output(out, self.stage, self.replica_id)

    def stats(self) -> BackendStats:
        return self.async_engine.stats()

    async def abort(self, request_id: str) -> None:
        await self.async_engine.abort(request_id)

    async def check_health(self) -> None:
        if self.async_engine.failure is not None:
            raise RuntimeError(f"engine loop failed: {self.async_engine.failure!r}")

    def power_control(self) -> PacedSteps:
        return self._power

    def metrics_text(self) -> str:
        """Pavana's engine reports through the heartbeat (`/metrics`' pool gauges): nothing more."""
        return ""

    async def shutdown(self) -> None:
        await self.async_engine.shutdown()
