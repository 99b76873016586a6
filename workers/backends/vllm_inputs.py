"""What the vLLM backend gives vLLM's engine: prompts with image embeddings, the prefill and
decode halves of a P/D hand-off, and the text a resumed request still owes its client.

Pure: plain values in, plain values out (tensors are only carried), so each rule is
unit-tested on a CPU without vLLM.

Images. The vision pool's embeddings arrive as `MultimodalSpan`s whose placeholder tokens are
already expanded in the prompt (`offset`, `length`). vLLM takes them as
`multi_modal_data={"image": [tensor [length, hidden], ...]}` when the engine is started with
`enable_mm_embeds=True`; it finds the expanded placeholders in the token ids and puts each
tensor there instead of running a vision tower. `multi_modal_uuids` carries each image's
content hash, so vLLM's prefix cache tells two images apart although their placeholder ids
are the same.

P/D hand-off through vLLM's KV connector (NixlConnector by default). The prefill engine runs
the prompt with `max_tokens=1` and `kv_transfer_params={"do_remote_decode": True}`; when it
stops for length (always, unless the first token is an end of sequence or a stop token, which
vLLM's `check_stop` tests before the length), the connector keeps the request's blocks and
returns the parameters a decode engine needs to read them (`remote_block_ids`,
`remote_engine_id`, `remote_request_id`, `remote_host`, `remote_port`, `tp_size`).

The decode engine is given prompt + [first token] — never the prompt alone, which would make
it sample the first token again. vLLM's NIXL connector then reports every token of that
prompt as loadable from the remote (`get_num_new_matched_tokens`: prompt length − computed),
and once the blocks have arrived the scheduler marks all of them computed but the last (a fully
loaded prompt always recomputes its last token, to get logits). The last is the first token:
the decode engine computes its KV itself, on top of the prefill's KV of the prompt, and samples
the second token from it. The first token is neither repeated nor re-sampled. (Connectors that
store whole blocks, like the example/shared-storage connector, load the full blocks of the
prompt and compute the rest; the result is the same.)
When prompt + first token starts a new KV block, the decode engine holds one block more than
the prefill sent; that block holds the first token alone, which the decode computes itself
(the GPU test `test_pd_handoff_at_a_block_boundary` covers this case).

When the first token ends the request there is nothing to hand off, and nothing may stay held
on the prefill GPU: an end-of-sequence or stop token finishes the request as "stopped", and the
connector frees its blocks at once (`request_finished` keeps blocks only for a length stop);
a request whose remaining `max_tokens` is 1 never asks for `do_remote_decode`, so nothing is
held. One case remains: a stop string in the first token's text. vLLM's detokenizer finds it
in the replica's process after the engine already finished the request for length, so the
connector holds the blocks until its expiry (`VLLM_NIXL_ABORT_REQUEST_TIMEOUT`, 480 s by
default) frees them; the backend returns no hand-off and aborts the request id, and the
blocks count as used until then. vLLM offers no call that frees a finished producer's blocks
from its own side; docs/vllm.md lists this as open.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Callable

from workers.engine.sequence import MultimodalSpan

DO_REMOTE_DECODE = {"do_remote_decode": True}


def vllm_prompt(token_ids: Sequence[int], images: Sequence[MultimodalSpan] = ()) -> dict[str, Any]:
    """vLLM's `TokensPrompt` for these token ids, with image embeddings in place of the
    placeholder tokens of each span."""
    prompt: dict[str, Any] = {"prompt_token_ids": list(token_ids)}
    if not images:
        return prompt
    spans = sorted(images, key=lambda s: s.offset)
    end = 0
    for span in spans:
        if span.embeds is None:
            raise ValueError(f"image at offset {span.offset}: no embeddings (the vision pool's output did not reach this replica)")
        if span.offset < end or span.offset + span.length > len(token_ids):
            raise ValueError(f"image at offset {span.offset} (length {span.length}) overlaps another or runs past the prompt ({len(token_ids)} tokens)")
        rows = getattr(span.embeds, "shape", (span.length,))[0]
        if rows != span.length:
            raise ValueError(f"image at offset {span.offset}: {rows} embedding rows for {span.length} placeholder tokens")
        placeholders = set(token_ids[span.offset : span.offset + span.length])
        if len(placeholders) != 1:
            raise ValueError(f"image at offset {span.offset}: its {span.length} tokens are not one repeated placeholder id")
        end = span.offset + span.length
    prompt["multi_modal_data"] = {"image": [span.embeds for span in spans]}
    prompt["multi_modal_uuids"] = {"image": [span.content_hash for span in spans]}
    return prompt


def continued_token_ids(prompt_token_ids: Sequence[int], resume_token_ids: Sequence[int]) -> list[int]:
    """What vLLM is given as the prompt of a request resumed after output the client has."""
    return [*prompt_token_ids, *resume_token_ids]


@dataclass(frozen=True, slots=True)
class VllmHandoff:
    """`Prefilled.handoff` of the vLLM backend: what a decode replica needs to continue.

    `token_ids` is the decode engine's whole prompt (prompt, resumed output, first token);
    `kv_transfer_params` is what the prefill engine's connector returned (None for connectors
    that share KV through storage and need no parameters); `text_chars_sent` counts the
    output characters the client has once the first chunk is out.
    """

    token_ids: list[int]
    kv_transfer_params: dict[str, Any] | None
    num_output_tokens: int  # resumed tokens + the first token
    text_chars_sent: int
    mm_uuids: tuple[str, ...] = field(default=())


def asks_remote_decode(max_tokens_left: int) -> bool:
    """Whether a prefill should keep its KV for a decode engine: not when one token is all the
    request may still produce (its first token ends it, whatever that token is)."""
    return max_tokens_left > 1


def first_token_ends(finish_reason: str | None, max_tokens_left: int) -> bool:
    """Whether the prefill's first token already finished the request.

    The prefill engine always stops after one token; it reports "length" for that when the
    request goes on. A "stop" (end of sequence, stop token, stop string) or "abort" ends the
    request, and so does "length" when one token was the whole remaining budget."""
    if finish_reason is None:
        raise ValueError("the prefill ended without a finish reason")
    if finish_reason == "length":
        return max_tokens_left <= 1
    return True


def handoff_after_first(
    token_ids: Sequence[int], first_token_ids: Sequence[int], kv_transfer_params: dict[str, Any] | None, *,
    num_resumed: int, text_chars_sent: int, mm_uuids: tuple[str, ...] = (),
) -> VllmHandoff:
    """The hand-off a prefill returns after a first token that does not end the request."""
    if len(first_token_ids) != 1:
        raise ValueError(f"a prefill hands off after exactly one token, got {len(first_token_ids)}")
    return VllmHandoff(
        token_ids=[*token_ids, *first_token_ids],
        kv_transfer_params=dict(kv_transfer_params) if kv_transfer_params is not None else None,
        num_output_tokens=num_resumed + 1,
        text_chars_sent=text_chars_sent,
        mm_uuids=mm_uuids,
    )


def resumed_text_owed(decode: Callable[[list[int]], str], context_ids: Sequence[int], resume_token_ids: Sequence[int], text_chars_sent: int) -> str:
    """Text of the resumed tokens the client has not received yet.

    Pavana's engine holds back the end of the text while it may still be a partial UTF-8
    character or the start of a stop string, so a client can have fewer characters than its
    tokens decode to. vLLM decodes only the tokens it samples itself; the held-back rest of the
    resumed tokens' text is owed, and goes first in the next chunk. The resumed tokens are
    decoded after a few tokens of context, as a detokenizer does mid-stream (a leading space
    survives). A character the resumed tokens leave unfinished is not owed: its bytes are in
    vLLM's prompt, and its detokenizer writes it once the next token completes it."""
    if not resume_token_ids:
        return ""
    context = list(context_ids[-6:])
    full = decode([*context, *resume_token_ids])
    head = decode(context)
    if not full.startswith(head):
        raise ValueError("the tokenizer decodes the prompt's end differently once the resumed tokens follow it")
    text = full[len(head) :].rstrip("\ufffd")
    if text_chars_sent > len(text):
        raise ValueError(f"resume_text_chars: {text_chars_sent} characters sent, but the resumed tokens decode to {len(text)}")
    return text[text_chars_sent:]
