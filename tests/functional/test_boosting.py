import math

import torch

from ksparse_pl.functional import boost_factors, update_duty_cycle, winner_counts


def test_boost_factors_by_hand() -> None:
    factors = boost_factors(torch.tensor([0.1, 0.3]), 0.2, 2.0)
    torch.testing.assert_close(factors, torch.tensor([math.exp(0.2), math.exp(-0.2)]))


def test_a_tensor_target_gives_the_factors_of_its_float32_value_and_leaves_the_duty_cycle() -> None:
    torch.manual_seed(0)
    for strength in (torch.tensor(1.7), 0.3):
        duty = torch.rand(1000) * 0.2
        before = duty.clone()
        target = 0.05 + 0.1 * torch.rand(()).item()
        by_tensor = boost_factors(duty, torch.tensor(target), strength)
        assert torch.equal(by_tensor, boost_factors(duty, target, strength))
        assert torch.equal(by_tensor, torch.exp(strength * (target - duty)))  # Numenta's expression, bit for bit
        assert torch.equal(duty, before)


def test_zero_strength_is_identity() -> None:
    assert boost_factors(torch.rand(5), 0.3, 0.0).eq(1).all()


def test_first_batch_duty_cycle_is_count_over_batch() -> None:
    counts = torch.tensor([3.0, 0.0, 1.0])
    torch.testing.assert_close(update_duty_cycle(torch.full((3,), 0.7), counts, 4, 4, 1000), counts / 4)


def test_period_formula_after_first_batch() -> None:
    d = torch.tensor([0.5, 0.25])
    # samples_seen 12 > period 10 -> p = 10: d = (d * (10 - 4) + c) / 10
    out = update_duty_cycle(d, torch.tensor([2.0, 0.0]), 4, 12, 10)
    torch.testing.assert_close(out, torch.tensor([(0.5 * 6 + 2) / 10, (0.25 * 6) / 10]))
    # samples_seen 8 < period 1000 -> p = 8
    out = update_duty_cycle(d, torch.tensor([2.0, 0.0]), 4, 8, 1000)
    torch.testing.assert_close(out, torch.tensor([(0.5 * 4 + 2) / 8, (0.25 * 4) / 8]))


def test_batch_larger_than_period_takes_the_batch_rate() -> None:
    out = update_duty_cycle(torch.tensor([0.9]), torch.tensor([8.0]), 16, 48, 10)
    torch.testing.assert_close(out, torch.tensor([0.5]))


def test_an_empty_batch_leaves_the_duty_cycle_as_it_is_even_before_any_sample() -> None:
    duty = torch.tensor([0.0, 0.25])
    for seen in (0, 7):  # at 0 samples seen, p = 0 made it 0 / 0 = NaN for good
        assert torch.equal(update_duty_cycle(duty, torch.zeros(2), 0, seen, 1000), duty)


def test_winner_counts() -> None:
    assert winner_counts(torch.tensor([[0, 2], [2, 3]]), 5).tolist() == [1, 0, 2, 1, 0]
