"""Pavana's `SamplingParams` in vLLM's terms, as plain keyword arguments.

Pure (nothing of vLLM is imported), so every field's mapping is unit-tested on a CPU; the
backend builds `vllm.SamplingParams(**kwargs)` from the result in one line.

Field by field (vLLM's names where they differ):
- max_tokens, temperature, top_p, min_p, seed, ignore_eos, presence_penalty,
  frequency_penalty, repetition_penalty, min_tokens, logprobs, prompt_logprobs: the same
  meaning in both (vLLM's are what Pavana's engine follows);
- top_k: Pavana's 0 ("off") becomes vLLM's -1, which every vLLM release reads as "off";
- stop, stop_token_ids: lists; vLLM leaves stop strings out of the text, as Pavana does;
- logit_bias: Pavana's sorted (token, bias) pairs become vLLM's {token: bias};
- grammar: an llguidance grammar (what `LLMatcher.grammar_from_json_schema` or
  `grammar_from_lark` return) becomes vLLM's `structured_outputs` — `json` with the schema
  for the first, `grammar` with the Lark text for the second — run by vLLM's own llguidance
  backend (`structured_outputs_config.backend = "guidance"`, set by `vllm_engine_args`), so
  the constraint is the one Pavana's engine enforces.

Output vLLM did not sample itself — a resumed request's output the client already has
(`GenerateRequest.resume_token_ids`) and, on a decode replica, the prefill's first token — is
given to vLLM as part of the prompt ("carried" tokens), so the request's budgets shrink by it
(`max_tokens`, `min_tokens`). vLLM's frequency and presence penalties count its own output
only, so the carried tokens' share moves into the logit bias, an additive term on the same
logits: the frequency penalty exactly (−penalty × count), the presence penalty as −penalty per
distinct carried token, which is exact until such a token recurs in vLLM's own output, where
vLLM's own presence term then applies on top (the one inexact case: a token penalised twice).
vLLM's repetition penalty already counts prompt tokens, carried ones included. Prompt
logprobs were sent with the first chunk already: a request with carried tokens asks for none.
A grammar cannot be carried: vLLM's structured-output matcher starts at the first token vLLM
samples, with no call to advance it over output it did not sample, so a grammar request with
carried tokens is refused (`CarriedGrammar`) rather than constrained from the wrong state —
on vLLM, structured outputs need a colocated pool, and such a stream cannot migrate. A seeded sampled request resumed on vLLM draws from the right distribution but
not the very tokens of the undisturbed run: vLLM's per-request generator restarts from the
seed, where Pavana's engine derives each position's draw from (seed, position).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from typing import Any

from workers.engine.sampling import SamplingParams


class CarriedGrammar(ValueError):
    """A grammar request whose output vLLM did not sample itself (P/D decode, resumed)."""


def structured_output_fields(grammar: str) -> dict[str, Any]:
    """vLLM's `StructuredOutputsParams` fields for one of Pavana's llguidance grammars.

    The router builds grammars two ways: `grammar_from_json_schema` returns llguidance's JSON
    form with the schema inside (its `x-guidance` options travel with the schema, and vLLM's
    llguidance backend honours them); `grammar_from_lark` returns the Lark text itself."""
    text = grammar.strip()
    if not text.startswith("{"):
        return {"grammar": grammar}
    try:
        top = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"grammar: not valid llguidance JSON ({e})") from None
    grammars = top.get("grammars") if isinstance(top, dict) else None
    if not isinstance(grammars, list) or len(grammars) != 1 or not isinstance(grammars[0], dict):
        raise ValueError("grammar: vLLM takes one JSON schema or one Lark grammar; this llguidance grammar has several parts")
    only = grammars[0]
    if only.get("json_schema") is not None:
        return {"json": only["json_schema"]}
    if only.get("lark_grammar") is not None:
        return {"grammar": only["lark_grammar"]}
    raise ValueError(f"grammar: neither a JSON schema nor a Lark grammar ({sorted(only)})")


def carried_penalty_bias(params: SamplingParams, carried_token_ids: Sequence[int]) -> dict[int, float]:
    """The frequency and presence penalties the carried tokens would have earned as vLLM's own
    output, as a logit bias."""
    if not carried_token_ids or (params.frequency_penalty == 0.0 and params.presence_penalty == 0.0):
        return {}
    return {
        token: -params.frequency_penalty * count - params.presence_penalty
        for token, count in Counter(carried_token_ids).items()
    }


def sampling_kwargs(params: SamplingParams, *, resume_token_ids: Sequence[int] = ()) -> dict[str, Any]:
    """Keyword arguments of `vllm.SamplingParams` for `params`, continuing after
    `resume_token_ids`: the carried output tokens vLLM is given as part of its prompt."""
    resumed = len(resume_token_ids)
    if resumed >= params.max_tokens:
        raise ValueError(f"resume_token_ids: {resumed} tokens already reach max_tokens ({params.max_tokens})")
    if resumed and params.grammar is not None:
        raise CarriedGrammar(
            f"grammar: vLLM cannot constrain output that continues {resumed} tokens it did not sample "
            "(a decode after a prefill, or a resumed stream); serve structured outputs on vLLM from a colocated pool"
        )
    bias = dict(params.logit_bias)
    for token, extra in carried_penalty_bias(params, resume_token_ids).items():
        bias[token] = bias.get(token, 0.0) + extra
    kwargs: dict[str, Any] = dict(
        max_tokens=params.max_tokens - resumed,
        min_tokens=max(0, params.min_tokens - resumed),
        temperature=params.temperature,
        top_p=params.top_p,
        top_k=params.top_k if params.top_k > 0 else -1,
        min_p=params.min_p,
        seed=params.seed,
        presence_penalty=params.presence_penalty,
        frequency_penalty=params.frequency_penalty,
        repetition_penalty=params.repetition_penalty,
        stop=list(params.stop),
        stop_token_ids=list(params.stop_token_ids),
        ignore_eos=params.ignore_eos,
        logit_bias=bias or None,
        logprobs=params.logprobs,
        prompt_logprobs=None if resumed else params.prompt_logprobs,
        include_stop_str_in_output=False,
        skip_special_tokens=True,
    )
    if params.grammar is not None:
        kwargs["structured_outputs"] = structured_output_fields(params.grammar)
    return kwargs
