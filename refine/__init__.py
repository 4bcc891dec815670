"""refine: find and fix wrong labels in Parquet datasets by self-distillation."""

__version__ = "0.1.0"

from refine.config import ModelConfig, RunConfig  # noqa: E402
from refine.errors import ConfigError, InputError, OutputError, RefineError  # noqa: E402
from refine.pipeline import RunResult, run  # noqa: E402
from refine.update import PreviousRun, load_run, update  # noqa: E402

__all__ = [
    "ConfigError",
    "InputError",
    "ModelConfig",
    "OutputError",
    "PreviousRun",
    "RefineError",
    "RunConfig",
    "RunResult",
    "__version__",
    "load_run",
    "run",
    "update",
]
