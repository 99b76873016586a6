"""Turning the logits of a step into next tokens, one row per sampling sequence."""

from __future__ import annotations

import torch

from workers.engine.sampling import SamplingParams

_MASK = float("-inf")


def _position_generator(seed: int, position: int) -> torch.Generator:
    """A generator that depends on (seed, output position) only — see `SamplingParams`."""
    return torch.Generator().manual_seed((seed * 1_000_003 + position) % (2**63))


def sample(logits: torch.Tensor, params: list[SamplingParams], positions: list[int]) -> list[int]:
    """`positions[i]` is the index of the output token row i produces (0 for the first)."""
    out = logits.argmax(dim=-1).tolist()
    for row, (p, pos) in enumerate(zip(params, positions)):
        if p.greedy:
            continue
        scores = logits[row].float() / p.temperature
        if p.top_k and p.top_k < scores.shape[-1]:
            kth = torch.topk(scores, p.top_k).values[-1]
            scores = scores.masked_fill(scores < kth, _MASK)
        if p.top_p < 1.0:
            sorted_scores, order = torch.sort(scores, descending=True)
            probs = sorted_scores.softmax(-1)
            # drop tokens once the mass before them already reaches top_p (keep at least one)
            drop = (probs.cumsum(-1) - probs) >= p.top_p
            scores = scores.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), _MASK)
        gen = _position_generator(p.seed, pos) if p.seed is not None else None
        out[row] = int(torch.multinomial(scores.softmax(-1), 1, generator=gen).item())
    return out
