"""The vLLM backend on a GPU: a colocated replica generates through vLLM's async engine.
Skipped, with the reason, where no GPU or vLLM is present (the P/D hand-off through the KV
connector needs two GPUs and is not exercised here)."""

from __future__ import annotations

import asyncio
import os

import pytest
import torch

pytestmark = pytest.mark.gpu

vllm = pytest.importorskip("vllm", reason="vllm is not installed (the optional 'gpu' extra)")
if not torch.cuda.is_available():
    pytest.skip("no GPU on this machine", allow_module_level=True)

from workers.backends.vllm import VllmColocatedReplica  # noqa: E402
from workers.engine.sampling import SamplingParams  # noqa: E402
from workers.requests import GenerateRequest  # noqa: E402

MODEL = os.environ.get("PAVANA_VLLM_TEST_MODEL")


@pytest.mark.skipif(not MODEL, reason="set PAVANA_VLLM_TEST_MODEL to a local Hugging Face checkpoint")
def test_colocated_greedy_matches_vllm_offline():
    replica = VllmColocatedReplica(MODEL, {"chunk_size": 512, "dtype": "bfloat16"}, "colocated", "local")
    request = GenerateRequest("r0", [1, 450, 4996, 17354, 1701], SamplingParams(max_tokens=16, ignore_eos=True))

    async def collect():
        return [t async for chunk in replica.generate(request) for t in chunk.token_ids]

    tokens = asyncio.run(collect())
    assert len(tokens) == 16
