"""What the router sends to a pool and what a pool streams back: plain, picklable records.

These are the only worker types the router imports (DESIGN.md: `router` may import
`workers` for deployment names and request types only).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from workers.engine.outputs import TokenLogprob
from workers.engine.sampling import SamplingParams

__all__ = ["GenerateRequest", "ImageInput", "PrefillResult", "STAGES", "SamplingParams", "TokenChunk", "TokenLogprob"]


@dataclass(frozen=True, slots=True)
class ImageInput:
    """One image of a prompt: where its placeholder tokens sit and where its embeddings are.

    `embeds_ref` is a Ray ObjectRef produced by the vision pool; nested in this record it is
    not resolved by Serve on the way, and the prefill replica fetches it directly from the
    object store.
    """

    offset: int
    length: int
    content_hash: str
    embeds_ref: Any = None


@dataclass(frozen=True, slots=True)
class GenerateRequest:
    """One request to a pool.

    `resume_token_ids` and `resume_text_chars` are set when the router migrates a stream whose
    replica was lost: the output tokens and the characters of output text the client already
    received. The engine recomputes them as it would after a preemption and continues from
    there, so the client's stream goes on without a repeated or missing token.
    """

    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    images: tuple[ImageInput, ...] = ()
    qos_class: str = "interactive"
    priority: int = 0  # the class's priority: lower is served first
    deadline_s: float = math.inf  # wall-clock time by which the class's TTFT SLO wants the first token
    # Full-block prefix hashes of the prompt, for prefix-affinity replica choice.
    prefix_hashes: tuple[int, ...] = ()
    resume_token_ids: tuple[int, ...] = ()
    resume_text_chars: int = 0

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)


@dataclass(frozen=True, slots=True)
class TokenChunk:
    """A piece of a response stream: new tokens and text, and how the request ended.

    `logprobs` has one record per token in `token_ids` when the request asked for `logprobs`;
    `prompt_logprobs`, only on a request's first chunk, one per prompt token (the first None).
    `replica_id` names the Serve replica that produced the chunk, so a migration can be seen
    (in logs and tests) as a change of replica within one stream.
    """

    request_id: str
    token_ids: list[int]
    text: str
    finished: bool = False
    finish_reason: str | None = None
    num_prompt_tokens: int = 0
    num_output_tokens: int = 0
    stage: str = ""
    logprobs: tuple[TokenLogprob, ...] = ()
    prompt_logprobs: tuple[TokenLogprob | None, ...] = ()
    replica_id: str = ""


@dataclass(frozen=True, slots=True)
class PrefillResult:
    """A prefill replica's answer: the first token, and the KV left in the object store.

    `kv_ref` is a one-element list holding the ObjectRef of the KV tensor, so the router
    passes a reference to the decode pool and never holds the tensor itself. When the first
    token already ends the request, `kv_ref` is empty. The KV covers the prompt and any
    resumed output (`GenerateRequest.resume_token_ids`), every token but `first`'s;
    `num_prompt_tokens` is the prompt's length alone.
    """

    first: TokenChunk
    kv_ref: list[Any] = field(default_factory=list)
    num_prompt_tokens: int = 0
    mm_hashes: tuple[tuple[int, int, str], ...] = ()


STAGES = ("vision", "prefill", "decode", "colocated")
