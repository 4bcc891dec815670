"""The output contract, known answers and determinism of ``refine.run``."""

from __future__ import annotations

import json

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import refine
from refine.bench.noise import flip_with_matrix
from refine.io.query import query
from refine.io.write import ROUNDS_SCHEMA
from tests.conftest import FAST, blobs, noisy_table

NEW_COLUMNS = [
    ("label_refined", pa.int64()),
    ("label_soft", pa.list_(pa.float32())),
    ("label_quality", pa.float32()),
    ("is_label_issue", pa.bool_()),
    ("label_predicted", pa.int64()),
    ("label_source", pa.string()),
    ("sample_weight", pa.float32()),
]


def test_refined_parquet_keeps_every_input_row_and_column(finished_run, noisy_parquet):
    _, out = finished_run
    source = pq.read_table(noisy_parquet)
    refined = pq.read_table(out / "refined.parquet")
    assert refined.column_names == source.column_names + [name for name, _ in NEW_COLUMNS]
    assert [refined.schema.field(n).type for n, _ in NEW_COLUMNS] == [t for _, t in NEW_COLUMNS]
    # Input columns equal to the input, row by row, in order: checked by DuckDB.
    con = duckdb.connect()
    cols = ", ".join(f'"{c}"' for c in source.column_names)
    differing = con.execute(
        f"""SELECT count(*) FROM (
              SELECT row_number() OVER () AS r, {cols} FROM read_parquet('{noisy_parquet}')) a
            FULL JOIN (
              SELECT row_number() OVER () AS r, {cols} FROM read_parquet('{out / "refined.parquet"}')) b
            USING (r)
            WHERE a.r IS NULL OR b.r IS NULL OR {" OR ".join(f'a."{c}" IS DISTINCT FROM b."{c}"' for c in source.column_names)}"""
    ).fetchone()[0]
    assert differing == 0
    assert refined.select(source.column_names).equals(source)


def test_output_columns_hold_consistent_values(finished_run):
    result, out = finished_run
    t = pq.read_table(out / "refined.parquet").to_pandas()
    classes = json.loads(pq.read_schema(out / "refined.parquet").metadata[b"refine.classes"])
    assert classes == [0, 1, 2]
    soft = np.stack(t["label_soft"].to_numpy())
    assert soft.shape == (len(t), 3)
    np.testing.assert_allclose(soft.sum(1), 1.0, rtol=1e-5)
    assert t["label_quality"].between(0, 1).all()
    assert (t["sample_weight"] >= 0).all()
    assert set(t["label_source"]) <= {"given", "corrected", "excluded"}
    given = t["label_source"] == "given"
    assert (t.loc[given, "label_refined"] == t.loc[given, "label"]).all()
    corrected = t["label_source"] == "corrected"
    assert (t.loc[corrected, "label_refined"] == t.loc[corrected, "label_predicted"]).all()
    assert (t.loc[corrected, "label_refined"] != t.loc[corrected, "label"]).all()
    assert t.loc[t["label_source"] == "excluded", "label_refined"].isna().all()
    assert (t.loc[t["label_source"] == "excluded", "sample_weight"] == 0).all()
    # Every correction or exclusion is of a flagged row.
    assert t.loc[~given, "is_label_issue"].all()


def test_run_metadata_and_side_files(finished_run):
    result, out = finished_run
    meta = json.loads(pq.read_schema(out / "refined.parquet").metadata[b"refine.run"])
    assert meta["version"] == refine.__version__
    assert meta["seed"] == 0 and meta["config"]["folds"] == 3
    summary = json.loads((out / "run.json").read_text())
    assert summary["classes"] == [0, 1, 2]
    assert summary["config"]["ignore"] == ["id"]
    assert {"ece_before", "ece_after", "temperature"} <= set(summary["calibration"])
    assert summary["versions"]["torch"] == torch.__version__
    assert summary["device"] == "cpu"
    rounds = pq.read_table(out / "rounds.parquet")
    assert rounds.schema.equals(ROUNDS_SCHEMA)
    assert rounds.column("round").to_pylist() == list(range(1, rounds.num_rows + 1))
    assert 1 <= rounds.num_rows <= 2
    model = torch.load(out / "model.pt", weights_only=True)
    assert model["classes"] == [0, 1, 2]
    assert len(model["members"]) == 3  # one per fold
    leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_noise_from_a_known_matrix_is_found():
    # Class 0 -> 1 for 30% of class 0 rows, class 2 -> 0 for 20%: one-directional noise.
    X, truth = blobs(n=450, k=3, seed=3)
    transition = np.array([[0.7, 0.3, 0.0], [0.0, 1.0, 0.0], [0.2, 0.0, 0.8]])
    noisy = flip_with_matrix(truth, transition, seed=4)
    table = pa.table({"a": X[:, 0], "b": X[:, 1], "c": X[:, 2], "d": X[:, 3], "y": noisy})
    result = refine.run(table, label="y", seed=0, **FAST)
    flagged = result.refined.column("is_label_issue").to_numpy(zero_copy_only=False)
    wrong = noisy != truth
    assert wrong.sum() > 50
    recall = (flagged & wrong).sum() / wrong.sum()
    precision = (flagged & wrong).sum() / max(flagged.sum(), 1)
    assert recall > 0.9 and precision > 0.9, (recall, precision)
    refined = result.refined.column("label_refined").to_pandas()
    assert (refined == truth).mean() > (noisy == truth).mean() + 0.1


@pytest.mark.parametrize(("seed", "policy"), [(11, "rules"), (13, "keep")])
def test_one_directional_noise_on_small_data_never_leaves_labels_worse(seed, policy):
    # Iris with 40% of versicolor filed as virginica, 112 rows: the mislabelled rows pull correct
    # versicolor rows near the border over to virginica. Without the one-way check these seeds
    # end at 0.812 and 0.750, with it read off each round's counts alone at 0.812 and 0.848:
    # below the given labels' 0.866. refine must never leave the labels worse, and where it
    # corrects, better (at least one row of 112). Seed 11 corrects (0.902); seed 13's evidence
    # sits near the gate (43% against 50%), so it keeps: 16 of seeds 10-29 correct, 4 keep,
    # none is worse (reports/scale.md, "Dropout on CPU").
    from refine.bench.recipes import build_dataset

    train = build_dataset("iris-onedir", seed=seed).train
    truth = train.column("label_true").to_numpy()
    given = train.column("label").to_numpy()
    result = refine.run(train, ignore=("label_true", "is_noisy"), seed=seed, report=False)
    refined = result.refined.column("label_refined").to_numpy(zero_copy_only=False)
    assert result.summary["trust"]["policy"] == policy
    if policy == "keep":
        np.testing.assert_array_equal(refined, given)
    else:
        assert (refined == truth).mean() > (given == truth).mean() + 0.008


def test_relabel_odds_reaches_the_relabel_rule(monkeypatch):
    # decide() is unit-tested with the odds (tests/test_stages.py); here the run passes them on.
    import inspect

    import refine.judge.trust

    seen = []
    real = refine.judge.trust.decide

    def spy(*args, **kwargs):  # by name, however the pipeline passes it
        seen.append(inspect.signature(real).bind(*args, **kwargs).arguments.get("relabel_odds"))
        return real(*args, **kwargs)

    monkeypatch.setattr(refine.judge.trust, "decide", spy)
    table, _ = noisy_table(n=120, seed=2)
    refine.run(table, seed=0, relabel_odds=2.5, report=False, **{**FAST, "rounds": 1})
    assert seen == [2.5]


def test_string_labels_come_back_as_they_went_in():
    table, truth = noisy_table(n=240, seed=5)
    names = np.array(["cat", "dog", "ému"])
    table = table.set_column(
        table.column_names.index("label"),
        "label",
        pa.array(names[table.column("label").to_numpy()]),
    )
    result = refine.run(table, ignore=("id",), seed=0, **FAST)
    assert result.refined.schema.field("label_refined").type == pa.string()
    assert set(result.refined.column("label_predicted").to_pylist()) <= set(names)
    assert result.summary["classes"] == ["cat", "dog", "ému"]


def test_unlabelled_rows_are_kept_and_marked():
    table, _ = noisy_table(n=240, seed=6)
    labels = table.column("label").to_numpy().astype(float)
    mask = np.arange(240) % 8 == 0
    table = table.set_column(
        table.column_names.index("label"), "label", pa.array(labels.astype(np.int64), mask=mask)
    )
    result = refine.run(table, ignore=("id",), seed=0, pseudo_label=False, **FAST)
    t = result.refined
    source = np.array(t.column("label_source").to_pylist())
    assert (source[mask] == "unlabelled").all()
    assert t.column("label_refined").to_pandas()[mask].isna().all()
    assert t.column("label_quality").to_pandas()[mask].isna().all()
    assert not np.asarray(t.column("is_label_issue"))[mask].any()
    assert (np.asarray(t.column("sample_weight"))[mask] == 0).all()
    assert t.column("label_predicted").null_count == 0


def test_same_seed_gives_identical_refined_parquet(tmp_path, noisy_parquet):
    options = dict(ignore=("id",), seed=7, max_epochs=10, hidden=(32,), folds=3, rounds=2)
    refine.run(noisy_parquet, tmp_path / "a", **options)
    refine.run(noisy_parquet, tmp_path / "b", **options)
    a = (tmp_path / "a" / "refined.parquet").read_bytes()
    b = (tmp_path / "b" / "refined.parquet").read_bytes()
    assert a == b


def test_an_unreliable_teacher_keeps_every_label():
    # Features carry no information about the labels: nothing should be corrected.
    rng = np.random.default_rng(0)
    table = pa.table(
        {"a": rng.normal(size=300), "b": rng.normal(size=300), "y": rng.integers(0, 3, size=300)}
    )
    result = refine.run(table, label="y", seed=0, **FAST)
    assert not result.summary["teacher_reliable"]
    t = result.refined
    assert t.column("label_refined").equals(t.column("y"))
    assert set(t.column("label_source").to_pylist()) == {"given"}


def test_unlabelled_rows_are_pseudo_labelled_when_the_ensemble_is_sure():
    """Half the rows unlabelled, well-separated clusters: most get the right pseudo-label,
    labelled rows never become pseudo, and every pseudo-label passed the threshold."""
    table, truth = noisy_table(n=360, rate=0.1, seed=9)
    labels = table.column("label").to_numpy()
    mask = np.random.default_rng(0).random(360) < 0.5
    table = table.set_column(
        table.column_names.index("label"), "label", pa.array(labels, mask=mask)
    )
    result = refine.run(table, ignore=("id",), seed=0, pseudo_threshold=0.9, **FAST)
    t = result.refined
    source = np.array(t.column("label_source").to_pylist())
    pseudo = source == "pseudo"
    assert not pseudo[~mask].any()
    assert pseudo[mask].mean() > 0.8
    refined = np.asarray(t.column("label_refined").to_pandas())
    assert (refined[pseudo] == truth[pseudo]).mean() > 0.97
    weight = np.asarray(t.column("sample_weight"))
    assert (weight[pseudo] >= 0.9).all() and (weight[pseudo] <= 1.0).all()
    assert (np.asarray(t.column("label_predicted").to_pandas())[pseudo] == refined[pseudo]).all()
    assert result.summary["pseudo_labelled"] == pseudo.sum()
    assert result.rounds.column("pseudo_labelled").to_pylist()[-1] == pseudo.sum()
    # The threshold is a probability of the true class. This model is right on every row, and
    # through the noise its probabilities reach 1, so a stricter threshold may keep them all,
    # but never adds one, and every pseudo-label still passes it.
    strict = refine.run(table, ignore=("id",), seed=0, pseudo_threshold=0.9999, **FAST).refined
    strict_pseudo = np.array(strict.column("label_source").to_pylist()) == "pseudo"
    assert strict_pseudo.sum() <= pseudo.sum() and not (strict_pseudo & ~pseudo).any()
    assert (np.asarray(strict.column("sample_weight"))[strict_pseudo] >= 0.9999).all()


def test_a_directory_of_hive_partitions_reads_in_order(tmp_path):
    table, _ = noisy_table(n=240, seed=8)
    for part in range(2):
        d = tmp_path / "data" / f"part={part}"
        d.mkdir(parents=True)
        pq.write_table(table.slice(part * 120, 120), d / "chunk.parquet")
    result = refine.run(tmp_path / "data", ignore=("id", "part"), seed=0, **FAST)
    assert result.refined.column("id").to_pylist() == table.column("id").to_pylist()
    assert result.refined.column("part").to_pylist() == [0] * 120 + [1] * 120


@pytest.mark.parametrize("option", [{"rounds": 0}, {"folds": 1}, {"relabel_threshold": 1.5}])
def test_bad_options_raise_config_errors(option):
    table, _ = noisy_table(n=60)
    with pytest.raises(refine.ConfigError):
        refine.run(table, **option)


@pytest.mark.parametrize("method", ["interpolate", "mixup", "noise"])
def test_augmentation_writes_synthetic_rows_with_provenance(tmp_path, method):
    table, _ = noisy_table(n=240, rate=0.15, seed=12)
    result = refine.run(
        table, tmp_path / "run", ignore=("id",), seed=0, augment=method, augment_ratio=0.5, **FAST
    )
    refined = pq.read_table(tmp_path / "run" / "refined.parquet")
    assert refined.num_rows == 240 and refined.select(table.column_names).equals(table)
    synthetic = pq.read_table(tmp_path / "run" / "synthetic.parquet")
    assert synthetic.schema.names == refined.schema.names + ["synthetic_parent_rows"]
    for name in refined.schema.names:
        assert synthetic.schema.field(name).type == refined.schema.field(name).type
    assert result.summary["synthetic_rows"] == synthetic.num_rows > 0
    assert set(synthetic.column("label_source").to_pylist()) == {"synthetic"}
    assert synthetic.column("label_quality").null_count == synthetic.num_rows
    assert synthetic.column("label").equals(synthetic.column("label_refined"))

    source = np.array(refined.column("label_source").to_pylist())
    flagged = np.asarray(refined.column("is_label_issue"))
    quality = np.asarray(refined.column("label_quality"))
    given = np.asarray(refined.column("label_refined").to_pandas())
    labels = np.asarray(synthetic.column("label_refined"))
    soft = np.array(synthetic.column("label_soft").to_pylist())
    for row, parents in enumerate(synthetic.column("synthetic_parent_rows").to_pylist()):
        assert 1 <= len(parents) <= 2
        # parents are rows refine trusts: given labels, not flagged, quality >= 0.5
        assert all(source[p] == "given" and not flagged[p] and quality[p] >= 0.5 for p in parents)
        if method == "mixup":
            assert soft[row][given[parents[0]]] >= 0.5
        else:
            assert labels[row] == given[parents[0]] == given[parents[-1]]
    counts = query(tmp_path / "run", "SELECT count(*) AS n FROM synthetic").column("n")
    assert counts.to_pylist() == [synthetic.num_rows]


def test_no_synthetic_file_without_augment(finished_run):
    result, out = finished_run
    assert not (out / "synthetic.parquet").exists()
    assert result.synthetic is None and result.summary["synthetic_rows"] == 0
