"""The command line: `pavana profile --quick` times the real engine and writes a CSV the fit
reads; `pavana sim run` writes per-request results and a plot; bad input is a clear error."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from controller.cli import app
from simulator.cost_model import BatchShape, LinearCostModel, read_profile_csv

runner = CliRunner()


def test_profile_quick_writes_a_csv_the_fit_reads(tmp_path):
    out = tmp_path / "profile.csv"
    result = runner.invoke(app, ["profile", "--quick", "--out", str(out), "--repeats", "1"])
    assert result.exit_code == 0, result.output
    shapes, seconds, meta = read_profile_csv(out)
    assert len(shapes) >= 10 and all(t > 0 for t in seconds)
    assert meta["kv_bytes_per_token"] > 0
    assert {s.prefill_tokens for s in shapes} >= {0, 64, 256} and max(s.decode_tokens for s in shapes) >= 8
    fit = LinearCostModel.from_profile_csv(out)
    assert min(fit.intercept, fit.per_prefill_token, fit.per_decode_token, fit.per_attended) >= 0
    assert fit.batch_time(BatchShape(256, 0, 256 * 257 / 2, 0, 1)) > fit.batch_time(BatchShape(0, 0, 0, 0, 0))
    assert "Fitted cost model" in result.output


def azure_csv(path, n=40):
    rows = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    rows += [f"2023-11-16 18:00:{i // 2:02d}.{5 * (i % 2)}000000,{200 + 37 * i},{5 + i % 7}" for i in range(n)]
    path.write_text("\n".join(rows) + "\n")
    return path


def test_sim_run_writes_json_and_plot(tmp_path):
    out = tmp_path / "run.json"
    result = runner.invoke(app, ["sim", "run", "--spec", "deploy/specs/colocated.yaml", "--trace", str(azure_csv(tmp_path / "t.csv")),
                                 "--cost", "gpu:h100", "--image-share", "0.5", "--json", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["requests"] == 40 and data["outcomes"] == {"ok": 40}
    assert len(data["requests_detail"]) == 40 and all(r["ttft_s"] > 0 for r in data["requests_detail"])
    assert any(r["images"] for r in data["requests_detail"])
    assert data["tbt_s"]["p99"] > 0 and data["cluster"]["replica_seconds"]["local"] > 0
    assert out.with_suffix(".png").stat().st_size > 1000
    assert "SLO attainment" in result.output


def test_sim_run_refuses_a_bad_trace(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("when,what\n1,2\n")
    result = runner.invoke(app, ["sim", "run", "--spec", "deploy/specs/colocated.yaml", "--trace", str(bad)])
    assert result.exit_code == 1
    assert "neither Azure" in result.output


def test_unknown_experiment_is_named():
    result = runner.invoke(app, ["sim", "experiment", "vidur"])
    assert result.exit_code == 1 and "unknown 'vidur'" in result.output


def test_sweep_runs_every_policy_at_every_rate(tmp_path):
    from cluster.spec import ClusterSpec
    from simulator.sweep import run_sweep

    spec = ClusterSpec.parse({"topology": "colocated", "pools": {"colocated": {"min_replicas": 1, "max_replicas": 1, "initial_replicas": 1}}})
    trace = azure_csv(tmp_path / "t.csv", n=60)
    result = run_sweep(spec, str(trace), "gpu:a100", [1.0, 4.0], ["sarathi", "prefill_first"], duration_s=30.0)
    points = {(p["policy"], p["rate"]): p for p in result["points"]}
    assert set(points) == {(p, r) for p in ("sarathi", "prefill_first") for r in (1.0, 4.0)}
    assert all(p["outcomes"].get("ok") == p["requests"] for p in points.values())
    # four times the arrival rate is served no faster
    assert points[("sarathi", 4.0)]["e2e_s"]["p99"] >= points[("sarathi", 1.0)]["e2e_s"]["p99"] * 0.99


def test_whole_steps_are_timed_with_the_batch_each_one_ran(tiny_llama_dir):
    """Calibration on real `LLMEngine.step` calls: one shape per step, the decode tokens add up
    to what the requests generated, and the engine's scheduler is its own again afterwards."""
    from simulator.profile import make_engine, time_steps
    from simulator.workload import TraceRequest

    engine = make_engine(tiny_llama_dir, num_kv_blocks=256)
    requests = [TraceRequest(f"r{i}", 0.01 * i, 24, 6) for i in range(3)]
    shapes, seconds = time_steps(engine, requests)
    assert len(shapes) == len(seconds) > 0 and all(s > 0 for s in seconds)
    # Each request's first token comes from its prefill step; the other five from decodes.
    assert sum(s.decode_tokens for s in shapes) == 3 * 5
    assert sum(s.prefill_tokens for s in shapes) == 3 * 24
    assert "schedule" not in vars(engine.scheduler) and not engine.has_unfinished()
