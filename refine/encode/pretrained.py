"""Free-text columns through a pretrained sentence encoder (``--text-model``), with a cache.

A sentence-transformers model (a local directory, or a Hugging Face name the hub or its local
cache holds) turns each value of a text column into one embedding, in place of the TF-IDF block
of ``refine.encode.text``. The model is recorded by the SHA-256 of its weight, configuration and
tokenizer files, so a run saved with one model is never reused with another.

Embeddings are kept by ``(SHA-256 of the value, SHA-256 of the model)``:

* in memory, for the rest of the process (fitting then transforming a column encodes it once);
* in a cache directory (``--embedding-cache``; by default ``$REFINE_CACHE_DIR``, else
  ``$XDG_CACHE_HOME/refine``, else ``~/.cache/refine``, under ``embeddings/``), which every run,
  rerun, update and ``encode_texts`` call on the machine reads and adds to;
* in a run directory's ``embeddings.parquet``, which ``refine update`` reads from its parent run.

``encode_texts`` is the one entry point: values in, ``(N, D)`` float32 embeddings out, only the
values no cache holds going through the model, sorted by length in batches sized to the device.
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

INSTALL = "pip install 'refine[text]'"
# The files that decide what a model computes: weights, configurations, tokenizer vocabularies.
HASHED_SUFFIXES = (".json", ".safetensors", ".bin", ".txt", ".model", ".pt", ".pth")
# Exports for other runtimes that sentence-transformers never reads (and that are large).
UNHASHED_FOLDERS = ("onnx", "openvino")
# Rows per batch on the CPU: larger batches ran slower per row (16: 29 rows/s, 64: 22, 256: 15
# for MiniLM on 2 cores, reports/encoders.md); a batch pads to its longest value.
CPU_BATCH = 16
# On CUDA, rows per batch per GiB of the device's memory, between the two bounds below.
CUDA_ROWS_PER_GIB = 16
CUDA_BATCH = (64, 1024)
# Files of a hub repository sentence-transformers does not read: other runtimes' exports.
NOT_DOWNLOADED = ["onnx/*", "openvino/*", "*.h5", "*.msgpack", "*.ot", "tf_model*", "flax_model*"]
# Values longer than this many characters are cut before hashing and encoding, as for TF-IDF.
MAX_CHARS = 5_000


def versions(
    names: Sequence[str] = ("sentence-transformers", "transformers", "tokenizers", "torch"),
) -> dict[str, str]:
    """The versions of the libraries that decide the embeddings, as run.json records them."""
    found = {}
    for name in names:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def _import_sentence_transformers() -> Any:
    try:
        import sentence_transformers
    except ImportError:
        raise ConfigError(
            f"--text-model needs sentence-transformers, which is not installed: {INSTALL}"
        ) from None
    return sentence_transformers


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

    cpu_batch = CPU_BATCH
    libraries: ClassVar[tuple[str, ...]] = (
        "sentence-transformers",
        "transformers",
        "tokenizers",
        "torch",
    )

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


@dataclass
class TextModel(ModelFiles):
    """A sentence encoder found on disk and fingerprinted; its network loads on first use."""

    _network: Any = None

    def network(self) -> Any:
        """The ``SentenceTransformer``, loaded once, in eval mode on ``device``."""
        if self._network is None:
            st = _import_sentence_transformers()
            try:
                # trust_remote_code stays off: a model directory's own Python is never run.
                with quiet_loading():
                    self._network = st.SentenceTransformer(
                        str(self.path), device=self.device, local_files_only=True
                    )
            except Exception as exc:  # transformers raises OSError, ValueError, KeyError, ...
                raise InputError(
                    f"--text-model {self.name!r}: {str(self.path)!r} is not a model "
                    f"sentence-transformers can load ({type(exc).__name__}: {exc}); pass a "
                    "directory saved with SentenceTransformer.save()"
                ) from None
            self._network.eval()
        return self._network

    @property
    def dim(self) -> int:
        network = self.network()
        # sentence-transformers 6 renamed the method; older releases have only the old name
        width = getattr(network, "get_embedding_dimension", None)
        return int((width or network.get_sentence_embedding_dimension)())


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


def load_text_model(name: str, device: str = "auto", sha256: str | None = None) -> TextModel:
    """Find the sentence encoder ``name`` and fingerprint it; the network loads when needed.

    Parameters
    ----------
    name : str
        A directory holding a sentence-transformers model (``SentenceTransformer.save``), or a
        Hugging Face name (``sentence-transformers/all-MiniLM-L6-v2``): from the hub's local
        cache, else downloaded unless ``HF_HUB_OFFLINE`` is set.
    device : {"auto", "cpu", "cuda"}
    sha256 : str, optional
        The fingerprint a saved run recorded; a model whose files differ is refused.

    Raises
    ------
    ConfigError
        sentence-transformers is not installed.
    InputError
        No such directory or reachable model, or its files changed since ``sha256``.
    """
    _import_sentence_transformers()
    path = _resolve(name)
    if not model_files(path):
        raise InputError(
            f"--text-model {name!r}: {str(path)!r} holds no model files (config, weights, "
            "tokenizer); pass a directory saved with SentenceTransformer.save()"
        )
    files, digest = fingerprint("--text-model", name, path, sha256)
    return TextModel(name, path, digest, files, resolve_device(device))


def _resolve(name: str) -> Path:
    """The directory of ``name``: itself when it is one, else the Hugging Face hub's copy."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path.resolve()
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise InputError(
            f"--text-model {name!r} is not a directory; pass a sentence-transformers model "
            "directory or a Hugging Face model name"
        )
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    try:
        from huggingface_hub import snapshot_download

        return Path(
            snapshot_download(name, local_files_only=offline, ignore_patterns=NOT_DOWNLOADED)
        )
    except Exception as exc:  # no such repository, no network, not in the cache
        why = (
            "HF_HUB_OFFLINE is set and the Hugging Face cache holds no copy of it"
            if offline
            else f"the Hugging Face hub did not give it ({type(exc).__name__})"
        )
        raise InputError(
            f"--text-model {name!r} is neither a local directory nor a model refine can fetch: "
            f"{why}. Download it where the hub is reachable (SentenceTransformer({name!r})"
            ".save(DIR)) and pass DIR"
        ) from None


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
                    vectors = _matrix(table.column("embedding"))
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

    def add_run(self, run_dir: Path, model: str) -> int:
        """Read the embeddings of ``model`` that ``run_dir``'s ``embeddings.parquet`` holds,
        keyed by the values in its ``refined.parquet``; return how many rows it held."""
        path = Path(run_dir) / "embeddings.parquet"
        if not path.is_file():
            return 0
        embeddings = pq.read_table(path)
        if "text_model_sha256" not in embeddings.column_names:
            return 0
        same = pc.equal(embeddings.column("text_model_sha256"), model)
        if not pc.all(same).as_py():
            return 0
        columns = [c for c in embeddings.column_names if c not in EMBEDDING_COLUMNS]
        refined = pq.read_table(Path(run_dir) / "refined.parquet", columns=columns)
        for name in columns:
            keys = value_keys(text_values(refined.column(name)))
            vectors = _matrix(embeddings.column(name))
            held = self.memory.setdefault(model, {})
            for k, v in zip(keys, vectors, strict=True):
                held.setdefault(k, v)
        return embeddings.num_rows


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


def text_values(column: pa.ChunkedArray | pa.Array) -> list[str]:
    """The values as encoded: null as "", longer ones cut to ``MAX_CHARS`` characters."""
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    column = pc.utf8_slice_codeunits(pc.fill_null(column, ""), 0, MAX_CHARS)
    return column.to_pylist()


def value_keys(values: Sequence[str]) -> list[bytes]:
    """The SHA-256 of each value's UTF-8 bytes: its key in every cache."""
    return [hashlib.sha256(v.encode("utf-8", "surrogatepass")).digest() for v in values]


def _matrix(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
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


def encode_texts(
    values: Sequence[str | None] | pa.Array | pa.ChunkedArray,
    model: TextModel | str,
    cache: EmbeddingCache | str | None = "auto",
    progress: Progress = NULL_PROGRESS,
    stats: Encoded | None = None,
) -> np.ndarray:
    """Embed each value with ``model``: ``(N, D)`` float32, row ``i`` for ``values[i]``.

    Parameters
    ----------
    values : sequence of str or None, or a pyarrow string array
        Null is embedded as ""; values longer than ``MAX_CHARS`` characters are cut.
    model : TextModel or str
        A model from ``load_text_model``, or what to pass it.
    cache : EmbeddingCache, str or None
        Where embeddings are kept by ``(value hash, model hash)``: an ``EmbeddingCache``, or
        ``--embedding-cache``'s ``auto`` (the user's cache directory), ``off`` or a directory.
        Only values it does not hold go through the model, and their embeddings are added.
    progress : Progress
        Receives an ``encode`` bar (rows) while the model runs.
    stats : Encoded, optional
        Filled in with the rows, the rows encoded (not cached) and the seconds taken.
    """
    if isinstance(model, str):
        model = load_text_model(model)
    if not isinstance(cache, EmbeddingCache):
        cache = open_cache(cache or "off")
    if isinstance(values, pa.Array | pa.ChunkedArray):
        texts = text_values(values)
    else:
        values = list(values)
        wrong = next((i for i, v in enumerate(values) if not isinstance(v, str | None)), None)
        if wrong is not None:
            raise InputError(
                f"encode_texts takes strings (or None); value {wrong} is a "
                f"{type(values[wrong]).__name__}: {values[wrong]!r:.40}"
            )
        texts = text_values(pa.array(values, pa.string()))
    keys = value_keys(texts)
    found = through_cache(
        keys,
        model.sha256,
        cache,
        lambda rows: _run(model, [texts[i] for i in rows], progress),
        stats if stats is not None else Encoded(),
    )
    if not texts:
        return np.zeros((0, model.dim), np.float32)
    return np.stack([found[k] for k in keys]).astype(np.float32, copy=False)


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


def _run(model: TextModel, texts: list[str], progress: Progress) -> np.ndarray:
    """The network's embeddings ``(N, D)`` of ``texts``, longest first in batches, so each
    batch pads to a similar length; rows come back in the order given."""
    import torch

    network = model.network()
    out = np.zeros((len(texts), model.dim), np.float32)
    order = np.argsort(-np.array([len(t) for t in texts], np.int64), kind="stable")
    batch = model.batch_size
    task = progress.start("encode", "encoding text", total=len(texts))
    start = 0
    with torch_threads(), torch.inference_mode(), autocast(model.device):
        while start < len(order):
            rows = order[start : start + batch]
            try:
                vectors = network.encode(
                    [texts[i] for i in rows],
                    batch_size=len(rows),
                    convert_to_numpy=True,
                    show_progress_bar=False,
                )
            except torch.cuda.OutOfMemoryError:
                if batch == 1:
                    raise
                batch //= 2  # a long batch did not fit: halve it and go on
                torch.cuda.empty_cache()
                continue
            out[rows] = np.asarray(vectors, np.float32)
            start += len(rows)
            progress.advance(task, len(rows))
    progress.finish(task)
    return np.nan_to_num(out)


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


# embeddings.parquet's columns before the one per encoded column.
EMBEDDING_COLUMNS = ("row_number", "text_model", "text_model_sha256")


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

    column_kind = ""  # "text", "image": how notes name the column
    units = ""  # what notes say the model encoded: "values", "images"

    def model_label(self) -> str:
        raise NotImplementedError

    def model_device(self) -> str:
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


@dataclass
class PretrainedTextEncoder(EmbeddingBlock):
    """One free-text column as ``model``'s embeddings (an ``EmbeddingBlock``)."""

    model_name: str = ""
    model: TextModel | None = None

    kind = "text-model"
    column_kind = "text"
    units = "values"

    @property
    def width(self) -> int:
        return self.dim

    def model_label(self) -> str:
        return self.model_name

    def model_device(self) -> str:
        return self._model().device

    def _model(self) -> TextModel:
        if self.model is None:  # loaded back from a run: the same files, or refused
            self.model = load_text_model(self.model_path, sha256=self.model_sha256)
            self.model.name = self.model_name
        return self.model

    def vectors(self, column: pa.ChunkedArray) -> np.ndarray:
        """The column's raw embeddings ``(N, dim)``, through the cache."""
        stats = Encoded()
        vectors = encode_texts(column, self._model(), self.cache or "off", self.progress, stats)
        self._keep(stats)
        return vectors

    def fit(self, column: pa.ChunkedArray) -> PretrainedTextEncoder:
        model = self._model()
        self.model_name, self.model_path, self.model_sha256 = (
            model.name,
            str(model.path),
            model.sha256,
        )
        self.model_record = model.record()
        self._centre(self.vectors(column))
        return self

    def transform(self, column: pa.ChunkedArray, out: np.ndarray) -> None:
        out[:] = self._scaled(self.vectors(column))

    def describe(self) -> dict[str, Any]:
        return {
            "column": self.name,
            "kind": self.kind,
            "dim": self.dim,
            "text_model": self.model_record,
            **self._described(),
        }

    def note(self) -> str:
        return self.encoded_note()

    def state(self) -> dict[str, Any]:
        """Plain values and tensors: loads with ``torch.load(weights_only=True)``."""
        return {
            "column": self.name,
            "kind": self.kind,
            "dim": self.dim,
            "text_model": self.model_record,
            "model_name": self.model_name,
            **self._state(),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> PretrainedTextEncoder:
        """The encoder of a saved run; its model is loaded (and its hash checked) when first
        needed, from the path the run recorded."""
        return cls(
            state["column"],
            model_name=str(state["model_name"]),
            model_record=dict(state["text_model"]),
            **cls._from_state(state),
        )


def embeddings_table(encoders: Sequence[PretrainedTextEncoder], table: pa.Table) -> pa.Table:
    """``embeddings.parquet``: ``row_number``, the model's name and SHA-256, then one
    ``list<float32>`` column per encoded column of ``table`` (its raw embeddings)."""
    n = table.num_rows
    first = encoders[0]
    columns: dict[str, pa.Array] = {
        "row_number": pa.array(np.arange(n, dtype=np.int64)),
        "text_model": pa.array([first.model_name] * n, pa.string()),
        "text_model_sha256": pa.array([first.model_sha256] * n, pa.string()),
    }
    for encoder in encoders:
        vectors = encoder.vectors(table.column(encoder.name))
        offsets = pa.array(np.arange(0, n * encoder.dim + 1, encoder.dim, dtype=np.int32))
        columns[encoder.name] = pa.ListArray.from_arrays(
            offsets, pa.array(vectors.reshape(-1), pa.float32())
        )
    return pa.table(columns)
