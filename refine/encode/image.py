"""Image columns: encoded image bytes (PNG, JPEG, GIF, BMP, WebP) decoded with Pillow into a
small fixed-size pixel block, which the model reads as an image (a small CNN, see
``refine.learn.model``); or, with ``--image-model``, a user's TorchScript network turns the pixels
into a plain numeric block of features.

A column is an image column when it is ``binary``/``large_binary`` and most of its values start
with an image format's magic number, or a struct with a binary ``bytes`` field (Hugging Face's
``Image`` feature: ``{bytes, path}``), or when ``--image`` names it. Only the embedded bytes are
read: a ``path`` in the data never opens a file, since paths in a dataset are not the user's to
trust. A value that is null, not an image, truncated, or too large counts as missing (the
block's mean, plus a missing indicator), and the run's notes say how many and which rows.
"""

from __future__ import annotations

import hashlib
import io
import struct
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from refine.encode.skip import SkipColumn
from refine.errors import InputError

# Images are resized to a square of this side at most (MNIST's 28); smaller images keep their
# own size (the median of the longer side), at least MIN_SIDE, which keeps the CNN cheap.
MAX_SIDE = 28
MIN_SIDE = 8
# Larger images are refused before their pixels are decoded (a decompression bomb is a small
# file that decodes to gigabytes); 40 megapixels is more than any photo refine should see.
MAX_PIXELS = 40_000_000
# The mean and scale of the pixels, and the mode, are fitted on at most this many rows.
FIT_ROWS = 20_000
# Rows are decoded in chunks, so a million images never hold their PIL objects at once (each
# value is decoded once to fit, once more to transform: decoding small images is cheap).
CHUNK = 4_096
# How many row numbers a note names.
SHOWN_ROWS = 5
# --image-model: the side of the square its input is resized to, unless the user gives one.
DEFAULT_MODEL_SIDE = 224

_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM")


def looks_like_image(value: bytes) -> bool:
    """``value`` starts with the magic number of PNG, JPEG, GIF, BMP or WebP."""
    return value.startswith(_MAGIC) or (value[:4] == b"RIFF" and value[8:12] == b"WEBP")


def is_binary_type(kind: pa.DataType) -> bool:
    return pa.types.is_binary(kind) or pa.types.is_large_binary(kind)


def is_image_struct(kind: pa.DataType) -> bool:
    """A struct with a binary ``bytes`` field, like Hugging Face's ``Image`` feature."""
    if not pa.types.is_struct(kind):
        return False
    index = kind.get_field_index("bytes")
    return index >= 0 and is_binary_type(kind.field(index).type)


def is_image_column(column: pa.ChunkedArray) -> bool:
    """An image struct, or a binary column most of whose first 1,000 non-null values are
    images by their magic number (a few corrupt values do not hide the column)."""
    if is_image_struct(column.type):
        return True
    if not is_binary_type(column.type):
        return False
    values = column.drop_null().slice(0, 1000).to_pylist()
    return bool(values) and sum(looks_like_image(v) for v in values) >= 0.5 * len(values)


@dataclass
class _Scan:
    """Which rows hold a usable image (``present`` ``(N,)``), and why the others do not."""

    present: np.ndarray
    undecodable: int  # values that are not images Pillow can decode
    nulls: int
    path_only: int
    missing_rows: list[int]  # the first SHOWN_ROWS row numbers with no usable image


def _values(column: pa.ChunkedArray) -> tuple[list[bytes | None], np.ndarray]:
    """The bytes of each row (None where missing), and a mask of rows that have only a path."""
    if is_image_struct(column.type):
        array = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
        present = pc.is_valid(array).to_numpy(zero_copy_only=False)  # a null struct: no fields
        data = pc.struct_field(array, "bytes")
        has_bytes = present & pc.is_valid(data).to_numpy(zero_copy_only=False)
        values = [v if ok else None for v, ok in zip(data.to_pylist(), has_bytes, strict=True)]
        path_only = np.zeros(len(values), bool)
        if array.type.get_field_index("path") >= 0:
            path = pc.is_valid(pc.struct_field(array, "path")).to_numpy(zero_copy_only=False)
            path_only = present & ~has_bytes & path
        return values, path_only
    return column.to_pylist(), np.zeros(len(column), bool)


def _open(data: bytes) -> Any:
    """The decoded image, or None when ``data`` is not one Pillow can read safely."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))  # reads the header only
            width, height = image.size
            if width < 1 or height < 1 or width * height > MAX_PIXELS:
                return None
            image.load()
            return image
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError):
        return None
    except (SyntaxError, EOFError, IndexError, TypeError, struct.error):
        # Pillow's format plug-ins raise these on some malformed headers.
        return None


def _images(values: list[bytes | None]) -> list[Any]:
    """Each value decoded: a PIL image, or None where it is missing or not a usable image."""
    return [_open(value) if value is not None else None for value in values]


def _chunks(items: list[Any]) -> Iterator[list[Any]]:
    """``items`` in runs of ``CHUNK``: decoded images are held a chunk at a time."""
    for start in range(0, len(items), CHUNK):
        yield items[start : start + CHUNK]


def _scan(values: list[bytes | None], path_only: np.ndarray) -> _Scan:
    """Decode every value once, a chunk at a time, keeping only whether it is usable."""
    present = np.zeros(len(values), bool)
    start = 0
    for chunk in _chunks(values):
        present[start : start + len(chunk)] = [image is not None for image in _images(chunk)]
        start += len(chunk)
    nulls = sum(v is None for v in values)
    paths = int(path_only.sum())
    undecodable = len(values) - nulls - int(present.sum())
    missing_rows = np.flatnonzero(~present)[:SHOWN_ROWS].tolist()
    return _Scan(present, undecodable, nulls - paths, paths, missing_rows)


def _is_grey(image: Any) -> bool:
    if image.mode in ("1", "L", "LA", "I", "I;16", "F"):
        return True
    rgb = np.asarray(image.convert("RGB"))
    return bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())


def _pixels(images: list[Any], channels: int, side: int) -> tuple[np.ndarray, np.ndarray]:
    """``(N, channels * side * side)`` float32 in [0, 1], channel-major (CHW), zeros where an
    image is missing, and the mask of present rows ``(N,)``."""
    from PIL import Image

    mode = "L" if channels == 1 else "RGB"
    out = np.zeros((len(images), channels * side * side), np.float32)
    present = np.zeros(len(images), bool)
    for i, image in enumerate(images):
        if image is None:
            continue
        small = as_mode(image, mode).resize((side, side), Image.Resampling.BILINEAR)
        array = np.asarray(small, np.float32) / 255.0
        out[i] = (array[None] if channels == 1 else array.transpose(2, 0, 1)).reshape(-1)
        present[i] = True
    return out, present


def as_mode(image: Any, mode: str) -> Any:
    """``image`` in Pillow ``mode`` (``L`` or ``RGB``): 16-bit and float grey scaled into 8
    bits, transparent pixels laid over white."""
    from PIL import Image

    if image.mode in ("I", "I;16", "F"):
        values = np.asarray(image, np.float64)
        top = values.max() or 1.0
        image = Image.fromarray(np.clip(values / top * 255, 0, 255).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "P", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert(mode)


@dataclass
class ImageEncoder:
    """One image column: each image decoded, converted to grey or RGB (grey when every fitted
    image is), resized to ``side`` x ``side``, scaled to [0, 1] and standardised with one mean
    and scale for the whole block. The block is ``channels * side * side`` wide, channel-major,
    plus a missing indicator when a fitted value is not a usable image.

    With ``model`` (a TorchScript network, ``--image-model``), the pixels go through it instead
    and the block is its ``features`` outputs, standardised each.
    """

    name: str
    channels: int = 0
    side: int = 0
    mean: float = 0.0
    std: float = 1.0
    indicator: bool = False
    seed: int = 0
    undecodable: int = 0  # fitted values that are not images
    nulls: int = 0
    path_only: int = 0
    missing_rows: list[int] = field(default_factory=list)  # the first few, for the note
    model_path: str | None = None
    model_sha256: str | None = None
    features: int = 0  # outputs of the image model (0: pixels)
    feature_mean: np.ndarray | None = None
    feature_std: np.ndarray | None = None
    model: Any = None

    kind = "image"

    @property
    def pixel_width(self) -> int:
        return self.channels * self.side * self.side

    @property
    def width(self) -> int:
        return (self.features or self.pixel_width) + int(self.indicator)

    @property
    def block(self) -> tuple[int, int, int] | None:
        """``(channels, height, width)`` of the pixel block the network reads as an image, or
        None when an image model turned the pixels into plain features."""
        return None if self.model is not None else (self.channels, self.side, self.side)

    def fit(self, column: pa.ChunkedArray) -> ImageEncoder:
        n = len(column)
        values, path_only = _values(column)
        scan = _scan(values, path_only)
        self.undecodable, self.nulls = scan.undecodable, scan.nulls
        self.path_only, self.missing_rows = scan.path_only, scan.missing_rows
        present = np.flatnonzero(scan.present).tolist()
        if not present:
            raise SkipColumn(none_reason(n, self.nulls, self.path_only))
        fit_rows = present
        if len(present) > FIT_ROWS:
            rng = np.random.default_rng(self.seed)
            fit_rows = sorted(rng.choice(present, FIT_ROWS, replace=False).tolist())
        sample = [values[i] for i in fit_rows]
        if self.model is not None:  # networks made for photos take RGB
            self.channels = 3
            self.side = self.side or DEFAULT_MODEL_SIDE
        else:
            grey, longer = True, []
            for chunk in _chunks(sample):
                images = _images(chunk)
                grey = grey and all(_is_grey(image) for image in images)
                longer += [max(image.size) for image in images]
            self.channels = 1 if grey else 3
            self.side = self.side or int(np.clip(np.median(longer), MIN_SIDE, MAX_SIDE))
        self.indicator = len(present) < n
        blocks = []
        for chunk in _chunks(sample):
            pixels, _ = _pixels(_images(chunk), self.channels, self.side)
            blocks.append(pixels if self.model is None else self._run_model(pixels))
        if self.model is None:
            pixels = np.concatenate(blocks)
            self.mean = float(pixels.mean())
            self.std = float(pixels.std()) or 1.0
        else:
            outputs = np.concatenate(blocks)
            self.features = outputs.shape[1]
            self.feature_mean = outputs.mean(0).astype(np.float32)
            std = outputs.std(0).astype(np.float32)
            self.feature_std = np.where(std > 0, std, 1.0).astype(np.float32)
        return self

    def transform(self, column: pa.ChunkedArray, out: np.ndarray) -> None:
        values, _ = _values(column)
        block = self.features or self.pixel_width
        valid = np.zeros(len(column), bool)
        start = 0
        for chunk in _chunks(values):
            pixels, present = _pixels(_images(chunk), self.channels, self.side)
            rows = slice(start, start + len(pixels))
            start += len(pixels)
            valid[rows] = present
            if self.model is None:
                block_values = (pixels - self.mean) / self.std
            else:
                block_values = (self._run_model(pixels) - self.feature_mean) / self.feature_std
            block_values[~present] = 0.0
            out[rows, :block] = block_values
        if self.indicator:
            out[:, block] = ~valid

    def _run_model(self, pixels: np.ndarray, batch: int = 256) -> np.ndarray:
        import torch

        shape = (-1, self.channels, self.side, self.side)
        outputs = []
        with torch.no_grad():
            for start in range(0, len(pixels), batch):
                x = torch.from_numpy(pixels[start : start + batch]).reshape(shape)
                y = self.model(x)
                if not isinstance(y, torch.Tensor) or y.ndim < 2 or y.shape[0] != x.shape[0]:
                    raise InputError(
                        f"--image-model {self.model_path!r} returned {_shape(y)} for images of "
                        f"shape {tuple(x.shape)}; it must return one row of features per image"
                    )
                outputs.append(y.reshape(len(x), -1).float().numpy())
        if not outputs:
            return np.zeros((0, self.features), np.float32)
        return np.nan_to_num(np.concatenate(outputs)).astype(np.float32)

    def describe(self) -> dict[str, Any]:
        return {
            "column": self.name,
            "kind": self.kind,
            "channels": self.channels,
            "side": self.side,
            "indicator": self.indicator,
            "undecodable_values": self.undecodable,
            "null_values": self.nulls,
            "path_only_values": self.path_only,
            "image_model": self.model_path,
            "image_model_features": self.features,
        }

    def note(self) -> str | None:
        return missing_note(
            self.name, self.undecodable, self.nulls, self.path_only, self.missing_rows
        )

    def state(self) -> dict[str, Any]:
        """Plain values and tensors: loads with ``torch.load(weights_only=True)``."""
        import torch

        state = {
            **self.describe(),
            "mean": self.mean,
            "std": self.std,
            "seed": self.seed,
            "missing_rows": list(self.missing_rows),
            "image_model_sha256": self.model_sha256,
        }
        if self.model is not None:
            state["feature_mean"] = torch.from_numpy(self.feature_mean)
            state["feature_std"] = torch.from_numpy(self.feature_std)
        return state

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> ImageEncoder:
        encoder = cls(
            state["column"],
            channels=int(state["channels"]),
            side=int(state["side"]),
            mean=float(state["mean"]),
            std=float(state["std"]),
            indicator=bool(state["indicator"]),
            seed=int(state["seed"]),
            undecodable=int(state["undecodable_values"]),
            nulls=int(state["null_values"]),
            path_only=int(state["path_only_values"]),
            missing_rows=[int(r) for r in state["missing_rows"]],
        )
        if state.get("image_model"):
            # The network itself is not in model.pt (weights_only files hold no code): it is
            # loaded again from its path, and must be the same file the run used.
            encoder.model_path = state["image_model"]
            encoder.model, encoder.model_sha256 = load_image_model(
                state["image_model"], state["image_model_sha256"]
            )
            encoder.features = int(state["image_model_features"])
            encoder.feature_mean = state["feature_mean"].numpy()
            encoder.feature_std = state["feature_std"].numpy()
        return encoder


def none_reason(rows: int, nulls: int, path_only: int) -> str:
    """Why a column of ``rows`` values holds no usable image."""
    if path_only:
        return (
            "no value holds image bytes, only paths; refine reads only the embedded bytes, "
            "never a file a path names"
        )
    if nulls == rows:
        return "all values are null"
    return "no value is an image Pillow can decode (PNG, JPEG, GIF, BMP, WebP, ...)"


def missing_note(
    name: str, undecodable: int, nulls: int, path_only: int, missing_rows: list[int]
) -> str | None:
    """What the user hears once about the values of image column ``name`` that count as
    missing, naming the first few ``missing_rows``; None when there are none."""
    missing = undecodable + nulls + path_only
    if not missing:
        return None
    parts = []
    if undecodable:
        parts.append(f"{undecodable} undecodable")
    if nulls:
        parts.append(f"{nulls} null")
    if path_only:
        parts.append(
            f"{path_only} with a path but no bytes (refine reads only the embedded "
            "bytes, never a file a path names)"
        )
    rows = ", ".join(str(r) for r in missing_rows) + (
        ", ..." if missing > len(missing_rows) else ""
    )
    return (
        f"image column {name!r}: {missing} "
        f"{'value is not a usable image' if missing == 1 else 'values are not usable images'}"
        f" and count as missing (rows {rows}): {'; '.join(parts)}"
    )


def _shape(value: Any) -> str:
    shape = getattr(value, "shape", None)
    return f"shape {tuple(shape)}" if shape is not None else type(value).__name__


def load_image_model(path: str | Path, sha256: str | None = None) -> tuple[Any, str]:
    """A TorchScript network from ``path`` (``torch.jit.save``), on the CPU, in eval mode,
    and the file's SHA-256.

    TorchScript is code: the user who names the file trusts it, as they would trust a script
    they run. ``torch.jit.load`` runs TorchScript only, never an arbitrary Python pickle.
    ``sha256``, when given, must match the file (a saved run reloads the same network).
    """
    import torch

    path = Path(path)
    try:
        content = path.read_bytes()
    except OSError as exc:
        raise InputError(
            f"--image-model {str(path)!r} cannot be read: {exc.strerror or exc}"
        ) from None
    digest = hashlib.sha256(content).hexdigest()
    if sha256 is not None and digest != sha256:
        raise InputError(
            f"--image-model {str(path)!r} has changed since the run used it (SHA-256 {digest[:12]}, "
            f"the run's {sha256[:12]}); restore that file or start a new run"
        )
    try:
        with warnings.catch_warnings():  # torch 2.9+ steers users to torch.export
            warnings.simplefilter("ignore", DeprecationWarning)
            model = torch.jit.load(io.BytesIO(content), map_location="cpu")
    except Exception as exc:  # torch raises RuntimeError, ValueError or zip errors
        raise InputError(
            f"--image-model {str(path)!r} is not a TorchScript file ({type(exc).__name__}); "
            "save the network with torch.jit.save(torch.jit.script(model), path)"
        ) from None
    model.eval()
    return model, digest
