"""`pavana up`'s logging: the terminal shows warnings and Pavana's own lines, the file keeps
everything at INFO and above; `--verbose` lets the rest through to the terminal."""

from __future__ import annotations

import logging

import pytest

from controller.logs import configure


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    saved = (list(root.handlers), root.level, {n: logging.getLogger(n).level for n in ("ray", "ray.serve")})
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    for handler in saved[0]:
        root.addHandler(handler)
    root.setLevel(saved[1])
    for name, level in saved[2].items():
        logging.getLogger(name).setLevel(level)


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
