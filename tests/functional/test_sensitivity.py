import pytest
import torch

from ksparse_pl.functional import idle_sensitivity, sensitivity_factors_at, sensitivity_step, sensitivity_step_at


@pytest.mark.parametrize("idle", [0, 1, 3, 7])
def test_idle_unit_factor_is_the_closed_form(idle: int) -> None:
    s_max, tau = 10.0, 2.0
    selected = torch.zeros(idle + 1, 1, dtype=torch.bool)
    selected[idle] = True
    factors, final = sensitivity_step(selected, torch.ones(1), s_max, tau)
    assert factors[idle].item() == pytest.approx(s_max - (s_max - 1) * (1 - 1 / tau) ** idle)
    assert final.item() == 1.0  # reset after the selection


def test_each_call_gets_the_decay_of_its_own_tau_and_batch_size() -> None:
    # The kernels' table of powers is kept per (batch size, tau) from one call to the next.
    for tau, idle in [(2.0, 3), (4.0, 3), (2.0, 3), (2.0, 6), (4.0, 1)]:
        selected = torch.zeros(idle + 1, 1, dtype=torch.bool)
        selected[idle] = True
        factors, final = sensitivity_step(selected, torch.ones(1), 10.0, tau)
        assert factors[idle].item() == pytest.approx(10.0 - 9.0 * (1 - 1 / tau) ** idle)
        _, idle_final = sensitivity_step(torch.zeros(idle, 1, dtype=torch.bool), torch.ones(1), 10.0, tau)
        assert idle_final.item() == pytest.approx(10.0 - 9.0 * (1 - 1 / tau) ** idle)


def test_never_selected_grows_toward_s_max() -> None:
    _, final = sensitivity_step(torch.zeros(5, 1, dtype=torch.bool), torch.tensor([2.0]), 10.0, 4.0)
    assert final.item() == pytest.approx(10 - 8 * 0.75**5)


def test_idle_run_starts_from_the_carried_state() -> None:
    selected = torch.tensor([[False], [True]])
    factors, _ = sensitivity_step(selected, torch.tensor([4.0]), 10.0, 2.0)
    assert factors[1].item() == pytest.approx(10 - 6 * 0.5)


def step_one_sample_at_a_time(selected: torch.Tensor, s: torch.Tensor, s_max: float, tau: float):
    """Reference: the recurrence, one sample per step."""
    factors = []
    for row in selected:
        factors.append(s.clone())
        s = torch.where(row, torch.ones_like(s), s_max - (s_max - s) * (1 - 1 / tau))
    return torch.stack(factors), s


@pytest.mark.parametrize("density", [0.05, 0.3, 0.9])
def test_batch_equals_batches_of_one(density: float) -> None:
    selected = torch.rand(64, 50) < density
    s0 = 1 + 9 * torch.rand(50)
    factors, final = sensitivity_step(selected, s0, 10.0, 7.0)
    ref_factors, ref_final = step_one_sample_at_a_time(selected, s0, 10.0, 7.0)
    torch.testing.assert_close(factors[selected], ref_factors[selected])
    torch.testing.assert_close(final, ref_final)


def test_idle_sensitivity_closed_form() -> None:
    assert idle_sensitivity(torch.tensor(1.0), torch.tensor(3), 10.0, 2.0).item() == 8.875


def test_pair_order_does_not_change_the_factors() -> None:
    # Pairs in sample order take the one-pass kernel on CPU; shuffled pairs take the sort by unit.
    selected = torch.rand(40, 30) < 0.2
    samples, units = selected.nonzero(as_tuple=True)
    s0 = 1 + 9 * torch.rand(30)
    in_order = sensitivity_factors_at(samples, units, s0, 40, 10.0, 5.0)
    shuffle = torch.randperm(samples.numel())
    shuffled = sensitivity_factors_at(samples[shuffle], units[shuffle], s0, 40, 10.0, 5.0)
    torch.testing.assert_close(shuffled, in_order[shuffle])
    # float64 state takes torch's arithmetic for the factors (as GPUs do), float32 the factor kernel
    torch_arithmetic = sensitivity_factors_at(samples, units, s0.double(), 40, 10.0, 5.0)
    torch.testing.assert_close(torch_arithmetic.float(), in_order)
    ref_factors, _ = step_one_sample_at_a_time(selected, s0, 10.0, 5.0)
    torch.testing.assert_close(in_order, ref_factors[selected])


def test_step_at_gives_one_answer_for_any_pair_order() -> None:
    # Pairs in sample order take the one-pass kernel on CPU (factors and state), shuffled ones torch's arithmetic.
    selected = torch.rand(40, 30) < 0.2
    samples, units = selected.nonzero(as_tuple=True)
    s0 = 1 + 9 * torch.rand(30)
    factors, after = sensitivity_step_at(samples, units, s0, 40, 10.0, 5.0)
    shuffle = torch.randperm(samples.numel())
    shuffled, shuffled_after = sensitivity_step_at(samples[shuffle], units[shuffle], s0, 40, 10.0, 5.0)
    assert torch.equal(shuffled, factors[shuffle])
    assert torch.equal(shuffled_after, after)
    ref_factors, ref_after = step_one_sample_at_a_time(selected, s0, 10.0, 5.0)
    torch.testing.assert_close(factors, ref_factors[selected])
    torch.testing.assert_close(after, ref_after)
