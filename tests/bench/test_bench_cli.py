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
