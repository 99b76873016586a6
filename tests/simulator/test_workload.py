"""Trace parsing (Azure with and without NumImages, BurstGPT), clear errors on bad CSVs, and the
synthetic arrival processes."""

from dataclasses import replace

import numpy as np
import pytest

from simulator.workload import (
    WorkloadError, assign_classes, attach_images, azure_trace, gamma_arrivals, load_trace, poisson_arrivals, rescale_rate,
    synthetic,
)


def test_azure_format_with_seven_digit_fractions(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n"
                    "2023-11-16 18:17:04.0319600,3180,8\n"
                    "2023-11-16 18:17:03.9799600,4808,10\n")
    reqs = load_trace(path)
    assert [(r.prompt_tokens, r.output_tokens) for r in reqs] == [(4808, 10), (3180, 8)]  # sorted by time
    assert reqs[0].arrival_s == 0.0
    assert reqs[1].arrival_s == pytest.approx(0.052, abs=1e-6)


def test_azure_multimodal_column_and_burstgpt(tmp_path):
    mm = tmp_path / "mm.csv"
    mm.write_text("TIMESTAMP,NumImages,ContextTokens,GeneratedTokens\n2024-05-01 00:00:00.5,3,100,20\n2024-05-01 00:00:01.5,0,50,5\n")
    assert [r.num_images for r in load_trace(mm)] == [3, 0]
    burst = tmp_path / "burst.csv"
    burst.write_text("Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
                     "5,ChatGPT,472,18,490,Conversation log\n7.5,GPT-4,1087,0,1087,Conversation log\n")
    reqs = load_trace(burst)
    assert [(r.arrival_s, r.prompt_tokens, r.output_tokens) for r in reqs] == [(0.0, 472, 18), (2.5, 1087, 1)]


@pytest.mark.parametrize("text, message", [
    ("a,b,c\n1,2,3\n", "neither Azure"),
    ("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03.9,lots,8\n", "line 2: ContextTokens 'lots' is not a number"),
    ("TIMESTAMP,ContextTokens,GeneratedTokens\nyesterday,10,8\n", "line 2: TIMESTAMP 'yesterday' is not a time"),
    ("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03.9,-4,8\n", "must be an integer >= 1"),
    ("TIMESTAMP,ContextTokens,GeneratedTokens\n", "no requests"),
])
def test_bad_csv_names_line_and_field(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(WorkloadError, match=message):
        load_trace(path)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(WorkloadError, match="no file"):
        load_trace(tmp_path / "nope.csv")


def test_shared_azure_trace_reads_in_place():
    reqs = azure_trace("code", duration_s=60)
    assert reqs and all(0 <= r.arrival_s <= 60 for r in reqs)
    assert all(r.prompt_tokens >= 1 and r.output_tokens >= 1 for r in reqs)
    with pytest.raises(WorkloadError, match="unknown Azure trace"):
        azure_trace("vision")


def test_poisson_and_gamma_bursts_keep_the_rate_and_differ_in_burstiness():
    poisson = poisson_arrivals(20.0, 500.0, seed=1)
    bursty = gamma_arrivals(20.0, 500.0, cv=4.0, seed=1)
    assert len(poisson) / 500 == pytest.approx(20, rel=0.05)
    assert len(bursty) / 500 == pytest.approx(20, rel=0.35)
    cv = lambda t: np.std(np.diff(t)) / np.mean(np.diff(t))  # noqa: E731
    assert cv(poisson) == pytest.approx(1.0, abs=0.1)
    assert cv(bursty) > 2.5
    with pytest.raises(WorkloadError):
        gamma_arrivals(0.0, 10.0, cv=1.0, seed=0)


def test_images_classes_and_rescaling():
    reqs = synthetic(poisson_arrivals(10.0, 200.0, seed=2), (100, 10), seed=2)
    with_images = attach_images(reqs, 0.3, {1: 1.0, 8: 1.0}, seed=3)
    share = np.mean([r.num_images > 0 for r in with_images])
    assert share == pytest.approx(0.3, abs=0.06)
    assert {r.num_images for r in with_images} <= {0, 1, 8}
    classed = assign_classes(reqs, {"interactive": 3, "batch": 1}, seed=4)
    assert np.mean([r.qos_class == "batch" for r in classed]) == pytest.approx(0.25, abs=0.06)
    faster = rescale_rate(reqs, 2.0)
    assert faster[-1].arrival_s == pytest.approx(reqs[-1].arrival_s / 2)
    with pytest.raises(WorkloadError, match="image share"):
        attach_images(reqs, 1.5, None, seed=0)


def test_superpose_multiplies_the_rate_over_the_same_span():
    from simulator.workload import TraceRequest, superpose

    reqs = [TraceRequest(f"r{i}", float(t), 10 + i, 5) for i, t in enumerate((0.0, 1.0, 4.0, 10.0))]
    out = superpose(reqs, 4)
    assert len(out) == 16 and len({r.request_id for r in out}) == 16
    assert all(0.0 <= r.arrival_s <= 10.0 for r in out) and [r.arrival_s for r in out] == sorted(r.arrival_s for r in out)
    assert sorted(r.prompt_tokens for r in out) == sorted([r.prompt_tokens for r in reqs] * 4)
    assert superpose(reqs, 1) == [replace(r, request_id=f"{r.request_id}.0") for r in reqs]
