"""Free-text columns: TF-IDF over word and character n-grams, reduced to a dense block by a
truncated SVD (latent semantic analysis), so text trains the same MLP as every other column.

Why not a fastText-style ``EmbeddingBag`` trained end to end: on the real weakly labelled text in
``benchmarks/text.py`` the two are compared side by side, and the dense LSA block lets text mix
with numeric and embedding columns, synthetic rows and ``refine update`` with no change to the
model or the cross-fitting. Nothing is downloaded: the vocabulary and the projection are fitted
on the table itself (no labels are seen).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

# Longer values are cut to this many characters (said once per column, in the run's notes).
MAX_CHARS = 5_000
# The vocabulary and the projection are fitted on at most this many rows.
FIT_ROWS = 20_000
WORD_FEATURES = 10_000
CHAR_FEATURES = 10_000
# Components: one per 16 fitted rows, between 16 and 256. More components than the data can
# support drown the topics in noise (240 generated texts, refine's accuracy with 16, 32, 64 and
# 128 components: 0.90, 0.89, 0.81, 0.74).
MIN_DIM, MAX_DIM, ROWS_PER_DIM = 16, 256, 16
# Rows are transformed in chunks, so a million-row column never holds its sparse matrix at once.
CHUNK = 20_000


@dataclass
class TextEncoder:
    """One free-text column: lower-cased word 1-2-grams and character 2-5-grams (inside word
    boundaries, so Unicode scripts without spaces still get features), TF-IDF weighted with
    sublinear term frequency, projected onto ``dim`` SVD components, centred and scaled to unit
    mean variance."""

    name: str
    dim: int = 0  # 0: chosen from the number of rows
    seed: int = 0
    truncated: int = 0
    vocabulary: dict[str, list[str]] = field(default_factory=dict)
    idf: dict[str, np.ndarray] = field(default_factory=dict)
    components: np.ndarray | None = None  # (dim, words + chars)
    mean: np.ndarray | None = None
    std: np.ndarray | None = None

    kind = "text"

    @property
    def width(self) -> int:
        return self.dim

    def fit(self, column: pa.ChunkedArray) -> TextEncoder:
        from sklearn.decomposition import TruncatedSVD
        from sklearn.feature_extraction.text import TfidfVectorizer

        texts, self.truncated = _texts(column)
        if len(texts) > FIT_ROWS:
            rows = np.random.default_rng(self.seed).choice(len(texts), FIT_ROWS, replace=False)
            sample = [texts[i] for i in np.sort(rows)]
        else:
            sample = texts
        blocks = []
        for analyzer, ngrams, limit in _ANALYZERS:
            vectorizer = TfidfVectorizer(
                analyzer=analyzer,
                ngram_range=ngrams,
                max_features=limit,
                sublinear_tf=True,
                dtype=np.float32,
            )
            try:
                blocks.append(vectorizer.fit_transform(sample))
            except ValueError:  # every value empty, or only stop characters: no vocabulary
                blocks.append(None)
                self.vocabulary[analyzer] = []
                self.idf[analyzer] = np.zeros(0, np.float32)
                continue
            terms = vectorizer.get_feature_names_out().tolist()
            self.vocabulary[analyzer] = terms
            self.idf[analyzer] = vectorizer.idf_.astype(np.float32)
        matrix = self._stack(blocks, len(sample))
        if matrix.shape[1] == 0:
            raise _NoVocabulary()
        wanted = self.dim or min(MAX_DIM, max(MIN_DIM, len(sample) // ROWS_PER_DIM))
        dim = max(1, min(wanted, matrix.shape[1] - 1, len(sample) - 1))
        svd = TruncatedSVD(dim, algorithm="randomized", n_iter=5, random_state=self.seed)
        reduced = svd.fit_transform(matrix).astype(np.float32)
        self.dim = dim
        self.components = svd.components_.astype(np.float32)
        self.mean = reduced.mean(0)
        # One scale for the whole block, not one per component: the components' spread ranks
        # them (the first carry the topics, the last mostly noise), and standardising each would
        # blow the noise up to the signal's size (3-fold logistic regression on 240 generated
        # texts: 0.69 standardised per component, 0.93 with one scale).
        scale = float(np.sqrt(((reduced - self.mean) ** 2).mean())) or 1.0
        self.std = np.full(dim, scale, np.float32)
        return self

    def transform(self, column: pa.ChunkedArray, out: np.ndarray) -> None:
        texts, _ = _texts(column)
        for start in range(0, len(texts), CHUNK):
            chunk = texts[start : start + CHUNK]
            matrix = self._stack([self._tfidf(a, chunk) for a, _, _ in _ANALYZERS], len(chunk))
            block = np.asarray(matrix @ self.components.T, dtype=np.float32)
            out[start : start + len(chunk)] = (block - self.mean) / self.std

    def _tfidf(self, analyzer: str, texts: list[str]) -> Any:
        from sklearn.feature_extraction.text import TfidfVectorizer

        terms = self.vocabulary[analyzer]
        if not terms:
            return None
        ngrams = next(n for a, n, _ in _ANALYZERS if a == analyzer)
        vectorizer = TfidfVectorizer(
            analyzer=analyzer,
            ngram_range=ngrams,
            vocabulary={t: i for i, t in enumerate(terms)},
            sublinear_tf=True,
            dtype=np.float32,
        )
        # A fixed vocabulary needs no fit; the fitted idf is set rather than refitted on new rows.
        vectorizer.fit([""])
        vectorizer.idf_ = self.idf[analyzer]
        return vectorizer.transform(texts)

    @staticmethod
    def _stack(blocks: list[Any], rows: int) -> Any:
        import scipy.sparse as sp

        present = [b for b in blocks if b is not None]
        if not present:
            return sp.csr_matrix((rows, 0), dtype=np.float32)
        # each block is l2-normalised by TF-IDF; scale so the stacked row has unit norm too
        return sp.hstack(present, format="csr") / np.sqrt(len(present))

    def describe(self) -> dict[str, Any]:
        return {
            "column": self.name,
            "kind": self.kind,
            "dim": self.dim,
            "vocabulary": {a: len(v) for a, v in self.vocabulary.items()},
            "truncated_values": self.truncated,
        }

    def note(self) -> str | None:
        if not self.truncated:
            return None
        return (
            f"text column {self.name!r}: {self.truncated} values longer than {MAX_CHARS:,} "
            "characters were truncated"
        )

    def state(self) -> dict[str, Any]:
        """Plain values and tensors: loads with ``torch.load(weights_only=True)``."""
        return {
            **self.describe(),
            "seed": self.seed,
            "terms": self.vocabulary,
            "idf": {a: torch.from_numpy(v) for a, v in self.idf.items()},
            "components": torch.from_numpy(self.components),
            "mean": torch.from_numpy(self.mean),
            "std": torch.from_numpy(self.std),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> TextEncoder:
        return cls(
            state["column"],
            dim=int(state["dim"]),
            seed=int(state["seed"]),
            truncated=int(state["truncated_values"]),
            vocabulary={a: list(v) for a, v in state["terms"].items()},
            idf={a: v.numpy() for a, v in state["idf"].items()},
            components=state["components"].numpy(),
            mean=state["mean"].numpy(),
            std=state["std"].numpy(),
        )


_ANALYZERS = (("word", (1, 2), WORD_FEATURES), ("char_wb", (2, 5), CHAR_FEATURES))


class _NoVocabulary(Exception):
    """The column has no word or character n-gram in any row."""


def looks_like_text(column: pa.ChunkedArray) -> bool:
    """A string column of varied values is text, not a category, when at least a quarter of its
    values have a space in them (ids, codes and URLs rarely do)."""
    values = column.drop_null()
    if len(values) == 0:
        return False
    spaced = pc.sum(pc.match_substring_regex(values, r"\s\S")).as_py() or 0
    return spaced >= 0.25 * len(values)


def _texts(column: pa.ChunkedArray) -> tuple[list[str], int]:
    """The values as Python strings: null as "", longer ones cut to ``MAX_CHARS``."""
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    column = pc.fill_null(column, "")
    lengths = pc.utf8_length(column)
    long = pc.greater(lengths, MAX_CHARS)
    truncated = pc.sum(long).as_py() or 0
    if truncated:
        column = pc.utf8_slice_codeunits(column, 0, MAX_CHARS)
    return column.to_pylist(), int(truncated)
