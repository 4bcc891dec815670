"""Encode feature columns into one float32 matrix of shape ``(N, D)``.

Each usable column gets an encoder that is fitted on the whole table (no labels are seen, so
fitting on every row leaks nothing into cross-fitting) and can transform new tables later:

* numeric columns: standardised; missing, NaN and infinite values imputed with the mean,
  plus a 0/1 indicator column when any are missing;
* low-cardinality string, boolean and dictionary columns: one-hot, with a bucket for null;
* ``list<float>`` and ``fixed_size_list<float>`` embedding columns: one feature per dimension,
  standardised, with an indicator for null rows;
* free-text string columns (many distinct values, most with spaces, or named by ``--text``):
  TF-IDF n-grams reduced to a dense block (``refine.encode.text``), or a pretrained sentence
  encoder's embeddings with ``--text-model`` (``refine.encode.pretrained``).

Columns that cannot be encoded are skipped with a reason, which the CLI prints.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from refine.encode.columns import EmbeddingEncoder, NumericEncoder, OneHotEncoder
from refine.encode.embedding import Inference, embeddings_table, open_cache
from refine.encode.image import ImageEncoder, is_binary_type, is_image_column, is_image_struct
from refine.encode.pretrained import PretrainedTextEncoder, load_text_model
from refine.encode.skip import SkipColumn
from refine.encode.text import TextEncoder, _NoVocabulary, looks_like_text
from refine.encode.vision import PretrainedImageEncoder, VisionModel, load_vision_model
from refine.errors import ConfigError, InputError
from refine.io.read import invalid_utf8_row, plain_values
from refine.progress import NULL_PROGRESS, Progress

Encoder = (
    NumericEncoder
    | OneHotEncoder
    | EmbeddingEncoder
    | TextEncoder
    | ImageEncoder
    | PretrainedTextEncoder
    | PretrainedImageEncoder
)
# Makes a column's pretrained text encoder (``--text-model``), by the column's name.
Pretrained = Callable[[str], PretrainedTextEncoder]
# Makes a column's pretrained image encoder (``--image-model DIR``), by the column's name.
PretrainedImage = Callable[[str], PretrainedImageEncoder]


@dataclass
class FeatureEncoder:
    """The fitted encoders of a table's feature columns, in column order."""

    encoders: list[Encoder]
    skipped: dict[str, str]

    @property
    def width(self) -> int:
        return sum(e.width for e in self.encoders)

    @property
    def columns(self) -> list[str]:
        return [e.name for e in self.encoders]

    @property
    def image_blocks(self) -> tuple[tuple[int, int, int, int], ...]:
        """``(start, channels, height, width)`` of each block of pixels in the encoded matrix,
        for the network to read as an image (``MLPClassifier(image_blocks=...)``)."""
        blocks, start = [], 0
        for e in self.encoders:
            if isinstance(e, ImageEncoder) and e.block is not None:
                blocks.append((start, *e.block))
            start += e.width
        return tuple(blocks)

    def transform(self, table: pa.Table) -> np.ndarray:
        """Encode ``table`` into a float32 matrix of shape ``(N, width)``."""
        out = np.zeros((table.num_rows, self.width), dtype=np.float32)
        start = 0
        for encoder in self.encoders:
            encoder.transform(table.column(encoder.name), out[:, start : start + encoder.width])
            start += encoder.width
        return out

    @property
    def pretrained(self) -> list[PretrainedTextEncoder]:
        return [e for e in self.encoders if isinstance(e, PretrainedTextEncoder)]

    @property
    def embedded(self) -> list[PretrainedTextEncoder | PretrainedImageEncoder]:
        """The encoders whose blocks are a pretrained model's embeddings, text or image."""
        return [
            e
            for e in self.encoders
            if isinstance(e, PretrainedTextEncoder | PretrainedImageEncoder)
        ]

    def use_cache(self, cache_setting: str, progress: Progress = NULL_PROGRESS) -> None:
        """Give the pretrained text and image encoders of a loaded run the cache
        ``--embedding-cache`` names, and ``progress`` for their bars."""
        cache = open_cache(cache_setting)
        for encoder in self.embedded:
            encoder.cache, encoder.progress = cache, progress

    def embeddings(self, table: pa.Table) -> pa.Table | None:
        """``embeddings.parquet`` for ``table``'s rows, or None without a ``--text-model`` or
        an ``--image-model`` directory."""
        embedded = self.embedded
        return embeddings_table(embedded, table) if embedded else None

    @property
    def notes(self) -> list[str]:
        """What the user should hear once about how columns were encoded (truncated text)."""
        return [n for e in self.encoders if (n := getattr(e, "note", lambda: None)())]

    def describe(self) -> dict[str, Any]:
        return {
            "width": self.width,
            "columns": [e.describe() for e in self.encoders],
            "skipped": self.skipped,
        }

    def state(self) -> dict[str, Any]:
        """Every fitted parameter, as plain Python values (JSON, ``torch.load(weights_only=True)``)."""
        return {
            "columns": [getattr(e, "state", e.describe)() for e in self.encoders],
            "skipped": self.skipped,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> FeatureEncoder:
        """The encoder ``state()`` saved: it encodes new rows exactly as the run's rows were."""
        encoders: list[Encoder] = []
        for c in state["columns"]:
            if c["kind"] == NumericEncoder.kind:
                encoders.append(NumericEncoder(c["column"], c["mean"], c["std"], c["indicator"]))
            elif c["kind"] == OneHotEncoder.kind:
                encoders.append(OneHotEncoder(c["column"], list(c["categories"]), c["null_bucket"]))
            elif c["kind"] == TextEncoder.kind:
                encoders.append(TextEncoder.from_state(c))
            elif c["kind"] == ImageEncoder.kind:
                encoders.append(ImageEncoder.from_state(c))
            elif c["kind"] == PretrainedTextEncoder.kind:
                encoders.append(PretrainedTextEncoder.from_state(c))
            elif c["kind"] == PretrainedImageEncoder.kind:
                encoders.append(PretrainedImageEncoder.from_state(c))
            elif c["kind"] == EmbeddingEncoder.kind:
                encoders.append(
                    EmbeddingEncoder(
                        c["column"],
                        c["dim"],
                        np.asarray(c["mean"], np.float32),
                        np.asarray(c["std"], np.float32),
                        c["indicator"],
                    )
                )
            else:
                raise ValueError(f"unknown encoder kind {c['kind']!r}")
        return cls(encoders=encoders, skipped=dict(state["skipped"]))


def fit_features(
    table: pa.Table,
    label: str,
    features: tuple[str, ...] | None = None,
    ignore: tuple[str, ...] = (),
    max_categories: int = 64,
    text: tuple[str, ...] = (),
    seed: int = 0,
    image: tuple[str, ...] = (),
    image_model: str | None = None,
    image_size: int = 0,
    labels: np.ndarray | None = None,
    text_model: str | None = None,
    embedding_cache: str = "auto",
    device: str = "auto",
    progress: Progress = NULL_PROGRESS,
    inference: Inference | None = None,
) -> FeatureEncoder:
    """Choose and fit an encoder for each feature column.

    With ``features`` given, each named column must be usable, or an ``InputError`` says why.
    Otherwise every column but the label and ``ignore`` is tried, and unusable ones are skipped.
    Columns in ``text`` are encoded as free text (they must be string columns); other string
    columns are text when they have more than ``max_categories`` distinct values, most of them
    with spaces. ``seed`` fixes the text projection. Columns in ``image`` are read as encoded
    images (binary, or a struct with a binary ``bytes`` field); other binary columns are when
    their values are PNG, JPEG, GIF, BMP or WebP bytes (see ``refine.encode.image``). Images are
    resized to ``image_size`` pixels square (0: their own size, at most 28), and go through the
    TorchScript network at ``image_model`` when given; where ``image_model`` is a vision model
    directory, each image column is its embeddings instead, through the cache
    ``embedding_cache`` names (``refine.encode.vision``). A text column's block is chosen by the
    labels: class indices ``labels`` ``(N,)`` (-1 = none) where given, else the label column.
    With ``text_model`` (``--text-model``), every text column is that sentence encoder's
    embeddings instead, on ``device``, through the cache ``embedding_cache`` names
    (``refine.encode.pretrained``); ``progress`` shows the encoding. ``inference``, where
    given, runs the pretrained models instead of this process (``--engine ray``'s actors).
    """
    check_named_columns(table, features, ignore)
    check_text_columns(table, label, text, ignore)
    check_image_columns(table, label, image, ignore)
    found = _image_model(image_model, image_size, device)
    model = (
        _pretrained_image(found, embedding_cache, progress, inference)
        if isinstance(found, VisionModel)
        else found
    )
    pretrained = _pretrained(text_model, embedding_cache, device, progress, inference)
    explicit = features is not None
    candidates = _candidates(table, label, features, ignore, text, image)
    if labels is None:
        labels = _label_codes(table, label)
    encoders, skipped = _fit_candidates(
        table,
        candidates,
        explicit=explicit,
        max_categories=max_categories,
        text=text,
        seed=seed,
        image=image,
        model=model,
        image_model=image_model,
        image_size=image_size,
        labels=labels,
        pretrained=pretrained,
    )
    if not encoders:
        detail = (
            "; ".join(f"{k}: {v}" for k, v in skipped.items()) or "no columns besides the label"
        )
        raise InputError(
            f"no usable feature column ({detail}). refine needs numeric, categorical, free-text, "
            "image or list<float> embedding columns besides the label"
        )
    if pretrained is not None and not any(isinstance(e, PretrainedTextEncoder) for e in encoders):
        progress.note(
            f"--text-model {text_model!r} is unused: no column was read as free text; name "
            "text columns with --text"
        )
    return FeatureEncoder(encoders=encoders, skipped=skipped)


def _image_model(
    image_model: str | None, image_size: int, device: str
) -> tuple[Any, str] | VisionModel | None:
    """The TorchScript network at ``image_model`` and its sha256, the vision model directory
    there, or None when not given."""
    if image_model is None:
        return None
    if not Path(image_model).expanduser().is_dir():
        from refine.encode.image import load_image_model

        return load_image_model(image_model)
    if image_size:
        raise ConfigError(
            f"--image-size {image_size} does not apply to a model directory: its image "
            "processor (preprocessor_config.json, or a timm config's pretrained_cfg) sizes the "
            "images; drop --image-size"
        )
    return load_vision_model(image_model, device)


def _pretrained_image(
    model: VisionModel, cache_setting: str, progress: Progress, inference: Inference | None
) -> PretrainedImage:
    """What makes each image column's encoder with the vision ``model``."""
    cache = open_cache(cache_setting)
    return lambda name: PretrainedImageEncoder(
        name, model=model, cache=cache, progress=progress, inference=inference
    )


def _pretrained(
    text_model: str | None,
    cache_setting: str,
    device: str,
    progress: Progress,
    inference: Inference | None,
) -> Pretrained | None:
    """What makes each text column's encoder with ``text_model``, or None when not given."""
    if text_model is None:
        return None
    model, cache = load_text_model(text_model, device), open_cache(cache_setting)
    return lambda name: PretrainedTextEncoder(
        name, model=model, cache=cache, progress=progress, inference=inference
    )


def _candidates(
    table: pa.Table,
    label: str,
    features: tuple[str, ...] | None,
    ignore: tuple[str, ...],
    text: tuple[str, ...],
    image: tuple[str, ...],
) -> list[str]:
    """The columns to try, in order: ``features`` (else all but the label and ``ignore``),
    then the ``text`` and ``image`` columns not among them."""
    names = table.column_names
    candidates = (
        list(features)
        if features is not None
        else [n for n in names if n != label and n not in ignore]
    )
    candidates += [n for n in (*text, *image) if n not in candidates]
    return candidates


def _fit_candidates(
    table: pa.Table,
    candidates: list[str],
    *,
    explicit: bool,
    max_categories: int,
    text: tuple[str, ...],
    seed: int,
    image: tuple[str, ...],
    model: tuple[Any, str] | PretrainedImage | None,
    image_model: str | None,
    image_size: int,
    labels: np.ndarray | None,
    pretrained: Pretrained | None = None,
) -> tuple[list[Encoder], dict[str, str]]:
    """An encoder fitted on each usable candidate, and why each other one was skipped (an
    ``InputError`` instead where the columns are ``explicit``)."""
    names = table.column_names
    duplicated = sorted({n for n in names if names.count(n) > 1})
    encoders: list[Encoder] = []
    skipped: dict[str, str] = {}
    for name in candidates:
        if name in duplicated:
            reason = f"{names.count(name)} columns share this name"
        else:
            try:
                column = table.column(name)
                if name in image or is_image_column(column):
                    encoders.append(_fit_image(name, column, seed, model, image_model, image_size))
                else:
                    encoders.append(
                        _fit_column(
                            name, column, max_categories, name in text, seed, labels, pretrained
                        )
                    )
                continue
            except SkipColumn as why:
                reason = str(why)
        if explicit:
            raise InputError(f"--features column {name!r} cannot be used: {reason}")
        skipped[name] = reason
    return encoders, skipped


def check_named_columns(
    table: pa.Table,
    features: tuple[str, ...] | None,
    ignore: tuple[str, ...],
    option_name: str = "--features",
) -> None:
    """Every column named by ``--features`` (or ``option_name``) or ``--ignore`` must exist."""
    names = table.column_names
    for option, chosen in ((option_name, features or ()), ("--ignore", ignore)):
        missing = [c for c in chosen if c not in names]
        if missing:
            raise InputError(
                f"{option} names column {missing[0]!r}, which the input does not have; "
                f"its columns are: {', '.join(repr(n) for n in names[:30])}"
            )


def check_text_columns(
    table: pa.Table, label: str, text: tuple[str, ...], ignore: tuple[str, ...]
) -> None:
    """Every ``--text`` column must exist, hold strings, and be neither the label nor ignored."""

    def strings(kind: pa.DataType) -> bool:
        value = kind.value_type if pa.types.is_dictionary(kind) else kind
        return pa.types.is_string(value) or pa.types.is_large_string(value)

    _check_chosen(
        table,
        "--text",
        text,
        label,
        ignore,
        strings,
        "not strings; only string columns can be read as text",
    )


def check_image_columns(
    table: pa.Table, label: str, image: tuple[str, ...], ignore: tuple[str, ...]
) -> None:
    """Every ``--image`` column must exist, hold bytes (or an image struct), and be neither the
    label nor ignored."""
    _check_chosen(
        table,
        "--image",
        image,
        label,
        ignore,
        lambda kind: is_binary_type(kind) or is_image_struct(kind),
        "not binary; image columns hold encoded image bytes (binary), or a struct with a "
        "binary 'bytes' field",
    )


def _check_chosen(
    table: pa.Table,
    option: str,
    chosen: tuple[str, ...],
    label: str,
    ignore: tuple[str, ...],
    accepts: Callable[[pa.DataType], bool],
    refusal: str,
) -> None:
    """Columns named by ``option`` must exist, be neither the label nor ignored, and have a
    type ``accepts`` takes; ``refusal`` says what is wrong with one it does not."""
    for name in chosen:
        if name not in table.column_names:
            raise InputError(
                f"{option} names column {name!r}, which the input does not have; its columns "
                f"are: {', '.join(repr(n) for n in table.column_names[:30])}"
            )
        if name == label or name in ignore:
            which = "the label" if name == label else "also given to --ignore"
            raise InputError(f"{option} column {name!r} is {which}; drop it from {option}")
        kind = table.schema.field(name).type
        if not accepts(kind):
            raise InputError(f"{option} column {name!r} has type {kind}, {refusal}")


def _fit_image(
    name: str,
    column: pa.ChunkedArray,
    seed: int,
    model: tuple[Any, str] | PretrainedImage | None,
    model_path: str | None,
    size: int,
) -> ImageEncoder | PretrainedImageEncoder:
    if callable(model):
        return model(name).fit(column)
    encoder = ImageEncoder(name, side=size, seed=seed)
    if model is not None:
        encoder.model, encoder.model_sha256 = model
        encoder.model_path = str(Path(str(model_path)).resolve())
    return encoder.fit(column)


def _label_codes(table: pa.Table, label: str) -> np.ndarray | None:
    """The label column as class indices ``(N,)`` (-1 where null), for encoders that choose
    their form by the labels (free text); None where the table has no such column."""
    if label not in table.column_names:
        return None
    # integer, string or boolean labels (what refine's reader accepts); null is unlabelled
    codes = pc.dictionary_encode(table.column(label)).combine_chunks().indices
    return pc.fill_null(codes, -1).to_numpy(zero_copy_only=False).astype(np.int64)


def _fit_text(
    name: str,
    column: pa.ChunkedArray,
    seed: int,
    labels: np.ndarray | None = None,
    pretrained: Pretrained | None = None,
) -> TextEncoder | PretrainedTextEncoder:
    if pretrained is not None:
        return pretrained(name).fit(column)
    try:
        return TextEncoder(name, seed=seed).fit(column, labels)
    except _NoVocabulary:
        raise SkipColumn("free text with no words or characters in any row") from None


def _fit_column(
    name: str,
    column: pa.ChunkedArray,
    max_categories: int,
    text: bool = False,
    seed: int = 0,
    labels: np.ndarray | None = None,
    pretrained: Pretrained | None = None,
) -> Encoder:
    kind = column.type
    bad = invalid_utf8_row(_decode(column))
    if bad is not None:
        raise SkipColumn(f"row {bad} holds bytes that are not valid UTF-8")
    if text:
        if column.null_count == len(column):
            raise SkipColumn("all values are null")
        return _fit_text(name, column, seed, labels, pretrained)
    if name.startswith("__index_level_"):
        raise SkipColumn("pandas index column")
    if column.null_count == len(column):
        raise SkipColumn("all values are null")
    value_kind = kind.value_type if pa.types.is_dictionary(kind) else kind
    if (
        pa.types.is_boolean(value_kind)
        or pa.types.is_string(value_kind)
        or pa.types.is_large_string(value_kind)
        or pa.types.is_string_view(value_kind)
        or pa.types.is_dictionary(kind)
    ):
        distinct = len(pc.unique(_decode(column)).drop_null())
        if distinct < 2 and column.null_count == 0:
            raise SkipColumn("constant (one distinct value)")
        if distinct > max_categories:
            if not pa.types.is_boolean(value_kind) and looks_like_text(_decode(column)):
                return _fit_text(name, column, seed, labels, pretrained)
            raise SkipColumn(
                f"{distinct} distinct values, more than --max-categories {max_categories}, and "
                "few have spaces (an id?); name it with --text if it is free text, or raise "
                "--max-categories if it is a category"
            )
        return OneHotEncoder(name).fit(column)
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind):
        encoder = NumericEncoder(name).fit(column)
        if encoder.std == 1.0 and not encoder.indicator and _is_constant(column):
            raise SkipColumn("constant (one distinct value)")
        return encoder
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        inner = kind.value_type
        if not (pa.types.is_floating(inner) or pa.types.is_integer(inner)):
            raise SkipColumn(f"list of {inner}, not of numbers")
        return EmbeddingEncoder(name).fit(column)
    raise SkipColumn(f"type {kind} is not a feature type refine encodes")


def _decode(column: pa.ChunkedArray) -> pa.ChunkedArray:
    return plain_values(column)


def _is_constant(column: pa.ChunkedArray) -> bool:
    return len(pc.unique(column).drop_null()) <= 1
