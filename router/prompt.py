"""From an OpenAI request to what the pools run: a `GenerateRequest` and the images' bytes.

Everything a client can get wrong is found here, before any pool sees the request, and
refused with a 400 that names the field (`param`): prompt forms, sampling ranges
(`router/sampling.py`), the context length, image URLs, tools (`router/tools.py`) and
response formats (`router/response_format.py`). The checks follow OpenAI's API where it has
one and vLLM's where OpenAI is silent (`top_k`, `min_p`, `ignore_eos`, `priority`).

Both transports prepare requests here: HTTP with the bodies as clients send them, gRPC with
the equivalent body built from its proto.

No Ray here: the ingress calls this, and so do unit tests, with a tokenizer and `ModelFacts`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from router.admission import QOS_HEADER
from router.choices import MAX_CHOICES
from router.errors import APIError, invalid_request, model_not_found
from router.limits import DEFAULT_LIMITS, RequestLimits, check_image_urls, check_prompt_chars, prompt_char_limit
from router.protocol import ChatCompletionRequest, ChatMessage, CompletionRequest, ImagePart, TextPart, TokenizeRequest
from router.response_format import response_format_grammar
from router.sampling import SEED_RANGE, chat_logprobs, completion_logprobs, sampling_params
from router.tools import NO_TOOLS, ToolPlan, ToolSetup, check_functions, prepare_tools, render_conversation
from workers.engine.block_manager import prefix_block_hashes
from workers.engine.sampling import SamplingParams
from workers.requests import GenerateRequest, ImageInput

_REMOTE_SCHEMES = ("http://", "https://")
MAX_USER_CHARS = 256  # `user` is recorded with every request; an id, not a document
MAX_METADATA_PAIRS = 16  # OpenAI's limits for `metadata`
MAX_METADATA_KEY_CHARS = 64
MAX_METADATA_VALUE_CHARS = 512


@dataclass(frozen=True, slots=True)
class ModelFacts:
    """What the router must know about the served model to check and shape a request."""

    name: str
    max_model_len: int
    vocab_size: int
    block_size: int
    image_token_id: int | None = None
    # Placeholder tokens one image expands to; None when the checkpoint has no vision tower.
    tokens_per_image: int | None = None

    @property
    def vision(self) -> bool:
        return self.tokens_per_image is not None and self.image_token_id is not None


def model_facts(
    model_path: str | Path,
    *,
    name: str,
    block_size: int,
    num_kv_blocks: int,
    max_model_len: int | None = None,
) -> ModelFacts:
    """Read the checkpoint's `config.json` and compute the context the engines will enforce:
    the same rule as `LLMEngine` (the spec's limit, the model's positions, the KV capacity).
    Image placement comes from the vision loader's own reading of the config, so the router
    expands an image into exactly as many tokens as the vision pool returns embeddings."""
    from workers.vision.encoder import LlavaVisionFacts, has_vision_tower

    raw = json.loads((Path(model_path) / "config.json").read_text(encoding="utf-8"))
    text = raw.get("text_config") or raw
    capacity = num_kv_blocks * block_size
    context = min(max_model_len or capacity, int(text.get("max_position_embeddings", 2048)), capacity)
    vision = LlavaVisionFacts.from_dir(model_path) if has_vision_tower(model_path) else None
    return ModelFacts(
        name=name,
        max_model_len=context,
        vocab_size=int(text["vocab_size"]),
        block_size=block_size,
        image_token_id=vision.image_token_id if vision else None,
        tokens_per_image=vision.num_image_tokens if vision else None,
    )


@dataclass(frozen=True, slots=True)
class PreparedRequest:
    """A request ready for the pools, and what its response needs beyond the engine's tokens."""

    request: GenerateRequest
    images: list[bytes]
    n: int = 1  # choices: copies of `request` (router/choices.py)
    echo: str | None = None  # completions with `echo`: the prompt's text, before each choice's
    tools: ToolPlan | None = None  # chat with tools: how calls are read from the output
    user: str | None = None  # recorded with the request's telemetry
    priority: int | None = None  # vLLM's `priority`, applied to the QoS class (router/priority.py)


class PromptBuilder:
    """Turns validated request bodies into `PreparedRequest`s for one served model."""

    def __init__(
        self,
        tokenizer: Any,
        facts: ModelFacts,
        *,
        allow_remote_image_urls: bool = False,
        qos_class: str = "interactive",
        limits: RequestLimits = DEFAULT_LIMITS,
    ) -> None:
        self.tokenizer = tokenizer
        self.facts = facts
        self.allow_remote_image_urls = allow_remote_image_urls
        self.qos_class = qos_class
        self.limits = limits
        # Longer texts cannot fit the context: refused before tokenizing, which would hold the
        # ingress's event loop for seconds on a body of megabytes.
        self.max_prompt_chars = prompt_char_limit(facts.max_model_len, tokenizer.backend.get_vocab(with_added_tokens=True))

    # -- entry points ---------------------------------------------------------------------------
    def check_model(self, model: str) -> None:
        if model != self.facts.name:
            raise model_not_found(model)

    def completion(self, body: CompletionRequest, request_id: str) -> PreparedRequest:
        self.check_model(body.model)
        n = _choices(body)
        _refuse_unsupported_completion_fields(body, n)
        token_ids = self._completion_prompt(body.prompt)
        self._check_prompt_fits(token_ids, "prompt")
        max_tokens = self._max_tokens(body.max_tokens, "max_tokens", len(token_ids))
        logprobs = completion_logprobs(body)
        params = sampling_params(
            body, max_tokens, vocab_size=self.facts.vocab_size, logprobs=logprobs, prompt_logprobs=logprobs if body.echo else None
        )
        echo = self._prompt_text(body.prompt) if body.echo else None
        prepared = self._prepared(request_id, token_ids, params, images=[], spans=())
        return dataclasses.replace(prepared, n=n, echo=echo, user=_user(body), priority=body.priority)

    def chat(self, body: ChatCompletionRequest, request_id: str) -> PreparedRequest:
        self.check_model(body.model)
        n = _choices(body)
        _refuse_unsupported_chat_fields(body)
        setup = prepare_tools(body.tools, body.tool_choice, body.parallel_tool_calls)
        grammar = response_format_grammar(body.response_format)
        if grammar is not None and setup.plan is not None:
            raise invalid_request(
                "response_format: a JSON response format cannot be combined with tools unless tool_choice is 'none'",
                param="response_format",
            )
        token_ids, images, spans = self._chat_prompt(body.messages, setup, add_generation_prompt=True)
        if body.max_completion_tokens is not None:
            max_tokens = self._max_tokens(body.max_completion_tokens, "max_completion_tokens", len(token_ids))
        else:
            max_tokens = self._max_tokens(body.max_tokens, "max_tokens", len(token_ids))
        params = sampling_params(
            body, max_tokens, vocab_size=self.facts.vocab_size, logprobs=chat_logprobs(body),
            grammar=grammar or setup.grammar, extra_stop=setup.stop,
        )
        prepared = self._prepared(request_id, token_ids, params, images=images, spans=spans)
        return dataclasses.replace(prepared, n=n, tools=setup.plan, user=_user(body), priority=body.priority)

    def tokenize(self, body: TokenizeRequest) -> list[int]:
        """vLLM's `/tokenize`: a prompt's tokens, or the tokens `/v1/chat/completions` would
        run for `messages` (tools and images included)."""
        if body.model is not None:
            self.check_model(body.model)
        if (body.prompt is None) == (body.messages is None):
            raise invalid_request("prompt: send exactly one of prompt and messages", param="prompt")
        if body.prompt is not None:
            if body.tools is not None:
                raise invalid_request("tools: only with messages", param="tools")
            check_prompt_chars(len(body.prompt), self.max_prompt_chars, param="prompt", max_model_len=self.facts.max_model_len)
            return list(self.tokenizer.encode(body.prompt, add_special_tokens=body.add_special_tokens is not False))
        if body.add_special_tokens:
            raise invalid_request(
                "add_special_tokens: messages are tokenized as the chat endpoint runs them (the template's own special "
                "tokens, one BOS); send false or leave it out",
                param="add_special_tokens",
            )
        if not body.messages:
            raise invalid_request("messages: must not be empty", param="messages")
        setup = ToolSetup(functions=check_functions(body.tools)) if body.tools else NO_TOOLS
        token_ids, _, _ = self._chat_prompt(body.messages, setup, add_generation_prompt=body.add_generation_prompt)
        return token_ids

    def detokenize(self, token_ids: Sequence[int]) -> str:
        vocab = self.facts.vocab_size
        bad = [t for t in token_ids if not 0 <= t < vocab]
        if bad:
            raise invalid_request(f"tokens: token ids must lie in [0, {vocab}); got {bad[0]}", param="tokens")
        return self.tokenizer.decode(list(token_ids))

    # -- pieces ---------------------------------------------------------------------------------
    def _chat_prompt(
        self, chat_messages: Sequence[ChatMessage], setup: ToolSetup, *, add_generation_prompt: bool
    ) -> tuple[list[int], list[bytes], tuple[ImageInput, ...]]:
        """The prompt's token ids (images expanded), the images' bytes and their placement."""
        messages, image_urls = _chat_messages(chat_messages)
        messages = render_conversation(messages, chat_messages, setup)
        check_image_urls(image_urls, self.limits)
        # Measured on the rendered prompt: thousands of empty messages are short as text but
        # long once the template adds each one's role markers.
        rendered = self.tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)
        check_prompt_chars(len(rendered), self.max_prompt_chars, param="messages", max_model_len=self.facts.max_model_len)
        images = [self.decode_image(url, param) for url, param in image_urls]
        if images and not self.facts.vision:
            raise invalid_request(
                f"messages: the model '{self.facts.name}' has no vision tower, so it cannot take images; send text only",
                param=image_urls[0][1],
                code="images_not_supported",
            )
        token_ids = list(self.tokenizer.encode_chat(messages, add_generation_prompt=add_generation_prompt))
        token_ids, spans = self._expand_images(token_ids, images)
        self._check_prompt_fits(token_ids, "messages")
        return token_ids, images, spans

    def _prompt_text(self, prompt: str | list[str] | list[int] | list[list[int]]) -> str:
        """What `echo` sends back: the prompt as the client wrote it, or its tokens' text."""
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
            prompt = prompt[0]
        return prompt if isinstance(prompt, str) else self.tokenizer.decode(list(prompt))  # type: ignore[arg-type]

    def _completion_prompt(self, prompt: str | list[str] | list[int] | list[list[int]]) -> list[int]:
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
            prompt = prompt[0]  # a batch of one is the prompt itself
        if isinstance(prompt, str):
            check_prompt_chars(len(prompt), self.max_prompt_chars, param="prompt", max_model_len=self.facts.max_model_len)
            return list(self.tokenizer.encode(prompt, add_special_tokens=True))
        if prompt and all(isinstance(t, int) for t in prompt):
            vocab = self.facts.vocab_size
            bad = [t for t in prompt if not 0 <= t < vocab]  # type: ignore[operator]
            if bad:
                raise invalid_request(f"prompt: token ids must lie in [0, {vocab}); got {bad[0]}", param="prompt")
            return list(prompt)  # type: ignore[arg-type]
        if not prompt:
            raise invalid_request("prompt: must not be empty", param="prompt")
        raise invalid_request(
            f"prompt: a batch of {len(prompt)} prompts is not supported; send one prompt per request", param="prompt"
        )

    def _check_prompt_fits(self, token_ids: Sequence[int], param: str) -> None:
        if not token_ids:
            raise invalid_request(f"{param}: the prompt has no tokens", param=param)
        limit = self.facts.max_model_len
        if len(token_ids) >= limit:
            raise invalid_request(
                f"{param}: this model's maximum context length is {limit} tokens, and the prompt has "
                f"{len(token_ids)} tokens, which leaves none to generate; shorten the prompt",
                param=param,
                code="context_length_exceeded",
            )

    def _max_tokens(self, value: int | None, param: str, num_prompt_tokens: int) -> int:
        room = self.facts.max_model_len - num_prompt_tokens
        if value is None:  # OpenAI: as many as the context allows
            return room
        if value < 1:
            raise invalid_request(f"{param}: must be at least 1, got {value}", param=param)
        if value > room:
            raise invalid_request(
                f"{param}: this model's maximum context length is {self.facts.max_model_len} tokens; the prompt has "
                f"{num_prompt_tokens} tokens, so at most {room} can be generated, but {value} were requested",
                param=param,
                code="context_length_exceeded",
            )
        return value

    def decode_image(self, url: str, param: str) -> bytes:
        """The bytes of an image part's URL: `data:` URLs only; remote URLs are refused."""
        if url.startswith(_REMOTE_SCHEMES):
            if not self.allow_remote_image_urls:
                raise invalid_request(
                    f"{param}: remote image URLs are disabled on this server; send the image inline as a data: URL",
                    param=param,
                    code="remote_image_urls_disabled",
                )
            raise invalid_request(
                f"{param}: fetching remote image URLs is not supported yet; send the image inline as a data: URL",
                param=param,
                code="remote_image_urls_unsupported",
            )
        from workers.vision.preprocess import ImageError, decode_data_url

        try:
            data = decode_data_url(url)
            _check_image_header(data)
        except ImageError as exc:
            reason = str(exc).removeprefix("image_url: ")
            raise invalid_request(f"{param}: {reason}", param=param, code="invalid_image") from None
        return data

    def _expand_images(self, token_ids: list[int], images: list[bytes]) -> tuple[list[int], tuple[ImageInput, ...]]:
        """Each image placeholder token becomes `tokens_per_image` of them; an `ImageInput`
        records where, and a hash of the image's bytes keys the prefix caches."""
        if not images:
            return token_ids, ()
        image_token = self.facts.image_token_id
        length = self.facts.tokens_per_image
        assert image_token is not None and length is not None
        positions = [i for i, t in enumerate(token_ids) if t == image_token]
        if len(positions) != len(images):
            raise invalid_request(
                f"messages: the rendered prompt has {len(positions)} image placeholders for {len(images)} images; "
                "does a text part contain the image token?",
                param="messages",
            )
        expanded: list[int] = []
        spans: list[ImageInput] = []
        start = 0
        for position, image in zip(positions, images):
            expanded.extend(token_ids[start:position])
            spans.append(ImageInput(offset=len(expanded), length=length, content_hash=hashlib.sha256(image).hexdigest()))
            expanded.extend([image_token] * length)
            start = position + 1
        expanded.extend(token_ids[start:])
        return expanded, tuple(spans)

    def _prepared(
        self, request_id: str, token_ids: list[int], params: SamplingParams, *, images: list[bytes], spans: tuple[ImageInput, ...]
    ) -> PreparedRequest:
        # Prefix hashes for replica affinity cover the text before the first image: blocks
        # holding image tokens are keyed by the image too, which this text-only hash cannot say.
        text_prefix = token_ids[: spans[0].offset] if spans else token_ids
        request = GenerateRequest(
            request_id=request_id,
            prompt_token_ids=token_ids,
            params=params,
            images=spans,
            qos_class=self.qos_class,
            prefix_hashes=tuple(prefix_block_hashes(text_prefix, self.facts.block_size)),
        )
        return PreparedRequest(request, images)


def _check_image_header(data: bytes) -> None:
    """Refuse what is plainly not a servable image, from its header alone: decoding the pixels
    here would stall the ingress's event loop, and the vision pool decodes them anyway (a
    corrupt body past the header fails there, still as a 400)."""
    import io

    from PIL import Image, UnidentifiedImageError

    from workers.vision.preprocess import MAX_IMAGE_PIXELS, SUPPORTED_FORMATS, ImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            fmt, (width, height) = image.format, image.size
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"image cannot be decoded: {exc}") from None
    if fmt not in SUPPORTED_FORMATS:
        raise ImageError(f"image format {fmt!r} is not supported; use one of {sorted(SUPPORTED_FORMATS)}")
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageError(f"image is {width}x{height} pixels; the limit is {MAX_IMAGE_PIXELS} pixels")


def _chat_messages(chat_messages: Sequence[ChatMessage]) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """Messages as the tokenizer's chat template takes them, and the image URLs in prompt order
    with the field each came from."""
    messages: list[dict[str, Any]] = []
    image_urls: list[tuple[str, str]] = []
    for i, message in enumerate(chat_messages):
        content: Any = message.content
        if isinstance(content, list):
            parts: list[dict[str, Any]] = []
            for j, part in enumerate(content):
                if isinstance(part, TextPart):
                    parts.append({"type": "text", "text": part.text})
                elif isinstance(part, ImagePart):
                    url = part.image_url if isinstance(part.image_url, str) else part.image_url.url
                    image_urls.append((url, f"messages[{i}].content[{j}].image_url"))
                    parts.append({"type": "image_url"})
            content = parts
        entry: dict[str, Any] = {"role": message.role, "content": content}
        if message.name is not None:
            entry["name"] = message.name
        messages.append(entry)
    return messages, image_urls


def _choices(body: CompletionRequest | ChatCompletionRequest) -> int:
    n = 1 if body.n is None else body.n
    if not 1 <= n <= MAX_CHOICES:
        raise invalid_request(f"n: must be in [1, {MAX_CHOICES}], got {n}", param="n")
    if body.seed is not None and not body.seed + n - 1 < SEED_RANGE[1]:
        # Choice i draws with seed + i (router/choices.py), which must fit in 64 bits too.
        raise invalid_request(f"seed: with n={n}, seed + n - 1 must fit in 64 bits, got {body.seed}", param="seed")
    return n


def _user(body: CompletionRequest | ChatCompletionRequest) -> str | None:
    if body.user is not None and len(body.user) > MAX_USER_CHARS:
        raise invalid_request(f"user: at most {MAX_USER_CHARS} characters, got {len(body.user)}", param="user")
    return body.user or None


def _refuse_unsupported_completion_fields(body: CompletionRequest, n: int) -> None:
    if body.suffix:
        raise invalid_request("suffix: insertion with a suffix is not supported", param="suffix")
    if body.best_of is not None and body.best_of != n:
        raise invalid_request(
            f"best_of: only best_of equal to n ({n}) is supported (every copy is returned), got {body.best_of}", param="best_of"
        )
    _refuse_stream_options(body)


def _refuse_unsupported_chat_fields(body: ChatCompletionRequest) -> None:
    if body.store:
        raise invalid_request("store: Pavana stores no completions; send false or leave it out", param="store")
    if body.service_tier not in (None, "auto", "default"):
        raise invalid_request(
            f"service_tier: Pavana has one tier; send 'auto' or 'default', got {body.service_tier!r:.40} "
            f"(QoS classes are chosen by API key, the {QOS_HEADER} header or `priority`)",
            param="service_tier",
        )
    metadata = body.metadata or {}
    if len(metadata) > MAX_METADATA_PAIRS or any(
        len(k) > MAX_METADATA_KEY_CHARS or len(v) > MAX_METADATA_VALUE_CHARS for k, v in metadata.items()
    ):
        raise invalid_request(
            f"metadata: at most {MAX_METADATA_PAIRS} pairs, keys of at most {MAX_METADATA_KEY_CHARS} characters and values "
            f"of at most {MAX_METADATA_VALUE_CHARS}",
            param="metadata",
        )
    _refuse_stream_options(body)


def _refuse_stream_options(body: CompletionRequest | ChatCompletionRequest) -> None:
    if body.stream_options is not None and not body.stream:
        raise invalid_request("stream_options: only allowed when stream is true", param="stream_options")


__all__ = ["APIError", "ModelFacts", "PreparedRequest", "PromptBuilder", "model_facts", "sampling_params"]
