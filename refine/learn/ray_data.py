"""Ray Data's share of ``--engine ray``: batch inference and reading shards where they lie.

* **Pretrained encoders** (``RayInference``). With ``--text-model`` or ``--image-model DIR``,
  the values no embedding cache holds go through the model on a pool of actors instead of in
  this process: they become Ray Data blocks, in the order and the batches the local path runs
  them (``refine.encode.pretrained._run`` embeds texts longest first,
  ``refine.encode.vision._run`` images as they come), and ``map_batches`` maps the blocks over
  the actors. Each loads the model once, from the same path, its files checked against the
  fingerprint this process took (a node with other files is refused, as a changed model is),
  and runs the local path on its block. With GPUs each actor holds one (unless ``--device
  cpu``) and batches as it allows; otherwise there is one actor per CPU and a block holds whole
  CPU batches, so every batch is the local engine's and so are the embeddings.
* **A streaming run's shards** (``encode_shards``): each Parquet row group is read and encoded
  by an actor where the file lies, with the run's fitted encoder, where a text or image column
  makes that pay (``shard_encoding_pays``).
* **``refine predict``** maps its actor (``refine.deploy``) over the row groups the same way
  (``row_groups``, ``map_row_groups``, ``in_row_order``).

Rows come back by their position, in whatever order the actors finish. A refine error in an
actor's call comes back as a table (``carry_refine_errors``, ``checked``) and one in its
constructor inside Ray's error (``raise_refine_cause``), and is raised here as itself. Ray is
an optional dependency, imported by ``refine.learn.ray_engine``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from refine.encode.embedding import Inference
from refine.errors import RefineError
from refine.progress import NULL_PROGRESS, Progress

# Rows per Ray Data block: whole batches of the local path (``device_batch``'s largest GPU
# batch is 1024 rows), and few enough blocks that Ray's cost per block stays small.
ROWS_PER_BLOCK = 4096
# Blocks per actor at the least, where there are rows for them: an actor that finishes early
# takes the next block, so the actors end together.
BLOCKS_PER_ACTOR = 4


# Columns of the table a Ray Data actor gives back in place of its output when a refine error
# stops a call: Ray keeps only the text of an error raised in a call, and the CLI must print
# its message and exit 2 (an error in an actor's constructor reaches here whole).
ERROR, ERROR_MESSAGE = "__refine_error", "__refine_error_message"


def carry_refine_errors(call: Any) -> Any:
    """A Ray Data actor's ``__call__`` whose refine errors come back as a table (``ERROR``)."""

    @functools.wraps(call)
    def carried(self: Any, batch: pa.Table) -> pa.Table:
        try:
            return call(self, batch)
        except RefineError as exc:
            return pa.table({ERROR: [type(exc).__name__], ERROR_MESSAGE: [str(exc)]})

    return carried


def checked(tables: Iterator[pa.Table]) -> Iterator[pa.Table]:
    """``tables``, raising the refine error an actor carried back in place of one."""
    from refine import errors

    for table in tables:
        if ERROR in table.column_names:
            kind = getattr(errors, table.column(ERROR)[0].as_py(), RefineError)
            raise kind(table.column(ERROR_MESSAGE)[0].as_py())
        yield table


class RayInference:
    """Runs a pretrained text or image model on Ray actors: called as the encoders' ``_run``
    is, ``(model, values, progress) -> (N, D)`` float32. Ray must be initialised; the pool has
    ``gpus`` actors of one GPU each where ``gpus`` > 0, else ``cpus`` actors of one CPU."""

    def __init__(self, ray: Any, cpus: int, gpus: int):
        self.ray = ray
        self.cpus = max(cpus, 1)
        self.gpus = gpus

    def __call__(self, model: Any, values: list[Any], progress: Progress) -> np.ndarray:
        from refine.encode.pretrained import TextModel, batch_order
        from refine.encode.pretrained import _run as run_texts
        from refine.encode.vision import _run as run_images

        text = isinstance(model, TextModel)
        if not values:  # the width alone: the local path knows it without the cluster
            return (run_texts if text else run_images)(model, values, progress)
        order = batch_order(values) if text else np.arange(len(values))
        step = _block_rows(len(values), model.batch_size, self._actors())
        kind = pa.string() if text else pa.binary()
        blocks = [
            pa.table(
                {
                    "row": pa.array(order[start : start + step], pa.int64()),
                    "value": pa.array([values[i] for i in order[start : start + step]], kind),
                }
            )
            for start in range(0, len(values), step)
        ]
        return self._embed(blocks, len(values), text, model, progress)

    def _actors(self) -> int:
        return self.gpus if self.gpus > 0 else self.cpus

    def _embed(
        self, blocks: list[pa.Table], rows: int, text: bool, model: Any, progress: Progress
    ) -> np.ndarray:
        """The embeddings ``(rows, D)`` of ``blocks``' values, placed by their ``row``."""
        data = quiet_data(self.ray)
        on_gpu = self.gpus > 0
        actors = min(self._actors(), len(blocks))
        resources = {"num_gpus": 1} if on_gpu else {"num_cpus": 1}
        mapped = data.from_arrow(blocks).map_batches(
            Embedder,
            fn_constructor_args=(
                "text" if text else "image",
                str(model.path),
                model.sha256,
                "auto" if on_gpu else "cpu",
                model.batch if on_gpu else model.batch_size,
            ),
            batch_size=None,  # a block is one call: the whole batches cut above
            batch_format="pyarrow",
            compute=data.ActorPoolStrategy(size=actors),
            **resources,
        )
        where = f"{actors} Ray actor{'s' if actors > 1 else ''}"
        task = progress.start(
            "encode", f"encoding {'text' if text else 'images'} on {where}", total=rows
        )
        out: np.ndarray | None = None
        with raise_refine_cause():
            for batch in checked(mapped.iter_batches(batch_size=None, batch_format="pyarrow")):
                placed = batch.column("row").to_numpy()
                vectors = batch.column("vector").combine_chunks()
                flat = vectors.flatten().to_numpy(zero_copy_only=False)
                if out is None:
                    out = np.empty((rows, vectors.type.list_size), np.float32)
                out[placed] = flat.reshape(len(placed), -1)
                progress.advance(task, len(placed))
        progress.finish(task)
        assert out is not None
        return out


def _block_rows(rows: int, batch: int, actors: int) -> int:
    """Rows per block: whole batches, at most ``ROWS_PER_BLOCK``, and few enough that each of
    the ``actors`` gets ``BLOCKS_PER_ACTOR`` blocks where there are batches for them."""
    batches = -(-rows // batch)
    per_block = min(-(-batches // (actors * BLOCKS_PER_ACTOR)), max(ROWS_PER_BLOCK // batch, 1))
    return max(per_block, 1) * batch


class Embedder:
    """A Ray Data actor: the ``kind`` of model at ``path`` loaded once on ``device``, its files
    checked against ``sha256``; each call embeds a block of ``value``s with the local path, in
    batches of ``batch`` rows (0: the device's), and gives them back by ``row``."""

    def __init__(self, kind: str, path: str, sha256: str, device: str, batch: int):
        from refine.encode import pretrained, vision

        self.model: Any
        self.run: Inference
        if kind == "text":
            self.model, self.run = pretrained.load_text_model(path, device, sha256), pretrained._run
        else:
            self.model, self.run = vision.load_vision_model(path, device, sha256), vision._run
        self.model.batch = batch  # the CPU batches of the process that cut the blocks, or 0

    @carry_refine_errors
    def __call__(self, block: pa.Table) -> pa.Table:
        vectors = self.run(self.model, block.column("value").to_pylist(), NULL_PROGRESS)
        vectors = np.ascontiguousarray(vectors, np.float32)
        column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1])
        return pa.table({"row": block.column("row"), "vector": column})


@contextlib.contextmanager
def raise_refine_cause() -> Iterator[None]:
    """Inside the block, an error Ray raises with a refine error behind it (``_refine_cause``)
    is raised as that error, so the CLI prints its message and exits 2."""
    try:
        yield
    except Exception as exc:
        cause = _refine_cause(exc)
        if cause is None:
            raise
        raise cause from None


def _refine_cause(exc: BaseException) -> RefineError | None:
    """The refine error (a model a node cannot load, say) behind what Ray raised, if any: Ray
    wraps a task's error as ``cause``, and an actor that died in its constructor as the first
    of its ``args``."""
    seen: set[int] = set()
    pending: list[object] = [exc]
    while pending:
        current = pending.pop()
        if not isinstance(current, BaseException) or id(current) in seen:
            continue
        if isinstance(current, RefineError):
            return current
        seen.add(id(current))
        pending += [getattr(current, "cause", None), current.__cause__, *current.args]
    return None


def encode_shards(
    ray: Any, encoder: Any, path: Path, rows: int, out: Path, cpus: int, progress: Progress
) -> np.ndarray | None:
    """``encoder``'s features of the Parquet file or directory ``path`` (``rows`` rows), each
    row group read and encoded by a Ray Data actor on the cluster's workers, where the shards
    lie, and placed in ``out`` (``.npy``) here at the rows ``pyarrow.dataset`` reads it to
    (its files in turn, each file's groups in order), mapped read-only; None where a feature
    column is not in the files themselves (a hive partition's), to encode it here.

    Every encoder works row by row, so the bytes are those of one ``encoder.transform`` of the
    table ``refine.io.read.read_table`` reads, in whatever order the groups come back. ``cpus``
    actors each rebuild the encoder once from its state (no pretrained model, no TorchScript
    network: ``shard_encoding_pays``). Ray Data's own ``read_parquet`` is not used: in Ray 2.60 it
    imports fsspec's HTTP filesystem to check the paths, which fails without aiohttp."""
    groups, names = row_groups(path)
    if not set(encoder.columns) <= names:
        return None
    if sum(g["rows"] for g in groups) != rows:
        return None  # not the table this process read (changed since): encode that one here
    mapped = map_row_groups(ray, groups, Encode, (encoder.state(), encoder.columns), cpus, 0)
    actors = f"{cpus} Ray actor{'s' if cpus > 1 else ''}"
    task = progress.start("encode", f"encoding the shards on {actors}", total=rows)
    X = np.lib.format.open_memmap(out, mode="w+", dtype=np.float32, shape=(rows, encoder.width))
    written = 0
    with raise_refine_cause():
        for batch in checked(mapped.iter_batches(batch_size=None, batch_format="pyarrow")):
            placed = batch.column("row").to_numpy()
            column = batch.column("features").combine_chunks()
            X[placed] = column.flatten().to_numpy(zero_copy_only=False).reshape(len(placed), -1)
            written += len(placed)
            progress.advance(task, len(placed))
    if written != rows:
        raise ValueError(f"Ray encoded {written} rows of features, expected {rows}")
    X.flush()
    del X
    progress.finish(task)
    return np.load(out, mmap_mode="r")


def shard_encoding_pays(encoder: Any) -> bool:
    """Whether Ray workers should encode the shards with ``encoder``: they can encode as this
    process would (no pretrained model, whose embeddings are in this process's cache; no
    TorchScript network, which its state does not carry), and there is work to spread (a text
    or image column). Numbers, categories and embeddings are a copy, cheaper here than sent
    back through Ray: 100k rows of a 64-d embedding took 5.3 s on two actors against 0.2 s
    here (reports/scale-ray.md)."""
    from refine.encode.image import ImageEncoder
    from refine.encode.text import TextEncoder

    heavy = [e for e in encoder.encoders if isinstance(e, TextEncoder | ImageEncoder)]
    torchscript = any(isinstance(e, ImageEncoder) and e.model is not None for e in heavy)
    return bool(heavy) and not encoder.embedded and not torchscript


def row_groups(path: Path) -> tuple[list[dict[str, Any]], set[str]]:
    """The row groups of the Parquet file or directory ``path``, in the order
    ``pyarrow.dataset`` reads them (its files in turn, each file's groups in order), each as
    ``file``, ``group``, ``start`` (its first row in the table) and ``rows``; and the columns
    every file holds itself (a hive partition's column is in none)."""
    import pyarrow.parquet as pq

    groups: list[dict[str, Any]] = []
    names: set[str] | None = None
    start = 0
    for file in parquet_files(path):
        parquet = pq.ParquetFile(file)
        held = set(parquet.schema_arrow.names)
        names = held if names is None else names & held
        for g in range(parquet.num_row_groups):
            rows = parquet.metadata.row_group(g).num_rows
            groups.append({"file": str(file), "group": g, "start": start, "rows": rows})
            start += rows
    return groups, names or set()


def map_row_groups(
    ray: Any, groups: list[dict[str, Any]], actor: type, args: tuple, cpus: int, gpus: int
) -> Any:
    """Ray Data's map of ``actor(*args)`` over ``groups`` (``row_groups``'), a group a call, on
    a pool of one actor per GPU (``gpus`` > 0, each holding one) or per CPU; its output comes
    in the order the calls finish."""
    data = quiet_data(ray)
    size = max(min(gpus or cpus, len(groups)), 1)
    resources = {"num_gpus": 1} if gpus else {"num_cpus": 1}
    return data.from_items(groups, override_num_blocks=max(len(groups), 1)).map_batches(
        actor,
        fn_constructor_args=args,
        batch_size=1,  # a row group a call
        batch_format="pyarrow",
        compute=data.ActorPoolStrategy(size=size),
        **resources,
    )


def quiet_data(ray: Any) -> Any:
    """``ray.data``, set to print neither its progress bars (refine's own bar counts the rows)
    nor its plan, and to log errors only (it warns that the bars are off)."""
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    return ray.data


def in_row_order(tables: Iterator[pa.Table], first: str = "row") -> Iterator[pa.Table]:
    """``tables`` (each a run of consecutive rows, its ``first`` column their row numbers), as
    they arrive, given back in row order without that column: each waits until the rows
    before it have gone."""
    waiting: dict[int, pa.Table] = {}
    following = 0
    for table in tables:
        if not table.num_rows:
            continue
        waiting[int(table.column(first)[0].as_py())] = table
        while following in waiting:
            ready = waiting.pop(following)
            following += ready.num_rows
            yield ready.drop_columns([first])
    if waiting:
        raise ValueError(f"rows from {min(waiting)} came back, but none from row {following}")


def parquet_files(path: Path) -> list[Path]:
    """The Parquet files of ``path`` (a file, or a directory read as ``read_table`` reads it),
    in the order ``pyarrow.dataset`` reads them."""
    import pyarrow.dataset as ds

    if path.is_file():
        return [path]
    return [Path(f) for f in ds.dataset(path, format="parquet", partitioning="hive").files]


class Encode:
    """A Ray Data actor: the feature encoder rebuilt once from its ``state``; each call reads
    the ``columns`` of the row groups its batch names (``file``, ``group``, the ``start`` row of
    the group in the table) and encodes them into a ``features`` column (a fixed-size list per
    row) beside each row's ``row``."""

    def __init__(self, state: dict[str, Any], columns: list[str]):
        from refine.encode.features import FeatureEncoder

        self.encoder = FeatureEncoder.from_state(state)
        self.columns = columns

    @carry_refine_errors
    def __call__(self, batch: pa.Table) -> pa.Table:
        import pyarrow.parquet as pq

        pieces, rows = [], []
        named = (batch.column(c).to_pylist() for c in ("file", "group", "start"))
        for file, group, start in zip(*named, strict=True):
            piece = pq.ParquetFile(file).read_row_group(group, columns=self.columns)
            pieces.append(piece)
            rows.append(np.arange(start, start + piece.num_rows, dtype=np.int64))
        X = np.ascontiguousarray(self.encoder.transform(pa.concat_tables(pieces)), np.float32)
        column = pa.FixedSizeListArray.from_arrays(pa.array(X.reshape(-1)), self.encoder.width)
        return pa.table({"row": np.concatenate(rows), "features": column})
