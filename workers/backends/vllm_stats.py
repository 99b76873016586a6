"""A vLLM engine's figures as Pavana's `BackendStats`, from what vLLM's stat loggers are given.

vLLM calls every stat logger's `record(scheduler_stats, iteration_stats, ...)` once per engine
step, in the process that holds `AsyncLLM` (the replica's): `SchedulerStats` has
`num_running_reqs`, `num_waiting_reqs` and `kv_cache_usage` (a fraction of the KV blocks);
`IterationStats` has the step's `num_prompt_tokens` (the whole prompt of each request whose
prefill completed in the step) and `num_generation_tokens`. `StepObservation` is those values,
plain; `StatsWindow` turns the last seconds of them into rates; `backend_stats` fills every
field. All of it is pure and unit-tested on a CPU.

What is estimated, and how:
- busy time: the time from one step's record to the next, while requests were running (a
  step that follows an idle gap has no known duration and counts for tokens/s only);
- prefill / decode tokens per busy second: each step's time split between its prompt and
  generated tokens in proportion to their numbers (`workers/engine/step_rates.py`);
- queued prefill tokens: prompts this backend submitted that have no output yet (vLLM does not
  report how much of a prompt it has computed);
- free KV blocks: total × (1 − usage);
- prefix hashes: an estimate of vLLM's prefix cache, which does not report its content:
  `PrefixHashLRU` keeps the full-block hashes of the prompts this engine saw (the router's
  `prefix_block_hashes`, same block size), most recent last, at most as many as the engine
  has KV blocks, the oldest forgotten first — as vLLM evicts least recently used blocks.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass

from workers.backends.contract import BackendStats
from workers.engine.step_rates import Step, rates


@dataclass(frozen=True, slots=True)
class StepObservation:
    time_s: float  # monotonic
    running: int
    waiting: int
    kv_cache_usage: float  # 0..1
    prompt_tokens: int
    generation_tokens: int


class StatsWindow:
    """The last `window_s` seconds of engine steps."""

    def __init__(self, window_s: float = 10.0) -> None:
        if window_s <= 0:
            raise ValueError(f"window_s must be > 0, got {window_s}")
        self.window_s = window_s
        self.latest: StepObservation | None = None
        self._steps: deque[tuple[float, Step, int]] = deque()  # (end time, step, tokens generated)

    def observe(self, obs: StepObservation) -> None:
        """One step's record. The time since the previous record was the step's own while
        requests were running; after an idle gap the step's duration is unknown, so its tokens
        count towards tokens/s but not towards the busy time and the rates."""
        previous, self.latest = self.latest, obs
        if previous is None:
            return
        if previous.running > 0:
            step = Step(max(0.0, obs.time_s - previous.time_s), obs.prompt_tokens, obs.generation_tokens)
        else:
            step = Step(0.0, 0, 0)
        self._steps.append((obs.time_s, step, obs.generation_tokens))
        self._forget(obs.time_s)

    def _forget(self, now: float) -> None:
        while self._steps and now - self._steps[0][0] > self.window_s:
            self._steps.popleft()

    def steps(self, now: float) -> list[Step]:
        self._forget(now)
        return [s for _, s, _ in self._steps]

    def generated_tokens(self, now: float) -> int:
        self._forget(now)
        return sum(n for _, _, n in self._steps)


class PrefixHashLRU:
    """Full-block prefix hashes of recent prompts, bounded like the cache it estimates."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(0, capacity)
        self._hashes: OrderedDict[int, None] = OrderedDict()

    def resize(self, capacity: int) -> None:
        self.capacity = max(0, capacity)
        self._trim()

    def add(self, hashes: Iterable[int]) -> None:
        for h in hashes:
            self._hashes[h] = None
            self._hashes.move_to_end(h)
        self._trim()

    def _trim(self) -> None:
        while len(self._hashes) > self.capacity:
            self._hashes.popitem(last=False)

    def snapshot(self) -> frozenset[int]:
        return frozenset(self._hashes)


def backend_stats(window: StatsWindow, now: float, *, total_kv_blocks: int, queued_prefill_tokens: int, prefix_hashes: frozenset[int]) -> BackendStats:
    """Every field of `BackendStats` from the window; zeros before vLLM's first step."""
    steps = window.steps(now)
    busy_s = sum(s.duration_s for s in steps)
    measured = rates(steps)
    latest = window.latest
    usage = min(1.0, max(0.0, latest.kv_cache_usage)) if latest else 0.0
    return BackendStats(
        running=latest.running if latest else 0,
        waiting=latest.waiting if latest else 0,
        queued_prefill_tokens=queued_prefill_tokens,
        free_kv_blocks=round(total_kv_blocks * (1.0 - usage)),
        total_kv_blocks=total_kv_blocks,
        tokens_per_s=window.generated_tokens(now) / window.window_s,
        busy_fraction=min(1.0, busy_s / window.window_s),
        prefix_hashes=prefix_hashes,
        prefill_tokens_per_busy_s=measured.prefill_tokens_per_busy_s,
        decode_tokens_per_busy_s=measured.decode_tokens_per_busy_s,
    )


def observation(time_s: float, scheduler_stats, iteration_stats, previous: StepObservation | None) -> StepObservation | None:
    """A `StepObservation` from vLLM's records (duck-typed: only their fields are read).

    A step whose record has no scheduler stats keeps the previous step's running, waiting and
    KV usage; None when the record has neither (nothing happened to count)."""
    if scheduler_stats is None and iteration_stats is None:
        return None
    if scheduler_stats is not None:
        running, waiting = int(scheduler_stats.num_running_reqs), int(scheduler_stats.num_waiting_reqs)
        usage = float(scheduler_stats.kv_cache_usage)
    elif previous is not None:
        running, waiting, usage = previous.running, previous.waiting, previous.kv_cache_usage
    else:
        running, waiting, usage = 0, 0, 0.0
    return StepObservation(
        time_s=time_s,
        running=running,
        waiting=waiting,
        kv_cache_usage=usage,
        prompt_tokens=int(iteration_stats.num_prompt_tokens) if iteration_stats is not None else 0,
        generation_tokens=int(iteration_stats.num_generation_tokens) if iteration_stats is not None else 0,
    )
