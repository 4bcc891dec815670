"""Configuration of a run: frozen dataclasses whose fields map one to one onto CLI flags."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
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
    data (a fit stops after seeing that many rows), so a 1M-row file costs a few epochs.
    """

    hidden: tuple[int, ...] = (256, 256)
    dropout: float = 0.2
    lr: float = 2e-3
    weight_decay: float = 1e-4
    batch_size: int = 0  # 0: chosen from the number of rows
    max_epochs: int = 60
    max_rows_seen: int = 4_000_000
    patience: int = 6
    val_fraction: float = 0.1
    snapshots: int = 3  # average the predictions of the best N epochs' weights
    device: str = "auto"

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
        if not 0 < self.val_fraction < 0.5:
            raise ConfigError(f"--val-fraction must be in (0, 0.5), got {self.val_fraction}")
        if self.snapshots < 1:
            raise ConfigError(f"--snapshots must be >= 1, got {self.snapshots}")
        if self.device not in DEVICES:
            raise ConfigError(f"--device must be one of {', '.join(DEVICES)}, got {self.device!r}")


@dataclass(frozen=True)
class RunConfig:
    """Everything that decides what a run computes. Saved in ``run.json`` and the Parquet metadata."""

    label: str = "label"
    features: tuple[str, ...] | None = None
    ignore: tuple[str, ...] = ()
    text: tuple[str, ...] = ()  # string columns to read as free text
    folds: int = 5
    rounds: int = 3
    min_changes: int = 1
    seeds: int = 1  # models per fold, each with its own seed
    filter_by: str = "predicted_neq_given"
    flag_confident: bool = True
    relabel_threshold: float = 0.5
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
        self.model.validate()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        data = dict(data)
        model = ModelConfig(**{**data.pop("model", {})})
        if isinstance(model.hidden, list):
            model = dataclasses.replace(model, hidden=tuple(model.hidden))
        for key in ("features", "ignore", "text"):
            if isinstance(data.get(key), list):
                data[key] = tuple(data[key])
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown configuration keys: {', '.join(unknown)}")
        return cls(model=model, **data)
