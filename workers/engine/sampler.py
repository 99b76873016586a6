"""Turning the logits of a step into next tokens, one row per sampling sequence.

Each row goes through these stages in this order; a stage whose parameter is at its default is
skipped, and a batch in which no row needs stages 1–4, logprobs or a random draw stays on one
vectorised argmax (the greedy path the engine is checked on, token for token):

1. logit_bias — `bias[t]` added to `logits[t]` (OpenAI);
2. penalties — first repetition (over prompt and output tokens, as `transformers`' and vLLM's:
   a positive logit divided by the penalty, a negative one multiplied), then presence and
   frequency (OpenAI's, over output tokens: `logits[t] -= presence * (count[t] > 0) +
   frequency * count[t]`);
3. min_tokens — before that many output tokens, the stop token ids and EOS (unless the request
   ignores EOS, as vLLM does) are masked; if the grammar allows nothing else (it is complete),
   the grammar wins and EOS stays allowed;
4. grammar — tokens the request's grammar does not allow next are masked;
   ▸ logprobs are taken here: `log_softmax` of these processed logits, before the stages that
     only shape the draw, so that a greedy choice is always the top logprob;
5. temperature; 6. top-k; 7. top-p; 8. min-p (drop tokens whose probability is below
   `min_p` times the top token's); 9. the draw: argmax when greedy, otherwise a multinomial
   draw seeded by (seed, output position) — see `SamplingParams`.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence as Seq
from dataclasses import dataclass

import torch

from workers.engine.outputs import TokenLogprob
from workers.engine.sampling import SamplingParams

_MASK = float("-inf")


@dataclass(frozen=True, slots=True)
class SamplingRow:
    """One sequence's view for the sampler: its parameters and the history the processors read.

    `position` is the index of the output token this row draws (0 for the first); `token_ids`
    are prompt and output so far, the first `num_prompt_tokens` of them the prompt; `allowed` is
    the grammar's mask for this row (bool [vocab]), or None.
    """

    params: SamplingParams
    position: int
    token_ids: Seq[int] = ()
    num_prompt_tokens: int = 0
    allowed: torch.Tensor | None = None

    @property
    def processes_logits(self) -> bool:
        p = self.params
        return bool(p.logit_bias) or p.has_penalties or self.position < p.min_tokens or self.allowed is not None


@dataclass(frozen=True, slots=True)
class SamplerOutput:
    tokens: list[int]
    logprobs: list[TokenLogprob | None]  # None for rows that did not ask


def _position_generator(seed: int, position: int) -> torch.Generator:
    """A generator that depends on (seed, output position) only — see `SamplingParams`."""
    return torch.Generator().manual_seed((seed * 1_000_003 + position) % (2**63))


def sample(logits: torch.Tensor, params: list[SamplingParams], positions: list[int]) -> list[int]:
    """Tokens only, for rows without history (penalties see no earlier tokens, no grammar).
    `positions[i]` is the index of the output token row i produces (0 for the first)."""
    return sample_rows(logits, [SamplingRow(p, pos) for p, pos in zip(params, positions)]).tokens


def sample_rows(logits: torch.Tensor, rows: Seq[SamplingRow], eos_token_ids: Collection[int] = ()) -> SamplerOutput:
    """Next token (and, where asked, its logprob record) of every row, stages as the module says."""
    processed = [i for i, row in enumerate(rows) if row.processes_logits]
    if processed:
        logits = logits.float().clone()  # changed in place below; the caller's tensor stays as it was
        for i in processed:
            _process(logits[i], rows[i], eos_token_ids)
    tokens = logits.argmax(dim=-1).tolist()
    for i, row in enumerate(rows):
        if not row.params.greedy:
            tokens[i] = _draw(logits[i], row)
    records: list[TokenLogprob | None] = [None] * len(rows)
    asked = [i for i, row in enumerate(rows) if row.params.logprobs is not None]
    if asked:
        logprobs = logits[asked].float().log_softmax(dim=-1)
        made = logprob_records(logprobs, [tokens[i] for i in asked], [rows[i].params.logprobs or 0 for i in asked])
        for i, record in zip(asked, made):
            records[i] = record
    return SamplerOutput(tokens, records)


def _process(x: torch.Tensor, row: SamplingRow, eos_token_ids: Collection[int]) -> None:
    """Stages 1–4 on one row of float logits, in place."""
    p = row.params
    if p.logit_bias:
        ids = torch.tensor([t for t, _ in p.logit_bias], dtype=torch.long)
        x.index_add_(0, ids, torch.tensor([b for _, b in p.logit_bias], dtype=x.dtype))
    if p.repetition_penalty != 1.0 and row.token_ids:
        seen = torch.tensor(row.token_ids, dtype=torch.long).unique()
        scores = x[seen]
        x[seen] = torch.where(scores > 0, scores / p.repetition_penalty, scores * p.repetition_penalty)
    if (p.presence_penalty or p.frequency_penalty) and len(row.token_ids) > row.num_prompt_tokens:
        ids, counts = torch.tensor(row.token_ids[row.num_prompt_tokens :], dtype=torch.long).unique(return_counts=True)
        x[ids] -= p.frequency_penalty * counts.to(x.dtype) + p.presence_penalty
    if row.position < p.min_tokens:
        banned = set(p.stop_token_ids) | (set() if p.ignore_eos else set(eos_token_ids))
        ids = torch.tensor(sorted(t for t in banned if t < x.shape[0]), dtype=torch.long)
        if len(ids) and (row.allowed is None or _allows_other_than(row.allowed, ids)):
            x[ids] = _MASK
    if row.allowed is not None:
        x.masked_fill_(~row.allowed, _MASK)


def _allows_other_than(allowed: torch.Tensor, ids: torch.Tensor) -> bool:
    rest = allowed.clone()
    rest[ids] = False
    return bool(rest.any())


def _draw(x: torch.Tensor, row: SamplingRow) -> int:
    """Stages 5–9 for a row that samples."""
    p = row.params
    scores = x.float() / p.temperature
    if p.top_k and p.top_k < scores.shape[-1]:
        kth = torch.topk(scores, p.top_k).values[-1]
        scores = scores.masked_fill(scores < kth, _MASK)
    if p.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=True)
        probs = sorted_scores.softmax(-1)
        # drop tokens once the mass before them already reaches top_p (keep at least one)
        drop = (probs.cumsum(-1) - probs) >= p.top_p
        scores = scores.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), _MASK)
    if p.min_p > 0.0:
        probs = scores.softmax(-1)  # the ratio to the top token's is the same before or after top-k/p
        scores = scores.masked_fill(probs < p.min_p * probs.max(), _MASK)
    gen = _position_generator(p.seed, row.position) if p.seed is not None else None
    return int(torch.multinomial(scores.softmax(-1), 1, generator=gen).item())


def logprob_records(logprobs: torch.Tensor, chosen: Seq[int], ks: Seq[int]) -> list[TokenLogprob]:
    """Records of rows of log-probabilities [n, vocab]: the chosen token's and the `ks[i]` best.

    Masked tokens (-inf) are left out of the best: a mask forbade them, and -inf has no JSON form.
    A chosen token tied with the best is named first, since argmax and top-k may break ties
    differently and a greedy choice must read as the top logprob.
    """
    if not len(chosen):
        return []
    chosen_lp = logprobs.gather(1, torch.tensor(list(chosen), dtype=torch.long)[:, None]).squeeze(1).tolist()
    k_max = min(max(ks), logprobs.shape[-1])
    top_values: list[list[float]] = [[] for _ in chosen]
    top_ids: list[list[int]] = [[] for _ in chosen]
    if k_max:
        values, ids = torch.topk(logprobs, k_max, dim=-1)
        top_values, top_ids = values.tolist(), ids.tolist()
    records = []
    for r, (token, lp, k) in enumerate(zip(chosen, chosen_lp, ks)):
        pairs = [(t, v) for t, v in zip(top_ids[r][:k], top_values[r][:k]) if v != _MASK]
        if pairs and pairs[0][0] != token and lp >= pairs[0][1]:
            pairs = [(token, lp), *((t, v) for t, v in pairs if t != token)][:k]
        records.append(TokenLogprob(int(token), float(lp), tuple(pairs)))
    return records
