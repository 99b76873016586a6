"""`pavana up`'s logging: the terminal shows warnings and Pavana's own lines, the file keeps
everything at INFO and above; `--verbose` lets the rest through to the terminal."""

from __future__ import annotations

import logging

import pytest

from controller.logs import configure


@pytest.fixture
def restore_logging():
    """Root handlers, and Ray's loggers as a fresh process has them: once Ray has started in
    this process (other tests), its loggers carry handlers of their own and do not propagate."""
    root = logging.getLogger()
    names = ("ray", "ray.serve")
    saved_root = (list(root.handlers), root.level)
    saved = {n: (logging.getLogger(n).level, logging.getLogger(n).propagate, list(logging.getLogger(n).handlers)) for n in names}
    for name in names:
        logger = logging.getLogger(name)
        logger.propagate, logger.handlers = True, []
        logger.setLevel(logging.NOTSET)
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    for handler in saved_root[0]:
        root.addHandler(handler)
    root.setLevel(saved_root[1])
    for name, (level, propagate, handlers) in saved.items():
        logger = logging.getLogger(name)
        logger.setLevel(level)
        logger.propagate, logger.handlers = propagate, handlers


def _emit() -> None:
    logging.getLogger("controller.up").info("pavana-info")
    logging.getLogger("some.library").info("library-info")
    logging.getLogger("some.library").warning("library-warning")
    logging.getLogger("ray.serve").info("serve-info")


def test_quiet_terminal_keeps_pavanas_lines_and_warnings_and_the_file_keeps_more(tmp_path, capsys, restore_logging):
    log_file = configure(tmp_path / "up.log", verbose=False)
    _emit()
    terminal = capsys.readouterr().err
    assert "pavana-info" in terminal and "library-warning" in terminal
    assert "library-info" not in terminal and "serve-info" not in terminal
    kept = log_file.read_text()
    assert "pavana-info" in kept and "library-info" in kept and "library-warning" in kept


def test_verbose_terminal_shows_every_info_line(tmp_path, capsys, restore_logging):
    configure(tmp_path / "up.log", verbose=True)
    _emit()
    terminal = capsys.readouterr().err
    assert all(text in terminal for text in ("pavana-info", "library-info", "library-warning", "serve-info"))
