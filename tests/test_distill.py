"""Cross-modal distillation: a teacher on an embedding column, a student on a text column."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner

import refine
from refine.bench.noise import flip_symmetric
from refine.bench.sources import generated_text
from refine.cli import cli
from refine.config import ModelConfig
from refine.learn.crossfit import cross_fit, make_folds

K = 3
SMALL = dict(max_epochs=15, hidden=(64,), folds=3, rounds=1, report=False)


def cross_modal(rows: int, seed: int, rate: float = 0.3):
    """A text column and an embedding column of the same classes (the embedding well separated,
    the text weaker), the true labels, and a label column with ``rate`` symmetric noise."""
    texts, truth = generated_text(rows, K, topic_share=0.5, random_state=seed)
    rng = np.random.default_rng([seed, 1])
    centres = rng.normal(0.0, 3.0, size=(K, 8))
    emb = (centres[truth] + rng.normal(0.0, 1.0, size=(rows, 8))).astype(np.float32)
    table = pa.table(
        {
            "text": pa.array(texts.tolist(), pa.string()),
            "emb": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), 8),
            "label": flip_symmetric(truth, rate, K, seed=seed + 2),
        }
    )
    return table, truth


@pytest.fixture(scope="module")
def data():
    table, truth = cross_modal(900, seed=0, rate=0.4)
    return table.slice(0, 600), table.slice(600), truth[600:]


@pytest.fixture(scope="module")
def distilled(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "distilled"
    result = refine.run(
        data[0], out, teacher_features=("emb",), student_features=("text",), **SMALL
    )
    return out, result


def test_model_pt_keeps_the_student_and_load_run_predicts_from_its_columns(distilled, data):
    out, result = distilled
    saved = torch.load(out / "model.pt", weights_only=True)
    assert [c["column"] for c in saved["features"]["columns"]] == ["text"]
    assert [c["column"] for c in result.summary["features"]["columns"]] == ["emb"]
    previous = refine.load_run(out)
    assert previous.encoder.columns == ["text"]
    # The student needs only its own columns: no embedding column in the rows to predict.
    proba, agreement = previous.predict(data[1].select(["text"]))
    assert proba.shape == (300, K) and agreement.shape == (300,)
    np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-5)
    student = json.loads((out / "run.json").read_text())["student"]
    assert student["features"] == ["text"]
    assert 0.0 <= student["oof_accuracy_vs_given"] <= student["oof_accuracy_vs_refined"] <= 1.0
    assert student["seconds"] > 0


def test_the_report_of_a_distilled_run_names_the_student(distilled):
    from refine.report.html import build_report

    out, _ = distilled
    student = json.loads((out / "run.json").read_text())["student"]
    page = build_report(out)
    assert "<tr><th>teacher columns</th><td>emb</td></tr>" in page
    assert "<tr><th>student columns (the model kept)</th><td>text</td></tr>" in page
    accuracy = f"{student['oof_accuracy_vs_refined']:.3f} / {student['oof_accuracy_vs_given']:.3f}"
    assert f"<td>{accuracy}</td>" in page


def test_the_cross_modal_student_beats_the_noisy_label_student(distilled, data):
    out, _ = distilled
    train, test, test_truth = data
    previous = refine.load_run(out)
    distilled_accuracy = (previous.predict(test)[0].argmax(1) == test_truth).mean()

    # The same student (encoder, folds, model settings) on the noisy labels alone.
    labels = np.asarray(train.column("label"))
    model = ModelConfig(max_epochs=15, hidden=(64,))
    X = previous.encoder.transform(train)
    fitted = cross_fit(
        X,
        np.eye(K, dtype=np.float32)[labels],
        np.ones(len(labels), np.float32),
        make_folds(labels, 3, 0),
        model,
        1,
        0,
    )
    members = [m for fold in fitted.models for m in fold]
    X_test = previous.encoder.transform(test)
    noisy_proba = np.concatenate([m.predict_member_proba(X_test) for m in members]).mean(0)
    noisy_accuracy = (noisy_proba.argmax(1) == test_truth).mean()
    assert distilled_accuracy > noisy_accuracy + 0.03, (distilled_accuracy, noisy_accuracy)


def test_the_teachers_output_is_the_same_with_and_without_a_student(distilled, data, tmp_path):
    out, _ = distilled
    alone = refine.run(data[0], tmp_path / "teacher", teacher_features=("emb",), **SMALL)
    assert pq.read_table(out / "refined.parquet").equals(alone.refined)
    plain = refine.run(data[0], tmp_path / "plain", features=("emb",), **SMALL)
    assert plain.refined.equals(alone.refined)


def test_an_update_of_a_distilled_run_encodes_with_the_student(distilled, data, tmp_path):
    out, _ = distilled
    result = refine.update(out, data[1], tmp_path / "next", replay=0, max_epochs=5)
    assert [c["column"] for c in result.summary["features"]["columns"]] == ["text"]
    assert refine.load_run(tmp_path / "next").encoder.columns == ["text"]


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.mark.parametrize(
    "options, message",
    [
        (
            ["--student-features", "text"],
            "--student-features needs --teacher-features: name the columns the teacher trains on",
        ),
        (
            ["--teacher-features", "emb", "--features", "text"],
            "--teacher-features replaces --features; pass one of them, not both",
        ),
        (
            ["--teacher-features", ",", "--student-features", "text"],
            "--teacher-features names no columns; name at least one column",
        ),
        (
            ["--teacher-features", "emb", "--student-features", ","],
            "--student-features names no columns; name at least one column",
        ),
        (
            ["--teacher-features", "emb", "--student-features", "label"],
            "--student-features names the label column 'label'; a label cannot be a feature",
        ),
        (
            ["--teacher-features", "emb", "--student-features", "words"],
            "--student-features names column 'words', which the input does not have; "
            "its columns are: 'text', 'emb', 'label'",
        ),
        (
            ["--teacher-features", "vectors", "--student-features", "text"],
            "--teacher-features names column 'vectors', which the input does not have; "
            "its columns are: 'text', 'emb', 'label'",
        ),
    ],
)
def test_distillation_options_are_checked(data, tmp_path, options, message):
    path = tmp_path / "in.parquet"
    pq.write_table(data[0], path)
    result = invoke("run", str(path), "--out", str(tmp_path / "out"), *options)
    assert result.exit_code == 2
    assert result.output == f"Error: {message}\n"
    assert not (tmp_path / "out").exists()
