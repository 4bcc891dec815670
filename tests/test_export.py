"""``refine export`` and ``refine query --format parquet``: a Parquet file for the next training
job, with the input's types, written atomically, and never a change to the run."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

import refine
import refine.io.export as export_module
from refine.cli import cli
from refine.io.export import export_data
from tests.conftest import blobs

FAST_RUN = dict(max_epochs=10, hidden=(64,), folds=3, rounds=1)
INPUT_COLUMNS = ["id", "note", "count", "x0", "x1", "x2", "x3", "label"]


def invoke(*args: object):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def snapshot(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def frame(n: int = 360) -> pd.DataFrame:
    """Blobs of three string classes, 10% flipped and every 29th label missing, with an int64
    id, a string note and a nullable Int64 count, as pandas writes them."""
    X, truth = blobs(n, 3, seed=3)
    names = np.array(["red", "green", "blue"])
    label = names[truth].astype(object)
    flip = np.random.default_rng(0).random(n) < 0.1
    label[flip] = names[(truth[flip] + 1) % 3]
    label[np.arange(n) % 29 == 5] = None
    return pd.DataFrame(
        {
            "id": np.arange(n, dtype=np.int64) * 3 + 1,
            "note": [f"row {i}" for i in range(n)],
            "count": pd.array([None if i % 7 == 0 else i for i in range(n)], dtype="Int64"),
            **{f"x{j}": X[:, j] for j in range(4)},
            "label": label,
        }
    )


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """A run on 120 rows (pseudo-labels off, so 5 rows stay unlabelled) and two updates of 120
    rows each: runs a, b (from a) and c (from b)."""
    root = tmp_path_factory.mktemp("export")
    df = frame()
    for name, part in zip("abc", (df.iloc[:120], df.iloc[120:240], df.iloc[240:]), strict=True):
        part.to_parquet(root / f"{name}.parquet")
    settings = dict(ignore=("id", "note"), seed=0, pseudo_label=False, **FAST_RUN)
    refine.run(root / "a.parquet", root / "runs" / "a", **settings)
    refine.update(root / "runs" / "a", root / "b.parquet", root / "runs" / "b", rounds=1)
    refine.update(root / "runs" / "b", root / "c.parquet", root / "runs" / "c", rounds=1)
    return root


def test_export_writes_the_input_columns_with_their_types_then_the_refined_label(chain, tmp_path):
    run = chain / "runs" / "a"
    before = snapshot(run)
    out = tmp_path / "clean.parquet"
    result = invoke("export", run, "--out", out)
    assert result.exit_code == 0, result.output
    assert result.output == (
        f"wrote 120 rows to {out}: the input's 8 columns, then label_refined and sample_weight\n"
    )
    refined = pq.read_table(run / "refined.parquet")
    written = pq.read_table(out)
    names = [*INPUT_COLUMNS, "label_refined", "sample_weight"]
    assert written.schema.names == names
    assert written.schema.remove_metadata() == refined.select(names).schema.remove_metadata()
    assert written.equals(refined.select(names).replace_schema_metadata(written.schema.metadata))
    # pandas reads back the input's dtypes: int64, its string dtype and the nullable Int64.
    original = pd.read_parquet(chain / "a.parquet")
    exported = pd.read_parquet(out)
    assert exported.dtypes[INPUT_COLUMNS].to_dict() == original.dtypes.to_dict()
    assert str(exported.dtypes["count"]) == "Int64" and exported["count"].isna().sum() == 18
    pd.testing.assert_frame_equal(exported[INPUT_COLUMNS], original)
    metadata = json.loads(written.schema.metadata[b"refine.export"])
    assert metadata["runs"] == [{"run": str(run.resolve()), "rows": 120}]
    assert json.loads(written.schema.metadata[b"refine.classes"]) == ["blue", "green", "red"]
    assert snapshot(run) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clean.parquet"]
    umask = os.umask(0o022)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # colleagues read it as any file


def test_export_options_drop_rows_keep_soft_labels_and_rename_the_label(chain, tmp_path):
    run = chain / "runs" / "a"
    refined = pq.read_table(run / "refined.parquet")
    keep = pc.and_(
        pc.not_equal(refined.column("label_source"), "excluded"),
        pc.is_valid(refined.column("label_refined")),
    )
    kept = refined.filter(keep)
    dropped = refined.num_rows - kept.num_rows
    unlabelled = refined.column("label").null_count  # rows 5, 34, 63 and 92
    assert unlabelled == 4 and dropped >= unlabelled  # pseudo-labels are off
    out = tmp_path / "train.parquet"
    result = invoke("export", run, "--out", out, "--drop-excluded", "--soft", "--as-label")
    assert result.exit_code == 0, result.output
    assert result.output == (
        f"wrote {kept.num_rows} rows to {out}: the input's 8 columns with the refined label in "
        f"'label', then label_soft and sample_weight\nleft out {dropped} rows: excluded, or "
        "without a refined label\n"
    )
    written = pq.read_table(out)
    assert written.schema.names == [*INPUT_COLUMNS, "label_soft", "sample_weight"]
    assert written.schema.field("label").type == refined.schema.field("label").type
    assert written.column("label").equals(kept.column("label_refined"))
    assert written.column("label").null_count == 0
    assert written.column("label_soft").equals(kept.column("label_soft"))
    assert written.column("id").equals(kept.column("id"))
    assert written.column("sample_weight").equals(kept.column("sample_weight"))


@pytest.mark.parametrize(
    ("name", "message"),
    [
        (
            "model.onnx",
            "{run!r} is a refine run without a student, so there is no model to export; write "
            "one with refine distill RUN_DIR --out MODEL_DIR (or refine run ... --student), or "
            "export the data to a .parquet file",
        ),
        (
            "clean.csv",
            "--out {out!r}: refine export writes a run's refined data to a .parquet file (a "
            "student model to .onnx or .pt, with --format); name a .parquet file, such as "
            "clean.parquet",
        ),
        (
            "exists.parquet",
            "output {out!r} already exists; pass --overwrite to replace it, or choose another "
            "--out",
        ),
    ],
)
def test_export_refuses_an_out_it_cannot_write(chain, tmp_path, name, message):
    out = tmp_path / name
    (tmp_path / "exists.parquet").write_bytes(b"kept")
    result = invoke("export", chain / "runs" / "a", "--out", out)
    assert result.exit_code == 2
    run = str(chain / "runs" / "a")
    assert result.output == f"Error: {message.format(out=str(out), run=run)}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists.parquet"]
    assert (tmp_path / "exists.parquet").read_bytes() == b"kept"


def test_export_never_writes_into_a_run_or_over_its_input(chain, tmp_path):
    run = chain / "runs" / "a"
    before, data = snapshot(run), (chain / "a.parquet").read_bytes()
    inside = invoke("export", run, "--out", run / "clean.parquet")
    assert inside.exit_code == 2
    assert inside.output == (
        f"Error: --out {str(run / 'clean.parquet')!r} lies in the run directory {str(run)!r}; "
        "refine export never changes a run: write the file outside it\n"
    )
    over = invoke("export", run, "--out", chain / "a.parquet", "--overwrite")
    assert over.exit_code == 2
    assert over.output == (
        f"Error: --out {str(chain / 'a.parquet')!r} is the input of the run {str(run)!r}; "
        "refine export never replaces the data a run read: choose another --out\n"
    )
    directory = tmp_path / "folder.parquet"
    directory.mkdir()
    into = invoke("export", run, "--out", directory, "--overwrite")
    assert into.exit_code == 2
    assert into.output == (
        f"Error: output {str(directory)!r} is a directory; name the file to write, or choose "
        "another --out\n"
    )
    assert snapshot(run) == before and (chain / "a.parquet").read_bytes() == data


def test_export_refuses_a_directory_that_is_not_a_run(tmp_path):
    out = tmp_path / "clean.parquet"
    missing = invoke("export", tmp_path / "nowhere", "--out", out)
    assert missing.exit_code == 2
    assert missing.output == (
        f"Error: run directory {str(tmp_path / 'nowhere')!r} does not exist; pass the --out of "
        "a refine run or refine update\n"
    )
    (tmp_path / "empty").mkdir()
    empty = invoke("export", tmp_path / "empty", "--out", out)
    assert empty.exit_code == 2
    assert empty.output == (
        f"Error: {str(tmp_path / 'empty')!r} is not a refine run: it has no run.json. Pass a "
        "directory written by refine run or refine update\n"
    )
    assert not out.exists()


def test_overwrite_replaces_the_file_whole_or_leaves_it(chain, tmp_path, monkeypatch):
    run = chain / "runs" / "a"
    out = tmp_path / "clean.parquet"
    out.write_bytes(b"earlier")
    monkeypatch.setattr(export_module, "BATCH_ROWS", 50)  # three batches
    calls = []
    apply = export_module._Plan.apply

    def fail_on_the_second_batch(self, table, run):
        calls.append(table.num_rows)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return apply(self, table, run)

    monkeypatch.setattr(export_module._Plan, "apply", fail_on_the_second_batch)
    with pytest.raises(refine.OutputError, match="no space left on the device"):
        export_data(run, out, overwrite=True)
    assert out.read_bytes() == b"earlier"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clean.parquet"]
    monkeypatch.setattr(export_module._Plan, "apply", apply)
    assert export_data(run, out, overwrite=True).rows == 120
    assert pq.read_table(out).num_rows == 120
    assert pq.ParquetFile(out).metadata.num_row_groups == 3


def test_chain_export_holds_every_batch_once_oldest_first(chain, tmp_path):
    runs = [chain / "runs" / name for name in "abc"]
    out = tmp_path / "all.parquet"
    result = invoke("export", runs[2], "--out", out, "--chain")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[1] == (
        f"from 3 runs, oldest first: {runs[0].resolve()} (120 rows), {runs[1].resolve()} "
        f"(120 rows), {runs[2]} (120 rows)"
    )
    written = pq.read_table(out)
    assert written.column("id").to_pylist() == frame()["id"].tolist()  # each row once, in order
    names = written.schema.names
    parts = [pq.read_table(run / "refined.parquet").select(names) for run in runs]
    assert written.equals(pa.concat_tables(parts).replace_schema_metadata(written.schema.metadata))
    # history.parquet holds replayed rows of earlier batches: none of them comes twice.
    assert (runs[2] / "history.parquet").is_file()
    metadata = json.loads(written.schema.metadata[b"refine.export"])
    assert [r["rows"] for r in metadata["runs"]] == [120, 120, 120]
    # Without --chain, the update run's own batch alone.
    alone = export_data(runs[2], tmp_path / "c.parquet")
    assert alone.rows == 120 and pq.read_table(alone.out).column("id").equals(parts[2].column("id"))


def test_chain_export_names_a_missing_parent(chain, tmp_path):
    run = tmp_path / "c"
    shutil.copytree(chain / "runs" / "c", run)
    summary = json.loads((run / "run.json").read_text())
    summary["parent"]["run"] = str(tmp_path / "gone")
    (run / "run.json").write_text(json.dumps(summary))
    out = tmp_path / "all.parquet"
    result = invoke("export", run, "--out", out, "--chain")
    assert result.exit_code == 2
    assert result.output == (
        f"Error: the run {str(run)!r} was updated from {str(tmp_path / 'gone')!r}, which does "
        "not exist (moved or deleted?); --chain needs every run of the chain. Put it back, or "
        "export without --chain for this run's rows alone\n"
    )
    assert not out.exists()


def fake_run(path: Path, table: pa.Table, parent: Path | None = None) -> Path:
    """A run directory holding only what export reads: run.json and refined.parquet."""
    path.mkdir()
    n = table.num_rows
    refined = table.append_column("label_refined", table.column("label"))
    refined = refined.append_column(
        "label_soft", pa.array([[1.0, 0.0]] * n, pa.list_(pa.float32()))
    )
    for name, column in (
        ("label_quality", pa.array([0.9] * n, pa.float32())),
        ("is_label_issue", pa.array([False] * n)),
        ("label_predicted", table.column("label")),
        ("label_source", pa.array(["given"] * n)),
        ("sample_weight", pa.array([1.0] * n, pa.float32())),
    ):
        refined = refined.append_column(name, column)
    pq.write_table(refined, path / "refined.parquet")
    summary = {"config": {"label": "label"}, "input": "<arrow table>"}
    if parent is not None:
        summary["parent"] = {"run": str(parent.resolve())}
    (path / "run.json").write_text(json.dumps(summary))
    return path


def test_chain_export_casts_later_batches_to_the_first_runs_types(tmp_path):
    first = pa.table({"id": pa.array(["a", "b"], pa.large_string()), "label": [0, 1]})
    later = pa.table({"id": pa.array(["c"], pa.string()), "label": [1]})
    a = fake_run(tmp_path / "a", first)
    b = fake_run(tmp_path / "b", later, parent=a)
    written = pq.read_table(export_data(b, tmp_path / "all.parquet", chain=True).out)
    assert written.schema.field("id").type == pa.large_string()
    assert written.column("id").to_pylist() == ["a", "b", "c"]


def test_chain_export_refuses_a_loop_of_parents(tmp_path):
    table = pa.table({"id": [1], "label": [0]})
    a = fake_run(tmp_path / "a", table)
    b = fake_run(tmp_path / "b", table, parent=a)
    summary = json.loads((a / "run.json").read_text())
    summary["parent"] = {"run": str(b.resolve())}
    (a / "run.json").write_text(json.dumps(summary))
    with pytest.raises(refine.InputError) as error:
        export_data(b, tmp_path / "all.parquet", chain=True)
    assert str(error.value) == (
        f"the run {str(a.resolve())!r} names {str(b.resolve())!r} as its parent, which is a "
        "later run of the same chain; restore the run.json files that refine wrote"
    )


def test_query_writes_a_select_as_parquet_with_its_types(chain, tmp_path):
    run = chain / "runs" / "a"
    out = tmp_path / "flagged.parquet"
    sql = "SELECT id, note, count, label, label_quality FROM refined ORDER BY id LIMIT 7"
    result = invoke("query", run, sql, "--format", "parquet", "--out", out)
    assert result.exit_code == 0, result.output
    assert result.output == f"wrote 7 rows to {out}\n"
    written = pq.read_table(out)
    assert written.schema.field("id").type == pa.int64()
    assert written.schema.field("label_quality").type == pa.float32()
    assert written.column("id").to_pylist() == [1, 4, 7, 10, 13, 16, 19]
    assert written.column("count").to_pylist() == [None, 1, 2, 3, 4, 5, 6]
    again = invoke("query", run, sql, "--format", "parquet", "--out", out)
    assert again.exit_code == 2
    assert again.output == (
        f"Error: output {str(out)!r} already exists; pass --overwrite to replace it, or choose "
        "another --out\n"
    )
    replaced = invoke(
        "query", run, "SELECT 1 AS one", "--format", "parquet", "-o", out, "--overwrite"
    )
    assert replaced.exit_code == 0 and pq.read_table(out).column_names == ["one"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--format", "parquet"],
            "--format parquet writes a file: name it with --out FILE.parquet",
        ),
        (
            ["--format", "csv", "--out", "{tmp}/x.parquet"],
            "--out is for --format parquet; --format csv prints to the terminal (redirect it to "
            "save it)",
        ),
        (
            ["--format", "parquet", "--out", "{tmp}/x.csv"],
            "--out '{tmp}/x.csv': --format parquet writes a .parquet file; name one",
        ),
        (
            ["--format", "parquet", "--out", "{run}/x.parquet"],
            "--out '{run}/x.parquet' lies in the run directory '{run}'; refine query never "
            "changes a run: write the file outside it",
        ),
    ],
)
def test_query_parquet_refusals(chain, tmp_path, args, message):
    run = chain / "runs" / "a"
    before = snapshot(run)
    fill = dict(tmp=tmp_path, run=run)
    result = invoke("query", run, "SELECT 1", *[a.format(**fill) for a in args])
    assert result.exit_code == 2
    assert result.output == f"Error: {message.format(**fill)}\n"
    assert list(tmp_path.iterdir()) == [] and snapshot(run) == before
