"""Executes one `ScheduledBatch`: builds the flat inputs, runs the model over the KV cache (the
paged store and each running sequence's contiguous region, `workers.engine.kv_cache`), samples
the next token of every sequence whose chunk reached its end."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

import torch

from workers.engine.attention import AttentionMetadata, DecodeBatch, LayerKV, PrefillSpan
from workers.engine.config import EngineConfig
from workers.engine.kv_cache import SequenceRegions
from workers.engine.model_config import ModelConfig
from workers.engine.models.llama import LlamaModel
from workers.engine.outputs import TokenLogprob
from workers.engine.sampler import SamplingRow, logprob_records, sample_rows
from workers.engine.scheduler import ScheduledBatch, ScheduledChunk
from workers.engine.sequence import Sequence


@dataclass(slots=True)
class StepResult:
    """What one forward pass produced, by request id.

    `prompt_logprobs` maps a request to (index of the first prompt token covered, records in
    order): a chunk of a prompt yields the logprobs of the prompt tokens its positions predict.
    """

    tokens: dict[str, int] = field(default_factory=dict)
    logprobs: dict[str, TokenLogprob] = field(default_factory=dict)
    prompt_logprobs: dict[str, tuple[int, list[TokenLogprob]]] = field(default_factory=dict)


class ModelRunner:
    def __init__(self, model_config: ModelConfig, model: LlamaModel, config: EngineConfig, eos_token_ids: Collection[int] = ()) -> None:
        self.model_config = model_config
        self.model = model
        self.eos_token_ids = frozenset(eos_token_ids)  # masked before a request's min_tokens
        self.block_size = config.block_size
        dtype = model.embed_tokens.weight.dtype
        num_slots = config.num_kv_blocks * config.block_size
        shape = (num_slots, model_config.num_kv_heads, model_config.head_dim)
        self.kv_caches = [(torch.zeros(shape, dtype=dtype), torch.zeros(shape, dtype=dtype)) for _ in range(model_config.num_layers)]
        capacity = config.num_kv_blocks * config.block_size
        max_model_len = min(config.max_model_len or capacity, model_config.max_position_embeddings, capacity)
        self.regions = SequenceRegions(
            model_config.num_layers, config.max_num_seqs, max_model_len, model_config.num_kv_heads, model_config.head_dim, dtype
        )
        self.layer_kv = [LayerKV(k, v, kr, vr) for (k, v), (kr, vr) in zip(self.kv_caches, self.regions.layers)]

    # -- cache addressing -------------------------------------------------------------------
    def slots(self, seq: Sequence, start: int, end: int) -> torch.Tensor:
        """Cache slots of token positions [start, end) of a sequence."""
        return torch.tensor(self.slot_list(seq, start, end), dtype=torch.long)

    def slot_list(self, seq: Sequence, start: int, end: int) -> list[int]:
        bs, table = self.block_size, seq.block_table
        return [table[p // bs] * bs + p % bs for p in range(start, end)]

    @torch.inference_mode()
    def export_kv(self, seq: Sequence) -> torch.Tensor:
        """The KV of a sequence's computed tokens as one tensor [layers, 2, tokens, kv_heads, head_dim]."""
        slots = self.slots(seq, 0, seq.num_computed_tokens)
        return torch.stack([torch.stack((k[slots], v[slots])) for k, v in self.kv_caches])

    @torch.inference_mode()
    def import_kv(self, seq: Sequence, kv: torch.Tensor) -> None:
        slots = self.slots(seq, 0, kv.shape[2])
        for (k, v), layer_kv in zip(self.kv_caches, kv):
            k.index_copy_(0, slots, layer_kv[0].to(k.dtype))
            v.index_copy_(0, slots, layer_kv[1].to(v.dtype))

    # -- one step -----------------------------------------------------------------------------
    @torch.inference_mode()
    def execute(self, batch: ScheduledBatch, grammar_masks: Mapping[str, torch.Tensor] | None = None) -> StepResult:
        """Run the batch; returns the sampled next tokens (and logprobs where asked).

        `grammar_masks` holds, by request id, the tokens each constrained sequence's grammar
        allows next (bool [vocab]); the engine computes them before the step."""
        rows = self.regions.assign([(c.seq, c.start) for c in batch.chunks], self.kv_caches, self.slots)
        row_of = {c.seq.request_id: r for c, r in zip(batch.chunks, rows)}
        # decodes first in the order of their region rows, then prefill chunks
        chunks = sorted(batch.chunks, key=lambda c: (not c.is_decode, row_of[c.seq.request_id]))
        meta, token_ids, positions = self._metadata(chunks, [row_of[c.seq.request_id] for c in chunks])

        hidden = self.model.embed_tokens(torch.tensor(token_ids, dtype=torch.long))
        self._insert_multimodal(hidden, chunks)
        hidden = self.model(hidden, positions, meta, self.layer_kv)
        self.regions.advance([(c.seq, c.start + c.num_tokens) for c in chunks])

        result = StepResult(prompt_logprobs=self._prompt_logprobs(hidden, chunks))
        sampling = [(i, c) for i, c in enumerate(chunks) if c.samples]
        if not sampling:
            return result
        ends = torch.tensor([c.num_tokens for c in chunks]).cumsum(0) - 1
        logits = self.model.logits(hidden[ends[[i for i, _ in sampling]]])
        masks = grammar_masks or {}
        rows = [
            SamplingRow(c.seq.params, c.seq.num_output_tokens, c.seq.token_ids, c.seq.num_prompt_tokens, masks.get(c.seq.request_id))
            for _, c in sampling
        ]
        sampled = sample_rows(logits, rows, self.eos_token_ids)
        for (_, c), token, record in zip(sampling, sampled.tokens, sampled.logprobs):
            result.tokens[c.seq.request_id] = token
            if record is not None:
                result.logprobs[c.seq.request_id] = record
        return result

    def _prompt_logprobs(self, hidden: torch.Tensor, chunks: list[ScheduledChunk]) -> dict[str, tuple[int, list[TokenLogprob]]]:
        """Logprobs of the prompt tokens that this step's prompt chunks predict, for requests
        that asked and have no output yet (a sequence recomputed after a preemption reported
        them already; one preempted mid-prompt recomputes them, and the engine overwrites)."""
        wanted: list[tuple[ScheduledChunk, int, int, int]] = []  # chunk, first row, first position, count
        offset = 0
        for c in chunks:
            seq = c.seq
            # Position p predicts token p + 1; prompt tokens 1 .. P-1 are predicted by positions 0 .. P-2.
            last = min(c.start + c.num_tokens, seq.num_prompt_tokens - 1)
            if seq.params.prompt_logprobs is not None and seq.num_output_tokens == 0 and last > c.start:
                wanted.append((c, offset, c.start, last - c.start))
            offset += c.num_tokens
        if not wanted:
            return {}
        rows = torch.cat([torch.arange(row, row + n) for _, row, _, n in wanted])
        logprobs = self.model.logits(hidden[rows]).float().log_softmax(dim=-1)
        targets: list[int] = []
        ks: list[int] = []
        for c, _, start, n in wanted:
            targets += c.seq.token_ids[start + 1 : start + 1 + n]
            ks += [c.seq.params.prompt_logprobs] * n
        records = logprob_records(logprobs, targets, ks)
        out: dict[str, tuple[int, list[TokenLogprob]]] = {}
        first = 0
        for c, _, start, n in wanted:
            out[c.seq.request_id] = (start + 1, records[first : first + n])
            first += n
        return out

    def _metadata(self, chunks: list[ScheduledChunk], rows: list[int]) -> tuple[AttentionMetadata, list[int], torch.Tensor]:
        """The batch's flat inputs and attention metadata, built from plain Python lists
        (one tensor per field, not one per sequence)."""
        token_ids: list[int] = []
        positions: list[int] = []
        slot_mapping: list[int] = []
        token_rows: list[int] = []
        decode_rows: list[int] = []
        decode_lengths: list[int] = []
        prefills: list[PrefillSpan] = []
        for c, row in zip(chunks, rows):
            seq, end = c.seq, c.start + c.num_tokens
            token_ids.extend(seq.token_ids[c.start : end])
            positions.extend(range(c.start, end))
            slot_mapping.extend(self.slot_list(seq, c.start, end))
            token_rows.extend([row] * c.num_tokens)
            if c.is_decode:
                decode_rows.append(row)
                decode_lengths.append(end)
            else:
                mask = None
                if c.start > 0:
                    mask = torch.arange(end)[None, :] <= torch.arange(c.start, end)[:, None]
                prefills.append(PrefillSpan(len(token_ids) - c.num_tokens, c.num_tokens, end, row, mask))
        positions_t = torch.tensor(positions, dtype=torch.long)
        meta = AttentionMetadata(
            slot_mapping=torch.tensor(slot_mapping, dtype=torch.long),
            region_rows=torch.tensor(token_rows, dtype=torch.long),
            positions=positions_t,
            decodes=self._decode_batch(decode_rows, decode_lengths),
            prefills=prefills,
        )
        return meta, token_ids, positions_t

    @staticmethod
    def _decode_batch(rows: list[int], lengths: list[int]) -> DecodeBatch | None:
        """One padded call over the region rows the decodes span; rows in that span that
        decode nothing this step (a sequence mid-prompt) attend to one position, unused."""
        if not rows:
            return None
        lo, hi = rows[0], rows[-1] + 1
        span = [1] * (hi - lo)
        for r, n in zip(rows, lengths):
            span[r - lo] = n
        width = max(lengths)
        mask = torch.arange(width)[None, :] < torch.tensor(span)[:, None]
        dense = hi - lo == len(rows)
        scatter = None if dense else torch.tensor([r - lo for r in rows], dtype=torch.long)
        return DecodeBatch(len(rows), lo, hi, scatter, width, mask[:, None, None, :])

    @staticmethod
    def _insert_multimodal(hidden: torch.Tensor, chunks: list[ScheduledChunk]) -> None:
        """Replace placeholder-token embeddings by image embeddings where a chunk covers them,
        including when a chunk boundary falls inside an image's tokens."""
        offset = 0
        for c in chunks:
            end = c.start + c.num_tokens
            for span in c.seq.mm_spans:
                lo, hi = max(span.offset, c.start), min(span.offset + span.length, end)
                if lo >= hi:
                    continue
                if span.embeds is None:
                    raise ValueError(f"request {c.seq.request_id}: image embeddings needed at token {lo} but absent")
                hidden[offset + lo - c.start : offset + hi - c.start] = span.embeds[lo - span.offset : hi - span.offset].to(hidden.dtype)
            offset += c.num_tokens
