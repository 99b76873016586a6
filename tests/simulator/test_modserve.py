"""The ModServe experiment's pure parts: the Azure-multimodal-like workload matches the trace's
stated marginals, a model's view of it caps and truncates as stated, the capacity search
finds the edge of a monotone predicate, and the encoder costs come from FLOPs. Nothing here
runs a simulation or measures time."""

import math

import numpy as np
import pytest

from simulator.cost_model import GPUS, VISION_ENCODERS, BatchShape, GpuCostModel, multimodal_cost_model
from simulator.experiments.modserve import capacity_ratio, find_capacity, gpu_hours_rate
from simulator.experiments.modserve_workload import (
    IMAGE_QUANTILES, LmmWorkload, ModelLimits, for_model, generate, image_count, lognormal_from_quantile,
)
from simulator.workload import WorkloadError


@pytest.fixture(scope="module")
def window():
    # ~60,000 requests: quantiles to within a percentage point or so
    return generate(LmmWorkload(rate_rps=100.0, duration_s=600.0, surges=((100.0, 120.0), (400.0, 60.0)), seed=3))


def test_images_per_image_request_follow_the_traces_cdf(window):
    counts = np.array([r.num_images for r in window if r.num_images])
    for k, share in IMAGE_QUANTILES.items():  # 1: 66%, <=4: 71%, <=9: 86%, <=25: 93%, <=100: 95%
        assert np.mean(counts <= k) == pytest.approx(share, abs=0.01), k
    assert counts.min() == 1 and counts.max() <= 10_000
    assert counts.max() > 500  # the tail is there before a model caps it


def test_token_counts_match_the_stated_medians_and_tails(window):
    text = [r for r in window if not r.num_images]
    image = [r for r in window if r.num_images]
    assert len(image) / len(window) == pytest.approx(0.5, abs=0.02)
    for rows, median, p90 in ((text, 800, 3_000), (image, 1_500, 10_000)):
        tokens = [r.context_tokens for r in rows]
        assert np.percentile(tokens, 50) == pytest.approx(median, rel=0.05)
        assert np.percentile(tokens, 90) == pytest.approx(p90, rel=0.08)
    for rows, median in ((text, 150), (image, 100)):
        out = [r.generated_tokens for r in rows]
        assert np.percentile(out, 50) == pytest.approx(median, rel=0.05)
        assert np.percentile(out, 99) == pytest.approx(1_000, rel=0.15)


def test_arrivals_keep_the_rate_and_surges_carry_many_more_images(window):
    assert len(window) / 600.0 == pytest.approx(100.0, rel=0.03)
    surge = [r for r in window if r.num_images and r.in_surge]
    calm = [r for r in window if r.num_images and not r.in_surge]
    surge_images = sum(min(r.num_images, 32) for r in surge) / 180.0
    calm_images = sum(min(r.num_images, 32) for r in calm) / 420.0
    assert surge_images > 5 * calm_images  # the trace: 10,000-22,000 a minute against 1,000-2,000
    assert len(surge) / 180.0 == pytest.approx(2 * len(calm) / 420.0, rel=0.15)  # requests only twice as often


def test_text_arrivals_are_smooth_and_image_arrivals_bursty():
    reqs = generate(LmmWorkload(rate_rps=40.0, duration_s=1_000.0, seed=1))
    for want_images, low, high in ((False, 0.9, 1.1), (True, 1.6, 2.4)):
        times = np.array([r.arrival_s for r in reqs if bool(r.num_images) == want_images])
        gaps = np.diff(times)
        assert low < gaps.std() / gaps.mean() < high


def test_same_seed_same_requests_and_a_faster_rate_compresses_them():
    slow = generate(LmmWorkload(rate_rps=5.0, duration_s=300.0, seed=9))
    assert slow == generate(LmmWorkload(rate_rps=5.0, duration_s=300.0, seed=9))
    fast = generate(LmmWorkload(rate_rps=10.0, duration_s=300.0, seed=9))
    by_index = {(bool(r.num_images), r.index): r for r in fast}
    for r in slow[:200]:
        twin = by_index[(bool(r.num_images), r.index)]
        assert (twin.context_tokens, twin.generated_tokens) == (r.context_tokens, r.generated_tokens)
        assert twin.arrival_s == pytest.approx(r.arrival_s / 2, rel=1e-9, abs=1e-9)


def test_image_count_inverse_cdf_steps_and_tail():
    assert image_count(0.0) == 1 and image_count(0.65) == 1
    assert image_count(0.70) == 4 and image_count(0.85) == 9 and image_count(0.92) == 25
    assert 25 < image_count(0.94) <= 100
    assert image_count(0.99999) <= 10_000


def test_lognormal_fit_and_bad_settings():
    mu, sigma = lognormal_from_quantile(800, 3_000, 1.2815515655446004)
    assert math.exp(mu) == pytest.approx(800) and sigma == pytest.approx(1.031, abs=1e-3)
    with pytest.raises(WorkloadError, match="median < quantile"):
        lognormal_from_quantile(800, 700, 1.28)
    with pytest.raises(WorkloadError, match="surges"):
        LmmWorkload(rate_rps=1.0, duration_s=100.0, surges=((90.0, 20.0),))
    with pytest.raises(WorkloadError, match="leave no room"):
        ModelLimits(max_model_len=4_096, max_images=8, tokens_per_unit=576)


def test_a_model_caps_images_turns_them_into_tiles_and_fits_the_context(window):
    tiles = ModelLimits(max_model_len=32_768, max_images=32, tokens_per_unit=32, units_per_image={1: 0.1, 2: 0.2, 3: 0.1, 4: 0.6})
    mapped = for_model(window[:5_000], tiles)
    images = [(r, m) for r, m in zip(window[:5_000], mapped.requests) if r.num_images]
    assert mapped.images_capped == sum(r.num_images > 32 for r, _ in images) > 0
    assert all(min(r.num_images, 32) <= m.num_images <= 4 * min(r.num_images, 32) for r, m in images)
    assert np.mean([m.num_images / min(r.num_images, 32) for r, m in images]) == pytest.approx(3.2, abs=0.1)
    llava = for_model(window[:5_000], ModelLimits(max_model_len=32_768, max_images=32, tokens_per_unit=576))
    assert all(r.prompt_tokens + 576 * r.num_images + r.output_tokens <= 32_768 for r in llava.requests)
    assert {r.qos_class for r in llava.requests} == {"text", "image"}


# -- the capacity search --------------------------------------------------------------------------------
@pytest.mark.parametrize("edge, start", [(7.3, 8.0), (7.3, 1.0), (120.0, 8.0), (0.6, 8.0)])
def test_capacity_search_brackets_then_bisects_to_the_tolerance(edge, start):
    capacity, tried = find_capacity(lambda r: r <= edge, start, tolerance=0.05, floor=0.25)
    assert capacity <= edge < capacity * 1.05
    passing = [r for r, ok in tried if ok]
    failing = [r for r, ok in tried if not ok]
    assert max(passing) == capacity and min(failing) > edge
    assert len(tried) < 20


def test_capacity_search_ends_at_the_floor_and_the_ceiling():
    assert find_capacity(lambda r: False, 8.0, tolerance=0.1, floor=0.25)[0] == 0.0
    assert find_capacity(lambda r: True, 8.0, tolerance=0.1, floor=0.25, ceiling=100.0)[0] == 100.0
    with pytest.raises(ValueError, match="tolerance"):
        find_capacity(lambda r: True, 8.0, tolerance=0.0, floor=0.25)


def test_ratios_say_when_they_are_lower_bounds():
    assert capacity_ratio({"monolithic": 4.0, "E + PD": 10.0}, "E + PD", 0.25) == {"value": 2.5, "kind": "ratio"}
    bound = capacity_ratio({"monolithic": 0.0, "E + PD": 10.0}, "E + PD", 0.25)
    assert bound["value"] == 40.0 and "lower bound" in bound["kind"]
    assert capacity_ratio({"monolithic": 0.0, "E + PD": 0.0}, "E + PD", 0.25)["value"] is None
    assert gpu_hours_rate(8.0, 4.0, 0.25) == 2.0 and gpu_hours_rate(0.0, 4.0, 0.25) == 2.0
    assert gpu_hours_rate(8.0, 0.2, 0.25) == 4.0  # below the floor (a mean over seeds with a failing one) counts as none
    assert gpu_hours_rate(0.0, 0.0, 0.25) == 0.25


# -- encoder costs from FLOPs ---------------------------------------------------------------------------
def test_encoder_costs_follow_their_shapes():
    clip, mllama = VISION_ENCODERS["clip-vit-l-336"], VISION_ENCODERS["mllama-vit-h-560"]
    assert clip.parameters == pytest.approx(322e6, rel=0.02)  # 304M tower + 21M projector
    assert mllama.parameters == pytest.approx(818e6, rel=0.02)  # ~850M with embeddings (Llama 3 paper)
    a100 = GPUS["a100"]
    assert 0.003 < clip.seconds(a100) < 0.006  # one 336-px image
    assert 0.02 < mllama.seconds(a100) < 0.035  # one 560-px tile
    assert clip.seconds(GPUS["h100"]) < clip.seconds(a100)


def test_multimodal_cost_model_keeps_the_language_model_and_counts_kv_in_self_attention_layers():
    llava = multimodal_cost_model("a100", "llama2-7b", "clip-vit-l-336", tokens_per_image=576)
    plain = GpuCostModel.from_profiles("a100", "llama2-7b")
    shape = BatchShape(512, 8, 512 * 513 / 2, 8 * 1000, 9)
    assert isinstance(llava, GpuCostModel) and llava.tokens_per_image == 576
    assert llava.batch_time(shape) == pytest.approx(plain.batch_time(shape))
    assert llava.kv_bytes_per_token == plain.kv_bytes_per_token
    assert llava.encode_time(3) == pytest.approx(3 * VISION_ENCODERS["clip-vit-l-336"].seconds(GPUS["a100"]))
    mllama = multimodal_cost_model("a100", "llama3-8b", "mllama-vit-h-560", tokens_per_image=32, num_layers=40,
                                   attention_layers=32)
    eight_b = GpuCostModel.from_profiles("a100", "llama3-8b")
    assert mllama.kv_bytes_per_token == eight_b.kv_bytes_per_token  # KV in the 32 self-attention layers only
    assert mllama.batch_time(shape) > eight_b.batch_time(shape)  # 8 more layers of token-level operators
    assert mllama.describe()["encoder"]["tokens"] == 1601
