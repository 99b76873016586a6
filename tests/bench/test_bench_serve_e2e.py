"""A short benchmark run against a real local cluster: the client streams from the live API,
and the report that comes out is complete and sane.

The application is this module's own (`bench-test` under `/bench`), colocated with a vision
pool so that image requests take the chat path, and is deleted afterwards.
"""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest

from cluster.spec import ClusterSpec

pytestmark = [pytest.mark.ray]
APP = "bench-test"
PREFIX = "/bench"
API_KEY = "bench-key"
REPORT_KEYS = ("ttft_p50_s", "ttft_p99_s", "tbt_p99_s", "fluidity_index", "slo_attainment", "goodput_rps", "num_requests")


@pytest.fixture(scope="module")
def base_url(ray_cluster):
    from ray import serve

    from controller.app import build_app

    one = {"min_replicas": 1, "max_replicas": 1, "initial_replicas": 1}
    spec = ClusterSpec.parse({
        "topology": "colocated",
        "pools": {"colocated": one, "vision": one},
        "engine": {"num_threads": 1},
        "api_keys": [API_KEY],
        "telemetry_prefix": f"benchtest:{uuid.uuid4().hex}",
        "http_port": ray_cluster.http_port,
        "grpc_port": ray_cluster.grpc_port,
    })
    serve.run(build_app(spec), name=APP, route_prefix=PREFIX)
    try:
        yield f"http://127.0.0.1:{ray_cluster.http_port}{PREFIX}/v1"
    finally:
        serve.delete(APP)


@pytest.fixture(scope="module")
def tokenizer():
    from workers.engine.default_model import ensure_default_model
    from workers.engine.tokenizer import Tokenizer

    return Tokenizer.from_dir(ensure_default_model())


def test_a_short_run_produces_a_complete_report(base_url, tokenizer, tmp_path):
    from bench.records import read_records
    from bench.serve import ServeOptions, run_serve, targets_from_spec

    output_tokens = 12
    options = ServeOptions(
        url=base_url, api_key=API_KEY, rate=4.0, arrivals="poisson", num_requests=8, warmup=2,
        classes="interactive=0.5,batch=0.5", images_share=0.3, prompt_tokens=48, output_tokens=output_tokens,
        seed=3, targets=targets_from_spec(ClusterSpec.default()), out_dir=tmp_path / "out", json_path=tmp_path / "r.json",
        progress=False,
    )
    report = run_serve(options, tokenizer)

    assert json.loads((tmp_path / "r.json").read_text()) == json.loads((tmp_path / "out" / "report.json").read_text())
    for key in REPORT_KEYS:
        assert key in report and report[key] is not None, key
    assert report["num_requests"] == 6 and report["warmup_requests_excluded"] == 2
    assert report["num_failed"] == 0, report["first_error"]
    assert report["workload"]["arrivals"] == "poisson" and report["workload"]["rate_rps"] == 4.0
    assert 0 < report["ttft_p50_s"] <= report["ttft_p99_s"] <= report["e2e_max_s"]
    assert 0 <= report["fluidity_index"] <= 1 and 0 <= report["slo_attainment"] <= 1
    assert report["goodput_rps"] <= report["throughput_rps"]
    assert set(report["classes"]) <= {"interactive", "batch"}
    assert sum(c["num_requests"] for c in report["classes"].values()) == 6
    for c in report["classes"].values():
        for key in REPORT_KEYS:
            assert key in c

    records = read_records(tmp_path / "out" / "requests.jsonl")
    assert len(records) == 8 and all(r.ok and r.status == 200 for r in records)
    # ignore_eos: every request generated exactly what it asked for, by the server's count,
    # and no more chunks with text arrived than tokens.
    assert all(r.usage_completion_tokens == output_tokens for r in records)
    assert all(1 <= len(r.chunk_times_s) <= output_tokens for r in records)
    assert report["tbt_count"] == sum(len(r.chunk_times_s) - 1 for r in records if not r.warmup)
    with_images = [r for r in records if r.num_images]
    assert with_images and all(r.path == "/chat/completions" for r in with_images)
    assert all(r.sent_s >= r.arrival_s for r in records)

    for name in ("ttft_cdf.png", "tbt_cdf.png", "latency_over_time.png", "fluidity_over_time.png"):
        data = (tmp_path / "out" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, name
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "2 warm-up requests excluded" in markdown and "n=" in markdown


def test_refusals_are_recorded_not_dropped(base_url, tokenizer):
    from bench.client import run_load
    from bench.prompts import PromptFactory
    from bench.records import HTTP_ERROR
    from bench.workload import http_requests, plan

    planned, _ = plan([0.0], [(16, 4)], class_mix={"interactive": 1.0})
    requests = http_requests(planned, PromptFactory(tokenizer), model="pavana-tiny")
    [record] = asyncio.run(run_load(base_url, requests, api_key="wrong-key", progress=False))
    assert record.outcome == HTTP_ERROR and record.status == 401
    assert "API key" in record.error and record.chunk_times_s == []
