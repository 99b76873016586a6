"""Request migration on the real local Ray cluster: the replica serving a stream is killed
mid-stream, and the client still gets one uninterrupted stream equal to an undisturbed run.

The orchestrator is Pavana's own (`router.orchestrator.Orchestrator`), built in the test
process over real deployment handles of a real application, so that each chunk's `replica_id`
names exactly the replica that produced it: the test kills that replica's actor after about
20 tokens and checks that the rest of the stream came from another replica, with neither a
repeated nor a missing token. Colocated (two replicas), and a decode replica of a
disaggregated application (two prefill and two decode replicas).
"""

from __future__ import annotations

import uuid

import pytest

from cluster.spec import ClusterSpec
from router.orchestrator import Orchestrator, SitePools
from tests.conftest import deployed_app
from workers.requests import GenerateRequest, SamplingParams, TokenChunk

pytestmark = [pytest.mark.ray, pytest.mark.redis]
APP = "migration-test"
PREFIX = "/migration"
SITE = "local"
PROMPT = list(range(40, 72))  # token ids of the tiny model's vocabulary
MAX_TOKENS = 300  # long enough that the replica is still generating when the kill lands (~160 tokens/s here)
KILL_AFTER_TOKENS = 20
TWO = {"min_replicas": 2, "initial_replicas": 2, "max_replicas": 2}


def spec_of(ray_cluster, topology: str, pools: dict) -> ClusterSpec:
    return ClusterSpec.parse({
        "telemetry_prefix": f"test:{uuid.uuid4().hex}",
        "topology": topology,
        "engine": {"num_threads": 1, "num_kv_blocks": 256},
        "pools": pools,
        "api_keys": ["migration-key"],
        "http_port": ray_cluster.http_port,
        "grpc_port": ray_cluster.grpc_port,
    })


def orchestrator(**stages: str) -> Orchestrator:
    """Pavana's orchestrator over the application's real pools (`stage=deployment name`)."""
    from ray import serve

    return Orchestrator({SITE: SitePools(**{stage: serve.get_deployment_handle(name, app_name=APP) for stage, name in stages.items()})})


def kill_replica(deployment: str, replica_id: str) -> None:
    """Kill exactly one replica's actor, as a crash would (Serve names it
    `SERVE_REPLICA::<app>#<deployment>#<replica id>` in the `serve` namespace)."""
    import ray

    actor = ray.get_actor(f"SERVE_REPLICA::{APP}#{deployment}#{replica_id}", namespace="serve")
    ray.kill(actor, no_restart=True)


async def run_stream(orch: Orchestrator, request_id: str, *, kill_in: str | None = None) -> tuple[list[TokenChunk], str | None]:
    """One greedy stream of MAX_TOKENS tokens; with `kill_in`, the replica of that deployment
    serving the stream is killed once KILL_AFTER_TOKENS tokens have reached the client.
    Returns the chunks and the killed replica's id."""
    request = GenerateRequest(request_id, PROMPT, SamplingParams(max_tokens=MAX_TOKENS, ignore_eos=True))
    chunks: list[TokenChunk] = []
    killed = None
    async for chunk in orch.generate(request, [], SITE):
        chunks.append(chunk)
        streamed = sum(len(c.token_ids) for c in chunks)
        if kill_in is not None and killed is None and streamed >= KILL_AFTER_TOKENS:
            killed = chunk.replica_id
            kill_replica(kill_in, killed)
    return chunks, killed


def assert_migrated_seamlessly(reference: list[TokenChunk], chunks: list[TokenChunk], killed: str, stage: str) -> None:
    tokens = [t for c in chunks for t in c.token_ids]
    assert tokens == [t for c in reference for t in c.token_ids] and len(tokens) == MAX_TOKENS
    assert "".join(c.text for c in chunks) == "".join(c.text for c in reference)
    assert [c.num_output_tokens for c in chunks] == [c.num_output_tokens for c in reference]
    assert chunks[-1].finished and chunks[-1].finish_reason == "length" and not any(c.finished for c in chunks[:-1])
    served = [c.replica_id for c in chunks if c.stage == stage]
    position = next(i for i, c in enumerate(chunks) if sum(len(x.token_ids) for x in chunks[: i + 1]) >= KILL_AFTER_TOKENS)
    later = [c.replica_id for c in chunks[position + 1 :] if c.stage == stage]
    # The killed replica served the stream up to the kill (chunks it had sent before it died may
    # still arrive after that point), and once another replica took over, only it served.
    assert chunks[position].replica_id == killed, served
    takeover = next((i for i, r in enumerate(later) if r != killed), None)
    assert takeover is not None and killed not in later[takeover:], served


@pytest.fixture
def colocated_app(ray_cluster):
    """Two colocated replicas. (A sync fixture: `deployed_app` clears telemetry with its own
    event loop on the way out.)"""
    with deployed_app(spec_of(ray_cluster, "colocated", {"colocated": TWO}), APP, PREFIX, ray_cluster):
        yield


@pytest.fixture
def disaggregated_app(ray_cluster):
    """Two prefill and two decode replicas."""
    with deployed_app(spec_of(ray_cluster, "disaggregated", {"prefill": TWO, "decode": TWO}), APP, PREFIX, ray_cluster):
        yield


async def test_a_colocated_replica_killed_mid_stream_is_replaced_without_a_seam(colocated_app):
    orch = orchestrator(colocated="colocated-local")
    reference, _ = await run_stream(orch, "undisturbed")
    chunks, killed = await run_stream(orch, "migrated", kill_in="colocated-local")
    assert killed is not None
    assert_migrated_seamlessly(reference, chunks, killed, "colocated")


async def test_a_decode_replica_killed_mid_stream_is_replaced_without_a_seam(disaggregated_app):
    orch = orchestrator(prefill="prefill-local", decode="decode-local")
    reference, _ = await run_stream(orch, "undisturbed")
    chunks, killed = await run_stream(orch, "migrated", kill_in="decode-local")
    assert killed is not None
    assert_migrated_seamlessly(reference, chunks, killed, "decode")
    # The migration went through a second prefill of the resumed request: its one token sits
    # between the killed replica's chunks and the new decode replica's.
    assert [c.stage for c in chunks].count("prefill") == 2
