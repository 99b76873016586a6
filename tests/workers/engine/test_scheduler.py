"""The policies on hand-built queues: no model, no torch — the scheduler is plain data."""

import pytest

from workers.engine.block_manager import BlockManager
from workers.engine.sampling import SamplingParams
from workers.engine.scheduler import PrefillFirstScheduler, SarathiScheduler, make_scheduler
from workers.engine.sequence import Sequence, SequenceStatus


def make(policy, *, chunk=8, blocks=64, block_size=4, max_seqs=16, max_len=256):
    bm = BlockManager(blocks, block_size, enable_prefix_caching=False)
    return make_scheduler(policy, bm, chunk_size=chunk, max_num_seqs=max_seqs, max_model_len=max_len)


def add(sched, rid, n, arrival):
    s = Sequence(rid, list(range(1, n + 1)), SamplingParams(max_tokens=100), arrival)
    sched.add(s)
    return s


def run_step(sched, next_token=7):
    """What the engine does after a step: mark tokens computed, append sampled tokens."""
    batch = sched.schedule()
    for c in batch.chunks:
        c.seq.num_computed_tokens += c.num_tokens
        if c.samples:
            c.seq.token_ids.append(next_token)
    return batch


def test_policies_are_chosen_by_name():
    assert isinstance(make("sarathi"), SarathiScheduler)
    assert isinstance(make("prefill_first"), PrefillFirstScheduler)
    with pytest.raises(ValueError, match="policy"):
        make("fcfs")


def test_sarathi_chunks_a_long_prompt_within_the_token_budget():
    sched = make("sarathi", chunk=8)
    s = add(sched, "a", 20, 0)
    sizes = []
    while not s.is_decoding:
        batch = run_step(sched)
        assert batch.num_tokens <= 8
        sizes.append(batch.chunks[0].num_tokens)
    assert sizes == [8, 8, 4]
    assert s.num_output_tokens == 1  # only the last chunk samples


def test_sarathi_never_pauses_a_running_decode_for_a_prefill():
    sched = make("sarathi", chunk=8)
    decoders = [add(sched, f"d{i}", 3, i) for i in range(3)]
    while not all(d.is_decoding for d in decoders):
        run_step(sched)
    add(sched, "long", 40, 10)
    for _ in range(6):
        batch = run_step(sched)
        in_batch = {c.seq.request_id for c in batch.chunks if c.is_decode}
        assert in_batch == {"d0", "d1", "d2"}
        assert batch.num_decode_tokens == 3
        assert batch.num_prefill_tokens == 5  # the rest of the budget goes to the prompt


def test_prefill_first_stalls_decodes_while_a_prompt_waits():
    sched = make("prefill_first", chunk=8)
    d = add(sched, "d", 3, 0)
    run_step(sched)
    assert d.is_decoding
    add(sched, "long", 40, 1)
    batch = run_step(sched)
    assert [c.seq.request_id for c in batch.chunks] == ["long"]
    assert batch.num_prefill_tokens == 40  # whole prompt, no chunking
    batch = run_step(sched)
    assert batch.num_decode_tokens == 2 and batch.num_prefill_tokens == 0


def test_preemption_takes_the_newest_sequence_and_requeues_it_first():
    sched = make("sarathi", chunk=64, blocks=4, block_size=4)
    old = add(sched, "old", 7, 0)
    new = add(sched, "new", 7, 1)
    run_step(sched)  # both prefilled: 2 blocks each, 8 slots each; 8 tokens after sampling
    assert old.is_decoding and new.is_decoding
    batch = run_step(sched)  # both decode into their second block: fits exactly
    batch = run_step(sched)  # token 9 needs a third block each: the newest is preempted
    assert batch.preempted == ("new",)
    assert new.status is SequenceStatus.WAITING and new.num_computed_tokens == 0
    assert sched.waiting[0] is new and sched.num_preemptions == 1
    assert [c.seq.request_id for c in batch.chunks] == ["old"]


def test_admission_respects_max_num_seqs():
    sched = make("sarathi", chunk=64, max_seqs=2)
    for i in range(4):
        add(sched, f"r{i}", 4, i)
    batch = run_step(sched)
    assert {c.seq.request_id for c in batch.chunks} == {"r0", "r1"}
    assert len(sched.waiting) == 2


def test_finish_releases_blocks_from_either_queue():
    sched = make("sarathi", chunk=4)
    a = add(sched, "a", 10, 0)
    b = add(sched, "b", 10, 1)
    run_step(sched)
    sched.finish(a, "abort")
    sched.finish(b, "abort")
    assert not sched.has_unfinished()
    assert sched.block_manager.num_free_blocks == sched.block_manager.num_blocks


def test_queued_prefill_tokens_counts_uncomputed_prompt_tokens():
    sched = make("sarathi", chunk=8)
    add(sched, "a", 20, 0)
    add(sched, "b", 5, 1)
    assert sched.queued_prefill_tokens == 25
    run_step(sched)
    assert sched.queued_prefill_tokens == 17


# -- QoS classes (priority, deadline) ---------------------------------------------------------------
def add_qos(sched, rid, n, arrival, priority, deadline=float("inf")):
    s = Sequence(rid, list(range(1, n + 1)), SamplingParams(max_tokens=100), arrival, priority=priority, deadline_s=deadline)
    sched.add(s)
    return s


@pytest.mark.parametrize("policy", ["sarathi", "prefill_first"])
def test_a_more_important_class_is_admitted_before_earlier_arrivals(policy):
    sched = make(policy, chunk=8, max_seqs=1)
    add_qos(sched, "batch", 4, 0, priority=2)
    add_qos(sched, "standard", 4, 1, priority=1)
    add_qos(sched, "interactive", 4, 2, priority=0)
    assert [c.seq.request_id for c in run_step(sched).chunks] == ["interactive"]


def test_within_a_class_the_earlier_deadline_goes_first():
    sched = make("sarathi", chunk=4, max_seqs=1)
    add_qos(sched, "late", 4, 0, priority=0, deadline=200.0)
    add_qos(sched, "soon", 4, 1, priority=0, deadline=100.0)
    assert [c.seq.request_id for c in run_step(sched).chunks] == ["soon"]


def test_preemption_takes_the_less_important_class_before_a_newer_important_one():
    # 4 blocks of 4 tokens: an 8-token prompt and two 3-token ones fill the cache; only the
    # first decode then needs a new block, and the batch sequence is the victim — by arrival
    # alone it would have been the newer interactive one.
    bm = BlockManager(4, 4, enable_prefix_caching=False)
    sched = SarathiScheduler(bm, chunk_size=32, max_num_seqs=4, max_model_len=64)
    first = add_qos(sched, "interactive-1", 8, 0, priority=0)
    batch = add_qos(sched, "batch", 3, 1, priority=2)
    second = add_qos(sched, "interactive-2", 3, 2, priority=0)
    run_step(sched)  # all three prompts: 2 + 1 + 1 blocks, the cache is full
    assert run_step(sched).preempted == ("batch",)
    assert first.status is SequenceStatus.RUNNING and second.status is SequenceStatus.RUNNING
    assert batch.status is SequenceStatus.WAITING
