"""Engine configuration: one dataclass, validated once at construction."""

from __future__ import annotations

from dataclasses import dataclass

MODES = ("colocated", "prefill", "decode")
DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Everything the engine needs besides the checkpoint.

    `chunk_size` is the token budget of one iteration (Sarathi-Serve's chunk): running decodes
    take one token each, prefill chunks fill the rest. With `tbt_target_s` the budget follows
    the replica's measured step costs so that a step ends within that target
    (`workers/engine/token_budget.py`), never above `chunk_size`. `num_kv_blocks` *
    `block_size` is the number of tokens the paged KV cache holds across all sequences.
    """

    policy: str = "sarathi"
    mode: str = "colocated"
    chunk_size: int = 256
    max_num_seqs: int = 64
    block_size: int = 16
    num_kv_blocks: int = 2048
    enable_prefix_caching: bool = True
    max_model_len: int | None = None
    max_queued_requests: int = 1024
    dtype: str = "float32"
    num_threads: int | None = None
    tbt_target_s: float | None = None

    def __post_init__(self) -> None:
        from workers.engine.scheduler import POLICIES

        if self.policy not in POLICIES:
            raise ValueError(f"policy: unknown scheduler policy {self.policy!r}; choose one of {sorted(POLICIES)}")
        if self.mode not in MODES:
            raise ValueError(f"mode: unknown engine mode {self.mode!r}; choose one of {list(MODES)}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype: unsupported {self.dtype!r}; choose one of {list(DTYPES)}")
        for name in ("chunk_size", "max_num_seqs", "block_size", "num_kv_blocks", "max_queued_requests"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: must be an integer >= 1, got {value!r}")
        if self.max_model_len is not None and self.max_model_len < 1:
            raise ValueError(f"max_model_len: must be >= 1, got {self.max_model_len!r}")
        if self.tbt_target_s is not None and not self.tbt_target_s > 0:
            raise ValueError(f"tbt_target_s: must be > 0, got {self.tbt_target_s!r}")
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError(f"num_threads: must be >= 1, got {self.num_threads!r}")
