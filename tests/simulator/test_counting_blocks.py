"""The counting block manager is the live one where prefix caching is off: under the live
scheduler, on the same requests, both give the same batches, preemptions, block tables and
free counts at every step."""

from __future__ import annotations

import random

import pytest

from simulator.counting_blocks import CountingBlockManager, block_manager_for
from workers.engine.block_manager import BlockManager
from workers.engine.postprocess import StopRule, advance
from workers.engine.sampling import SamplingParams
from workers.engine.scheduler import make_scheduler
from workers.engine.sequence import Sequence


def run(bm, policy: str, seed: int, *, blocks: int, block_size: int) -> list[tuple]:
    """Requests arriving at random steps through the live scheduler and postprocess; every step's
    decisions and the manager's state, as plain data."""
    rng = random.Random(seed)
    sched = make_scheduler(policy, bm, chunk_size=96, max_num_seqs=12, max_model_len=blocks * block_size)
    rule = StopRule(blocks * block_size)
    seqs: dict[str, Sequence] = {}
    log = []
    for step in range(400):
        if rng.random() < 0.5 and len(seqs) < 40:
            rid = f"r{step}"
            prompt, output = rng.randint(1, 3 * block_size), rng.randint(1, 4 * block_size)
            seqs[rid] = Sequence(rid, [0] * prompt, SamplingParams(max_tokens=output, ignore_eos=True), step,
                                 priority=rng.choice((0, 0, 1)), deadline_s=rng.random())
            sched.add(seqs[rid])
        batch = sched.schedule()
        sampled = {c.seq.request_id: 0 for c in batch.chunks if c.samples}
        done = [s.request_id for s in advance(batch, sampled, rule, bm) if s.finished]
        for rid in done:
            sched.finish(seqs.pop(rid), "length")
        if rng.random() < 0.02 and seqs:  # an abort
            sched.finish(seqs.pop(rng.choice(sorted(seqs))), "abort")
        log.append(([(c.seq.request_id, c.start, c.num_tokens, c.is_decode, c.samples) for c in batch.chunks],
                    batch.preempted, done, bm.num_free_blocks,
                    {rid: list(s.block_table) for rid, s in seqs.items()}))
    return log


@pytest.mark.parametrize("policy", ["sarathi", "prefill_first"])
@pytest.mark.parametrize("seed", range(6))
def test_same_decisions_and_block_tables_as_the_live_manager(policy, seed):
    blocks, block_size = 20, 8  # tight: preemptions happen
    live = run(BlockManager(blocks, block_size, enable_prefix_caching=False), policy, seed, blocks=blocks, block_size=block_size)
    counted = run(CountingBlockManager(blocks, block_size), policy, seed, blocks=blocks, block_size=block_size)
    assert counted == live
    assert any(step[1] for step in live), "the run should exercise preemption"


def test_prefix_caching_keeps_the_live_manager():
    assert isinstance(block_manager_for(16, 4, True), BlockManager)
    assert isinstance(block_manager_for(16, 4, False), CountingBlockManager)
