"""Checkpoints: what a run has finished, so that ``refine run --resume`` goes on from there.

A run writing ``--out runs/x`` records its progress in ``runs/.x.partial/`` (a hidden sibling,
like the lock file ``runs/.x.lock``; the run directory itself only ever appears complete)::

    fingerprint.json        what the checkpoint belongs to: configuration, input, versions
    round-1/fold-0.pt       a finished fold: its members' snapshot weights, epochs and the
                            out-of-fold probabilities of its held-out (and pooled) rows
    round-1/round.pt        a finished round: decisions, probabilities, metrics, timings
    student/fold-0.pt       the distilled student's folds (--student-features)

Every file is written to a temporary name and renamed, so a kill leaves the previous state or
the new one, never half a file; ``.pt`` files hold tensors, arrays and JSON strings only and
load with ``torch.load(weights_only=True)``. A file that cannot be read back is treated as
missing (a note says so) and its work is redone: every fold and round is a pure function of
the fingerprinted inputs, so redoing it gives the same bytes. The directory is removed once
the run directory is in place.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import signal
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from refine.config import REPRODUCIBLE_VERSIONS, RunConfig
from refine.errors import ConfigError, OutputError
from refine.io.decisions import Decisions
from refine.io.read import LabelledTable
from refine.io.write import _json_default, output_error
from refine.learn.model import resolve_device
from refine.learn.stream import FeatureFile
from refine.progress import Progress

CHECKPOINT_FORMAT = "refine.checkpoint/1"
# Test hook, never set in normal use: the process kills itself (SIGKILL) when it reaches the
# named point ("fold:ROUND:FOLD" after saving that fold, "round:ROUND" after saving that round,
# "student:FOLD", "write" with the run's files written but not renamed into place, "renamed"
# just after the rename). tests/test_resume.py uses it to kill a real run at known points.
KILL_AT = "REFINE_TEST_KILL_AT"


def checkpoint_path(out: str | os.PathLike[str]) -> Path:
    """``runs/.x.partial`` for ``--out runs/x``."""
    out = Path(out)
    return out.parent / f".{out.name}.partial"


def check_execution(out: str | Path | None, overwrite: bool, resume: bool, workers: int) -> None:
    """Check the options of how a run executes (they do not change what it computes)."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"--workers must be a whole number >= 1, got {workers!r}")
    if resume and out is None:
        raise ConfigError("resume=True needs out: checkpoints live beside the run directory")
    if resume and not overwrite and out is not None and (Path(out) / "run.json").is_file():
        raise OutputError(
            f"output {str(out)!r} already exists: its run finished, so there is nothing to "
            "resume. Choose another --out, or pass --overwrite without --resume to run it again"
        )


def open_checkpoint(
    out: Path,
    resume: bool,
    config: RunConfig,
    X: np.ndarray,
    data: LabelledTable,
    versions: dict[str, str],
    progress: Progress,
    verified: np.ndarray | None = None,
) -> Checkpoint:
    """The checkpoint of the run of ``config`` on ``X`` ``(N, D)``, ``data``'s labels and the
    ``verified`` labels ``(N,)`` writing ``out``, with ``versions`` of the packages (those that
    decide the numbers are fingerprinted); see ``Checkpoint.open``."""
    kept = {k: v for k, v in versions.items() if k in (*REPRODUCIBLE_VERSIONS, "python")}
    device = str(resolve_device(config.model.device))
    print_ = fingerprint(
        config.to_dict(), X, data.labels, data.class_values(), kept, device, verified
    )
    return Checkpoint.open(out, print_, resume, progress)


def kill_point(point: str) -> None:
    """SIGKILL this process at ``point`` when ``REFINE_TEST_KILL_AT`` names it (tests only)."""
    if os.environ.get(KILL_AT) == point:
        os.kill(os.getpid(), signal.SIGKILL)


def fingerprint(
    config: dict[str, Any],
    X: np.ndarray,
    labels: np.ndarray,
    classes: list[Any],
    versions: dict[str, str],
    device: str,
    verified: np.ndarray | None = None,
) -> dict[str, Any]:
    """What a run's results depend on: the resolved configuration, hashes of the encoded
    features ``X`` ``(N, D)`` and of the encoded labels ``(N,)`` with their classes (and of
    the verified labels, which a --verified-file may change under the same path), the
    versions of the packages that compute them, and the device.

    Hashing what the models train on, not the input files, is exact (any change to a feature
    or a label is caught, a touched but unchanged file is not a change) and costs one pass
    over ``X`` in memory, about a second per GB; columns that are not features are read
    afresh on resume, so the output always carries the input's current values."""
    print_ = {
        "format": CHECKPOINT_FORMAT,
        "config": config,
        "rows": int(len(labels)),
        "features": _digest(X),
        "labels": _digest(labels, json.dumps(classes, default=str)),
        **(
            {"verified": _digest(verified)}
            if verified is not None and (verified >= 0).any()
            else {}
        ),
        "versions": versions,
        "device": device,
    }
    return json.loads(json.dumps(print_, default=str))  # as fingerprint.json reads back


def _digest(array: np.ndarray, extra: str = "") -> str:
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{array.dtype.str}{array.shape}{extra}".encode())
    on_disk = FeatureFile.of(array)
    if on_disk is not None:  # features streaming from disk: read a piece at a time
        step = max(1, (64 << 20) // max(4 * on_disk.shape[1], 1))
        try:
            for start in range(0, on_disk.shape[0], step):
                piece = on_disk.read(start, min(start + step, on_disk.shape[0]))
                digest.update(piece.data.cast("B"))
        finally:
            on_disk.close()
        return digest.hexdigest()
    array = np.ascontiguousarray(array)
    digest.update(array.data.cast("B"))  # .data is memoryview(array), typed as one
    return digest.hexdigest()


def differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """What differs between two fingerprints, in words: ``["rounds 2 (now 3)", "labels"]``."""
    found = []
    old, new = _flat(saved.get("config", {})), _flat(current["config"])
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            found.append(f"{key} {_show(old.get(key))} (now {_show(new.get(key))})")
    if saved.get("rows") != current["rows"]:
        found.append(f"input rows {saved.get('rows')} (now {current['rows']})")
    elif saved.get("labels") != current["labels"]:
        found.append("the input's labels")
    if saved.get("rows") == current["rows"] and saved.get("verified") != current.get("verified"):
        found.append("the verified labels")
    if saved.get("rows") == current["rows"] and saved.get("features") != current["features"]:
        found.append("the input's feature values")
    versions = saved.get("versions") or {}
    for name, version in current["versions"].items():
        if versions.get(name) != version:
            found.append(f"{name} {versions.get(name)} (now {version})")
    if saved.get("device") != current["device"]:
        found.append(f"device {saved.get('device')} (now {current['device']})")
    return found


def _flat(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _show(value: Any) -> str:
    return "unset" if value is None else json.dumps(value)


class Checkpoint:
    """The checkpoint directory of one run, with a fingerprint that matches the run."""

    def __init__(self, out: Path, progress: Progress):
        self.out = Path(out)
        self.path = checkpoint_path(out)
        self.progress = progress

    @classmethod
    def open(
        cls, out: str | os.PathLike[str], print_: dict[str, Any], resume: bool, progress: Progress
    ) -> Checkpoint:
        """The checkpoint of the run writing ``out``: the earlier one when ``resume`` and its
        fingerprint matches ``print_``, else a fresh one (an earlier one is discarded, with a
        note). Raises ``ConfigError`` when ``resume`` and the fingerprints differ."""
        path = checkpoint_path(out)
        if path.exists():
            saved = _read_fingerprint(path)
            if resume:
                if saved is None:
                    raise ConfigError(
                        f"cannot resume: the checkpoint {str(path)!r} has no readable "
                        "fingerprint.json. Rerun without --resume to start again (the checkpoint "
                        f"is discarded), or delete {str(path)!r}"
                    )
                found = differences(saved, print_)
                if found:
                    raise ConfigError(
                        f"cannot resume: the checkpoint {str(path)!r} belongs to another run; "
                        f"these differ: {'; '.join(found)}. Rerun with the earlier run's options "
                        "and input, or rerun without --resume to start again (the checkpoint is "
                        f"discarded), or delete {str(path)!r}"
                    )
                progress.note(f"resuming from the checkpoint in {path}")
                return cls(Path(out), progress)
            progress.note(
                f"discarding the checkpoint of an interrupted run in {path}; "
                "pass --resume to go on from it instead"
            )
            shutil.rmtree(path)
        elif resume:
            progress.note(f"no checkpoint in {path}: running from the start")
        try:
            path.mkdir(parents=True)
            _write_bytes(path / "fingerprint.json", (json.dumps(print_, indent=2) + "\n").encode())
        except OSError as exc:
            shutil.rmtree(path, ignore_errors=True)
            raise output_error(Path(out), exc) from None
        return cls(Path(out), progress)

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    # --- folds ------------------------------------------------------------------------------

    def save_fold(self, stage: str, fold: int, record: dict[str, Any]) -> None:
        """Record a finished fold of ``stage`` (``round-2``, ``student``)."""
        self._save(self.path / stage / f"fold-{fold}.pt", record)
        kill_point(f"{stage.replace('round-', 'fold:')}:{fold}")

    def load_fold(
        self, stage: str, fold: int, held: int | None = None, pooled: int | None = None
    ) -> dict[str, Any] | None:
        """The record of a finished fold, or None when there is none or it is unreadable or
        does not fit (``held`` held-out rows, ``pooled`` pooled rows, when given)."""
        path = self.path / stage / f"fold-{fold}.pt"
        record = self._load(path)
        if record is None:
            return None
        try:
            ok = (
                record["fold"] == fold
                and held in (None, record["held"].shape[1])
                and pooled in (None, record["pool"].shape[1])
                and len(record["members"]) >= 1
                and all(m["states"] for m in record["members"])
            )
        except (KeyError, TypeError, AttributeError, IndexError):
            ok = False
        if not ok:
            self._unreadable(path, "it does not match this run's folds")
            return None
        return record

    # --- rounds -----------------------------------------------------------------------------

    def save_round(self, round_index: int, record: dict[str, Any]) -> None:
        """Record a finished round; the earlier rounds' fold models are no longer needed."""
        self._save(self.path / f"round-{round_index}" / "round.pt", record)
        for earlier in range(1, round_index):
            for fold_file in (self.path / f"round-{earlier}").glob("fold-*.pt"):
                fold_file.unlink()
        kill_point(f"round:{round_index}")

    def discard_round(self, round_index: int) -> None:
        """Forget a finished round (its fold models are unusable): it will be run again."""
        (self.path / f"round-{round_index}" / "round.pt").unlink(missing_ok=True)

    def last_round(self, rows: int) -> tuple[int, dict[str, Any]] | None:
        """The last finished round with ``rows`` judged rows: ``(round, record)``, or None."""
        rounds = sorted(
            (int(p.name.split("-")[1]) for p in self.path.glob("round-*") if p.name[6:].isdigit()),
            reverse=True,
        )
        for round_index in rounds:
            path = self.path / f"round-{round_index}" / "round.pt"
            if not path.exists():
                continue
            record = self._load(path)
            if record is not None and _round_fits(record, rows):
                return round_index, record
            if record is not None:
                self._unreadable(path, "it does not match this run's rows")
        return None

    # --- files ------------------------------------------------------------------------------

    def _save(self, path: Path, record: dict[str, Any]) -> None:
        try:
            path.parent.mkdir(exist_ok=True)
            # Straight into the file: a buffer of the whole record would hold a copy of the
            # round's arrays at the end of every round, where the run's memory peaks.
            _write_atomically(
                path, lambda f: torch.save({"format": CHECKPOINT_FORMAT, **record}, f)
            )
        except OSError as exc:  # a full disk: say so, as for the run directory
            raise output_error(self.out, exc) from None

    def _load(self, path: Path) -> dict[str, Any] | None:
        if not path.exists():
            return None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                record = torch.load(path, weights_only=True, map_location="cpu")
        except Exception as exc:  # truncated, corrupted or not a checkpoint: redo the work
            self._unreadable(path, f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
            return None
        if not isinstance(record, dict) or record.get("format") != CHECKPOINT_FORMAT:
            self._unreadable(path, "it is not a refine checkpoint file")
            return None
        return record

    def _unreadable(self, path: Path, reason: str) -> None:
        self.progress.note(f"checkpoint file {path} cannot be used ({reason}); recomputing it")
        path.unlink(missing_ok=True)


def _round_fits(record: dict[str, Any], rows: int) -> bool:
    try:
        return all(
            len(record[key]) == rows
            for key in ("refined", "source", "weight", "soft", "proba", "agreement", "is_issue")
        ) and bool(restore_round(record)[2])
    except (KeyError, TypeError, ValueError, AttributeError):
        return False


def _read_fingerprint(path: Path) -> dict[str, Any] | None:
    try:
        saved = json.loads((path / "fingerprint.json").read_text())
    except (OSError, ValueError):
        return None
    return saved if isinstance(saved, dict) and saved.get("format") == CHECKPOINT_FORMAT else None


def _write_bytes(path: Path, data: bytes | memoryview) -> None:
    """Write ``path`` atomically: a kill leaves the old file or the new one, never half."""
    _write_atomically(path, lambda f: f.write(data))


def _write_atomically(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write ``path`` with ``write(file)``, atomically: a kill leaves the old file or the new
    one, never half."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def to_tensors(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Arrays as tensors for a checkpoint file (bool and int8 kept), sharing their memory where
    they are contiguous and writable: the file is written before the arrays change."""
    return {
        k: torch.from_numpy(v if v.flags.c_contiguous and v.flags.writeable else v.copy(order="C"))
        for k, v in ((k, np.asarray(v)) for k, v in arrays.items())
    }


def round_record(
    decisions: Decisions,
    arrays: dict[str, np.ndarray],
    rounds: list[dict[str, Any]],
    metrics: dict[str, Any],
) -> dict[str, Any]:
    """A finished round for ``save_round``: its ``decisions``, its ``arrays`` (probabilities,
    agreement, issues and quality ``(N, ...)``, the one-way noise mask ``(K, K)``), the
    rounds' rows so far and ``metrics``."""
    fields = {f.name: getattr(decisions, f.name) for f in dataclasses.fields(decisions)}
    return {
        **to_tensors({**fields, **arrays}),
        "decision_fields": list(fields),
        "rounds": json.dumps(rounds, default=_json_default),
        "metrics": json.dumps(metrics, default=_json_default),
    }


def restore_round(
    record: dict[str, Any],
) -> tuple[Decisions, dict[str, np.ndarray], list[dict[str, Any]], dict[str, Any]]:
    """What ``round_record`` took: ``(decisions, arrays, rounds, metrics)``."""
    names = list(record["decision_fields"])
    decisions = Decisions(**{name: record[name].numpy() for name in names})
    arrays = {
        key: value.numpy()
        for key, value in record.items()
        if isinstance(value, torch.Tensor) and key not in names
    }
    return decisions, arrays, json.loads(record["rounds"]), json.loads(record["metrics"])


@dataclass
class Resumed:
    """Where the rounds go on: the ``next_round`` to run (past the last when they are done),
    the last finished round's ``decisions``, ``arrays``, ``rounds`` rows and ``metrics``, and,
    when the rounds are done, the last round's fold models ``fitted`` (a ``CrossFit``)."""

    next_round: int
    decisions: Decisions
    arrays: dict[str, np.ndarray]
    rounds: list[dict[str, Any]]
    metrics: dict[str, Any]
    fitted: Any = None


def resume_rounds(
    checkpoint: Checkpoint,
    rows: int,
    total: int,
    min_changes: int,
    fold_models: Callable[[str], Any],
) -> Resumed | None:
    """The state after the last finished round in ``checkpoint``, or None (start at round 1).

    ``fold_models(stage)`` loads a finished round's fold models (None when one is unusable);
    they are needed only when that round was the last, for ``model.pt``. A last round whose
    models cannot be loaded is run again from the round before it."""
    while (last := checkpoint.last_round(rows)) is not None:
        round_index, record = last
        decisions, arrays, rounds, metrics = restore_round(record)
        if round_index < total and rounds[-1]["changed"] >= min_changes:
            return Resumed(round_index + 1, decisions, arrays, rounds, metrics)
        fitted = fold_models(f"round-{round_index}")
        if fitted is not None:
            return Resumed(total + 1, decisions, arrays, rounds, metrics, fitted)
        checkpoint.discard_round(round_index)
    return None
