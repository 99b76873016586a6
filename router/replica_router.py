"""Ray Serve request routers for the LLM pools: glue between Ray and `router/replica_choice.py`.

Ray calls `choose_replicas(candidate_replicas, pending_request)` in the process that holds
the deployment handle (here the ingress), once per routing attempt. Each candidate is a
`RunningReplica` whose `routing_stats` is the dict its replica last returned from
`record_routing_stats` (Ray's controller polls it every `request_routing_stats_period_s` and
broadcasts it; `{}` until the first poll). `pending_request.args` are the positional
arguments of the handle call: a `GenerateRequest` first for `prefill`, `generate` and
`decode`, nothing for `stats`.

The answer is a list of ranks, best first: `[[best], [second], ...]`. Ray tries each rank in
turn and, inside a rank, takes the replica with the shortest queue that still accepts the
request, so a full replica falls through to the next one.

Why no `FIFOMixin`: with it, Ray hands the replica chosen for one request to whichever request
is oldest in the queue, which is right for request-blind policies (power of two choices) and
wrong for ours, where the choice depends on the request's own prefix and size. Without it, the
base class gives the replica to the request it was chosen for (Ray Serve LLM's
`PrefixCacheAffinityRouter` omits it too). Locality mixins are left out as well: a pool is
already one deployment per site, and preferring the ingress's node would override the policy.

Options (`RequestRouterConfig.request_router_kwargs`): `block_size` (the engine's, default
16), `imbalance_tokens` (default 1024: four chunks of Sarathi-Serve's usual 256-token budget)
and `affinity_tokens_per_block` (default `block_size`).
"""

from __future__ import annotations

from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica

from router.replica_choice import ReplicaLoad, check_at_least, rank_for_decode, rank_for_prefill
from workers.requests import GenerateRequest

DEFAULT_BLOCK_SIZE = 16
DEFAULT_IMBALANCE_TOKENS = 1024


class _PoolRequestRouter(RequestRouter):
    """Shared glue: read the request and the stats, rank, map ids back to replicas."""

    block_size = DEFAULT_BLOCK_SIZE
    imbalance_tokens = DEFAULT_IMBALANCE_TOKENS
    affinity_tokens_per_block = DEFAULT_BLOCK_SIZE

    def initialize_state(
        self,
        block_size: int = DEFAULT_BLOCK_SIZE,
        imbalance_tokens: int = DEFAULT_IMBALANCE_TOKENS,
        affinity_tokens_per_block: int | None = None,
        **unknown: object,
    ) -> None:
        if unknown:
            raise ValueError(f"request_router_kwargs: unknown options {sorted(unknown)}")
        if affinity_tokens_per_block is None:
            affinity_tokens_per_block = block_size
        check_at_least("block_size", block_size, 1)
        check_at_least("imbalance_tokens", imbalance_tokens, 0)
        check_at_least("affinity_tokens_per_block", affinity_tokens_per_block, 0)
        self.block_size = block_size
        self.imbalance_tokens = imbalance_tokens
        self.affinity_tokens_per_block = affinity_tokens_per_block

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        if not candidate_replicas:
            return []
        request = _generate_request(pending_request)
        if request is None:
            # Not a generation call (stats, health): one rank, so Ray takes the shortest queue.
            return [list(candidate_replicas)]
        by_id = {replica.replica_id.unique_id: replica for replica in candidate_replicas}
        loads = [ReplicaLoad.from_stats(replica_id, replica.routing_stats) for replica_id, replica in by_id.items()]
        return [[by_id[replica_id]] for replica_id in self.rank(loads, request)]

    def rank(self, loads: list[ReplicaLoad], request: GenerateRequest) -> list[str]:
        raise NotImplementedError


class PrefillRequestRouter(_PoolRequestRouter):
    """Prefill and colocated pools: fewest queued prefill tokens, with prefix affinity."""

    def rank(self, loads: list[ReplicaLoad], request: GenerateRequest) -> list[str]:
        return rank_for_prefill(
            loads,
            request.prefix_hashes,
            request.num_prompt_tokens,
            affinity_tokens_per_block=self.affinity_tokens_per_block,
            block_size=self.block_size,
            imbalance_tokens=self.imbalance_tokens,
        )


class DecodeRequestRouter(_PoolRequestRouter):
    """Decode pools: most free KV blocks for the handed-off cache plus the tokens to come."""

    def rank(self, loads: list[ReplicaLoad], request: GenerateRequest) -> list[str]:
        tokens_needed = request.num_prompt_tokens + request.params.max_tokens
        return rank_for_decode(loads, tokens_needed, block_size=self.block_size)


def _generate_request(pending_request: PendingRequest | None) -> GenerateRequest | None:
    if pending_request is None or not pending_request.args:
        return None
    first = pending_request.args[0]
    return first if isinstance(first, GenerateRequest) else None
