"""Read a Hugging Face LLaVA `safetensors` directory: the facts in `config.json`, and the
vision tower and projector weights only — the vision pool never holds the language model.

Checkpoint key layouts, all accepted (the first matching prefix wins):
- `vision_tower.embeddings...`, `multi_modal_projector...` — what `save_pretrained` writes
  with transformers 5.x (it maps its in-memory names back to the original layout on save);
- `model.vision_tower.embeddings...`, `model.multi_modal_projector...` — transformers 5.x's
  in-memory names, as a `state_dict()` saved by hand has them;
- `vision_tower.vision_model.embeddings...` — llava-hf checkpoints and transformers 4.x saves;
- `model.vision_tower.vision_model.embeddings...` — transformers 4.5x's in-memory names.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from workers.vision.clip import VisionConfig, VisionTower
from workers.vision.projector import SELECT_STRATEGIES, Projector

log = logging.getLogger(__name__)

TOWER_PREFIXES = ("model.vision_tower.vision_model.", "vision_tower.vision_model.", "model.vision_tower.", "vision_tower.")
PROJECTOR_PREFIXES = ("model.multi_modal_projector.", "multi_modal_projector.")
# In checkpoints, never needed to serve: the pooled output's norm, and a buffer older saves kept.
_UNUSED_TOWER_KEYS = ("post_layernorm.", "embeddings.position_ids")
DEFAULT_IMAGE_TOKEN_ID = 32000  # LlavaConfig's default, what transformers assumes when absent


def _read_config(path: Path) -> dict[str, Any]:
    file = path / "config.json"
    if not file.is_file():
        raise ValueError(f"model: {path} has no config.json")
    return json.loads(file.read_text(encoding="utf-8"))


def has_vision_tower(path: str | Path) -> bool:
    return "vision_config" in _read_config(Path(path))


def _feature_layers(raw: Any, num_layers: int) -> tuple[int, ...]:
    """`vision_feature_layer` (an int or a list, negative from the end) as indices into
    `hidden_states` = [embeddings, layer 1, ..., layer N]."""
    layers = raw if isinstance(raw, list) else [raw]
    if not layers or not all(isinstance(x, int) and not isinstance(x, bool) for x in layers):
        raise ValueError(f"vision_feature_layer: expected an int or a list of ints, got {raw!r}")
    out = []
    for layer in layers:
        if not -(num_layers + 1) <= layer <= num_layers:
            raise ValueError(f"vision_feature_layer: {layer} is outside -{num_layers + 1}..{num_layers} (the tower has {num_layers} layers)")
        out.append(layer % (num_layers + 1))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class LlavaVisionFacts:
    """What the router needs to place an image's tokens in a prompt, and what the vision
    pool needs to build its modules — from `config.json` alone."""

    image_token_id: int
    num_image_tokens: int
    vision: VisionConfig
    feature_layer: int | tuple[int, ...]  # as the config says (an int, or a tuple for a list)
    feature_indices: tuple[int, ...]  # the same, as non-negative indices into hidden_states
    select_strategy: str
    projector_act: str
    projector_bias: bool
    text_hidden_size: int | None  # None when text_config leaves it to the Llama default

    @classmethod
    def from_config(cls, raw: dict[str, Any], where: str = "config.json") -> LlavaVisionFacts:
        if "vision_config" not in raw:
            raise ValueError(f"model: {where} has no vision tower (no vision_config)")
        vision_raw = raw["vision_config"] or {}
        if vision_raw.get("model_type", "clip_vision_model") != "clip_vision_model":
            raise ValueError(f"vision_config.model_type: {vision_raw['model_type']!r} is not supported; only clip_vision_model")
        vision = VisionConfig.from_dict(vision_raw)
        strategy = raw.get("vision_feature_select_strategy", "default")
        if strategy not in SELECT_STRATEGIES:
            raise ValueError(f"vision_feature_select_strategy: {strategy!r} is not supported; choose one of {SELECT_STRATEGIES}")
        layer = raw.get("vision_feature_layer", -2)
        # Tokens per image come from the tower's geometry: transformers 5 writes the class
        # default `image_seq_length` (576) into every config, whatever the tower.
        num_tokens = vision.num_patches + (1 if strategy == "full" else 0)
        if raw.get("image_seq_length") not in (None, num_tokens):
            log.debug("image_seq_length %s in %s differs from the tower's %d tokens per image; using the tower's",
                      raw.get("image_seq_length"), where, num_tokens)
        token_id = raw.get("image_token_index", raw.get("image_token_id", DEFAULT_IMAGE_TOKEN_ID))
        text_hidden = (raw.get("text_config") or {}).get("hidden_size")
        return cls(
            image_token_id=int(token_id),
            num_image_tokens=num_tokens,
            vision=vision,
            feature_layer=tuple(layer) if isinstance(layer, list) else layer,
            feature_indices=_feature_layers(layer, vision.num_layers),
            select_strategy=strategy,
            projector_act=raw.get("projector_hidden_act", "gelu"),
            projector_bias=bool(raw.get("multimodal_projector_bias", True)),
            text_hidden_size=int(text_hidden) if text_hidden is not None else None,
        )

    @classmethod
    def from_dir(cls, path: str | Path) -> LlavaVisionFacts:
        return cls.from_config(_read_config(Path(path)), str(Path(path) / "config.json"))


def _weight_files(path: Path) -> list[Path]:
    """The shards that hold vision weights, from the index when there is one (a 34B LLaVA's
    vision tower sits in one or two of its shards; the rest are never opened)."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map: dict[str, str] = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        wanted = {file for key, file in weight_map.items() if key.startswith(TOWER_PREFIXES + PROJECTOR_PREFIXES)}
        return [path / file for file in sorted(wanted)]
    single = path / "model.safetensors"
    return [single] if single.is_file() else sorted(path.glob("*.safetensors"))


def _vision_keys(files: list[Path]) -> Iterator[tuple[str, str, Path, str]]:
    """(part, name within the part, file, checkpoint key) for every vision key."""
    for file in files:
        with safe_open(str(file), "pt") as f:
            for key in f.keys():
                for part, prefixes in (("tower", TOWER_PREFIXES), ("projector", PROJECTOR_PREFIXES)):
                    prefix = next((p for p in prefixes if key.startswith(p)), None)
                    if prefix is not None:
                        yield part, key[len(prefix) :], file, key
                        break


def _unused_tower_key(name: str, depth: int) -> bool:
    """Weights a checkpoint has but serving never reads: the pooled output's norm, an old
    buffer, and the layers past the deepest feature layer (not built)."""
    if name.startswith(_UNUSED_TOWER_KEYS):
        return True
    parts = name.split(".")
    return name.startswith("encoder.layers.") and parts[2].isdigit() and int(parts[2]) >= depth


def load_vision_state(path: Path, tower: torch.nn.Module, projector: torch.nn.Module, dtype: torch.dtype) -> None:
    """Fill `tower` and `projector` from the checkpoint; every parameter must be found once,
    with its shape. Tensors are read one by one (memory-mapped), cast to `dtype`."""
    files = _weight_files(path)
    if not files:
        raise ValueError(f"checkpoint: no .safetensors files in {path}")
    modules = {"tower": tower, "projector": projector}
    wanted = {part: dict(module.state_dict()) for part, module in modules.items()}
    found: dict[str, dict[str, torch.Tensor]] = {"tower": {}, "projector": {}}
    source: dict[tuple[str, str], str] = {}
    by_file: dict[Path, list[tuple[str, str, str]]] = {}
    for part, name, file, key in _vision_keys(files):
        if name not in wanted[part]:
            if part == "tower" and _unused_tower_key(name, len(tower.encoder.layers)):
                continue
            raise ValueError(f"checkpoint: {key} is not a weight of a CLIP tower or LLaVA projector as this config describes")
        if (part, name) in source:
            raise ValueError(f"checkpoint: {path} has {name!r} twice ({source[part, name]!r} and {key!r}); mixed key layouts")
        source[part, name] = key
        by_file.setdefault(file, []).append((part, name, key))
    for file, entries in by_file.items():
        with safe_open(str(file), "pt") as f:
            for part, name, key in entries:
                tensor = f.get_tensor(key)
                if tuple(tensor.shape) != tuple(wanted[part][name].shape):
                    raise ValueError(f"checkpoint: {key} has shape {list(tensor.shape)}; the config implies {list(wanted[part][name].shape)}")
                found[part][name] = tensor.to(dtype)
    for part, module in modules.items():
        missing = sorted(wanted[part].keys() - found[part].keys())
        if missing:
            prefixes = TOWER_PREFIXES if part == "tower" else PROJECTOR_PREFIXES
            raise ValueError(f"checkpoint: {path} lacks {part} weights {missing[:3]}{' ...' if len(missing) > 3 else ''} under any of {list(prefixes)}")
        module.load_state_dict(found[part], strict=True)


def _projector_out_features(path: Path) -> int | None:
    """The language model's hidden size, read from the projector's weight when the config
    leaves it implicit (llava-1.5's text_config has no hidden_size)."""
    for part, name, file, key in _vision_keys(_weight_files(path)):
        if part == "projector" and name == "linear_2.weight":
            with safe_open(str(file), "pt") as f:
                return int(f.get_slice(key).get_shape()[0])
    return None


def model_identity(path: str | Path) -> str:
    """A short fingerprint of the checkpoint (configs, weight files' names, sizes and mtimes):
    part of every cache key, so embeddings of one model are never served for another."""
    path = Path(path).resolve()
    digest = hashlib.sha256(str(path).encode())
    for name in ("config.json", "preprocessor_config.json"):
        if (path / name).is_file():
            digest.update((path / name).read_bytes())
    for file in _weight_files(path):
        stat = file.stat()
        digest.update(f"{file.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def load_llava_vision(path: str | Path, *, dtype: torch.dtype = torch.float32) -> tuple[LlavaVisionFacts, VisionTower, Projector]:
    """The facts, and the tower (only as deep as the features need) and projector, in eval mode."""
    path = Path(path)
    facts = LlavaVisionFacts.from_dir(path)
    out_features = _projector_out_features(path) or facts.text_hidden_size
    if out_features is None:
        raise ValueError(f"checkpoint: {path} has no multi_modal_projector.linear_2.weight")
    if facts.text_hidden_size not in (None, out_features):
        raise ValueError(f"text_config.hidden_size: {facts.text_hidden_size}, but the projector's output is {out_features}")
    tower = VisionTower(facts.vision, num_layers=max(facts.feature_indices))
    projector = Projector(facts.vision.hidden_size * len(facts.feature_indices), out_features, facts.projector_act, facts.projector_bias)
    load_vision_state(path, tower, projector, dtype)
    tower.to(dtype).eval().requires_grad_(False)
    projector.to(dtype).eval().requires_grad_(False)
    log.info("loaded vision tower", extra={"model": str(path), "layers": len(tower.encoder.layers), "tokens_per_image": facts.num_image_tokens})
    return facts, tower, projector
