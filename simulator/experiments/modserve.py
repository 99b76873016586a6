"""ModServe's comparison in the simulator (Qiu et al., SoCC 2025: modality- and stage-aware
disaggregation, 3.3–5.5× throughput under tail-latency SLOs on 128 GPUs with Azure's
multimodal trace), at equal GPU counts, for two model classes.

Workload — `modserve_workload`: the Azure multimodal trace's marginals (images per image
request from an empirical piecewise CDF with its tail to 10,000; input and generated tokens
lognormal, fitted to the stated medians and 90th/99th percentiles; half the requests carry
images; text arrivals Poisson, image arrivals gamma-bursty with surges in which image requests
come twice as often and carry the heavy image counts, about 10× the images per second).
Images per request are capped at 32 (6.7% of image requests carry more), which fits both
models' 32,768-token context; text, then output, is cut where a request would not fit.
Surges last minutes here where the trace's last hours.

Model classes (A100-80GB, the one GPU both language models are profiled on; TP 1):
- `llava-1.5-7b`: CLIP ViT-L/14-336 encoder (577 tokens an image, 4.2 ms), 576 tokens per
  image in the prompt of a Llama-2-7B (Vidur's profiles), decoder-only. Its context is taken
  as 32,768 tokens (LLaVA-1.5's own Llama-2 has 4,096, which would cap an image request at 6
  images; the shapes and costs are the same).
- `llama-3.2-11b-vision`: Llama 3.2 Vision's ViT-H/14 encoder (32 + 8 layers, 1,601 tokens a
  560-px tile, 26 ms a tile); an image is 1–4 tiles (stated: 10/20/10/60% for 1/2/3/4, mean
  3.2), and the simulator models an image as its tiles (one encoder unit each). The language
  model is Llama-3-8B's profiles over 40 layers (32 self-attention + 8 cross-attention), KV in
  the 32. Image tokens reach it through cross-attention, not the prompt: a tile adds 32
  prompt-equivalent tokens, what its cross-attention K/V projections and attention cost in
  compute (the cross-attention KV itself, ~400 tokens' worth a tile, is not held: understated).
Encoder time is FLOPs from the encoder's shape at 40% of the GPU's dense bf16 peak plus 1 ms
an image or tile (`cost_model.VISION_ENCODERS`, sources cited there).

Deployments, all capped at the same number of GPUs (the site's `max_replicas`):
- monolithic: one colocated pool of `gpus` replicas; each runs its requests' image encoding
  inside its own chunked-prefill iterations (the simulator does this for a colocated pool with
  no vision pool beside it), so an encoding stalls that replica's decodes, as the 2024 vLLM
  baseline ModServe compares with does.
- E + PD: a vision pool beside a colocated pool (`topology: colocated` + `vision`), sized by
  Pavana's controller (`SimOptions(autoscale=True)`, the same `plan_round` as live) under the
  site's cap; new replicas start cold (30 s).
- E/P/D (ablation): vision, prefill and decode pools, autoscaled the same way.
- E + PD fixed (ablation): the E + PD pools with no autoscaler, the vision pool sized offline
  for the surges' encoding load at 80% busy (as ModServe's offline profiler would), the rest
  colocated: the architecture without the controller.

SLOs, in the manner of Splitwise (ModServe's group: targets as slowdowns over an idle GPU), one
QoS class per modality (same priority): TTFT within 5× the idle TTFT of the modality's
90th-percentile request, and every request's P99 TBT within 5× an idle stall-free iteration
(one full 512-token chunk). A request meets its SLO when it is served, its TTFT is within
its class's target and its own P99 gap within the TBT target.

Headline: capacity, the highest rate at which >= 99% of the requests arriving in the measured
window meet their SLO — found by bracketing (doubling or halving from gpus/2 req/s) then
bisecting in log space until the bracket is within 5%; every rate sees the same requests,
compressed (`modserve_workload.generate`), so the search compares like with like, but it
assumes attainment falls with the rate, which an autoscaler need not honour. Below a floor
(a window of >= 240 measured requests) a deployment counts as not meeting the SLO at all, and
a ratio over it is a lower bound (the JSON says so). A run stops early once more than 1% of
its measured requests have certainly missed (failed, or first token already later than the
target). `ratio` is E + PD over monolithic, `ratio_epd` E/P/D over monolithic, for the
headline class, Llama-3.2-11B-Vision-like: cross-attention is the architecture for which
ModServe finds image encoding the bottleneck that decoupling relieves; LLaVA is beside it.
`gpu_hours_ratio`: GPU-hours over the measured window (with its surge), E + PD over
monolithic, both autoscaled (the monolithic pool between 1 and `gpus`) from half the GPUs, at
half the lower of their two capacities (half the other's where one is below the floor; the
JSON says whether both met the SLO there).
"""

from __future__ import annotations

import math
import os
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from bench.common import command_line, machine_info, write_json
from cluster.spec import ClusterSpec
from simulator.cluster import SimCluster, SimOptions
from simulator.cost_model import BatchShape, MultimodalCostModel, multimodal_cost_model
from simulator.experiments import plot_path
from simulator.experiments.modserve_workload import LmmWorkload, ModelLimits, for_model, generate
from simulator.scenario import network_for, options_for

console = Console(width=150)  # the table is wide; a pipe would otherwise fold it to 80 columns

DEPLOYMENTS = ("monolithic", "E + PD", "E/P/D", "E + PD fixed")
HEADLINE_MODEL = "llama-3.2-11b-vision"
ATTAINMENT = 0.99  # share of requests that must meet their SLO
SLO_SCALE = 5.0  # targets as slowdowns over an idle GPU
TTFT_QUANTILE = 90  # the modality's request whose idle TTFT sets the target
MAX_IMAGES = 32
MAX_MODEL_LEN = 32_768
CHUNK = 512
COLD_START_S = 30.0
GPU_HOURS_LOAD = 0.5  # the GPU-hours comparison runs at this share of the lower of the two capacities


# -- model classes ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelClass:
    key: str
    label: str
    build: Callable[[], MultimodalCostModel]
    limits: ModelLimits
    kv_blocks: int  # per replica, 32-token blocks
    memory: str  # how the KV budget was reached


def _llava() -> MultimodalCostModel:
    return multimodal_cost_model("a100", "llama2-7b", "clip-vit-l-336", tokens_per_image=576, family="llava-1.5-7b",
                                 notes=("decoder-only: 576 image tokens per image in the prompt",
                                        "context taken as 32,768 tokens (Llama-2's own is 4,096)"))


def _mllama() -> MultimodalCostModel:
    return multimodal_cost_model("a100", "llama3-8b", "mllama-vit-h-560", tokens_per_image=32, num_layers=40,
                                 attention_layers=32, family="llama-3.2-11b-vision",
                                 notes=("an image is 1-4 tiles of 1,601 vision tokens; one encoder unit = one tile",
                                        "cross-attention: a tile adds 32 prompt-equivalent tokens of compute; its "
                                        "cross-attention KV (~400 tokens' worth) is not held (understated)",
                                        "language model: Llama-3-8B operator profiles over 40 layers, KV in 32"))


TILES = {1: 0.1, 2: 0.2, 3: 0.1, 4: 0.6}  # stated: most photographs >= 1,120 px take the 2×2 canvas
MODELS: dict[str, ModelClass] = {
    "llava-1.5-7b": ModelClass(
        "llava-1.5-7b", "LLaVA-1.5-7B-like", _llava, ModelLimits(MAX_MODEL_LEN, MAX_IMAGES, 576), 3_200,
        "A100-80GB × 0.9 − 13.5 GB weights − 0.6 GB encoder − 4 GB activations ≈ 54 GB; 0.5 MB KV a token"),
    "llama-3.2-11b-vision": ModelClass(
        "llama-3.2-11b-vision", "Llama-3.2-11B-Vision-like", _mllama, ModelLimits(MAX_MODEL_LEN, MAX_IMAGES, 32, TILES),
        11_000, "A100-80GB × 0.9 − 21.3 GB weights − 4 GB activations ≈ 46 GB; 128 KB KV a token"),
}


def slos_for(model: ModelClass, cost: MultimodalCostModel) -> dict[str, dict[str, float]]:
    """Per modality: TTFT = 5× the idle TTFT of its 90th-percentile request (from 20,000 requests
    of the workload, seed fixed), rounded up to 0.5 s; TBT = 5× an idle iteration of one full
    chunk, rounded up to 10 ms. The same whatever the scale, so quick and full agree."""
    sample = for_model(generate(LmmWorkload(rate_rps=20.0, duration_s=1000.0, seed=12345)), model.limits).requests
    tbt = math.ceil(SLO_SCALE * cost.batch_time(BatchShape(CHUNK, 0, CHUNK * (CHUNK + 1) / 2, 0, 1)) * 100) / 100
    out = {}
    for modality in ("text", "image"):
        idle = [idle_ttft(cost, r.prompt_tokens + r.num_images * cost.tokens_per_image, r.num_images)
                for r in sample if r.qos_class == modality]
        ttft = math.ceil(SLO_SCALE * float(np.percentile(idle, TTFT_QUANTILE)) * 2) / 2
        out[modality] = {"ttft_s": ttft, "tbt_s": tbt, "idle_ttft_p50_s": float(np.percentile(idle, 50)),
                         f"idle_ttft_p{TTFT_QUANTILE}_s": float(np.percentile(idle, TTFT_QUANTILE)),
                         "idle_ttft_p99_s": float(np.percentile(idle, 99))}
    return out


def idle_ttft(cost: MultimodalCostModel, prompt_tokens: int, units: int) -> float:
    """A request alone on a replica: encode its images, then prefill in full chunks."""
    t = cost.encode_time(units) if units else 0.0
    done = 0
    while done < prompt_tokens:
        n = min(CHUNK, prompt_tokens - done)
        t += cost.batch_time(BatchShape(n, 0, n * done + n * (n + 1) / 2, 0, 1))
        done += n
    return t


# -- scale ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Scale:
    gpus: int
    warmup_s: float  # traffic before this is not measured: pools settle from their initial sizes
    measured_s: float
    surges: tuple[tuple[float, float], ...]  # (start, length), absolute times in the window
    drain_s: float
    tolerance: float  # relative width of the final capacity bracket
    floor_rps: float  # below this a deployment counts as serving nothing at SLO (>= 240 requests measured)
    seeds: tuple[int, ...]  # one capacity search per seed; the capacity is their mean

    @property
    def duration_s(self) -> float:
        return self.warmup_s + self.measured_s


QUICK = Scale(gpus=16, warmup_s=60.0, measured_s=240.0, surges=((120.0, 90.0),), drain_s=240.0, tolerance=0.05,
              floor_rps=1.0, seeds=(0,))
FULL = Scale(gpus=32, warmup_s=120.0, measured_s=600.0, surges=((240.0, 150.0), (540.0, 150.0)), drain_s=300.0,
             tolerance=0.05, floor_rps=0.5, seeds=(0, 1))


# -- one deployment -------------------------------------------------------------------------------------
def deployment_spec(deployment: str, gpus: int, model: ModelClass, slos: dict[str, dict[str, float]], *,
                    vision_replicas: int = 1, autoscaled: bool = False, initial: int | None = None) -> ClusterSpec:
    """The cluster spec of one deployment: every pool may grow to `gpus`, the site caps them
    together at `gpus`. `vision_replicas` is the vision pool's initial size; `autoscaled`
    lets the monolithic pool move between 1 and `gpus` from `initial`."""
    engine = {"chunk_size": CHUNK, "max_num_seqs": 128, "block_size": 32, "num_kv_blocks": model.kv_blocks,
              "enable_prefix_caching": False, "tbt_budget": False}  # the paper's fixed token budget
    classes = [{"name": m, "priority": 0, "slo": {"ttft_s": s["ttft_s"], "tbt_s": s["tbt_s"]}} for m, s in slos.items()]
    base = {"engine": engine, "qos_classes": classes, "default_qos_class": "text", "max_in_flight": 1_000_000,
            "model": {"name": model.key, "max_model_len": model.limits.max_model_len},
            "sites": [{"name": "dc", "max_replicas": gpus}]}
    v = max(1, min(gpus - 1, vision_replicas))
    if deployment == "monolithic":
        low, start = (1, initial or gpus) if autoscaled else (gpus, gpus)
        pools = {"colocated": {"min_replicas": low, "max_replicas": gpus, "initial_replicas": start}}
        return ClusterSpec.parse({**base, "topology": "colocated", "pools": pools})
    if deployment in ("E + PD", "E + PD fixed"):
        rest = max(1, (initial or gpus) - v)
        pools = {"vision": {"min_replicas": 1, "max_replicas": gpus, "initial_replicas": v},
                 "colocated": {"min_replicas": 1, "max_replicas": gpus, "initial_replicas": rest}}
        return ClusterSpec.parse({**base, "topology": "colocated", "pools": pools})
    if deployment == "E/P/D":
        rest = max(2, (initial or gpus) - v)
        pools = {"vision": {"min_replicas": 1, "max_replicas": gpus, "initial_replicas": v},
                 "prefill": {"min_replicas": 1, "max_replicas": gpus, "initial_replicas": rest // 2},
                 "decode": {"min_replicas": 1, "max_replicas": gpus, "initial_replicas": rest - rest // 2}}
        return ClusterSpec.parse({**base, "topology": "disaggregated", "pools": pools})
    raise ValueError(f"deployment: unknown {deployment!r}; choose one of {DEPLOYMENTS}")


def vision_estimate(trace, cost: MultimodalCostModel, scale: Scale, *, surge: bool = False) -> int:
    """Vision replicas the encoding load needs at 80% busy, as an offline profile would size
    them: the window's mean load (where the autoscaler starts the pool), or the surges' load
    (the fixed split, which must ride out a surge with no autoscaler)."""
    def surging(t: float) -> bool:
        return any(a <= t < a + n for a, n in scale.surges)

    chosen = [r for r in trace if r.num_images and (surging(r.arrival_s) or not surge)]
    span = sum(n for _, n in scale.surges) if surge and scale.surges else scale.duration_s
    seconds = sum(cost.encode_time(r.num_images) for r in chosen)
    return max(1, min(scale.gpus - 1, math.ceil(seconds / span / 0.8)))


class _Hopeless(Exception):
    """More than the allowed share of measured requests has already missed: stop the run."""


def evaluate(model_key: str, deployment: str, rate: float, scale: Scale, slos: dict, *, autoscaled_monolithic: bool = False,
             initial: int | None = None, seed: int = 0, keep_timeline: bool = False, allow_abort: bool = True) -> dict[str, Any]:
    """Run one deployment at one rate; SLO attainment over the measured window and why requests missed."""
    model = MODELS[model_key]
    cost = model.build()
    workload = LmmWorkload(rate_rps=rate, duration_s=scale.duration_s, surges=scale.surges, seed=seed)
    mapped = for_model(generate(workload), model.limits, seed)
    trace = mapped.requests
    vision = vision_estimate(trace, cost, scale, surge=deployment == "E + PD fixed")
    spec = deployment_spec(deployment, scale.gpus, model, slos, vision_replicas=vision,
                           autoscaled=autoscaled_monolithic, initial=initial)
    autoscale = deployment in ("E + PD", "E/P/D") or autoscaled_monolithic
    options = options_for(cost, SimOptions(
        cold_start_s=COLD_START_S, autoscale=autoscale, max_model_len=model.limits.max_model_len,
        autoscaler_overrides={"prefill_tokens_per_s": CHUNK / cost.linear_time(CHUNK)}))
    sim = SimCluster(spec, cost, network_for(cost), options)
    start, end = scale.warmup_s, scale.duration_s
    measured_ids = {r.request_id for r in trace if start <= r.arrival_s < end}
    budget = math.floor((1 - ATTAINMENT) * len(measured_ids))
    targets = {m: s["ttft_s"] for m, s in slos.items()}

    def check(now: float) -> None:
        if allow_abort and _certain_misses(sim.requests, measured_ids, targets, now) > budget:
            raise _Hopeless(now)

    began = time.perf_counter()
    aborted_at = None
    try:
        sim.run(trace, drain_s=scale.drain_s, on_advance=check)
    except _Hopeless as stop:
        aborted_at = float(stop.args[0])
    wall = time.perf_counter() - began
    row = _judge(sim, measured_ids, slos, aborted_at)
    gpu_s, pools = _gpu_seconds(sim.samples, start, end)
    row.update({
        "model": model_key, "deployment": deployment, "rate_rps": rate, "autoscaled": autoscale,
        "requests": len(measured_ids), "images_capped": mapped.images_capped, "text_truncated": mapped.text_truncated,
        "vision_units": sum(r.num_images for r in trace if r.request_id in measured_ids),
        "initial_vision_replicas": vision if deployment != "monolithic" else 0,
        "gpu_seconds": gpu_s, "mean_replicas": pools, "aborted_at_s": aborted_at, "wall_s": wall,
        "scaling_decisions": Counter(f"{d['kind']} {d['target'].split('@')[0]}" for d in sim.decisions
                                     if d["kind"] in ("scale_up", "scale_down")),
    })
    if keep_timeline:
        row["timeline"] = [{"t": s["t"], **s["dc"]["replicas"]} for s in sim.samples]
        row["arrivals"] = _arrival_series(trace, scale.duration_s)
        row["decisions"] = [{k: d[k] for k in ("t", "kind", "target", "from", "to", "reason")} for d in sim.decisions
                            if d["kind"] in ("scale_up", "scale_down")][:400]
    return row


def _certain_misses(requests, measured_ids: set[str], ttft_s: dict[str, float], now: float) -> int:
    misses = 0
    for r in requests:
        if r.request_id not in measured_ids:
            continue
        if r.outcome is not None and r.outcome != "ok":
            misses += 1
        elif r.first_token_s is not None:
            misses += r.ttft_s > ttft_s[r.trace.qos_class]
        else:
            misses += now - r.arrival_s + r.net_s > ttft_s[r.trace.qos_class]
    return misses


def _judge(sim: SimCluster, measured_ids: set[str], slos: dict, aborted_at: float | None) -> dict[str, Any]:
    """Attainment and its misses: not served (with the reasons), TTFT late, P99 TBT late."""
    mine = [r for r in sim.requests if r.request_id in measured_ids]
    not_served: Counter = Counter()
    ttft_late: Counter = Counter()
    tbt_late: Counter = Counter()
    good = 0
    ttft = {m: [] for m in slos}
    tbt99 = []
    for r in mine:
        target = slos[r.trace.qos_class]
        if r.outcome != "ok":
            not_served[f"{r.outcome or 'in flight at stop'}: {_reason_kind(r.reason)}"] += 1
            continue
        late_first = r.ttft_s > target["ttft_s"]
        p99 = float(np.percentile(r.gaps, 99)) if r.gaps else 0.0
        late_gap = p99 > target["tbt_s"]
        ttft[r.trace.qos_class].append(r.ttft_s)
        tbt99.append(p99)
        ttft_late[r.trace.qos_class] += late_first
        tbt_late[r.trace.qos_class] += late_gap
        good += not late_first and not late_gap
    total = len(measured_ids)
    unseen = total - len(mine)  # not yet arrived when a run stopped early
    if unseen:
        not_served["not yet arrived at stop"] += unseen
    return {
        "slo_attainment": good / total if total else None, "meets": aborted_at is None and total > 0 and good >= ATTAINMENT * total,
        "within_slo": good, "not_served": dict(not_served), "ttft_late": dict(ttft_late), "tbt_late": dict(tbt_late),
        "ttft_p99_s": {m: (float(np.percentile(v, 99)) if v else None) for m, v in ttft.items()},
        "request_tbt_p99_p99_s": float(np.percentile(tbt99, 99)) if tbt99 else None,
    }


def _reason_kind(reason: str) -> str:
    for key in ("no vision replica", "no colocated replica", "no prefill replica", "no decode replica", "waited over",
                "exceed the context", "still running", "power"):
        if key in reason:
            return key
    return reason[:40]


def _gpu_seconds(samples: list[dict], start: float, end: float) -> tuple[float, dict[str, float]]:
    """Replicas alive (starting and draining included) integrated over [start, end) from the
    10-second samples; and each pool's mean."""
    total, per_pool, span = 0.0, Counter(), 0.0
    for a, b in zip(samples, samples[1:]):
        lo, hi = max(a["t"], start), min(b["t"], end)
        if hi <= lo:
            continue
        counts = a["dc"]["replicas"]
        total += (hi - lo) * sum(counts.values())
        for pool, n in counts.items():
            per_pool[pool] += (hi - lo) * n
        span += hi - lo
    return total, {p: v / span for p, v in per_pool.items()} if span else {}


def _arrival_series(trace, duration_s: float, bin_s: float = 10.0) -> dict[str, list[float]]:
    bins = int(math.ceil(duration_s / bin_s))
    units = [0.0] * bins
    requests = [0.0] * bins
    for r in trace:
        i = min(bins - 1, int(r.arrival_s // bin_s))
        units[i] += r.num_images / bin_s
        requests[i] += 1 / bin_s
    return {"t": [i * bin_s for i in range(bins)], "vision_units_per_s": units, "requests_per_s": requests}


# -- capacity search ------------------------------------------------------------------------------------
def find_capacity(meets: Callable[[float], bool], start: float, *, tolerance: float, floor: float,
                  ceiling: float = 1e4) -> tuple[float, list[tuple[float, bool]]]:
    """The highest rate at which `meets` holds, assuming it holds below some rate and not
    above: bracket by doubling (or halving) from `start`, then bisect in log space until
    hi/lo - 1 <= `tolerance`. Returns (capacity, every (rate, result) tried); 0 when even
    `floor` fails, `ceiling` when nothing up to it fails."""
    if tolerance <= 0 or floor <= 0 or start <= 0:
        raise ValueError(f"tolerance, floor, start: must be > 0, got {tolerance}, {floor}, {start}")
    tried: list[tuple[float, bool]] = []

    def probe(rate: float) -> bool:
        ok = meets(rate)
        tried.append((rate, ok))
        return ok

    rate = min(max(start, floor), ceiling)
    if probe(rate):
        lo = rate
        while True:
            if lo >= ceiling:
                return ceiling, tried
            nxt = min(lo * 2, ceiling)
            if probe(nxt):
                lo = nxt
            else:
                hi = nxt
                break
    else:
        hi = rate
        while True:
            if hi <= floor:
                return 0.0, tried
            nxt = max(hi / 2, floor)
            if probe(nxt):
                lo = nxt
                break
            hi = nxt
    while hi / lo - 1 > tolerance:
        mid = math.sqrt(lo * hi)
        if probe(mid):
            lo = mid
        else:
            hi = mid
    return lo, tried


def _search(model_key: str, deployment: str, scale: Scale, slos: dict, seed: int) -> dict[str, Any]:
    """One capacity search (runs in a worker process)."""
    rows: list[dict] = []

    def meets(rate: float) -> bool:
        row = evaluate(model_key, deployment, rate, scale, slos, seed=seed)
        rows.append({**row, "seed": seed})
        return row["meets"]

    start = scale.gpus / 2.0  # ~0.5 req/s a GPU: a first guess, the bracket does the rest
    capacity, _ = find_capacity(meets, start, tolerance=scale.tolerance, floor=scale.floor_rps)
    return {"model": model_key, "deployment": deployment, "seed": seed, "capacity_rps": capacity, "points": rows}


def _gpu_hours(model_key: str, deployment: str, rate: float, scale: Scale, slos: dict) -> dict[str, Any]:
    initial = max(2, scale.gpus // 2)
    return evaluate(model_key, deployment, rate, scale, slos, autoscaled_monolithic=deployment == "monolithic",
                    initial=initial, keep_timeline=True, allow_abort=False)


# -- the experiment -------------------------------------------------------------------------------------
def main(quick: bool = False, json_path: Path | None = None, workers: int | None = None) -> dict[str, Any]:
    began = time.perf_counter()
    scale = QUICK if quick else FULL
    workers = workers or max(1, min(2, os.cpu_count() or 1))
    costs = {k: m.build() for k, m in MODELS.items()}
    slos = {k: slos_for(m, costs[k]) for k, m in MODELS.items()}
    judged = {k: {m: {"ttft_s": s["ttft_s"], "tbt_s": s["tbt_s"]} for m, s in v.items()} for k, v in slos.items()}

    with ProcessPoolExecutor(max_workers=workers) as pool:
        jobs = [pool.submit(_search, m, d, scale, judged[m], seed) for seed in scale.seeds for m in MODELS for d in DEPLOYMENTS]
        searches = [j.result() for j in jobs]
        by_seed = {m: {d: [s["capacity_rps"] for s in searches if s["model"] == m and s["deployment"] == d] for d in DEPLOYMENTS}
                   for m in MODELS}
        capacity = {m: {d: float(np.mean(v)) for d, v in caps.items()} for m, caps in by_seed.items()}
        rates = {m: gpu_hours_rate(capacity[m]["monolithic"], capacity[m]["E + PD"], scale.floor_rps) for m in MODELS}
        hour_jobs = {(m, d): pool.submit(_gpu_hours, m, d, rates[m], scale, judged[m])
                     for m in MODELS for d in ("monolithic", "E + PD")}
        hours = {key: j.result() for key, j in hour_jobs.items()}

    ratio = {m: capacity_ratio(capacity[m], "E + PD", scale.floor_rps) for m in MODELS}
    ratio_epd = {m: capacity_ratio(capacity[m], "E/P/D", scale.floor_rps) for m in MODELS}
    ratio_fixed = {m: capacity_ratio(capacity[m], "E + PD fixed", scale.floor_rps) for m in MODELS}
    gpu_hours = {}
    for m in MODELS:
        mono, epd = hours[(m, "monolithic")], hours[(m, "E + PD")]
        gpu_hours[m] = {
            "rate_rps": rates[m], "window_s": scale.measured_s,
            "monolithic": {"gpu_hours": mono["gpu_seconds"] / 3600, "slo_attainment": mono["slo_attainment"],
                           "meets": mono["meets"], "mean_replicas": mono["mean_replicas"]},
            "E + PD": {"gpu_hours": epd["gpu_seconds"] / 3600, "slo_attainment": epd["slo_attainment"],
                       "meets": epd["meets"], "mean_replicas": epd["mean_replicas"]},
            "ratio": _ratio(epd["gpu_seconds"], mono["gpu_seconds"]),
            "both_at_slo": bool(mono["meets"] and epd["meets"]),
        }
    headline = HEADLINE_MODEL
    out = {
        "experiment": "modserve", "quick": quick, "gpus": scale.gpus, "gpu": "A100-80GB (bf16, TP 1)",
        "headline_model": headline,
        "headline": (f"capacity (highest rate with >= {ATTAINMENT:.0%} of requests within both the TTFT and the P99 TBT "
                     f"SLO) of E + PD over monolithic at {scale.gpus} GPUs, {MODELS[headline].label}; the paper reports "
                     "3.3-5.5x"),
        "ratio": ratio[headline]["value"], "ratio_epd": ratio_epd[headline]["value"],
        "gpu_hours_ratio": gpu_hours[headline]["ratio"],
        "ratio_detail": ratio, "ratio_epd_detail": ratio_epd, "ratio_e_pd_fixed_detail": ratio_fixed,
        "ratio_by_model": {m: r["value"] for m, r in ratio.items()},
        "ratio_epd_by_model": {m: r["value"] for m, r in ratio_epd.items()},
        "gpu_hours_ratio_by_model": {m: g["ratio"] for m, g in gpu_hours.items()},
        "capacity_rps": capacity, "capacity_rps_by_seed": by_seed, "gpu_hours": gpu_hours,
        "goals": {"ratio": 3.3, "gpu_hours_ratio": 0.75},
        "slos": slos, "slo_definition": (f"per modality class: TTFT <= {SLO_SCALE:g}x the idle TTFT of its "
                                         f"p{TTFT_QUANTILE} request (rounded up to 0.5 s); every request's P99 TBT "
                                         f"<= {SLO_SCALE:g}x an idle iteration of one full {CHUNK}-token chunk"),
        "capacity_search": {"attainment": ATTAINMENT, "bracketing": "double or halve from gpus/2 req/s",
                            "seeds": list(scale.seeds), "capacity": "mean over seeds of each seed's search",
                            "bisection": "geometric midpoint", "tolerance": scale.tolerance, "floor_rps": scale.floor_rps,
                            "early_stop": "a run stops once more than 1% of its measured requests certainly missed"},
        "models": {k: {"label": m.label, "cost_model": costs[k].describe(), "max_model_len": m.limits.max_model_len,
                       "max_images": m.limits.max_images, "tokens_per_encoder_unit": m.limits.tokens_per_unit,
                       "tiles_per_image": m.limits.units_per_image, "kv_blocks": m.kv_blocks, "block_size": 32,
                       "kv_budget": m.memory} for k, m in MODELS.items()},
        "workload": {**LmmWorkload(rate_rps=1.0, duration_s=scale.duration_s, surges=scale.surges).describe(),
                     "rate_rps": "varied", "warmup_s": scale.warmup_s, "measured_s": scale.measured_s,
                     "image_cap": f"{MAX_IMAGES} images per request (fits a {MAX_MODEL_LEN}-token context; "
                                  "6.7% of image requests carry more)"},
        "deployments": {
            "monolithic": "one colocated pool, encoder inside each replica's iterations; fixed at gpus for capacity",
            "E + PD": "vision pool + colocated pool, autoscaled by plan_round under the site cap",
            "E/P/D": "vision, prefill and decode pools, autoscaled by plan_round under the site cap (ablation)",
            "E + PD fixed": "vision pool + colocated pool, no autoscaler: the vision pool sized offline for the "
                            "surges' encoding load at 80% busy, the rest colocated (ablation: the architecture "
                            "without the controller)"},
        "engine": {"policy": "sarathi", "chunk_size": CHUNK, "max_num_seqs": 128, "cold_start_s": COLD_START_S,
                   "control_interval_s": 5.0},
        "searches": [{k: v for k, v in s.items() if k != "points"} for s in searches],
        "points": [p for s in searches for p in s["points"]],
        "gpu_hours_runs": [{k: v for k, v in r.items() if k not in ("timeline", "arrivals")} for r in hours.values()],
        "wall_s": None, "workers": workers, "machine": machine_info(), "command": command_line(),
    }
    _table(out, scale)
    _plot(out, searches, hours, scale, plot_path(json_path, "sim_modserve"))
    out["wall_s"] = time.perf_counter() - began
    console.print(f"wall time {out['wall_s']:.0f} s ({workers} worker processes)")
    write_json(json_path, out)
    return out


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def capacity_ratio(capacity: dict[str, float], deployment: str, floor: float) -> dict[str, Any]:
    """A deployment's capacity over the monolithic one. When the monolithic deployment never
    met the SLO, even at the search floor, the ratio is a lower bound: over the floor."""
    mine, mono = capacity[deployment], capacity["monolithic"]
    if mono > 0:
        return {"value": mine / mono, "kind": "ratio"}
    if mine > 0:
        return {"value": mine / floor, "kind": f"lower bound: monolithic below the search floor of {floor:g} req/s"}
    return {"value": None, "kind": "neither meets the SLO at the search floor"}


def gpu_hours_rate(monolithic: float, e_pd: float, floor: float) -> float:
    """The rate of the GPU-hours comparison: half the lower of the two capacities, so both
    should serve it at SLO; when one is below the search floor (a mean over seeds included),
    half the other's (its run then shows by how much it misses), and the floor when neither
    reaches it."""
    served = [c for c in (monolithic, e_pd) if c >= floor]
    return GPU_HOURS_LOAD * min(served) if served else floor


def _table(out: dict, scale: Scale) -> None:
    table = Table(title=f"ModServe at {scale.gpus} A100s: capacity at >= {ATTAINMENT:.0%} within SLO "
                        f"({scale.measured_s:g} s measured per rate, bracket tolerance {scale.tolerance:.0%})")
    for col in ("model", "deployment", "capacity (req/s)", "by seed", "× monolithic", "points tried",
                "misses at the first failing rate"):
        table.add_column(col, justify="left" if col in ("model", "deployment", "misses at the first failing rate") else "right")
    for m, caps in out["capacity_rps"].items():
        for d in DEPLOYMENTS:
            pts = [p for p in out["points"] if p["model"] == m and p["deployment"] == d]
            fail = min((p for p in pts if not p["meets"] and p["rate_rps"] > caps[d]), key=lambda p: p["rate_rps"], default=None)
            seeds = ", ".join(f"{c:.2f}" for c in out["capacity_rps_by_seed"][m][d])
            table.add_row(MODELS[m].label, d, f"{caps[d]:.2f}" if caps[d] else f"< {scale.floor_rps:g}", seeds,
                          _fmt_ratio(capacity_ratio(caps, d, scale.floor_rps)), str(len(pts)),
                          _misses(fail) if fail else "")
    console.print(table)
    hours = Table(title=f"GPU-hours over the {scale.measured_s:g} s window with its surge, both autoscaled "
                        f"(at {GPU_HOURS_LOAD:.0%} of the lower capacity)")
    for col in ("model", "rate (req/s)", "monolithic GPU-h", "attainment", "E + PD GPU-h", "attainment ", "E + PD / mono"):
        hours.add_column(col, justify="left" if col == "model" else "right")
    for m, g in out["gpu_hours"].items():
        hours.add_row(MODELS[m].label, f"{g['rate_rps']:.2f}", f"{g['monolithic']['gpu_hours']:.2f}",
                      f"{g['monolithic']['slo_attainment']:.1%}", f"{g['E + PD']['gpu_hours']:.2f}",
                      f"{g['E + PD']['slo_attainment']:.1%}", _fmt(g["ratio"]))
    console.print(hours)
    head = out["headline_model"]
    detail = out["ratio_detail"][head]["kind"]
    at_slo = "both at SLO" if out["gpu_hours"][head]["both_at_slo"] else "NOT both at SLO"
    console.print(f"[bold]headline[/bold] ({MODELS[head].label}): ratio {_fmt_ratio(out['ratio_detail'][head])} ({detail}; "
                  f"goal 3.3×), ratio_epd {_fmt_ratio(out['ratio_epd_detail'][head])}, gpu_hours_ratio "
                  f"{_fmt(out['gpu_hours_ratio'])} ({at_slo}; goal <= 0.75)")


def _fmt(x: float | None) -> str:
    return f"{x:.2f}×" if x is not None else "n/a"


def _fmt_ratio(ratio: dict[str, Any]) -> str:
    return ("≥ " if ratio["kind"].startswith("lower bound") else "") + _fmt(ratio["value"])


def _misses(p: dict) -> str:
    parts = [f"{p['rate_rps']:.2f} req/s: {p['slo_attainment']:.1%}"]
    late = {f"TTFT {k}": v for k, v in p["ttft_late"].items() if v}
    late.update({f"TBT {k}": v for k, v in p["tbt_late"].items() if v})
    late.update({k: v for k, v in p["not_served"].items() if v and "at stop" not in k})  # not yet judged when stopped
    parts += [f"{k} {v}" for k, v in sorted(late.items(), key=lambda kv: -kv[1])[:3]]
    if p["aborted_at_s"] is not None:
        parts.append(f"stopped at {p['aborted_at_s']:.0f} s")  # more than 1% had certainly missed
    return "; ".join(parts)


def _plot(out: dict, searches: list[dict], hours: dict, scale: Scale, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    ax = axes[0][0]
    width = 0.2
    models = list(MODELS)
    for i, d in enumerate(DEPLOYMENTS):
        ax.bar([j + (i - 1.5) * width for j in range(len(models))], [out["capacity_rps"][m][d] for m in models], width, label=d)
    ax.set_xticks(range(len(models)), [MODELS[m].label for m in models])
    ax.set_ylabel("capacity (req/s at >= 99% within SLO)")
    ax.set_title(f"Capacity at {scale.gpus} A100s")
    ax.legend()
    ax = axes[0][1]
    for s in searches:
        if s["seed"] != searches[0]["seed"]:
            continue
        pts = sorted((p["rate_rps"], p["slo_attainment"] or 0.0) for p in s["points"])
        style = "-" if s["model"] == HEADLINE_MODEL else ":"
        ax.plot([r for r, _ in pts], [a for _, a in pts], style, marker="o", label=f"{s['deployment']}, {MODELS[s['model']].label}")
    ax.axhline(ATTAINMENT, color="grey", linestyle=":")
    ax.set_xscale("log")
    ax.set_xlabel("arrival rate (req/s)")
    ax.set_ylabel("share within SLO (lower bound where stopped early)")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7)
    for ax, m in zip(axes[1], models):
        for d, color in (("monolithic", "tab:blue"), ("E + PD", "tab:orange")):
            run = hours.get((m, d))
            if run is None:
                continue
            t = [s["t"] for s in run["timeline"]]
            pools = sorted({k for s in run["timeline"] for k in s if k != "t"})
            ax.plot(t, [sum(s.get(p, 0) for p in pools) for s in run["timeline"]], color=color, label=f"{d}: all replicas")
            if d == "E + PD":
                ax.plot(t, [s.get("vision", 0) for s in run["timeline"]], color=color, linestyle="--", label="E + PD: vision")
        run = hours.get((m, "E + PD")) or hours.get((m, "monolithic"))
        if run is not None:
            twin = ax.twinx()
            twin.plot(run["arrivals"]["t"], run["arrivals"]["vision_units_per_s"], color="grey", alpha=0.4)
            twin.set_ylabel("encoder units arriving per s", color="grey")
        ax.axvspan(scale.warmup_s, scale.duration_s, color="green", alpha=0.05)
        ax.set_xlabel("simulated s (shaded: measured window)")
        ax.set_ylabel("replicas (GPUs)")
        ax.set_title(f"{MODELS[m].label}: both autoscaled, GPU-hours run")
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
