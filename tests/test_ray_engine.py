"""--engine ray: the folds as Ray tasks on a local 2-CPU Ray instance write the run the local
engine writes, byte for byte; a worker killed in a fold is retried; --resume keeps the finished
folds; a missing Ray install is a clean error. One Ray instance serves the whole module, since
starting one takes seconds."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner

import refine
from refine.cli import cli
from refine.config import ModelConfig
from refine.errors import ConfigError, WorkerError
from refine.learn import checkpoint as checkpoint_module
from refine.learn import ray_engine
from refine.learn.checkpoint import Checkpoint, checkpoint_path
from refine.learn.crossfit import cross_fit, make_folds
from refine.learn.ray_engine import KILL_FOLD, RayFoldRunner
from refine.progress import NULL_PROGRESS
from tests.conftest import blobs, noisy_table

SMALL = dict(ignore=("id",), rounds=2, folds=3, max_epochs=4, report=False, seed=0)
FLAGS = ["--ignore", "id", "--rounds", "2", "--folds", "3", "--max-epochs", "4", "--no-report"]
FILES = ["model.pt", "refined.parquet"]


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray instance of 2 CPUs, which every run in this module joins (and leaves open)."""
    ray = pytest.importorskip("ray")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A run with the local engine on 150 rows, and its input."""
    base = tmp_path_factory.mktemp("ray")
    data = base / "data.parquet"
    pq.write_table(noisy_table(n=150)[0], data)
    out = base / "local"
    refine.run(data, out, **SMALL)
    return out, data


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def same_files(out: Path, ref: Path) -> bool:
    return all((out / name).read_bytes() == (ref / name).read_bytes() for name in FILES)


def stable_run_json(out: Path) -> dict:
    summary = json.loads((out / "run.json").read_text())
    for key in ("timings", "command", "execution"):  # how the run went, not what it computed
        summary.pop(key)
    for row in summary["rounds"]:
        row.pop("seconds")
    return summary


def test_the_ray_engine_writes_the_local_engines_run(local_ray, reference, tmp_path):
    ref, data = reference
    out = tmp_path / "run"
    result = invoke("run", data, "--out", out, *FLAGS, "--engine", "ray", "--quiet")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in ref.iterdir())
    assert same_files(out, ref)
    assert stable_run_json(out) == stable_run_json(ref)
    assert local_ray.is_initialized()  # a connection it did not open is left open
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no checkpoint left behind


def test_a_worker_killed_in_a_fold_is_retried(local_ray, reference, tmp_path, monkeypatch):
    ref, data = reference
    killed = tmp_path / "killed"
    monkeypatch.setenv(KILL_FOLD, f"1:{killed}")
    refine.run(data, tmp_path / "run", engine="ray", **SMALL)
    assert killed.exists()  # fold 1's first worker did die
    assert same_files(tmp_path / "run", ref)


def test_a_fold_whose_worker_dies_every_time_stops_the_run(
    local_ray, reference, tmp_path, monkeypatch
):
    _, data = reference
    monkeypatch.setattr(ray_engine, "MAX_RETRIES", 0)
    monkeypatch.setenv(KILL_FOLD, f"2:{tmp_path / 'killed'}")
    with pytest.raises(
        WorkerError,
        match=r"^the Ray worker training fold 2 died \(\w+\) and Ray gave up after 0 retries",
    ):
        refine.run(data, tmp_path / "run", engine="ray", **SMALL)
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_an_error_in_a_fold_task_is_the_same_clean_error(local_ray):
    X, truth = blobs(n=60, k=3)
    with RayFoldRunner() as runner, pytest.raises(ConfigError, match="^--device cuda was asked"):
        cross_fit(
            X,
            np.eye(3, dtype=np.float32)[truth],
            np.ones(60, np.float32),
            make_folds(truth, 3, 0),
            ModelConfig(hidden=(8,), max_epochs=1, device="cuda"),
            1,
            0,
            runner=runner,
        )


class Stop(Exception):
    pass


def test_resume_trains_only_the_folds_the_checkpoint_lacks(
    local_ray, reference, tmp_path, monkeypatch
):
    ref, data = reference
    out = tmp_path / "run"

    def stop_at(point):
        if point == "fold:2:1":
            raise Stop(point)

    with monkeypatch.context() as patched:
        patched.setattr(checkpoint_module, "kill_point", stop_at)
        with pytest.raises(Stop):
            refine.run(data, out, engine="ray", **SMALL)
    kept = {p.stem for p in (checkpoint_path(out) / "round-2").glob("fold-*.pt")}
    assert "fold-1" in kept and not out.exists()

    trained = []
    save_fold = Checkpoint.save_fold

    def recording(self, stage, fold, record):
        trained.append((stage, fold))
        save_fold(self, stage, fold, record)

    monkeypatch.setattr(Checkpoint, "save_fold", recording)
    refine.run(data, out, engine="ray", resume=True, **SMALL)
    assert sorted(trained) == [("round-2", f) for f in range(3) if f"fold-{f}" not in kept]
    assert same_files(out, ref)


def test_a_missing_ray_install_says_how_to_install_it(reference, tmp_path, monkeypatch):
    _, data = reference
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    result = invoke("run", data, "--out", tmp_path / "run", *FLAGS, "--engine", "ray")
    assert result.exit_code == 2
    assert result.output == (
        "Error: --engine ray needs Ray, which is not installed here: pip install 'refine[ray]' "
        "(on every machine of the cluster), or run with --engine local\n"
    )
    assert list(tmp_path.iterdir()) == []


def test_an_address_needs_the_ray_engine(reference, tmp_path):
    _, data = reference
    result = invoke("run", data, "--out", tmp_path / "run", "--address", "auto")
    assert result.exit_code == 2
    assert result.output == (
        "Error: --address auto names a Ray cluster, which only --engine ray uses: "
        "add --engine ray, or drop --address\n"
    )
    assert list(tmp_path.iterdir()) == []


def text_table(path: Path, rows: int = 120) -> Path:
    """Short texts of two topics (test_text_model's), eight labels flipped, at ``path``."""
    import pyarrow as pa

    from tests.test_text_model import texts

    values, labels = texts(rows)
    labels[:8] = 1 - labels[:8]
    pq.write_table(pa.table({"text": values, "label": labels}), path)
    return path


def test_a_text_model_runs_on_ray_actors_and_embeds_as_here(
    local_ray, tiny_text_model, tmp_path, monkeypatch
):
    from refine.encode import pretrained
    from refine.learn import ray_data
    from tests.conftest import count_calls

    data = text_table(tmp_path / "texts.parquet")
    options = dict(
        text_model=str(tiny_text_model), embedding_cache="off", rounds=1, folds=2, seed=0
    )
    options.update(max_epochs=4, report=False)
    refine.run(data, tmp_path / "local", **options)
    # blocks of two CPU batches: several blocks, over both actors
    monkeypatch.setattr(ray_data, "ROWS_PER_BLOCK", 32)
    here = count_calls(monkeypatch, pretrained)
    refine.run(data, tmp_path / "ray", engine="ray", **options)
    assert here == []  # the network never ran in this process
    for name in ("refined.parquet", "embeddings.parquet"):  # model.pt records the speed
        assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "local" / name).read_bytes()
    column = json.loads((tmp_path / "ray" / "run.json").read_text())["features"]["columns"][0]
    distinct = len(set(pq.read_table(data)["text"].to_pylist()))
    assert column["kind"] == "text-model" and column["rows_encoded"] == distinct


def test_an_actor_that_cannot_load_the_model_is_the_same_clean_error(local_ray, tiny_text_model):
    import dataclasses

    from refine.encode.pretrained import load_text_model
    from refine.errors import InputError
    from refine.learn.ray_data import RayInference

    model = dataclasses.replace(load_text_model(str(tiny_text_model)), sha256="0" * 64)
    with pytest.raises(InputError, match=r"has changed since the run used it \(SHA-256 \w+"):
        RayInference(local_ray, cpus=2, gpus=0)(model, ["free money", "hello"], NULL_PROGRESS)


def test_images_embed_on_ray_actors_as_here(local_ray, png_digits, tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    from refine.encode.vision import encode_images, load_vision_model
    from refine.learn import ray_data
    from refine.learn.ray_data import RayInference
    from tests.test_image_model import build_tiny_vit

    model = load_vision_model(build_tiny_vit(tmp_path / "vit"))
    images = list(png_digits[0][:70])
    values = [*images, None, b"\x89PNG\r\n\x1a\n broken", images[0]]
    monkeypatch.setattr(ray_data, "ROWS_PER_BLOCK", 32)  # blocks of one CPU batch
    here = encode_images(values, model, cache="off")
    on_actors = encode_images(
        values, model, cache="off", inference=RayInference(local_ray, cpus=2, gpus=0)
    )
    np.testing.assert_array_equal(on_actors, here)  # NaN where a value is not an image
    assert np.isnan(here[70:72]).all() and not np.isnan(here[:70]).any()


def test_a_streaming_ray_run_encodes_the_shards_where_they_lie(local_ray, tmp_path, monkeypatch):
    import pyarrow as pa

    from refine import prepare
    from tests.test_text_model import texts

    table, truth = noisy_table(n=150)
    note = pa.array(texts(150)[0])  # two topics, beside the numbers: a text column to encode
    shards = write_shards(table.append_column("note", note), tmp_path / "shards")
    options = dict(SMALL, text=("note",))
    refine.run(shards, tmp_path / "local", **options)

    def not_here(*args):
        raise AssertionError("the refine process encoded the shards itself")

    monkeypatch.setattr(prepare, "_encode_to_disk", not_here)
    refine.run(shards, tmp_path / "ray", engine="ray", memory="1KB", **options)
    plan = json.loads((tmp_path / "ray" / "run.json").read_text())["execution"]
    assert plan["features"] == "streaming"
    assert same_files(tmp_path / "ray", tmp_path / "local")


def test_numbers_alone_are_encoded_here_where_a_copy_costs_less(local_ray, tmp_path, monkeypatch):
    from refine.learn import ray_data

    shards = write_shards(noisy_table(n=150)[0], tmp_path / "shards")

    def not_on_ray(*args):
        raise AssertionError("Ray encoded numbers and embeddings")

    monkeypatch.setattr(ray_data, "encode_shards", not_on_ray)
    refine.run(shards, tmp_path / "ray", engine="ray", memory="1KB", **SMALL)
    plan = json.loads((tmp_path / "ray" / "run.json").read_text())["execution"]
    assert plan["features"] == "streaming"  # where Ray could have encoded, and did not
    refine.run(shards, tmp_path / "local", **SMALL)
    assert same_files(tmp_path / "ray", tmp_path / "local")


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory):
    """A run with a student, and its input split into three files of several row groups."""
    root = tmp_path_factory.mktemp("ray-student")
    table = noisy_table(n=150)[0]
    shards = write_shards(table, root / "shards")
    refine.run(shards, root / "run", student=True, student_size="16", **SMALL)
    return root, table


def write_shards(table, folder: Path) -> Path:
    """``table`` as three Parquet files of 20-row groups under ``folder``."""
    folder.mkdir()
    for part, start in enumerate(range(0, table.num_rows, 50)):
        pq.write_table(table.slice(start, 50), folder / f"part-{part}.parquet", row_group_size=20)
    return folder


def test_predict_on_ray_actors_writes_what_predict_writes_here(local_ray, student_dir, tmp_path):
    root, _ = student_dir
    common = ["predict", root / "run", root / "shards", "--batch-rows", 7, "--coverage", 0.8]
    here = invoke(*common, "--out", tmp_path / "here.parquet")
    there = invoke(*common, "--out", tmp_path / "ray.parquet", "--engine", "ray")
    assert there.exit_code == 0, there.output
    written = pq.read_table(tmp_path / "ray.parquet")
    assert written.num_rows == 150
    assert written.equals(pq.read_table(tmp_path / "here.parquet"), check_metadata=True)
    assert there.output == here.output.replace("here.parquet", "ray.parquet")  # abstain count


def test_predict_on_ray_names_the_row_of_an_unknown_category(local_ray, student_dir, tmp_path):
    import pyarrow as pa

    root, table = student_dir
    colour = table.column("colour").cast(pa.string()).to_pylist()
    colour[123] = "purple"
    bad = write_shards(table.set_column(3, "colour", pa.array(colour)), tmp_path / "bad")
    out = tmp_path / "p.parquet"
    result = invoke("predict", root / "run", bad, "--out", out, "--engine", "ray")
    assert result.exit_code == 2
    assert result.output.startswith("Error: column 'colour' holds 'purple' (row 123), a category")
    assert not out.exists()


def test_predict_on_ray_needs_parquet_where_it_lies(student_dir):
    root, table = student_dir
    with pytest.raises(ConfigError, match=r"^--engine ray reads the data where it lies"):
        refine.predict(root / "run", table, engine="ray")


def test_tables_that_arrive_out_of_order_are_given_back_in_row_order():
    import pyarrow as pa

    from refine.learn.ray_data import in_row_order

    def rows(first, n):
        return pa.table({"row": np.arange(first, first + n), "x": np.arange(first, first + n) * 2})

    arriving = [rows(5, 3), pa.table({"row": [], "x": []}), rows(0, 2), rows(8, 1), rows(2, 3)]
    back = list(in_row_order(iter(arriving)))
    assert [t.num_rows for t in back] == [2, 3, 3, 1] and back[0].column_names == ["x"]
    assert pa.concat_tables(back).column("x").to_pylist() == [2 * i for i in range(9)]
    with pytest.raises(ValueError, match="rows from 5 came back, but none from row 2"):
        list(in_row_order(iter([rows(0, 2), rows(5, 1)])))


def test_inference_blocks_are_whole_batches_and_give_every_actor_work():
    from refine.learn.ray_data import ROWS_PER_BLOCK, _block_rows

    assert _block_rows(4000, 16, 2) == 512  # 8 blocks: four for each actor
    assert _block_rows(10, 16, 2) == 16  # never less than one batch
    assert _block_rows(10**7, 16, 2) == ROWS_PER_BLOCK  # never more than the cap
    assert _block_rows(10**7, 1000, 16) % 1000 == 0
