"""The post-processing step on hand-built sequences: no model, no tokenizer, no torch. The same
finishing rule ends a sequence in the engine and in the simulator's replica."""

from __future__ import annotations

import pytest

from simulator.events import EventLoop
from simulator.replica import SimReplica
from simulator.request import SimRequest
from simulator.workload import TraceRequest
from workers.engine.block_manager import BlockManager
from workers.engine.config import EngineConfig
from workers.engine.postprocess import (
    SampledToken,
    StopRule,
    advance,
    cut_at_stop_string,
    decide,
    stop_hold_back,
    stops_on_token,
    visible_text,
)
from workers.engine.sampling import SamplingParams
from workers.engine.scheduler import ScheduledBatch, ScheduledChunk, make_scheduler
from workers.engine.sequence import Sequence, SequenceStatus

EOS = 2
RULE = StopRule(max_model_len=64, eos_token_ids=frozenset({EOS}))


def seq_with(outputs: list[int], *, prompt: int = 4, **params) -> Sequence:
    """A sequence that has already generated `outputs` (the last one is the token to decide on)."""
    return Sequence("r", [9] * prompt + outputs, SamplingParams(**{"max_tokens": 16, **params}), 0, num_prompt_tokens=prompt)


# -- the finishing rule --------------------------------------------------------------------------
def test_an_ordinary_token_finishes_nothing():
    assert decide(seq_with([5]), 5, RULE) == SampledToken("r", 5, None, False)


def test_a_stop_token_id_stops_the_sequence():
    step = decide(seq_with([5, 7], stop_token_ids=(7,)), 7, RULE)
    assert (step.finish_reason, step.hands_off, step.finished) == ("stop", False, True)


def test_eos_stops_unless_the_request_ignores_it():
    assert decide(seq_with([EOS]), EOS, RULE).finish_reason == "stop"
    assert decide(seq_with([EOS], ignore_eos=True), EOS, RULE).finish_reason is None
    assert stops_on_token(EOS, SamplingParams(ignore_eos=True), {EOS}) is False
    # a stop token id listed by the request still stops it, EOS ignored or not
    assert stops_on_token(EOS, SamplingParams(ignore_eos=True, stop_token_ids=(EOS,)), {EOS}) is True


def test_max_tokens_ends_the_sequence_with_length():
    assert decide(seq_with([5, 5], max_tokens=3), 5, RULE).finish_reason is None
    assert decide(seq_with([5, 5, 5], max_tokens=3), 5, RULE).finish_reason == "length"


def test_the_context_length_ends_the_sequence_with_length():
    rule = StopRule(max_model_len=7)
    assert decide(seq_with([5, 5]), 5, rule).finish_reason is None  # 6 tokens
    assert decide(seq_with([5, 5, 5]), 5, rule).finish_reason == "length"  # 7 tokens fill the context


def test_a_stop_outranks_length_on_the_same_token():
    assert decide(seq_with([5, 7], max_tokens=2, stop_token_ids=(7,)), 7, RULE).finish_reason == "stop"
    assert decide(seq_with([5, 5], max_tokens=2), 5, RULE, stopped_by_text=True).finish_reason == "stop"


def test_a_prefill_only_replica_hands_off_after_the_first_token_unless_it_finished():
    rule = StopRule(max_model_len=64, eos_token_ids=frozenset({EOS}), prefill_only=True)
    step = decide(seq_with([5]), 5, rule)
    assert (step.finish_reason, step.hands_off, step.finished) == (None, True, True)
    assert decide(seq_with([5], max_tokens=1), 5, rule) == SampledToken("r", 5, "length", False)
    assert decide(seq_with([EOS]), EOS, rule) == SampledToken("r", EOS, "stop", False)


# -- advancing a batch ---------------------------------------------------------------------------
def running(rid: str, prompt: int, computed: int, bm: BlockManager, *, first: int = 10, **params) -> Sequence:
    """A running sequence with `computed` of its prompt's tokens (first, first + 1, ...) in the cache."""
    seq = Sequence(rid, list(range(first, first + prompt)), SamplingParams(**{"max_tokens": 16, **params}), 0,
                   num_computed_tokens=computed)
    assert bm.allocate(seq, prompt - computed)
    seq.status = SequenceStatus.RUNNING
    return seq


def test_advance_computes_every_chunk_and_appends_only_the_sampled_tokens_in_batch_order():
    bm = BlockManager(16, 4, enable_prefix_caching=True)
    mid = running("mid", 12, 0, bm)  # a prefill chunk of 8 out of 12: samples nothing
    end = running("end", 6, 4, bm, first=100, max_tokens=1)  # the last 2 prompt tokens: samples, and ends
    dec = running("dec", 5, 4, bm, first=200)  # a decode
    batch = ScheduledBatch((ScheduledChunk.of(mid, 8), ScheduledChunk.of(end, 2), ScheduledChunk.of(dec, 1)))
    steps = advance(batch, {"end": 3, "dec": 4}, RULE, bm)
    assert [(s.request_id, s.token, s.finish_reason) for s in steps] == [("end", 3, "length"), ("dec", 4, None)]
    assert (mid.num_computed_tokens, mid.num_tokens) == (8, 12)
    assert (end.num_computed_tokens, end.output_token_ids) == (6, [3])
    assert (dec.num_computed_tokens, dec.output_token_ids) == (5, [4])
    # the two full blocks of `mid` and the first of `end` and `dec` joined the prefix cache
    assert len(bm.cached_block_hashes()) == 2 + 1 + 1


def test_advance_leaves_a_sequence_alone_that_ended_while_its_batch_ran():
    bm = BlockManager(16, 4, enable_prefix_caching=False)
    seq = running("gone", 5, 4, bm)
    seq.status = SequenceStatus.FINISHED
    assert advance(ScheduledBatch((ScheduledChunk.of(seq, 1),)), {"gone": 1}, RULE, bm) == []
    assert (seq.num_computed_tokens, seq.num_tokens) == (4, 5)


def test_a_stop_string_reported_by_the_text_side_ends_the_sequence():
    bm = BlockManager(16, 4, enable_prefix_caching=False)
    a, b = running("a", 5, 4, bm), running("b", 5, 4, bm)
    batch = ScheduledBatch((ScheduledChunk.of(a, 1), ScheduledChunk.of(b, 1)))
    steps = advance(batch, {"a": 5, "b": 5}, RULE, bm, stopped_by_text={"b"})
    assert [s.finish_reason for s in steps] == [None, "stop"]


# -- the text side -------------------------------------------------------------------------------
def test_the_hold_back_is_one_less_than_the_longest_stop_string():
    assert stop_hold_back(()) == 0
    assert stop_hold_back(("x", "STOP", "ab")) == 3


@pytest.mark.parametrize(
    ("text", "emitted", "stop", "expected"),
    [
        ("hello world", 0, (), None),
        ("hello world", 0, ("xyz",), None),
        ("hello world", 0, ("o w", "ld"), "hell"),  # the earliest stop string wins
        ("hello world", 6, ("lo w",), "hel"),  # a stop string straddling text already shown
        ("", 0, ("x",), None),  # no tokenizer: never any text, so never a stop string
    ],
)
def test_text_is_cut_where_the_earliest_stop_string_begins(text, emitted, stop, expected):
    assert cut_at_stop_string(text, emitted, stop) == expected


def test_a_running_sequence_holds_back_what_may_begin_a_stop_string_and_never_takes_text_back():
    assert visible_text("hello wor", 0, 3, final=False) == ("hello ", 6)
    assert visible_text("hello wor", 8, 3, final=False) == ("", 8)  # shown once, shown for good
    assert visible_text("hello world", 6, 3, final=False) == ("wo", 8)


def test_final_text_is_shown_whole():
    assert visible_text("hello world", 8, 3, final=True) == ("rld", 11)


def test_without_a_tokenizer_there_is_never_text_to_show():
    assert visible_text("", 0, 0, final=False) == ("", 0)
    assert visible_text("", 0, 4, final=True) == ("", 0)


# -- the simulator's replica ---------------------------------------------------------------------
class _FixedCost:
    def batch_time(self, shape) -> float:
        return 0.01

    def encode_time(self, num_images: int) -> float:
        return 0.0


class _Sink:
    def __init__(self) -> None:
        self.ended: dict[str, str] = {}

    def on_finished(self, req, now_s, replica) -> None:
        self.ended[req.request_id] = "finished"

    def on_handoff(self, req, now_s, replica) -> None:
        self.ended[req.request_id] = "handoff"

    def on_encoded(self, req, now_s, replica) -> None: ...

    def on_idle(self, replica) -> None: ...


def _rule_says(prompt: int, output: int, stage: str, max_model_len: int) -> tuple[str, int]:
    """Walk a hand-built sequence token by token through the rule, as the engine would."""
    params = SamplingParams(max_tokens=output, ignore_eos=True)
    first = [0] if stage == "decode" else []  # a hand-off arrives with its first token
    seq = Sequence("x", [0] * prompt + first, params, 0, num_prompt_tokens=prompt)
    rule = StopRule(max_model_len, prefill_only=stage == "prefill")
    while True:
        seq.token_ids.append(0)
        step = decide(seq, 0, rule)
        if step.finished:
            return step.finish_reason or "handoff", seq.num_output_tokens


@pytest.mark.parametrize("stage", ["colocated", "prefill", "decode"])
def test_the_simulated_replica_ends_each_request_where_the_rule_does(stage):
    max_model_len = 96
    requests = [(10, 1), (30, 2), (20, 17), (50, 60), (90, 20), (5, 40)]  # (50, 60) and (90, 20) reach the context
    cfg = EngineConfig(chunk_size=32, max_num_seqs=4, block_size=8, num_kv_blocks=64, enable_prefix_caching=True)
    sink = _Sink()
    replica = SimReplica("r", stage, "local", EventLoop(), _FixedCost(), sink, ready=True, engine=cfg,
                         max_model_len=max_model_len)
    ends: dict[str, tuple[str, int]] = {}
    finish = replica.scheduler.finish

    def record(seq, reason):
        ends[seq.request_id] = (reason, seq.num_output_tokens)
        finish(seq, reason)

    replica.scheduler.finish = record
    for i, (prompt, output) in enumerate(requests):
        req = SimRequest(TraceRequest(f"q{i}", 0.0, prompt, output))
        replica.add_handoff(req) if stage == "decode" else replica.add(req)
    replica.loop.run()

    expected = {f"q{i}": _rule_says(p, o, stage, max_model_len) for i, (p, o) in enumerate(requests)}
    assert ends == expected
    if stage == "colocated":  # the trace's length, or what is left of the context
        assert [ends[f"q{i}"] for i in (0, 2, 3, 4)] == [("length", 1), ("length", 17), ("length", 46), ("length", 6)]
    if stage == "prefill":  # one token each, then on to a decode replica unless that was all
        assert ends["q0"] == ("length", 1) and ends["q1"] == ("handoff", 1)
    assert sink.ended == {rid: "handoff" if reason == "handoff" else "finished" for rid, (reason, _) in ends.items()}
    assert replica.block_manager.num_free_blocks == replica.block_manager.num_blocks
