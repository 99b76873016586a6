"""Cost models: the least-squares fit recovers known coefficients; the GPU model built from the
operator profiles Pavana carries (Vidur's) behaves like a GPU; hand-off transfer time is latency + bytes/bandwidth."""

import numpy as np
import pytest

from simulator.cost_model import (
    BatchShape, CostModelError, GpuCostModel, LinearCostModel, Network, load_cost_model, read_profile_csv,
)
from simulator.profile import write_profile_csv


def synthetic_profile(seed=0, noise=0.0):
    rng = np.random.default_rng(seed)
    true = (0.004, 2.5e-4, 6e-4, 3e-7)
    shapes, seconds = [], []
    for _ in range(60):
        p, d, c = int(rng.integers(0, 512)), int(rng.integers(0, 32)), int(rng.integers(16, 2048))
        shape = BatchShape(p, d, p * (p + 1) / 2, d * c, d + (p > 0))
        t = true[0] + true[1] * p + true[2] * d + true[3] * shape.attended
        shapes.append(shape)
        seconds.append(t * (1 + noise * rng.standard_normal()))
    return true, shapes, seconds


def test_fit_recovers_known_coefficients():
    true, shapes, seconds = synthetic_profile()
    fit = LinearCostModel.fit(shapes, seconds)
    got = (fit.intercept, fit.per_prefill_token, fit.per_decode_token, fit.per_attended)
    assert got == pytest.approx(true, rel=1e-6)
    assert fit.r2 == pytest.approx(1.0)


def test_fit_with_noise_is_close_and_round_trips_through_csv(tmp_path):
    true, shapes, seconds = synthetic_profile(seed=1, noise=0.02)
    path = write_profile_csv(tmp_path / "p.csv", shapes, seconds, {"kv_bytes_per_token": 4096})
    read_shapes, read_seconds, meta = read_profile_csv(path)
    assert meta["kv_bytes_per_token"] == 4096 and len(read_shapes) == 60
    fit = LinearCostModel.from_profile_csv(path)
    assert fit.kv_bytes_per_token == 4096
    assert fit.per_prefill_token == pytest.approx(true[1], rel=0.1)
    assert fit.per_decode_token == pytest.approx(true[2], rel=0.2)
    assert isinstance(load_cost_model(str(path)), LinearCostModel)


def test_fit_refuses_too_little_or_bad_data(tmp_path):
    with pytest.raises(CostModelError, match="at least"):
        LinearCostModel.fit([BatchShape(1, 0, 1, 0, 1)] * 2, [0.1, 0.2])
    bad = tmp_path / "bad.csv"
    bad.write_text("prefill_tokens,seconds\n1,0.1\n")
    with pytest.raises(CostModelError, match="missing columns"):
        read_profile_csv(bad)


def test_gpu_model_from_shared_profiles():
    a100 = GpuCostModel.from_profiles("a100", "llama2-7b")
    h100 = GpuCostModel.from_profiles("h100", "llama2-7b")
    decode = BatchShape(0, 1, 0, 1000, 1)
    prefill = BatchShape(2048, 0, 2048 * 2049 / 2, 0, 1)
    # a 7B decode step on an A100 takes around 10-15 ms; the H100 is faster on both
    assert 0.008 < a100.batch_time(decode) < 0.02
    assert h100.batch_time(decode) < a100.batch_time(decode)
    assert h100.batch_time(prefill) < a100.batch_time(prefill)
    # decode-maximal batching: 32 decodes cost far less than 32 single decodes
    assert a100.batch_time(BatchShape(0, 32, 0, 32000, 32)) < 4 * a100.batch_time(decode)
    # beyond the profiled 4096 tokens the time keeps growing
    big = BatchShape(6000, 0, 6000 * 6001 / 2, 0, 1)
    assert a100.batch_time(big) > a100.batch_time(BatchShape(4096, 0, 4096 * 4097 / 2, 0, 1))
    assert a100.kv_bytes_per_token == 2 * 32 * 32 * 128 * 2
    with pytest.raises(CostModelError, match="unknown"):
        GpuCostModel.from_profiles("v100")


def test_network_transfer_time():
    net = Network(0.001, 1e9, 1e8)
    assert net.transfer_time(5e8, same_site=True) == pytest.approx(0.501)
    assert net.transfer_time(5e8, same_site=False, extra_latency_s=0.02) == pytest.approx(0.001 + 5.0 + 0.02)
    measured = Network.from_profile("h100")
    assert 1e10 < measured.within_site_bytes_per_s < 1e11  # tens of GB/s between nodes
