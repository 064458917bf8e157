import math

import pytest
import torch

from ksparse_pl.penalties import kl_sparsity_penalty, l1_penalty, mean_activation_penalty, student_t_penalty

H = [[1.0, -2.0], [0.0, 3.0]]


def value_and_grad(fn, h, **kwargs):
    h = torch.tensor(h, requires_grad=True)
    value = fn(h, **kwargs)
    value.backward()
    return value.item(), [x for row in h.grad.tolist() for x in row]


def test_l1() -> None:
    value, grad = value_and_grad(l1_penalty, H)
    assert value == pytest.approx((3 + 3) / 2)
    assert grad == [0.5, -0.5, 0.0, 0.5]


def test_student_t() -> None:
    value, grad = value_and_grad(student_t_penalty, H)
    assert value == pytest.approx((math.log(2) + math.log(5) + 0 + math.log(10)) / 2)
    # d/dh log(1 + h^2) = 2h / (1 + h^2), halved by the batch mean
    assert grad == pytest.approx([0.5, -0.4, 0.0, 0.3])


def test_kl_sparsity() -> None:
    h = [[0.2, 0.5], [0.4, 0.5]]  # unit means 0.3, 0.5
    value, grad = value_and_grad(kl_sparsity_penalty, h, target=0.1)
    kl = lambda p, q: p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))  # noqa: E731
    assert value == pytest.approx(kl(0.1, 0.3) + kl(0.1, 0.5))
    # dKL/dq = -p/q + (1-p)/(1-q), times d q / d h = 1/B
    dq = lambda q: (-0.1 / q + 0.9 / (1 - q)) / 2  # noqa: E731
    assert grad == pytest.approx([dq(0.3), dq(0.5), dq(0.3), dq(0.5)])


def test_mean_activation() -> None:
    value, grad = value_and_grad(mean_activation_penalty, H, target=0.0)
    assert value == pytest.approx(0.5**2 + 0.5**2)
    # d/dh (p - mean)^2 = -2 (p - mean) / B
    assert grad == pytest.approx([0.5, 0.5, 0.5, 0.5])


def test_mean_activation_with_target() -> None:
    value, _ = value_and_grad(mean_activation_penalty, H, target=0.5)
    assert value == pytest.approx(0.0 + 0.0)


@pytest.mark.parametrize("target", [0.0, 1.0, -0.2])
def test_kl_bad_target(target: float) -> None:
    with pytest.raises(ValueError, match=rf"`target` to be a float in \(0, 1\).*{target}"):
        kl_sparsity_penalty(torch.rand(4, 3), target=target)


def test_integer_activations() -> None:
    with pytest.raises(TypeError, match="`h`.*floating-point"):
        l1_penalty(torch.ones(2, 2, dtype=torch.long))
