"""Executes one `ScheduledBatch`: builds the flat inputs, runs the model over the paged cache,
samples the next token of every sequence whose chunk reached its end."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

import torch

from workers.engine.attention import AttentionMetadata, DecodeGroup, PrefillSpan
from workers.engine.config import EngineConfig
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

    # -- cache addressing -------------------------------------------------------------------
    def slots(self, seq: Sequence, start: int, end: int) -> torch.Tensor:
        """Cache slots of token positions [start, end) of a sequence."""
        positions = torch.arange(start, end)
        table = torch.tensor(seq.block_table, dtype=torch.long)
        return table[positions // self.block_size] * self.block_size + positions % self.block_size

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
        # decodes first, shortest context first (for grouping), then prefill chunks
        chunks = sorted(batch.chunks, key=lambda c: (not c.is_decode, c.start if c.is_decode else 0))
        bs = self.block_size
        token_ids: list[int] = []
        positions: list[torch.Tensor] = []
        slot_mapping: list[torch.Tensor] = []
        decode_tables: list[torch.Tensor] = []
        decode_lengths: list[int] = []
        prefills: list[PrefillSpan] = []
        for c in chunks:
            seq, end = c.seq, c.start + c.num_tokens
            token_ids.extend(seq.token_ids[c.start : end])
            positions.append(torch.arange(c.start, end))
            slot_mapping.append(self.slots(seq, c.start, end))
            table = torch.tensor(seq.block_table[: -(-end // bs)], dtype=torch.long)
            if c.is_decode:
                decode_tables.append(table)
                decode_lengths.append(end)
            else:
                mask = None
                if c.start > 0:
                    mask = torch.arange(end)[None, :] <= torch.arange(c.start, end)[:, None]
                prefills.append(PrefillSpan(len(token_ids) - c.num_tokens, c.num_tokens, end, table, mask))
        meta = AttentionMetadata(
            block_size=bs,
            slot_mapping=torch.cat(slot_mapping),
            decode_groups=self._group_decodes(decode_tables, decode_lengths),
            prefills=prefills,
        )

        hidden = self.model.embed_tokens(torch.tensor(token_ids, dtype=torch.long))
        self._insert_multimodal(hidden, chunks)
        hidden = self.model(hidden, torch.cat(positions), meta, self.kv_caches)

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

    def _group_decodes(self, tables: list[torch.Tensor], lengths: list[int]) -> list[DecodeGroup]:
        """Split decodes (sorted by context length) into groups whose padding stays small:
        a new group starts when the padded width would exceed twice the group's shortest."""
        groups: list[DecodeGroup] = []
        first = 0
        while first < len(tables):
            end = first + 1
            while end < len(tables) and len(tables[end]) <= 2 * len(tables[first]) + 1:
                end += 1
            padded = torch.nn.utils.rnn.pad_sequence(tables[first:end], batch_first=True)
            width = padded.shape[1] * self.block_size
            mask = torch.arange(width)[None, :] < torch.tensor(lengths[first:end])[:, None]
            groups.append(DecodeGroup(first, end - first, padded, mask[:, None, None, :]))
            first = end
        return groups

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
