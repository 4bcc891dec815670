"""The deployable student: refine run --student, refine distill, refine predict, refine export."""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

import refine
from refine import deploy
from refine.cli import cli
from refine.config import ModelConfig
from refine.errors import ConfigError, InputError
from refine.judge.relabel import true_class_of
from refine.judge.trust import student_temperature
from refine.learn.graph import split_inputs
from refine.learn.modeldir import load_model_dir
from refine.learn.student import count_parameters, fit_student, parse_size, risk_coverage
from tests.conftest import FAST, blobs, flip_symmetric, noisy_table


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def student_run(tmp_path_factory):
    """A run with a student on the noisy table (numeric with nulls, a dictionary category, an
    embedding), its input file and the true labels."""
    root = tmp_path_factory.mktemp("student")
    table, truth = noisy_table()
    pq.write_table(table, root / "data.parquet")
    settings = dict(ignore=("id",), seed=0, report=False, student=True, student_size="32")
    refine.run(root / "data.parquet", root / "run", **settings, **FAST)
    return root, table, truth


def files(path):
    return sorted(p.name for p in path.iterdir())


def test_parse_size_reads_widths_budgets_and_auto():
    assert parse_size("128,64", 10, 3, (256,)) == (128, 64)
    assert parse_size("auto", 10, 3, (256, 256)) == (256, 256)
    width = parse_size("params:20000", 10, 3, (256,))[0]
    assert count_parameters((width, width), 10, 3) <= 20000
    assert count_parameters((width + 1, width + 1), 10, 3) > 20000
    with pytest.raises(ConfigError, match="params:20000"):
        parse_size("params:5", 10, 3, (256,))
    with pytest.raises(ConfigError, match="hidden widths such as 64"):
        parse_size("wide", 10, 3, (256,))


def test_the_student_trains_to_the_same_weights_on_any_number_of_threads():
    """Same seed, same student on any machine: its fits run on one thread, as the fold models'
    do (on these digits PyTorch's two-thread sums moved the weights by up to 2.5e-6)."""
    import torch
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = ((X - X.mean(0)) / (X.std(0) + 1e-6)).astype(np.float32)
    soft = np.eye(10, dtype=np.float32)[y] * 0.8 + 0.02
    folds = np.arange(len(X)) % 2
    model = ModelConfig(hidden=(256, 256), max_epochs=3)
    before = torch.get_num_threads()
    fits = []
    try:
        for threads in (2, 1):
            torch.set_num_threads(threads)
            fits.append(fit_student(X, soft, np.ones(len(X)), folds, (256, 256), model, 0))
            assert torch.get_num_threads() == threads  # put back
    finally:
        torch.set_num_threads(before)
    for name, tensor in fits[0].net.state.items():
        assert torch_equal(tensor, fits[1].net.state[name]), name
    np.testing.assert_array_equal(fits[0].oof_proba, fits[1].oof_proba)


def test_risk_coverage_answers_the_most_confident_rows_first():
    proba = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.55, 0.45]])
    labels = np.array([0, 1, 1, 0])  # the two least confident rows: one wrong, one right
    curve = {round(p["coverage"], 2): p for p in risk_coverage(proba, labels)}
    assert curve[0.5]["accuracy"] == 1.0 and curve[0.5]["threshold"] == 0.8
    assert curve[0.75]["accuracy"] == pytest.approx(2 / 3)
    assert curve[1.0]["accuracy"] == 0.75 and curve[1.0]["threshold"] == 0.55


def test_the_students_confidence_speaks_of_the_true_class_not_the_given_labels():
    """Labels 20% flipped and kept as given: calibrated against them the student is at most
    about 80% sure; against the run's true-class probabilities, or through the label noise
    where the soft labels hold none, as sure as it is right."""
    X, truth = blobs(1200, 3, seed=3)
    given = flip_symmetric(truth, 0.2, 3, seed=4)
    train, test = np.arange(1200) < 900, np.arange(1200) >= 900
    # The run's true-class probabilities on well-separated blobs, mixed into label_soft.
    believed = np.full((900, 3), 0.01) + 0.97 * np.eye(3)[truth[train]]
    soft = (0.8 * np.eye(3)[given[train]] + 0.2 * believed).astype(np.float32)
    folds = np.random.default_rng(5).permutation(900) % 3  # blobs cycle through the classes
    model = ModelConfig(hidden=(32,), max_epochs=30, device="cpu")

    def confidence_and_accuracy(true_class):
        fit = fit_student(X[train], soft, np.ones(900), folds, (32,), model, 0, 1.0, true_class)
        proba = fit.net.predict_proba(X[test])
        right = (proba.argmax(1) == truth[test]).mean()
        return float(proba.max(1).mean()), float(right), fit.summary["calibration"]["target"]

    none = np.full(900, -1)
    found = {"policy": "keep", "calibration": {"method": "noise", "temperature": 0.5}}
    sure, right, target = confidence_and_accuracy(None)
    assert target == "refined" and right > 0.97 and sure < 0.85
    recovered = true_class_of(soft, given[train], 0.2)
    np.testing.assert_allclose(recovered, believed, atol=1e-5)
    sure, right, target = confidence_and_accuracy(
        student_temperature(found, given[train], none, recovered)
    )
    assert target == "ensemble" and right > 0.97 and sure == pytest.approx(right, abs=0.03)
    # --soft-mix 0 leaves no true-class probabilities: through the noise the student estimates.
    assert true_class_of(soft, given[train], 0.0) is None
    sure, right, target = confidence_and_accuracy(
        student_temperature(found, given[train], none, None)
    )
    assert target == "noise" and sure == pytest.approx(right, abs=0.05)
    # A run that found no true-class temperature: the refined labels' one, as its ensemble's.
    kept = {"policy": "keep", "calibration": {"method": "none", "temperature": 1.0}}
    assert student_temperature(kept, given[train], none, recovered)(soft) is None


def test_run_writes_a_student_whose_predictions_predict_reproduces(student_run):
    root, table, truth = student_run
    summary = json.loads((root / "run" / "run.json").read_text())["student_model"]
    assert summary["hidden"] == [32] and summary["parameter_share"] <= 1 / FAST["folds"]
    curve = summary["risk_coverage"]
    assert curve[-1]["coverage"] == 1.0
    assert curve[-1]["accuracy"] == summary["calibration"]["oof_accuracy"]
    student = load_model_dir(root / "run")
    own = student.net.predict_proba(student.encoder.transform(table))
    result = deploy.predict(root / "run", root / "data.parquet", batch_rows=50)
    out = result.table
    assert out.num_rows == table.num_rows and result.abstained == 0
    assert out.select(table.column_names).equals(table)
    proba = np.array(out.column("label_proba").to_pylist(), np.float32)
    np.testing.assert_array_equal(proba, own)
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-6)
    assert out.column("label_predicted").to_pylist() == own.argmax(1).tolist()
    np.testing.assert_array_equal(out.column("confidence").to_numpy(), own.max(1))
    assert (own.argmax(1) == truth).mean() > 0.9
    # The student's temperature is found as the run's judgement found its own.
    run = json.loads((root / "run" / "run.json").read_text())
    found = run["trust"]["calibration"]
    assert found["method"] == "noise" and summary["calibration"]["target"] == "ensemble"


def test_the_report_shows_the_students_risk_coverage(student_run):
    from refine.report.html import build_report

    root, _, _ = student_run
    student = json.loads((root / "run" / "run.json").read_text())["student_model"]
    page = build_report(root / "run")
    assert "Risk-coverage curve of the student" in page
    assert f"{student['parameters']:,} parameters" in page
    last = student["risk_coverage"][-1]
    assert f'<td class="num">100%</td><td class="num">{last["threshold"]:.4f}</td>' in page


def test_distill_is_deterministic_and_saves_what_it_trained(student_run, tmp_path):
    root, table, _ = student_run
    first = deploy.distill(root / "run", tmp_path / "m", size="params:2000")
    again = deploy.distill(root / "run", size="params:2000")
    for name, tensor in first.net.state.items():
        assert torch_equal(tensor, again.net.state[name])
    loaded = load_model_dir(tmp_path / "m")
    X = first.encoder.transform(table)
    np.testing.assert_array_equal(loaded.net.predict_proba(X), first.net.predict_proba(X))
    assert loaded.manifest["classes"] == [0, 1, 2]
    assert [f["name"] for f in loaded.manifest["input_schema"]] == ["x0", "x1", "colour", "emb"]


def torch_equal(a, b):
    return bool((a == b).all())


def test_predict_abstains_below_the_threshold_or_coverage(student_run, tmp_path):
    root, _, _ = student_run
    out = tmp_path / "pred.parquet"
    result = invoke("predict", root / "run", root / "data.parquet", "--out", out, "--coverage", 0.5)
    assert result.exit_code == 0, result.output
    written = pq.read_table(out)
    confidence = written.column("confidence").to_numpy()
    threshold = json.loads(written.schema.metadata[b"refine.predict"])["threshold"]
    quantiles = load_model_dir(root / "run").manifest["confidence_quantiles"]
    assert threshold == pytest.approx(np.quantile(quantiles, 0.5))
    np.testing.assert_array_equal(written.column("abstain").to_numpy(), confidence < threshold)
    both = invoke(
        "predict", root / "run", root / "data.parquet", "--out", tmp_path / "x.parquet",
        "--coverage", 0.5, "--min-confidence", 0.9,
    )  # fmt: skip
    assert both.exit_code == 2
    assert both.output == "Error: pass --min-confidence or --coverage, not both\n"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda t: t.drop_columns(["x0"]),
            "column 'x0' is missing: the student reads it (float); add it",
        ),
        (
            lambda t: t.set_column(1, "x0", pa.array([str(v) for v in t.column("x0").to_pylist()])),
            "column 'x0' has type string, but the student was trained on float; cast it to float",
        ),
        (
            lambda t: t.set_column(
                3, "colour", pa.array(["red"] * 5 + ["purple"] + ["red"] * (t.num_rows - 6))
            ),
            None,
        ),
    ],
    ids=["missing", "type", "category"],
)
def test_predict_refuses_data_that_does_not_fit_and_writes_nothing(
    student_run, tmp_path, change, message
):
    root, table, _ = student_run
    bad = tmp_path / "bad.parquet"
    pq.write_table(change(table), bad)
    result = invoke("predict", root / "run", bad, "--out", tmp_path / "pred.parquet")
    assert result.exit_code == 2
    if message is None:
        message = (
            "column 'colour' holds 'purple' (row 5), a category the student never saw in training "
            "(it knows 'blue', 'green', 'red'); map it to a known category or to null"
        )
        assert result.output == f"Error: {message}\n"
    else:
        assert result.output == f"Error: the data does not fit the student:\n  {message}\n"
    assert files(tmp_path) == ["bad.parquet"]


def test_a_new_class_in_the_label_column_is_not_an_error(student_run):
    root, table, _ = student_run
    labels = table.column("label").to_numpy().copy()
    labels[:3] = 7
    result = deploy.predict(root / "run", table.set_column(5, "label", pa.array(labels)))
    assert result.rows == table.num_rows
    assert result.table.column("label").to_pylist()[:3] == [7, 7, 7]


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_onnx_and_torchscript_graphs_give_refines_probabilities(student_run, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    torch = pytest.importorskip("torch")
    root, table, _ = student_run
    student = load_model_dir(root / "run")
    X = student.encoder.transform(table)
    expected = student.net.predict_proba(X)
    numeric, encoded = split_inputs(student, X, table)
    assert invoke("export", root / "run", "--out", tmp_path / "s.onnx").exit_code == 0
    spec = json.loads((tmp_path / "s.onnx.json").read_text())
    assert spec["inputs"]["numeric"]["columns"] == ["x0", "x1"]
    assert [c["column"] for c in spec["inputs"]["encoded"]["columns"]] == ["colour", "emb"]
    session = ort.InferenceSession(str(tmp_path / "s.onnx"))
    got = session.run(None, {"numeric": numeric, "encoded": encoded})[0]
    np.testing.assert_allclose(got, expected, atol=1e-5)
    result = invoke("export", root / "run", "--format", "torchscript", "--out", tmp_path / "s.pt")
    assert result.exit_code == 0, result.output
    graph = torch.jit.load(str(tmp_path / "s.pt"))
    with torch.no_grad():
        got = graph(torch.from_numpy(numeric), torch.from_numpy(encoded)).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_export_of_a_model_dir_needs_a_format_or_suffix(student_run, tmp_path):
    root, _, _ = student_run
    result = invoke("export", root / "run" / "student", "--out", tmp_path / "s.bin")
    assert result.exit_code == 2
    assert result.output == (
        f"Error: --out {str(tmp_path / 's.bin')!r}: pass --format onnx or torchscript (or name "
        "a .onnx or .pt file)\n"
    )


def test_a_changed_weights_file_is_refused(student_run, tmp_path):
    root, _, _ = student_run
    model = tmp_path / "m"
    deploy.distill(root / "run", model, size="8")
    with open(model / "student.pt", "ab") as f:
        f.write(b"x")
    with pytest.raises(InputError, match="does not match the sha256 in model.json"):
        load_model_dir(model)


def test_predict_streams_a_large_file_in_batches(student_run, tmp_path, monkeypatch):
    """200k rows predicted 5k at a time: no batch is larger, and the Python-side peak stays
    far below what the whole file's features would take (reading it whole peaks near 16x)."""
    root, table, _ = student_run
    rows = 200_000
    rng = np.random.default_rng(0)
    big = pa.table(
        {
            "x0": rng.normal(size=rows).astype(np.float32),
            "x1": rng.normal(size=rows),
            "colour": pa.array(np.array(["red", "green", "blue"])[rng.integers(0, 3, rows)]),
            "emb": pa.FixedSizeListArray.from_arrays(
                pa.array(rng.normal(size=2 * rows).astype(np.float32)), 2
            ),
        }
    )
    pq.write_table(big, tmp_path / "big.parquet", row_group_size=5_000)
    seen = []
    net = load_model_dir(root / "run").net
    original = type(net).predict_proba

    def counting(self, X):
        seen.append(len(X))
        return original(self, X)

    monkeypatch.setattr(type(net), "predict_proba", counting)
    tracemalloc.start()
    result = deploy.predict(
        root / "run", tmp_path / "big.parquet", tmp_path / "pred.parquet", batch_rows=5_000
    )
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert result.rows == rows and sum(seen) == rows and max(seen) == 5_000
    whole = rows * net.n_features * 4  # the whole file's encoded features, float32
    assert peak < whole / 2, (peak, whole)
    assert pq.ParquetFile(tmp_path / "pred.parquet").metadata.num_rows == rows


def test_an_update_of_a_run_with_a_student_writes_the_batchs_student(student_run, tmp_path):
    root, table, _ = student_run
    batch = noisy_table(120, seed=5)[0]
    refine.update(root / "run", batch, tmp_path / "next", rounds=1)
    summary = json.loads((tmp_path / "next" / "run.json").read_text())
    assert summary["config"]["student"] and summary["student_model"]["hidden"] == [32]
    result = deploy.predict(tmp_path / "next", batch)
    assert result.rows == 120


def test_distill_refuses_an_existing_out_before_training(student_run, tmp_path, monkeypatch):
    root, _, _ = student_run
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    monkeypatch.setattr(deploy, "_distill", lambda *a, **k: pytest.fail("trained anyway"))
    result = invoke("distill", root / "run", "--out", tmp_path / "taken")
    assert result.exit_code == 2
    assert result.output == (
        f"Error: --out {str(tmp_path / 'taken')!r} exists and is not a refine model directory "
        "(no model.json), and refine never replaces one; choose another --out\n"
    )
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine"


def test_run_options_of_the_student_are_checked_before_any_work():
    with pytest.raises(ConfigError, match="Pass one of them"):
        refine.RunConfig(student=True, teacher_features=("a",), student_features=("b",)).validate()
    with pytest.raises(ConfigError, match="--student-size '64,x'"):
        refine.RunConfig(student=True, student_size="64,x").validate()
    with pytest.raises(ConfigError, match="--student-temperature must be a number above 0"):
        refine.RunConfig(student=True, student_temperature=0.0).validate()


def test_export_of_a_model_refuses_the_data_options(student_run, tmp_path):
    root, _, _ = student_run
    result = invoke("export", root / "run", "--out", tmp_path / "s.onnx", "--soft", "--chain")
    assert result.exit_code == 2
    assert result.output == (
        "Error: --soft and --chain apply to the data export only; a model export takes --out, "
        "--format and --overwrite\n"
    )
    assert files(tmp_path) == []


def test_refine_run_student_says_where_the_student_is(tmp_path):
    table, _ = noisy_table(90)
    pq.write_table(table, tmp_path / "data.parquet")
    out = tmp_path / "run"
    args = ["run", tmp_path / "data.parquet", "--out", out, "--ignore", "id", "--student"]
    args += ["--student-size", "8", "--rounds", "1", "--folds", "3", "--max-epochs", "5"]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    parameters = json.loads((out / "run.json").read_text())["student_model"]["parameters"]
    assert (
        f"Student: {out / 'student'} ({parameters:,} parameters); predict with: refine predict "
        f"{out} DATA --out PRED.parquet" in result.output
    )
    assert files(out / "student") == ["model.json", "student.pt"]
