"""Loading the vision half of a LLaVA checkpoint: key layouts, shards, dtypes, config errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from workers.vision.encoder import VisionEncoder
from workers.vision.loader import LlavaVisionFacts, has_vision_tower, load_llava_vision


def copy_checkpoint(src: Path, dst: Path, rename=lambda k: k, *, dtype=None, shards: int = 1, config=None) -> Path:
    """The checkpoint at `src` rewritten: keys renamed, tensors cast, split into shards (the
    language model in a shard of its own), config edited."""
    dst.mkdir(parents=True)
    shutil.copy(src / "preprocessor_config.json", dst)
    raw = json.loads((src / "config.json").read_text())
    (dst / "config.json").write_text(json.dumps(config(raw) if config else raw))
    weights = {rename(k): (v.to(dtype) if dtype else v) for k, v in load_file(src / "model.safetensors").items()}
    if shards == 1:
        save_file(weights, dst / "model.safetensors")
        return dst
    language = {k: v for k, v in weights.items() if "language_model" in k or "lm_head" in k}
    vision = {k: v for k, v in weights.items() if k not in language}
    files = {"model-00001-of-00002.safetensors": language, "model-00002-of-00002.safetensors": vision}
    for name, part in files.items():
        save_file(part, dst / name)
    weight_map = {k: name for name, part in files.items() for k in part}
    (dst / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return dst


def test_transformers_5_saves_the_original_llava_layout(llava_dir):
    keys = load_file(llava_dir / "model.safetensors").keys()
    assert "vision_tower.embeddings.patch_embedding.weight" in keys
    assert "multi_modal_projector.linear_1.weight" in keys
    assert not any(k.startswith("model.") or ".vision_model." in k for k in keys)


@pytest.mark.parametrize(
    "tower, projector",
    [
        ("model.vision_tower.", "model.multi_modal_projector."),  # transformers 5 in memory
        ("vision_tower.vision_model.", "multi_modal_projector."),  # llava-hf / transformers 4 saves
        ("model.vision_tower.vision_model.", "model.multi_modal_projector."),  # transformers 4.5x in memory
    ],
)
def test_every_key_layout_gives_the_same_embeddings(llava_dir, sample_images, tmp_path, tower, projector):
    def rename(key: str) -> str:
        return key.replace("vision_tower.", tower, 1).replace("multi_modal_projector.", projector, 1)

    expected = VisionEncoder.from_pretrained(llava_dir).encode(sample_images[:2])
    got = VisionEncoder.from_pretrained(copy_checkpoint(llava_dir, tmp_path / "m", rename)).encode(sample_images[:2])
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_sharded_checkpoint_opens_only_the_vision_shard(llava_dir, sample_images, tmp_path):
    path = copy_checkpoint(llava_dir, tmp_path / "m", shards=2)
    (path / "model-00001-of-00002.safetensors").write_bytes(b"the language model shard: never opened here")
    expected = VisionEncoder.from_pretrained(llava_dir).encode(sample_images[:1])[0]
    torch.testing.assert_close(VisionEncoder.from_pretrained(path).encode(sample_images[:1])[0], expected, rtol=0, atol=0)


def test_half_precision_checkpoints_load_as_float32(llava_dir, sample_images, tmp_path):
    path = copy_checkpoint(llava_dir, tmp_path / "m", dtype=torch.float16)
    encoder = VisionEncoder.from_pretrained(path)
    assert {p.dtype for p in [*encoder.tower.parameters(), *encoder.projector.parameters()]} == {torch.float32}
    embed = encoder.encode(sample_images[:1])[0]
    assert embed.dtype == torch.float32
    torch.testing.assert_close(embed, VisionEncoder.from_pretrained(llava_dir).encode(sample_images[:1])[0], rtol=0.05, atol=0.05)


def test_config_facts_and_old_field_names(llava_dir, tmp_path):
    facts = LlavaVisionFacts.from_dir(llava_dir)
    assert (facts.image_token_id, facts.num_image_tokens, facts.feature_layer, facts.select_strategy) == (7, 16, -2, "default")
    assert has_vision_tower(llava_dir)

    def old_style(raw):  # llava-1.5's config: image_token_id spelling, no text hidden_size
        raw["image_token_id"] = raw.pop("image_token_index")
        del raw["text_config"]["hidden_size"]
        return raw

    path = copy_checkpoint(llava_dir, tmp_path / "m", config=old_style)
    facts, _, projector = load_llava_vision(path)
    assert facts.image_token_id == 7 and facts.text_hidden_size is None
    assert projector.linear_2.out_features == 48  # from the projector's weight


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda raw: raw.pop("vision_config"), "no vision tower"),
        (lambda raw: raw.update(vision_feature_select_strategy="cls"), "vision_feature_select_strategy: 'cls'"),
        (lambda raw: raw.update(vision_feature_layer=3), r"vision_feature_layer: 3 is outside -3..2"),
        (lambda raw: raw.update(vision_feature_layer=[-1, "x"]), "vision_feature_layer: expected an int"),
        (lambda raw: raw["vision_config"].update(model_type="siglip_vision_model"), "siglip_vision_model"),
        (lambda raw: raw["vision_config"].update(hidden_act="mish"), "hidden_act: 'mish'"),
        (lambda raw: raw["vision_config"].update(hidden_size=32), r"has shape \[\d+, 64(, 8, 8)?\]; the config implies \[\d+, 32"),
        (lambda raw: raw["text_config"].update(hidden_size=96), "text_config.hidden_size: 96"),
    ],
)
def test_bad_configs_fail_at_load_with_the_field(llava_dir, tmp_path, edit, message):
    def config(raw):
        edit(raw)
        return raw

    with pytest.raises(ValueError, match=message):
        load_llava_vision(copy_checkpoint(llava_dir, tmp_path / "m", config=config))


def test_missing_unexpected_and_duplicated_weights_are_named(llava_dir, tmp_path):
    def drop(key):
        return "unused." + key if key == "vision_tower.pre_layrnorm.bias" else key

    with pytest.raises(ValueError, match=r"lacks tower weights \['pre_layrnorm.bias'\]"):
        load_llava_vision(copy_checkpoint(llava_dir, tmp_path / "a", drop))
    with pytest.raises(ValueError, match=r"multi_modal_projector.linear_3.(weight|bias) is not a weight"):
        load_llava_vision(copy_checkpoint(llava_dir, tmp_path / "b", lambda k: k.replace("linear_2", "linear_3")))

    path = copy_checkpoint(llava_dir, tmp_path / "c")
    weights = load_file(path / "model.safetensors")
    weights["model.vision_tower.pre_layrnorm.bias"] = weights["vision_tower.pre_layrnorm.bias"].clone()
    save_file(weights, path / "model.safetensors")
    with pytest.raises(ValueError, match="twice"):
        load_llava_vision(path)
    with pytest.raises(ValueError, match="no config.json"):
        load_llava_vision(tmp_path)


def test_the_benchmark_checkpoint_loads(tmp_path, sample_images):
    from benchmarks.vision import write_random_llava_vision

    path = write_random_llava_vision(tmp_path / "m", image_size=32, patch_size=8, hidden_size=32, num_layers=2, num_heads=2, text_hidden_size=24)
    encoder = VisionEncoder.from_pretrained(path)
    embeds = encoder.encode(sample_images[:3])
    assert [e.shape for e in embeds] == [(16, 24)] * 3 and all(torch.isfinite(e).all() for e in embeds)
