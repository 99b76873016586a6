"""The pools over vLLM's asynchronous engine, for GPU nodes (`engine.backend: vllm` in the spec).

The replica classes have the methods and records of `workers/deployments.py` — `generate`
streams `TokenChunk`s, `prefill` returns a `PrefillResult`, `decode` continues one — so the
router and the orchestrator do not know which engine runs underneath. Chunked prefill is on.

Prefill→decode hand-off goes through vLLM's KV connector (NixlConnector by default): the
prefill engine runs the prompt with `do_remote_decode`, keeps the KV on its GPU and returns
`kv_transfer_params`; the decode engine is given those parameters and pulls the KV directly
from the prefill GPU. `PrefillResult.kv_ref` then carries those parameters instead of an
ObjectRef of tensors. The decode engine emits the first token again (it samples from the
pulled KV); that repeat is dropped here, since the prefill replica already streamed it.

vLLM is an optional extra (`pip install 'pavana[gpu]'`); this module imports it lazily.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

from workers.engine.sampling import SamplingParams
from workers.requests import GenerateRequest, PrefillResult, TokenChunk

log = logging.getLogger(__name__)

DEFAULT_KV_CONNECTOR = "NixlConnector"


def vllm_sampling(params: SamplingParams, **overrides: Any):
    from vllm import SamplingParams as VllmSamplingParams
    from vllm.sampling_params import RequestOutputKind

    fields = dict(
        max_tokens=params.max_tokens,
        temperature=params.temperature,
        top_p=params.top_p,
        top_k=params.top_k if params.top_k > 0 else -1,
        seed=params.seed,
        stop=list(params.stop) or None,
        stop_token_ids=list(params.stop_token_ids) or None,
        ignore_eos=params.ignore_eos,
        output_kind=RequestOutputKind.DELTA,
    )
    fields.update(overrides)
    return VllmSamplingParams(**fields)


def engine_args(model_path: str | None, engine_config: dict[str, Any], kv_role: str | None):
    """Pavana's engine settings in vLLM's terms."""
    from vllm import AsyncEngineArgs

    if model_path is None:
        raise ValueError("model.path: the vLLM backend needs a Hugging Face checkpoint (the bundled models are for the CPU engine)")
    kwargs: dict[str, Any] = dict(
        model=model_path,
        enable_chunked_prefill=True,
        max_num_batched_tokens=engine_config.get("chunk_size", 2048),
        max_num_seqs=engine_config.get("max_num_seqs", 64),
        block_size=engine_config.get("block_size", 16),
        enable_prefix_caching=engine_config.get("enable_prefix_caching", True),
        dtype={"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}[engine_config.get("dtype", "bfloat16")],
    )
    if engine_config.get("max_model_len"):
        kwargs["max_model_len"] = engine_config["max_model_len"]
    if kv_role is not None:
        from vllm.config import KVTransferConfig

        kwargs["kv_transfer_config"] = KVTransferConfig(kv_connector=engine_config.get("kv_connector", DEFAULT_KV_CONNECTOR), kv_role=kv_role)
    return AsyncEngineArgs(**kwargs)


class VllmReplica:
    """One vLLM engine per replica; `kv_role` is set for the disaggregated pools."""

    stage = "colocated"
    kv_role: str | None = None

    def __init__(
        self, model_path: str | None, engine_config: dict[str, Any], pool: str, site: str, telemetry: dict[str, Any] | None = None,
        bundled: str | None = None,
    ) -> None:
        del bundled  # the bundled models are for Pavana's CPU engine: vLLM needs model.path
        from vllm.v1.engine.async_llm import AsyncLLM

        self.engine = AsyncLLM.from_engine_args(engine_args(model_path, engine_config, self.kv_role))
        self.pool, self.site = pool, site
        self._running = 0

    def record_routing_stats(self) -> dict[str, Any]:
        return {"pool": self.pool, "site": self.site, "running": self._running}

    async def check_health(self) -> None:
        await self.engine.check_health()

    async def _stream(self, request: GenerateRequest, sampling, *, skip_first: bool = False) -> AsyncIterator[TokenChunk]:
        if request.images:
            raise ValueError("images: the vLLM backend takes text prompts only in this version")
        self._running += 1
        produced = 0
        try:
            async for out in self.engine.generate({"prompt_token_ids": request.prompt_token_ids}, sampling, request.request_id):
                completion = out.outputs[0]
                ids, text = list(completion.token_ids), completion.text
                if skip_first and produced == 0 and ids:
                    ids, text = ids[1:], ""  # already streamed by the prefill replica
                produced += len(completion.token_ids)
                yield TokenChunk(
                    request_id=request.request_id,
                    token_ids=ids,
                    text=text,
                    finished=out.finished,
                    finish_reason=completion.finish_reason if out.finished else None,
                    num_prompt_tokens=len(request.prompt_token_ids),
                    num_output_tokens=produced,
                    stage=self.stage,
                )
        finally:
            self._running -= 1


class VllmColocatedReplica(VllmReplica):
    async def generate(self, request: GenerateRequest) -> AsyncIterator[TokenChunk]:
        async for chunk in self._stream(request, vllm_sampling(request.params)):
            yield chunk


class VllmPrefillReplica(VllmReplica):
    stage = "prefill"
    kv_role = "kv_producer"

    async def prefill(self, request: GenerateRequest) -> PrefillResult:
        sampling = vllm_sampling(request.params, max_tokens=1, extra_args={"kv_transfer_params": {"do_remote_decode": True}})
        ids: list[int] = []
        text = ""
        kv_params = None
        async for out in self.engine.generate({"prompt_token_ids": request.prompt_token_ids}, sampling, request.request_id):
            ids += list(out.outputs[0].token_ids)
            text += out.outputs[0].text
            kv_params = out.kv_transfer_params or kv_params
        ends = request.params.max_tokens == 1 or (ids and ids[-1] in request.params.stop_token_ids)
        first = TokenChunk(
            request_id=request.request_id, token_ids=ids, text=text, finished=bool(ends),
            finish_reason="length" if ends else None, num_prompt_tokens=len(request.prompt_token_ids),
            num_output_tokens=len(ids), stage=self.stage,
        )
        return PrefillResult(first=first, kv_ref=[] if ends else [kv_params], num_prompt_tokens=len(request.prompt_token_ids))


class VllmDecodeReplica(VllmReplica):
    stage = "decode"
    kv_role = "kv_consumer"

    async def decode(self, request: GenerateRequest, prefilled: PrefillResult) -> AsyncIterator[TokenChunk]:
        sampling = vllm_sampling(request.params, extra_args={"kv_transfer_params": prefilled.kv_ref[0]})
        async for chunk in self._stream(request, sampling, skip_first=True):
            yield chunk


REPLICA_CLASSES = {
    "colocated": VllmColocatedReplica,
    "prefill": VllmPrefillReplica,
    "decode": VllmDecodeReplica,
}
