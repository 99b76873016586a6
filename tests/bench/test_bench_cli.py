"""`pavana bench serve` refuses bad options with a message naming them, before any request."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from controller.cli import app

# A port nothing listens on: these runs must fail before they would connect.
URL = "http://127.0.0.1:9/v1"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give --trace FILE or --rate R"),
        (["--rate", "2"], "give --duration S or --num-requests N"),
        (["--rate", "2", "--num-requests", "5", "--arrivals", "uniform"], "arrivals: must be 'poisson' or 'gamma'"),
        (["--rate", "2", "--num-requests", "5", "--classes", "interactive=0.5"], "shares must sum to 1"),
        (["--rate", "2", "--num-requests", "5", "--classes", "gold=1"], "no SLO targets for ['gold']"),
        (["--rate", "2", "--num-requests", "5", "--slo", "interactive=fast"], "expected class=TTFT:TBT"),
    ],
)
def test_bad_options_exit_1_with_the_reason(args, message):
    result = CliRunner().invoke(app, ["bench", "serve", "--url", URL, *args])
    assert result.exit_code == 1, result.output
    assert message in " ".join(result.output.split())


def test_unreachable_server_is_reported_not_raised():
    result = CliRunner().invoke(app, ["bench", "serve", "--url", URL, "--rate", "2", "--num-requests", "3"])
    assert result.exit_code == 1 and "connect" in result.output.lower()


# -- every documented combination builds its workload -------------------------------------------
TRACE_ROWS = 40  # one request every 0.5 s in the file below


@pytest.fixture(scope="module")
def small_trace(tmp_path_factory):
    """An Azure-format trace: 40 requests, 0.5 s apart, lengths varying by row."""
    path = tmp_path_factory.mktemp("trace") / "trace.csv"
    lines = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    for i in range(TRACE_ROWS):
        lines.append(f"2023-11-16 18:15:{i // 2:02d}.{'5' if i % 2 else '0'}000000,{20 + i},{4 + i % 5}")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tokenizer():
    from workers.engine.default_model import ensure_default_model
    from workers.engine.tokenizer import Tokenizer

    return Tokenizer.from_dir(ensure_default_model())


def _build(tokenizer, **fields):
    from bench.serve import ServeOptions, build_requests
    from bench.metrics import SLOTarget

    options = ServeOptions(url=URL, targets={"interactive": SLOTarget(ttft_s=1.0, tbt_s=0.1)}, progress=False, **fields)
    return build_requests(options, tokenizer, "pavana-tiny", max_context=2048)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        # synthetic arrivals: a number of requests, or every arrival within a duration
        (dict(rate=2.0, num_requests=7), lambda reqs, w: len(reqs) == 7),
        (dict(rate=4.0, duration_s=5.0), lambda reqs, w: 5 <= len(reqs) <= 45 and w["rate_rps"] == 4.0),
        (dict(rate=4.0, duration_s=5.0, arrivals="gamma", cv=3.0), lambda reqs, w: len(reqs) >= 1 and w["cv"] == 3.0),
        # a trace's own arrivals: all rows, the first N, cut at a duration, sped up
        (dict(trace="T"), lambda reqs, w: len(reqs) == TRACE_ROWS and w["arrivals"] == "trace"),
        (dict(trace="T", num_requests=10), lambda reqs, w: len(reqs) == 10),
        (dict(trace="T", duration_s=5.0), lambda reqs, w: len(reqs) == 10),  # arrivals at 0, 0.5, …, 4.5 s
        (dict(trace="T", rate_scale=2.0), lambda reqs, w: len(reqs) == TRACE_ROWS and abs(w["offered_rate_rps"] - 4.0) < 1e-6),
        (dict(trace="T", trace_start=30), lambda reqs, w: len(reqs) == TRACE_ROWS - 30),
        # a trace's lengths at synthetic arrivals: as many as its rows, N of them, or a duration's worth
        (dict(trace="T", rate=2.0), lambda reqs, w: len(reqs) == TRACE_ROWS and w["rate_rps"] == 2.0),
        (dict(trace="T", rate=2.0, num_requests=5), lambda reqs, w: len(reqs) == 5),
        (dict(trace="T", rate=2.0, duration_s=30.0), lambda reqs, w: 20 <= len(reqs) <= 120),
    ],
)
def test_each_documented_combination_of_options_builds_its_workload(fields, expected, tokenizer, small_trace):
    if fields.get("trace") == "T":
        fields = {**fields, "trace": small_trace}
    requests, workload = _build(tokenizer, **fields)
    assert expected(requests, workload), (len(requests), workload)
    assert workload["num_requests"] == len(requests)


def test_synthetic_arrivals_refuse_both_a_duration_and_a_count(tokenizer):
    from bench.workload import WorkloadError

    with pytest.raises(WorkloadError, match="not both"):
        _build(tokenizer, rate=2.0, duration_s=5.0, num_requests=5)
