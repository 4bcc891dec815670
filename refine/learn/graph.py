"""The student as one graph for serving without refine: ONNX or TorchScript (``refine export``).

The graph takes the numeric feature columns raw and standardises them inside (missing, NaN and
infinite values imputed as the encoder does, with its 0/1 indicator columns), then runs the
network and returns calibrated probabilities ``(N, K)``. Columns that need more than arithmetic
(one-hot strings, text n-grams, embeddings, images) come in already encoded as a second input,
``encoded``; the JSON spec written beside the file (``FILE.json``) lists each input's columns in
order and every fitted parameter of their encoding, so a serving job can reproduce it.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from refine.config import VERSION
from refine.encode.columns import FEATURE_LIMIT, NumericEncoder
from refine.errors import ConfigError
from refine.io.write import atomic_file, write_json
from refine.learn.modeldir import StudentModel

FORMATS = ("onnx", "torchscript")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt"}


class Deployed(nn.Module):
    """``forward(numeric (N, P), encoded (N, Q))`` -> probabilities ``(N, K)``; either input is
    absent when no column needs it (``has_numeric``, ``has_encoded``)."""

    mean: torch.Tensor
    std: torch.Tensor
    indicators: torch.Tensor
    place: torch.Tensor

    def __init__(self, model: StudentModel):
        super().__init__()
        numeric: list[tuple[NumericEncoder, int]] = []
        other: list[int] = []
        start = 0
        for encoder in model.encoder.encoders:
            if isinstance(encoder, NumericEncoder):
                numeric.append((encoder, start))
            else:
                other.extend(range(start, start + encoder.width))
            start += encoder.width
        self.has_numeric = bool(numeric)
        self.has_encoded = bool(other)
        # Where each part of the concatenation [standardised, indicators, encoded] goes in X.
        order = [s for _, s in numeric]
        order += [s + 1 for e, s in numeric if e.indicator]
        indicator_of = [i for i, (e, _) in enumerate(numeric) if e.indicator]
        order += other
        place = np.empty(len(order), np.int64)
        place[np.asarray(order, np.int64)] = np.arange(len(order))
        self.register_buffer(
            "mean", torch.tensor([e.mean for e, _ in numeric], dtype=torch.float32)
        )
        self.register_buffer("std", torch.tensor([e.std for e, _ in numeric], dtype=torch.float32))
        self.register_buffer("indicators", torch.tensor(indicator_of, dtype=torch.int64))
        self.register_buffer("place", torch.from_numpy(place))
        self.has_indicators = bool(indicator_of)
        self.network = model.net.network().cpu()
        self.temperature = float(model.net.temperature)

    def forward(self, numeric: torch.Tensor, encoded: torch.Tensor) -> torch.Tensor:
        parts = []
        if self.has_numeric:
            finite = torch.isfinite(numeric)
            z = (numeric - self.mean) / self.std
            z = torch.where(finite, z, torch.zeros_like(z)).clamp(-FEATURE_LIMIT, FEATURE_LIMIT)
            parts.append(z)
            if self.has_indicators:
                parts.append((~finite).to(torch.float32).index_select(1, self.indicators))
        if self.has_encoded:
            parts.append(encoded)
        x = torch.cat(parts, dim=1).index_select(1, self.place)
        return torch.softmax(self.network(x) / self.temperature, dim=1)


def spec_of(model: StudentModel, fmt: str) -> dict[str, Any]:
    """What the graph's inputs hold, column by column, and how to encode the ``encoded`` ones."""
    encoders = model.encoder.encoders
    numeric = [e.name for e in encoders if isinstance(e, NumericEncoder)]
    encoded = [e.describe() | _params(e) for e in encoders if not isinstance(e, NumericEncoder)]
    return {
        "format": fmt,
        "refine": VERSION,
        "inputs": {
            **(
                {
                    "numeric": {
                        "dtype": "float32",
                        "columns": numeric,
                        "encoding": "inside the graph",
                    }
                }
                if numeric
                else {}
            ),
            **(
                {
                    "encoded": {
                        "dtype": "float32",
                        "width": sum(
                            e.width for e in encoders if not isinstance(e, NumericEncoder)
                        ),
                        "columns": encoded,
                    }
                }
                if encoded
                else {}
            ),
        },
        "output": {"name": "proba", "classes": model.classes.to_pylist(), "calibrated": True},
        "temperature": model.net.temperature,
    }


def _params(encoder: Any) -> dict[str, Any]:
    state = getattr(encoder, "state", None)
    return _plain(state()) if state is not None else {}


def _plain(value: Any) -> Any:
    """``value`` with its tensors and arrays as (nested) lists, for JSON."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    return value


def split_inputs(model: StudentModel, X: np.ndarray, table: Any) -> tuple[np.ndarray, np.ndarray]:
    """The graph's two inputs for the rows of ``table`` whose encoding is ``X`` ``(N, D)``:
    the raw numeric columns ``(N, P)`` and the other columns' encoding ``(N, Q)``."""
    numeric, other, start = [], [], 0
    for encoder in model.encoder.encoders:
        if isinstance(encoder, NumericEncoder):
            values = table.column(encoder.name).to_numpy(zero_copy_only=False)
            numeric.append(np.asarray(values, dtype=np.float64).astype(np.float32))
        else:
            other.append(X[:, start : start + encoder.width])
        start += encoder.width
    n = len(X)
    return (
        np.stack(numeric, 1) if numeric else np.zeros((n, 0), np.float32),
        np.concatenate(other, 1) if other else np.zeros((n, 0), np.float32),
    )


def export_graph(model: StudentModel, out: str | Path, fmt: str, overwrite: bool = False) -> Path:
    """Write the student as ``fmt`` (``onnx`` or ``torchscript``) to ``out`` and its input spec
    to ``out`` + ``.json``, each atomically. Returns the spec's path."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    out = Path(out)
    spec_path = out.with_name(out.name + ".json")
    graph = Deployed(model).eval()
    for parameter in graph.parameters():  # a served graph is never trained
        parameter.requires_grad_(False)
    width_p = len(spec_of(model, fmt)["inputs"].get("numeric", {}).get("columns", []))
    width_q = graph.place.numel() - width_p - int(graph.indicators.numel())
    example = (torch.zeros(2, width_p), torch.zeros(2, width_q))
    # torch deprecates both exporters' entry points, but they are what runs offline today.
    with atomic_file(out, overwrite) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        if fmt == "torchscript":
            with torch.no_grad():
                traced = torch.jit.trace(graph, example)
            torch.jit.save(traced, str(tmp))
        else:
            _onnx(graph, example, tmp)
    with atomic_file(spec_path, overwrite) as tmp:
        write_json(spec_of(model, fmt), tmp)
    return spec_path


def _onnx(graph: Deployed, example: tuple[torch.Tensor, torch.Tensor], path: Path) -> None:
    try:
        import onnx  # noqa: F401  (torch.onnx.export needs it)
    except ImportError:
        raise ConfigError(
            "--format onnx needs the onnx package: pip install 'refine[export]'"
        ) from None
    names = ["numeric", "encoded"]
    # The TorchScript-based exporter: it runs offline with the onnx package alone (the dynamo
    # exporter also needs onnxscript), and keeps the batch dimension dynamic.
    torch.onnx.export(
        graph,
        example,
        str(path),
        input_names=names,
        output_names=["proba"],
        dynamic_axes={"numeric": {0: "rows"}, "encoded": {0: "rows"}, "proba": {0: "rows"}},
        opset_version=17,
        dynamo=False,
    )
