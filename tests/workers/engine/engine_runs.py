"""Running requests through an `LLMEngine` to the end, for the engine's tests."""

from __future__ import annotations

from workers.engine.llm_engine import LLMEngine
from workers.engine.sampling import SamplingParams


def run(engine: LLMEngine, requests: dict[str, tuple[list[int], SamplingParams]]):
    """Every request's outputs, in order, by request id."""
    for rid, (p, params) in requests.items():
        engine.add_request(rid, p, params)
    outs = {rid: [] for rid in requests}
    while engine.has_unfinished():
        for out in engine.step():
            outs[out.request_id].append(out)
    return outs


def tokens_of(outs) -> list[int]:
    return [t for o in outs for t in o.new_token_ids]
