"""Configuration of a run: frozen dataclasses whose fields map one to one onto CLI flags."""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from refine.errors import ConfigError

FILTER_METHODS = (
    "prune_by_noise_rate",
    "prune_by_class",
    "both",
    "confident_learning",
    "predicted_neq_given",
    "low_normalized_margin",
    "low_self_confidence",
)
DEVICES = ("auto", "cpu", "cuda")
AUGMENT_METHODS = ("interpolate", "mixup", "noise")


@dataclass(frozen=True)
class ModelConfig:
    """The teacher: a PyTorch MLP trained with AdamW and early stopping.

    ``max_epochs`` bounds passes over small data; ``max_rows_seen`` bounds the work on large
    data (a fit stops after seeing that many rows), so a 1M-row file costs a few epochs. 2M
    rows at batches of 1024 fit as well as 4M at 4096 did, in half the time (reports/scale.md).
    """

    hidden: tuple[int, ...] = (256, 256)
    dropout: float = 0.2
    lr: float = 2e-3
    weight_decay: float = 1e-4
    batch_size: int = 0  # 0: chosen from the number of rows
    max_epochs: int = 60
    max_rows_seen: int = 2_000_000
    patience: int = 6
    val_fraction: float = 0.1
    snapshots: int = 3  # average the predictions of the best N epochs' weights
    device: str = "auto"
    mixup: float = 0.0  # Beta(a, a) of mixup's mixing weight; 0: off

    def validate(self) -> None:
        if not self.hidden or any(h < 1 for h in self.hidden):
            raise ConfigError(f"hidden layer sizes must be positive integers, got {self.hidden}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"--dropout must be in [0, 1), got {self.dropout}")
        if self.lr <= 0:
            raise ConfigError(f"--lr must be positive, got {self.lr}")
        if self.batch_size < 0:
            raise ConfigError(f"--batch-size must be >= 0 (0 = automatic), got {self.batch_size}")
        if self.max_epochs < 1:
            raise ConfigError(f"--max-epochs must be >= 1, got {self.max_epochs}")
        if self.max_rows_seen < 1:
            raise ConfigError(f"--max-rows-seen must be >= 1, got {self.max_rows_seen}")
        if not 0 < self.val_fraction < 0.5:
            raise ConfigError(f"--val-fraction must be in (0, 0.5), got {self.val_fraction}")
        if self.snapshots < 1:
            raise ConfigError(f"--snapshots must be >= 1, got {self.snapshots}")
        if not (math.isfinite(self.mixup) and self.mixup >= 0):
            raise ConfigError(f"--mixup must be a number >= 0 (0 = off), got {self.mixup}")
        if self.device not in DEVICES:
            raise ConfigError(f"--device must be one of {', '.join(DEVICES)}, got {self.device!r}")


@dataclass(frozen=True)
class RunConfig:
    """Everything that decides what a run computes. Saved in ``run.json`` and the Parquet metadata."""

    label: str = "label"
    # Verified labels: a column of the data (null where nobody checked the row), or a file of
    # them joined to the data by the key column (None: by the file's "row" positions). The key
    # also names the rows wherever refine lists them (refine.io.keys), and is never a feature.
    verified: str | None = None
    verified_file: str | None = None
    key: str | None = None
    # Votes instead of one label per row: a list column of votes (null or -1 = abstain), or a
    # long file (key, annotator, label) joined by the key. The majority vote becomes the given
    # label, label_vote; each round the annotator model weighs the votes (refine.crowd).
    votes: str | None = None
    annotations: str | None = None
    features: tuple[str, ...] | None = None
    ignore: tuple[str, ...] = ()
    text: tuple[str, ...] = ()  # string columns to read as free text
    image: tuple[str, ...] = ()  # binary columns to read as encoded images
    # A TorchScript file, or a transformers or timm vision model directory: image features in
    # place of the CNN.
    image_model: str | None = None
    image_size: int = 0  # side images are resized to; 0: their own, at most 28 (224 for a model)
    # A sentence-transformers model (directory or Hugging Face name) embedding each text
    # column in place of TF-IDF, and where its embeddings are cached: "auto" (the user's cache
    # directory), "off", or a directory (refine.encode.embedding).
    text_model: str | None = None
    embedding_cache: str = "auto"
    # Cross-modal distillation: the rounds train on teacher_features, then a student on
    # student_features learns the refined targets and is the model the run keeps.
    teacher_features: tuple[str, ...] | None = None
    student_features: tuple[str, ...] | None = None
    # A deployable student (refine.deploy): one small MLP trained on the final soft labels and
    # written to RUN_DIR/student/ for refine predict and refine export.
    student: bool = False
    student_size: str = "auto"
    student_temperature: float = 1.0
    folds: int = 5
    rounds: int = 3
    min_changes: int = 1
    seeds: int = 1  # models per fold, each with its own seed
    filter_by: str = "predicted_neq_given"
    flag_confident: bool = True
    one_way_noise: bool = True  # leave labels alone against the direction the noise runs
    # The probability of the true class a correction needs: 0.6 on that scale does as well as
    # the old 0.4 on the given labels' scale, and says what it means (reports/trust.md).
    relabel_threshold: float = 0.6
    # Also correct when the predicted class is this many times as likely as the given one; 0:
    # off. It lifts strong models on many classes but costs small data, so it is an option
    # (reports/relabel-odds.md, reports/code-notes.md).
    relabel_odds: float = 0.0
    exclude_threshold: float = 0.05
    soft_mix: float = 0.2
    pseudo_label: bool = True
    pseudo_threshold: float = 0.9
    augment: str | None = None
    augment_ratio: float = 1.0
    max_categories: int = 64
    report: bool = True  # write report.html beside the run's files
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)

    def validate(self) -> None:
        check_types(self)
        check_types(self.model)
        if self.folds < 2:
            raise ConfigError(f"--folds must be at least 2, got {self.folds}")
        if self.rounds < 1:
            raise ConfigError(f"--rounds must be at least 1, got {self.rounds}")
        if self.min_changes < 0:
            raise ConfigError(f"--min-changes must be >= 0, got {self.min_changes}")
        if self.seeds < 1:
            raise ConfigError(f"--seeds must be at least 1, got {self.seeds}")
        if self.filter_by not in FILTER_METHODS:
            raise ConfigError(
                f"--filter-by must be one of {', '.join(FILTER_METHODS)}, got {self.filter_by!r}"
            )
        if not 0 < self.relabel_threshold <= 1:
            raise ConfigError(
                f"--relabel-threshold must be in (0, 1], got {self.relabel_threshold}"
            )
        if not (self.relabel_odds == 0 or 1 <= self.relabel_odds < math.inf):
            raise ConfigError(
                f"--relabel-odds must be 0 (off) or a number >= 1, got {self.relabel_odds}"
            )
        if not 0 <= self.exclude_threshold < 1:
            raise ConfigError(
                f"--exclude-threshold must be in [0, 1), got {self.exclude_threshold}"
            )
        if not 0.5 <= self.pseudo_threshold <= 1:
            raise ConfigError(
                f"--pseudo-threshold must be in [0.5, 1], got {self.pseudo_threshold}"
            )
        if self.augment is not None and self.augment not in AUGMENT_METHODS:
            raise ConfigError(
                f"--augment must be one of {', '.join(AUGMENT_METHODS)}, got {self.augment!r}"
            )
        if not 0 < self.augment_ratio <= 10:
            raise ConfigError(
                f"--augment-ratio must be in (0, 10] synthetic rows per trusted row, "
                f"got {self.augment_ratio}"
            )
        if not 0 <= self.soft_mix <= 1:
            raise ConfigError(f"--soft-mix must be in [0, 1], got {self.soft_mix}")
        if not 0 <= self.image_size <= 1024:
            raise ConfigError(
                f"--image-size must be in [0, 1024] pixels (0 = automatic), got {self.image_size}"
            )
        if not self.embedding_cache.strip():
            raise ConfigError(
                "--embedding-cache must be auto, off or a directory, got an empty string"
            )
        if self.text_model is not None and not self.text_model.strip():
            raise ConfigError("--text-model must name a model directory or a Hugging Face model")
        if self.max_categories < 2:
            raise ConfigError(f"--max-categories must be at least 2, got {self.max_categories}")
        if self.label in self.ignore:
            raise ConfigError(
                f"--ignore names the label column {self.label!r}; drop it from --ignore"
            )
        if self.features is not None and self.label in self.features:
            raise ConfigError(
                f"--features names the label column {self.label!r}; a label cannot be a feature"
            )
        self._validate_verified()
        self._validate_votes()
        self._validate_distillation()
        self.model.validate()

    def _validate_votes(self) -> None:
        if self.votes is not None and self.annotations is not None:
            raise ConfigError("--votes and --annotations both give votes; pass one")
        if self.annotations is not None and self.key is None:
            raise ConfigError(
                "--annotations needs --key: name the column of the input that the annotations "
                "file's rows refer to"
            )
        if self.votes is not None and self.features is not None and self.votes in self.features:
            raise ConfigError(
                f"--votes column {self.votes!r} cannot also be a feature; drop it from --features"
            )

    def _validate_verified(self) -> None:
        if self.verified is not None and self.verified_file is not None:
            raise ConfigError("--verified and --verified-file both give verified labels; pass one")
        if self.verified is not None and self.verified == self.label:
            raise ConfigError(
                f"--verified names the label column {self.label!r}; verified labels go in a "
                "column of their own (null where nobody checked the row)"
            )
        for option, name in (("--verified", self.verified), ("--key", self.key)):
            if name is not None and self.features is not None and name in self.features:
                raise ConfigError(
                    f"{option} column {name!r} cannot also be a feature; drop it from --features"
                )

    def _validate_distillation(self) -> None:
        if self.student and self.student_features is not None:
            raise ConfigError(
                "--student distills the run's own model; with --student-features model.pt "
                "already holds a student on other columns. Pass one of them"
            )
        size = self.student_size.strip().lower().replace(" ", "")
        if not re.fullmatch(r"auto|params:[1-9][0-9_]*|[1-9][0-9]*(,[1-9][0-9]*)*", size):
            raise ConfigError(
                f"--student-size {self.student_size!r}: give hidden widths such as 64 or 128,64, "
                "a parameter budget such as params:20000, or auto"
            )
        if not (math.isfinite(self.student_temperature) and self.student_temperature > 0):
            raise ConfigError(
                f"--student-temperature must be a number above 0, got {self.student_temperature}"
            )
        if self.student_features is not None and self.teacher_features is None:
            raise ConfigError(
                "--student-features needs --teacher-features: name the columns the teacher "
                "trains on"
            )
        if self.teacher_features is None:
            return
        if self.features is not None:
            raise ConfigError("--teacher-features replaces --features; pass one of them, not both")
        for option, columns in (
            ("--teacher-features", self.teacher_features),
            ("--student-features", self.student_features),
        ):
            if columns is not None and not columns:
                raise ConfigError(f"{option} names no columns; name at least one column")
            if columns is not None and self.label in columns:
                raise ConfigError(
                    f"{option} names the label column {self.label!r}; a label cannot be a feature"
                )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        data = dict(data)
        model_data = dict(data.pop("model", {}))
        model_known = {f.name for f in dataclasses.fields(ModelConfig)}
        model_unknown = sorted(set(model_data) - model_known)
        if model_unknown:
            raise ConfigError(
                f"unknown configuration keys: {', '.join(f'model.{k}' for k in model_unknown)}; "
                "the model's keys are the fields of ModelConfig"
            )
        model = ModelConfig(**model_data)
        if isinstance(model.hidden, list):
            model = dataclasses.replace(model, hidden=tuple(model.hidden))
        for key in (
            "features",
            "ignore",
            "text",
            "image",
            "teacher_features",
            "student_features",
        ):
            if isinstance(data.get(key), list):
                data[key] = tuple(data[key])
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"unknown configuration keys: {', '.join(unknown)}; the keys are the fields of "
                "RunConfig, as in a run's run.json"
            )
        return cls(model=model, **data)


# The packages whose versions decide a run's numbers; run.json records them (with others).
# refine's version (also in pyproject.toml), written into every run's metadata.
VERSION = "0.2.0"
REPRODUCIBLE_VERSIONS = ("refine", "torch", "numpy", "cleanlab", "scikit-learn")


def load_config(path: str | os.PathLike[str]) -> tuple[RunConfig, dict[str, Any]]:
    """Read the configuration of an earlier run, to run it again.

    Parameters
    ----------
    path : path
        A run's ``run.json``, or a JSON object of ``RunConfig`` fields (``{"rounds": 2,
        "model": {"max_epochs": 20}}``); fields it leaves out keep their defaults.

    Returns
    -------
    config : RunConfig
        The configuration, validated.
    recorded : dict
        What ``run.json`` recorded beside it: ``input`` (the input path, or what the table in
        memory was), ``input_in_memory``, ``versions`` and ``command``, where present; empty
        for a plain configuration.

    Raises
    ------
    ConfigError
        The file is missing, is not a JSON object, or holds unknown keys or unusable values.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"config file {str(path)!r} does not exist; pass the run.json of an earlier run"
        ) from None
    except IsADirectoryError:
        raise ConfigError(
            f"config file {str(path)!r} is a directory; pass the run.json inside it"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"cannot read config file {str(path)!r}: {reason}") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"config file {str(path)!r} is not valid JSON: {exc.msg} at line {exc.lineno}, "
            f"column {exc.colno}"
        ) from None
    if not isinstance(document, dict):
        raise ConfigError(
            f"config file {str(path)!r} holds a JSON {type(document).__name__}; expected an "
            'object: a run\'s run.json, or configuration keys such as {"rounds": 2}'
        )
    # A run.json nests the configuration under "config"; a plain file is the configuration.
    is_run = "config" in document
    options = document["config"] if is_run else document
    if not isinstance(options, dict) or not isinstance(options.get("model", {}), dict):
        raise ConfigError(
            f"config file {str(path)!r}: the configuration must be a JSON object, and its "
            '"model" too'
        )
    try:
        config = RunConfig.from_dict(options)
        config.validate()
    except ConfigError as exc:
        raise ConfigError(f"config file {str(path)!r}: {exc}") from None
    except TypeError as exc:
        # A value of the wrong JSON type ("rounds": "two") fails a comparison in validate().
        raise ConfigError(
            f"config file {str(path)!r} holds a value of the wrong type ({exc}); compare it "
            "with the run.json of a run"
        ) from None
    recorded = {
        k: document[k]
        for k in ("input", "input_in_memory", "versions", "command")
        if is_run and k in document
    }
    return config, recorded


def recorded_input(path: str | os.PathLike[str], recorded: dict[str, Any]) -> Path:
    """The input file a run read, from ``recorded`` (``load_config``'s) of the file ``path``.

    Raises
    ------
    ConfigError
        It records no input path, an Arrow table, or a file that is no longer there (the demo's
        is a temporary file); each message says to pass DATA instead.
    """
    rerun = f"pass DATA: refine run DATA --config {path} --out ..."
    source = recorded_path(recorded)
    if source is None:
        given = recorded.get("input")
        what = (
            f"its input as {given}, a table in memory, not a file"
            if isinstance(given, str) and given != "<arrow table>"
            else "an Arrow table, not a file"
            if given == "<arrow table>"
            else "no input path"
        )
        raise ConfigError(f"config file {str(path)!r} records {what}; {rerun}")
    if not Path(source).exists():
        command = recorded.get("command")
        why = (
            "it was the demo's temporary file; rerun the demo with refine demo --out NEW, or"
            if isinstance(command, str) and command.split()[:2] == ["refine", "demo"]
            else "it was moved or removed since the run;"
        )
        raise ConfigError(
            f"config file {str(path)!r} records the input {source!r}, which no longer exists: "
            f"{why} {rerun}"
        )
    return Path(source)


def recorded_path(summary: dict[str, Any]) -> str | None:
    """The input path a run's ``run.json`` (``summary``) records, or None where the run read a
    table in memory (``input_in_memory``; older runs recorded ``"<arrow table>"``)."""
    source = summary.get("input")
    if not isinstance(source, str) or source == "<arrow table>" or summary.get("input_in_memory"):
        return None
    return source


def version_differences(recorded: dict[str, str], current: dict[str, str]) -> list[str]:
    """``["torch 2.3.0 (now 2.4.1)", ...]`` for each package in ``REPRODUCIBLE_VERSIONS`` whose
    recorded version differs from the running one; a package left unrecorded is skipped."""
    return [
        f"{name} {recorded[name]} (now {current.get(name)})"
        for name in REPRODUCIBLE_VERSIONS
        if name in recorded and recorded[name] != current.get(name)
    ]


def check_types(config: RunConfig | ModelConfig) -> None:
    """Refuse a value of the wrong type (``"rounds": "two"`` in a hand-edited run.json, a float
    seed from Python), naming the option, before any comparison or seeding trips over it.

    The expected type is the field's default's: bool, whole number, number or string; a tuple
    default holds strings (``hidden``: whole numbers); a None default allows None besides a
    tuple of column names (``*features``) or a string."""
    for f in dataclasses.fields(config):
        if f.name == "model":
            continue
        value = getattr(config, f.name)
        default = f.default if f.default is not dataclasses.MISSING else None
        if default is None and value is None:
            continue
        option = "--" + f.name.replace("_", "-")
        if isinstance(default, bool):
            ok, expected = isinstance(value, bool), "true or false"
        elif isinstance(default, int):
            ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
            expected = "a whole number"
        elif isinstance(default, float):
            ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
            expected = "a number"
        elif isinstance(default, tuple) or f.name.endswith("features"):
            item = numbers.Integral if f.name == "hidden" else str
            ok = isinstance(value, tuple | list) and all(
                isinstance(v, item) and not isinstance(v, bool) for v in value
            )
            expected = "a list of " + ("whole numbers" if item is not str else "column names")
        else:
            ok, expected = isinstance(value, str), "a string"
        if not ok:
            raise ConfigError(f"{option} must be {expected}, got {json.dumps(value, default=repr)}")


_SUMMARY_OBJECTS = (
    "config",
    "calibration",
    "features",
    "key",
    "noise_matrix",
    "timings",
    "versions",
)
_SUMMARY_LISTS = ("rounds", "top_confusions", "epochs_per_fit")


def check_summary(
    summary: Any, path: str | os.PathLike[str], parquet_classes: Any = None
) -> dict[str, Any]:
    """The ``run.json`` summary at ``path``, checked for the shapes refine reads back
    (``refine report``, ``refine update``), and its classes against ``parquet_classes`` (those
    ``refined.parquet`` records) when given; raises ``InputError`` naming the bad key."""
    from refine.errors import InputError

    def bad(key: str, expected: str, value: Any) -> InputError:
        shown = json.dumps(value, default=repr)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        return InputError(
            f"{str(path)!r}: {key} must be {expected}, got {shown}; restore the run.json that "
            "refine wrote, or rerun refine run to write the run again"
        )

    if not isinstance(summary, dict):
        raise bad("the file", "a JSON object (a refine run summary)", summary)
    classes = summary.get("classes")
    scalars = (str, int, float, bool, type(None))
    if "classes" in summary and (not isinstance(classes, list) or not classes):
        raise bad('"classes"', "a JSON list of the class values", classes)
    # isinstance only narrows for the checker: the line above raised for any other "classes".
    if (
        "classes" in summary
        and isinstance(classes, list)
        and not all(isinstance(c, scalars) for c in classes)
    ):
        raise bad('"classes"', "a list of strings or numbers", classes)
    if "classes" in summary and parquet_classes is not None and classes != parquet_classes:
        raise bad('"classes"', f"refined.parquet's classes {json.dumps(parquet_classes)}", classes)
    for key in _SUMMARY_OBJECTS:
        if key in summary and not isinstance(summary[key], dict):
            raise bad(f'"{key}"', "a JSON object", summary[key])
    for key in _SUMMARY_LISTS:
        if key in summary and not isinstance(summary[key], list):
            raise bad(f'"{key}"', "a JSON list", summary[key])
    for key in ("calibration", "student"):
        value = summary.get(key)
        if isinstance(value, dict) and "temperature" in value:
            t = value["temperature"]
            if not isinstance(t, int | float) or isinstance(t, bool) or not t > 0:
                raise bad(f'"{key}.temperature"', "a positive number", t)
    timings = summary.get("timings") or {}
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in timings.values()):
        raise bad('"timings"', "an object of seconds", timings)
    if "config" in summary:
        try:
            RunConfig.from_dict(summary["config"]).validate()
        except ConfigError as exc:
            raise InputError(
                f"{str(path)!r} holds a configuration refine cannot use: {exc}; restore the "
                "run.json that refine wrote, or rerun refine run to write the run again"
            ) from None
        except TypeError as exc:
            raise bad('"config"', "the fields of RunConfig", str(exc)) from None
    return summary
