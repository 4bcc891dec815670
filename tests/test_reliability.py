"""Reliability: ``refine query`` only reads its run, a model file that holds code is refused,
metadata never names a path refine opens, output errors leave nothing behind, and one refine
process at a time writes an output directory."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner

import refine
from refine.cli import cli
from refine.finish import MODEL_FORMAT
from refine.io.write import output_lock, umask
from tests.conftest import noisy_table

ROOT = Path(__file__).resolve().parent.parent
SMALL = dict(rounds=1, folds=3, max_epochs=5, hidden=(16,))
SMALL_FLAGS = ["--rounds", "1", "--folds", "3", "--max-epochs", "2", "--ignore", "id"]


def invoke(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def snapshot(directory: Path) -> dict[str, str]:
    """Every file under ``directory`` (links included, not followed) and a hash of its bytes."""
    files = {}
    for path in sorted(directory.rglob("*")):
        key = str(path.relative_to(directory))
        if path.is_symlink():
            files[key] = "-> " + os.readlink(path)
        elif path.is_file():
            files[key] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            files[key] = "dir"
    return files


def leftovers(parent: Path, name: str) -> list[str]:
    """Temporary, old and lock files of output ``name`` left in ``parent``."""
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}."))


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models train ~30x faster on one thread than on two busy ones (measured here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """A finished run on 120 rows and its input file. Tests copy it before changing anything."""
    base = tmp_path_factory.mktemp("reliability")
    data = base / "data.parquet"
    pq.write_table(noisy_table(n=120)[0], data)
    refine.run(data, base / "run", ignore=("id",), seed=0, **SMALL)
    return base / "run", data


@pytest.fixture
def run_copy(small_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(small_run[0], copy)
    return copy


# --- refine query only reads ---------------------------------------------------------------

REFUSED_STATEMENTS = [
    ("CREATE TABLE t AS SELECT * FROM refined", "CREATE"),
    ("CREATE VIEW v AS SELECT 1", "CREATE"),
    ("INSERT INTO refined SELECT * FROM refined", "INSERT"),
    ("DROP VIEW refined", "DROP"),
    ("COPY refined TO '{run}/copy.parquet'", "COPY"),
    ("COPY (SELECT * FROM refined) TO '{outside}/leak.csv'", "COPY"),
    ("SELECT 1; COPY refined TO '{run}/refined.parquet'", "COPY"),
    ("EXPLAIN ANALYZE COPY refined TO '{run}/x.csv'", "EXPLAIN"),
    ("EXPORT DATABASE '{outside}/export'", "EXPORT"),
    ("ATTACH '{outside}/db.duckdb' AS db", "ATTACH"),
    ("INSTALL httpfs", "LOAD"),
    ("LOAD httpfs", "LOAD"),
    ("SET enable_external_access = true", "SET"),
    ("RESET lock_configuration", "SET"),
    ("SET allowed_directories = ['/']", "SET"),
    ("CHECKPOINT", "CALL"),
]


@pytest.mark.parametrize(("sql", "kind"), REFUSED_STATEMENTS)
def test_query_refuses_statements_that_are_not_select(run_copy, tmp_path, sql, kind):
    outside = tmp_path / "outside"
    outside.mkdir()
    before = snapshot(run_copy)
    result = invoke("query", run_copy, sql.format(run=run_copy, outside=outside))
    assert result.exit_code == 2
    assert result.output.startswith(
        f"Error: refine query only reads the run: {kind} statements are refused ("
    )
    assert result.output.strip().endswith(
        "Use SELECT (WITH, FROM, DESCRIBE and SUMMARIZE work too); to save a result, "
        "use --format parquet --out FILE, or --format csv or json and redirect the output"
    )
    assert snapshot(run_copy) == before
    assert list(outside.iterdir()) == []


REFUSED_READS = [
    "SELECT * FROM read_csv('{outside}/secret.csv')",
    "SELECT * FROM read_text('{run}/../outside/secret.csv')",
    "SELECT * FROM read_parquet('{run}/link.parquet')",  # a link inside the run to a file outside
    "SELECT * FROM glob('{outside}/*')",
    "SELECT * FROM read_parquet(['{run}/refined.parquet', '{outside}/other.parquet'])",
    "SELECT * FROM read_parquet('{run}-sibling/refined.parquet')",
    "SELECT * FROM read_parquet('https://example.com/data.parquet')",
]


@pytest.mark.parametrize("sql", REFUSED_READS)
def test_query_cannot_read_outside_the_run(run_copy, tmp_path, sql):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.csv").write_text("password\nhunter2\n")
    pq.write_table(pq.read_table(run_copy / "rounds.parquet"), outside / "other.parquet")
    shutil.copytree(run_copy, tmp_path / "run-sibling")
    (run_copy / "link.parquet").symlink_to(outside / "other.parquet")
    before = snapshot(run_copy)
    result = invoke("query", run_copy, sql.format(run=run_copy, outside=outside))
    assert result.exit_code == 2
    assert result.output.startswith("Error: query failed: Permission Error: ")
    assert "hunter2" not in result.output
    assert result.output.strip().endswith(
        f"refine query reads only the run directory {str(run_copy)!r}; "
        "to query other files, open them with DuckDB itself"
    )
    assert snapshot(run_copy) == before


def test_a_select_cannot_run_a_statement_through_query(run_copy):
    result = invoke("query", run_copy, "SELECT * FROM query('CREATE TABLE t AS SELECT 1')")
    assert result.exit_code == 2
    assert result.output.startswith("Error: query failed: Parser Error: ")


def test_query_reads_the_views_and_the_run_files(run_copy):
    """The views read their Parquet files by absolute path inside the allowed directory, and a
    query may name the run's files itself; the settings hold and cannot be changed."""
    sql = (
        "SELECT (SELECT count(*) FROM refined) AS refined, (SELECT count(*) FROM flagged) "
        "AS flagged, (SELECT count(*) FROM rounds) AS rounds, "
        f"(SELECT count(*) FROM '{run_copy}/refined.parquet') AS by_path, "
        "current_setting('enable_external_access') AS external, "
        "current_setting('lock_configuration') AS locked"
    )
    result = invoke("query", run_copy, sql, "--format", "json")
    assert result.exit_code == 0, result.output
    [row] = json.loads(result.output)
    flagged = sum(pq.read_table(run_copy / "refined.parquet")["is_label_issue"].to_pylist())
    assert row == {
        "refined": 120,
        "flagged": flagged,
        "rounds": 1,
        "by_path": 120,
        "external": False,
        "locked": True,
    }
    for sql in ("DESCRIBE refined", "SUMMARIZE rounds", "FROM refined LIMIT 1"):
        assert invoke("query", run_copy, sql).exit_code == 0, sql


# --- model files that hold code --------------------------------------------------------------


class Payload:
    """Unpickling this creates ``marker``: what a model file with code in it could do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_a_model_file_that_holds_code_is_refused(run_copy, small_run, tmp_path, writer):
    marker = tmp_path / "code-ran"
    model = {"format": MODEL_FORMAT, "members": Payload(marker)}
    if writer == "torch.save":
        torch.save(model, run_copy / "model.pt")
    else:
        with open(run_copy / "model.pt", "wb") as f:
            pickle.dump(model, f)
    out = tmp_path / "next"
    result = invoke("update", run_copy, small_run[1], "--out", out)
    assert result.exit_code == 2
    assert result.output.strip() == (
        f"Error: {str(run_copy / 'model.pt')!r} holds Python objects or code besides tensors "
        "and plain values; refine does not load such a file, since loading it could run code. "
        "Rerun refine run on the data to write a fresh model.pt"
    )
    assert not marker.exists()
    assert not out.exists() and leftovers(tmp_path, "next") == []


# --- paths in a run's metadata ---------------------------------------------------------------

_opened: list[str] | None = None


def _audit(event: str, args: tuple) -> None:
    if _opened is not None and event in ("open", "os.listdir", "os.scandir") and args:
        if isinstance(args[0], (str, bytes, os.PathLike)):
            _opened.append(os.fsdecode(args[0]))


def test_paths_in_run_json_are_never_opened(run_copy, small_run, tmp_path):
    """``refine update`` takes every file of the earlier run from the directory it is given; the
    paths that run.json records (input, parent) are copied as text and never opened. A doctored
    run.json points them at a trap directory of garbage files, outside the run, and at /etc."""
    global _opened
    trap = tmp_path / "trap"
    trap.mkdir()
    for name in ("refined.parquet", "history.parquet", "model.pt", "run.json", "data.parquet"):
        (trap / name).write_bytes(b"garbage: refine must not read this")
    summary = json.loads((run_copy / "run.json").read_text())
    summary["input"] = "../trap/data.parquet"
    summary["parent"] = {"run": "../../etc", "input": str(trap / "data.parquet")}
    summary["history"] = {"rows_seen": 10, "path": str(trap / "history.parquet")}
    (run_copy / "run.json").write_text(json.dumps(summary))
    if not getattr(_audit, "installed", False):
        sys.addaudithook(_audit)  # hooks cannot be removed; this one records only when asked
        _audit.installed = True
    _opened = []
    try:
        result = refine.update(run_copy, small_run[1], tmp_path / "next", max_epochs=5)
    finally:
        opened, _opened = _opened, None
    resolved = [Path(p).resolve() for p in opened]
    assert not [p for p in resolved if trap in p.parents or p == trap]
    assert not [p for p in resolved if Path("/etc") in p.parents and "ssl" not in p.parts]
    assert [p for p in resolved if p == (run_copy / "model.pt").resolve()]  # the hook works
    assert result.summary["parent"]["run"] == str(run_copy.resolve())
    assert snapshot(trap) == {
        name: hashlib.sha256(b"garbage: refine must not read this").hexdigest()
        for name in ("data.parquet", "history.parquet", "model.pt", "refined.parquet", "run.json")
    }


# --- output errors ---------------------------------------------------------------------------


def _disk_full(table, where, *args, **kwargs):
    """pq.write_table on a full disk: part of the file, then ENOSPC."""
    Path(where).write_bytes(b"PAR1 half a file")
    raise OSError(errno.ENOSPC, "No space left on device")


def test_disk_full_while_writing(tmp_path, small_run, monkeypatch):
    monkeypatch.setattr(pq, "write_table", _disk_full)
    out = tmp_path / "out"
    result = invoke("run", small_run[1], "--out", out, *SMALL_FLAGS)
    assert result.exit_code == 2
    partial = tmp_path / ".out.partial"
    assert " ".join(result.output.split()) == (
        f"Error: cannot write the output directory {str(out)!r}: no space left on the device "
        f"holding {str(tmp_path.resolve())!r}; free space or choose another --out. The finished "
        f"folds and rounds are kept in {str(partial)!r}: rerun with --resume to go on from them"
    )
    # Nothing at --out; the checkpoint stays, so that once there is space the run goes on.
    assert not out.exists() and leftovers(tmp_path, "out") == [".out.partial"]
    monkeypatch.undo()
    result = invoke("run", small_run[1], "--out", out, *SMALL_FLAGS, "--resume", "--quiet")
    assert result.exit_code == 0, result.output
    assert (out / "refined.parquet").is_file() and leftovers(tmp_path, "out") == []


def test_disk_full_while_saving_a_checkpoint(tmp_path, small_run, monkeypatch):
    calls = []

    def fsync(fd):  # fingerprint.json fits; the first fold's checkpoint file does not
        calls.append(fd)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", fsync)
    out = tmp_path / "out"
    result = invoke("run", small_run[1], "--out", out, *SMALL_FLAGS)
    assert result.exit_code == 2
    assert "no space left on the device" in " ".join(result.output.split())
    partial = tmp_path / ".out.partial"
    assert not out.exists() and (partial / "fingerprint.json").is_file()
    assert [p.name for p in partial.rglob("*.tmp")] == []  # no half-written checkpoint file
    assert list(partial.rglob("*.pt")) == []


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (
            PermissionError(errno.EACCES, "Permission denied"),
            "Permission denied in {parent!r}; choose another --out, or get write permission "
            "on that directory",
        ),
        (
            OSError(errno.ENOSPC, "No space left on device"),
            "no space left on the device holding {parent!r}; free space or choose another --out",
        ),
        (OSError(errno.EIO, "Input/output error"), "Input/output error; choose another --out"),
    ],
)
def test_output_directory_cannot_be_created(tmp_path, small_run, monkeypatch, error, message):
    def refuse(*args, **kwargs):
        raise error

    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    out = tmp_path / "out"
    result = invoke("run", small_run[1], "--out", out, *SMALL_FLAGS)
    assert result.exit_code == 2
    parent = str(tmp_path.resolve())
    partial = tmp_path / ".out.partial"
    assert " ".join(result.output.split()) == (
        f"Error: cannot write the output directory {str(out)!r}: "
        + message.format(parent=parent)
        + f". The finished folds and rounds are kept in {str(partial)!r}: rerun with --resume "
        "to go on from them"
    )
    assert not out.exists() and leftovers(tmp_path, "out") == [".out.partial"]


def test_a_read_only_parent_directory(tmp_path, small_run):
    probe = tmp_path / "probe"
    probe.mkdir(mode=0o500)
    try:
        (probe / "file").touch()
        pytest.skip("chmod does not deny writes here (root); the simulated tests above cover it")
    except PermissionError:
        pass
    parent = tmp_path / "locked"
    parent.mkdir()
    parent.chmod(0o500)
    try:
        result = invoke("run", small_run[1], "--out", parent / "out", *SMALL_FLAGS)
    finally:
        parent.chmod(0o700)
    assert result.exit_code == 2
    assert result.output.strip() == (
        f"Error: cannot write the output directory {str(parent / 'out')!r}: Permission denied "
        f"in {str(parent.resolve())!r}; choose another --out, or get write permission on that "
        "directory"
    )
    assert list(parent.iterdir()) == []


def test_a_failed_rename_keeps_the_earlier_run(tmp_path, small_run, monkeypatch):
    """With --overwrite the earlier run moves aside only while the new one takes its place; if
    that rename fails the earlier run is put back, whole."""
    out = tmp_path / "out"
    shutil.copytree(small_run[0], out)
    before = snapshot(out)
    replace = os.replace

    def failing_replace(src, dst):
        if Path(src).name.startswith(".out.tmp-") and Path(dst) == out:
            raise PermissionError(errno.EACCES, "Permission denied")
        return replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    result = invoke("run", small_run[1], "--out", out, "--overwrite", *SMALL_FLAGS)
    assert result.exit_code == 2
    assert result.output.startswith(f"Error: cannot write the output directory {str(out)!r}: ")
    assert snapshot(out) == before
    assert leftovers(tmp_path, "out") == [".out.partial"]  # for --resume


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_run_directories_honour_the_umask(tmp_path, small_run, mask):
    """mkdtemp makes the directory 0700: colleagues could not read the report. A new run and
    one replaced with --overwrite both get the modes any folder and file the user makes gets."""
    previous = os.umask(mask)
    try:
        assert umask() == mask
        for extra in ([], ["--overwrite"]):
            result = invoke("run", small_run[1], "--out", tmp_path / "out", *SMALL_FLAGS, *extra)
            assert result.exit_code == 0, result.output
            out = tmp_path / "out"
            assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~mask
            modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
            assert modes == dict.fromkeys(modes, 0o666 & ~mask) and "report.html" in modes
    finally:
        os.umask(previous)


def test_the_umask_is_read_without_proc(monkeypatch):
    """Where /proc cannot be read the umask is set and put back: it ends as it began."""
    previous = os.umask(0o027)
    try:

        def unreadable(*args, **kwargs):
            raise PermissionError(errno.EACCES, "Permission denied")

        monkeypatch.setattr(Path, "read_text", unreadable)
        assert umask() == 0o027
        assert os.umask(0o027) == 0o027
    finally:
        os.umask(previous)


# --- one process per output directory --------------------------------------------------------


def _refine_run(data: Path, out: Path) -> subprocess.Popen:
    """``refine run`` in a process of its own, on one thread (two busy ones are slower here)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "refine", "run", str(data), "--out", str(out), "--quiet"]
        + [*SMALL_FLAGS, "--no-report"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_second_process_on_the_same_out_refuses(tmp_path, small_run):
    out = tmp_path / "out"
    with output_lock(out):
        process = _refine_run(small_run[1], out)
        _, stderr = process.communicate(timeout=120)
    assert process.returncode == 2
    assert stderr.strip() == (
        f"Error: another refine process is writing {str(out)!r}; "
        "wait for it or choose another --out"
    )
    assert not out.exists() and leftovers(tmp_path, "out") == []


def test_concurrent_runs(tmp_path, small_run):
    """Two processes racing for one --out: exactly one writes it, the other exits 2 (locked out,
    or finding the finished run); a third on another --out finishes beside them."""
    same, other = tmp_path / "same", tmp_path / "other"
    processes = [_refine_run(small_run[1], out) for out in (same, same, other)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in processes]
    for p in processes:
        p.stdout.close()
        p.stderr.close()
    assert sorted(code for code, _ in results[:2]) == [0, 2], results
    refused = next(err for code, err in results[:2] if code == 2).strip()
    assert refused in (
        f"Error: another refine process is writing {str(same)!r}; "
        "wait for it or choose another --out",
        f"Error: output {str(same)!r} already exists; pass --overwrite to replace it, "
        "or choose another --out",
    )
    assert results[2][0] == 0, results[2]
    for out in (same, other):
        assert pq.read_table(out / "refined.parquet").num_rows == 120
        assert json.loads((out / "run.json").read_text())["rows"] == 120
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other", "same"]
