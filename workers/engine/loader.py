"""Loading Llama-architecture weights from a Hugging Face `safetensors` directory."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from workers.engine.model_config import ModelConfig
from workers.engine.models.llama import LlamaModel

# Where the language model's weights live, by checkpoint layout: plain Llama, LLaVA as
# transformers 5 saves it, LLaVA as older releases saved it.
_PREFIXES = ("model.", "model.language_model.", "language_model.model.")
_LM_HEADS = ("lm_head.weight", "language_model.lm_head.weight")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ValueError(f"model path: no *.safetensors files in {path}")
    weights: dict[str, torch.Tensor] = {}
    for f in files:
        weights.update(load_file(str(f)))
    return weights


def load_llama(path: str | Path, dtype: str = "float32") -> tuple[ModelConfig, LlamaModel]:
    path = Path(path)
    if not (path / "config.json").is_file():
        raise ValueError(f"model path: {path} has no config.json")
    cfg = ModelConfig.from_dir(path)
    weights = read_safetensors(path)
    prefix = next((p for p in _PREFIXES if p + "embed_tokens.weight" in weights), None)
    if prefix is None:
        raise ValueError(f"checkpoint: no embed_tokens weight under any of {list(_PREFIXES)} in {path}")
    lm_head = next((k for k in _LM_HEADS if k in weights), None)
    if lm_head is None and not cfg.tie_word_embeddings:
        raise ValueError(f"checkpoint: no lm_head weight in {path} and tie_word_embeddings is false")
    with torch.device("meta"):
        model = LlamaModel(cfg)
    model = model.to_empty(device="cpu")
    model.load_weights(weights, prefix, lm_head)
    if lm_head is None:  # tied (SmolLM2): one table for both ends, not a second copy in memory
        model.lm_head.weight = model.embed_tokens.weight
    return cfg, model.to(DTYPES[dtype]).eval()
