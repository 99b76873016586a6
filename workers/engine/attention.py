"""Attention over the paged KV cache for a batch that mixes decodes and prefill chunks.

The batch's tokens are laid out decodes first, then prefill chunks. New keys and values are
written into their cache slots first; then each query attends to its sequence's whole context
gathered from the cache block by block (`index_select` of whole blocks copies contiguous
memory, about three times faster on a CPU than gathering token rows). Decodes are attended
together (one padded SDPA call); each prefill chunk is attended on its own with a causal mask
offset by the tokens already computed. Decodes are grouped by context length so that short
contexts are not padded to the longest one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(slots=True)
class PrefillSpan:
    token_offset: int  # where the chunk's tokens start in the batch
    num_tokens: int
    context_len: int  # tokens attended: those computed before and the chunk itself
    block_table: torch.Tensor  # [blocks] covering the context
    causal_mask: torch.Tensor | None  # [num_tokens, context_len] bool, None when plain causal


@dataclass(slots=True)
class DecodeGroup:
    """Decodes of similar context length, attended in one padded call."""

    first: int  # index of the group's first token in the batch
    count: int
    block_tables: torch.Tensor  # [count, max_blocks], padded with block 0
    mask: torch.Tensor  # [count, 1, 1, max_blocks * block_size] bool, True = attend


@dataclass(slots=True)
class AttentionMetadata:
    block_size: int
    slot_mapping: torch.Tensor  # [num_tokens] cache slot of every new token
    decode_groups: list[DecodeGroup]
    prefills: list[PrefillSpan]


def gather_blocks(cache: torch.Tensor, block_ids: torch.Tensor, block_size: int) -> torch.Tensor:
    """Whole blocks of a [slots, kv_heads, head_dim] cache: [len(block_ids) * block_size, kv_heads, head_dim]."""
    slots, kv_heads, head_dim = cache.shape
    blocks = cache.view(slots // block_size, block_size * kv_heads * head_dim)
    return blocks.index_select(0, block_ids).view(-1, kv_heads, head_dim)


def paged_attention(
    q: torch.Tensor,  # [T, H, D]
    k: torch.Tensor,  # [T, KVH, D]
    v: torch.Tensor,  # [T, KVH, D]
    k_cache: torch.Tensor,  # [num_slots, KVH, D]
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
    block_size: int,
) -> torch.Tensor:
    k_cache.index_copy_(0, meta.slot_mapping, k)
    v_cache.index_copy_(0, meta.slot_mapping, v)
    out = torch.empty_like(q)
    gqa = q.shape[1] != k.shape[1]
    for group in meta.decode_groups:
        sl = slice(group.first, group.first + group.count)
        tables = group.block_tables.reshape(-1)
        keys = gather_blocks(k_cache, tables, block_size).view(group.count, -1, *k.shape[1:]).transpose(1, 2)  # [n, KVH, C, D]
        values = gather_blocks(v_cache, tables, block_size).view(group.count, -1, *v.shape[1:]).transpose(1, 2)
        query = q[sl].unsqueeze(2)  # [n, H, 1, D]
        o = F.scaled_dot_product_attention(query, keys, values, attn_mask=group.mask, scale=scale, enable_gqa=gqa)
        out[sl] = o.squeeze(2)
    for span in meta.prefills:
        sl = slice(span.token_offset, span.token_offset + span.num_tokens)
        if span.causal_mask is None:
            # A chunk that starts the sequence attends only to itself: no need to read the cache.
            keys, values = k[sl].transpose(0, 1).unsqueeze(0), v[sl].transpose(0, 1).unsqueeze(0)
        else:
            c = span.context_len
            keys = gather_blocks(k_cache, span.block_table, block_size)[:c].transpose(0, 1).unsqueeze(0)  # [1, KVH, C, D]
            values = gather_blocks(v_cache, span.block_table, block_size)[:c].transpose(0, 1).unsqueeze(0)
        query = q[sl].transpose(0, 1).unsqueeze(0)  # [1, H, n, D]
        o = F.scaled_dot_product_attention(
            query, keys, values, attn_mask=span.causal_mask, is_causal=span.causal_mask is None, scale=scale, enable_gqa=gqa
        )
        out[sl] = o.squeeze(0).transpose(0, 1)
    return out
