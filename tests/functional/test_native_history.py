import pytest
import torch

from ksparse_pl.functional.native import native_enabled
from ksparse_pl.functional.native_history import previous_selection

pytestmark = pytest.mark.skipif(not native_enabled(), reason="no C compiler for the native kernels")


def test_previous_selection_of_each_pair_by_hand() -> None:
    samples = torch.tensor([0, 0, 1, 2, 2, 4])
    units = torch.tensor([3, 1, 3, 1, 0, 3])
    assert previous_selection(samples, units, 4).tolist() == [-1, -1, 0, 0, -1, 1]


def test_pairs_out_of_sample_order_are_left_to_the_caller() -> None:
    assert previous_selection(torch.tensor([1, 0]), torch.tensor([0, 0]), 1) is None


def test_random_pairs_match_a_scan_of_the_pairs() -> None:
    samples, units = (torch.rand(50, 20) < 0.3).nonzero(as_tuple=True)
    expected = []
    for p in range(samples.numel()):
        earlier = samples[:p][units[:p] == units[p]]
        expected.append(int(earlier.max()) if earlier.numel() else -1)
    assert previous_selection(samples, units, 20).tolist() == expected


@pytest.mark.parametrize("bad", [-1, 5])
def test_a_unit_outside_the_layer_raises(bad: int) -> None:
    with pytest.raises(IndexError, match=r"outside \[0, 5\)"):
        previous_selection(torch.tensor([0, 1]), torch.tensor([2, bad]), 5)


def test_pairs_must_be_two_vectors_of_one_length() -> None:
    with pytest.raises(ValueError, match=r"shapes \(2,\) and \(3,\)"):
        previous_selection(torch.tensor([0, 1]), torch.tensor([0, 1, 2]), 5)


def test_pairs_must_be_int64() -> None:
    with pytest.raises(ValueError, match=r"int64 CPU `units`, but got torch.int32"):
        previous_selection(torch.tensor([0, 1]), torch.tensor([0, 1], dtype=torch.int32), 5)
