"""Folds on a Ray cluster (``--engine ray``): one Ray task per fold, the same folds and seeds.

``RayFoldRunner`` stands where ``FoldRunner`` does: ``cross_fit`` hands it the folds its
checkpoint does not hold yet, and it calls ``finished(record)`` in this process as each fold
comes back, so the checkpoint, ``--resume`` and the assembly of the round are the local
engine's. Each fold runs ``fit_fold``, on one thread, with the seeds the local engine uses,
so the records, and the run's files, are the same bytes whichever engine trained them.
Pretrained text and image models run on Ray actors too (``inference``), and a streaming run
reads and encodes its Parquet shards with Ray Data where they lie (``encode_shards``; both in
``refine.learn.ray_data``).

Ray is an optional dependency (``pip install 'refine[ray]'``), imported only here.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from refine.errors import ConfigError, RefineError, WorkerError
from refine.learn.crossfit import FoldJob, FoldRunner, fit_fold

if TYPE_CHECKING:
    from refine.encode.embedding import Inference
    from refine.encode.features import FeatureEncoder
    from refine.learn.checkpoint import Checkpoint
    from refine.progress import Progress

ENGINES = ("local", "ray")
INSTALL = "pip install 'refine[ray]'"
# A fold task whose worker dies (killed, out of memory, its node lost) is run again this many
# times before the run stops; a fold is a pure function of its inputs, so a rerun is harmless.
MAX_RETRIES = 3
# Test hook, never set in normal use: "FOLD:PATH" makes the first task of fold FOLD to reach it
# create PATH and kill its worker (os._exit), so tests/test_ray_engine.py sees Ray retry it.
KILL_FOLD = "REFINE_TEST_RAY_KILL_FOLD"


def check_engine(engine: str, address: str | None) -> None:
    """Check ``engine`` (``"local"`` or ``"ray"``) and ``address``, and that Ray is installed
    when it is asked for, before anything is read or written."""
    if engine not in ENGINES:
        raise ConfigError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if address is not None and engine != "ray":
        raise ConfigError(
            f"--address {address} names a Ray cluster, which only --engine ray uses: "
            "add --engine ray, or drop --address"
        )
    if engine == "ray":
        import_ray()


def import_ray() -> Any:
    """The ``ray`` module, or a ConfigError that says how to install it."""
    try:
        import ray
    except ImportError:
        raise ConfigError(
            f"--engine ray needs Ray, which is not installed here: {INSTALL} "
            "(on every machine of the cluster), or run with --engine local"
        ) from None
    return ray


def join_ray(ray: Any, address: str | None) -> bool:
    """Connect to the Ray cluster at ``address``, or start a Ray instance on this machine
    (all its cores) without one; a connection this process holds already is used as it is.
    Whether it started one (for the caller to stop with ``ray.shutdown()``)."""
    if ray.is_initialized():
        return False
    # refine never reports usage anywhere; nor should the Ray it starts.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(
        address=address, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False
    )
    return True


@contextlib.contextmanager
def ray_session(address: str | None) -> Iterator[Any]:
    """The ``ray`` module, joined to the cluster at ``address`` (``join_ray``) for the block,
    and the Ray instance it started, if any, stopped after it."""
    ray = import_ray()
    started = join_ray(ray, address)
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


class RayFoldRunner(FoldRunner):
    """Folds as Ray tasks, one per fold, on the cluster at ``address`` or, without one, on a
    Ray instance started on this machine for the run (using all its cores) and stopped after
    it. A Ray connection this process already holds (``ray.init`` called before) is used as it
    is and left open. Use it as a context manager, like ``FoldRunner``.

    The features and targets go into Ray's object store once (and again only when a round
    brings other arrays), and every task reads them from there without a copy. On a cluster
    with GPUs each fold task asks for one GPU (unless ``--device cpu``), where it trains."""

    def __init__(self, address: str | None = None, checkpoint: Checkpoint | None = None):
        super().__init__(workers=1, checkpoint=checkpoint)
        self.address = address
        self._ray: Any = None
        self._started = False
        self._task: Any = None
        self._gpus = 0
        self._refs: dict[str, tuple[np.ndarray, Any]] = {}  # name -> (array, its object ref)

    def __enter__(self) -> RayFoldRunner:
        ray = self._ray = import_ray()
        self._started = join_ray(ray, self.address)
        resources = ray.cluster_resources()
        self._gpus = int(resources.get("GPU", 0))
        # cross_fit trains in this process when only one fold could run at a time anyway.
        self.workers = max(int(resources.get("CPU", 1)), self._gpus, 1)
        self._task = ray.remote(_fit_fold_task).options(num_cpus=1, max_retries=MAX_RETRIES)
        return self

    def __exit__(self, *exc: object) -> None:
        self._refs = {}
        if self._started:
            self._ray.shutdown()
            self._started = False
        super().__exit__(*exc)

    def inference(self, device: str) -> Inference | None:
        """Pretrained encoders' batch inference on Ray actors (``refine.learn.ray_data``):
        one per GPU of the cluster unless ``device`` is ``cpu``, else one per CPU."""
        from refine.learn.ray_data import RayInference

        cpus = int(self._ray.cluster_resources().get("CPU", 1))
        return RayInference(self._ray, cpus, 0 if device == "cpu" else self._gpus)

    def encode_shards(
        self, encoder: FeatureEncoder, path: Path, rows: int, out: Path, progress: Progress
    ) -> np.ndarray | None:
        """``encoder``'s features of the Parquet input at ``path`` (``rows`` rows), read and
        encoded by Ray Data where the shards lie and written to ``out`` here
        (``refine.learn.ray_data.encode_shards``); None where that does not pay or the
        workers cannot encode as this process does (``shard_encoding_pays``; a hive
        partition's column), to encode it here."""
        from refine.learn.ray_data import encode_shards, shard_encoding_pays

        if not shard_encoding_pays(encoder):
            return None
        cpus = int(self._ray.cluster_resources().get("CPU", 1))
        return encode_shards(self._ray, encoder, path, rows, out, cpus, progress)

    def _object_ref(self, name: str, array: np.ndarray) -> Any:
        """``array`` in the object store: put once for as long as the same array comes back
        (the features, round after round); a replaced one is freed with its last reference."""
        saved = self._refs.get(name)
        if saved is not None and saved[0] is array:
            return saved[1]
        ref = self._ray.put(np.ascontiguousarray(array))
        self._refs[name] = (array, ref)
        return ref

    def fit_folds(
        self,
        X: np.ndarray,
        targets: np.ndarray,
        weights: np.ndarray,
        jobs: list[FoldJob],
        options: dict[str, Any],
        seeds: int,
        seed: int,
        finished: Callable[[dict[str, Any]], None],
    ) -> None:
        """Fit ``jobs`` as Ray tasks, calling ``finished(record)`` here as each one ends."""
        ray = self._ray
        arrays = [
            self._object_ref(name, array)
            for name, array in (("X", X), ("targets", targets), ("weights", weights))
        ]
        task = self._task
        if self._gpus and options["device"] != "cpu":
            task = task.options(num_gpus=1)  # where --device auto (or cuda) will train it
        kill = os.environ.get(KILL_FOLD)
        pending = {task.remote(*arrays, job, options, seeds, seed, kill): job.fold for job in jobs}
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                fold = pending.pop(done[0])
                finished(_result(ray, done[0], fold))
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)


def _result(ray: Any, ref: Any, fold: int) -> dict[str, Any]:
    """A fold task's record; a refine error inside it is raised as itself, so the CLI prints
    its message, and a worker lost after every retry is a WorkerError that says what to do."""
    try:
        record: dict[str, Any] = ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, RefineError):
            raise exc.cause from None
        raise
    except (
        ray.exceptions.WorkerCrashedError,
        ray.exceptions.OutOfMemoryError,
        ray.exceptions.NodeDiedError,
    ) as exc:
        raise WorkerError(
            f"the Ray worker training fold {fold} died ({type(exc).__name__}) and Ray gave up "
            f"after {MAX_RETRIES} retries; most often a worker runs out of memory: rerun with "
            "--resume to keep the finished folds, on workers with more memory"
        ) from None
    # Ray hands back one string object for every copy of a weight's name, where a fold trained
    # here has a new one per snapshot; pickle writes the two differently, so model.pt would
    # differ in its bytes (not its weights) from the local engine's without new names here.
    for member in record["members"]:
        member["states"] = [
            {name.encode().decode(): weights for name, weights in state.items()}
            for state in member["states"]
        ]
    return record


def _fit_fold_task(
    X: np.ndarray,
    targets: np.ndarray,
    weights: np.ndarray,
    job: FoldJob,
    options: dict[str, Any],
    seeds: int,
    seed: int,
    kill: str | None,
) -> dict[str, Any]:
    """In a Ray worker: ``fit_fold`` on the arrays from the object store (read-only views)."""
    if kill is not None:
        _kill_once(job.fold, kill)
    return fit_fold(X, targets, weights, job, options, seeds, seed)


def _kill_once(fold: int, kill: str) -> None:
    """The ``KILL_FOLD`` hook: exit at once if ``kill`` names ``fold`` and its file is new."""
    named, path = kill.split(":", 1)
    if int(named) != fold:
        return
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return
    os._exit(1)
