"""Where `pavana up`'s log lines go: the terminal shows warnings and Pavana's own lines, a file
keeps everything at INFO and above, and `--verbose` lets Ray's and Serve's INFO lines through
to the terminal as well.

Ray's worker processes (the replicas, the Serve controller) write their own logs under Ray's
session folder; without `--verbose` they are not echoed to the terminal (`log_to_driver`).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

# Pavana's own loggers are named after its packages (`logging.getLogger(__name__)`).
PAVANA_PACKAGES = ("autoscaler", "bench", "benchmarks", "cluster", "controller", "router", "simulator", "workers")
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Ray's and Serve's driver-side loggers, quiet unless verbose.
THIRD_PARTY_QUIET = ("ray", "ray.serve", "ray.data", "ray.train", "ray.tune", "filelock", "urllib3")


def is_pavanas(name: str) -> bool:
    return name.split(".", 1)[0] in PAVANA_PACKAGES


class TerminalFilter(logging.Filter):
    """Warnings and worse from anyone; INFO only from Pavana itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or is_pavanas(record.name)


def ray_logs_dir() -> Path:
    """Ray's session logs (the default temporary root; Ray links the latest session there)."""
    return Path(tempfile.gettempdir()) / "ray" / "session_latest" / "logs"


def configure(log_file: Path, *, verbose: bool) -> Path:
    """Set up the terminal and the file handlers for one `pavana up`; returns the file."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    for handler in list(root.handlers):
        root.removeHandler(handler)
    file_handler = logging.FileHandler(log_file, mode="w", encoding="utf-8")
    file_handler.setFormatter(logging.Formatter(FORMAT))
    root.addHandler(file_handler)
    terminal = logging.StreamHandler()
    terminal.setFormatter(logging.Formatter(FORMAT))
    if not verbose:
        terminal.addFilter(TerminalFilter())
        # Importing Ray Serve sets its logger to INFO: import it first, then quiet it.
        import ray.serve  # noqa: F401

        for name in THIRD_PARTY_QUIET:
            logging.getLogger(name).setLevel(logging.WARNING)
    root.addHandler(terminal)
    return log_file
