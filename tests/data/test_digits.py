import pytest
import torch

from ksparse_pl.data import DigitsDataModule


def indices(dm: DigitsDataModule) -> list[torch.Tensor]:
    return [ds.tensors[0] for ds in (dm.train_set, dm.val_set, dm.test_set)]


def test_split_is_deterministic_and_disjoint() -> None:
    a, b = DigitsDataModule(seed=3), DigitsDataModule(seed=3)
    a.setup("fit")
    b.setup("fit")
    for x, y in zip(indices(a), indices(b), strict=True):
        assert torch.equal(x, y)
    sizes = [len(x) for x in indices(a)]
    assert sum(sizes) == 1797
    rows = {tuple(r.tolist()) for x in indices(a) for r in x}
    assert len(rows) >= 1797 - 10  # a handful of digits are exact duplicates in the data itself


def test_other_seed_gives_other_split() -> None:
    a, b = DigitsDataModule(seed=0), DigitsDataModule(seed=1)
    a.setup("fit")
    b.setup("fit")
    assert not torch.equal(a.val_set.tensors[0], b.val_set.tensors[0])


def test_split_is_stratified() -> None:
    dm = DigitsDataModule()
    dm.setup("fit")
    counts = torch.bincount(dm.val_set.tensors[1], minlength=10)
    assert counts.min() >= 25 and counts.max() <= 29


def test_images_and_range() -> None:
    dm = DigitsDataModule(flatten=False, batch_size=16)
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (16, 1, 8, 8) and y.dtype == torch.long
    assert x.min() >= 0.0 and x.max() <= 1.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch_size": 0}, "`batch_size`.*0"),
        ({"val_fraction": 0.0}, r"`val_fraction`.*\(0, 1\).*0.0"),
        ({"val_fraction": 0.6, "test_fraction": 0.5}, "leave training data"),
    ],
)
def test_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DigitsDataModule(**kwargs)


def test_training_order_depends_only_on_seed_and_epoch() -> None:
    def order(epoch: int, seed: int = 0) -> list[int]:
        dm = DigitsDataModule(seed=seed)
        dm.setup("fit")
        sampler = dm.train_dataloader().sampler
        sampler.set_epoch(epoch)
        return list(sampler)

    assert order(3) == order(3)  # a fresh datamodule (a resumed run) replays epoch 3
    assert order(3) != order(2)
    assert order(3) != order(3, seed=1)
    assert sorted(order(0)) == list(range(1257))
