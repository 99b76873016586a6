"""Log-probabilities as the two OpenAI endpoints report them, from the engine's `TokenLogprob`s.

The engine reports token ids; a client wants each token's text. A token's text is its own
bytes, not a decode of it in isolation (byte-level vocabularies split characters across
tokens, and SentencePiece decoders drop a leading space at the start of a decode), so the
bytes come from llguidance's reading of the tokenizer (`LLTokenizer.decode_bytes`), the same
reading the engine's grammar masks use. A token whose bytes are not valid UTF-8 by themselves
is shown as OpenAI shows it, `bytes:\\xe2\\x80`; chat's `bytes` field carries the exact bytes.

Both transports use this module: the HTTP formats (`router/formats.py`) and the gRPC service.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from router.protocol import CompletionLogprobs, TokenLogprobInfo, TopLogprob
from workers.requests import TokenLogprob

# JSON has no -inf; a token the grammar or a -100 bias ruled out is reported at this floor, as vLLM does.
LOGPROB_FLOOR = -9999.0


def _finite(logprob: float) -> float:
    return max(logprob, LOGPROB_FLOOR)


class TokenTexts:
    """Each token's bytes and the string shown for it, for one tokenizer (cached: a response
    with logprobs names the same few thousand tokens again and again)."""

    def __init__(self, tokenizer: Any) -> None:
        import llguidance

        self._llg = llguidance.LLTokenizer(tokenizer.backend.to_str(), eos_token=sorted(tokenizer.eos_token_ids) or None)
        self.vocab_size = self._llg.vocab_size
        self.token_bytes = lru_cache(maxsize=65536)(self._token_bytes)

    def _token_bytes(self, token_id: int) -> bytes:
        if not 0 <= token_id < self.vocab_size:  # padding rows of an embedding larger than the vocabulary
            return b""
        return self._llg.decode_bytes([token_id])

    def token_str(self, token_id: int) -> str:
        raw = self.token_bytes(token_id)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)


def chat_logprobs(entries: Sequence[TokenLogprob], texts: TokenTexts) -> list[TokenLogprobInfo]:
    """Chat's `logprobs.content`: one entry per token with its `top_logprobs`."""
    return [
        TokenLogprobInfo(
            token=texts.token_str(entry.token_id),
            logprob=_finite(entry.logprob),
            bytes=list(texts.token_bytes(entry.token_id)),
            top_logprobs=[
                TopLogprob(token=texts.token_str(tid), logprob=_finite(lp), bytes=list(texts.token_bytes(tid))) for tid, lp in entry.top
            ],
        )
        for entry in entries
    ]


class CompletionLogprobWriter:
    """Completions' parallel lists for one choice, chunk by chunk: `text_offset` runs on across
    chunks, counting each token's string from the start of the choice's text (the echoed
    prompt's first token when `echo` is on)."""

    def __init__(self, texts: TokenTexts) -> None:
        self.texts = texts
        self.offset = 0

    def write(self, entries: Sequence[TokenLogprob | None], token_ids: Sequence[int] | None = None) -> CompletionLogprobs:
        """`entries` may hold None (a prompt's first token has no logprob); `token_ids` then
        names the tokens, else each entry names its own."""
        out = CompletionLogprobs()
        for i, entry in enumerate(entries):
            token_id = entry.token_id if entry is not None else (token_ids[i] if token_ids is not None else 0)
            token = self.texts.token_str(token_id)
            out.tokens.append(token)
            out.text_offset.append(self.offset)
            self.offset += len(token)
            if entry is None:
                out.token_logprobs.append(None)
                out.top_logprobs.append(None)
                continue
            out.token_logprobs.append(_finite(entry.logprob))
            top: dict[str, float] = {}
            for tid, lp in entry.top:
                top.setdefault(self.texts.token_str(tid), _finite(lp))
            out.top_logprobs.append(top)
        return out


def merge_completion_logprobs(parts: Sequence[CompletionLogprobs]) -> CompletionLogprobs:
    out = CompletionLogprobs()
    for part in parts:
        out.tokens += part.tokens
        out.token_logprobs += part.token_logprobs
        out.top_logprobs += part.top_logprobs
        out.text_offset += part.text_offset
    return out
