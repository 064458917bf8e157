import pytest
import torch

from ksparse_pl.metrics import FractionOfVarianceUnexplained, fraction_of_variance_unexplained


def test_mean_predictor_scores_one_and_perfect_zero() -> None:
    x = torch.randn(50, 8)
    assert fraction_of_variance_unexplained(x.mean(0).expand_as(x), x).item() == pytest.approx(1.0)
    assert fraction_of_variance_unexplained(x, x).item() == 0.0


def test_by_hand() -> None:
    target = torch.tensor([[0.0], [2.0]])  # mean 1, total variance 2
    assert fraction_of_variance_unexplained(torch.tensor([[1.0], [1.0]]), target).item() == pytest.approx(1.0)
    assert fraction_of_variance_unexplained(torch.tensor([[0.0], [1.0]]), target).item() == pytest.approx(0.5)


def test_module_over_batches_equals_functional_over_all() -> None:
    preds, target = torch.randn(60, 5, 2), torch.randn(60, 5, 2)
    metric = FractionOfVarianceUnexplained()
    for p, t in zip(preds.split(7), target.split(7), strict=True):
        metric.update(p, t)
    torch.testing.assert_close(metric.compute(), fraction_of_variance_unexplained(preds, target))


def test_shape_mismatch() -> None:
    with pytest.raises(ValueError, match=r"same shape.*\(2, 3\).*\(2, 4\)"):
        fraction_of_variance_unexplained(torch.zeros(2, 3), torch.zeros(2, 4))
