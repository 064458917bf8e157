import pytest
import torch

from ksparse_pl.functional import update_duty_cycle
from ksparse_pl.functional.native import native_enabled
from ksparse_pl.functional.native_duty_cycle import WinState, add_wins_
from ksparse_pl.functional.native_topk import select_rows
from ksparse_pl.functional.selection import select_rows_adding_wins

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


def test_an_empty_batch_leaves_the_state_as_it_is_even_before_any_sample() -> None:
    duty, count, seen = torch.zeros(2), torch.zeros(2, dtype=torch.int64), torch.tensor(0)
    add_wins_(duty, count, seen, torch.zeros(2, dtype=torch.int64), 0, 1, 1000)
    assert duty.tolist() == [0.0, 0.0] and count.tolist() == [0, 0] and seen.item() == 0


def new_state(n: int, period: int) -> WinState:
    return WinState(torch.rand(n), torch.randint(0, 9, (n,)), torch.tensor(7), period)


def cloned(state: WinState) -> WinState:
    return WinState(*(t.clone() for t in state[:3]), state.period)


@pytest.mark.parametrize("shape", [(37, 300), (2, 5, 300)], ids=["rows", "leading dims"])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("boosted", [False, True])
@pytest.mark.parametrize("counts", [False, True], ids=["no counts", "counts"])
def test_select_rows_adds_its_win_counts_to_a_state_as_add_wins_does(
    shape: tuple[int, ...], relu: bool, boosted: bool, counts: bool
) -> None:
    x, boost = torch.randn(shape), torch.rand(300) + 0.5 if boosted else None
    rows = x.numel() // 300
    state = new_state(300, period=50)
    expected = cloned(state)
    for _ in range(3):  # past the period: the old duty cycle weighs in
        plain = select_rows(x, 20, boost=boost, output=True, relu=relu, counts=True)
        adding = select_rows(x, 20, boost=boost, output=True, relu=relu, counts=counts, win_state=state)
        add_wins_(*expected[:3], plain.counts, rows, 1, 50)
        assert torch.equal(adding.output, plain.output) and torch.equal(adding.bits, plain.bits)
        assert torch.equal(adding.indices, plain.indices)
        assert adding.counts is None if not counts else torch.equal(adding.counts, plain.counts)
        for got, want in zip(state[:3], expected[:3], strict=True):
            assert torch.equal(got, want)
    assert int(state.samples_seen) == 7 + 3 * rows


def test_select_rows_of_no_rows_leaves_the_state_as_it_is() -> None:
    state = WinState(torch.zeros(4), torch.zeros(4, dtype=torch.int64), torch.tensor(0), 1000)
    selection = select_rows(torch.randn(0, 4), 2, output=True, win_state=state)
    assert selection.output.shape == (0, 4)
    assert state.duty_cycle.tolist() == [0.0] * 4 and int(state.samples_seen) == 0


def test_select_rows_refuses_a_state_it_cannot_update() -> None:
    state = WinState(torch.zeros(4), torch.zeros(4, dtype=torch.int32), torch.tensor(0), 1000)
    with pytest.raises(ValueError, match=r"select_rows: expected a contiguous \(4,\) torch.int64 CPU `selection_co"):
        select_rows(torch.randn(3, 4), 2, win_state=state)
    state = WinState(torch.zeros(5), torch.zeros(5, dtype=torch.int64), torch.tensor(0), 1000)
    with pytest.raises(ValueError, match=r"select_rows: expected a contiguous \(4,\) torch.float32 CPU `duty_cycle`"):
        select_rows(torch.randn(3, 4), 2, win_state=state)
    state = WinState(torch.zeros(4), torch.zeros(4, dtype=torch.int64), torch.tensor(0.0), 1000)
    with pytest.raises(ValueError, match=r"select_rows: expected an int64 CPU scalar `samples_seen`, but got torch.fl"):
        select_rows(torch.randn(3, 4), 2, win_state=state)


def test_a_state_saved_for_backward_and_then_updated_by_a_selection_is_caught_by_autograd() -> None:
    state = WinState(torch.zeros(4), torch.zeros(4, dtype=torch.int64), torch.tensor(0), 1000)
    weight = torch.ones(4, requires_grad=True)
    loss = (weight * state.duty_cycle).sum()
    select_rows(torch.randn(3, 4), 2, win_state=state)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_the_layers_selection_adding_wins_refuses_what_the_kernels_do_not_serve() -> None:
    state = WinState(torch.zeros(4), torch.zeros(4, dtype=torch.int64), torch.tensor(0), 1000)
    with pytest.raises(ValueError, match=r"select_rows_adding_wins: expected a float32 CPU `x` .* got torch.float64"):
        select_rows_adding_wins(torch.randn(3, 4, dtype=torch.float64), 2, state)
    with pytest.raises(ValueError, match="`k`"):
        select_rows_adding_wins(torch.randn(3, 4), 5, state)
    assert int(state.samples_seen) == 0
