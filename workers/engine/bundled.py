"""The models Pavana writes itself on first use, by the names a spec's `model.bundled` takes.

Each is written once into Pavana's cache (`PAVANA_CACHE_DIR`, else `~/.cache/pavana`) on the
node that needs it, atomically, so replicas on any node resolve the same name to the same
checkpoint without a shared disk.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from workers.engine.default_model import DEFAULT_MODEL_NAME, ensure_default_model
from workers.engine.smollm2 import SMOLLM2_MODEL_NAME, ensure_smollm2

BUNDLED_MODELS: dict[str, Callable[[Path | None], Path]] = {
    SMOLLM2_MODEL_NAME: ensure_smollm2,  # SmolLM2-135M-Instruct, a random vision tower beside it
    DEFAULT_MODEL_NAME: ensure_default_model,  # the tiny random LLaVA: tests and profiles
}


def ensure_bundled_model(name: str, cache_dir: Path | None = None) -> Path:
    if name not in BUNDLED_MODELS:
        raise ValueError(f"model.bundled: {name!r} is not one of {sorted(BUNDLED_MODELS)}")
    return BUNDLED_MODELS[name](cache_dir)


def model_dir(path: str | Path | None, bundled: str) -> Path:
    """The checkpoint a spec's model section names: its path, else the bundled model."""
    return Path(path) if path else ensure_bundled_model(bundled)
