"""Reports from hand-made records: warm-up left out and stated, failures counted against the
SLO, every percentile with its count, plots and files written."""

from __future__ import annotations

import json

import pytest

from bench.metrics import SLOTarget
from bench.records import HTTP_ERROR, OK, RequestRecord, read_records, write_records
from bench.report import build_report, to_markdown, write_report

TARGETS = {"interactive": SLOTarget(ttft_s=1.0, tbt_s=0.25), "batch": SLOTarget(ttft_s=10.0, tbt_s=1.0)}
WORKLOAD = {"trace": "conv.csv", "rate_scale": 2.0}


def _record(index, cls, arrival, times, *, outcome=OK, warmup=False, status=200, error=None):
    return RequestRecord(index=index, qos_class=cls, path="/completions", arrival_s=arrival, prompt_tokens=10, max_tokens=len(times) or 4,
                         warmup=warmup, sent_s=arrival + 0.001 * (index + 1), chunk_times_s=times, usage_completion_tokens=len(times),
                         status=status, outcome=outcome, error=error, done_s=(times[-1] if times else arrival + 0.1))


@pytest.fixture
def records():
    return [
        _record(0, "interactive", 0.0, [5.0, 5.25], warmup=True),  # slow warm-up: must not count
        _record(1, "interactive", 1.0, [1.5, 1.75, 2.0]),  # meets
        _record(2, "interactive", 2.0, [2.5, 3.5]),  # a 1 s gap: misses its TBT target
        _record(3, "batch", 3.0, [5.0, 5.5, 6.0]),  # meets the loose batch targets
        _record(4, "batch", 4.0, [], outcome=HTTP_ERROR, status=503, error='{"error": "queue full"}'),
    ]


def test_report_numbers(records):
    report = build_report(records, TARGETS, workload=WORKLOAD)
    assert report["workload"] == WORKLOAD
    assert report["warmup_requests_excluded"] == 1 and report["num_requests"] == 4 and report["num_failed"] == 1
    assert report["ttft_count"] == 3 and report["ttft_p50_s"] == 0.5  # TTFTs 0.5, 0.5, 2.0
    assert report["tbt_count"] == 2 + 1 + 2 and report["tbt_max_s"] == 1.0
    assert report["slo_attainment"] == 0.5  # requests 1 and 3 of four
    assert report["window_s"] == 5.0  # arrival 1.0 to the last token at 6.0
    assert report["goodput_rps"] == pytest.approx(2 / 5.0)
    assert report["failures"] == {"http_error 503": 1} and "queue full" in report["first_error"]
    assert report["send_lag_max_s"] == pytest.approx(0.005)
    interactive, batch = report["classes"]["interactive"], report["classes"]["batch"]
    assert interactive["num_requests"] == 2 and interactive["slo_attainment"] == 0.5 and interactive["slo_tbt_s"] == 0.25
    assert batch["num_failed"] == 1 and batch["fluidity_index"] == pytest.approx(0.5)  # 1.0 and the failure's 0
    # request 2: its second token was due at 2.0 + 1.0 + 0.25 = 3.25 and came at 3.5, one TBT
    # period late, so two deadlines passed unserved: 1 met of 3.
    assert interactive["fluidity_index"] == pytest.approx((1.0 + 1 / 3) / 2)


def test_unknown_class_and_all_warmup_are_refused(records):
    with pytest.raises(ValueError, match=r"no SLO targets for QoS classes \['batch'\]"):
        build_report(records, {"interactive": TARGETS["interactive"]}, workload=WORKLOAD)
    with pytest.raises(ValueError, match="warm-up"):
        build_report([_record(0, "interactive", 0.0, [1.0], warmup=True)], TARGETS, workload=WORKLOAD)


def test_files_markdown_and_plots(records, tmp_path):
    report = write_report(tmp_path / "out", records, TARGETS, workload=WORKLOAD, json_path=tmp_path / "copy.json")
    assert json.loads((tmp_path / "copy.json").read_text())["slo_attainment"] == 0.5
    assert len(report["plots"]) == 4
    for path in report["plots"]:
        assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    markdown = to_markdown(report)
    assert "1 warm-up requests excluded" in markdown and "trace = conv.csv" in markdown
    assert "n=5" in markdown  # the TBT percentiles' sample count
    assert "http_error 503: 1" in markdown
    write_records(tmp_path / "r.jsonl", records)
    assert read_records(tmp_path / "r.jsonl") == records
