from pathlib import Path

from typer.testing import CliRunner

from cluster.spec import ClusterSpec
from controller.cli import app

SPECS = Path(__file__).resolve().parents[2] / "deploy" / "specs"
runner = CliRunner()


def test_spec_validate_accepts_a_good_spec():
    result = runner.invoke(app, ["spec", "validate", str(SPECS / "two-sites.yaml")])
    assert result.exit_code == 0, result.output
    assert "OK" in result.output


def test_spec_validate_names_the_bad_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("engine: {chunk_size: 0}\n")
    result = runner.invoke(app, ["spec", "validate", str(bad)])
    assert result.exit_code == 1
    assert "engine.chunk_size" in result.output


def test_spec_validate_keeps_brackets_in_messages(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("pools: {prefill: {max_replicas: 2, initial_replicas: 5}, decode: {}}\n")
    result = runner.invoke(app, ["spec", "validate", str(bad)])
    assert result.exit_code == 1
    assert "[min_replicas, max_replicas] = [1, 2]" in result.output


def test_spec_validate_reports_a_missing_file(tmp_path):
    result = runner.invoke(app, ["spec", "validate", str(tmp_path / "absent.yaml")])
    assert result.exit_code == 1
    assert "absent.yaml" in result.output


def test_spec_show_round_trips_a_file(tmp_path):
    result = runner.invoke(app, ["spec", "show", str(SPECS / "colocated.yaml")])
    assert result.exit_code == 0, result.output
    assert ClusterSpec.from_yaml_text(result.output) == ClusterSpec.from_yaml(SPECS / "colocated.yaml")


def test_spec_show_prints_the_defaults_as_yaml():
    result = runner.invoke(app, ["spec", "show"])
    assert result.exit_code == 0
    assert "topology: disaggregated" in result.output
