"""Argument checks shared by the functional API and the layers, so every error reads the same."""

from __future__ import annotations

import math

from torch import Tensor


def check_k(k: int, n: int, name: str = "k") -> int:
    """Return ``k`` if it is an int in ``[1, n]``, else raise naming ``name``, its value and the range."""
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
        raise ValueError(f"Expected `{name}` to be an int in [1, {n}] (the layer width), but got {k!r}.")
    return k


def k_from_percent_on(percent_on: float, n: int) -> int:
    """``round(n * percent_on)``, checking ``percent_on`` is in (0, 1] and that it leaves at least one unit."""
    if isinstance(percent_on, bool) or not isinstance(percent_on, (int, float)) or not 0 < percent_on <= 1:
        raise ValueError(f"Expected `percent_on` to be a float in (0, 1], but got {percent_on!r}.")
    k = round(n * percent_on)
    if k < 1:
        raise ValueError(
            f"`percent_on`={percent_on} of n={n} units rounds to k={k}; expected at least one active unit."
        )
    return k


def resolve_k(n: int, k: int | None, percent_on: float | None, default_percent_on: float | None = None) -> int:
    """The k a layer of width ``n`` keeps, from exactly one of ``k`` and ``percent_on``."""
    if k is not None and percent_on is not None:
        raise ValueError(
            f"Expected one of `k` and `percent_on`, not both, but got k={k!r} and percent_on={percent_on!r}."
        )
    if k is not None:
        return check_k(k, n)
    if percent_on is None:
        if default_percent_on is None:
            raise ValueError("Expected one of `k` or `percent_on`, but got neither.")
        percent_on = default_percent_on
    return k_from_percent_on(percent_on, n)


def check_positive_int(value: int, name: str, owner: str | None = None) -> int:
    """Return ``value`` if it is an int >= 1, else raise naming ``name`` (and the ``owner`` callback or class)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        prefix = f"{owner}: expected" if owner else "Expected"
        raise ValueError(f"{prefix} `{name}` to be an int >= 1, but got {value!r}.")
    return value


def check_positive(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value > 0 and math.isfinite(value)):
        raise ValueError(f"Expected `{name}` to be a finite number > 0, but got {value!r}.")
    return float(value)


def check_at_least(value: float, minimum: float, name: str) -> float:
    finite = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not (finite and value >= minimum):
        raise ValueError(f"Expected `{name}` to be a finite number >= {minimum}, but got {value!r}.")
    return float(value)


def check_float_input(x: Tensor, name: str = "input") -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"Expected `{name}` to be a torch.Tensor, but got {type(x).__name__}.")
    if not x.is_floating_point():
        raise TypeError(f"Expected `{name}` to be a floating-point tensor, but got dtype {x.dtype}.")


def inference_k(k: int, factor: float, n: int) -> int:
    """Makhzani's alpha / Numenta's k_inference_factor: ``min(n, round(k * factor))``."""
    return min(n, round(k * factor))
