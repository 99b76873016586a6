"""vLLM's asynchronous engine behind the backend contract (`workers/backends/contract.py`), for
GPU nodes (`engine.backend: vllm` in the spec). vLLM is the optional `gpu` extra, imported
only when a `VllmBackend` is built.

Written against vLLM's v1 engine API as of its 0.13 line (`vllm.v1.engine.async_llm.AsyncLLM`,
`from_engine_args(..., stat_loggers=[...])`, `generate(prompt, sampling_params, request_id,
priority=...)`, `abort`, `check_health`, `shutdown`; `vllm.v1.metrics.loggers.StatLoggerBase`;
`SamplingParams(structured_outputs=StructuredOutputsParams(...), extra_args=...)`;
`RequestOutput.kv_transfer_params`; the `enable_mm_embeds` and `scheduling_policy` engine
arguments). The translations live in pure modules beside this one, each unit-tested on a CPU:
`vllm_engine_args` (the spec's engine section), `vllm_sampling` (sampling parameters),
`vllm_inputs` (prompts, images, the P/D hand-off and why the first token is kept),
`vllm_outputs` (finish reasons, logprobs), `vllm_stats` (`BackendStats`), `vllm_metrics`
(the `vllm:*` families); `nvml_power` enacts power modes as GPU clock limits.

QoS: `GenerateRequest.priority` is vLLM's request priority under `scheduling_policy=
"priority"` (lower first in both). vLLM has no deadline field; within one priority it serves
requests in arrival order, which is deadline order for requests of one class (one TTFT SLO).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from workers.backends.contract import BackendStats, Prefilled
from workers.backends.nvml_power import NvmlPowerControl
from workers.backends.vllm_engine_args import engine_kwargs
from workers.backends.vllm_inputs import (
    DO_REMOTE_DECODE,
    VllmHandoff,
    asks_remote_decode,
    continued_token_ids,
    first_token_ends,
    handoff_after_first,
    resumed_text_owed,
    vllm_prompt,
)
from workers.backends.vllm_metrics import vllm_metrics_text
from workers.backends.vllm_outputs import finish_reason, prompt_logprobs, token_logprobs
from workers.backends.vllm_sampling import sampling_kwargs
from workers.backends.vllm_stats import PrefixHashLRU, StatsWindow, backend_stats, observation
from workers.engine.block_manager import prefix_block_hashes
from workers.engine.sequence import MultimodalSpan
from workers.engine.tokenizer import Tokenizer
from workers.requests import GenerateRequest, TokenChunk

log = logging.getLogger(__name__)


def _has_vision_tower(model_path: str) -> bool:
    config = Path(model_path) / "config.json"
    if not config.is_file():
        raise ValueError(f"model.path: {model_path} has no config.json")
    return "vision_config" in json.loads(config.read_text())


def _stat_logger_class(backend: VllmBackend) -> type:
    """A vLLM stat logger that hands each step's records to `backend` (defined here because
    its base class is vLLM's)."""
    from vllm.v1.metrics.loggers import StatLoggerBase

    class PavanaStatLogger(StatLoggerBase):
        def __init__(self, vllm_config, engine_index: int = 0) -> None:
            self.vllm_config = vllm_config

        def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx: int = 0, *more, **more_kw) -> None:
            backend._record_step(scheduler_stats, iteration_stats)

        def log_engine_initialized(self) -> None:
            pass

        def log(self) -> None:
            pass

    return PavanaStatLogger


class VllmBackend:
    name = "vllm"

    def __init__(self, model_path: str | None, bundled: str, engine_config: dict[str, Any], *, stage: str, replica_id: str) -> None:
        del bundled  # the bundled models are written for Pavana's CPU engine; vLLM needs model.path
        kwargs = engine_kwargs(model_path, engine_config, stage, multimodal=model_path is not None and _has_vision_tower(model_path))
        try:
            import vllm
            from vllm.v1.engine.async_llm import AsyncLLM
        except ImportError as e:
            raise RuntimeError(f"engine.backend vllm: vLLM is not installed ({e}); install Pavana's 'gpu' extra on GPU nodes") from e
        self.stage, self.replica_id = stage, replica_id
        self.block_size = kwargs["block_size"]
        self.tokenizer = Tokenizer.from_dir(kwargs["model"])
        self._vllm = vllm
        self._window = StatsWindow()
        self._prefixes = PrefixHashLRU(0)
        self._queued_prompt_tokens: dict[str, int] = {}
        self.engine = AsyncLLM.from_engine_args(vllm.AsyncEngineArgs(**kwargs), stat_loggers=[_stat_logger_class(self)])
        self._power: NvmlPowerControl | None = None
        log.info("vLLM %s engine for %s (%s stage)", vllm.__version__, kwargs["model"], stage)

    # -- requests -------------------------------------------------------------------------------
    def _sampling(self, request: GenerateRequest, *, resumed: Sequence[int] = (), **overrides: Any):
        kwargs = sampling_kwargs(request.params, resume_token_ids=resumed)
        structured = kwargs.pop("structured_outputs", None)
        if structured is not None:
            from vllm.sampling_params import StructuredOutputsParams

            kwargs["structured_outputs"] = StructuredOutputsParams(**structured)
        from vllm.sampling_params import RequestOutputKind

        kwargs.update(overrides)
        return self._vllm.SamplingParams(output_kind=RequestOutputKind.DELTA, **kwargs)

    def _admit(self, request_id: str, token_ids: Sequence[int], images: Sequence[MultimodalSpan]) -> None:
        text_prefix = token_ids[: min(s.offset for s in images)] if images else token_ids
        self._prefixes.resize(self._total_kv_blocks())  # known once the engine has sized its cache
        self._prefixes.add(prefix_block_hashes(list(text_prefix), self.block_size))
        self._queued_prompt_tokens[request_id] = len(token_ids)

    async def _outputs(self, request_id: str, prompt: dict[str, Any], sampling, priority: int) -> AsyncIterator[Any]:
        """vLLM's outputs of one request; leaving early aborts it in the engine."""
        finished = False
        try:
            async for out in self.engine.generate(prompt, sampling, request_id, priority=priority):
                self._queued_prompt_tokens.pop(request_id, None)
                finished = out.finished
                yield out
        finally:
            self._queued_prompt_tokens.pop(request_id, None)
            if not finished:
                await self.engine.abort(request_id)

    def _chunk(self, request: GenerateRequest, out: Any, *, num_prompt_tokens: int, produced: int, text_prefix: str = "", first: bool) -> TokenChunk:
        completion = out.outputs[0]
        ids = list(completion.token_ids)
        return TokenChunk(
            request_id=request.request_id,
            token_ids=ids,
            text=text_prefix + completion.text,
            finished=out.finished,
            finish_reason=finish_reason(completion.finish_reason) if out.finished else None,
            num_prompt_tokens=num_prompt_tokens,
            num_output_tokens=produced,
            stage=self.stage,
            logprobs=token_logprobs(ids, completion.logprobs, request.params.logprobs),
            prompt_logprobs=(
                prompt_logprobs(request.prompt_token_ids, out.prompt_logprobs, request.params.prompt_logprobs)
                if first and not request.resume_token_ids
                else ()
            ),
            replica_id=self.replica_id,
        )

    def _owed_text(self, request: GenerateRequest) -> str:
        return resumed_text_owed(self.tokenizer.decode, request.prompt_token_ids, request.resume_token_ids, request.resume_text_chars)

    async def generate(self, request: GenerateRequest, images: Sequence[MultimodalSpan] = ()) -> AsyncIterator[TokenChunk]:
        token_ids = continued_token_ids(request.prompt_token_ids, request.resume_token_ids)
        sampling = self._sampling(request, resumed=request.resume_token_ids)
        owed = self._owed_text(request)
        self._admit(request.request_id, token_ids, images)
        produced, first = len(request.resume_token_ids), True
        async for out in self._outputs(request.request_id, vllm_prompt(token_ids, images), sampling, request.priority):
            produced += len(out.outputs[0].token_ids)
            yield self._chunk(request, out, num_prompt_tokens=request.num_prompt_tokens, produced=produced, text_prefix=owed, first=first)
            owed, first = "", False

    async def prefill(self, request: GenerateRequest, images: Sequence[MultimodalSpan] = ()) -> Prefilled:
        token_ids = continued_token_ids(request.prompt_token_ids, request.resume_token_ids)
        left = request.params.max_tokens - len(request.resume_token_ids)
        extra = {"extra_args": {"kv_transfer_params": dict(DO_REMOTE_DECODE)}} if asks_remote_decode(left) else {}
        sampling = self._sampling(request, resumed=request.resume_token_ids, max_tokens=1, **extra)
        owed = self._owed_text(request)
        self._admit(request.request_id, token_ids, images)
        chunks: list[TokenChunk] = []
        kv_params = None
        produced = len(request.resume_token_ids)
        async for out in self._outputs(request.request_id, vllm_prompt(token_ids, images), sampling, request.priority):
            produced += len(out.outputs[0].token_ids)
            chunks.append(self._chunk(request, out, num_prompt_tokens=request.num_prompt_tokens, produced=produced, text_prefix=owed if not chunks else "", first=not chunks))
            kv_params = getattr(out, "kv_transfer_params", None) or kv_params
        if not chunks or not chunks[-1].finished:
            raise RuntimeError(f"prefill of {request.request_id} ended without its first token")
        first = _merged(chunks)
        mm_hashes = tuple((s.offset, s.length, s.content_hash) for s in images)
        if first_token_ends(first.finish_reason, left):
            # vLLM reported "length" for its one-token run; the request itself ended for this reason.
            await self.engine.abort(request.request_id)  # a stop string: the connector expires the held blocks
            return Prefilled(first=first, handoff=None, num_prompt_tokens=request.num_prompt_tokens, mm_hashes=mm_hashes)
        handoff = handoff_after_first(
            token_ids, first.token_ids, kv_params, num_resumed=len(request.resume_token_ids),
            text_chars_sent=request.resume_text_chars + len(first.text), mm_uuids=tuple(s.content_hash for s in images),
        )
        going_on = TokenChunk(**{**_fields(first), "finished": False, "finish_reason": None})
        return Prefilled(first=going_on, handoff=handoff, num_prompt_tokens=request.num_prompt_tokens, mm_hashes=mm_hashes)

    async def decode(self, request: GenerateRequest, prefilled: Prefilled) -> AsyncIterator[TokenChunk]:
        """Continue after `prefilled.first`: vLLM is given prompt + resumed output + first token,
        loads the prefill's KV through its connector and computes the first token's KV itself
        (`vllm_inputs`' docstring says why nothing is repeated or re-sampled)."""
        handoff = prefilled.handoff
        if not isinstance(handoff, VllmHandoff):
            raise ValueError(f"decode of {request.request_id}: expected a vLLM prefill's hand-off, got {type(handoff).__name__}")
        carried = handoff.token_ids[len(request.prompt_token_ids) :]
        extra = {"extra_args": {"kv_transfer_params": dict(handoff.kv_transfer_params)}} if handoff.kv_transfer_params else {}
        sampling = self._sampling(request, resumed=carried, **extra)
        prompt = vllm_prompt(handoff.token_ids)
        if handoff.mm_uuids:
            # Without the embeddings here, the prefix cache must not match these image tokens
            # against other images': the salt keys its blocks by the images' content.
            prompt["cache_salt"] = hashlib.sha256("\0".join(handoff.mm_uuids).encode()).hexdigest()
        self._admit(request.request_id, handoff.token_ids, ())
        produced = handoff.num_output_tokens
        async for out in self._outputs(request.request_id, prompt, sampling, request.priority):
            produced += len(out.outputs[0].token_ids)
            yield self._chunk(request, out, num_prompt_tokens=request.num_prompt_tokens, produced=produced, first=False)

    # -- replica services ------------------------------------------------------------------------
    def _record_step(self, scheduler_stats, iteration_stats) -> None:
        obs = observation(time.monotonic(), scheduler_stats, iteration_stats, self._window.latest)
        if obs is not None:
            self._window.observe(obs)

    def _total_kv_blocks(self) -> int:
        return int(self.engine.vllm_config.cache_config.num_gpu_blocks or 0)

    def stats(self) -> BackendStats:
        total = self._total_kv_blocks()
        self._prefixes.resize(total)
        return backend_stats(
            self._window, time.monotonic(), total_kv_blocks=total,
            queued_prefill_tokens=sum(self._queued_prompt_tokens.values()), prefix_hashes=self._prefixes.snapshot(),
        )

    async def abort(self, request_id: str) -> None:
        await self.engine.abort(request_id)

    async def check_health(self) -> None:
        await self.engine.check_health()

    def power_control(self) -> NvmlPowerControl:
        if self._power is None:
            self._power = NvmlPowerControl.for_this_process()
        return self._power

    def metrics_text(self) -> str:
        return vllm_metrics_text()

    async def shutdown(self) -> None:
        self.engine.shutdown()
        await asyncio.sleep(0)


def _fields(chunk: TokenChunk) -> dict[str, Any]:
    return {name: getattr(chunk, name) for name in TokenChunk.__slots__}


def _merged(chunks: list[TokenChunk]) -> TokenChunk:
    """One chunk for a prefill's outputs (vLLM may send prompt logprobs before the token)."""
    last = chunks[-1]
    if len(chunks) == 1:
        return last
    return TokenChunk(**{
        **_fields(last),
        "token_ids": [t for c in chunks for t in c.token_ids],
        "text": "".join(c.text for c in chunks),
        "logprobs": tuple(lp for c in chunks for lp in c.logprobs),
        "prompt_logprobs": next((c.prompt_logprobs for c in chunks if c.prompt_logprobs), ()),
    })
