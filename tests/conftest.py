"""Tiny datasets with known answers, and one shared refine run for the contract tests."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import refine
from refine.bench.noise import flip_symmetric

# Small models so the suite stays fast; the defaults are measured in benchmarks/.
FAST = dict(max_epochs=30, hidden=(64,), folds=3, rounds=2)


def blobs(n: int = 360, k: int = 3, dim: int = 4, seed: int = 0, spread: float = 0.6):
    """Well-separated Gaussian clusters: features ``(n, dim)`` and true labels ``(n,)``."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 3.0, size=(k, dim))
    truth = np.arange(n) % k
    X = centres[truth] + rng.normal(0.0, spread, size=(n, dim))
    return X.astype(np.float32), truth


def noisy_table(n: int = 360, k: int = 3, rate: float = 0.15, seed: int = 0):
    """A table with numeric columns ``x0..``, a categorical, an embedding and a noisy int label."""
    X, truth = blobs(n, k, seed=seed)
    noisy = flip_symmetric(truth, rate, k, seed=seed + 1)
    emb = pa.FixedSizeListArray.from_arrays(pa.array(X[:, :2].reshape(-1)), 2)
    table = pa.table(
        {
            "id": pa.array(np.arange(n, dtype=np.int64) * 7 + 3),
            "x0": X[:, 0],
            "x1": pa.array(X[:, 1].astype(np.float64), mask=np.arange(n) % 17 == 0),
            "colour": pa.array(np.array(["red", "green", "blue"])[truth]).dictionary_encode(),
            "emb": emb,
            "label": noisy,
        }
    )
    return table, truth


@pytest.fixture(scope="session")
def noisy_data():
    return noisy_table()


@pytest.fixture(scope="session")
def noisy_parquet(tmp_path_factory, noisy_data):
    path = tmp_path_factory.mktemp("input") / "noisy.parquet"
    pq.write_table(noisy_data[0], path)
    return path


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory, noisy_parquet):
    """One run written to disk, shared by the tests that only read it."""
    out = tmp_path_factory.mktemp("runs") / "first"
    result = refine.run(noisy_parquet, out, ignore=("id",), seed=0, **FAST)
    return result, out
