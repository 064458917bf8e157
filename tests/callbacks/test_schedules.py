import math

import pytest
import pytorch_lightning as pl
import torch
from quiet_trainer import StopAfter
from user_model import DenseNet, RandomData, UserAutoencoder, make_trainer

from ksparse_pl.callbacks import DutyCycleBoosting, KSchedule, SensitivitySchedule


@pytest.fixture
def data() -> RandomData:
    return RandomData()


class Recorder(pl.Callback):
    """Reads the layer's settings at the start of every epoch and every batch (runs after the schedules)."""

    def __init__(self) -> None:
        self.epochs: list[tuple[float, float, float]] = []
        self.steps: list[tuple[int, int, float]] = []

    def on_train_epoch_start(self, trainer, pl_module):
        layer = pl_module.encoder[1]
        self.epochs.append((layer.s_max, layer.tau, float(layer.boost_strength)))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        layer = pl_module.encoder[1]
        self.steps.append((trainer.global_step, layer.k, layer.s_max))


def test_sensitivity_linear_per_epoch(tmp_path, data) -> None:
    recorder = Recorder()
    schedule = SensitivitySchedule(s_max_final=2.0, schedule="linear", tau_final=20.0, interval="epoch")
    make_trainer(tmp_path, [schedule, recorder]).fit(UserAutoencoder(), data)
    for epoch, (s_max, tau, _) in enumerate(recorder.epochs):
        assert s_max == pytest.approx(10 + (2 - 10) * epoch / 4)
        assert tau == pytest.approx(100 + (20 - 100) * epoch / 4)


@pytest.mark.parametrize(
    ("kind", "formula"),
    [
        ("cosine", lambda t: 10 + (1 - 10) * (1 - math.cos(math.pi * t)) / 2),
        ("exponential", lambda t: 10 * (1 / 10) ** t),
        ("constant", lambda t: 1.0),
    ],
)
def test_sensitivity_per_step(tmp_path, data, kind, formula) -> None:
    recorder = Recorder()
    make_trainer(tmp_path, [SensitivitySchedule(1.0, schedule=kind), recorder]).fit(UserAutoencoder(), data)
    total = 4 * 8
    assert len(recorder.steps) == total
    for step, _, s_max in recorder.steps:
        assert s_max == pytest.approx(formula(step / total))


def test_boost_strength_decays_per_epoch(tmp_path, data) -> None:
    recorder = Recorder()
    model = UserAutoencoder(boost_strength=1.5)
    make_trainer(tmp_path, [DutyCycleBoosting(), recorder]).fit(model, data)
    for epoch, (_, _, boost) in enumerate(recorder.epochs):
        assert boost == pytest.approx(1.5 * 0.9**epoch)
    assert float(model.encoder[1].boost_strength) == pytest.approx(1.5 * 0.9**4)


def test_boost_override_and_global_factor() -> None:
    callback = DutyCycleBoosting(boost_strength_factor=0.5, overrides={"encoder.1": 0.85})
    assert callback.factor_for("encoder.1", 0.9) == 0.85
    assert callback.factor_for("other", 0.9) == 0.5
    assert DutyCycleBoosting().factor_for("other", 0.9) == 0.9


def test_k_schedule_per_step(tmp_path, data) -> None:
    recorder = Recorder()
    model = UserAutoencoder(k=4)
    make_trainer(tmp_path, [KSchedule(k_start=20, fraction=0.5), recorder]).fit(model, data)
    total = 32
    for step, k, _ in recorder.steps:
        assert k == round(20 + (4 - 20) * min(1.0, step / (0.5 * total)))
    assert model.encoder[1].k == 4


def test_k_schedule_explicit_end(tmp_path, data) -> None:
    model = UserAutoencoder(k=8)
    make_trainer(tmp_path, [KSchedule(k_start=16, k_end=2, fraction=1.0)], max_epochs=1).fit(model, data)
    assert model.encoder[1].k == round(16 + (2 - 16) * 7 / 8)


def resume_run(tmp_path, callbacks_factory, data, split_epoch: int):
    """Train 4 epochs straight, and 4 epochs interrupted after `split_epoch` and resumed from the checkpoint."""
    pl.seed_everything(0)
    straight = UserAutoencoder(k=4)
    make_trainer(tmp_path / "a", callbacks_factory()).fit(straight, data)
    pl.seed_everything(0)
    first = UserAutoencoder(k=4)
    trainer = make_trainer(tmp_path / "b", [*callbacks_factory(), StopAfter(split_epoch)])
    trainer.fit(first, data)
    assert trainer.current_epoch == split_epoch
    path = tmp_path / "b" / "stop.ckpt"
    trainer.save_checkpoint(path)
    resumed = UserAutoencoder(k=4)
    make_trainer(tmp_path / "b", callbacks_factory()).fit(resumed, data, ckpt_path=path)
    return straight.encoder[1], resumed.encoder[1]


def test_resume_continues_every_schedule(tmp_path, data) -> None:
    def callbacks():
        return [
            SensitivitySchedule(2.0, schedule="cosine", tau_final=10.0),
            DutyCycleBoosting(),
            KSchedule(k_start=16, fraction=0.75),
        ]

    straight, resumed = resume_run(tmp_path, callbacks, data, split_epoch=2)
    assert (resumed.k, resumed.s_max, resumed.tau) == (straight.k, straight.s_max, straight.tau)
    assert resumed.s_max == pytest.approx(2.0 + (10 - 2.0) * (1 + math.cos(math.pi * 31 / 32)) / 2)
    torch.testing.assert_close(resumed.boost_strength, straight.boost_strength)


def test_resume_mid_schedule_keeps_start_values(tmp_path, data) -> None:
    """The resumed callback must anneal from the original start, not from the checkpoint's current value."""
    straight, resumed = resume_run(tmp_path, lambda: [SensitivitySchedule(1.0, interval="epoch")], data, 2)
    assert resumed.s_max == straight.s_max == pytest.approx(10 + (1 - 10) * 3 / 4)


@pytest.mark.parametrize(
    ("callback", "match"),
    [
        (SensitivitySchedule(), "SensitivitySchedule found no layer with `sensitivity=True` in DenseNet"),
        (DutyCycleBoosting(), "DutyCycleBoosting found no layer with boosting"),
        (KSchedule(k_start=4), "KSchedule found no sparse layer"),
    ],
    ids=["sensitivity", "boosting", "k"],
)
def test_no_sparse_layer_stops_at_setup(tmp_path, data, callback, match) -> None:
    with pytest.raises(ValueError, match=match):
        make_trainer(tmp_path, [callback]).fit(DenseNet(), data)


def test_sensitivity_schedule_needs_sensitivity_layers(tmp_path, data) -> None:
    with pytest.raises(ValueError, match="SensitivitySchedule found no layer with `sensitivity=True`"):
        make_trainer(tmp_path, [SensitivitySchedule()]).fit(UserAutoencoder(sensitivity=False), data)


def test_k_schedule_start_wider_than_layer(tmp_path, data) -> None:
    with pytest.raises(ValueError, match=r"KSchedule: `k_start`=40 is larger than layer 'encoder.1', which has 32"):
        make_trainer(tmp_path, [KSchedule(k_start=40)]).fit(UserAutoencoder(), data)


def test_boost_override_unknown_layer(tmp_path, data) -> None:
    with pytest.raises(ValueError, match=r"`overrides` names \['decoder'\].*\['encoder.1'\]"):
        make_trainer(tmp_path, [DutyCycleBoosting(overrides={"decoder": 0.5})]).fit(UserAutoencoder(), data)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: DutyCycleBoosting(boost_strength_factor=1.5), r"DutyCycleBoosting: .*`boost_strength_factor`.*1.5"),
        (lambda: DutyCycleBoosting(overrides={"a": 0.0}), r"DutyCycleBoosting: .*`overrides\['a'\]`.*0.0"),
        (lambda: SensitivitySchedule(s_max_final=0.5), r"SensitivitySchedule: .*`s_max_final`.*0.5"),
        (lambda: SensitivitySchedule(schedule="step"), r"SensitivitySchedule: .*`schedule`.*'step'"),
        (lambda: SensitivitySchedule(interval="batch"), r"SensitivitySchedule: .*`interval`.*'batch'"),
        (lambda: KSchedule(k_start=0), r"KSchedule: .*`k_start`.*0"),
        (lambda: KSchedule(k_start=5, fraction=0.0), r"KSchedule: .*`fraction`.*0.0"),
    ],
)
def test_bad_arguments(make, match) -> None:
    with pytest.raises(ValueError, match=match):
        make()
