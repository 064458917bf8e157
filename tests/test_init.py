import math

import pytest
import torch
from torch import nn

from ksparse_pl import KSparse, KSparse2d, KWinners, SparseWeights
from ksparse_pl.init import glorot_normal_, he_normal_, lsuv_, sparse_aware_init_


@pytest.mark.parametrize("fraction", [1.0, 0.25, 0.02])
def test_he_std_uses_effective_fan_in(fraction: float) -> None:
    w = he_normal_(torch.empty(2000, 500), active_fraction=fraction)
    assert w.std().item() == pytest.approx(math.sqrt(2 / (500 * fraction)), rel=0.02)


def test_glorot_std_uses_effective_fan_in() -> None:
    w = glorot_normal_(torch.empty(300, 800), active_fraction=0.1)
    assert w.std().item() == pytest.approx(math.sqrt(2 / (80 + 300)), rel=0.02)


def test_conv_fan_in_counts_the_kernel() -> None:
    w = he_normal_(torch.empty(400, 16, 3, 3), active_fraction=0.5)
    assert w.std().item() == pytest.approx(math.sqrt(2 / (16 * 9 * 0.5)), rel=0.03)


def test_sparse_aware_init_walks_the_model() -> None:
    net = nn.Sequential(nn.Linear(64, 1000), KSparse(1000, k=20), nn.Linear(1000, 1000), nn.ReLU(), nn.Linear(1000, 5))
    sparse_aware_init_(net, "he")
    assert net[0].weight.std().item() == pytest.approx(math.sqrt(2 / 64), rel=0.03)
    assert net[2].weight.std().item() == pytest.approx(math.sqrt(2 / 20), rel=0.03)
    assert net[4].weight.std().item() == pytest.approx(math.sqrt(2 / 1000), rel=0.05)
    assert net[0].bias.eq(0).all()


def test_sparse_aware_init_keeps_sparse_weights_masked_and_counts_their_fan_in() -> None:
    net = nn.Sequential(SparseWeights(nn.Linear(1000, 800), 0.7), KSparse(800, k=4), nn.Linear(800, 3))
    sparse_aware_init_(net)
    weight = net[0].module.weight
    assert (weight[net[0].mask == 0] == 0).all()
    assert weight[net[0].mask == 1].std().item() == pytest.approx(math.sqrt(2 / 300), rel=0.03)


def test_bad_fraction_and_scheme() -> None:
    with pytest.raises(ValueError, match=r"`active_fraction`.*\(0, 1\].*1.5"):
        he_normal_(torch.empty(3, 3), active_fraction=1.5)
    with pytest.raises(ValueError, match="`scheme`.*'lecun'"):
        sparse_aware_init_(nn.Linear(2, 2), "lecun")  # type: ignore[arg-type]


def mlp() -> nn.Module:
    return nn.Sequential(
        nn.Linear(20, 200),
        KWinners(200, percent_on=0.05, sensitivity=True),
        nn.Linear(200, 100),
        nn.ReLU(),
        SparseWeights(nn.Linear(100, 50), 0.5),
        KSparse(50, k=5),
        nn.Linear(50, 10),
    )


def cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3),
        KSparse2d(16, k=4),
        nn.Conv2d(16, 8, 3),
        nn.BatchNorm2d(8),
        KSparse2d(8, k=20, mode="global", spatial_shape=(4, 4)),
        nn.Flatten(),
        nn.Linear(128, 10),
    )


@pytest.mark.parametrize(("make", "batch"), [(mlp, (512, 20)), (cnn, (128, 1, 8, 8))], ids=["mlp", "cnn"])
def test_lsuv_unit_variance_everywhere(make, batch) -> None:
    net = make()
    x = torch.randn(*batch)
    report = lsuv_(net, x, tol=0.05)
    assert list(report) == [str(i) for i, m in enumerate(net) if isinstance(m, (nn.Linear, nn.Conv2d, SparseWeights))]
    outputs = []
    hooks = [
        net.get_submodule(name).register_forward_hook(lambda _m, _i, o: outputs.append(o.var().item()))
        for name in report
    ]
    with torch.no_grad():
        net.train()(x)
    for h in hooks:
        h.remove()
    assert len(outputs) == len(report)
    assert all(abs(v - 1) < 0.05 for v in outputs), outputs


def test_lsuv_leaves_layer_state_untouched() -> None:
    net = mlp()
    before = {k: v.clone() for k, v in net.state_dict().items() if "duty" in k or "sensitivity" in k or "seen" in k}
    lsuv_(net, torch.randn(64, 20))
    for name, value in before.items():
        assert torch.equal(net.state_dict()[name], value), name


def test_lsuv_starts_after_sparse_layers_from_cottonwood_scaling() -> None:
    """Orthonormal rows have singular values 1; LSUV only divides by sqrt(variance) afterwards, so the
    final singular values reveal the starting scale: s^2 = start^2 * after / before."""
    m, k = 400, 4
    net = nn.Sequential(nn.Linear(20, m), KSparse(m, k=k), nn.Linear(m, 10))
    report = lsuv_(net, torch.randn(1024, 20), tol=0.05)
    for name, start_sq in (("0", 1.0), ("2", m / k)):
        before, after = report[name]
        singular = torch.linalg.svdvals(net.get_submodule(name).weight)
        torch.testing.assert_close(
            singular.square(), torch.full_like(singular, start_sq * after / before), rtol=1e-3, atol=0
        )


def test_lsuv_masks_survive() -> None:
    net = mlp()
    lsuv_(net, torch.randn(64, 20))
    sparse = net[4]
    assert (sparse.module.weight[sparse.mask == 0] == 0).all()


def test_lsuv_dead_layer_raises() -> None:
    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="layer '0' has output variance 0"):
        lsuv_(net, torch.zeros(8, 4))


def test_lsuv_bad_arguments() -> None:
    with pytest.raises(ValueError, match="`tol`.*2"):
        lsuv_(nn.Linear(2, 2), torch.randn(4, 2), tol=2)
    with pytest.raises(ValueError, match="no Linear/Conv"):
        lsuv_(nn.ReLU(), torch.randn(4, 2))
