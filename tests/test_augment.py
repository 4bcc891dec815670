"""Synthetic rows: provenance, value ranges, types, determinism and errors, on tiny tables."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa
import pytest

from refine.encode.features import FeatureEncoder, fit_features
from refine.errors import ConfigError
from refine.io.read import encode_labels
from refine.learn.augment import AUGMENT_METHODS, Synthetic, synthesize

N = 90


@dataclass
class Case:
    table: pa.Table
    encoder: FeatureEncoder
    classes: pa.Array
    refined: np.ndarray
    trusted: np.ndarray
    folds: np.ndarray

    def run(self, method: str, ratio: float = 1.0, seed: int = 0, **kwargs) -> Synthetic:
        return synthesize(
            self.table,
            self.encoder,
            "label",
            self.classes,
            self.refined,
            self.trusted,
            self.folds,
            method,
            ratio,
            seed,
            **kwargs,
        )

    @property
    def parents(self) -> np.ndarray:
        return np.flatnonzero(self.trusted & (self.refined >= 0))


def make_case(n: int = N, seed: int = 0) -> Case:
    """Three well-separated classes; folds ``(row // 3) % 3`` hold every class; every 5th row
    untrusted and rows 1 and 2 trusted but without a refined label."""
    rng = np.random.default_rng(seed)
    truth = np.arange(n) % 3
    centres = np.array([[0.0, 0.0, 0.0], [4.0, 0.0, 0.0], [0.0, 4.0, 0.0]])
    emb = (centres[truth] + rng.normal(0.0, 0.5, (n, 3))).astype(np.float32)
    table = pa.table(
        {
            "id": pa.array(np.arange(n, dtype=np.int64) + 1000),
            "x": rng.normal(truth * 2.0, 1.0),
            "n": pa.array(rng.integers(0, 50, n).astype(np.int32), mask=np.arange(n) % 7 == 0),
            "colour": pa.array(
                np.array(["red", "green", "blue"])[rng.integers(0, 3, n)]
            ).dictionary_encode(),
            "emb": pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel()), 3),
            "label": truth.astype(np.int64),
        }
    )
    labelled = encode_labels(table, "label", folds=3)
    refined = labelled.labels.copy()
    refined[[1, 2]] = -1
    return Case(
        table=table,
        encoder=fit_features(table, "label", ignore=("id",)),
        classes=labelled.classes,
        refined=refined,
        trusted=np.arange(n) % 5 != 0,
        folds=(np.arange(n) // 3) % 3,
    )


@pytest.fixture
def case() -> Case:
    return make_case()


def column(syn: Synthetic | Case, name: str) -> np.ndarray:
    values = syn.table.column(name).cast(pa.float64()).fill_null(np.nan)
    return values.to_numpy(zero_copy_only=False)


def embedding(table: pa.Table) -> np.ndarray:
    return np.array(table.column("emb").to_pylist(), dtype=np.float64)


@pytest.mark.parametrize("method", AUGMENT_METHODS)
def test_rows_keep_the_schema_and_re_encode(case, method):
    syn = case.run(method, ratio=1.5)
    m = round(1.5 * len(case.parents))
    assert syn.table.schema == case.table.schema
    assert len(syn) == m
    assert syn.parents.shape == (m, 2) and syn.parents.dtype == np.int64
    assert syn.soft.shape == (m, 3) and syn.soft.dtype == np.float32
    np.testing.assert_allclose(syn.soft.sum(1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(syn.labels, syn.soft.argmax(1))
    X = case.encoder.transform(syn.table)
    assert X.shape == (m, case.encoder.width) and np.isfinite(X).all()
    assert syn.table.column("id").null_count == m
    assert syn.table.column("label").to_pylist() == case.classes.take(syn.labels).to_pylist()


@pytest.mark.parametrize("method", AUGMENT_METHODS)
def test_parents_are_trusted_labelled_rows_of_the_row_s_fold(case, method):
    syn = case.run(method, ratio=2.5)
    a, b = syn.parents.T
    pair = b >= 0
    allowed = case.parents
    assert np.isin(a, allowed).all() and np.isin(b[pair], allowed).all()
    np.testing.assert_array_equal(syn.folds, case.folds[a])
    np.testing.assert_array_equal(case.folds[b[pair]], case.folds[a[pair]])
    # The dominant parent's class, for mixup too (its weight is at least one half).
    np.testing.assert_array_equal(syn.labels, case.refined[a])
    assert pair.all() == (method != "noise") and pair.any() == (method != "noise")
    if method == "interpolate":
        np.testing.assert_array_equal(case.refined[b], case.refined[a])


def test_every_parent_row_is_used_evenly_and_folds_get_their_share(case):
    syn = case.run("noise", ratio=1.0)
    np.testing.assert_array_equal(np.sort(syn.parents[:, 0]), case.parents)
    syn = case.run("mixup", ratio=2.5)
    uses = np.bincount(syn.parents[:, 0], minlength=N)[case.parents]
    assert set(uses) == {2, 3}
    per_fold = np.bincount(case.folds[case.parents])
    assert np.abs(np.bincount(syn.folds) - 2.5 * per_fold).max() < 1


def test_interpolated_values_lie_between_the_parents(case):
    syn = case.run("interpolate", ratio=3.0)
    a, b = syn.parents.T
    for name in ("x", "n"):
        value, va, vb = column(syn, name), column(case, name)[a], column(case, name)[b]
        both = ~np.isnan(va) & ~np.isnan(vb)
        low, high = np.minimum(va, vb), np.maximum(va, vb)
        assert ((value[both] >= low[both] - 1e-9) & (value[both] <= high[both] + 1e-9)).all()
        # A null in one parent takes the other's value; null only where both are null.
        one = np.isnan(va) != np.isnan(vb)
        np.testing.assert_array_equal(value[one], np.where(np.isnan(va), vb, va)[one])
        np.testing.assert_array_equal(np.isnan(value), np.isnan(va) & np.isnan(vb))
        assert one.any() or name == "x"
    assert syn.table.schema.field("n").type == pa.int32()
    # One u per row moves every numeric value and embedding element the same way.
    xa, xb = column(case, "x")[a], column(case, "x")[b]
    u = (column(syn, "x") - xa) / (xb - xa)
    ea, eb = embedding(case.table)[a], embedding(case.table)[b]
    np.testing.assert_allclose(embedding(syn.table), ea + u[:, None] * (eb - ea), atol=1e-5)
    assert syn.table.column("colour").to_pylist() == case.table.column("colour").take(a).to_pylist()


def test_interpolation_partner_is_one_of_the_five_nearest_of_its_group(case):
    syn = case.run("interpolate", ratio=2.0)
    X = case.encoder.transform(case.table)
    for a, b in syn.parents:
        group = case.parents[
            (case.folds[case.parents] == case.folds[a])
            & (case.refined[case.parents] == case.refined[a])
            & (case.parents != a)
        ]
        nearest = group[np.argsort(((X[group] - X[a]) ** 2).sum(1))[:5]]
        assert b in nearest


def test_mixup_target_uses_the_feature_weight(case):
    syn = case.run("mixup", ratio=3.0, mixup_alpha=1.0)
    a, b = syn.parents.T
    xa, xb = column(case, "x")[a], column(case, "x")[b]
    lam = (column(syn, "x") - xb) / (xa - xb)
    assert (lam >= 0.5 - 1e-9).all() and (lam <= 1 + 1e-9).all()
    differ = case.refined[a] != case.refined[b]
    assert differ.sum() > 10
    rows = np.flatnonzero(differ)
    np.testing.assert_allclose(syn.soft[rows, case.refined[a[rows]]], lam[rows], atol=1e-5)
    np.testing.assert_allclose(syn.soft[rows, case.refined[b[rows]]], 1 - lam[rows], atol=1e-5)
    same = np.flatnonzero(~differ)
    np.testing.assert_array_equal(syn.soft[same].max(1), 1.0)
    assert (a != b).all()


def test_noise_is_small_and_scaled_by_each_column_s_sd(case):
    syn = case.run("noise", ratio=2.0, noise_scale=0.1)
    a = syn.parents[:, 0]
    sd = case.table.column("x").to_numpy().std()
    moved = column(syn, "x") - column(case, "x")[a]
    assert (moved != 0).all() and np.abs(moved).max() < 6 * 0.1 * sd
    assert 0.05 * sd < moved.std() < 0.2 * sd
    assert syn.table.column("colour").to_pylist() == case.table.column("colour").take(a).to_pylist()
    quiet = case.run("noise", ratio=2.0, noise_scale=0.0)
    for name in ("x", "n"):
        np.testing.assert_array_equal(column(quiet, name), column(case, name)[a])
    np.testing.assert_array_equal(embedding(quiet.table), embedding(case.table)[a])


def test_a_class_alone_in_its_fold_is_noised_not_interpolated(case):
    lone = np.flatnonzero((case.folds == 0) & (case.refined == 2) & case.trusted)
    trusted = case.trusted.copy()
    trusted[lone[1:]] = False
    syn = replace(case, trusted=trusted).run("interpolate", ratio=2.0)
    a, b = syn.parents.T
    from_lone = a == lone[0]
    assert from_lone.sum() == 2 and (b[from_lone] == -1).all()
    assert (syn.labels[from_lone] == 2).all()
    assert (b[~from_lone] >= 0).all()


@pytest.mark.parametrize("method", AUGMENT_METHODS)
def test_same_seed_same_rows_other_seed_other_rows(case, method):
    first, again, other = (
        case.run(method, seed=3),
        case.run(method, seed=3),
        case.run(method, seed=4),
    )
    assert first.table.equals(again.table)
    np.testing.assert_array_equal(first.parents, again.parents)
    np.testing.assert_array_equal(first.soft, again.soft)
    assert not first.table.equals(other.table)


def test_no_parents_or_ratio_zero_gives_no_rows(case):
    for syn in (
        replace(case, trusted=np.zeros(N, bool)).run("interpolate"),
        case.run("mixup", ratio=0.0),
    ):
        assert len(syn) == 0 and syn.table.schema == case.table.schema
        assert syn.parents.shape == (0, 2) and syn.soft.shape == (0, 3)
        assert syn.labels.shape == (0,) and syn.folds.shape == (0,)


def test_bad_method_or_ratio_is_a_config_error(case):
    with pytest.raises(
        ConfigError, match=r"^--augment must be one of interpolate, mixup, noise, got 'x'$"
    ):
        case.run("x")
    for ratio in (-0.5, 10.5, float("nan")):
        with pytest.raises(ConfigError, match="--augment-ratio must be between 0 and 10"):
            case.run("noise", ratio=ratio)


def test_other_arrow_types_survive():
    """A dictionary string label, a list<double> embedding with a null row and a decimal."""
    base = make_case()
    n = base.table.num_rows
    emb = embedding(base.table)
    table = pa.table(
        {
            "d": pa.array(np.round(column(base, "x"), 2)).cast(pa.decimal128(7, 2)),
            "small": pa.array((np.arange(n) % 2 * 127).astype(np.int8)),
            "emb": pa.array(
                [None if i % 11 == 0 else list(e) for i, e in enumerate(emb)],
                pa.list_(pa.float64()),
            ),
            "label": pa.array(
                np.array(["cat", "dog", "eel"])[np.arange(n) % 3]
            ).dictionary_encode(),
        }
    )
    case = replace(
        base,
        table=table,
        encoder=fit_features(table, "label"),
        classes=encode_labels(table, "label", folds=3).classes,
    )
    for method in AUGMENT_METHODS:
        syn = case.run(method, ratio=2.0, noise_scale=0.3)
        assert syn.table.schema == table.schema
        assert np.isfinite(case.encoder.transform(syn.table)).all()
        a = syn.parents[:, 0]
        assert syn.table.column("label").to_pylist() == table.column("label").take(a).to_pylist()
        if method == "noise":
            # Noise of sd 0.3 * 63.5 pushes about half the 127s past the int8 range: they clip
            # to 127 rather than wrap round to negatives.
            top = column(syn, "small")[column(case, "small")[a] == 127]
            assert (top > 0).all() and (top <= 127).all() and (top == 127).mean() > 0.3
            copies = case.run(method, ratio=2.0, noise_scale=0.0)
            rows = table.column("emb").take(copies.parents[:, 0])
            assert rows.null_count > 0 and copies.table.column("emb").equals(rows)
            continue
        b = syn.parents[:, 1]
        d, da, db = column(syn, "d"), column(case, "d")[a], column(case, "d")[b]
        assert ((d >= np.minimum(da, db) - 0.005) & (d <= np.maximum(da, db) + 0.005)).all()
        # A list is null only where both parents' are; where one is, the other's is copied.
        rows = table.column("emb").to_pylist()
        made = syn.table.column("emb").to_pylist()
        null = np.array([r is None for r in rows])
        assert [r is None for r in made] == list(null[a] & null[b])
        one = np.flatnonzero(null[a] != null[b])
        assert len(one) > 0
        assert [made[i] for i in one] == [rows[b[i]] if null[a[i]] else rows[a[i]] for i in one]
