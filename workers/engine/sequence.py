"""A request inside the engine: its tokens, how many of them have KV computed, its blocks."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Any

from workers.engine.sampling import SamplingParams


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(slots=True)
class MultimodalSpan:
    """Embeddings (e.g. of one image) that replace the token embeddings of `length` tokens at
    `offset`.

    `embeds` is a tensor [length, hidden], opaque to the scheduler, and None once the span's
    KV is computed elsewhere (a prefill replica). `content_hash` keys the prefix cache, since
    every image's placeholder tokens are the same ids.
    """

    offset: int
    length: int
    content_hash: str
    embeds: Any = None


@dataclass(slots=True)
class Sequence:
    """Token ids are prompt + output; `num_computed_tokens` of them have their KV in the cache.

    The tokens still to compute are `token_ids[num_computed_tokens:]`: a whole or chunked
    prompt, a single decode token, or everything again after a preemption by recomputation.
    """

    request_id: str
    token_ids: list[int]
    params: SamplingParams
    arrival_index: int
    num_prompt_tokens: int = 0
    num_computed_tokens: int = 0
    block_table: list[int] = field(default_factory=list)
    status: SequenceStatus = SequenceStatus.WAITING
    finish_reason: str | None = None
    mm_spans: list[MultimodalSpan] = field(default_factory=list)
    # KV tensors handed over by a prefill replica, written into this engine's cache on admission.
    pending_kv: Any = None
    num_preemptions: int = 0
    # For a hand-off: how much of the output's text the prefill engine already streamed.
    num_text_chars_emitted: int = 0
    # QoS (Niyama): a lower priority number is served first, then the earlier deadline (wall
    # clock seconds by which the request's SLO wants its next token).
    priority: int = 0
    deadline_s: float = math.inf
    # The request's grammar matcher (`workers.engine.constraint`), opaque here, None without a
    # grammar. It has consumed exactly the output tokens in `token_ids`: it advances when a
    # token is sampled, never when tokens are recomputed after a preemption.
    grammar_matcher: Any = None

    @property
    def urgency(self) -> tuple[int, float, int]:
        """The scheduler's order: class, then deadline, then arrival."""
        return (self.priority, self.deadline_s, self.arrival_index)

    def __post_init__(self) -> None:
        if not self.num_prompt_tokens:
            self.num_prompt_tokens = len(self.token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def num_uncomputed_tokens(self) -> int:
        return len(self.token_ids) - self.num_computed_tokens

    @property
    def is_decoding(self) -> bool:
        """One token left to compute, and the rest already in the cache."""
        return self.num_computed_tokens > 0 and self.num_uncomputed_tokens == 1

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    def block_extra_key(self, start: int, end: int) -> tuple[str, ...]:
        """Content hashes of the multimodal spans overlapping token range [start, end)."""
        return tuple(s.content_hash for s in self.mm_spans if s.offset < end and s.offset + s.length > start)
