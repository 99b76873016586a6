"""Text in and out of the engine: a Hugging Face `tokenizer.json` without `transformers`.

`transformers` is a test-only dependency, so the serving path reads the checkpoint's files
itself: `tokenizer.json` through the `tokenizers` library, special tokens from
`tokenizer_config.json`, `generation_config.json` and `config.json`, and the chat template,
rendered in a sandboxed jinja2 environment the way `transformers` renders it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
import jinja2.sandbox
import tokenizers

log = logging.getLogger(__name__)

# Used when a checkpoint ships no chat template, and by the bundled default model. Zephyr's
# layout: a role header, the content, the end-of-sequence token. It leaves out `bos_token`
# because `encode(add_special_tokens=True)` adds it (see `Tokenizer.encode_chat`).
DEFAULT_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|' + message['role'] + '|>\\n' + message['content'] + eos_token + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|assistant|>\\n' }}{%- endif %}"
)

_TEXT_PARTS = ("text", "input_text")
_IMAGE_PARTS = ("image_url", "image", "input_image")
_REPLACEMENT_CHAR = "\ufffd"


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _token_str(value: Any) -> str | None:
    """Special tokens are saved as a string or as a serialized `AddedToken` dict."""
    if isinstance(value, Mapping):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _ids(value: Any) -> list[int]:
    if isinstance(value, int):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, int)]
    return []


def _read_chat_template(path: Path, tokenizer_config: Mapping[str, Any]) -> str | None:
    """`chat_template.jinja` (transformers >= 4.43 saves it apart) wins over the config entry,
    as in `transformers`; a list of named templates picks the one named `default`."""
    jinja_file = path / "chat_template.jinja"
    if jinja_file.is_file():
        return jinja_file.read_text(encoding="utf-8")
    template = tokenizer_config.get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, Mapping)}
        template = named.get("default", next(iter(named.values()), None))
    return template if isinstance(template, str) else None


def _compile_template(source: str) -> jinja2.Template:
    """The environment `transformers` renders chat templates in (templates from the Hub are
    untrusted code, hence the sandbox), with the helpers templates commonly call."""

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators=None, sort_keys: bool = False) -> str:
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt: str) -> str:
        return datetime.now().strftime(fmt)

    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env.from_string(source)


class Tokenizer:
    """A checkpoint's tokenizer: ids, text, special tokens and the chat template."""

    def __init__(
        self,
        backend: tokenizers.Tokenizer,
        *,
        bos_token: str | None = None,
        eos_token: str | None = None,
        pad_token: str | None = None,
        unk_token: str | None = None,
        extra_eos_token_ids: Sequence[int] = (),
        image_token: str | None = None,
        chat_template: str | None = None,
    ) -> None:
        self.backend = backend
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.pad_token = pad_token
        self.unk_token = unk_token
        self.image_token = image_token
        self.chat_template = chat_template or DEFAULT_CHAT_TEMPLATE
        eos = {backend.token_to_id(eos_token)} if eos_token else set()
        self._eos_token_ids = frozenset(i for i in eos | set(extra_eos_token_ids) if i is not None)
        self._template = _compile_template(self.chat_template)

    @classmethod
    def from_dir(cls, path: str | Path) -> Tokenizer:
        path = Path(path)
        if not (path / "tokenizer.json").is_file():
            raise ValueError(f"model path: {path} has no tokenizer.json")
        backend = tokenizers.Tokenizer.from_file(str(path / "tokenizer.json"))
        tok_cfg = _read_json(path / "tokenizer_config.json")
        gen_cfg = _read_json(path / "generation_config.json")
        model_cfg = _read_json(path / "config.json")
        text_cfg = model_cfg.get("text_config") or {}

        def token_for(key: str) -> str | None:
            token = _token_str(tok_cfg.get(key))
            if token is None:  # fall back on the id the model config names
                for cfg in (model_cfg, text_cfg, gen_cfg):
                    if isinstance(cfg.get(f"{key}_id"), int):
                        return backend.id_to_token(cfg[f"{key}_id"])
            return token

        bos, eos = token_for("bos_token"), token_for("eos_token")
        # BOS/EOS come from tokenizer.json's post-processor alone, as in transformers 5, which
        # drops tokenizer_config's add_bos_token / add_eos_token when a tokenizer.json exists.
        # (transformers 4's LlamaTokenizerFast rewrote the post-processor from those flags.)
        extra_eos = [*_ids(gen_cfg.get("eos_token_id")), *_ids(model_cfg.get("eos_token_id")), *_ids(text_cfg.get("eos_token_id"))]
        image_token = _token_str(tok_cfg.get("image_token"))
        image_id = model_cfg.get("image_token_id", model_cfg.get("image_token_index"))
        if image_token is None and isinstance(image_id, int):
            image_token = backend.id_to_token(image_id)
        if image_token is None and "<image>" in {t.content for t in backend.get_added_tokens_decoder().values()}:
            image_token = "<image>"
        template = _read_chat_template(path, tok_cfg)
        if template is None:
            log.info("no chat template in %s: using Pavana's default template", path)
        return cls(
            backend,
            bos_token=bos,
            eos_token=eos,
            pad_token=token_for("pad_token"),
            unk_token=token_for("unk_token"),
            extra_eos_token_ids=extra_eos,
            image_token=image_token,
            chat_template=template,
        )

    # -- special tokens -------------------------------------------------------------------------
    @property
    def bos_token_id(self) -> int | None:
        return self.backend.token_to_id(self.bos_token) if self.bos_token else None

    @property
    def eos_token_ids(self) -> frozenset[int]:
        """Every id that ends generation: the tokenizer's eos plus the model and generation
        configs' (which may list several, e.g. Llama 3's `<|eot_id|>` and `<|eom_id|>`)."""
        return self._eos_token_ids

    @property
    def pad_token_id(self) -> int | None:
        return self.backend.token_to_id(self.pad_token) if self.pad_token else None

    @property
    def image_token_id(self) -> int | None:
        return self.backend.token_to_id(self.image_token) if self.image_token else None

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    # -- text <-> ids ---------------------------------------------------------------------------
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """No `clean_up_tokenization_spaces`: it would break streaming, where every delta must
        be a suffix of what came before (vLLM makes the same choice)."""
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    # -- chat -----------------------------------------------------------------------------------
    def apply_chat_template(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True, **template_vars: Any) -> str:
        """Render OpenAI-style messages into the prompt text the model was trained on.

        List contents are flattened here rather than in the template, so every template sees
        plain strings: text parts as themselves, image parts as the image placeholder token
        (one per image; expanding it to the image's patch count is the vision stage's job),
        parts joined by newlines as LLaVA's prompts do (`<image>\\nWhat is this?`).
        """
        rendered = [self._flatten(i, m) for i, m in enumerate(messages)]
        return self._template.render(
            messages=rendered,
            add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token or "",
            eos_token=self.eos_token or "",
            pad_token=self.pad_token or "",
            unk_token=self.unk_token or "",
            **template_vars,
        )

    def encode_chat(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True, **template_vars: Any) -> list[int]:
        """Render and encode without a doubled BOS: many templates write `bos_token`
        themselves, and adding it again degrades output (vLLM and transformers check the same)."""
        text = self.apply_chat_template(messages, add_generation_prompt, **template_vars)
        has_bos = bool(self.bos_token) and text.startswith(self.bos_token)
        return self.encode(text, add_special_tokens=not has_bos)

    def _flatten(self, index: int, message: Mapping[str, Any]) -> dict[str, Any]:
        if not isinstance(message, Mapping) or not isinstance(message.get("role"), str):
            raise ValueError(f"messages[{index}]: expected a mapping with a string 'role', got {message!r:.80}")
        content = message.get("content")
        if content is None or isinstance(content, str):
            return {**message, "content": content or ""}
        if not isinstance(content, list):
            raise ValueError(f"messages[{index}].content: expected a string or a list of parts, got {type(content).__name__}")
        pieces = []
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, Mapping) else None
            if kind in _TEXT_PARTS:
                pieces.append(str(part.get("text", "")))
            elif kind in _IMAGE_PARTS:
                if self.image_token is None:
                    raise ValueError(f"messages[{index}].content[{j}]: image parts need a model with an image token; this tokenizer has none")
                pieces.append(self.image_token)
            else:
                raise ValueError(f"messages[{index}].content[{j}].type: {kind!r} is not one of {[*_TEXT_PARTS, *_IMAGE_PARTS]}")
        return {**message, "content": "\n".join(pieces)}


class IncrementalDetokenizer:
    """Streaming text for one sequence, a token at a time.

    Decodes a short window (the last emitted chunk plus the new tokens) and emits what the new
    tokens added, the approach of TGI and vLLM: the window gives SentencePiece decoders the
    context they need for spaces, and costs O(window) per token instead of O(length).
    Text ending in U+FFFD is held back: with byte-level pieces it is usually an incomplete
    UTF-8 character that the next token will finish. So deltas never change once emitted,
    their concatenation is always a prefix of `decode(ids)`, and equals it after `flush()`.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True) -> None:
        self._tokenizer = tokenizer
        self._skip_special_tokens = skip_special_tokens
        self._ids: list[int] = []
        self._prefix_offset = 0  # the window starts here
        self._read_offset = 0  # tokens before this are emitted
        self._prefix_text = ""  # decode(ids[prefix_offset:read_offset])
        self._text = ""

    @property
    def text(self) -> str:
        """All text emitted so far (the concatenation of the deltas)."""
        return self._text

    @property
    def token_ids(self) -> list[int]:
        return list(self._ids)

    def push(self, token_id: int) -> str:
        """Add one token; return the text it completes (often "", never a partial character)."""
        self._ids.append(token_id)
        window = self._tokenizer.decode(self._ids[self._prefix_offset :], self._skip_special_tokens)
        if len(window) <= len(self._prefix_text) or window.endswith(_REPLACEMENT_CHAR):
            return ""
        return self._advance(window)

    def flush(self) -> str:
        """At the end of a sequence: emit any held-back text, even a dangling U+FFFD."""
        window = self._tokenizer.decode(self._ids[self._prefix_offset :], self._skip_special_tokens)
        return self._advance(window) if len(window) > len(self._prefix_text) else ""

    def _advance(self, window: str) -> str:
        delta = window[len(self._prefix_text) :]
        self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
        # Decoded afresh rather than taken from `delta`: decoders that strip a leading space
        # (SentencePiece's Metaspace) render the same tokens differently at a window's start.
        self._prefix_text = self._tokenizer.decode(self._ids[self._prefix_offset : self._read_offset], self._skip_special_tokens)
        self._text += delta
        return delta


def find_stop(text: str, stop: Sequence[str], start: int) -> int | None:
    """Where the earliest stop string begins in `text`, looking no further back than `start`
    less the longest stop string (a stop string can straddle the text already checked), or
    None. Empty stop strings never match."""
    stops = [s for s in stop if s]
    if not stops:
        return None
    lo = max(0, start - max(len(s) for s in stops))
    hits = [i for i in (text.find(s, lo) for s in stops) if i >= 0]
    return min(hits) if hits else None
