"""Where `pavana up` listens: HTTP and gRPC on 127.0.0.1 by default; inference without keys
never beyond the loopback interface."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from controller.cli import app
from controller.grpc_host import address_on
from controller.up import check_exposure, is_loopback


@pytest.mark.parametrize(
    ("host", "address", "expected"),
    [("127.0.0.1", "[::]:9000", "127.0.0.1:9000"), ("::1", "[::]:9000", "[::1]:9000"), ("0.0.0.0", "[::]:50051", "0.0.0.0:50051")],
)
def test_the_grpc_proxy_address_takes_the_host(host, address, expected):
    assert address_on(host, address) == expected


@pytest.mark.parametrize(("host", "loopback"), [("127.0.0.1", True), ("::1", True), ("localhost", True), ("0.0.0.0", False), ("10.1.2.3", False)])
def test_loopback_hosts(host, loopback):
    assert is_loopback(host) is loopback


def test_no_keys_on_all_interfaces_is_refused_before_anything_starts():
    with pytest.raises(ValueError, match="--insecure"):
        check_exposure("0.0.0.0", insecure=True)
    check_exposure("0.0.0.0", insecure=False)
    check_exposure("127.0.0.1", insecure=True)
    result = CliRunner().invoke(app, ["up", "--host", "0.0.0.0", "--insecure"])
    assert result.exit_code == 1 and "would open inference to the network" in " ".join(result.output.split())
