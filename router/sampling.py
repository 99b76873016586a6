"""OpenAI's (and vLLM's) sampling fields as the engine's `SamplingParams`, every range checked
here with the field named, so a bad value is a 400 that says which field and what is allowed.

The engine validates `SamplingParams` again where they enter it; the checks here are the ones
a client reads, in the API's terms: `logit_bias` keys are token ids written as strings,
`logprobs` differs between chat (a flag and `top_logprobs`) and completions (a count).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from router.errors import invalid_request
from router.protocol import ChatCompletionRequest, CompletionRequest
from workers.engine.sampling import MIN_SAMPLING_TEMPERATURE, MIN_TOP_P, REPETITION_PENALTY_RANGE, SamplingParams

MAX_STOP_STRINGS = 4  # OpenAI's limit
MAX_TEMPERATURE = 2.0  # OpenAI's range is [0, 2]
MAX_PENALTY = 2.0  # presence and frequency penalties: OpenAI's [-2, 2]
MAX_LOGIT_BIAS = 100.0  # OpenAI's [-100, 100]
# OpenAI allows 20 alternatives in chat and 5 in completions; Pavana allows 20 in both, as vLLM.
MAX_LOGPROBS = 20
MAX_STOP_TOKEN_IDS = 256  # bounds the engine's per-token check; far above any real use
SEED_RANGE = (-(2**63), 2**64)  # what fits in 64 bits, signed or not

Body = CompletionRequest | ChatCompletionRequest


def sampling_params(
    body: Body,
    max_tokens: int,
    *,
    vocab_size: int,
    logprobs: int | None = None,
    prompt_logprobs: int | None = None,
    grammar: str | None = None,
    extra_stop: Sequence[str] = (),
) -> SamplingParams:
    """The engine parameters of one request. `logprobs` and `prompt_logprobs` come from the
    endpoint's own fields (`chat_logprobs`, `completion_logprobs`); `grammar` from the
    response format or the tool choice; `extra_stop` are stop strings Pavana adds itself (the
    end of a tool call when only one call may be made), beyond the client's four."""
    temperature = 1.0 if body.temperature is None else body.temperature
    if not 0.0 <= temperature <= MAX_TEMPERATURE:
        raise invalid_request(f"temperature: must be in [0, {MAX_TEMPERATURE:g}], got {temperature}", param="temperature")
    if 0.0 < temperature < MIN_SAMPLING_TEMPERATURE:
        temperature = MIN_SAMPLING_TEMPERATURE
    top_p = 1.0 if body.top_p is None else body.top_p
    if not 0.0 < top_p <= 1.0:
        raise invalid_request(f"top_p: must be in (0, 1], got {top_p}", param="top_p")
    top_p = max(top_p, MIN_TOP_P)
    top_k = 0 if body.top_k in (None, -1) else body.top_k
    if top_k < 0:  # type: ignore[operator]
        raise invalid_request(f"top_k: must be -1 or 0 (off) or a positive integer, got {top_k}", param="top_k")
    min_p = 0.0 if body.min_p is None else body.min_p
    if not 0.0 <= min_p <= 1.0:
        raise invalid_request(f"min_p: must be in [0, 1], got {min_p}", param="min_p")
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stop) > MAX_STOP_STRINGS:
        raise invalid_request(f"stop: at most {MAX_STOP_STRINGS} stop strings, got {len(stop)}", param="stop")
    if any(not s for s in stop):
        raise invalid_request("stop: stop strings must not be empty", param="stop")
    if body.seed is not None and not SEED_RANGE[0] <= body.seed < SEED_RANGE[1]:
        raise invalid_request(f"seed: must fit in 64 bits, got {body.seed}", param="seed")
    penalties = {name: _penalty(body, name) for name in ("presence_penalty", "frequency_penalty")}
    repetition_penalty = 1.0 if body.repetition_penalty is None else body.repetition_penalty
    low, high = REPETITION_PENALTY_RANGE
    if not low <= repetition_penalty <= high:
        raise invalid_request(
            f"repetition_penalty: must be in [{low:g}, {high:g}] (1 disables it), got {repetition_penalty}", param="repetition_penalty"
        )
    min_tokens = body.min_tokens or 0
    if not 0 <= min_tokens <= max_tokens:
        raise invalid_request(f"min_tokens: must be in [0, max_tokens = {max_tokens}], got {min_tokens}", param="min_tokens")
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=temperature,
        top_k=top_k,  # type: ignore[arg-type]
        top_p=top_p,
        min_p=min_p,
        seed=body.seed,
        stop=(*stop, *extra_stop),
        stop_token_ids=_stop_token_ids(body.stop_token_ids, vocab_size),
        ignore_eos=body.ignore_eos,
        presence_penalty=penalties["presence_penalty"],
        frequency_penalty=penalties["frequency_penalty"],
        repetition_penalty=repetition_penalty,
        min_tokens=min_tokens,
        logit_bias=logit_bias(body.logit_bias, vocab_size),
        logprobs=logprobs,
        prompt_logprobs=prompt_logprobs,
        grammar=grammar,
    )


def _penalty(body: Body, name: str) -> float:
    value = getattr(body, name)
    value = 0.0 if value is None else value
    if not -MAX_PENALTY <= value <= MAX_PENALTY:
        raise invalid_request(f"{name}: must be in [-{MAX_PENALTY:g}, {MAX_PENALTY:g}], got {value}", param=name)
    return float(value)


def _stop_token_ids(ids: list[int] | None, vocab_size: int) -> tuple[int, ...]:
    ids = ids or []
    if len(ids) > MAX_STOP_TOKEN_IDS:
        raise invalid_request(f"stop_token_ids: at most {MAX_STOP_TOKEN_IDS} ids, got {len(ids)}", param="stop_token_ids")
    bad = [t for t in ids if not 0 <= t < vocab_size]
    if bad:
        raise invalid_request(f"stop_token_ids: token ids must lie in [0, {vocab_size}); got {bad[0]}", param="stop_token_ids")
    return tuple(ids)


def logit_bias(bias: Mapping[str, float] | None, vocab_size: int) -> tuple[tuple[int, float], ...]:
    """OpenAI's `{"token id": bias}` as (id, bias) pairs; a key that is not a token id of this
    model's vocabulary, or a bias outside [-100, 100], is refused."""
    pairs: list[tuple[int, float]] = []
    for key, value in (bias or {}).items():
        text = key.strip()
        if not text.isdigit() or not int(text) < vocab_size:
            raise invalid_request(
                f"logit_bias: keys must be token ids in [0, {vocab_size}) written as strings, got {key!r:.40}", param="logit_bias"
            )
        if not -MAX_LOGIT_BIAS <= value <= MAX_LOGIT_BIAS:
            raise invalid_request(
                f"logit_bias: the bias of token {text} must be in [-{MAX_LOGIT_BIAS:g}, {MAX_LOGIT_BIAS:g}], got {value}",
                param="logit_bias",
            )
        pairs.append((int(text), float(value)))
    if len({token for token, _ in pairs}) != len(pairs):
        raise invalid_request("logit_bias: a token id appears twice", param="logit_bias")
    return tuple(sorted(pairs))


def chat_logprobs(body: ChatCompletionRequest) -> int | None:
    """Chat's `logprobs` (a flag) and `top_logprobs` (alternatives per token) as the engine's
    count; OpenAI refuses `top_logprobs` without `logprobs: true`, and so does Pavana."""
    top = body.top_logprobs
    if top is not None and not 0 <= top <= MAX_LOGPROBS:
        raise invalid_request(f"top_logprobs: must be in [0, {MAX_LOGPROBS}], got {top}", param="top_logprobs")
    if not body.logprobs:
        if top is not None:
            raise invalid_request("top_logprobs: needs logprobs set to true", param="top_logprobs")
        return None
    return top or 0


def completion_logprobs(body: CompletionRequest) -> int | None:
    """Completions' `logprobs`: alternatives per token (OpenAI allows 5; Pavana 20, as vLLM)."""
    if body.logprobs is None:
        return None
    if not 0 <= body.logprobs <= MAX_LOGPROBS:
        raise invalid_request(f"logprobs: must be in [0, {MAX_LOGPROBS}], got {body.logprobs}", param="logprobs")
    return body.logprobs
