"""How long a batch takes: the one thing the simulator predicts instead of running.

A batch is reduced to its shape (`BatchShape`): prefill tokens, decode tokens, and the
context they attend to. Two cost models read it:

- `LinearCostModel`: least squares over profiles of Pavana's own engine on this machine
  (`pavana profile`): time = a + b·prefill tokens + c·decode tokens + d·attended context.
- `GpuCostModel`: Vidur's published per-operator GPU profiles (carried in
  `pavana_data/profiles`) for the token-level operators, which dominate a 7–8B model's step,
  and an analytic attention term, since Vidur publishes no attention kernel profiles with
  them: prefill attention as FLOPs at a stated efficiency of the GPU's peak, decode attention as KV bytes read at a
  stated efficiency of its memory bandwidth.

Both also give the cost of encoding images and the KV bytes per token a prefill→decode
hand-off moves; `Network` turns bytes into transfer time within and between sites.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Protocol

import numpy as np

from pavana_data import profiles_dir as default_profiles_dir
from workers.engine.scheduler import ScheduledBatch


class CostModelError(ValueError):
    """Profiles or settings a cost model cannot be built from."""


@dataclass(frozen=True, slots=True)
class BatchShape:
    prefill_tokens: int = 0
    decode_tokens: int = 0
    prefill_attended: float = 0.0  # Σ over prefill tokens of the positions each attends to
    decode_context: float = 0.0  # Σ over decodes of their context length
    num_seqs: int = 0

    @property
    def attended(self) -> float:
        return self.prefill_attended + self.decode_context


def shape_of(batch: ScheduledBatch) -> BatchShape:
    p = d = 0
    pa = dc = 0.0
    for c in batch.chunks:
        if c.is_decode:
            d += 1
            dc += c.start + 1
        else:
            n = c.num_tokens
            p += n
            pa += n * c.start + n * (n + 1) / 2
    return BatchShape(p, d, pa, dc, len(batch.chunks))


class CostModel(Protocol):
    name: str
    kv_bytes_per_token: float

    def batch_time(self, shape: BatchShape) -> float: ...
    def encode_time(self, num_images: int) -> float: ...


# -- fitted from profiles of the real engine -------------------------------------------------------
FEATURES = ("prefill_tokens", "decode_tokens", "attended")


def design_matrix(shapes: list[BatchShape]) -> np.ndarray:
    return np.array([[1.0, s.prefill_tokens, s.decode_tokens, s.attended] for s in shapes], dtype=float)


@dataclass(frozen=True, slots=True)
class LinearCostModel:
    """time = intercept + per_prefill_token·p + per_decode_token·d + per_attended·a (seconds)."""

    intercept: float
    per_prefill_token: float
    per_decode_token: float
    per_attended: float
    encode_s_per_image: float = 0.015  # stated: the README's vision benchmark, ~68 images/s on 2 cores
    kv_bytes_per_token: float = 0.0
    name: str = "fitted"
    r2: float = float("nan")
    max_relative_error: float = float("nan")

    def batch_time(self, shape: BatchShape) -> float:
        t = (self.intercept + self.per_prefill_token * shape.prefill_tokens
             + self.per_decode_token * shape.decode_tokens + self.per_attended * shape.attended)
        return max(t, 1e-6)

    def encode_time(self, num_images: int) -> float:
        return self.encode_s_per_image * num_images

    @classmethod
    def fit(cls, shapes: list[BatchShape], seconds: list[float], **kwargs) -> LinearCostModel:
        if len(shapes) != len(seconds):
            raise CostModelError(f"fit: {len(shapes)} shapes but {len(seconds)} times")
        if len(shapes) < len(FEATURES) + 1:
            raise CostModelError(f"fit: need at least {len(FEATURES) + 1} profiled batches, got {len(shapes)}")
        x = design_matrix(shapes)
        y = np.asarray(seconds, dtype=float)
        if not np.all(np.isfinite(y)) or np.any(y < 0):
            raise CostModelError("fit: times must be finite and >= 0")
        # Least squares on relative error (each row divided by its time), so that the short
        # steps that set TBT weigh as much as long prefills; every term kept >= 0: a step never
        # takes negative time and more work never takes less. A term that comes out negative
        # (noise, or features that move together in a small grid) is dropped and the rest refitted.
        w = 1.0 / np.maximum(y, 1e-9)
        active = list(range(x.shape[1]))
        while True:
            sub, *_ = np.linalg.lstsq(x[:, active] * w[:, None], y * w, rcond=None)
            negative = [(v, j) for v, j in zip(sub, active) if v < 0]
            if not negative:
                break
            active.remove(min(negative)[1])
        coef = np.zeros(x.shape[1])
        coef[active] = sub
        pred = x @ coef
        ss_res = float(np.sum((y - pred) ** 2))
        ss_tot = float(np.sum((y - y.mean()) ** 2)) or 1.0
        rel = float(np.max(np.abs(pred - y) / np.maximum(y, 1e-9)))
        return cls(*map(float, coef), r2=1 - ss_res / ss_tot, max_relative_error=rel, **kwargs)

    @classmethod
    def from_profile_csv(cls, path: str | Path, **kwargs) -> LinearCostModel:
        shapes, seconds, meta = read_profile_csv(path)
        kwargs.setdefault("kv_bytes_per_token", meta.get("kv_bytes_per_token", 0.0))
        return cls.fit(shapes, seconds, **kwargs)

    def to_dict(self) -> dict:
        return asdict(self)


PROFILE_COLUMNS = ("prefill_tokens", "decode_tokens", "prefill_attended", "decode_context", "num_seqs", "seconds")


def read_profile_csv(path: str | Path) -> tuple[list[BatchShape], list[float], dict[str, float]]:
    """Rows written by `pavana profile`; a `# key=value` first line carries model facts."""
    path = Path(path)
    if not path.is_file():
        raise CostModelError(f"profile: no file at {path}")
    meta: dict[str, float] = {}
    with path.open(newline="") as f:
        lines = f.read().splitlines()
    while lines and lines[0].startswith("#"):
        for item in lines.pop(0).lstrip("# ").split():
            key, _, value = item.partition("=")
            try:
                meta[key] = float(value)
            except ValueError:
                pass
    reader = csv.DictReader(lines)
    missing = [c for c in PROFILE_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise CostModelError(f"profile {path.name}: missing columns {missing}")
    shapes, seconds = [], []
    for line, row in enumerate(reader, start=2):
        try:
            shapes.append(BatchShape(int(row["prefill_tokens"]), int(row["decode_tokens"]), float(row["prefill_attended"]),
                                     float(row["decode_context"]), int(row["num_seqs"])))
            seconds.append(float(row["seconds"]))
        except (TypeError, ValueError):
            raise CostModelError(f"profile {path.name}, row {line}: not a number in {row}") from None
    return shapes, seconds, meta


# -- from published GPU operator profiles -------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Gpu:
    """Stated figures of one GPU (SXM, dense bf16) and of the work around a step."""

    name: str
    peak_flops: float
    memory_bw: float  # bytes/s
    encode_s_per_image: float  # a LLaVA-1.5 CLIP ViT-L/336 image, preprocessing included
    prefill_attention_efficiency: float = 0.5  # share of peak FLOPs prefill attention reaches
    decode_attention_efficiency: float = 0.7  # share of memory bandwidth decode attention reaches
    step_overhead_s: float = 0.002  # scheduling, sampling, launch overhead of one iteration


GPUS = {
    "a100": Gpu("a100", 312e12, 2.039e12, 0.020),
    "h100": Gpu("h100", 989e12, 3.35e12, 0.012),
}
MODELS = {"llama2-7b": "Llama-2-7b-hf", "llama3-8b": "Meta-Llama-3-8B"}
OPS = ("input_layernorm", "attn_pre_proj", "attn_rope", "attn_post_proj", "post_attention_layernorm",
       "mlp_up_proj", "mlp_act", "mlp_down_proj", "add")


@dataclass(frozen=True)
class GpuCostModel:
    """Token-level operators interpolated from Vidur's profiles (median ms by number of tokens,
    per layer, at the chosen tensor-parallel degree), times the layer count, plus attention
    analytically and a fixed per-step overhead."""

    name: str
    gpu: Gpu
    num_layers: int
    n_head: int
    n_kv_head: int
    n_embd: int
    vocab_size: int
    tp: int
    tokens: np.ndarray  # profiled token counts
    layer_s: np.ndarray  # seconds of one layer's token-level operators at each count
    emb_s: np.ndarray  # embedding, once per step
    tokens_per_image: int = 576

    @classmethod
    def from_profiles(cls, gpu: str = "a100", model: str = "llama2-7b", tp: int = 1, num_layers: int = 32,
                      profiles_dir: Path | None = None) -> GpuCostModel:
        """`profiles_dir` defaults to the profiles Pavana carries (or `PAVANA_DATA_DIR`'s),
        looked up at call time so that the variable may be set after import."""
        profiles_dir = default_profiles_dir() if profiles_dir is None else Path(profiles_dir)
        if gpu not in GPUS:
            raise CostModelError(f"gpu: unknown {gpu!r}; choose one of {sorted(GPUS)}")
        if model not in MODELS:
            raise CostModelError(f"model: unknown {model!r}; choose one of {sorted(MODELS)}")
        path = profiles_dir / f"{gpu}_{MODELS[model]}_mlp.csv"
        if not path.is_file():
            raise CostModelError(f"no operator profile for {model} on {gpu} (looked for {path})")
        with path.open(newline="") as f:
            rows = [r for r in csv.DictReader(f) if int(r["num_tensor_parallel_workers"]) == tp]
        if not rows:
            raise CostModelError(f"{path.name}: no rows with tensor-parallel degree {tp}")
        by_tokens: dict[int, list[tuple[float, float]]] = {}
        for r in rows:  # some token counts were profiled more than once: average them
            by_tokens.setdefault(int(r["num_tokens"]), []).append(
                (sum(float(r[f"time_stats.{op}.median"]) for op in OPS), float(r["time_stats.emb.median"])))
        tokens = np.array(sorted(by_tokens), dtype=float)
        layer = np.array([np.mean([v[0] for v in by_tokens[n]]) for n in sorted(by_tokens)]) / 1e3
        emb = np.array([np.mean([v[1] for v in by_tokens[n]]) for n in sorted(by_tokens)]) / 1e3
        r0 = rows[0]
        return cls(f"{gpu}-{model}-tp{tp}", GPUS[gpu], num_layers, int(r0["n_head"]), int(r0["n_kv_head"]),
                   int(r0["n_embd"]), int(r0["vocab_size"]), tp, tokens, layer, emb)

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def kv_bytes_per_token(self) -> float:
        return 2.0 * self.num_layers * self.n_kv_head * self.head_dim * 2  # K and V, bf16, all layers

    def _interp(self, values: np.ndarray, n: float) -> float:
        if n <= self.tokens[-1]:
            return float(np.interp(n, self.tokens, values))
        # beyond the profiled range: the slope over its upper half (compute-bound, linear in tokens)
        half = int(np.searchsorted(self.tokens, self.tokens[-1] / 2))
        slope = (values[-1] - values[half]) / (self.tokens[-1] - self.tokens[half])
        return float(values[-1] + slope * (n - self.tokens[-1]))

    def linear_time(self, n: int) -> float:
        """The token-level operators of one step over `n` tokens (memoised: steps repeat sizes)."""
        cache = self.__dict__.setdefault("_linear_cache", {})
        t = cache.get(n)
        if t is None:
            t = cache[n] = self.num_layers * self._interp(self.layer_s, n) + self._interp(self.emb_s, n)
        return t

    def batch_time(self, shape: BatchShape) -> float:
        n = shape.prefill_tokens + shape.decode_tokens
        if n == 0:
            return 0.0
        linear = self.linear_time(n)
        d_local = self.n_embd / self.tp
        prefill_attn = 4.0 * d_local * shape.prefill_attended * self.num_layers / (
            self.gpu.peak_flops * self.gpu.prefill_attention_efficiency)
        kv_bytes = shape.decode_context * self.kv_bytes_per_token / self.tp
        decode_attn = kv_bytes / (self.gpu.memory_bw * self.gpu.decode_attention_efficiency)
        sampled = shape.decode_tokens + max(0, shape.num_seqs - shape.decode_tokens)
        lm_head = 2.0 * self.n_embd * self.vocab_size * sampled / self.tp / (self.gpu.peak_flops * 0.5)
        return linear + prefill_attn + decode_attn + lm_head + self.gpu.step_overhead_s

    def encode_time(self, num_images: int) -> float:
        return self.gpu.encode_s_per_image * num_images

    def describe(self) -> dict:
        return {
            "name": self.name, "gpu": asdict(self.gpu), "layers": self.num_layers, "tp": self.tp,
            "kv_bytes_per_token": self.kv_bytes_per_token, "tokens_per_image": self.tokens_per_image,
            "source": "Vidur operator profiles (pavana_data/profiles) + analytic attention",
        }


# -- moving KV between replicas ------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Network:
    """Transfer time of a hand-off: a fixed latency plus bytes over bandwidth, within a site
    (between nodes) and between sites (plus the sites' network latency from the spec)."""

    within_site_latency_s: float
    within_site_bytes_per_s: float
    between_sites_bytes_per_s: float

    def transfer_time(self, num_bytes: float, same_site: bool, extra_latency_s: float = 0.0) -> float:
        if num_bytes < 0:
            raise ValueError(f"bytes: must be >= 0, got {num_bytes}")
        bw = self.within_site_bytes_per_s if same_site else self.between_sites_bytes_per_s
        return self.within_site_latency_s + num_bytes / bw + (0.0 if same_site else extra_latency_s)

    @classmethod
    def from_profile(cls, gpu: str = "h100", between_sites_gbit_s: float = 100.0,
                     profiles_dir: Path | None = None) -> Network:
        """Between nodes of a site: a line fitted to Vidur's send/recv profile across nodes
        (one device per node); between sites: a stated WAN bandwidth."""
        profiles_dir = default_profiles_dir() if profiles_dir is None else Path(profiles_dir)
        path = profiles_dir / f"{gpu}_dgx_send_recv.csv"
        if not path.is_file():
            raise CostModelError(f"no send/recv profile for {gpu} (looked for {path})")
        with path.open(newline="") as f:
            rows = [r for r in csv.DictReader(f) if r["devices_per_node"] == "1"]
        size = np.array([float(r["size"]) for r in rows])
        ms = np.array([float(r["time_stats.send_recv.median"]) for r in rows])
        slope, intercept = np.polyfit(size, ms / 1e3, 1)
        return cls(max(0.0, float(intercept)), 1.0 / float(slope), between_sites_gbit_s * 1e9 / 8)


# Pavana's CPU replicas hand KV over through Ray's object store (stated: ~2 GB/s within a
# machine or site, 1 ms per transfer; 1 Gbit/s between sites).
CPU_NETWORK = Network(0.001, 2e9, 1e9 / 8)


def load_cost_model(text: str) -> CostModel:
    """'gpu:a100', 'gpu:h100:llama3-8b', or a profile CSV / fitted JSON path."""
    if text.startswith("gpu:"):
        parts = text.split(":")[1:]
        return GpuCostModel.from_profiles(parts[0], parts[1] if len(parts) > 1 else "llama2-7b")
    path = Path(text)
    if path.suffix == ".json":
        if not path.is_file():
            raise CostModelError(f"cost model: no file at {path}")
        data = json.loads(path.read_text())
        try:
            return LinearCostModel(**{k: v for k, v in data.items() if k in LinearCostModel.__dataclass_fields__})
        except TypeError as exc:
            raise CostModelError(f"cost model {path.name}: {exc}") from None
    return LinearCostModel.from_profile_csv(path)



# -- multimodal models: a vision encoder costed from its shape ------------------------------------------
@dataclass(frozen=True, slots=True)
class VisionEncoder:
    """A ViT image encoder (and its projector into the language model), costed from its shape:
    FLOPs for one image (or one tile) at a stated share of the GPU's dense peak, plus a stated
    fixed overhead per image for preprocessing and kernel launches.

    FLOPs of one pass: per layer and token, 2·(4·w² + 2·w·m) for the QKV/output projections and
    the MLP (w the width, m the MLP width), plus 4·n·w per token for attention over the n
    tokens; plus the projector's 2·(its weights) per output token."""

    name: str
    layers: int
    width: int
    mlp_width: int
    tokens: int  # patches (and class token) of one image or tile
    projector_weights: int  # weights of the adapter into the language model (multiply-adds per token)
    projector_tokens: int  # tokens the projector runs on
    source: str  # where the shape comes from
    efficiency: float = 0.4  # share of the GPU's dense peak the encoder's GEMMs reach
    overhead_s: float = 0.001  # per image/tile: preprocessing on the GPU, launches

    @property
    def parameters(self) -> int:
        """Weights of the transformer layers and the projector (embeddings left out)."""
        return self.layers * (4 * self.width**2 + 2 * self.width * self.mlp_width) + self.projector_weights

    @property
    def flops(self) -> float:
        per_token_layer = 2.0 * (4 * self.width**2 + 2 * self.width * self.mlp_width) + 4.0 * self.tokens * self.width
        return self.layers * self.tokens * per_token_layer + 2.0 * self.projector_weights * self.projector_tokens

    def seconds(self, gpu: Gpu) -> float:
        return self.flops / (gpu.peak_flops * self.efficiency) + self.overhead_s

    def describe(self, gpu: Gpu) -> dict:
        return {"name": self.name, "layers": self.layers, "width": self.width, "mlp_width": self.mlp_width,
                "tokens": self.tokens, "parameters": self.parameters, "gflops": self.flops / 1e9,
                "efficiency": self.efficiency, "overhead_s": self.overhead_s, "seconds": self.seconds(gpu),
                "source": self.source}


VISION_ENCODERS = {
    # CLIP ViT-L/14 at 336 px: 24 layers, width 1024, MLP 4096 (Radford et al., "Learning Transferable
    # Visual Models From Natural Language Supervision", 2021, table 20: ~304M parameters in the
    # vision tower); (336/14)² = 576 patches + 1 class token. LLaVA-1.5's projector is a two-layer
    # MLP 1024 → 4096 → 4096 over the 576 patch features (Liu et al., "Improved Baselines with
    # Visual Instruction Tuning", 2023), hence 576 tokens per image in the language model.
    "clip-vit-l-336": VisionEncoder(
        "CLIP ViT-L/14-336 + LLaVA-1.5 MLP projector", layers=24, width=1024, mlp_width=4096, tokens=577,
        projector_weights=1024 * 4096 + 4096 * 4096, projector_tokens=576,
        source="CLIP (Radford et al. 2021, table 20); LLaVA-1.5 (Liu et al. 2023)"),
    # Llama 3.2 Vision's encoder: a ViT-H/14 (32 layers, width 1280, MLP 5120) with 8 more gated
    # "global" layers, 40 in all (~850M parameters: Llama 3 Herd of Models, Dubey et al. 2024,
    # §7.2.1; shape from Hugging Face's MllamaVisionConfig); a tile is 560 px, (560/14)² = 1,600
    # patches + 1 class token = 1,601 tokens; an image is up to 4 tiles. The projector maps the
    # concatenated intermediate features (7,680 wide) to the language model's 4,096.
    "mllama-vit-h-560": VisionEncoder(
        "Llama 3.2 Vision ViT-H/14-560 (32 + 8 global layers) + projector", layers=40, width=1280, mlp_width=5120,
        tokens=1601, projector_weights=7680 * 4096, projector_tokens=1601,
        source="Llama 3 Herd of Models (Dubey et al. 2024, §7.2.1); Hugging Face MllamaVisionConfig"),
}


@dataclass(frozen=True)
class MultimodalCostModel(GpuCostModel):
    """A GPU model whose `encode_time` is its vision encoder's, costed from FLOPs.

    An "image" here is whatever the encoder runs on once — one image for LLaVA, one tile for
    Llama 3.2 Vision (the workload turns each image into its tiles) — and `tokens_per_image` is
    what one such unit adds to the language model's prompt. `attention_layers` is how many
    layers hold KV and run self-attention (a cross-attention model has more layers than that:
    Llama 3.2 11B Vision's 40 = 32 self-attention + 8 cross-attention); the token-level
    operators run over all `num_layers`."""

    encoder: VisionEncoder | None = None
    attention_layers: int | None = None
    family: str = ""
    notes: tuple[str, ...] = ()

    @property
    def kv_bytes_per_token(self) -> float:
        layers = self.attention_layers or self.num_layers
        return 2.0 * layers * self.n_kv_head * self.head_dim * 2

    def batch_time(self, shape: BatchShape) -> float:
        if self.attention_layers and self.attention_layers != self.num_layers and shape.prefill_attended:
            # the parent counts prefill attention over num_layers; only attention_layers run it
            shape = replace(shape, prefill_attended=shape.prefill_attended * self.attention_layers / self.num_layers)
        return GpuCostModel.batch_time(self, shape)

    def encode_time(self, num_images: int) -> float:
        if self.encoder is None:
            return GpuCostModel.encode_time(self, num_images)
        return num_images * self.encoder.seconds(self.gpu)

    def describe(self) -> dict:
        out = GpuCostModel.describe(self)
        out.update({"family": self.family, "attention_layers": self.attention_layers or self.num_layers,
                    "encoder": self.encoder.describe(self.gpu) if self.encoder else None,
                    "encode_s_per_unit": self.encode_time(1), "notes": list(self.notes)})
        return out


def multimodal_cost_model(gpu: str, model: str, encoder: str, *, tokens_per_image: int, num_layers: int = 32,
                          attention_layers: int | None = None, family: str = "", notes: tuple[str, ...] = (),
                          encoder_efficiency: float | None = None) -> MultimodalCostModel:
    """A language model from Vidur's operator profiles with a vision encoder from `VISION_ENCODERS`."""
    if encoder not in VISION_ENCODERS:
        raise CostModelError(f"encoder: unknown {encoder!r}; choose one of {sorted(VISION_ENCODERS)}")
    vision = VISION_ENCODERS[encoder]
    if encoder_efficiency is not None:
        if not 0 < encoder_efficiency <= 1:
            raise CostModelError(f"encoder_efficiency: must lie in (0, 1], got {encoder_efficiency}")
        vision = replace(vision, efficiency=encoder_efficiency)
    if tokens_per_image < 0:
        raise CostModelError(f"tokens_per_image: must be >= 0, got {tokens_per_image}")
    lm = MultimodalCostModel.from_profiles(gpu, model, num_layers=num_layers)
    return replace(lm, name=f"{gpu}-{family or model}", encoder=vision, attention_layers=attention_layers,
                   tokens_per_image=tokens_per_image, family=family, notes=notes)
