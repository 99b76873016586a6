"""The vLLM backend on one GPU against vLLM's offline `vllm.LLM`: greedy output token for token,
a P/D hand-off (through vLLM's example/shared-storage connector, which works on one GPU) equal
to the colocated output, a hand-off whose first token starts a new KV block, an end-of-sequence
first token, priority, images as embeddings (when a small LLaVA is given), stats and metrics.

Skipped, with the reason, without a GPU or vLLM. The model: the checkpoint folder in
PAVANA_VLLM_TEST_MODEL, else HuggingFaceTB/SmolLM2-135M-Instruct from the hub; images:
PAVANA_VLLM_TEST_LLAVA (a LLaVA checkpoint folder).
"""

from __future__ import annotations

import asyncio
import gc
import os
import uuid

import pytest
import torch

pytestmark = pytest.mark.gpu

vllm = pytest.importorskip("vllm", reason="vllm is not installed (Pavana's optional 'gpu' extra)")
if not torch.cuda.is_available():
    pytest.skip("no GPU on this machine", allow_module_level=True)

from workers.backends.contract import Prefilled  # noqa: E402
from workers.backends.vllm import VllmBackend  # noqa: E402
from workers.engine.sampling import SamplingParams  # noqa: E402
from workers.engine.sequence import MultimodalSpan  # noqa: E402
from workers.requests import GenerateRequest  # noqa: E402

GPU_SHARE = 0.25  # two engines (P and D) and the offline reference fit on one GPU


def model_dir() -> str:
    path = os.environ.get("PAVANA_VLLM_TEST_MODEL")
    if path:
        return path
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download("HuggingFaceTB/SmolLM2-135M-Instruct")
    except Exception as e:  # no network, no cache
        pytest.skip(f"no test model: set PAVANA_VLLM_TEST_MODEL ({e})")


ENGINE = dict(policy="sarathi", chunk_size=512, max_num_seqs=16, block_size=16, enable_prefix_caching=True, dtype="bfloat16",
              max_model_len=1024, gpu_memory_utilization=GPU_SHARE, enforce_eager=True)
PROMPTS = [[1, 504, 3458, 282, 4649, 314, 1011, 30], list(range(100, 148)), list(range(200, 232))]  # the last two: 3 and 2 blocks


def example_connector() -> str:
    from vllm.distributed.kv_transfer.kv_connector.factory import KVConnectorFactory

    names = set(getattr(KVConnectorFactory, "_registry", {}))
    for name in ("ExampleConnector", "SharedStorageConnector"):
        if name in names:
            return name
    pytest.skip(f"vLLM has no example/shared-storage connector ({sorted(names)})")


def offline_greedy(path: str, prompts: list[list[int]], max_tokens: int) -> list[list[int]]:
    llm = vllm.LLM(model=path, dtype="bfloat16", gpu_memory_utilization=GPU_SHARE, max_model_len=1024, enforce_eager=True)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], vllm.SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True))
    tokens = [list(o.outputs[0].token_ids) for o in outs]
    del llm
    gc.collect()
    torch.cuda.empty_cache()
    return tokens


async def collect(stream) -> tuple[list[int], list]:
    chunks = [c async for c in stream]
    return [t for c in chunks for t in c.token_ids], chunks


@pytest.fixture(scope="module")
def path() -> str:
    return model_dir()


@pytest.fixture(scope="module")
def reference(path) -> list[list[int]]:
    return offline_greedy(path, PROMPTS, 24)


def request(prompt, max_tokens=24, **params) -> GenerateRequest:
    return GenerateRequest(f"r-{uuid.uuid4().hex[:8]}", list(prompt), SamplingParams(max_tokens=max_tokens, ignore_eos=True, **params))


def test_colocated_greedy_equals_vllm_offline(path, reference):
    async def run():
        backend = VllmBackend(path, "", ENGINE, stage="colocated", replica_id="c0")
        try:
            results = [await collect(backend.generate(request(p))) for p in PROMPTS]
            stats = backend.stats()
            metrics = backend.metrics_text()
        finally:
            await backend.shutdown()
        return results, stats, metrics

    results, stats, metrics = asyncio.run(run())
    for (tokens, chunks), expected in zip(results, reference):
        assert tokens == expected
        assert chunks[-1].finished and chunks[-1].finish_reason == "length" and chunks[-1].num_output_tokens == 24
    assert stats.total_kv_blocks > 0 and stats.prefix_hashes
    assert "vllm:num_requests_running" in metrics


def test_pd_handoff_equals_colocated(path, reference, tmp_path):
    connector = {"kv_connector": example_connector(), "kv_connector_extra_config": {"shared_storage_path": str(tmp_path)}}

    async def run():
        prefill = VllmBackend(path, "", {**ENGINE, **connector}, stage="prefill", replica_id="p0")
        decode = VllmBackend(path, "", {**ENGINE, **connector}, stage="decode", replica_id="d0")
        try:
            out = []
            for p in PROMPTS:
                req = request(p)
                done = await prefill.prefill(req)
                assert isinstance(done, Prefilled) and done.handoff is not None and not done.first.finished
                rest, chunks = await collect(decode.decode(req, done))
                out.append((done.first.token_ids + rest, chunks))
            return out
        finally:
            await prefill.shutdown()
            await decode.shutdown()

    for (tokens, chunks), expected in zip(asyncio.run(run()), reference):
        assert tokens == expected  # the first token once, never re-sampled
        assert chunks[-1].finish_reason == "length" and chunks[-1].num_output_tokens == 24


def test_pd_handoff_at_a_block_boundary(path, reference, tmp_path):
    """PROMPTS[2] has exactly two blocks: prompt + first token starts a third one."""
    connector = {"kv_connector": example_connector(), "kv_connector_extra_config": {"shared_storage_path": str(tmp_path)}}

    async def run():
        prefill = VllmBackend(path, "", {**ENGINE, **connector}, stage="prefill", replica_id="p0")
        decode = VllmBackend(path, "", {**ENGINE, **connector}, stage="decode", replica_id="d0")
        try:
            req = request(PROMPTS[2])
            done = await prefill.prefill(req)
            rest, _ = await collect(decode.decode(req, done))
            return done.first.token_ids + rest
        finally:
            await prefill.shutdown()
            await decode.shutdown()

    assert asyncio.run(run()) == reference[2]


def test_a_first_token_that_ends_the_request_hands_nothing_off(path, reference, tmp_path):
    connector = {"kv_connector": example_connector(), "kv_connector_extra_config": {"shared_storage_path": str(tmp_path)}}
    first = reference[0][0]

    async def run():
        prefill = VllmBackend(path, "", {**ENGINE, **connector}, stage="prefill", replica_id="p0")
        try:
            stopped = await prefill.prefill(GenerateRequest("s", PROMPTS[0], SamplingParams(max_tokens=8, stop_token_ids=(first,))))
            one = await prefill.prefill(GenerateRequest("o", PROMPTS[0], SamplingParams(max_tokens=1)))
            return stopped, one, prefill.stats()
        finally:
            await prefill.shutdown()

    stopped, one, stats = asyncio.run(run())
    assert stopped.handoff is None and stopped.first.finished and stopped.first.finish_reason == "stop"
    assert one.handoff is None and one.first.finished and one.first.finish_reason == "length"
    assert stats.running == 0


def test_priority_serves_the_more_important_request_first(path):
    async def run():
        backend = VllmBackend(path, "", {**ENGINE, "max_num_seqs": 1}, stage="colocated", replica_id="c0")
        order: list[str] = []
        try:
            async def one(rid, priority):
                req = GenerateRequest(rid, PROMPTS[1], SamplingParams(max_tokens=8, ignore_eos=True), priority=priority)
                async for chunk in backend.generate(req):
                    if chunk.finished:
                        order.append(rid)

            blocker = asyncio.create_task(one("blocker", 0))
            await asyncio.sleep(0.05)
            await asyncio.gather(one("low", 5), one("high", 0), blocker)
        finally:
            await backend.shutdown()
        return order

    order = asyncio.run(run())
    assert order.index("high") < order.index("low")


@pytest.mark.skipif(not os.environ.get("PAVANA_VLLM_TEST_LLAVA"), reason="set PAVANA_VLLM_TEST_LLAVA to a small LLaVA checkpoint folder")
def test_images_as_embeddings_equal_vllms_own_vision_tower():
    path = os.environ["PAVANA_VLLM_TEST_LLAVA"]
    from PIL import Image

    image = Image.new("RGB", (336, 336), (200, 40, 40))
    llm = vllm.LLM(model=path, dtype="bfloat16", gpu_memory_utilization=GPU_SHARE, max_model_len=2048, enforce_eager=True)
    out = llm.generate({"prompt": "USER: <image>\nWhat colour is this? ASSISTANT:", "multi_modal_data": {"image": image}},
                       vllm.SamplingParams(max_tokens=12, temperature=0.0))[0]
    ids, expected = list(out.prompt_token_ids), list(out.outputs[0].token_ids)
    del llm
    gc.collect()
    torch.cuda.empty_cache()
    pytest.importorskip("transformers")
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    processor = AutoProcessor.from_pretrained(path)
    hf = LlavaForConditionalGeneration.from_pretrained(path, torch_dtype=torch.bfloat16).cuda()
    pixels = processor(images=image, text="<image>", return_tensors="pt")["pixel_values"].cuda().to(torch.bfloat16)
    embeds = hf.get_image_features(pixel_values=pixels, vision_feature_layer=hf.config.vision_feature_layer,
                                   vision_feature_select_strategy=hf.config.vision_feature_select_strategy)
    embeds = (embeds[0] if isinstance(embeds, (list, tuple)) else embeds).reshape(-1, embeds.shape[-1]).float().cpu()
    del hf
    gc.collect()
    torch.cuda.empty_cache()
    image_token = processor.tokenizer.convert_tokens_to_ids("<image>")
    offset = ids.index(image_token)
    span = MultimodalSpan(offset, embeds.shape[0], "red", embeds)

    async def run():
        backend = VllmBackend(path, "", {**ENGINE, "max_model_len": 2048}, stage="colocated", replica_id="c0")
        try:
            return (await collect(backend.generate(GenerateRequest("img", ids, SamplingParams(max_tokens=12)), [span])))[0]
        finally:
            await backend.shutdown()

    assert asyncio.run(run()) == expected
