"""A simulated replica: Pavana's own batch scheduler and block manager, with the forward pass
replaced by a cost model's prediction of how long the batch takes.

Each iteration is the engine's loop (`LLMEngine.step`) with time in place of torch: ask the
scheduler for a batch, ask the cost model for its duration, and when that much simulated time
has passed, advance the sequences exactly as the engine's postprocess does. Preemption,
chunking, admission and KV accounting are therefore the real policies' decisions.

A colocated replica without a vision pool beside it (a monolithic deployment) runs the image
encoder inside its own iterations, so encoding stalls its decodes, as it would on one GPU.
A `VisionReplica` is a vision-pool replica: images in, one request at a time, FIFO.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Protocol

from simulator import decode_run
from simulator.cost_model import CostModel, shape_of
from simulator.counting_blocks import block_manager_for
from simulator.events import EventLoop, Kind
from simulator.request import SimRequest
from workers.engine.config import EngineConfig
from workers.engine.postprocess import StopRule, advance
from workers.engine.sampling import SamplingParams
from workers.engine.scheduler import ScheduledBatch, make_scheduler
from workers.engine.sequence import Sequence, SequenceStatus
from workers.engine.step_rates import Step, split
from workers.engine.token_budget import BUDGET_STEPS, token_budget

_SIM_TOKEN = 0  # the token every simulated step samples: the simulator has no vocabulary and no text


def _params_for(req: SimRequest) -> SamplingParams:
    """The trace's output length as `max_tokens`, EOS ignored: the engine's own finishing rule
    (`workers.engine.postprocess.decide`) then ends the request at the token the trace says."""
    return _params_with_max_tokens(max(1, req.trace.output_tokens))


@lru_cache(maxsize=4096)
def _params_with_max_tokens(max_tokens: int) -> SamplingParams:
    # Cached: sampling parameters are immutable, and a long trace repeats few output lengths.
    return SamplingParams(max_tokens=max_tokens, ignore_eos=True)


class ReplicaSink(Protocol):
    """What a replica tells the cluster about its requests (token times go on the request itself)."""

    def on_finished(self, req: SimRequest, now_s: float, replica: BaseReplica) -> None: ...
    def on_handoff(self, req: SimRequest, now_s: float, replica: BaseReplica) -> None: ...
    def on_encoded(self, req: SimRequest, now_s: float, replica: BaseReplica) -> None: ...
    def on_idle(self, replica: BaseReplica) -> None: ...


@dataclass(slots=True)
class Accounting:
    """Busy time and tokens since the last heartbeat, for the autoscaler's signals."""

    busy_s: float = 0.0
    tokens: int = 0  # output tokens, as a live replica counts them
    images: int = 0
    iterations: int = 0
    # Tokens of each kind and the step time attributed to each (`workers.engine.step_rates`).
    prefill_tokens: int = 0
    decode_tokens: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0


@dataclass(eq=False)
class BaseReplica:
    replica_id: str
    stage: str  # vision | prefill | decode | colocated
    site: str
    loop: EventLoop
    cost: CostModel
    sink: ReplicaSink
    mode: str = ""  # the power mode it runs in
    power_w: float = 0.0
    speed: float = 1.0  # throughput fraction of the power mode it runs in
    started_s: float = 0.0
    ready: bool = False  # cold start done
    draining: bool = False  # takes no new work; removed once empty
    alive: bool = True
    busy: bool = False
    rank_id: str = ""  # pool@site:replica_id, by which a site's replicas rank themselves for power modes
    acct: Accounting = field(default_factory=Accounting)
    total: Accounting = field(default_factory=Accounting)
    _generation: int = 0

    @property
    def accepting(self) -> bool:
        return self.alive and self.ready and not self.draining

    def sync(self) -> None:
        """Bring the replica's state up to the current time (see `SimReplica.sync`)."""

    def kill(self) -> list[SimRequest]:
        """Stop at once (power cut, removal); returns the requests it held, now lost."""
        self.sync()
        self.alive = False
        self._generation += 1
        return self._drop_all()

    def _drop_all(self) -> list[SimRequest]:
        raise NotImplementedError

    def _account(self, duration: float, tokens: int, images: int = 0, prefill_tokens: int = 0, decode_tokens: int = 0) -> None:
        prefill_s, decode_s = split(Step(duration, prefill_tokens, decode_tokens))
        for a in (self.acct, self.total):
            a.busy_s += duration
            a.tokens += tokens
            a.images += images
            a.iterations += 1
            a.prefill_tokens += prefill_tokens
            a.decode_tokens += decode_tokens
            a.prefill_s += prefill_s
            a.decode_s += decode_s


@dataclass(eq=False)
class SimReplica(BaseReplica):
    """An LLM replica: colocated, prefill-only or decode-only, by `stage`."""

    engine: EngineConfig = field(default_factory=EngineConfig)
    max_model_len: int = 0
    encodes_images: bool = False  # monolithic: run the vision encoder inside iterations
    encoder_budget_tokens: int = 0  # monolithic: image tokens encoded per iteration at most (0: no bound)
    decode_runs: bool = True  # take steps that only decode in one event (`simulator.decode_run`)

    def __post_init__(self) -> None:
        cfg = self.engine
        capacity = cfg.num_kv_blocks * cfg.block_size
        self.max_model_len = min(self.max_model_len or capacity, capacity)
        self.block_manager = block_manager_for(cfg.num_kv_blocks, cfg.block_size, cfg.enable_prefix_caching)
        self.scheduler = make_scheduler(
            cfg.policy, self.block_manager, chunk_size=cfg.chunk_size, max_num_seqs=cfg.max_num_seqs,
            max_model_len=self.max_model_len,
        )
        self.requests: dict[str, SimRequest] = {}
        self._seqs: dict[str, Sequence] = {}
        self._recent_steps: deque[Step] = deque(maxlen=BUDGET_STEPS)  # for the TBT-bound token budget
        self._arrivals = 0
        self._encode_queue: deque[SimRequest] = deque()
        # Prompt tokens still to compute (waiting or mid-prefill), kept incrementally: the
        # router reads it on every arrival, and summing the queues each time would cost more
        # than the scheduling itself. Equal to `scheduler.queued_prefill_tokens` (tested).
        self._queued_prefill = 0
        self._counted: dict[str, int] = {}
        self.last_batch: ScheduledBatch | None = None
        self._stop_rule = StopRule(self.max_model_len, prefill_only=self.stage == "prefill")
        # Told whenever `queued_prefill_tokens` changes: the router's index of replicas by load.
        self.on_load_change: Callable[[SimReplica], None] | None = None
        self._run: decode_run.DecodeRun | None = None

    # -- load, as routing stats and heartbeats report it ------------------------------------------
    @property
    def queued_prefill_tokens(self) -> int:
        return self._queued_prefill + sum(r.prompt_tokens for r in self._encode_queue)

    @property
    def num_running(self) -> int:
        return len(self.scheduler.running)

    @property
    def num_waiting(self) -> int:
        return len(self.scheduler.waiting) + len(self._encode_queue)

    @property
    def num_requests(self) -> int:
        return len(self.requests)

    def fits(self, req: SimRequest) -> bool:
        """Whether the request's prompt and output fit this replica's context (else it is rejected)."""
        return req.prompt_tokens + req.trace.output_tokens <= self.max_model_len

    # -- requests in ---------------------------------------------------------------------------------
    def add(self, req: SimRequest) -> None:
        """A new request (colocated or prefill stage)."""
        self.sync()
        self.requests[req.request_id] = req
        if self.encodes_images and req.trace.num_images:
            self._encode_queue.append(req)
            self._load_changed()
        else:
            self._enqueue(req, self._prompt_sequence(req))
        self._kick()

    def add_handoff(self, req: SimRequest) -> None:
        """A prefilled request whose KV has arrived (decode stage): one token to compute."""
        self.sync()
        self.requests[req.request_id] = req
        n = req.prompt_tokens
        seq = Sequence(req.request_id, [0] * (n + 1), _params_for(req), self._next_index(), num_prompt_tokens=n,
                       num_computed_tokens=n, pending_kv=True, priority=req.priority, deadline_s=req.deadline_s)
        self._enqueue(req, seq)
        self._kick()

    def _take_encoder_batch(self) -> list[SimRequest]:
        """The queued image requests this iteration encodes: whole requests, first come first
        served, while their image tokens fit the encoder budget (at least one request), as
        vLLM V1 bounds each step's encoder work by max(token budget, largest item); 0 means
        everything queued at once."""
        taken, tokens = [], 0
        while self._encode_queue:
            req = self._encode_queue[0]
            if taken and self.encoder_budget_tokens and tokens + req.image_tokens > self.encoder_budget_tokens:
                break
            taken.append(self._encode_queue.popleft())
            tokens += req.image_tokens
        return taken

    def _prompt_sequence(self, req: SimRequest) -> Sequence:
        """The request's prompt as the engine would queue it, with its class's priority and
        first-token deadline (the scheduler orders waiting work by them)."""
        return Sequence(req.request_id, [0] * req.prompt_tokens, _params_for(req), self._next_index(),
                        priority=req.priority, deadline_s=req.deadline_s)

    def _next_index(self) -> int:
        self._arrivals += 1
        return self._arrivals

    def _enqueue(self, req: SimRequest, seq: Sequence) -> None:
        self._seqs[req.request_id] = seq
        self.scheduler.add(seq)
        self._recount(seq)

    def _recount(self, seq: Sequence) -> None:
        if seq.status is SequenceStatus.FINISHED:
            new = 0
        elif seq.status is SequenceStatus.WAITING or not seq.is_decoding:
            new = seq.num_uncomputed_tokens
        else:
            new = 0
        old = self._counted.get(seq.request_id, 0)
        if new == old:
            return
        self._queued_prefill += new - old
        if new:
            self._counted[seq.request_id] = new
        else:
            del self._counted[seq.request_id]
        self._load_changed()

    def _load_changed(self) -> None:
        if self.on_load_change is not None:
            self.on_load_change(self)

    # -- the loop ------------------------------------------------------------------------------------
    def _kick(self) -> None:
        if self.busy or not self.alive or not self.ready:
            return
        encode_s, encoded = 0.0, []
        if self._encode_queue:
            encoded = self._take_encoder_batch()
            images = sum(r.trace.num_images for r in encoded)
            encode_s = self.cost.encode_time(images)
            for req in encoded:
                req.stages.append("vision")
                self._enqueue(req, self._prompt_sequence(req))
            self._load_changed()
        batch = self.scheduler.schedule()
        for rid in batch.preempted:
            self._recount(self._seqs[rid])
        if not batch and not encoded:
            self.sink.on_idle(self)
            return
        for chunk in batch.chunks:
            if chunk.seq.pending_kv is not None:
                chunk.seq.pending_kv = None  # the engine writes the handed-off KV into its cache here
        duration = (encode_s + (self.cost.batch_time(shape_of(batch)) if batch else 0.0)) / self.speed
        self.busy = True
        self.last_batch = batch
        self._account(duration, sum(c.samples for c in batch.chunks), sum(r.trace.num_images for r in encoded),
                      batch.num_prefill_tokens, batch.num_decode_tokens)
        self._follow_tbt_target(Step(duration, batch.num_prefill_tokens, batch.num_decode_tokens))
        run = decode_run.plan(self, batch, duration, _SIM_TOKEN) if self.decode_runs and not encoded else None
        if run is not None:
            self._run = run
            self.loop.at(run.times[-1], Kind.COMPLETION, self._end_run, run)
        else:
            self.loop.after(duration, Kind.COMPLETION, self._complete, batch, self._generation)

    def _follow_tbt_target(self, step: Step) -> None:
        """The engine's TBT-bound budget (`workers/engine/token_budget.py`), as `AsyncEngine`
        applies it; a slowed replica's steps are longer, so the target is met the same way."""
        target = self.engine.tbt_target_s
        if target is None or step.prefill_tokens == 0:  # the steps the budget shapes (`token_budget.py`)
            return
        self._recent_steps.append(step)
        budget = token_budget(list(self._recent_steps), tbt_target_s=target, chunk_size=self.scheduler.chunk_size,
                              running_decodes=len(self.scheduler.running))
        if budget is not None:
            self.scheduler.token_budget = budget

    # -- decode runs (simulator.decode_run) --------------------------------------------------------
    def sync(self) -> None:
        """Carry out the steps of a decode run done by now and make the step in flight an
        ordinary one; called before anything reads or changes this replica. At an instant where
        a step completes, events that come before completions (power, scaling) see it still
        running, as they would have."""
        run = self._run
        if run is None:
            return
        loop = self.loop
        times, now = run.times, loop.now
        done = run.done
        if loop.kind > Kind.COMPLETION:
            while done < run.steps - 1 and times[done] <= now:
                done += 1
        else:
            while done < run.steps - 1 and times[done] < now:
                done += 1
        decode_run.materialize(self, run, done, _SIM_TOKEN)
        self._run = None
        batch = decode_run.batch_now(run)
        self.last_batch = batch
        loop.at(times[done], Kind.COMPLETION, self._complete, batch, run.generation)

    def _end_run(self, run: decode_run.DecodeRun) -> None:
        if run is not self._run:
            return  # synced (its last step is an ordinary one now) or killed
        self._run = None
        decode_run.materialize(self, run, run.steps - 1, _SIM_TOKEN)
        batch = decode_run.batch_now(run)
        self.last_batch = batch
        self._complete(batch, run.generation)

    def _complete(self, batch: ScheduledBatch, generation: int) -> None:
        if generation != self._generation:
            return  # killed while this batch ran
        now = self.loop.now
        self.busy = False
        # The engine's own post-processing step; only the sampled token is made up.
        rule = self._stop_rule
        sampled = {c.seq.request_id: _SIM_TOKEN for c in batch.chunks if c.samples}
        for step in advance(batch, sampled, rule, self.block_manager):
            req = self.requests[step.request_id]
            req.token(now)
            if step.finished:
                self._finish(self._seqs[step.request_id], step.finish_reason or "handoff")
                if step.hands_off:
                    self.sink.on_handoff(req, now, self)
                else:
                    self.sink.on_finished(req, now, self)
        running = SequenceStatus.RUNNING
        for chunk in batch.chunks:
            if not chunk.is_decode and chunk.seq.status is running:
                self._recount(chunk.seq)  # a running decode's count stays 0: only prefill chunks change it
        self._kick()

    def _finish(self, seq: Sequence, reason: str) -> None:
        self.scheduler.finish(seq, reason)
        self._recount(seq)
        del self._seqs[seq.request_id]
        del self.requests[seq.request_id]

    def _drop_all(self) -> list[SimRequest]:
        self._run = None
        lost = list(self.requests.values())
        for seq in list(self._seqs.values()):
            self.scheduler.finish(seq, "abort")
        self._seqs.clear()
        self.requests.clear()
        self._encode_queue.clear()
        self._counted.clear()
        self._queued_prefill = 0
        self.busy = False
        self._load_changed()
        return lost


@dataclass(eq=False)
class VisionReplica(BaseReplica):
    """A vision-pool replica: encodes one request's images at a time, first come first served."""

    def __post_init__(self) -> None:
        self.queue: deque[SimRequest] = deque()
        self.current: SimRequest | None = None

    @property
    def queued_images(self) -> int:
        return sum(r.trace.num_images for r in self.queue) + (self.current.trace.num_images if self.current else 0)

    @property
    def num_requests(self) -> int:
        return len(self.queue) + (self.current is not None)

    def add(self, req: SimRequest) -> None:
        self.queue.append(req)
        self._kick()

    def _kick(self) -> None:
        if self.busy or not self.alive or not self.ready:
            return
        if not self.queue:
            self.sink.on_idle(self)
            return
        self.current = self.queue.popleft()
        duration = self.cost.encode_time(self.current.trace.num_images) / self.speed
        self.busy = True
        self._account(duration, 0, self.current.trace.num_images)
        self.loop.after(duration, Kind.COMPLETION, self._complete, self._generation)

    def _complete(self, generation: int) -> None:
        if generation != self._generation:
            return
        req, self.current, self.busy = self.current, None, False
        self.sink.on_encoded(req, self.loop.now, self)
        self._kick()

    def _drop_all(self) -> list[SimRequest]:
        lost = list(self.queue) + ([self.current] if self.current else [])
        self.queue.clear()
        self.current = None
        self.busy = False
        return lost

