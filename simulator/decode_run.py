"""Decode runs: the steps a replica takes while it only decodes, computed at once.

Most of a replica's iterations, at the Azure code trace's load, decode the same few sequences
step after step: nothing waits, nothing is being prefilled, and until one of them finishes (or
the cache runs short) every step is the same batch, one token longer. Going through the event
heap, the live scheduler and the post-processing step for each of them cost most of a run at
1,024 replicas. So when the live scheduler hands a replica such a batch, the replica works out
how many more steps will be exactly that — up to the first step at which a sequence finishes,
and no further than its free blocks allow — with each step's time from the cost model, and
schedules one event at the end instead of one per step.

Nothing of the live policies changes: what those steps would do is fixed by the state the
scheduler left (every running sequence decodes, each step allocates one token's room for each
in their running order, none is preempted because the blocks suffice, none finishes before the
last step). The replica carries the steps out (`materialize`) when the run ends, or earlier the
moment anything looks at it or gives it work (`SimReplica.sync`): a request routed to it, a
heartbeat, a change of power mode, a power cut. Then the step in flight becomes an ordinary
step again, built with the scheduler's own `ScheduledChunk.of`. Token times, block tables,
accounting and every later decision come out as if each step had run on its own
(`tests/simulator/test_decode_run.py` runs scenarios both ways and compares them exactly).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from simulator.cost_model import BatchShape
from workers.engine.scheduler import ScheduledBatch, ScheduledChunk
from workers.engine.sequence import Sequence

if TYPE_CHECKING:
    from simulator.replica import SimReplica
    from simulator.request import SimRequest

STEADY_POLICIES = ("sarathi", "prefill_first")  # both give every running decode its token first
# Steps timed ahead at most: a run cut short by new work wastes the times computed past the cut,
# and a busy replica's runs are cut within a few steps; a long run just starts a new one.
MAX_STEPS = 32


@dataclass(eq=False, slots=True)
class DecodeRun:
    """Steps 1..K of the same decoding sequences; step 1 was scheduled by the live scheduler.
    `times[s-1]` is when step s completes, `durations[s-1]` its length (with the replica's
    speed at the start of the run)."""

    seqs: list[Sequence]  # the scheduler's running order
    requests: list[SimRequest]
    times: list[float]
    durations: list[float]
    generation: int
    done: int = 0  # steps already carried out

    @property
    def steps(self) -> int:
        return len(self.times)


def plan(replica: SimReplica, batch: ScheduledBatch, first_duration: float, sim_token: int) -> DecodeRun | None:
    """The run that starts with `batch`, or None when the next step may differ from it."""
    sched = replica.scheduler
    chunks = batch.chunks
    if (replica.stage == "prefill" or batch.preempted or sched.waiting or replica._encode_queue
            or replica.engine.policy not in STEADY_POLICIES or replica.block_manager.enable_prefix_caching
            or len(chunks) != len(sched.running) or not chunks):
        return None
    max_len = replica.max_model_len
    steps = max_len
    for c in chunks:
        seq = c.seq
        if not (c.is_decode and c.samples and c.num_tokens == 1) or sim_token in seq.params.stop_token_ids:
            return None
        n = len(seq.token_ids)
        steps = min(steps, seq.params.max_tokens + seq.num_prompt_tokens - n, max_len - n)
    steps = _fit_blocks(replica, [c.seq for c in chunks], min(MAX_STEPS, max(1, steps)))
    if steps < 2:
        return None
    n = len(chunks)
    context = sum(c.start + 1 for c in chunks)  # step 1's decode context; each step adds n
    cost, speed = replica.cost, replica.speed
    t = replica.loop.now + max(0.0, first_duration)
    times, durations = [t], [first_duration]
    for s in range(1, steps):
        d = cost.batch_time(BatchShape(0, n, 0.0, float(context + n * s), n)) / speed
        t = t + max(0.0, d)
        times.append(t)
        durations.append(d)
    return DecodeRun([c.seq for c in chunks], [replica.requests[c.seq.request_id] for c in chunks], times, durations,
                     replica._generation)


def _fit_blocks(replica: SimReplica, seqs: list[Sequence], steps: int) -> int:
    """The most steps (≤ `steps`) whose one-token allocations the free blocks cover."""
    bm = replica.block_manager
    bs, free = bm.block_size, bm.num_free_blocks
    while steps > 1:
        need = sum(max(0, -(-(s.num_computed_tokens + steps) // bs) - len(s.block_table)) for s in seqs)
        if need <= free:
            break
        steps -= 1
    return steps


def materialize(replica: SimReplica, run: DecodeRun, upto: int, sim_token: int) -> None:
    """Carry out steps done+1..`upto` (< K): each one's tokens at its completion time, then the
    next step's start: one token's room for each sequence in running order, and its accounting."""
    first = run.done
    m = upto - first
    if m <= 0:
        return
    bm = replica.block_manager
    bs = bm.block_size
    # Allocation order of the live steps: by step, then running order; a sequence needs a new
    # block at the step whose token first passes its table's end.
    crossings = []
    for rank, seq in enumerate(run.seqs):
        start = len(seq.block_table) * bs - seq.num_computed_tokens + 1  # the first step (from now) that needs one
        for step in range(max(2, start), m + 2, bs):
            crossings.append((step, rank))
    crossings.sort()
    for step, rank in crossings:
        seq = run.seqs[rank]
        if not bm.allocate(seq, step):
            raise AssertionError(f"{replica.replica_id}: a decode run ran out of blocks its plan had counted")
    times = run.times
    gaps = [times[s] - times[s - 1] for s in range(first + 1, upto)]
    zeros = [sim_token] * m
    for seq, req in zip(run.seqs, run.requests):
        seq.num_computed_tokens += m
        seq.token_ids.extend(zeros)
        if req.first_token_s is None:  # the step finished its prompt (one token was left): its first token
            req.first_token_s = times[first]
        else:
            req.gaps.append(times[first] - req.last_token_s)
        req.gaps.extend(gaps)
        req.last_token_s = times[upto - 1]
        req.tokens += m
    n = len(run.seqs)
    for s in range(first + 1, upto + 1):
        replica._account(run.durations[s], n, 0, 0, n)
    run.done = upto


def batch_now(run: DecodeRun) -> ScheduledBatch:
    """The step in flight as the live scheduler would have built it."""
    return ScheduledBatch(tuple(ScheduledChunk.of(seq, 1) for seq in run.seqs), ())
