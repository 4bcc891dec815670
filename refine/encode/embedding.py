"""What the pretrained encoders of text (``--text-model``, ``refine.encode.pretrained``) and
images (``--image-model DIR``, ``refine.encode.vision``) share.

* A model is a directory identified by the SHA-256 of its files (``ModelFiles``,
  ``fingerprint``): run.json records it, and a saved run refuses it once its files change.
* Embeddings are kept by ``(SHA-256 of the value, SHA-256 of the model)`` (``EmbeddingCache``,
  ``through_cache``): in memory, for the rest of the process (fitting then transforming a column
  encodes it once), and in a cache directory (``--embedding-cache``; by default
  ``$REFINE_CACHE_DIR``, else ``$XDG_CACHE_HOME/refine``, else ``~/.cache/refine``, under
  ``embeddings/``), which every run, rerun, update and ``encode_*`` call on the machine reads and
  adds to.
* The network runs in batches sized to the device, in float16 autocast on CUDA, with torch's
  threads capped at the cores the process may use.
* A column's block is its embeddings centred, with one scale (``EmbeddingBlock``).
* Where the network runs is the block's ``inference``: here (None), or on a pool of Ray actors
  (``refine.learn.ray_data``, ``--engine ray``).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from refine.errors import ConfigError, InputError, OutputError
from refine.io.write import atomic_file, write_parquet
from refine.progress import NULL_PROGRESS, Progress

# The files that decide what a model computes: weights, configurations, tokenizer vocabularies.
HASHED_SUFFIXES = (".json", ".safetensors", ".bin", ".txt", ".model", ".pt", ".pth")
# Exports for other runtimes that refine's encoders never read (and that are large).
UNHASHED_FOLDERS = ("onnx", "openvino")
# On CUDA, rows per batch per GiB of the device's memory, between the two bounds below.
CUDA_ROWS_PER_GIB = 16
CUDA_BATCH = (64, 1024)
# How a model's embeddings of the values no cache holds are computed: ``(model, values,
# progress) -> (N, D)`` float32, the module's own ``_run`` by default.
Inference = Callable[[Any, list[Any], Progress], np.ndarray]


def versions(names: Sequence[str]) -> dict[str, str]:
    """The versions of the libraries that decide the embeddings, as run.json records them."""
    found = {}
    for name in names:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def model_files(path: Path) -> dict[str, str]:
    """SHA-256 of each file under ``path`` that decides what the model computes, by its path
    relative to ``path`` (``/``-separated), in sorted order."""
    hashes = {}
    for file in sorted(path.rglob("*")):
        relative = file.relative_to(path)
        if relative.parts[0] in UNHASHED_FOLDERS or relative.parts[0].startswith("."):
            continue
        if file.is_file() and file.suffix in HASHED_SUFFIXES:
            digest = hashlib.sha256()
            with file.open("rb") as handle:
                while chunk := handle.read(1 << 20):
                    digest.update(chunk)
            hashes[relative.as_posix()] = digest.hexdigest()
    return hashes


def combined_hash(files: dict[str, str]) -> str:
    lines = "".join(f"{name}\t{digest}\n" for name, digest in sorted(files.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


@dataclass
class ModelFiles:
    """A pretrained model's directory found on disk and fingerprinted by its files: what the
    text and image models share."""

    name: str  # as the user gave it: a path, or a Hugging Face name
    path: Path  # the directory read
    sha256: str  # of ``files``: the model's identity in caches and run.json
    files: dict[str, str]
    device: str = "cpu"
    batch: int = 0  # rows per batch; 0: sized to the device (``batch_size``)

    cpu_batch: ClassVar[int] = 16  # rows per batch on the CPU
    libraries: ClassVar[tuple[str, ...]] = ("torch",)  # whose versions run.json records

    @property
    def batch_size(self) -> int:
        return self.batch or device_batch(self.device, self.cpu_batch)

    def record(self) -> dict[str, Any]:
        """What run.json keeps of the model: name, path, hashes and library versions."""
        return {
            "name": self.name,
            "path": str(self.path),
            "sha256": self.sha256,
            "files": self.files,
            "versions": versions(self.libraries),
        }


def fingerprint(
    option: str, name: str, path: Path, sha256: str | None
) -> tuple[dict[str, str], str]:
    """The SHA-256 of each model file under ``path`` and of them all; a model whose files
    differ from the ``sha256`` a saved run recorded is refused."""
    files = model_files(path)
    digest = combined_hash(files)
    if sha256 is not None and digest != sha256:
        raise InputError(
            f"{option} {name!r} has changed since the run used it (SHA-256 {digest[:12]}, "
            f"the run's {sha256[:12]}): its files in {str(path)!r} differ. Restore the model "
            "the run used, or start a new run with refine run"
        )
    return files, digest


def device_batch(device: str, cpu_batch: int) -> int:
    """Rows per batch: ``cpu_batch`` on the CPU; on CUDA, sized to the device's memory."""
    if device != "cuda":
        return cpu_batch
    import torch

    gib = torch.cuda.get_device_properties(0).total_memory / 2**30
    return int(np.clip(round(gib * CUDA_ROWS_PER_GIB), *CUDA_BATCH))


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for, but PyTorch sees no CUDA device")
    return device


def cache_directory(setting: str) -> Path | None:
    """The cache directory ``--embedding-cache`` names: ``auto`` is the user's cache, ``off``
    none, anything else a directory path."""
    if setting == "off":
        return None
    if setting != "auto":
        return Path(setting).expanduser()
    root = os.environ.get("REFINE_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "refine"
    )
    return Path(root) / "embeddings"


def _key_schema(dim: int) -> pa.Schema:
    return pa.schema([("key", pa.binary(32)), ("embedding", pa.list_(pa.float32(), dim))])


@dataclass
class EmbeddingCache:
    """Embeddings by ``(value hash, model hash)``: in memory, and in ``directory`` when given.

    ``directory`` holds one folder per model (its SHA-256), of Parquet files ``(key
    binary(32), embedding fixed_size_list<float32>)`` each named by the hash of its keys: each
    file is written once, atomically, so runs may share the directory.
    """

    directory: Path | None = None
    memory: dict[str, dict[bytes, np.ndarray]] = field(default_factory=dict)
    # Set when an "auto" cache could not be written; the directory is then left alone.
    problem: str | None = None
    strict: bool = False  # a directory the user named: failing to write it is an error

    def lookup(self, model: str, keys: Sequence[bytes]) -> dict[bytes, np.ndarray]:
        """The embeddings held for ``keys`` (unique) of ``model``, from memory then disk."""
        held = self.memory.setdefault(model, {})
        found = {k: held[k] for k in keys if k in held}
        wanted = [k for k in keys if k not in found]
        if wanted and self.directory is not None and (self.directory / model).is_dir():
            wanted_array = pa.array(wanted, pa.binary(32))
            for file in sorted((self.directory / model).glob("*.parquet")):
                try:  # the keys first: most files hold none of the wanted values
                    hits = pc.is_in(pq.read_table(file, columns=["key"])["key"], wanted_array)
                    if not pc.any(hits).as_py():
                        continue
                    table = pq.read_table(file).filter(hits)
                except (OSError, pa.ArrowInvalid, KeyError):
                    continue  # a file another process is still writing, or a broken one
                if table.num_rows:
                    vectors = as_matrix(table.column("embedding"))
                    for k, v in zip(table.column("key").to_pylist(), vectors, strict=True):
                        held[k] = found[k] = v
                    wanted_array = pa.array([k for k in wanted if k not in found], pa.binary(32))
                    if not len(wanted_array):
                        break
        return found

    def add(self, model: str, keys: Sequence[bytes], vectors: np.ndarray) -> None:
        """Keep ``vectors`` ``(len(keys), D)`` for ``keys`` of ``model``; persist them."""
        held = self.memory.setdefault(model, {})
        for k, v in zip(keys, vectors, strict=True):
            held[k] = v
        if self.directory is None or not len(keys) or self.problem is not None:
            return
        table = pa.table(
            {
                "key": pa.array(list(keys), pa.binary(32)),
                "embedding": pa.FixedSizeListArray.from_arrays(
                    pa.array(np.ascontiguousarray(vectors, np.float32).reshape(-1)),
                    vectors.shape[1],
                ),
            },
            schema=_key_schema(vectors.shape[1]),
        )
        name = hashlib.sha256(b"".join(sorted(keys))).hexdigest()[:32] + ".parquet"
        try:
            with atomic_file(self.directory / model / name, overwrite=True) as tmp:
                write_parquet(table, tmp)
        except OutputError as exc:
            if self.strict:
                raise OutputError(
                    f"--embedding-cache {str(self.directory)!r} cannot be written ({exc}); "
                    "choose another directory, or pass --embedding-cache off"
                ) from None
            self.problem = str(exc)


def open_cache(setting: str = "auto") -> EmbeddingCache:
    """The cache ``--embedding-cache`` names: ``auto``, ``off`` or a directory. Its memory lives
    as long as the object (an encoder holds it for its run), so a long-lived process does not
    keep every embedding it ever computed."""
    directory = cache_directory(setting)
    if directory is None:
        return EmbeddingCache()
    cache = EmbeddingCache(directory, strict=setting != "auto")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if cache.strict:
            raise OutputError(
                f"--embedding-cache {setting!r} cannot be created: {exc.strerror or exc}; "
                "choose another directory, or pass --embedding-cache off"
            ) from None
        cache.problem = exc.strerror or str(exc)
    return cache


def as_matrix(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A list<float> column of one length as ``(N, D)`` float32."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    n = len(column)
    flat = pc.list_flatten(column).to_numpy(zero_copy_only=False).astype(np.float32)
    return flat.reshape(n, -1) if n else flat.reshape(0, 0)


@dataclass
class Encoded:
    """What one ``encode_texts`` or ``encode_images`` call did: rows, rows the model encoded,
    values it could not read (an image Pillow cannot decode), and its seconds."""

    rows: int = 0
    encoded: int = 0
    seconds: float = 0.0
    failed: int = 0

    @property
    def from_cache(self) -> int:
        return self.rows - self.encoded - self.failed

    @property
    def rows_per_second(self) -> float | None:
        return round(self.encoded / self.seconds, 1) if self.encoded and self.seconds else None


def through_cache(
    keys: Sequence[bytes],
    model: str,
    cache: EmbeddingCache,
    encode: Callable[[list[int]], np.ndarray],
    stats: Encoded,
) -> dict[bytes, np.ndarray]:
    """The vector of each distinct key in ``keys`` ``(N,)`` for the model of SHA-256 ``model``:
    from ``cache``, else ``encode(rows)`` ``(len(rows), D)`` on the first row of each key the
    cache lacks, whose vectors the cache then keeps (all but rows of NaN: no usable value).
    ``stats`` gets the rows, the rows encoded and the seconds taken."""
    unique = list(dict.fromkeys(keys))
    found = cache.lookup(model, unique)
    missing = [k for k in unique if k not in found]
    stats.rows = len(keys)
    if missing or not found:
        started = time.perf_counter()
        first = {k: i for i, k in reversed(list(enumerate(keys)))}
        vectors = encode([first[k] for k in missing])
        usable = ~np.isnan(vectors).all(1) if vectors.size else np.ones(len(missing), bool)
        stats.encoded, stats.failed = int(usable.sum()), int((~usable).sum())
        stats.seconds = time.perf_counter() - started
        cache.add(model, [k for k, ok in zip(missing, usable, strict=True) if ok], vectors[usable])
        # What the model could not read is remembered in memory only, not to read it twice.
        for k, v, ok in zip(missing, vectors, usable, strict=True):
            if not ok:
                cache.memory[model][k] = v
        found.update(zip(missing, vectors, strict=True))
    return found


@contextlib.contextmanager
def quiet_loading(errors_only: bool = False) -> Iterator[None]:
    """No progress bar from transformers while the weights load: refine draws its own. With
    ``errors_only``, none of its warnings either, where refine checks what they would say."""
    from transformers.utils import logging as transformers_logging

    shown = transformers_logging.is_progress_bar_enabled()
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.disable_progress_bar()
    if errors_only:
        transformers_logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers_logging.set_verbosity(verbosity)
        if shown:
            transformers_logging.enable_progress_bar()


@contextlib.contextmanager
def autocast(device: str) -> Iterator[None]:
    """Half precision on CUDA, where it runs the network at twice the speed; none on the CPU."""
    if device != "cuda":
        yield
        return
    import torch

    with torch.autocast("cuda", dtype=torch.float16):
        yield


@contextlib.contextmanager
def torch_threads() -> Iterator[None]:
    """torch's intra-op threads, capped at the cores this process may run on: torch counts
    the machine's, which in a container or under taskset oversubscribes the few it has."""
    import torch

    before = torch.get_num_threads()
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else before
    if allowed < before:
        torch.set_num_threads(allowed)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


@dataclass
class EmbeddingBlock:
    """What the encoders of a pretrained text or image model share: the model's identity, the
    block (the embeddings centred, with one scale, which keeps their geometry as the model made
    it: its cosine similarities), the cache, and what the last encoding did."""

    name: str
    model_path: str = ""
    model_sha256: str = ""
    model_record: dict[str, Any] = field(default_factory=dict)
    dim: int = 0
    mean: np.ndarray | None = None
    scale: float = 1.0
    stats: Encoded = field(default_factory=Encoded)
    cache: EmbeddingCache | None = None
    progress: Progress = NULL_PROGRESS
    inference: Inference | None = None  # where the network runs: here, or on Ray actors

    column_kind = ""  # "text", "image": how notes name the column
    units = ""  # what notes say the model encoded: "values", "images"

    def model_label(self) -> str:
        raise NotImplementedError

    def model_device(self) -> str:
        raise NotImplementedError

    def column_vectors(self, column: pa.ChunkedArray) -> np.ndarray:
        """The column's raw embeddings ``(N, dim)`` through the cache, NaN where a row has no
        usable value."""
        raise NotImplementedError

    def column_keys(self, column: pa.ChunkedArray) -> list[bytes | None]:
        """Each row's key in the cache (None: no value the model reads)."""
        raise NotImplementedError

    def _keep(self, stats: Encoded) -> None:
        # What the notes and run.json tell: the last call that ran the model (fit's, not the
        # transform that finds its rows in memory), else the first.
        if stats.encoded or not self.stats.rows:
            self.stats = stats

    def _centre(self, vectors: np.ndarray) -> None:
        """Fit the block on ``vectors`` ``(N, D)``, every row a usable embedding."""
        self.dim = vectors.shape[1]
        self.mean = vectors.mean(0).astype(np.float32)
        self.scale = float(np.sqrt(((vectors - self.mean) ** 2).mean())) or 1.0

    def _scaled(self, vectors: np.ndarray) -> np.ndarray:
        assert self.mean is not None, "not fitted"
        return (vectors - self.mean) / self.scale

    def _described(self) -> dict[str, Any]:
        return {
            "rows_encoded": self.stats.encoded,
            "rows_from_cache": self.stats.from_cache,
            "rows_per_second": self.stats.rows_per_second,
        }

    def encoded_note(self) -> str:
        """How the last call that ran the model went: rows encoded, speed, rows cached."""
        s = self.stats
        if not s.encoded:
            return f"{self.column_kind} column {self.name!r}: every embedding came from the cache"
        return (
            f"{self.column_kind} column {self.name!r}: {s.encoded:,} {self.units} encoded with "
            f"{self.model_label()!r} in {s.seconds:.1f} s ({s.rows_per_second:,.0f} rows/s on "
            f"{self.model_device()})"
            + (f"; {s.from_cache:,} rows from the cache" if s.from_cache else "")
        )

    def _state(self) -> dict[str, Any]:
        """The block's fitted values: plain values and a tensor."""
        import torch

        assert self.mean is not None, "not fitted"
        return {
            "model_path": self.model_path,
            "model_sha256": self.model_sha256,
            "mean": torch.from_numpy(self.mean),
            "scale": self.scale,
        }

    @staticmethod
    def _from_state(state: dict[str, Any]) -> dict[str, Any]:
        """``EmbeddingBlock``'s arguments from a saved ``state``."""
        return {
            "model_path": str(state["model_path"]),
            "model_sha256": str(state["model_sha256"]),
            "dim": int(state["dim"]),
            "mean": state["mean"].numpy(),
            "scale": float(state["scale"]),
        }


def embeddings_table(encoders: Sequence[EmbeddingBlock], table: pa.Table) -> pa.Table:
    """``embeddings.parquet`` for ``table``'s rows: ``row_number``; then, for the text columns a
    ``--text-model`` encoded, ``text_model`` and ``text_model_sha256`` (the model's name and
    SHA-256) and one ``list<float32>`` column per column (its raw embeddings); then the same for
    the image columns of an ``--image-model`` directory (``image_model``, ``image_model_sha256``;
    null where a row has no usable image)."""
    n = table.num_rows
    columns: dict[str, pa.Array] = {"row_number": pa.array(np.arange(n, dtype=np.int64))}
    for kind in ("text", "image"):
        group = [e for e in encoders if e.column_kind == kind]
        if not group:
            continue
        columns[f"{kind}_model"] = pa.array([group[0].model_label()] * n, pa.string())
        columns[f"{kind}_model_sha256"] = pa.array([group[0].model_sha256] * n, pa.string())
        for encoder in group:
            vectors = encoder.column_vectors(table.column(encoder.name))
            missing = np.isnan(vectors).any(1) if vectors.shape[1] else np.ones(n, bool)
            offsets = pa.array(np.arange(0, n * encoder.dim + 1, encoder.dim, dtype=np.int32))
            columns[encoder.name] = pa.ListArray.from_arrays(
                offsets,
                pa.array(np.nan_to_num(vectors).reshape(-1), pa.float32()),
                mask=pa.array(missing) if missing.any() else None,
            )
    return pa.table(columns)


def add_run(run_dir: Path, encoders: Sequence[EmbeddingBlock]) -> int:
    """Give each of ``encoders`` (a loaded run's, their caches open) the embeddings its model
    made of its column in ``run_dir``'s ``embeddings.parquet``, keyed by the column's values in
    its ``refined.parquet``; return how many rows were added (0 where the file is missing or
    holds another model's)."""
    path = Path(run_dir) / "embeddings.parquet"
    if not path.is_file():
        return 0
    names = set(pq.read_schema(path).names)
    wanted = [
        e
        for e in encoders
        if e.cache is not None and e.name in names and f"{e.column_kind}_model_sha256" in names
    ]
    if not wanted:
        return 0
    models = sorted({f"{e.column_kind}_model_sha256" for e in wanted})
    embeddings = pq.read_table(path, columns=[*models, *(e.name for e in wanted)])
    refined = pq.read_table(Path(run_dir) / "refined.parquet", columns=[e.name for e in wanted])
    added = 0
    for encoder in wanted:
        model = embeddings.column(f"{encoder.column_kind}_model_sha256")
        if not pc.all(pc.equal(model, encoder.model_sha256)).as_py():
            continue
        column = embeddings.column(encoder.name)
        valid = column.is_valid().to_numpy(zero_copy_only=False)
        keys = encoder.column_keys(refined.column(encoder.name))
        vectors = as_matrix(column.filter(pa.array(valid)))
        assert encoder.cache is not None, "filtered above"
        held = encoder.cache.memory.setdefault(encoder.model_sha256, {})
        for key, vector in zip(
            [k for k, ok in zip(keys, valid, strict=True) if ok], vectors, strict=True
        ):
            if key is not None:
                held.setdefault(key, vector)
                added += 1
    return added


def in_batches(
    rows: int,
    batch: int,
    device: str,
    embed: Callable[[int, int], None],
    progress: Progress,
    description: str,
) -> None:
    """Call ``embed(start, stop)`` on rows ``start:stop`` of ``rows``, ``batch`` at a time,
    under ``torch.inference_mode``, with torch's threads capped and float16 autocast on CUDA,
    where a batch that does not fit is halved and tried again; an ``encode`` bar counts rows."""
    import torch

    task = progress.start("encode", description, total=rows)
    start = 0
    with torch_threads(), torch.inference_mode(), autocast(device):
        while start < rows:
            stop = min(start + batch, rows)
            try:
                embed(start, stop)
            except torch.cuda.OutOfMemoryError:
                if batch == 1:
                    raise
                batch //= 2  # the batch did not fit: halve it and go on
                torch.cuda.empty_cache()
                continue
            progress.advance(task, stop - start)
            start = stop
    progress.finish(task)
