"""Batch unpacking shared by the LightningModules."""

from __future__ import annotations

from typing import Any

from torch import Tensor


def inputs_of(batch: Any) -> Tensor:
    """The inputs of a batch given as a tensor or as ``(inputs, targets, ...)``."""
    if isinstance(batch, Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor):
        return batch[0]
    raise TypeError(f"Expected a batch that is a Tensor or a (inputs, ...) tuple/list, but got {type(batch).__name__}.")
