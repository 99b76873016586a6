"""The engine loop: schedule ▸ run ▸ postprocess, readable top to bottom in `step`.

One engine serves one replica. In `colocated` mode it prefills and decodes; in `prefill` mode
every request ends after its first token and comes back with its KV as a `KVHandoff`; in
`decode` mode requests arrive as hand-offs and continue exactly as a colocated run would.

Beyond tokens, a step can carry logprobs (of each sampled token, and of the prompt on a
request's first output) and constrain tokens with a grammar (`constraint.Grammars`); a grammar
that refuses a token fails that one request (finish reason "error"), never the loop.
"""

from __future__ import annotations

import itertools
import math
import logging
from collections.abc import Sequence as Seq
from dataclasses import dataclass
from pathlib import Path

import torch

from workers.engine.block_manager import BlockManager
from workers.engine.config import EngineConfig
from workers.engine.loader import load_llama
from workers.engine.constraint import Grammars
from workers.engine.model_runner import ModelRunner, StepResult
from workers.engine.outputs import KVHandoff, RequestOutput, TokenLogprob
from workers.engine.postprocess import (
    SampledToken,
    StopRule,
    advance,
    cut_at_stop_string,
    stop_hold_back,
    stops_on_token,
    visible_text,
)
from workers.engine.sampling import SamplingParams
from workers.engine.scheduler import ScheduledBatch, make_scheduler
from workers.engine.sequence import MultimodalSpan, Sequence, SequenceStatus

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Request:
    seq: Sequence
    detokenizer: object | None
    text: str = ""
    emitted_chars: int = 0
    hold_back: int = 0
    # Filled by position as prompt chunks are computed (a recomputed chunk overwrites), sent
    # with the first output and then dropped; None when not asked or already sent.
    prompt_logprobs: list[TokenLogprob | None] | None = None


class LLMEngine:
    def __init__(self, model_path: str | Path | None = None, config: EngineConfig | None = None) -> None:
        self.config = config or EngineConfig()
        if self.config.num_threads:
            torch.set_num_threads(self.config.num_threads)
        if model_path is None:
            from workers.engine.default_model import ensure_default_model

            model_path = ensure_default_model()
        self.model_path = Path(model_path)
        self.model_config, model = load_llama(self.model_path, self.config.dtype)
        self.tokenizer = self._load_tokenizer(self.model_path)
        capacity = self.config.num_kv_blocks * self.config.block_size
        self.max_model_len = min(self.config.max_model_len or capacity, self.model_config.max_position_embeddings, capacity)
        self.block_manager = BlockManager(self.config.num_kv_blocks, self.config.block_size, self.config.enable_prefix_caching)
        self.scheduler = make_scheduler(
            self.config.policy,
            self.block_manager,
            chunk_size=self.config.chunk_size,
            max_num_seqs=self.config.max_num_seqs,
            max_model_len=self.max_model_len,
        )
        self.eos_token_ids = frozenset(self.model_config.eos_token_ids) | (
            self.tokenizer.eos_token_ids if self.tokenizer else frozenset()
        )
        self.runner = ModelRunner(self.model_config, model, self.config, self.eos_token_ids)
        self._requests: dict[str, _Request] = {}
        self._arrivals = itertools.count()
        self.last_step_tokens = (0, 0)  # prefill and decode tokens the last step computed
        self._grammars: Grammars | None = None  # built on the first grammar request
        self.stop_rule = StopRule(self.max_model_len, self.eos_token_ids, prefill_only=self.config.mode == "prefill")

    @staticmethod
    def _load_tokenizer(path: Path):
        if not (path / "tokenizer.json").is_file():
            log.info("no tokenizer.json in %s: token ids only, no text or stop strings", path)
            return None
        from workers.engine.tokenizer import Tokenizer

        return Tokenizer.from_dir(path)

    # -- requests in ----------------------------------------------------------------------------
    def add_request(
        self,
        request_id: str,
        prompt_token_ids: Seq[int],
        params: SamplingParams | None = None,
        mm_spans: Seq[MultimodalSpan] = (),
    ) -> None:
        """Queue a prompt. Bad input raises `ValueError` naming the field; nothing else changes."""
        self.add(self.prepare(request_id, prompt_token_ids, params, mm_spans))

    def add_handoff(self, handoff: KVHandoff) -> None:
        """Continue a sequence prefilled elsewhere: its KV is written into this cache on admission."""
        self.add(self.prepare_handoff(handoff))

    def prepare(
        self,
        request_id: str,
        prompt_token_ids: Seq[int],
        params: SamplingParams | None = None,
        mm_spans: Seq[MultimodalSpan] = (),
        *,
        priority: int = 0,
        deadline_s: float = math.inf,
        resume_token_ids: Seq[int] = (),
        resume_text_chars: int = 0,
    ) -> Sequence:
        """Validate a request and build its sequence without touching the engine's state, so a
        caller on another thread can reject bad input at once and admit later with `add`.
        `priority` and `deadline_s` order the waiting queue (QoS classes).

        `resume_token_ids` continues a request whose replica was lost after streaming those
        output tokens (and `resume_text_chars` characters of their text): they are recomputed
        with the prompt, exactly as after a preemption by recomputation, and sampling goes on
        from output position `len(resume_token_ids)`, so seeded draws, penalties, `max_tokens`,
        stop strings and the grammar continue where the lost replica stopped."""
        params = params or SamplingParams()
        prompt = list(prompt_token_ids)
        resumed = list(resume_token_ids)
        self._validate(request_id, prompt, params)
        self._validate_resumed(prompt, resumed, resume_text_chars, params)
        hidden = self.model_config.hidden_size
        for span in mm_spans:
            if span.offset < 0 or span.offset + span.length > len(prompt):
                raise ValueError(f"mm_spans: span at {span.offset} (+{span.length}) lies outside the prompt of {len(prompt)} tokens")
            if span.embeds is None or tuple(span.embeds.shape) != (span.length, hidden):
                shape = None if span.embeds is None else tuple(span.embeds.shape)
                raise ValueError(f"mm_spans: span at {span.offset} needs embeddings of shape ({span.length}, {hidden}), got {shape}")
        return Sequence(
            request_id, prompt + resumed, params, next(self._arrivals), num_prompt_tokens=len(prompt), mm_spans=list(mm_spans),
            num_text_chars_emitted=resume_text_chars, priority=priority, deadline_s=deadline_s,
            grammar_matcher=self._matcher(params, resumed),
        )

    def prepare_handoff(self, handoff: KVHandoff, *, priority: int = 0, deadline_s: float = math.inf) -> Sequence:
        """A prefilled sequence's continuation. Its KV covers every token but the last (the
        one the prefill engine sampled): the prompt, and for a resumed request the output
        recomputed with it."""
        prompt = handoff.token_ids[: handoff.num_prompt_tokens]
        self._validate(handoff.request_id, prompt, handoff.params)
        outputs = handoff.token_ids[handoff.num_prompt_tokens :]
        if not outputs:
            raise ValueError("token_ids: a hand-off carries at least the prefill engine's first token")
        self._validate_resumed(prompt, outputs[:-1], handoff.num_text_chars_emitted, handoff.params)
        if handoff.kv.shape[2] != len(handoff.token_ids) - 1:
            raise ValueError(f"kv: holds {handoff.kv.shape[2]} tokens, expected {len(handoff.token_ids) - 1} (every token but the last)")
        return Sequence(
            handoff.request_id,
            list(handoff.token_ids),
            handoff.params,
            next(self._arrivals),
            num_prompt_tokens=handoff.num_prompt_tokens,
            num_computed_tokens=handoff.kv.shape[2],
            mm_spans=[MultimodalSpan(o, n, h) for o, n, h in handoff.mm_hashes],
            pending_kv=handoff.kv,
            num_text_chars_emitted=handoff.num_text_chars_emitted,
            priority=priority,
            deadline_s=deadline_s,
            # The prefill replica's matcher stayed there: rebuild it and feed it the output so far.
            grammar_matcher=self._matcher(handoff.params, outputs),
        )

    @property
    def grammars(self) -> Grammars:
        """The engine's grammar side, built once, on first use (`GrammarError` without a
        tokenizer.json)."""
        if self._grammars is None:
            self._grammars = Grammars.from_dir(self.model_path, self.model_config.vocab_size, self.eos_token_ids)
        return self._grammars

    def _matcher(self, params: SamplingParams, consumed: Seq[int] = ()):
        return None if params.grammar is None else self.grammars.matcher(params.grammar, consumed)

    def _validate(self, request_id: str, prompt: list[int], params: SamplingParams) -> None:
        if not isinstance(params, SamplingParams):
            raise ValueError(f"params: expected SamplingParams, got {type(params).__name__}")
        if request_id in self._requests:
            raise ValueError(f"request_id: {request_id!r} is already running")
        if not prompt:
            raise ValueError("prompt: must contain at least one token")
        if len(prompt) >= self.max_model_len:
            raise ValueError(
                f"prompt: {len(prompt)} tokens do not fit the model's context of {self.max_model_len} tokens "
                "(at least one must be left to generate)"
            )
        vocab = self.model_config.vocab_size
        if min(prompt) < 0 or max(prompt) >= vocab:
            raise ValueError(f"prompt: token ids must lie in [0, {vocab}), got {min(prompt)}..{max(prompt)}")
        for token, _ in params.logit_bias:
            if token >= vocab:
                raise ValueError(f"logit_bias: token id {token} lies outside the vocabulary [0, {vocab})")
        if len(self._requests) >= self.config.max_queued_requests:
            raise OverflowError(f"engine: {len(self._requests)} requests queued, the limit is {self.config.max_queued_requests}")

    def _validate_resumed(self, prompt: list[int], resumed: list[int], text_chars: int, params: SamplingParams) -> None:
        """Output carried over from a lost replica must be output this request could have had."""
        if text_chars < 0:
            raise ValueError(f"resume_text_chars: must be >= 0, got {text_chars}")
        if not resumed:
            return
        vocab = self.model_config.vocab_size
        if min(resumed) < 0 or max(resumed) >= vocab:
            raise ValueError(f"resume_token_ids: token ids must lie in [0, {vocab}), got {min(resumed)}..{max(resumed)}")
        if len(resumed) >= params.max_tokens:
            raise ValueError(f"resume_token_ids: {len(resumed)} tokens leave none of max_tokens={params.max_tokens} to generate")
        if len(prompt) + len(resumed) >= self.max_model_len:
            raise ValueError(
                f"resume_token_ids: the prompt's {len(prompt)} and {len(resumed)} resumed tokens leave none of the model's "
                f"context of {self.max_model_len} tokens to generate"
            )

    def add(self, seq: Sequence) -> None:
        """Admit a prepared sequence into the waiting queue."""
        if seq.request_id in self._requests:
            raise ValueError(f"request_id: {seq.request_id!r} is already running")
        detok = None
        if self.tokenizer is not None:
            from workers.engine.tokenizer import IncrementalDetokenizer

            detok = IncrementalDetokenizer(self.tokenizer)
        request = _Request(seq, detok, hold_back=stop_hold_back(seq.params.stop))
        if seq.params.prompt_logprobs is not None and not seq.num_output_tokens:
            request.prompt_logprobs = [None] * seq.num_prompt_tokens
        if seq.num_output_tokens:
            # A hand-off or a resumed request: its output so far was reported elsewhere. Feed
            # it to the detokenizer so that text and stop strings continue seamlessly.
            self._detokenize(request, seq.output_token_ids)
            request.emitted_chars = min(seq.num_text_chars_emitted, len(request.text))
        self._requests[seq.request_id] = request
        self.scheduler.add(seq)

    def seq(self, request_id: str) -> Sequence | None:
        """The running or waiting sequence of a request, if the engine holds it."""
        request = self._requests.get(request_id)
        return request.seq if request is not None else None

    def abort(self, request_id: str) -> bool:
        request = self._requests.pop(request_id, None)
        if request is None:
            return False
        self.scheduler.finish(request.seq, "abort")
        return True

    # -- the loop -------------------------------------------------------------------------------
    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    def step(self) -> list[RequestOutput]:
        batch = self.scheduler.schedule()
        self.last_step_tokens = (batch.num_prefill_tokens, batch.num_decode_tokens)  # for the step rates
        if not batch:
            return []
        for chunk in batch.chunks:
            if chunk.seq.pending_kv is not None:
                self.runner.import_kv(chunk.seq, chunk.seq.pending_kv)
                chunk.seq.pending_kv = None
        result = self.runner.execute(batch, self._grammar_masks(batch))
        return self._postprocess(batch, result)

    def _grammar_masks(self, batch: ScheduledBatch) -> dict[str, torch.Tensor]:
        """What each constrained sequence that samples this step may draw."""
        seqs = [c.seq for c in batch.chunks if c.samples and c.seq.grammar_matcher is not None]
        if not seqs:
            return {}
        allowed = self.grammars.allowed_tokens([s.grammar_matcher for s in seqs])
        return {s.request_id: row for s, row in zip(seqs, allowed)}

    def _postprocess(self, batch: ScheduledBatch, result: StepResult) -> list[RequestOutput]:
        for request_id, (first, records) in result.prompt_logprobs.items():
            held = self._requests[request_id].prompt_logprobs
            if held is not None:
                held[first : first + len(records)] = records
        failed, grammar_done = self._advance_grammars(result.tokens)
        outputs = [self._fail(request_id, message) for request_id, message in failed.items()]
        sampled = {rid: token for rid, token in result.tokens.items() if rid not in failed}
        # Text first: whether a stop string ends a sequence is part of the finishing rule, and a
        # sequence's text depends on nothing but its own tokens.
        cut = {rid for rid, token in sampled.items() if self._take_text(self._requests[rid], token)}
        steps = advance(batch, sampled, self.stop_rule, self.block_manager, stopped_by_text=cut, stopped_by_grammar=grammar_done)
        outputs += [
            self._emit(self._requests[step.request_id], step, step.request_id in cut, result.logprobs.get(step.request_id))
            for step in steps
        ]
        return outputs

    def _advance_grammars(self, sampled: dict[str, int]) -> tuple[dict[str, str], set[str]]:
        """Feed each constrained sequence its sampled token: (errors by request, requests whose
        grammar the token finished)."""
        failed: dict[str, str] = {}
        done: set[str] = set()
        for request_id, token in sampled.items():
            seq = self._requests[request_id].seq
            if seq.grammar_matcher is None or seq.status is not SequenceStatus.RUNNING:
                continue
            finished, error = self.grammars.consume(seq.grammar_matcher, token)
            if error is not None:
                failed[request_id] = error
            elif finished:
                done.add(request_id)
        return failed, done

    def _fail(self, request_id: str, message: str) -> RequestOutput:
        """End one request with an error; its blocks go back and the other requests go on."""
        request = self._requests.pop(request_id)
        seq = request.seq
        log.error("request %s failed: %s", request_id, message)
        self.scheduler.finish(seq, "error")
        return RequestOutput(
            request_id=request_id,
            new_token_ids=[],
            new_text="",
            finished=True,
            finish_reason="error",
            num_prompt_tokens=seq.num_prompt_tokens,
            num_output_tokens=seq.num_output_tokens,
            error=message,
        )

    def _take_text(self, request: _Request, token: int) -> bool:
        """Add the token's text; true when a stop string now ends the sequence (text cut there).

        Before `min_tokens` output tokens (this one included) no stop string ends a sequence, as
        in vLLM; the search then resumes over the text not yet shown."""
        params = request.seq.params
        if stops_on_token(token, params, self.eos_token_ids):
            return False  # a stop token's own text is never shown
        self._detokenize(request, [token])
        if request.seq.num_output_tokens + 1 < params.min_tokens:
            return False
        text = cut_at_stop_string(request.text, request.emitted_chars, params.stop)
        if text is None:
            return False
        request.text = text
        return True

    def _emit(self, request: _Request, step: SampledToken, stopped_by_text: bool, logprob: TokenLogprob | None) -> RequestOutput:
        seq = request.seq
        reason = step.finish_reason
        if reason is not None and request.detokenizer is not None and not stopped_by_text:
            request.text += request.detokenizer.flush()  # text held back for a partial character
        new_text, visible = visible_text(request.text, request.emitted_chars, request.hold_back, final=reason is not None)
        request.emitted_chars = visible
        handoff = None
        if step.hands_off:
            handoff = KVHandoff(
                seq.request_id,
                list(seq.token_ids),
                seq.num_prompt_tokens,
                self.runner.export_kv(seq),
                seq.params,
                tuple((s.offset, s.length, s.content_hash) for s in seq.mm_spans),
                num_text_chars_emitted=visible,
            )
        if step.finished:
            self.scheduler.finish(seq, reason or "handoff")
            del self._requests[seq.request_id]
        return RequestOutput(
            request_id=seq.request_id,
            new_token_ids=[step.token],
            new_text=new_text,
            finished=step.finished,
            finish_reason=reason,
            num_prompt_tokens=seq.num_prompt_tokens,
            num_output_tokens=seq.num_output_tokens,
            handoff=handoff,
            logprobs=[logprob] if logprob is not None else [],
            prompt_logprobs=self._take_prompt_logprobs(request),
        )

    @staticmethod
    def _take_prompt_logprobs(request: _Request) -> list[TokenLogprob | None]:
        """The prompt's logprobs on the request's first output, nothing afterwards."""
        held, request.prompt_logprobs = request.prompt_logprobs, None
        return held or []

    @staticmethod
    def _detokenize(request: _Request, token_ids: Seq[int]) -> None:
        if request.detokenizer is None:
            return
        for t in token_ids:
            request.text += request.detokenizer.push(t)

    # -- conveniences ---------------------------------------------------------------------------
    def generate(self, prompts: Seq[Seq[int]], params: SamplingParams | Seq[SamplingParams] | None = None) -> list[list[int]]:
        """Run prompts to completion (offline use, tests, benchmarks); output token ids in order."""
        params_list = list(params) if isinstance(params, (list, tuple)) else [params or SamplingParams()] * len(prompts)
        ids = [f"generate-{next(self._arrivals)}" for _ in prompts]
        for rid, prompt, p in zip(ids, prompts, params_list):
            self.add_request(rid, prompt, p)
        results: dict[str, list[int]] = {rid: [] for rid in ids}
        while self.has_unfinished():
            for out in self.step():
                results[out.request_id].extend(out.new_token_ids)
        return [results[rid] for rid in ids]

    @property
    def num_free_blocks(self) -> int:
        return self.block_manager.num_free_blocks
