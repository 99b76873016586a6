"""Pavana's HAProxy configuration: Ray Serve's real template, rewritten
(`controller/haproxy_config.py`), rendered by Ray's own code, accepted by the real HAProxy
binary, and answering as Pavana would in front of a stand-in server that has no replica."""

from __future__ import annotations

import json
import socket
import subprocess
import time

import httpx
import pytest

from controller import haproxy_config
from controller.haproxy_config import BUFSIZE, MAX_HEADERS, OPEN_BINDS, on_frontend_host, pavana_template
from controller.ingress_mode import free_port, haproxy_binary
from router.limits import DEFAULT_LIMITS


@pytest.fixture()
def ray_template():
    from ray.serve._private import haproxy_templates

    return haproxy_templates.HAPROXY_CONFIG_TEMPLATE


def render(template: str, tmp_path, port: int) -> str:
    """The configuration Ray Serve would write for a node with no backends yet."""
    from ray.serve._private import haproxy
    from ray.serve.config import HTTPOptions

    state = tmp_path / "state"
    cfg = haproxy.HAProxyConfig(
        socket_path=str(state / "admin.sock"), server_state_base=str(state), server_state_file=str(state / "server-state"),
        metrics_socket_path=str(state / "metrics.sock"), stats_port=free_port(), metrics_port=free_port(),
        http_options=HTTPOptions(host="127.0.0.1", port=port), is_head=False,
    )
    cfg.error_file_path = str(tmp_path / "ray-500.http")
    original = haproxy.HAPROXY_CONFIG_TEMPLATE
    haproxy.HAPROXY_CONFIG_TEMPLATE = template
    try:
        api = haproxy.HAProxyApi(cfg, config_file_path=str(tmp_path / "haproxy.cfg"))
        api._generate_config_file_internal()
    finally:
        haproxy.HAPROXY_CONFIG_TEMPLATE = original
    return (tmp_path / "haproxy.cfg").read_text()


def test_haproxy_pages_bind_where_pavana_serves_in_rays_real_template(ray_template):
    bound = on_frontend_host(ray_template)
    for line, replacement in OPEN_BINDS.items():
        assert line not in bound and replacement in bound
    assert on_frontend_host(bound) == bound  # applying twice changes nothing
    with pytest.raises(RuntimeError, match="template has changed"):
        on_frontend_host("frontend stats\n  bind 0.0.0.0:8404\n")


def test_the_rewritten_template_renders_a_configuration_haproxy_accepts(ray_template, tmp_path):
    template = pavana_template(ray_template, tmp_path / "errors")
    assert pavana_template(template, tmp_path / "errors") == template
    config = render(template, tmp_path, free_port())
    assert f"tune.bufsize {BUFSIZE}" in config and f"tune.http.maxhdr {MAX_HEADERS}" in config
    assert "ray-500.http" not in config
    for status in (400, 408, 502, 503, 504):
        assert f"errorfile {status} {tmp_path / 'errors'}/{status}.http" in config
    checked = subprocess.run([haproxy_binary(), "-c", "-f", str(tmp_path / "haproxy.cfg")], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert BUFSIZE > DEFAULT_LIMITS.max_header_bytes + 1024 and MAX_HEADERS > DEFAULT_LIMITS.max_headers


def test_haproxy_with_no_replica_answers_503_in_openais_shape(ray_template, tmp_path):
    """An HAProxy with no server behind a path (a pool of ingress replicas all gone) answers
    503 with Retry-After and OpenAI's error body, where Ray's template answered a plain 500."""
    port = free_port()
    config = render(pavana_template(ray_template, tmp_path / "errors"), tmp_path, port)
    # One backend with a server that does not listen: what HAProxy sees while replicas restart.
    dead = free_port()
    config += f"backend pavana\n    server gone 127.0.0.1:{dead}\n"
    config = config.replace("    default_backend default_backend", "    use_backend pavana if { path_beg /v1 }\n    default_backend default_backend")
    (tmp_path / "haproxy.cfg").write_text(config)
    (tmp_path / "state").mkdir(exist_ok=True)
    proc = subprocess.Popen([haproxy_binary(), "-f", str(tmp_path / "haproxy.cfg")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None, proc.stdout.read().decode()
                assert time.monotonic() < deadline, "HAProxy did not listen"
                time.sleep(0.1)
        response = httpx.post(f"http://127.0.0.1:{port}/v1/completions", json={"prompt": "hi"}, timeout=30)
        assert response.status_code == 503, response.text
        assert response.headers["retry-after"] == str(haproxy_config.RETRY_AFTER_S)
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["code"] == "unavailable"
        # Not HTTP at all: refused with 400, the connection closed (HAProxy 2.8 writes its own page).
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
            answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_the_error_files_are_whole_http_responses(tmp_path):
    for status, path in haproxy_config.write_error_files(tmp_path).items():
        head, body = path.read_bytes().split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 ") and f"Content-Length: {len(body)}".encode() in head
        error = json.loads(body)["error"]
        assert error["type"] and error["code"], (status, error)
