"""Every engine backend keeps the contract of `workers/backends/contract.py`, checked through
that contract alone: Pavana's engine here, on the CPU; vLLM's where a GPU and vllm are present
(skipped with the reason otherwise).

The reference for each backend is itself: its colocated greedy output. A prefill → decode
hand-off, a resumed request and an image prompt must reproduce it token for token; the first
token is never repeated or re-sampled; a first token that ends the request leaves no KV; stats
carry every field a heartbeat and a request router read; abort ends a stream.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import uuid

import pytest
import torch
from tiny_checkpoints import image_bytes

from cluster.power_modes import Mode
from workers.backends.contract import Backend, BackendStats, PowerControl, Prefilled, make_backend
from workers.engine.sampling import SamplingParams
from workers.engine.sequence import MultimodalSpan
from workers.requests import GenerateRequest, TokenChunk
from workers.vision.cache import content_hash

MAX_NEW = 12
PROMPT = [1, 17, 93, 250, 41, 7, 300, 12, 88, 5, 61, 140, 9, 33, 270, 18, 4]
IMAGE_TOKEN = 3


def vllm_unavailable() -> str | None:
    try:
        import vllm  # noqa: F401
    except ImportError:
        return "vllm is not installed (the optional 'gpu' extra)"
    if not torch.cuda.is_available():
        return "no GPU on this machine"
    return None


# Each backend with the engine settings its tests run under.
BACKEND_CONFIGS = {
    "pavana": {"chunk_size": 8, "num_kv_blocks": 128, "block_size": 4, "num_threads": 1},
    "vllm": {
        "chunk_size": 256, "block_size": 16, "max_num_seqs": 8, "dtype": "float32",
        "gpu_memory_utilization": float(os.environ.get("PAVANA_VLLM_GPU_MEMORY", "0.2")), "enforce_eager": True,
    },
}


@pytest.fixture(params=["pavana", pytest.param("vllm", marks=pytest.mark.gpu)], scope="module")
def backend_name(request) -> str:
    if request.param == "vllm" and (why := vllm_unavailable()):
        pytest.skip(why)
    return request.param


def engine_config(name: str, kv_dir) -> dict:
    """A backend's settings; vLLM's prefill and decode engines share one GPU here, so their KV
    goes through vLLM's example connector (shared storage) rather than NIXL between GPUs."""
    config = dict(BACKEND_CONFIGS[name])
    if name == "vllm":
        from tests.workers.backends.test_vllm_gpu import example_connector

        config.update(kv_connector=example_connector(), kv_connector_extra_config={"shared_storage_path": str(kv_dir)})
    return config


class Backends:
    """One backend per stage for a model, built on first use and shut down at the end."""

    def __init__(self, name: str, model_dir, kv_dir) -> None:
        self.name, self.model_dir, self.kv_dir = name, str(model_dir), kv_dir
        self._made: dict[str, Backend] = {}

    def __call__(self, stage: str) -> Backend:
        if stage not in self._made:
            self._made[stage] = make_backend(
                self.name, model_path=self.model_dir, bundled="", engine_config=engine_config(self.name, self.kv_dir),
                stage=stage, replica_id=f"{stage}-0",
            )
        return self._made[stage]

    async def close(self) -> None:
        for backend in self._made.values():
            await backend.shutdown()


@pytest.fixture
async def backends(backend_name, tiny_llama_dir, tmp_path):
    made = Backends(backend_name, tiny_llama_dir, tmp_path)
    yield made
    await made.close()


def request(params: SamplingParams | None = None, prompt: list[int] = PROMPT, **fields) -> GenerateRequest:
    params = params or SamplingParams(max_tokens=MAX_NEW, ignore_eos=True)
    return GenerateRequest(f"r-{uuid.uuid4().hex[:8]}", list(prompt), params, **fields)


async def collect(stream) -> list[TokenChunk]:
    return [chunk async for chunk in stream]


def tokens(chunks: list[TokenChunk]) -> list[int]:
    return [t for c in chunks for t in c.token_ids]


async def prefill_then_decode(backends: Backends, req: GenerateRequest, images=()) -> tuple[Prefilled, list[TokenChunk]]:
    prefilled = await backends("prefill").prefill(req, images)
    rest = await collect(backends("decode").decode(req, prefilled)) if prefilled.handoff is not None else []
    return prefilled, rest


async def test_each_backend_is_a_backend(backends):
    for stage in ("colocated", "prefill", "decode"):
        backend = backends(stage)
        assert isinstance(backend, Backend)
        assert isinstance(backend.power_control(), PowerControl)
        await backend.check_health()


async def test_a_colocated_stream_ends_once_with_its_reason_and_counts(backends):
    chunks = await collect(backends("colocated").generate(request()))
    assert len(tokens(chunks)) == MAX_NEW
    assert [c.finished for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert chunks[-1].finish_reason == "length"
    assert chunks[-1].num_output_tokens == MAX_NEW and chunks[-1].num_prompt_tokens == len(PROMPT)
    assert {c.stage for c in chunks} == {"colocated"} and {c.replica_id for c in chunks} == {"colocated-0"}


async def test_prefill_then_decode_equals_colocated_without_repeating_the_first_token(backends):
    expected = tokens(await collect(backends("colocated").generate(request())))
    req = request()
    prefilled, rest = await prefill_then_decode(backends, req)
    assert prefilled.first.token_ids == expected[:1] and not prefilled.first.finished
    assert prefilled.handoff is not None and prefilled.num_prompt_tokens == len(PROMPT)
    assert prefilled.first.stage == "prefill" and {c.stage for c in rest} == {"decode"}
    assert prefilled.first.token_ids + tokens(rest) == expected
    assert rest[-1].finished and rest[-1].finish_reason == "length"
    assert rest[-1].num_output_tokens == MAX_NEW


async def test_a_first_token_that_ends_the_request_leaves_no_handoff(backends):
    one = await backends("prefill").prefill(request(SamplingParams(max_tokens=1, ignore_eos=True)))
    assert one.handoff is None and one.first.finished and one.first.finish_reason == "length"
    first = one.first.token_ids[0]
    stopped = await backends("prefill").prefill(request(SamplingParams(max_tokens=MAX_NEW, stop_token_ids=(first,))))
    assert stopped.handoff is None and stopped.first.finished and stopped.first.finish_reason == "stop"
    assert stopped.first.token_ids == [first]
    colocated = await collect(backends("colocated").generate(request(SamplingParams(max_tokens=MAX_NEW, stop_token_ids=(first,)))))
    assert tokens(colocated) == [first] and colocated[-1].finish_reason == "stop"


async def test_a_resumed_request_continues_where_the_client_left_off(backends):
    expected = tokens(await collect(backends("colocated").generate(request())))
    carried = tuple(expected[:5])
    resumed = tokens(await collect(backends("colocated").generate(request(resume_token_ids=carried))))
    assert list(carried) + resumed == expected
    prefilled, rest = await prefill_then_decode(backends, request(resume_token_ids=carried))
    assert list(carried) + prefilled.first.token_ids + tokens(rest) == expected


async def test_seeded_sampling_is_the_same_colocated_and_disaggregated(backends):
    params = SamplingParams(max_tokens=MAX_NEW, temperature=0.9, top_p=0.95, seed=7, ignore_eos=True)
    colocated = tokens(await collect(backends("colocated").generate(request(params))))
    prefilled, rest = await prefill_then_decode(backends, request(params))
    assert prefilled.first.token_ids + tokens(rest) == colocated


async def test_logprobs_come_with_every_token(backends):
    params = SamplingParams(max_tokens=MAX_NEW, ignore_eos=True, logprobs=2)
    chunks = await collect(backends("colocated").generate(request(params)))
    for chunk in chunks:
        assert [lp.token_id for lp in chunk.logprobs] == chunk.token_ids
        assert all(len(lp.top) == 2 and lp.logprob <= 0 for lp in chunk.logprobs)
        assert all(lp.top[0][0] == lp.token_id for lp in chunk.logprobs)  # greedy: the chosen token is the top one


async def test_stats_carry_every_routing_and_heartbeat_field(backends):
    backend = backends("colocated")
    idle = backend.stats()
    assert isinstance(idle, BackendStats)
    assert {f.name for f in dataclasses.fields(BackendStats)} == {f.name for f in dataclasses.fields(idle)}
    assert idle.running == 0 and idle.waiting == 0 and idle.queued_prefill_tokens == 0
    assert 0 < idle.free_kv_blocks <= idle.total_kv_blocks
    seen_running = []
    async for _ in backend.generate(request()):
        seen_running.append(backend.stats().running)
    assert max(seen_running) >= 1
    done = backend.stats()
    assert done.running == 0 and done.free_kv_blocks <= done.total_kv_blocks
    assert done.tokens_per_s > 0 and 0 < done.busy_fraction <= 1


async def test_abort_ends_a_stream_and_frees_the_replica(backends):
    backend = backends("colocated")
    long = request(SamplingParams(max_tokens=400, ignore_eos=True))
    stream = backend.generate(long)
    first = await anext(stream)
    assert first.token_ids
    await backend.abort(long.request_id)

    async def drain() -> list[TokenChunk]:
        try:
            return [c async for c in stream]
        except Exception:  # a backend may end an aborted stream with an error
            return []

    rest = await asyncio.wait_for(drain(), timeout=60)
    assert len(tokens([first, *rest])) < 400
    for _ in range(200):
        if backend.stats().running == 0:
            break
        await asyncio.sleep(0.05)
    assert backend.stats().running == 0
    assert len(tokens(await collect(backend.generate(request())))) == MAX_NEW  # the replica serves on


async def test_priority_and_deadline_are_accepted(backends):
    urgent = request(priority=0, deadline_s=1e12, qos_class="interactive")
    relaxed = request(priority=5, qos_class="batch")
    a, b = await asyncio.gather(collect(backends("colocated").generate(urgent)), collect(backends("colocated").generate(relaxed)))
    assert tokens(a) == tokens(b)  # same prompt, greedy: the class changes when, not what


async def test_power_modes_are_checked_and_applied(backends):
    control = backends("colocated").power_control()
    full, capped = Mode("full", 300.0, 1.0), Mode("capped", 150.0, 0.5)
    control.check([full])
    try:
        control.check([full, capped])
    except Exception as exc:  # refusing is allowed, but only as the contract's clear refusal
        from workers.backends.contract import PowerModeRefused

        assert isinstance(exc, PowerModeRefused) and str(exc)
        return
    control.apply(capped)
    control.apply(full)
    assert len(tokens(await collect(backends("colocated").generate(request())))) == MAX_NEW


async def test_engine_metrics_are_prometheus_text_of_the_engine_alone(backends):
    from prometheus_client.parser import text_string_to_metric_families

    text = backends("colocated").metrics_text()
    assert isinstance(text, str)
    names = [f.name for f in text_string_to_metric_families(text)]
    assert not [n for n in names if n.startswith("pavana_")]
    if backends.name == "vllm":
        assert names and all(n.startswith("vllm:") for n in names)


@pytest.fixture
async def llava_backends(backend_name, tiny_llava_dir, tmp_path):
    made = Backends(backend_name, tiny_llava_dir, tmp_path)
    yield made
    await made.close()


async def test_image_embeddings_give_the_same_output_colocated_and_disaggregated(llava_backends, tiny_llava_dir):
    from workers.vision.encoder import VisionEncoder

    encoder = VisionEncoder.from_pretrained(str(tiny_llava_dir))
    images = [image_bytes(40, 30, seed=1), image_bytes(24, 48, seed=2)]
    embeds = encoder.encode(images)
    prompt, spans = [1, 20, 21], []
    for image, e in zip(images, embeds):
        spans.append(MultimodalSpan(len(prompt), e.shape[0], content_hash(image), e))
        prompt += [IMAGE_TOKEN] * e.shape[0] + [30, 31]
    colocated = tokens(await collect(llava_backends("colocated").generate(request(prompt=prompt), spans)))
    assert len(colocated) == MAX_NEW
    prefilled, rest = await prefill_then_decode(llava_backends, request(prompt=prompt), spans)
    assert prefilled.first.token_ids + tokens(rest) == colocated
    # Other pixels, other output: the embeddings reached the model.
    other = [dataclasses.replace(s, embeds=torch.zeros_like(s.embeds), content_hash="zeros") for s in spans]
    assert tokens(await collect(llava_backends("colocated").generate(request(prompt=prompt), other))) != colocated
