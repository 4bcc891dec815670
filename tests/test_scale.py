"""How a run uses the machine: --workers auto and --memory choose processes and the in-memory
or streaming path, and none of it changes a byte of the output."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner

import refine
from refine.cli import cli
from refine.config import ModelConfig
from refine.errors import ConfigError
from refine.io import write
from refine.io.decisions import Decisions
from refine.io.read import encode_labels, read_batches, read_table
from refine.learn import budget, stream
from refine.learn.model import MLPClassifier
from refine.learn.stream import FeatureFile, epoch_windows
from tests.conftest import noisy_table

SMALL = dict(ignore=("id",), rounds=2, folds=3, max_epochs=4, report=False, seed=0)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("scale") / "data.parquet"
    pq.write_table(noisy_table(n=240)[0], path)
    return path


@pytest.fixture(scope="module")
def one_worker(data, tmp_path_factory):
    """The in-memory run in this process: what every other way of running must equal."""
    out = tmp_path_factory.mktemp("one") / "run"
    refine.run(data, out, workers=1, **SMALL)
    return out


def execution(out):
    return json.loads((out / "run.json").read_text())["execution"]


@pytest.fixture
def small_windows(monkeypatch):
    """Windows of 3 chunks of 64 rows, so 240 rows make several windows, as at scale."""
    monkeypatch.setattr(stream, "CHUNK_BYTES", 1)
    monkeypatch.setattr(stream, "WINDOW_CHUNKS", 3)


# --- the plan -------------------------------------------------------------------------------


def test_auto_keeps_one_process_for_a_small_table_and_one_per_core_for_a_large_one():
    small = budget.plan(1_000, 20, 3, folds=5, memory=8 << 30, cores=8)
    assert (small.workers, small.streaming) == (1, False)
    large = budget.plan(1_000_000, 64, 10, folds=5, memory=16 << 30, cores=8)
    assert (large.workers, large.streaming) == (5, False)  # never more than the folds
    assert budget.plan(1_000_000, 64, 10, folds=5, memory=16 << 30, cores=2).workers == 2
    assert budget.plan(1_000, 20, 3, folds=5, workers=3, memory=8 << 30).workers == 3
    # 20,000 rows train in small batches for many epochs: worth a process per core.
    assert budget.plan(20_000, 64, 10, folds=5, memory=8 << 30, cores=8).workers == 5
    # 1,000 rows: 60 epochs of 720 training rows in 12 batches a fold, seconds in all.
    expected = 60 * (12 * budget.STEP_SECONDS + 720 * budget.ROW_SECONDS)
    assert budget.fold_seconds(1_000, 5, ModelConfig()) == pytest.approx(expected)
    assert budget.plan(1_000, 64, 10, folds=5, memory=8 << 30, cores=8).workers == 1


def test_the_budget_chooses_streaming_and_limits_the_workers():
    # 10M x 64 float32 is 2.56 GB of features; three copies do not fit in 4 GB.
    plan = budget.plan(10_000_000, 64, 10, folds=5, memory=4 << 30, cores=8)
    assert plan.streaming and plan.workers == 1  # the rest of 4 GB holds one worker
    roomy = budget.plan(10_000_000, 64, 10, folds=5, memory=8 << 30, cores=8)
    assert roomy.streaming and 1 < roomy.workers < 5
    assert not budget.plan(10_000_000, 64, 10, folds=5, memory=64 << 30, cores=8).streaming
    squeezed = budget.plan(1_000_000, 64, 10, folds=5, memory=1 << 30, cores=8)
    assert squeezed.workers == 1


@pytest.mark.parametrize(
    ("text", "expected"),
    [("4GB", 4 << 30), ("512M", 512 << 20), ("1.5g", int(1.5 * (1 << 30))), ("2000", 2000)],
)
def test_memory_sizes_are_read(text, expected):
    assert budget.parse_memory(text) == expected


@pytest.mark.parametrize("bad", ["lots", "-1GB", "0", "4 PB"])
def test_a_bad_memory_size_is_refused_with_the_form_to_use(bad):
    with pytest.raises(ConfigError, match="--memory must be an amount of memory such as 4GB"):
        budget.parse_memory(bad)


def test_the_cli_refuses_bad_execution_options_with_exit_2(data, tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["run", str(data), "--out", str(tmp_path / "x"), "--memory", "x"])
    assert result.exit_code == 2
    assert result.output == (
        "Error: --memory must be an amount of memory such as 4GB, 512MB or 1.5G, got 'x'\n"
    )
    result = runner.invoke(cli, ["run", str(data), "--out", str(tmp_path / "x"), "--workers", "-"])
    assert result.exit_code == 2
    assert "--workers must be 'auto' or a whole number >= 1, got '-'" in result.output
    assert not (tmp_path / "x").exists()


# --- the order of the rows and the file -----------------------------------------------------


def test_one_window_is_the_plain_shuffle_and_many_windows_visit_every_row_once(small_windows):
    rows = np.sort(np.random.default_rng(0).choice(1000, 700, replace=False))
    one = epoch_windows(rows, 100, 4, torch.Generator().manual_seed(1))  # 2 chunks of 64
    plain = rows[torch.randperm(len(rows), generator=torch.Generator().manual_seed(1)).numpy()]
    assert len(one) == 1 and np.array_equal(one[0], plain)
    many = epoch_windows(rows, 1000, 4, torch.Generator().manual_seed(1))  # 16 chunks
    assert len(many) == 6
    assert np.array_equal(np.sort(np.concatenate(many)), rows)
    for window in many:  # each window holds whole chunks: at most 3 of them
        assert len(np.unique(window // 64)) <= 3


def test_a_feature_file_reads_the_rows_asked_for(tmp_path, small_windows):
    X = np.random.default_rng(0).normal(size=(500, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", X)
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    source = FeatureFile.of(mapped)
    assert source is not None
    rows = np.array([0, 1, 63, 64, 200, 499])
    assert np.array_equal(source.take(rows), X[rows])
    windows = [np.array([499, 3, 64]), np.array([7, 0])]
    batches = list(source.window_batches(windows, 2))
    assert [r.tolist() for r, _ in batches] == [[499, 3], [64, 7], [0]]
    assert all(np.array_equal(x, X[r]) for r, x in batches)
    source.close()
    assert FeatureFile.of(X) is None and FeatureFile.of(mapped[:10]) is None


def test_a_fit_from_a_file_equals_the_fit_in_memory(tmp_path, small_windows):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(600, 4)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64)
    rows = np.sort(rng.choice(600, 450, replace=False))
    np.save(tmp_path / "x.npy", X)
    options = dict(n_classes=2, hidden=(8,), max_epochs=3, random_state=3, mixup=0.2)
    memory = MLPClassifier(**options).fit(X, y, rows=rows)
    disk = MLPClassifier(**options).fit(np.load(tmp_path / "x.npy", mmap_mode="r"), y, rows=rows)
    assert memory.history_ == disk.history_
    assert np.array_equal(memory.predict_member_proba(X), disk.predict_member_proba(X))


# --- whole runs -----------------------------------------------------------------------------


def test_auto_workers_give_the_bytes_of_one_worker(data, one_worker, tmp_path, monkeypatch):
    # Make auto start two processes even for this small table, whatever the machine's cores.
    monkeypatch.setattr(budget, "AUTO_MIN_SECONDS", 0)
    monkeypatch.setattr(budget, "machine_cores", lambda: 2)
    out = tmp_path / "auto"
    refine.run(data, out, **SMALL)
    assert execution(out)["workers"] == 2
    assert (out / "refined.parquet").read_bytes() == (one_worker / "refined.parquet").read_bytes()
    assert execution(one_worker)["workers"] == 1


def test_a_tiny_memory_budget_streams_to_the_same_bytes(data, tmp_path, small_windows):
    memory = tmp_path / "memory"
    refine.run(data, memory, workers=1, **SMALL)
    streamed = tmp_path / "streamed"
    refine.run(data, streamed, workers=1, memory="1KB", **SMALL)
    plan = execution(streamed)
    assert (plan["features"], plan["memory_budget_bytes"]) == ("streaming", 1024)
    assert execution(memory)["features"] == "in memory"
    assert (streamed / "refined.parquet").read_bytes() == (memory / "refined.parquet").read_bytes()
    # The features file lived in the run's working directory and went with it.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["memory", "streamed"]


def test_a_streaming_run_lets_the_input_go_and_reads_it_again_to_write(data, tmp_path, monkeypatch):
    from refine import pipeline

    held: list[int] = []  # Arrow's bytes allocated as the rounds start, run by run
    rounds = pipeline._rounds

    def counting(*args, **kwargs):
        held.append(pa.total_allocated_bytes())
        return rounds(*args, **kwargs)

    monkeypatch.setattr(pipeline, "_rounds", counting)
    before = pa.total_allocated_bytes()
    memory = refine.run(data, tmp_path / "memory", workers=1, **SMALL)
    between = pa.total_allocated_bytes()
    streamed = refine.run(data, tmp_path / "streamed", workers=1, memory="1KB", **SMALL)
    assert memory.held is not None and streamed.held is None
    # Gone, not cut to no rows: a slice of none keeps the table's buffers (and 0.28 GB a
    # million rows) alive.
    table_bytes = pq.read_table(data).nbytes
    assert held[0] - before >= table_bytes and held[1] - between < table_bytes / 4
    assert streamed.refined.equals(memory.refined)  # read back from refined.parquet
    summaries = [
        json.loads((tmp_path / r / "run.json").read_text()) for r in ("memory", "streamed")
    ]
    for s in summaries:
        del s["timings"], s["execution"]
        for r in s["rounds"]:
            del r["seconds"]
    assert summaries[0] == summaries[1]  # the key, the counts: taken before the table went


def test_writing_from_the_input_read_again_gives_the_bytes_of_one_table(tmp_path, monkeypatch):
    # Row groups of 64 rows over input batches of 50: cuts fall inside batches and between them.
    monkeypatch.setattr(write, "ROW_GROUP_ROWS", 64)
    table = noisy_table(n=240)[0]
    pq.write_table(table, tmp_path / "in.parquet", row_group_size=50)
    data = encode_labels(read_table(tmp_path / "in.parquet"), "label", 3)
    n, k = len(data.labels), data.n_classes
    rng = np.random.default_rng(0)
    proba = rng.dirichlet(np.ones(k), n).astype(np.float32)
    decisions = Decisions(
        proba.argmax(1), rng.integers(0, 3, n), rng.random(n).astype(np.float32), proba
    )
    args = (decisions, proba, rng.random(n) < 0.2, rng.random(n).astype(np.float32), {"a": 1})
    whole = write.refined_table(data, *args)
    pq.write_table(whole, tmp_path / "whole.parquet", compression="zstd", row_group_size=64)
    schema_only = dataclasses.replace(data, table=data.table.slice(0, 0))
    streamed = tmp_path / "streamed.parquet"
    write.write_refined_from(streamed, read_batches(tmp_path / "in.parquet"), schema_only, *args)
    assert pq.ParquetFile(streamed).metadata.num_row_groups == 4
    assert streamed.read_bytes() == (tmp_path / "whole.parquet").read_bytes()
