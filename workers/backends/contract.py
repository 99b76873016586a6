"""The one contract every LLM engine behind a pool keeps (Pavana's own, vLLM's).

A pool replica (`workers/deployments.py`) owns everything that is not the engine: Ray's object
store for hand-offs, heartbeats into Redis, routing stats for the request routers, the power
mode the planner gives it, health checks and the metrics it exports. A backend owns the engine
only, and speaks in plain records:

- `generate` streams a colocated request's `TokenChunk`s;
- `prefill` runs a prompt and returns its first token with a hand-off payload (`Prefilled`);
- `decode` continues from such a payload, without repeating or re-sampling the first token;
- `stats` returns every field a heartbeat and a request router read (`BackendStats`);
- `abort`, `check_health`, `shutdown`;
- `power_control` enacts a power mode the way the hardware allows (`PowerControl`);
- `metrics_text` exports the engine's own Prometheus metrics (vLLM's `vllm:*`), if it has any.

Because the replica is the same class whatever the backend, every backend gets heartbeats,
routing stats, power modes and metrics by construction. `tests/workers/backends/
test_contract.py` holds each backend to this contract.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from cluster.power_modes import Mode
from workers.engine.async_engine import EngineStats
from workers.engine.sequence import MultimodalSpan
from workers.requests import GenerateRequest, TokenChunk

# What a replica reports for routing and telemetry: running and waiting requests, queued prompt
# tokens, free and total KV blocks, output tokens/s, busy fraction, prefix hashes and the
# measured prefill and decode rates. Every backend fills every field (0 where it cannot know).
BackendStats = EngineStats

BACKENDS = ("pavana", "vllm")


class PowerModeRefused(RuntimeError):
    """A power mode cannot be enacted on this hardware (no permission to cap GPU clocks, no
    NVML): raised at the replica's start, so a site never believes it saves power it does not."""


@dataclass(frozen=True, slots=True)
class Prefilled:
    """A backend's prefill: the first token, and what its decode needs to continue.

    `handoff` is opaque to everything but the backends: Pavana's engine puts the KV tensor
    there, vLLM its KV connector's transfer parameters. None when `first` already ended the
    request. The replica moves it through Ray's object store (`PrefillResult.kv_ref`).
    """

    first: TokenChunk
    handoff: Any | None
    num_prompt_tokens: int
    mm_hashes: tuple[tuple[int, int, str], ...] = ()


@runtime_checkable
class PowerControl(Protocol):
    """Enacts a power mode: pacing the step loop on a CPU, clock limits on a GPU."""

    def check(self, modes: Sequence[Mode]) -> None:
        """Raise `PowerModeRefused` if any of `modes` cannot be enacted here."""

    def apply(self, mode: Mode) -> None: ...


@runtime_checkable
class Backend(Protocol):
    name: str

    def generate(self, request: GenerateRequest, images: Sequence[MultimodalSpan] = ()) -> AsyncIterator[TokenChunk]:
        """A colocated request's stream; leaving the iteration early aborts the request."""

    async def prefill(self, request: GenerateRequest, images: Sequence[MultimodalSpan] = ()) -> Prefilled: ...

    def decode(self, request: GenerateRequest, prefilled: Prefilled) -> AsyncIterator[TokenChunk]:
        """Continue `request` (the one its prefill was given) after `prefilled.first`."""

    def stats(self) -> BackendStats: ...

    async def abort(self, request_id: str) -> None: ...

    async def check_health(self) -> None:
        """Raise when the engine can no longer serve."""

    def power_control(self) -> PowerControl: ...

    def metrics_text(self) -> str:
        """The engine's own metrics in Prometheus' text format; "" when it has none."""

    async def shutdown(self) -> None: ...


def make_backend(
    name: str, *, model_path: str | None, bundled: str, engine_config: dict[str, Any], stage: str, replica_id: str
) -> Backend:
    """The backend `engine.backend` names, for one replica of `stage`."""
    if name == "pavana":
        from workers.backends.pavana import PavanaBackend

        return PavanaBackend(model_path, bundled, engine_config, stage=stage, replica_id=replica_id)
    if name == "vllm":
        from workers.backends.vllm import VllmBackend

        return VllmBackend(model_path, bundled, engine_config, stage=stage, replica_id=replica_id)
    raise ValueError(f"engine.backend: {name!r} is not one of {', '.join(BACKENDS)}")
