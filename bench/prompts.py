"""Prompt texts of an exact token length, and images as PNG data URLs.

A trace gives lengths, not texts. Each prompt is cut from a fixed passage at a per-request
offset and starts with the request's number, so no two prompts share a cache block (a shared
prefix would turn a benchmark of prefill into a benchmark of the prefix cache). Its length is
checked by encoding it the way the server will (with special tokens), because cutting text at
a token boundary and encoding again need not give the same count.
"""

from __future__ import annotations

import base64
import io
from typing import Protocol

import numpy as np

# Written for the benchmark; any prose works. Repeated as often as a long prompt needs.
PASSAGE = """\
The harbour woke before the town did. Gulls argued over the nets, a baker pushed open his
shutters, and the first ferry of the day sounded its horn twice as it left the quay. On the
hill the wind turbines turned slowly, catching the breeze that came in from the sea, and the
lamps along the promenade went out one by one as the sky grew pale. A girl on a bicycle rode
past the fish market with a basket of letters, and an old man sat on a bench reading yesterday's
newspaper, folding it carefully each time he turned a page. By eight the cafes were full of
people talking about the weather, the price of bread, the football match on Sunday and the new
bridge that was supposed to be finished last spring. Children ran to school along the canal,
counting the boats and the bicycles and the windows with flowers in them. In the library a
clerk sorted returned books into tall piles: history, travel, cooking, poetry, mathematics.
Somewhere a radio played an old song about the mountains, and someone hummed along, out of tune
but happy. The day would be long and warm, and in the evening the whole town would walk down to
the water to watch the sun sink behind the islands, the way it had every summer for a hundred
years. Numbers filled the ledger at the harbour office: 42 crates of apples, 17 barrels of oil,
305 sacks of flour, 8 tonnes of timber, and a single crate marked fragile that nobody claimed.
"""


class TextTokenizer(Protocol):
    """What the prompt builder needs of a tokenizer (Pavana's `Tokenizer` has it)."""

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]: ...

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str: ...


class PromptFactory:
    """Texts whose encoding, with special tokens, has the requested number of tokens."""

    MAX_ADJUSTMENTS = 12

    def __init__(self, tokenizer: TextTokenizer, *, seed: int = 0) -> None:
        self.tokenizer = tokenizer
        self.seed = seed
        self._passage_ids = tokenizer.encode(PASSAGE, add_special_tokens=False)
        if not self._passage_ids:
            raise ValueError("the tokenizer encodes the passage into no tokens")

    def _ids(self, offset: int, count: int) -> list[int]:
        source = self._passage_ids
        reps = (offset + count) // len(source) + 1
        return (source * reps)[offset : offset + count]

    def text(self, index: int, num_tokens: int) -> str:
        """A prompt for request `index` of `num_tokens` tokens as the server counts them; when
        no cut reaches the count exactly (very short prompts), the closest one."""
        if num_tokens < 1:
            raise ValueError(f"num_tokens: must be >= 1, got {num_tokens}")
        head = f"{index}. "
        offset = int(np.random.default_rng([self.seed, index]).integers(len(self._passage_ids)))
        take = num_tokens - len(self.tokenizer.encode(head, add_special_tokens=True))
        if take <= 0:  # too short for the request's number: the passage alone, at its offset
            head, take = "", num_tokens
        best: tuple[int, str] | None = None
        for _ in range(self.MAX_ADJUSTMENTS):
            text = head + self.tokenizer.decode(self._ids(offset, take))
            error = len(self.tokenizer.encode(text, add_special_tokens=True)) - num_tokens
            if best is None or abs(error) < abs(best[0]):
                best = (error, text)
            next_take = max(0, take - error)
            if error == 0 or next_take == take:
                break
            take = next_take
        assert best is not None
        return best[1]


def png_data_url(seed: int, size: int = 64) -> str:
    """A distinct random RGB image (no two requests hit the same embedding-cache entry)."""
    from PIL import Image

    if size < 1:
        raise ValueError(f"size: must be >= 1 pixel, got {size}")
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
