"""The LLaVA multimodal projector, and the feature selection in front of it.

The projector maps vision features into the language model's embedding space, so its output
is what replaces the image placeholder tokens in the prompt: linear ▸ activation ▸ linear,
named as `transformers`' `LlavaMultiModalProjector` (`linear_1`, `linear_2`).
"""

from __future__ import annotations

import torch
from torch import nn

from workers.vision.clip import activation

SELECT_STRATEGIES = ("default", "full")


class Projector(nn.Module):
    def __init__(self, in_features: int, out_features: int, act: str, bias: bool = True) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_features, out_features, bias=bias)
        self.linear_2 = nn.Linear(out_features, out_features, bias=bias)
        self.act = activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(x)))


def select_features(states: list[torch.Tensor], strategy: str) -> torch.Tensor:
    """The chosen layers' states, concatenated on the feature axis (LLaVA's multi-layer
    features); "default" drops the class token (the patch grid only), "full" keeps it."""
    if strategy not in SELECT_STRATEGIES:
        raise ValueError(f"vision_feature_select_strategy: {strategy!r} is not supported; choose one of {SELECT_STRATEGIES}")
    if strategy == "default":
        states = [s[:, 1:] for s in states]
    return states[0] if len(states) == 1 else torch.cat(states, dim=-1)
