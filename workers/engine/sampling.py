"""Sampling parameters of one request, validated where they enter the engine."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

# Tinier positive temperatures overflow the logits / temperature division in float32: the
# softmax turns to NaN and the sampling step would fail for the whole batch. (The router
# raises such temperatures to this floor, as vLLM does; sampling there is all but greedy.)
MIN_SAMPLING_TEMPERATURE = 1e-2
# A top_p below float32's smallest number becomes 0 in the sampler, which then masks every
# token. The top token's probability is at least 1 / vocabulary, so any top_p under this
# floor already keeps the top token alone: raising it to the floor changes no output.
MIN_TOP_P = 1e-6
# OpenAI's bounds: penalties in [-2, 2], a logit bias in [-100, 100], at most 20 logprobs.
MAX_PENALTY = 2.0
MAX_LOGIT_BIAS = 100.0
# A repetition penalty divides positive logits and multiplies negative ones: beyond these
# bounds a logit overflows float32 and the draw fails, for the whole batch (1e-40 did).
REPETITION_PENALTY_RANGE = (0.01, 100.0)
MAX_LOGPROBS = 20


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _normalise_logit_bias(value: object) -> tuple[tuple[int, float], ...]:
    """A dict {token id: bias} or pairs, as a tuple sorted by token id (hashable, and two equal
    requests compare equal whatever order the client wrote the biases in)."""
    pairs = value.items() if isinstance(value, Mapping) else value
    try:
        pairs = [tuple(pair) for pair in pairs]  # type: ignore[union-attr]
    except TypeError:
        raise ValueError(f"logit_bias: expected a mapping of token id to bias, got {value!r:.80}") from None
    out: dict[int, float] = {}
    for pair in pairs:
        if len(pair) != 2:
            raise ValueError(f"logit_bias: expected (token id, bias) pairs, got {pair!r:.80}")
        token, bias = pair
        if isinstance(token, str) and token.strip().lstrip("-").isdigit():
            token = int(token)  # JSON object keys are strings
        if not _is_int(token) or token < 0:
            raise ValueError(f"logit_bias: token ids must be integers >= 0, got {token!r}")
        if not _is_real(bias) or not -MAX_LOGIT_BIAS <= bias <= MAX_LOGIT_BIAS:
            raise ValueError(f"logit_bias: bias of token {token} must be in [-{MAX_LOGIT_BIAS:g}, {MAX_LOGIT_BIAS:g}], got {bias!r}")
        if token in out:
            raise ValueError(f"logit_bias: token {token} appears twice")
        out[token] = float(bias)
    return tuple(sorted(out.items()))


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How to pick tokens and when to stop.

    `temperature == 0` means greedy. With a `seed`, the random draw of every output position is
    derived from (seed, position) alone, so a preempted-and-recomputed or a handed-off sequence
    draws exactly the tokens it would have drawn without the interruption.

    The logits processors follow OpenAI's API (`presence_penalty`, `frequency_penalty`,
    `logit_bias`, `logprobs`) and vLLM's extensions (`repetition_penalty`, `min_p`,
    `min_tokens`, `prompt_logprobs`); the order in which they apply is the sampler's
    (`workers/engine/sampler.py`). `grammar` is an llguidance grammar (what
    `llguidance.LLMatcher.grammar_from_json_schema` or `grammar_from_lark` return): the router
    builds and checks it, the engine constrains every output token with it
    (`workers/engine/constraint.py`).
    """

    max_tokens: int = 16
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    min_p: float = 0.0
    min_tokens: int = 0
    logit_bias: tuple[tuple[int, float], ...] = ()
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    grammar: str | None = None

    def __post_init__(self) -> None:
        if not _is_int(self.max_tokens) or self.max_tokens < 1:
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
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not _is_real(value) or not -MAX_PENALTY <= value <= MAX_PENALTY:
                raise ValueError(f"{name}: must be in [-{MAX_PENALTY:g}, {MAX_PENALTY:g}], got {value!r}")
        low, high = REPETITION_PENALTY_RANGE
        if not _is_real(self.repetition_penalty) or not low <= self.repetition_penalty <= high:
            raise ValueError(f"repetition_penalty: must be in [{low:g}, {high:g}] (1 disables it), got {self.repetition_penalty!r}")
        if not _is_real(self.min_p) or not 0.0 <= self.min_p <= 1.0:
            raise ValueError(f"min_p: must be in [0, 1], got {self.min_p!r}")
        if not _is_int(self.min_tokens) or self.min_tokens < 0:
            raise ValueError(f"min_tokens: must be an integer >= 0, got {self.min_tokens!r}")
        if self.min_tokens > self.max_tokens:
            raise ValueError(f"min_tokens: must be <= max_tokens ({self.max_tokens}), got {self.min_tokens}")
        object.__setattr__(self, "logit_bias", _normalise_logit_bias(self.logit_bias))
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or not 0 <= value <= MAX_LOGPROBS):
                raise ValueError(f"{name}: must be None or an integer in [0, {MAX_LOGPROBS}], got {value!r}")
        if self.grammar is not None and (not isinstance(self.grammar, str) or not self.grammar):
            raise ValueError(f"grammar: must be None or a non-empty llguidance grammar string, got {self.grammar!r:.80}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def has_penalties(self) -> bool:
        return self.presence_penalty != 0.0 or self.frequency_penalty != 0.0 or self.repetition_penalty != 1.0

    @property
    def processes_logits(self) -> bool:
        """Whether any processor may change this request's logits before the draw (the sampler
        keeps a batch in which no row does on its vectorised argmax path)."""
        return bool(self.logit_bias) or self.has_penalties or self.min_tokens > 0 or self.grammar is not None
