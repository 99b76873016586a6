"""The bundled default model: written offline, the same bytes every time, and a checkpoint that
`transformers` itself accepts (so the engine's reference tests can use it)."""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from workers.engine.default_model import (
    CHECKPOINT_FILES,
    DEFAULT_MODEL_DIRNAME,
    DEFAULT_MODEL_NAME,
    ensure_default_model,
    train_tokenizer,
    write_tiny_llama,
)
from workers.engine.model_config import ModelConfig

# The bytes of pavana-tiny-llava-v1. If a change here is intended (or a new torch, tokenizers
# or safetensors writes different bytes), bump DEFAULT_MODEL_DIRNAME so caches are rebuilt.
GOLDEN_SHA256 = {
    "config.json": "137f3ff9edb56bd26a1e2b976bcb5b451932275d7043091cb21cd727b1f1db66",
    "generation_config.json": "2da5aea1aa605795ba45a0719399d543e568a51dc0820603011124f53e102266",
    "model.safetensors": "3649288b3620262d6339ff18c68346405750b7beceef8068b30c940d0affe7a5",
    "preprocessor_config.json": "8ab122d6982c2a40d8144287aa73f558aa3ea0e719061f6cdf7004d5f31a0577",
    "tokenizer.json": "5fbb6c55079948569f8181ca1643fac4b9027a7841c1e9c58bb571ac57c33b9b",
    "tokenizer_config.json": "12da148b2d442e9c70aeed680ef70576291380410ea36ecf996c84fd5d74bd52",
}


def digests(path: Path) -> dict[str, str]:
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(path.iterdir())}


@pytest.fixture
def model_dir(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("PAVANA_CACHE_DIR", str(tmp_path / "cache"))
    return ensure_default_model()


def test_written_under_the_cache_dir_from_the_environment(model_dir, tmp_path):
    assert DEFAULT_MODEL_NAME == "pavana-tiny"
    assert model_dir == tmp_path / "cache" / "models" / DEFAULT_MODEL_DIRNAME
    assert sorted(p.name for p in model_dir.iterdir()) == sorted(CHECKPOINT_FILES)
    assert [p.name for p in model_dir.parent.iterdir()] == [DEFAULT_MODEL_DIRNAME]  # no temp dirs left


def test_second_call_writes_nothing(model_dir):
    before = {f.name: f.stat().st_mtime_ns for f in model_dir.iterdir()}
    assert ensure_default_model() == model_dir
    assert {f.name: f.stat().st_mtime_ns for f in model_dir.iterdir()} == before


def test_byte_identical_across_writes(tmp_path):
    a = ensure_default_model(tmp_path / "a")
    b = ensure_default_model(tmp_path / "b")
    assert digests(a) == digests(b)


def test_bytes_match_the_pinned_version(model_dir):
    assert digests(model_dir) == GOLDEN_SHA256


def test_racing_writers_both_get_a_complete_model(tmp_path):
    with ThreadPoolExecutor(4) as pool:
        paths = list(pool.map(lambda _: ensure_default_model(tmp_path), range(4)))
    assert len(set(paths)) == 1
    assert digests(paths[0]) == GOLDEN_SHA256
    assert os.listdir(paths[0].parent) == [DEFAULT_MODEL_DIRNAME]


def test_incomplete_directory_is_replaced(tmp_path):
    broken = tmp_path / "models" / DEFAULT_MODEL_DIRNAME
    broken.mkdir(parents=True)
    (broken / "config.json").write_text("{}")
    assert digests(ensure_default_model(tmp_path)) == GOLDEN_SHA256


def test_weights_have_llava_names_shapes_and_init(model_dir):
    w = load_file(str(model_dir / "model.safetensors"))
    cfg = ModelConfig.from_dir(model_dir)
    assert cfg.architecture == "LlavaForConditionalGeneration" and cfg.image_token_id == 3
    assert (cfg.vocab_size, cfg.hidden_size, cfg.intermediate_size, cfg.num_layers) == (512, 256, 688, 4)
    assert (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.bos_token_id, cfg.eos_token_ids) == (8, 4, 32, 1, (2,))
    language = {k for k in w if k.startswith("language_model.")}
    assert len(language) == 2 + 9 * cfg.num_layers + 1
    assert w["language_model.model.layers.3.self_attn.k_proj.weight"].shape == (128, 256)  # GQA: 4 kv heads of 32
    assert w["language_model.model.layers.0.mlp.down_proj.weight"].shape == (256, 688)
    assert torch.equal(w["language_model.model.norm.weight"], torch.ones(256))
    assert w["vision_tower.embeddings.position_embedding.weight"].shape == (17, 128)  # 16 patches + class
    assert w["multi_modal_projector.linear_2.weight"].shape == (256, 256)
    q = w["language_model.model.layers.0.self_attn.q_proj.weight"]
    assert q.dtype == torch.float32 and abs(q.std().item() - 0.02) < 1e-3 and abs(q.mean().item()) < 1e-3


def test_vision_tower_matches_transformers(model_dir):
    import io

    from PIL import Image
    from transformers import AutoImageProcessor, LlavaForConditionalGeneration

    from workers.vision.encoder import VisionEncoder

    buf = io.BytesIO()
    Image.radial_gradient("L").convert("RGB").save(buf, format="PNG")
    model = LlavaForConditionalGeneration.from_pretrained(model_dir).eval()
    pixels = AutoImageProcessor.from_pretrained(model_dir)(images=[Image.open(io.BytesIO(buf.getvalue())).convert("RGB")], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = model.get_image_features(pixel_values=pixels)
    expected = out.pooler_output if hasattr(out, "pooler_output") else out
    encoder = VisionEncoder.from_pretrained(model_dir)
    assert encoder.num_image_tokens == 16
    torch.testing.assert_close(encoder.encode([buf.getvalue()])[0], torch.as_tensor(expected[0]), rtol=1e-4, atol=1e-5)


def test_tokenizer_training_is_deterministic():
    assert train_tokenizer(512).to_str() == train_tokenizer(512).to_str()


def test_vocab_beyond_the_corpus_is_filled_with_reserved_tokens():
    tok = train_tokenizer(1500)
    assert tok.get_vocab_size() == 1500
    assert tok.id_to_token(1499).startswith("<|reserved_")


@pytest.mark.parametrize(
    "bad, field",
    [(dict(hidden_size=250), "hidden_size"), (dict(num_kv_heads=3), "num_kv_heads"), (dict(vocab_size=100), "vocab_size")],
)
def test_bad_shapes_are_rejected(tmp_path, bad, field):
    with pytest.raises(ValueError, match=field):
        write_tiny_llama(tmp_path, seed=0, **bad)


def test_custom_size(tmp_path):
    path = write_tiny_llama(tmp_path, seed=3, vocab_size=600, hidden_size=128, intermediate_size=256, num_layers=2, num_heads=4, num_kv_heads=2)
    cfg = ModelConfig.from_dir(path)
    assert (cfg.vocab_size, cfg.hidden_size, cfg.num_layers, cfg.num_kv_heads) == (600, 128, 2, 2)
    assert load_file(str(path / "model.safetensors"))["lm_head.weight"].shape == (600, 128)


def test_transformers_loads_and_generates_offline(model_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer, LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(model_dir).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    assert model.config.text_config.num_key_value_heads == 4 and len(tok) == model.config.text_config.vocab_size == 512
    ids = tok("The engine reads the prompt", return_tensors="pt")["input_ids"]
    assert ids[0, 0].item() == tok.bos_token_id == 1
    out = model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape == (1, ids.shape[1] + 8) or tok.eos_token_id in out[0, ids.shape[1] :].tolist()
