"""Grammar-constrained decoding: which tokens a request's grammar allows next.

Pavana uses llguidance (the library behind vLLM's and llama.cpp's `guidance` backends): a Rust
library with no Python dependencies, which reads a Hugging Face `tokenizer.json` itself, so
the engine needs no `transformers` (xgrammar would pull triton and transformers at runtime).
The router turns a JSON schema or a Lark grammar into llguidance's grammar string
(`SamplingParams.grammar`); here that string becomes one matcher per sequence.

The engine builds one `Grammars` (one `LLTokenizer`, built on the first grammar request: 0.4 s
for SmolLM2's 49k tokens) and keeps each sequence's matcher on the sequence itself
(`Sequence.grammar_matcher`). The matcher advances only when a token is sampled, so a
sequence recomputed after a preemption (which samples its *next* token, never an old one) feeds
it each token exactly once; a decode replica rebuilds it from the grammar and the output tokens
the prefill replica produced (`Grammars.matcher(grammar, consumed=...)`).

When the grammar is complete, its mask allows only EOS, and the ordinary EOS rule ends the
sequence with "stop". With `ignore_eos` that EOS ends it all the same (`Grammars.consume` says
so), since nothing can follow a finished grammar. Masks are computed here with llguidance's
numpy helpers and unpacked with numpy bit operations (not `llguidance.torch`, which compiles
its kernels with `torch.compile`): about 0.5 ms for 16 rows of a 49k vocabulary.

Measured on SmolLM2's tokenizer: a matcher takes about 1.2 ms to build from a JSON schema's
grammar, so each request builds its own and compiled grammars are not cached.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence as Seq
from pathlib import Path

import numpy as np
import torch


def _brief(message: str, limit: int = 500) -> str:
    """llguidance's messages may end in a dump of the parser's state: keep what a person reads."""
    head = message.split("<state>", 1)[0].strip()
    return head if len(head) <= limit else head[: limit - 1] + "…"


class GrammarError(ValueError):
    """A grammar that cannot be used with this model (bad syntax, no tokenizer.json)."""


class Grammars:
    """The engine's grammar side: one llguidance tokenizer, one matcher per constrained sequence."""

    def __init__(self, tokenizer_json: str, vocab_size: int, eos_token_ids: Collection[int]) -> None:
        import llguidance

        if not eos_token_ids:
            raise GrammarError("grammar: the model names no end-of-sequence token, so a grammar could never end")
        self._llguidance = llguidance
        self.vocab_size = vocab_size
        self.eos_token_ids = frozenset(eos_token_ids)
        # n_vocab is the model's (its logits' width), which may exceed the tokenizer's own size.
        self.tokenizer = llguidance.LLTokenizer(tokenizer_json, n_vocab=vocab_size, eos_token=sorted(self.eos_token_ids))
        self._executor = llguidance.LLExecutor()

    @classmethod
    def from_dir(cls, path: Path, vocab_size: int, eos_token_ids: Collection[int]) -> Grammars:
        tokenizer_json = path / "tokenizer.json"
        if not tokenizer_json.is_file():
            raise GrammarError(f"grammar: the model at {path} has no tokenizer.json, which constrained decoding needs")
        return cls(tokenizer_json.read_text(encoding="utf-8"), vocab_size, eos_token_ids)

    def matcher(self, grammar: str, consumed: Seq[int] = ()):
        """A fresh matcher for `grammar` that has consumed `consumed` (a hand-off's output so
        far); `GrammarError` naming the grammar's problem when it cannot be used."""
        m = self._llguidance.LLMatcher(self.tokenizer, grammar, log_level=0)
        if m.is_error():
            raise GrammarError(f"grammar: {_brief(m.get_error())}")
        if consumed and not m.consume_tokens(list(consumed)):
            raise GrammarError(f"grammar: the tokens already generated do not match it: {_brief(m.get_error())}")
        return m

    def allowed_tokens(self, matchers: Seq[object]) -> torch.Tensor:
        """A bool tensor [len(matchers), vocab]: True where each matcher allows the token.

        A matcher never allows nothing: a finished grammar allows EOS, and so does one in an
        error state (which `consume` then reports), so a masked row always has a token to draw.
        """
        from llguidance.numpy import allocate_token_bitmask, fill_next_token_bitmask_par

        bitmask = allocate_token_bitmask(len(matchers), self.vocab_size)
        fill_next_token_bitmask_par(self._executor, [(m, i) for i, m in enumerate(matchers)], bitmask)
        # Bit j of 32-bit word w is token 32 * w + j: with the words' bytes in little-endian
        # order, unpacking bytes little-bit-first lists the tokens in order.
        words = bitmask.astype("<i4", copy=False)  # a no-op on little-endian machines
        bits = np.unpackbits(words.view(np.uint8), axis=1, bitorder="little")[:, : self.vocab_size]
        return torch.from_numpy(bits.view(np.bool_))

    def consume(self, matcher, token: int) -> tuple[bool, str | None]:
        """Advance a matcher by a sampled token: (whether the grammar is now finished, error).

        Finished means the grammar was complete and the token is EOS, the only token it then
        allows: the sequence stops with "stop" even under `ignore_eos`. An error (a token the
        mask allowed but the matcher refuses: it should not happen) comes back as a message,
        so the engine ends that one request and not its loop.
        """
        # A matcher already in its error state accepts EOS, so its state is checked as well.
        if not matcher.consume_token(token) or matcher.is_error():
            return False, f"grammar: token {token} was refused: {_brief(matcher.get_error()) or 'no reason given'}"
        return token in self.eos_token_ids and matcher.is_stopped(), None
