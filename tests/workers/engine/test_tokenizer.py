"""The tokenizer layer against `transformers` (the reference for encode and chat templates) and
the streaming invariants the engine relies on: deltas never change once emitted."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import tokenizers
from tokenizers import decoders, models, pre_tokenizers

from workers.engine.default_model import ensure_default_model
from workers.engine.tokenizer import DEFAULT_CHAT_TEMPLATE, IncrementalDetokenizer, Tokenizer, find_stop

TEXTS = [
    "Hello world",
    "",
    "  two leading spaces and trailing ",
    "café crème brûlée, naïve",
    "日本語のテキスト",
    "emoji 🙂👍🏽 and flags 🇫🇷",
    "<s>special</s> tokens <image> inline",
    "tabs\tand\nnew\n\nlines",
    "numbers 3.14159 and 1,000,000",
]

MESSAGES = [
    {"role": "system", "content": "You are brief."},
    {"role": "user", "content": "Bonjour, ça va?"},
    {"role": "assistant", "content": "Oui."},
    {"role": "user", "content": "Et toi?"},
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return ensure_default_model(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def tok(model_dir) -> Tokenizer:
    return Tokenizer.from_dir(model_dir)


@pytest.fixture(scope="module")
def hf(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir, local_files_only=True)


def copy_with(model_dir: Path, dest: Path, **tokenizer_config) -> Path:
    """The default model's tokenizer files with some tokenizer_config.json entries changed
    (a value of None deletes the entry)."""
    shutil.copytree(model_dir, dest, ignore=shutil.ignore_patterns("*.safetensors"))
    cfg = json.loads((dest / "tokenizer_config.json").read_text())
    for key, value in tokenizer_config.items():
        cfg.pop(key, None) if value is None else cfg.__setitem__(key, value)
    (dest / "tokenizer_config.json").write_text(json.dumps(cfg))
    return dest


# -- encode / decode ------------------------------------------------------------------------------
@pytest.mark.parametrize("text", TEXTS)
def test_encode_matches_transformers(tok, hf, text):
    assert tok.encode(text) == hf(text)["input_ids"]
    assert tok.encode(text, add_special_tokens=False) == hf(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("text", TEXTS)
def test_decode_round_trips(tok, hf, text):
    ids = tok.encode(text)
    assert ids[0] == tok.bos_token_id
    plain = text.replace("<s>", "").replace("</s>", "").replace("<image>", "")
    assert tok.decode(ids) == plain == hf.decode(ids, skip_special_tokens=True)
    assert tok.decode(ids, skip_special_tokens=False) == "<s>" + text


def test_special_tokens(tok):
    assert (tok.bos_token_id, tok.eos_token_ids, tok.pad_token_id, tok.image_token_id) == (1, frozenset({2}), 0, 3)
    assert tok.vocab_size == 512 and tok.image_token == "<image>"


@pytest.mark.parametrize("flags", [{"add_bos_token": False}, {"add_eos_token": True}, {"add_bos_token": True, "add_eos_token": True}])
def test_bos_eos_flags_are_ignored_like_transformers(model_dir, tmp_path, flags):
    """transformers 5 drops these flags when tokenizer.json exists: its post-processor rules."""
    from transformers import AutoTokenizer

    path = copy_with(model_dir, tmp_path / "m", **flags)
    ours, theirs = Tokenizer.from_dir(path), AutoTokenizer.from_pretrained(path, local_files_only=True)
    for text in TEXTS:
        assert ours.encode(text) == theirs(text)["input_ids"]


def test_eos_ids_come_from_every_config(model_dir, tmp_path):
    path = copy_with(model_dir, tmp_path / "m")
    (path / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 7]}))
    assert Tokenizer.from_dir(path).eos_token_ids == {2, 7}


def test_missing_tokenizer_json_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="tokenizer.json"):
        Tokenizer.from_dir(tmp_path)


# -- streaming -----------------------------------------------------------------------------------
def check_stream(tok: Tokenizer, ids: list[int]) -> None:
    """Every emitted prefix stays a prefix of the final text; deltas + flush == decode(ids)."""
    final = tok.decode(ids)
    detok = IncrementalDetokenizer(tok)
    for n, token in enumerate(ids, 1):
        detok.push(token)
        assert final.startswith(detok.text), (ids[:n], detok.text)
        assert tok.decode(ids[:n]).startswith(detok.text)
    detok.flush()
    assert detok.text == final


def test_stream_of_valid_text_needs_no_flush(tok):
    for text in TEXTS:
        ids = tok.encode(text)
        detok = IncrementalDetokenizer(tok)
        deltas = [detok.push(t) for t in ids]
        assert "".join(deltas) == tok.decode(ids) and "\ufffd" not in "".join(deltas)
        assert detok.flush() == ""


def test_multibyte_characters_are_emitted_whole(tok):
    ids = tok.encode("日本🙂", add_special_tokens=False)
    assert len(ids) > 3  # byte-level pieces: characters really are split across tokens
    detok = IncrementalDetokenizer(tok)
    assert [d for d in (detok.push(t) for t in ids) if d] == ["日", "本", "🙂"]


def test_random_token_sequences(tok):
    rng = random.Random(0)
    for _ in range(300):
        check_stream(tok, [rng.randrange(tok.vocab_size) for _ in range(rng.randint(1, 40))])


def test_random_byte_tokens_split_utf8(tok):
    """Mostly single-byte pieces, so partial and invalid UTF-8 sequences are frequent."""
    rng = random.Random(1)
    byte_ids = [tok.backend.token_to_id(c) for c in pre_tokenizers.ByteLevel.alphabet()]
    for _ in range(300):
        text = "".join(rng.choice("aé日🙂 ") for _ in range(rng.randint(1, 12)))
        ids = tok.encode(text, add_special_tokens=False)
        for _ in range(rng.randint(0, 3)):
            ids.insert(rng.randrange(len(ids) + 1), rng.choice(byte_ids))
        check_stream(tok, ids)


def test_stream_with_a_space_stripping_decoder():
    """SentencePiece-style decoders drop the first token's leading space, so a window that
    starts later renders the same tokens differently; deltas must not lose characters."""
    vocab = {"<unk>": 0, "▁Hello": 1, "▁world": 2, "!": 3, "▁again": 4}
    backend = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    tok = Tokenizer(backend)
    ids = [1, 2, 3, 4, 2, 3]
    detok = IncrementalDetokenizer(tok)
    assert "".join(detok.push(t) for t in ids) == tok.decode(ids) == "Hello world! again world!"


# -- stop strings --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, stop, start, expected",
    [
        ("hello world", ["world"], 0, 6),
        ("hello world", ["xyz"], 0, None),
        ("hello world", [], 0, None),
        ("hello world", [""], 0, None),
        ("a stop and an end", ["end", "stop"], 0, 2),  # the earliest, not the first listed
        ("abcSTOP", ["STOP"], 5, 3),  # began before `start`, finished after it
        ("STOP then more text", ["STOP"], 12, None),  # long checked already, out of the window
        ("xSTOPySTOP", ["STOP"], 5, 1),
        ("xSTOPySTOP", ["STOP"], 6, 6),  # 1 lies before the look-back window (6 - 4)
        ("ab", ["abc"], 1, None),
    ],
)
def test_find_stop(text, stop, start, expected):
    assert find_stop(text, stop, start) == expected


# -- chat templates ------------------------------------------------------------------------------
def test_chat_template_renders_roles(tok, hf):
    text = tok.apply_chat_template(MESSAGES)
    assert text == (
        "<|system|>\nYou are brief.</s>\n<|user|>\nBonjour, ça va?</s>\n"
        "<|assistant|>\nOui.</s>\n<|user|>\nEt toi?</s>\n<|assistant|>\n"
    )
    assert text == hf.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert not tok.apply_chat_template(MESSAGES, add_generation_prompt=False).endswith("<|assistant|>\n")


def test_chat_template_content_parts(tok):
    messages = [
        {"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            {"type": "text", "text": "What is this?"},
        ]},
    ]
    assert tok.apply_chat_template(messages) == "<|user|>\n<image>\nWhat is this?</s>\n<|assistant|>\n"
    ids = tok.encode_chat(messages)
    assert ids.count(tok.image_token_id) == 1 and ids.count(tok.bos_token_id) == 1


def test_image_parts_need_an_image_token(model_dir, tmp_path):
    path = copy_with(model_dir, tmp_path / "m", image_token=None)
    config = json.loads((path / "config.json").read_text())
    config.pop("image_token_index")
    (path / "config.json").write_text(json.dumps(config))
    tokenizer_json = json.loads((path / "tokenizer.json").read_text())
    tokenizer_json["added_tokens"] = [t for t in tokenizer_json["added_tokens"] if t["content"] != "<image>"]
    (path / "tokenizer.json").write_text(json.dumps(tokenizer_json))
    tok = Tokenizer.from_dir(path)
    assert tok.image_token is None
    with pytest.raises(ValueError, match=r"messages\[0\].content\[0\]"):
        tok.apply_chat_template([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}])


def test_bad_messages_are_value_errors(tok):
    with pytest.raises(ValueError, match="role"):
        tok.apply_chat_template([{"content": "no role"}])
    with pytest.raises(ValueError, match=r"content\[0\].type"):
        tok.apply_chat_template([{"role": "user", "content": [{"type": "audio"}]}])


def test_default_template_when_the_checkpoint_has_none(model_dir, tmp_path):
    tok = Tokenizer.from_dir(copy_with(model_dir, tmp_path / "m", chat_template=None))
    assert tok.chat_template == DEFAULT_CHAT_TEMPLATE
    assert tok.apply_chat_template(MESSAGES[1:2]) == "<|user|>\nBonjour, ça va?</s>\n<|assistant|>\n"


def test_template_file_and_bos_in_template(model_dir, tmp_path):
    """chat_template.jinja wins over the config entry; a template that writes bos_token itself
    must not get a second BOS from encode_chat."""
    path = copy_with(model_dir, tmp_path / "m")
    (path / "chat_template.jinja").write_text(
        "{{ bos_token }}{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}[assistant] {% endif %}"
    )
    tok = Tokenizer.from_dir(path)
    assert tok.apply_chat_template(MESSAGES[1:2]) == "<s>[user] Bonjour, ça va?\n[assistant] "
    ids = tok.encode_chat(MESSAGES[1:2])
    assert ids[0] == tok.bos_token_id and ids[1] != tok.bos_token_id


def test_templates_are_sandboxed(model_dir, tmp_path):
    import jinja2

    path = copy_with(model_dir, tmp_path / "m", chat_template="{{ messages.__class__.__mro__ }}")
    with pytest.raises(jinja2.exceptions.SecurityError):
        Tokenizer.from_dir(path).apply_chat_template(MESSAGES)
