"""The bundled default model: a tiny random Llama written offline, the same bytes everywhere.

Pavana must start with no network and no downloaded weights (tests, the simulator, a laptop
demo), so it builds its own checkpoint in the Hugging Face layout that `loader.load_llama` and
`Tokenizer.from_dir` read: weights from a seeded generator, a byte-level BPE trained on the
corpus below. It is random, so its output is gibberish; it exists to exercise every code path.
`transformers` is not imported: it is only a test dependency.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from workers.engine.tokenizer import DEFAULT_CHAT_TEMPLATE

log = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "pavana-tiny"
# Bump the suffix whenever anything below changes the bytes written: caches key on it.
DEFAULT_MODEL_DIRNAME = "pavana-tiny-llava-v1"
DEFAULT_SEED = 0
DEFAULT_SHAPE = dict(
    vocab_size=512,
    hidden_size=256,
    intermediate_size=688,
    num_layers=4,
    num_heads=8,
    num_kv_heads=4,
    max_position_embeddings=2048,
)
PAD, BOS, EOS, IMAGE = "<pad>", "<s>", "</s>", "<image>"
SPECIAL_TOKENS = (PAD, BOS, EOS, IMAGE)  # ids 0..3
# The vision tower of the default LLaVA: 56x56 images in 14x14 patches, so 16 tokens per image.
DEFAULT_VISION = dict(image_size=56, patch_size=14, hidden_size=128, intermediate_size=256, num_layers=2, num_heads=4)
LLAMA_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
CHECKPOINT_FILES = (*LLAMA_FILES, "preprocessor_config.json")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Written for Pavana; enough text for about a thousand byte-level BPE tokens.
CORPUS = """\
Pavana is a small controller for serving language models on a cluster of machines. A request
arrives at the router, waits in a queue, and is scheduled by the engine together with other
requests. The engine reads the prompt, computes the first token, and then decodes one token at
a time until the answer is complete or a stop string appears. Each step of the loop is short:
schedule, run, postprocess. The scheduler decides which sequences run; the model runner does the
arithmetic; the sampler chooses the next token from the logits.

The wind moved over the hills in the early morning, carrying the smell of rain and cut grass.
Farmers walked to the fields before sunrise, and the children followed them with baskets of
bread, cheese and apples. By noon the sky had cleared, the river shone like a ribbon of silver,
and the old mill turned slowly beside the bridge. In the evening the villagers gathered in the
square to tell stories, sing songs and watch the stars appear one by one above the mountains.

Numbers matter when you measure a system. The first token arrived after 120 milliseconds, the
median time between tokens was 25 ms, and the slowest request took 3.7 seconds. We served 4,096
requests per minute on 8 replicas across 2 sites, using 61% of the power budget. When the load
doubled at 14:30, the autoscaler added three replicas within 90 seconds; when it fell again at
18:00, it removed them after a cool-down of five minutes.

"Why does the cache matter?" she asked. "Because every token the model has already seen is kept
as keys and values," he answered, "and reading them back is much cheaper than computing them
again." She nodded, wrote the idea in her notebook, and drew a table of blocks: each block holds
sixteen tokens, each sequence owns a list of blocks, and blocks with the same prefix are shared.

Good software is written for people first and for machines second. Names should explain
themselves, functions should do one thing, and tests should say what they check. A careful
engineer reads the error message, finds the line where the bad value entered, and fixes the
cause rather than the symptom. Documentation tells the reader why a decision was made, not only
what the code does; a short comment can save an hour of confusion for the next person.

The library opened at nine o'clock. Students carried laptops, notebooks and cups of coffee up the
wide stairs; a professor searched the shelves for a book about the history of mathematics, while
a young writer sat by the window and watched the trees. Outside, bicycles leaned against the
fence, pigeons walked along the roof, and a bus stopped at the corner to let travellers step down.
"""


def train_tokenizer(vocab_size: int) -> Tokenizer:
    """A GPT-2-style byte-level BPE (any text encodes, nothing is unknown) trained on `CORPUS`.

    Training is deterministic: merges are chosen by count with ties broken by token ids.
    When the corpus runs out of merges first, reserved special tokens fill the vocabulary up
    to `vocab_size` (as Llama 3 does), so the tokenizer always matches the embedding table.
    """
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size: {vocab_size} is too small; a byte-level tokenizer needs at least {len(alphabet) + len(SPECIAL_TOKENS)}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), initial_alphabet=alphabet, show_progress=False)
    tok.train_from_iterator(CORPUS.split("\n\n"), trainer=trainer)
    missing = vocab_size - tok.get_vocab_size()
    if missing > 0:
        tok.add_special_tokens([AddedToken(f"<|reserved_{i}|>", special=True, normalized=False) for i in range(missing)])
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A {BOS}:1 $B:1", special_tokens=[(BOS, bos_id)])
    return tok


def _seeded_normal(generator: torch.Generator, shape: tuple[int, ...], std: float) -> torch.Tensor:
    """Approximately normal values (Irwin-Hall: the sum of 12 uniforms less 6 has mean 0 and
    variance 1) that are bit-identical on every machine.

    `torch.normal_` is not: on CPU it uses vectorized log/cos whose float32 bits differ
    between AVX2, AVX-512 and ARM builds. Uniform doubles from the Mersenne Twister are exact,
    and sums and products are correctly rounded IEEE operations, so this is portable.
    Elements are drawn in row-major order in chunks; the chunk size does not change the result.
    """
    numel = math.prod(shape)
    out = torch.empty(numel, dtype=torch.float32)
    chunk = 1 << 20
    for start in range(0, numel, chunk):
        n = min(chunk, numel - start)
        uniforms = torch.rand((n, 12), generator=generator, dtype=torch.float64)
        total = uniforms[:, 0].clone()
        for k in range(1, 12):  # an explicit order: a reduction's order may vary by CPU
            total += uniforms[:, k]
        out[start : start + n] = ((total - 6.0) * std).to(torch.float32)
    return out.view(shape)


def _weights(*, seed: int, vocab_size: int, hidden_size: int, intermediate_size: int, num_layers: int, num_heads: int, num_kv_heads: int, init_std: float) -> dict[str, torch.Tensor]:
    """Hugging Face Llama names and shapes, drawn in a fixed order from one generator."""
    head_dim = hidden_size // num_heads
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab_size, hidden_size)}
    for i in range(num_layers):
        p = f"model.layers.{i}."
        shapes |= {
            p + "self_attn.q_proj.weight": (num_heads * head_dim, hidden_size),
            p + "self_attn.k_proj.weight": (num_kv_heads * head_dim, hidden_size),
            p + "self_attn.v_proj.weight": (num_kv_heads * head_dim, hidden_size),
            p + "self_attn.o_proj.weight": (hidden_size, num_heads * head_dim),
            p + "mlp.gate_proj.weight": (intermediate_size, hidden_size),
            p + "mlp.up_proj.weight": (intermediate_size, hidden_size),
            p + "mlp.down_proj.weight": (hidden_size, intermediate_size),
            p + "input_layernorm.weight": (hidden_size,),
            p + "post_attention_layernorm.weight": (hidden_size,),
        }
    shapes |= {"model.norm.weight": (hidden_size,), "lm_head.weight": (vocab_size, hidden_size)}
    generator = torch.Generator().manual_seed(seed)
    return {
        name: torch.ones(shape) if name.endswith("norm.weight") else _seeded_normal(generator, shape, init_std)
        for name, shape in shapes.items()
    }


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def write_tiny_llama(
    path: Path,
    *,
    seed: int,
    vocab_size: int = 512,
    hidden_size: int = 256,
    intermediate_size: int = 688,
    num_layers: int = 4,
    num_heads: int = 8,
    num_kv_heads: int = 4,
    max_position_embeddings: int = 2048,
    rope_theta: float = 10000.0,
    rms_norm_eps: float = 1e-5,
    init_std: float = 0.02,
) -> Path:
    """Write a random Llama checkpoint of any small size into `path` (created if missing).

    The same arguments give the same bytes on every machine. Benchmarks use it for bigger
    models than the default (e.g. hidden 512, 8 layers, intermediate 1376: about 24M
    parameters with vocab 512). Not atomic: `ensure_default_model` adds that.
    """
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size: {hidden_size} must be a multiple of num_heads ({num_heads})")
    if num_kv_heads < 1 or num_heads % num_kv_heads:
        raise ValueError(f"num_kv_heads: {num_kv_heads} must divide num_heads ({num_heads})")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer(vocab_size)
    ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
    _write_json(path / "config.json", {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "num_key_value_heads": num_kv_heads,
        "head_dim": hidden_size // num_heads,
        "hidden_act": "silu",
        "max_position_embeddings": max_position_embeddings,
        "rms_norm_eps": rms_norm_eps,
        # transformers 5 reads rope_parameters; 4.x reads rope_theta.
        "rope_theta": rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": rope_theta},
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "initializer_range": init_std,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "bos_token_id": ids[BOS],
        "eos_token_id": ids[EOS],
        "pad_token_id": ids[PAD],
        "use_cache": True,
    })
    _write_json(path / "generation_config.json", {"bos_token_id": ids[BOS], "eos_token_id": [ids[EOS]], "pad_token_id": ids[PAD]})
    # An explicit generic class, so transformers 4 and 5 both read tokenizer.json as it is;
    # LlamaTokenizer (what model_type llama suggests) rebuilds a SentencePiece-style pipeline
    # (5.x notices the byte-level tokenizer.json and falls back, with a warning).
    _write_json(path / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": PAD,
        "image_token": IMAGE,
        "model_max_length": max_position_embeddings,
        "clean_up_tokenization_spaces": False,
        "chat_template": DEFAULT_CHAT_TEMPLATE,
    })
    (path / "tokenizer.json").write_text(tok.to_str(pretty=True) + "\n", encoding="utf-8")
    weights = _weights(
        seed=seed, vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_layers=num_layers, num_heads=num_heads, num_kv_heads=num_kv_heads, init_std=init_std,
    )
    # One metadata entry only: safetensors keeps metadata in a hash map, so with two or more
    # entries their order in the header (and the file's bytes) varies from run to run.
    save_file(weights, str(path / "model.safetensors"), metadata={"format": "pt"})
    return path


def _vision_weights(generator: torch.Generator, *, image_size: int, patch_size: int, hidden_size: int, intermediate_size: int, num_layers: int, num_heads: int, text_hidden_size: int, init_std: float) -> dict[str, torch.Tensor]:
    """CLIP vision tower and LLaVA projector weights, with the names transformers 5 saves
    (`num_heads` shapes no weight; it is part of the vision spec for the config)."""
    del num_heads
    patches = (image_size // patch_size) ** 2
    shapes: dict[str, tuple[int, ...]] = {
        "vision_tower.embeddings.class_embedding": (hidden_size,),
        "vision_tower.embeddings.patch_embedding.weight": (hidden_size, 3, patch_size, patch_size),
        "vision_tower.embeddings.position_embedding.weight": (patches + 1, hidden_size),
    }
    norms = ["vision_tower.pre_layrnorm", "vision_tower.post_layernorm"]
    for i in range(num_layers):
        p = f"vision_tower.encoder.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes[p + f"self_attn.{proj}.weight"] = (hidden_size, hidden_size)
            shapes[p + f"self_attn.{proj}.bias"] = (hidden_size,)
        shapes |= {
            p + "mlp.fc1.weight": (intermediate_size, hidden_size), p + "mlp.fc1.bias": (intermediate_size,),
            p + "mlp.fc2.weight": (hidden_size, intermediate_size), p + "mlp.fc2.bias": (hidden_size,),
        }
        norms += [p + "layer_norm1", p + "layer_norm2"]
    shapes |= {
        "multi_modal_projector.linear_1.weight": (text_hidden_size, hidden_size),
        "multi_modal_projector.linear_1.bias": (text_hidden_size,),
        "multi_modal_projector.linear_2.weight": (text_hidden_size, text_hidden_size),
        "multi_modal_projector.linear_2.bias": (text_hidden_size,),
    }
    weights = {name: _seeded_normal(generator, shape, init_std) for name, shape in shapes.items()}
    for norm in norms:
        weights[norm + ".weight"] = torch.ones(hidden_size)
        weights[norm + ".bias"] = torch.zeros(hidden_size)
    return weights


def write_tiny_llava(path: Path, *, seed: int, vision: dict[str, int], init_std: float = 0.02, **text_shape) -> Path:
    """A random LLaVA checkpoint: CLIP vision tower, projector and the Llama of `write_tiny_llama`.

    Written in the layout transformers 5 saves (`language_model.model.*`, `vision_tower.*`,
    `multi_modal_projector.*`), with a CLIP `preprocessor_config.json`; the tokenizer's
    `<image>` token is the image placeholder.
    """
    path = Path(path)
    write_tiny_llama(path, seed=seed, init_std=init_std, **text_shape)
    text_config = json.loads((path / "config.json").read_text())
    llama = load_file(str(path / "model.safetensors"))
    weights = {("language_model." + k if k.startswith("model.") else "language_model.lm_head.weight"): v for k, v in llama.items()}
    weights |= _vision_weights(
        torch.Generator().manual_seed(seed + 1), text_hidden_size=text_config["hidden_size"], init_std=init_std, **vision
    )
    save_file(weights, str(path / "model.safetensors"), metadata={"format": "pt"})
    image_token = train_tokenizer(text_config["vocab_size"]).token_to_id(IMAGE)
    write_llava_config(path, text_config, vision, image_token, tie_word_embeddings=False)
    return path


def write_llava_config(path: Path, text_config: dict, vision: dict[str, int], image_token: int, *, tie_word_embeddings: bool) -> None:
    """The LLaVA `config.json` around a Llama text config, and the CLIP preprocessor's config,
    as transformers 5 writes them: shared by every bundled LLaVA (tiny and SmolLM2)."""
    patches = (vision["image_size"] // vision["patch_size"]) ** 2
    _write_json(path / "config.json", {
        "architectures": ["LlavaForConditionalGeneration"],
        "model_type": "llava",
        "image_token_index": image_token,
        "image_seq_length": patches,
        "projector_hidden_act": "gelu",
        "multimodal_projector_bias": True,
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default",
        "tie_word_embeddings": tie_word_embeddings,
        "torch_dtype": "float32",
        "bos_token_id": text_config["bos_token_id"],
        "eos_token_id": text_config["eos_token_id"],
        "pad_token_id": text_config["pad_token_id"],
        "text_config": {k: v for k, v in text_config.items() if k != "architectures"},
        "vision_config": {
            "model_type": "clip_vision_model",
            "image_size": vision["image_size"],
            "patch_size": vision["patch_size"],
            "hidden_size": vision["hidden_size"],
            "intermediate_size": vision["intermediate_size"],
            "num_hidden_layers": vision["num_layers"],
            "num_attention_heads": vision["num_heads"],
            "num_channels": 3,
            "hidden_act": "quick_gelu",
            "layer_norm_eps": 1e-5,
            "projection_dim": text_config["hidden_size"],
        },
    })
    _write_json(path / "preprocessor_config.json", {
        "image_processor_type": "CLIPImageProcessor",
        "do_resize": True,
        "size": {"shortest_edge": vision["image_size"]},
        "resample": 3,
        "do_center_crop": True,
        "crop_size": {"height": vision["image_size"], "width": vision["image_size"]},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(CLIP_MEAN),
        "image_std": list(CLIP_STD),
        "do_convert_rgb": True,
    })


def cache_root(cache_dir: Path | None = None) -> Path:
    """Where Pavana writes the bundled models: `cache_dir`, else $PAVANA_CACHE_DIR, else ~/.cache/pavana."""
    return Path(cache_dir) if cache_dir else Path(os.environ.get("PAVANA_CACHE_DIR") or Path.home() / ".cache" / "pavana")


def default_model_dir(cache_dir: Path | None = None) -> Path:
    return cache_root(cache_dir) / "models" / DEFAULT_MODEL_DIRNAME


def is_complete(path: Path, files: tuple[str, ...] = CHECKPOINT_FILES) -> bool:
    return all((path / name).is_file() for name in files)


def install_atomically(final: Path, write: Callable[[Path], object], files: tuple[str, ...] = CHECKPOINT_FILES) -> Path:
    """Write a checkpoint into a temporary sibling of `final` and rename it into place: a rename
    is atomic, so readers never see half a checkpoint, and when two processes race the loser
    finds the winner's complete copy and discards its own."""
    if is_complete(final, files):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        write(tmp)
        # mkdtemp and safetensors make private files; the cache may be shared between users.
        tmp.chmod(0o755)
        for name in files:
            (tmp / name).chmod(0o644)
        try:
            os.rename(tmp, final)
        except OSError:
            if not is_complete(final, files):  # a broken leftover, not a racing writer: replace it
                log.warning("bundled model: replacing incomplete %s", final)
                shutil.rmtree(final, ignore_errors=True)
                os.rename(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("bundled model: wrote %s in %.2f s", final, time.perf_counter() - started)
    return final


def ensure_default_model(cache_dir: Path | None = None) -> Path:
    """The default tiny model's directory, written first if missing."""
    return install_atomically(
        default_model_dir(cache_dir), lambda tmp: write_tiny_llava(tmp, seed=DEFAULT_SEED, vision=DEFAULT_VISION, **DEFAULT_SHAPE)
    )
