import pytest
import torch

from ksparse_pl import KSparse2d, KWinners2d
from ksparse_pl.functional import sensitivity_step


def test_channel_mode_keeps_k_channels_at_every_position() -> None:
    out = KSparse2d(8, k=3)(torch.randn(2, 8, 5, 6))
    assert (out != 0).sum(dim=1).eq(3).all()


def test_channel_mode_matches_per_position_top_k() -> None:
    x = torch.randn(2, 6, 3, 3)
    out = KSparse2d(6, k=2)(x)
    for b in range(2):
        for i in range(3):
            for j in range(3):
                column = x[b, :, i, j]
                keep = column.topk(2).indices
                expected = torch.zeros_like(column).index_copy(0, keep, column[keep])
                torch.testing.assert_close(out[b, :, i, j], expected)


def test_global_mode_keeps_k_of_the_whole_map() -> None:
    layer = KSparse2d(4, k=7, mode="global", spatial_shape=(3, 3))
    x = torch.randn(5, 4, 3, 3)
    out = layer(x)
    assert (out != 0).flatten(1).sum(dim=1).eq(7).all()
    threshold = x.flatten(1).topk(7).values[:, -1:]
    assert torch.equal(out.flatten(1) != 0, x.flatten(1) >= threshold)


def test_global_percent_on_counts_c_h_w() -> None:
    assert KSparse2d(32, percent_on=0.1, mode="global", spatial_shape=(12, 12)).k == round(32 * 144 * 0.1)


def test_per_channel_duty_cycle_by_hand() -> None:
    layer = KSparse2d(3, k=1)
    x = torch.zeros(2, 3, 1, 2)
    x[0, 0] = 1.0  # sample 0: channel 0 wins at both positions
    x[1, 1, 0, 0] = 1.0  # sample 1: channel 1 at one position, channel 2 at the other
    x[1, 2, 0, 1] = 1.0
    layer(x)
    torch.testing.assert_close(layer.duty_cycle, torch.tensor([0.5, 0.25, 0.25]))


def test_global_per_channel_duty_cycle() -> None:
    layer = KSparse2d(2, k=1, mode="global", spatial_shape=(1, 2))
    layer(torch.tensor([[[[5.0, 0.0]], [[0.0, 0.0]]], [[[0.0, 0.0]], [[0.0, 5.0]]]]))
    torch.testing.assert_close(layer.duty_cycle, torch.tensor([0.25, 0.25]))


@pytest.mark.parametrize("mode", ["channel", "global"])
def test_channel_sensitivity_scales_all_winning_positions(mode: str) -> None:
    s_max, tau, idle = 10.0, 2.0, 3
    kwargs = {"spatial_shape": (1, 2)} if mode == "global" else {}
    layer = KSparse2d(2, k=1, mode=mode, sensitivity=True, s_max=s_max, tau=tau, **kwargs)
    busy = torch.zeros(idle, 2, 1, 2)
    busy[:, 0] = 1.0
    layer(busy)
    x = torch.zeros(1, 2, 1, 2)
    x[0, 1, 0, 1] = 1.0
    x.requires_grad_()
    layer(x).sum().backward()
    assert x.grad[0, 1, 0, 1].item() == pytest.approx(s_max - (s_max - 1) * (1 - 1 / tau) ** idle)
    assert layer.sensitivity[1].item() == 1.0


# the channel kernel's factor per sample and channel; the row kernel on a channels-last copy; torch's ops
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "float64"])
def test_channel_sensitivity_over_batches_follows_the_functional_step(layout: str) -> None:
    torch.manual_seed(0)
    s_max, tau = 5.0, 2.0
    layer = KWinners2d(6, k=2, sensitivity=True, s_max=s_max, tau=tau)
    sensitivity, largest_factor = torch.ones(6), 0.0
    rarely = torch.tensor([0.0, 0.0, 0.0, 0.0, -1.5, -1.5]).view(1, 6, 1, 1)  # channels 4, 5 mostly idle
    for _ in range(5):
        x = torch.randn(3, 6, 2, 3) + rarely
        if layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        x = (x.double() if layout == "float64" else x).requires_grad_()
        grad_out = torch.randn(x.shape, dtype=x.dtype)
        out = layer(x)
        out.backward(grad_out)
        won = out.detach() != 0  # no input is exactly 0
        factors, sensitivity = sensitivity_step(won.flatten(2).any(2), sensitivity, s_max, tau)
        largest_factor = max(largest_factor, factors.max().item())
        torch.testing.assert_close(x.grad, grad_out * won * factors[:, :, None, None].to(x.dtype))
        torch.testing.assert_close(layer.sensitivity, sensitivity)
    assert largest_factor > 1  # some channel came back from idle


@pytest.mark.parametrize("mode", ["channel", "global"])
def test_boosting_targets_per_channel(mode: str) -> None:
    kwargs = {"spatial_shape": (2, 2)} if mode == "global" else {}
    layer = KWinners2d(10, mode=mode, **kwargs)
    for _ in range(20):
        layer(torch.randn(8, 10, 2, 2) + torch.linspace(0, 2, 10).view(1, 10, 1, 1))
    # boosting pushes usage toward uniform: no channel should be starved
    assert layer.duty_cycle.min() > 0


@pytest.mark.parametrize("threshold_mode", [False, True])
def test_eval_k_inference_and_threshold(threshold_mode: bool) -> None:
    layer = KWinners2d(20, threshold_mode=threshold_mode).eval()
    assert (layer(torch.randn(2, 20, 3, 3)) != 0).sum(dim=1).eq(3).all()


def test_state_dict_round_trip() -> None:
    layer = KWinners2d(6, percent_on=0.5, sensitivity=True)
    layer(torch.randn(4, 6, 3, 3))
    other = KWinners2d(6, percent_on=0.5, sensitivity=True)
    other.load_state_dict(layer.state_dict())
    torch.testing.assert_close(other.duty_cycle, layer.duty_cycle)
    torch.testing.assert_close(other.sensitivity, layer.sensitivity)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"k": 9}, r"`k` to be an int in \[1, 8\].*9"),
        ({"k": 1, "mode": "local"}, r"`mode`.*'local'"),
        ({"k": 1, "mode": "global"}, "spatial_shape"),
        ({"k": 1, "spatial_shape": (3,)}, r"`spatial_shape`.*\(3,\)"),
        ({"k": 300, "mode": "global", "spatial_shape": (2, 2)}, r"\[1, 32\].*300"),
    ],
)
def test_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        KSparse2d(8, **kwargs)


def test_wrong_input_shape() -> None:
    with pytest.raises(ValueError, match=r"\(B, C=8, H, W\).*\(2, 7, 3, 3\)"):
        KSparse2d(8, k=2)(torch.randn(2, 7, 3, 3))
    with pytest.raises(ValueError, match=r"\(B, C=8, 3, 3\).*\(2, 8, 4, 4\)"):
        KSparse2d(8, k=2, mode="global", spatial_shape=(3, 3))(torch.randn(2, 8, 4, 4))
