"""What the engine hands back: per-step request outputs and the prefill→decode hand-off."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from workers.engine.sampling import SamplingParams


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """One token's log-probability and the `k` most likely tokens at its position (best first),
    as OpenAI's `logprobs` reports them.

    Taken from the logits after logit bias, penalties and masks (min_tokens, grammar) and before
    temperature, top-k, top-p and min-p (`workers/engine/sampler.py`), so a greedy choice is
    always the top entry. Prompt tokens' are taken from the model's own logits.
    """

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True, slots=True)
class KVHandoff:
    """A prefilled sequence, ready for a decode engine to continue.

    `token_ids` are the prompt and the output so far: the first output token, preceded, for a
    request resumed after its replica was lost, by the output the client had already received.
    `kv` is a tensor [layers, 2, len(token_ids) - 1, kv_heads, head_dim] holding the keys and
    values of every token but the last, which the decode engine computes first.
    `mm_hashes` are (offset, length, content hash) of the prompt's images, so the decode
    engine's prefix cache tells different images apart. A grammar's matcher does not travel:
    the decode engine rebuilds it from `params.grammar` and the output tokens here.
    """

    request_id: str
    token_ids: list[int]
    num_prompt_tokens: int
    kv: Any
    params: SamplingParams
    mm_hashes: tuple[tuple[int, int, str], ...] = ()
    # Characters of the output's text already streamed (a partial UTF-8 character, or the
    # start of a possible stop string, is held back until the decode engine settles it).
    num_text_chars_emitted: int = 0


@dataclass(slots=True)
class RequestOutput:
    request_id: str
    new_token_ids: list[int]
    new_text: str
    finished: bool
    finish_reason: str | None
    num_prompt_tokens: int
    num_output_tokens: int
    handoff: KVHandoff | None = None
    num_cached_tokens: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    # One per new token when the request asked for `logprobs`; empty otherwise.
    logprobs: list[TokenLogprob] = field(default_factory=list)
    # On a request's first output only, when it asked for `prompt_logprobs`: one per prompt
    # token, the first None (nothing predicts it), as vLLM reports them.
    prompt_logprobs: list[TokenLogprob | None] = field(default_factory=list)
    # Set (with finish_reason "error") when this one request failed inside the engine, e.g. its
    # grammar refused a token; the engine itself carries on.
    error: str | None = None
