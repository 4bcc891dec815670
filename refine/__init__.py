"""refine: find and fix wrong labels in Parquet datasets by self-distillation."""

from refine.config import VERSION as __version__
from refine.config import ModelConfig, RunConfig
from refine.deploy import Prediction, distill, export_model, predict
from refine.errors import ConfigError, InputError, OutputError, RefineError
from refine.finish import RunResult
from refine.io.export import Export, export_data
from refine.pipeline import run
from refine.update import PreviousRun, load_run, update

__all__ = [
    "ConfigError",
    "Export",
    "InputError",
    "ModelConfig",
    "OutputError",
    "Prediction",
    "PreviousRun",
    "RefineError",
    "RunConfig",
    "RunResult",
    "__version__",
    "distill",
    "export_model",
    "export_data",
    "load_run",
    "predict",
    "run",
    "update",
]
