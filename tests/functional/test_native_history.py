import pytest
import torch

from ksparse_pl.functional import last_selected, sensitivity_after
from ksparse_pl.functional.native import native_enabled
from ksparse_pl.functional.native_history import factors_and_state, previous_selection, sensitivity_factors
from ksparse_pl.functional.sensitivity import _decay, _previous_selection, _since_last, idle_sensitivity

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
    with pytest.raises(ValueError, match=r"int64 CPU `units`, but got \(2,\) torch.int32"):
        previous_selection(torch.tensor([0, 1]), torch.tensor([0, 1], dtype=torch.int32), 5)


def test_sensitivity_factors_by_hand() -> None:
    samples, units = torch.tensor([0, 2, 2, 3]), torch.tensor([1, 0, 1, 1])
    previous = previous_selection(samples, units, 2)
    decay = 0.5 ** torch.arange(4.0)  # tau = 2
    factors = sensitivity_factors(samples, units, previous, torch.tensor([4.0, 1.0]), decay, 10.0)
    # unit 1 idle 0 from 1; unit 0 idle 2 from 4; unit 1 idle 1 from 1 (after sample 0); idle 0 from 1
    assert factors.tolist() == [1.0, 8.5, 5.5, 1.0]


def test_sensitivity_factors_match_the_closed_form_in_torch() -> None:
    samples, units = (torch.rand(64, 40) < 0.2).nonzero(as_tuple=True)
    sensitivity = 1 + 9 * torch.rand(40)
    previous = previous_selection(samples, units, 40)
    factors = sensitivity_factors(samples, units, previous, sensitivity, (1 - 1 / 7) ** torch.arange(64.0), 10.0)
    seen = previous >= 0
    idle = torch.where(seen, samples - previous - 1, samples)
    s0 = torch.where(seen, 1.0, sensitivity[units])
    torch.testing.assert_close(factors, idle_sensitivity(s0, idle, 10.0, 7.0))


def test_sensitivity_factors_refuse_a_sample_beyond_the_decay_table() -> None:
    samples, units = torch.tensor([0, 4]), torch.tensor([0, 1])
    previous = previous_selection(samples, units, 2)
    with pytest.raises(IndexError, match=r"outside \[0, 4\)"):
        sensitivity_factors(samples, units, previous, torch.ones(2), torch.ones(4), 10.0)
    with pytest.raises(IndexError, match="not before its own"):  # would read before the table
        sensitivity_factors(samples, units, torch.tensor([-1, 6]), torch.ones(2), torch.ones(8), 10.0)
    with pytest.raises(ValueError, match="float32 CPU `decay`"):
        sensitivity_factors(samples, units, previous, torch.ones(2), torch.ones(5, dtype=torch.float64), 10.0)
    with pytest.raises(ValueError, match=r"one `previous` per pair \(2\), but got 1"):
        sensitivity_factors(samples, units, previous[:1], torch.ones(2), torch.ones(5), 10.0)


def test_factors_and_state_by_hand() -> None:
    samples, units = torch.tensor([0, 2, 2, 3]), torch.tensor([1, 0, 1, 1])
    decay = 0.5 ** torch.arange(5.0)  # tau = 2, a batch of 4
    factors, after = factors_and_state(samples, units, torch.tensor([4.0, 1.0, 2.0]), decay, 10.0)
    assert factors.tolist() == [1.0, 8.5, 5.5, 1.0]  # as in test_sensitivity_factors_by_hand
    # unit 0 idle 1 since sample 2; unit 1 selected last; unit 2 idle all 4 samples from 2
    assert after.tolist() == [5.5, 1.0, 9.5]


def test_factors_and_state_equal_torch_arithmetic_bit_for_bit() -> None:
    # torch's path of sensitivity_step_at: the sort by unit, the closed form over the pairs, sensitivity_after
    samples, units = (torch.rand(64, 40) < 0.2).nonzero(as_tuple=True)
    sensitivity, s_max, tau = 1 + 9 * torch.rand(40), 10.0, 7.0
    factors, after = factors_and_state(samples, units, sensitivity, _decay(torch.arange(65), tau), s_max)
    shuffle = torch.randperm(samples.numel())  # out of sample order: torch's sort answers
    previous = _previous_selection(samples[shuffle], units[shuffle], 40, 64)
    expected = _since_last(previous, samples[shuffle], sensitivity[units[shuffle]], s_max, tau)
    assert torch.equal(factors[shuffle], expected)
    assert torch.equal(after, sensitivity_after(last_selected(samples, units, 40), 64, sensitivity, s_max, tau))


def test_factors_and_state_leave_pairs_out_of_sample_order_to_the_caller() -> None:
    assert factors_and_state(torch.tensor([1, 0]), torch.tensor([0, 1]), torch.ones(2), torch.ones(3), 10.0) is None


def test_factors_and_state_refuse_bad_pairs() -> None:
    ones = torch.ones(2)
    with pytest.raises(IndexError, match="listed twice"):
        factors_and_state(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 1]), ones, torch.ones(3), 10.0)
    with pytest.raises(IndexError, match=r"a sample outside \[0, 2\)"):
        factors_and_state(torch.tensor([0, 2]), torch.tensor([0, 1]), ones, torch.ones(3), 10.0)
    with pytest.raises(IndexError, match=r"a unit\s+outside \[0, 2\)"):
        factors_and_state(torch.tensor([0, 1]), torch.tensor([0, 2]), ones, torch.ones(3), 10.0)
    with pytest.raises(ValueError, match=r"of one length, but got 2 and 1"):
        factors_and_state(torch.tensor([0, 1]), torch.tensor([0]), ones, torch.ones(3), 10.0)
    with pytest.raises(ValueError, match="float32 CPU `sensitivity`"):
        factors_and_state(torch.tensor([0, 1]), torch.tensor([0, 1]), ones.double(), torch.ones(3), 10.0)


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def batch_of_pairs(batch: int, n: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The (sample, unit) pairs of k random units per sample, in sample order, as a top-k layer gives them."""
    units = torch.rand(batch, n).argsort(dim=1)[:, :k].sort(dim=1).values
    return torch.arange(batch).repeat_interleave(k), units.reshape(-1)


@pytest.mark.parametrize("threads", [1, 2, 3, 8])
def test_factors_and_state_split_over_threads_equal_torch_arithmetic_bit_for_bit(threads: int, restore_threads) -> None:
    # 2047 samples of 16 of 64 units: 32752 pairs, enough for 8 chunks (each has at least 4 * n pairs and 4096
    # pairs of work). A chunk's first selection of a unit takes its factor from the chunks before it.
    torch.manual_seed(threads)
    samples, units = batch_of_pairs(2047, 64, 16)
    sensitivity, s_max, tau = 1 + 9 * torch.rand(64), 10.0, 300.0
    torch.set_num_threads(threads)
    factors, after = factors_and_state(samples, units, sensitivity, _decay(torch.arange(2048), tau), s_max)
    previous = _previous_selection(samples, units, 64, 2047)
    expected = _since_last(previous, samples, sensitivity[units], s_max, tau)
    assert torch.equal(factors, expected)
    assert torch.equal(after, sensitivity_after(last_selected(samples, units, 64), 2047, sensitivity, s_max, tau))


def test_bad_pairs_in_any_chunk_give_the_status_of_the_first(restore_threads) -> None:
    torch.set_num_threads(4)  # four chunks of about 8188 pairs
    samples, units = batch_of_pairs(2047, 64, 16)
    split = samples.numel() // 4  # where the second chunk would start but for whole samples: inside sample 511
    assert samples[split] == samples[split - 1] == 511
    sensitivity, decay = torch.ones(64), torch.ones(2048)

    def refused(bad_units: torch.Tensor) -> str:
        with pytest.raises(IndexError) as error:
            factors_and_state(samples, bad_units, sensitivity, decay, 10.0)
        return str(error.value)

    across = units.clone()
    across[split] = across[split - 1]  # the same pair on both sides of the split
    assert "listed twice" in refused(across)
    beyond = units.clone()
    beyond[-1] = 64
    assert "a unit" in refused(beyond)
    both = across.clone()
    both[-1] = 64  # in the last chunk, after the pair listed twice
    assert "listed twice" in refused(both)
    back = samples.clone()
    back[16 * 1800] = 5  # the samples decrease at the start of a sample: torch's sort answers
    assert factors_and_state(back, units, sensitivity, decay, 10.0) is None
