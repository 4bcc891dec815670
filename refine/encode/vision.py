"""Image columns through a pretrained vision model directory (``--image-model DIR``).

A local Hugging Face transformers vision model (``config.json``, weights and the
``preprocessor_config.json`` of its image processor, as ``save_pretrained`` writes them: ViT,
DINOv2, CLIP, SigLIP, ConvNeXt, ...) turns each image into one embedding, in place of the small
CNN of ``refine.encode.image``. Its own image processor prepares the pixels. The embedding is
what the model offers as the image's: CLIP's image embedding, else the pooled output, else the
first token of the last hidden state (ViT's CLS) or its mean over the spatial grid (a CNN).

A timm model directory (the hub layout: ``config.json`` naming the ``architecture``, with its
``pretrained_cfg``, and ``model.safetensors`` or ``pytorch_model.bin``) is read by timm instead
(``TimmModel``): timm's eval transform prepares the pixels and the embedding is the pooled
features before the classifier.

The machinery is ``--text-model``'s (``refine.encode.embedding``): the model is identified by
the SHA-256 of its files, recorded in run.json and refused by ``refine update`` once changed,
and embeddings are kept in the same cache, keyed by the SHA-256 of the image bytes.
``encode_images`` is the one entry point: values in, ``(N, D)`` float32 embeddings out.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from refine.encode.embedding import (
    EmbeddingBlock,
    EmbeddingCache,
    Encoded,
    Inference,
    ModelFiles,
    fingerprint,
    in_batches,
    open_cache,
    quiet_loading,
    resolve_device,
    through_cache,
)
from refine.encode.image import _open, _values, as_mode, missing_note, none_reason
from refine.encode.skip import SkipColumn
from refine.encode.timm_vision import (
    broken_torchvision,
    build_network,
    check_timm_directory,
    import_timm,
    pooled_features,
)
from refine.errors import ConfigError, InputError
from refine.progress import NULL_PROGRESS, Progress

INSTALL = "pip install 'refine[image]'"
# Images per batch on the CPU; images are all one size, so a batch pads nothing.
CPU_BATCH = 32
# Weights as save_pretrained writes them, whole or in shards (an index beside them).
WEIGHTS = (
    "model.safetensors",
    "pytorch_model.bin",
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
)
WEIGHTS_WORDS = "weights (model.safetensors or pytorch_model.bin)"
# How many row numbers a note names.
SHOWN_ROWS = 5


def _import_transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise ConfigError(
            f"--image-model with a model directory needs transformers, which is not "
            f"installed: {INSTALL}"
        ) from None
    return transformers


def _check_directory(path: Path, config: dict[str, Any]) -> None:
    """Refuse, naming what is missing, a directory that is not a transformers vision model."""
    if (path / "open_clip_config.json").is_file() and not config:
        _refuse_library(path, "an open_clip model directory")
    lacking = [n for n in ("config.json", "preprocessor_config.json") if not (path / n).is_file()]
    if not any((path / name).is_file() for name in WEIGHTS):
        lacking.append(WEIGHTS_WORDS)
    if lacking:
        raise InputError(
            f"--image-model {str(path)!r} is not a model directory refine can read: it lacks "
            f"{', '.join(lacking)}. Pass a Hugging Face transformers vision model saved with "
            "model.save_pretrained(DIR) and image_processor.save_pretrained(DIR), or a "
            "TorchScript file"
        )


def _refuse_library(path: Path, what: str) -> None:
    """Stop at an open_clip directory: refine has no loader for it."""
    raise ConfigError(
        f"--image-model {str(path)!r} is {what}: refine does not read those. Save the network "
        "with torch.jit.save(torch.jit.script(model), 'model.pt') and pass that file, or pass "
        "a timm or Hugging Face transformers model directory"
    )


def _read_config(path: Path) -> dict[str, Any]:
    """``config.json``'s object; empty when there is none."""
    if not path.is_file():
        return {}
    try:
        loaded = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"--image-model {str(path)!r} is not readable JSON ({exc})") from None
    return loaded if isinstance(loaded, dict) else {}


@dataclass
class VisionModel(ModelFiles):
    """A vision model directory found on disk and fingerprinted; it loads on first use."""

    _loaded: tuple[Any, Any, bool] | None = None  # network, processor, whether to pool

    cpu_batch = CPU_BATCH
    libraries: ClassVar[tuple[str, ...]] = ("transformers", "torch", "pillow")

    def loaded(self) -> tuple[Any, Any, bool]:
        """The network (eval mode, on ``device``), its image processor, and whether its
        pooled output holds trained weights (a checkpoint without a pooler gets a random one)."""
        if self._loaded is None:
            transformers = _import_transformers()
            try:
                # trust_remote_code stays off: a model directory's own Python is never run.
                with quiet_loading(errors_only=True):
                    config = transformers.AutoConfig.from_pretrained(
                        self.path, local_files_only=True
                    )
                    kind = _network_class(transformers, config)
                    network, info = kind.from_pretrained(
                        self.path, local_files_only=True, output_loading_info=True
                    )
                    processor = transformers.AutoImageProcessor.from_pretrained(
                        self.path, local_files_only=True, **_pil_backend()
                    )
            except Exception as exc:  # transformers raises OSError, ValueError, KeyError, ...
                broken = broken_torchvision()
                if broken:  # transformers imports an installed torchvision, and fails with it
                    raise ConfigError(
                        f"--image-model {self.name!r}: {broken}, or uninstall it"
                    ) from None
                raise InputError(
                    f"--image-model {self.name!r} is not a model transformers can load "
                    f"({type(exc).__name__}: {exc}); pass a directory saved with "
                    "save_pretrained (model and image processor)"
                ) from None
            missing = sorted(k for k in info["missing_keys"] if not k.startswith("pooler"))
            if missing:
                raise InputError(
                    f"--image-model {self.name!r}: its weights do not fit its configuration "
                    f"({len(missing)} missing, e.g. {missing[0]!r}); save the model again with "
                    "save_pretrained"
                )
            pooled = not any(k.startswith("pooler") for k in info["missing_keys"])
            self._loaded = (network.to(self.device).eval(), processor, pooled)
        return self._loaded

    def embed(self, images: list[Any]) -> Any:
        """Embeddings ``(N, D)`` (a tensor) of RGB Pillow ``images``, prepared by the model's
        image processor."""
        network, processor, pooled = self.loaded()
        pixels = processor(images=images, return_tensors="pt")["pixel_values"].to(self.device)
        return _embed(network, pixels, pooled)

    def record(self) -> dict[str, Any]:
        return {**super().record(), "format": "transformers"}


@dataclass
class TimmModel(VisionModel):
    """A timm model directory (hub layout) found on disk and fingerprinted; the network loads
    on first use."""

    config: dict[str, Any] = field(default_factory=dict)  # its config.json

    libraries = ("timm", "torchvision", "torch", "pillow")

    def loaded(self) -> tuple[Any, Any, bool]:
        """The network (eval mode, on ``device``), timm's eval transform for it, and True: the
        features before its classifier are trained weights."""
        if self._loaded is None:
            timm = import_timm(self.path, self.config["architecture"])
            network = build_network(timm, self.name, self.path, self.config)
            data = timm.data.resolve_data_config({}, model=network)
            transform = timm.data.create_transform(**data, is_training=False)
            self._loaded = (network.to(self.device).eval(), transform, True)
        return self._loaded

    def embed(self, images: list[Any]) -> Any:
        """The pooled features before the classifier ``(N, D)`` of RGB Pillow ``images``,
        each prepared by timm's eval transform (resize, centre crop, normalise)."""
        import torch

        network, transform, _ = self.loaded()
        pixels = torch.stack([transform(image) for image in images]).to(self.device)
        return pooled_features(network, pixels, self.name)

    def record(self) -> dict[str, Any]:
        return {
            **ModelFiles.record(self),
            "format": "timm",
            "architecture": self.config["architecture"],
        }


def _network_class(transformers: Any, config: Any) -> Any:
    """``AutoModel``, or the saved class where AutoModel would drop its image projection
    (``CLIPVisionModelWithProjection`` loads as ``CLIPVisionModel``)."""
    for name in getattr(config, "architectures", None) or ():
        if name.endswith("WithProjection") and hasattr(transformers, name):
            return getattr(transformers, name)
    return transformers.AutoModel


def _pil_backend() -> dict[str, Any]:
    """The image processor on Pillow and numpy: the torchvision one (transformers' default
    where installed) may resize a little differently, so embeddings would vary by machine."""
    major = int(importlib.metadata.version("transformers").split(".")[0])
    return {"backend": "pil"} if major >= 5 else {"use_fast": False}


def load_vision_model(
    path: str | Path, device: str = "auto", sha256: str | None = None
) -> VisionModel:
    """Check and fingerprint the vision model directory ``path``; the network loads when
    needed.

    Parameters
    ----------
    path : str or Path
        A directory holding a transformers vision model and its image processor, or a timm
        model in the hub layout (``config.json`` naming its ``architecture``, and weights).
    device : {"auto", "cpu", "cuda"}
    sha256 : str, optional
        The fingerprint a saved run recorded; a model whose files differ is refused.

    Raises
    ------
    ConfigError
        transformers (or, for a timm directory, timm) is not installed or does not import, or
        the directory is one refine does not read (open_clip).
    InputError
        Not a model directory (the message names what is missing), or its files changed.
    """
    path = Path(path).expanduser().resolve()
    config = _read_config(path / "config.json")
    if "architecture" in config:  # timm's hub layout: config.json names the architecture
        check_timm_directory(path, config)
        import_timm(path, config["architecture"])
    else:
        _import_transformers()
        _check_directory(path, config)
    files, digest = fingerprint("--image-model", str(path), path, sha256)
    if "architecture" in config:
        return TimmModel(str(path), path, digest, files, resolve_device(device), config=config)
    return VisionModel(str(path), path, digest, files, resolve_device(device))


def image_keys(values: Sequence[bytes]) -> list[bytes]:
    """The SHA-256 of each image's bytes: its key in every cache."""
    return [hashlib.sha256(v).digest() for v in values]


def encode_images(
    values: Sequence[bytes | None] | pa.Array | pa.ChunkedArray,
    model: VisionModel | str,
    cache: EmbeddingCache | str | None = "auto",
    progress: Progress = NULL_PROGRESS,
    stats: Encoded | None = None,
    inference: Inference | None = None,
) -> np.ndarray:
    """Embed each image with ``model``: ``(N, D)`` float32, row ``i`` for ``values[i]``, NaN
    where a value is null or not an image Pillow can decode.

    Parameters
    ----------
    values : sequence of bytes or None, or a pyarrow binary (or ``{bytes, path}``) array
        Encoded images (PNG, JPEG, GIF, BMP, WebP); a path is never opened.
    model : VisionModel or str
        A model from ``load_vision_model``, or its directory.
    cache : EmbeddingCache, str or None
        As for ``encode_texts``: ``auto``, ``off``, a directory, or an ``EmbeddingCache``.
        Keys are the SHA-256 of the image bytes; only images no cache holds are decoded and
        go through the model.
    progress : Progress
        Receives an ``encode`` bar (rows) while the model runs.
    stats : Encoded, optional
        Filled in with the rows, the rows encoded (not cached) and the seconds taken.
    inference : callable, optional
        As for ``encode_texts``: runs the model on the images no cache holds (``_run`` here).
    """
    run = inference or _run
    if isinstance(model, str):
        model = load_vision_model(model)
    if not isinstance(cache, EmbeddingCache):
        cache = open_cache(cache or "off")
    if isinstance(values, pa.Array):
        values = pa.chunked_array([values])
    data = _values(values)[0] if isinstance(values, pa.ChunkedArray) else list(values)
    wrong = next((i for i, v in enumerate(data) if not isinstance(v, bytes | None)), None)
    if wrong is not None:
        raise InputError(
            f"encode_images takes encoded image bytes (or None); value {wrong} is a "
            f"{type(data[wrong]).__name__}: {data[wrong]!r:.40}"
        )
    rows = [i for i, v in enumerate(data) if v is not None]
    keys = image_keys([v for v in data if v is not None])
    found = through_cache(
        keys,
        model.sha256,
        cache,
        lambda first: run(model, [data[rows[i]] for i in first], progress),
        stats if stats is not None else Encoded(),
    )
    dim = len(next(iter(found.values()))) if found else _run(model, [], progress).shape[1]
    out = np.full((len(data), dim), np.nan, np.float32)
    if rows:
        out[rows] = np.stack([found[k] for k in keys])
    return out


def _run(model: VisionModel, values: list[bytes | None], progress: Progress) -> np.ndarray:
    """The network's embeddings ``(N, D)`` of ``values``, in batches, NaN rows where a value
    is not a usable image."""
    model.loaded()
    pieces: list[tuple[int, list[int], np.ndarray]] = []  # start, usable rows, their vectors

    def embed(start: int, stop: int) -> None:
        images = [_open(v) if v is not None else None for v in values[start:stop]]
        usable = [i for i, image in enumerate(images) if image is not None]
        if usable:
            rgb = [as_mode(images[i], "RGB") for i in usable]
            pieces.append((start, usable, _embed_images(model, rgb)))

    in_batches(len(values), model.batch_size, model.device, embed, progress, "encoding images")
    width = pieces[0][2].shape[1] if pieces else _width(model)
    out = np.full((len(values), width), np.nan, np.float32)
    for start, usable, vectors in pieces:
        out[start + np.array(usable)] = np.nan_to_num(vectors)
    return out


def _embed_images(model: VisionModel, images: list[Any]) -> np.ndarray:
    """Embeddings ``(N, D)`` of RGB Pillow ``images``, prepared as the model's library does."""
    return model.embed(images).float().cpu().numpy()


def _width(model: VisionModel) -> int:
    """The embedding's width, from one blank image (when no value is a usable image)."""
    import torch
    from PIL import Image

    with torch.inference_mode():
        return _embed_images(model, [Image.new("RGB", (32, 32))]).shape[1]


def _embed(network: Any, pixels: Any, pooled: bool) -> Any:
    """One vector per image ``(N, D)``: CLIP-like image embeddings, else the pooled output
    (when trained), else the CLS token of a transformer or the spatial mean of a CNN."""
    if hasattr(network, "get_image_features"):  # CLIPModel, SiglipModel: image and text
        out = network.get_image_features(pixel_values=pixels)
        return out if hasattr(out, "ndim") else out.pooler_output
    out = network(pixel_values=pixels)
    if getattr(out, "image_embeds", None) is not None:
        return out.image_embeds
    if pooled and getattr(out, "pooler_output", None) is not None:
        return out.pooler_output.flatten(1)
    hidden = out.last_hidden_state
    return hidden[:, 0] if hidden.ndim == 3 else hidden.flatten(2).mean(2)


@dataclass
class PretrainedImageEncoder(EmbeddingBlock):
    """One image column as ``model``'s embeddings (an ``EmbeddingBlock``), plus a missing
    indicator when a fitted value is not a usable image."""

    indicator: bool = False
    undecodable: int = 0
    nulls: int = 0
    path_only: int = 0
    missing_rows: list[int] = field(default_factory=list)
    model: VisionModel | None = None

    kind = "image-model"
    column_kind = "image"
    units = "images"

    @property
    def width(self) -> int:
        return self.dim + int(self.indicator)

    def model_label(self) -> str:
        return self.model_path

    def model_device(self) -> str:
        return self._model().device

    def _model(self) -> VisionModel:
        if self.model is None:  # loaded back from a run: the same files, or refused
            self.model = load_vision_model(self.model_path, sha256=self.model_sha256)
        return self.model

    def vectors(self, values: list[bytes | None]) -> np.ndarray:
        """The raw embeddings ``(N, dim)`` of a column's ``values``, NaN where missing,
        through the cache."""
        stats = Encoded()
        vectors = encode_images(
            values, self._model(), self.cache or "off", self.progress, stats, self.inference
        )
        self._keep(stats)
        return vectors

    def column_vectors(self, column: pa.ChunkedArray) -> np.ndarray:
        return self.vectors(_values(column)[0])

    def column_keys(self, column: pa.ChunkedArray) -> list[bytes | None]:
        values = _values(column)[0]
        keys = iter(image_keys([v for v in values if v is not None]))
        return [None if v is None else next(keys) for v in values]

    def fit(self, column: pa.ChunkedArray) -> PretrainedImageEncoder:
        model = self._model()
        self.model_path, self.model_sha256 = str(model.path), model.sha256
        self.model_record = model.record()
        values, path_only = _values(column)
        vectors = self.vectors(values)
        present = ~np.isnan(vectors).any(1) if vectors.shape[1] else np.zeros(len(values), bool)
        nulls = sum(v is None for v in values)
        self.path_only = int(path_only.sum())
        self.nulls = nulls - self.path_only
        self.undecodable = len(values) - nulls - int(present.sum())
        self.missing_rows = np.flatnonzero(~present)[:SHOWN_ROWS].tolist()
        if not present.any():
            raise SkipColumn(none_reason(len(values), nulls, self.path_only))
        self.indicator = not present.all()
        self._centre(vectors[present])
        return self

    def transform(self, column: pa.ChunkedArray, out: np.ndarray) -> None:
        if not len(column):  # no rows: the model need not load to learn its width
            return
        vectors = self.vectors(_values(column)[0])
        missing = np.isnan(vectors).any(1)
        block = self._scaled(vectors)
        block[missing] = 0.0  # the block's mean
        out[:, : self.dim] = block
        if self.indicator:
            out[:, self.dim] = missing

    def describe(self) -> dict[str, Any]:
        return {
            "column": self.name,
            "kind": self.kind,
            "dim": self.dim,
            "indicator": self.indicator,
            "undecodable_values": self.undecodable,
            "null_values": self.nulls,
            "path_only_values": self.path_only,
            "image_model": self.model_record,
            **self._described(),
        }

    def note(self) -> str:
        missing = missing_note(
            self.name, self.undecodable, self.nulls, self.path_only, self.missing_rows
        )
        return self.encoded_note() + (f"\n{missing}" if missing else "")

    def state(self) -> dict[str, Any]:
        """Plain values and tensors: loads with ``torch.load(weights_only=True)``."""
        return {**self.describe(), "missing_rows": list(self.missing_rows), **self._state()}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> PretrainedImageEncoder:
        """The encoder of a saved run. The model's files are checked against the run's now, as
        a TorchScript ``--image-model``'s are; the network loads when first needed."""
        encoder = cls(
            state["column"],
            model_record=dict(state["image_model"]),
            indicator=bool(state["indicator"]),
            undecodable=int(state["undecodable_values"]),
            nulls=int(state["null_values"]),
            path_only=int(state["path_only_values"]),
            missing_rows=[int(r) for r in state["missing_rows"]],
            **cls._from_state(state),
        )
        encoder._model()
        return encoder
