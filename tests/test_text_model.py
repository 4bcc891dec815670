"""--text-model: a pretrained sentence encoder for text columns, its embedding cache, and how a
run records the model. The model is conftest's tiny random BERT, built offline."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

import refine
from refine.cli import cli
from refine.encode import embedding, pretrained
from refine.encode.embedding import EmbeddingCache
from refine.encode.features import fit_features
from refine.encode.pretrained import encode_texts, load_text_model
from refine.io.query import query
from tests.conftest import (
    TINY_WORDS,
    assert_update_refuses_the_changed_model,
    build_tiny_text_model,
    count_calls,
)

pytest.importorskip("sentence_transformers")

SMALL = dict(max_epochs=8, hidden=(16,), folds=2, rounds=1, report=False)


def texts(rows: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """Short sentences of two topics (the first and second half of the vocabulary)."""
    rng = np.random.default_rng(seed)
    truth = np.arange(rows) % 2
    half = len(TINY_WORDS) // 2
    words = [TINY_WORDS[:half], TINY_WORDS[half:]]
    return [" ".join(rng.choice(words[t], rng.integers(2, 7))) for t in truth], truth


@pytest.fixture()
def counted(monkeypatch):
    """How many values went through the network, call by call."""
    return count_calls(monkeypatch, pretrained)


@pytest.fixture()
def table_path(tmp_path):
    values, truth = texts(80)
    labels = truth.copy()
    labels[:6] = 1 - labels[:6]  # six wrong labels
    path = tmp_path / "texts.parquet"
    pq.write_table(pa.table({"text": values, "label": labels}), path)
    return path


def test_encoding_is_deterministic_and_equal_values_embed_equally(tiny_text_model, counted):
    values = ["free money now", "hello friend", None, "", "free money now", "ünïcode ?"]
    first = encode_texts(values, str(tiny_text_model), cache="off")
    second = encode_texts(values, load_text_model(str(tiny_text_model)), cache="off")
    assert first.shape == (6, 8) and first.dtype == np.float32 and np.isfinite(first).all()
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(first[0], first[4])
    np.testing.assert_array_equal(first[2], first[3])  # null embeds as ""
    assert not np.array_equal(first[0], first[1])
    assert counted == [4, 4]  # each distinct value once per call (null is "")


def test_the_cache_directory_spares_the_model_values_it_has_seen(
    tiny_text_model, tmp_path, counted
):
    model = load_text_model(str(tiny_text_model))
    values = ["free money now", "hello friend", "see you today"]
    first = encode_texts(values, model, EmbeddingCache(tmp_path / "cache", strict=True))
    # a fresh cache object on the same directory: nothing in memory, everything on disk
    again = encode_texts(values[::-1], model, EmbeddingCache(tmp_path / "cache", strict=True))
    np.testing.assert_array_equal(again, first[::-1])
    more = encode_texts([*values, "click here"], model, EmbeddingCache(tmp_path / "cache"))
    np.testing.assert_array_equal(more[:3], first)
    assert counted == [3, 1]
    assert len(list((tmp_path / "cache" / model.sha256).glob("*.parquet"))) == 2


def test_a_run_writes_embeddings_records_the_model_and_reruns_from_the_cache(
    tiny_text_model, table_path, tmp_path, counted
):
    cache = str(tmp_path / "cache")
    options = dict(text_model=str(tiny_text_model), embedding_cache=cache, seed=0, **SMALL)
    result = refine.run(table_path, tmp_path / "a", **options)
    column = result.summary["features"]["columns"][0]
    assert column["kind"] == "text-model" and column["dim"] == 8
    record = column["text_model"]
    assert record["path"] == str(tiny_text_model.resolve())
    assert set(record["files"]) >= {"model.safetensors", "config.json", "tokenizer.json"}
    assert record["sha256"] == load_text_model(str(tiny_text_model)).sha256
    assert "sentence-transformers" in record["versions"] and "transformers" in record["versions"]
    assert column["rows_encoded"] == len(set(pq.read_table(table_path)["text"].to_pylist()))

    embeddings = pq.read_table(tmp_path / "a" / "embeddings.parquet")
    assert embeddings.column_names == ["row_number", "text_model", "text_model_sha256", "text"]
    assert embeddings.schema.field("text").type == pa.list_(pa.float32())
    assert embeddings["row_number"].to_pylist() == list(range(80))
    direct = encode_texts(pq.read_table(table_path)["text"], str(tiny_text_model), cache="off")
    np.testing.assert_array_equal(np.array(embeddings["text"].to_pylist(), np.float32), direct)
    joined = query(
        tmp_path / "a",
        "SELECT count(*) AS n FROM refined JOIN embeddings USING (row_number) "
        "WHERE len(embeddings.text) = 8",
    )
    assert joined["n"].to_pylist() == [80]

    encoded = sum(counted)
    # a rerun from run.json keeps its cache setting, and finds every value there
    config = str(tmp_path / "a" / "run.json")
    rerun = CliRunner().invoke(cli, ["run", "--config", config, "--out", str(tmp_path / "b")])
    assert rerun.exit_code == 0, rerun.output
    assert "text column 'text': every embedding came from the cache" in rerun.output
    assert sum(counted) == encoded
    summary = json.loads((tmp_path / "b" / "run.json").read_text())
    assert summary["features"]["columns"][0]["rows_encoded"] == 0
    for name in ("refined.parquet", "embeddings.parquet"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_update_reuses_the_runs_embeddings_and_refuses_a_changed_model(
    tiny_text_model, table_path, tmp_path, counted
):
    model = tmp_path / "model"
    shutil.copytree(tiny_text_model, model)
    refine.run(table_path, tmp_path / "a", text_model=str(model), embedding_cache="off", **SMALL)
    before = sum(counted)
    batch, truth = texts(40, seed=1)
    batch_path = tmp_path / "batch.parquet"
    pq.write_table(pa.table({"text": batch, "label": truth}), batch_path)
    old = set(pq.read_table(table_path)["text"].to_pylist())
    result = refine.update(tmp_path / "a", batch_path, tmp_path / "b", replay=0)
    assert sum(counted) - before == len(set(batch) - old)  # rows the run held were not encoded
    assert pq.read_table(tmp_path / "b" / "embeddings.parquet").num_rows == 40
    assert result.summary["features"]["columns"][0]["text_model"]["sha256"]

    # the same directory, other weights: refused before anything is written
    shutil.rmtree(model)
    build_tiny_text_model(tmp_path / "other", seed=1).rename(model)
    assert_update_refuses_the_changed_model(
        tmp_path / "a", batch_path, model, "text-model", tmp_path / "c"
    )
    with pytest.raises(refine.ConfigError, match="refine update keeps the run's text_model"):
        refine.update(tmp_path / "a", batch_path, tmp_path / "d", text_model=str(model))


def test_distill_load_run_and_predict_reuse_the_runs_embeddings(
    tiny_text_model, table_path, tmp_path, counted
):
    # The run keeps no cache: its embeddings.parquet is all that spares distill and load_run.
    refine.run(
        table_path, tmp_path / "a", text_model=str(tiny_text_model), embedding_cache="off", **SMALL
    )
    encoded = sum(counted)
    student = refine.distill(tmp_path / "a", tmp_path / "student", size="8")
    previous = refine.load_run(tmp_path / "a")
    proba, _ = previous.predict(table_path)
    assert sum(counted) == encoded  # the run's rows went through the network once, in the run
    assert proba.shape == (80, 2)

    # predict reads the cache it is given: cold, every distinct value once; then none.
    cache = str(tmp_path / "cache")
    distinct = len(set(pq.read_table(table_path)["text"].to_pylist()))
    first = refine.predict(student, table_path, embedding_cache=cache).table
    assert sum(counted) == encoded + distinct
    again = refine.predict(tmp_path / "student", table_path, embedding_cache=cache).table
    assert sum(counted) == encoded + distinct
    assert again.column("label_predicted").equals(first.column("label_predicted"))
    result = CliRunner().invoke(
        cli,
        [
            "predict",
            str(tmp_path / "student"),
            str(table_path),
            "--out",
            str(tmp_path / "p.parquet"),
            "--embedding-cache",
            " ",
        ],
    )
    assert result.exit_code == 2 and "--embedding-cache must be auto, off or a directory" in (
        result.output
    )
    assert not (tmp_path / "p.parquet").exists()


def test_a_missing_extra_is_exit_2_with_the_install_command(table_path, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)  # import fails
    outcome = CliRunner().invoke(
        cli,
        ["run", str(table_path), "--text-model", str(tmp_path), "--out", str(tmp_path / "r")],
    )
    assert outcome.exit_code == 2
    assert (
        "Error: --text-model needs sentence-transformers, which is not installed: "
        "pip install 'refine[text]'" in outcome.output
    )
    assert not (tmp_path / "r").exists()


def test_a_hub_name_offline_without_a_local_copy_is_exit_2(table_path, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    outcome = CliRunner().invoke(
        cli,
        [
            "run",
            str(table_path),
            "--text-model",
            "someone/no-such-model",
            "--out",
            str(tmp_path / "r"),
        ],
    )
    assert outcome.exit_code == 2
    assert "--text-model 'someone/no-such-model' is neither a local directory" in outcome.output
    assert "HF_HUB_OFFLINE is set" in outcome.output


def test_a_text_model_with_no_text_column_says_it_is_unused(tiny_text_model, caplog):
    table = pa.table({"x": np.arange(40.0), "label": np.arange(40) % 2})
    with caplog.at_level("INFO", logger="refine"):
        encoder = fit_features(
            table, "label", text_model=str(tiny_text_model), embedding_cache="off"
        )
    assert [e.kind for e in encoder.encoders] == ["numeric"]
    assert encoder.embeddings(table) is None
    assert f"--text-model {str(tiny_text_model)!r} is unused" in caplog.text


def test_a_cache_directory_that_cannot_be_made_is_exit_2(tiny_text_model, table_path, tmp_path):
    (tmp_path / "file").write_text("not a directory")
    cache = str(tmp_path / "file" / "cache")
    args = ["run", str(table_path), "--text-model", str(tiny_text_model)]
    outcome = CliRunner().invoke(
        cli, [*args, "--embedding-cache", cache, "--out", str(tmp_path / "r")]
    )
    assert outcome.exit_code == 2
    assert f"--embedding-cache {cache!r} cannot be created" in outcome.output
    assert not (tmp_path / "r").exists()


def test_the_cache_setting_names_a_directory_and_values_must_be_text(
    tiny_text_model, tmp_path, monkeypatch
):
    monkeypatch.setenv("REFINE_CACHE_DIR", str(tmp_path / "mine"))
    assert embedding.cache_directory("auto") == tmp_path / "mine" / "embeddings"
    monkeypatch.delenv("REFINE_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert embedding.cache_directory("auto") == tmp_path / "xdg" / "refine" / "embeddings"
    assert embedding.cache_directory("off") is None
    assert embedding.cache_directory(str(tmp_path / "c")) == tmp_path / "c"
    with pytest.raises(refine.InputError, match="value 1 is a int: 3"):
        encode_texts(["a", 3], str(tiny_text_model), cache="off")


def test_a_streaming_run_keeps_its_table_for_the_embeddings(tiny_text_model, table_path, tmp_path):
    # A streaming run lets its input go only when nothing after the encoding reads it; the
    # embeddings.parquet of a pretrained model does, so the table stays and the bytes agree.
    options = dict(text_model=str(tiny_text_model), embedding_cache="off", seed=0, **SMALL)
    memory = refine.run(table_path, tmp_path / "memory", workers=1, **options)
    streamed = refine.run(table_path, tmp_path / "streamed", workers=1, memory="1KB", **options)
    assert streamed.summary["execution"]["features"] == "streaming"
    assert memory.held is not None and streamed.held is not None
    for name in ("refined.parquet", "embeddings.parquet"):
        assert (tmp_path / "memory" / name).read_bytes() == (
            tmp_path / "streamed" / name
        ).read_bytes()
