"""Helpers shared by the simulator's tests: a cost model that records every batch it prices,
and a sink that collects what replicas report."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from simulator.cost_model import BatchShape


@dataclass
class RecordingCost:
    """A constant step time; remembers each batch's shape (and checks a hook, when set)."""

    step_s: float = 0.01
    encode_s_per_image: float = 0.0
    kv_bytes_per_token: float = 0.0
    name: str = "recording"
    shapes: list[BatchShape] = field(default_factory=list)
    on_batch: object = None

    def batch_time(self, shape: BatchShape) -> float:
        self.shapes.append(shape)
        if self.on_batch:
            self.on_batch()
        return self.step_s

    def encode_time(self, num_images: int) -> float:
        return self.encode_s_per_image * num_images


@dataclass
class Sink:
    finished: list = field(default_factory=list)
    handoffs: list = field(default_factory=list)
    encoded: list = field(default_factory=list)

    def on_finished(self, req, now_s, replica):
        req.finish_s, req.outcome = now_s, "ok"
        self.finished.append(req)

    def on_handoff(self, req, now_s, replica):
        self.handoffs.append(req)

    def on_encoded(self, req, now_s, replica):
        self.encoded.append(req)

    def on_idle(self, replica):
        pass


@pytest.fixture
def sink() -> Sink:
    return Sink()
