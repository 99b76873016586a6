"""Batch scheduling policies over two queues (waiting, running) and one token budget.

A policy decides, each iteration, how many tokens of which sequences to compute: a prefill
chunk and a decode are the same thing with different counts. The result is a plain
`ScheduledBatch`; the model runner consumes only that. Policies differ in one method,
`schedule`, so the baseline and Sarathi-Serve's stall-free policy sit side by side.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from workers.engine.block_manager import BlockManager
from workers.engine.sequence import Sequence, SequenceStatus


@dataclass(frozen=True, slots=True)
class ScheduledChunk:
    """Compute `num_tokens` tokens of `seq`, starting at token index `start`.

    `samples` is true when the chunk reaches the sequence's last token, so this step's logits
    give its next token; a chunk in the middle of a prompt samples nothing.
    """

    seq: Sequence
    start: int
    num_tokens: int
    is_decode: bool
    samples: bool

    @classmethod
    def of(cls, seq: Sequence, num_tokens: int) -> ScheduledChunk:
        start = seq.num_computed_tokens
        return cls(seq, start, num_tokens, seq.is_decoding or seq.pending_kv is not None,
                   start + num_tokens == seq.num_tokens)


@dataclass(frozen=True, slots=True)
class ScheduledBatch:
    chunks: tuple[ScheduledChunk, ...]
    preempted: tuple[str, ...] = ()

    @property
    def num_prefill_tokens(self) -> int:
        return sum(c.num_tokens for c in self.chunks if not c.is_decode)

    @property
    def num_decode_tokens(self) -> int:
        return sum(1 for c in self.chunks if c.is_decode)

    @property
    def num_tokens(self) -> int:
        return sum(c.num_tokens for c in self.chunks)

    def __bool__(self) -> bool:
        return bool(self.chunks)


def _rank(seq: Sequence) -> tuple[int, int]:
    """Order among running sequences: more important class first, then older first."""
    return (seq.priority, seq.arrival_index)


class Scheduler:
    """Queues and the mechanics every policy shares: admission, preemption, completion."""

    def __init__(self, block_manager: BlockManager, *, chunk_size: int, max_num_seqs: int, max_model_len: int):
        self.block_manager = block_manager
        self.chunk_size = chunk_size
        self.token_budget = chunk_size  # of the next step; lowered to meet a TBT target (`token_budget.py`)
        self.max_num_seqs = max_num_seqs
        self.max_model_len = max_model_len
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    # -- queue operations -------------------------------------------------------------------
    def add(self, seq: Sequence) -> None:
        seq.status = SequenceStatus.WAITING
        self.waiting.append(seq)

    def finish(self, seq: Sequence, reason: str) -> None:
        """Take a sequence out of the queues for good and release its blocks."""
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
        elif seq.status is SequenceStatus.WAITING:
            self.waiting.remove(seq)
        self.block_manager.free(seq)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    @property
    def queued_prefill_tokens(self) -> int:
        """Prompt tokens not yet computed, waiting or mid-prefill (the prefill pool's load signal)."""
        return sum(s.num_uncomputed_tokens for s in self.waiting) + sum(
            s.num_uncomputed_tokens for s in self.running if not s.is_decoding
        )

    # -- what a policy builds on --------------------------------------------------------------
    def schedule(self) -> ScheduledBatch:
        raise NotImplementedError

    def _preempt(self, seq: Sequence) -> None:
        """Preempt by recomputation: drop the KV, keep the tokens, go back to the queue's front."""
        self.running.remove(seq)
        self.block_manager.free(seq)
        seq.num_computed_tokens = 0
        seq.pending_kv = None
        seq.status = SequenceStatus.WAITING
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)

    def _order_waiting(self) -> None:
        """Waiting sequences in QoS order: class, then (within a class) preempted ones first,
        then the earliest deadline, then arrival. With one class and no deadlines this is the
        arrival order, preempted sequences at the front."""
        if len(self.waiting) > 1:
            self.waiting = deque(
                sorted(self.waiting, key=lambda s: (s.priority, s.num_preemptions == 0, s.deadline_s, s.arrival_index))
            )

    def _allocate_or_preempt(self, seq: Sequence, num_tokens: int, preempted: list[str], scheduled: set[str], *, may_preempt_self: bool) -> bool:
        """Find blocks for `seq`, preempting newer running sequences while it is short.

        Victims are running sequences ranked after `seq` — a less important class, or the same
        class and newer — and not yet in this step's batch, the last-ranked first; so the
        first-ranked sequence always makes progress and the cache cannot deadlock. A decode
        with no such victim preempts itself.
        """
        while not self.block_manager.allocate(seq, num_tokens):
            candidates = [s for s in self.running if _rank(s) > _rank(seq) and s.request_id not in scheduled]
            if candidates:
                victim = max(candidates, key=_rank)
                self._preempt(victim)
                preempted.append(victim.request_id)
                continue
            if may_preempt_self:
                self._preempt(seq)
                preempted.append(seq.request_id)
            return False
        scheduled.add(seq.request_id)
        return True

    def _schedule_decodes(self, preempted: list[str], scheduled: set[str]) -> list[ScheduledChunk]:
        """Every running decode gets its token (decode-maximal batching), oldest first."""
        chunks: list[ScheduledChunk] = []
        for seq in sorted((s for s in self.running if s.is_decoding), key=_rank):
            if seq.status is not SequenceStatus.RUNNING:
                continue  # preempted earlier in this loop
            if self._allocate_or_preempt(seq, 1, preempted, scheduled, may_preempt_self=True):
                chunks.append(ScheduledChunk.of(seq, 1))
        return chunks

    def _continue_prefills(self, budget: int, preempted: list[str], scheduled: set[str]) -> list[ScheduledChunk]:
        """Next chunks of prompts that are already running (chunked, partly computed)."""
        chunks: list[ScheduledChunk] = []
        for seq in sorted((s for s in self.running if not s.is_decoding), key=_rank):
            if budget <= 0:
                break
            if seq.status is not SequenceStatus.RUNNING:
                continue
            n = min(seq.num_uncomputed_tokens, budget)
            if self._allocate_or_preempt(seq, n, preempted, scheduled, may_preempt_self=False):
                chunks.append(ScheduledChunk.of(seq, n))
                budget -= n
        return chunks

    def _admit_waiting(self, budget: int, *, whole_prompts: bool) -> list[ScheduledChunk]:
        """Start waiting sequences, oldest first, while budget, slots and blocks allow.

        With `whole_prompts` a prompt is admitted only if all of it fits in the budget (the
        unchunked baseline); otherwise the last one admitted may take a partial chunk.
        """
        chunks: list[ScheduledChunk] = []
        self._order_waiting()
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            if seq.pending_kv is not None:
                n = 1  # handed over from a prefill replica: only the decode token to compute
            else:
                # A request that wants its prompt's logprobs needs the logits of every prompt
                # position, which a prefix-cache hit would skip: it computes its whole prompt.
                if seq.params.prompt_logprobs is None:
                    self.block_manager.match_prefix(seq)
                n = seq.num_uncomputed_tokens if whole_prompts else min(seq.num_uncomputed_tokens, budget)
                if whole_prompts and n > budget and chunks:
                    break
            if not self.block_manager.allocate(seq, n):
                if seq.pending_kv is None:
                    self.block_manager.free(seq)
                    seq.num_computed_tokens = 0
                break
            self.waiting.popleft()
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            chunks.append(ScheduledChunk.of(seq, n))
            budget -= n
        return chunks


class SarathiScheduler(Scheduler):
    """Stall-free batching (Sarathi-Serve, OSDI'24 §4): decodes first, then prefill chunks.

    Every running decode is in every batch, so no prefill ever pauses a decode; prompts fill
    the remaining token budget in chunks, which keeps each iteration's cost nearly uniform.
    """

    def schedule(self) -> ScheduledBatch:
        preempted: list[str] = []
        scheduled: set[str] = set()
        decodes = self._schedule_decodes(preempted, scheduled)
        budget = self.token_budget - len(decodes)
        prefills = self._continue_prefills(budget, preempted, scheduled)
        budget -= sum(c.num_tokens for c in prefills)
        admitted = self._admit_waiting(budget, whole_prompts=False) if not preempted else []
        return ScheduledBatch(tuple(decodes + prefills + admitted), tuple(preempted))


class PrefillFirstScheduler(Scheduler):
    """The baseline (vLLM's original policy): whole waiting prompts run before any decode.

    While prompts wait, running decodes stall; that stall is what the stall-free policy removes.
    The prefill budget is the model length, so one whole prompt always fits.
    """

    def schedule(self) -> ScheduledBatch:
        preempted: list[str] = []
        scheduled: set[str] = set()
        prefill_budget = max(self.chunk_size, self.max_model_len)
        prefills = self._continue_prefills(prefill_budget, preempted, scheduled)
        prefill_budget -= sum(c.num_tokens for c in prefills)
        prefills += self._admit_waiting(prefill_budget, whole_prompts=True)
        if prefills:
            return ScheduledBatch(tuple(prefills), tuple(preempted))
        decodes = self._schedule_decodes(preempted, scheduled)
        return ScheduledBatch(tuple(decodes), tuple(preempted))


POLICIES: dict[str, type[Scheduler]] = {
    "sarathi": SarathiScheduler,
    "prefill_first": PrefillFirstScheduler,
}


def make_scheduler(policy: str, block_manager: BlockManager, **kwargs: int) -> Scheduler:
    try:
        cls = POLICIES[policy]
    except KeyError:
        raise ValueError(f"policy: unknown scheduler policy {policy!r}; choose one of {sorted(POLICIES)}") from None
    return cls(block_manager, **kwargs)
