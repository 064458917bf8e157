"""The annealing curves shared by the schedule callbacks."""

from __future__ import annotations

import math
from typing import Literal

ScheduleKind = Literal["constant", "linear", "cosine", "exponential"]
SCHEDULES: tuple[str, ...] = ("constant", "linear", "cosine", "exponential")


def scheduled_value(kind: str, start: float, end: float, progress: float) -> float:
    r"""The value at ``progress`` in [0, 1] of a curve from ``start`` to ``end``.

    ``constant``: ``end`` throughout; ``linear``: :math:`a + (b - a)\,t`; ``cosine``:
    :math:`a + (b - a)(1 - \cos \pi t)/2`; ``exponential``: :math:`a\,(b/a)^t` (both positive).

    Example:
        >>> scheduled_value("linear", 10.0, 2.0, 0.25), scheduled_value("exponential", 8.0, 2.0, 0.5)
        (8.0, 4.0)
    """
    t = min(max(progress, 0.0), 1.0)
    if kind == "constant":
        return end
    if kind == "linear":
        return start + (end - start) * t
    if kind == "cosine":
        return start + (end - start) * (1 - math.cos(math.pi * t)) / 2
    if kind == "exponential":
        return start * (end / start) ** t
    raise ValueError(f"Expected a schedule in {SCHEDULES}, but got {kind!r}.")


def check_schedule(callback: str, kind: str) -> None:
    if kind not in SCHEDULES:
        raise ValueError(f"{callback}: expected `schedule` to be one of {SCHEDULES}, but got {kind!r}.")
