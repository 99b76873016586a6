"""The simulator's controller: the memory carried from round to round and the one call the
live reconcile loop makes, `autoscaler.round.plan_round`. Nothing here decides; `SimCluster`
builds the observations and carries out the results, and `replay` feeds it observations that a
live cluster recorded (`pavana up --record`), which must give the same results field for field.
"""

from __future__ import annotations

from collections.abc import Iterable

from autoscaler.round import Observation, RoundMemory, RoundResult, RoundSettings, plan_round


class SimController:
    def __init__(self, settings: RoundSettings, memory: RoundMemory | None = None) -> None:
        self.settings = settings
        self.memory = memory or RoundMemory()
        self.results: list[RoundResult] = []

    def round(self, observation: Observation) -> RoundResult:
        result = plan_round(observation, self.memory, self.settings)
        self.memory = result.memory
        self.results.append(result)
        return result


def replay(settings: RoundSettings, observations: Iterable[Observation], memory: RoundMemory | None = None) -> list[RoundResult]:
    """Run recorded observations through the simulator's controller, from `memory` on."""
    controller = SimController(settings, memory)
    return [controller.round(o) for o in observations]
