"""Workload generation: arrival processes, trace parsing, class mix, images, prompt lengths."""

from __future__ import annotations

import base64
import csv
import io
from pathlib import Path

import numpy as np
import pytest

from bench.arrivals import gamma_arrivals, poisson_arrivals
from bench.prompts import PromptFactory
from bench.trace import TraceError, read_azure_trace
from bench.workload import QOS_HEADER, WorkloadError, from_trace, http_requests, parse_class_mix, plan
from pavana_data import trace_path

AZURE_CONV = trace_path("conv")  # carried in pavana_data


@pytest.fixture(scope="module")
def tokenizer():
    from workers.engine.default_model import ensure_default_model
    from workers.engine.tokenizer import Tokenizer

    return Tokenizer.from_dir(ensure_default_model())


# -- arrivals ---------------------------------------------------------------------------------


def test_poisson_has_its_rate_and_repeats_with_its_seed():
    times = poisson_arrivals(5.0, count=20_000, seed=1)
    gaps = np.diff(times)
    assert times[0] == 0.0 and np.all(gaps >= 0)
    assert 1 / gaps.mean() == pytest.approx(5.0, rel=0.03)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, rel=0.05)  # exponential gaps
    assert poisson_arrivals(5.0, count=50, seed=1) == times[:50]
    assert poisson_arrivals(5.0, count=50, seed=2) != times[:50]


def test_gamma_bursts_have_their_coefficient_of_variation():
    gaps = np.diff(gamma_arrivals(4.0, 3.0, count=40_000, seed=7))
    assert 1 / gaps.mean() == pytest.approx(4.0, rel=0.05)
    assert gaps.std() / gaps.mean() == pytest.approx(3.0, rel=0.08)


def test_arrivals_over_a_duration():
    times = poisson_arrivals(20.0, duration_s=50.0, seed=3)
    assert max(times) < 50.0
    assert len(times) == pytest.approx(1000, rel=0.1)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: poisson_arrivals(0.0, count=3), "rate"),
        (lambda: poisson_arrivals(1.0), "exactly one"),
        (lambda: poisson_arrivals(1.0, count=3, duration_s=2.0), "exactly one"),
        (lambda: gamma_arrivals(1.0, 0.0, count=3), "cv"),
        (lambda: poisson_arrivals(1.0, count=0), "count"),
    ],
)
def test_bad_arrival_options(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# -- traces -----------------------------------------------------------------------------------


def test_azure_trace_slice():
    rows = read_azure_trace(AZURE_CONV, start=10, limit=5)
    with AZURE_CONV.open() as f:
        expected = list(csv.reader(f))[11:16]  # header, then rows 0..9 skipped
    assert [(r.context_tokens, r.generated_tokens) for r in rows] == [(int(c), int(g)) for _, c, g in expected]
    assert rows[0].arrival_s == 0.0
    assert all(a.arrival_s <= b.arrival_s for a, b in zip(rows, rows[1:]))
    assert rows[-1].arrival_s > 0


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "trace.csv"
    path.write_text(text)
    return path


def test_trace_with_images_column_and_rate_scaling(tmp_path):
    path = _write(tmp_path, "TIMESTAMP,NumImages,ContextTokens,GeneratedTokens\n"
                            "2024-05-01 10:00:00.0000000,2,100,10\n"
                            "2024-05-01 10:00:01.5000000,0,50,5\n"
                            "2024-05-01 10:00:03.0000000,1,70,7\n")
    rows = read_azure_trace(path)
    assert [(r.arrival_s, r.num_images, r.context_tokens) for r in rows] == [(0.0, 2, 100), (1.5, 0, 50), (3.0, 1, 70)]
    faster = from_trace(rows, rate_scale=2.0)
    assert [r.arrival_s for r in faster] == [0.0, 0.75, 1.5]
    assert len(from_trace(rows, rate_scale=2.0, duration_s=1.0)) == 2


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("TIMESTAMP,ContextTokens\n2023-11-16 18:15:46.68,10\n", r"missing columns \['GeneratedTokens'\]"),
        ("TIMESTAMP,ContextTokens,GeneratedTokens\nyesterday,10,5\n", r"trace.csv:2: TIMESTAMP 'yesterday'"),
        ("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.68,ten,5\n", r":2: ContextTokens 'ten' is not an integer"),
        ("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.68,10,5\n2023-11-16 18:15:47.68,10,0\n", r":3: GeneratedTokens must be >= 1"),
        ("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.68,10\n", r":2: expected 3 fields"),
        ("TIMESTAMP,ContextTokens,GeneratedTokens\n", "no requests"),
    ],
)
def test_bad_trace_files(tmp_path, text, match):
    with pytest.raises(TraceError, match=match):
        read_azure_trace(_write(tmp_path, text))


def test_missing_trace_file_and_bad_slice(tmp_path):
    with pytest.raises(TraceError, match="cannot read"):
        read_azure_trace(tmp_path / "absent.csv")
    with pytest.raises(TraceError, match="limit"):
        read_azure_trace(AZURE_CONV, limit=0)


# -- classes, images, clamping ----------------------------------------------------------------


def test_class_mix_parsing():
    assert parse_class_mix("interactive=0.7, batch=0.3") == {"interactive": 0.7, "batch": 0.3}
    for bad, match in [("interactive=0.7", "sum to 1"), ("interactive", "name=share"), ("a=x", "not a number"), ("a=0.5,a=0.5", "twice"), ("a=-1,b=2", "> 0")]:
        with pytest.raises(WorkloadError, match=match):
            parse_class_mix(bad)


def test_plan_draws_classes_and_images_by_their_shares_and_repeats():
    arrivals = list(range(10_000))
    planned, clamped = plan(arrivals, [(100, 10)], class_mix={"interactive": 0.7, "batch": 0.3}, images_share=0.25, images_per_request=3, seed=5)
    assert clamped == 0
    share = sum(p.qos_class == "interactive" for p in planned) / len(planned)
    assert share == pytest.approx(0.7, abs=0.02)
    with_images = [p for p in planned if p.num_images]
    assert len(with_images) / len(planned) == pytest.approx(0.25, abs=0.02)
    assert {p.num_images for p in with_images} == {3}
    again, _ = plan(arrivals, [(100, 10)], class_mix={"interactive": 0.7, "batch": 0.3}, images_share=0.25, images_per_request=3, seed=5)
    assert again == planned


def test_plan_clamps_to_the_caps_and_the_context_and_counts_it():
    planned, clamped = plan([0.0, 1.0, 2.0], [(3000, 500), (100, 10), (1900, 200)], class_mix={"c": 1.0},
                            max_context_tokens=2048, max_output_tokens=300)
    assert [(p.prompt_tokens, p.output_tokens) for p in planned] == [(1748, 300), (100, 10), (1848, 200)]
    assert clamped == 2
    assert all(p.prompt_tokens + p.output_tokens <= 2048 for p in planned)
    with pytest.raises(WorkloadError, match="images_share"):
        plan([0.0], [(1, 1)], class_mix={"c": 1.0}, images_share=1.5)


def test_bodies_prompts_and_images(tokenizer):
    planned, _ = plan([0.0, 0.5, 1.0], [(37, 8), (300, 4), (12, 2)], class_mix={"interactive": 0.5, "batch": 0.5}, seed=0)
    planned[2] = type(planned[2])(2, 1.0, 12, 2, "batch", num_images=2)
    requests = http_requests(planned, PromptFactory(tokenizer, seed=0), model="pavana-tiny")
    text, long_text, chat = requests
    assert text.path == "/completions" and text.body["stream"] and text.body["stream_options"] == {"include_usage": True}
    assert text.body["max_tokens"] == 8 and text.body["ignore_eos"] is True
    assert text.headers[QOS_HEADER] == planned[0].qos_class
    assert len(tokenizer.encode(text.body["prompt"])) == 37
    assert len(tokenizer.encode(long_text.body["prompt"])) == 300
    assert text.body["prompt"][:40] != long_text.body["prompt"][:40]  # no shared prefix
    assert chat.path == "/chat/completions"
    parts = chat.body["messages"][0]["content"]
    images = [p["image_url"]["url"] for p in parts if p["type"] == "image_url"]
    assert len(images) == 2 and images[0] != images[1]
    from PIL import Image

    for url in images:
        assert url.startswith("data:image/png;base64,")
        assert Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).size == (64, 64)
    assert len(tokenizer.encode(parts[-1]["text"])) == 12
