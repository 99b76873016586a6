"""Sampling parameters of one request, validated where they enter the engine."""

from __future__ import annotations

from dataclasses import dataclass

# Tinier positive temperatures overflow the logits / temperature division in float32: the
# softmax turns to NaN and the sampling step would fail for the whole batch. (The router
# raises such temperatures to this floor, as vLLM does; sampling there is all but greedy.)
MIN_SAMPLING_TEMPERATURE = 1e-2
# A top_p below float32's smallest number becomes 0 in the sampler, which then masks every
# token. The top token's probability is at least 1 / vocabulary, so any top_p under this
# floor already keeps the top token alone: raising it to the floor changes no output.
MIN_TOP_P = 1e-6


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How to pick tokens and when to stop.

    `temperature == 0` means greedy. With a `seed`, the random draw of every output position is
    derived from (seed, position) alone, so a preempted-and-recomputed or a handed-off sequence
    draws exactly the tokens it would have drawn without the interruption.
    """

    max_tokens: int = 16
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.max_tokens, int) or isinstance(self.max_tokens, bool) or self.max_tokens < 1:
            raise ValueError(f"max_tokens: must be an integer >= 1, got {self.max_tokens!r}")
        if not (self.temperature >= 0.0):
            raise ValueError(f"temperature: must be >= 0, got {self.temperature!r}")
        if 0.0 < self.temperature < MIN_SAMPLING_TEMPERATURE:
            raise ValueError(f"temperature: must be 0 (greedy) or at least {MIN_SAMPLING_TEMPERATURE}, got {self.temperature!r}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"top_k: must be an integer >= 0 (0 disables it), got {self.top_k!r}")
        if not (MIN_TOP_P <= self.top_p <= 1.0):
            raise ValueError(f"top_p: must be in [{MIN_TOP_P}, 1], got {self.top_p!r}")
        if self.seed is not None and not isinstance(self.seed, int):
            raise ValueError(f"seed: must be an integer, got {self.seed!r}")
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        if any(not isinstance(s, str) or not s for s in stop):
            raise ValueError(f"stop: must be non-empty strings, got {self.stop!r}")
        object.__setattr__(self, "stop", stop)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0
