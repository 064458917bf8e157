import pickle

import numpy as np
import pytest
import torch
import wandb
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger, WandbLogger
from user_model import DenseNet, RandomData, UserAutoencoder, make_trainer

from ksparse_pl import KSparse
from ksparse_pl.callbacks import FeatureGridLogger, LSUVInit, NodeUsageLogger
from ksparse_pl.callbacks.node_usage_logger import SortedUsagePlot, binned_usage, usage_statistics


@pytest.fixture
def data() -> RandomData:
    return RandomData()


@pytest.fixture
def wandb_logger(tmp_path, monkeypatch):
    """An offline W&B logger in tmp_path whose run's `log` calls are recorded."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    logger = WandbLogger(project="test", save_dir=str(tmp_path), offline=True)
    calls: list[dict] = []
    run = logger.experiment
    original = run.log

    def spy(data, *args, **kwargs):
        calls.append(dict(data))
        return original(data, *args, **kwargs)

    monkeypatch.setattr(run, "log", spy)
    yield logger, calls
    wandb.finish()


def test_usage_statistics_by_hand() -> None:
    stats = usage_statistics(torch.tensor([3, 1, 0, 0]))
    p = np.array([0.75, 0.25])
    assert stats["dead_fraction"] == 0.5
    assert stats["entropy"] == pytest.approx(-(p * np.log(p)).sum() / np.log(4))
    assert usage_statistics(torch.tensor([2, 2, 2, 2]))["entropy"] == pytest.approx(1.0)


def test_wide_layers_are_binned_to_512() -> None:
    counts = torch.arange(2000)
    heights, edges = binned_usage(counts, 512)
    assert len(heights) == 512 and len(edges) == 513
    assert heights.sum() == counts.sum().item()
    heights, _ = binned_usage(torch.tensor([4, 0, 1]), 512)
    assert heights.tolist() == [4, 0, 1]


def test_a_kept_usage_plot_renders_as_a_fresh_one() -> None:
    # NodeUsageLogger keeps one figure per layer: nothing of an earlier render may show in the next one.
    kept = SortedUsagePlot()
    kept.render(torch.tensor([50, 0, 7, 3, 90, 1, 4]), "enc: a title much longer than the next one")
    counts = torch.tensor([2, 9, 0, 4])
    again = kept.render(counts, "dec")
    assert again.shape == (300, 600, 3) and again.dtype == np.uint8
    assert np.array_equal(again, SortedUsagePlot().render(counts, "dec"))
    assert not np.array_equal(again, SortedUsagePlot().render(torch.tensor([3, 3, 3, 3]), "dec"))


@pytest.mark.parametrize("most", [1, 60, 600_000, 10**9])
def test_the_usage_plots_labels_clear_the_tick_labels_and_stay_in_the_figure(most: int) -> None:
    # The axis labels and the title sit at fixed places (measuring the tick labels to place them was slow).
    plot = SortedUsagePlot()
    plot.render(torch.tensor([most, most // 3, 0]), "encoder.1: dead 33.3%, entropy 0.579")
    renderer = plot._figure.canvas.get_renderer()
    axes, figure = plot._axes, plot._figure.bbox

    def extent(artist):
        return artist.get_window_extent(renderer)

    def drawn_tick_labels(axis):  # those of the ticks within the view
        low, high = sorted(axis.get_view_interval())
        return [extent(tick.label1) for tick in axis.get_major_ticks() if low <= tick.get_loc() <= high]

    x_ticks, y_ticks = drawn_tick_labels(axes.xaxis), drawn_tick_labels(axes.yaxis)
    assert x_ticks and y_ticks
    x_label, y_label, title = extent(axes.xaxis.label), extent(axes.yaxis.label), extent(axes.title)
    assert all(x_label.y1 < tick.y0 for tick in x_ticks)
    assert all(y_label.x1 < tick.x0 for tick in y_ticks)
    assert title.y0 > axes.bbox.y1 and not title.overlaps(extent(axes.yaxis.offsetText))
    for box in (x_label, y_label, title, *x_ticks, *y_ticks):
        assert figure.x0 <= box.x0 and box.x1 <= figure.x1 and figure.y0 <= box.y0 and box.y1 <= figure.y1


def test_node_usage_logger_pickles_without_its_figures() -> None:
    callback = NodeUsageLogger(every_n_steps=7)
    callback._plots["enc"] = SortedUsagePlot()
    copy = pickle.loads(pickle.dumps(callback))
    assert copy._plots == {} and copy.every_n_steps == 7
    assert "enc" in callback._plots  # the original keeps its figure


def test_node_usage_to_wandb_every_n_steps(tmp_path, data, wandb_logger) -> None:
    logger, calls = wandb_logger
    model = UserAutoencoder()
    trainer = make_trainer(tmp_path, [NodeUsageLogger(every_n_steps=4)], max_epochs=2, logger=logger)
    trainer.fit(model, data)
    key = "usage/encoder.1"
    scalars = [c for c in calls if f"{key}/dead_fraction" in c]
    histograms = [c for c in calls if f"{key}/histogram" in c]
    images = [c for c in calls if f"{key}/sorted" in c]
    assert [c["trainer/global_step"] for c in scalars] == [4, 8, 12, 16]
    assert [c["trainer/global_step"] for c in histograms] == [4, 8, 12, 16]
    assert [c["trainer/global_step"] for c in images] == [4, 8, 12, 16]
    assert isinstance(histograms[0][f"{key}/histogram"], wandb.Histogram)
    assert isinstance(images[0][f"{key}/sorted"][0], wandb.Image)
    assert 0 <= scalars[-1][f"{key}/entropy"] <= 1


def test_interval_counts_add_up_to_the_selections(tmp_path, data) -> None:
    callback = NodeUsageLogger(every_n_steps=100)
    model = UserAutoencoder(k=8)
    trainer = make_trainer(tmp_path, [callback], max_epochs=1)
    trainer.fit(model, data)
    counts = callback.log_usage(trainer, model)["encoder.1"]
    assert counts.sum().item() == 64 * 8  # every training sample selected k units
    assert callback.log_usage(trainer, model)["encoder.1"].sum().item() == 0  # a new, empty interval


def test_node_usage_each_epoch_to_any_logger(tmp_path, data) -> None:
    logger = CSVLogger(tmp_path)
    make_trainer(tmp_path, [NodeUsageLogger()], max_epochs=2, logger=logger).fit(UserAutoencoder(), data)
    text = (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").read_text()
    assert "usage/encoder.1/dead_fraction" in text and "usage/encoder.1/entropy" in text


def test_node_usage_histograms_to_tensorboard(tmp_path, data, monkeypatch) -> None:
    logger = TensorBoardLogger(tmp_path)
    recorded = []
    monkeypatch.setattr(logger.experiment, "add_histogram_raw", lambda tag, **kw: recorded.append((tag, kw)))
    make_trainer(tmp_path, [NodeUsageLogger()], max_epochs=2, logger=logger).fit(UserAutoencoder(), data)
    assert [(tag, kw["global_step"]) for tag, kw in recorded] == [("usage/encoder.1/histogram", 8)] * 1 + [
        ("usage/encoder.1/histogram", 16)
    ]
    assert sum(recorded[0][1]["bucket_counts"]) == 64 * 8


def test_feature_grid_to_wandb_and_png(tmp_path, data, wandb_logger) -> None:
    logger, calls = wandb_logger
    callback = FeatureGridLogger(image_shape=(4, 4), every_n_epochs=2)
    make_trainer(tmp_path, [callback], max_epochs=3, logger=logger).fit(UserAutoencoder(), data)
    assert [p.name for p in callback.saved] == ["features_epoch0001.png", "features_epoch0003.png"]
    assert all(p.exists() for p in callback.saved)
    logged = [c for c in calls if "features/decoded_units" in c]
    assert [c["trainer/global_step"] for c in logged] == [16, 24]
    assert isinstance(logged[0]["features/decoded_units"][0], wandb.Image)


def test_feature_grid_shows_each_units_decoding(tmp_path) -> None:
    from ksparse_pl.callbacks.feature_grid_logger import decoded_unit_images

    decoder = torch.nn.Linear(3, 4)
    images = decoded_unit_images(decoder, 3, (2, 2), 3, torch.device("cpu"))
    assert images.shape == (3, 1, 32, 32)  # 2x2 patches shown at 32x32
    expected = decoder.weight.t() + decoder.bias  # row j: the decoding of unit j alone
    expected = (expected - expected.amin(1, keepdim=True)) / (
        expected.amax(1, keepdim=True) - expected.amin(1, keepdim=True)
    )
    torch.testing.assert_close(images[:, 0, ::16, ::16].reshape(3, 4), expected.detach())


@pytest.mark.parametrize(
    ("callback", "model", "match"),
    [
        (NodeUsageLogger(), DenseNet(), "NodeUsageLogger found no sparse layer"),
        (FeatureGridLogger(image_shape=(3, 3)), UserAutoencoder(), r"`image_shape`=\(3, 3\) holds 9 values.*16"),
        (FeatureGridLogger(), DenseNet(), "has no `hparams.hidden_dim` and 0 sparse layers; pass `code_dim`"),
    ],
    ids=["usage-no-layer", "grid-shape", "grid-code-dim"],
)
def test_setup_errors(tmp_path, data, callback, model, match) -> None:
    with pytest.raises(ValueError, match=match):
        make_trainer(tmp_path, [callback]).fit(model, data)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: NodeUsageLogger(every_n_steps=0), r"NodeUsageLogger: .*`every_n_steps`.*0"),
        (lambda: NodeUsageLogger(max_bins=1024), r"NodeUsageLogger: .*`max_bins`.*\[1, 512\].*1024"),
        (lambda: FeatureGridLogger(image_shape=(4,)), r"FeatureGridLogger: .*`image_shape`.*\(4,\)"),
        (lambda: FeatureGridLogger(max_units=0), r"FeatureGridLogger: .*`max_units`.*0"),
        (lambda: LSUVInit(tol=1.5), r"LSUVInit: .*`tol`.*1.5"),
        (lambda: LSUVInit(num_samples=1), r"LSUVInit: .*`num_samples`.*1"),
    ],
)
def test_bad_arguments(make, match) -> None:
    with pytest.raises(ValueError, match=match):
        make()


def test_lsuv_init_unit_variance_and_logged(tmp_path, data, wandb_logger) -> None:
    logger, calls = wandb_logger
    model = UserAutoencoder()
    callback = LSUVInit(num_samples=64, tol=0.05)
    make_trainer(tmp_path, [callback], max_epochs=1, limit_train_batches=0, logger=logger).fit(model, data)
    assert set(callback.report) == {"encoder.0", "head"}
    outputs = {}
    hooks = [
        model.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: outputs.update({n: o.var().item()}))
        for n in callback.report
    ]
    with torch.no_grad():
        model.train()(data.x)
    for h in hooks:
        h.remove()
    assert all(abs(v - 1) < 0.05 for v in outputs.values()), outputs
    logged = {k for c in calls for k in c}
    assert {"lsuv/encoder.0/variance_after", "lsuv/head/variance_before"} <= logged


def test_lsuv_init_skipped_on_resume(tmp_path, data) -> None:
    model = UserAutoencoder()
    trainer = make_trainer(tmp_path, [], max_epochs=1)
    trainer.fit(model, data)
    path = tmp_path / "run.ckpt"
    trainer.save_checkpoint(path)
    resumed = UserAutoencoder()
    callback = LSUVInit()
    make_trainer(tmp_path, [callback], max_epochs=1).fit(resumed, data, ckpt_path=path)
    assert callback.report == {}
    torch.testing.assert_close(resumed.head.weight, model.head.weight)


def test_lsuv_init_with_given_tensor_and_no_datamodule(tmp_path, data) -> None:
    model = UserAutoencoder()
    callback = LSUVInit(data=torch.randn(128, 16))
    make_trainer(tmp_path, [callback], max_epochs=1).fit(model, data.train_dataloader())
    assert set(callback.report) == {"encoder.0", "head"}
    with pytest.raises(ValueError, match="LSUVInit needs a datamodule.*`data`"):
        make_trainer(tmp_path, [LSUVInit()], max_epochs=1).fit(UserAutoencoder(), data.train_dataloader())


def test_callbacks_find_layers_nested_anywhere(tmp_path, data) -> None:
    model = UserAutoencoder()
    model.extra = torch.nn.ModuleDict({"deep": torch.nn.Sequential(KSparse(16, k=2))})
    callback = NodeUsageLogger(every_n_steps=1000)
    make_trainer(tmp_path, [callback], max_epochs=1).fit(model, data)
    assert set(callback.log_usage(make_trainer(tmp_path, []), model)) == {"encoder.1", "extra.deep.0"}
