"""Attention over the paged KV cache for a batch that mixes decodes and prefill chunks.

The batch's tokens are laid out decodes first, then prefill chunks. New keys and values are
written into their cache slots first; then each query attends to its sequence's whole context
gathered from the cache. Decodes are attended together (one padded SDPA call); each prefill
chunk is attended on its own with a causal mask offset by the tokens already computed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(slots=True)
class PrefillSpan:
    token_offset: int  # where the chunk's tokens start in the batch
    num_tokens: int
    context_slots: torch.Tensor  # [context_len] cache slots of the whole context, chunk included
    causal_mask: torch.Tensor | None  # [num_tokens, context_len] bool, None when plain causal


@dataclass(slots=True)
class AttentionMetadata:
    slot_mapping: torch.Tensor  # [num_tokens] cache slot of every new token
    num_decodes: int
    decode_slots: torch.Tensor | None  # [num_decodes, max_context] cache slots, padded
    decode_mask: torch.Tensor | None  # [num_decodes, 1, 1, max_context] bool, True = attend
    prefills: list[PrefillSpan]


def paged_attention(
    q: torch.Tensor,  # [T, H, D]
    k: torch.Tensor,  # [T, KVH, D]
    v: torch.Tensor,  # [T, KVH, D]
    k_cache: torch.Tensor,  # [num_slots, KVH, D]
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
) -> torch.Tensor:
    k_cache.index_copy_(0, meta.slot_mapping, k)
    v_cache.index_copy_(0, meta.slot_mapping, v)
    out = torch.empty_like(q)
    gqa = q.shape[1] != k.shape[1]
    if meta.num_decodes:
        n = meta.num_decodes
        keys = k_cache[meta.decode_slots].transpose(1, 2)  # [n, KVH, C, D]
        values = v_cache[meta.decode_slots].transpose(1, 2)
        query = q[:n].unsqueeze(2)  # [n, H, 1, D]
        o = F.scaled_dot_product_attention(query, keys, values, attn_mask=meta.decode_mask, scale=scale, enable_gqa=gqa)
        out[:n] = o.squeeze(2)
    for span in meta.prefills:
        sl = slice(span.token_offset, span.token_offset + span.num_tokens)
        keys = k_cache[span.context_slots].transpose(0, 1).unsqueeze(0)  # [1, KVH, C, D]
        values = v_cache[span.context_slots].transpose(0, 1).unsqueeze(0)
        query = q[sl].transpose(0, 1).unsqueeze(0)  # [1, H, n, D]
        o = F.scaled_dot_product_attention(
            query, keys, values, attn_mask=span.causal_mask, is_causal=span.causal_mask is None, scale=scale, enable_gqa=gqa
        )
        out[sl] = o.squeeze(0).transpose(0, 1)
    return out
