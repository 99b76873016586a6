"""The step's token budget that keeps time between tokens within a target (Sarathi-Serve §4.3).

Stall-free batching bounds how long a decode waits by how many tokens share its step: the
budget. Sarathi-Serve picks it offline from a profile so that a step stays within the TBT
SLO; here the engine picks it online from its own recent steps, so it holds on whatever
machine, model and load the replica meets: step time is fitted as `fixed + per_token ×
tokens` by least squares over the recent steps, and the budget is the number of tokens a
step may carry to end within `margin` of the target. Bounded below so prefills always move
(every running decode plus `MIN_PREFILL_TOKENS`) and above by the configured chunk size.

Only steps that computed prompt tokens count: they are the steps the budget shapes, and
their sizes vary (chunks, decodes joining and leaving), which a fit needs; decode-only steps
are left to the decodes alone. (The simulator's multi-step decode runs then need no record.)

Pure: steps in, a budget out; `AsyncEngine` records the steps and applies the budget.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from workers.engine.step_rates import Step

MIN_PREFILL_TOKENS = 16
MARGIN = 0.8  # of the target: step times scatter around the fit
MIN_STEPS = 8  # fewer steps than this fit nothing: keep the budget there is
BUDGET_STEPS = 64  # the recent steps the fit is made over


def fit_step_time(steps: Sequence[Step]) -> tuple[float, float] | None:
    """(fixed seconds, seconds per token) of `steps` by least squares; None with too few
    steps. Steps that all carried one size (every step filled the same budget) cannot tell
    the fixed cost from the per-token one: all of it is then charged per token, which
    overstates the cost of a token and errs toward a smaller budget — whose steps then differ
    in size, so the next fit separates the two."""
    steps = [s for s in steps if s.prefill_tokens > 0]
    if len(steps) < MIN_STEPS:
        return None
    xs = [s.prefill_tokens + s.decode_tokens for s in steps]
    ys = [s.duration_s for s in steps]
    n = len(xs)
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    var = sum((x - mean_x) ** 2 for x in xs)
    per_token = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / var if var > 0 else 0.0
    fixed = mean_y - per_token * mean_x
    if per_token <= 0 or fixed < 0 or var < (0.05 * mean_x) ** 2:  # sizes too alike, or a fit that makes no sense
        return 0.0, mean_y / mean_x
    return fixed, per_token


def token_budget(steps: Sequence[Step], *, tbt_target_s: float, chunk_size: int, running_decodes: int) -> int | None:
    """Tokens the next step may carry (decodes included) to stay within `tbt_target_s`; None
    when the steps fit no cost (the caller keeps the budget it has: steps that all filled the
    same budget say nothing new)."""
    floor = min(chunk_size, running_decodes + MIN_PREFILL_TOKENS)
    fit = fit_step_time(steps)
    if fit is None:
        return None
    fixed, per_token = fit
    fits = math.floor((MARGIN * tbt_target_s - fixed) / per_token)
    return max(floor, min(chunk_size, fits))
