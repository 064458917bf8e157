import pytest
import torch

from ksparse_pl.functional import update_duty_cycle
from ksparse_pl.functional.native import native_enabled
from ksparse_pl.functional.native_duty_cycle import add_wins_

pytestmark = pytest.mark.skipif(not native_enabled(), reason="no C compiler for the native kernels")


@pytest.mark.parametrize("positions", [1, 3])
@pytest.mark.parametrize("period", [50, 1000], ids=["batches longer than the period", "long period"])
def test_kernel_state_is_bitwise_the_torch_arithmetic(positions: int, period: int) -> None:
    n = 300
    duty, count, seen = torch.rand(n), torch.randint(0, 9, (n,)), torch.tensor(7)
    ref_duty, ref_count, ref_seen = duty.clone(), count.clone(), seen.clone()
    for batch in (64, 17, 64, 64, 1):
        counts = torch.randint(0, batch * positions + 1, (n,))
        add_wins_(duty, count, seen, counts, batch, positions, period)
        ref_count += counts
        ref_seen += batch
        ref_duty = update_duty_cycle(ref_duty, counts / positions, batch, ref_seen, period)
        assert torch.equal(duty, ref_duty)
    assert torch.equal(count, ref_count) and torch.equal(seen, ref_seen)


def test_first_batch_by_hand() -> None:
    duty, count, seen = torch.zeros(2), torch.zeros(2, dtype=torch.int64), torch.tensor(0)
    add_wins_(duty, count, seen, torch.tensor([3, 1]), 4, 1, 1000)
    assert duty.tolist() == [0.75, 0.25] and count.tolist() == [3, 1] and seen.item() == 4


def test_wrong_dtype_is_refused() -> None:
    with pytest.raises(ValueError, match=r"contiguous \(2,\) torch.int64 CPU `counts`, but got \(2,\) torch.int32"):
        add_wins_(
            torch.zeros(2),
            torch.zeros(2, dtype=torch.int64),
            torch.tensor(0),
            torch.ones(2, dtype=torch.int32),
            4,
            1,
            9,
        )


def test_a_strided_vector_is_refused() -> None:
    with pytest.raises(ValueError, match=r"`duty_cycle`, but got \(2,\) torch.float32 on cpu \(contiguous: False\)"):
        add_wins_(
            torch.zeros(4)[::2],
            torch.zeros(2, dtype=torch.int64),
            torch.tensor(0),
            torch.ones(2, dtype=torch.int64),
            4,
            1,
            9,
        )


def test_a_state_saved_for_backward_and_then_updated_is_caught_by_autograd() -> None:
    duty, count, seen = torch.zeros(2), torch.zeros(2, dtype=torch.int64), torch.tensor(0)
    weight = torch.ones(2, requires_grad=True)
    loss = (weight * duty).sum()  # saves duty for the backward
    add_wins_(duty, count, seen, torch.tensor([3, 1]), 4, 1, 1000)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()
    assert count._version > 0 and seen._version > 0
