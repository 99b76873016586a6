"""The engine's post-processing step: what one iteration's sampled tokens do to their sequences.

One definition of "when is a sequence done", so that the live engine (`LLMEngine`) and the
simulator's replica (`simulator.replica.SimReplica`) cannot drift apart: a simulated request
ends at the very token the engine would end it. No torch, no clock, no Ray; the text side takes
plain strings, so it also works where there is no tokenizer (a checkpoint without
`tokenizer.json`, or the simulator, whose text is always empty).

The order of the finishing rules is the engine's, and it matters:
1. a stop token id or EOS (unless `ignore_eos`) — the token's own text is never shown — or the
   EOS that ends a finished grammar, which stops the sequence even under `ignore_eos` (nothing
   can follow a finished grammar; the engine's grammar side reports it);
2. a stop string in the text — the text is cut where the stop string begins;
3. `max_tokens` or the context (`max_model_len`) — "length";
4. otherwise, on a prefill-only replica, the sequence is handed off after its first token.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from collections.abc import Sequence as Seq
from dataclasses import dataclass

from workers.engine.block_manager import BlockManager
from workers.engine.sampling import SamplingParams
from workers.engine.scheduler import ScheduledBatch
from workers.engine.sequence import Sequence, SequenceStatus


@dataclass(frozen=True, slots=True)
class StopRule:
    """What ends a sequence on this replica beyond its own sampling parameters: the model's
    end-of-sequence ids, the context length, and whether the replica only prefills."""

    max_model_len: int
    eos_token_ids: frozenset[int] = frozenset()
    prefill_only: bool = False


# Not frozen, unlike the house's other records: one is made per generated token, also in the
# simulator's inner loop, and a frozen dataclass's __init__ costs three times as much (a
# 3,500-request simulation ran 10% slower). Nothing changes one after it is made.
@dataclass(slots=True)
class SampledToken:
    """What one sampled token did to its sequence (named by id, as the scheduler's batch is).

    `finish_reason` is what the client is told ("stop", "length" or None); `hands_off` is true
    when a prefill-only replica is done with the sequence and a decode replica continues it.
    """

    request_id: str
    token: int
    finish_reason: str | None
    hands_off: bool

    @property
    def finished(self) -> bool:
        """Whether the sequence leaves this replica now (finished or handed off)."""
        return self.finish_reason is not None or self.hands_off


def stops_on_token(token: int, params: SamplingParams, eos_token_ids: Collection[int]) -> bool:
    """A stop token id, or EOS unless the request ignores it. Checked before the token's text
    is taken, since a stop token's own text is never shown."""
    return token in params.stop_token_ids or (token in eos_token_ids and not params.ignore_eos)


def decide(
    seq: Sequence, token: int, rule: StopRule, *, stopped_by_text: bool = False, stopped_by_grammar: bool = False
) -> SampledToken:
    """The finishing rule, for a sequence that already holds `token` as its last token.

    `stopped_by_text` says that a stop string matched the text this token completed (see
    `cut_at_stop_string`); it outranks "length" because the text the client sees ends there.
    `stopped_by_grammar` says that the token is the EOS closing a finished grammar.
    """
    params = seq.params
    num_tokens = len(seq.token_ids)  # not the properties: the simulator runs this once a token
    reason = None
    if stopped_by_text or stopped_by_grammar or stops_on_token(token, params, rule.eos_token_ids):
        reason = "stop"
    elif num_tokens - seq.num_prompt_tokens >= params.max_tokens or num_tokens >= rule.max_model_len:
        reason = "length"
    return SampledToken(seq.request_id, token, reason, reason is None and rule.prefill_only)


def advance(
    batch: ScheduledBatch,
    sampled: Mapping[str, int],
    rule: StopRule,
    block_manager: BlockManager,
    *,
    stopped_by_text: Collection[str] = (),
    stopped_by_grammar: Collection[str] = (),
) -> list[SampledToken]:
    """Carry one iteration's results into its sequences, in the batch's order.

    Every chunk's tokens become computed (and full blocks join the prefix cache); a chunk that
    sampled (its request id is in `sampled`) gets its token appended and a decision. The
    sequences are the scheduler's own and are changed in place; nothing else is. Finishing
    them (which frees their blocks) is left to the caller, because a prefill-only engine must
    first export their KV. A sequence no longer running when its batch completes (aborted, or
    its replica killed meanwhile) is left alone.
    """
    results: list[SampledToken] = []
    running = SequenceStatus.RUNNING
    # Committing is a no-op without prefix caching; skipping the call matters to the simulator.
    commit = block_manager.commit_full_blocks if block_manager.enable_prefix_caching else None
    for chunk in batch.chunks:
        seq = chunk.seq
        if seq.status is not running:
            continue
        seq.num_computed_tokens += chunk.num_tokens
        if commit is not None:
            commit(seq)
        token = sampled.get(seq.request_id)
        if token is None:
            continue
        seq.token_ids.append(token)
        rid = seq.request_id
        results.append(decide(seq, token, rule, stopped_by_text=rid in stopped_by_text, stopped_by_grammar=rid in stopped_by_grammar))
    return results


# -- the text side -------------------------------------------------------------------------------
def stop_hold_back(stop: Seq[str]) -> int:
    """Characters to keep unshown at the end of a running sequence's text: a stop string may be
    starting there, and text once streamed cannot be taken back. One less than the longest stop
    string (a full match is cut, not held)."""
    return max((len(s) for s in stop), default=1) - 1


def cut_at_stop_string(text: str, emitted_chars: int, stop: Seq[str]) -> str | None:
    """`text` cut where the earliest stop string begins, or None when none occurs.

    Only text near what is new is searched (after `emitted_chars`, less the longest stop
    string, since a stop string can straddle text already checked), so a long output costs
    the same per token as a short one.
    """
    if not stop:
        return None
    # Imported here so that the simulator, which has no text, does not load the tokenizer's
    # dependencies (tokenizers, jinja2) by importing this module.
    from workers.engine.tokenizer import find_stop

    cut = find_stop(text, stop, emitted_chars)
    return None if cut is None else text[:cut]


def visible_text(text: str, emitted_chars: int, hold_back: int, *, final: bool) -> tuple[str, int]:
    """The text to stream now, and how many characters are then shown in all.

    Final text (the sequence finished) is shown whole; otherwise, even for a hand-off, whose
    text continues on the decode replica, `hold_back` characters stay unshown, and what was
    shown already is never taken back.
    """
    visible = len(text) if final else max(emitted_chars, len(text) - hold_back)
    return text[emitted_chars:visible], visible
