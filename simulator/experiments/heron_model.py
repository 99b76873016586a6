"""The hardware of the Heron experiment: a Llama-3-70B-class model served with tensor
parallelism on A100s, and the GPU power modes a site may run its replicas in.

The cost model. Vidur publishes no 70B profile, so the 70B-class model
is built from the Llama-3-8B profile at the same tensor-parallel degree (the profile's TP
column): a 70B layer has hidden size 8192 and MLP size 28672 against the 8B's 4096 and 14336,
with the same 8 KV heads and head size 128, so each of its projections moves and multiplies
4× the weights of the 8B's (the QKV projection 3.33×) and each element-wise operator touches
2× the elements. Every operator's profiled time at a given token count is scaled by that ratio
(weights dominate both the memory-bound small batches and the compute-bound large ones), over
80 layers. Tensor parallelism adds two all-reduces of the layer's activations per layer
(after attention and after the MLP), timed from Vidur's A100 DGX all-reduce profile with all
workers in one node (NVLink); the profile's `size` is read as bytes, as Vidur's predictor
reads it, and the activations are bf16. Attention, the LM head and the step overhead are
`GpuCostModel`'s analytic terms with the 70B's dimensions.

The power modes (per GPU; a replica of TP degree t draws t times as much):
- full clock: 400 W, the A100-SXM4's board power limit (NVIDIA A100 datasheet), throughput 1;
- capped: a 280 W power limit (70% of the board limit), throughput 0.94. Samsi et al., "From
  Words to Watts: Benchmarking the Energy Costs of Large Language Model Inference", IEEE HPEC
  2023 (arXiv:2310.03003), measured a cap at 70% of the board limit (250 → 175 W) to add
  about 6–7% latency to LLaMA inference while cutting energy by about 23%; 1/1.065 ≈ 0.94.
  Their runs are decode-dominated; prefill is compute-bound and would lose more at the same
  cap, so 0.94 flatters the capped mode for prompt-heavy (code) traffic.
Patel et al., "Characterizing Power Management Opportunities for LLMs in the Cloud" (ASPLOS
2024) lock A100 clocks at 1275 and 1110 MHz (from 1410) for the same purpose; the published sources give
their frequencies, not the throughput and power at each, so no mode is built from them.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pavana_data import profiles_dir as default_profiles_dir
from simulator.cost_model import GPUS, OPS, BatchShape, CostModelError, GpuCostModel

# Llama-3-70B's shape (8K context covers the Azure traces; Llama-2-70B's 4K would refuse 14% of
# the code trace's prompts).
LAYERS_70B = 80
HIDDEN_70B = 8192
HEADS_70B = 64
KV_HEADS_70B = 8
VOCAB_70B = 128256
# Per-operator ratio of a 70B layer's work to an 8B layer's at the same token count and TP.
OP_SCALE_8B_TO_70B = {
    "input_layernorm": 2.0,  # element-wise over the hidden size
    "post_attention_layernorm": 2.0,
    "add": 2.0,
    "attn_rope": 2.0,  # query heads 64 vs 32 (key heads equal): ≈ 2
    "attn_pre_proj": 8192 * (8192 + 2 * 8 * 128) / (4096 * (4096 + 2 * 8 * 128)),  # QKV: 3.33
    "attn_post_proj": 4.0,  # 8192² vs 4096²
    "mlp_up_proj": 4.0,  # 8192 × 2·28672 vs 4096 × 2·14336
    "mlp_act": 2.0,  # element-wise over the MLP size
    "mlp_down_proj": 4.0,
}
EMB_SCALE = 2.0  # the embedding lookup writes 2× the elements

GPU_FULL_W = 400.0
GPU_CAPPED_W = 280.0
CAPPED_THROUGHPUT = 0.94

MODE_SOURCES = {
    "full": "A100-SXM4 board power limit 400 W at full clock (NVIDIA A100 datasheet); throughput 1.0",
    "capped": ("280 W power limit (70% of the board limit); throughput 0.94 = 1/1.065: Samsi et al., 'From Words to Watts', "
               "IEEE HPEC 2023 (arXiv:2310.03003), a 70% cap (250 -> 175 W) added ~6-7% latency to LLaMA inference "
               "(decode-dominated runs; prefill-heavy traffic loses more)"),
}


def power_modes(tp: int, *, capped: bool = True) -> list[dict]:
    """The spec's `power_modes` for a replica of `tp` GPUs; without `capped` only full clock
    (the idling baseline: a site sheds GPUs instead of slowing them)."""
    modes = [{"name": "full", "power_w": GPU_FULL_W * tp, "throughput_fraction": 1.0}]
    if capped:
        modes.append({"name": "capped", "power_w": GPU_CAPPED_W * tp, "throughput_fraction": CAPPED_THROUGHPUT})
    return modes


@dataclass(frozen=True)
class TensorParallelCostModel(GpuCostModel):
    """`GpuCostModel` plus the all-reduces tensor parallelism costs: two per layer, of the
    step's activations (tokens × hidden × 2 bytes)."""

    allreduce_bytes: tuple[float, ...] = ()
    allreduce_s: tuple[float, ...] = ()

    def allreduce_time(self, num_tokens: int) -> float:
        if self.tp == 1 or not self.allreduce_bytes:
            return 0.0
        cache = self.__dict__.setdefault("_allreduce_cache", {})
        t = cache.get(num_tokens)
        if t is None:
            size = num_tokens * self.n_embd * 2.0
            one = float(np.interp(size, self.allreduce_bytes, self.allreduce_s))
            if size > self.allreduce_bytes[-1]:  # beyond the profile: bandwidth-bound, linear
                slope = (self.allreduce_s[-1] - self.allreduce_s[-2]) / (self.allreduce_bytes[-1] - self.allreduce_bytes[-2])
                one = self.allreduce_s[-1] + slope * (size - self.allreduce_bytes[-1])
            t = cache[num_tokens] = 2 * self.num_layers * one
        return t

    def batch_time(self, shape: BatchShape) -> float:
        base = GpuCostModel.batch_time(self, shape)
        if base == 0.0:
            return 0.0
        return base + self.allreduce_time(shape.prefill_tokens + shape.decode_tokens)

    def describe(self) -> dict:
        return {**GpuCostModel.describe(self), "source": (
            "Llama-3-70B-class: Vidur's A100 Llama-3-8B operator profile at the same TP, each operator scaled by the "
            "70B/8B ratio of its weights or elements (projections 3.33-4x, element-wise 2x), 80 layers; two all-reduces "
            "per layer from Vidur's A100 DGX all-reduce profile (one node, size read as bytes); analytic attention")}


def llama70b_cost_model(tp: int, profiles_dir: Path | None = None) -> TensorParallelCostModel:
    profiles_dir = default_profiles_dir() if profiles_dir is None else Path(profiles_dir)
    if tp not in (2, 4, 8):
        raise CostModelError(f"tp: a 70B-class model needs 2, 4 or 8 A100-80GB GPUs (140 GB of bf16 weights), got {tp}")
    path = profiles_dir / "a100_Meta-Llama-3-8B_mlp.csv"
    if not path.is_file():
        raise CostModelError(f"no A100 Llama-3-8B operator profile (looked for {path})")
    by_tokens: dict[int, list[tuple[float, float]]] = {}
    with path.open(newline="") as f:
        for r in csv.DictReader(f):
            if int(r["num_tensor_parallel_workers"]) != tp:
                continue
            layer = sum(OP_SCALE_8B_TO_70B[op] * float(r[f"time_stats.{op}.median"]) for op in OPS)
            by_tokens.setdefault(int(r["num_tokens"]), []).append((layer, EMB_SCALE * float(r["time_stats.emb.median"])))
    if not by_tokens:
        raise CostModelError(f"{path.name}: no rows with tensor-parallel degree {tp}")
    counts = sorted(by_tokens)
    layer_s = np.array([np.mean([v[0] for v in by_tokens[n]]) for n in counts]) / 1e3
    emb_s = np.array([np.mean([v[1] for v in by_tokens[n]]) for n in counts]) / 1e3
    sizes, seconds = _allreduce_profile(profiles_dir / "a100_dgx_all_reduce.csv", tp)
    return TensorParallelCostModel(
        f"a100-llama3-70b-class-tp{tp}", GPUS["a100"], LAYERS_70B, HEADS_70B, KV_HEADS_70B, HIDDEN_70B, VOCAB_70B, tp,
        np.array(counts, dtype=float), layer_s, emb_s, allreduce_bytes=sizes, allreduce_s=seconds)


def _allreduce_profile(path: Path, tp: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Median all-reduce time by size, all `tp` workers in one node; duplicate sizes averaged."""
    if not path.is_file():
        raise CostModelError(f"no A100 all-reduce profile (looked for {path})")
    by_size: dict[float, list[float]] = {}
    with path.open(newline="") as f:
        for r in csv.DictReader(f):
            if int(r["num_workers"]) == tp and int(r["devices_per_node"]) == tp:
                by_size.setdefault(float(r["size"]), []).append(float(r["time_stats.all_reduce.median"]) / 1e3)
    if not by_size:
        raise CostModelError(f"{path.name}: no all-reduce rows for {tp} workers in one node")
    sizes = sorted(by_size)
    return tuple(sizes), tuple(float(np.mean(by_size[s])) for s in sizes)
