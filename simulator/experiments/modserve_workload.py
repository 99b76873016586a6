"""A synthetic workload with the marginals of Azure's multimodal inference trace (2025), the
trace ModServe was measured on (Qiu et al., SoCC 2025). The trace itself cannot be had here;
its dataset notebook's figures can (analysis/AzureLMMInferenceDataset2025.ipynb in
github.com/Azure/AzurePublicDataset, CC-BY 4.0; cite Qiu et al., SoCC 2025), and this
module draws requests that match what they show. Pure and seeded: the same settings give the
same requests.

Distributions (every figure read from the notebook's plots):

- Images per image request: an empirical piecewise CDF, `IMAGE_CDF`. The trace's CDF rises in
  steps at 1, 4, 9, 16 and 25 images (grids of images) — 66% one image, 71% <= 4, 86% <= 9,
  87.5% <= 16, 93% <= 25 — then slowly: 95% <= 100, 97.5% <= 500, a step near 520 to 99.8%, and
  a tail to 10,000. Between knots past 25 the count is log-uniform. The draw is uncapped;
  `for_model` caps it to what a model's context holds (and says how many it capped).
- Input tokens (the trace's ContextTokens): lognormal fitted to the stated median and 90th
  percentile — text requests 800 / 3,000 (σ = 1.03), image requests 1,500 / 10,000 (σ = 1.48) —
  clipped to [1, 150,000] (the plot's range). They are taken as the request's text: at the
  trace's image surges about 2M input tokens a minute carry 10,000-22,000 images, at most ~100
  tokens an image, so the column cannot hold a 576-token (let alone 1,601-token) image; a
  model's own image tokens are added on top (`for_model`).
- Generated tokens: lognormal fitted to the median and 99th percentile — image requests 100 /
  1,000 (σ = 0.99), text 150 / 1,000 (σ = 0.82) — clipped to [1, 16,384]. (The text CDF's step
  near 200 tokens is smoothed over.)
- Images and token counts are drawn independently: the README gives marginals, not joints.
- Arrivals: text requests are Poisson (the trace's text stream is smooth at minute scale).
  Image requests are a gamma renewal process (coefficient of variation `image_burst_cv`, 2 by
  default: minute-scale spikes) whose intensity rises `surge_rate_factor`-fold inside stated
  surge windows; the mean rate over the window is `image_share` × `rate_rps` all the same.
  In the trace, surges are hours of 10,000-22,000 images a minute against 1,000-2,000
  normally, with image requests barely more frequent: surges are requests with many images.
  So requests inside a surge also draw their image counts from the upper quantiles: each
  image request's count is the inverse CDF at u, and u is drawn from a mixture that puts
  `surge_concentration` of a surge request's mass on the top quantiles (those a surge's share
  of requests would take) and the matching mass of a normal request's on the rest. The mixture
  over all requests stays exactly uniform, so the marginal above is unchanged.
- Image requests are `image_share` of requests (0.5: in the trace's requests-per-minute plot
  the two streams have about the same mean, ~50 a minute each of ~100).

Surges are shortened to fit a simulated window (minutes where the trace has hours); the
experiment states its windows.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from simulator.workload import TraceRequest, WorkloadError

Z90 = 1.2815515655446004  # standard normal quantiles
Z99 = 2.3263478740408408

# (count, CDF at count). Knots in IMAGE_STEPS carry a point mass (the CDF steps there); between
# the others the count is log-uniform.
IMAGE_CDF: tuple[tuple[int, float], ...] = (
    (1, 0.66), (4, 0.71), (9, 0.86), (16, 0.875), (25, 0.93), (100, 0.95), (500, 0.975), (520, 0.998), (10_000, 1.0),
)
IMAGE_STEPS = frozenset({1, 4, 9, 16, 25})
# The README's own anchor points, which a generated sample must match (tested).
IMAGE_QUANTILES = {1: 0.66, 4: 0.71, 9: 0.86, 25: 0.93, 100: 0.95}

TEXT_INPUT = (800.0, 3_000.0)  # median, 90th percentile
IMAGE_INPUT = (1_500.0, 10_000.0)
INPUT_RANGE = (1, 150_000)
IMAGE_OUTPUT = (100.0, 1_000.0)  # median, 99th percentile
TEXT_OUTPUT = (150.0, 1_000.0)
OUTPUT_RANGE = (1, 16_384)


def lognormal_from_quantile(median: float, value: float, z: float) -> tuple[float, float]:
    """(mu, sigma) of the lognormal with this median whose quantile at standard-normal z is `value`."""
    if median <= 0 or value <= median or z <= 0:
        raise WorkloadError(f"lognormal: need 0 < median < quantile and z > 0, got {median}, {value}, {z}")
    return math.log(median), math.log(value / median) / z


def image_count(u: float) -> int:
    """The inverse of `IMAGE_CDF` at u in [0, 1)."""
    cdfs = [c for _, c in IMAGE_CDF]
    i = min(bisect.bisect_left(cdfs, u), len(IMAGE_CDF) - 1)
    count, cdf = IMAGE_CDF[i]
    if count in IMAGE_STEPS or i == 0:
        return count
    low, low_cdf = IMAGE_CDF[i - 1]
    frac = (u - low_cdf) / (cdf - low_cdf)
    value = math.exp(math.log(low) + frac * (math.log(count) - math.log(low)))
    return int(min(count, max(low + 1, math.ceil(value))))


@dataclass(frozen=True, slots=True)
class LmmWorkload:
    """Settings of one window of traffic; `generate` turns them into requests."""

    rate_rps: float  # mean arrivals per second over the window, all requests
    duration_s: float
    image_share: float = 0.5
    image_burst_cv: float = 2.0
    surges: tuple[tuple[float, float], ...] = ()  # (start_s, length_s) of each image surge
    surge_rate_factor: float = 2.0
    surge_concentration: float = 0.8  # with the factor 2: ~10x the images a second inside a surge
    seed: int = 0

    def __post_init__(self) -> None:
        if self.rate_rps <= 0 or self.duration_s <= 0:
            raise WorkloadError(f"rate_rps, duration_s: must be > 0, got {self.rate_rps}, {self.duration_s}")
        if not 0 <= self.image_share <= 1:
            raise WorkloadError(f"image_share: must lie in [0, 1], got {self.image_share}")
        if self.image_burst_cv <= 0 or self.surge_rate_factor < 1:
            raise WorkloadError(f"image_burst_cv > 0 and surge_rate_factor >= 1, got {self.image_burst_cv}, {self.surge_rate_factor}")
        if not 0 <= self.surge_concentration <= 1:
            raise WorkloadError(f"surge_concentration: must lie in [0, 1], got {self.surge_concentration}")
        for start, length in self.surges:
            if start < 0 or length <= 0 or start + length > self.duration_s:
                raise WorkloadError(f"surges: ({start}, {length}) must lie within [0, {self.duration_s}]")

    def describe(self) -> dict:
        return {
            "rate_rps": self.rate_rps, "duration_s": self.duration_s, "image_share": self.image_share,
            "text_arrivals": "Poisson", "image_arrivals": f"gamma renewal, cv {self.image_burst_cv:g}, "
            f"intensity x{self.surge_rate_factor:g} inside surges",
            "surges": [{"start_s": s, "length_s": n} for s, n in self.surges],
            "surge_concentration": self.surge_concentration, "seed": self.seed,
            "images_per_image_request": {"kind": "empirical piecewise CDF (steps at 1, 4, 9, 16, 25; log-uniform between later knots)",
                                         "knots": [list(k) for k in IMAGE_CDF]},
            "input_tokens": {"text": _lognormal_doc(TEXT_INPUT, Z90, "p90"), "image": _lognormal_doc(IMAGE_INPUT, Z90, "p90"),
                             "range": list(INPUT_RANGE)},
            "generated_tokens": {"text": _lognormal_doc(TEXT_OUTPUT, Z99, "p99"), "image": _lognormal_doc(IMAGE_OUTPUT, Z99, "p99"),
                                 "range": list(OUTPUT_RANGE)},
            "joint": "image count, input and generated tokens drawn independently",
        }


def _lognormal_doc(pair: tuple[float, float], z: float, label: str) -> dict:
    mu, sigma = lognormal_from_quantile(pair[0], pair[1], z)
    return {"kind": "lognormal", "median": pair[0], label: pair[1], "mu": mu, "sigma": sigma}


@dataclass(frozen=True, slots=True)
class LmmRequest:
    """One request as the trace records it (TIMESTAMP, NumImages, ContextTokens, GeneratedTokens)."""

    arrival_s: float
    num_images: int
    context_tokens: int
    generated_tokens: int
    in_surge: bool = False
    index: int = 0  # position within its stream (text or image): the same request at every rate


def generate(w: LmmWorkload) -> list[LmmRequest]:
    """The window's requests in arrival order.

    Each stream (text times, image times, image counts, token counts) draws from its own
    seeded generator, and arrivals are renewal points in operational time mapped through the
    cumulative intensity: the k-th request of a stream has the same counts and the same
    operational time at every rate. Two windows that differ only in `rate_rps` therefore hold
    the same requests, the faster one compressed (common random numbers: a capacity search
    compares like with like)."""
    # numpy's draws are prefix-stable (the k-th of n draws is the same for any n > k)
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence(w.seed).spawn(7)]
    text_times = _renewal(streams[0], 1.0, [(0.0, w.duration_s, (1 - w.image_share) * w.rate_rps)])
    image_times = _renewal(streams[1], w.image_burst_cv, _image_intensity(w))
    in_surge = np.array([_in_surge(t, w.surges) for t in image_times], dtype=bool)
    u = _image_quantiles(streams[2], in_surge, w.surge_concentration)
    counts = [image_count(x) for x in u]
    n_text, n_image = len(text_times), len(image_times)
    text_in = _lognormal(streams[3], TEXT_INPUT, Z90, n_text, INPUT_RANGE)
    text_out = _lognormal(streams[4], TEXT_OUTPUT, Z99, n_text, OUTPUT_RANGE)
    image_in = _lognormal(streams[5], IMAGE_INPUT, Z90, n_image, INPUT_RANGE)
    image_out = _lognormal(streams[6], IMAGE_OUTPUT, Z99, n_image, OUTPUT_RANGE)
    out = [LmmRequest(float(t), 0, int(p), int(o), False, k) for k, (t, p, o) in enumerate(zip(text_times, text_in, text_out))]
    out += [LmmRequest(float(t), int(n), int(p), int(o), bool(s), k)
            for k, (t, n, p, o, s) in enumerate(zip(image_times, counts, image_in, image_out, in_surge))]
    out.sort(key=lambda r: (r.arrival_s, r.num_images))
    return out


def _in_surge(t: float, surges: Sequence[tuple[float, float]]) -> bool:
    return any(start <= t < start + length for start, length in surges)


def _image_intensity(w: LmmWorkload) -> list[tuple[float, float, float]]:
    """(start, end, rate) pieces: a base rate, `surge_rate_factor` × base inside surges, with
    the stated mean over the window."""
    mean_rate = w.image_share * w.rate_rps
    surge_time = sum(length for _, length in w.surges)
    base = mean_rate * w.duration_s / (w.duration_s + (w.surge_rate_factor - 1) * surge_time)
    edges = sorted({0.0, w.duration_s, *(s for s, _ in w.surges), *(s + n for s, n in w.surges)})
    return [(a, b, base * (w.surge_rate_factor if _in_surge((a + b) / 2, w.surges) else 1.0)) for a, b in zip(edges, edges[1:])]


def _renewal(rng: np.random.Generator, cv: float, pieces: list[tuple[float, float, float]]) -> np.ndarray:
    """Gamma-renewal points (mean gap 1, coefficient of variation `cv`; cv 1 is Poisson) in
    operational time, mapped through the cumulative intensity of the piecewise-constant rate."""
    edges = np.array([pieces[0][0]] + [b for _, b, _ in pieces])
    cumulative = np.concatenate([[0.0], np.cumsum([r * (b - a) for a, b, r in pieces])])
    total = float(cumulative[-1])
    if total <= 0:
        return np.array([])
    shape = 1.0 / cv**2
    ops = np.cumsum(rng.gamma(shape, 1.0 / shape, size=4096))
    while ops[-1] < total:
        ops = np.concatenate([ops, ops[-1] + np.cumsum(rng.gamma(shape, 1.0 / shape, size=4096))])
    ops = ops[ops < total]
    return np.interp(ops, cumulative, edges)


def _image_quantiles(rng: np.random.Generator, in_surge: np.ndarray, concentration: float) -> np.ndarray:
    """u for each image request: uniform overall; surge requests lean on the top quantiles."""
    n = len(in_surge)
    u, lean, top_u, bottom_u = rng.random((n, 4)).T  # one row per request: stable by index
    if n == 0 or not in_surge.any() or in_surge.all() or concentration == 0:
        return u
    share = float(in_surge.mean())  # the share of image requests inside surges
    top = 1 - share + share * top_u  # uniform on [1 - share, 1)
    bottom = (1 - share) * bottom_u  # uniform on [0, 1 - share)
    return np.where(lean < concentration, np.where(in_surge, top, bottom), u)


def _lognormal(rng: np.random.Generator, pair: tuple[float, float], z: float, n: int, bounds: tuple[int, int]) -> np.ndarray:
    mu, sigma = lognormal_from_quantile(pair[0], pair[1], z)
    return np.clip(np.rint(rng.lognormal(mu, sigma, size=n)), *bounds).astype(int)


# -- one model's view of the requests ---------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ModelLimits:
    """What a model makes of a request: its context, the tail cap on images, how many encoder
    units (tiles) an image becomes and what each adds to the prompt."""

    max_model_len: int
    max_images: int
    tokens_per_unit: int  # language-model tokens one encoder unit (image or tile) adds
    units_per_image: dict[int, float] = field(default_factory=lambda: {1: 1.0})  # tiles -> probability

    def __post_init__(self) -> None:
        if self.max_images < 1 or self.max_model_len < 2:
            raise WorkloadError(f"max_images >= 1 and max_model_len >= 2, got {self.max_images}, {self.max_model_len}")
        most = max(self.units_per_image)
        if self.max_images * most * self.tokens_per_unit + 256 > self.max_model_len:
            raise WorkloadError(f"max_images: {self.max_images} images of up to {most} units × {self.tokens_per_unit} "
                                f"tokens leave no room for text in a {self.max_model_len}-token context")


@dataclass(frozen=True, slots=True)
class Mapped:
    requests: list[TraceRequest]
    images_capped: int  # image requests whose count was cut to max_images
    text_truncated: int  # requests whose text was cut to fit the context
    outputs_truncated: int


def for_model(requests: Sequence[LmmRequest], limits: ModelLimits, seed: int = 0) -> Mapped:
    """The requests as one model serves them: images capped at `max_images`, each image turned
    into its encoder units (`num_images` of the result counts units), and text (then output)
    cut so that text + image tokens + output fit the context, as a client would truncate."""
    tiles = np.array(sorted(limits.units_per_image))
    cdf = np.cumsum([limits.units_per_image[t] for t in tiles])
    cdf /= cdf[-1]
    # Tiles of the k-th image request's images from one fixed table: the same at every rate.
    table = np.random.default_rng([seed, 7919]).random((max((r.index for r in requests if r.num_images), default=-1) + 1,
                                                        limits.max_images))
    out, capped, cut_text, cut_out = [], 0, 0, 0
    for i, r in enumerate(requests):
        images = min(r.num_images, limits.max_images)
        capped += images < r.num_images
        units = int(tiles[np.searchsorted(cdf, table[r.index, :images], side="right")].sum()) if images else 0
        room = limits.max_model_len - units * limits.tokens_per_unit
        output = min(r.generated_tokens, max(1, room // 4))  # keep at least 3/4 of the room for the prompt side
        cut_out += output < r.generated_tokens
        text = min(r.context_tokens, room - output)
        cut_text += text < r.context_tokens
        out.append(TraceRequest(f"r{i}", r.arrival_s, max(1, text), output, units,
                                "image" if r.num_images else "text"))
    return Mapped(out, capped, cut_text, cut_out)
