import math

import pytest
import torch
from same_state import assert_same_state
from torch import nn

from ksparse_pl import KSparse, KWinners
from ksparse_pl.functional import boost_factors, keep_winners
from ksparse_pl.functional.native import native_enabled


def test_exactly_k_per_sample_any_leading_shape() -> None:
    layer = KSparse(32, k=5)
    out = layer(torch.randn(3, 4, 32))
    assert out.shape == (3, 4, 32)
    assert (out != 0).sum(dim=-1).eq(5).all()


def test_percent_on() -> None:
    assert KSparse(200, percent_on=0.05).k == 10


def test_eval_uses_k_inference_and_keeps_state() -> None:
    layer = KSparse(40, k=4, k_inference_factor=1.5, boost_strength=1.0, sensitivity=True)
    assert layer.k_inference == 6
    layer.eval()
    before = {k: v.clone() for k, v in layer.state_dict().items() if isinstance(v, torch.Tensor)}
    out = layer(torch.randn(8, 40))
    assert (out != 0).sum(dim=1).eq(6).all()
    for name, value in layer.state_dict().items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(value, before[name], msg=name)


def test_k_inference_capped_at_n() -> None:
    assert KSparse(10, k=8, k_inference_factor=2.0).k_inference == 10


def test_training_updates_state() -> None:
    layer = KSparse(10, k=2, sensitivity=True)
    layer(torch.randn(4, 10))
    assert layer.samples_seen.item() == 4
    assert layer.duty_cycle.sum().item() == pytest.approx(2.0)
    assert (layer.sensitivity != 1).any()


@pytest.mark.parametrize("sensitivity", [False, True])
def test_state_in_shared_memory_is_copied_before_it_is_updated(sensitivity: bool) -> None:
    """Processes started from one shared model (torch.multiprocessing) must not update each other's state."""
    layer = KWinners(12, k=3, sensitivity=sensitivity).share_memory()
    updated = ("duty_cycle", "sensitivity", "samples_seen", "selection_count")
    shared = {name: getattr(layer, name) for name in updated}
    before = {name: buffer.clone() for name, buffer in shared.items()}
    layer(torch.randn(5, 12))
    assert int(layer.samples_seen) == 5 and int(layer.selection_count.sum()) == 15
    for name in updated:
        assert not getattr(layer, name).is_shared(), name
        assert torch.equal(shared[name], before[name]), name  # the shared tensors were left as they were


@pytest.mark.skipif(not native_enabled(), reason="no C compiler for the native kernels")
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"relu": True},
        {"by_magnitude": True, "relu": True},
        {"boost_strength": 1.0},
        {"boost_strength": 2.0, "relu": True},
    ],
    ids=["plain", "relu", "magnitude relu", "boosted", "boosted relu"],
)
def test_the_kernel_that_adds_the_wins_trains_as_the_update_after_it(monkeypatch, options: dict) -> None:
    """In training without sensitivity the row kernel's own call updates the state: the same outputs, gradients and
    state, bit for bit, as the selection with its counts and the update after it (which DDP and sensitivity take)."""
    import ksparse_pl.layers._base as base

    adding = KSparse(300, k=20, duty_cycle_period=100, **options)
    separate = KSparse(300, k=20, duty_cycle_period=100, **options)
    separate._adds_wins_in_kernel = lambda candidates: False  # type: ignore[method-assign]
    calls = []
    counted = base.select_rows_adding_wins
    monkeypatch.setattr(base, "select_rows_adding_wins", lambda *a, **kw: calls.append(1) or counted(*a, **kw))
    for shape in [(64, 300), (17, 300), (3, 5, 300), (64, 300)]:  # past the period: the old duty cycle weighs in
        x = torch.randn(shape, requires_grad=True)
        grad = torch.randn(shape)
        out = adding(x)
        (x_grad,) = torch.autograd.grad(out, x, grad)
        expected = separate(x)
        assert torch.equal(out, expected)
        assert torch.equal(x_grad, torch.autograd.grad(expected, x, grad)[0])
        assert_same_state(separate, adding, rtol=0, atol=0)
    assert len(calls) == 4 and int(adding.samples_seen) == 160


def test_an_empty_first_batch_leaves_the_duty_cycles_at_zero() -> None:
    for layer in (KWinners(8, k=2), KWinners(8, k=2, sensitivity=True)):  # with and without the state in the kernel
        layer(torch.empty(0, 8))
        assert layer.duty_cycle.tolist() == [0.0] * 8 and int(layer.samples_seen) == 0
        layer(torch.randn(4, 8))
        assert layer.duty_cycle.sum().item() == pytest.approx(2.0)


def test_duty_cycle_after_first_batch_is_count_over_batch() -> None:
    layer = KSparse(4, k=1)
    layer(torch.tensor([[1.0, 0, 0, 0], [1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 0, 1.0]]))
    assert layer.duty_cycle.tolist() == [0.5, 0.25, 0.0, 0.25]


def test_duty_cycle_period_formula_afterwards() -> None:
    layer = KSparse(2, k=1, duty_cycle_period=3)
    layer(torch.tensor([[1.0, 0.0], [1.0, 0.0]]))  # d = [1, 0], samples 2
    layer(torch.tensor([[0.0, 1.0], [0.0, 1.0]]))  # samples 4 -> p = 3: d = (d * (3 - 2) + c) / 3
    torch.testing.assert_close(layer.duty_cycle, torch.tensor([1 / 3, 2 / 3]))


def with_duty_cycle(layer: KSparse, duty: list[float]) -> KSparse:
    layer.duty_cycle.copy_(torch.tensor(duty))
    return layer


def test_boosting_changes_the_winner_and_output_is_unboosted() -> None:
    # factors exp(1 * (0.5 - d)): [exp(-0.5), exp(0.5)] -> scores [0.607, 0.824]
    layer = with_duty_cycle(KSparse(2, k=1, boost_strength=1.0), [1.0, 0.0])
    assert layer(torch.tensor([[1.0, 0.5]])).tolist() == [[0.0, 0.5]]


def test_boosting_cannot_overturn_a_large_gap() -> None:
    # scores [0.607, 0.165]: unit 0 still wins
    layer = with_duty_cycle(KSparse(2, k=1, boost_strength=1.0), [1.0, 0.0])
    assert layer(torch.tensor([[1.0, 0.1]])).tolist() == [[1.0, 0.0]]


def test_boost_strength_zero_is_off() -> None:
    layer = with_duty_cycle(KSparse(2, k=1, boost_strength=0.0), [1.0, 0.0])
    assert layer(torch.tensor([[1.0, 0.5]])).tolist() == [[1.0, 0.0]]


def test_sensitivity_multiplies_gradient_of_long_idle_unit() -> None:
    """The published Cottonwood code reset s before the backward pass (factor always 1): not here."""
    s_max, tau = 10.0, 4.0
    layer = KSparse(2, k=1, sensitivity=True, s_max=s_max, tau=tau)
    idle = 6
    layer(torch.tensor([[1.0, 0.0]] * idle))  # unit 1 idle for 6 samples
    x = torch.tensor([[0.0, 1.0]], requires_grad=True)
    layer(x).sum().backward()
    expected = s_max - (s_max - 1) * (1 - 1 / tau) ** idle
    assert x.grad[0, 1].item() == pytest.approx(expected)
    assert x.grad[0, 0].item() == 0.0
    assert layer.sensitivity[1].item() == 1.0


def test_sensitivity_batch_equals_batches_of_one() -> None:
    x = torch.randn(32, 12)
    batched = KSparse(12, k=3, sensitivity=True, tau=5.0)
    xb = x.clone().requires_grad_()
    batched(xb).sum().backward()
    single = KSparse(12, k=3, sensitivity=True, tau=5.0)
    grads = []
    for row in x:
        xr = row.unsqueeze(0).requires_grad_()
        single(xr).sum().backward()
        grads.append(xr.grad)
    torch.testing.assert_close(xb.grad, torch.cat(grads))
    torch.testing.assert_close(batched.sensitivity, single.sensitivity)
    torch.testing.assert_close(batched.duty_cycle, single.duty_cycle)


def test_threshold_mode_allows_ties() -> None:
    layer = KSparse(5, k=2, threshold_mode=True)
    assert (layer(torch.tensor([[3.0, 2.0, 2.0, 1.0, 0.0]])) != 0).sum().item() == 3
    assert (KSparse(5, k=2)(torch.tensor([[3.0, 2.0, 2.0, 1.0, 0.5]])) != 0).sum().item() == 2


def test_threshold_mode_matches_exact_mode_without_ties() -> None:
    x = torch.randn(16, 30)
    exact, threshold = KSparse(30, k=4, sensitivity=True), KSparse(30, k=4, sensitivity=True, threshold_mode=True)
    xe, xt = x.clone().requires_grad_(), x.clone().requires_grad_()
    torch.testing.assert_close(exact(xe), threshold(xt))
    exact(xe).sum().backward()
    threshold(xt).sum().backward()
    torch.testing.assert_close(xe.grad, xt.grad)
    torch.testing.assert_close(exact.duty_cycle, threshold.duty_cycle)
    torch.testing.assert_close(exact.sensitivity, threshold.sensitivity)


def test_kwinners_numenta_defaults() -> None:
    layer = KWinners(100)
    assert (layer.k, layer.k_inference, layer.boost_strength_factor, layer.duty_cycle_period) == (10, 15, 0.9, 1000)
    assert layer.boost_strength.item() == 1.0 and layer.boosting


def test_state_dict_round_trip_restores_all_state() -> None:
    layer = KWinners(20, percent_on=0.2, sensitivity=True, tau=3.0)
    for _ in range(3):
        layer(torch.randn(8, 20))
    layer.boost_strength.mul_(0.5)
    layer.k, layer.s_max, layer.tau = 3, 6.0, 9.0
    restored = KWinners(20, percent_on=0.2, sensitivity=True)
    restored.load_state_dict(layer.state_dict())
    for name in ("duty_cycle", "sensitivity", "boost_strength", "samples_seen"):
        torch.testing.assert_close(getattr(restored, name), getattr(layer, name), msg=name)
    assert (restored.k, restored.s_max, restored.tau) == (3, 6.0, 9.0)
    x = torch.randn(4, 20)
    torch.testing.assert_close(restored(x), layer(x))


def test_boost_factors_follow_k_through_schedules_checkpoints_and_casts() -> None:
    def expected(layer: KSparse) -> torch.Tensor:
        return boost_factors(layer.duty_cycle, layer.k / layer.n, layer.boost_strength)

    layer = KWinners(20, percent_on=0.2)
    for _ in range(3):
        layer(torch.randn(8, 20))
    assert torch.equal(layer._boost(), expected(layer))
    shared = layer.share_memory()._target_density
    layer.k = 4  # unchanged
    assert layer._target_density is shared
    layer.k = 3
    assert shared.item() == pytest.approx(0.2)  # another process's copy keeps its own k
    assert torch.equal(layer._boost(), expected(layer))
    assert not any("target" in name for name in layer.state_dict())  # derived from k, which the extra state keeps
    restored = KWinners(20, percent_on=0.2)
    restored.load_state_dict(layer.state_dict())
    assert torch.equal(restored._boost(), expected(layer))
    assert torch.equal(restored.half()._boost(), expected(layer))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs_keep_float32_state(dtype: torch.dtype) -> None:
    layer = KWinners(64, sensitivity=True)
    x = torch.randn(8, 64, dtype=dtype, requires_grad=True)
    out = layer(x)
    out.float().sum().backward()
    assert out.dtype == dtype and x.grad.dtype == dtype
    assert (out != 0).sum(dim=1).eq(layer.k).all()
    layer(torch.randn(7, 64))  # duty cycles in sevenths now, which half precision cannot hold
    layer.boost_strength.mul_(0.9)  # as DutyCycleBoosting after an epoch
    state = {name: getattr(layer, name).clone() for name in ("duty_cycle", "sensitivity", "boost_strength")}
    assert not torch.equal(state["duty_cycle"].half().float(), state["duty_cycle"])  # the test can fail
    layer.half()
    for name, before in state.items():  # the values, not only the dtype: nothing rounded through half precision
        assert getattr(layer, name).dtype == torch.float32 and torch.equal(getattr(layer, name), before), name


def test_state_is_float32_when_built_under_a_half_default_dtype() -> None:
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float16)  # as Lightning's "16-true" module init does
    try:
        layer = KWinners(20, boost_strength=0.9)
    finally:
        torch.set_default_dtype(default)
    for stage in ("built", "cast"):  # half() works in place: check the layer as built, then after it
        if stage == "cast":
            layer.half()
        for name in ("duty_cycle", "sensitivity", "boost_strength"):
            assert getattr(layer, name).dtype == torch.float32, (stage, name)
    assert layer.boost_strength.item() == pytest.approx(0.9, abs=1e-7)  # not 0.8999 from half precision


def test_cpu_autocast_bf16() -> None:
    model = nn.Sequential(nn.Linear(16, 64), KWinners(64, sensitivity=True), nn.Linear(64, 4))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(8, 16))
    out.float().sum().backward()
    assert out.dtype == torch.bfloat16
    assert torch.isfinite(model[0].weight.grad).all()
    assert model[1].duty_cycle.dtype == torch.float32


def test_extra_repr_shows_settings() -> None:
    text = repr(KWinners(100, sensitivity=True))
    assert "n=100, k=10, k_inference=15" in text and "boost_strength=1" in text and "s_max=10" in text


def test_nan_input_propagates() -> None:
    out = KSparse(4, k=1)(torch.tensor([[0.1, float("nan"), 0.3, 0.2]]))
    assert out.isnan().any()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"k": 0}, ValueError, r"`k` to be an int in \[1, 10\].*got 0"),
        ({"k": 11}, ValueError, r"`k` to be an int in \[1, 10\].*got 11"),
        ({"k": 2, "percent_on": 0.1}, ValueError, r"not both.*k=2.*percent_on=0.1"),
        ({}, ValueError, "neither"),
        ({"percent_on": 1.5}, ValueError, r"`percent_on` to be a float in \(0, 1\].*1.5"),
        ({"percent_on": 0.01}, ValueError, "rounds to k=0"),
        ({"k": 2, "k_inference_factor": 0}, ValueError, "k_inference_factor"),
        ({"k": 2, "boost_strength": -1.0}, ValueError, "boost_strength.*-1.0"),
        ({"k": 2, "boost_strength_factor": 1.5}, ValueError, r"boost_strength_factor.*\(0, 1\].*1.5"),
        ({"k": 2, "duty_cycle_period": 0}, ValueError, "duty_cycle_period.*0"),
        ({"k": 2, "s_max": 0.5}, ValueError, "s_max.*>= 1.*0.5"),
        ({"k": 2, "tau": 0.5}, ValueError, "tau.*>= 1.*0.5"),
    ],
    ids=lambda v: str(v) if isinstance(v, dict) else "",
)
def test_bad_arguments(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        KSparse(10, **kwargs)


def test_bad_n() -> None:
    with pytest.raises(ValueError, match="`n` to be an int >= 1.*0"):
        KSparse(0, k=1)


def test_wrong_feature_size() -> None:
    with pytest.raises(ValueError, match=r"\(\.\.\., n=10\).*\(4, 9\)"):
        KSparse(10, k=2)(torch.randn(4, 9))


def test_integer_input() -> None:
    with pytest.raises(TypeError, match="floating-point.*int64"):
        KSparse(10, k=2)(torch.ones(4, 10, dtype=torch.long))


def test_k_setter_validates() -> None:
    layer = KSparse(10, k=2)
    with pytest.raises(ValueError, match=r"\[1, 10\].*12"):
        layer.k = 12


def test_torch_compile_runs() -> None:
    model = nn.Sequential(nn.Linear(8, 32), KWinners(32, sensitivity=True), nn.Linear(32, 2))
    compiled = torch.compile(model)
    x = torch.randn(4, 8)
    out = compiled(x)
    out.sum().backward()
    assert out.shape == (4, 2) and model[1].samples_seen.item() == 4
    model.eval()
    torch.testing.assert_close(compiled(x), model(x))


def test_k_winners_of_value_math() -> None:
    # 5% of 4096 is 205 (round), the benchmark shape
    assert KSparse(4096, percent_on=0.05).k == round(4096 * 0.05) == 205
    assert math.isclose(KSparse(4096, percent_on=0.05).active_fraction, 205 / 4096)


def test_data_parallel_replicas_are_refused() -> None:
    """nn.DataParallel discards its replicas' buffers after each forward: statistics would be lost."""
    layer = KWinners(16)
    layer._is_replica = True  # what nn.DataParallel's replicate() sets on GPU replicas
    with pytest.raises(RuntimeError, match="KWinners cannot keep its training statistics under nn.DataParallel"):
        layer(torch.randn(4, 16))
    layer.eval()(torch.randn(4, 16))  # evaluation keeps no statistics and works anywhere


def test_select_gives_the_winners_forward_keeps_and_updates_the_state_alike() -> None:
    torch.manual_seed(0)
    x = torch.randn(6, 20)
    by_forward = KWinners(20, k=3, sensitivity=True, relu=True)
    by_select = KWinners(20, k=3, sensitivity=True, relu=True)
    out = by_forward(x)
    indices, grad_scale = by_select.select(x)
    assert indices.shape == (6, 3) and grad_scale is not None and grad_scale.shape == (6, 3)
    assert torch.equal(keep_winners(x, indices, relu=True, grad_scale=grad_scale), out)
    for name, buffer in by_forward.named_buffers():
        assert torch.equal(getattr(by_select, name), buffer), name


@pytest.mark.parametrize(
    ("layer", "x", "message"),
    [
        (KSparse(8, k=2), torch.randn(2, 3, 8), r"select expects input \(B, n=8\)"),
        (KSparse(8, k=2, threshold_mode=True), torch.randn(2, 8), "threshold_mode"),
    ],
)
def test_select_refuses_what_it_cannot_serve(layer: KSparse, x: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        layer.select(x)
