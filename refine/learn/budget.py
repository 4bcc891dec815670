"""How a run uses the machine: how many fold processes, and whether the features stay in
memory or stream from a file, chosen from the cores and a memory budget. None of it changes
what a run computes (same seed, same bytes), only its time and its peak memory.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import re
from dataclasses import dataclass
from typing import Any

from refine.config import ModelConfig
from refine.errors import ConfigError
from refine.learn.model import auto_batch_size
from refine.learn.stream import window_bytes

# Share of the machine's memory a run plans to use when --memory is not given: room for the
# page cache and whatever else runs beside it.
DEFAULT_MEMORY_SHARE = 0.5
# Below this many estimated seconds of training in all folds, --workers auto keeps one
# process: the estimate is a ceiling (early stopping usually ends a fit at a third of its
# epochs), and each worker first spends 2-3 s importing torch (~10 s on a busy machine), so
# the digits demo (~8 s estimated) ran slower on 2 workers (docs/results.md).
AUTO_MIN_SECONDS = 20.0
# The estimate: ~1 ms a step whatever its size, and ~200k rows/s on one core (DESIGN.md).
STEP_SECONDS = 1e-3
ROW_SECONDS = 5e-6
# Bytes the in-memory path holds per feature value: the input table's copy, the encoded
# features, and their copy in a fold model's training tensor.
IN_MEMORY_COPIES = 3
# Bytes per row of the arrays that grow with the rows whatever the path: probabilities,
# targets, their calibrated and per-member copies (about 8 arrays of K float32), indices.
ROW_ARRAYS = 8
# A worker process's own memory beside its data: the interpreter, torch, the model.
WORKER_BYTES = 400 << 20

_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_memory(value: str | int | None) -> int | None:
    """Bytes of a memory budget: ``4GB``, ``512M``, ``1.5G``, ``2000000000``; None stays None."""
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        if value is not None and value <= 0:
            raise ConfigError(f"--memory must be above 0 bytes, got {value}")
        return value
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*", str(value).upper())
    if match is None or float(match.group(1)) <= 0:
        raise ConfigError(
            f"--memory must be an amount of memory such as 4GB, 512MB or 1.5G, got {value!r}"
        )
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def parse_workers(value: str | int) -> int | None:
    """``auto`` (None: choose) or a whole number >= 1 of fold processes."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"--workers must be 'auto' or a whole number >= 1, got {value!r}")
    return value


def check_not_spawning() -> None:
    """Refuse to start a run inside a --workers process that is still starting up.

    The fold processes are spawned, and a spawned process first reruns the script that started
    the run under the name ``__mp_main__``. A script that calls ``refine.run`` at its top level,
    with no ``if __name__ == "__main__":`` guard, would start the whole run again in every
    worker. Each of those would then die when it tried to spawn workers of its own, and the
    parent would see its pool break with no sign of why."""
    # The flag multiprocessing's own check reads: set while a spawned process imports its main.
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        raise ConfigError(
            "refine was called while a --workers process was starting: worker processes rerun "
            "the script that started them, so put its refine calls under "
            '`if __name__ == "__main__":` (or pass workers=1)'
        )


def machine_memory() -> int:
    """Bytes of memory of this machine (or of its cgroup's limit, when lower)."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        if limit.isdigit():
            total = min(total, int(limit))
    except OSError:
        pass
    return int(total)


def machine_cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class Plan:
    """How a run executes: ``workers`` fold processes, features ``streaming`` from a file or
    in memory, chosen for ``memory`` bytes from an estimate of ``in_memory_bytes``."""

    workers: int
    streaming: bool
    memory: int
    in_memory_bytes: int
    cores: int

    def describe(self) -> dict[str, Any]:
        return {
            "workers": self.workers,
            "features": "streaming" if self.streaming else "in memory",
            "memory_budget_bytes": self.memory,
            "in_memory_estimate_bytes": self.in_memory_bytes,
            "cores": self.cores,
        }

    def line(self) -> str:
        path = "streaming from disk" if self.streaming else "in memory"
        return (
            f"features {path} (~{self.in_memory_bytes / 2**30:.2f} GB in memory against a "
            f"{self.memory / 2**30:.2f} GB budget); {self.workers} fold "
            f"process{'es' if self.workers > 1 else ''} on {self.cores} cores"
        )


def plan(
    n_rows: int,
    n_features: int,
    n_classes: int,
    folds: int,
    workers: int | None = None,
    memory: int | None = None,
    cores: int | None = None,
    model: ModelConfig | None = None,
) -> Plan:
    """The plan for ``n_rows`` × ``n_features`` float32 features and ``n_classes`` classes in
    ``folds`` folds: ``workers`` as given, or (None) as many as the cores, the folds and the
    memory allow (one when ``model``'s folds train in a few seconds); streaming when the in-memory estimate passes the budget ``memory`` (bytes;
    None: ``DEFAULT_MEMORY_SHARE`` of the machine)."""
    cores = cores or machine_cores()
    budget = memory if memory is not None else int(DEFAULT_MEMORY_SHARE * machine_memory())
    features = 4 * n_rows * n_features
    rows = ROW_ARRAYS * 4 * n_rows * (n_classes + 1)
    in_memory = IN_MEMORY_COPIES * features + rows
    streaming = in_memory > budget
    held = (features if not streaming else 0) + rows  # the main process's share
    # A worker maps the features (read a window at a time) and copies the targets it trains on.
    per_worker = WORKER_BYTES + window_bytes(n_features) + 2 * 4 * n_rows * (n_classes + 1)
    if workers is None:
        workers = min(cores, folds)
        if folds * fold_seconds(n_rows, folds, model or ModelConfig()) < AUTO_MIN_SECONDS:
            workers = 1
        workers = max(1, min(workers, (budget - held) // per_worker))
    return Plan(int(workers), streaming, budget, in_memory, cores)


def fold_seconds(n_rows: int, folds: int, model: ModelConfig) -> float:
    """Estimated seconds one fold model of ``model`` trains on one core, on ``n_rows`` rows cut
    into ``folds`` folds (``MLPClassifier.fit``'s epochs and batches, before early stopping)."""
    train = max(1, round(n_rows * (folds - 1) / folds * (1 - model.val_fraction)))
    batch = model.batch_size or auto_batch_size(train)
    epochs = max(1, min(model.max_epochs, math.ceil(model.max_rows_seen / train)))
    return epochs * (math.ceil(train / batch) * STEP_SECONDS + train * ROW_SECONDS)
