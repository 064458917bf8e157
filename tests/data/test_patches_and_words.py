from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ksparse_pl.data import BagOfWordsDataModule, ImagePatchesDataModule
from ksparse_pl.data.bag_of_words import synthetic_corpus


def test_patches_from_bundled_photos_are_deterministic() -> None:
    a, b = ImagePatchesDataModule(num_patches=500, seed=1), ImagePatchesDataModule(num_patches=500, seed=1)
    a.setup("fit")
    b.setup("fit")
    assert torch.equal(a.train_set.tensors[0], b.train_set.tensors[0])
    x = a.train_set.tensors[0]
    assert x.shape == (400, 121) and x.min() >= 0 and x.max() <= 1 and x.std() > 0.01


def test_patches_from_a_folder(tmp_path: Path) -> None:
    image = np.zeros((20, 30), dtype=np.uint8)
    image[:, 15:] = 255
    Image.fromarray(image).save(tmp_path / "half.png")
    dm = ImagePatchesDataModule(folder=str(tmp_path), patch_size=5, num_patches=200, flatten=False, center=True)
    dm.setup("fit")
    x = dm.train_set.tensors[0]
    assert x.shape[1:] == (1, 5, 5)
    torch.testing.assert_close(x.mean(dim=(1, 2, 3)), torch.zeros(len(x)), atol=1e-6, rtol=0)


def test_patch_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="`folder` '.*nowhere' is not a directory"):
        ImagePatchesDataModule(folder=str(tmp_path / "nowhere")).setup("fit")
    with pytest.raises(ValueError, match="holds no"):
        ImagePatchesDataModule(folder=str(tmp_path)).setup("fit")
    Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(tmp_path / "tiny.png")
    with pytest.raises(ValueError, match="smaller than `patch_size`=11"):
        ImagePatchesDataModule(folder=str(tmp_path)).setup("fit")


def test_synthetic_corpus_follows_its_topics() -> None:
    x, topic, vocabulary = synthetic_corpus(300, 1000, 5, 100, 30, seed=0)
    assert set(x.unique().tolist()) == {0.0, 1.0}
    in_topic = (x * vocabulary[topic].float()).sum(1) / x.sum(1)
    assert 0.6 < in_topic.mean() < 0.8  # 70% of draws come from the document's topic
    assert vocabulary.sum(1).eq(100).all()


def test_bag_of_words_from_text_files(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("The cat sat. The cat!")
    (tmp_path / "b.txt").write_text("a dog sat")
    (tmp_path / "c.txt").write_text("cat and dog")
    (tmp_path / "d.txt").write_text("the end")
    dm = BagOfWordsDataModule(folder=str(tmp_path), vocabulary_size=3, val_fraction=0.25, test_fraction=0.25)
    dm.setup("fit")
    assert len(dm.vocabulary) == 3 and dm.vocabulary[0] in {"the", "cat", "sat", "dog"}
    assert sum(len(s) for s in (dm.train_set, dm.val_set, dm.test_set)) == 4


def test_bag_of_words_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="must leave background words"):
        BagOfWordsDataModule(vocabulary_size=500)
    with pytest.raises(ValueError, match="holds no .txt documents"):
        BagOfWordsDataModule(folder=str(tmp_path)).setup("fit")
