"""Checks shared by the datamodules' train/val/test splits."""

from __future__ import annotations


def check_split_fractions(val_fraction: float, test_fraction: float) -> None:
    """Both in (0, 1) and leaving training data; a ``test_fraction`` of 0 means no test split is cut."""
    checks = [("val_fraction", val_fraction)] + ([("test_fraction", test_fraction)] if test_fraction != 0 else [])
    for name, value in checks:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
            raise ValueError(f"Expected `{name}` to be a float in (0, 1), but got {value!r}.")
    if val_fraction + test_fraction >= 1:
        raise ValueError(
            f"Expected `val_fraction + test_fraction` < 1 to leave training data, but got "
            f"{val_fraction} + {test_fraction}."
        )
