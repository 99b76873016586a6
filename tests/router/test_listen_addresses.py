"""The served cluster listens on the loopback interface only, over HTTP and gRPC alike (Ray
Serve binds its gRPC proxy to every interface unless Pavana rebinds it)."""

from __future__ import annotations

import ipaddress

import psutil
import pytest

pytestmark = pytest.mark.ray


def listening_hosts(port: int) -> set[str]:
    return {c.laddr.ip for c in psutil.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN and c.laddr.port == port}


def loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def test_http_and_grpc_listen_on_loopback_only(served):
    for port in (served.spec.http_port, served.spec.grpc_port):
        hosts = listening_hosts(port)
        assert hosts, f"nothing listens on port {port}"
        assert all(loopback(ip) for ip in hosts), (port, hosts)
