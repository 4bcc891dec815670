"""Checkpoints and --resume: a run killed at any point leaves no output, or a complete one; it
goes on with --resume to the bytes an uninterrupted run writes; --workers does not change them.

Real ``refine run`` processes are killed with SIGKILL at known points: the test-only variable
``REFINE_TEST_KILL_AT`` (refine.learn.checkpoint.KILL_AT) makes a run kill itself there."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner

import refine
from refine import finish, pipeline, rounds
from refine.cli import cli
from refine.config import ModelConfig
from refine.errors import ConfigError
from refine.learn import checkpoint as checkpoint_module
from refine.learn import crossfit
from refine.learn.checkpoint import KILL_AT, checkpoint_path
from refine.learn.crossfit import FoldRunner, cross_fit, make_folds
from refine.learn.crossfit import fit_fold as fit
from tests.conftest import blobs, noisy_table

ROOT = Path(__file__).resolve().parent.parent
SMALL = dict(ignore=("id",), rounds=2, folds=3, max_epochs=4, report=False, seed=0)
FLAGS = ["--ignore", "id", "--rounds", "2", "--folds", "3", "--max-epochs", "4", "--no-report"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run on 150 rows, and its input."""
    base = tmp_path_factory.mktemp("resume")
    data = base / "data.parquet"
    pq.write_table(noisy_table(n=150)[0], data)
    out = base / "reference"
    refine.run(data, out, **SMALL)
    return out, data


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def refined_bytes(out: Path) -> bytes:
    return (out / "refined.parquet").read_bytes()


def stable_run_json(out: Path) -> dict:
    """run.json without what differs between an interrupted and an uninterrupted run."""
    summary = json.loads((out / "run.json").read_text())
    for key in ("timings", "command"):
        summary.pop(key)
    for row in summary["rounds"]:
        row.pop("seconds")
    return summary


def refine_process(data: Path, out: Path, *flags: str, kill_at: str | None = None):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop(KILL_AT, None)
    if kill_at is not None:
        env[KILL_AT] = kill_at
    return subprocess.run(
        [sys.executable, "-m", "refine", "run", str(data), "--out", str(out), *FLAGS, *flags],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def saved_files(out: Path) -> list[str]:
    partial = checkpoint_path(out)
    return sorted(str(p.relative_to(partial)) for p in partial.rglob("*.pt"))


def test_a_run_killed_at_each_point_resumes_to_the_same_bytes(tmp_path, reference):
    """One run, killed four times (in a fold of round 1, between rounds, in a fold of round 2
    while two worker processes train, and with every file written but not renamed into
    place), each time resumed from where it stopped."""
    ref, data = reference
    out = tmp_path / "run"
    steps = [
        ("fold:1:1", [], ["round-1/fold-0.pt", "round-1/fold-1.pt"]),
        (
            "round:1",
            ["--resume"],
            [*(f"round-1/fold-{f}.pt" for f in range(3)), "round-1/round.pt"],
        ),
        ("fold:2:1", ["--resume", "--workers", "2"], None),
        ("write", ["--resume"], None),
    ]
    for kill_at, flags, expected in steps:
        killed = refine_process(data, out, *flags, "--quiet", kill_at=kill_at)
        assert killed.returncode == -9, killed.stderr
        assert not out.exists()  # never a partial run directory
        assert not list(tmp_path.glob(".run.tmp-*")) or kill_at == "write"
        if expected is not None:
            assert saved_files(out) == expected
    assert "round-2/fold-1.pt" in saved_files(out)
    assert "round-1/fold-0.pt" not in saved_files(out)  # only the last round's models are kept

    resumed = invoke("run", data, "--out", out, *FLAGS, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert f"resuming from the checkpoint in {checkpoint_path(out)}\n" in resumed.output
    assert refined_bytes(out) == refined_bytes(ref)
    assert stable_run_json(out) == stable_run_json(ref)
    rounds, ref_rounds = (pq.read_table(o / "rounds.parquet").drop(["seconds"]) for o in (out, ref))
    assert rounds.equals(ref_rounds)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no checkpoint, no temp


def test_killed_after_the_rename_the_run_is_complete(tmp_path, reference):
    ref, data = reference
    out = tmp_path / "run"
    killed = refine_process(data, out, "--quiet", kill_at="renamed")
    assert killed.returncode == -9
    assert refined_bytes(out) == refined_bytes(ref)
    # The checkpoint outlived the kill; there is nothing to resume, and a rerun discards it.
    assert checkpoint_path(out).exists()
    result = invoke("run", data, "--out", out, *FLAGS, "--resume")
    assert result.exit_code == 2
    assert result.output.strip() == (
        f"Error: output {str(out)!r} already exists: its run finished, so there is nothing to "
        "resume. Choose another --out, or pass --overwrite without --resume to run it again"
    )
    result = invoke("run", data, "--out", out, *FLAGS, "--overwrite", "--quiet")
    assert result.exit_code == 0, result.output
    assert not checkpoint_path(out).exists()


class Interrupted(Exception):
    pass


def interrupted_run(data, out, monkeypatch, at: str, **options) -> None:
    """Run in this process and stop it at ``at``, as a kill would, leaving the checkpoint."""

    def stop(point: str) -> None:
        if point == at:
            raise Interrupted(point)

    with monkeypatch.context() as patch:
        patch.setattr(checkpoint_module, "kill_point", stop)
        patch.setattr(pipeline, "kill_point", stop)
        patch.setattr(finish, "kill_point", stop)
        with pytest.raises(Interrupted):
            refine.run(data, out, **{**SMALL, **options})
    assert not out.exists() and checkpoint_path(out).is_dir()


def test_resume_refuses_a_checkpoint_of_another_run(tmp_path, reference, monkeypatch):
    ref, data = reference
    out = tmp_path / "run"
    interrupted_run(data, out, monkeypatch, "round:1")
    partial = checkpoint_path(out)
    result = invoke("run", data, "--out", out, *FLAGS, "--resume", "--rounds", "3", "--seed", "1")
    assert result.exit_code == 2
    assert " ".join(result.output.split()) == (
        f"Error: cannot resume: the checkpoint {str(partial)!r} belongs to another run; these "
        "differ: rounds 2 (now 3); seed 0 (now 1). Rerun with the earlier run's options and "
        "input, or rerun without --resume to start again (the checkpoint is discarded), or "
        f"delete {str(partial)!r}"
    )
    # Other labels in the same file: the labels' hash differs.
    table = pq.read_table(data)
    labels = table.column("label").to_numpy().copy()
    labels[:5] = (labels[:5] + 1) % 3
    changed = tmp_path / "changed.parquet"
    pq.write_table(table.set_column(5, "label", pa.array(labels)), changed)
    result = invoke("run", changed, "--out", out, *FLAGS, "--resume")
    assert result.exit_code == 2
    assert "these differ: the input's labels." in " ".join(result.output.split())
    assert not out.exists() and partial.is_dir()  # refused: nothing touched
    # Without --resume the stale checkpoint is discarded, with a note, and the run starts over.
    result = invoke("run", data, "--out", out, *FLAGS, "--seed", "0")
    assert result.exit_code == 0, result.output
    assert (
        f"discarding the checkpoint of an interrupted run in {partial}; pass --resume to go on "
        "from it instead" in " ".join(result.output.split())
    )
    assert refined_bytes(out) == refined_bytes(ref) and not partial.exists()


def test_resume_without_a_checkpoint_runs_from_the_start(tmp_path, reference):
    ref, data = reference
    out = tmp_path / "run"
    result = invoke("run", data, "--out", out, *FLAGS, "--resume")
    assert result.exit_code == 0, result.output
    assert f"no checkpoint in {checkpoint_path(out)}: running from the start" in result.output
    assert refined_bytes(out) == refined_bytes(ref)
    assert not checkpoint_path(out).exists()


def test_unreadable_checkpoint_files_are_recomputed(tmp_path, reference, monkeypatch):
    """A truncated fold file and a garbage round file cost their work, not the run."""
    ref, data = reference
    out = tmp_path / "run"
    interrupted_run(data, out, monkeypatch, "fold:2:1")
    partial = checkpoint_path(out)
    fold = partial / "round-2" / "fold-0.pt"
    fold.write_bytes(fold.read_bytes()[:100])
    (partial / "round-1" / "round.pt").write_bytes(b"not a checkpoint")
    result = invoke("run", data, "--out", out, *FLAGS, "--resume")
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert f"checkpoint file {partial / 'round-1' / 'round.pt'} cannot be used (" in text
    assert f"checkpoint file {fold} cannot be used (" in text
    assert "recomputing it" in text
    assert refined_bytes(out) == refined_bytes(ref)


def test_a_corrupt_fingerprint_refuses_to_resume(tmp_path, reference, monkeypatch):
    _, data = reference
    out = tmp_path / "run"
    interrupted_run(data, out, monkeypatch, "fold:1:0")
    partial = checkpoint_path(out)
    (partial / "fingerprint.json").write_text("{")
    result = invoke("run", data, "--out", out, *FLAGS, "--resume")
    assert result.exit_code == 2
    assert " ".join(result.output.split()) == (
        f"Error: cannot resume: the checkpoint {str(partial)!r} has no readable fingerprint.json. "
        "Rerun without --resume to start again (the checkpoint is discarded), or delete "
        f"{str(partial)!r}"
    )


def test_checkpoint_files_hold_only_tensors_and_plain_values(tmp_path, reference, monkeypatch):
    _, data = reference
    out = tmp_path / "run"
    interrupted_run(data, out, monkeypatch, "round:1", augment="interpolate")
    partial = checkpoint_path(out)
    files = sorted(partial.rglob("*.pt"))
    assert [str(p.relative_to(partial)) for p in files] == [
        *(f"round-1/fold-{f}.pt" for f in range(3)),
        "round-1/round.pt",
    ]
    for path in files:
        torch.load(path, weights_only=True)  # raises on anything that needs pickle's code
    fingerprint = json.loads((partial / "fingerprint.json").read_text())
    assert fingerprint["config"]["augment"] == "interpolate"
    assert set(fingerprint["versions"]) >= {"refine", "torch", "numpy", "scikit-learn"}


def test_augmented_runs_resume_to_the_same_bytes(tmp_path, reference, monkeypatch):
    """Synthetic rows are drawn again from the restored round's decisions, with the run's seed."""
    _, data = reference
    whole = refine.run(data, tmp_path / "whole", **SMALL, augment="interpolate")
    out = tmp_path / "run"
    interrupted_run(data, out, monkeypatch, "fold:2:0", augment="interpolate")
    trained = []
    with monkeypatch.context() as patch:  # only round 2's two unfinished folds train again
        patch.setattr(
            crossfit, "fit_fold", lambda *a, **k: trained.append(a[3].fold) or fit(*a, **k)
        )
        refine.run(data, out, **SMALL, augment="interpolate", resume=True)
    assert trained == [1, 2]
    assert refined_bytes(out) == refined_bytes(tmp_path / "whole")
    assert (out / "synthetic.parquet").read_bytes() == (
        tmp_path / "whole" / "synthetic.parquet"
    ).read_bytes()
    assert whole.summary["synthetic_rows"] > 0


def test_execution_options_are_checked(tmp_path, reference):
    _, data = reference
    result = invoke("run", data, "--out", tmp_path / "x", "--workers", "0")
    assert result.exit_code == 2
    assert "Error: --workers must be 'auto' or a whole number >= 1, got 0\n" == result.output
    with pytest.raises(ConfigError, match="resume=True needs out"):
        refine.run(data, None, resume=True)
    with pytest.raises(
        ConfigError, match=r"--workers must be 'auto' or a whole number >= 1, got 0"
    ):
        refine.run(data, tmp_path / "x", workers=0)


# --- worker processes ------------------------------------------------------------------------


class Recorder:
    """A Progress that counts what the folds bar receives."""

    def __init__(self):
        self.folds_done = 0

    def start(self, key, description, total):
        return key

    def update(self, task, completed, total=None):
        pass

    def advance(self, task, amount=1):
        if task == "folds":
            self.folds_done += amount

    def finish(self, task):
        pass

    def note(self, text):
        pass


@pytest.fixture(scope="module")
def two_workers():
    with FoldRunner(workers=2) as runner:
        yield runner


def test_workers_give_the_same_bytes_and_advance_the_bar(two_workers):
    X, truth = blobs(n=120, k=3)
    targets = np.eye(3, dtype=np.float32)[truth]
    weights = np.ones(120, np.float32)
    folds = make_folds(truth, 3, 0)
    model = ModelConfig(hidden=(16,), max_epochs=3)
    one = cross_fit(X, targets, weights, folds, model, 2, 0)
    progress = Recorder()
    two = cross_fit(X, targets, weights, folds, model, 2, 0, progress, runner=two_workers)
    assert progress.folds_done == 3 * 2  # folds x seeds, as they finish
    assert one.proba.tobytes() == two.proba.tobytes()
    assert one.agreement.tobytes() == two.agreement.tobytes()
    assert one.epochs == two.epochs
    for a, b in zip(sum(one.models, []), sum(two.models, []), strict=True):
        assert a.random_state == b.random_state
        for sa, sb in zip(a.states_, b.states_, strict=True):
            assert all(torch.equal(sa[name], sb[name]) for name in sa)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_an_error_in_a_worker_is_the_same_clean_error(two_workers):
    X, truth = blobs(n=60, k=3)
    with pytest.raises(ConfigError, match="--device cuda was asked for, but PyTorch sees no CUDA"):
        cross_fit(
            X,
            np.eye(3, dtype=np.float32)[truth],
            np.ones(60, np.float32),
            make_folds(truth, 3, 0),
            ModelConfig(hidden=(8,), max_epochs=1, device="cuda"),
            1,
            0,
            runner=two_workers,
        )


def test_workers_get_the_features_written_once_while_they_stay_the_same():
    X, targets = np.ones((6, 3), np.float32), np.zeros((6, 2), np.float32)
    with FoldRunner(workers=2) as runner:
        first = runner._array_file("X", X)
        assert runner._array_file("X", X) == first  # the same array, round after round
        np.testing.assert_array_equal(np.load(first, mmap_mode="r"), X)
        other = runner._array_file("X", X.copy())  # new rows (synthetic, replayed): a new file
        assert other != first and not Path(first).exists()
        assert runner._array_file("targets", targets) != other
        folder = Path(other).parent
    assert not folder.exists()  # gone with the runner


def test_each_rounds_targets_get_a_file_of_their_own():
    """New targets every round: each goes to a fresh file that exists while its round trains,
    and the file of the round before is removed (round 3 once reused and deleted a name)."""
    X = np.ones((6, 3), np.float32)
    with FoldRunner(workers=2) as runner:
        previous: set[str] = set()
        for round_index in range(5):
            targets = np.full((6, 2), round_index, np.float32)
            weights = np.full(6, round_index, np.float32)
            paths = [
                runner._array_file(n, a) for n, a in (("targets", targets), ("weights", weights))
            ]
            paths.append(runner._array_file("X", X))
            assert not previous & set(paths[:2])
            for path, array in zip(paths, (targets, weights, X), strict=True):
                np.testing.assert_array_equal(np.load(path, mmap_mode="r"), array)
            assert not any(Path(path).exists() for path in previous - set(paths))
            previous = set(paths)


def test_resume_keeps_the_noise_directions_of_the_first_round(tmp_path, monkeypatch):
    """The one-way noise mask read off round 1 (the model of the given labels) holds in later
    rounds; a run resumed after round 1 must restore it, not read it off round 2's model.
    Iris with 40% of versicolor filed as virginica: round 1's anchors see the direction,
    round 2's do not."""
    from refine.bench.recipes import build_dataset

    data = tmp_path / "iris.parquet"
    pq.write_table(build_dataset("iris-onedir", seed=11).train, data)
    options = dict(
        ignore=("label_true", "is_noisy"), rounds=3, folds=5, max_epochs=60, report=False, seed=11
    )
    seen = []
    with monkeypatch.context() as patch:
        directions = rounds.noise_directions
        patch.setattr(
            rounds, "noise_directions", lambda *a: seen.append(directions(*a)) or seen[-1]
        )
        refine.run(data, tmp_path / "whole", **options)
    assert seen[0].any() and not seen[1].any()
    out = tmp_path / "run"
    interrupted_run(data, out, monkeypatch, "round:1", **options)
    refine.run(data, out, **options, resume=True)
    assert refined_bytes(out) == refined_bytes(tmp_path / "whole")


def test_an_unguarded_script_gets_the_main_guard_error_not_a_run_per_worker(tmp_path):
    # A script that calls refine.run at its top level: each spawned worker reruns it.
    script = tmp_path / "unguarded.py"
    script.write_text(
        "import numpy as np, pyarrow as pa, refine\n"
        "rng = np.random.default_rng(0)\n"
        "x = rng.normal(size=120)\n"
        "table = pa.table({'x': x, 'label': (x > 0).astype(int)})\n"
        "refine.run(table, workers=2, folds=3, rounds=1, max_epochs=2, report=False)\n"
        "print('finished')\n"
    )
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert result.returncode != 0 and "finished" not in result.stdout
    guard = 'put its refine calls under `if __name__ == "__main__":` (or pass workers=1)'
    assert guard in result.stderr  # each worker's own error
    assert "does this too: its workers rerun it" in result.stderr  # and the run's
    assert "bootstrapping phase" not in result.stderr  # refused before a worker spawned more
