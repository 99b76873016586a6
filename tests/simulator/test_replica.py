"""A simulated replica runs Pavana's real scheduler and block manager: for the same requests it
builds the very batches the engine's own loop would, and frees every block at the end."""

from __future__ import annotations

import pytest
from conftest import RecordingCost

from simulator.cost_model import shape_of
from simulator.events import EventLoop
from simulator.replica import SimReplica
from simulator.request import SimRequest
from simulator.workload import TraceRequest
from workers.engine.block_manager import BlockManager
from workers.engine.config import EngineConfig
from workers.engine.sampling import SamplingParams
from workers.engine.scheduler import make_scheduler
from workers.engine.sequence import Sequence

REQUESTS = [(60, 40), (300, 5), (45, 30), (130, 12), (20, 50), (200, 3)]


def reference_shapes(policy: str, cfg: EngineConfig, requests) -> tuple[list, int]:
    """The engine's loop (schedule ▸ run ▸ postprocess) with the forward pass left out."""
    bm = BlockManager(cfg.num_kv_blocks, cfg.block_size, cfg.enable_prefix_caching)
    sched = make_scheduler(policy, bm, chunk_size=cfg.chunk_size, max_num_seqs=cfg.max_num_seqs,
                           max_model_len=cfg.num_kv_blocks * cfg.block_size)
    outputs = {}
    for i, (prompt, output) in enumerate(requests):
        sched.add(Sequence(f"r{i}", [0] * prompt, SamplingParams(), i + 1))
        outputs[f"r{i}"] = output
    shapes = []
    while sched.has_unfinished():
        batch = sched.schedule()
        assert batch, "the reference loop stalled"
        shapes.append(shape_of(batch))
        for chunk in batch.chunks:
            seq = chunk.seq
            seq.num_computed_tokens += chunk.num_tokens
            bm.commit_full_blocks(seq)
            if chunk.samples:
                seq.token_ids.append(0)
                if seq.num_output_tokens >= outputs[seq.request_id]:
                    sched.finish(seq, "length")
    assert bm.num_free_blocks == bm.num_blocks
    return shapes, sched.num_preemptions


def simulated(policy: str, cfg: EngineConfig, requests, sink):
    loop = EventLoop()
    cost = RecordingCost()
    replica = SimReplica("r", "colocated", "local", loop, cost, sink, ready=False,
                         engine=EngineConfig(**{**_fields(cfg), "policy": policy}))
    mismatches = []
    cost.on_batch = lambda: mismatches.append(
        (replica.queued_prefill_tokens, replica.scheduler.queued_prefill_tokens)) if (
        replica.queued_prefill_tokens != replica.scheduler.queued_prefill_tokens) else None
    reqs = [SimRequest(TraceRequest(f"r{i}", 0.0, p, o)) for i, (p, o) in enumerate(requests)]
    for r in reqs:
        replica.add(r)
    replica.ready = True
    replica._kick()
    loop.run()
    return cost.shapes, replica, reqs, mismatches


def _fields(cfg: EngineConfig) -> dict:
    return {name: getattr(cfg, name) for name in cfg.__dataclass_fields__}


@pytest.mark.parametrize("policy", ["sarathi", "prefill_first"])
@pytest.mark.parametrize("num_kv_blocks", [256, 10])
def test_batches_equal_the_real_schedulers_decisions(policy, num_kv_blocks, sink):
    cfg = EngineConfig(chunk_size=64, max_num_seqs=4, block_size=16, num_kv_blocks=num_kv_blocks, enable_prefix_caching=False)
    requests = REQUESTS if num_kv_blocks > 100 else [(p, o) for p, o in REQUESTS if p + o <= 10 * 16]
    expected, preemptions = reference_shapes(policy, cfg, requests)
    shapes, replica, reqs, mismatches = simulated(policy, cfg, requests, sink)
    assert shapes == expected
    if num_kv_blocks == 10:
        assert preemptions > 0 and replica.scheduler.num_preemptions == preemptions  # the tight cache really preempts
    assert not mismatches  # the router's incremental load equals the scheduler's own count
    assert [r.tokens for r in reqs] == [o for _, o in requests]
    assert len(sink.finished) == len(requests)
    # no leak: every block back in the pool, no request left behind
    assert replica.block_manager.num_free_blocks == replica.block_manager.num_blocks
    assert not replica.requests and replica.queued_prefill_tokens == 0


def test_stall_free_keeps_decodes_in_every_batch(sink):
    """With sarathi, once a request decodes, every batch holds its token until it finishes."""
    cfg = EngineConfig(chunk_size=32, max_num_seqs=8, block_size=16, num_kv_blocks=256, enable_prefix_caching=False)
    shapes, *_ = simulated("sarathi", cfg, [(8, 20), (400, 2)], sink)
    first_decode = next(i for i, s in enumerate(shapes) if s.decode_tokens)
    assert all(s.decode_tokens >= 1 for s in shapes[first_decode:first_decode + 19])
    assert all(s.prefill_tokens + s.decode_tokens <= 32 for s in shapes)


def test_step_time_divides_by_the_power_modes_throughput(sink):
    loop = EventLoop()
    cost = RecordingCost(step_s=0.1)
    replica = SimReplica("r", "colocated", "local", loop, cost, sink, ready=True, speed=0.5, engine=EngineConfig(chunk_size=64))
    req = SimRequest(TraceRequest("a", 0.0, 10, 3))
    replica.add(req)
    loop.run()
    assert req.first_token_s == pytest.approx(0.2)
    assert req.gaps == pytest.approx([0.2, 0.2])
