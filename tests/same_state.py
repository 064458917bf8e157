"""A check the test folders share (importable because ``tests/conftest.py`` puts ``tests/`` on the path)."""

from __future__ import annotations

import torch
from torch import nn


def assert_same_state(
    expected: nn.Module, actual: nn.Module, rtol: float | None = None, atol: float | None = None
) -> None:
    """``actual``'s ``state_dict`` entry by entry against ``expected``'s, moved to its device: floating-point tensors
    within ``rtol`` / ``atol`` (torch.testing's defaults for their dtype without them), integer and boolean tensors
    and a layer's extra state exactly."""
    for (name, want), (_, got) in zip(expected.state_dict().items(), actual.state_dict().items(), strict=True):
        if not isinstance(want, torch.Tensor):  # a layer's extra state
            assert got == want, name
        elif want.is_floating_point():
            torch.testing.assert_close(got.to(want.device), want, rtol=rtol, atol=atol, msg=name)
        else:
            assert torch.equal(got.to(want.device), want), name
