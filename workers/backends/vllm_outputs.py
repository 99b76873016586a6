"""vLLM's outputs in Pavana's records: finish reasons and logprobs.

Pure over plain values (a logprob entry is anything with `.logprob` and `.rank`, as vLLM's
`Logprob` has), so it is unit-tested on a CPU without vLLM.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from workers.engine.outputs import TokenLogprob

# vLLM's `CompletionOutput.finish_reason` values and Pavana's: the same words.
FINISH_REASONS = {"stop": "stop", "length": "length", "abort": "abort", "error": "error"}


def finish_reason(vllm_reason: str | None) -> str | None:
    """Pavana's finish reason for vLLM's (None while the request runs)."""
    if vllm_reason is None:
        return None
    try:
        return FINISH_REASONS[str(vllm_reason)]
    except KeyError:
        raise ValueError(f"vLLM finished a request for a reason Pavana does not know: {vllm_reason!r}") from None


def token_logprob(token_id: int, entries: Mapping[int, Any], k: int) -> TokenLogprob:
    """One position's record: the chosen token's logprob and the `k` most likely tokens.

    vLLM returns the top `k` (ranks 1..k) plus the chosen token whatever its rank."""
    if token_id not in entries:
        raise ValueError(f"vLLM's logprobs for token {token_id} do not include it")
    ranked = sorted(((e.rank, t, e.logprob) for t, e in entries.items() if e.rank is not None and e.rank <= k))
    return TokenLogprob(token_id=token_id, logprob=float(entries[token_id].logprob), top=tuple((t, float(lp)) for _, t, lp in ranked))


def token_logprobs(token_ids: Sequence[int], per_position: Sequence[Mapping[int, Any]] | None, k: int | None) -> tuple[TokenLogprob, ...]:
    """Records for the new tokens of one output (none when the request asked for none, or the
    output has no new token)."""
    if k is None or not token_ids:
        return ()
    if per_position is None or len(per_position) != len(token_ids):
        raise ValueError(f"vLLM returned logprobs for {0 if per_position is None else len(per_position)} of {len(token_ids)} new tokens")
    return tuple(token_logprob(t, entries, k) for t, entries in zip(token_ids, per_position))


def prompt_logprobs(prompt_token_ids: Sequence[int], per_position: Sequence[Mapping[int, Any] | None] | None, k: int | None) -> tuple[TokenLogprob | None, ...]:
    """Records for every prompt token, the first None (nothing predicts it), as Pavana's
    engine reports them on a request's first chunk."""
    if k is None:
        return ()
    if per_position is None or len(per_position) != len(prompt_token_ids):
        raise ValueError(f"vLLM returned prompt logprobs for {0 if per_position is None else len(per_position)} of {len(prompt_token_ids)} tokens")
    return tuple(None if entries is None else token_logprob(t, entries, k) for t, entries in zip(prompt_token_ids, per_position))
