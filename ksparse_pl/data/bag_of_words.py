"""Binary bag-of-words documents: a synthetic corpus with known topics, or a folder of text files."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import torch
from torch import Tensor

from ksparse_pl.data._tensor_module import TensorDataModule


def synthetic_corpus(
    num_documents: int, vocabulary_size: int, num_topics: int, topic_words: int, words_per_document: int, seed: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Documents drawn from known topics: ``(x, topic, topic_vocabulary)``.

    Topic ``t`` owns words ``[t * topic_words, (t + 1) * topic_words)``; the rest of the vocabulary is
    shared background. Each document has one topic and draws 70% of its words from it, the rest from the
    background, and records which words occur (binary).

    Returns:
        ``x`` ``(N, V)`` float 0/1, ``topic`` ``(N,)`` long, ``topic_vocabulary`` ``(T, V)`` bool.
    """
    g = torch.Generator().manual_seed(seed)
    topic = torch.randint(0, num_topics, (num_documents,), generator=g)
    from_topic = torch.rand(num_documents, words_per_document, generator=g) < 0.7
    topic_word = topic.unsqueeze(1) * topic_words + torch.randint(0, topic_words, from_topic.shape, generator=g)
    background = num_topics * topic_words
    other = background + torch.randint(0, vocabulary_size - background, from_topic.shape, generator=g)
    words = torch.where(from_topic, topic_word, other)
    x = torch.zeros(num_documents, vocabulary_size).scatter_(1, words, 1.0)
    vocabulary = torch.zeros(num_topics, vocabulary_size, dtype=torch.bool)
    for t in range(num_topics):
        vocabulary[t, t * topic_words : (t + 1) * topic_words] = True
    return x, topic, vocabulary


class BagOfWordsDataModule(TensorDataModule):
    """Binary bag-of-words vectors (1 where a word occurs in the document).

    By default a synthetic corpus with known topics (:func:`synthetic_corpus`; batches ``(x, topic)``,
    ``topic_vocabulary`` says which words belong to which topic), so the alignment of hidden units with
    topics can be measured. With ``folder``, every ``.txt`` file there is a document; the vocabulary is
    its ``vocabulary_size`` most frequent lower-case words; batches ``(x,)``.

    Args:
        folder: a folder of ``.txt`` documents; default: the synthetic corpus.
        vocabulary_size: words in the vocabulary.
        num_documents: synthetic documents.
        num_topics: synthetic topics.
        topic_words: words owned by each synthetic topic.
        words_per_document: word draws per synthetic document.
        batch_size, val_fraction, test_fraction, seed, num_workers: as :class:`DigitsDataModule`.

    Example:
        >>> dm = BagOfWordsDataModule(num_documents=200, vocabulary_size=500, topic_words=40)
        >>> dm.setup("fit")
        >>> x, topic = next(iter(dm.train_dataloader()))
        >>> x.shape, bool(((x == 0) | (x == 1)).all())
        (torch.Size([64, 500]), True)
    """

    def __init__(
        self,
        folder: str | None = None,
        vocabulary_size: int = 2000,
        num_documents: int = 10_000,
        num_topics: int = 10,
        topic_words: int = 100,
        words_per_document: int = 30,
        batch_size: int = 64,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__(batch_size, val_fraction, test_fraction, seed, num_workers)
        if folder is None and num_topics * topic_words >= vocabulary_size:
            raise ValueError(
                f"`num_topics` * `topic_words` = {num_topics * topic_words} must leave background words in "
                f"`vocabulary_size`={vocabulary_size}."
            )
        self.save_hyperparameters()
        self.folder = folder
        self.vocabulary_size, self.num_documents, self.num_topics = vocabulary_size, num_documents, num_topics
        self.topic_words, self.words_per_document = topic_words, words_per_document
        self.topic_vocabulary: Tensor | None = None
        self.vocabulary: list[str] = []

    def load(self) -> tuple[Tensor, Tensor | None]:
        if self.folder is None:
            x, topic, self.topic_vocabulary = synthetic_corpus(
                self.num_documents,
                self.vocabulary_size,
                self.num_topics,
                self.topic_words,
                self.words_per_document,
                self.seed,
            )
            return x, topic
        return self._read_folder(Path(self.folder)), None

    def _read_folder(self, folder: Path) -> Tensor:
        if not folder.is_dir():
            raise FileNotFoundError(f"BagOfWordsDataModule: `folder` {str(folder)!r} is not a directory.")
        documents = [
            set(re.findall(r"[a-z']+", p.read_text(errors="ignore").lower())) for p in sorted(folder.glob("*.txt"))
        ]
        if not documents:
            raise ValueError(f"BagOfWordsDataModule: `folder` {str(folder)!r} holds no .txt documents.")
        counts = Counter(word for document in documents for word in document)
        self.vocabulary = [word for word, _ in counts.most_common(self.vocabulary_size)]
        index = {word: i for i, word in enumerate(self.vocabulary)}
        x = torch.zeros(len(documents), len(self.vocabulary))
        for row, document in enumerate(documents):
            x[row, [index[w] for w in document if w in index]] = 1.0
        return x
