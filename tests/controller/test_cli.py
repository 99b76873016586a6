from pathlib import Path

from typer.testing import CliRunner

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


def test_spec_show_prints_the_defaults_as_yaml():
    result = runner.invoke(app, ["spec", "show"])
    assert result.exit_code == 0
    assert "topology: disaggregated" in result.output
