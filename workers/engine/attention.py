"""Attention for a batch that mixes decodes and prefill chunks, over per-sequence KV regions.

The batch's tokens are laid out decodes first (in the order of their region rows), then
prefill chunks. New keys and values are written twice: into the paged store (the cache that
prefix sharing, preemption and hand-offs account in) and into each sequence's contiguous
region (`workers.engine.kv_cache`). Attention reads only regions, as views: nothing is
gathered per step.

- Decodes are attended in one call over the rows their regions span, `region[lo:hi, :, :width]`,
  with a mask ending each row at its own length. Grouped-query heads are folded into query
  rows (the query heads sharing a KV head become rows of one [g, head_dim] query), so each KV
  head is read once per step instead of once per query head.
- A prefill chunk attends alone, with a causal mask offset by the tokens computed before it;
  a chunk that starts its sequence attends only to itself and reads no cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(slots=True)
class DecodeBatch:
    """The step's decodes, which are the batch's first `count` tokens."""

    count: int
    lo: int  # the region rows spanned, [lo, hi)
    hi: int
    scatter: torch.Tensor | None  # each decode's row - lo; None when the decodes are rows lo..hi-1 in order
    width: int  # the longest decode context
    mask: torch.Tensor  # [hi - lo, 1, 1, width] bool, True = attend


@dataclass(slots=True)
class PrefillSpan:
    token_offset: int  # where the chunk's tokens start in the batch
    num_tokens: int
    context_len: int  # tokens attended: those computed before and the chunk itself
    row: int  # the sequence's region row
    causal_mask: torch.Tensor | None  # [num_tokens, context_len] bool, None when the chunk starts the sequence


@dataclass(slots=True)
class AttentionMetadata:
    slot_mapping: torch.Tensor  # [num_tokens] paged-store slot of every new token
    region_rows: torch.Tensor  # [num_tokens] region row of every new token
    positions: torch.Tensor  # [num_tokens] its position, the column in its region
    decodes: DecodeBatch | None
    prefills: list[PrefillSpan]


@dataclass(slots=True)
class LayerKV:
    """One layer's keys and values: the paged store [slots, kv_heads, head_dim] and the
    regions [rows, kv_heads, max_model_len, head_dim]."""

    k_paged: torch.Tensor
    v_paged: torch.Tensor
    k_region: torch.Tensor
    v_region: torch.Tensor


def write_kv(k: torch.Tensor, v: torch.Tensor, kv: LayerKV, meta: AttentionMetadata) -> None:
    kv.k_paged.index_copy_(0, meta.slot_mapping, k)
    kv.v_paged.index_copy_(0, meta.slot_mapping, v)
    kv.k_region[meta.region_rows, :, meta.positions] = k
    kv.v_region[meta.region_rows, :, meta.positions] = v


def attend_decodes(q: torch.Tensor, kv: LayerKV, d: DecodeBatch, scale: float) -> torch.Tensor:
    """[count, H, D] outputs of the decodes' queries [count, H, D]."""
    kv_heads, head_dim = kv.k_region.shape[1], kv.k_region.shape[3]
    query = q.view(d.count, kv_heads, -1, head_dim)  # query heads grouped by the KV head they share
    if d.scatter is not None:
        spread = query.new_zeros(d.hi - d.lo, *query.shape[1:])
        spread[d.scatter] = query
        query = spread
    keys = kv.k_region[d.lo : d.hi, :, : d.width]
    values = kv.v_region[d.lo : d.hi, :, : d.width]
    o = F.scaled_dot_product_attention(query, keys, values, attn_mask=d.mask, scale=scale)
    if d.scatter is not None:
        o = o[d.scatter]
    return o.reshape(d.count, -1, head_dim)


def attend_prefill(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv: LayerKV, span: PrefillSpan, scale: float) -> torch.Tensor:
    """[n, H, D] outputs of one prefill chunk's queries."""
    gqa = q.shape[1] != k.shape[1]
    if span.causal_mask is None:
        keys, values = k.transpose(0, 1).unsqueeze(0), v.transpose(0, 1).unsqueeze(0)
    else:
        keys = kv.k_region[span.row, :, : span.context_len].unsqueeze(0)  # [1, KVH, C, D]
        values = kv.v_region[span.row, :, : span.context_len].unsqueeze(0)
    query = q.transpose(0, 1).unsqueeze(0)  # [1, H, n, D]
    o = F.scaled_dot_product_attention(
        query, keys, values, attn_mask=span.causal_mask, is_causal=span.causal_mask is None, scale=scale, enable_gqa=gqa
    )
    return o.squeeze(0).transpose(0, 1)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv: LayerKV, meta: AttentionMetadata, scale: float) -> torch.Tensor:
    """q [T, H, D], k and v [T, KVH, D] of the batch's new tokens → [T, H, D]."""
    write_kv(k, v, kv, meta)
    out = torch.empty_like(q)
    if meta.decodes is not None:
        out[: meta.decodes.count] = attend_decodes(q[: meta.decodes.count], kv, meta.decodes, scale)
    for span in meta.prefills:
        sl = slice(span.token_offset, span.token_offset + span.num_tokens)
        out[sl] = attend_prefill(q[sl], k[sl], v[sl], kv, span, scale)
    return out
