"""The deployable student: one small MLP trained on every row on the teacher ensemble's soft labels.

Not to be confused with ``refine.learn.distill`` (cross-modal distillation, where the student
reads other columns than the teacher): this student reads the teacher's own encoded features and
replaces the K folds x S seeds x snapshots of ``model.pt`` with a single network, for
``refine predict`` and ``refine export``.

Shapes: ``X`` ``(N, D)`` float32 encoded features, ``soft`` ``(N, K)`` the teacher's calibrated
soft labels (``label_soft``), ``weight`` ``(N,)`` ``sample_weight``, ``folds`` ``(N,)`` fold
indices; probabilities out are ``(N, K)`` and follow the run's class order.

Calibration is on out-of-fold data: the student is cross-fitted on the given folds for that
alone (K extra fits of a small network), its out-of-fold probabilities fix the temperature and
the risk-coverage curve, and the deployed network is the one fitted on every row. The
temperature speaks of the true class as the run's probabilities do: fitted against the run's
belief of each row's true class (``refine.judge.trust.student_temperature``), else against the
refined labels where the run found no true-class temperature.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from refine.config import ModelConfig
from refine.errors import ConfigError
from refine.learn.calibrate import expected_calibration_error, fit_temperature
from refine.learn.crossfit import one_thread
from refine.learn.model import MLPClassifier, build_network, resolve_device

# Coverages the risk-coverage curve reports, and the grid of out-of-fold confidence quantiles
# kept so that any --coverage picks its threshold without the out-of-fold rows.
CURVE_COVERAGES = tuple(round(c, 2) for c in np.arange(0.05, 1.0001, 0.05))
QUANTILES = 201


def count_parameters(hidden: tuple[int, ...], n_features: int, n_classes: int) -> int:
    """Weights and biases of the MLP ``build_network`` makes with these sizes."""
    widths = (n_features, *hidden, n_classes)
    return sum(a * b + b for a, b in zip(widths[:-1], widths[1:], strict=True))


def network_parameters(model: MLPClassifier) -> int:
    """Parameters a fitted classifier evaluates per row: its network's, once per kept snapshot."""
    return len(model.states_) * sum(p.numel() for p in model.network_.parameters())


def parse_size(
    spec: str, n_features: int, n_classes: int, default: tuple[int, ...]
) -> tuple[int, ...]:
    """Hidden widths from ``--student-size``: ``auto`` (``default``), widths such as ``64`` or
    ``128,64``, or a parameter budget ``params:20000`` (two equal hidden layers, as wide as the
    budget allows)."""
    text = spec.strip().lower()
    if text == "auto":
        return tuple(default)
    if text.startswith("params:"):
        try:
            budget = int(text.split(":", 1)[1].replace("_", ""))
        except ValueError:
            budget = 0
        width = 0
        while count_parameters((width + 1, width + 1), n_features, n_classes) <= budget:
            width += 1
        if width < 1:
            smallest = count_parameters((1, 1), n_features, n_classes)
            raise ConfigError(
                f"--student-size {spec!r}: a budget of parameters must be a whole number of at "
                f"least {smallest} for {n_features} features and {n_classes} classes, such as "
                f"params:{max(smallest, 20000)}"
            )
        return (width, width)
    try:
        widths = tuple(int(w) for w in text.split(","))
    except ValueError:
        widths = ()
    if not widths or any(w < 1 for w in widths):
        raise ConfigError(
            f"--student-size {spec!r}: give hidden widths such as 64 or 128,64, a parameter "
            "budget such as params:20000, or auto"
        )
    return widths


def sharpen(soft: np.ndarray, temperature: float) -> np.ndarray:
    """``soft`` ``(N, K)`` raised to ``1 / temperature`` and renormalised: a temperature above 1
    softens the targets, below 1 sharpens them, 1 keeps them."""
    if temperature == 1.0:
        return soft.astype(np.float32)
    logits = np.log(np.clip(soft.astype(np.float64), 1e-12, 1.0)) / temperature
    logits -= logits.max(1, keepdims=True)
    out = np.exp(logits)
    return (out / out.sum(1, keepdims=True)).astype(np.float32)


@dataclass
class StudentNet:
    """A fitted student: its hidden widths, weights and calibration temperature.

    ``predict_proba(X)`` gives ``(N, K)`` calibrated probabilities, ``softmax(logits / T)``.
    """

    hidden: tuple[int, ...]
    n_features: int
    n_classes: int
    state: dict[str, torch.Tensor]
    temperature: float = 1.0
    device: str = "auto"

    def __post_init__(self) -> None:
        self._net: nn.Module | None = None

    @property
    def parameters(self) -> int:
        return count_parameters(self.hidden, self.n_features, self.n_classes)

    def network(self) -> nn.Module:
        """The network in eval mode on its device (built once)."""
        if self._net is None:
            net = build_network(self.n_features, self.n_classes, self.hidden, 0.0)
            net.load_state_dict(self.state)
            self._net = net.to(resolve_device(self.device)).eval()
        return self._net

    @torch.no_grad()
    def logits(self, X: np.ndarray, batch_size: int = 65536) -> np.ndarray:
        net = self.network()
        device = next(net.parameters()).device
        X = np.ascontiguousarray(X, dtype=np.float32)
        out = np.empty((len(X), self.n_classes), np.float32)
        for start in range(0, len(X), batch_size):
            xb = torch.from_numpy(X[start : start + batch_size]).to(device)
            out[start : start + len(xb)] = net(xb).cpu().numpy()
        return out

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return _softmax(self.logits(X) / self.temperature)


# The student's temperature from its out-of-fold probabilities (N, K), and how it was found;
# None: none found, calibrate against the refined labels.
TemperatureOf = Callable[[np.ndarray], tuple[float, str] | None]


@dataclass
class StudentFit:
    """What ``fit_student`` returns: the deployed ``net`` and its out-of-fold summary
    (``calibration``, ``risk_coverage``, ``confidence_quantiles``, ``seconds``)."""

    net: StudentNet
    summary: dict[str, Any]
    oof_proba: np.ndarray


def fit_student(
    X: np.ndarray,
    soft: np.ndarray,
    weight: np.ndarray,
    folds: np.ndarray,
    hidden: tuple[int, ...],
    model: ModelConfig,
    seed: int,
    soft_temperature: float = 1.0,
    true_class: TemperatureOf | None = None,
) -> StudentFit:
    """Train the student on every row of ``X`` to ``soft`` (sharpened by ``soft_temperature``)
    weighted by ``weight``, and calibrate it on out-of-fold predictions over ``folds``.

    The temperature is ``true_class(oof)`` for the student's out-of-fold probabilities ``oof``
    ``(N, K)``: a temperature and how it was found, as the run's judgement turned its ensemble
    to the true class. Where that is None or gives None, the temperature is fitted against the
    targets' most likely class on rows with a weight above 0 (the refined labels), which leaves
    the student as sure as the refined labels agree with it: overconfident where they keep
    noise it learned (reports/student-calibrated.md). The summary's accuracy, ECE and
    risk-coverage curve are scored against the refined labels, the only labels every row has.
    """
    targets = sharpen(soft, soft_temperature)
    weight = np.asarray(weight, np.float32)
    n_classes = targets.shape[1]
    # One set of weights (no snapshot averaging): one forward pass per row, and one graph to export.
    config = dataclasses.replace(model, hidden=tuple(hidden), snapshots=1)
    oof = np.zeros_like(targets)
    # One thread, as the fold models train: the same weights on any machine's core count.
    with one_thread():
        for fold in np.unique(folds[folds >= 0]):
            train, held = folds != fold, folds == fold
            member = _classifier(config, n_classes, seed + 1 + int(fold))
            member.fit(X[train], targets[train], weight[train])
            oof[held] = member.predict_proba(X[held])
        full = _classifier(config, n_classes, seed).fit(X, targets, weight)
    judged = (weight > 0) & (folds >= 0)
    refined = targets.argmax(1)
    found = true_class(oof) if true_class is not None else None
    if found is not None:
        temperature, target = found
    else:
        target = "refined"
        temperature = (
            fit_temperature(oof[judged], refined[judged], weight[judged]) if judged.any() else 1.0
        )
    calibrated = _softmax(np.log(np.clip(oof, 1e-7, 1.0)) / temperature)
    net = StudentNet(
        tuple(hidden),
        X.shape[1],
        n_classes,
        {k: v.detach().cpu() for k, v in full.states_[0].items()},
        temperature,
        model.device,
    )
    summary = {
        "hidden": list(hidden),
        "parameters": net.parameters,
        "soft_temperature": soft_temperature,
        "temperature": temperature,
        "epochs": full.epochs_,
        "calibration": {
            "target": target,
            "rows": int(judged.sum()),
            "oof_accuracy": _accuracy(calibrated[judged], refined[judged]),
            "ece_before": _ece(oof[judged], refined[judged]),
            "ece_after": _ece(calibrated[judged], refined[judged]),
        },
        "risk_coverage": risk_coverage(calibrated[judged], refined[judged]),
        "confidence_quantiles": confidence_quantiles(calibrated[judged]),
    }
    return StudentFit(net, summary, calibrated)


def risk_coverage(proba: np.ndarray, labels: np.ndarray) -> list[dict[str, float]]:
    """Accuracy on the most confident share of rows, at each of ``CURVE_COVERAGES``:
    ``[{"coverage", "threshold", "accuracy"}, ...]``, ``proba`` ``(N, K)``, ``labels`` ``(N,)``."""
    if len(labels) == 0:
        return []
    confidence = proba.max(1)
    order = np.argsort(-confidence, kind="stable")
    correct = np.cumsum(proba.argmax(1)[order] == labels[order])
    curve = []
    for coverage in CURVE_COVERAGES:
        kept = max(1, math.ceil(coverage * len(labels)))
        curve.append(
            {
                "coverage": coverage,
                "threshold": round(float(confidence[order[kept - 1]]), 6),
                "accuracy": round(float(correct[kept - 1] / kept), 6),
            }
        )
    return curve


def confidence_quantiles(proba: np.ndarray) -> list[float]:
    """``QUANTILES`` evenly spaced quantiles of the top-class confidence, lowest first."""
    if len(proba) == 0:
        return []
    q = np.quantile(proba.max(1).astype(np.float64), np.linspace(0.0, 1.0, QUANTILES))
    return [round(float(v), 7) for v in q]


def coverage_threshold(quantiles: list[float], coverage: float) -> float:
    """The confidence above which ``coverage`` of the out-of-fold rows fall."""
    if not quantiles:
        raise ConfigError("--coverage needs the student's out-of-fold confidences; none saved")
    return float(np.quantile(np.asarray(quantiles), 1.0 - coverage))


def _classifier(config: ModelConfig, n_classes: int, seed: int) -> MLPClassifier:
    return MLPClassifier(
        n_classes=n_classes,
        hidden=config.hidden,
        dropout=config.dropout,
        lr=config.lr,
        weight_decay=config.weight_decay,
        batch_size=config.batch_size,
        max_epochs=config.max_epochs,
        max_rows_seen=config.max_rows_seen,
        patience=config.patience,
        val_fraction=config.val_fraction,
        snapshots=config.snapshots,
        device=config.device,
        random_state=seed,
        mixup=config.mixup,
    )


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z -= z.max(1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(1, keepdims=True)).astype(np.float32)


def _accuracy(proba: np.ndarray, labels: np.ndarray) -> float | None:
    return round(float((proba.argmax(1) == labels).mean()), 6) if len(labels) else None


def _ece(proba: np.ndarray, labels: np.ndarray) -> float | None:
    return round(expected_calibration_error(proba, labels), 6) if len(labels) else None
