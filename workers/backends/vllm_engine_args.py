"""The spec's engine section in vLLM's terms: keyword arguments of `vllm.AsyncEngineArgs`.

Pure, so the mapping is unit-tested without vLLM:
- `chunk_size` → `max_num_batched_tokens` with chunked prefill on: vLLM v1 schedules decodes
  first and fills the rest of the token budget with prompt chunks — Sarathi-Serve's stall-free
  batching, Pavana's `sarathi` policy. `prefill_first` has no vLLM v1 counterpart and is refused;
- `max_num_seqs`, `block_size`, `enable_prefix_caching`, `max_model_len`, `dtype`: the same;
- `num_kv_blocks` and `num_threads` are Pavana's CPU engine's: vLLM sizes its KV cache from
  `gpu_memory_utilization` (default 0.9) and runs on the GPU;
- priority scheduling (`scheduling_policy="priority"`), so `GenerateRequest.priority` orders
  the queue (lower first, as in Pavana);
- structured outputs through vLLM's llguidance backend, the library Pavana's engine uses;
- image embeddings as inputs (`enable_mm_embeds`) for a checkpoint with a vision tower, since
  Pavana's vision pool encodes the images;
- stats logging on: the replica's `BackendStats` and vLLM's Prometheus metrics come from it;
- a prefill stage's engine is its KV connector's producer, a decode stage's its consumer
  (`kv_connector`, default NixlConnector; `kv_connector_extra_config` passes through);
- logprobs after vLLM's logits processors (`processed_logprobs`), like Pavana's, which are
  taken after logit bias, penalties and masks.
"""

from __future__ import annotations

from typing import Any

DEFAULT_KV_CONNECTOR = "NixlConnector"
KV_ROLES = {"prefill": "kv_producer", "decode": "kv_consumer", "colocated": None}
# The spec's engine keys that vLLM does not read (Pavana's CPU engine only).
CPU_ENGINE_ONLY = ("num_kv_blocks", "num_threads")
VLLM_ONLY = ("kv_connector", "kv_connector_extra_config", "gpu_memory_utilization", "tensor_parallel_size", "enforce_eager", "max_images_per_prompt")


def kv_transfer_config(stage: str, engine_config: dict[str, Any]) -> dict[str, Any] | None:
    """vLLM's `KVTransferConfig` fields for this stage; None for a colocated engine."""
    if stage not in KV_ROLES:
        raise ValueError(f"stage: {stage!r} has no vLLM engine (one of {', '.join(KV_ROLES)})")
    role = KV_ROLES[stage]
    if role is None:
        return None
    config: dict[str, Any] = {"kv_connector": engine_config.get("kv_connector") or DEFAULT_KV_CONNECTOR, "kv_role": role}
    if engine_config.get("kv_connector_extra_config"):
        config["kv_connector_extra_config"] = dict(engine_config["kv_connector_extra_config"])
    return config


def engine_kwargs(model_path: str | None, engine_config: dict[str, Any], stage: str, *, multimodal: bool) -> dict[str, Any]:
    """Keyword arguments of `vllm.AsyncEngineArgs` for one replica of `stage`; `multimodal`
    when the checkpoint has a vision tower (image embeddings are then accepted as inputs)."""
    if model_path is None:
        raise ValueError("model.path: the vLLM backend serves a Hugging Face checkpoint; the bundled models are for Pavana's CPU engine")
    policy = engine_config.get("policy", "sarathi")
    if policy != "sarathi":
        raise ValueError(f"engine.policy: {policy!r} has no vLLM counterpart; vLLM v1 batches stall-free with chunked prefill ('sarathi')")
    kwargs: dict[str, Any] = dict(
        model=model_path,
        enable_chunked_prefill=True,
        max_num_batched_tokens=int(engine_config.get("chunk_size", 2048)),
        max_num_seqs=int(engine_config.get("max_num_seqs", 64)),
        block_size=int(engine_config.get("block_size", 16)),
        enable_prefix_caching=bool(engine_config.get("enable_prefix_caching", True)),
        dtype=engine_config.get("dtype", "bfloat16"),
        scheduling_policy="priority",
        structured_outputs_config={"backend": "guidance"},
        logprobs_mode="processed_logprobs",
        disable_log_stats=False,
        gpu_memory_utilization=float(engine_config.get("gpu_memory_utilization", 0.9)),
        tensor_parallel_size=int(engine_config.get("tensor_parallel_size", 1)),
        enforce_eager=bool(engine_config.get("enforce_eager", False)),
    )
    if engine_config.get("max_model_len"):
        kwargs["max_model_len"] = int(engine_config["max_model_len"])
    if multimodal:
        kwargs["enable_mm_embeds"] = True
    if engine_config.get("max_images_per_prompt") is not None:
        kwargs["limit_mm_per_prompt"] = {"image": int(engine_config["max_images_per_prompt"])}
    transfer = kv_transfer_config(stage, engine_config)
    if transfer is not None:
        kwargs["kv_transfer_config"] = transfer
    return kwargs
