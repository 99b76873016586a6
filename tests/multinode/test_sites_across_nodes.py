"""Pavana on a cluster of several Ray nodes (tests/multinode/conftest.py): pools placed by site,
hand-offs that cross nodes through the object store, and a site lost with its node.

Requests pinned to a site go through Pavana's own orchestrator, built in the test process over
the application's real deployment handles (as tests/reliability/test_migration.py does), so
that every chunk names the replica, hence the node, that produced it. Client traffic goes over
HTTP to the ingress, which picks sites itself. Every wait is on a condition, within a bound.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Awaitable, Callable

import httpx
import pytest

from cluster.telemetry import TelemetryStore
from controller.reconcile import Reconciler
from router.orchestrator import Orchestrator, SitePools
from router.protocol import ChatCompletionRequest
from tests.multinode.conftest import APP
from tiny_checkpoints import image_bytes
from workers.requests import GenerateRequest, SamplingParams, TokenChunk

pytestmark = [pytest.mark.multinode, pytest.mark.ray, pytest.mark.redis]
SITES = ("a", "b")
STAGES = ("vision", "prefill", "decode")
PROMPT = list(range(40, 72))  # token ids of the tiny model's vocabulary
REQUEST_BOUND_S = 90.0  # every request, however its site fared, ends within this


# -- helpers ------------------------------------------------------------------------------------------
def pools_at(site: str) -> SitePools:
    from ray import serve

    return SitePools(**{stage: serve.get_deployment_handle(f"{stage}-{site}", app_name=APP) for stage in STAGES})


def orchestrator() -> Orchestrator:
    """Pavana's orchestrator over both sites' real pools, with no memory of earlier losses."""
    return Orchestrator({site: pools_at(site) for site in SITES})


def greedy(request_id: str, max_tokens: int) -> GenerateRequest:
    return GenerateRequest(request_id, PROMPT, SamplingParams(max_tokens=max_tokens, ignore_eos=True))


async def run(orch: Orchestrator, request: GenerateRequest, site: str, images: list[bytes] | None = None,
              on_chunk: Callable[[list[TokenChunk]], Awaitable[None]] | None = None) -> list[TokenChunk]:
    chunks: list[TokenChunk] = []

    async def stream() -> None:
        async for chunk in orch.generate(request, images or [], site):
            chunks.append(chunk)
            if on_chunk is not None:
                await on_chunk(chunks)

    await asyncio.wait_for(stream(), REQUEST_BOUND_S)
    return chunks


def tokens(chunks: list[TokenChunk]) -> list[int]:
    return [t for c in chunks for t in c.token_ids]


def replica_node(deployment: str, replica_id: str) -> str:
    """The node id of one replica's actor (Serve names it `SERVE_REPLICA::<app>#<deployment>#<id>`)."""
    import ray
    from ray._private import state

    actor = ray.get_actor(f"SERVE_REPLICA::{APP}#{deployment}#{replica_id}", namespace="serve")
    return state.actors(actor_id=actor._actor_id.hex())["Address"]["NodeID"]


def replica_ids(deployment: str) -> list[str]:
    import ray

    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)]
    return [n.rsplit("#", 1)[1] for n in names if n.startswith(f"SERVE_REPLICA::{APP}#{deployment}#")]


def nodes_carrying(resource: str) -> set[str]:
    import ray

    return {n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get(resource, 0) > 0}


def node_of_chunk(chunk: TokenChunk, site: str) -> str:
    return replica_node(f"{chunk.stage}-{site}", chunk.replica_id)


def image_request(spec, request_id: str):
    """A chat request with one image, prepared as the ingress prepares it."""
    from router.prompt import PromptBuilder, model_facts
    from workers.engine.bundled import model_dir
    from workers.engine.tokenizer import Tokenizer

    path = model_dir(spec.model.path, spec.model.bundled)
    facts = model_facts(path, name=spec.model.name, block_size=spec.engine.block_size,
                        num_kv_blocks=spec.engine.num_kv_blocks, max_model_len=spec.model.max_model_len)
    url = "data:image/png;base64," + base64.b64encode(image_bytes(32, 32, seed=7)).decode()
    body = ChatCompletionRequest.model_validate({
        "model": spec.model.name, "max_tokens": 24, "temperature": 0, "ignore_eos": True,
        "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "What is it?"}]}],
    })
    return PromptBuilder(Tokenizer.from_dir(path), facts).chat(body, request_id)


async def wait_for(condition: Callable[[], Awaitable[bool]], bound_s: float, what: str) -> None:
    deadline = time.monotonic() + bound_s
    while not await condition():
        assert time.monotonic() < deadline, f"{what}: not within {bound_s:.0f} s"
        await asyncio.sleep(0.25)


# -- 1. placement -------------------------------------------------------------------------------------
def test_each_site_s_replicas_run_on_the_nodes_that_carry_the_site(multinode):
    for site in SITES:
        carriers = nodes_carrying(f"site.{site}")
        for stage in STAGES:
            ids = replica_ids(f"{stage}-{site}")
            assert len(ids) == 1, (stage, site, ids)
            assert {replica_node(f"{stage}-{site}", r) for r in ids} <= carriers, (stage, site)
    assert nodes_carrying("site.a") == {multinode.node_id("a-main"), multinode.node_id("a-gpu")}
    # At site a the stages are split over its two nodes: prefill alone on the one with a GPU.
    node = {stage: replica_node(f"{stage}-a", replica_ids(f"{stage}-a")[0]) for stage in STAGES}
    assert node == {"vision": multinode.node_id("a-main"), "prefill": multinode.node_id("a-gpu"), "decode": multinode.node_id("a-main")}
    assert {replica_node(f"{s}-b", replica_ids(f"{s}-b")[0]) for s in STAGES} == {multinode.node_id("b")}


# -- 2. hand-offs across nodes ------------------------------------------------------------------------
async def test_a_kv_hand_off_across_nodes_gives_the_single_node_output(multinode):
    orch = orchestrator()
    across = await run(orch, greedy("kv-across", 48), "a")
    one_node = await run(orch, greedy("kv-one-node", 48), "b")
    assert len(tokens(across)) == 48 and tokens(across) == tokens(one_node)
    assert "".join(c.text for c in across) == "".join(c.text for c in one_node)
    prefill_node, decode_node = node_of_chunk(across[0], "a"), node_of_chunk(across[-1], "a")
    assert across[0].stage == "prefill" and across[-1].stage == "decode"
    assert prefill_node == multinode.node_id("a-gpu") and decode_node == multinode.node_id("a-main")


async def test_image_embeddings_across_nodes_give_the_single_node_output(multinode):
    orch = orchestrator()
    across_req, one_node_req = image_request(multinode.spec, "image-across"), image_request(multinode.spec, "image-one-node")
    assert across_req.images and across_req.request.images  # the prompt holds the image's tokens
    across = await run(orch, across_req.request, "a", across_req.images)
    one_node = await run(orch, one_node_req.request, "b", one_node_req.images)
    assert len(tokens(across)) == 24 and tokens(across) == tokens(one_node)
    # The embeddings were made on a-main (site a's vision replica) and prefilled on a-gpu.
    assert node_of_chunk(across[0], "a") == multinode.node_id("a-gpu")
    text_only = await run(orch, greedy("text-only", 24), "a")
    assert tokens(text_only) != tokens(across)  # the image's embeddings counted


# -- 3. a site lost with its node ---------------------------------------------------------------------
async def http_stream(client: httpx.AsyncClient, model: str, max_tokens: int) -> dict:
    """One streamed completion over HTTP: its status, token count, whether it ended with
    [DONE] and any error event."""
    import json

    body = {"model": model, "prompt": "Keep talking about the wind", "max_tokens": max_tokens, "stream": True,
            "ignore_eos": True, "stream_options": {"include_usage": True}}
    seen = {"status": None, "usage_tokens": None, "done": False, "error": None}
    async with client.stream("POST", "/completions", json=body) as response:
        seen["status"] = response.status_code
        async for line in response.aiter_lines():
            data = line.removeprefix("data: ")
            if data == "[DONE]":
                seen["done"] = True
            elif line.startswith("data: "):
                event = json.loads(data)
                if "error" in event:
                    seen["error"] = event["error"]["message"]
                elif event.get("usage"):
                    seen["usage_tokens"] = event["usage"]["completion_tokens"]
    return seen


async def sites_recorded(store: TelemetryStore, since_s: float) -> list[str]:
    return [r.site for r in (await store.snapshot()).requests if r.timestamp_s >= since_s]


async def test_a_site_lost_with_its_node_moves_every_request_to_the_other_site_and_says_why(multinode):
    spec = multinode.spec
    store = TelemetryStore.from_spec(spec)
    reconciler = Reconciler(spec, app_name=APP)
    model = spec.model.name
    reference = tokens(await run(orchestrator(), greedy("reference", 200), "a"))
    async with httpx.AsyncClient(base_url=multinode.base_url, timeout=REQUEST_BOUND_S) as client:
        await reconciler.reconcile_once()
        assert reconciler.lost_sites == {}
        # Both sites take the ingress's traffic before the fault.
        since = time.time()
        assert {(await client.post("/completions", json={"model": model, "prompt": "hi", "max_tokens": 2})).status_code
                for _ in range(12)} == {200}
        await wait_for(lambda: _both_sites(store, since), 30, "requests recorded at both sites")

        # A stream at b and HTTP streams from the ingress are under way when b's node dies.
        streaming_at_b = asyncio.Event()

        async def note_progress(chunks: list[TokenChunk]) -> None:
            if len(tokens(chunks)) >= 20:
                streaming_at_b.set()

        at_b = asyncio.create_task(run(orchestrator(), greedy("streaming-at-b", 200), "b", on_chunk=note_progress))
        in_flight = [asyncio.create_task(http_stream(client, model, 120)) for _ in range(4)]
        await asyncio.wait_for(streaming_at_b.wait(), 30)
        multinode.cluster.remove_node(multinode.nodes["b"], allow_graceful=False)
        killed_at = time.time()

        # Requests bound for b that had not begun: an orchestrator that knows nothing of the loss.
        fresh = orchestrator()
        not_begun = await asyncio.gather(*(run(fresh, greedy(f"bound-for-b-{i}", 200), "b") for i in range(3)))
        during = await asyncio.gather(*(client.post("/completions", json={"model": model, "prompt": "during", "max_tokens": 4})
                                        for _ in range(6)))
        migrated = await at_b
        streams = await asyncio.wait_for(asyncio.gather(*in_flight), REQUEST_BOUND_S)

        for chunks in not_begun:
            assert tokens(chunks) == reference  # retried whole at a
            assert {c.replica_id for c in chunks} <= set(replica_ids("prefill-a")) | set(replica_ids("decode-a"))
        assert "b" in fresh.losses
        assert tokens(migrated) == reference  # the stream went on at a without a seam
        # Its seam: prefilled at b, decoded there, then the resumed request prefilled and decoded at a.
        prefills = [i for i, c in enumerate(migrated) if c.stage == "prefill"]
        assert len(prefills) == 2 and prefills[1] > 20, [c.stage for c in migrated]
        resumed = migrated[prefills[1]:]
        assert resumed[0].replica_id in replica_ids("prefill-a")
        assert {c.replica_id for c in resumed[1:]} <= set(replica_ids("decode-a"))
        assert [r.status_code for r in during] == [200] * 6, [r.text for r in during if r.status_code != 200]
        for seen in streams:
            assert seen["status"] == 200 and seen["done"] and seen["error"] is None and seen["usage_tokens"] == 120, seen

        # The reconcile loop sees the node gone and records why, once its heartbeats are not needed to say so.
        async def recorded() -> bool:
            await reconciler.reconcile_once()
            return "b" in reconciler.lost_sites

        await wait_for(recorded, 60, "the reconcile loop recording site b lost")
        reasons = {d.target: d.reason for d in await store.recent_decisions(200) if d.timestamp_s >= killed_at and d.kind == "hold"}
        assert set(reasons) >= {"vision@b", "prefill@b", "decode@b"}, reasons
        assert reasons["prefill@b"].startswith("site b lost: no live node carries site.b (1 that did left the cluster)")

        # Once b's heartbeats have expired the ingress's site router sends everything to a.
        async def b_silent() -> bool:
            return not any(h.site == "b" for h in (await store.snapshot()).heartbeats)

        await wait_for(b_silent, 30, "site b's heartbeats expiring")

        async def a_takes_every_request() -> bool:
            since = time.time()
            statuses = [(await client.post("/completions", json={"model": model, "prompt": "after", "max_tokens": 2})).status_code
                        for _ in range(10)]
            assert statuses == [200] * 10
            await wait_for(lambda: _recorded(store, since, 10), 15, "the ingress's request records")
            return set(await sites_recorded(store, since)) == {"a"}

        await wait_for(a_takes_every_request, 30, "the ingress sending every request to site a")
    await store.close()


async def _both_sites(store: TelemetryStore, since_s: float) -> bool:
    return set(await sites_recorded(store, since_s)) == {"a", "b"}


async def _recorded(store: TelemetryStore, since_s: float, count: int) -> bool:
    return len(await sites_recorded(store, since_s)) >= count
