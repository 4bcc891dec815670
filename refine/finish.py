"""A run's last stage: its summary (``run.json``), and the run directory written atomically
from the last round: ``refined.parquet``, ``rounds.parquet``, the model and whatever else the
run made.
"""

from __future__ import annotations

import platform
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from refine.config import VERSION, RunConfig
from refine.encode.features import FeatureEncoder
from refine.errors import RefineError
from refine.io.decisions import CORRECTED, EXCLUDED, GIVEN, PSEUDO, SYNTHETIC, VERIFIED, Decisions
from refine.io.keys import RowKey, row_key
from refine.io.read import Input, LabelledTable, read_batches
from refine.io.write import (
    ROUNDS_SCHEMA,
    atomic_directory,
    refined_table,
    write_json,
    write_parquet,
    write_refined_from,
)
from refine.judge.detect import confident_joint
from refine.learn.calibrate import apply_temperature
from refine.learn.checkpoint import kill_point
from refine.learn.crossfit import CrossFit
from refine.learn.modeldir import RUN_STUDENT_DIR, StudentModel, save_into
from refine.progress import logger, trust_lines
from refine.rounds import RoundsResult

# The layout of model.pt: refine.update.load_run reads what _save_model writes.
MODEL_FORMAT = "refine.mlp-ensemble/1"


@dataclass
class RunResult:
    """What a run produced: the tables written to disk, the run's summary (``run.json``), and the
    last round's calibrated probabilities ``proba`` ``(N, K)`` (out-of-fold for labelled rows)
    and ensemble ``agreement`` ``(N,)``."""

    held: pa.Table | None  # None: a streaming run wrote refined.parquet without holding it
    rounds: pa.Table
    summary: dict[str, Any]
    proba: np.ndarray
    agreement: np.ndarray
    out: Path | None = None
    skipped: dict[str, str] = field(default_factory=dict)
    synthetic: pa.Table | None = None  # synthetic.parquet, with --augment
    annotators: pa.Table | None = None  # annotators.parquet, with votes

    @property
    def refined(self) -> pa.Table:
        """refined.parquet's table; read from ``out`` when the run did not hold it."""
        if self.held is None and self.out is not None:
            self.held = pq.read_table(self.out / "refined.parquet")
        if self.held is None:  # only a run with --out lets its table go
            raise RefineError("the run's refined table is neither held nor written")
        return self.held

    @property
    def flagged(self) -> pa.Table:
        return self.refined.filter(self.refined.column("is_label_issue"))


def finish_run(
    data: LabelledTable,
    encoder: FeatureEncoder,
    config: RunConfig,
    state: RoundsResult,
    summary: dict[str, Any],
    out: str | Path | None,
    overwrite: bool,
    extra_files: dict[str, pa.Table] | None = None,
    kept: tuple[CrossFit, FeatureEncoder] | None = None,
    student: StudentModel | None = None,
    reread: Path | None = None,
) -> RunResult:
    """Build the output tables from the last round and write the run directory atomically,
    with ``extra_files`` (name -> table) beside them, and ``report.html`` (built from the
    written files) when ``config.report``. ``model.pt`` holds the last round's fold models
    and ``encoder``, or ``kept`` (fold models, encoder) instead: a distilled student. With
    ``reread`` (the input's path; ``data`` then holds its schema only), refined.parquet is
    written from the input read again, a row group at a time, and read back when asked for."""
    metadata = {
        "refine.classes": data.class_values(),
        "refine.run": {"version": VERSION, "config": config.to_dict(), "seed": config.seed},
    }
    refined = (
        None
        if reread is not None
        else refined_table(
            data, state.decisions, state.proba, state.is_issue, state.quality, metadata
        )
    )
    rounds = pa.Table.from_pylist(state.rounds, schema=ROUNDS_SCHEMA)
    synthetic = _synthetic_table(data, state, metadata) if state.synthetic is not None else None
    result = RunResult(
        held=refined,
        rounds=rounds,
        summary=summary,
        proba=state.proba,
        agreement=state.agreement,
        skipped=encoder.skipped,
        synthetic=synthetic,
    )
    if out is not None:
        started = time.perf_counter()
        with atomic_directory(Path(out), overwrite) as tmp:
            if reread is not None:
                write_refined_from(
                    tmp / "refined.parquet",
                    read_batches(reread),
                    data,
                    state.decisions,
                    state.proba,
                    state.is_issue,
                    state.quality,
                    metadata,
                )
            elif refined is not None:
                write_parquet(refined, tmp / "refined.parquet")
            write_parquet(rounds, tmp / "rounds.parquet")
            if synthetic is not None:
                write_parquet(synthetic, tmp / "synthetic.parquet")
            for name, table in (extra_files or {}).items():
                write_parquet(table, tmp / name)
            embeddings = encoder.embeddings(data.table)  # pretrained encoders', from the cache
            if embeddings is not None:
                write_parquet(embeddings, tmp / "embeddings.parquet")
            fitted, model_encoder = kept or (state.crossfit, encoder)
            _save_model(tmp / "model.pt", fitted, model_encoder, data, config)
            if student is not None:
                save_into(tmp / RUN_STUDENT_DIR, student)
            summary["timings"]["write"] = round(time.perf_counter() - started, 4)
            write_json(summary, tmp / "run.json")
            if config.report:
                from refine.report.html import write_report  # matplotlib loads only when needed

                write_report(tmp)
            kill_point("write")
        result.out = Path(out)
    _log_summary(summary, result.out)
    return result


def _log_summary(s: dict[str, Any], out: Path | None) -> None:
    """What the CLI's summary says, in a few lines for the ``refine`` logger."""
    rounds = s["rounds_run"]
    logger.info(
        f"{s['rows']:,} rows ({s['labelled']:,} labelled): {s['flagged']:,} flagged, "
        f"{s['corrected']:,} corrected, {s['excluded']:,} excluded, "
        f"{s['pseudo_labelled']:,} pseudo-labelled in {rounds} round{'s' if rounds != 1 else ''}"
    )
    for line in trust_lines(s.get("trust")):
        logger.info(line)
    if out is not None:
        logger.info(f"wrote {out}; the refined labels are in {out / 'refined.parquet'}")


def _synthetic_table(
    data: LabelledTable, state: RoundsResult, metadata: dict[str, Any]
) -> pa.Table:
    """``synthetic.parquet``: the last round's synthetic rows with refined.parquet's columns
    (``label_source`` 'synthetic', no ``label_quality``), plus ``synthetic_parent_rows``: the
    row numbers in ``refined.parquet`` of the rows each was made from. ``label_predicted`` is
    the last round's fold models' calibrated mean, as for unlabelled rows."""
    extra = state.synthetic
    synthetic = extra.synthetic
    m = len(synthetic)
    members = [mm.predict_member_proba(extra.X) for fold in state.crossfit.models for mm in fold]
    proba = apply_temperature(
        np.concatenate(members).mean(0) if m else np.zeros((0, data.n_classes), np.float32),
        state.temperature,
    )
    table = refined_table(
        LabelledTable(synthetic.table, data.label, np.full(m, -1), data.classes),
        Decisions(
            refined=synthetic.labels,
            source=np.full(m, SYNTHETIC, np.int8),
            weight=extra.weights,
            soft=synthetic.soft,
        ),
        proba,
        np.zeros(m, bool),
        np.ones(m, np.float32),
        metadata,
    )
    parents = [[int(p) for p in row if p >= 0] for row in synthetic.parents]
    return table.append_column(
        pa.field("synthetic_parent_rows", pa.list_(pa.int64())),
        pa.array(parents, pa.list_(pa.int64())),
    )


def summarise_run(
    data: LabelledTable,
    encoder: FeatureEncoder,
    config: RunConfig,
    state: RoundsResult,
    timings: dict[str, float],
    source: Input,
    command: str | None = None,
    key: RowKey | None = None,
) -> dict[str, Any]:
    """run.json's summary of a finished run on ``source``; ``key`` names its rows (default: the
    key that ``config`` gives ``data``, ``refine.io.keys.row_key``)."""
    labels = data.labels
    key = key if key is not None else row_key(data.table, config.label, config.key, config.ignore)
    classes = data.class_values()
    d = state.decisions
    predicted = state.proba.argmax(1)
    # A verified row is flagged for its known-wrong label, whatever the model predicts; the
    # confusions are the model's, so rows it predicts as given are left out.
    issues = np.flatnonzero(state.is_issue & (predicted != labels))
    confusions = Counter(zip(labels[issues].tolist(), predicted[issues].tolist(), strict=True))
    return {
        "refine_version": VERSION,
        **source.record,
        "command": command,
        "config": config.to_dict(),
        "seed": config.seed,
        "device": state.device,
        "versions": versions(),
        "classes": classes,
        "rows": int(len(labels)),
        "labelled": int((labels >= 0).sum()),
        "unlabelled": int((labels < 0).sum()),
        "flagged": int(state.is_issue.sum()),
        "corrected": d.count(CORRECTED),
        "excluded": d.count(EXCLUDED),
        "pseudo_labelled": d.count(PSEUDO),
        "synthetic_rows": len(state.synthetic.X) if state.synthetic is not None else 0,
        "down_weighted": int(((d.source == GIVEN) & (d.weight < 1)).sum()),
        "verified": d.count(VERIFIED),
        "rounds_run": len(state.rounds),
        "teacher_reliable": state.reliable,
        "trust": state.trust,
        "calibration": {
            "temperature": state.temperature,
            "ece_before": state.ece_before,
            "ece_after": state.ece_after,
            "reliability": state.reliability,
        },
        "noise_matrix": {
            "confident_joint": confident_joint(labels[labels >= 0], state.proba[labels >= 0])
        },
        "top_confusions": [
            {"given": classes[g], "predicted": classes[p], "rows": n}
            for (g, p), n in confusions.most_common(10)
        ],
        "features": encoder.describe(),
        "key": key.describe(),
        "timings": {k: round(v, 4) for k, v in timings.items()},
        "epochs_per_fit": state.crossfit.epochs,
        "rounds": state.rounds,
    }


def versions() -> dict[str, str]:
    import cleanlab
    import duckdb
    import pandas
    import sklearn

    return {
        "refine": VERSION,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "pyarrow": pa.__version__,
        "pandas": pandas.__version__,
        "scikit-learn": sklearn.__version__,
        "cleanlab": cleanlab.__version__,
        "duckdb": duckdb.__version__,
    }


def _save_model(
    path: Path, fitted: CrossFit, encoder: FeatureEncoder, data: LabelledTable, config: RunConfig
) -> None:
    """The last round's fold ensembles: plain tensors and JSON-able values only, so the file
    loads with ``torch.load(path, weights_only=True)``."""
    members = [
        {"fold": fold, "seed": m.random_state, "states": m.states_}
        for fold, fold_models in enumerate(fitted.models)
        for m in fold_models
    ]
    torch.save(
        {
            "format": MODEL_FORMAT,
            "classes": data.class_values(),
            "n_features": encoder.width,
            "hidden": list(config.model.hidden),
            "dropout": config.model.dropout,
            "image_blocks": [list(block) for block in encoder.image_blocks],
            "features": encoder.describe(),
            "encoder": encoder.state(),
            "members": members,
        },
        path,
    )
