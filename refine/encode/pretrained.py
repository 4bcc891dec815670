"""Free-text columns through a pretrained sentence encoder (``--text-model``), with a cache.

A sentence-transformers model (a local directory, or a Hugging Face name the hub or its local
cache holds) turns each value of a text column into one embedding, in place of the TF-IDF block
of ``refine.encode.text``. The model is recorded by the SHA-256 of its weight, configuration and
tokenizer files, so a run saved with one model is never reused with another.

Embeddings are kept by ``(SHA-256 of the value, SHA-256 of the model)`` in memory and in the
cache directory of ``refine.encode.embedding``, and in a run directory's ``embeddings.parquet``,
which ``refine update``, ``refine distill`` and ``load_run`` read from the run
(``refine.encode.embedding.add_run``).

``encode_texts`` is the one entry point: values in, ``(N, D)`` float32 embeddings out, only the
values no cache holds going through the model, sorted by length in batches sized to the device.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from refine.encode.embedding import (
    EmbeddingBlock,
    EmbeddingCache,
    Encoded,
    Inference,
    ModelFiles,
    fingerprint,
    in_batches,
    model_files,
    open_cache,
    quiet_loading,
    resolve_device,
    through_cache,
)
from refine.errors import ConfigError, InputError
from refine.progress import NULL_PROGRESS, Progress

INSTALL = "pip install 'refine[text]'"
# Rows per batch on the CPU: larger batches ran slower per row (16: 29 rows/s, 64: 22, 256: 15
# for MiniLM on 2 cores, reports/encoders.md); a batch pads to its longest value.
CPU_BATCH = 16
# Files of a hub repository sentence-transformers does not read: other runtimes' exports.
NOT_DOWNLOADED = ["onnx/*", "openvino/*", "*.h5", "*.msgpack", "*.ot", "tf_model*", "flax_model*"]
# Values longer than this many characters are cut before hashing and encoding, as for TF-IDF.
MAX_CHARS = 5_000


def _import_sentence_transformers() -> Any:
    try:
        import sentence_transformers
    except ImportError:
        raise ConfigError(
            f"--text-model needs sentence-transformers, which is not installed: {INSTALL}"
        ) from None
    return sentence_transformers


@dataclass
class TextModel(ModelFiles):
    """A sentence encoder found on disk and fingerprinted; its network loads on first use."""

    _network: Any = None

    cpu_batch = CPU_BATCH
    libraries = ("sentence-transformers", "transformers", "tokenizers", "torch")

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


def text_values(column: pa.ChunkedArray | pa.Array) -> list[str]:
    """The values as encoded: null as "", longer ones cut to ``MAX_CHARS`` characters."""
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    column = pc.utf8_slice_codeunits(pc.fill_null(column, ""), 0, MAX_CHARS)
    return column.to_pylist()


def value_keys(values: Sequence[str]) -> list[bytes]:
    """The SHA-256 of each value's UTF-8 bytes: its key in every cache."""
    return [hashlib.sha256(v.encode("utf-8", "surrogatepass")).digest() for v in values]


def encode_texts(
    values: Sequence[str | None] | pa.Array | pa.ChunkedArray,
    model: TextModel | str,
    cache: EmbeddingCache | str | None = "auto",
    progress: Progress = NULL_PROGRESS,
    stats: Encoded | None = None,
    inference: Inference | None = None,
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
    inference : callable, optional
        Runs the model on the values no cache holds, as ``_run`` does here (the default):
        ``refine.learn.ray_data.RayInference`` runs it on Ray actors.
    """
    run = inference or _run
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
        lambda rows: run(model, [texts[i] for i in rows], progress),
        stats if stats is not None else Encoded(),
    )
    if not texts:
        return np.zeros((0, model.dim), np.float32)
    return np.stack([found[k] for k in keys]).astype(np.float32, copy=False)


def batch_order(texts: Sequence[str]) -> np.ndarray:
    """The order ``_run`` embeds ``texts`` in: longest first, so each batch pads to a similar
    length (stable, so an ordered run keeps its order)."""
    return np.argsort(-np.array([len(t) for t in texts], np.int64), kind="stable")


def _run(model: TextModel, texts: list[str], progress: Progress) -> np.ndarray:
    """The network's embeddings ``(N, D)`` of ``texts``, in ``batch_order``'s batches; rows
    come back in the order given."""
    network = model.network()
    out = np.zeros((len(texts), model.dim), np.float32)
    order = batch_order(texts)

    def embed(start: int, stop: int) -> None:
        rows = order[start:stop]
        vectors = network.encode(
            [texts[i] for i in rows],
            batch_size=len(rows),
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        out[rows] = np.asarray(vectors, np.float32)

    in_batches(len(texts), model.batch_size, model.device, embed, progress, "encoding text")
    return np.nan_to_num(out)


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
        vectors = encode_texts(
            column, self._model(), self.cache or "off", self.progress, stats, self.inference
        )
        self._keep(stats)
        return vectors

    def column_vectors(self, column: pa.ChunkedArray) -> np.ndarray:
        return self.vectors(column)

    def column_keys(self, column: pa.ChunkedArray) -> list[bytes | None]:
        return list(value_keys(text_values(column)))

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
