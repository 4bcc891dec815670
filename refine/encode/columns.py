"""Encoders of the plain feature columns: numbers (standardised, with a missing-value
indicator), categories (one-hot, with a bucket for null) and embedding vectors (``list`` and
``fixed_size_list`` of floats, one standardised feature per dimension). Each is fitted on a
column and transforms columns of new tables the same way; ``refine.encode.features`` picks
one per column.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from refine.encode.skip import SkipColumn
from refine.errors import InputError
from refine.io.read import plain_values


@dataclass
class NumericEncoder:
    name: str
    mean: float = 0.0
    std: float = 1.0
    indicator: bool = False

    kind = "numeric"

    @property
    def width(self) -> int:
        return 1 + int(self.indicator)

    def fit(self, column: pa.ChunkedArray) -> NumericEncoder:
        values = _as_float(column)
        finite = np.isfinite(values)
        self.indicator = not finite.all()
        if finite.any():
            self.mean, self.std = _mean_std(values[finite])
        return self

    def transform(self, column: pa.ChunkedArray, out: np.ndarray) -> None:
        values = _as_float(column)
        finite = np.isfinite(values)
        with np.errstate(over="ignore", invalid="ignore"):
            z = (values - self.mean) / self.std
            # Near the float64 limit the difference overflows; this order does not.
            z = np.where(np.isfinite(z), z, values / self.std - self.mean / self.std)
        out[:, 0] = np.where(finite, _bounded(z), 0.0)
        if self.indicator:
            out[:, 1] = ~finite

    def describe(self) -> dict[str, Any]:
        return {
            "column": self.name,
            "kind": self.kind,
            "mean": self.mean,
            "std": self.std,
            "indicator": self.indicator,
        }


@dataclass
class OneHotEncoder:
    name: str
    categories: list = field(default_factory=list)
    null_bucket: bool = False

    kind = "one-hot"

    @property
    def width(self) -> int:
        return len(self.categories) + int(self.null_bucket)

    def fit(self, column: pa.ChunkedArray) -> OneHotEncoder:
        column = plain_values(column)
        values = pc.unique(column).drop_null()
        self.categories = values.take(pc.sort_indices(values)).to_pylist()
        self.null_bucket = column.null_count > 0
        return self

    def transform(self, column: pa.ChunkedArray, out: np.ndarray) -> None:
        column = plain_values(column)
        codes = pc.index_in(column, value_set=pa.array(self.categories, type=column.type))
        # Unseen values and nulls share the null bucket (or encode as all zeros without one).
        codes = pc.fill_null(codes, len(self.categories)).to_numpy(zero_copy_only=False)
        rows = np.arange(len(codes))
        keep = codes < out.shape[1]
        out[rows[keep], codes[keep]] = 1.0

    def describe(self) -> dict[str, Any]:
        return {
            "column": self.name,
            "kind": self.kind,
            "categories": self.categories,
            "null_bucket": self.null_bucket,
        }


def _column_stats(
    columns: Callable[[slice], np.ndarray], width: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``nanmean``, ``nanstd`` and "any finite value" of each of ``width`` columns, which
    ``columns(slice)`` gives a few at a time ``(N, step)``: neither the matrix nor NumPy's
    temporaries are held whole, and the numbers are the same, as each column is summed row
    after row either way."""
    step = 8
    mean, std = np.empty(width, np.float32), np.empty(width, np.float32)
    finite = np.empty(width, bool)
    for start in range(0, width, step):
        block = columns(slice(start, start + step))
        with np.errstate(over="ignore", invalid="ignore"):
            mean[start : start + step] = np.nanmean(block, axis=0)
            std[start : start + step] = np.nanstd(block, axis=0)
        finite[start : start + step] = np.isfinite(block).any(axis=0)
    return mean, std, finite


def _list_columns(column: pa.ChunkedArray, dim: int, which: slice | np.ndarray) -> np.ndarray:
    """Columns ``which`` of the vectors of ``column``'s non-null rows ``(n, len(which))``,
    float32, gathered a chunk at a time: only those columns are ever copied whole, where
    flattening the column first copied the matrix (0.26 GB a million 64-d rows, issue 29)."""
    parts = []
    for chunk in column.chunks:
        flat = pc.list_flatten(chunk)
        if flat.type != pa.float32():
            flat = flat.cast(pa.float32())
        matrix = flat.to_numpy(zero_copy_only=False).reshape(-1, dim)
        parts.append(np.ascontiguousarray(matrix[:, which]))
    return np.concatenate(parts)


@dataclass
class EmbeddingEncoder:
    name: str
    dim: int = 0
    mean: np.ndarray | None = None
    std: np.ndarray | None = None
    indicator: bool = False

    kind = "embedding"

    @property
    def width(self) -> int:
        return self.dim + int(self.indicator)

    def fit(self, column: pa.ChunkedArray) -> EmbeddingEncoder:
        lengths = pc.list_value_length(column).drop_null()
        if len(lengths) == 0:
            raise SkipColumn("all values are null")
        dims = pc.unique(lengths).to_pylist()
        if len(dims) != 1:
            raise SkipColumn(
                f"list lengths differ between rows ({sorted(dims)[:5]}); "
                "embedding columns need one length"
            )
        self.dim = int(dims[0])
        if self.dim == 0:
            raise SkipColumn("every list is empty")
        self.indicator = bool(column.null_count)
        dim = self.dim
        mean, std, finite = _column_stats(lambda which: _list_columns(column, dim, which), dim)
        overflow = finite & ~(np.isfinite(mean) & np.isfinite(std))
        if overflow.any():
            # Infinities, or squares past the float32 limit: infinities count as missing (as in
            # numeric columns), and the sums run in float64, in which float32 squares fit.
            part = _list_columns(column, dim, np.flatnonzero(overflow)).astype(np.float64)
            part[~np.isfinite(part)] = np.nan
            mean[overflow], std[overflow] = np.nanmean(part, axis=0), np.nanstd(part, axis=0)
        self.mean = np.nan_to_num(mean.astype(np.float32))
        std = std.astype(np.float32)
        self.std = np.where(np.isfinite(std) & (std > 0), std, 1.0).astype(np.float32)
        return self

    def _matrix(self, column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
        n = len(column)
        valid = pc.is_valid(column).to_numpy(zero_copy_only=False)
        lengths = pc.fill_null(pc.list_value_length(column), self.dim).to_numpy(
            zero_copy_only=False
        )
        if (lengths != self.dim).any():
            row = int(np.argmax(lengths != self.dim))
            raise InputError(
                f"embedding column {self.name!r} has a list of length {lengths[row]} at row {row}; "
                f"expected {self.dim} like the others"
            )
        flat = pc.list_flatten(column)
        if flat.type != pa.float32():
            flat = flat.cast(pa.float32())
        flat_np = flat.to_numpy(zero_copy_only=False)
        if valid.all():
            return flat_np.reshape(n, self.dim), valid
        values = np.full((n, self.dim), np.nan, dtype=np.float32)
        values[valid] = flat_np.reshape(-1, self.dim)
        return values, valid

    def _fitted(self) -> tuple[np.ndarray, np.ndarray]:
        """``mean`` and ``std``, which ``fit`` or ``FeatureEncoder.from_state`` set."""
        assert self.mean is not None and self.std is not None, "the encoder is not fitted"
        return self.mean, self.std

    def transform(self, column: pa.ChunkedArray, out: np.ndarray) -> None:
        values, valid = self._matrix(column)
        mean, std = self._fitted()
        block = out[:, : self.dim]
        with np.errstate(over="ignore", invalid="ignore"):
            np.subtract(values, mean, out=block)
            block /= std
            overflow = ~np.isfinite(block) & np.isfinite(values)
            if overflow.any():  # a difference past the float32 limit; this order stays inside
                block[overflow] = (values / std - mean / std)[overflow]
        block[~np.isfinite(block)] = 0.0
        np.clip(block, -FEATURE_LIMIT, FEATURE_LIMIT, out=block)
        if self.indicator:
            out[:, self.dim] = ~valid

    def describe(self) -> dict[str, Any]:
        return {
            "column": self.name,
            "kind": self.kind,
            "dim": self.dim,
            "indicator": self.indicator,
        }

    def state(self) -> dict[str, Any]:
        mean, std = self._fitted()
        return {**self.describe(), "mean": mean.tolist(), "std": std.tolist()}


def _as_float(column: pa.ChunkedArray) -> np.ndarray:
    values = pc.cast(column, pa.float64(), safe=False)
    return pc.fill_null(values, np.nan).to_numpy(zero_copy_only=False)


def _mean_std(values: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation (1.0 for a constant) of finite ``values``. Where values near
    the float64 limit overflow the sums, they are computed on the values scaled into [-1, 1]."""
    with np.errstate(over="ignore", invalid="ignore"):
        mean, std = float(values.mean()), float(values.std())
    if not (np.isfinite(mean) and np.isfinite(std)):
        scale = float(np.abs(values).max())
        scaled = values / scale
        mean, std = float(scaled.mean() * scale), float(scaled.std() * scale)
    return mean, std or 1.0


# Standardised features are clipped here: a fitted column cannot pass sqrt(N) standard
# deviations (Samuelson's inequality), so this bites only on new rows far outside the fitted
# range, where a huge input would otherwise make the network's outputs NaN.
FEATURE_LIMIT = 1e4


def _bounded(z: np.ndarray) -> np.ndarray:
    return np.clip(np.nan_to_num(z, nan=0.0), -FEATURE_LIMIT, FEATURE_LIMIT)
