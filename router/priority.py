"""vLLM's `priority` field on Pavana's QoS classes.

vLLM orders waiting requests by `priority`, lower first, 0 by default. Pavana's classes carry
the same kind of number (`QoSClass.priority`, lower is more important), so a request's
`priority` picks the most important class whose priority is at least the one asked for:
with the default classes, 0 is `interactive`, 1 `standard`, 2 and above `batch`.

Like the `x-pavana-qos-class` header, it may only demote: a class more important than the one
the request's API key (or header, or the spec's default) gives it is never chosen; a
`priority` that would promote leaves the class as it is, so that a client sending vLLM's
default of 0 with a batch key is served, as batch.
"""

from __future__ import annotations

from collections.abc import Mapping

from router.admission import ClassPolicy


def class_for_priority(base: str, priority: int | None, policies: Mapping[str, ClassPolicy]) -> str:
    if priority is None:
        return base
    floor = max(priority, policies[base].priority)
    if floor == policies[base].priority:
        return base
    eligible = [p for p in policies.values() if p.priority >= floor]
    if not eligible:  # beyond the least important class: that class
        return max(policies.values(), key=lambda p: p.priority).name
    best = min(p.priority for p in eligible)
    return next(p.name for p in policies.values() if p.priority == best)
