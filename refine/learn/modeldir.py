"""The student's model directory: what ``refine distill`` (or ``refine run --student``) writes and
``refine predict`` / ``refine export`` read::

    MODEL_DIR/model.json   manifest: format, versions, label and classes, the input schema,
                           sizes, calibration, the risk-coverage curve, sha256 of student.pt
    MODEL_DIR/student.pt   the network's weights and the fitted feature encoder: tensors and
                           plain values, loaded with torch.load(weights_only=True)

The input schema is the Arrow schema of the feature columns the encoder reads (and of the
label column, for the type of ``label_predicted``), kept both as text for people and as
serialised Arrow for ``refine predict`` to check new data against.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from refine.config import VERSION, RunConfig
from refine.encode.features import FeatureEncoder
from refine.errors import InputError, OutputError
from refine.io.write import atomic_directory, write_json
from refine.learn.crossfit import make_folds
from refine.learn.student import StudentFit, StudentNet, TemperatureOf, fit_student, parse_size

STUDENT_FORMAT = "refine.student/1"
MANIFEST = "model.json"
WEIGHTS = "student.pt"
# Where refine run --student puts the student inside a run directory.
RUN_STUDENT_DIR = "student"


@dataclass
class StudentModel:
    """A student loaded back (or about to be saved): its network, its feature encoder, the
    Arrow ``schema`` of the feature columns it reads, the label ``label_field``, the
    ``classes`` (the order of its probabilities) and the ``manifest``."""

    net: StudentNet
    encoder: FeatureEncoder
    schema: pa.Schema
    label_field: pa.Field
    classes: pa.Array
    manifest: dict[str, Any]

    @property
    def path(self) -> Path | None:
        where = self.manifest.get("path")
        return Path(where) if where else None


def is_model_dir(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file() and (Path(path) / WEIGHTS).is_file()


def student_dir_of(path: str | Path) -> Path | None:
    """``path`` itself when it is a model directory, its ``student/`` when it is a run directory
    with one, else None."""
    path = Path(path)
    if is_model_dir(path):
        return path
    if is_model_dir(path / RUN_STUDENT_DIR):
        return path / RUN_STUDENT_DIR
    return None


def manifest_of(
    net: StudentNet,
    encoder: FeatureEncoder,
    schema: pa.Schema,
    label_field: pa.Field,
    classes: pa.Array,
    summary: dict[str, Any],
    versions: dict[str, str],
    source: dict[str, Any],
) -> dict[str, Any]:
    """The manifest's content, less the hash of the weights (``write_model_dir`` adds it)."""
    full = pa.schema([*schema, label_field])
    return {
        "format": STUDENT_FORMAT,
        "version": VERSION,
        "versions": versions,
        "source": source,
        "label": label_field.name,
        "classes": classes.to_pylist(),
        "input_schema": [{"name": f.name, "type": str(f.type)} for f in schema],
        "label_type": str(label_field.type),
        "arrow_schema": base64.b64encode(full.serialize().to_pybytes()).decode("ascii"),
        "n_features": net.n_features,
        **summary,
    }


def describe_student(model: StudentModel) -> dict[str, Any]:
    """What run.json says of a run's student (the manifest less its schema and quantiles)."""
    keys = (
        "hidden",
        "parameters",
        "teacher_parameters",
        "parameter_share",
        "temperature",
        "soft_temperature",
        "calibration",
        "risk_coverage",
    )
    return {"path": RUN_STUDENT_DIR, **{k: model.manifest.get(k) for k in keys}}


def write_model_dir(out: Path, model: StudentModel, overwrite: bool) -> None:
    """Write ``model`` to the directory ``out`` atomically (see the module's docstring)."""
    with atomic_directory(Path(out), overwrite, check_model_out) as tmp:
        save_into(tmp, model)


def check_model_out(out: Path, overwrite: bool) -> None:
    """Refuse an ``out`` that exists, unless ``overwrite`` and it is a model directory."""
    if not out.exists():
        return
    if not is_model_dir(out) and not (out.is_dir() and not any(out.iterdir())):
        raise OutputError(
            f"--out {str(out)!r} exists and is not a refine model directory (no {MANIFEST}), and "
            "refine never replaces one; choose another --out"
        )
    if not overwrite:
        raise OutputError(
            f"output {str(out)!r} already exists; pass --overwrite to replace it, "
            "or choose another --out"
        )


def make_student(
    fit: StudentFit,
    encoder: FeatureEncoder,
    schema: pa.Schema,
    label_field: pa.Field,
    classes: pa.Array,
    versions: dict[str, str],
    source: dict[str, Any],
) -> StudentModel:
    """The model a fitted student makes with its encoder and the schema of the columns it reads
    (``schema`` may hold other columns; only the encoder's are kept)."""
    wanted = pa.schema([schema.field(name) for name in encoder.columns])
    manifest = manifest_of(
        fit.net, encoder, wanted, label_field, classes, fit.summary, versions, source
    )
    return StudentModel(fit.net, encoder, wanted, label_field, classes, manifest)


def save_into(directory: Path, model: StudentModel) -> None:
    """Write the model's two files into the existing ``directory`` (a run's ``student/``)."""
    directory.mkdir(exist_ok=True)
    torch.save(
        {
            "format": STUDENT_FORMAT,
            "hidden": list(model.net.hidden),
            "state": model.net.state,
            "encoder": model.encoder.state(),
        },
        directory / WEIGHTS,
    )
    data = (directory / WEIGHTS).read_bytes()
    files = {WEIGHTS: {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}}
    write_json({**model.manifest, "files": files}, directory / MANIFEST)


def load_model_dir(path: str | Path, device: str = "auto") -> StudentModel:
    """Load a model directory, or the student of a run directory; checks the weights' hash.

    Raises ``InputError`` naming the directory and what to pass instead."""
    given = Path(path)
    found = student_dir_of(given)
    if found is None:
        what = (
            "a refine run without a student"
            if (given / "run.json").is_file()
            else "not a refine model directory"
        )
        raise InputError(
            f"{str(given)!r} is {what}: it has no {MANIFEST} and {WEIGHTS}. Write a student with "
            f"refine distill RUN_DIR --out MODEL_DIR (or refine run ... --student) and pass that"
        )
    try:
        manifest = json.loads((found / MANIFEST).read_text())
        data = (found / WEIGHTS).read_bytes()
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read the model {str(found)!r}: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != STUDENT_FORMAT:
        raise InputError(f"{str(found / MANIFEST)!r} is not a refine student ({STUDENT_FORMAT})")
    expected = (manifest.get("files") or {}).get(WEIGHTS, {}).get("sha256")
    if expected != hashlib.sha256(data).hexdigest():
        raise InputError(
            f"{str(found / WEIGHTS)!r} does not match the sha256 in {MANIFEST} (changed or "
            "truncated since refine wrote it); write the student again with refine distill"
        )
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Detected pickle protocol", UserWarning)
            saved = torch.load(found / WEIGHTS, weights_only=True, map_location="cpu")
        full = pa.ipc.read_schema(pa.py_buffer(base64.b64decode(manifest["arrow_schema"])))
        label_field = full.field(manifest["label"])
        classes = pa.array(manifest["classes"], type=label_field.type)
        encoder = FeatureEncoder.from_state(saved["encoder"])
        net = StudentNet(
            tuple(int(h) for h in saved["hidden"]),
            int(manifest["n_features"]),
            len(classes),
            saved["state"],
            float(manifest["temperature"]),
            device,
        )
        net.network()  # the weights fit the sizes
    except (pickle.UnpicklingError, KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise InputError(f"cannot load the model {str(found)!r}: {exc}") from None
    schema = pa.schema([f for f in full if f.name != label_field.name])
    return StudentModel(
        net, encoder, schema, label_field, classes, {**manifest, "path": str(found)}
    )


def train_student(
    X: np.ndarray,
    soft: np.ndarray,
    weight: np.ndarray,
    encoder: FeatureEncoder,
    schema: pa.Schema,
    label_field: pa.Field,
    classes: pa.Array,
    config: RunConfig,
    size: str,
    soft_temperature: float,
    seed: int,
    teacher_parameters: int,
    source: dict[str, Any],
    versions: dict[str, str],
    device: str = "auto",
    true_class: TemperatureOf | None = None,
) -> StudentModel:
    """The student of encoded rows ``X`` ``(N, D)``, soft labels ``soft`` ``(N, K)`` and
    weights ``(N,)``; its calibration folds are the run's (``config.folds``, ``config.seed``)
    over the soft labels' most likely class, its temperature ``true_class``'s (``fit_student``)."""
    hidden = parse_size(size, X.shape[1], soft.shape[1], config.model.hidden)
    folds = make_folds(soft.argmax(1), config.folds, config.seed)
    model = config.model if device == "auto" else dataclasses.replace(config.model, device=device)
    fit = fit_student(X, soft, weight, folds, hidden, model, seed, soft_temperature, true_class)
    fit.summary["teacher_parameters"] = teacher_parameters
    fit.summary["parameter_share"] = round(fit.net.parameters / max(teacher_parameters, 1), 6)
    return make_student(fit, encoder, schema, label_field, classes, versions, source)
