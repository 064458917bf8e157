"""The activations a config may name for a layer, by name (``activation: kwinners``)."""

from __future__ import annotations

from typing import Literal

from torch import nn

from ksparse_pl.layers import KSparse, KSparse2d, KWinners, KWinners2d

Activation = Literal["relu", "ksparse", "kwinners"]
ACTIVATIONS: tuple[str, ...] = ("relu", "ksparse", "kwinners")


def check_activation(name: str, argument: str) -> str:
    if name not in ACTIVATIONS:
        raise ValueError(f"Expected `{argument}` to be one of {ACTIVATIONS}, but got {name!r}.")
    return name


def dense_activation(name: str, units: int, k: int | None, percent_on: float, **options: float) -> nn.Module:
    """``relu``, or a top-k layer over ``units`` keeping ``k`` (or ``percent_on``) of them."""
    if name == "relu":
        return nn.ReLU()
    layer = KWinners if name == "kwinners" else KSparse
    return layer(units, k, percent_on=None if k is not None else percent_on, **options)  # type: ignore[arg-type]


def map_activation(
    name: str, shape: tuple[int, int, int], k: int | None, percent_on: float, **options: float
) -> nn.Module:
    """For conv maps ``(C, H, W)``: ``relu``, or top-k of all C*H*W values (Numenta's ``local=False``)."""
    if name == "relu":
        return nn.ReLU()
    layer = KWinners2d if name == "kwinners" else KSparse2d
    channels, height, width = shape
    return layer(
        channels,
        k,
        percent_on=None if k is not None else percent_on,
        mode="global",
        spatial_shape=(height, width),
        **options,  # type: ignore[arg-type]
    )
