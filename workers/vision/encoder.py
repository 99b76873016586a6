"""`VisionEncoder`: images in, one embedding tensor per image out — the vision pool's work.

Loads only the vision tower and projector of a LLaVA `safetensors` checkpoint, so the vision
pool does not hold the language model. All images are decoded and checked before any is
encoded: one bad image fails the call with its index and never corrupts the others.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from workers.vision.cache import EmbeddingCache, content_hash
from workers.vision.clip import Projector, VisionConfig, VisionTower
from workers.vision.preprocess import ImageError, ImageProcessorConfig, open_image, preprocess

log = logging.getLogger(__name__)

# Where the tower's weights live, by checkpoint layout (transformers 5 and older llava-hf).
_TOWER_PREFIXES = ("vision_tower.vision_model.", "vision_tower.", "model.vision_tower.vision_model.", "model.vision_tower.")
_PROJECTOR_PREFIXES = ("multi_modal_projector.", "model.multi_modal_projector.")


@dataclass(frozen=True, slots=True)
class LlavaVisionFacts:
    """What the router needs to place an image's tokens in a prompt, from config.json alone."""

    image_token_id: int
    num_image_tokens: int
    vision: VisionConfig
    feature_layer: int | tuple[int, ...]
    select_strategy: str
    projector_act: str
    projector_bias: bool
    text_hidden_size: int

    @classmethod
    def from_dir(cls, path: str | Path) -> LlavaVisionFacts:
        raw = json.loads((Path(path) / "config.json").read_text())
        if "vision_config" not in raw:
            raise ValueError(f"model: {path} has no vision tower (config.json has no vision_config)")
        vision = VisionConfig.from_dict(raw["vision_config"])
        strategy = raw.get("vision_feature_select_strategy", "default")
        if strategy not in ("default", "full"):
            raise ValueError(f"vision_feature_select_strategy: {strategy!r} is not supported")
        layer = raw.get("vision_feature_layer", -2)
        return cls(
            image_token_id=raw.get("image_token_id", raw.get("image_token_index")),
            num_image_tokens=vision.num_patches + (1 if strategy == "full" else 0),
            vision=vision,
            feature_layer=tuple(layer) if isinstance(layer, list) else layer,
            select_strategy=strategy,
            projector_act=raw.get("projector_hidden_act", "gelu"),
            projector_bias=raw.get("multimodal_projector_bias", True),
            text_hidden_size=raw["text_config"]["hidden_size"],
        )


def has_vision_tower(path: str | Path) -> bool:
    return "vision_config" in json.loads((Path(path) / "config.json").read_text())


def _load_prefixed(path: Path, prefixes: tuple[str, ...], module: torch.nn.Module, key_map=lambda k: k) -> None:
    weights: dict[str, torch.Tensor] = {}
    for file in sorted(path.glob("*.safetensors")):
        with safe_open(str(file), "pt") as f:
            for key in f.keys():
                weights[key] = f.get_tensor(key) if any(key.startswith(p) for p in prefixes) else None
    wanted = set(module.state_dict())
    for prefix in prefixes:
        found = {key_map(k[len(prefix) :]): v for k, v in weights.items() if k.startswith(prefix) and v is not None}
        found = {k: v for k, v in found.items() if k in wanted}
        if found:
            missing = wanted - found.keys()
            if missing:
                raise ValueError(f"checkpoint: {path} lacks {sorted(missing)[:3]} under {prefix!r}")
            module.load_state_dict(found)
            return
    raise ValueError(f"checkpoint: no weights under any of {list(prefixes)} in {path}")


def _tower_key(key: str) -> str:
    """Checkpoint names (embeddings.*, encoder.layers.N.self_attn.*, encoder.layers.N.mlp.*) to ours."""
    key = key.removeprefix("embeddings.").removeprefix("encoder.")
    return key.replace("self_attn.", "").replace("mlp.", "").replace("position_embedding.weight", "position_embedding.weight")


class VisionEncoder:
    def __init__(self, path: str | Path, *, cache_size: int = 256, max_batch: int = 16) -> None:
        path = Path(path)
        self.facts = LlavaVisionFacts.from_dir(path)
        self.processor = ImageProcessorConfig.from_dir(path, self.facts.vision.image_size)
        self.tower = VisionTower(self.facts.vision)
        _load_prefixed(path, _TOWER_PREFIXES, self.tower, _tower_key)
        layers = self.facts.feature_layer if isinstance(self.facts.feature_layer, tuple) else (self.facts.feature_layer,)
        self.projector = Projector(self.facts.vision.hidden_size * len(layers), self.facts.text_hidden_size, self.facts.projector_act, self.facts.projector_bias)
        _load_prefixed(path, _PROJECTOR_PREFIXES, self.projector)
        self.tower.eval()
        self.projector.eval()
        self.cache = EmbeddingCache(cache_size)
        self.max_batch = max_batch
        self.identity = str(path.resolve())
        # How deep the tower must run: the deepest feature layer asked for.
        n = self.facts.vision.num_layers
        self._layers = [layer % (n + 1) for layer in layers]

    @classmethod
    def from_pretrained(cls, path: str | Path, *, cache_size: int = 256) -> VisionEncoder:
        return cls(path, cache_size=cache_size)

    @property
    def num_image_tokens(self) -> int:
        return self.facts.num_image_tokens

    @torch.inference_mode()
    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """[batch, 3, H, W] preprocessed pixels to [batch, num_image_tokens, text_hidden]."""
        states = self.tower.hidden_states(pixels, up_to=max(self._layers))
        selected = [states[layer] for layer in self._layers]
        if self.facts.select_strategy == "default":
            selected = [s[:, 1:] for s in selected]
        return self.projector(torch.cat(selected, dim=-1))

    def encode(self, images: list[bytes]) -> list[torch.Tensor]:
        """One [num_image_tokens, text_hidden] tensor per image, in order."""
        keys = [content_hash(self.identity.encode() + data) for data in images]
        results: dict[int, torch.Tensor] = {}
        todo: list[tuple[int, torch.Tensor]] = []
        for i, (key, data) in enumerate(zip(keys, images)):
            cached = self.cache.get(key)
            if cached is not None:
                results[i] = cached
                continue
            try:
                todo.append((i, preprocess(open_image(data), self.processor)))
            except ImageError as exc:
                raise ImageError(f"images[{i}]: {exc}") from None
        for start in range(0, len(todo), self.max_batch):
            batch = todo[start : start + self.max_batch]
            embeds = self.encode_pixels(torch.stack([p for _, p in batch]))
            for (i, _), e in zip(batch, embeds):
                results[i] = e.clone()
                self.cache.put(keys[i], results[i])
        return [results[i] for i in range(len(images))]
