"""The sampler's stages one by one, on hand-made logits: each against `transformers`' own
logits processor where one exists, or against the formula written out by hand.

The vocabulary here has 16 tokens, so asking for 20 logprobs lists every token that no mask
removed: the logprobs then show the whole processed distribution."""

from __future__ import annotations

import math

import pytest
import torch
from transformers.generation.logits_process import MinPLogitsWarper, RepetitionPenaltyLogitsProcessor

from workers.engine.sampler import SamplingRow, logprob_records, sample, sample_rows
from workers.engine.sampling import SamplingParams

VOCAB = 16
ALL = 20  # >= VOCAB: every unmasked token's logprob


def logits(rows: int = 1, seed: int = 0, scale: float = 3.0) -> torch.Tensor:
    return torch.randn(rows, VOCAB, generator=torch.Generator().manual_seed(seed)) * scale


def distribution(x: torch.Tensor, row: SamplingRow, eos=()) -> torch.Tensor:
    """The log-probabilities the sampler's stages 1–4 leave (-inf where masked)."""
    record = sample_rows(x, [row], eos).logprobs[0]
    assert record is not None and len(record.top) <= VOCAB
    out = torch.full((VOCAB,), float("-inf"))
    for token, value in record.top:
        out[token] = value
    return out


def test_greedy_rows_without_processors_are_the_plain_argmax():
    x = logits(5)
    assert sample(x, [SamplingParams()] * 5, [0] * 5) == x.argmax(-1).tolist()
    out = sample_rows(x, [SamplingRow(SamplingParams(), 0)] * 5)
    assert out.tokens == x.argmax(-1).tolist() and out.logprobs == [None] * 5


def test_the_callers_logits_are_left_as_they_were():
    x = logits(1)
    before = x.clone()
    sample_rows(x, [SamplingRow(SamplingParams(logit_bias={3: 50}, repetition_penalty=2.0), 0, [1, 2])])
    assert torch.equal(x, before)


def test_repetition_penalty_equals_transformers_processor_over_prompt_and_output():
    x = logits(1, seed=1)
    history = [3, 7, 7, 12, 4, 3, 15]  # a prompt of 4, an output of 3
    expected = RepetitionPenaltyLogitsProcessor(1.7)(torch.tensor([history]), x.clone())[0].log_softmax(-1)
    got = distribution(x, SamplingRow(SamplingParams(repetition_penalty=1.7, logprobs=ALL), 0, history, num_prompt_tokens=4))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    boosted = x.clone()
    boosted[0, 7] = x.max() + 0.1  # the best token, but a repeated one: a strong penalty must move the choice
    want = int(RepetitionPenaltyLogitsProcessor(100.0)(torch.tensor([history]), boosted.clone())[0].argmax())
    assert sample_rows(boosted, [SamplingRow(SamplingParams(repetition_penalty=100.0), 0, history, 4)]).tokens == [want]
    assert want != 7


def test_presence_and_frequency_penalties_follow_openais_formula_over_output_tokens_only():
    x = logits(1, seed=2)
    prompt, output = [5, 5, 9], [9, 11, 11, 11, 14]
    presence, frequency = 0.8, 0.35
    expected = x[0].clone()
    for t in set(output):  # token 5, in the prompt only, is not penalised
        expected[t] -= presence + frequency * output.count(t)
    row = SamplingRow(SamplingParams(presence_penalty=presence, frequency_penalty=frequency, logprobs=ALL), 5, prompt + output, 3)
    torch.testing.assert_close(distribution(x, row), expected.log_softmax(-1), atol=1e-5, rtol=0)


def test_negative_penalties_encourage_repeats():
    x = torch.zeros(1, VOCAB)
    x[0, 5], x[0, 7] = 3.0, 1.5
    assert sample_rows(x, [SamplingRow(SamplingParams(), 1, [1, 7], num_prompt_tokens=1)]).tokens == [5]
    row = SamplingRow(SamplingParams(presence_penalty=-1.0, frequency_penalty=-0.6), 1, [1, 7], num_prompt_tokens=1)
    assert sample_rows(x, [row]).tokens == [7]  # 1.5 + 1.0 + 0.6 > 3.0


def test_logit_bias_adds_to_the_logits_and_plus_or_minus_100_forces_or_bans_a_token():
    x = logits(1, seed=4)
    bias = {3: 1.25, 8: -2.5}
    expected = x[0].clone()
    expected[3] += 1.25
    expected[8] -= 2.5
    torch.testing.assert_close(distribution(x, SamplingRow(SamplingParams(logit_bias=bias, logprobs=ALL), 0)), expected.log_softmax(-1),
                               atol=1e-5, rtol=0)
    worst, top = int(x.argmin()), int(x.argmax())
    assert sample_rows(x, [SamplingRow(SamplingParams(logit_bias={worst: 100}), 0)]).tokens == [worst]
    assert sample_rows(x, [SamplingRow(SamplingParams(logit_bias={top: -100}), 0)]).tokens == [int(x[0].topk(2).indices[1])]


def test_min_tokens_masks_eos_and_stop_tokens_until_reached():
    x = logits(1, seed=5)
    eos, stop, third = x[0].topk(3).indices.tolist()
    params = SamplingParams(min_tokens=3, max_tokens=8, stop_token_ids=(stop,), logprobs=ALL)
    before = distribution(x, SamplingRow(params, 2), eos={eos})
    assert before[eos] == before[stop] == float("-inf") and int(before.argmax()) == third
    assert sample_rows(x, [SamplingRow(params, 3)], eos_token_ids={eos}).tokens == [eos]
    # under ignore_eos, EOS ends nothing, so it stays allowed (vLLM's choice); stop ids stay masked
    ignoring = SamplingParams(min_tokens=3, max_tokens=8, stop_token_ids=(eos,), ignore_eos=True)
    assert sample_rows(x, [SamplingRow(ignoring, 0)], eos_token_ids={eos}).tokens == [stop]
    assert sample_rows(x, [SamplingRow(SamplingParams(min_tokens=3, ignore_eos=True), 0)], eos_token_ids={eos}).tokens == [eos]


def test_a_grammar_mask_leaves_only_allowed_tokens_and_wins_over_min_tokens_when_complete():
    x = logits(1, seed=6)
    allowed = torch.zeros(VOCAB, dtype=torch.bool)
    allowed[[4, 9, 13]] = True
    got = sample_rows(x, [SamplingRow(SamplingParams(logprobs=5), 0, allowed=allowed)])
    assert got.tokens[0] == max((4, 9, 13), key=lambda t: float(x[0, t]))
    assert {t for t, _ in got.logprobs[0].top} == {4, 9, 13}  # masked tokens are never listed
    assert math.fsum(math.exp(v) for _, v in got.logprobs[0].top) == pytest.approx(1.0, abs=1e-5)
    only_eos = torch.zeros(VOCAB, dtype=torch.bool)
    only_eos[2] = True  # a complete grammar allows EOS alone: min_tokens must not mask it away
    row = SamplingRow(SamplingParams(min_tokens=5, max_tokens=10, temperature=1.0, seed=1), 0, allowed=only_eos)
    assert sample_rows(x, [row], eos_token_ids={2}).tokens == [2]


def test_min_p_keeps_exactly_the_tokens_transformers_keeps():
    x = logits(1, seed=7, scale=1.5)
    temperature, min_p = 0.7, 0.2
    kept = MinPLogitsWarper(min_p)(torch.zeros(1, 1, dtype=torch.long), x / temperature)[0] > float("-inf")
    n = 400
    drawn = set(sample(x.expand(n, VOCAB).contiguous(), [SamplingParams(temperature=temperature, min_p=min_p, seed=s) for s in range(n)], [0] * n))
    assert drawn == set(torch.nonzero(kept).flatten().tolist()) and len(drawn) > 1
    only_top = sample(x.expand(50, VOCAB).contiguous(), [SamplingParams(temperature=2.0, min_p=1.0, seed=s) for s in range(50)], [0] * 50)
    assert set(only_top) == {int(x.argmax())}


def test_logprobs_are_taken_before_temperature_and_the_greedy_choice_is_the_top_one():
    x = logits(2, seed=8)
    rows = [SamplingRow(SamplingParams(logprobs=3), 0), SamplingRow(SamplingParams(logprobs=0, temperature=1.5, seed=3), 0)]
    out = sample_rows(x, rows)
    reference = x.log_softmax(-1)
    greedy, drawn = out.logprobs
    assert greedy.token_id == out.tokens[0] == greedy.top[0][0] and len(greedy.top) == 3
    assert [v for _, v in greedy.top] == sorted((v for _, v in greedy.top), reverse=True)
    for token, value in greedy.top:
        assert value == pytest.approx(float(reference[0, token]), abs=1e-6)
    assert drawn.top == () and drawn.token_id == out.tokens[1]
    assert drawn.logprob == pytest.approx(float(reference[1, out.tokens[1]]), abs=1e-6)


def test_a_chosen_token_tied_with_the_best_is_listed_first():
    lp = torch.log_softmax(torch.tensor([[1.0, 3.0, 3.0, 0.5]]), -1)
    [record] = logprob_records(lp, [2], [2])
    assert record.top[0] == (2, record.logprob) and {t for t, _ in record.top} == {1, 2}


def test_seeded_draws_with_penalties_are_the_same_every_time():
    x = logits(1, seed=9, scale=1.0)
    params = SamplingParams(temperature=1.0, seed=42, presence_penalty=0.5, frequency_penalty=0.5, repetition_penalty=1.2, min_p=0.05)

    def draws() -> list[int]:
        return [sample_rows(x, [SamplingRow(params, pos, [1, 2, 3, 3, 4], 2)]).tokens[0] for pos in range(30)]

    first = draws()
    assert draws() == first == draws()
    assert len(set(first)) > 1  # it does sample
