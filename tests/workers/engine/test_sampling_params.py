"""The OpenAI sampling fields of `SamplingParams`: defaults that change nothing, bounds checked
where the value enters, with the field's name in the message."""

from __future__ import annotations

import pytest

from workers.engine.sampling import SamplingParams


def test_defaults_process_nothing():
    p = SamplingParams()
    assert (p.presence_penalty, p.frequency_penalty, p.repetition_penalty, p.min_p, p.min_tokens) == (0.0, 0.0, 1.0, 0.0, 0)
    assert p.logit_bias == () and p.logprobs is None and p.prompt_logprobs is None and p.grammar is None
    assert not p.processes_logits and not p.has_penalties


def test_logit_bias_from_a_dict_with_string_keys_becomes_sorted_pairs():
    p = SamplingParams(logit_bias={"50": 2, 7: -1.5, 3: 100})
    assert p.logit_bias == ((3, 100.0), (7, -1.5), (50, 2.0))
    assert p == SamplingParams(logit_bias=[(50, 2.0), (3, 100), (7, -1.5)])
    assert hash(p) == hash(SamplingParams(logit_bias={3: 100, 7: -1.5, 50: 2})) and p.processes_logits


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(presence_penalty=2.5), "presence_penalty"),
        (dict(presence_penalty=float("nan")), "presence_penalty"),
        (dict(frequency_penalty=-2.01), "frequency_penalty"),
        (dict(repetition_penalty=0.0), "repetition_penalty"),
        (dict(repetition_penalty=-1.0), "repetition_penalty"),
        (dict(repetition_penalty=1e-40), "repetition_penalty"),  # overflowed the logits: NaN for the whole batch
        (dict(repetition_penalty=1e6), "repetition_penalty"),
        (dict(min_p=1.5), "min_p"),
        (dict(min_p=-0.1), "min_p"),
        (dict(min_tokens=-1), "min_tokens"),
        (dict(min_tokens=20, max_tokens=10), "min_tokens"),
        (dict(logit_bias={5: 101}), "logit_bias"),
        (dict(logit_bias={-1: 1}), "logit_bias"),
        (dict(logit_bias={"x": 1}), "logit_bias"),
        (dict(logit_bias=[(1, 1.0), (1, 2.0)]), "logit_bias"),
        (dict(logit_bias=5), "logit_bias"),
        (dict(logprobs=21), "logprobs"),
        (dict(logprobs=-1), "logprobs"),
        (dict(prompt_logprobs=21), "prompt_logprobs"),
        (dict(grammar=""), "grammar"),
        (dict(grammar=42), "grammar"),
    ],
)
def test_out_of_range_values_name_their_field(kwargs, field):
    with pytest.raises(ValueError, match=f"^{field}:"):
        SamplingParams(**kwargs)


def test_the_edges_of_every_range_are_accepted():
    p = SamplingParams(
        presence_penalty=-2, frequency_penalty=2, repetition_penalty=0.01, min_p=1.0, min_tokens=16, max_tokens=16,
        logit_bias={0: -100, 1: 100}, logprobs=20, prompt_logprobs=0,
    )
    assert p.logprobs == 20 and p.prompt_logprobs == 0 and p.min_tokens == p.max_tokens
