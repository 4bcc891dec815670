"""Free-text columns: TF-IDF over word and character n-grams, reduced to a dense block by a
truncated SVD (latent semantic analysis), so text trains the same MLP as every other column.

Which n-grams and how many components depend on the text: character n-grams carry misspelt,
obfuscated spam (WRENCH SMS and YouTube) but only blur a vocabulary of distinct words, and
fewer components suit a few broad topics. So where the column has labels, word-only and
word-and-character blocks of several widths are scored by the out-of-fold log-loss of a
LogisticRegression on the (noisy) labels, and the lowest replaces the rule's block when it is
clearly lower (reports/text-models.md: the chosen block against the rule's).

Why not a fastText-style ``EmbeddingBag`` trained end to end: the two are compared side by side
on real weakly labelled text in reports/text-models.md, and the dense LSA block lets text mix
with numeric and embedding columns, synthetic rows and ``refine update`` with no change to the
model or the cross-fitting. Nothing is downloaded: the vocabulary and the projection are
fitted on the table itself; the labels only choose among the blocks.
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
# support drown the topics in noise (reports/code-notes.md).
MIN_DIM, MAX_DIM, ROWS_PER_DIM = 16, 256, 16
# Rows are transformed in chunks, so a million-row column never holds its sparse matrix at once.
CHUNK = 20_000
# Block widths tried, besides the rule's, when labels choose the block; chosen on at most
# SELECT_ROWS labelled rows of the fitted sample, by SELECT_FOLDS-fold log-loss.
SELECT_DIMS = (16, 32, 64, 128)
SELECT_ROWS = 10_000
SELECT_FOLDS = 3


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
    # how the n-grams and the width were chosen: "rule" (no labels), or the log-losses
    chosen_by: str = "rule"
    replaced_default: bool = False  # the labels chose another block than the rule's
    vocabulary: dict[str, list[str]] = field(default_factory=dict)
    idf: dict[str, np.ndarray] = field(default_factory=dict)
    components: np.ndarray | None = None  # (dim, words + chars)
    mean: np.ndarray | None = None
    std: np.ndarray | None = None

    kind = "text"

    @property
    def width(self) -> int:
        return self.dim

    def fit(self, column: pa.ChunkedArray, labels: np.ndarray | None = None) -> TextEncoder:
        """Fit the vocabulary and the projection on the column's rows (at most ``FIT_ROWS``).

        With ``labels`` (class indices ``(N,)``, -1 where unlabelled) and no fixed ``dim``, the
        n-grams and the width are chosen as the module docstring says; without, the block holds
        word and character n-grams at the rule's width.
        """
        texts, self.truncated = _texts(column)
        rows, sample = self._fit_rows(texts)
        chosen = self.dim == 0 and labels is not None
        blocks = self._vectorize(sample)
        if self._stack(blocks, len(sample)).shape[1] == 0:
            raise _NoVocabulary()
        wanted = self.dim or min(MAX_DIM, max(MIN_DIM, len(sample) // ROWS_PER_DIM))
        y = _selection_labels(labels[rows], self.seed) if chosen and labels is not None else None
        candidates = self._candidates(blocks, len(sample), wanted, y)
        keep, components, reduced = self._choose(candidates, y)
        self._set_block(keep, components, reduced)
        return self

    def _fit_rows(self, texts: list[str]) -> tuple[np.ndarray, list[str]]:
        """The row indices ``(S,)`` the block is fitted on (at most ``FIT_ROWS``), and their texts."""
        if len(texts) > FIT_ROWS:
            rows = np.sort(np.random.default_rng(self.seed).choice(len(texts), FIT_ROWS, False))
            sample = [texts[i] for i in rows]
        else:
            rows = np.arange(len(texts))
            sample = texts
        return rows, sample

    def _vectorize(self, sample: list[str]) -> list[Any]:
        """Fit each analyzer's vocabulary and idf: its TF-IDF matrix ``(S, terms)`` or None."""
        from sklearn.feature_extraction.text import TfidfVectorizer

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
        return blocks

    def _candidates(
        self, blocks: list[Any], n_rows: int, wanted: int, y: np.ndarray | None
    ) -> list[_Candidate]:
        """Every block the labels ``y`` ``(S,)`` choose among (only the rule's without them)."""
        from sklearn.decomposition import TruncatedSVD

        # Each candidate: (rows' log-losses, which blocks, projection, reduced rows); the word
        # block alone is a candidate only beside characters, and only where labels choose.
        candidates = []
        for keep in ((True, True), (True, False)) if y is not None else ((True, True),):
            kept = [b if k else None for b, k in zip(blocks, keep, strict=True)]
            matrix = self._stack(kept, n_rows)
            if matrix.shape[1] == 0 or (not keep[1] and blocks[1] is None):
                continue
            dim = max(1, min(wanted, matrix.shape[1] - 1, n_rows - 1))
            svd = TruncatedSVD(dim, algorithm="randomized", n_iter=5, random_state=self.seed)
            reduced = svd.fit_transform(matrix).astype(np.float32)
            widths = sorted({d for d in SELECT_DIMS if d < dim} | {dim}) if y is not None else [dim]
            for width in widths:
                losses = _row_losses(_scaled(reduced[:, :width]), y) if y is not None else None
                candidates.append((losses, keep, svd.components_[:width], reduced[:, :width]))
        return candidates

    def _choose(
        self, candidates: list[_Candidate], y: np.ndarray | None
    ) -> tuple[tuple[bool, bool], np.ndarray, np.ndarray]:
        """The chosen candidate's blocks, projection ``(dim, terms)`` and reduced rows ``(S, dim)``;
        sets ``replaced_default`` and ``chosen_by``."""
        # The rule's block (both kinds of n-gram, the widest) unless another's log-loss is lower
        # by more than twice the standard error of the rows' paired differences: on a near tie
        # the ranking moves with the SVD's seed (reports/code-notes.md).
        rule = max((c for c in candidates if c[1] == (True, True)), key=lambda c: c[3].shape[1])
        losses, keep, components, reduced = rule
        if y is not None:
            beaten = [c for c in candidates if _clearly_lower(_scored(c[0]), _scored(rule[0]))]
            if beaten:
                losses, keep, components, reduced = min(beaten, key=lambda c: _scored(c[0]).mean())
            self.replaced_default = bool(beaten)
            default = (
                f"the default block (word and character n-grams, {rule[3].shape[1]} components)"
            )
            self.chosen_by = (
                f"{SELECT_FOLDS}-fold log-loss {_scored(losses).mean():.4f} against "
                f"{_scored(rule[0]).mean():.4f} "
                f"for {default}: lower by over two standard errors, the lowest of {len(candidates)}"
                if beaten
                else f"{SELECT_FOLDS}-fold log-loss {_scored(rule[0]).mean():.4f} with {default}; "
                f"none of the other {len(candidates) - 1} blocks was lower by two standard errors"
            )
        return keep, components, reduced

    def _set_block(
        self, keep: tuple[bool, bool], components: np.ndarray, reduced: np.ndarray
    ) -> None:
        """Keep the chosen projection ``(dim, terms)`` and the scale of its rows ``(S, dim)``."""
        for (analyzer, _, _), k in zip(_ANALYZERS, keep, strict=True):
            if not k:
                self.vocabulary[analyzer] = []
                self.idf[analyzer] = np.zeros(0, np.float32)
        self.dim = reduced.shape[1]
        self.components = np.ascontiguousarray(components, dtype=np.float32)
        self.mean = reduced.mean(0)
        # One scale for the whole block, not one per component: the components' spread ranks
        # them (the first carry the topics, the last mostly noise), and standardising each would
        # blow the noise up to the signal's size (reports/code-notes.md).
        self.std = np.full(self.dim, _scale(reduced, self.mean), np.float32)

    def transform(self, column: pa.ChunkedArray, out: np.ndarray) -> None:
        components, mean, std = self.components, self.mean, self.std
        assert components is not None and mean is not None and std is not None, "not fitted"
        texts, _ = _texts(column)
        for start in range(0, len(texts), CHUNK):
            chunk = texts[start : start + CHUNK]
            matrix = self._stack([self._tfidf(a, chunk) for a, _, _ in _ANALYZERS], len(chunk))
            block = np.asarray(matrix @ components.T, dtype=np.float32)
            out[start : start + len(chunk)] = (block - mean) / std

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
            "chosen_by": self.chosen_by,
            "replaced_default": self.replaced_default,
            "vocabulary": {a: len(v) for a, v in self.vocabulary.items()},
            "truncated_values": self.truncated,
        }

    def note(self) -> str | None:
        """Once per run: a block the labels chose over the default, and values truncated."""
        said = []
        if self.replaced_default:
            kinds = "word and character" if self.vocabulary.get("char_wb") else "word"
            said.append(
                f"{kinds} n-grams in {self.dim} components, chosen by the labels: {self.chosen_by}"
            )
        if self.truncated:
            said.append(
                f"{self.truncated} values longer than {MAX_CHARS:,} characters were truncated"
            )
        return f"text column {self.name!r}: " + "; ".join(said) if said else None

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
            chosen_by=str(state.get("chosen_by", "rule")),  # older model files lack these
            replaced_default=bool(state.get("replaced_default", False)),
            vocabulary={a: list(v) for a, v in state["terms"].items()},
            idf={a: v.numpy() for a, v in state["idf"].items()},
            components=state["components"].numpy(),
            mean=state["mean"].numpy(),
            std=state["std"].numpy(),
        )


_ANALYZERS = (("word", (1, 2), WORD_FEATURES), ("char_wb", (2, 5), CHAR_FEATURES))
# A block labels may choose: (rows' log-losses, which analyzers, projection, reduced rows).
_Candidate = tuple[np.ndarray | None, tuple[bool, bool], np.ndarray, np.ndarray]


def _scale(reduced: np.ndarray, mean: np.ndarray) -> float:
    return float(np.sqrt(((reduced - mean) ** 2).mean())) or 1.0


def _scaled(reduced: np.ndarray) -> np.ndarray:
    """The block as ``transform`` gives it: centred, one scale."""
    mean = reduced.mean(0)
    return (reduced - mean) / _scale(reduced, mean)


def _selection_labels(labels: np.ndarray, seed: int) -> np.ndarray | None:
    """``labels`` with -1 for rows left out of the choice: unlabelled rows, rows of classes with
    fewer than ``SELECT_FOLDS`` labels, and labelled rows past ``SELECT_ROWS`` (a seeded
    sample is kept). None where fewer than two classes or 30 rows remain: the rule decides."""
    y = np.asarray(labels, np.int64).copy()
    labelled = np.flatnonzero(y >= 0)
    if len(labelled) > SELECT_ROWS:
        dropped = np.random.default_rng(seed).choice(
            labelled, len(labelled) - SELECT_ROWS, replace=False
        )
        y[dropped] = -1
    counts = np.bincount(y[y >= 0], minlength=1)
    y[(y >= 0) & (counts[np.maximum(y, 0)] < SELECT_FOLDS)] = -1
    kept = y[y >= 0]
    if len(kept) < 30 or len(np.unique(kept)) < 2 or np.bincount(kept).max() == len(kept):
        return None
    return y


def _scored(losses: np.ndarray | None) -> np.ndarray:
    """A candidate's row log-losses, which every candidate has where labels choose the block."""
    assert losses is not None, "a candidate was not scored"
    return losses


def _clearly_lower(losses: np.ndarray, than: np.ndarray) -> bool:
    """Whether the mean of ``losses`` is below ``than``'s (the same rows) by more than twice the
    standard error of their paired differences."""
    difference = than - losses
    return bool(difference.mean() > 2.0 * difference.std() / np.sqrt(len(difference)))


def _row_losses(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Out-of-fold log-loss of a LogisticRegression on each row with ``y >= 0``."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    rows = y >= 0
    X, y = X[rows], y[rows]
    # classes renumbered to 0..k-1: a fold's model knows every class (each has SELECT_FOLDS rows)
    _, y = np.unique(y, return_inverse=True)
    folds = StratifiedKFold(SELECT_FOLDS, shuffle=True, random_state=0)
    with warnings.catch_warnings():
        # an unconverged fit still ranks the blocks; the user has nothing to act on
        warnings.simplefilter("ignore", ConvergenceWarning)
        proba = cross_val_predict(
            LogisticRegression(max_iter=300), X, y, cv=folds, method="predict_proba"
        )
    return -np.log(np.clip(proba[np.arange(len(y)), y], 1e-12, 1.0))


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
