"""The pipeline, in order: read, encode, then rounds of cross-fit, calibrate, detect, refine;
then write. This is the one place that knows the order of the stages.
"""

from __future__ import annotations

import dataclasses
import platform
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from refine import __version__
from refine.calibrate import (
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
)
from refine.checkpoint import (
    check_execution,
    kill_point,
    open_checkpoint,
    resume_rounds,
    round_record,
)
from refine.config import ModelConfig, RunConfig
from refine.crossfit import CrossFit, FoldRunner, cross_fit, make_folds, restore_cross_fit
from refine.detect import confident_joint, detect_issues, merge_directions, noise_directions
from refine.errors import InputError, RefineError
from refine.features import FeatureEncoder, check_named_columns, fit_features
from refine.model import resolve_device
from refine.progress import NULL_PROGRESS, Progress
from refine.read import LabelledTable, check_no_clashes, encode_labels, read_table
from refine.relabel import (
    CORRECTED,
    EXCLUDED,
    GIVEN,
    PSEUDO,
    SYNTHETIC,
    VERIFIED,
    Decisions,
    teacher_is_reliable,
)
from refine.trust import KEEP, Judge
from refine.verify import verified_labels
from refine.write import (
    ROUNDS_SCHEMA,
    atomic_directory,
    check_output,
    output_lock,
    refined_table,
    write_json,
    write_parquet,
)

# The layout of model.pt: refine.update.load_run reads what _save_model writes.
MODEL_FORMAT = "refine.mlp-ensemble/1"


@dataclass
class RunResult:
    """What a run produced: the tables written to disk, the run's summary (``run.json``), and the
    last round's calibrated probabilities ``proba`` ``(N, K)`` (out-of-fold for labelled rows)
    and ensemble ``agreement`` ``(N,)``."""

    refined: pa.Table
    rounds: pa.Table
    summary: dict[str, Any]
    proba: np.ndarray
    agreement: np.ndarray
    out: Path | None = None
    skipped: dict[str, str] = field(default_factory=dict)
    synthetic: pa.Table | None = None  # synthetic.parquet, with --augment

    @property
    def flagged(self) -> pa.Table:
        return self.refined.filter(self.refined.column("is_label_issue"))


def run(
    data: str | Path | pa.Table,
    out: str | Path | None = None,
    *,
    config: RunConfig | None = None,
    overwrite: bool = False,
    progress: Progress = NULL_PROGRESS,
    command: str | None = None,
    resume: bool = False,
    workers: int = 1,
    **options: Any,
) -> RunResult:
    """Find and fix wrong labels in ``data``; write the run to ``out`` when given.

    Parameters
    ----------
    data : path or pyarrow.Table
        A Parquet file, a directory of Parquet files, or an Arrow table.
    out : path, optional
        The run directory to write (``refined.parquet``, ``rounds.parquet``, ``run.json``,
        ``model.pt``, ``report.html`` unless ``report=False``). Written atomically; an existing
        one is replaced only with ``overwrite``.
    config : RunConfig, optional
        The full configuration; ``options`` override its fields (``label="y", rounds=2``), and
        fields of ``ModelConfig`` may be given the same way (``max_epochs=20``).
    progress : Progress
        Receives progress updates (the CLI passes rich progress bars).
    command : str, optional
        The command line that started the run, recorded in ``run.json`` (the CLI passes it).
    resume : bool
        Go on from the checkpoint an interrupted run to ``out`` left (``.<out>.partial``
        beside it), when its configuration, input and versions match; the result is the same
        as an uninterrupted run's. Without it an earlier checkpoint is discarded. Every run with
        ``out`` writes checkpoints, removed once the run directory is in place.
    workers : int
        Processes that train folds side by side; the output does not depend on it.

    Returns
    -------
    RunResult
    """
    config = with_options(config or RunConfig(), options)
    config.validate()
    check_execution(out, overwrite, resume, workers)
    # Held until the run directory is renamed into place: one refine process per --out.
    with output_lock(out), FoldRunner(workers) as runner:
        try:
            result = _run(data, out, config, overwrite, progress, command, resume, runner)
        except RefineError as exc:
            if runner.checkpoint is None:
                raise
            raise type(exc)(
                f"{exc}. The finished folds and rounds are kept in "
                f"{str(runner.checkpoint.path)!r}: rerun with --resume to go on from them"
            ) from None
        if runner.checkpoint is not None:
            kill_point("renamed")
            runner.checkpoint.remove()
        return result


def _run(
    data: str | Path | pa.Table,
    out: str | Path | None,
    config: RunConfig,
    overwrite: bool,
    progress: Progress,
    command: str | None = None,
    resume: bool = False,
    runner: FoldRunner | None = None,
) -> RunResult:
    if out is not None:
        check_output(Path(out), overwrite)
    timings: dict[str, float] = {}

    started = time.perf_counter()
    table = data if isinstance(data, pa.Table) else read_table(data)
    if out is not None and not isinstance(data, pa.Table):
        check_input_outside(Path(data), Path(out))
    check_no_clashes(table)
    check_named_columns(table, config.features, config.ignore)
    check_named_columns(table, config.teacher_features, (), "--teacher-features")
    check_named_columns(table, config.student_features, (), "--student-features")
    labelled_table = encode_labels(table, config.label, config.folds)
    verified = verified_labels(labelled_table, config.verified, config.verified_file, config.key)
    timings["read"] = time.perf_counter() - started

    started = time.perf_counter()
    features, text, image = config.features, config.text, config.image
    if config.teacher_features is not None:  # the rounds' model is the teacher
        features = config.teacher_features
        text = tuple(c for c in config.text if c in features)
        image = tuple(c for c in config.image if c in features)
    encoder = fit_features(
        table,
        config.label,
        features,
        # A verified label would give the answer away; a join key is an id.
        config.ignore + tuple(c for c in (config.verified, config.key) if c is not None),
        config.max_categories,
        text,
        config.seed,
        image,
        config.image_model,
        config.image_size,
        labels=labelled_table.labels,  # a text column's block is chosen by these classes
    )
    X = encoder.transform(table)
    _note_skipped(encoder.skipped, progress)
    for note in encoder.notes:
        progress.note(note)
    timings["encode"] = time.perf_counter() - started
    if runner is not None and out is not None:
        runner.checkpoint = open_checkpoint(
            Path(out), resume, config, X, labelled_table, _versions(), progress, verified
        )

    augment = augmenter(labelled_table, encoder, config) if config.augment else None
    state = refine_rounds(
        labelled_table,
        X,
        config,
        progress,
        timings,
        augment=augment,
        image_blocks=encoder.image_blocks,
        runner=runner,
        verified=verified,
    )
    student = None
    if config.student_features is not None:
        from refine.distill import distill

        student = distill(labelled_table, state, config, progress, timings, runner)
    summary = summarise_run(labelled_table, encoder, config, state, timings, data, command)
    if student is None:
        return finish_run(labelled_table, encoder, config, state, summary, out, overwrite)
    summary["student"] = student.summary
    return finish_run(
        labelled_table,
        encoder,
        config,
        state,
        summary,
        out,
        overwrite,
        kept=(student.crossfit, student.encoder),
    )


def finish_run(
    data: LabelledTable,
    encoder: FeatureEncoder,
    config: RunConfig,
    state: _State,
    summary: dict[str, Any],
    out: str | Path | None,
    overwrite: bool,
    extra_files: dict[str, pa.Table] | None = None,
    kept: tuple[CrossFit, FeatureEncoder] | None = None,
) -> RunResult:
    """Build the output tables from the last round and write the run directory atomically,
    with ``extra_files`` (name -> table) beside them, and ``report.html`` (built from the
    written files) when ``config.report``. ``model.pt`` holds the last round's fold models
    and ``encoder``, or ``kept`` (fold models, encoder) instead: a distilled student."""
    metadata = {
        "refine.classes": data.class_values(),
        "refine.run": {"version": __version__, "config": config.to_dict(), "seed": config.seed},
    }
    refined = refined_table(
        data, state.decisions, state.proba, state.is_issue, state.quality, metadata
    )
    rounds = pa.Table.from_pylist(state.rounds, schema=ROUNDS_SCHEMA)
    synthetic = _synthetic_table(data, state, metadata) if state.synthetic is not None else None
    result = RunResult(
        refined=refined,
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
            write_parquet(refined, tmp / "refined.parquet")
            write_parquet(rounds, tmp / "rounds.parquet")
            if synthetic is not None:
                write_parquet(synthetic, tmp / "synthetic.parquet")
            for name, table in (extra_files or {}).items():
                write_parquet(table, tmp / name)
            fitted, model_encoder = kept or (state.crossfit, encoder)
            _save_model(tmp / "model.pt", fitted, model_encoder, data, config)
            summary["timings"]["write"] = round(time.perf_counter() - started, 4)
            write_json(summary, tmp / "run.json")
            if config.report:
                from refine.report import write_report  # matplotlib loads only when needed

                write_report(tmp)
            kill_point("write")
        result.out = Path(out)
    return result


@dataclass
class Extra:
    """Training rows beside the judged ones: they train every round with fixed targets, are
    never judged, and never appear in ``refined.parquet`` (replayed rows of an earlier run,
    synthetic rows). ``labels`` ``(M,)`` is each row's class, used to deal them to folds;
    ``folds`` ``(M,)`` overrides that when given."""

    X: np.ndarray
    targets: np.ndarray
    weights: np.ndarray
    labels: np.ndarray
    folds: np.ndarray | None = None
    synthetic: Any = None  # the augment.Synthetic these rows came from, if any


@dataclass
class Teacher:
    """Round 1's probabilities ``(N, K)`` and agreement ``(N,)`` for the judged rows, from a
    model that never saw them (``refine update``'s previous run), instead of a cross-fit; and
    that run's calibration temperature and reliability, for a batch whose own labels cannot
    measure them (none, or a single class)."""

    proba: np.ndarray
    agreement: np.ndarray
    temperature: float = 1.0
    reliable: bool = True


@dataclass
class _State:
    decisions: Decisions
    proba: np.ndarray
    agreement: np.ndarray
    is_issue: np.ndarray
    quality: np.ndarray
    crossfit: CrossFit
    rounds: list[dict[str, Any]]
    ece_before: float
    ece_after: float
    temperature: float
    reliable: bool
    device: str
    trust: dict[str, Any]  # the last round's policy, its reason and the verified measurements
    synthetic: Any = None
    reliability: dict[str, Any] | None = None  # the last round's bins before/after calibration


# A finished round's values a checkpoint keeps, beside its decisions, arrays and rows.
ROUND_METRICS = ("ece_before", "ece_after", "temperature", "reliable", "reliability", "trust")


# After a round's decisions: (decisions, is_issue, quality, folds) -> synthetic rows.
Augment = Callable[[Decisions, np.ndarray, np.ndarray, np.ndarray], Extra]


def refine_rounds(
    data: LabelledTable,
    X: np.ndarray,
    config: RunConfig,
    progress: Progress,
    timings: dict[str, float],
    teacher: Teacher | None = None,
    replay: Extra | None = None,
    augment: Augment | None = None,
    image_blocks: tuple[tuple[int, int, int, int], ...] = (),
    runner: FoldRunner | None = None,
    verified: np.ndarray | None = None,
) -> _State:
    """Rounds of cross-fit, calibrate, detect and decide on the rows of ``data`` (the judged
    rows), training on them plus ``replay`` rows and each round's synthetic rows.
    ``image_blocks``: the columns of ``X`` the models read as images. ``runner`` trains the
    folds; its checkpoint, if any, records each finished fold and round, and the rounds go
    on after the last one it holds. ``verified`` ``(N,)``: each row's verified class (-1 =
    none); verified rows train with that label from the first round on."""
    labels = data.labels
    n = len(labels)
    labelled = labels >= 0
    k = data.n_classes
    verified = np.full(n, -1, np.int64) if verified is None else verified
    judge = Judge(labels, verified, config, data.class_values())
    replay_labels = replay.labels if replay is not None else np.zeros(0, np.int64)
    all_folds = make_folds(np.concatenate([labels, replay_labels]), config.folds, config.seed)
    folds, replay_folds = all_folds[:n], all_folds[n:]
    device = str(resolve_device(config.model.device))

    trained = np.where(verified >= 0, verified, labels)  # what each row trains on at first
    targets = np.zeros((n, k), np.float32)
    targets[np.flatnonzero(trained >= 0), trained[trained >= 0]] = 1.0
    weights = (trained >= 0).astype(np.float32)
    previous = trained.copy()
    # The one-way noise check's (K, K) mask over rounds, and the first round's reading, which
    # models the given labels and shows the noise plainest (see merge_directions; the union
    # over rounds was measured against the first round alone in reports/decisions.md).
    directions: np.ndarray | None = None
    first_directions: np.ndarray | None = None
    rounds: list[dict[str, Any]] = []
    synthetic = None
    reliability = None
    fitted: CrossFit | None = None
    for key in ("train", "predict", "calibrate", "detect", "refine"):
        timings.setdefault(key, 0.0)

    total = config.rounds + (teacher is not None)  # the teacher's round trains nothing
    round_task = progress.start("rounds", "rounds", total=total)
    checkpoint = runner.checkpoint if runner is not None and teacher is None else None
    first = 1
    if checkpoint is not None:
        resumed = resume_rounds(
            checkpoint,
            n,
            total,
            config.min_changes,
            lambda stage: restore_cross_fit(
                checkpoint, stage, config.folds, X.shape[1], k, config.model, image_blocks
            ),
        )
        if resumed is not None:
            first, decisions, rounds, fitted = (
                resumed.next_round,
                resumed.decisions,
                resumed.rounds,
                resumed.fitted,
            )
            proba, agreement, is_issue, quality = (
                resumed.arrays[key] for key in ("proba", "agreement", "is_issue", "quality")
            )
            directions = resumed.arrays.get("directions")
            first_directions = resumed.arrays.get("first_directions", directions)
            ece_before, ece_after, temperature, reliable, reliability, trust = (
                resumed.metrics[key] for key in ROUND_METRICS
            )
            judge.restore(trust)
            timings.update(resumed.metrics["timings"])
            previous, targets, weights = decisions.refined, decisions.soft, decisions.weight
            if augment is not None:
                synthetic = augment(decisions, is_issue, quality, folds)
            progress.advance(round_task, len(rounds))
    for round_index in range(first, total + 1):
        round_started = time.perf_counter()
        if round_index == 1 and teacher is not None:
            raw, agreement = teacher.proba, teacher.agreement
        else:
            extras = [e for e in (replay, synthetic) if e is not None and len(e.X)]
            extra_folds = [replay_folds if e is replay else e.folds for e in extras]
            fitted = cross_fit(
                np.concatenate([X, *(e.X for e in extras)]) if extras else X,
                np.concatenate([targets, *(e.targets for e in extras)]),
                np.concatenate([weights, *(e.weights for e in extras)]),
                np.concatenate([folds, *extra_folds]),
                config.model,
                config.seeds,
                config.seed,
                progress,
                pooled=np.concatenate(
                    [~labelled & (weights == 0), *(np.zeros(len(e.X), bool) for e in extras)]
                ),
                image_blocks=image_blocks,
                runner=runner,
                stage=f"round-{round_index}",
            )
            timings["train"] += fitted.train_seconds
            timings["predict"] += fitted.predict_seconds
            raw, agreement = fitted.proba[:n], fitted.agreement[:n]

        started = time.perf_counter()
        given = labels[labelled]
        ece_before = ece_after = oof_accuracy = None
        if labelled.any():
            temperature = fit_temperature(raw[labelled], given)
            ece_before = expected_calibration_error(raw[labelled], given)
        else:  # a batch with no labels (refine update): keep the earlier run's calibration
            temperature = teacher.temperature if teacher is not None else 1.0
        proba = apply_temperature(raw, temperature)
        if labelled.any():
            ece_after = expected_calibration_error(proba[labelled], given)
            oof_accuracy = float((proba[labelled].argmax(1) == given).mean())
            reliability = {
                "before": reliability_bins(raw[labelled], given),
                "after": reliability_bins(proba[labelled], given),
            }
        else:
            reliability = None
        timings["calibrate"] += time.perf_counter() - started

        started = time.perf_counter()
        teacher_round = round_index == 1 and teacher is not None
        if config.one_way_noise and not teacher_round:
            seen = noise_directions(given, proba[labelled])
            directions = merge_directions(directions, first_directions, seen)
            first_directions = directions if first_directions is None else first_directions
        is_issue = np.zeros(n, bool)
        quality = np.ones(n, np.float32)
        is_issue[labelled], quality[labelled] = detect_issues(
            given,
            proba[labelled],
            agreement[labelled],
            config.filter_by,
            config.relabel_threshold if config.flag_confident else None,
            directions if directions is not None else config.one_way_noise,
        )
        timings["detect"] += time.perf_counter() - started

        started = time.perf_counter()
        if len(np.unique(given)) >= 2 or teacher is None:
            reliable = teacher_is_reliable(given, proba[labelled])
        else:  # agreement beyond chance needs two classes; trust the earlier run's verdict
            reliable = teacher.reliable
        verdict = judge(proba, agreement, is_issue, quality, reliable, teacher_round)
        decisions, is_issue, quality, proba, trust = (
            verdict.decisions,
            verdict.is_issue,
            verdict.quality,
            verdict.proba,
            verdict.record,
        )
        changed = int((decisions.refined != previous).sum())
        if augment is not None:
            synthetic = augment(decisions, is_issue, quality, folds)
        timings["refine"] += time.perf_counter() - started
        rounds.append(
            {
                "round": round_index,
                "flagged": int(is_issue.sum()),
                "corrected": decisions.count(CORRECTED),
                "excluded": decisions.count(EXCLUDED),
                "pseudo_labelled": decisions.count(PSEUDO),
                "changed": changed,
                "oof_accuracy": oof_accuracy,
                "ece_before": ece_before,
                "ece_after": ece_after,
                "temperature": temperature,
                "reliable": reliable,
                "policy": trust["policy"],
                "seconds": time.perf_counter() - round_started,
            }
        )
        progress.advance(round_task)
        if checkpoint is not None:
            metrics = (ece_before, ece_after, temperature, reliable, reliability, trust)
            checkpoint.save_round(
                round_index,
                round_record(
                    decisions,
                    dict(proba=proba, agreement=agreement, is_issue=is_issue, quality=quality)
                    | (
                        {}
                        if directions is None
                        else {"directions": directions, "first_directions": first_directions}
                    ),
                    rounds,
                    {**dict(zip(ROUND_METRICS, metrics, strict=True)), "timings": timings},
                ),
            )
        previous = decisions.refined
        targets, weights = decisions.soft, decisions.weight
        # A round that keeps every label would only retrain on the same targets.
        if (changed < config.min_changes or trust["policy"] == KEEP) and fitted is not None:
            break
    progress.finish(round_task)
    assert fitted is not None, "a run trains at least one round"
    return _State(
        decisions,
        proba,
        agreement,
        is_issue,
        quality,
        fitted,
        rounds,
        ece_before,
        ece_after,
        temperature,
        reliable,
        device,
        trust,
        synthetic,
        reliability,
    )


# Rows that may parent synthetic rows: given labels the run did not flag and rates at least
# this likely to be right (calibrated probability of the given label).
TRUSTED_QUALITY = 0.5


def augmenter(data: LabelledTable, encoder: FeatureEncoder, config: RunConfig) -> Augment:
    """Synthetic rows from each round's trusted rows, for the next round to train on."""
    from refine.augment import synthesize

    def augment(
        decisions: Decisions, is_issue: np.ndarray, quality: np.ndarray, folds: np.ndarray
    ) -> Extra:
        trusted = (decisions.source == GIVEN) & ~is_issue & (quality >= TRUSTED_QUALITY)
        synthetic = synthesize(
            data.table,
            encoder,
            data.label,
            data.classes,
            decisions.refined,
            trusted,
            folds,
            config.augment,
            config.augment_ratio,
            config.seed,
        )
        return Extra(
            X=encoder.transform(synthetic.table),
            targets=synthetic.soft,
            weights=np.ones(len(synthetic), np.float32),
            labels=synthetic.labels,
            folds=synthetic.folds,
            synthetic=synthetic,
        )

    return augment


def _synthetic_table(data: LabelledTable, state: _State, metadata: dict[str, Any]) -> pa.Table:
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
    state: _State,
    timings: dict[str, float],
    source: Any,
    command: str | None = None,
) -> dict[str, Any]:
    labels = data.labels
    classes = data.class_values()
    d = state.decisions
    predicted = state.proba.argmax(1)
    # A verified row is flagged for its known-wrong label, whatever the model predicts; the
    # confusions are the model's, so rows it predicts as given are left out.
    issues = np.flatnonzero(state.is_issue & (predicted != labels))
    confusions = Counter(zip(labels[issues].tolist(), predicted[issues].tolist(), strict=True))
    return {
        "refine_version": __version__,
        "input": str(source) if not isinstance(source, pa.Table) else "<arrow table>",
        "command": command,
        "config": config.to_dict(),
        "seed": config.seed,
        "device": state.device,
        "versions": _versions(),
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
        "timings": {k: round(v, 4) for k, v in timings.items()},
        "epochs_per_fit": state.crossfit.epochs,
        "rounds": state.rounds,
    }


def _versions() -> dict[str, str]:
    import cleanlab
    import duckdb
    import pandas
    import sklearn

    return {
        "refine": __version__,
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


def with_options(config: RunConfig, options: dict[str, Any]) -> RunConfig:
    model_fields = {f.name for f in dataclasses.fields(ModelConfig)}
    run_fields = {f.name for f in dataclasses.fields(RunConfig)}
    unknown = sorted(set(options) - model_fields - run_fields)
    if unknown:
        raise TypeError(f"run() got unknown options: {', '.join(unknown)}")
    model_options = {k: v for k, v in options.items() if k in model_fields and k not in run_fields}
    run_options = {k: v for k, v in options.items() if k in run_fields}
    for key in ("features", "ignore", "text", "image", "teacher_features", "student_features"):
        if isinstance(run_options.get(key), list):
            run_options[key] = tuple(run_options[key])
    if isinstance(run_options.get("image_model"), Path):  # run.json records it as a string
        run_options["image_model"] = str(run_options["image_model"])
    model = dataclasses.replace(config.model, **model_options)
    return dataclasses.replace(config, model=model, **run_options)


def _note_skipped(skipped: dict[str, str], progress: Progress) -> None:
    """Tell the user which columns are not features, one line per reason."""
    by_reason: dict[str, list[str]] = {}
    for column, reason in skipped.items():
        by_reason.setdefault(reason, []).append(column)
    for reason, columns in by_reason.items():
        shown = ", ".join(columns[:8]) + (
            f" and {len(columns) - 8} more" if len(columns) > 8 else ""
        )
        progress.note(f"skipped {'column' if len(columns) == 1 else 'columns'} {shown}: {reason}")


def check_input_outside(source: Path, out: Path) -> None:
    source, out = source.resolve(), out.resolve()
    if source == out or out in source.parents:
        raise InputError(
            f"input {str(source)!r} lies inside the output directory {str(out)!r}; "
            "choose an --out outside the input"
        )
