"""Experiments that replay the seed papers' comparisons in the simulator with GPU profiles:
`pavana sim experiment {sarathi,modserve,heron}`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any


def _sarathi(**kw: Any) -> dict:
    from simulator.experiments.sarathi import main

    return main(**kw)


def _modserve(**kw: Any) -> dict:
    from simulator.experiments.modserve import main

    return main(**kw)


def _heron(**kw: Any) -> dict:
    from simulator.experiments.heron import main

    return main(**kw)


EXPERIMENTS: dict[str, Callable[..., dict]] = {"sarathi": _sarathi, "modserve": _modserve, "heron": _heron}


def plot_path(json_path: Path | None, default_name: str) -> Path:
    """Plots lie beside the JSON (same name, .png), or in benchmarks/results when there is none."""
    if json_path is not None:
        return Path(json_path).with_suffix(".png")
    return Path(__file__).resolve().parents[2] / "benchmarks" / "results" / f"{default_name}.png"
