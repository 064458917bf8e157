import pytest
import torch
from torch import nn

from ksparse_pl import SparseWeights


@pytest.mark.parametrize("module", [nn.Linear(50, 7), nn.Conv2d(4, 6, kernel_size=3)], ids=["linear", "conv2d"])
@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.7, 0.95])
def test_exact_nonzeros_per_unit(module: nn.Module, sparsity: float) -> None:
    SparseWeights(module, sparsity)
    fan_in = module.weight[0].numel()
    nonzero = (module.weight != 0).flatten(1).sum(dim=1)
    assert nonzero.eq(round((1 - sparsity) * fan_in)).all()


def test_generator_makes_the_mask_reproducible() -> None:
    a = SparseWeights(nn.Linear(20, 5), 0.5, generator=torch.Generator().manual_seed(3))
    b = SparseWeights(nn.Linear(20, 5), 0.5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.mask, b.mask)


@pytest.mark.parametrize(
    "make_optimizer",
    [
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-2),
        lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
    ],
    ids=["sgd_momentum", "adamw_weight_decay"],
)
@pytest.mark.parametrize("kind", ["linear", "conv2d"])
def test_masked_weights_stay_exactly_zero(make_optimizer, kind: str) -> None:
    if kind == "linear":
        layer, x = SparseWeights(nn.Linear(12, 6), 0.6), torch.randn(16, 12)
    else:
        layer, x = SparseWeights(nn.Conv2d(3, 4, 3), 0.6), torch.randn(4, 3, 6, 6)
    optimizer = make_optimizer(layer.parameters())
    for _ in range(100):
        optimizer.zero_grad()
        layer(x).square().mean().backward()
        optimizer.step()
    weight = layer.module.weight
    assert (weight[layer.mask == 0] == 0).all()
    assert (weight[layer.mask == 1] != 0).all()


def test_forward_equals_dense_module_with_masked_weight() -> None:
    layer = SparseWeights(nn.Linear(10, 3), 0.5)
    x = torch.randn(4, 10)
    torch.testing.assert_close(layer(x), x @ (layer.module.weight * layer.mask).t() + layer.module.bias)


def test_state_dict_round_trip() -> None:
    layer = SparseWeights(nn.Conv2d(2, 3, 3), 0.5)
    other = SparseWeights(nn.Conv2d(2, 3, 3), 0.5)
    other.load_state_dict(layer.state_dict())
    assert torch.equal(other.mask, layer.mask)
    assert torch.equal(other.module.weight, layer.module.weight)


def test_wraps_only_linear_and_conv2d() -> None:
    with pytest.raises(TypeError, match="nn.Linear or nn.Conv2d.*Conv1d"):
        SparseWeights(nn.Conv1d(2, 3, 3), 0.5)


@pytest.mark.parametrize("sparsity", [-0.1, 1.0, 1.5])
def test_bad_sparsity(sparsity: float) -> None:
    with pytest.raises(ValueError, match=rf"`sparsity` to be a float in \[0, 1\).*{sparsity}"):
        SparseWeights(nn.Linear(4, 2), sparsity)


def test_sparsity_leaving_no_weight() -> None:
    with pytest.raises(ValueError, match="fan_in=4 leaves 0"):
        SparseWeights(nn.Linear(4, 2), 0.9)
