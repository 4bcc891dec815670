"""Synthetic training rows made from the rows refine trusts.

In: the input ``table`` (N rows), its fitted ``FeatureEncoder``, and per row the refined class
``refined`` ``(N,)``, a ``trusted`` mask ``(N,)`` and the ``folds`` ``(N,)``. Out: a
``Synthetic`` of M rows: a table with the input's schema, ``parents`` ``(M, 2)``, ``soft``
``(M, K)``, ``labels`` ``(M,)`` and ``folds`` ``(M,)``.

Both parents of a synthetic row lie in one fold and the row belongs to that fold, so it trains
only the fold models that never predict its parents: out-of-fold predictions stay honest.
Rows are made column by column in the input's own value space rather than in the encoded
matrix, so the written rows read like real ones and re-encode through the same encoder.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from sklearn.neighbors import NearestNeighbors

from refine.config import AUGMENT_METHODS
from refine.encode.columns import EmbeddingEncoder, NumericEncoder
from refine.encode.features import FeatureEncoder
from refine.errors import ConfigError

__all__ = ["AUGMENT_METHODS", "Synthetic", "synthesize"]
MAX_RATIO = 10.0
# Neighbours an interpolated row's second parent is drawn from, as in SMOTE.
NEIGHBOURS = 5


@dataclass
class Synthetic:
    """M synthetic rows and where they came from.

    ``table``: the rows, with exactly the input table's schema. ``parents`` ``(M, 2)`` int64:
    row indices into the input table of parents a (dominant) and b; b is -1 for a row made
    from one parent. ``soft`` ``(M, K)`` float32: training target, rows sum to 1. ``labels``
    ``(M,)`` int64: ``soft.argmax(1)``. ``folds`` ``(M,)`` int64: the parents' fold.
    """

    table: pa.Table
    parents: np.ndarray
    soft: np.ndarray
    labels: np.ndarray
    folds: np.ndarray

    def __len__(self) -> int:
        return self.table.num_rows


@dataclass
class _Recipe:
    """How each synthetic row mixes its parents: ``share * a + (1 - share) * b``, then
    Gaussian noise on the ``noisy`` rows. ``b == -1`` means parent a alone (share 1)."""

    a: np.ndarray
    b: np.ndarray
    share: np.ndarray
    noisy: np.ndarray


def synthesize(
    table: pa.Table,
    encoder: FeatureEncoder,
    label: str,
    classes: pa.Array,
    refined: np.ndarray,
    trusted: np.ndarray,
    folds: np.ndarray,
    method: str,
    ratio: float,
    seed: int,
    noise_scale: float = 0.1,
    mixup_alpha: float = 0.4,
) -> Synthetic:
    """Make ``round(ratio * P)`` synthetic rows from the P trusted rows with a refined class.

    Parameters
    ----------
    table : pa.Table
        The input table, N rows, all columns with their original types.
    encoder : FeatureEncoder
        Fitted on ``table``; its encoders say which columns are features and how they encode.
    label : str
        The label column; synthetic rows hold ``classes[labels]`` there.
    classes : pa.Array
        Class values; class index ``i`` is ``classes[i]``.
    refined : ndarray of int, shape (N,)
        Refined class index per row, -1 for none.
    trusted : ndarray of bool, shape (N,)
        Rows allowed as parents (only those with ``refined >= 0`` are used).
    folds : ndarray of int, shape (N,)
        Fold of each row; both parents of a synthetic row come from one fold.
    method : {"interpolate", "mixup", "noise"}
        * ``"interpolate"`` (SMOTE): parent b is one of the 5 nearest trusted rows of parent
          a's class and fold in the encoded feature space; the row is ``a + u * (b - a)``,
          ``u ~ U(0, 1)``, and its target the class. A class with a single trusted row in a
          fold has no neighbour to move towards: its rows are made as ``"noise"`` rows
          (parent b = -1) instead of being dropped, so the count stays exact and a rare class
          keeps its share.
        * ``"mixup"``: parent b is any trusted row of a's fold (another row where the fold
          has one); ``lam ~ Beta(mixup_alpha, mixup_alpha)`` taken as ``max(lam, 1 - lam)``
          so that a dominates; features and target mix with ``lam``.
        * ``"noise"``: one parent; numeric and embedding features get Gaussian noise of sd
          ``noise_scale`` times the column's sd; the target is the class.
    ratio : float
        Synthetic rows per parent row, in [0, 10]; 0 gives no rows.
    seed : int
        Seed of ``np.random.default_rng``; the same seed gives the same rows.
    noise_scale : float
        Noise sd as a share of each feature's sd, for ``"noise"``; at least 0.
    mixup_alpha : float
        Beta parameter for ``"mixup"``, above 0; small values keep rows close to parent a.

    Returns
    -------
    Synthetic
        Rows ordered by fold. Each fold gets rows in proportion to its parent rows, and
        within a fold every parent row is parent a as evenly as the count allows (exactly
        ``ratio`` times for a whole ``ratio``), which keeps the trusted class balance. Numeric columns are mixed (integers rounded back to their type),
        a null in one parent takes the other's value; one-hot columns take parent a's value;
        embedding columns mix element-wise; every column that is neither a feature nor the
        label (ids, timestamps, skipped columns) is null, or parent a's value where the
        schema declares the column non-nullable.
    """
    _check_options(method, ratio, noise_scale, mixup_alpha)
    refined, folds, pool = _parent_pool(table.num_rows, refined, trusted, folds)
    m = int(round(ratio * len(pool)))
    if m == 0:
        return _empty(table, len(classes))

    rng = np.random.default_rng(seed)
    a = _draw_parents(pool, folds, m, rng)
    recipe = _recipe(method, a, pool, table, encoder, refined, folds, mixup_alpha, rng)
    return _assemble(table, encoder, label, classes, refined, folds, recipe, noise_scale, rng)


def _check_options(method: str, ratio: float, noise_scale: float, mixup_alpha: float) -> None:
    """Raise ``ConfigError`` for a method or setting ``synthesize`` does not accept."""
    if method not in AUGMENT_METHODS:
        raise ConfigError(f"--augment must be one of {', '.join(AUGMENT_METHODS)}, got {method!r}")
    if not 0.0 <= ratio <= MAX_RATIO:
        raise ConfigError(
            f"--augment-ratio must be between 0 and {MAX_RATIO:g} synthetic rows per trusted "
            f"row, got {ratio!r}"
        )
    if not noise_scale >= 0.0:
        raise ConfigError(f"noise_scale must be 0 or more, got {noise_scale!r}")
    if not mixup_alpha > 0.0:
        raise ConfigError(f"mixup_alpha must be above 0, got {mixup_alpha!r}")


def _parent_pool(
    n: int, refined: np.ndarray, trusted: np.ndarray, folds: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``refined`` and ``folds`` ``(N,)`` as int64, and the indices of trusted rows with a class."""
    for name, values in (("refined", refined), ("trusted", trusted), ("folds", folds)):
        if np.shape(values) != (n,):
            raise ValueError(
                f"{name} must have shape ({n},) like the table, got {np.shape(values)}"
            )
    refined = np.asarray(refined, dtype=np.int64)
    folds = np.asarray(folds, dtype=np.int64)
    pool = np.flatnonzero(np.asarray(trusted, dtype=bool) & (refined >= 0))
    if (folds[pool] < 0).any():
        raise ValueError("every trusted row needs a fold (folds >= 0)")
    return refined, folds, pool


def _recipe(
    method: str,
    a: np.ndarray,
    pool: np.ndarray,
    table: pa.Table,
    encoder: FeatureEncoder,
    refined: np.ndarray,
    folds: np.ndarray,
    mixup_alpha: float,
    rng: np.random.Generator,
) -> _Recipe:
    """How ``method`` mixes each row's parent a ``(M,)`` with a second parent from ``pool``."""
    m = len(a)
    if method == "interpolate":
        return _interpolate(a, pool, encoder.transform(table), refined, folds, rng)
    if method == "mixup":
        return _mixup(a, pool, folds, mixup_alpha, rng)
    return _Recipe(a, np.full(m, -1), np.ones(m), np.ones(m, bool))


def _empty(table: pa.Table, k: int) -> Synthetic:
    return Synthetic(
        table=table.slice(0, 0),
        parents=np.zeros((0, 2), np.int64),
        soft=np.zeros((0, k), np.float32),
        labels=np.zeros(0, np.int64),
        folds=np.zeros(0, np.int64),
    )


def _draw_parents(
    pool: np.ndarray, folds: np.ndarray, m: int, rng: np.random.Generator
) -> np.ndarray:
    """Parent a of each of ``m`` rows, fold by fold, each fold's share rounded by largest
    remainder so the counts add up to ``m``: every row of the fold ``count // size`` times,
    plus a random ``count % size`` of them once more."""
    by_fold = pool[np.argsort(folds[pool], kind="stable")]
    _, starts, sizes = np.unique(folds[by_fold], return_index=True, return_counts=True)
    quota = m * sizes / sizes.sum()
    counts = np.floor(quota).astype(np.int64)
    counts[np.argsort(counts - quota, kind="stable")[: m - counts.sum()]] += 1
    parts = []
    for start, size, count in zip(starts, sizes, counts, strict=True):
        rows = by_fold[start : start + size]
        reps, rest = divmod(int(count), int(size))
        parts += [np.tile(rows, reps), rng.choice(rows, rest, replace=False)]
    return np.concatenate(parts).astype(np.int64)


def _interpolate(
    a: np.ndarray,
    pool: np.ndarray,
    X: np.ndarray,
    refined: np.ndarray,
    folds: np.ndarray,
    rng: np.random.Generator,
) -> _Recipe:
    """Parent b among the nearest trusted rows of a's (fold, class) group."""
    key = folds * (int(refined.max()) + 1) + refined
    members_all = pool[np.argsort(key[pool], kind="stable")]
    group_keys, starts, sizes = np.unique(key[members_all], return_index=True, return_counts=True)
    # The synthetic rows sorted by their parent a's group, and where each group starts and ends.
    targets_all = np.argsort(key[a], kind="stable")
    sorted_keys = key[a][targets_all]
    bounds = np.searchsorted(sorted_keys, group_keys, side="left")
    ends = np.searchsorted(sorted_keys, group_keys, side="right")
    b = np.full(len(a), -1, dtype=np.int64)
    for start, size, lo, hi in zip(starts, sizes, bounds, ends, strict=True):
        if hi == lo or size < 2:
            continue
        members = members_all[start : start + size]
        targets = targets_all[lo:hi]
        local = np.searchsorted(members, a[targets])
        queried, inverse = np.unique(local, return_inverse=True)
        k = min(NEIGHBOURS, int(size) - 1)
        index = NearestNeighbors(n_neighbors=k + 1).fit(X[members])
        neighbours = _without_self(
            index.kneighbors(X[members[queried]], return_distance=False), queried
        )
        b[targets] = members[neighbours[inverse.ravel(), rng.integers(k, size=len(targets))]]
    pair = b >= 0
    share = np.ones(len(a))
    share[pair] = 1.0 - rng.random(int(pair.sum()))
    return _Recipe(a, b, share, ~pair)


def _without_self(neighbours: np.ndarray, queried: np.ndarray) -> np.ndarray:
    """Drop each queried row from its own ``k + 1`` neighbours (the last one where exact
    duplicates pushed it out of the list), leaving ``k``."""
    is_self = neighbours == queried[:, None]
    is_self[~is_self.any(1), -1] = True
    return neighbours[~is_self].reshape(len(neighbours), -1)


def _mixup(
    a: np.ndarray, pool: np.ndarray, folds: np.ndarray, alpha: float, rng: np.random.Generator
) -> _Recipe:
    """Parent b: another trusted row of a's fold, drawn uniformly."""
    by_fold = pool[np.argsort(folds[pool], kind="stable")]
    fold_ids, starts, sizes = np.unique(folds[by_fold], return_index=True, return_counts=True)
    group = np.searchsorted(fold_ids, folds[a])
    start, size = starts[group], sizes[group]
    rank = np.empty(len(folds), np.int64)
    rank[by_fold] = np.arange(len(by_fold))
    # Step 1 .. size-1 places on within the fold, so b differs from a wherever it can.
    step = np.where(size > 1, 1 + (rng.random(len(a)) * (size - 1)).astype(np.int64), 0)
    b = by_fold[start + (rank[a] - start + step) % size]
    lam = rng.beta(alpha, alpha, size=len(a))
    return _Recipe(a, b, np.maximum(lam, 1.0 - lam), np.zeros(len(a), bool))


def _assemble(
    table: pa.Table,
    encoder: FeatureEncoder,
    label: str,
    classes: pa.Array,
    refined: np.ndarray,
    folds: np.ndarray,
    recipe: _Recipe,
    noise_scale: float,
    rng: np.random.Generator,
) -> Synthetic:
    a, b, share = recipe.a, recipe.b, recipe.share
    m, k = len(a), len(classes)
    rows = np.arange(m)
    soft = np.zeros((m, k), np.float32)
    pair = b >= 0
    same = ~pair | (refined[np.where(pair, b, a)] == refined[a])
    soft[rows[same], refined[a[same]]] = 1.0
    mixed = rows[~same]
    soft[mixed, refined[a[mixed]]] = share[mixed]
    soft[mixed, refined[b[mixed]]] = 1.0 - share[mixed]
    labels = soft.argmax(1).astype(np.int64)

    features = {e.name: e for e in encoder.encoders}
    b_or_a = np.where(pair, b, a)
    arrays = []
    for i, field in enumerate(table.schema):
        column = table.column(i)
        feature = features.get(field.name)
        if field.name == label:
            arrays.append(_label_column(classes, labels, field.type))
        elif isinstance(feature, NumericEncoder):
            sd = noise_scale * feature.std
            arrays.append(_numeric_column(column, a, b_or_a, share, recipe.noisy, sd, rng))
        elif isinstance(feature, EmbeddingEncoder):
            assert feature.std is not None, "the run's encoder is fitted"
            sds = noise_scale * feature.std.astype(np.float64)  # one per dimension
            arrays.append(
                _embedding_column(column, feature.dim, a, b_or_a, share, recipe.noisy, sds, rng)
            )
        elif feature is not None or not field.nullable:
            arrays.append(column.take(a))
        else:
            arrays.append(pa.nulls(m, type=field.type))
    return Synthetic(
        table=pa.Table.from_arrays(arrays, schema=table.schema),
        parents=np.stack([a, np.where(pair, b, -1)], axis=1).astype(np.int64),
        soft=soft,
        labels=labels,
        folds=folds[a].astype(np.int64),
    )


def _mix(va: np.ndarray, vb: np.ndarray, share: np.ndarray) -> np.ndarray:
    """``share * va + (1 - share) * vb``; a missing (non-finite) value takes the other
    parent's, and parent a's own value stays where both are missing."""
    ok_a, ok_b = np.isfinite(va), np.isfinite(vb)
    with np.errstate(invalid="ignore"):
        both = share * va + (1.0 - share) * vb
    return np.where(ok_a & ok_b, both, np.where(ok_a | ~ok_b, va, vb))


def _add_noise(
    values: np.ndarray, noisy: np.ndarray, sd: float | np.ndarray, rng: np.random.Generator
) -> None:
    if not noisy.any():
        return
    block = values[noisy]
    block += rng.standard_normal(block.shape) * sd
    values[noisy] = block  # non-finite values stay non-finite: missing stays missing


def _floats(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    values = pc.cast(column, pa.float64(), safe=False)
    return pc.fill_null(values, np.nan).to_numpy(zero_copy_only=False)


def _numeric_column(
    column: pa.ChunkedArray,
    a: np.ndarray,
    b: np.ndarray,
    share: np.ndarray,
    noisy: np.ndarray,
    sd: float,
    rng: np.random.Generator,
) -> pa.Array:
    taken_a, taken_b = column.take(a), column.take(b)
    values = _mix(_floats(taken_a), _floats(taken_b), share)
    _add_noise(values, noisy, sd, rng)
    null = _nulls(taken_a) & _nulls(taken_b)
    return _from_floats(values, null, column.type)


def _nulls(column: pa.ChunkedArray) -> np.ndarray:
    return pc.is_null(column).to_numpy(zero_copy_only=False)


def _from_floats(values: np.ndarray, null: np.ndarray, kind: pa.DataType) -> pa.Array:
    """Back to ``kind``: integers rounded and clipped to their range, decimals to their scale."""
    values = np.where(null, 0.0, values)
    if pa.types.is_decimal(kind):
        return pa.array(np.round(values, kind.scale), mask=null).cast(kind)
    dtype = np.dtype(kind.to_pandas_dtype())
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        values = np.clip(np.rint(values), info.min, info.max)
    return pa.array(values.astype(dtype), mask=null, type=kind)


def _list_matrix(column: pa.ChunkedArray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Float64 ``(n, dim)`` matrix of a list column (NaN for null rows) and its validity."""
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    valid = pc.is_valid(column).to_numpy(zero_copy_only=False)
    values = np.full((len(column), dim), np.nan)
    values[valid] = _floats(pc.list_flatten(column)).reshape(-1, dim)
    return values, valid


def _embedding_column(
    column: pa.ChunkedArray,
    dim: int,
    a: np.ndarray,
    b: np.ndarray,
    share: np.ndarray,
    noisy: np.ndarray,
    sd: np.ndarray,
    rng: np.random.Generator,
) -> pa.Array:
    va, valid_a = _list_matrix(column.take(a), dim)
    vb, valid_b = _list_matrix(column.take(b), dim)
    values = _mix(va, vb, share[:, None])
    _add_noise(values, noisy, sd, rng)
    valid = valid_a | valid_b
    kind = column.type
    if pa.types.is_fixed_size_list(kind):
        # A fixed-size list keeps its ``dim`` slots in null rows too.
        kept = np.where(valid[:, None], values, 0.0).ravel()
        lengths = np.full(len(valid), dim)
    else:
        kept = values[valid].ravel()
        lengths = np.where(valid, dim, 0)
    # Null elements inside a list came out as NaN; integers cannot hold NaN, so null them.
    inner = kind.value_type
    missing = np.isnan(kept) if pa.types.is_integer(inner) else np.zeros(len(kept), bool)
    flat = _from_floats(kept, missing, inner)
    buffers = [pa.array(valid).buffers()[1]]
    if not pa.types.is_fixed_size_list(kind):
        offsets = np.zeros(len(valid) + 1, np.int64 if pa.types.is_large_list(kind) else np.int32)
        np.cumsum(lengths, out=offsets[1:])
        buffers.append(pa.py_buffer(offsets))
    return pa.Array.from_buffers(kind, len(valid), buffers, children=[flat])


def _label_column(classes: pa.Array, labels: np.ndarray, kind: pa.DataType) -> pa.Array:
    if pa.types.is_dictionary(kind):
        return pa.DictionaryArray.from_arrays(
            pa.array(labels).cast(kind.index_type),
            classes.cast(kind.value_type),
            ordered=kind.ordered,
        )
    return classes.take(pa.array(labels)).cast(kind)
